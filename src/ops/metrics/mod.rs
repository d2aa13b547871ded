//! Metrics: per-core counters ([`CoreMetrics`], here), their Prometheus
//! and stub_status-like rendering (`render`), and the small HTTP endpoint
//! that serves them (`endpoint`).
//!
//! Each core owns a [`CoreMetrics`] and is its only writer; any thread may
//! read it. A write is a Relaxed load then a Relaxed store (plain moves on
//! x86): with a single writer no update is lost, and the data path takes no
//! lock and no shared read-modify-write atomic. Readers sum all cores at
//! scrape time ([`Metrics::render`], [`Metrics::status`]). The only locks
//! are the per-core route and server lists, taken when a label is registered
//! (startup, configuration reload) and at scrape.

mod endpoint;
mod render;

pub use endpoint::{spawn_endpoint, StateFn, MAX_CLIENTS, READ_TIMEOUT, WRITE_TIMEOUT};

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Status codes 0..599 index the per-status counters; 0 holds any status
/// outside 100..=599.
const STATUSES: usize = 600;

/// A count one core writes and any thread may read.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add `n`. Only the owning core may call it (load then store).
    pub fn add(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    /// Add one. Only the owning core may call it.
    pub fn inc(&self) {
        self.add(1);
    }

    /// The count now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Copy a count kept elsewhere on the owning core (the completion
    /// ring's). Only the owning core may call it.
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
}

/// A level (open tunnels) one core raises and lowers: same single-writer
/// rule as [`Counter`]; signed, so that a reader sums cores correctly.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Raise by one. Only the owning core may call it.
    pub fn inc(&self) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(1), Ordering::Relaxed);
    }

    /// Lower by one. Only the owning core may call it.
    pub fn dec(&self) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_sub(1), Ordering::Relaxed);
    }

    /// The level now.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Set the level. Only the owning core may call it.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
}

/// Why a tunnel ended, for `ringway_tunnels_closed_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed (a FIN, or a close frame and then a FIN).
    Client,
    /// The backend closed.
    Backend,
    /// The client's connection was reset.
    ClientReset,
    /// The backend's connection was reset.
    BackendReset,
    /// The kernel gave up on the client: TCP keepalive probes or
    /// retransmissions went unanswered (`--tcp-keepalive`).
    ClientTimeout,
    /// The kernel gave up on the backend.
    BackendTimeout,
    /// Neither side sent anything for the idle timeout.
    IdleTimeout,
    /// One side had closed, the other did not within `--half-close-timeout`.
    HalfCloseTimeout,
    /// Closed by the drain at shutdown.
    Drain,
    /// Any other I/O error on either side.
    Error,
}

impl CloseReason {
    /// Every reason, in the order they are rendered.
    pub const ALL: [CloseReason; 10] = [
        CloseReason::Client,
        CloseReason::Backend,
        CloseReason::ClientReset,
        CloseReason::BackendReset,
        CloseReason::ClientTimeout,
        CloseReason::BackendTimeout,
        CloseReason::IdleTimeout,
        CloseReason::HalfCloseTimeout,
        CloseReason::Drain,
        CloseReason::Error,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Client => "client_close",
            CloseReason::Backend => "backend_close",
            CloseReason::ClientReset => "client_reset",
            CloseReason::BackendReset => "backend_reset",
            CloseReason::ClientTimeout => "client_timeout",
            CloseReason::BackendTimeout => "backend_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::HalfCloseTimeout => "half_close_timeout",
            CloseReason::Drain => "drain",
            CloseReason::Error => "error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One route's counters on one core (label: the route as written, e.g.
/// `/ws/` or `chat.example.com/ws/`).
#[derive(Debug, Default)]
pub struct RouteMetrics {
    /// Tunnels open through this route.
    pub active: Gauge,
    /// Tunnels ever opened through this route.
    pub tunnels: Counter,
}

/// The process-wide origin of [`ServerMetrics`]' millisecond timestamps.
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds from the epoch to `t` (rounded up if `round_up`, else down);
/// 0 if `t` is before it.
fn millis_since_epoch(t: Instant, round_up: bool) -> u64 {
    let d = t.saturating_duration_since(epoch());
    let ms = d.as_millis();
    let ms = if round_up && !d.as_nanos().is_multiple_of(1_000_000) {
        ms + 1
    } else {
        ms
    };
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// One upstream server's counters on one core.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    /// Tunnels open to it.
    pub active: Gauge,
    /// Failed connects (the balancer's `max_fails` events).
    pub failures: Counter,
    /// Until when this core's balancer skips it: milliseconds since
    /// [`EPOCH`]; 0 = not marked.
    unavailable_until: AtomicU64,
    /// Configured `down`.
    down: AtomicBool,
}

impl ServerMetrics {
    /// This core's balancer skips the server until `until`. An `until` in
    /// the past clears the mark.
    pub fn mark_unavailable(&self, until: Instant) {
        let ms = millis_since_epoch(until, true);
        self.unavailable_until.store(ms, Ordering::Relaxed);
    }

    /// The server is configured `down` (or no longer).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    /// Configured `down`, or marked unavailable until after `now`.
    pub fn is_unavailable(&self, now: Instant) -> bool {
        if self.down.load(Ordering::Relaxed) {
            return true;
        }
        let until = self.unavailable_until.load(Ordering::Relaxed);
        until != 0 && millis_since_epoch(now, false) < until
    }
}

/// Upper bounds of the connect-latency buckets, in microseconds; the last
/// bucket (`+Inf`) has none.
const BOUNDS_US: [u64; 13] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000,
];

/// The `le` labels of [`BOUNDS_US`], then `+Inf`.
const BOUND_LABELS: [&str; 14] = [
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
    "2.5", "5", "+Inf",
];

/// Backend connect latency: fixed buckets in seconds 0.0005, 0.001, 0.0025,
/// 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, +Inf; the sum kept
/// in microseconds. One core writes it, like a [`Counter`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket, not cumulative (rendering adds them up).
    buckets: [Counter; 14],
    /// Sum of all observations, microseconds.
    sum_us: Counter,
    count: Counter,
}

impl Histogram {
    /// Count one connect that took `d`.
    pub fn observe(&self, d: Duration) {
        let ns = d.as_nanos();
        let i = BOUNDS_US
            .iter()
            .position(|&b| ns <= u128::from(b) * 1_000)
            .unwrap_or(BOUNDS_US.len());
        self.buckets[i].inc();
        self.sum_us
            .add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.count.inc();
    }
}

/// A server's labels: (group, server).
type ServerKey = (Box<str>, Box<str>);

/// Everything one core counts.
#[derive(Debug)]
pub struct CoreMetrics {
    /// Connections accepted.
    pub accepted: Counter,
    /// Connections closed at once, unanswered: far over the room the
    /// open-files limit leaves.
    pub shed: Counter,
    /// Backend connects that failed for ringway's own want of resources
    /// (descriptors, memory, local ports): answered 503, never counted
    /// against the server.
    pub local_failures: Counter,
    /// Tunnels open on this core.
    pub active: Gauge,
    /// Handshakes answered 101 (tunnels opened).
    pub upgraded: Counter,
    /// By status: upgrade handshakes answered anything else (by ringway or
    /// the backend), including requests refused before their kind was
    /// known (400 bad head, 408 timeout...).
    handshake_errors: Box<[Counter]>,
    /// By status: plain (non-upgrade) requests proxied or served from files.
    request_status: Box<[Counter]>,
    /// TLS handshakes with clients that failed.
    pub tls_failures: Counter,
    /// Connections closed for their PROXY protocol header (bad, missing,
    /// from an untrusted peer).
    pub proxy_header_errors: Counter,
    /// Failed accepts (out of descriptors...).
    pub accept_errors: Counter,
    /// By [`CloseReason::index`].
    closed: [Counter; CloseReason::ALL.len()],
    /// Bytes client -> backend, counted as they move.
    pub bytes_up: Counter,
    /// Bytes backend -> client, counted as they move.
    pub bytes_down: Counter,
    /// The completion ring's receives that found no buffer free, and
    /// waited for one (copied from the ring at each sweep).
    pub ring_buffer_waits: Counter,
    /// Tunnel directions the completion ring handed over to splice as bulk.
    pub ring_bulk_handoffs: Counter,
    /// The completion ring's buffers free (waiting for bytes) at the last
    /// sweep; 0 without a ring.
    pub ring_buffers_free: Gauge,
    /// Backend connect latency.
    pub connect: Histogram,
    /// Registered routes; they live as long as the process, so that their
    /// counts survive a reload.
    routes: Mutex<Vec<(Box<str>, Arc<RouteMetrics>)>>,
    /// Registered servers by (group, server); kept like `routes`.
    servers: Mutex<Vec<(ServerKey, Arc<ServerMetrics>)>>,
}

/// The index of `status` in a per-status table: itself, or 0 when it is
/// not an HTTP status.
fn status_index(status: u16) -> usize {
    match usize::from(status) {
        s @ 100..STATUSES => s,
        _ => 0,
    }
}

fn statuses() -> Box<[Counter]> {
    (0..STATUSES).map(|_| Counter::default()).collect()
}

/// Lock, taking over a poisoned lock: the lists stay valid whatever panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for CoreMetrics {
    fn default() -> CoreMetrics {
        CoreMetrics {
            accepted: Counter::default(),
            shed: Counter::default(),
            local_failures: Counter::default(),
            active: Gauge::default(),
            upgraded: Counter::default(),
            handshake_errors: statuses(),
            request_status: statuses(),
            tls_failures: Counter::default(),
            proxy_header_errors: Counter::default(),
            accept_errors: Counter::default(),
            closed: Default::default(),
            bytes_up: Counter::default(),
            bytes_down: Counter::default(),
            ring_buffer_waits: Counter::default(),
            ring_bulk_handoffs: Counter::default(),
            ring_buffers_free: Gauge::default(),
            connect: Histogram::default(),
            routes: Mutex::new(Vec::new()),
            servers: Mutex::new(Vec::new()),
        }
    }
}

impl CoreMetrics {
    /// All zero, no routes or servers.
    pub fn new() -> CoreMetrics {
        CoreMetrics::default()
    }

    /// An upgrade handshake (or a request of unknown kind) was answered
    /// `status`; a status outside 100..=599 counts under 0.
    pub fn handshake_error(&self, status: u16) {
        self.handshake_errors[status_index(status)].inc();
    }

    /// A plain request was answered `status`; outside 100..=599 counts
    /// under 0.
    pub fn request(&self, status: u16) {
        self.request_status[status_index(status)].inc();
    }

    /// A tunnel ended.
    pub fn closed(&self, why: CloseReason) {
        self.closed[why.index()].inc();
    }

    /// The route's counters, made on first use; the same Arc for the same
    /// label (so counters survive a configuration reload). Takes a lock:
    /// call it when routes are built, not per connection.
    pub fn route(&self, label: &str) -> Arc<RouteMetrics> {
        let mut routes = lock(&self.routes);
        if let Some((_, m)) = routes.iter().find(|(l, _)| &**l == label) {
            return m.clone();
        }
        let m = Arc::new(RouteMetrics::default());
        routes.push((label.into(), m.clone()));
        m
    }

    /// The server's counters in `group`, made on first use; the same Arc for
    /// the same pair. Takes a lock, like [`CoreMetrics::route`].
    pub fn server(&self, group: &str, server: &str) -> Arc<ServerMetrics> {
        let mut servers = lock(&self.servers);
        if let Some((_, m)) = servers
            .iter()
            .find(|((g, s), _)| &**g == group && &**s == server)
        {
            return m.clone();
        }
        let m = Arc::new(ServerMetrics::default());
        servers.push(((group.into(), server.into()), m.clone()));
        m
    }

    /// Upgrade handshakes answered `status` so far.
    pub fn handshake_errors_with(&self, status: u16) -> u64 {
        self.handshake_errors[status_index(status)].get()
    }

    /// Plain requests answered `status` so far.
    pub fn requests_with(&self, status: u16) -> u64 {
        self.request_status[status_index(status)].get()
    }

    /// Tunnels that ended for `why` so far.
    pub fn closed_by(&self, why: CloseReason) -> u64 {
        self.closed[why.index()].get()
    }

    /// Handshakes refused: the sum of all error statuses.
    fn refused(&self) -> u64 {
        self.handshake_errors.iter().map(Counter::get).sum()
    }
}

/// What the process is doing, read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct State {
    /// Draining for shutdown: `/healthz` answers 503.
    pub draining: bool,
    /// Client connections open now, all cores.
    pub open_connections: u64,
}

/// All cores' counters, and the few process-wide ones.
#[derive(Debug)]
pub struct Metrics {
    /// One per worker, by core index.
    pub cores: Vec<Arc<CoreMetrics>>,
    /// Configuration reloads applied; written by the reload thread only.
    pub reloads_ok: AtomicU64,
    /// Configuration reloads rejected; written by the reload thread only.
    pub reloads_failed: AtomicU64,
    /// Lines the access log had to drop.
    pub access_log_dropped: AtomicU64,
    /// For `ringway_uptime_seconds`.
    started: Instant,
    /// The workers' I/O driver (`io_uring`, `epoll`), for
    /// `ringway_build_info`; set once they have started.
    driver: OnceLock<&'static str>,
}

impl Metrics {
    /// Zeroed counters for `workers` cores; the uptime starts now.
    pub fn new(workers: usize) -> Metrics {
        epoch();
        Metrics {
            cores: (0..workers).map(|_| Arc::new(CoreMetrics::new())).collect(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            access_log_dropped: AtomicU64::new(0),
            started: Instant::now(),
            driver: OnceLock::new(),
        }
    }

    /// Record the driver the workers run on (`io_uring`, `epoll`, or
    /// `mixed`); the first call wins.
    pub fn set_driver(&self, driver: &'static str) {
        let _ = self.driver.set(driver);
    }

    /// The workers' driver, `unknown` before they have started.
    pub fn driver(&self) -> &'static str {
        self.driver.get().copied().unwrap_or("unknown")
    }

    fn sum(&self, f: impl Fn(&CoreMetrics) -> u64) -> u64 {
        self.cores.iter().map(|c| f(c)).fold(0, u64::wrapping_add)
    }

    fn active(&self) -> i64 {
        self.cores
            .iter()
            .map(|c| c.active.get())
            .fold(0, i64::wrapping_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges() {
        let c = Counter::default();
        c.inc();
        c.add(41);
        assert_eq!(c.get(), 42);
        let g = Gauge::default();
        g.inc();
        g.inc();
        g.dec();
        assert_eq!(g.get(), 1);
        g.dec();
        g.dec();
        assert_eq!(g.get(), -1, "a gauge may go below zero on one core");
    }

    #[test]
    fn routes_and_servers_are_made_once() {
        let c = CoreMetrics::new();
        let a = c.route("/ws/");
        a.tunnels.inc();
        assert!(Arc::ptr_eq(&a, &c.route("/ws/")));
        assert!(!Arc::ptr_eq(&a, &c.route("/other/")));
        assert_eq!(c.route("/ws/").tunnels.get(), 1);
        let s = c.server("chat", "127.0.0.1:8080");
        assert!(Arc::ptr_eq(&s, &c.server("chat", "127.0.0.1:8080")));
        assert!(!Arc::ptr_eq(&s, &c.server("other", "127.0.0.1:8080")));
    }

    #[test]
    fn statuses_out_of_range_count_under_zero() {
        let c = CoreMetrics::new();
        for s in [0, 99, 600, u16::MAX] {
            c.handshake_error(s);
            c.request(s);
        }
        c.handshake_error(502);
        c.request(599);
        assert_eq!(c.handshake_errors[0].get(), 4);
        assert_eq!(c.request_status[0].get(), 4);
        assert_eq!(c.handshake_errors[502].get(), 1);
        assert_eq!(c.request_status[599].get(), 1);
        assert_eq!(c.refused(), 5);
    }
}
