//! The state machine of one core's completion ring: our io_uring, its
//! buffer ring, and every tunnel riding it, driven by completions.
//!
//! Per tunnel direction `d` (0: client to backend, 1: backend to client):
//! one multishot receive on side `d`'s socket, a queue of received chunks
//! (an intrusive list through the buffers' `next` links) and at most one
//! send in flight to side `1 - d`, so bytes never reorder. A direction with
//! [`MAX_QUEUED`] chunks queued stops receiving until half are sent
//! (back-pressure); when the ring runs short of buffers, such a direction is
//! released to its owner: its receive is cancelled, what it has queued
//! beyond the send in flight is copied out (its spill) and the buffers given
//! back, so that destinations that do not read cannot take the core's
//! buffers from every other tunnel.
//!
//! Every CQE-producing operation is counted in its tunnel's `ops`; a slot
//! is freed only when `ops` is zero, so a completion can never touch freed
//! or reused state (its user_data carries the slot's generation too). An
//! abandoned tunnel (its owner dropped) is cancelled by user_data only: its
//! descriptors may already be closed, and their numbers reused, so nothing
//! here touches them after that.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::task::Waker;

use io_uring7 as iou;
use iou::{cqueue, opcode, squeue, types, IoUring};

use super::bufring::BufRing;
use super::{DirEnd, Hook, Op, RingStats};
use crate::sys::{self, Half};

/// Chunks a direction may have queued before it stops receiving (and, when
/// the ring runs short, leaves it for the readiness path).
pub const MAX_QUEUED: u16 = 8;

/// Rounds of enter-reap-dispatch one turn runs before it yields to the
/// core's other tasks.
const MAX_ROUNDS: u32 = 16;

// ---- user_data: | slot index: 32 | generation: 24 | kind: 4 | 3 | dir: 1 |

const K_RECV: u64 = 1;
const K_SEND: u64 = 2;
const K_CANCEL: u64 = 3;
const GEN_MASK: u32 = 0xFF_FFFF;

#[inline]
fn ud(idx: u32, gen: u32, kind: u64, d: usize) -> u64 {
    ((idx as u64) << 32) | (((gen & GEN_MASK) as u64) << 8) | (kind << 4) | d as u64
}

#[inline]
fn ud_parts(u: u64) -> (u32, u32, u64, usize) {
    (
        (u >> 32) as u32,
        ((u >> 8) as u32) & GEN_MASK,
        (u >> 4) & 0xF,
        (u & 1) as usize,
    )
}

const NONE: u16 = u16::MAX;

// Direction flags.
/// A multishot receive is in flight.
const ARMED: u8 = 1;
/// A send is in flight.
const SENDING: u8 = 2;
/// Its receive ended with ENOBUFS: waiting for buffers to come back.
const WAIT_BUF: u8 = 4;
/// Too much queued: not receiving.
const PAUSED: u8 = 8;
/// A cancel of its receive was pushed.
const CANCELING: u8 = 16;
/// The source sent EOF.
const EOF_SEEN: u8 = 32;
/// EOF passed on (the destination's write side shut down).
const ENDED: u8 = 64;
/// Released: the owner takes it over once what was received is sent.
const RELEASING: u8 = 128;

#[derive(Debug, Clone, Copy)]
struct Dir {
    head: u16,
    tail: u16,
    queued: u16,
    flags: u8,
    /// Its end was reported to the owner.
    reported: bool,
    /// Whole buffers received in a row.
    full_run: u16,
    /// Released because it moves bulk ([`DirEnd::Bulk`]).
    bulk: bool,
    /// Not riding the ring (yet): its owner moves it, and may bring it in
    /// later ([`Machine::adopt`]).
    outside: bool,
}

impl Dir {
    const fn new() -> Dir {
        Dir {
            head: NONE,
            tail: NONE,
            queued: 0,
            flags: 0,
            reported: false,
            full_run: 0,
            bulk: false,
            outside: false,
        }
    }

    #[inline]
    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// Nothing of its own is in flight or queued.
    fn quiet(&self) -> bool {
        !self.has(ARMED | SENDING | WAIT_BUF) && self.head == NONE
    }
}

// Tunnel flags.
/// The owner dropped its handle.
const T_GONE: u8 = 1;
/// An operation failed: both sockets were shut down.
const T_FAILED: u8 = 2;

struct Tunnel<H> {
    /// [client, backend], owned by the connection.
    fds: [RawFd; 2],
    dirs: [Dir; 2],
    /// Operations in flight that will still produce a CQE.
    ops: u8,
    flags: u8,
    /// The first failure: errno and the operation.
    err: Option<(i32, Op)>,
    /// The direction whose EOF was passed on first (0 or 1), if any.
    first_eof: Option<u8>,
    /// Release a direction as bulk after this many whole buffers in a row
    /// (0: never).
    bulk_after: u16,
    /// Per direction: bytes received but not yet sent when it was released,
    /// and those received while its receive was being cancelled, copied
    /// out of the ring's buffers so that a destination that does not read
    /// holds at most the one buffer of its send in flight. The owner sends
    /// them first ([`Machine::take_spill`]).
    spill: [Vec<u8>; 2],
    waker: Option<Waker>,
    hook: H,
}

struct Slot<H> {
    gen: u32,
    t: Option<Tunnel<H>>,
}

/// A buffer's place in a direction's queue.
#[derive(Debug, Clone, Copy)]
struct BufMeta {
    next: u16,
    len: u32,
    off: u32,
}

/// One core's ring and its tunnels. Single-threaded: it lives in the
/// core's reactor, borrowed for one call at a time.
pub struct Machine<H> {
    // Field order matters: the ring is dropped (closing it and releasing
    // the buffer group) before the buffers' memory.
    ring: IoUring,
    bufs: BufRing,
    meta: Vec<BufMeta>,
    slots: Vec<Slot<H>>,
    free: Vec<u32>,
    /// Directions waiting for buffers, as user_data of their receive.
    waiters: VecDeque<u64>,
    /// Directions paused by back-pressure, as user_data of their receive:
    /// released when the ring runs short of buffers.
    paused: VecDeque<u64>,
    pub live: usize,
    /// The ring was made with TASKRUN_FLAG (it tells when the kernel has
    /// completion work for us that needs an enter).
    taskrun_flag: bool,
    /// DEFER_TASKRUN: completions are posted only when we enter.
    defer: bool,
    pub stats: RingStats,
}

impl<H: Hook> Machine<H> {
    pub fn new(ring: IoUring, bufs: BufRing, taskrun_flag: bool, defer: bool) -> Machine<H> {
        let n = bufs.count() as usize;
        Machine {
            ring,
            bufs,
            meta: vec![
                BufMeta {
                    next: NONE,
                    len: 0,
                    off: 0,
                };
                n
            ],
            slots: Vec::new(),
            free: Vec::new(),
            waiters: VecDeque::new(),
            paused: VecDeque::new(),
            live: 0,
            taskrun_flag,
            defer,
            stats: RingStats::default(),
        }
    }

    /// A new tunnel over `fds` ([client, backend]) with the directions in
    /// `ride` armed (submitted at the reactor's next turn); the others stay
    /// outside until adopted. Returns its slot and generation.
    pub fn open(
        &mut self,
        fds: [RawFd; 2],
        ride: [bool; 2],
        bulk_after: u16,
        hook: H,
    ) -> (u32, u32) {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { gen: 0, t: None });
                (self.slots.len() - 1) as u32
            }
        };
        let gen = self.slots[idx as usize].gen;
        self.slots[idx as usize].t = Some(Tunnel {
            fds,
            dirs: [Dir::new(), Dir::new()],
            ops: 0,
            flags: 0,
            err: None,
            first_eof: None,
            bulk_after,
            spill: [Vec::new(), Vec::new()],
            waker: None,
            hook,
        });
        self.live += 1;
        for (d, ride) in ride.into_iter().enumerate() {
            if ride {
                self.arm(idx, d);
            } else {
                self.t(idx).dirs[d].outside = true;
            }
        }
        (idx, gen)
    }

    /// Bring direction `d`, outside so far, into the ring.
    pub fn adopt(&mut self, idx: u32, gen: u32, d: usize) {
        debug_assert!(self.check(idx, gen));
        let t = self.t(idx);
        if !t.dirs[d].outside {
            return;
        }
        t.dirs[d].outside = false;
        self.arm(idx, d);
    }

    fn t(&mut self, idx: u32) -> &mut Tunnel<H> {
        self.slots[idx as usize].t.as_mut().expect("live slot")
    }

    fn check(&self, idx: u32, gen: u32) -> bool {
        self.slots
            .get(idx as usize)
            .is_some_and(|s| s.gen == gen && s.t.is_some())
    }

    fn push_sqe(&mut self, e: &squeue::Entry) {
        loop {
            // SAFETY: every SQE pushed here refers either to no memory
            // (receives select provided buffers; cancels name user_data) or
            // to a provided buffer that its direction's queue holds until
            // the send's CQE is reaped; that memory is owned by
            // `self.bufs`, which is dropped after the ring (field order), and
            // leaked instead if operations are still in flight then (Drop).
            let pushed = unsafe { self.ring.submission().push(e) };
            if pushed.is_ok() {
                return;
            }
            // Full: hand what is queued to the kernel first.
            self.enter();
        }
    }

    /// io_uring_enter(all queued, 0 events, GETEVENTS): submits, and runs
    /// deferred completion work (DEFER_TASKRUN runs at most 20 items per
    /// enter; the turn enters again while the kernel says more wait).
    pub fn enter(&mut self) {
        let to_submit = self.ring.submission().len() as u32;
        self.stats.enters += 1;
        loop {
            // SAFETY: no argument struct is passed; the SQEs being submitted
            // were checked when pushed (see push_sqe).
            let r = unsafe {
                self.ring.submitter().enter::<libc::sigset_t>(
                    to_submit, 0, 1, /* IORING_ENTER_GETEVENTS */
                    None,
                )
            };
            match r {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The completion queue is backed up: the caller reaps.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => return,
                Err(e) => {
                    // Nothing sensible to retry; the next turn tries again.
                    log::error!("io_uring_enter on the completion ring: {e}");
                    return;
                }
            }
        }
    }

    /// The kernel has completion work for us that needs an enter.
    fn taskrun(&mut self) -> bool {
        self.taskrun_flag && self.ring.submission().taskrun()
    }

    fn cq_empty(&mut self) -> bool {
        let mut cq = self.ring.completion();
        cq.sync();
        cq.is_empty()
    }

    /// One turn: enter, reap and dispatch, while there is work, for at most
    /// [`MAX_ROUNDS`] rounds. The eventfd is quiet meanwhile (our own
    /// enters post completions, which would signal it). Returns true when
    /// it stopped with work left (the caller yields, then calls again).
    pub fn turn(&mut self) -> bool {
        self.stats.turns += 1;
        let quiet = self.taskrun_flag;
        if quiet {
            self.ring.completion().disable_eventfd();
        }
        let mut rounds = 0;
        loop {
            let must_enter =
                !self.ring.submission().is_empty() || self.taskrun() || (self.defer && rounds == 0);
            if must_enter {
                self.enter();
            }
            rounds += 1;
            self.reap();
            self.after_dispatch();
            // Completions that overflowed the CQ are flushed by the next
            // enter: they count as work too.
            let mut more = !self.ring.submission().is_empty()
                || self.taskrun()
                || self.ring.submission().cq_overflow()
                || !self.cq_empty();
            if !more && quiet {
                self.ring.completion().enable_eventfd();
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                more = self.taskrun() || !self.cq_empty();
                if more {
                    self.ring.completion().disable_eventfd();
                }
            }
            if !more {
                return false;
            }
            if rounds >= MAX_ROUNDS {
                if quiet {
                    self.ring.completion().enable_eventfd();
                }
                return true;
            }
        }
    }

    /// Reap and dispatch every CQE in the queue.
    fn reap(&mut self) {
        loop {
            let mut batch: [MaybeUninit<cqueue::Entry>; 64] = [const { MaybeUninit::uninit() }; 64];
            let n = self.ring.completion().fill(&mut batch).len();
            if n == 0 {
                return;
            }
            self.stats.cqes += n as u64;
            for e in &batch[..n] {
                // SAFETY: `fill` initialised the first `n` entries of
                // `batch`, a local array alive for this loop.
                let e = unsafe { e.assume_init_ref() };
                self.dispatch(e.user_data(), e.result(), e.flags());
            }
        }
    }

    fn dispatch(&mut self, u: u64, res: i32, flags: u32) {
        let (idx, gen, kind, d) = ud_parts(u);
        if kind == K_CANCEL {
            return;
        }
        if !self.check(idx, gen) {
            // A slot is kept until its last CQE, so this cannot happen.
            debug_assert!(false, "stale completion {u:#x}");
            return;
        }
        match kind {
            K_RECV => self.on_recv(idx, d, res, flags),
            K_SEND => self.on_send(idx, d, res),
            _ => {}
        }
        self.settle(idx);
    }

    /// Direction `d` should be receiving.
    fn wants_recv(t: &Tunnel<H>, d: usize) -> bool {
        t.flags & (T_GONE | T_FAILED) == 0
            && !t.dirs[d].outside
            && !t.dirs[d].has(EOF_SEEN | RELEASING)
    }

    /// Arm direction `d`'s multishot receive if it should receive and can.
    fn arm(&mut self, idx: u32, d: usize) {
        let gen = self.slots[idx as usize].gen;
        let bgid = self.bufs.bgid;
        let t = self.t(idx);
        if !Self::wants_recv(t, d) || t.dirs[d].has(ARMED | WAIT_BUF) {
            return;
        }
        let dir = &mut t.dirs[d];
        if dir.queued >= MAX_QUEUED || (dir.has(PAUSED) && dir.queued > MAX_QUEUED / 2) {
            self.pause(idx, d);
            return;
        }
        dir.flags &= !PAUSED;
        dir.flags |= ARMED;
        t.ops += 1;
        let e = opcode::RecvMulti::new(types::Fd(t.fds[d]), bgid)
            .build()
            .user_data(ud(idx, gen, K_RECV, d));
        self.stats.arms += 1;
        self.push_sqe(&e);
    }

    /// Direction `d` stops receiving until half its queue is sent; it is
    /// listed for release should the ring run short.
    fn pause(&mut self, idx: u32, d: usize) {
        let gen = self.slots[idx as usize].gen;
        let dir = &mut self.t(idx).dirs[d];
        if !dir.has(PAUSED) {
            dir.flags |= PAUSED;
            self.paused.push_back(ud(idx, gen, K_RECV, d));
        }
    }

    fn cancel(&mut self, idx: u32, d: usize, kind: u64) {
        let gen = self.slots[idx as usize].gen;
        let e = opcode::AsyncCancel::new(ud(idx, gen, kind, d))
            .build()
            .user_data(ud(idx, gen, K_CANCEL, d));
        self.push_sqe(&e);
    }

    fn cancel_recv(&mut self, idx: u32, d: usize) {
        let dir = &mut self.t(idx).dirs[d];
        if !dir.has(ARMED) || dir.has(CANCELING) {
            return;
        }
        dir.flags |= CANCELING;
        self.cancel(idx, d, K_RECV);
    }

    fn on_recv(&mut self, idx: u32, d: usize, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            let t = self.t(idx);
            t.dirs[d].flags &= !(ARMED | CANCELING);
            t.ops -= 1;
        }
        if res > 0 {
            let Some(bid) = cqueue::buffer_select(flags) else {
                return self.fail(idx, libc::EIO, Op::Recv(d));
            };
            self.take_chunk(idx, d, bid, res as u32);
            let dir = self.t(idx).dirs[d];
            if dir.queued >= MAX_QUEUED && !dir.has(RELEASING) {
                if self.under_pressure() {
                    // The ring's buffers are every tunnel's: a direction
                    // whose destination does not keep up leaves for the
                    // readiness path, where it holds only its own backlog.
                    self.stats.short_releases += 1;
                    self.start_release(idx, d);
                } else {
                    // Back-pressure: stop receiving until half is sent.
                    self.pause(idx, d);
                    self.cancel_recv(idx, d);
                }
            }
            if !cqueue::more(flags) {
                self.arm(idx, d);
            }
        } else if res == 0 {
            let t = self.t(idx);
            if !t.dirs[d].has(RELEASING) {
                t.dirs[d].flags |= EOF_SEEN;
                self.pass_eof(idx, d);
            }
            // Released: its owner reads the EOF from the socket itself (it
            // stays there) after the bytes spilled before it.
        } else {
            match -res {
                libc::ENOBUFS => {
                    self.stats.enobufs += 1;
                    let gen = self.slots[idx as usize].gen;
                    let t = self.t(idx);
                    if Self::wants_recv(t, d) && !t.dirs[d].has(WAIT_BUF) {
                        t.dirs[d].flags |= WAIT_BUF;
                        self.waiters.push_back(ud(idx, gen, K_RECV, d));
                    }
                }
                // Cancelled: paused (armed again once its queue drains),
                // released or abandoned (not armed again).
                libc::ECANCELED => self.arm(idx, d),
                e => self.fail(idx, e, Op::Recv(d)),
            }
        }
    }

    /// A received chunk in buffer `bid`: shown to the hook, queued for its
    /// send.
    fn take_chunk(&mut self, idx: u32, d: usize, bid: u16, len: u32) {
        self.bufs.taken();
        self.stats.chunks += 1;
        let t = self.slots[idx as usize].t.as_mut().expect("live slot");
        if t.flags & (T_FAILED | T_GONE) != 0 {
            // A failed tunnel forwards nothing more.
            self.give_back(bid);
            return;
        }
        let data = self.bufs.slice(bid, 0, len);
        t.hook.chunk(d, data);
        if t.dirs[d].has(RELEASING) {
            // Received while its receive was being cancelled: the owner
            // sends it, after what is queued.
            t.spill[d].extend_from_slice(data);
            self.give_back(bid);
            return;
        }
        let dir = &mut t.dirs[d];
        dir.full_run = if len == self.bufs.size() {
            dir.full_run.saturating_add(1)
        } else {
            0
        };
        let bulk = t.bulk_after > 0 && dir.full_run >= t.bulk_after;
        self.meta[bid as usize] = BufMeta {
            next: NONE,
            len,
            off: 0,
        };
        let dir = &mut self.slots[idx as usize].t.as_mut().expect("live").dirs[d];
        let tail = dir.tail;
        dir.tail = bid;
        if tail == NONE {
            dir.head = bid;
        }
        dir.queued += 1;
        let sending = dir.has(SENDING);
        if tail != NONE {
            self.meta[tail as usize].next = bid;
        }
        if !sending {
            self.start_send(idx, d);
        }
        if bulk {
            // Bulk: the owner moves it better (splice, or one copy per
            // large read, without a turn per buffer).
            self.t(idx).dirs[d].bulk = true;
            self.stats.bulk += 1;
            self.start_release(idx, d);
        }
    }

    /// Direction `d` leaves the ring: its receive is cancelled, and what
    /// it has queued beyond the send in flight is copied to its spill and
    /// the buffers given back at once. It ends as released once that send
    /// completes.
    fn start_release(&mut self, idx: u32, d: usize) {
        let t = self.t(idx);
        if t.dirs[d].has(RELEASING | EOF_SEEN) || t.flags & T_FAILED != 0 {
            return;
        }
        t.dirs[d].flags |= RELEASING;
        t.dirs[d].flags &= !(WAIT_BUF | PAUSED);
        self.cancel_recv(idx, d);
        let dir = self.t(idx).dirs[d];
        if dir.head == NONE {
            return;
        }
        // The head stays while its send is in flight; everything after it
        // is spilled.
        let (keep, mut b) = if dir.has(SENDING) {
            (dir.head, self.meta[dir.head as usize].next)
        } else {
            (NONE, dir.head)
        };
        while b != NONE {
            let m = self.meta[b as usize];
            let bytes = self.bufs.slice(b, m.off, m.len - m.off);
            let t = self.slots[idx as usize].t.as_mut().expect("live");
            t.spill[d].extend_from_slice(bytes);
            self.give_back(b);
            b = m.next;
        }
        let dir = &mut self.t(idx).dirs[d];
        dir.head = keep;
        dir.tail = keep;
        dir.queued = u16::from(keep != NONE);
        if keep != NONE {
            self.meta[keep as usize].next = NONE;
        }
    }

    fn pop_head(&mut self, idx: u32, d: usize) {
        let head = self.t(idx).dirs[d].head;
        debug_assert!(head != NONE);
        let next = self.meta[head as usize].next;
        let dir = &mut self.t(idx).dirs[d];
        dir.head = next;
        if next == NONE {
            dir.tail = NONE;
        }
        dir.queued -= 1;
        self.give_back(head);
    }

    fn give_back(&mut self, bid: u16) {
        self.bufs.push(bid);
    }

    fn start_send(&mut self, idx: u32, d: usize) {
        let gen = self.slots[idx as usize].gen;
        let t = self.slots[idx as usize].t.as_mut().expect("live");
        let head = t.dirs[d].head;
        debug_assert!(head != NONE && !t.dirs[d].has(SENDING));
        let m = self.meta[head as usize];
        t.dirs[d].flags |= SENDING;
        t.ops += 1;
        let e = opcode::Send::new(
            types::Fd(t.fds[1 - d]),
            self.bufs.ptr(head, m.off),
            m.len - m.off,
        )
        .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
        .build()
        .user_data(ud(idx, gen, K_SEND, d));
        self.stats.sends += 1;
        self.push_sqe(&e);
    }

    fn on_send(&mut self, idx: u32, d: usize, res: i32) {
        {
            let t = self.t(idx);
            t.dirs[d].flags &= !SENDING;
            t.ops -= 1;
        }
        if res < 0 {
            self.fail(idx, -res, Op::Send(d));
        } else if res == 0 {
            // A stream send of bytes never takes none; do not spin.
            self.fail(idx, libc::EPIPE, Op::Send(d));
        } else {
            let head = self.t(idx).dirs[d].head;
            let m = &mut self.meta[head as usize];
            m.off += res as u32;
            if m.off >= m.len {
                self.pop_head(idx, d);
            }
        }
        if self.t(idx).flags & T_FAILED != 0 {
            self.drop_queue(idx, d);
            return;
        }
        if self.t(idx).dirs[d].head != NONE {
            self.start_send(idx, d);
        } else {
            self.pass_eof(idx, d);
        }
        if self.t(idx).dirs[d].has(PAUSED) {
            self.arm(idx, d);
        }
    }

    /// If `d` saw EOF and everything before it was sent, shut the
    /// destination's write side. A system call, not a submission: the
    /// kernel runs `IORING_OP_SHUTDOWN` only on an io-wq worker thread,
    /// whose wake-up costs far more than the call (measured: about 30% more
    /// CPU per short-lived tunnel).
    fn pass_eof(&mut self, idx: u32, d: usize) {
        let t = self.t(idx);
        let dir = &t.dirs[d];
        if dir.has(EOF_SEEN)
            && !dir.has(ENDED | SENDING)
            && dir.head == NONE
            && t.flags & (T_FAILED | T_GONE) == 0
        {
            sys::shutdown_raw(t.fds[1 - d], Half::Write);
            t.dirs[d].flags |= ENDED;
            t.first_eof.get_or_insert(d as u8);
        }
    }

    /// Give back every queued buffer of `d` except one a send is using.
    fn drop_queue(&mut self, idx: u32, d: usize) {
        while self.t(idx).dirs[d].head != NONE && !self.t(idx).dirs[d].has(SENDING) {
            self.pop_head(idx, d);
        }
        let dir = self.t(idx).dirs[d];
        if dir.head != NONE {
            // A send is in flight with the head: keep it, drop the rest.
            let mut b = self.meta[dir.head as usize].next;
            while b != NONE {
                let next = self.meta[b as usize].next;
                self.give_back(b);
                b = next;
            }
            self.meta[dir.head as usize].next = NONE;
            let dir = &mut self.t(idx).dirs[d];
            dir.tail = dir.head;
            dir.queued = 1;
        }
    }

    /// End the tunnel on an error: shut both sockets down (every operation
    /// then completes) unless the owner is gone, forward nothing more.
    fn fail(&mut self, idx: u32, errno: i32, op: Op) {
        let t = self.t(idx);
        if t.flags & T_FAILED != 0 {
            return;
        }
        t.flags |= T_FAILED;
        t.err = Some((errno, op));
        if t.flags & T_GONE == 0 {
            for fd in t.fds {
                sys::shutdown_raw(fd, Half::Both);
            }
        }
        for d in 0..2 {
            self.t(idx).dirs[d].flags &= !WAIT_BUF;
            self.drop_queue(idx, d);
        }
    }

    /// How direction `d` ended, once it has: nothing of it in flight or
    /// queued, and its source ended, failed or was released.
    fn end_of(t: &Tunnel<H>, d: usize) -> Option<DirEnd> {
        let dir = &t.dirs[d];
        if dir.outside {
            // Its owner moves it; nothing to report.
            return None;
        }
        if t.flags & T_FAILED != 0 {
            let (errno, op) = t.err.expect("a failed tunnel has its error");
            // Both directions end with the tunnel, once quiet.
            return dir.quiet().then_some(DirEnd::Failed { errno, op });
        }
        if dir.has(ENDED) {
            return Some(DirEnd::Eof);
        }
        if dir.has(RELEASING) && dir.quiet() {
            return Some(if dir.bulk {
                DirEnd::Bulk
            } else {
                DirEnd::Released
            });
        }
        None
    }

    /// After any change to tunnel `idx`: free it if abandoned and done, or
    /// wake its owner when a direction has ended.
    fn settle(&mut self, idx: u32) {
        let t = self.t(idx);
        if t.flags & T_GONE != 0 {
            if t.ops == 0 {
                self.free_slot(idx);
            }
            return;
        }
        let news = (0..2).any(|d| !t.dirs[d].reported && Self::end_of(t, d).is_some());
        if news {
            if let Some(w) = t.waker.take() {
                w.wake();
            }
        }
    }

    fn free_slot(&mut self, idx: u32) -> Option<Tunnel<H>> {
        let s = &mut self.slots[idx as usize];
        let t = s.t.take();
        s.gen = (s.gen + 1) & GEN_MASK;
        self.free.push(idx);
        self.live -= 1;
        t
    }

    /// Fewer than a quarter of the ring's buffers are free.
    fn under_pressure(&self) -> bool {
        self.bufs.in_ring < u32::from(self.bufs.count()) / 4
    }

    /// Once per round: when the ring runs short, directions paused by
    /// back-pressure are released (their queues copied out, their buffers
    /// given back); buffers given back are published, and directions that
    /// waited for buffers armed again (no more of them than there are
    /// buffers).
    fn after_dispatch(&mut self) {
        while self.under_pressure() {
            let Some(p) = self.paused.pop_front() else {
                break;
            };
            let (idx, gen, _, d) = ud_parts(p);
            if self.check(idx, gen) && self.t(idx).dirs[d].has(PAUSED) {
                self.stats.short_releases += 1;
                self.start_release(idx, d);
                self.settle(idx);
            }
        }
        if !self.under_pressure() && self.paused.len() > 64 {
            // Directions no longer paused leave stale entries: drop them.
            let slots = &self.slots;
            self.paused.retain(|&p| {
                let (idx, gen, _, d) = ud_parts(p);
                slots.get(idx as usize).is_some_and(|s| {
                    s.gen == gen && s.t.as_ref().is_some_and(|t| t.dirs[d].has(PAUSED))
                })
            });
        }
        self.bufs.publish();
        let mut budget = self.bufs.in_ring as usize;
        while budget > 0 {
            let Some(w) = self.waiters.pop_front() else {
                break;
            };
            let (idx, gen, _, d) = ud_parts(w);
            let waiting = self.check(idx, gen) && self.t(idx).dirs[d].has(WAIT_BUF);
            if !waiting {
                continue;
            }
            self.t(idx).dirs[d].flags &= !WAIT_BUF;
            self.arm(idx, d);
            self.settle(idx);
            budget -= 1;
        }
    }

    // ---- the owner's side ----

    /// Direction `d`'s end, if it has ended; else leave `waker` to be woken
    /// when it does.
    pub fn poll_end(&mut self, idx: u32, gen: u32, d: usize, waker: &Waker) -> Option<DirEnd> {
        debug_assert!(self.check(idx, gen));
        let t = self.t(idx);
        match Self::end_of(t, d) {
            Some(end) => {
                t.dirs[d].reported = true;
                Some(end)
            }
            None => {
                match &t.waker {
                    Some(w) if w.will_wake(waker) => {}
                    _ => t.waker = Some(waker.clone()),
                }
                None
            }
        }
    }

    /// Release direction `d`: it stops receiving, and ends as
    /// [`DirEnd::Released`] once what it received is sent. Nothing if it
    /// ended already.
    pub fn release(&mut self, idx: u32, gen: u32, d: usize) {
        debug_assert!(self.check(idx, gen));
        if self.t(idx).dirs[d].outside {
            return;
        }
        self.start_release(idx, d);
        self.settle(idx);
    }

    /// The tunnel is over for its owner, who takes its hook back. Only once
    /// each direction has ended or stayed outside (nothing in flight): see
    /// [`super::Tunnel::finish`].
    pub fn close(&mut self, idx: u32, gen: u32) -> Option<H> {
        debug_assert!(self.check(idx, gen));
        if self.t(idx).ops != 0 {
            // Cannot happen (a direction ends only once quiet); were it to,
            // the slot must live until its last completion.
            debug_assert!(false, "closed with operations in flight");
            log::error!("completion ring: a tunnel closed with operations in flight");
            self.abandon(idx, gen);
            return None;
        }
        self.free_slot(idx).map(|t| t.hook)
    }

    /// The owner is gone (its task dropped mid-tunnel): cancel everything
    /// by user_data, touch no descriptor, free the slot at its last CQE.
    pub fn abandon(&mut self, idx: u32, gen: u32) {
        if !self.check(idx, gen) {
            return;
        }
        if !self.ring.submission().is_empty() {
            // SQEs not yet submitted name this tunnel's descriptors, which
            // its owner is about to close: submit them while they are still
            // its own (the kernel then holds its own references).
            self.enter();
        }
        let t = self.t(idx);
        t.flags |= T_GONE | T_FAILED;
        t.err.get_or_insert((libc::ECANCELED, Op::Recv(0)));
        for d in 0..2 {
            let dir = self.t(idx).dirs[d];
            if dir.has(SENDING) {
                self.cancel(idx, d, K_SEND);
            }
            self.t(idx).dirs[d].flags &= !WAIT_BUF;
            self.cancel_recv(idx, d);
            self.drop_queue(idx, d);
        }
        self.settle(idx);
    }

    /// The bytes direction `d` received in the ring but did not send
    /// before it was released: the owner sends them first.
    pub fn take_spill(&mut self, idx: u32, gen: u32, d: usize) -> Vec<u8> {
        debug_assert!(self.check(idx, gen));
        std::mem::take(&mut self.t(idx).spill[d])
    }

    /// The direction whose EOF was passed on first, if any.
    pub fn first_eof(&self, idx: u32, gen: u32) -> Option<usize> {
        debug_assert!(self.check(idx, gen));
        let t = self.slots[idx as usize].t.as_ref().expect("live");
        t.first_eof.map(usize::from)
    }

    /// Buffers in the ring now (for tests and metrics).
    pub fn buffers_free(&self) -> u32 {
        self.bufs.in_ring
    }

    /// The size of one tunnel's state here, in bytes.
    pub fn slot_bytes() -> usize {
        std::mem::size_of::<Slot<H>>()
    }
}

impl<H> Drop for Machine<H> {
    fn drop(&mut self) {
        let busy = self
            .slots
            .iter()
            .any(|s| s.t.as_ref().is_some_and(|t| t.ops > 0));
        if busy {
            // Operations may still write into the buffers after the ring
            // closes (its teardown is asynchronous): keep the memory.
            self.bufs.leak();
        }
    }
}

/// The setups tried, in order: (TASKRUN_FLAG, DEFER_TASKRUN).
const RING_SETUPS: [(bool, bool); 3] = if option_env!("RINGWAY_RING_COOP").is_some() {
    [(true, false), (true, true), (false, false)]
} else {
    [(true, true), (true, false), (false, false)]
};

/// Set up the ring: SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG (6.1+),
/// else COOP_TASKRUN | TASKRUN_FLAG (5.19+), else plain. Returns the ring,
/// whether it has TASKRUN_FLAG, and whether it defers.
pub fn build_ring(entries: u32) -> io::Result<(IoUring, bool, bool)> {
    let cq = entries.saturating_mul(4).max(entries);
    let mut last = None;
    for (taskrun, defer) in RING_SETUPS {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq);
        if defer {
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_taskrun_flag();
        } else if taskrun {
            b.setup_coop_taskrun().setup_taskrun_flag();
        }
        match b.build(entries) {
            Ok(ring) => return Ok((ring, taskrun, defer)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no io_uring setup worked")))
}
