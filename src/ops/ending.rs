//! How a connection ended, in the words operators see: the access log's
//! `kind` ([`Kind`]) and `closed` ([`Closed`]), and for a tunnel the
//! `reason` it is counted under in `ringway_tunnels_closed_total`
//! ([`Closed::metric`]). Rendered here and nowhere else, so the log and the
//! metrics cannot drift apart.

use std::fmt;
use std::io;

use crate::ops::metrics::CloseReason;

/// What a finished connection was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A WebSocket tunnel opened (the backend answered 101).
    Tunnel,
    /// A request forwarded to a backend that did not become a tunnel: a
    /// plain request, or an upgrade the backend answered otherwise.
    Request,
    /// A static route answered (a file, or its error).
    File,
    /// ringway answered an error itself.
    Refused,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tunnel => "tunnel",
            Kind::Request => "request",
            Kind::File => "file",
            Kind::Refused => "refused",
        }
    }
}

/// One of ringway's own timeouts (besides the idle timeout and the drain,
/// which have words of their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// `--handshake-timeout`.
    Handshake,
    /// `--connect-timeout`.
    Connect,
    /// `--upstream-answer-timeout`.
    Answer,
    /// `--idle-timeout`: no byte either way.
    Idle,
    /// The linger after an error answer.
    Linger,
    /// `--half-close-timeout`: one side of a tunnel had closed, the other
    /// did not follow.
    HalfClose,
}

/// Why a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// ringway answered an error itself.
    Refused,
    /// A plain response (or a file) was complete.
    Complete,
    /// A file's answer stopped short (the client went away).
    CutShort,
    /// The client closed its side.
    Client,
    /// The backend closed its side.
    Backend,
    /// Reading from or writing to the client failed: a reset, the kernel
    /// giving up on it (keepalive or retransmission timeout), or another
    /// error (see [`Closed::metric`] and the words).
    ClientError(io::ErrorKind),
    /// Reading from or writing to the backend failed.
    BackendError(io::ErrorKind),
    /// One of ringway's timeouts.
    Timeout(Timeout),
    /// Closed at the drain deadline (or a second signal).
    Shutdown,
    /// Closed by the drain with Close frames 1001 to both sides.
    Drained,
}

impl Closed {
    /// The `reason` a tunnel that ended so is counted under.
    pub fn metric(self) -> CloseReason {
        match self {
            Closed::Client => CloseReason::Client,
            Closed::Backend | Closed::Complete => CloseReason::Backend,
            Closed::ClientError(k) => match failure(k) {
                Failure::Reset => CloseReason::ClientReset,
                Failure::TimedOut => CloseReason::ClientTimeout,
                Failure::Other => CloseReason::Error,
            },
            Closed::BackendError(k) => match failure(k) {
                Failure::Reset => CloseReason::BackendReset,
                Failure::TimedOut => CloseReason::BackendTimeout,
                Failure::Other => CloseReason::Error,
            },
            Closed::Timeout(Timeout::Idle) => CloseReason::IdleTimeout,
            Closed::Timeout(Timeout::HalfClose) => CloseReason::HalfCloseTimeout,
            Closed::Shutdown | Closed::Drained => CloseReason::Drain,
            Closed::Refused | Closed::CutShort | Closed::Timeout(_) => CloseReason::Error,
        }
    }
}

/// What a failed transfer says about its peer.
enum Failure {
    /// The connection was reset (or aborted): the peer, or a middlebox,
    /// sent a RST.
    Reset,
    /// The kernel gave up: keepalive probes or retransmissions went
    /// unanswered (`ETIMEDOUT`; ringway's own timeouts never end this way,
    /// they shut the sockets down and say so themselves).
    TimedOut,
    Other,
}

fn failure(k: io::ErrorKind) -> Failure {
    match k {
        // A send after the peer's RST fails with EPIPE.
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Failure::Reset,
        io::ErrorKind::TimedOut => Failure::TimedOut,
        _ => Failure::Other,
    }
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Closed::Refused => f.write_str("refused"),
            Closed::Complete => f.write_str("response complete"),
            Closed::CutShort => f.write_str("cut short"),
            Closed::Client => f.write_str("client closed"),
            Closed::Backend => f.write_str("backend closed"),
            Closed::ClientError(k) => match failure(*k) {
                Failure::Reset => f.write_str("client reset"),
                Failure::TimedOut => f.write_str("client tcp timeout"),
                Failure::Other => write!(f, "client error: {k}"),
            },
            Closed::BackendError(k) => match failure(*k) {
                Failure::Reset => f.write_str("backend reset"),
                Failure::TimedOut => f.write_str("backend tcp timeout"),
                Failure::Other => write!(f, "backend error: {k}"),
            },
            Closed::Timeout(Timeout::Idle) => f.write_str("idle timeout"),
            Closed::Timeout(Timeout::HalfClose) => f.write_str("half-close timeout"),
            Closed::Timeout(t) => write!(f, "{t:?} timeout"),
            Closed::Shutdown => f.write_str("closed at shutdown"),
            Closed::Drained => f.write_str("drained (close 1001 sent)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_metrics() {
        let cases = [
            (Closed::Refused, "refused", CloseReason::Error),
            (Closed::Complete, "response complete", CloseReason::Backend),
            (Closed::CutShort, "cut short", CloseReason::Error),
            (Closed::Client, "client closed", CloseReason::Client),
            (Closed::Backend, "backend closed", CloseReason::Backend),
            (
                Closed::ClientError(io::ErrorKind::ConnectionReset),
                "client reset",
                CloseReason::ClientReset,
            ),
            (
                Closed::BackendError(io::ErrorKind::BrokenPipe),
                "backend reset",
                CloseReason::BackendReset,
            ),
            (
                Closed::ClientError(io::ErrorKind::TimedOut),
                "client tcp timeout",
                CloseReason::ClientTimeout,
            ),
            (
                Closed::BackendError(io::ErrorKind::TimedOut),
                "backend tcp timeout",
                CloseReason::BackendTimeout,
            ),
            (
                Closed::ClientError(io::ErrorKind::InvalidData),
                "client error: invalid data",
                CloseReason::Error,
            ),
            (
                Closed::Timeout(Timeout::HalfClose),
                "half-close timeout",
                CloseReason::HalfCloseTimeout,
            ),
            (
                Closed::Timeout(Timeout::Idle),
                "idle timeout",
                CloseReason::IdleTimeout,
            ),
            (
                Closed::Timeout(Timeout::Handshake),
                "Handshake timeout",
                CloseReason::Error,
            ),
            (
                Closed::Timeout(Timeout::Connect),
                "Connect timeout",
                CloseReason::Error,
            ),
            (Closed::Shutdown, "closed at shutdown", CloseReason::Drain),
            (
                Closed::Drained,
                "drained (close 1001 sent)",
                CloseReason::Drain,
            ),
        ];
        for (closed, words, metric) in cases {
            assert_eq!(closed.to_string(), words);
            assert_eq!(closed.metric(), metric, "{words}");
        }
        // The access log writes them unescaped: they must need none.
        let kinds = [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::TimedOut,
            io::ErrorKind::Other,
            io::ErrorKind::InvalidData,
        ];
        for kind in kinds {
            for closed in [Closed::ClientError(kind), Closed::BackendError(kind)] {
                let words = closed.to_string();
                assert!(
                    words
                        .bytes()
                        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'),
                    "{words}"
                );
            }
        }
        assert_eq!(Kind::Tunnel.as_str(), "tunnel");
        assert_eq!(Kind::Request.as_str(), "request");
        assert_eq!(Kind::File.as_str(), "file");
        assert_eq!(Kind::Refused.as_str(), "refused");
    }
}
