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

use crate::config::Backend as Server;
use crate::io::sweep::Expiry;
use crate::ops::access_log::{CoreLog, Entry};
use crate::ops::ending::{Closed, Kind, Timeout};
use crate::ops::metrics::CoreMetrics;
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
/// the reason in the WARN line (and, today, the answer's body).
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
    ClosedWithoutAnswer,
    ReadFailed(io::Error),
    BadAnswer(BadResponse),
    TooManyInterim,
}

#[derive(Debug)]
pub enum SystemFault {
    ShuttingDown,
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
                Policy::OverMaxConns { .. } => Status::ServiceUnavailable,
                Policy::NoRoute => Status::NotFound,
                Policy::OriginNotAllowed(_) => Status::Forbidden,
                Policy::PerIpLimit { status, .. } => Status::Other(*status),
            },
            Refusal::Backend(b) => match b {
                BackendFault::ConnectTimeout(_) | BackendFault::NoAnswerInTime { .. } => {
                    Status::GatewayTimeout
                }
                BackendFault::NoServer { .. } => Status::ServiceUnavailable,
                BackendFault::ConnectFailed(..)
                | BackendFault::TlsFailed(..)
                | BackendFault::SendFailed(_)
                | BackendFault::ClosedWithoutAnswer
                | BackendFault::ReadFailed(_)
                | BackendFault::BadAnswer(_)
                | BackendFault::TooManyInterim => Status::BadGateway,
            },
            Refusal::System(SystemFault::ShuttingDown) => Status::ServiceUnavailable,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Client(c) => c.fmt(f),
            Refusal::Policy(p) => p.fmt(f),
            Refusal::Backend(b) => b.fmt(f),
            Refusal::System(SystemFault::ShuttingDown) => f.write_str("shutting down"),
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
    /// gets a debug line only, a failed TLS handshake an INFO line.
    pub fn record(&self, gen: &Generation, metrics: &CoreMetrics, log: &CoreLog) {
        self.count(metrics);
        match &self.outcome {
            Outcome::Gone(why) => {
                log::debug!("client={} left before a request: {why}", self.peer);
                return;
            }
            Outcome::TlsFailed(why) => {
                log::info!("client={} tls handshake failed: {why}", self.peer);
                return;
            }
            _ => {}
        }
        let route = self
            .known
            .route
            .and_then(|i| gen.routes.get(i as usize))
            .map(|(label, _)| &**label);
        if let Some(line) = self.warn_line(route) {
            log::warn!("{line}");
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
        Some(format!(
            "client={}{} route={} target={} backend={} status={} reason=\"{}\"",
            self.peer,
            self.real_ip()
                .map_or(String::new(), |ip| format!(" real_ip={ip}")),
            route.unwrap_or("-"),
            target.as_deref().unwrap_or("-"),
            server.map_or("-", |b| b.name.as_str()),
            refusal.status().code(),
            refusal.to_string().escape_debug(),
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
