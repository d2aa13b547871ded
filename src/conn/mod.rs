//! One client connection, start to end:
//! handshake -> connect -> request -> answer -> tunnel (or streamed response).
//!
//! The connection owns its two sockets and its [`Tracked`] timeout slot; it
//! logs its own end in exactly one line (a client that leaves before sending
//! a whole request head is logged at debug level only: it costs nothing).

pub mod files;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::static_root::Root;
use crate::config::{Backend as Server, Config, Group, Listen, Route, Target};
use crate::conn::files::{FileRequest, Served};
use crate::io::drain;
use crate::io::frames::Frames;
use crate::io::sweep::{Expiry, Phase, Tracked};
use crate::io::tunnel::{
    close_write, discard, handshake, pump, read_some, write_all, End, HandshakeError, Moved, Peer,
    PumpError, Scratch,
};
use crate::ops::access_log::Entry;
use crate::ops::metrics::{CloseReason, CoreMetrics, RouteMetrics, ServerMetrics};
use crate::percore::{Core, Generation};
use crate::policy::balance::GroupBalancer;
use crate::policy::limits;
use crate::proto::http::body::Framing;
use crate::proto::http::path;
use crate::proto::http::request::{self, ClientInfo, Kind, Prepared};
use crate::proto::http::response::{self, Answer};
use crate::proto::http::status::Status;
use crate::proto::proxy_protocol;
use crate::proto::tls::session::Session;
use crate::sys::{self, Half, Xfer};

/// `Conn::route` before routing (or without a route).
const NO_ROUTE: u32 = u32::MAX;

/// Most bytes discarded from a refused client before its socket closes.
const LINGER_MAX_BYTES: usize = 256 * 1024;

/// Serve one accepted client until both of its sockets are closed, as the
/// listener it came to says (TLS, a PROXY protocol header first).
///
/// Not an `async fn`: an async fn keeps a second copy of its arguments (the
/// client socket among them) for its whole life; an `async move` block
/// keeps one.
#[allow(clippy::manual_async_fn)]
pub fn serve(
    core: &Core,
    client: TcpStream,
    peer: SocketAddr,
    listen: Listen,
) -> impl std::future::Future<Output = ()> + '_ {
    async move {
        let started = Instant::now();
        // Only these are kept: the connection's state stays small.
        let (tls, proxy_protocol) = (listen.tls, listen.proxy_protocol);
        // The configuration in force now, for this connection's whole life.
        let generation = core.generation();
        let gen: &Generation = &generation;
        // Counted from accept to close, however the connection ends.
        let total = core.shared.total.enter(gen.config.max_conns);
        // Declared after `client`, so dropped (unregistered) before it closes.
        let track = core.sweeper.register(client.as_raw_fd());
        // A PROXY header without addresses (LOCAL, UNKNOWN) leaves the
        // balancer as the peer: what the client wrote in X-Forwarded-For must
        // not be believed on the balancer's trust.
        let mut forwarded_trusted = true;
        let (peer, local) = if proxy_protocol {
            // Boxed: its header buffer would otherwise take room in every
            // connection's state for the whole tunnel.
            match Box::pin(read_proxy_header(&gen.config, &client, peer, &track)).await {
                Ok((src, None)) => {
                    forwarded_trusted = false;
                    (src, None)
                }
                Ok((src, dst)) => (src, dst.map(Box::new)),
                Err(why) => {
                    log::warn!("client={peer} PROXY protocol: {why}; connection closed");
                    return;
                }
            }
        } else {
            (peer, None)
        };
        // Boxed: a plain connection pays one pointer for it.
        let session = match (tls, &gen.tls) {
            (false, _) => None,
            (true, Some(tls)) => match Session::server(tls.config()) {
                Ok(s) => Some(Box::new(RefCell::new(s))),
                Err(e) => {
                    log::error!("client={peer}: cannot start a TLS session: {e}");
                    return;
                }
            },
            (true, None) => {
                log::error!("client={peer}: TLS listener without certificates");
                return;
            }
        };
        let conn = Conn {
            core,
            gen,
            route: Cell::new(NO_ROUTE),
            answered: Cell::new(None),
            plain: Cell::new(false),
            client: Peer::new(&client, session.as_deref()),
            peer,
            local,
            real_ip: Cell::new(peer.ip().to_canonical()),
            over_max_conns: total.over,
            forwarded_trusted,
            track: &track,
        };
        let outcome = conn.run().await;
        let tls = session.as_ref().map(|s| s.borrow().version());
        // The address X-Forwarded-For from a trusted proxy named, when it did.
        let real_ip = Some(conn.real_ip.get()).filter(|&ip| ip != peer.ip().to_canonical());
        let route = gen
            .routes
            .get(conn.route.get() as usize)
            .map(|(label, _)| &**label);
        let metrics = &core.metrics;
        let duration = started.elapsed();
        let mut entry = Entry {
            kind: "refused",
            client: peer,
            real_ip,
            route,
            target: None,
            backend: None,
            status: 0,
            handshake: conn.answered.get().map_or(duration, |t| t - started),
            duration,
            up: 0,
            down: 0,
            closed: "refused",
            detail: None,
            tls,
        };
        let closed;
        match &outcome {
            Outcome::Gone(why) => {
                log::debug!("client={peer} left before a request: {why}");
                return;
            }
            Outcome::TlsFailed(why) => {
                metrics.tls_failures.inc();
                log::info!("client={peer} tls handshake failed: {why}");
                return;
            }
            Outcome::Refused {
                status,
                target,
                backend,
                why,
            } => {
                if conn.plain.get() {
                    metrics.request(status.code());
                } else {
                    metrics.handshake_error(status.code());
                }
                // The reason goes to the error log; the access log gets the
                // answer.
                log::warn!(
                    "client={peer}{} route={} target={} backend={} status={} reason=\"{}\"",
                    real_ip.map_or(String::new(), |ip| format!(" real_ip={ip}")),
                    route.unwrap_or("-"),
                    target.as_deref().unwrap_or("-"),
                    backend.map_or("-", |b| b.name.as_str()),
                    status.code(),
                    why.escape_debug(),
                );
                entry.target = target.as_deref();
                entry.backend = backend.map(|b| b.name.as_str());
                entry.status = status.code();
            }
            Outcome::File { target, served } => {
                metrics.request(served.status);
                entry.kind = "file";
                entry.target = Some(target);
                entry.status = served.status;
                entry.down = served.bytes;
                entry.closed = match (&served.why, served.status) {
                    (None, _) => "response complete",
                    (Some(_), 400..) => "refused",
                    (Some(_), _) => "cut short",
                };
                entry.detail = served.why.as_deref();
            }
            Outcome::Done(s) => {
                match (s.upgraded, s.upgrade_request) {
                    // Counted when it opened; now, why it ended.
                    (true, _) => metrics.closed(s.closed.reason()),
                    (false, true) => metrics.handshake_error(s.status),
                    (false, false) => metrics.request(s.status),
                }
                closed = s.closed.to_string();
                entry.kind = if s.upgraded { "tunnel" } else { "request" };
                entry.target = Some(&s.target);
                entry.backend = Some(&s.backend.name);
                entry.status = s.status;
                entry.up = s.up;
                entry.down = s.down;
                entry.closed = &closed;
                entry.detail = s.error.as_deref();
            }
        }
        core.log.record(&entry);
    }
}

/// Take the PROXY protocol header from a listener that requires one: the
/// client's address and the one it connected to (`None` for a LOCAL or
/// UNKNOWN header: the connection's own). What is waiting is looked at with
/// MSG_PEEK; only bytes known to belong to the header are taken (a prefix
/// that can still become one, then the rest of it), so what follows it (a
/// TLS hello, a request head) stays in the socket. Bounded by
/// [`proxy_protocol::MAX_HEADER`] bytes and the handshake timeout.
async fn read_proxy_header(
    config: &Config,
    sock: &TcpStream,
    peer: SocketAddr,
    track: &Tracked,
) -> Result<(SocketAddr, Option<SocketAddr>), String> {
    if !limits::trusted(&config.trusted_proxies, peer.ip()) {
        return Err(format!(
            "{} is not a --trusted-proxy, so its PROXY header is not believed",
            peer.ip()
        ));
    }
    let mut buf = [0u8; proxy_protocol::MAX_HEADER];
    // Bytes of the header taken from the socket so far.
    let mut taken = 0;
    loop {
        let ready = sock.readable(false).await;
        if track.expired().is_some() {
            return Err("no complete header within --handshake-timeout".into());
        }
        ready.map_err(|e| e.to_string())?;
        let n = match sys::peek_into(sock, &mut buf[taken..]) {
            Ok(Xfer::Done(n)) => n,
            Ok(Xfer::WouldBlock) => continue,
            Ok(Xfer::Eof) if taken == 0 => return Err("closed before sending a header".into()),
            Ok(Xfer::Eof) => return Err("closed in the middle of its header".into()),
            Err(e) => return Err(e.to_string()),
        };
        let have = taken + n;
        let complete = match proxy_protocol::parse(&buf[..have]) {
            Ok(Some(found)) => Some(found),
            // All of it is header so far: take it, and wait for the rest.
            Ok(None) if have < buf.len() => None,
            Ok(None) => return Err(proxy_protocol::Error::TooLong.to_string()),
            Err(e) => return Err(e.to_string()),
        };
        let upto = complete.map_or(have, |(_, len)| len);
        match sys::recv(sock, &mut buf[taken..upto]) {
            Ok(Xfer::Done(got)) if got == upto - taken => taken = upto,
            Ok(_) => return Err("the header's bytes could not be taken".into()),
            Err(e) => return Err(e.to_string()),
        }
        let Some((header, _)) = complete else {
            continue;
        };
        return Ok(match header.addrs {
            Some((src, dst)) => (src, Some(dst)),
            None => (peer, None),
        });
    }
}

/// How a connection ended.
enum Outcome<'a> {
    Gone(&'static str),
    TlsFailed(String),
    Refused {
        status: Status,
        target: Option<Box<str>>,
        backend: Option<&'a Server>,
        why: String,
    },
    /// A static file route answered.
    File {
        target: Box<str>,
        served: Served,
    },
    Done(Summary<'a>),
}

struct Summary<'a> {
    target: Box<str>,
    backend: &'a Server,
    status: u16,
    /// The client asked for an upgrade...
    upgrade_request: bool,
    /// ...and got it.
    upgraded: bool,
    up: u64,
    down: u64,
    closed: Closer,
    /// The error behind a `ClientError`/`BackendError` end.
    error: Option<String>,
}

/// Who or what ended an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closer {
    Client,
    Backend,
    /// A plain response was complete.
    Complete,
    ClientError(io::ErrorKind),
    BackendError(io::ErrorKind),
    Expired(Expiry),
    /// Closed by the drain with close frames to both sides (`drain.rs`).
    Drain,
}

impl Closer {
    /// The metrics' name for a tunnel's end.
    fn reason(self) -> CloseReason {
        match self {
            Closer::Client => CloseReason::Client,
            Closer::Backend | Closer::Complete => CloseReason::Backend,
            Closer::Expired(Expiry::Idle) => CloseReason::IdleTimeout,
            Closer::Expired(Expiry::Drain) | Closer::Drain => CloseReason::Drain,
            Closer::ClientError(_) | Closer::BackendError(_) | Closer::Expired(_) => {
                CloseReason::Error
            }
        }
    }
}

impl std::fmt::Display for Closer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closer::Client => f.write_str("client closed"),
            Closer::Backend => f.write_str("backend closed"),
            Closer::Complete => f.write_str("response complete"),
            Closer::ClientError(k) => write!(f, "client error: {k}"),
            Closer::BackendError(k) => write!(f, "backend error: {k}"),
            Closer::Expired(Expiry::Idle) => f.write_str("idle timeout"),
            Closer::Expired(Expiry::Drain) => f.write_str("closed at shutdown"),
            Closer::Expired(e) => write!(f, "{e:?} timeout"),
            Closer::Drain => f.write_str("drained (close 1001 sent)"),
        }
    }
}

/// A backend socket (and its TLS session, for wss://) that leaves the
/// timeout slot before it closes.
struct Backend<'a> {
    stream: TcpStream,
    session: Option<Box<RefCell<Session>>>,
    track: &'a Tracked,
}

impl Backend<'_> {
    fn peer(&self) -> Peer<'_> {
        Peer::new(&self.stream, self.session.as_deref())
    }
}

impl Drop for Backend<'_> {
    fn drop(&mut self) {
        self.track.clear_backend();
    }
}

/// A connection counted on one server of a group (least-conn's count)
/// until it ends.
struct ServerSlot<'a> {
    balancer: &'a GroupBalancer,
    server: usize,
    /// The server's counters on this core.
    metrics: &'a ServerMetrics,
}

impl ServerSlot<'_> {
    /// The connect failed: counted against the server on this core (which
    /// gives its count back too) and in its metrics. Whether this marks it
    /// unavailable (for `fail_timeout`).
    fn failed(self, now: Instant, fail_timeout: Duration) -> bool {
        self.balancer.failed(self.server, now);
        self.metrics.failures.inc();
        let marked = self.balancer.unavailable(self.server, now);
        if marked {
            self.metrics.mark_unavailable(now + fail_timeout);
        }
        std::mem::forget(self);
        marked
    }
}

impl Drop for ServerSlot<'_> {
    fn drop(&mut self) {
        self.balancer.release(self.server);
    }
}

enum ConnectError {
    Timeout,
    Failed(io::Error),
    /// The TLS handshake with the backend failed (its certificate, say).
    Tls(io::Error),
}

/// Why no server of a group could be connected to: the answer, the last
/// server tried, the reason.
type NoServer<'a> = (Status, Option<&'a Server>, String);

struct Conn<'a> {
    core: &'a Core,
    /// The configuration the connection was accepted under.
    gen: &'a Generation,
    /// The index of its route in `gen.routes`, once known, else [`NO_ROUTE`].
    route: Cell<u32>,
    /// When the answer's head was sent (the handshake's end).
    answered: Cell<Option<Instant>>,
    /// A request head was read, and it asked for no upgrade (its refusal
    /// is a request's, not a failed handshake).
    plain: Cell<bool>,
    client: Peer<'a>,
    /// The client's address: the TCP peer, or what its PROXY header said.
    peer: SocketAddr,
    /// The address the client connected to, from its PROXY header (boxed:
    /// most connections have none, and all carry the field).
    local: Option<Box<SocketAddr>>,
    /// The client's address after the trusted-proxy rules (X-Forwarded-For
    /// from a trusted peer): the key of limits and ip-hash.
    real_ip: Cell<IpAddr>,
    /// Accepted beyond --max-conns: answered 503 once its request is read.
    over_max_conns: bool,
    /// X-Forwarded-For may be believed when the peer is a trusted proxy.
    forwarded_trusted: bool,
    track: &'a Tracked,
}

impl<'a> Conn<'a> {
    async fn run(&self) -> Outcome<'a> {
        if self.client.tls.is_some() {
            // Boxed, so that plain connections do not carry its room.
            if let Err(outcome) = Box::pin(self.tls_handshake()).await {
                return outcome;
            }
        }
        let req = match self.read_head().await {
            Ok(req) => req,
            Err(outcome) => return outcome,
        };
        self.real_ip.set(req.client_ip);
        self.plain.set(req.kind != Kind::Upgrade);
        let config = &self.gen.config;
        let mut req = req;
        // One copy of the target, for the log line.
        let target = std::mem::take(&mut req.target);
        if self.over_max_conns {
            let why = format!(
                "over --max-conns ({} connections open)",
                config.max_conns.unwrap_or_default()
            );
            return self
                .refuse(Status::ServiceUnavailable, Some(target), None, why)
                .await;
        }
        let (route_index, route) = match self.route(&req) {
            Ok(found) => found,
            Err((status, why)) => return self.refuse(status, Some(target), None, why).await,
        };
        let group = match &route.target {
            Target::Group(g) => *g,
            Target::Static(root) => {
                // Files get the strict form: nothing that could name
                // something else on disk than what the route matched.
                return match path::normalize(&req.facts.path) {
                    Ok(file) => self.serve_file(root, &req, &file, target).await,
                    Err(e) => {
                        let why = format!("refused path for a file: {e}");
                        self.refuse(Status::BadRequest, Some(target), None, why)
                            .await
                    }
                };
            }
        };
        // A tunnel holds its client's slot until it ends (plain requests,
        // which end with their response, are not counted).
        let per_ip = &self.core.shared.per_ip;
        // Counted even without a limit, so that a reload that sets one
        // counts the tunnels already open.
        let limit = config.limit_conn_per_ip.unwrap_or(u32::MAX);
        let _ip_slot = match req.kind {
            Kind::Upgrade => match per_ip.acquire(req.client_ip, limit) {
                Some(slot) => Some(slot),
                None => {
                    let why = format!(
                        "{} already has {} tunnels (--limit-conn-per-ip)",
                        req.client_ip,
                        per_ip.count(req.client_ip)
                    );
                    let status = Status::Other(config.limit_conn_status);
                    return self.refuse(status, Some(target), None, why).await;
                }
            },
            _ => None,
        };
        *req.facts = Default::default();
        let (backend, server, slot) = match self.connect_any(group).await {
            Ok(b) => b,
            Err((status, backend, why)) => {
                return self.refuse(status, Some(target), backend, why).await
            }
        };
        self.track.set_phase(Phase::Answer);
        let scratch = &self.core.scratch;
        if let Err(e) = write_all(backend.peer(), &req.upstream, scratch, self.track).await {
            let why = format!("sending the request failed: {e}");
            return self
                .refuse(Status::BadGateway, Some(target), Some(server), why)
                .await;
        }
        let meters = Meters {
            core: &self.core.metrics,
            route: &self.gen.routes[route_index].1,
            server: slot.metrics,
        };
        self.exchange(backend.peer(), req, server, meters, target)
            .await
    }

    /// The route of a request, if it has one and may take it: 400 for a path
    /// that cannot be resolved, 404 for no route, 403 for an upgrade from an
    /// Origin not allowed.
    fn route(&self, req: &Prepared) -> Result<(usize, &'a Route), (Status, String)> {
        let config: &'a Config = &self.gen.config;
        let resolved = path::route_path(&req.facts.path)
            .map_err(|e| (Status::BadRequest, format!("refused path: {e}")))?;
        let found = config
            .routes
            .find(req.facts.host.as_deref(), &resolved)
            .ok_or_else(|| (Status::NotFound, "no route for this host and path".into()))?;
        self.route.set(found.0 as u32);
        let origin = req.facts.origin.as_deref();
        if req.kind == Kind::Upgrade && !limits::origin_allowed(&config.allow_origin, origin) {
            let why = format!(
                "Origin {} is not in --allow-origin",
                origin.unwrap_or_default()
            );
            return Err((Status::Forbidden, why));
        }
        Ok(found)
    }

    /// A static route: the file (or its error answer), then close gently.
    async fn serve_file(
        &self,
        root: &Root,
        req: &Prepared,
        path: &str,
        target: Box<str>,
    ) -> Outcome<'a> {
        let file = FileRequest {
            method: &req.facts.method,
            path,
            if_modified_since: req.facts.if_modified_since.as_deref(),
        };
        self.track.set_phase(Phase::Active);
        self.answered.set(Some(Instant::now()));
        let served = files::serve(self.client, &self.core.scratch, self.track, root, &file).await;
        linger(self.client, self.track, &self.core.scratch).await;
        Outcome::File { target, served }
    }

    /// A TLS client's handshake, under the handshake deadline. Plain HTTP
    /// sent to the TLS port is answered 400, as nginx does.
    async fn tls_handshake(&self) -> Result<(), Outcome<'a>> {
        let Err(e) = handshake(self.client, &self.core.scratch, self.track).await else {
            return Ok(());
        };
        let expired = self.track.expired() == Some(Expiry::Handshake);
        Err(match e {
            _ if expired => Outcome::TlsFailed("not finished within --handshake-timeout".into()),
            HandshakeError::Closed => Outcome::Gone("closed during the TLS handshake"),
            HandshakeError::Failed(e) => Outcome::TlsFailed(e.to_string()),
            HandshakeError::PlainHttp => {
                let why = "plain HTTP request sent to a TLS port".to_string();
                Box::pin(self.refuse_plain(Status::BadRequest, why)).await
            }
        })
    }

    /// Answer over the raw socket (a TLS port spoken to in plain HTTP).
    async fn refuse_plain(&self, status: Status, why: String) -> Outcome<'a> {
        let plain = Conn {
            client: Peer::plain(self.client.sock),
            real_ip: Cell::new(self.real_ip.get()),
            local: None,
            route: Cell::new(NO_ROUTE),
            answered: Cell::new(None),
            plain: Cell::new(false),
            ..*self
        };
        let outcome = plain.refuse(status, None, None, why).await;
        self.answered.set(plain.answered.get());
        outcome
    }

    /// Read until a whole request head is here, and validate it.
    async fn read_head(&self) -> Result<Prepared, Outcome<'a>> {
        let info = ClientInfo {
            ip: self.peer.ip().to_canonical(),
            proto: if self.client.tls.is_some() {
                "https"
            } else {
                "http"
            },
            trusted: if self.forwarded_trusted {
                &self.gen.config.trusted_proxies
            } else {
                &[]
            },
        };
        let max = self.gen.config.max_header_bytes;
        // Filled only when a head spans several reads.
        let mut head: Vec<u8> = Vec::new();
        loop {
            let step = read_some(self.client, &self.core.scratch, |bytes| {
                let buf = if head.is_empty() {
                    bytes
                } else {
                    head.extend_from_slice(bytes);
                    &head
                };
                let parsed = request::prepare(buf, max, &info)
                    .map_err(|e| (e, request::target_for_log(buf)));
                if matches!(parsed, Ok(None)) && head.is_empty() {
                    head.extend_from_slice(bytes);
                }
                parsed
            })
            .await;
            let expired = self.track.expired();
            match step {
                // Complete, but only as the deadline struck: the sweep has shut
                // our reading side already, so answer the timeout.
                Ok(Some(Ok(Some(_)))) if expired == Some(Expiry::Handshake) => {
                    let why = "request head completed only at --handshake-timeout".to_string();
                    return Err(self.refuse(Status::RequestTimeout, None, None, why).await);
                }
                Ok(Some(Ok(Some(req)))) => return Ok(req),
                Ok(Some(Ok(None))) => continue,
                Ok(Some(Err((e, target)))) => {
                    return Err(self.refuse(e.status(), target, None, e.to_string()).await)
                }
                _ if expired == Some(Expiry::Handshake) => {
                    let why = "no complete request head within --handshake-timeout".to_string();
                    return Err(self.refuse(Status::RequestTimeout, None, None, why).await);
                }
                Ok(None) if head.is_empty() => return Err(Outcome::Gone("closed")),
                Ok(None) => return Err(Outcome::Gone("closed in the middle of its request head")),
                Err(_) => return Err(Outcome::Gone("connection reset")),
            }
        }
    }

    /// Try servers of group `g` in its balancer's order until one accepts,
    /// at most --upstream-tries of them. Failed connects count against their
    /// server (nginx's max_fails/fail_timeout, on this core).
    async fn connect_any(
        &self,
        g: usize,
    ) -> Result<(Backend<'a>, &'a Server, ServerSlot<'a>), NoServer<'a>> {
        let gen: &'a Generation = self.gen;
        let group = &gen.config.groups[g];
        let balancer = &gen.balancers[g];
        let tries = match gen.config.upstream_tries {
            0 => usize::MAX,
            n => n,
        };
        let mut attempt = balancer.attempt(self.real_ip.get());
        let mut last: Option<(Status, &'a Server, String)> = None;
        for _ in 0..tries {
            let Some(i) = balancer.next(&mut attempt, Instant::now()) else {
                break;
            };
            let slot = ServerSlot {
                balancer,
                server: i,
                metrics: &gen.servers[g][i],
            };
            let b = &group.servers[i];
            if let Some((_, failed, why)) = &last {
                log::info!(
                    "client={} {}: {why}; trying {}",
                    self.peer,
                    failed.name,
                    b.name
                );
            }
            let start = Instant::now();
            let failure = match self.connect(group, b).await {
                Ok(stream) => {
                    let now = Instant::now();
                    self.core.metrics.connect.observe(now - start);
                    balancer.succeeded(i, now);
                    return Ok((stream, b, slot));
                }
                Err(_) if self.track.expired() == Some(Expiry::Drain) => {
                    return Err((Status::ServiceUnavailable, Some(b), "shutting down".into()));
                }
                Err(ConnectError::Timeout) => (
                    Status::GatewayTimeout,
                    b,
                    format!("connect to {} timed out", b.addr),
                ),
                Err(ConnectError::Failed(e)) => (
                    Status::BadGateway,
                    b,
                    format!("connect to {} failed: {e}", b.addr),
                ),
                Err(ConnectError::Tls(e)) => (
                    Status::BadGateway,
                    b,
                    format!("TLS handshake with {} failed: {e}", b.addr),
                ),
            };
            if slot.failed(Instant::now(), b.params.fail_timeout) {
                log::warn!(
                    "group {} server {} ({}) marked unavailable for {:?}: {}",
                    group.name,
                    b.name,
                    b.addr,
                    b.params.fail_timeout,
                    failure.2
                );
            }
            last = Some(failure);
        }
        Err(match last {
            Some((status, b, why)) => (status, Some(b), why),
            None => (
                Status::ServiceUnavailable,
                None,
                format!(
                    "no server of group {} is available: each is down or failed within its fail_timeout",
                    group.name
                ),
            ),
        })
    }

    /// A non-blocking connect (then the group's PROXY header, then the TLS
    /// handshake for wss://) that the sweep can shut down when
    /// --connect-timeout strikes.
    async fn connect(&self, group: &Group, b: &Server) -> Result<Backend<'a>, ConnectError> {
        let mut backend = self.connect_tcp(b.addr).await?;
        if let Some(version) = group.send_proxy {
            let dst = match self.local.as_deref() {
                Some(&dst) => dst,
                None => self
                    .client
                    .sock
                    .local_addr()
                    .map_err(ConnectError::Failed)?,
            };
            let mut header = Vec::with_capacity(proxy_protocol::MAX_HEADER);
            proxy_protocol::encode(version, self.peer, dst, &mut header);
            let sock = Peer::plain(&backend.stream);
            write_all(sock, &header, &self.core.scratch, self.track)
                .await
                .map_err(ConnectError::Failed)?;
        }
        let (Some(name), Some(config)) = (&b.tls, &self.gen.config.upstream_tls) else {
            return Ok(backend);
        };
        let session = Session::client(config.clone(), name.clone()).map_err(ConnectError::Tls)?;
        backend.session = Some(Box::new(RefCell::new(session)));
        let done = Box::pin(handshake(backend.peer(), &self.core.scratch, self.track)).await;
        if self.track.expired() == Some(Expiry::Connect) {
            return Err(ConnectError::Timeout);
        }
        match done {
            Ok(()) => Ok(backend),
            Err(HandshakeError::Failed(e)) => Err(ConnectError::Tls(e)),
            Err(_) => Err(ConnectError::Tls(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the backend closed the connection",
            ))),
        }
    }

    async fn connect_tcp(&self, addr: SocketAddr) -> Result<Backend<'a>, ConnectError> {
        let sock = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            Some(Protocol::TCP),
        )
        .map_err(ConnectError::Failed)?;
        sock.set_nodelay(true).map_err(ConnectError::Failed)?;
        match sock.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(ConnectError::Failed(e)),
        }
        let stream =
            TcpStream::from_std(std::net::TcpStream::from(sock)).map_err(ConnectError::Failed)?;
        let backend = Backend {
            stream,
            session: None,
            track: self.track,
        };
        self.track.set_backend(backend.stream.as_raw_fd());
        self.track.set_phase(Phase::Connect);
        let ready = backend.stream.writable(false).await;
        if self.track.expired() == Some(Expiry::Connect) {
            return Err(ConnectError::Timeout);
        }
        ready.map_err(ConnectError::Failed)?;
        match sys::take_error(&backend.stream) {
            Ok(None) => Ok(backend),
            Ok(Some(e)) | Err(e) => Err(ConnectError::Failed(e)),
        }
    }

    /// Answer an error ourselves, then close gently.
    async fn refuse(
        &self,
        status: Status,
        target: Option<Box<str>>,
        backend: Option<&'a Server>,
        why: String,
    ) -> Outcome<'a> {
        let scratch = &self.core.scratch;
        self.answered.set(Some(Instant::now()));
        // nginx's 444: close without an answer.
        if status.code() != 444 {
            let _ = write_all(self.client, &status.response(&why), scratch, self.track).await;
        }
        linger(self.client, self.track, scratch).await;
        Outcome::Refused {
            status,
            target,
            backend,
            why,
        }
    }

    /// The request is with the backend. Two directions run on this task:
    ///
    /// - up: a plain request's body (as framed, nothing after it); then,
    ///   until the answer, a watch for a client that leaves (peeking, never
    ///   reading what it sends); then, if the tunnel opened, the client's
    ///   bytes, beginning with those held since its head.
    /// - down: the backend's answer (interim heads passed on); a 101 to an
    ///   upgrade opens the tunnel, anything else is streamed to its end and
    ///   both sides closed.
    ///
    /// Not an `async fn`: an async fn keeps its arguments for its whole
    /// life, so the request is taken apart here and only what the exchange
    /// needs goes into its state.
    fn exchange<'b>(
        &'b self,
        backend: Peer<'b>,
        req: Prepared,
        name: &'a Server,
        meters: Meters<'a>,
        target: Box<str>,
    ) -> impl std::future::Future<Output = Outcome<'a>> + 'b {
        let Prepared {
            kind,
            upstream,
            early,
            body,
            head_method,
            ..
        } = req;
        // Built here and moved in: an argument is kept once, a local made
        // from one would be a second copy.
        let flow = Flow::new(meters);
        flow.up.add(upstream.len() as u64);
        drop(upstream);
        self.exchange_parts(backend, kind, early, body, head_method, name, flow, target)
    }

    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::manual_async_fn)]
    fn exchange_parts<'b>(
        &'b self,
        backend: Peer<'b>,
        kind: Kind,
        early: Vec<u8>,
        body: Framing,
        head_method: bool,
        name: &'a Server,
        flow: Flow<'a>,
        target: Box<str>,
    ) -> impl std::future::Future<Output = Outcome<'a>> + 'b {
        // An `async move` block, not an `async fn`: see `serve`.
        async move {
            let answered = Answered::default();
            let scratch = &self.core.scratch;
            let (client, track) = (self.client, self.track);
            // Closures, so that the futures are built inside join!: futures moved
            // into it from locals would take their room in the state twice.
            let up = || async {
                let mut body = body;
                match pump(client, backend, scratch, track, None, &mut body, &flow.up).await {
                    Ok(End::Complete | End::Stopped) => {}
                    Ok(End::Eof) => {
                        // Gone in the middle of its request body.
                        flow.closed(Closer::Client);
                        shutdown_both(client, backend);
                        return;
                    }
                    Err(e) => return flow.fail(e, Side::Client, client, backend),
                }
                // Records a TLS client sent with its head are taken already, so
                // the socket itself tells whether more came, or an end (unless
                // its close_notify came with them).
                let closed = client.tls.is_some_and(|t| t.borrow().peer_closed());
                let gone = closed || {
                    let ready = client.sock.readable(false).await;
                    ready.is_err() || !matches!(sys::peek(client.sock), Ok(Xfer::Done(_)))
                };
                if gone && answered.get().is_none() {
                    flow.closed(Closer::Client);
                    flow.client_gone.set(true);
                    sys::shutdown_raw(backend.sock.as_raw_fd(), Half::Both);
                    return;
                }
                if !answered.wait().await {
                    return;
                }
                relay(Side::Client, client, backend, scratch, track, &flow).await;
            };
            let down = || async {
                let fin = match self.read_answer(backend, kind, head_method, &flow).await {
                    Ok(fin) => fin,
                    Err(e) => {
                        answered.set(false);
                        if let AnswerError::Refuse(status, why) = e {
                            let why = match self.track.expired() {
                                Some(Expiry::Idle) => {
                                    "no answer from the backend within --idle-timeout".to_string()
                                }
                                _ => why,
                            };
                            flow.refused.set(Some(status));
                            self.answered.set(Some(Instant::now()));
                            sys::shutdown_raw(backend.sock.as_raw_fd(), Half::Both);
                            let _ = write_all(client, &status.response(&why), scratch, track).await;
                            flow.why.set(Some(why));
                            linger(client, track, scratch).await;
                        }
                        shutdown_both(client, backend);
                        return;
                    }
                };
                flow.status.set(fin.status);
                flow.upgraded.set(fin.upgraded);
                track.set_phase(Phase::Active);
                let written = write_all(client, &fin.client, scratch, track).await;
                self.answered.set(Some(Instant::now()));
                if written.is_ok() {
                    flow.down.add(fin.client.len() as u64);
                }
                if fin.upgraded {
                    flow.meters.opened();
                }
                if let Err(e) = written {
                    answered.set(false);
                    return flow.fail(PumpError::Write(e), Side::Backend, client, backend);
                }
                drop(fin.client);
                if fin.upgraded {
                    if let Err(e) = write_all(backend, &early, scratch, track).await {
                        answered.set(false);
                        return flow.fail(PumpError::Write(e), Side::Client, client, backend);
                    }
                    flow.up.add(early.len() as u64);
                    if self.gen.config.drain_close_frames {
                        flow.frames.open(&early, track).await;
                    }
                    drop(early);
                    answered.set(true);
                    relay(Side::Backend, client, backend, scratch, track, &flow).await;
                    return;
                }
                answered.set(false);
                let mut rest = fin.remaining;
                let open_ended = rest == Framing::UntilClose;
                match pump(backend, client, scratch, track, None, &mut rest, &flow.down).await {
                    Ok(End::Complete | End::Stopped) => flow.closed(Closer::Complete),
                    Ok(End::Eof) if open_ended => flow.closed(Closer::Complete),
                    // Closed before the end of its declared body.
                    Ok(End::Eof) => flow.closed(Closer::Backend),
                    Err(e) => flow.fail(e, Side::Backend, client, backend),
                }
                // A TLS client learns from close_notify that the response is
                // whole (and not cut off), which matters when it ends at close.
                if flow.closer.get() != Some(Closer::Backend) {
                    close_write(client, track).await;
                }
                // A plain exchange ends with its response; this also ends `up`.
                shutdown_both(client, backend);
            };
            monoio::join!(up(), down());
            if flow.upgraded.get() {
                flow.meters.closed();
            }

            if let Some(status) = flow.refused.get() {
                return Outcome::Refused {
                    status,
                    target: Some(target),
                    backend: Some(name),
                    why: flow.why.take().unwrap_or_default(),
                };
            }
            Outcome::Done(Summary {
                target,
                backend: name,
                // nginx's 499: the client closed before the answer.
                status: if flow.client_gone.get() {
                    499
                } else {
                    flow.status.get()
                },
                upgrade_request: kind == Kind::Upgrade,
                upgraded: flow.upgraded.get(),
                up: flow.up.get(),
                down: flow.down.get(),
                closed: match self.track.expired() {
                    Some(e) => Closer::Expired(e),
                    None => flow.closer.get().unwrap_or(Closer::Complete),
                },
                error: flow.why.take(),
            })
        }
    }

    /// Read the backend's final response head, passing interim (1xx) heads on.
    async fn read_answer(
        &self,
        backend: Peer<'_>,
        kind: Kind,
        head_method: bool,
        flow: &Flow<'_>,
    ) -> Result<response::Final, AnswerError> {
        let max = self.gen.config.max_header_bytes;
        let upgrade = kind == Kind::Upgrade;
        let mut head: Vec<u8> = Vec::new();
        let mut interim = 0;
        loop {
            let read = read_some(backend, &self.core.scratch, |b| head.extend_from_slice(b)).await;
            if flow.client_gone.get() {
                return Err(AnswerError::ClientGone);
            }
            match read {
                Ok(Some(())) => self.track.touch(),
                Ok(None) if self.track.expired().is_some() => {
                    return Err(AnswerError::Refuse(
                        Status::GatewayTimeout,
                        "no answer in time".into(),
                    ))
                }
                Ok(None) => {
                    return Err(AnswerError::Refuse(
                        Status::BadGateway,
                        "the backend closed without answering".into(),
                    ))
                }
                Err(e) => {
                    return Err(AnswerError::Refuse(
                        Status::BadGateway,
                        format!("reading the answer failed: {e}"),
                    ))
                }
            }
            loop {
                match response::prepare(&head, max, upgrade, head_method) {
                    Ok(None) => break,
                    Ok(Some(Answer::Final(fin))) => return Ok(fin),
                    Ok(Some(Answer::Interim { len })) => {
                        interim += 1;
                        if interim > MAX_INTERIM {
                            return Err(AnswerError::Refuse(
                                Status::BadGateway,
                                format!("more than {MAX_INTERIM} interim (1xx) answers"),
                            ));
                        }
                        if write_all(self.client, &head[..len], &self.core.scratch, self.track)
                            .await
                            .is_err()
                        {
                            return Err(AnswerError::ClientGone);
                        }
                        flow.down.add(len as u64);
                        head.drain(..len);
                    }
                    Err(e) => return Err(AnswerError::Refuse(Status::BadGateway, e.to_string())),
                }
            }
        }
    }
}

/// The counters an open tunnel is counted in, besides its core's.
#[derive(Clone, Copy)]
struct Meters<'a> {
    core: &'a CoreMetrics,
    route: &'a RouteMetrics,
    server: &'a ServerMetrics,
}

impl Meters<'_> {
    fn opened(&self) {
        self.core.upgraded.inc();
        self.core.active.inc();
        self.route.tunnels.inc();
        self.route.active.inc();
        self.server.active.inc();
    }

    fn closed(&self) {
        self.core.active.dec();
        self.route.active.dec();
        self.server.active.dec();
    }
}

/// Most interim (1xx) answers passed on before the final one.
const MAX_INTERIM: usize = 16;

/// Why no final answer reaches the client.
enum AnswerError {
    /// ringway answers this itself.
    Refuse(Status, String),
    /// The client left first: nobody to answer.
    ClientGone,
}

/// Down tells up whether the tunnel opened, once the answer is known.
#[derive(Default)]
struct Answered {
    state: Cell<Option<bool>>,
    waker: Cell<Option<Waker>>,
}

impl Answered {
    fn set(&self, upgraded: bool) {
        self.state.set(Some(upgraded));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn get(&self) -> Option<bool> {
        self.state.get()
    }

    /// Wait for the answer: `true` if the tunnel opened.
    fn wait(&self) -> impl std::future::Future<Output = bool> + '_ {
        std::future::poll_fn(move |cx| match self.state.get() {
            Some(upgraded) => Poll::Ready(upgraded),
            None => {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
    }
}

/// What the two directions of an exchange learn, for the summary line.
struct Flow<'a> {
    up: Moved<'a>,
    down: Moved<'a>,
    /// Where the tunnel is counted while it is open.
    meters: Meters<'a>,
    status: Cell<u16>,
    upgraded: Cell<bool>,
    /// The first end seen; later ones are consequences.
    closer: Cell<Option<Closer>>,
    /// Set when ringway answered an error itself instead of the backend.
    refused: Cell<Option<Status>>,
    /// The client left before the answer came.
    client_gone: Cell<bool>,
    why: Cell<Option<String>>,
    /// A tunnel's frames, followed under --drain-close-frames.
    frames: Frames,
}

impl<'a> Flow<'a> {
    fn new(meters: Meters<'a>) -> Flow<'a> {
        Flow {
            up: Moved::new(&meters.core.bytes_up),
            down: Moved::new(&meters.core.bytes_down),
            meters,
            status: Cell::default(),
            upgraded: Cell::default(),
            closer: Cell::default(),
            refused: Cell::default(),
            client_gone: Cell::default(),
            why: Cell::default(),
            frames: Frames::default(),
        }
    }

    fn closed(&self, c: Closer) {
        if self.closer.get().is_none() {
            self.closer.set(Some(c));
        }
    }

    /// A transfer of bytes coming `from` one side failed: note whose fault
    /// (a failed read is the sender's, a failed write the receiver's), and
    /// tear down both sides so the other direction ends too.
    fn fail(&self, e: PumpError, from: Side, client: Peer<'_>, backend: Peer<'_>) {
        let (side, e) = match e {
            PumpError::Read(e) => (from, e),
            PumpError::Write(e) => (from.other(), e),
        };
        if self.closer.get().is_none() {
            self.why.set(Some(e.to_string()));
        }
        self.closed(match side {
            Side::Client => Closer::ClientError(e.kind()),
            Side::Backend => Closer::BackendError(e.kind()),
        });
        shutdown_both(client, backend);
    }
}

/// The two ends of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Backend,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }
}

/// One direction of an open tunnel: copy the bytes coming `from` one side
/// until it closes its writing half, then pass that half-close on; or,
/// when a drain stops it at a frame boundary, close it with a close frame
/// (`drain::close`).
#[allow(clippy::manual_async_fn)]
fn relay<'a>(
    from: Side,
    client: Peer<'a>,
    backend: Peer<'a>,
    scratch: &'a Scratch,
    track: &'a Tracked,
    flow: &'a Flow<'a>,
) -> impl std::future::Future<Output = ()> + 'a {
    // An `async move` block, not an `async fn`, which would keep its
    // arguments twice; for the same reason the ends are looked up again
    // after the pump rather than kept across it.
    async move {
        let (src, dst, moved) = ends(from, client, backend, flow);
        let watch = flow.frames.watch(from == Side::Client);
        let end = pump(
            src,
            dst,
            scratch,
            track,
            watch,
            &mut Framing::UntilClose,
            moved,
        )
        .await;
        let (src, dst, moved) = ends(from, client, backend, flow);
        let watch = flow.frames.watch(from == Side::Client);
        match (end, watch) {
            (Ok(End::Stopped), Some(w)) => {
                if w.sends_close() {
                    flow.closed(Closer::Drain);
                }
                // Boxed: only a drain needs its room.
                match Box::pin(drain::close(w, src, dst, scratch, track)).await {
                    Ok(sent) => moved.add(sent),
                    Err(e) => flow.fail(e, from, client, backend),
                }
            }
            (Ok(_), _) => {
                flow.closed(match from {
                    Side::Client => Closer::Client,
                    Side::Backend => Closer::Backend,
                });
                if let Some(w) = watch {
                    w.ended();
                }
                close_write(dst, track).await;
            }
            (Err(e), _) => {
                if let Some(w) = watch {
                    w.ended();
                }
                flow.fail(e, from, client, backend)
            }
        }
    }
}

/// The source, destination and byte count of the direction coming `from`
/// one side.
fn ends<'a>(
    from: Side,
    client: Peer<'a>,
    backend: Peer<'a>,
    flow: &'a Flow<'a>,
) -> (Peer<'a>, Peer<'a>, &'a Moved<'a>) {
    match from {
        Side::Client => (client, backend, &flow.up),
        Side::Backend => (backend, client, &flow.down),
    }
}

fn shutdown_both(a: Peer<'_>, b: Peer<'_>) {
    sys::shutdown_raw(a.sock.as_raw_fd(), Half::Both);
    sys::shutdown_raw(b.sock.as_raw_fd(), Half::Both);
}

/// After an error answer: stop writing, then read and discard what the client
/// still sends (for [`crate::io::sweep::LINGER`] at most), so that closing does
/// not reset the connection before the client has read the answer.
async fn linger(client: Peer<'_>, track: &Tracked, scratch: &Scratch) {
    track.set_phase(Phase::Linger);
    close_write(client, track).await;
    let _ = discard(client.sock, scratch, LINGER_MAX_BYTES).await;
}
