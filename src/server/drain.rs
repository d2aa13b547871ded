//! One core's drain at shutdown ([`drain`]): stop accepting, let the
//! connections finish until `--drain-timeout`, then close the rest.
//!
//! With `--drain-close-frames` the core also asks the connections it had
//! when the drain began to close themselves ([`ask_spread`]), a few at a
//! time, spread over the first half of `--drain-timeout`, so that their
//! clients do not all reconnect at once. A tunnel that follows its frames
//! (`io::frames`) closes itself at a frame boundary with a Close 1001 to
//! both sides; any other connection ignores the ask and is closed at the
//! deadline.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpListener;

use crate::io::sweep::{Expiry, Sweeper};
use crate::percore::Core;
use crate::server::shutdown::Shutdown;
use crate::sys::{self, Half};

/// How long connections get to finish once the drain deadline has shut their
/// sockets down (they normally need one loop turn).
const FORCED_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// One core's drain at shutdown: stop accepting at once, let its
/// connections finish (asking its tunnels to close with close frames, under
/// `--drain-close-frames`) until `--drain-timeout` or a second signal, then
/// shut the rest down and give them `FORCED_CLOSE_GRACE` to end.
pub async fn drain(core: &Core, listeners: &[Rc<TcpListener>], shutdown: &Shutdown) {
    // Shutting a listener down wakes its pending accept with an error, and
    // its accept loop ends and closes it. The worker holds every listener
    // until it returns, so these always name open sockets of ours.
    for listener in listeners {
        sys::shutdown_raw(listener.as_raw_fd(), Half::Read);
    }
    let sweeper = &core.sweeper;
    let config = core.config();
    let deadline = Instant::now() + config.drain_timeout;
    if config.drain_close_frames {
        // Tunnels close themselves with close frames, spread over the
        // first half of the drain; the rest close at the deadline.
        monoio::spawn(ask_spread(sweeper.clone(), config.drain_timeout / 2));
    }
    let poll = Duration::from_millis(20);
    while !sweeper.is_empty() && Instant::now() < deadline && !shutdown.is_forced() {
        monoio::time::sleep(poll).await;
    }
    let open = sweeper.len();
    if open > 0 {
        let why = if shutdown.is_forced() {
            "on a second signal"
        } else {
            "at the drain deadline"
        };
        log::info!(
            "worker {}: closing {open} connection(s) still open {why}",
            core.id
        );
        sweeper.expire_all(Expiry::Drain);
        let grace = Instant::now() + FORCED_CLOSE_GRACE;
        while !sweeper.is_empty() && Instant::now() < grace {
            monoio::time::sleep(poll).await;
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sweep::Tracked;

    fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
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
        let sw = Rc::new(Sweeper::new(crate::io::sweep::Timeouts::all(ms(1000))));
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
