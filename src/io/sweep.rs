//! Per-core timeouts: one last-activity stamp per connection, swept by one
//! timer per core.
//!
//! No timer ever races an in-flight operation: dropping an in-flight
//! io_uring read (the losing side of a `select!` or a timeout) queues a
//! cancel that reaches the kernel only at the next submission, and bytes
//! that arrive in between are read into the abandoned buffer and lost.
//! Instead each connection
//! registers a [`Slot`] holding its phase, a stamp and its socket numbers;
//! [`Sweeper::tick`] finds the expired ones and `shutdown(2)`s their sockets,
//! so the connection's own pending readiness waits complete, its next `recv`
//! reads EOF, and the connection sees [`Tracked::expired`] and answers
//! (408/504) or ends the tunnel itself. Everything here is single-threaded.
//!
//! With `--drain-close-frames` the drain also *asks* tunnels to close
//! ([`Sweeper::ask`]): a flag in the slot, and a wake of the connection's
//! task through the waker a tunnel leaves there when it opens
//! ([`Tracked::set_waker`]); the tunnel then closes itself (`io::frames`, `io::drain`).

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::Waker;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::sys::{self, Half};

/// Where a connection is, which decides its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the client's request head: `--handshake-timeout` from accept.
    Handshake,
    /// Connecting to a backend: `--connect-timeout` from the attempt's start.
    Connect,
    /// A plain request sent, the backend's answer not yet read:
    /// `--idle-timeout` since the last byte (a long poll may take that
    /// long); expiry shuts only the backend down, so the client still gets
    /// its 504.
    Answer,
    /// An upgrade sent, the backend's answer not yet read:
    /// `--upstream-answer-timeout` since the last byte; expiry shuts only
    /// the backend down (the next server is tried, or the client gets its
    /// 504).
    UpgradeAnswer,
    /// Answer forwarded, tunnel open: `--idle-timeout` since the last byte.
    Active,
    /// A tunnel one side of which has closed its writing half:
    /// `--half-close-timeout` since the last byte.
    HalfClosed,
    /// An error answer was sent; discarding what the client still sends,
    /// for [`LINGER`] at most.
    Linger,
}

/// Why the sweep closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Handshake,
    Connect,
    /// `--upstream-answer-timeout`.
    Answer,
    Idle,
    HalfClose,
    Linger,
    Drain,
}

/// How long a refused client may go on sending before the socket closes.
pub const LINGER: Duration = Duration::from_secs(2);

/// One connection's entry. Fields are `Cell`s: the connection updates them,
/// the sweep reads them, both on the same thread.
#[derive(Debug)]
struct Slot {
    phase: Cell<Phase>,
    /// Milliseconds since the sweeper's start, of the phase's start or (in
    /// `Active`) of the last byte moved.
    stamp: Cell<u64>,
    client: RawFd,
    /// The backend socket once one exists, else -1.
    backend: Cell<RawFd>,
    /// Its timeouts: an index into [`Sweeper::limits`], those in force when
    /// it was accepted (a reload does not change a live connection's).
    limits: u16,
    expired: Cell<Option<Expiry>>,
    /// Both sockets have been shut down for good (see [`Sweeper::tick`]).
    forced: Cell<bool>,
    /// The drain asked this connection to close (see [`Sweeper::ask`]).
    asked: Cell<bool>,
    /// The task of a tunnel that can be asked, set once when it opens
    /// (16 bytes; the task's waker does not change).
    waker: TaskWaker,
}

/// A slot's waker (a newtype: `Cell` is `Debug` only for `Copy` contents).
#[derive(Default)]
struct TaskWaker(Cell<Option<Waker>>);

impl std::fmt::Debug for TaskWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TaskWaker")
    }
}

/// The per-core registry of live connections and their deadlines.
#[derive(Debug)]
pub struct Sweeper {
    slots: RefCell<Slab<Rc<Slot>>>,
    start: Instant,
    /// Coarse clock (ms since `start`), refreshed by each tick and by phase
    /// changes; per-message stamps read it without a syscall.
    now: Cell<u64>,
    /// Every set of timeouts a connection of this core may have (one per
    /// distinct configuration, see `set_timeouts`), and the one new
    /// connections get.
    limits: RefCell<Vec<Limits>>,
    current: Cell<u16>,
}

/// The timeouts of one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub handshake: Duration,
    pub connect: Duration,
    /// The wait for a backend's answer to an upgrade.
    pub answer: Duration,
    pub idle: Duration,
    pub half_close: Duration,
}

impl Timeouts {
    /// Every timeout `d` (tests).
    pub fn all(d: Duration) -> Timeouts {
        Timeouts {
            handshake: d,
            connect: d,
            answer: d,
            idle: d,
            half_close: d,
        }
    }
}

/// One configuration's timeouts, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    handshake: u64,
    connect: u64,
    answer: u64,
    idle: u64,
    half_close: u64,
}

impl Limits {
    fn new(t: Timeouts) -> Limits {
        let ms = |d: Duration| d.as_millis() as u64;
        Limits {
            handshake: ms(t.handshake),
            connect: ms(t.connect),
            answer: ms(t.answer),
            idle: ms(t.idle),
            half_close: ms(t.half_close),
        }
    }

    fn shortest(&self) -> u64 {
        [
            self.handshake,
            self.connect,
            self.answer,
            self.idle,
            self.half_close,
        ]
        .into_iter()
        .min()
        .unwrap_or(1000)
    }
}

impl Sweeper {
    pub fn new(timeouts: Timeouts) -> Sweeper {
        Sweeper {
            slots: RefCell::new(Slab::new()),
            start: Instant::now(),
            now: Cell::new(0),
            limits: RefCell::new(vec![Limits::new(timeouts)]),
            current: Cell::new(0),
        }
    }

    /// New timeouts (a configuration reload), for connections registered
    /// from now on; live ones keep theirs. Each distinct set is kept once
    /// (a few bytes), so connections carry only its index.
    pub fn set_timeouts(&self, timeouts: Timeouts) {
        let new = Limits::new(timeouts);
        let mut limits = self.limits.borrow_mut();
        let index = match limits.iter().position(|&l| l == new) {
            Some(i) => i,
            None if limits.len() <= u16::MAX as usize => {
                limits.push(new);
                limits.len() - 1
            }
            // 65536 distinct sets: the last one is reused.
            None => {
                let last = limits.len() - 1;
                limits[last] = new;
                last
            }
        };
        self.current.set(index as u16);
    }

    /// How often to sweep: a tenth of the shortest timeout, within
    /// [10 ms, 1 s], so every deadline is met within 10% (or a second).
    pub fn tick_interval(&self) -> Duration {
        let shortest = self
            .limits
            .borrow()
            .iter()
            .map(Limits::shortest)
            .min()
            .unwrap_or(1000);
        Duration::from_millis((shortest / 10).clamp(10, 1000))
    }

    /// Move the coarse clock to now (the completion ring does, once per
    /// turn, so that the stamps its hooks leave are this turn's).
    pub fn refresh_clock(&self) {
        self.refresh();
    }

    fn refresh(&self) -> u64 {
        let now = self.start.elapsed().as_millis() as u64;
        self.now.set(now);
        now
    }

    /// Start tracking a connection in the `Handshake` phase.
    pub fn register(self: &Rc<Self>, client: RawFd) -> Tracked {
        let slot = Rc::new(Slot {
            phase: Cell::new(Phase::Handshake),
            stamp: Cell::new(self.refresh()),
            client,
            backend: Cell::new(-1),
            limits: self.current.get(),
            expired: Cell::new(None),
            forced: Cell::new(false),
            asked: Cell::new(false),
            waker: TaskWaker::default(),
        });
        let key = self.slots.borrow_mut().insert(slot.clone());
        Tracked {
            sweeper: self.clone(),
            slot,
            key,
        }
    }

    /// Connections currently tracked.
    pub fn len(&self) -> usize {
        self.slots.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Expire every connection whose deadline has passed. An expired
    /// connection normally answers (408/504) and moves on to its linger
    /// within moments; one still in the same phase [`LINGER`] later (its
    /// answer stuck behind a client that does not read) has both sockets
    /// shut down, so that every connection ends.
    pub fn tick(&self) {
        let now = self.refresh();
        let limits = self.limits.borrow();
        for (_, slot) in self.slots.borrow().iter() {
            if slot.expired.get().is_some() {
                let stuck = now.saturating_sub(slot.stamp.get()) >= LINGER.as_millis() as u64;
                if stuck && !slot.forced.get() {
                    slot.forced.set(true);
                    shut_both(slot);
                }
                continue;
            }
            let l = limits[slot.limits as usize];
            let (limit, why) = match slot.phase.get() {
                Phase::Handshake => (l.handshake, Expiry::Handshake),
                Phase::Connect => (l.connect, Expiry::Connect),
                Phase::Answer | Phase::Active => (l.idle, Expiry::Idle),
                Phase::UpgradeAnswer => (l.answer, Expiry::Answer),
                Phase::HalfClosed => (l.half_close, Expiry::HalfClose),
                Phase::Linger => (LINGER.as_millis() as u64, Expiry::Linger),
            };
            if now.saturating_sub(slot.stamp.get()) >= limit {
                expire(slot, why, now);
            }
        }
    }

    /// The keys of the connections tracked now, for [`Sweeper::ask`].
    pub fn keys(&self) -> Vec<usize> {
        self.slots.borrow().iter().map(|(key, _)| key).collect()
    }

    /// Ask connection `key` to close (a drain with close frames): a tunnel
    /// that tracks its frames is woken and closes itself at a frame
    /// boundary; any other connection ignores it. No-op if `key` is gone.
    pub fn ask(&self, key: usize) {
        if let Some(slot) = self.slots.borrow().get(key) {
            slot.asked.set(true);
            wake(slot);
        }
    }

    /// Close every tracked connection now (the end of a drain).
    pub fn expire_all(&self, why: Expiry) {
        let now = self.refresh();
        for (_, slot) in self.slots.borrow().iter() {
            expire(slot, why, now);
        }
    }
}

/// Shut the sockets down so that the connection's pending waits wake. The
/// stamp now marks the expiry, for the escalation in [`Sweeper::tick`].
fn expire(slot: &Slot, why: Expiry, now: u64) {
    slot.expired.set(Some(why));
    slot.stamp.set(now);
    let backend = slot.backend.get();
    match (why, slot.phase.get()) {
        // Keep the client's write side: it gets a 408.
        (Expiry::Handshake, _) => sys::shutdown_raw(slot.client, Half::Read),
        // Keep the client: it gets a 504, or the next server.
        (Expiry::Connect | Expiry::Answer, _) | (Expiry::Idle, Phase::Answer) => {
            if backend >= 0 {
                sys::shutdown_raw(backend, Half::Both);
            }
        }
        _ => shut_both(slot),
    }
}

/// Wake the task that left its waker in `slot`, if any (it stays there).
fn wake(slot: &Slot) {
    let waker = slot.waker.0.take();
    if let Some(w) = &waker {
        w.wake_by_ref();
    }
    slot.waker.0.set(waker);
}

fn shut_both(slot: &Slot) {
    sys::shutdown_raw(slot.client, Half::Both);
    let backend = slot.backend.get();
    if backend >= 0 {
        sys::shutdown_raw(backend, Half::Both);
    }
}

/// A connection's handle on its slot; dropping it unregisters the slot, which
/// the connection does before its sockets close (fields drop in order, and
/// `conn` keeps the `Tracked` declared after the streams).
#[derive(Debug)]
pub struct Tracked {
    sweeper: Rc<Sweeper>,
    slot: Rc<Slot>,
    key: usize,
}

impl Tracked {
    /// A byte moved: re-arm the idle deadline. No syscall.
    #[inline]
    pub fn touch(&self) {
        self.slot.stamp.set(self.sweeper.now.get());
    }

    /// Enter a phase, with a fresh deadline. An expiry belongs to the phase
    /// it fired in (a timed-out connect must not doom the next backend's, nor
    /// the linger after the 504), so it is cleared; only a drain is final.
    pub fn set_phase(&self, phase: Phase) {
        self.slot.phase.set(phase);
        self.slot.stamp.set(self.sweeper.refresh());
        if self.slot.expired.get() != Some(Expiry::Drain) {
            self.slot.expired.set(None);
        }
    }

    /// One direction of an open tunnel ended with its source's FIN: the
    /// other has `--half-close-timeout` (since its last byte) to end too.
    /// Nothing once the connection has expired (its end is the expiry's),
    /// or for the second direction to end.
    pub fn half_closed(&self) {
        if self.slot.expired.get().is_none() && self.slot.phase.get() == Phase::Active {
            self.slot.phase.set(Phase::HalfClosed);
            self.slot.stamp.set(self.sweeper.refresh());
        }
    }

    /// Record the backend socket so that the sweep can shut it down too.
    pub fn set_backend(&self, fd: RawFd) {
        self.slot.backend.set(fd);
    }

    /// Forget the backend socket (it is about to close).
    pub fn clear_backend(&self) {
        self.slot.backend.set(-1);
    }

    /// Set when the sweep (or the drain) has shut this connection down.
    pub fn expired(&self) -> Option<Expiry> {
        self.slot.expired.get()
    }

    /// Leave the task's waker for the drain to wake (a tunnel that can be
    /// asked to close; once, when it opens).
    pub fn set_waker(&self, waker: Waker) {
        self.slot.waker.0.set(Some(waker));
    }

    /// Wake the task through the waker left by [`Tracked::set_waker`].
    pub fn wake(&self) {
        wake(&self.slot);
    }

    /// The drain has asked this connection to close.
    pub fn asked(&self) -> bool {
        self.slot.asked.get()
    }

    /// A handle on this connection's activity stamp.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            sweeper: self.sweeper.clone(),
            slot: self.slot.clone(),
        }
    }
}

/// A connection's activity stamp, touched from outside its task: the
/// completion ring's hook stamps each chunk it moves (`io::meter`). Holds
/// the slot, not its registration: touching it after the connection ended
/// does nothing harmful.
#[derive(Debug, Clone)]
pub struct Stamp {
    sweeper: Rc<Sweeper>,
    slot: Rc<Slot>,
}

impl Stamp {
    /// A byte moved: as [`Tracked::touch`].
    #[inline]
    pub fn touch(&self) {
        self.slot.stamp.set(self.sweeper.now.get());
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.sweeper.slots.borrow_mut().remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn a_half_closed_tunnel_has_its_own_deadline() {
        let ms = Duration::from_millis;
        let sw = Rc::new(Sweeper::new(Timeouts {
            half_close: ms(30),
            answer: ms(30),
            ..Timeouts::all(ms(5000))
        }));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let open = sw.register(c.as_raw_fd());
        open.set_phase(Phase::Active);
        let half = sw.register(c.as_raw_fd());
        half.set_phase(Phase::Active);
        half.half_closed();
        let answer = sw.register(c.as_raw_fd());
        answer.set_phase(Phase::UpgradeAnswer);
        std::thread::sleep(ms(50));
        sw.tick();
        assert_eq!(open.expired(), None, "idle is 5 s");
        assert_eq!(half.expired(), Some(Expiry::HalfClose));
        assert_eq!(answer.expired(), Some(Expiry::Answer));
        // An expired tunnel's directions ending do not hide the expiry.
        sw.expire_all(Expiry::Idle);
        open.half_closed();
        assert_eq!(open.expired(), Some(Expiry::Idle));
    }

    #[test]
    fn deadlines_by_phase() {
        let ms = Duration::from_millis;
        let sw = Rc::new(Sweeper::new(Timeouts {
            handshake: ms(40),
            ..Timeouts::all(ms(1000))
        }));
        assert_eq!(sw.tick_interval(), ms(10));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let a = sw.register(c.as_raw_fd());
        let b = sw.register(c.as_raw_fd());
        b.set_phase(Phase::Active);
        assert_eq!(sw.len(), 2);
        sw.tick();
        assert_eq!(a.expired(), None);
        std::thread::sleep(ms(60));
        b.set_phase(Phase::Active); // fresh stamp: not idle yet
        sw.tick();
        assert_eq!(a.expired(), Some(Expiry::Handshake));
        assert_eq!(b.expired(), None);
        // A new phase starts with a clean slate...
        a.set_phase(Phase::Linger);
        assert_eq!(a.expired(), None);
        sw.expire_all(Expiry::Drain);
        assert_eq!(b.expired(), Some(Expiry::Drain));
        // ...but a drain is final.
        b.set_phase(Phase::Linger);
        assert_eq!(b.expired(), Some(Expiry::Drain));
        drop(a);
        assert_eq!(sw.len(), 1);
        drop(b);
        assert!(sw.is_empty());
    }

    #[test]
    fn a_reload_s_timeouts_are_for_new_connections_only() {
        let ms = Duration::from_millis;
        let sw = Rc::new(Sweeper::new(Timeouts::all(ms(40))));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let old = sw.register(c.as_raw_fd());
        old.set_phase(Phase::Active);
        sw.set_timeouts(Timeouts::all(ms(5000)));
        assert_eq!(sw.tick_interval(), ms(10), "the old set is still in use");
        let new = sw.register(c.as_raw_fd());
        new.set_phase(Phase::Active);
        // Back to the first set: no new entry.
        sw.set_timeouts(Timeouts::all(ms(40)));
        assert_eq!(sw.limits.borrow().len(), 2);
        std::thread::sleep(ms(60));
        sw.tick();
        assert_eq!(old.expired(), Some(Expiry::Idle), "its own 40 ms");
        assert_eq!(new.expired(), None, "registered under 5 s");
    }

    #[test]
    fn an_expired_connection_stuck_in_its_phase_is_shut_for_good() {
        let ms = Duration::from_millis;
        // A clock that started 10 s ago, so that stamps can be moved back.
        let mut sweeper = Sweeper::new(Timeouts {
            handshake: ms(20),
            ..Timeouts::all(ms(1000))
        });
        sweeper.start -= Duration::from_secs(10);
        let sw = Rc::new(sweeper);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        let a = sw.register(server.as_raw_fd());
        std::thread::sleep(ms(30));
        sw.tick();
        assert_eq!(a.expired(), Some(Expiry::Handshake));
        // A handshake expiry keeps the write side for the 408...
        assert!(crate::sys::send(&server, b"x").is_ok());
        assert!(!a.slot.forced.get());
        // ...but not forever.
        a.slot
            .stamp
            .set(a.slot.stamp.get() - LINGER.as_millis() as u64);
        sw.tick();
        assert!(a.slot.forced.get());
        let mut buf = [0u8; 8];
        use std::io::Read;
        c.set_read_timeout(Some(ms(500))).unwrap();
        assert_eq!(c.read(&mut buf).unwrap(), 1, "the byte sent before");
        assert_eq!(c.read(&mut buf).unwrap(), 0, "then EOF: both halves shut");
        drop(a);
        assert!(sw.is_empty());
    }
}
