//! One direction of an open tunnel: the bytes coming from one side copied
//! to the other until that side closes its writing half, which is then
//! passed on (half-close); or, when a drain stops the direction at a frame
//! boundary, its Close frame (`io::drain::close`). Both directions run on
//! the connection's task, joined in `exchange`.

use crate::io::drain;
use crate::io::tunnel::{Ctx, End, Moved, Peer};
use crate::ops::ending::Closed;
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
        let end = cx
            .pump(src, dst, watch, &mut Framing::UntilClose, moved)
            .await;
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
                flow.closed(match from {
                    Side::Client => Closed::Client,
                    Side::Backend => Closed::Backend,
                });
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
