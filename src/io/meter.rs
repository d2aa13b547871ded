//! What the completion ring does with each chunk of a tunnel it moves
//! ([`TunnelHook`], the ring's [`Hook`]): counts it in the core's byte
//! totals as it moves (and in the tunnel's own count, read back when the
//! tunnel leaves the ring), stamps the connection's activity for the idle
//! timeout, and, under `--drain-close-frames`, follows its frames.

use std::rc::Rc;
use std::sync::Arc;

use crate::io::frames::Pair;
use crate::io::ring::Hook;
use crate::io::sweep::Stamp;
use crate::ops::metrics::CoreMetrics;

/// One tunnel's per-chunk work in the completion ring.
pub struct TunnelHook {
    /// Bytes the ring moved each way (0: from the client).
    pub moved: [u64; 2],
    totals: Arc<CoreMetrics>,
    stamp: Stamp,
    frames: Option<Rc<Pair>>,
}

impl TunnelHook {
    pub fn new(totals: Arc<CoreMetrics>, stamp: Stamp, frames: Option<Rc<Pair>>) -> TunnelHook {
        TunnelHook {
            moved: [0; 2],
            totals,
            stamp,
            frames,
        }
    }
}

impl Hook for TunnelHook {
    #[inline]
    fn chunk(&mut self, d: usize, data: &[u8]) {
        let n = data.len() as u64;
        self.moved[d] += n;
        match d {
            0 => self.totals.bytes_up.add(n),
            _ => self.totals.bytes_down.add(n),
        }
        self.stamp.touch();
        if let Some(frames) = &self.frames {
            frames.follow_in_ring(d, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::ring::Reactor;

    /// What a promoted tunnel keeps in its core's ring, besides kernel
    /// state (184 bytes today: fds, two directions, the error, the spills,
    /// the waker and the hook).
    #[test]
    fn a_tunnel_in_the_ring_is_small() {
        let bytes = Reactor::<TunnelHook>::tunnel_bytes();
        eprintln!("one tunnel's slot: {bytes} bytes");
        assert!(bytes <= 192, "{bytes} bytes per tunnel slot");
    }
}
