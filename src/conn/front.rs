//! The client's side of a connection before any backend: its TLS
//! handshake, its request head, its route and the limits that apply to it,
//! a static route's answer, and ringway's own error answers (a
//! [`Refusal`], then a linger so that closing does not reset the answer
//! away).

use std::net::IpAddr;
use std::time::Instant;

use crate::config::static_root::Root;
use crate::config::{Config, Route};
use crate::io::sweep::{Expiry, Phase};
use crate::io::tunnel::{Ctx, HandshakeError, Peer};
use crate::policy::limits::{self, IpSlot};
use crate::proto::http::path;
use crate::proto::http::request::{self, ClientInfo, Kind, Prepared};

use super::files::{self, FileRequest};
use super::outcome::{ClientFault, Outcome, Policy, Refusal, TlsFailure};
use super::{Conn, Known};
use crate::config::Backend as Server;

/// Most bytes discarded from a refused client before its socket closes.
const LINGER_MAX_BYTES: usize = 256 * 1024;

impl<'a> Conn<'a> {
    /// A TLS client's handshake, under the handshake deadline. Plain HTTP
    /// sent to the TLS port is answered 400, as nginx does.
    pub(super) async fn tls_handshake(&self) -> Result<(), Outcome<'a>> {
        let Err(e) = self.cx.handshake(self.client).await else {
            return Ok(());
        };
        let expired = self.track().expired() == Some(Expiry::Handshake);
        Err(match e {
            _ if expired => Outcome::TlsFailed(TlsFailure::Timeout),
            HandshakeError::Closed => Outcome::Gone("closed during the TLS handshake"),
            HandshakeError::Failed(e) => Outcome::TlsFailed(TlsFailure::Failed(e)),
            HandshakeError::PlainHttp => {
                // Answered over the raw socket: the client speaks no TLS.
                let refusal = Refusal::Client(ClientFault::PlainHttpOnTls);
                let to = Peer::plain(self.client.sock);
                Box::pin(self.refuse_to(to, refusal, None, None)).await
            }
        })
    }

    /// Read until a whole request head is here, and validate it.
    pub(super) async fn read_head(&self) -> Result<Prepared, Outcome<'a>> {
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
            let step = self
                .cx
                .read_some(self.client, |bytes| {
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
            let expired = self.track().expired();
            let late =
                |completed_late| Refusal::Client(ClientFault::HeadTimeout { completed_late });
            match step {
                // Complete, but only as the deadline struck: the sweep has shut
                // our reading side already, so answer the timeout.
                Ok(Some(Ok(Some(_)))) if expired == Some(Expiry::Handshake) => {
                    return Err(self.refuse(late(true), None, None).await);
                }
                Ok(Some(Ok(Some(req)))) => return Ok(req),
                Ok(Some(Ok(None))) => continue,
                Ok(Some(Err((e, target)))) => {
                    let refusal = Refusal::Client(ClientFault::BadHead(e));
                    return Err(self.refuse(refusal, target, None).await);
                }
                _ if expired == Some(Expiry::Handshake) => {
                    return Err(self.refuse(late(false), None, None).await);
                }
                Ok(None) if head.is_empty() => return Err(Outcome::Gone("closed")),
                Ok(None) => return Err(Outcome::Gone("closed in the middle of its request head")),
                Err(_) => return Err(Outcome::Gone("connection reset")),
            }
        }
    }

    /// The route of a request, if it has one and may take it: 400 for a path
    /// that cannot be resolved, 404 for no route, 403 for an upgrade from an
    /// Origin not allowed.
    pub(super) fn route(
        &self,
        req: &Prepared,
        known: &mut Known,
    ) -> Result<(usize, &'a Route), Refusal> {
        let config: &'a Config = &self.gen.config;
        let resolved = path::route_path(&req.facts.path)
            .map_err(|e| Refusal::Client(ClientFault::BadPath(e)))?;
        let found = config
            .routes
            .find(req.facts.host.as_deref(), &resolved)
            .ok_or(Refusal::Policy(Policy::NoRoute))?;
        known.route = Some(found.0 as u32);
        let origin = req.facts.origin.as_deref();
        if req.kind == Kind::Upgrade && !limits::origin_allowed(&config.allow_origin, origin) {
            let origin = origin.unwrap_or_default().into();
            return Err(Refusal::Policy(Policy::OriginNotAllowed(origin)));
        }
        Ok(found)
    }

    /// A tunnel's slot in the per-address count (`--limit-conn-per-ip`),
    /// held until the connection ends.
    pub(super) fn per_ip_slot(&self, ip: IpAddr) -> Result<IpSlot<'a>, Refusal> {
        let per_ip = &self.core.shared.per_ip;
        let config = &self.gen.config;
        // Counted even without a limit, so that a reload that sets one
        // counts the tunnels already open.
        let limit = config.limit_conn_per_ip.unwrap_or(u32::MAX);
        per_ip.acquire(ip, limit).ok_or_else(|| {
            Refusal::Policy(Policy::PerIpLimit {
                ip,
                tunnels: per_ip.count(ip),
                status: config.limit_conn_status,
            })
        })
    }

    /// A static route: the file (or its error answer), then close gently.
    pub(super) async fn serve_file(
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
        self.track().set_phase(Phase::Active);
        let answered = Instant::now();
        let served = files::serve(self.client, self.cx, root, &file).await;
        linger(self.cx, self.client).await;
        Outcome::File {
            target,
            served,
            answered,
        }
    }

    /// Answer an error ourselves, then close gently.
    pub(super) async fn refuse(
        &self,
        refusal: Refusal,
        target: Option<Box<str>>,
        server: Option<&'a Server>,
    ) -> Outcome<'a> {
        self.refuse_to(self.client, refusal, target, server).await
    }

    /// [`Conn::refuse`] through `to` (the raw socket, for plain HTTP on a
    /// TLS port).
    async fn refuse_to(
        &self,
        to: Peer<'_>,
        refusal: Refusal,
        target: Option<Box<str>>,
        server: Option<&'a Server>,
    ) -> Outcome<'a> {
        let answered = Instant::now();
        let status = refusal.status();
        // nginx's 444: close without an answer.
        if status.code() != 444 {
            let answer = status.response(&refusal.public());
            let _ = self.cx.write_all(to, &answer).await;
        }
        linger(self.cx, to).await;
        Outcome::Refused {
            refusal,
            target,
            server,
            answered,
        }
    }
}

/// After an error answer: stop writing, then read and discard what the client
/// still sends (for [`crate::io::sweep::LINGER`] at most), so that closing does
/// not reset the connection before the client has read the answer.
pub(super) async fn linger(cx: Ctx<'_>, client: Peer<'_>) {
    cx.track.set_phase(Phase::Linger);
    cx.close_write(client).await;
    let _ = cx.discard(client.sock, LINGER_MAX_BYTES).await;
}
