//! The backend of a connection: a server of its route's group, chosen by
//! the group's balancer and connected without blocking (then the group's
//! PROXY header, then TLS for a wss:// server), sent the request head and,
//! for an upgrade, waited on for the first byte of its answer
//! (`--upstream-answer-timeout`); retried on the next server as nginx's
//! `proxy_next_upstream error timeout` does. A connect or send that fails,
//! or an upgrade left unanswered, counts against its server
//! (`max_fails`/`fail_timeout`); a failure that is ringway's own (no
//! descriptor, no memory, no local port) counts against nobody and is
//! answered 503 at once. A backend that answers badly is never marked.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Backend as Server, Group};
use crate::io::sweep::{Expiry, Phase, Tracked};
use crate::io::tunnel::{HandshakeError, Peer};
use crate::ops::metrics::ServerMetrics;
use crate::ops::ratelog::{limited, Topic};
use crate::percore::Generation;
use crate::policy::balance::GroupBalancer;
use crate::proto::proxy_protocol;
use crate::proto::tls::session::Session;
use crate::sys;

use super::outcome::{BackendFault, Refusal, SystemFault};
use super::Conn;

/// A backend socket (and its TLS session, for wss://) that leaves the
/// timeout slot before it closes.
pub(super) struct Backend<'a> {
    stream: TcpStream,
    session: Option<Box<RefCell<Session>>>,
    track: &'a Tracked,
}

impl Backend<'_> {
    pub(super) fn peer(&self) -> Peer<'_> {
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
pub(super) struct ServerSlot<'a> {
    balancer: &'a GroupBalancer,
    server: usize,
    /// The server's counters on this core.
    pub(super) metrics: &'a ServerMetrics,
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

/// Why no server of a group could be connected to, and the last server
/// tried.
pub(super) type NoServer<'a> = (Refusal, Option<&'a Server>);

impl<'a> Conn<'a> {
    /// Try servers of group `g` in its balancer's order until one accepts
    /// `head` (and, for an `upgrade`, starts to answer it in time), at most
    /// --upstream-tries of them, for `client` (the real client: the key of
    /// ip-hash). Failures count against their server (nginx's
    /// max_fails/fail_timeout, on this core), except ringway's own.
    pub(super) async fn connect_any(
        &self,
        g: usize,
        client: IpAddr,
        head: &[u8],
        upgrade: bool,
    ) -> Result<(Backend<'a>, &'a Server, ServerSlot<'a>), NoServer<'a>> {
        let gen: &'a Generation = self.gen;
        let group = &gen.config.groups[g];
        let balancer = &gen.balancers[g];
        let tries = match gen.config.upstream_tries {
            0 => usize::MAX,
            n => n,
        };
        let mut attempt = balancer.attempt(client);
        let mut last: Option<(BackendFault, &'a Server)> = None;
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
            if let Some((why, failed)) = &last {
                limited!(
                    Topic::Retry,
                    log::Level::Info,
                    "client={} {}: {why}; trying {}",
                    self.peer,
                    failed.name,
                    b.name
                );
            }
            let start = Instant::now();
            let failure = match self.connect(group, b).await {
                Ok(stream) => {
                    self.core.metrics.connect.observe(start.elapsed());
                    match self.send_head(&stream, b, head, upgrade).await {
                        Ok(()) => {
                            balancer.succeeded(i, Instant::now());
                            return Ok((stream, b, slot));
                        }
                        Err(failure) => failure,
                    }
                }
                Err(failure) => failure,
            };
            if self.track().expired() == Some(Expiry::Drain) {
                return Err((Refusal::System(SystemFault::ShuttingDown), Some(b)));
            }
            let failure = match failure {
                // Ours, not the server's: every server would fail alike.
                BackendFault::ConnectFailed(_, e) if SystemFault::is_local(&e) => {
                    self.core.metrics.local_failures.inc();
                    return Err((Refusal::System(SystemFault::Local(e)), Some(b)));
                }
                failure => failure,
            };
            if slot.failed(Instant::now(), b.params.fail_timeout) {
                limited!(
                    Topic::ServerMarked,
                    log::Level::Warn,
                    "group {} server {} ({}) marked unavailable for {:?}: {failure}",
                    group.name,
                    b.name,
                    b.addr,
                    b.params.fail_timeout,
                );
            }
            last = Some((failure, b));
        }
        Err(match last {
            Some((failure, b)) => (Refusal::Backend(failure), Some(b)),
            None => {
                let group = group.name.as_str().into();
                (Refusal::Backend(BackendFault::NoServer { group }), None)
            }
        })
    }

    /// Send the request head to a connected backend; for an upgrade, wait
    /// (--upstream-answer-timeout) until its answer starts to arrive. A
    /// readiness wait holds no bytes, so the sweep may end it.
    async fn send_head(
        &self,
        backend: &Backend<'_>,
        b: &Server,
        head: &[u8],
        upgrade: bool,
    ) -> Result<(), BackendFault> {
        self.track().set_phase(if upgrade {
            Phase::UpgradeAnswer
        } else {
            Phase::Answer
        });
        if let Err(e) = self.cx.write_all(backend.peer(), head).await {
            return Err(BackendFault::SendFailed(e));
        }
        if !upgrade {
            return Ok(());
        }
        let tls_ready = backend
            .session
            .as_ref()
            .is_some_and(|s| s.borrow().has_pending());
        if !tls_ready {
            // An error here is the answer's reading to find and tell.
            let _ = backend.stream.readable(false).await;
        }
        if self.track().expired() == Some(Expiry::Answer) {
            return Err(BackendFault::AnswerTimeout(b.addr));
        }
        Ok(())
    }

    /// A non-blocking connect (then the group's PROXY header, then the TLS
    /// handshake for wss://) that the sweep can shut down when
    /// --connect-timeout strikes.
    async fn connect(&self, group: &Group, b: &Server) -> Result<Backend<'a>, BackendFault> {
        let failed = |e| BackendFault::ConnectFailed(b.addr, e);
        let mut backend = self.connect_tcp(b.addr).await?;
        if let Some(version) = group.send_proxy {
            let dst = match self.local.as_deref() {
                Some(&dst) => dst,
                None => self.client.sock.local_addr().map_err(failed)?,
            };
            let mut header = Vec::with_capacity(proxy_protocol::MAX_HEADER);
            proxy_protocol::encode(version, self.peer, dst, &mut header);
            let sock = Peer::plain(&backend.stream);
            self.cx.write_all(sock, &header).await.map_err(failed)?;
        }
        let (Some(name), Some(config)) = (&b.tls, &self.gen.config.upstream_tls) else {
            return Ok(backend);
        };
        let tls_failed = |e| BackendFault::TlsFailed(b.addr, e);
        let session = Session::client(config.clone(), name.clone()).map_err(tls_failed)?;
        backend.session = Some(Box::new(RefCell::new(session)));
        let done = Box::pin(self.cx.handshake(backend.peer())).await;
        if self.track().expired() == Some(Expiry::Connect) {
            return Err(BackendFault::ConnectTimeout(b.addr));
        }
        match done {
            Ok(()) => Ok(backend),
            Err(HandshakeError::Failed(e)) => Err(tls_failed(e)),
            Err(_) => Err(tls_failed(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the backend closed the connection",
            ))),
        }
    }

    async fn connect_tcp(&self, addr: SocketAddr) -> Result<Backend<'a>, BackendFault> {
        let failed = |e| BackendFault::ConnectFailed(addr, e);
        let sock = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            Some(Protocol::TCP),
        )
        .map_err(failed)?;
        sock.set_nodelay(true).map_err(failed)?;
        if let Some(k) = self.core.keepalive().0 {
            sys::set_keepalive(&sock, k.idle, k.interval, k.count).map_err(failed)?;
        }
        match sock.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(failed(e)),
        }
        let stream = TcpStream::from_std(std::net::TcpStream::from(sock)).map_err(failed)?;
        let backend = Backend {
            stream,
            session: None,
            track: self.track(),
        };
        self.track().set_backend(backend.stream.as_raw_fd());
        self.track().set_phase(Phase::Connect);
        let ready = backend.stream.writable(false).await;
        if self.track().expired() == Some(Expiry::Connect) {
            return Err(BackendFault::ConnectTimeout(addr));
        }
        ready.map_err(failed)?;
        match sys::take_error(&backend.stream) {
            Ok(None) => Ok(backend),
            Ok(Some(e)) | Err(e) => Err(failed(e)),
        }
    }
}
