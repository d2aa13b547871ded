//! `--watch-config`: reload when the `--config` file changes, as SIGHUP
//! does, on a thread of its own ("ringway-watch").
//!
//! The thread watches, with inotify, the directory the file is named in
//! (not the file: an editor's save and a Kubernetes ConfigMap update both
//! replace it by a rename, which a watch on the old file would not see)
//! and, when the name is a symlink, the directory its target is in now (a
//! symlink into another folder). Kubernetes mounts a ConfigMap as
//! `NAME -> ..data/NAME` with `..data -> ..2026_12_04_...`, and updates it by
//! renaming a new `..data` symlink over the old one: a `IN_MOVED_TO` in the
//! watched directory.
//!
//! An event only makes the thread read the file again: a reload is asked
//! for when its bytes differ from the last ones read, so a `touch`, a save
//! of the same text, or another file of the directory changing reloads
//! nothing. A regular file being created is waited for until it is closed
//! after writing (`IN_CLOSE_WRITE`), so a half-written file is never read
//! as the new configuration; a file that is gone is waited for until it is
//! back. A file that does not parse is refused by the reload exactly as on
//! SIGHUP: logged, counted failed, and the configuration in force stays.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::Duration;

use crate::server::Trigger;

/// What the watched directories report.
const MASK: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

/// How long a burst of events (a swap is several) is let settle before the
/// file is read.
const SETTLE: Duration = Duration::from_millis(100);

/// Start watching `file`; each change is sent to `reload`.
pub fn spawn(file: PathBuf, reload: Sender<Trigger>) -> io::Result<()> {
    let inotify = std::fs::File::from(crate::sys::inotify()?);
    let dir = folder_of(&file);
    crate::sys::inotify_add_watch(&inotify, &dir, MASK)?;
    let watcher = Watcher {
        last: std::fs::read(&file).ok(),
        file,
        dir,
        inotify,
    };
    watcher.follow_target();
    std::thread::Builder::new()
        .name("ringway-watch".into())
        .spawn(move || watcher.run(&reload))?;
    Ok(())
}

struct Watcher {
    file: PathBuf,
    /// The folder `file` is named in.
    dir: PathBuf,
    inotify: std::fs::File,
    /// The file's bytes when last read (`None`: it could not be read).
    last: Option<Vec<u8>>,
}

impl Watcher {
    fn run(mut self, reload: &Sender<Trigger>) {
        log::info!(
            "watching {} for changes (--watch-config)",
            self.file.display()
        );
        // Room for many events at once; each is 16 bytes plus its name.
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match self.inotify.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!(
                        "--watch-config: cannot read inotify events ({e}); \
                         the file is no longer watched (SIGHUP still reloads)"
                    );
                    return;
                }
            };
            if !events(&buf[..n]).any(|e| self.matters(&e)) {
                continue;
            }
            std::thread::sleep(SETTLE);
            self.follow_target();
            let Ok(now) = std::fs::read(&self.file) else {
                log::debug!("{}: gone for now; waiting for it", self.file.display());
                continue;
            };
            if self.last.as_ref() == Some(&now) {
                continue;
            }
            self.last = Some(now);
            log::info!("{} changed: reloading", self.file.display());
            if reload.send(Trigger::ConfigFile).is_err() {
                return;
            }
        }
    }

    /// Whether an event may mean new contents: anything but the creation
    /// of a regular file, which is read once closed after writing.
    fn matters(&self, e: &Event<'_>) -> bool {
        if e.mask & libc::IN_CREATE == 0 || e.mask & libc::IN_ISDIR != 0 {
            return true;
        }
        let created = self.dir.join(std::ffi::OsStr::from_bytes(e.name));
        std::fs::symlink_metadata(created).is_ok_and(|m| m.file_type().is_symlink())
    }

    /// Watch the folder the file's name resolves into now, too (a symlink
    /// into another folder). Watching one again is harmless; a folder that
    /// goes away takes its watch with it.
    fn follow_target(&self) {
        if let Some(real) = std::fs::canonicalize(&self.file)
            .ok()
            .and_then(|r| r.parent().map(Path::to_path_buf))
        {
            if real != self.dir {
                let _ = crate::sys::inotify_add_watch(&self.inotify, &real, MASK);
            }
        }
    }
}

use std::os::unix::ffi::OsStrExt;

/// The folder a file is named in (`.` for a bare name).
fn folder_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// One inotify event, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
struct Event<'a> {
    mask: u32,
    /// The entry's name in the watched folder, without its NUL padding
    /// (empty for an event on the folder itself).
    name: &'a [u8],
}

/// The events in what one read returned (`struct inotify_event`: watch
/// descriptor, mask, cookie, name length, then the padded name). A
/// truncated tail (which the kernel never writes) ends the list.
fn events(buf: &[u8]) -> impl Iterator<Item = Event<'_>> {
    const HEADER: usize = 16;
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < HEADER {
            return None;
        }
        let word = |i: usize| u32::from_ne_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
        let mask = word(4);
        let len = word(12) as usize;
        let name = rest.get(HEADER..HEADER + len)?;
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(len)];
        rest = &rest[HEADER + len..];
        Some(Event { mask, name })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(mask: u32, name: &str, padded: usize) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&1i32.to_ne_bytes());
        v.extend_from_slice(&mask.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(&(padded as u32).to_ne_bytes());
        let mut n = name.as_bytes().to_vec();
        n.resize(padded, 0);
        v.extend_from_slice(&n);
        v
    }

    #[test]
    fn events_are_split_and_their_names_unpadded() {
        let mut buf = raw(libc::IN_MOVED_TO, "..data", 16);
        buf.extend(raw(libc::IN_CLOSE_WRITE, "ringway.toml", 16));
        buf.extend(raw(libc::IN_DELETE_SELF, "", 0));
        let got: Vec<_> = events(&buf).collect();
        assert_eq!(
            got,
            vec![
                Event {
                    mask: libc::IN_MOVED_TO,
                    name: b"..data"
                },
                Event {
                    mask: libc::IN_CLOSE_WRITE,
                    name: b"ringway.toml"
                },
                Event {
                    mask: libc::IN_DELETE_SELF,
                    name: b""
                },
            ]
        );
        // A cut-off event is not read past the buffer.
        let cut = &buf[..buf.len() - 20];
        assert_eq!(events(cut).count(), 1);
    }

    #[test]
    fn the_folder_of_a_bare_name_is_here() {
        assert_eq!(folder_of(Path::new("ringway.toml")), PathBuf::from("."));
        assert_eq!(
            folder_of(Path::new("/etc/ringway/ringway.toml")),
            PathBuf::from("/etc/ringway")
        );
    }
}
