//! One client connection, start to end:
//! handshake -> connect -> request -> answer -> tunnel (or streamed response).
//!
//! The connection owns its two sockets and its [`Tracked`] timeout slot; it
//! logs its own end in exactly one line (a client that leaves before sending
//! a whole request head is logged at debug level only: it costs nothing).

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::task::{Poll, Waker};
use std::time::Instant;

use monoio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

use crate::http::body::Framing;
use crate::http::request::{self, ClientInfo, Kind, Prepared};
use crate::http::response::{self, Answer};
use crate::http::status::Status;
use crate::sweep::{Expiry, Phase, Tracked};
use crate::sys::{self, Half, Xfer};
use crate::tls::session::Session;
use crate::tunnel::{
    close_write, discard, handshake, pump, read_some, write_all, End, HandshakeError, Peer,
    PumpError, Scratch,
};
use crate::worker::Core;

/// Most bytes discarded from a refused client before its socket closes.
const LINGER_MAX_BYTES: usize = 256 * 1024;

/// Serve one accepted client until both of its sockets are closed; `tls`:
/// it came to a TLS listener.
pub async fn serve(core: &Core, client: TcpStream, peer: SocketAddr, tls: bool) {
    let started = Instant::now();
    // Declared after `client`, so dropped (unregistered) before it closes.
    let track = core.sweeper.register(client.as_raw_fd());
    // Boxed: a plain connection pays one pointer for it.
    let session = match (tls, &core.tls) {
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
        client: Peer::new(&client, session.as_deref()),
        peer,
        track: &track,
    };
    let outcome = conn.run().await;
    let tls = match &session {
        Some(s) => format!(" tls={}", s.borrow().version()),
        None => String::new(),
    };
    match outcome {
        Outcome::Gone(why) => log::debug!("client={peer} left before a request: {why}"),
        Outcome::TlsFailed(why) => log::info!("client={peer} tls handshake failed: {why}"),
        Outcome::Refused {
            status,
            target,
            backend,
            why,
        } => log::warn!(
            "client={peer} route={} backend={} status={} reason=\"{why}\"",
            target.as_deref().unwrap_or("-"),
            backend.map_or("-", |i| core.config.backends[i].name.as_str()),
            status.code(),
        ),
        Outcome::Done(s) => log::info!(
            "{} client={peer} route={} backend={} status={} duration={:.3}s up={} down={} closed=\"{}\"{tls}",
            if s.upgraded { "tunnel" } else { "request" },
            s.target,
            core.config.backends[s.backend].name,
            s.status,
            started.elapsed().as_secs_f64(),
            s.up,
            s.down,
            match &s.error {
                Some(e) => format!("{}: {e}", s.closed),
                None => s.closed.to_string(),
            },
        ),
    }
}

/// How a connection ended.
enum Outcome {
    Gone(&'static str),
    TlsFailed(String),
    Refused {
        status: Status,
        target: Option<Box<str>>,
        backend: Option<usize>,
        why: String,
    },
    Done(Summary),
}

struct Summary {
    target: Box<str>,
    backend: usize,
    status: u16,
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

enum ConnectError {
    Timeout,
    Failed(io::Error),
    /// The TLS handshake with the backend failed (its certificate, say).
    Tls(io::Error),
}

struct Conn<'a> {
    core: &'a Core,
    client: Peer<'a>,
    peer: SocketAddr,
    track: &'a Tracked,
}

impl<'a> Conn<'a> {
    async fn run(&self) -> Outcome {
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
        let target = Some(req.target.clone());
        let (backend, name) = match self.connect_any().await {
            Ok(b) => b,
            Err((status, backend, why)) => return self.refuse(status, target, backend, why).await,
        };
        self.track.set_phase(Phase::Answer);
        let scratch = &self.core.scratch;
        if let Err(e) = write_all(backend.peer(), &req.upstream, scratch, self.track).await {
            let why = format!("sending the request failed: {e}");
            return self
                .refuse(Status::BadGateway, target, Some(name), why)
                .await;
        }
        self.exchange(backend.peer(), req, name).await
    }

    /// A TLS client's handshake, under the handshake deadline. Plain HTTP
    /// sent to the TLS port is answered 400, as nginx does.
    async fn tls_handshake(&self) -> Result<(), Outcome> {
        let Err(e) = handshake(self.client, &self.core.scratch, self.track).await else {
            return Ok(());
        };
        let expired = self.track.expired() == Some(Expiry::Handshake);
        Err(match e {
            _ if expired => Outcome::TlsFailed("not finished within --handshake-timeout".into()),
            HandshakeError::Closed => Outcome::Gone("closed during the TLS handshake"),
            HandshakeError::Failed(e) => Outcome::TlsFailed(e.to_string()),
            HandshakeError::PlainHttp => {
                let plain = Conn {
                    client: Peer::plain(self.client.sock),
                    ..*self
                };
                let why = "plain HTTP request sent to a TLS port".to_string();
                plain.refuse(Status::BadRequest, None, None, why).await
            }
        })
    }

    /// Read until a whole request head is here, and validate it.
    async fn read_head(&self) -> Result<Prepared, Outcome> {
        let info = ClientInfo {
            ip: self.peer.ip().to_canonical(),
            proto: if self.client.tls.is_some() {
                "https"
            } else {
                "http"
            },
        };
        let max = self.core.config.max_header_bytes;
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

    /// Try the backends in the balancer's order; the first that accepts wins.
    async fn connect_any(&self) -> Result<(Backend<'a>, usize), (Status, Option<usize>, String)> {
        let core: &'a Core = self.core;
        let mut last: Option<(Status, usize, String)> = None;
        for i in core.balancer.plan(Instant::now()) {
            let b = &core.config.backends[i];
            if let Some((_, failed, why)) = &last {
                let failed = &core.config.backends[*failed].name;
                log::info!("client={} {failed}: {why}; trying {}", self.peer, b.name);
            }
            let failure = match self.connect(b).await {
                Ok(stream) => return Ok((stream, i)),
                Err(_) if self.track.expired() == Some(Expiry::Drain) => {
                    return Err((Status::ServiceUnavailable, Some(i), "shutting down".into()));
                }
                Err(ConnectError::Timeout) => (
                    Status::GatewayTimeout,
                    i,
                    format!("connect to {} timed out", b.addr),
                ),
                Err(ConnectError::Failed(e)) => (
                    Status::BadGateway,
                    i,
                    format!("connect to {} failed: {e}", b.addr),
                ),
                Err(ConnectError::Tls(e)) => (
                    Status::BadGateway,
                    i,
                    format!("TLS handshake with {} failed: {e}", b.addr),
                ),
            };
            core.balancer.mark_failed(i, Instant::now());
            last = Some(failure);
        }
        Err(match last {
            Some((status, i, why)) => (status, Some(i), why),
            None => (
                Status::ServiceUnavailable,
                None,
                "no backend available: every one failed within --fail-timeout".into(),
            ),
        })
    }

    /// A non-blocking connect (and TLS handshake, for wss://) that the sweep
    /// can shut down when --connect-timeout strikes.
    async fn connect(&self, b: &crate::config::Backend) -> Result<Backend<'a>, ConnectError> {
        let backend = self.connect_tcp(b.addr).await?;
        let (Some(name), Some(config)) = (&b.tls, &self.core.config.upstream_tls) else {
            return Ok(backend);
        };
        let session = Session::client(config.clone(), name.clone()).map_err(ConnectError::Tls)?;
        let mut backend = backend;
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
        backend: Option<usize>,
        why: String,
    ) -> Outcome {
        let scratch = &self.core.scratch;
        let _ = write_all(self.client, &status.response(&why), scratch, self.track).await;
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
    async fn exchange(&self, backend: Peer<'_>, req: Prepared, name: usize) -> Outcome {
        let Prepared {
            kind,
            upstream,
            early,
            body,
            target,
            head_method,
        } = req;
        let flow = Flow::default();
        flow.up.set(upstream.len() as u64);
        drop(upstream);
        let answered = Answered::default();
        let scratch = &self.core.scratch;
        let (client, track) = (self.client, self.track);
        // Closures, so that the futures are built inside join!: futures moved
        // into it from locals would take their room in the state twice.
        let up = || async {
            let mut body = body;
            match pump(client, backend, scratch, track, &mut body, &flow.up).await {
                Ok(End::Complete) => {}
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
            flow.down.set(flow.down.get() + fin.client.len() as u64);
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
                flow.up.set(flow.up.get() + early.len() as u64);
                drop(early);
                answered.set(true);
                relay(Side::Backend, client, backend, scratch, track, &flow).await;
                return;
            }
            answered.set(false);
            let mut rest = fin.remaining;
            let open_ended = rest == Framing::UntilClose;
            match pump(backend, client, scratch, track, &mut rest, &flow.down).await {
                Ok(End::Complete) => flow.closed(Closer::Complete),
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

    /// Read the backend's final response head, passing interim (1xx) heads on.
    async fn read_answer(
        &self,
        backend: Peer<'_>,
        kind: Kind,
        head_method: bool,
        flow: &Flow,
    ) -> Result<response::Final, AnswerError> {
        let max = self.core.config.max_header_bytes;
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
                        flow.down.set(flow.down.get() + len as u64);
                        head.drain(..len);
                    }
                    Err(e) => return Err(AnswerError::Refuse(Status::BadGateway, e.to_string())),
                }
            }
        }
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
#[derive(Default)]
struct Flow {
    up: Cell<u64>,
    down: Cell<u64>,
    status: Cell<u16>,
    upgraded: Cell<bool>,
    /// The first end seen; later ones are consequences.
    closer: Cell<Option<Closer>>,
    /// Set when ringway answered an error itself instead of the backend.
    refused: Cell<Option<Status>>,
    /// The client left before the answer came.
    client_gone: Cell<bool>,
    why: Cell<Option<String>>,
}

impl Flow {
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
/// until it closes its writing half, then pass that half-close on.
async fn relay(
    from: Side,
    client: Peer<'_>,
    backend: Peer<'_>,
    scratch: &Scratch,
    track: &Tracked,
    flow: &Flow,
) {
    let (src, dst, moved) = match from {
        Side::Client => (client, backend, &flow.up),
        Side::Backend => (backend, client, &flow.down),
    };
    match pump(src, dst, scratch, track, &mut Framing::UntilClose, moved).await {
        Ok(_) => {
            flow.closed(match from {
                Side::Client => Closer::Client,
                Side::Backend => Closer::Backend,
            });
            close_write(dst, track).await;
        }
        Err(e) => flow.fail(e, from, client, backend),
    }
}

fn shutdown_both(a: Peer<'_>, b: Peer<'_>) {
    sys::shutdown_raw(a.sock.as_raw_fd(), Half::Both);
    sys::shutdown_raw(b.sock.as_raw_fd(), Half::Both);
}

/// After an error answer: stop writing, then read and discard what the client
/// still sends (for [`crate::sweep::LINGER`] at most), so that closing does
/// not reset the connection before the client has read the answer.
async fn linger(client: Peer<'_>, track: &Tracked, scratch: &Scratch) {
    track.set_phase(Phase::Linger);
    close_write(client, track).await;
    let _ = discard(client.sock, scratch, LINGER_MAX_BYTES).await;
}
