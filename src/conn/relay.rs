//! An open tunnel's bytes, one direction at a time ([`relay`]; both run on
//! the connection's task, joined in `exchange`): the bytes coming from one
//! side copied (or spliced) to the other until that side closes its writing
//! half, which is then passed on (half-close); or, when a drain stops the
//! direction at a frame boundary, its Close frame (`io::drain::close`). A
//! ws:// tunnel's direction that lives on is promoted into the core's
//! completion ring, where it stays until it ends or is released.

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;

use crate::io::drain;
use crate::io::meter::TunnelHook;
use crate::io::ring::{DirEnd, Op};
use crate::io::splice;
use crate::io::tunnel::{Ctx, End, Moved, Peer, PumpError};
use crate::ops::ending::Closed;
use crate::proto::http::body::Framing;

use super::flow::{Flow, Side};

/// Reads a tunnel direction makes on the readiness path before it is
/// promoted into the core's completion ring. A tunnel that carries a
/// message or two and closes (a handshake, an echo, a close) never pays for
/// the ring's setup; one that lives on rides it after a few messages.
/// Measured on `loadtest/compare`'s connect scenario: riding the ring from
/// the first byte cost 104 µs of proxy CPU per handshake against 90 on the
/// readiness path (README, Performance).
const PROMOTE_AFTER: u32 = 4;

/// Relay the direction coming `from` one side until it ends: by readiness
/// (copying, or splicing), promoted into the core's completion ring after
/// [`PROMOTE_AFTER`] reads when the tunnel may ride it, and back to
/// readiness if the ring releases it (a drain's ask, a slow destination
/// while the ring runs short, or bulk to splice).
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
        let d = usize::from(from == Side::Backend);
        let mut promote_after = match flow.ring {
            Some(_) => PROMOTE_AFTER,
            None => 0,
        };
        loop {
            let (src, dst, moved) = ends(from, client, backend, flow);
            let watch = flow.frames.watch(from == Side::Client);
            let end = if flow.splice[d].get() {
                // Boxed: most tunnels never splice.
                Box::pin(cx.splice(src.sock, dst.sock, moved)).await
            } else {
                cx.pump(
                    src,
                    dst,
                    watch,
                    &mut Framing::UntilClose,
                    moved,
                    promote_after,
                )
                .await
            };
            if let Ok(End::Promote) = end {
                // Boxed: its room is needed only while it rides the ring.
                match Box::pin(ride(cx, from, client, backend, flow)).await {
                    Ridden::Ended => return,
                    // A drain's ask (the direction stops at a frame boundary
                    // here), or a destination that did not keep up while the
                    // ring ran short: back to readiness for good.
                    Ridden::Released => promote_after = 0,
                    Ridden::Bulk => {
                        promote_after = 0;
                        // Splice from here on (copy, if the sockets cannot).
                        if splice::prepare(client.sock, backend.sock).is_ok() {
                            flow.splice[d].set(true);
                        }
                    }
                }
                continue;
            }
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
                    cx.track.half_closed();
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
            return;
        }
    }
}

/// How a direction left the completion ring.
enum Ridden {
    /// It ended there (its source closed, or the tunnel failed).
    Ended,
    /// Released to the readiness path.
    Released,
    /// Released as bulk: it splices from here.
    Bulk,
}

/// The direction coming `from` one side, in the core's completion ring
/// (`io::ring`): its bytes move by completions there, its hook counts
/// them, stamps activity and follows frames (`io::meter`), until it ends
/// or is released. The tunnel's slot is made by its first direction to
/// come and joined by the second; the exchange gives it back
/// (`Flow::leave_ring`).
async fn ride<'a>(
    cx: Ctx<'a>,
    from: Side,
    client: Peer<'a>,
    backend: Peer<'a>,
    flow: &'a Flow<'a>,
) -> Ridden {
    let Some(room) = flow.ring else {
        return Ridden::Released;
    };
    let d = usize::from(from == Side::Backend);
    let frames = flow.frames.shared();
    if let Some(pair) = &frames {
        pair.set_in_ring(d, true);
    }
    {
        let mut slot = flow.tunnel.borrow_mut();
        match &*slot {
            Some(tunnel) => tunnel.adopt(d),
            None => {
                let fds = (client.sock.as_raw_fd(), backend.sock.as_raw_fd());
                let hook = TunnelHook::new(room.totals.clone(), cx.track.stamp(), frames);
                let ride = [d == 0, d == 1];
                *slot = Some(room.reactor.open(fds, ride, room.bulk_after, hook));
            }
        }
    }
    let end = std::future::poll_fn(|task| {
        let slot = flow.tunnel.borrow();
        let tunnel = slot
            .as_ref()
            .expect("the tunnel's slot lives with the exchange");
        // Only a tunnel that follows its frames is ever asked.
        if cx.track.asked() && flow.frames.is_on() {
            tunnel.release(d);
        }
        let polled = std::pin::pin!(tunnel.end(d)).poll(task);
        polled
    })
    .await;
    // Both directions' ends can reach the task in one wake: note the end
    // that came first, as the readiness path would have.
    let first = flow.tunnel.borrow().as_ref().and_then(|t| t.first_eof());
    if let Some(first) = first {
        flow.closed(closer(side(first)));
    }
    if let Some(pair) = flow.frames.shared() {
        pair.set_in_ring(d, false);
        // The other direction may be waiting for this one to leave the
        // ring before it stops.
        cx.track.wake();
    }
    let watch = flow.frames.watch(from == Side::Client);
    if matches!(end, DirEnd::Released | DirEnd::Bulk) {
        // What the ring received but did not send goes first (its bytes
        // were counted as the ring took them).
        let spill = match flow.tunnel.borrow().as_ref() {
            Some(tunnel) => tunnel.take_spill(d),
            None => Vec::new(),
        };
        if !spill.is_empty() {
            let (_, dst, _) = ends(from, client, backend, flow);
            if let Err(e) = cx.write_all(dst, &spill).await {
                flow.fail(PumpError::Write(e), from, client, backend);
                if let Some(w) = watch {
                    w.ended();
                }
                return Ridden::Ended;
            }
        }
    }
    match end {
        DirEnd::Released => return Ridden::Released,
        DirEnd::Bulk => return Ridden::Bulk,
        DirEnd::Eof => {
            flow.closed(closer(from));
            cx.track.half_closed();
        }
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
    Ridden::Ended
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
