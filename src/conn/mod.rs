//! One client connection, start to end, one phase per file:
//!
//! 1. `proxy_header`: a PROXY protocol header, on listeners that require
//!    one.
//! 2. `front`: the client's TLS handshake, its request head, the route,
//!    the limits; ringway's own error answers ([`Refusal`]).
//! 3. `upstream`: a server of the route's group, connected (and spoken
//!    TLS to, for wss://), retried on the next one as nginx does.
//! 4. `exchange`: the request's body, the backend's answer; a 101 opens
//!    the tunnel, anything else is streamed to its end.
//! 5. `relay`: one direction of an open tunnel.
//! 6. `outcome`: how it ended: counted, and logged in one access-log line
//!    (and a WARN line for a refusal).
//!
//! Static routes answer from [`files`] instead of 3-5.
//!
//! The connection owns its two sockets and its [`Tracked`] timeout slot;
//! its task is [`serve`], which logs its end exactly once (a client that
//! leaves before sending a whole request head is logged at debug level
//! only: it costs nothing).

mod exchange;
pub mod files;
mod flow;
mod front;
mod outcome;
mod proxy_header;
mod relay;
mod upstream;

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Instant;

use monoio::net::TcpStream;

use crate::config::{Listen, Target};
use crate::io::sweep::Tracked;
use crate::io::tunnel::{Ctx, Peer};
use crate::ops::ratelog::{limited, Topic};
use crate::percore::{Core, Generation};
use crate::policy::limits::Over;
use crate::proto::http::path;
use crate::proto::http::request::Kind;
use crate::proto::tls::session::Session;

use exchange::Meters;
pub use outcome::Refusal;
use outcome::{ClientFault, Ended, Outcome, Policy};

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
        if total.over == Some(Over::Ceiling) {
            // No descriptor to spare for an answer: closed unanswered.
            core.metrics.shed.inc();
            limited!(
                Topic::OutOfDescriptors,
                log::Level::Warn,
                "client={peer}: closed unanswered: far over the connections the open-files \
                 limit leaves room for"
            );
            return;
        }
        // Declared after `client`, so dropped (unregistered) before it closes.
        let track = core.sweeper.register(client.as_raw_fd());
        // A PROXY header without addresses (LOCAL, UNKNOWN) leaves the
        // balancer as the peer: what the client wrote in X-Forwarded-For must
        // not be believed on the balancer's trust.
        let mut forwarded_trusted = true;
        let (peer, local) = if proxy_protocol {
            // Boxed: its header buffer would otherwise take room in every
            // connection's state for the whole tunnel.
            match Box::pin(proxy_header::read(&gen.config, &client, peer, &track)).await {
                Ok((src, None)) => {
                    forwarded_trusted = false;
                    (src, None)
                }
                Ok((src, dst)) => (src, dst.map(Box::new)),
                Err(why) => {
                    core.metrics.proxy_header_errors.inc();
                    limited!(
                        Topic::ProxyHeader,
                        log::Level::Warn,
                        "client={peer} PROXY protocol: {why}; connection closed"
                    );
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
            client: Peer::new(&client, session.as_deref()),
            peer,
            local,
            over: total.over,
            forwarded_trusted,
            cx: Ctx {
                scratch: &core.scratch,
                track: &track,
                pipes: &core.pipes,
            },
        };
        let (known, outcome) = conn.run().await;
        let ended = Ended {
            peer,
            started,
            tls: session.as_ref().map(|s| s.borrow().version()),
            known,
            outcome,
        };
        ended.record(gen, &core.metrics, &core.log);
    }
}

/// What the connection learned about itself on the way, for its log line.
#[derive(Debug, Clone, Copy, Default)]
struct Known {
    /// The index of its route in `gen.routes`, once routed.
    route: Option<u32>,
    /// The client's address after the trusted-proxy rules (X-Forwarded-For
    /// from a trusted peer), once its request head is read.
    real_ip: Option<IpAddr>,
    /// A request head was read, and it asked for no upgrade (its refusal
    /// is a request's, not a failed handshake).
    plain: bool,
}

/// One connection's fixed facts and borrowed per-core state; each phase is
/// a method of it.
struct Conn<'a> {
    core: &'a Core,
    /// The configuration the connection was accepted under.
    gen: &'a Generation,
    client: Peer<'a>,
    /// The client's address: the TCP peer, or what its PROXY header said.
    peer: SocketAddr,
    /// The address the client connected to, from its PROXY header (boxed:
    /// most connections have none, and all carry the field).
    local: Option<Box<SocketAddr>>,
    /// Accepted beyond --max-conns (or the room the open-files limit
    /// leaves): answered 503 once its request is read.
    over: Option<Over>,
    /// X-Forwarded-For may be believed when the peer is a trusted proxy.
    forwarded_trusted: bool,
    /// The core's scratch buffers and this connection's timeout slot.
    cx: Ctx<'a>,
}

impl<'a> Conn<'a> {
    fn track(&self) -> &'a Tracked {
        self.cx.track
    }

    /// Every phase in order, until one ends the connection.
    async fn run(&self) -> (Known, Outcome<'a>) {
        let mut known = Known::default();
        if self.client.tls.is_some() {
            // Boxed, so that plain connections do not carry its room.
            if let Err(outcome) = Box::pin(self.tls_handshake()).await {
                return (known, outcome);
            }
        }
        let mut req = match self.read_head().await {
            Ok(req) => req,
            Err(outcome) => return (known, outcome),
        };
        known.real_ip = Some(req.client_ip);
        known.plain = req.kind != Kind::Upgrade;
        // One copy of the target, for the log line.
        let target = std::mem::take(&mut req.target);
        if let Some(over) = self.over {
            let refusal = Refusal::Policy(match over {
                Over::MaxConns(max) => Policy::OverMaxConns { max },
                Over::Descriptors | Over::Ceiling => Policy::OutOfDescriptors,
            });
            return (known, self.refuse(refusal, Some(target), None).await);
        }
        let (route_index, route) = match self.route(&req, &mut known) {
            Ok(found) => found,
            Err(refusal) => return (known, self.refuse(refusal, Some(target), None).await),
        };
        let group = match &route.target {
            Target::Group(g) => *g,
            Target::Static(root) => {
                // Files get the strict form: nothing that could name
                // something else on disk than what the route matched.
                let outcome = match path::normalize(&req.facts.path) {
                    Ok(file) => self.serve_file(root, &req, &file, target).await,
                    Err(e) => {
                        let refusal = Refusal::Client(ClientFault::BadFilePath(e));
                        self.refuse(refusal, Some(target), None).await
                    }
                };
                return (known, outcome);
            }
        };
        // A tunnel holds its client's slot until it ends (plain requests,
        // which end with their response, are not counted).
        let _ip_slot = match req.kind {
            Kind::Upgrade => match self.per_ip_slot(req.client_ip) {
                Ok(slot) => Some(slot),
                Err(refusal) => return (known, self.refuse(refusal, Some(target), None).await),
            },
            _ => None,
        };
        *req.facts = Default::default();
        let upgrade = req.kind == Kind::Upgrade;
        let connected = self
            .connect_any(group, req.client_ip, &req.upstream, upgrade)
            .await;
        let (backend, server, slot) = match connected {
            Ok(b) => b,
            Err((refusal, server)) => {
                return (known, self.refuse(refusal, Some(target), server).await)
            }
        };
        let meters = Meters {
            core: &self.core.metrics,
            route: &self.gen.routes[route_index].1,
            server: slot.metrics,
        };
        let outcome = self
            .exchange(backend.peer(), req, server, meters, target)
            .await;
        (known, outcome)
    }
}
