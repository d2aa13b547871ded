//! What the two directions of an exchange share and learn while they run
//! on one task ([`Flow`]): bytes moved each way, the answer's status, who
//! ended it first and why, a tunnel's frames (for the drain), and where an
//! open tunnel is counted ([`Meters`]).

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::io::frames::Frames;
use crate::io::meter::TunnelHook;
use crate::io::ring::{Reactor, Tunnel};
use crate::io::tunnel::{Moved, Peer, PumpError};
use crate::ops::ending::Closed;
use crate::ops::metrics::{CoreMetrics, RouteMetrics, ServerMetrics};
use crate::sys::{self, Half};

use super::outcome::Refusal;

/// The two ends of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Client,
    Backend,
}

impl Side {
    pub(super) fn other(self) -> Side {
        match self {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }
}

/// The counters an open tunnel is counted in, besides its core's.
#[derive(Clone, Copy)]
pub(super) struct Meters<'a> {
    pub core: &'a CoreMetrics,
    pub route: &'a RouteMetrics,
    pub server: &'a ServerMetrics,
}

impl Meters<'_> {
    pub(super) fn opened(&self) {
        self.core.upgraded.inc();
        self.core.active.inc();
        self.route.tunnels.inc();
        self.route.active.inc();
        self.server.active.inc();
    }

    pub(super) fn closed(&self) {
        self.core.active.dec();
        self.route.active.dec();
        self.server.active.dec();
    }
}

/// What the two directions of an exchange learn, for the summary line.
pub(super) struct Flow<'a> {
    pub up: Moved<'a>,
    pub down: Moved<'a>,
    /// Where the tunnel is counted while it is open.
    pub meters: Meters<'a>,
    pub status: Cell<u16>,
    pub upgraded: Cell<bool>,
    /// When the answer's head was sent (the handshake's end).
    pub answered: Cell<Option<Instant>>,
    /// The first end seen; later ones are consequences.
    closed: Cell<Option<Closed>>,
    /// Set when ringway answered an error itself instead of the backend
    /// (boxed: rare, and every tunnel carries the field).
    pub refused: Cell<Option<Box<Refusal>>>,
    /// The client left before the answer came.
    pub client_gone: Cell<bool>,
    /// The error behind the first end, when it was one.
    pub error: Cell<Option<io::Error>>,
    /// A tunnel's frames, followed under --drain-close-frames.
    pub frames: Frames,
    /// Directions of a ws:// tunnel that splice (`--splice`; 0: from the
    /// client).
    pub splice: [Cell<bool>; 2],
    /// Where a ws:// tunnel's directions are promoted to (the core's
    /// completion ring), if they may be.
    pub ring: Option<RingRoom<'a>>,
    /// The tunnel's slot in the ring, once a direction is promoted; given
    /// back when the exchange ends (`Flow::leave_ring`).
    pub tunnel: RefCell<Option<Tunnel<TunnelHook>>>,
}

/// The core's completion ring, for a tunnel that may ride it.
#[derive(Clone, Copy)]
pub(super) struct RingRoom<'a> {
    pub reactor: &'a Rc<Reactor<TunnelHook>>,
    /// The core's counters, which the ring's hook adds bytes to.
    pub totals: &'a Arc<CoreMetrics>,
    /// `--splice auto`: whole buffers in a row after which a direction is
    /// handed over to splice (0: never).
    pub bulk_after: u16,
}

impl<'a> Flow<'a> {
    pub(super) fn new(meters: Meters<'a>, ring: Option<RingRoom<'a>>) -> Flow<'a> {
        Flow {
            up: Moved::new(&meters.core.bytes_up),
            down: Moved::new(&meters.core.bytes_down),
            meters,
            status: Cell::default(),
            upgraded: Cell::default(),
            answered: Cell::default(),
            closed: Cell::default(),
            refused: Cell::default(),
            client_gone: Cell::default(),
            error: Cell::default(),
            frames: Frames::default(),
            splice: Default::default(),
            ring,
            tunnel: RefCell::new(None),
        }
    }

    /// Give the tunnel's ring slot back (every direction is out of the
    /// ring: the exchange is over), and count what the ring moved as the
    /// tunnel's own bytes.
    pub(super) fn leave_ring(&self) {
        if let Some(hook) = self.tunnel.take().and_then(|t| t.finish()) {
            self.up.add_own(hook.moved[0]);
            self.down.add_own(hook.moved[1]);
        }
    }

    /// Note an end (only the first counts).
    pub(super) fn closed(&self, c: Closed) {
        if self.closed.get().is_none() {
            self.closed.set(Some(c));
        }
    }

    /// The first end noted.
    pub(super) fn first_end(&self) -> Option<Closed> {
        self.closed.get()
    }

    /// A transfer of bytes coming `from` one side failed: note whose fault
    /// (a failed read is the sender's, a failed write the receiver's), and
    /// tear down both sides so the other direction ends too.
    pub(super) fn fail(&self, e: PumpError, from: Side, client: Peer<'_>, backend: Peer<'_>) {
        let (side, e) = match e {
            PumpError::Read(e) => (from, e),
            PumpError::Write(e) => (from.other(), e),
        };
        let kind = e.kind();
        if self.closed.get().is_none() {
            self.error.set(Some(e));
        }
        self.closed(match side {
            Side::Client => Closed::ClientError(kind),
            Side::Backend => Closed::BackendError(kind),
        });
        shutdown_both(client, backend);
    }
}

/// Shut both sockets down, so that every wait on either ends.
pub(super) fn shutdown_both(a: Peer<'_>, b: Peer<'_>) {
    sys::shutdown_raw(a.sock.as_raw_fd(), Half::Both);
    sys::shutdown_raw(b.sock.as_raw_fd(), Half::Both);
}
