//! A tunnel's WebSocket frames, followed both ways while
//! `--drain-close-frames` is on, so that a drain can stop each direction at
//! a frame boundary and send its Close there (`io::drain`, `server::drain`).
//!
//! [`Frames`] lives in the tunnel's state (two 24-byte trackers, no
//! allocation); each direction sees it through a [`Watch`], which
//! `Ctx::pump` consults between reads ([`Watch::should_stop`]) and on
//! every chunk it copies ([`Watch::follow`]). Asked, a direction stops at
//! the first boundary at which the other direction is at one too, or has
//! stopped already: the tunnel's two Close frames are a pair, so neither
//! side is told "going away" while the other side cannot be. A direction
//! that never reaches such a boundary (a frame that never ends, framing
//! lost to bytes no frame has, a source that closed) never stops.

use std::cell::{Cell, OnceCell};
use std::rc::Rc;
use std::task::Poll;

use crate::io::sweep::Tracked;
use crate::proto::ws::tracker::FrameTracker;

/// Where one direction of a tunnel is, for the pair of Close frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    /// Forwarding.
    #[default]
    Running,
    /// Stopped at a boundary: its Close is being sent (unless its source's
    /// own Close was forwarded before the boundary), its source drained.
    Stopped { send_close: bool },
    /// Through with its Close and its source's.
    Done,
    /// Ended without stopping (its source closed, or failed).
    Ended,
}

/// Both directions of one tunnel, followed frame by frame while
/// `--drain-close-frames` is on. One pointer in the tunnel's state, empty
/// until the tunnel opens under the flag; the [`Pair`] it then holds is
/// shared with the completion ring's hook while the ring moves the
/// tunnel's bytes (`io::meter`).
#[derive(Default)]
pub struct Frames(OnceCell<Rc<Pair>>);

/// The two directions' trackers and states (index 0: from the client, 1:
/// from the backend).
#[derive(Default)]
pub struct Pair {
    trackers: [Cell<FrameTracker>; 2],
    states: [Cell<State>; 2],
    /// A direction has stopped: the other stops at its next boundary.
    closing: Cell<bool>,
    /// The completion ring moves this direction's bytes (its hook follows
    /// them, [`Pair::follow_in_ring`]): no direction may stop while either
    /// is there, since the ring forwards whole chunks and cannot stop at a
    /// boundary.
    in_ring: [Cell<bool>; 2],
}

impl Pair {
    /// Follow bytes the completion ring forwards on direction `d`.
    pub fn follow_in_ring(&self, d: usize, data: &[u8]) {
        let mut tracker = self.trackers[d].take();
        tracker.scan(data, false);
        self.trackers[d].set(tracker);
    }

    /// Direction `d` enters (`true`) or leaves the completion ring.
    pub fn set_in_ring(&self, d: usize, on: bool) {
        self.in_ring[d].set(on);
    }
}

impl Frames {
    /// The tunnel opened: track its frames from here, starting with the
    /// client's `early` bytes (frames it sent before the 101, already
    /// forwarded), and leave the task's waker for the drain to wake.
    pub async fn open(&self, early: &[u8], track: &Tracked) {
        let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        track.set_waker(waker);
        let pair = Rc::new(Pair::default());
        pair.follow_in_ring(0, early);
        let _ = self.0.set(pair);
    }

    /// Whether the tunnel follows its frames (it opened under the flag).
    pub fn is_on(&self) -> bool {
        self.0.get().is_some()
    }

    /// The pair, for the completion ring's hook.
    pub fn shared(&self) -> Option<Rc<Pair>> {
        self.0.get().cloned()
    }

    /// The watch of the direction coming from the client (`true`) or the
    /// backend; `None` when frames are not tracked.
    pub fn watch(&self, from_client: bool) -> Option<Watch<'_>> {
        self.0.get().map(|pair| Watch {
            frames: pair,
            dir: usize::from(!from_client),
        })
    }
}

/// One direction's view of its tunnel's [`Frames`], for `Ctx::pump`
/// and, once stopped, for `io::drain::close`.
#[derive(Clone, Copy)]
pub struct Watch<'a> {
    frames: &'a Pair,
    /// 0: from the client (masked frames), 1: from the backend.
    dir: usize,
}

impl Watch<'_> {
    /// Run `f` on this direction's tracker.
    fn with<R>(&self, f: impl FnOnce(&mut FrameTracker) -> R) -> R {
        let cell = &self.frames.trackers[self.dir];
        let mut tracker = cell.take();
        let r = f(&mut tracker);
        cell.set(tracker);
        r
    }

    /// The other direction, as a watch.
    fn other(&self) -> Watch<'_> {
        Watch {
            frames: self.frames,
            dir: 1 - self.dir,
        }
    }

    fn state(&self) -> State {
        self.frames.states[self.dir].get()
    }

    fn set_state(&self, s: State) {
        self.frames.states[self.dir].set(s);
    }

    /// Asked, and a boundary here would do: the other direction has
    /// stopped already, or is at a boundary and still running (so that it
    /// can stop there too, at once).
    fn may_stop(&self, track: &Tracked) -> bool {
        if !track.asked() || self.state() != State::Running {
            return false;
        }
        if self.frames.in_ring.iter().any(Cell::get) {
            return false;
        }
        let other = self.other();
        self.frames.closing.get()
            || (other.state() == State::Running && other.with(|t| t.at_boundary()))
    }

    /// Whether to stop now, between two reads (nothing of a frame
    /// forwarded without its end). Pure: see [`Watch::stop_now`].
    pub fn should_stop(&self, track: &Tracked) -> bool {
        self.may_stop(track) && self.with(|t| t.at_boundary())
    }

    /// [`Watch::should_stop`], and if so, stop: the tunnel is closing.
    pub fn stop_now(&self, track: &Tracked) -> bool {
        let stop = self.should_stop(track);
        if stop {
            self.stop(track, !self.with(|t| t.close_seen()));
        }
        stop
    }

    /// Follow a chunk read from the source. Returns how much of it to
    /// forward: all of it, or (when the direction stops) the bytes up to
    /// the boundary, the rest followed but never forwarded.
    pub fn follow(&self, data: &[u8], track: &Tracked) -> (usize, bool) {
        let may_stop = self.may_stop(track);
        let (scan, forwarded_close) = self.with(|t| {
            let scan = t.scan(data, may_stop);
            // A Close up to the boundary is forwarded; one after it is not.
            let forwarded_close = t.close_seen();
            if scan.stopped {
                t.scan(&data[scan.consumed..], false);
            }
            (scan, forwarded_close)
        });
        if scan.stopped {
            self.stop(track, !forwarded_close);
        }
        (scan.consumed, scan.stopped)
    }

    /// Stopped: a Close from the proxy is due unless the source's own went
    /// through.
    pub fn sends_close(&self) -> bool {
        self.state() == State::Stopped { send_close: true }
    }

    fn stop(&self, track: &Tracked, send_close: bool) {
        self.set_state(State::Stopped { send_close });
        self.frames.closing.set(true);
        // The other direction, parked on this task, must look again.
        track.wake();
    }

    /// The direction ended without stopping (its source closed or failed):
    /// no Close can pair with it any more.
    pub fn ended(&self) {
        if self.state() == State::Running {
            self.set_state(State::Ended);
        }
    }

    /// This direction carries the client's frames (masked ones).
    pub fn from_client(&self) -> bool {
        self.dir == 0
    }

    /// The source's own Close has gone by (forwarded or dropped).
    pub fn source_close_seen(&self) -> bool {
        self.with(|t| t.close_seen())
    }

    /// Follow bytes read from the source after the stop: they are dropped,
    /// never forwarded, but their frames are followed to the source's Close.
    pub fn skip(&self, data: &[u8]) {
        self.with(|t| t.scan(data, false));
    }

    /// This stopped direction is through (its Close sent, its source's
    /// seen): which writing halves to close now.
    pub fn finish(&self) -> Finish {
        self.set_state(State::Done);
        match self.other().state() {
            State::Running | State::Stopped { .. } => Finish::OtherPending,
            State::Done => Finish::Both,
            State::Ended => Finish::Destination,
        }
    }
}

/// What a direction that stopped closes when it is through
/// ([`Watch::finish`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The other direction is still closing: it closes both when through.
    OtherPending,
    /// Both directions are through: close both writing halves.
    Both,
    /// The other direction ended and closed its destination (this one's
    /// source) already: close this one's destination.
    Destination,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sweep::Sweeper;
    use std::rc::Rc;
    use std::time::Duration;

    fn frame(len: u8) -> Vec<u8> {
        let mut f = vec![0x82, len];
        f.extend(std::iter::repeat_n(7u8, len as usize));
        f
    }

    fn tracked() -> (
        Rc<Sweeper>,
        Tracked,
        std::net::TcpStream,
        std::net::TcpListener,
    ) {
        let ms = Duration::from_millis;
        let sw = Rc::new(Sweeper::new(crate::io::sweep::Timeouts::all(ms(1000))));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let t = sw.register(std::os::fd::AsRawFd::as_raw_fd(&c));
        (sw, t, c, l)
    }

    fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
    }

    fn on() -> Frames {
        let f = Frames::default();
        let _ = f.0.set(Rc::new(Pair::default()));
        f
    }

    fn pair(f: &Frames) -> &Pair {
        f.0.get().unwrap()
    }

    #[test]
    fn off_means_no_watch() {
        let f = Frames::default();
        assert!(f.watch(true).is_none() && f.watch(false).is_none());
        assert!(on().watch(true).is_some());
    }

    #[test]
    fn not_asked_never_stops() {
        let (_sw, t, _c, _l) = tracked();
        let f = on();
        let up = f.watch(true).unwrap();
        assert!(!up.should_stop(&t));
        assert_eq!(up.follow(&frame(3), &t), (5, false));
    }

    #[test]
    fn asked_stops_at_the_boundary_inside_a_chunk() {
        let (sw, t, _c, _l) = tracked();
        let f = on();
        let (up, down) = (f.watch(true).unwrap(), f.watch(false).unwrap());
        // Up is in the middle of a frame when the drain asks.
        let mut bytes = frame(10);
        assert_eq!(up.follow(&bytes[..4], &t), (4, false));
        sw.ask(0);
        assert!(t.asked());
        assert!(!up.should_stop(&t), "mid-frame");
        // Down is at a boundary, but its Close must wait for up's.
        assert!(!down.should_stop(&t));
        // The frame ends inside the next chunk; what follows is not sent.
        bytes.extend(frame(2));
        assert_eq!(up.follow(&bytes[4..], &t), (8, true));
        assert!(pair(&f).closing.get());
        // Now down stops at once (it is at a boundary).
        assert!(down.stop_now(&t));
        assert!(!up.should_stop(&t), "stops once");
    }

    #[test]
    fn a_close_after_the_boundary_is_dropped_and_ours_is_sent() {
        let (sw, t, _c, _l) = tracked();
        let f = on();
        let (up, down) = (f.watch(true).unwrap(), f.watch(false).unwrap());
        let close = [0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xE8 ^ 2];
        // The client is in the middle of a frame; down stops and sends its
        // Close; the client ends its frame and answers in the same chunk.
        let mut bytes = frame(10);
        up.follow(&bytes[..4], &t);
        sw.ask(0);
        assert!(!down.stop_now(&t));
        pair(&f).closing.set(true);
        bytes.extend(close);
        assert_eq!(up.follow(&bytes[4..], &t), (8, true));
        assert!(up.with(|t| t.close_seen()));
        assert!(up.sends_close(), "the client's Close was not forwarded");
    }

    #[test]
    fn a_close_forwarded_before_the_ask_needs_no_second_one() {
        let (sw, t, _c, _l) = tracked();
        let f = on();
        let (up, down) = (f.watch(true).unwrap(), f.watch(false).unwrap());
        // The backend had begun the close handshake already.
        assert_eq!(down.follow(&[0x88, 0], &t), (2, false));
        sw.ask(0);
        assert!(down.stop_now(&t) && !down.sends_close());
        // The client has not answered yet: it gets its answer from us.
        assert!(up.stop_now(&t) && up.sends_close());
    }

    #[test]
    fn a_frame_that_never_ends_means_no_close_on_either_side() {
        let (sw, t, _c, _l) = tracked();
        let f = on();
        let (up, down) = (f.watch(true).unwrap(), f.watch(false).unwrap());
        // A header announcing 1000 bytes, and 10 of them.
        let mut half = vec![0x82, 0x80 | 126, 0x03, 0xE8, 1, 2, 3, 4];
        half.extend([0; 10]);
        up.follow(&half, &t);
        sw.ask(0);
        assert!(!up.should_stop(&t) && !down.should_stop(&t));
        assert_eq!(down.follow(&frame(3), &t), (5, false));
    }

    #[test]
    fn a_direction_that_ended_cannot_pair() {
        let (sw, t, _c, _l) = tracked();
        let f = on();
        let (up, down) = (f.watch(true).unwrap(), f.watch(false).unwrap());
        sw.ask(0);
        up.ended();
        assert!(!down.should_stop(&t));
    }

    #[test]
    fn lost_framing_never_stops() {
        let (sw, t, _c, _l) = tracked();
        let f = on();
        let (up, down) = (f.watch(true).unwrap(), f.watch(false).unwrap());
        // Opcode 3 is reserved: framing is lost for good.
        assert_eq!(down.follow(&[0x83, 0, 0x82, 0], &t), (4, false));
        sw.ask(0);
        assert!(!down.should_stop(&t) && !up.should_stop(&t));
        assert_eq!(down.follow(&[0x82, 0], &t), (2, false));
        assert!(pair(&f).trackers[1].take().is_lost());
    }

    #[test]
    fn no_direction_stops_while_either_is_in_the_ring() {
        let (sw, t, _c, _l) = tracked();
        let f = on();
        let (up, down) = (f.watch(true).unwrap(), f.watch(false).unwrap());
        // The ring moves down's bytes: the header of a 3-byte frame so far.
        pair(&f).set_in_ring(1, true);
        pair(&f).follow_in_ring(1, &frame(3)[..2]);
        sw.ask(0);
        assert!(!up.should_stop(&t), "down is in the ring");
        // Down leaves the ring mid-frame: up still waits for its boundary.
        pair(&f).set_in_ring(1, false);
        assert!(!up.should_stop(&t), "down is mid-frame");
        assert_eq!(down.follow(&frame(3)[2..], &t), (3, true));
        assert!(up.stop_now(&t));
    }

    #[test]
    fn early_bytes_are_followed() {
        let (_sw, t, _c, _l) = tracked();
        let f = Frames::default();
        // Half a frame sent before the 101.
        let early = &frame(6)[..3];
        runtime().block_on(f.open(early, &t));
        let up = f.watch(true).unwrap();
        assert!(!up.with(|t| t.at_boundary()));
        assert_eq!(up.follow(&frame(6)[3..], &t), (5, false));
        assert!(up.with(|t| t.at_boundary()));
    }
}
