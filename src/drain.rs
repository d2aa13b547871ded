//! Close frames at a drain (`--drain-close-frames`): at SIGTERM each
//! WebSocket tunnel is asked, in turn, to close itself with a Close frame
//! 1001 "going away" to both sides, at a frame boundary it can prove.
//!
//! - [`ask_spread`] (one task per core) asks the connections the core had
//!   when the drain began, a few at a time, spread over the first half of
//!   `--drain-timeout`, so their clients do not all reconnect at once.
//! - A tunnel ([`Frames`], in its `conn::Flow`) follows the frame headers of
//!   both directions while it copies them (`ws_frames::FrameTracker`),
//!   only under the flag. Asked, a direction stops forwarding at the first
//!   boundary at which the other direction is at one too (or has stopped
//!   already): the tunnel's two Close frames are a pair, so neither side is
//!   told "going away" while the other side cannot be. The direction then
//!   writes its Close to its destination ([`close`]) and reads and drops
//!   what its source still sends until that source's own Close has gone by
//!   (or it closes); when both directions are through, both sockets are
//!   closed. Nothing after the boundary is forwarded: a Close must be the
//!   last frame an endpoint sends.
//! - A direction that never reaches such a boundary (a frame that never
//!   ends, framing lost to bytes no frame has, a source that closed) makes
//!   no Close at all: the tunnel is closed at the drain deadline, as
//!   without the flag (`sweep::Expiry::Drain`).

use std::cell::Cell;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::sweep::{Sweeper, Tracked};
use crate::tunnel::{close_write, read_some, write_all, Peer, PumpError, Scratch};
use crate::ws_frames::{close_frame, FrameTracker, GOING_AWAY, GOING_AWAY_REASON};

/// How often [`ask_spread`] asks the next connections.
const ASK_EVERY: Duration = Duration::from_millis(20);

/// Ask each connection this core had when the drain began to close
/// ([`Sweeper::ask`]), spread evenly over `spread`: after a time `t`,
/// `ceil(n * t / spread)` of the `n` have been asked. Connections that are
/// not tunnels tracking their frames ignore it.
pub async fn ask_spread(sweeper: Rc<Sweeper>, spread: Duration) {
    let keys = sweeper.keys();
    let n = keys.len();
    let start = Instant::now();
    let mut asked = 0;
    while asked < n {
        monoio::time::sleep(ASK_EVERY).await;
        let due = due(n, start.elapsed(), spread).max(asked);
        for &key in &keys[asked..due] {
            sweeper.ask(key);
        }
        asked = due;
    }
}

/// How many of `n` should have been asked `elapsed` into a `spread`.
fn due(n: usize, elapsed: Duration, spread: Duration) -> usize {
    if elapsed >= spread {
        return n;
    }
    let share = elapsed.as_secs_f64() / spread.as_secs_f64();
    ((n as f64 * share).ceil() as usize).min(n)
}

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
/// `--drain-close-frames` is on (index 0: from the client, 1: from the
/// backend). Lives in the tunnel's state, costs no allocation.
#[derive(Default)]
pub struct Frames {
    trackers: [Cell<FrameTracker>; 2],
    states: [Cell<State>; 2],
    /// A tunnel that tracks its frames (set when it opens).
    on: Cell<bool>,
    /// A direction has stopped: the other stops at its next boundary.
    closing: Cell<bool>,
}

impl Frames {
    /// The tunnel opened: track its frames from here, starting with the
    /// client's `early` bytes (frames it sent before the 101, already
    /// forwarded), and leave the task's waker for the drain to wake.
    pub async fn open(&self, early: &[u8], track: &Tracked) {
        let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        track.set_waker(waker);
        self.on.set(true);
        Watch {
            frames: self,
            dir: 0,
        }
        .with(|t| t.scan(early, false));
    }

    /// The watch of the direction coming from the client (`true`) or the
    /// backend; `None` when frames are not tracked.
    pub fn watch(&self, from_client: bool) -> Option<Watch<'_>> {
        self.on.get().then_some(Watch {
            frames: self,
            dir: usize::from(!from_client),
        })
    }
}

/// One direction's view of its tunnel's [`Frames`], for `tunnel::pump`.
#[derive(Clone, Copy)]
pub struct Watch<'a> {
    frames: &'a Frames,
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
}

/// The rest of a direction that stopped at a boundary: the Close frame
/// 1001 "going away" to `dst` (masked towards the backend, as a client's
/// frames are), unless `src`'s own Close was forwarded already; then read and
/// drop what `src` sends, following its frames, until its Close has gone by
/// or it closes. The last direction through closes both sockets' writing
/// halves. Returns the bytes written to `dst`.
pub async fn close(
    w: Watch<'_>,
    src: Peer<'_>,
    dst: Peer<'_>,
    scratch: &Scratch,
    track: &Tracked,
) -> Result<u64, PumpError> {
    let mut sent = 0;
    if w.sends_close() {
        let mask = (w.dir == 0).then(mask_key);
        let (frame, len) = close_frame(GOING_AWAY, GOING_AWAY_REASON, mask);
        write_all(dst, &frame[..len], scratch, track)
            .await
            .map_err(PumpError::Write)?;
        sent = len as u64;
    }
    while !w.with(|t| t.close_seen()) {
        let read = read_some(src, scratch, |data| {
            w.with(|t| t.scan(data, false));
        });
        match read.await.map_err(PumpError::Read)? {
            Some(()) => track.touch(),
            None => break,
        }
    }
    w.set_state(State::Done);
    match w.other().state() {
        // It closes both when it is through.
        State::Running | State::Stopped { .. } => {}
        State::Done => {
            close_write(dst, track).await;
            close_write(src, track).await;
        }
        // It has closed its destination (`src`) already.
        State::Ended => close_write(dst, track).await,
    }
    Ok(sent)
}

/// A masking key for the Close sent to a backend (RFC 6455 §5.3). The
/// payload is fixed, so nothing depends on the key being unpredictable;
/// the clock's nanoseconds vary it anyway.
fn mask_key() -> [u8; 4] {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0x5A5A_5A5A, |d| d.subsec_nanos()).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let sw = Rc::new(Sweeper::new(ms(1000), ms(1000), ms(1000)));
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
        f.on.set(true);
        f
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
        assert!(f.closing.get());
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
        f.closing.set(true);
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
        assert!(f.trackers[1].take().is_lost());
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

    #[test]
    fn asks_are_due_evenly() {
        let ms = Duration::from_millis;
        let spread = ms(1000);
        assert_eq!(due(3, ms(0), spread), 0);
        assert_eq!(due(3, ms(20), spread), 1);
        assert_eq!(due(3, ms(333), spread), 1);
        assert_eq!(due(3, ms(334), spread), 2);
        assert_eq!(due(3, ms(667), spread), 3);
        assert_eq!(due(3, ms(5000), spread), 3);
        assert_eq!(due(1000, ms(20), spread), 20);
        assert_eq!(due(0, ms(20), spread), 0);
        assert_eq!(due(5, ms(20), Duration::ZERO), 5);
    }

    #[test]
    fn asks_are_spread() {
        let ms = Duration::from_millis;
        let sw = Rc::new(Sweeper::new(ms(1000), ms(1000), ms(1000)));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&c);
        let ts: Vec<Tracked> = (0..10).map(|_| sw.register(fd)).collect();
        runtime().block_on(async {
            let task = monoio::spawn(ask_spread(sw.clone(), ms(1000)));
            monoio::time::sleep(ms(100)).await;
            let early = ts.iter().filter(|t| t.asked()).count();
            assert!(early < 10, "all asked after 100 of 1000 ms");
            task.await;
        });
        assert!(ts.iter().all(|t| t.asked()));
    }
}
