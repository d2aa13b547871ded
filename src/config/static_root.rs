//! A `--static` route's directory ([`Root`]), opened when the configuration
//! is read and held by it; `conn::files` serves files from beneath it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::sys;

/// A `--static` directory, opened once at start: an `O_PATH|O_DIRECTORY`
/// descriptor that every file is opened beneath, and its real path.
#[derive(Debug)]
pub struct Root {
    /// The directory itself, held for the life of the config (so renaming or
    /// replacing the path later does not change what is served).
    dir: File,
    /// Its canonical absolute path: for log lines, and for the check of the
    /// `openat` fallback on kernels without `openat2`.
    real: PathBuf,
}

impl Root {
    /// Open `dir`, which must be a directory. The error says why, for the
    /// user (a config error).
    pub fn open(dir: &Path) -> Result<Root, String> {
        let shown = dir.display();
        let real = std::fs::canonicalize(dir).map_err(|e| format!("{shown}: {e}"))?;
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&real)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOTDIR) => format!("{shown}: not a directory"),
                _ => format!("{shown}: {e}"),
            })?;
        Ok(Root { dir, real })
    }

    /// The directory's real (canonical) path.
    pub fn path(&self) -> &Path {
        &self.real
    }

    /// Open what `rel` (relative, already normalized) names beneath the
    /// directory: never anything outside it (`sys::open_beneath`).
    /// Blocking: `openat2`.
    pub fn open_file(&self, rel: &str) -> io::Result<File> {
        sys::open_beneath(&self.dir, &self.real, rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_must_be_a_directory() {
        let dir = std::env::temp_dir();
        let root = Root::open(&dir).unwrap();
        assert_eq!(root.path(), std::fs::canonicalize(&dir).unwrap());
        let err = Root::open(Path::new("/etc/passwd")).unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
        let err = Root::open(Path::new("/no/such/dir")).unwrap_err();
        assert!(err.contains("/no/such/dir"), "{err}");
    }
}
