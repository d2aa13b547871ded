//! Moving bytes and bounding time: the readiness path's transfers
//! ([`tunnel`], and [`splice`] for ws:// tunnels), the completion path
//! ([`ring`], and the per-chunk work of its tunnels in [`meter`]), the
//! per-core timeouts ([`sweep`]), and the drain's frames ([`frames`]) and
//! close frames ([`drain`]).

pub mod drain;
pub mod frames;
pub mod meter;
pub mod pipes;
pub mod ring;
pub mod splice;
pub mod sweep;
pub mod tunnel;

/// Let the core's other tasks run once before going on (monoio 0.2.4 has
/// no `yield_now`).
pub fn yield_now() -> impl std::future::Future<Output = ()> {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
}
