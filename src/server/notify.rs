//! systemd readiness (`Type=notify` in `tuning/ringway.service`): when
//! systemd starts ringway it sets `NOTIFY_SOCKET`, and ringway tells it,
//! one datagram each, that it is ready (every worker started, every
//! listener bound), that it is reloading and ready again (SIGHUP or a
//! `--watch-config` change), and that it is stopping (the drain began).
//! Without `NOTIFY_SOCKET` (not under systemd, or another `Type=`) every
//! call here does nothing. A message that cannot be sent is logged once at
//! debug: readiness is a courtesy to the supervisor, never a reason to
//! fail.

use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;

/// The socket systemd listens on, read once from the environment.
fn target() -> Option<&'static (UnixDatagram, std::os::unix::net::SocketAddr)> {
    static TARGET: OnceLock<Option<(UnixDatagram, std::os::unix::net::SocketAddr)>> =
        OnceLock::new();
    TARGET
        .get_or_init(|| {
            let path = std::env::var_os("NOTIFY_SOCKET")?;
            let addr = address(path.as_encoded_bytes())?;
            match UnixDatagram::unbound() {
                Ok(sock) => Some((sock, addr)),
                Err(e) => {
                    log::debug!("NOTIFY_SOCKET: cannot make a socket: {e}");
                    None
                }
            }
        })
        .as_ref()
}

/// `NOTIFY_SOCKET`'s address: a path, or `@name` in the abstract namespace.
fn address(value: &[u8]) -> Option<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    match value {
        [] => None,
        [b'@', name @ ..] => std::os::unix::net::SocketAddr::from_abstract_name(name).ok(),
        path => {
            std::os::unix::net::SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path)).ok()
        }
    }
}

/// Send one notification (newline-separated `KEY=value` lines).
fn send(state: &str) {
    if let Some((sock, addr)) = target() {
        if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
            log::debug!("NOTIFY_SOCKET: cannot notify systemd: {e}");
        }
    }
}

/// Every listener is bound and every worker runs: `READY=1`, with a status
/// line for `systemctl status`.
pub fn ready(status: &str) {
    send(&format!(
        "READY=1\nMAINPID={}\nSTATUS={}",
        std::process::id(),
        one_line(status)
    ));
}

/// A reload begins (`RELOADING=1`, with the `MONOTONIC_USEC` that
/// `Type=notify-reload` asks for); [`ready`] follows when it is done,
/// whatever its outcome.
pub fn reloading() {
    send(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        crate::sys::monotonic_usec()
    ));
}

/// The drain began: `STOPPING=1`.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=draining");
}

/// A status value on one line (systemd reads up to the newline).
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_paths_and_abstract_names() {
        use std::os::linux::net::SocketAddrExt;
        let a = address(b"/run/systemd/notify").unwrap();
        assert_eq!(
            a.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let a = address(b"@ringway-test").unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"ringway-test"[..]));
        assert!(address(b"").is_none());
    }

    #[test]
    fn a_status_is_one_line() {
        assert_eq!(one_line("a\nb\rc"), "a b c");
    }
}
