//! An open tunnel's bytes. On the readiness path ([`relay`]), one direction
//! at a time: the bytes coming from one side copied to the other until that
//! side closes its writing half, which is then passed on (half-close); or,
//! when a drain stops the direction at a frame boundary, its Close frame
//! (`io::drain::close`); both directions run on the connection's task,
//! joined in `exchange`. On the completion path ([`ring_tunnel`]), both
//! directions ride the core's completion ring until they end or are
//! released to [`relay`].

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;

use crate::io::drain;
use crate::io::meter::TunnelHook;
use crate::io::ring::{DirEnd, Op, Reactor};
use crate::io::splice;
use crate::io::tunnel::{Ctx, End, Moved, Peer, PumpError};
use crate::ops::ending::Closed;
use crate::ops::metrics::CoreMetrics;
use crate::proto::http::body::Framing;

use super::flow::{Flow, Side};

/// Relay the direction coming `from` one side until it ends.
#[allow(clippy::manual_async_fn)]
pub(super) fn relay<'a>(
    cx: Ctx<'a>,
    from: Side,
    client: Peer<'a>,
    backend: Peer<'a>,
    flow: &'a Flow<'a>,
) -> impl std::future::Future<Output = ()> + 'a {
    // An `async move` block, not an `async fn`, which would keep its
    // arguments twice; for the same reason the ends are looked up again
    // after the pump rather than kept across it.
    async move {
        let (src, dst, moved) = ends(from, client, backend, flow);
        let watch = flow.frames.watch(from == Side::Client);
        let end = if flow.splice[usize::from(from == Side::Backend)].get() {
            // Boxed: most tunnels never splice.
            Box::pin(cx.splice(src.sock, dst.sock, moved)).await
        } else {
            cx.pump(src, dst, watch, &mut Framing::UntilClose, moved)
                .await
        };
        let (src, dst, moved) = ends(from, client, backend, flow);
        let watch = flow.frames.watch(from == Side::Client);
        match (end, watch) {
            (Ok(End::Stopped), Some(w)) => {
                if w.sends_close() {
                    flow.closed(Closed::Drained);
                }
                // Boxed: only a drain needs its room.
                match Box::pin(drain::close(cx, w, src, dst)).await {
                    Ok(sent) => moved.add(sent),
                    Err(e) => flow.fail(e, from, client, backend),
                }
            }
            (Ok(_), _) => {
                flow.closed(closer(from));
                if let Some(w) = watch {
                    w.ended();
                }
                cx.close_write(dst).await;
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

/// Both directions of a ws:// tunnel through the core's completion ring
/// (`io::ring`): the ring moves the bytes, its hook counts them, stamps
/// activity and follows frames (`io::meter`). A direction leaves the ring
/// when its source closes (half-close passed on by the ring), when the
/// tunnel fails, or when it is released to the readiness path: a drain
/// that asks a tunnel following its frames to close releases both, so
/// that each can stop at a frame boundary (`relay`); with `bulk_after`,
/// the ring itself releases a direction that moves bulk, which then
/// splices.
#[allow(clippy::manual_async_fn)]
pub(super) fn ring_tunnel<'a>(
    cx: Ctx<'a>,
    ring: &'a Rc<Reactor<TunnelHook>>,
    bulk_after: u16,
    totals: &'a Arc<CoreMetrics>,
    (client, backend): (Peer<'a>, Peer<'a>),
    flow: &'a Flow<'a>,
) -> impl std::future::Future<Output = ()> + 'a {
    async move {
        let frames = flow.frames.shared();
        if let Some(pair) = &frames {
            pair.set_in_ring(0, true);
            pair.set_in_ring(1, true);
        }
        let hook = TunnelHook::new(totals.clone(), cx.track.stamp(), frames);
        let (c, b) = (client.sock.as_raw_fd(), backend.sock.as_raw_fd());
        let tunnel = ring.open(c, b, bulk_after, hook);
        let t = &tunnel;
        let direction = |from: Side| async move {
            let d = usize::from(from == Side::Backend);
            let end = std::future::poll_fn(|task| {
                // Only a tunnel that follows its frames is ever asked.
                if cx.track.asked() && flow.frames.is_on() {
                    t.release(0);
                    t.release(1);
                }
                std::pin::pin!(t.end(d)).poll(task)
            })
            .await;
            // Both directions' ends can reach the task in one wake: note
            // the end that came first, as the readiness path would have.
            if let Some(first) = t.first_eof() {
                flow.closed(closer(side(first)));
            }
            if let Some(pair) = flow.frames.shared() {
                pair.set_in_ring(d, false);
                // The other direction may be waiting for this one to
                // leave the ring before it stops.
                cx.track.wake();
            }
            let watch = flow.frames.watch(from == Side::Client);
            match end {
                DirEnd::Released => {
                    // Boxed: only a drain needs its room.
                    return Box::pin(relay(cx, from, client, backend, flow)).await;
                }
                DirEnd::Bulk => {
                    // Splice from here on (copy, if the sockets cannot).
                    if splice::prepare(client.sock, backend.sock).is_ok() {
                        flow.splice[d].set(true);
                    }
                    return Box::pin(relay(cx, from, client, backend, flow)).await;
                }
                DirEnd::Eof => flow.closed(closer(from)),
                DirEnd::Failed { errno, op } => {
                    let e = io::Error::from_raw_os_error(errno);
                    let (e, from) = match op {
                        Op::Recv(d) => (PumpError::Read(e), side(d)),
                        Op::Send(d) => (PumpError::Write(e), side(d)),
                    };
                    flow.fail(e, from, client, backend);
                }
            }
            if let Some(w) = watch {
                w.ended();
            }
        };
        monoio::join!(direction(Side::Client), direction(Side::Backend));
        let hook = tunnel.finish();
        flow.up.add_own(hook.moved[0]);
        flow.down.add_own(hook.moved[1]);
    }
}

/// The end of a direction whose source closed.
fn closer(from: Side) -> Closed {
    match from {
        Side::Client => Closed::Client,
        Side::Backend => Closed::Backend,
    }
}

/// The side a ring direction's bytes come from.
fn side(d: usize) -> Side {
    if d == 0 {
        Side::Client
    } else {
        Side::Backend
    }
}
