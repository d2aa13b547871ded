//! How a connection ended, and what that is counted and logged as.
//!
//! Each phase ends in an [`Outcome`]; a refusal (ringway answering an error
//! itself) says who is at fault as a type ([`Refusal`]), with its status
//! and its words for the log. [`Ended::record`] turns the outcome into the
//! core's counters, one access-log line and, for a refusal, one WARN line:
//! the only place where an outcome becomes numbers and words.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use log::Level;

use crate::config::Backend as Server;
use crate::io::sweep::Expiry;
use crate::ops::access_log::{CoreLog, Entry};
use crate::ops::ending::{Closed, Kind, Timeout};
use crate::ops::escape::Escaped;
use crate::ops::metrics::CoreMetrics;
use crate::ops::ratelog::{self, limited, Topic};
use crate::percore::Generation;
use crate::proto::http::path::BadPath;
use crate::proto::http::request::HandshakeError as BadHead;
use crate::proto::http::response::BadResponse;
use crate::proto::http::status::Status;

use super::files::Served;
use super::Known;

/// Most interim (1xx) answers passed on before the final one.
pub(super) const MAX_INTERIM: usize = 16;

/// Why ringway answered a request itself, by who is at fault. `Display` is
/// the reason in the WARN line, with what the operator needs (addresses,
/// OS errors); [`Refusal::public`] is the answer's body, with nothing
/// internal.
#[derive(Debug)]
pub enum Refusal {
    /// The client's request was wrong, or too slow.
    Client(ClientFault),
    /// The configuration says no: no route, an Origin, a limit.
    Policy(Policy),
    /// The backend could not be reached, or did not answer HTTP.
    Backend(BackendFault),
    /// ringway's own state: it is shutting down.
    System(SystemFault),
}

#[derive(Debug)]
pub enum ClientFault {
    /// A malformed head, a bad handshake or version, a head too large.
    BadHead(BadHead),
    /// No whole head within `--handshake-timeout` (`completed_late`: it
    /// completed only as the deadline struck).
    HeadTimeout { completed_late: bool },
    /// A path that cannot be resolved for routing.
    BadPath(BadPath),
    /// A path refused for a static file.
    BadFilePath(BadPath),
    /// Plain HTTP spoken to a TLS listener.
    PlainHttpOnTls,
}

#[derive(Debug)]
pub enum Policy {
    /// Accepted beyond `--max-conns`.
    OverMaxConns { max: usize },
    /// Accepted beyond the room the open-files limit leaves.
    OutOfDescriptors,
    /// No route for the host and path.
    NoRoute,
    /// An upgrade from an Origin not in `--allow-origin`.
    OriginNotAllowed(Box<str>),
    /// `--limit-conn-per-ip`; answered `status` (`--limit-conn-status`).
    PerIpLimit {
        ip: IpAddr,
        tunnels: u32,
        status: u16,
    },
}

#[derive(Debug)]
pub enum BackendFault {
    ConnectTimeout(SocketAddr),
    ConnectFailed(SocketAddr, io::Error),
    /// The TLS handshake with a wss:// backend failed.
    TlsFailed(SocketAddr, io::Error),
    /// Every server of the group is down or failed within its fail_timeout.
    NoServer {
        group: Box<str>,
    },
    SendFailed(io::Error),
    /// The backend did not answer in time (`idle`: within the idle timeout).
    NoAnswerInTime {
        idle: bool,
    },
    /// No answer to an upgrade within `--upstream-answer-timeout`.
    AnswerTimeout(SocketAddr),
    ClosedWithoutAnswer,
    ReadFailed(io::Error),
    BadAnswer(BadResponse),
    TooManyInterim,
}

#[derive(Debug)]
pub enum SystemFault {
    ShuttingDown,
    /// ringway itself lacked a resource to reach a backend: descriptors,
    /// memory, a local port. Not the backend's fault: never counted
    /// against it.
    Local(io::Error),
}

impl SystemFault {
    /// Whether an error of a backend connect is ringway's own want of
    /// resources rather than the backend's doing.
    pub fn is_local(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(
                libc::EMFILE
                    | libc::ENFILE
                    | libc::ENOMEM
                    | libc::ENOBUFS
                    | libc::EADDRNOTAVAIL
                    | libc::EAGAIN
            )
        )
    }
}

impl Refusal {
    /// The answer's status.
    pub fn status(&self) -> Status {
        match self {
            Refusal::Client(c) => match c {
                ClientFault::BadHead(e) => e.status(),
                ClientFault::HeadTimeout { .. } => Status::RequestTimeout,
                ClientFault::BadPath(_)
                | ClientFault::BadFilePath(_)
                | ClientFault::PlainHttpOnTls => Status::BadRequest,
            },
            Refusal::Policy(p) => match p {
                Policy::OverMaxConns { .. } | Policy::OutOfDescriptors => {
                    Status::ServiceUnavailable
                }
                Policy::NoRoute => Status::NotFound,
                Policy::OriginNotAllowed(_) => Status::Forbidden,
                Policy::PerIpLimit { status, .. } => Status::Other(*status),
            },
            Refusal::Backend(b) => match b {
                BackendFault::ConnectTimeout(_)
                | BackendFault::NoAnswerInTime { .. }
                | BackendFault::AnswerTimeout(_) => Status::GatewayTimeout,
                BackendFault::NoServer { .. } => Status::ServiceUnavailable,
                BackendFault::ConnectFailed(..)
                | BackendFault::TlsFailed(..)
                | BackendFault::SendFailed(_)
                | BackendFault::ClosedWithoutAnswer
                | BackendFault::ReadFailed(_)
                | BackendFault::BadAnswer(_)
                | BackendFault::TooManyInterim => Status::BadGateway,
            },
            Refusal::System(_) => Status::ServiceUnavailable,
        }
    }

    /// The answer's body: what the client may know. No address, no OS
    /// error, no configured value: those are in the WARN line.
    pub fn public(&self) -> String {
        let words = match self {
            // The client's own request: its fault's words are fixed texts.
            Refusal::Client(c) => return c.to_string(),
            Refusal::Policy(p) => match p {
                Policy::OverMaxConns { .. } | Policy::OutOfDescriptors => {
                    "the server is at its connection limit; try again later"
                }
                Policy::NoRoute => "no route for this host and path",
                Policy::OriginNotAllowed(_) => "this Origin is not allowed",
                Policy::PerIpLimit { .. } => "too many connections from this address",
            },
            Refusal::Backend(b) => match b {
                BackendFault::ConnectTimeout(_)
                | BackendFault::NoAnswerInTime { .. }
                | BackendFault::AnswerTimeout(_) => "the backend did not answer in time",
                BackendFault::NoServer { .. } => "no backend is available",
                BackendFault::ConnectFailed(..)
                | BackendFault::TlsFailed(..)
                | BackendFault::SendFailed(_)
                | BackendFault::ClosedWithoutAnswer
                | BackendFault::ReadFailed(_)
                | BackendFault::BadAnswer(_)
                | BackendFault::TooManyInterim => {
                    "the backend could not be reached or answered badly"
                }
            },
            Refusal::System(SystemFault::ShuttingDown) => "shutting down",
            Refusal::System(SystemFault::Local(_)) => "temporarily out of resources; try again",
        };
        words.to_string()
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Client(c) => c.fmt(f),
            Refusal::Policy(p) => p.fmt(f),
            Refusal::Backend(b) => b.fmt(f),
            Refusal::System(SystemFault::ShuttingDown) => f.write_str("shutting down"),
            Refusal::System(SystemFault::Local(e)) => {
                write!(
                    f,
                    "ringway is out of a local resource ({e}); the backend is not marked"
                )
            }
        }
    }
}

impl fmt::Display for ClientFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientFault::BadHead(e) => write!(f, "{e}"),
            ClientFault::HeadTimeout {
                completed_late: true,
            } => f.write_str("request head completed only at --handshake-timeout"),
            ClientFault::HeadTimeout {
                completed_late: false,
            } => f.write_str("no complete request head within --handshake-timeout"),
            ClientFault::BadPath(e) => write!(f, "refused path: {e}"),
            ClientFault::BadFilePath(e) => write!(f, "refused path for a file: {e}"),
            ClientFault::PlainHttpOnTls => f.write_str("plain HTTP request sent to a TLS port"),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::OverMaxConns { max } => write!(f, "over --max-conns ({max} connections open)"),
            Policy::OutOfDescriptors => f.write_str(
                "over the connections the open-files limit leaves room for (raise LimitNOFILE)",
            ),
            Policy::NoRoute => f.write_str("no route for this host and path"),
            Policy::OriginNotAllowed(o) => write!(f, "Origin {o} is not in --allow-origin"),
            Policy::PerIpLimit { ip, tunnels, .. } => {
                write!(
                    f,
                    "{ip} already has {tunnels} tunnels (--limit-conn-per-ip)"
                )
            }
        }
    }
}

impl fmt::Display for BackendFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendFault::ConnectTimeout(a) => write!(f, "connect to {a} timed out"),
            BackendFault::ConnectFailed(a, e) => write!(f, "connect to {a} failed: {e}"),
            BackendFault::TlsFailed(a, e) => write!(f, "TLS handshake with {a} failed: {e}"),
            BackendFault::NoServer { group } => write!(
                f,
                "no server of group {group} is available: each is down or failed within its \
                 fail_timeout"
            ),
            BackendFault::SendFailed(e) => write!(f, "sending the request failed: {e}"),
            BackendFault::NoAnswerInTime { idle: true } => {
                f.write_str("no answer from the backend within --idle-timeout")
            }
            BackendFault::NoAnswerInTime { idle: false } => f.write_str("no answer in time"),
            BackendFault::AnswerTimeout(a) => write!(
                f,
                "{a} did not answer the upgrade within --upstream-answer-timeout"
            ),
            BackendFault::ClosedWithoutAnswer => {
                f.write_str("the backend closed without answering")
            }
            BackendFault::ReadFailed(e) => write!(f, "reading the answer failed: {e}"),
            BackendFault::BadAnswer(e) => write!(f, "{e}"),
            BackendFault::TooManyInterim => {
                write!(f, "more than {MAX_INTERIM} interim (1xx) answers")
            }
        }
    }
}

/// Why a client's TLS handshake failed.
#[derive(Debug)]
pub enum TlsFailure {
    Timeout,
    Failed(io::Error),
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::Timeout => f.write_str("not finished within --handshake-timeout"),
            TlsFailure::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// How a connection ended.
#[derive(Debug)]
pub(super) enum Outcome<'a> {
    /// The client left before a whole request head: logged at debug only.
    Gone(&'static str),
    TlsFailed(TlsFailure),
    /// ringway answered an error itself (at `answered`).
    Refused {
        refusal: Refusal,
        target: Option<Box<str>>,
        server: Option<&'a Server>,
        answered: Instant,
    },
    /// A static route answered (its head sent at `answered`).
    File {
        target: Box<str>,
        served: Served,
        answered: Instant,
    },
    /// The backend answered (a tunnel, or a streamed response).
    Done(Summary<'a>),
}

/// An exchange with a backend, as it went.
#[derive(Debug)]
pub(super) struct Summary<'a> {
    pub target: Box<str>,
    pub server: &'a Server,
    pub status: u16,
    /// The client asked for an upgrade...
    pub upgrade_request: bool,
    /// ...and got it.
    pub upgraded: bool,
    pub up: u64,
    pub down: u64,
    pub closed: Closed,
    /// The error behind a `ClientError`/`BackendError` end.
    pub error: Option<io::Error>,
    /// When the answer's head was sent (the handshake's end).
    pub answered: Option<Instant>,
}

/// A sweep expiry, as a closing reason.
pub(super) fn expired(e: Expiry) -> Closed {
    match e {
        Expiry::Handshake => Closed::Timeout(Timeout::Handshake),
        Expiry::Connect => Closed::Timeout(Timeout::Connect),
        Expiry::Answer => Closed::Timeout(Timeout::Answer),
        Expiry::HalfClose => Closed::Timeout(Timeout::HalfClose),
        Expiry::Idle => Closed::Timeout(Timeout::Idle),
        Expiry::Linger => Closed::Timeout(Timeout::Linger),
        Expiry::Drain => Closed::Shutdown,
    }
}

/// A connection at its end, with what it learned on the way.
pub(super) struct Ended<'a> {
    /// The client's address: the TCP peer, or what its PROXY header said.
    pub peer: SocketAddr,
    pub started: Instant,
    /// The client's TLS version, when it spoke TLS.
    pub tls: Option<&'static str>,
    pub known: Known,
    pub outcome: Outcome<'a>,
}

impl Ended<'_> {
    /// Count it on this core and log it: one access-log line, and a WARN
    /// line with the reason for a refusal. A client gone before its request
    /// gets a debug line only, a failed TLS handshake an INFO line. WARN and
    /// INFO lines are rate-limited per reason ([`ratelog`]); the counters
    /// and the access log take every one.
    pub fn record(&self, gen: &Generation, metrics: &CoreMetrics, log: &CoreLog) {
        self.count(metrics);
        let refusal = match &self.outcome {
            Outcome::Gone(why) => {
                log::debug!("client={} left before a request: {why}", self.peer);
                return;
            }
            Outcome::TlsFailed(why) => {
                limited!(
                    Topic::TlsHandshake,
                    Level::Info,
                    "client={} tls handshake failed: {}",
                    self.peer,
                    Escaped::quoted(&why.to_string())
                );
                return;
            }
            Outcome::Refused { refusal, .. } => Some(refusal),
            _ => None,
        };
        let route = self
            .known
            .route
            .and_then(|i| gen.routes.get(i as usize))
            .map(|(label, _)| &**label);
        if let Some(refusal) = refusal {
            if ratelog::admit(topic(refusal), Level::Warn, module_path!()) {
                if let Some(line) = self.warn_line(route) {
                    log::warn!("{line}");
                }
            }
        }
        let detail = self.detail();
        if let Some(entry) = self.entry(route, detail.as_deref(), Instant::now()) {
            log.record(&entry);
        }
    }

    /// The counters this end moves.
    fn count(&self, metrics: &CoreMetrics) {
        match &self.outcome {
            Outcome::Gone(_) => {}
            Outcome::TlsFailed(_) => metrics.tls_failures.inc(),
            Outcome::Refused { refusal, .. } => {
                let code = refusal.status().code();
                if self.known.plain {
                    metrics.request(code);
                } else {
                    metrics.handshake_error(code);
                }
            }
            Outcome::File { served, .. } => metrics.request(served.status),
            Outcome::Done(s) => match (s.upgraded, s.upgrade_request) {
                // Counted when it opened; now, why it ended.
                (true, _) => metrics.closed(s.closed.metric()),
                (false, true) => metrics.handshake_error(s.status),
                (false, false) => metrics.request(s.status),
            },
        }
    }

    /// The address X-Forwarded-For from a trusted proxy named, when it did.
    fn real_ip(&self) -> Option<IpAddr> {
        let peer = self.peer.ip().to_canonical();
        self.known.real_ip.filter(|&ip| ip != peer)
    }

    /// The WARN line of a refusal: the reason goes to the error log, the
    /// access log gets the answer.
    fn warn_line(&self, route: Option<&str>) -> Option<String> {
        let Outcome::Refused {
            refusal,
            target,
            server,
            ..
        } = &self.outcome
        else {
            return None;
        };
        fn dash(v: Option<&str>) -> Escaped<'_> {
            Escaped::bare(v.unwrap_or("-"))
        }
        Some(format!(
            "client={}{} route={} target={} backend={} status={} reason=\"{}\"",
            self.peer,
            self.real_ip()
                .map_or(String::new(), |ip| format!(" real_ip={ip}")),
            dash(route),
            dash(target.as_deref()),
            dash(server.map(|b| b.name.as_str())),
            refusal.status().code(),
            Escaped::quoted(&refusal.to_string()),
        ))
    }

    /// The error text behind the end, for the access log's `closed`.
    fn detail(&self) -> Option<String> {
        match &self.outcome {
            Outcome::File { served, .. } => served.why.clone(),
            Outcome::Done(s) => s.error.as_ref().map(|e| e.to_string()),
            _ => None,
        }
    }

    /// Its access-log line (none for a client gone before its request or a
    /// failed TLS handshake), as of `now`.
    fn entry<'e>(
        &'e self,
        route: Option<&'e str>,
        detail: Option<&'e str>,
        now: Instant,
    ) -> Option<Entry<'e>> {
        let duration = now.saturating_duration_since(self.started);
        let since = |t: Option<Instant>| t.map_or(duration, |t| t - self.started);
        let mut entry = Entry {
            kind: Kind::Refused,
            client: self.peer,
            real_ip: self.real_ip(),
            route,
            target: None,
            backend: None,
            status: 0,
            handshake: duration,
            duration,
            up: 0,
            down: 0,
            closed: Closed::Refused,
            detail,
            tls: self.tls,
        };
        match &self.outcome {
            Outcome::Gone(_) | Outcome::TlsFailed(_) => return None,
            Outcome::Refused {
                refusal,
                target,
                server,
                answered,
            } => {
                entry.target = target.as_deref();
                entry.backend = server.map(|b| b.name.as_str());
                entry.status = refusal.status().code();
                entry.handshake = since(Some(*answered));
            }
            Outcome::File {
                target,
                served,
                answered,
            } => {
                entry.kind = Kind::File;
                entry.target = Some(target);
                entry.status = served.status;
                entry.down = served.bytes;
                entry.handshake = since(Some(*answered));
                entry.closed = match (&served.why, served.status) {
                    (None, _) => Closed::Complete,
                    (Some(_), 400..) => Closed::Refused,
                    (Some(_), _) => Closed::CutShort,
                };
            }
            Outcome::Done(s) => {
                entry.kind = if s.upgraded {
                    Kind::Tunnel
                } else {
                    Kind::Request
                };
                entry.target = Some(&s.target);
                entry.backend = Some(&s.server.name);
                entry.status = s.status;
                entry.up = s.up;
                entry.down = s.down;
                entry.handshake = since(s.answered);
                entry.closed = s.closed;
            }
        }
        Some(entry)
    }
}

/// The rate limit's reason for a refusal's WARN line. Backend faults go by
/// their status, so that a new kind of fault needs no new topic.
fn topic(refusal: &Refusal) -> Topic {
    match refusal {
        Refusal::Client(c) => match c {
            ClientFault::BadHead(_) => Topic::BadHead,
            ClientFault::HeadTimeout { .. } => Topic::HeadTimeout,
            ClientFault::BadPath(_) | ClientFault::BadFilePath(_) => Topic::BadPath,
            ClientFault::PlainHttpOnTls => Topic::PlainHttpOnTls,
        },
        Refusal::Policy(p) => match p {
            Policy::OverMaxConns { .. } => Topic::OverMaxConns,
            Policy::OutOfDescriptors => Topic::OutOfDescriptors,
            Policy::NoRoute => Topic::NoRoute,
            Policy::OriginNotAllowed(_) => Topic::Origin,
            Policy::PerIpLimit { .. } => Topic::PerIpLimit,
        },
        Refusal::Backend(_) => match refusal.status() {
            Status::GatewayTimeout => Topic::BackendTimeout,
            Status::ServiceUnavailable => Topic::NoServer,
            _ => Topic::BackendFailed,
        },
        Refusal::System(SystemFault::ShuttingDown) => Topic::ShuttingDown,
        Refusal::System(SystemFault::Local(_)) => Topic::LocalFailure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::metrics::CloseReason;
    use crate::policy::balance::ServerParams;
    use std::time::Duration;

    fn server() -> Server {
        Server {
            name: "b1:8080".into(),
            addr: "127.0.0.1:8080".parse().unwrap(),
            tls: None,
            params: ServerParams::default(),
        }
    }

    fn ended<'a>(known: Known, outcome: Outcome<'a>, started: Instant) -> Ended<'a> {
        Ended {
            peer: "10.0.0.1:5000".parse().unwrap(),
            started,
            tls: None,
            known,
            outcome,
        }
    }

    fn summary(server: &Server, upgraded: bool, closed: Closed) -> Summary<'_> {
        Summary {
            target: "/ws".into(),
            server,
            status: if upgraded { 101 } else { 200 },
            upgrade_request: true,
            upgraded,
            up: 10,
            down: 20,
            closed,
            error: None,
            answered: None,
        }
    }

    #[test]
    fn statuses_by_fault() {
        let io = || io::Error::from(io::ErrorKind::ConnectionRefused);
        let addr = "127.0.0.1:1".parse().unwrap();
        let cases: Vec<(Refusal, u16, &str)> = vec![
            (
                Refusal::Client(ClientFault::BadHead(BadHead::BadVersion)),
                426,
                "unsupported WebSocket version",
            ),
            (
                Refusal::Client(ClientFault::HeadTimeout {
                    completed_late: false,
                }),
                408,
                "no complete request head within --handshake-timeout",
            ),
            (
                Refusal::Client(ClientFault::BadPath(BadPath::Nul)),
                400,
                "refused path: NUL byte in path",
            ),
            (
                Refusal::Client(ClientFault::PlainHttpOnTls),
                400,
                "plain HTTP request sent to a TLS port",
            ),
            (
                Refusal::Policy(Policy::OverMaxConns { max: 7 }),
                503,
                "over --max-conns (7 connections open)",
            ),
            (
                Refusal::Policy(Policy::NoRoute),
                404,
                "no route for this host and path",
            ),
            (
                Refusal::Policy(Policy::OriginNotAllowed("https://evil".into())),
                403,
                "Origin https://evil is not in --allow-origin",
            ),
            (
                Refusal::Policy(Policy::PerIpLimit {
                    ip: "10.0.0.9".parse().unwrap(),
                    tunnels: 3,
                    status: 429,
                }),
                429,
                "10.0.0.9 already has 3 tunnels (--limit-conn-per-ip)",
            ),
            (
                Refusal::Backend(BackendFault::ConnectTimeout(addr)),
                504,
                "connect to 127.0.0.1:1 timed out",
            ),
            (
                Refusal::Backend(BackendFault::ConnectFailed(addr, io())),
                502,
                "connect to 127.0.0.1:1 failed: connection refused",
            ),
            (
                Refusal::Backend(BackendFault::NoServer {
                    group: "chat".into(),
                }),
                503,
                "no server of group chat is available: each is down or failed within its \
                 fail_timeout",
            ),
            (
                Refusal::Backend(BackendFault::NoAnswerInTime { idle: true }),
                504,
                "no answer from the backend within --idle-timeout",
            ),
            (
                Refusal::Backend(BackendFault::BadAnswer(BadResponse::Malformed)),
                502,
                "invalid response head from backend",
            ),
            (
                Refusal::Backend(BackendFault::TooManyInterim),
                502,
                "more than 16 interim (1xx) answers",
            ),
            (
                Refusal::System(SystemFault::ShuttingDown),
                503,
                "shutting down",
            ),
            (
                Refusal::Policy(Policy::OutOfDescriptors),
                503,
                "over the connections the open-files limit leaves room for (raise LimitNOFILE)",
            ),
            (
                Refusal::Backend(BackendFault::AnswerTimeout(addr)),
                504,
                "127.0.0.1:1 did not answer the upgrade within --upstream-answer-timeout",
            ),
            (
                Refusal::System(SystemFault::Local(io::Error::from_raw_os_error(
                    libc::EMFILE,
                ))),
                503,
                "ringway is out of a local resource (Too many open files (os error 24)); \
                 the backend is not marked",
            ),
        ];
        for (refusal, status, words) in cases {
            assert_eq!(refusal.status().code(), status, "{words}");
            assert_eq!(refusal.to_string(), words);
        }
    }

    /// Every refusal built with internal detail (an address, an OS error, a
    /// group's name, a configured number, the client's own Origin):
    /// none of it reaches the answer's body.
    #[test]
    fn answers_carry_nothing_internal() {
        let addr: SocketAddr = "10.9.8.7:4567".parse().unwrap();
        let os = || io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let refusals = vec![
            Refusal::Policy(Policy::OverMaxConns { max: 7654 }),
            Refusal::Policy(Policy::OutOfDescriptors),
            Refusal::Policy(Policy::OriginNotAllowed("https://sneaky.example".into())),
            Refusal::Policy(Policy::PerIpLimit {
                ip: "10.9.8.7".parse().unwrap(),
                tunnels: 7654,
                status: 429,
            }),
            Refusal::Backend(BackendFault::ConnectTimeout(addr)),
            Refusal::Backend(BackendFault::ConnectFailed(addr, os())),
            Refusal::Backend(BackendFault::TlsFailed(addr, os())),
            Refusal::Backend(BackendFault::NoServer {
                group: "secretgroup".into(),
            }),
            Refusal::Backend(BackendFault::SendFailed(os())),
            Refusal::Backend(BackendFault::NoAnswerInTime { idle: true }),
            Refusal::Backend(BackendFault::AnswerTimeout(addr)),
            Refusal::Backend(BackendFault::ClosedWithoutAnswer),
            Refusal::Backend(BackendFault::ReadFailed(os())),
            Refusal::Backend(BackendFault::BadAnswer(BadResponse::Malformed)),
            Refusal::Backend(BackendFault::TooManyInterim),
            Refusal::System(SystemFault::ShuttingDown),
            Refusal::System(SystemFault::Local(io::Error::from_raw_os_error(
                libc::EMFILE,
            ))),
        ];
        for refusal in refusals {
            let body = refusal.public();
            let answer = String::from_utf8(refusal.status().response(&body)).unwrap();
            for secret in [
                "10.9.8.7",
                "4567",
                "7654",
                "os error",
                "refused",
                "secretgroup",
                "sneaky",
                "--",
                "files",
                "Too many",
            ] {
                assert!(!answer.contains(secret), "{secret:?} in {answer:?}");
            }
            assert!(!body.is_empty());
        }
    }

    #[test]
    fn a_refused_upgrade_counts_as_a_handshake_error_and_logs_a_warning() {
        let metrics = CoreMetrics::new();
        let b = server();
        let started = Instant::now();
        let known = Known {
            route: Some(0),
            real_ip: Some("203.0.113.7".parse().unwrap()),
            plain: false,
        };
        let e = ended(
            known,
            Outcome::Refused {
                refusal: Refusal::Backend(BackendFault::ConnectTimeout(b.addr)),
                target: Some("/ws?q=\"x\"".into()),
                server: Some(&b),
                answered: started + Duration::from_millis(5),
            },
            started,
        );
        e.count(&metrics);
        assert_eq!(metrics.handshake_errors_with(504), 1);
        assert_eq!(metrics.requests_with(504), 0);
        assert_eq!(
            e.warn_line(Some("/ws")).unwrap(),
            "client=10.0.0.1:5000 real_ip=203.0.113.7 route=/ws target=/ws?q=\\\"x\\\" \
             backend=b1:8080 status=504 reason=\"connect to 127.0.0.1:8080 timed out\""
        );
        let entry = e
            .entry(Some("/ws"), None, started + Duration::from_millis(9))
            .unwrap();
        assert_eq!(entry.kind, Kind::Refused);
        assert_eq!(entry.closed, Closed::Refused);
        assert_eq!(entry.status, 504);
        assert_eq!(entry.backend, Some("b1:8080"));
        assert_eq!(entry.target, Some("/ws?q=\"x\""));
        assert_eq!(entry.handshake, Duration::from_millis(5));
        assert_eq!(entry.duration, Duration::from_millis(9));
        assert_eq!(entry.real_ip, Some("203.0.113.7".parse().unwrap()));
    }

    #[test]
    fn a_warning_escapes_and_caps_what_the_client_sent() {
        let every: Vec<u8> = (0..=255u8).collect();
        let text = String::from_utf8_lossy(&every).repeat(4);
        let started = Instant::now();
        for refusal in [
            Refusal::Policy(Policy::OriginNotAllowed(text.clone().into())),
            Refusal::Client(ClientFault::BadHead(BadHead::Malformed("x"))),
        ] {
            let e = ended(
                Known::default(),
                Outcome::Refused {
                    refusal,
                    target: Some(text.clone().into()),
                    server: None,
                    answered: started,
                },
                started,
            );
            let line = e.warn_line(Some("/")).unwrap();
            assert!(line.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{line}");
            assert!(line.len() < 1200, "{} bytes", line.len());
            assert!(
                line.contains(" target=\\x00\\x01") && line.contains("... backend=-"),
                "{line}"
            );
        }
    }

    #[test]
    fn refusals_are_rate_limited_by_reason() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let io = || io::Error::from(io::ErrorKind::ConnectionRefused);
        for (refusal, t) in [
            (
                Refusal::Client(ClientFault::BadHead(BadHead::BadVersion)),
                Topic::BadHead,
            ),
            (
                Refusal::Client(ClientFault::HeadTimeout {
                    completed_late: true,
                }),
                Topic::HeadTimeout,
            ),
            (
                Refusal::Client(ClientFault::BadFilePath(BadPath::Nul)),
                Topic::BadPath,
            ),
            (
                Refusal::Client(ClientFault::PlainHttpOnTls),
                Topic::PlainHttpOnTls,
            ),
            (
                Refusal::Policy(Policy::OverMaxConns { max: 1 }),
                Topic::OverMaxConns,
            ),
            (Refusal::Policy(Policy::NoRoute), Topic::NoRoute),
            (
                Refusal::Policy(Policy::OriginNotAllowed("o".into())),
                Topic::Origin,
            ),
            (
                Refusal::Backend(BackendFault::ConnectTimeout(addr)),
                Topic::BackendTimeout,
            ),
            (
                Refusal::Backend(BackendFault::NoAnswerInTime { idle: false }),
                Topic::BackendTimeout,
            ),
            (
                Refusal::Backend(BackendFault::ConnectFailed(addr, io())),
                Topic::BackendFailed,
            ),
            (
                Refusal::Backend(BackendFault::BadAnswer(BadResponse::Malformed)),
                Topic::BackendFailed,
            ),
            (
                Refusal::Backend(BackendFault::NoServer { group: "g".into() }),
                Topic::NoServer,
            ),
            (
                Refusal::System(SystemFault::ShuttingDown),
                Topic::ShuttingDown,
            ),
        ] {
            assert_eq!(topic(&refusal), t, "{refusal}");
        }
    }

    #[test]
    fn a_refused_plain_request_counts_as_a_request() {
        let metrics = CoreMetrics::new();
        let started = Instant::now();
        let known = Known {
            plain: true,
            // The client itself: not shown as real_ip.
            real_ip: Some("10.0.0.1".parse().unwrap()),
            ..Known::default()
        };
        let refusal = Refusal::Policy(Policy::NoRoute);
        let e = ended(
            known,
            Outcome::Refused {
                refusal,
                target: None,
                server: None,
                answered: started,
            },
            started,
        );
        e.count(&metrics);
        assert_eq!(metrics.requests_with(404), 1);
        assert_eq!(metrics.handshake_errors_with(404), 0);
        let line = e.warn_line(None).unwrap();
        assert!(line.starts_with("client=10.0.0.1:5000 route=- target=- backend=- status=404"));
        assert_eq!(e.entry(None, None, started).unwrap().real_ip, None);
    }

    #[test]
    fn a_tunnel_counts_its_close_reason_and_logs_as_a_tunnel() {
        let b = server();
        let started = Instant::now();
        for (closed, reason) in [
            (Closed::Client, CloseReason::Client),
            (Closed::Backend, CloseReason::Backend),
            (Closed::Timeout(Timeout::Idle), CloseReason::IdleTimeout),
            (Closed::Shutdown, CloseReason::Drain),
            (Closed::Drained, CloseReason::Drain),
            (
                Closed::ClientError(io::ErrorKind::ConnectionReset),
                CloseReason::ClientReset,
            ),
            (
                Closed::ClientError(io::ErrorKind::TimedOut),
                CloseReason::ClientTimeout,
            ),
            (
                Closed::ClientError(io::ErrorKind::InvalidData),
                CloseReason::Error,
            ),
            (
                Closed::Timeout(Timeout::HalfClose),
                CloseReason::HalfCloseTimeout,
            ),
        ] {
            let metrics = CoreMetrics::new();
            let mut s = summary(&b, true, closed);
            s.answered = Some(started + Duration::from_millis(3));
            let e = ended(Known::default(), Outcome::Done(s), started);
            e.count(&metrics);
            assert_eq!(metrics.closed_by(reason), 1, "{closed}");
            assert_eq!(metrics.handshake_errors_with(101), 0);
            assert!(e.warn_line(None).is_none());
            let entry = e.entry(Some("/"), None, started).unwrap();
            assert_eq!(entry.kind, Kind::Tunnel);
            assert_eq!(entry.closed, closed);
            assert_eq!((entry.up, entry.down, entry.status), (10, 20, 101));
            assert_eq!(entry.handshake, Duration::from_millis(3));
        }
    }

    #[test]
    fn an_upgrade_answered_otherwise_is_a_handshake_error_a_plain_one_a_request() {
        let b = server();
        let started = Instant::now();
        let metrics = CoreMetrics::new();
        let mut s = summary(&b, false, Closed::Complete);
        s.status = 403;
        let e = ended(Known::default(), Outcome::Done(s), started);
        e.count(&metrics);
        assert_eq!(metrics.handshake_errors_with(403), 1);
        assert_eq!(e.entry(None, None, started).unwrap().kind, Kind::Request);
        let mut s = summary(&b, false, Closed::Complete);
        s.upgrade_request = false;
        s.error = Some(io::Error::other("boom"));
        let e = ended(Known::default(), Outcome::Done(s), started);
        e.count(&metrics);
        assert_eq!(metrics.requests_with(200), 1);
        assert_eq!(e.detail().as_deref(), Some("boom"));
    }

    #[test]
    fn files_say_complete_refused_or_cut_short() {
        let started = Instant::now();
        for (status, why, closed) in [
            (200, None, Closed::Complete),
            (404, Some("no such file: x"), Closed::Refused),
            (200, Some("client gone"), Closed::CutShort),
        ] {
            let metrics = CoreMetrics::new();
            let served = Served {
                status,
                bytes: 5,
                why: why.map(String::from),
            };
            let e = ended(
                Known::default(),
                Outcome::File {
                    target: "/x".into(),
                    served,
                    answered: started,
                },
                started,
            );
            e.count(&metrics);
            assert_eq!(metrics.requests_with(status), 1);
            let detail = e.detail();
            let entry = e.entry(None, detail.as_deref(), started).unwrap();
            assert_eq!(
                (entry.kind, entry.closed, entry.down),
                (Kind::File, closed, 5)
            );
            assert_eq!(entry.detail, why);
        }
    }

    #[test]
    fn clients_gone_or_failing_tls_get_no_access_line() {
        let metrics = CoreMetrics::new();
        let started = Instant::now();
        let e = ended(Known::default(), Outcome::Gone("closed"), started);
        e.count(&metrics);
        assert!(e.entry(None, None, started).is_none());
        let e = ended(
            Known::default(),
            Outcome::TlsFailed(TlsFailure::Timeout),
            started,
        );
        e.count(&metrics);
        assert_eq!(metrics.tls_failures.get(), 1);
        assert!(e.entry(None, None, started).is_none() && e.warn_line(None).is_none());
    }

    #[test]
    fn expiries_become_timeouts_or_the_shutdown() {
        assert_eq!(expired(Expiry::Idle), Closed::Timeout(Timeout::Idle));
        assert_eq!(
            expired(Expiry::Handshake),
            Closed::Timeout(Timeout::Handshake)
        );
        assert_eq!(expired(Expiry::Connect), Closed::Timeout(Timeout::Connect));
        assert_eq!(expired(Expiry::Linger), Closed::Timeout(Timeout::Linger));
        assert_eq!(expired(Expiry::Drain), Closed::Shutdown);
    }
}
