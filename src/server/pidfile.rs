//! `--pid-file`: the process id, written once every listener is bound and
//! every worker runs (so a supervisor that waits for the file finds a
//! ringway that accepts), and removed at exit if it still holds ours.
//! Written to a temporary name beside it and renamed into place, so that a
//! reader never sees a half-written file.

use std::io;
use std::path::{Path, PathBuf};

/// A written pid file; dropping it removes the file.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Write this process's id to `path`.
    pub fn write(path: &Path) -> io::Result<PidFile> {
        let pid = std::process::id();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{pid}.tmp"));
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, format!("{pid}\n"))
            .and_then(|()| std::fs::rename(&tmp, path))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
        Ok(PidFile {
            path: path.to_path_buf(),
            pid,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Another process (a new ringway started over this one) may have
        // written its own id there since: leave its file alone.
        let ours =
            std::fs::read_to_string(&self.path).is_ok_and(|s| s.trim() == self.pid.to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_whole_and_removed_only_while_ours() {
        let dir = std::env::temp_dir().join(format!("ringway-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ringway.pid");
        let pid = PidFile::write(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(pid);
        assert!(!path.exists());
        // Replaced by another process's: kept.
        let pid = PidFile::write(&path).unwrap();
        std::fs::write(&path, "1\n").unwrap();
        drop(pid);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        // A directory that does not exist: an error, no temporary left.
        assert!(PidFile::write(&dir.join("missing/ringway.pid")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
