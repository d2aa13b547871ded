//! Metrics: per-core counters, their Prometheus rendering, a short
//! stub_status-like text, and the small HTTP endpoint that serves both.
//!
//! Each core owns a [`CoreMetrics`] and is its only writer; any thread may
//! read it. A write is a Relaxed load then a Relaxed store (plain moves on
//! x86): with a single writer no update is lost, and the data path takes no
//! lock and no shared read-modify-write atomic. Readers sum all cores at
//! scrape time ([`Metrics::render`], [`Metrics::status`]). The only locks
//! are the per-core route and server lists, taken when a label is registered
//! (startup, configuration reload) and at scrape.
//!
//! [`spawn_endpoint`] serves `/metrics`, `/status` and `/healthz` from a
//! blocking thread of its own, one connection at a time, off the workers'
//! cores' runtimes.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::io::{Read, Write};
use std::net::{Shutdown as NetShutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the endpoint waits for a whole request head, from accept.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one write of a response may block.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest request head the endpoint reads.
const MAX_HEAD: usize = 8 * 1024;

/// How long, after answering, the endpoint reads and drops what the client
/// still sends, so that closing does not reset the connection under the
/// answer.
const LINGER: Duration = Duration::from_millis(100);

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
}

/// Why a tunnel ended, for `ringway_tunnels_closed_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed (or sent a close frame).
    Client,
    /// The backend closed.
    Backend,
    /// Neither side sent anything for the idle timeout.
    IdleTimeout,
    /// Closed by the drain at shutdown.
    Drain,
    /// An I/O error on either side.
    Error,
}

impl CloseReason {
    /// Every reason, in the order they are rendered.
    pub const ALL: [CloseReason; 5] = [
        CloseReason::Client,
        CloseReason::Backend,
        CloseReason::IdleTimeout,
        CloseReason::Drain,
        CloseReason::Error,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Client => "client_close",
            CloseReason::Backend => "backend_close",
            CloseReason::IdleTimeout => "idle_timeout",
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
    let ms = if round_up && d.as_nanos() % 1_000_000 != 0 {
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
    /// By [`CloseReason::index`].
    closed: [Counter; 5],
    /// Bytes client -> backend, counted as they move.
    pub bytes_up: Counter,
    /// Bytes backend -> client, counted as they move.
    pub bytes_down: Counter,
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
            active: Gauge::default(),
            upgraded: Counter::default(),
            handshake_errors: statuses(),
            request_status: statuses(),
            tls_failures: Counter::default(),
            closed: Default::default(),
            bytes_up: Counter::default(),
            bytes_down: Counter::default(),
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
}

/// Escape a label value: backslash, double quote and newline.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// The text being rendered. Writing to a `String` cannot fail, so results
/// are dropped.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family of one sample without labels.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
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
        }
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

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self, state: State) -> String {
        let mut o = Out(String::with_capacity(4096));
        let now = Instant::now();

        o.single(
            "ringway_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            self.sum(|c| c.accepted.get()),
        );
        o.single(
            "ringway_connections_open",
            "gauge",
            "Client connections open now.",
            state.open_connections,
        );
        o.single(
            "ringway_tunnels_active",
            "gauge",
            "WebSocket tunnels open now.",
            self.active(),
        );
        o.family(
            "ringway_core_tunnels_active",
            "gauge",
            "WebSocket tunnels open now, by worker core.",
        );
        for (i, c) in self.cores.iter().enumerate() {
            let core = i.to_string();
            o.sample(
                "ringway_core_tunnels_active",
                &[("core", &core)],
                c.active.get(),
            );
        }

        // Routes and servers: summed by label over cores, sorted.
        let mut routes: BTreeMap<Box<str>, (i64, u64)> = BTreeMap::new();
        let mut servers: BTreeMap<ServerKey, (i64, u64, bool)> = BTreeMap::new();
        for c in &self.cores {
            for (label, m) in lock(&c.routes).iter() {
                let e = routes.entry(label.clone()).or_default();
                e.0 = e.0.wrapping_add(m.active.get());
                e.1 = e.1.wrapping_add(m.tunnels.get());
            }
            for (key, m) in lock(&c.servers).iter() {
                let e = servers.entry(key.clone()).or_default();
                e.0 = e.0.wrapping_add(m.active.get());
                e.1 = e.1.wrapping_add(m.failures.get());
                e.2 |= m.is_unavailable(now);
            }
        }
        o.family(
            "ringway_route_tunnels_active",
            "gauge",
            "WebSocket tunnels open now, by route.",
        );
        for (route, (active, _)) in &routes {
            o.sample("ringway_route_tunnels_active", &[("route", route)], active);
        }
        o.family(
            "ringway_route_tunnels_total",
            "counter",
            "WebSocket tunnels opened, by route.",
        );
        for (route, (_, total)) in &routes {
            o.sample("ringway_route_tunnels_total", &[("route", route)], total);
        }
        type Pick = fn(&(i64, u64, bool)) -> i128;
        let families: [(&str, &str, &str, Pick); 3] = [
            (
                "ringway_upstream_tunnels_active",
                "gauge",
                "WebSocket tunnels open now, by upstream server.",
                |v| i128::from(v.0),
            ),
            (
                "ringway_upstream_failures_total",
                "counter",
                "Failed connects to an upstream server.",
                |v| i128::from(v.1),
            ),
            (
                "ringway_upstream_unavailable",
                "gauge",
                "1 if the server is configured down or some core skips it after failures.",
                |v| i128::from(v.2),
            ),
        ];
        for (name, kind, help, pick) in families {
            o.family(name, kind, help);
            for ((group, server), v) in &servers {
                o.sample(name, &[("group", group), ("server", server)], pick(v));
            }
        }

        o.family(
            "ringway_handshakes_total",
            "counter",
            "WebSocket handshakes, upgraded or refused (by status).",
        );
        o.sample(
            "ringway_handshakes_total",
            &[("result", "upgraded")],
            self.sum(|c| c.upgraded.get()),
        );
        for status in 0..STATUSES {
            let n = self.sum(|c| c.handshake_errors[status].get());
            if n != 0 {
                let s = status.to_string();
                o.sample(
                    "ringway_handshakes_total",
                    &[("result", "error"), ("status", &s)],
                    n,
                );
            }
        }
        o.family(
            "ringway_requests_total",
            "counter",
            "Plain HTTP requests answered, by status.",
        );
        for status in 0..STATUSES {
            let n = self.sum(|c| c.request_status[status].get());
            if n != 0 {
                let s = status.to_string();
                o.sample("ringway_requests_total", &[("status", &s)], n);
            }
        }
        o.single(
            "ringway_tls_handshake_failures_total",
            "counter",
            "TLS handshakes with clients that failed.",
            self.sum(|c| c.tls_failures.get()),
        );
        o.family(
            "ringway_tunnels_closed_total",
            "counter",
            "WebSocket tunnels closed, by reason.",
        );
        for why in CloseReason::ALL {
            o.sample(
                "ringway_tunnels_closed_total",
                &[("reason", why.label())],
                self.sum(|c| c.closed[why.index()].get()),
            );
        }
        o.family(
            "ringway_bytes_total",
            "counter",
            "Bytes tunnelled: up is client to backend, down is backend to client.",
        );
        o.sample(
            "ringway_bytes_total",
            &[("direction", "up")],
            self.sum(|c| c.bytes_up.get()),
        );
        o.sample(
            "ringway_bytes_total",
            &[("direction", "down")],
            self.sum(|c| c.bytes_down.get()),
        );

        let h = "ringway_upstream_connect_seconds";
        o.family(h, "histogram", "Time to connect to an upstream server.");
        let mut cumulative = 0u64;
        for (i, le) in BOUND_LABELS.iter().enumerate() {
            cumulative = cumulative.wrapping_add(self.sum(|c| c.connect.buckets[i].get()));
            o.sample(&format!("{h}_bucket"), &[("le", le)], cumulative);
        }
        let sum_us = self.sum(|c| c.connect.sum_us.get());
        o.sample(&format!("{h}_sum"), &[], seconds(sum_us));
        o.sample(
            &format!("{h}_count"),
            &[],
            self.sum(|c| c.connect.count.get()),
        );

        o.family(
            "ringway_config_reloads_total",
            "counter",
            "Configuration reloads, applied or rejected.",
        );
        o.sample(
            "ringway_config_reloads_total",
            &[("result", "ok")],
            self.reloads_ok.load(Ordering::Relaxed),
        );
        o.sample(
            "ringway_config_reloads_total",
            &[("result", "failed")],
            self.reloads_failed.load(Ordering::Relaxed),
        );
        o.single(
            "ringway_access_log_dropped_lines_total",
            "counter",
            "Access log lines dropped because the writer fell behind.",
            self.access_log_dropped.load(Ordering::Relaxed),
        );
        o.single(
            "ringway_draining",
            "gauge",
            "1 while draining for shutdown.",
            u8::from(state.draining),
        );
        o.single(
            "ringway_workers",
            "gauge",
            "Worker threads (cores).",
            self.cores.len(),
        );
        o.single(
            "ringway_uptime_seconds",
            "gauge",
            "Seconds since the process started.",
            format_args!("{:.3}", self.started.elapsed().as_secs_f64()),
        );
        o.0
    }

    /// A few lines for people, like nginx's stub_status.
    pub fn status(&self, state: State) -> String {
        format!(
            "Active connections: {}\nActive tunnels: {}\naccepted upgraded refused\n {} {} {}\n\
             Reloads: {} ok, {} failed\nState: {}\n",
            state.open_connections,
            self.active(),
            self.sum(|c| c.accepted.get()),
            self.sum(|c| c.upgraded.get()),
            self.sum(CoreMetrics::refused),
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
            if state.draining {
                "draining"
            } else {
                "accepting"
            },
        )
    }
}

/// Microseconds as exact decimal seconds.
fn seconds(us: u64) -> String {
    let (s, frac) = (us / 1_000_000, us % 1_000_000);
    if frac == 0 {
        return s.to_string();
    }
    let f = format!("{frac:06}");
    format!("{s}.{}", f.trim_end_matches('0'))
}

/// Most requests the endpoint answers at once; more are closed unanswered.
pub const MAX_CLIENTS: usize = 8;

/// How the endpoint learns what the process is doing.
pub type StateFn = Arc<dyn Fn() -> State + Send + Sync>;

/// Serve `/metrics`, `/status` and `/healthz` on `listener` from a thread of
/// its own ("ringway-metrics"), until the process exits. `state` is called
/// per request. Each request is answered on a short-lived thread, at most
/// [`MAX_CLIENTS`] at once, so a client that sends nothing (it has
/// [`READ_TIMEOUT`]) does not hold up the balancer's health checks.
pub fn spawn_endpoint(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    state: StateFn,
) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(false)?;
    std::thread::Builder::new()
        .name("ringway-metrics".into())
        .spawn(move || serve(&listener, &metrics, &state))
}

fn serve(listener: &TcpListener, metrics: &Arc<Metrics>, state: &StateFn) {
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    log::debug!("metrics endpoint: {peer}: {MAX_CLIENTS} requests already open");
                    continue;
                }
                let (metrics, state, done) = (metrics.clone(), state.clone(), busy.clone());
                let spawned = std::thread::Builder::new()
                    .name("ringway-metrics-req".into())
                    .spawn(move || {
                        if let Err(e) = answer(stream, &metrics, &*state) {
                            log::debug!("metrics endpoint: {peer}: {e}");
                        }
                        done.fetch_sub(1, Ordering::AcqRel);
                    });
                if let Err(e) = spawned {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    log::warn!("metrics endpoint: cannot start a thread: {e}");
                }
            }
            Err(e) => {
                // EMFILE and the like: wait for descriptors to come back.
                log::warn!("metrics endpoint: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A response of the endpoint.
struct Reply {
    /// Code and reason, `200 OK`.
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn text(status: &'static str, body: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// What the client asked for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    /// A GET (`head_only` false) or HEAD of `path`, query removed.
    Get { head_only: bool, path: String },
    /// Any other method: 405.
    OtherMethod,
    /// A malformed or oversized head: 400.
    Bad,
}

/// Read one request head within [`READ_TIMEOUT`] of being called. A client
/// that stops sending or closes first is an error: there is no one to
/// answer.
fn read_head(stream: &mut TcpStream) -> std::io::Result<Ask> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Ok(Ask::Bad);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf[filled..])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        if let Some(ask) = parse_head(&buf[..filled]) {
            return Ok(ask);
        }
    }
}

/// The request in `buf`, or `None` while its head is incomplete.
fn parse_head(buf: &[u8]) -> Option<Ask> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Ask::Bad),
        Ok(httparse::Status::Complete(_)) => {
            let (Some(method), Some(path)) = (req.method, req.path) else {
                return Some(Ask::Bad);
            };
            let path = path.split('?').next().unwrap_or(path).to_string();
            Some(match method {
                "GET" => Ask::Get {
                    head_only: false,
                    path,
                },
                "HEAD" => Ask::Get {
                    head_only: true,
                    path,
                },
                _ => Ask::OtherMethod,
            })
        }
    }
}

fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    state: &dyn Fn() -> State,
) -> std::io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let (head_only, reply) = match read_head(&mut stream)? {
        Ask::Bad => (false, Reply::text("400 Bad Request", "bad request\n")),
        Ask::OtherMethod => (
            false,
            Reply::text("405 Method Not Allowed", "method not allowed\n"),
        ),
        Ask::Get { head_only, path } => (head_only, route(&path, metrics, state)),
    };
    let allow = if reply.status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    if !head_only {
        out.push_str(&reply.body);
    }
    stream.write_all(out.as_bytes())?;
    linger(&mut stream);
    Ok(())
}

fn route(path: &str, metrics: &Metrics, state: &dyn Fn() -> State) -> Reply {
    match path {
        "/metrics" => Reply {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics.render(state()),
        },
        "/status" => Reply {
            status: "200 OK",
            content_type: "text/plain; charset=utf-8",
            body: metrics.status(state()),
        },
        "/healthz" if state().draining => Reply::text("503 Service Unavailable", "draining\n"),
        "/healthz" => Reply::text("200 OK", "ok\n"),
        _ => Reply::text("404 Not Found", "not found\n"),
    }
}

/// Close our side, then read and drop what the client still sends for a
/// short while, so that unread bytes do not turn the close into a reset
/// that destroys the answer.
fn linger(stream: &mut TcpStream) {
    if stream.shutdown(NetShutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < 64 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sample line of `text` (no comments).
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    fn has(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

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
    fn histogram_buckets_sum_and_count() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100)); // le 0.0005
        h.observe(Duration::from_micros(500)); // le 0.0005: bounds include
        h.observe(Duration::from_nanos(500_001)); // le 0.001
        h.observe(Duration::from_millis(30)); // le 0.05
        h.observe(Duration::from_secs(10)); // +Inf
        let per: Vec<u64> = h.buckets.iter().map(Counter::get).collect();
        assert_eq!(per, [2, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(h.count.get(), 5);
        assert_eq!(h.sum_us.get(), 100 + 500 + 500 + 30_000 + 10_000_000);

        let m = Metrics::new(1);
        m.cores[0].connect.observe(Duration::from_micros(300));
        m.cores[0].connect.observe(Duration::from_millis(2));
        m.cores[0].connect.observe(Duration::from_secs(7));
        let text = m.render(State::default());
        let b = "ringway_upstream_connect_seconds_bucket";
        for (le, n) in [
            ("0.0005", 1),
            ("0.001", 1),
            ("0.0025", 2),
            ("2.5", 2),
            ("5", 2),
            ("+Inf", 3),
        ] {
            let line = format!("{b}{{le=\"{le}\"}} {n}");
            assert!(has(&text, &line), "{line}\n{text}");
        }
        assert_eq!(text.matches(b).count(), 14);
        assert!(has(&text, "ringway_upstream_connect_seconds_sum 7.0023"));
        assert!(has(&text, "ringway_upstream_connect_seconds_count 3"));
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(1_000_000), "1");
        assert_eq!(seconds(1_500), "0.0015");
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

    #[test]
    fn render_sums_over_cores() {
        let m = Metrics::new(2);
        let (a, b) = (&m.cores[0], &m.cores[1]);
        for _ in 0..3 {
            a.accepted.inc();
        }
        b.accepted.add(2);
        a.active.inc();
        a.active.inc();
        b.active.inc();
        a.upgraded.add(3);
        b.handshake_error(502);
        a.handshake_error(400);
        b.handshake_error(400);
        a.request(200);
        a.tls_failures.inc();
        a.closed(CloseReason::IdleTimeout);
        b.closed(CloseReason::IdleTimeout);
        b.closed(CloseReason::Client);
        a.bytes_up.add(10);
        b.bytes_up.add(5);
        b.bytes_down.add(7);
        // "/ws/" on both cores, "/only-b/" on one.
        let ra = a.route("/ws/");
        ra.active.inc();
        ra.tunnels.inc();
        let rb = b.route("/ws/");
        rb.active.inc();
        rb.tunnels.add(2);
        b.route("/only-b/").tunnels.inc();
        let sa = a.server("chat", "127.0.0.1:8080");
        sa.active.inc();
        sa.failures.inc();
        b.server("chat", "127.0.0.1:8080").failures.add(2);
        b.server("chat", "127.0.0.1:8081");
        m.reloads_ok.fetch_add(1, Ordering::Relaxed);
        m.access_log_dropped.fetch_add(9, Ordering::Relaxed);

        let text = m.render(State {
            draining: true,
            open_connections: 4,
        });
        for line in [
            "ringway_connections_accepted_total 5",
            "ringway_connections_open 4",
            "ringway_tunnels_active 3",
            "ringway_core_tunnels_active{core=\"0\"} 2",
            "ringway_core_tunnels_active{core=\"1\"} 1",
            "ringway_route_tunnels_active{route=\"/ws/\"} 2",
            "ringway_route_tunnels_total{route=\"/ws/\"} 3",
            "ringway_route_tunnels_active{route=\"/only-b/\"} 0",
            "ringway_route_tunnels_total{route=\"/only-b/\"} 1",
            "ringway_upstream_tunnels_active{group=\"chat\",server=\"127.0.0.1:8080\"} 1",
            "ringway_upstream_failures_total{group=\"chat\",server=\"127.0.0.1:8080\"} 3",
            "ringway_upstream_failures_total{group=\"chat\",server=\"127.0.0.1:8081\"} 0",
            "ringway_upstream_unavailable{group=\"chat\",server=\"127.0.0.1:8080\"} 0",
            "ringway_handshakes_total{result=\"upgraded\"} 3",
            "ringway_handshakes_total{result=\"error\",status=\"502\"} 1",
            "ringway_handshakes_total{result=\"error\",status=\"400\"} 2",
            "ringway_requests_total{status=\"200\"} 1",
            "ringway_tls_handshake_failures_total 1",
            "ringway_tunnels_closed_total{reason=\"client_close\"} 1",
            "ringway_tunnels_closed_total{reason=\"backend_close\"} 0",
            "ringway_tunnels_closed_total{reason=\"idle_timeout\"} 2",
            "ringway_tunnels_closed_total{reason=\"drain\"} 0",
            "ringway_tunnels_closed_total{reason=\"error\"} 0",
            "ringway_bytes_total{direction=\"up\"} 15",
            "ringway_bytes_total{direction=\"down\"} 7",
            "ringway_upstream_connect_seconds_bucket{le=\"+Inf\"} 0",
            "ringway_upstream_connect_seconds_sum 0",
            "ringway_upstream_connect_seconds_count 0",
            "ringway_config_reloads_total{result=\"ok\"} 1",
            "ringway_config_reloads_total{result=\"failed\"} 0",
            "ringway_access_log_dropped_lines_total 9",
            "ringway_draining 1",
            "ringway_workers 2",
            "# TYPE ringway_upstream_connect_seconds histogram",
            "# TYPE ringway_handshakes_total counter",
            "# TYPE ringway_tunnels_active gauge",
        ] {
            assert!(has(&text, line), "missing {line:?} in\n{text}");
        }
        // Only statuses seen; each route and server once.
        assert_eq!(text.matches("result=\"error\"").count(), 2);
        assert_eq!(text.matches("ringway_requests_total{").count(), 1);
        assert_eq!(text.matches("route=\"/ws/\"").count(), 2);
        assert!(text
            .lines()
            .any(|l| l.starts_with("ringway_uptime_seconds ")));
        // Every sample's family has a HELP and a TYPE.
        for l in samples(&text) {
            let name = l.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| f.ends_with("_seconds"))
                .unwrap_or(name);
            assert!(text.contains(&format!("# HELP {family} ")), "{family}");
            assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
        }

        let status = m.status(State {
            draining: false,
            open_connections: 4,
        });
        assert_eq!(
            status,
            "Active connections: 4\nActive tunnels: 3\naccepted upgraded refused\n 5 3 3\n\
             Reloads: 1 ok, 0 failed\nState: accepting\n"
        );
        assert!(m
            .status(State {
                draining: true,
                ..State::default()
            })
            .ends_with("State: draining\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
        let m = Metrics::new(1);
        m.cores[0].route("q\"\\\n").tunnels.inc();
        let text = m.render(State::default());
        assert!(
            has(&text, r#"ringway_route_tunnels_total{route="q\"\\\n"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn unavailable_until_it_passes() {
        let m = Metrics::new(2);
        let line = |m: &Metrics, v: u8| {
            let text = m.render(State::default());
            has(
                &text,
                &format!("ringway_upstream_unavailable{{group=\"g\",server=\"s\"}} {v}"),
            )
        };
        let a = m.cores[0].server("g", "s");
        let b = m.cores[1].server("g", "s");
        assert!(line(&m, 0));
        let now = Instant::now();
        b.mark_unavailable(now + Duration::from_secs(60));
        assert!(b.is_unavailable(now) && !a.is_unavailable(now));
        assert!(line(&m, 1), "one core is enough");
        b.mark_unavailable(Instant::now() + Duration::from_millis(5));
        assert!(line(&m, 1));
        std::thread::sleep(Duration::from_millis(10));
        assert!(line(&m, 0), "the mark has passed");
        assert!(!b.is_unavailable(Instant::now()));
        if let Some(past) = Instant::now().checked_sub(Duration::from_secs(1)) {
            b.mark_unavailable(past);
            assert!(line(&m, 0));
        }
        a.set_down(true);
        assert!(a.is_unavailable(Instant::now()) && line(&m, 1));
        a.set_down(false);
        assert!(line(&m, 0));
    }

    #[test]
    fn heads() {
        let get = |head_only, path: &str| Ask::Get {
            head_only,
            path: path.into(),
        };
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\n"), None);
        assert_eq!(
            parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(get(false, "/metrics"))
        );
        assert_eq!(
            parse_head(b"HEAD /status HTTP/1.0\r\n\r\n"),
            Some(get(true, "/status"))
        );
        assert_eq!(
            parse_head(b"DELETE /metrics HTTP/1.1\r\n\r\n"),
            Some(Ask::OtherMethod)
        );
        assert_eq!(parse_head(b"\x00garbage\r\n\r\n"), Some(Ask::Bad));
    }

    // The endpoint, over real sockets.

    struct Answer {
        status: u16,
        head: String,
        body: String,
    }

    fn ask(addr: std::net::SocketAddr, request: &[u8]) -> Answer {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(READ_TIMEOUT * 2)).unwrap();
        s.write_all(request).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("a whole head");
        let status = head[9..12].parse().unwrap();
        Answer {
            status,
            head: head.to_string(),
            body: body.to_string(),
        }
    }

    fn endpoint() -> (std::net::SocketAddr, Arc<Metrics>, Arc<AtomicBool>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new(2));
        let draining = Arc::new(AtomicBool::new(false));
        let d = draining.clone();
        let state = Arc::new(move || State {
            draining: d.load(Ordering::SeqCst),
            open_connections: 7,
        });
        spawn_endpoint(listener, metrics.clone(), state).unwrap();
        (addr, metrics, draining)
    }

    #[test]
    fn endpoint_answers() {
        let (addr, metrics, draining) = endpoint();
        metrics.cores[1].active.inc();

        let a = ask(addr, b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(a.status, 200);
        assert!(a
            .head
            .contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(a.head.contains("\r\nConnection: close"));
        assert!(a
            .head
            .contains(&format!("\r\nContent-Length: {}\r\n", a.body.len())));
        assert!(has(&a.body, "ringway_tunnels_active 1"), "{}", a.body);
        assert!(has(&a.body, "ringway_connections_open 7"));

        let s = ask(addr, b"GET /status HTTP/1.0\r\n\r\n");
        assert_eq!(s.status, 200);
        assert!(s.body.starts_with("Active connections: 7\n"), "{}", s.body);

        let h = ask(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
        draining.store(true, Ordering::SeqCst);
        let h = ask(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!((h.status, h.body.as_str()), (503, "draining\n"));

        let head = ask(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        assert!(!head.head.contains("Content-Length: 0\r\n"));

        let post = ask(
            addr,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert_eq!(post.status, 405);
        assert!(post.head.contains("\r\nAllow: GET, HEAD\r\n"));
        assert_eq!(ask(addr, b"GET /nope HTTP/1.1\r\n\r\n").status, 404);
        assert_eq!(ask(addr, b"garbage garbage\r\n\r\n").status, 400);
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 100, b'a');
        assert_eq!(ask(addr, &huge).status, 400, "oversized head");
    }

    #[test]
    fn a_silent_client_does_not_stop_the_endpoint() {
        let (addr, _, _) = endpoint();
        let start = Instant::now();
        let silent: Vec<_> = (1..MAX_CLIENTS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        // Give the endpoint time to take the silent ones first.
        std::thread::sleep(Duration::from_millis(50));
        let a = ask(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!(a.status, 200);
        let took = start.elapsed();
        assert!(took < READ_TIMEOUT, "not served beside them: {took:?}");
        drop(silent);
    }
}
