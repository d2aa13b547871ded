//! Error-log lines that clients can cause, at a bounded rate: a flood of
//! garbage connections must not fill the disk or bury the lines that
//! matter.
//!
//! Each such line has a [`Topic`] (its reason: a bad request head, a failed
//! TLS handshake, an accept error...). Per topic, the first line is written
//! at once; the ones that follow within [`INTERVAL`] are only counted, and
//! one summary line ("N more lines like ... in the last 10s") is written
//! when the next one comes after the interval, or at the worker's next sweep
//! tick ([`flush`]). So a steady flood costs at most about one line per
//! topic per interval per thread, whatever its rate. The metrics count
//! every event; the access log keeps its line per connection.
//!
//! The state is per thread ([`Limiter`] in a `thread_local`): each worker
//! (and the metrics thread) has its own, with no lock and no allocation; a
//! check is an array index and a clock read.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::Level;

/// How long a topic's lines are counted rather than written, after one is
/// written.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// The environment variable that sets another interval, in milliseconds (0:
/// every line is written); read once, at start-up. The integration tests
/// use it to see every refusal's line.
pub const INTERVAL_ENV: &str = "RINGWAY_LOG_INTERVAL_MS";

/// The interval in force, in milliseconds ([`INTERVAL`] unless
/// [`INTERVAL_ENV`] said otherwise).
static INTERVAL_MS: AtomicU64 = AtomicU64::new(INTERVAL.as_millis() as u64);

/// Read [`INTERVAL_ENV`] (at start-up, before the workers); a value that is
/// not a number keeps the default.
pub fn interval_from_env() {
    if let Some(ms) = std::env::var(INTERVAL_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        INTERVAL_MS.store(ms, Ordering::Relaxed);
    }
}

fn interval() -> Duration {
    Duration::from_millis(INTERVAL_MS.load(Ordering::Relaxed))
}

/// What a rate-limited line is about. Each has its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// A refused request head: malformed, a bad handshake, too large.
    BadHead,
    /// No whole request head within the handshake timeout (slowloris).
    HeadTimeout,
    /// A path refused for routing or for a file.
    BadPath,
    /// Plain HTTP sent to a TLS listener.
    PlainHttpOnTls,
    /// Over `--max-conns`.
    OverMaxConns,
    /// No route for the host and path.
    NoRoute,
    /// An Origin not in `--allow-origin`.
    Origin,
    /// Over `--limit-conn-per-ip`.
    PerIpLimit,
    /// A backend failed: connect or TLS failed, or a bad or no answer (502).
    BackendFailed,
    /// A backend did not connect or answer in time (504).
    BackendTimeout,
    /// No server of a group available (503).
    NoServer,
    /// Refused while shutting down.
    ShuttingDown,
    /// Over the room the open-files limit leaves (or closed unanswered
    /// far over it).
    OutOfDescriptors,
    /// ringway lacked a descriptor, memory or a port to reach a backend.
    LocalFailure,
    /// A failed server, and the next one tried.
    Retry,
    /// A server marked unavailable for its fail_timeout.
    ServerMarked,
    /// A client's TLS handshake failed.
    TlsHandshake,
    /// A bad (or missing, or untrusted) PROXY protocol header.
    ProxyHeader,
    /// A worker's accept failed (out of descriptors...).
    Accept,
    /// The metrics endpoint's accept or thread start failed.
    MetricsEndpoint,
    /// A warning or lower from a library (rustls) about a peer.
    Library,
}

impl Topic {
    /// How many topics there are (the limiter's array).
    const COUNT: usize = Topic::Library as usize + 1;

    /// The topic's lines, in a summary.
    pub fn words(self) -> &'static str {
        match self {
            Topic::BadHead => "refused: bad request head",
            Topic::HeadTimeout => "refused: no request head in time",
            Topic::BadPath => "refused: bad path",
            Topic::PlainHttpOnTls => "refused: plain HTTP on a TLS port",
            Topic::OverMaxConns => "refused: over --max-conns",
            Topic::NoRoute => "refused: no route",
            Topic::Origin => "refused: Origin not allowed",
            Topic::PerIpLimit => "refused: over --limit-conn-per-ip",
            Topic::BackendFailed => "refused: backend failed",
            Topic::BackendTimeout => "refused: backend timed out",
            Topic::NoServer => "refused: no server available",
            Topic::ShuttingDown => "refused: shutting down",
            Topic::OutOfDescriptors => "refused: out of descriptors",
            Topic::LocalFailure => "refused: out of a local resource",
            Topic::Retry => "trying the next server",
            Topic::ServerMarked => "server marked unavailable",
            Topic::TlsHandshake => "tls handshake failed",
            Topic::ProxyHeader => "PROXY protocol header refused",
            Topic::Accept => "accept failed",
            Topic::MetricsEndpoint => "metrics endpoint error",
            Topic::Library => "a library's message",
        }
    }
}

/// One topic's state.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// When the current interval began (a line was written); `None`: none
    /// is running, the next line is written at once.
    since: Option<Instant>,
    /// Lines counted, not written, since `since`.
    held: u64,
    /// The written line's target and level, for its summary.
    target: &'static str,
    level: Level,
}

impl Slot {
    const IDLE: Slot = Slot {
        since: None,
        held: 0,
        target: "",
        level: Level::Info,
    };
}

/// The line that stands for the lines held back in one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub topic: Topic,
    /// Lines held back.
    pub held: u64,
    /// Since the last line written about the topic.
    pub over: Duration,
    /// Target and level of that line.
    pub target: &'static str,
    pub level: Level,
    /// The limiter's interval: at most one line per this.
    pub every: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} more lines like \"{}\" in the last {}s, not written (at most one per {}s per \
             reason and worker; the metrics count them all)",
            self.held,
            self.topic.words(),
            self.over.as_secs(),
            self.every.as_secs_f64(),
        )
    }
}

/// One thread's budgets, on a clock the caller gives (tests inject it).
#[derive(Debug)]
pub struct Limiter {
    slots: [Slot; Topic::COUNT],
    interval: Duration,
}

impl Limiter {
    pub const fn new(interval: Duration) -> Limiter {
        Limiter {
            slots: [Slot::IDLE; Topic::COUNT],
            interval,
        }
    }

    /// A line about `topic` (to be written at `level` under `target`) at
    /// `now`: whether to write it, and first the summary of the lines held
    /// back before it, if any.
    pub fn admit(
        &mut self,
        topic: Topic,
        level: Level,
        target: &'static str,
        now: Instant,
    ) -> (bool, Option<Summary>) {
        let interval = self.interval;
        let slot = &mut self.slots[topic as usize];
        match slot.since {
            Some(since) if now.saturating_duration_since(since) < interval => {
                slot.held += 1;
                (false, None)
            }
            since => {
                let summary = since.and_then(|since| summary(topic, slot, now - since, interval));
                *slot = Slot {
                    since: (!interval.is_zero()).then_some(now),
                    held: 0,
                    target,
                    level,
                };
                (true, summary)
            }
        }
    }

    /// The summaries of topics whose interval is over at `now`: each
    /// starts a new interval if it held lines back (so a steady flood
    /// gives one summary per interval), else its next line is written at
    /// once.
    pub fn flush(&mut self, now: Instant, mut emit: impl FnMut(Summary)) {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(since) = slot.since else { continue };
            let over = now.saturating_duration_since(since);
            if over < self.interval {
                continue;
            }
            match summary(TOPICS[i], slot, over, self.interval) {
                Some(s) => {
                    emit(s);
                    slot.since = Some(now);
                    slot.held = 0;
                }
                None => slot.since = None,
            }
        }
    }
}

/// Every topic, by index.
const TOPICS: [Topic; Topic::COUNT] = [
    Topic::BadHead,
    Topic::HeadTimeout,
    Topic::BadPath,
    Topic::PlainHttpOnTls,
    Topic::OverMaxConns,
    Topic::NoRoute,
    Topic::Origin,
    Topic::PerIpLimit,
    Topic::BackendFailed,
    Topic::BackendTimeout,
    Topic::NoServer,
    Topic::ShuttingDown,
    Topic::OutOfDescriptors,
    Topic::LocalFailure,
    Topic::Retry,
    Topic::ServerMarked,
    Topic::TlsHandshake,
    Topic::ProxyHeader,
    Topic::Accept,
    Topic::MetricsEndpoint,
    Topic::Library,
];

fn summary(topic: Topic, slot: &Slot, over: Duration, every: Duration) -> Option<Summary> {
    (slot.held > 0).then_some(Summary {
        every,
        topic,
        held: slot.held,
        over,
        target: slot.target,
        level: slot.level,
    })
}

thread_local! {
    /// This thread's limiter, with the interval in force when the thread
    /// first logs ([`INTERVAL_MS`] is set once, at start-up).
    static LIMITER: RefCell<Limiter> = RefCell::new(Limiter::new(interval()));
}

fn with<T>(f: impl FnOnce(&mut Limiter) -> T) -> T {
    LIMITER.with(|l| f(&mut l.borrow_mut()))
}

fn write(s: &Summary) {
    log::log!(target: s.target, s.level, "{s}");
}

/// This thread's verdict on a line about `topic` now (see
/// [`Limiter::admit`]); writes the summary that comes before it. Use
/// [`limited!`](crate::ops::ratelog::limited), which formats the line only
/// when it is written.
pub fn admit(topic: Topic, level: Level, target: &'static str) -> bool {
    // A line the log would drop anyway costs nothing, and is not counted
    // for a summary that would be dropped too.
    if level > log::max_level() {
        return false;
    }
    let (write_it, summary) = with(|l| l.admit(topic, level, target, Instant::now()));
    if let Some(s) = summary {
        write(&s);
    }
    write_it
}

/// Write this thread's due summaries (the worker's sweep tick).
pub fn flush() {
    let now = Instant::now();
    // Collected first: the logger may itself look at the limiter.
    let mut due = [None; Topic::COUNT];
    let mut n = 0;
    with(|l| {
        l.flush(now, |s| {
            due[n] = Some(s);
            n += 1;
        })
    });
    for s in due.iter().flatten() {
        write(s);
    }
}

/// `log::log!` for a line about a [`Topic`], at a bounded rate: `limited!(topic,
/// level, "format", args...)`. The line is formatted only when written.
macro_rules! limited {
    ($topic:expr, $level:expr, $($arg:tt)+) => {{
        let level: ::log::Level = $level;
        if $crate::ops::ratelog::admit($topic, level, ::std::module_path!()) {
            ::log::log!(level, $($arg)+);
        }
    }};
}
pub(crate) use limited;

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "ringway::test";

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn topics_are_listed_in_order() {
        for (i, t) in TOPICS.iter().enumerate() {
            assert_eq!(*t as usize, i, "{t:?}");
        }
    }

    #[test]
    fn the_first_line_is_written_then_counted_then_summed_up() {
        let t0 = Instant::now();
        let mut l = Limiter::new(secs(10));
        assert_eq!(l.admit(Topic::BadHead, Level::Warn, T, t0), (true, None));
        for i in 1..=999 {
            let at = t0 + Duration::from_millis(i * 9);
            assert_eq!(l.admit(Topic::BadHead, Level::Warn, T, at), (false, None));
        }
        // Another topic has its own budget.
        assert_eq!(l.admit(Topic::Accept, Level::Error, T, t0), (true, None));
        // After the interval: the summary, then this line.
        let (write, summary) = l.admit(Topic::BadHead, Level::Warn, T, t0 + secs(10));
        assert!(write);
        let s = summary.unwrap();
        assert_eq!((s.topic, s.held, s.over), (Topic::BadHead, 999, secs(10)));
        assert_eq!((s.target, s.level), (T, Level::Warn));
        assert!(
            s.to_string()
                .starts_with("999 more lines like \"refused: bad request head\" in the last 10s"),
            "{s}"
        );
        // A new interval began with that line.
        assert_eq!(
            l.admit(Topic::BadHead, Level::Warn, T, t0 + secs(11)),
            (false, None)
        );
    }

    #[test]
    fn a_quiet_topic_writes_its_next_line_at_once_without_a_summary() {
        let t0 = Instant::now();
        let mut l = Limiter::new(secs(10));
        assert!(l.admit(Topic::NoRoute, Level::Warn, T, t0).0);
        assert_eq!(
            l.admit(Topic::NoRoute, Level::Warn, T, t0 + secs(30)),
            (true, None)
        );
    }

    #[test]
    fn a_steady_flood_writes_one_line_and_one_summary_per_interval() {
        let t0 = Instant::now();
        let mut l = Limiter::new(secs(10));
        let mut written = 0;
        let mut summaries = Vec::new();
        // 1,000 lines a second for 60 s, a flush each second.
        for ms in 0..60_000u64 {
            let now = t0 + Duration::from_millis(ms);
            let (w, s) = l.admit(Topic::HeadTimeout, Level::Warn, T, now);
            written += usize::from(w);
            summaries.extend(s);
            if ms % 1000 == 999 {
                l.flush(now, |s| summaries.push(s));
            }
        }
        // At 0, 10, ... 50 s; each after the first with the summary of the
        // 9,999 before it.
        assert_eq!(written, 6);
        assert_eq!(summaries.len(), 5, "{summaries:?}");
        assert!(summaries.iter().all(|s| s.held == 9_999));
        // A summary names its limiter's own interval.
        let mut five = Limiter::new(secs(5));
        five.admit(Topic::NoRoute, Level::Warn, T, t0);
        five.admit(Topic::NoRoute, Level::Warn, T, t0 + secs(1));
        let (_, s) = five.admit(Topic::NoRoute, Level::Warn, T, t0 + secs(6));
        let text = s.expect("the held line's summary").to_string();
        assert!(text.contains("at most one per 5s per reason"), "{text}");
        // Quiet now: a flush sums up the last interval, the next closes it
        // with nothing to say, and the next line is written at once.
        let later = t0 + secs(200);
        let mut more = Vec::new();
        l.flush(later, |s| more.push(s));
        assert_eq!(more.len(), 1);
        assert_eq!(more[0].held, 9_999);
        l.flush(later + secs(20), |s| more.push(s));
        assert_eq!(more.len(), 1);
        assert_eq!(
            l.admit(Topic::HeadTimeout, Level::Warn, T, later + secs(21)),
            (true, None)
        );
    }

    #[test]
    fn flush_sums_up_a_burst_once_its_interval_is_over() {
        let t0 = Instant::now();
        let mut l = Limiter::new(secs(10));
        for i in 0..100 {
            l.admit(
                Topic::TlsHandshake,
                Level::Info,
                T,
                t0 + Duration::from_millis(i),
            );
        }
        let mut out = Vec::new();
        l.flush(t0 + secs(9), |s| out.push(s));
        assert!(out.is_empty(), "not yet");
        l.flush(t0 + secs(10), |s| out.push(s));
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].topic, out[0].held, out[0].level),
            (Topic::TlsHandshake, 99, Level::Info)
        );
        // Lines in the interval the flush began are held, not written.
        assert_eq!(
            l.admit(Topic::TlsHandshake, Level::Info, T, t0 + secs(11)),
            (false, None)
        );
    }

    #[test]
    fn a_zero_interval_writes_everything() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Duration::ZERO);
        for _ in 0..10 {
            assert_eq!(l.admit(Topic::Origin, Level::Warn, T, t0), (true, None));
        }
        let mut none = Vec::new();
        l.flush(t0, |s| none.push(s));
        assert!(none.is_empty());
    }
}
