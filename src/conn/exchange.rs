//! The request is with the backend: the exchange of a request and its
//! answer, run as two directions joined on the connection's task.
//!
//! - up: a plain request's body (as framed, nothing after it); then, until
//!   the answer, a watch for a client that leaves (peeking, never reading
//!   what it sends); then, if the tunnel opened, the client's bytes; or,
//!   while a response streams, a watch for a client that leaves (reading
//!   and dropping what it sends: a plain exchange has nothing more to take
//!   from it), which ends both sides.
//! - down: the backend's answer (interim heads passed on); a 101 to an
//!   upgrade opens the tunnel (the client's early bytes go first), anything
//!   else is streamed to its end and both sides closed.

use std::cell::Cell;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::task::{Poll, Waker};
use std::time::Instant;

use monoio::net::TcpStream;

use crate::config::{Backend as Server, Splice};
use crate::io::splice;
use crate::io::sweep::{Expiry, Phase};
use crate::io::tunnel::{Ctx, End, Peer, PumpError};
use crate::ops::ending::Closed;
use crate::proto::http::body::Framing;
use crate::proto::http::request::{Kind, Prepared};
use crate::proto::http::response::{self, Answer};
use crate::sys::{self, Half, Xfer};

pub(super) use super::flow::Meters;
use super::flow::{shutdown_both, Flow, RingRoom, Side};
use super::front::linger;
use super::outcome::{expired, BackendFault, Outcome, Refusal, Summary, MAX_INTERIM};
use super::relay::relay;
use super::Conn;

/// What the exchange keeps of the request once its head has gone upstream.
struct Sent<'a> {
    kind: Kind,
    /// A `HEAD` request: its response has no body whatever it says.
    head_method: bool,
    /// An upgrade's bytes read behind its head, held until the 101.
    early: Vec<u8>,
    /// What is left of a plain request's body.
    body: Framing,
    /// The request target, for the log line.
    target: Box<str>,
    server: &'a Server,
}

/// Whole receive buffers in a row after which `--splice auto` hands a
/// direction from the completion ring to splice (256 KiB with the default
/// 16 KiB buffers): a message that large is bulk, which one splice per
/// 64 KiB moves with less work than a ring turn per buffer (README,
/// Performance).
const BULK_AFTER: u16 = 16;

/// Why no final answer reaches the client.
enum AnswerError {
    /// ringway answers this itself.
    Refuse(BackendFault),
    /// The client left first: nobody to answer.
    ClientGone,
}

/// Down tells up, once the answer is known, whether up relays the client's
/// bytes.
#[derive(Default)]
struct Answered {
    state: Cell<Option<bool>>,
    /// No tunnel, and a response streams to the client.
    streaming: Cell<bool>,
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

    /// Wait until `sock` is readable (`Some`), or until the answer is in
    /// (`None`), whichever comes first. A readiness wait holds no data, so
    /// giving it up for the answer loses nothing.
    async fn or_readable(&self, sock: &TcpStream) -> Option<std::io::Result<()>> {
        let mut ready = std::pin::pin!(sock.readable(false));
        std::future::poll_fn(|cx| {
            if self.state.get().is_some() {
                return Poll::Ready(None);
            }
            if let Poll::Ready(r) = ready.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            self.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    /// Wait for the answer: `true` if `up` relays the client's bytes (a
    /// tunnel that opened on the readiness path).
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

impl<'a> Conn<'a> {
    /// Run the exchange of `req` (its head sent already) with `server`
    /// through `backend`, until both directions are done.
    ///
    /// Not an `async fn`: an async fn keeps its arguments for its whole
    /// life, so the request is taken apart here and only what the exchange
    /// needs goes into its state.
    pub(super) fn exchange<'b>(
        &'b self,
        backend: Peer<'b>,
        req: Prepared,
        server: &'a Server,
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
        // A ws:// tunnel's directions may be promoted into the core's
        // completion ring (`relay`); with `--splice auto`, one that moves
        // bulk is handed on to splice from there.
        let config = &self.gen.config;
        let plain = self.client.tls.is_none() && backend.tls.is_none();
        let bulk = !config.drain_close_frames && config.splice == Splice::Auto;
        let ring = self
            .core
            .ring
            .get()
            .filter(|_| plain && kind == Kind::Upgrade);
        let ring = ring.map(|reactor| RingRoom {
            reactor,
            totals: &self.core.metrics,
            bulk_after: if bulk { BULK_AFTER } else { 0 },
        });
        // Built here and moved in: an argument is kept once, a local made
        // from one would be a second copy.
        let flow = Flow::new(meters, ring);
        flow.up.add(upstream.len() as u64);
        drop(upstream);
        let sent = Sent {
            kind,
            head_method,
            early,
            body,
            target,
            server,
        };
        self.exchange_parts(backend, sent, flow)
    }

    #[allow(clippy::manual_async_fn)]
    fn exchange_parts<'b>(
        &'b self,
        backend: Peer<'b>,
        sent: Sent<'a>,
        flow: Flow<'a>,
    ) -> impl std::future::Future<Output = Outcome<'a>> + 'b {
        // An `async move` block, not an `async fn`: see `serve`.
        async move {
            let answered = Answered::default();
            let (client, cx) = (self.client, self.cx);
            // Closures, so that the futures are built inside join!: futures moved
            // into it from locals would take their room in the state twice.
            let up = || async {
                let mut body = sent.body;
                match cx.pump(client, backend, None, &mut body, &flow.up, 0).await {
                    Ok(End::Complete | End::Stopped | End::Promote) => {}
                    Ok(End::Eof) => {
                        // Gone in the middle of its request body.
                        flow.closed(Closed::Client);
                        shutdown_both(client, backend);
                        return;
                    }
                    Err(e) => return flow.fail(e, Side::Client, client, backend),
                }
                // Records a TLS client sent with its head are taken already, so
                // the socket itself tells whether more came, or an end (unless
                // its close_notify came with them).
                let closed = client.tls.is_some_and(|t| t.borrow().peer_closed());
                let gone = closed
                    || match answered.or_readable(client.sock).await {
                        // Answered first: nothing to watch any more.
                        None => false,
                        Some(ready) => {
                            ready.is_err() || !matches!(sys::peek(client.sock), Ok(Xfer::Done(_)))
                        }
                    };
                if gone && answered.get().is_none() {
                    flow.closed(Closed::Client);
                    flow.client_gone.set(true);
                    sys::shutdown_raw(backend.sock.as_raw_fd(), Half::Both);
                    return;
                }
                if !answered.wait().await {
                    if answered.streaming.get() {
                        watch_client(cx, client, backend, &flow).await;
                    }
                    return;
                }
                relay(cx, Side::Client, client, backend, &flow).await;
            };
            let down = || async {
                let answer = self
                    .read_answer(backend, sent.kind, sent.head_method, &flow)
                    .await;
                let fin = match answer {
                    Ok(fin) => fin,
                    Err(e) => {
                        answered.set(false);
                        if let AnswerError::Refuse(fault) = e {
                            let fault = match (fault, cx.track.expired()) {
                                (BackendFault::NoAnswerInTime { .. }, Some(Expiry::Idle)) => {
                                    BackendFault::NoAnswerInTime { idle: true }
                                }
                                (BackendFault::NoAnswerInTime { .. }, Some(Expiry::Answer)) => {
                                    BackendFault::AnswerTimeout(sent.server.addr)
                                }
                                (fault, _) => fault,
                            };
                            let refusal = Refusal::Backend(fault);
                            flow.answered.set(Some(Instant::now()));
                            sys::shutdown_raw(backend.sock.as_raw_fd(), Half::Both);
                            let answer = refusal.status().response(&refusal.public());
                            flow.refused.set(Some(Box::new(refusal)));
                            let _ = cx.write_all(client, &answer).await;
                            drop(answer);
                            linger(cx, client).await;
                        }
                        shutdown_both(client, backend);
                        return;
                    }
                };
                flow.status.set(fin.status);
                flow.upgraded.set(fin.upgraded);
                cx.track.set_phase(Phase::Active);
                let written = cx.write_all(client, &fin.client).await;
                flow.answered.set(Some(Instant::now()));
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
                    let early = sent.early;
                    if let Err(e) = cx.write_all(backend, &early).await {
                        answered.set(false);
                        return flow.fail(PumpError::Write(e), Side::Client, client, backend);
                    }
                    flow.up.add(early.len() as u64);
                    if self.gen.config.drain_close_frames {
                        flow.frames.open(&early, cx.track).await;
                    }
                    drop(early);
                    self.choose_splice(client, backend, &flow);
                    // One direction here, the other in `up`.
                    answered.set(true);
                    relay(cx, Side::Backend, client, backend, &flow).await;
                    return;
                }
                answered.streaming.set(true);
                answered.set(false);
                let mut rest = fin.remaining;
                let open_ended = rest == Framing::UntilClose;
                match cx
                    .pump(backend, client, None, &mut rest, &flow.down, 0)
                    .await
                {
                    Ok(End::Complete | End::Stopped | End::Promote) => {
                        flow.closed(Closed::Complete)
                    }
                    Ok(End::Eof) if open_ended => flow.closed(Closed::Complete),
                    // Closed before the end of its declared body.
                    Ok(End::Eof) => flow.closed(Closed::Backend),
                    Err(e) => flow.fail(e, Side::Backend, client, backend),
                }
                // A TLS client learns from close_notify that the response is
                // whole (and not cut off), which matters when it ends at close.
                if flow.first_end() != Some(Closed::Backend) {
                    cx.close_write(client).await;
                }
                // A plain exchange ends with its response; this also ends `up`.
                shutdown_both(client, backend);
            };
            monoio::join!(up(), down());
            flow.leave_ring();
            if flow.upgraded.get() {
                flow.meters.closed();
            }

            if let Some(refusal) = flow.refused.take() {
                return Outcome::Refused {
                    refusal: *refusal,
                    target: Some(sent.target),
                    server: Some(sent.server),
                    answered: flow.answered.get().unwrap_or_else(Instant::now),
                };
            }
            Outcome::Done(Summary {
                target: sent.target,
                server: sent.server,
                // nginx's 499: the client closed before the answer.
                status: if flow.client_gone.get() {
                    499
                } else {
                    flow.status.get()
                },
                upgrade_request: sent.kind == Kind::Upgrade,
                upgraded: flow.upgraded.get(),
                up: flow.up.get(),
                down: flow.down.get(),
                closed: match cx.track.expired() {
                    Some(e) => expired(e),
                    None => flow.first_end().unwrap_or(Closed::Complete),
                },
                error: flow.error.take(),
                answered: flow.answered.get(),
            })
        }
    }

    /// A ws:// tunnel (neither side TLS) splices under `--splice on`, unless
    /// it follows its frames, which needs to see its bytes.
    fn choose_splice(&self, client: Peer<'_>, backend: Peer<'_>, flow: &Flow<'_>) {
        let plain = client.tls.is_none() && backend.tls.is_none();
        if !plain || flow.frames.is_on() || self.gen.config.splice != Splice::On {
            return;
        }
        match splice::prepare(client.sock, backend.sock) {
            Ok(()) => {
                flow.splice[0].set(true);
                flow.splice[1].set(true);
            }
            Err(e) => log::debug!("client={}: cannot splice ({e}); copying", self.peer),
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
        let refuse = |fault| Err(AnswerError::Refuse(fault));
        // An upgrade's answer was waited for already (`Conn::send_head`).
        let mut ready = upgrade;
        loop {
            let read = self
                .cx
                .read_after(backend, std::mem::take(&mut ready), |b| {
                    head.extend_from_slice(b)
                })
                .await;
            if flow.client_gone.get() {
                return Err(AnswerError::ClientGone);
            }
            match read {
                Ok(Some(())) => self.track().touch(),
                Ok(None) if self.track().expired().is_some() => {
                    return refuse(BackendFault::NoAnswerInTime { idle: false })
                }
                Ok(None) => return refuse(BackendFault::ClosedWithoutAnswer),
                Err(e) => return refuse(BackendFault::ReadFailed(e)),
            }
            loop {
                match response::prepare(&head, max, upgrade, head_method) {
                    Ok(None) => break,
                    Ok(Some(Answer::Final(fin))) => return Ok(fin),
                    Ok(Some(Answer::Interim { len })) => {
                        interim += 1;
                        if interim > MAX_INTERIM {
                            return refuse(BackendFault::TooManyInterim);
                        }
                        if self.cx.write_all(self.client, &head[..len]).await.is_err() {
                            return Err(AnswerError::ClientGone);
                        }
                        flow.down.add(len as u64);
                        head.drain(..len);
                    }
                    Err(e) => return refuse(BackendFault::BadAnswer(e)),
                }
            }
        }
    }
}

/// Bytes a client may send while its response streams (pipelined requests,
/// which a `Connection: close` exchange never answers) before ringway stops
/// reading them.
const WATCH_MAX_BYTES: usize = 256 * 1024;

/// While a plain response streams: read (and drop) what the client sends
/// until it closes or fails, then end both sides, as nobody is left to
/// take the response. The response's own end (`shutdown_both`) ends this
/// watch too, and is noted first.
async fn watch_client(cx: Ctx<'_>, client: Peer<'_>, backend: Peer<'_>, flow: &Flow<'_>) {
    let mut dropped = 0;
    while dropped <= WATCH_MAX_BYTES {
        match cx.read_some(client, |bytes| bytes.len()).await {
            Ok(Some(n)) => dropped += n,
            Ok(None) => {
                flow.closed(Closed::Client);
                shutdown_both(client, backend);
                return;
            }
            Err(e) => return flow.fail(PumpError::Read(e), Side::Client, client, backend),
        }
    }
}
