//! The completion data path: tunnel bytes received by multishot receives
//! into a per-core provided-buffer ring and sent by submitted sends, on a
//! second io_uring of ringway's own, one per core (io_uring driver only).
//!
//! Why a second ring: monoio 0.2.4 cannot carry a multishot operation (its
//! completion slab completes an operation at its first CQE), nor register a
//! buffer ring. So each core owns a [`Reactor`]: an io_uring set up with
//! `SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG`, an eventfd registered on
//! it, and a task on the core's monoio runtime that waits for that eventfd
//! with a read through monoio's own ring. Each wake runs one *turn*
//! (`machine::Machine::turn`): enter our ring (submitting every SQE queued
//! since the last turn, running its deferred completions), reap every CQE,
//! dispatch them (which queues the next sends and receives), while there is
//! work. So a busy core makes one `io_uring_enter` on each ring per turn,
//! whatever number of messages the turn moves, and none per message.
//!
//! A tunnel ([`Tunnel`]) is the connection's two sockets, borrowed by
//! descriptor number: the connection owns them and keeps them open until
//! both directions have ended ([`Tunnel::end`]) and the tunnel is finished
//! ([`Tunnel::finish`]); if it drops the handle before, everything is
//! cancelled by user_data and no descriptor is touched again. An idle
//! tunnel holds no buffer: the kernel takes one from the ring only when
//! bytes arrive, and it goes back once they are sent on. A direction can be
//! released ([`Tunnel::release`]) to the readiness path: its receive is
//! cancelled, what it received is sent, and what it did not is still in its
//! socket, so no byte is lost, duplicated or reordered.
//!
//! A [`Hook`] sees every chunk of every direction, in order, before it is
//! sent: the connection counts bytes, stamps activity and follows frames
//! there.

mod bufring;
mod machine;
#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bufring::BufRing;
use machine::Machine;

pub use machine::MAX_QUEUED;

/// Sees every chunk a tunnel moves, in order per direction, before it is
/// sent on. Called inside the reactor: it must not call back into it.
pub trait Hook {
    /// `d`: 0 from the client, 1 from the backend.
    fn chunk(&mut self, d: usize, data: &[u8]);
}

impl Hook for () {
    fn chunk(&mut self, _: usize, _: &[u8]) {}
}

/// The operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Receiving direction `d`'s bytes from its source (side `d`).
    Recv(usize),
    /// Sending direction `d`'s bytes to its destination (side `1 - d`).
    Send(usize),
}

/// How one direction of a tunnel left the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirEnd {
    /// Its source closed its writing half; everything before it was sent
    /// and the destination's writing half shut down (half-close passed on).
    Eof,
    /// The tunnel failed (both sockets were shut down): the first error,
    /// and the operation that met it.
    Failed { errno: i32, op: Op },
    /// Released: what it received is sent, or waits for the owner to send
    /// it first ([`Tunnel::take_spill`]); what it did not receive (an EOF
    /// too) is still in its source socket.
    Released,
    /// Released by the ring itself, as [`DirEnd::Released`], because it
    /// moves bulk: whole buffers in a row (see [`Reactor::open`]).
    Bulk,
}

/// A core's ring settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Submission queue entries (completion queue: four times as many).
    pub entries: u32,
    /// Buffers in the core's buffer ring.
    pub buffers: u16,
    /// Bytes per buffer.
    pub buffer_size: u32,
}

/// The reactor's counters (for the metrics).
#[derive(Debug, Default, Clone, Copy)]
pub struct RingStats {
    pub turns: u64,
    pub enters: u64,
    pub cqes: u64,
    pub chunks: u64,
    pub sends: u64,
    pub arms: u64,
    /// Receives that found the buffer ring empty.
    pub enobufs: u64,
    /// Directions released to the readiness path because their
    /// destination did not keep up ([`MAX_QUEUED`] chunks waiting) while
    /// the ring ran short of buffers.
    pub short_releases: u64,
    /// Directions released as bulk.
    pub bulk: u64,
}

/// One core's completion ring and its tunnels.
pub struct Reactor<H> {
    machine: RefCell<Machine<H>>,
    /// The reactor task's waker, and whether it was kicked since its last
    /// turn (an SQE waits to be submitted).
    waker: Cell<Option<Waker>>,
    kicked: Cell<bool>,
    /// The eventfd registered on our ring, as a file monoio reads; taken by
    /// [`Reactor::run`]. (The registration holds its own reference.)
    eventfd: RefCell<Option<monoio::fs::File>>,
    /// Called at the start of every turn (the core refreshes its coarse
    /// clock there, so that the hooks' activity stamps are this turn's).
    on_turn: Box<dyn Fn()>,
}

impl<H: Hook + 'static> Reactor<H> {
    /// The ring, its buffers and its eventfd. Fails where io_uring or a
    /// buffer ring (kernel 5.19+) is not available.
    pub fn new(settings: Settings, on_turn: impl Fn() + 'static) -> io::Result<Rc<Reactor<H>>> {
        let (ring, taskrun_flag, defer) = machine::build_ring(settings.entries)?;
        let bufs = BufRing::new(settings.buffers, settings.buffer_size, 0)?;
        bufs.register(&ring.submitter())?;
        let eventfd = crate::sys::eventfd()?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let eventfd = monoio::fs::File::from_std(std::fs::File::from(eventfd))?;
        Ok(Rc::new(Reactor {
            machine: RefCell::new(Machine::new(ring, bufs, taskrun_flag, defer)),
            waker: Cell::new(None),
            kicked: Cell::new(false),
            eventfd: RefCell::new(Some(eventfd)),
            on_turn: Box::new(on_turn),
        }))
    }

    /// Start moving bytes between `client` and `backend` (descriptors the
    /// caller keeps open until [`Tunnel::finish`]) in the directions of
    /// `ride` (0: from the client); another can join later
    /// ([`Tunnel::adopt`]). `hook` sees every chunk. With `bulk_after` > 0,
    /// a direction that receives that many whole buffers in a row is
    /// released as [`DirEnd::Bulk`].
    pub fn open(
        self: &Rc<Self>,
        (client, backend): (RawFd, RawFd),
        ride: [bool; 2],
        bulk_after: u16,
        hook: H,
    ) -> Tunnel<H> {
        let (idx, gen) = self
            .machine
            .borrow_mut()
            .open([client, backend], ride, bulk_after, hook);
        self.kick();
        Tunnel {
            reactor: self.clone(),
            idx,
            gen,
            finished: false,
        }
    }

    /// Tunnels riding this ring now.
    pub fn live(&self) -> usize {
        self.machine.borrow().live
    }

    /// Buffers in the ring now, waiting for bytes.
    pub fn buffers_free(&self) -> u32 {
        self.machine.borrow().buffers_free()
    }

    pub fn stats(&self) -> RingStats {
        self.machine.borrow().stats
    }

    /// Bytes of state one tunnel keeps here.
    pub fn tunnel_bytes() -> usize {
        Machine::<H>::slot_bytes()
    }

    /// Wake the reactor task: SQEs are waiting to be submitted.
    fn kick(&self) {
        if !self.kicked.replace(true) {
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }

    /// The reactor task: spawn it once on the core's runtime
    /// (`monoio::spawn(reactor.clone().run())`); it runs as long as the
    /// runtime does.
    pub async fn run(self: Rc<Self>) {
        let Some(file) = self.eventfd.borrow_mut().take() else {
            return;
        };
        let mut buf: Vec<u8> = Vec::with_capacity(8);
        loop {
            // A read of the eventfd through monoio's ring: it completes when
            // our ring posts completion work. A read that is abandoned here
            // loses nothing but a count.
            let mut read = pin!(file.read_at(buf, 0));
            let done = loop {
                let kicked = std::future::poll_fn(|cx| {
                    if self.take_kick(cx) {
                        return Poll::Ready(None);
                    }
                    read.as_mut().poll(cx).map(Some)
                })
                .await;
                match kicked {
                    Some(done) => break done,
                    None => self.turns().await,
                }
            };
            buf = done.1;
            if let Err(e) = done.0 {
                log::error!("completion ring: reading its eventfd: {e}");
                return;
            }
            self.turns().await;
        }
    }

    fn take_kick(&self, cx: &mut Context<'_>) -> bool {
        if self.kicked.replace(false) {
            return true;
        }
        self.waker.set(Some(cx.waker().clone()));
        false
    }

    /// Turns until there is no work left, yielding to the core's other
    /// tasks between turns that stopped at their round limit.
    async fn turns(&self) {
        loop {
            (self.on_turn)();
            if !self.machine.borrow_mut().turn() {
                return;
            }
            crate::io::yield_now().await;
        }
    }
}

impl<H> std::fmt::Debug for Reactor<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.machine.borrow();
        f.debug_struct("Reactor")
            .field("live", &m.live)
            .field("stats", &m.stats)
            .finish()
    }
}

/// The connection's handle on one tunnel in the ring.
pub struct Tunnel<H: Hook + 'static> {
    reactor: Rc<Reactor<H>>,
    idx: u32,
    gen: u32,
    finished: bool,
}

impl<H: Hook + 'static> Tunnel<H> {
    /// Wait until direction `d` (0: from the client) has left the ring.
    pub fn end(&self, d: usize) -> impl Future<Output = DirEnd> + '_ {
        std::future::poll_fn(move |cx| {
            let mut m = self.reactor.machine.borrow_mut();
            match m.poll_end(self.idx, self.gen, d, cx.waker()) {
                Some(end) => Poll::Ready(end),
                None => Poll::Pending,
            }
        })
    }

    /// Bring direction `d` into the ring, if it stayed outside at
    /// [`Reactor::open`].
    pub fn adopt(&self, d: usize) {
        self.reactor
            .machine
            .borrow_mut()
            .adopt(self.idx, self.gen, d);
        self.reactor.kick();
    }

    /// Hand direction `d` over to its owner (see [`DirEnd::Released`]).
    pub fn release(&self, d: usize) {
        self.reactor
            .machine
            .borrow_mut()
            .release(self.idx, self.gen, d);
        self.reactor.kick();
    }

    /// The direction whose source closed first (its EOF passed on first),
    /// if one has: the order of ends that reach the owner together.
    pub fn first_eof(&self) -> Option<usize> {
        self.reactor.machine.borrow().first_eof(self.idx, self.gen)
    }

    /// What direction `d` received in the ring but did not send before it
    /// was released ([`DirEnd::Released`], [`DirEnd::Bulk`]): the owner
    /// sends it before anything it reads itself.
    pub fn take_spill(&self, d: usize) -> Vec<u8> {
        self.reactor
            .machine
            .borrow_mut()
            .take_spill(self.idx, self.gen, d)
    }

    /// Leave the ring for good, taking the hook back. Only once each
    /// direction's [`Tunnel::end`] resolved, or it never rode the ring
    /// (else, which cannot happen, the tunnel is abandoned: `None`; a
    /// debug build panics).
    pub fn finish(mut self) -> Option<H> {
        self.finished = true;
        self.reactor.machine.borrow_mut().close(self.idx, self.gen)
    }
}

impl<H: Hook + 'static> Drop for Tunnel<H> {
    fn drop(&mut self) {
        if !self.finished {
            self.reactor
                .machine
                .borrow_mut()
                .abandon(self.idx, self.gen);
            self.reactor.kick();
        }
    }
}
