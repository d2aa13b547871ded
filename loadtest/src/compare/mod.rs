//! `ringway-compare`: ringway against nginx, same backend, same load.
//!
//! One run starts the echo backend (`ringway-echo`), ringway (`--workers 1`)
//! and nginx (`worker_processes 1`, the seeds' WebSocket directives), both
//! proxies pinned to the proxy CPU and the backend and the generator to the
//! load CPU. Every scenario is run with `ringway-load` against three targets,
//! `direct` (the backend itself), `ringway` and `nginx`, in an order that
//! rotates from round to round, so drift on a noisy machine hits all alike.
//! The medians over the rounds become one table of ratios, one JSON file
//! with every raw report, and one SVG chart ([`chart`]).
//!
//! The wss:// scenarios ([`wss`]) run against the two proxies only, both
//! serving one certificate made for the run; nginx's configuration is
//! [`nginx`]'s. The fleet scenario is `ringway-load fleet`
//! ([`crate::fleet`]): many tunnels held, a few busy.
//!
//! Every child is stopped when the runner ends, by error or by a signal
//! (SIGINT/SIGTERM), and every wait is bounded.

mod chart;
mod nginx;
pub mod wss;

use std::fmt::Write as _;
use std::fs::File;
use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use ringway::config::parse_duration;
use ringway::server::shutdown::Shutdown;
use serde_json::{json, Value};

use crate::perfstat::signal;
use crate::procstat;

pub use chart::{svg_chart, xml_escape, Bar};
pub use nginx::{
    cpu_mask, nginx_config, parse_nginx_size, parse_nginx_version, tls_directives, NginxConf,
    NginxTls,
};
use nginx::{find_or_install_nginx, NginxBin};
use wss::{TlsVariant, Wss};

/// Flags of `ringway-compare` (`loadtest/compare` passes the binaries).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "ringway-compare",
    version,
    about = "Run the load scenarios against the echo backend directly, through ringway and \
             through nginx; print a table of ratios, write JSON and an SVG chart"
)]
pub struct Options {
    /// Short runs (3 rounds of 1 s, 1000 idle connections, a 2000-tunnel
    /// fleet): under 4 minutes.
    #[arg(long)]
    pub quick: bool,
    /// Rounds; each runs every scenario against every target [3].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Measured time of each run [10s, quick 1s].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Warm-up before each run's window [1s, quick 300ms].
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Scenarios to run, comma-separated: echo, open, bulk, connect, idle;
    /// wss-connect, wss-resume, wss12-connect, wss12-resume, wss-echo,
    /// wss-bulk, wss-idle (or `wss` for all seven); fleet.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "echo,open,bulk,connect,idle,wss,fleet"
    )]
    pub scenarios: Vec<String>,
    /// CPU both proxies are pinned to.
    #[arg(long, default_value_t = 0)]
    pub proxy_cpu: usize,
    /// CPU of the echo backend and the load generator.
    #[arg(long, default_value_t = 1)]
    pub load_cpu: usize,
    /// Echo connections (closed and open loop).
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Echo payload bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Open-loop rate, messages per second in total.
    #[arg(long, default_value_t = 20000.0)]
    pub rate: f64,
    /// Connections in progress at once in the connect scenario.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Idle connections held (ws:// and wss://) [8000, quick 1000]; a
    /// proxy spends 2 descriptors on each.
    #[arg(long)]
    pub idle_connections: Option<usize>,
    /// Fleet: tunnels held [as many as the open-files limits allow (about
    /// 9,900 at 20,000), quick 2000].
    #[arg(long)]
    pub fleet_tunnels: Option<usize>,
    /// Fleet: share of the tunnels that send, 0 to 1.
    #[arg(long, default_value_t = crate::fleet::DEFAULT_ACTIVE_SHARE,
          value_parser = crate::fleet::parse_share)]
    pub fleet_active: f64,
    /// Fleet: messages per second over all active tunnels.
    #[arg(long, default_value_t = crate::fleet::DEFAULT_RATE,
          value_parser = crate::fleet::parse_rate)]
    pub fleet_rate: f64,
    /// The ringway binary [next to this one].
    #[arg(long)]
    pub ringway: Option<PathBuf>,
    /// An extra flag for ringway, appended to its command line (repeatable),
    /// for A/B runs of its options: `--ringway-arg=--tunnel-io=readiness`.
    #[arg(long = "ringway-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub ringway_arg: Vec<String>,
    /// The ringway-load binary [next to this one].
    #[arg(long)]
    pub load: Option<PathBuf>,
    /// The ringway-echo binary [next to this one].
    #[arg(long)]
    pub echo: Option<PathBuf>,
    /// The nginx binary [found on PATH or in /usr/sbin, else installed].
    #[arg(long)]
    pub nginx: Option<PathBuf>,
    /// nginx `proxy_buffer_size` (e.g. 64k): the buffer of each direction of
    /// each nginx tunnel [nginx's default, one memory page]. ringway's
    /// `--buffer-size` is one per core.
    #[arg(long, value_parser = parse_nginx_size)]
    pub nginx_buffer_size: Option<String>,
    /// Leave nginx out (direct and ringway only).
    #[arg(long)]
    pub no_nginx: bool,
    /// Do not install nginx with apt-get when it is missing.
    #[arg(long)]
    pub no_install: bool,
    /// Directory of the default output files (given twice, the last wins:
    /// loadtest/compare passes loadtest/results before the caller's flags).
    #[arg(
        long,
        default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"),
        overrides_with = "results_dir"
    )]
    pub results_dir: PathBuf,
    /// JSON output [RESULTS_DIR/compare-<UTC time>.json].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// SVG chart [the JSON path with .svg].
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Keep the temporary directory (nginx config and logs, raw reports).
    #[arg(long)]
    pub keep_temp: bool,
    /// Do not count the proxies' system calls (`ringway-load --no-perf`):
    /// the CPU figures then carry no `perf stat` at all.
    #[arg(long)]
    pub no_perf: bool,
}

// ---------------------------------------------------------------------------
// Scenarios and figures

/// One load scenario of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Closed loop: 64 B messages, one in flight per connection.
    Echo,
    /// Open loop at a fixed total rate: latency at equal load.
    Open,
    /// 1 MiB messages over one connection, two in flight.
    Bulk,
    /// Handshake, one echo, close; again and again.
    Connect,
    /// Many idle connections held: memory per tunnel.
    Idle,
    /// One of the wss:// scenarios (proxies only).
    Wss(Wss),
    /// Many tunnels held, a few of them busy at a fixed rate (proxies only).
    Fleet,
}

impl Scenario {
    pub const ALL: [Scenario; 13] = [
        Scenario::Echo,
        Scenario::Open,
        Scenario::Bulk,
        Scenario::Connect,
        Scenario::Idle,
        Scenario::Wss(Wss::Connect13),
        Scenario::Wss(Wss::Resume13),
        Scenario::Wss(Wss::Connect12),
        Scenario::Wss(Wss::Resume12),
        Scenario::Wss(Wss::Echo),
        Scenario::Wss(Wss::Bulk),
        Scenario::Wss(Wss::Idle),
        Scenario::Fleet,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Echo => "echo",
            Scenario::Open => "open",
            Scenario::Bulk => "bulk",
            Scenario::Connect => "connect",
            Scenario::Idle => "idle",
            Scenario::Wss(w) => w.name(),
            Scenario::Fleet => "fleet",
        }
    }

    /// One name, or `wss` for every wss:// scenario.
    pub fn parse(s: &str) -> Result<Vec<Scenario>> {
        let s = s.trim();
        if s == "wss" {
            return Ok(Wss::ALL.into_iter().map(Scenario::Wss).collect());
        }
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.name() == s)
            .map(|sc| vec![sc])
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|sc| sc.name()).collect();
                anyhow!("unknown scenario {s:?} ({}, or wss)", names.join(", "))
            })
    }

    /// The wss:// set-up, for a wss:// scenario.
    pub fn tls(self) -> Option<TlsVariant> {
        match self {
            Scenario::Wss(w) => Some(w.variant()),
            _ => None,
        }
    }

    /// Runs against `t`? The backend serves ws:// only, and the fleet's
    /// figures are the proxies'.
    pub fn runs_on(self, t: Target) -> bool {
        t != Target::Direct || !matches!(self, Scenario::Wss(_) | Scenario::Fleet)
    }

    /// The ws:// scenario a wss:// one runs underneath; itself otherwise.
    pub fn base(self) -> Scenario {
        match self {
            Scenario::Wss(w) => w.base(),
            sc => sc,
        }
    }

    /// Each run gets a fresh proxy process, so that its memory growth is
    /// the run's own.
    pub fn fresh_proxy(self) -> bool {
        matches!(self.base(), Scenario::Idle | Scenario::Fleet)
    }
}

/// Where a run's load goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Direct,
    Ringway,
    Nginx,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Direct, Target::Ringway, Target::Nginx];

    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Ringway => "ringway",
            Target::Nginx => "nginx",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The target order of round `round`: direct, ringway, nginx rotated right
/// by the round number (round 1: direct, ringway, nginx; round 2: nginx,
/// direct, ringway; ...).
pub fn round_order(round: usize) -> [Target; 3] {
    let mut order = Target::ALL;
    order.rotate_right(round % 3);
    order
}

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

impl Better {
    pub fn word(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
        }
    }
}

/// What a figure reads from a `ringway-load` JSON report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    PerSec,
    MbPerSec,
    P50,
    P99,
    P999,
    /// CPU µs per unit of work of the watched proxy (the first watched pid).
    ProxyCpu,
    /// RSS growth per held connection of the watched proxy, KiB.
    ProxyRss,
    /// System calls per unit of work of the watched proxy (`perf stat`).
    ProxySyscalls,
    /// io_uring_enter(2) calls per unit of work of the watched proxy.
    ProxyUringEnters,
}

impl Metric {
    pub fn extract(self, report: &Value) -> Option<f64> {
        let v = match self {
            Metric::PerSec => report.get("per_sec"),
            Metric::MbPerSec => report.get("mb_per_sec"),
            Metric::P50 => report.pointer("/latency/p50_us"),
            Metric::P99 => report.pointer("/latency/p99_us"),
            Metric::P999 => report.pointer("/latency/p999_us"),
            Metric::ProxyCpu => report.pointer("/cpu_us_per_unit/0"),
            Metric::ProxyRss => report.pointer("/rss_kib_per_conn/0"),
            Metric::ProxySyscalls => report.pointer("/syscalls_per_unit/0"),
            Metric::ProxyUringEnters => report.pointer("/io_uring_enters_per_unit/0"),
        }?;
        v.as_f64().filter(|x| x.is_finite())
    }

    /// Figures about the proxy process have no value for `direct`.
    pub fn of_proxy(self) -> bool {
        matches!(
            self,
            Metric::ProxyCpu | Metric::ProxyRss | Metric::ProxySyscalls | Metric::ProxyUringEnters
        )
    }

    /// Drawn in the chart? Not io_uring_enter: nginx makes none, so there
    /// is no ratio to draw.
    pub fn charted(self) -> bool {
        self != Metric::ProxyUringEnters
    }
}

/// One line of the table and one bar of the chart.
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub scenario: Scenario,
    pub metric: Metric,
    pub better: Better,
}

const fn fig(
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    scenario: Scenario,
    metric: Metric,
    better: Better,
) -> Figure {
    Figure {
        key,
        label,
        unit,
        scenario,
        metric,
        better,
    }
}

use Better::{Higher, Lower};
use Metric::*;

/// The units say what the label does not: a label that says "per
/// message" has a unit of `µs`, not `µs/msg`; a count per unit has none.
#[rustfmt::skip]
pub const FIGURES: &[Figure] = &[
    fig("echo_rate", "echo rate", "msg/s", Scenario::Echo, PerSec, Higher),
    fig("echo_p50", "echo latency p50", "µs", Scenario::Echo, P50, Lower),
    fig("echo_p99", "echo latency p99", "µs", Scenario::Echo, P99, Lower),
    fig("echo_cpu", "proxy CPU per message", "µs", Scenario::Echo, ProxyCpu, Lower),
    fig("echo_syscalls", "proxy syscalls per message", "", Scenario::Echo, ProxySyscalls, Lower),
    fig("echo_uring", "proxy io_uring_enter per message", "", Scenario::Echo, ProxyUringEnters, Lower),
    fig("open_p50", "fixed-rate latency p50", "µs", Scenario::Open, P50, Lower),
    fig("open_p99", "fixed-rate latency p99", "µs", Scenario::Open, P99, Lower),
    fig("open_p999", "fixed-rate latency p99.9", "µs", Scenario::Open, P999, Lower),
    fig("open_cpu", "proxy CPU per message at fixed rate", "µs", Scenario::Open, ProxyCpu, Lower),
    fig("open_syscalls", "proxy syscalls per message at fixed rate", "", Scenario::Open, ProxySyscalls, Lower),
    fig("open_uring", "proxy io_uring_enter per message at fixed rate", "", Scenario::Open, ProxyUringEnters, Lower),
    fig("bulk_rate", "bulk throughput each way", "MB/s", Scenario::Bulk, MbPerSec, Higher),
    fig("bulk_cpu", "proxy CPU per MB", "µs", Scenario::Bulk, ProxyCpu, Lower),
    fig("bulk_syscalls", "proxy syscalls per MB", "", Scenario::Bulk, ProxySyscalls, Lower),
    fig("connect_rate", "handshake rate", "1/s", Scenario::Connect, PerSec, Higher),
    fig("connect_p99", "handshake latency p99", "µs", Scenario::Connect, P99, Lower),
    fig("connect_cpu", "proxy CPU per handshake", "µs", Scenario::Connect, ProxyCpu, Lower),
    fig("connect_syscalls", "proxy syscalls per handshake", "", Scenario::Connect, ProxySyscalls, Lower),
    fig("idle_rss", "proxy RSS per idle connection", "KiB", Scenario::Idle, ProxyRss, Lower),
    fig("wss_connect_rate", "handshake rate", "1/s", WSS_CONNECT13, PerSec, Higher),
    fig("wss_connect_cpu", "proxy CPU per handshake", "µs", WSS_CONNECT13, ProxyCpu, Lower),
    fig("wss_resume_rate", "handshake rate", "1/s", WSS_RESUME13, PerSec, Higher),
    fig("wss_resume_cpu", "proxy CPU per handshake", "µs", WSS_RESUME13, ProxyCpu, Lower),
    fig("wss12_connect_rate", "handshake rate", "1/s", WSS_CONNECT12, PerSec, Higher),
    fig("wss12_connect_cpu", "proxy CPU per handshake", "µs", WSS_CONNECT12, ProxyCpu, Lower),
    fig("wss12_resume_rate", "handshake rate", "1/s", WSS_RESUME12, PerSec, Higher),
    fig("wss12_resume_cpu", "proxy CPU per handshake", "µs", WSS_RESUME12, ProxyCpu, Lower),
    fig("wss_echo_rate", "echo rate", "msg/s", WSS_ECHO, PerSec, Higher),
    fig("wss_echo_cpu", "proxy CPU per message", "µs", WSS_ECHO, ProxyCpu, Lower),
    fig("wss_bulk_rate", "bulk throughput each way", "MB/s", WSS_BULK, MbPerSec, Higher),
    fig("wss_bulk_cpu", "proxy CPU per MB", "µs", WSS_BULK, ProxyCpu, Lower),
    fig("wss_idle_rss", "proxy RSS per idle connection", "KiB", WSS_IDLE, ProxyRss, Lower),
    fig("fleet_rss", "proxy RSS per tunnel", "KiB", Scenario::Fleet, ProxyRss, Lower),
    fig("fleet_cpu", "proxy CPU per message", "µs", Scenario::Fleet, ProxyCpu, Lower),
    fig("fleet_p50", "latency p50", "µs", Scenario::Fleet, P50, Lower),
    fig("fleet_p99", "latency p99", "µs", Scenario::Fleet, P99, Lower),
];

const WSS_CONNECT13: Scenario = Scenario::Wss(Wss::Connect13);
const WSS_RESUME13: Scenario = Scenario::Wss(Wss::Resume13);
const WSS_CONNECT12: Scenario = Scenario::Wss(Wss::Connect12);
const WSS_RESUME12: Scenario = Scenario::Wss(Wss::Resume12);
const WSS_ECHO: Scenario = Scenario::Wss(Wss::Echo);
const WSS_BULK: Scenario = Scenario::Wss(Wss::Bulk);
const WSS_IDLE: Scenario = Scenario::Wss(Wss::Idle);

/// The settings of one comparison, defaults resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    pub rounds: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub scenarios: Vec<Scenario>,
    pub proxy_cpu: usize,
    pub load_cpu: usize,
    pub connections: usize,
    pub size: usize,
    pub rate: f64,
    pub concurrency: usize,
    pub idle_connections: usize,
    /// Fleet: tunnels (`None`: as many as the limits allow, decided by
    /// `ringway-load fleet` itself), active share, total rate.
    pub fleet_tunnels: Option<usize>,
    pub fleet_active: f64,
    pub fleet_rate: f64,
    /// `--ringway-arg`s: appended to ringway's command line.
    pub ringway_extra: Vec<String>,
    /// Count the proxies' system calls (`perf stat`, in `ringway-load`).
    pub count_syscalls: bool,
}

/// Source addresses of the connect scenario (clear of 127.0.0.1's
/// ephemeral ports and TIME_WAIT), and of the idle one.
const CONNECT_SOURCES: (u8, u8, u8) = (0, 2, 17);
const IDLE_SOURCES: (u8, u8, u8) = (1, 2, 9);

fn sources((third, first, last): (u8, u8, u8)) -> String {
    (first..=last)
        .map(|i| format!("127.0.{third}.{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `ringway-load`'s flags for a duration (it reads `500ms`, `2s`).
fn dur_arg(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(10))
}

impl Plan {
    pub fn new(o: &Options) -> Result<Plan> {
        let mut scenarios = Vec::new();
        for s in &o.scenarios {
            for sc in Scenario::parse(s)? {
                if !scenarios.contains(&sc) {
                    scenarios.push(sc);
                }
            }
        }
        if scenarios.is_empty() {
            bail!("no scenario to run");
        }
        let plan = Plan {
            quick: o.quick,
            // Three in quick mode too: a median of two is only a mean.
            rounds: o.rounds.unwrap_or(3).max(1),
            duration: o.duration.unwrap_or(if o.quick {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(10)
            }),
            warmup: o.warmup.unwrap_or(if o.quick {
                Duration::from_millis(300)
            } else {
                Duration::from_secs(1)
            }),
            scenarios,
            proxy_cpu: o.proxy_cpu,
            load_cpu: o.load_cpu,
            connections: o.connections.max(1),
            size: o.size,
            rate: o.rate,
            concurrency: o.concurrency.max(1),
            idle_connections: o
                .idle_connections
                .unwrap_or(if o.quick { 1000 } else { 8000 })
                .max(1),
            fleet_tunnels: o
                .fleet_tunnels
                .or(o.quick.then_some(2000))
                .map(|n| n.max(1)),
            fleet_active: o.fleet_active,
            fleet_rate: o.fleet_rate,
            ringway_extra: o.ringway_arg.clone(),
            count_syscalls: !o.no_perf,
        };
        Ok(plan)
    }

    /// ringway's command line after the binary: listen, upstream, the
    /// fixed flags, then the `--ringway-arg`s.
    pub fn ringway_args(&self, port: u16, upstream: &str) -> Vec<String> {
        let mut args = vec![
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--upstream".to_string(),
            upstream.to_string(),
        ];
        args.extend(self.ringway_flags());
        args
    }

    /// ringway's wss:// listener: the run's certificate, on `port`.
    pub fn ringway_tls_args(port: u16, cert: &Path, key: &Path) -> Vec<String> {
        vec![
            "--tls-listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--cert".to_string(),
            cert.display().to_string(),
            "--key".to_string(),
            key.display().to_string(),
        ]
    }

    /// ringway's flags besides --listen and --upstream: the fixed ones,
    /// then the `--ringway-arg`s.
    pub fn ringway_flags(&self) -> Vec<String> {
        RINGWAY_ARGS
            .iter()
            .map(|a| a.to_string())
            .chain(self.ringway_extra.iter().cloned())
            .collect()
    }

    /// `ringway` or `ringway --tunnel-io=readiness`: what ringway ran with,
    /// beyond the fixed flags (table and chart headings).
    pub fn ringway_words(&self) -> String {
        if self.ringway_extra.is_empty() {
            "ringway".to_string()
        } else {
            format!("ringway {}", self.ringway_extra.join(" "))
        }
    }

    /// The idle hold needs no long window: memory is read at its end.
    fn duration_of(&self, sc: Scenario) -> Duration {
        match sc.base() {
            Scenario::Idle => self.duration.min(Duration::from_secs(5)),
            _ => self.duration,
        }
    }

    /// Connections a run opens before its window (the runner's time bound
    /// grows with them).
    fn held(&self, sc: Scenario) -> usize {
        match sc.base() {
            Scenario::Idle => self.idle_connections,
            Scenario::Fleet => self.fleet_tunnels.unwrap_or(10_000),
            _ => self.connections,
        }
    }

    /// `ringway-load` arguments of a scenario, before the common ones.
    pub fn scenario_args(&self, sc: Scenario) -> Vec<String> {
        let s = |x: &str| x.to_string();
        match sc {
            Scenario::Echo => vec![
                s("echo"),
                s("--connections"),
                self.connections.to_string(),
                s("--size"),
                self.size.to_string(),
                s("--inflight"),
                s("1"),
            ],
            Scenario::Open => vec![
                s("echo"),
                s("--connections"),
                self.connections.to_string(),
                s("--size"),
                self.size.to_string(),
                s("--rate"),
                self.rate.to_string(),
            ],
            Scenario::Bulk => vec![
                s("bulk"),
                s("--connections"),
                s("1"),
                s("--size"),
                (1usize << 20).to_string(),
                s("--inflight"),
                s("2"),
            ],
            Scenario::Connect => vec![
                s("connect"),
                s("--concurrency"),
                self.concurrency.to_string(),
                s("--source-ips"),
                sources(CONNECT_SOURCES),
            ],
            Scenario::Idle => vec![
                s("idle"),
                s("--connections"),
                self.idle_connections.to_string(),
                s("--source-ips"),
                sources(IDLE_SOURCES),
            ],
            Scenario::Wss(w) => {
                let mut a = self.scenario_args(w.base());
                // The proxies serve the run's own certificate.
                a.push(s("--insecure"));
                a.extend(w.variant().load_args());
                a
            }
            Scenario::Fleet => {
                let mut a = vec![
                    s("fleet"),
                    s("--active"),
                    self.fleet_active.to_string(),
                    s("--rate"),
                    self.fleet_rate.to_string(),
                    s("--size"),
                    self.size.to_string(),
                    s("--source-ips"),
                    sources(IDLE_SOURCES),
                ];
                if let Some(n) = self.fleet_tunnels {
                    a.extend([s("--tunnels"), n.to_string()]);
                }
                a
            }
        }
    }

    /// `name: what it does`: a chart's group heading.
    pub fn heading(&self, sc: Scenario) -> String {
        format!("{}: {}", sc.name(), self.describe(sc))
    }

    /// What the scenario does, in words, without its name (the text
    /// prints the name beside it; the chart heads a group with both).
    pub fn describe(&self, sc: Scenario) -> String {
        match sc {
            Scenario::Echo => format!(
                "closed loop, {} connections, {} B messages, 1 in flight each",
                self.connections, self.size
            ),
            Scenario::Open => format!(
                "fixed-rate echo, {} msg/s in all over {} connections, {} B",
                self.rate, self.connections, self.size
            ),
            Scenario::Bulk => "1 MiB messages, 1 connection, 2 in flight".to_string(),
            Scenario::Connect => format!(
                "handshake + one echo + close, {} at a time",
                self.concurrency
            ),
            Scenario::Idle => format!(
                "{} connections held open (fresh proxy process each run)",
                self.idle_connections
            ),
            Scenario::Wss(w) => match w {
                Wss::Connect13 | Wss::Resume13 | Wss::Connect12 | Wss::Resume12 => format!(
                    "{}; handshake + one echo + close, {} at a time",
                    w.variant().words(),
                    self.concurrency
                ),
                Wss::Echo => format!(
                    "TLS 1.3, closed loop, {} connections, {} B messages",
                    self.connections, self.size
                ),
                Wss::Bulk => "TLS 1.3, 1 MiB messages, 1 connection, 2 in flight".to_string(),
                Wss::Idle => format!(
                    "TLS 1.3, {} connections held open (fresh proxy process each run)",
                    self.idle_connections
                ),
            },
            Scenario::Fleet => format!(
                "{}, {}% of them sending {} msg/s in all, {} B (fresh proxy process each run)",
                self.fleet_tunnels.map_or(
                    "as many tunnels held as the open-files limits allow".to_string(),
                    |n| format!("{n} tunnels held")
                ),
                percent(self.fleet_active),
                self.fleet_rate,
                self.size
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// Statistics

/// The median; the mean of the middle two for an even count.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `a / b`, when both are positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// How many times better `a` is than `b` (above 1: `a` is better), given
/// the ratio `a / b` and which way the figure is better.
pub fn advantage(better: Better, a_over_b: f64) -> f64 {
    match better {
        Better::Higher => a_over_b,
        Better::Lower => 1.0 / a_over_b,
    }
}

/// `2.10x better`, `1.30x worse`, or `same` within 2%.
pub fn verdict(adv: f64) -> String {
    if (adv - 1.0).abs() < 0.02 {
        "same".to_string()
    } else if adv > 1.0 {
        format!("{adv:.2}x better")
    } else {
        format!("{:.2}x worse", 1.0 / adv)
    }
}

/// `1 round`, `3 rounds`.
pub fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A number for the table: three significant digits or so.
/// A share as a percentage, to 0.001%, without trailing zeros: `5`, `7`
/// (not 7.000000000000001), `0.1`.
fn percent(share: f64) -> String {
    let p = format!("{:.3}", share * 100.0);
    p.trim_end_matches('0').trim_end_matches('.').to_string()
}

pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The medians of one figure.
#[derive(Debug, Clone)]
pub struct Row {
    pub figure: Figure,
    /// Per target (direct, ringway, nginx).
    pub values: [Option<f64>; 3],
    /// Runs that gave a value, per target.
    pub counts: [usize; 3],
}

impl Row {
    pub fn get(&self, t: Target) -> Option<f64> {
        self.values[t.index()]
    }

    /// ringway / other, raw.
    pub fn ratio_to(&self, other: Target) -> Option<f64> {
        ratio(self.get(Target::Ringway), self.get(other))
    }

    /// How many times better ringway is than `other` on this figure.
    pub fn advantage_over(&self, other: Target) -> Option<f64> {
        self.ratio_to(other)
            .map(|r| advantage(self.figure.better, r))
    }
}

/// One finished (or failed) `ringway-load` run.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub round: usize,
    pub scenario: Scenario,
    pub target: Target,
    pub report: Option<Value>,
    pub error: Option<String>,
    pub wall_s: f64,
    /// What the two CPUs did during the run (see [`CoreUse`]).
    pub host: Option<HostUse>,
}

/// Jiffies of one CPU, from a `cpuN` line of /proc/stat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq (a process's stime includes
    /// the softirq ticks that land on it, so busy time is compared with it).
    pub busy: u64,
    pub softirq: u64,
    pub steal: u64,
}

/// The line of CPU `cpu` in /proc/stat text.
pub fn parse_cpu_times(stat: &str, cpu: usize) -> Option<CpuTimes> {
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    Some(CpuTimes {
        busy: at(0) + at(1) + at(2) + at(5) + at(6),
        softirq: at(6),
        steal: at(7),
    })
}

fn cpu_times(cpu: usize) -> Option<CpuTimes> {
    parse_cpu_times(&std::fs::read_to_string("/proc/stat").ok()?, cpu)
}

/// Use of one CPU over a run, in percent of the run's wall time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoreUse {
    pub busy_pct: f64,
    pub softirq_pct: f64,
    pub steal_pct: f64,
    /// Busy time not spent by the proxies (proxy core only): other
    /// processes on that core make a run noisy.
    pub others_pct: Option<f64>,
}

/// Both cores over one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostUse {
    pub proxy_core: CoreUse,
    pub load_core: CoreUse,
}

impl CoreUse {
    fn between(a: CpuTimes, b: CpuTimes, wall_s: f64, ours_s: Option<f64>) -> CoreUse {
        // USER_HZ is 100 (see procstat).
        let pct = |j: u64| j as f64 / 100.0 / wall_s.max(1e-3) * 100.0;
        let busy_pct = pct(b.busy.saturating_sub(a.busy));
        CoreUse {
            busy_pct,
            softirq_pct: pct(b.softirq.saturating_sub(a.softirq)),
            steal_pct: pct(b.steal.saturating_sub(a.steal)),
            others_pct: ours_s.map(|s| (busy_pct - s / wall_s.max(1e-3) * 100.0).max(0.0)),
        }
    }

    fn json(&self) -> Value {
        json!({
            "busy_pct": self.busy_pct,
            "softirq_pct": self.softirq_pct,
            "steal_pct": self.steal_pct,
            "others_pct": self.others_pct,
        })
    }
}

/// The medians over the successful runs, for every figure of a scenario
/// that was run.
pub fn rows(records: &[RunRecord], scenarios: &[Scenario]) -> Vec<Row> {
    FIGURES
        .iter()
        .filter(|f| scenarios.contains(&f.scenario))
        .map(|f| {
            let mut values = [None; 3];
            let mut counts = [0; 3];
            for t in Target::ALL {
                if t == Target::Direct && f.metric.of_proxy() {
                    continue;
                }
                let v: Vec<f64> = records
                    .iter()
                    .filter(|r| r.scenario == f.scenario && r.target == t)
                    .filter_map(|r| r.report.as_ref())
                    .filter_map(|rep| f.metric.extract(rep))
                    .collect();
                counts[t.index()] = v.len();
                values[t.index()] = median(&v);
            }
            Row {
                figure: *f,
                values,
                counts,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Time

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's
/// civil_from_days).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// UTC time of `t` as (`2026-11-21 07:10 UTC`, `20261121-071012`).
pub fn utc_stamp(t: SystemTime) -> (String, String) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let r = secs.rem_euclid(86_400);
    let (hh, mm, ss) = (r / 3600, r % 3600 / 60, r % 60);
    (
        format!("{y:04}-{mo:02}-{d:02} {hh:02}:{mm:02} UTC"),
        format!("{y:04}{mo:02}{d:02}-{hh:02}{mm:02}{ss:02}"),
    )
}

// ---------------------------------------------------------------------------
// Processes

/// A child process that is stopped when dropped.
struct Proc {
    name: String,
    child: Child,
    /// Processes it forked that must go too (nginx's workers).
    forked: Vec<u32>,
    /// SIGTERM first (and wait), or SIGKILL at once.
    graceful: bool,
    log: PathBuf,
}

/// The command line of `pid`, NULs as spaces ("" when it is gone).
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Pids whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the name: state, ppid, ...
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

fn tail(path: &Path, lines: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait for the exit up to `limit`; true if it exited.
    fn wait_exit(&mut self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        loop {
            if self.exited().is_some() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if self.exited().is_none() {
            if self.graceful {
                signal(self.pid(), "TERM");
                if !self.wait_exit(Duration::from_secs(5)) {
                    eprintln!(
                        "  {} did not stop within 5 s of SIGTERM; killing it",
                        self.name
                    );
                }
            }
            let _ = self.child.kill();
            let _ = self.wait_exit(Duration::from_secs(3));
        }
        // Forked children outlive a killed parent; only ours (same name) go.
        for pid in std::mem::take(&mut self.forked) {
            if cmdline(pid).contains("nginx") {
                signal(pid, "KILL");
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Spawn `cmd` with its CPU affinity set to `cpu`: from a short-lived
/// thread pinned there (a child inherits its parent thread's affinity).
fn spawn_pinned(cmd: &mut Command, cpu: usize) -> Result<Child> {
    std::thread::scope(|s| {
        s.spawn(|| {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                eprintln!("  warning: could not pin to CPU {cpu}");
            }
            cmd.spawn()
        })
        .join()
        .map_err(|_| anyhow!("spawning thread panicked"))?
        .map_err(anyhow::Error::from)
    })
}

/// A port that was free a moment ago.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Wait until `port` accepts a connection, the process exits, or `limit`.
fn wait_listening(p: &mut Proc, port: u16, limit: Duration) -> Result<()> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = p.exited() {
            bail!("{} exited at start ({st}):\n{}", p.name, tail(&p.log, 15));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= end {
            bail!(
                "{} is not listening on {addr} after {limit:?}:\n{}",
                p.name,
                tail(&p.log, 15)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `pid`'s descriptor count once it has held still for 500 ms (at most
/// `limit`, then the count of that moment).
fn settled_fds(pid: u32, limit: Duration) -> u64 {
    let end = Instant::now() + limit;
    let (mut last, mut since) = (fds_of(pid), Instant::now());
    while Instant::now() < end && since.elapsed() < Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(20));
        let now = fds_of(pid);
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    last
}

/// Run a command to its end, output to `log`, at most `limit`.
fn run_bounded(
    cmd: &mut Command,
    limit: Duration,
    log: &Path,
    stop: &Shutdown,
) -> Result<ExitStatus> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if stop.is_triggered() || Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            if stop.is_triggered() {
                bail!("interrupted");
            }
            bail!("{cmd:?} ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The euid, from /proc (no unsafe call needed).
fn euid() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/sbin",
                "/usr/local/sbin",
                "/sbin",
                "/usr/local/nginx/sbin",
            ]
            .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------
// The lab: backend and proxies

struct Binaries {
    ringway: PathBuf,
    load: PathBuf,
    echo: PathBuf,
}

impl Binaries {
    fn resolve(o: &Options) -> Result<Binaries> {
        let here = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let pick = |given: &Option<PathBuf>, name: &str| -> Result<PathBuf> {
            let p = given.clone().unwrap_or_else(|| here.join(name));
            if !p.is_file() {
                bail!(
                    "{} not found (build with `cargo build --release -p ringway -p ringway-load`, \
                     or run loadtest/compare)",
                    p.display()
                );
            }
            Ok(p)
        };
        Ok(Binaries {
            ringway: pick(&o.ringway, "ringway")?,
            load: pick(&o.load, "ringway-load")?,
            echo: pick(&o.echo, "ringway-echo")?,
        })
    }
}

/// A running target: where to send load and which pid to watch.
struct Running {
    proc: Proc,
    port: u16,
    /// wss:// ports by TLS set-up (ringway: one port for all of them).
    tls_ports: Vec<(TlsVariant, u16)>,
    /// The process doing the work (nginx: its worker).
    watch: u32,
    /// Its descriptors right after start.
    fds0: u64,
}

/// A temporary directory removed on drop (unless kept).
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            println!("kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

struct Lab<'a> {
    plan: &'a Plan,
    bins: &'a Binaries,
    stop: &'a Shutdown,
    nginx_bin: Option<NginxBin>,
    nginx_buffer_size: Option<String>,
    nofile: u64,
    /// The certificate and key both proxies serve wss:// with, when
    /// wss:// scenarios run.
    tls: Option<(PathBuf, PathBuf)>,
    // Dropped in this order: the proxies, then the backend, then the
    // temporary directory once every process is gone.
    ringway: Option<Running>,
    nginx: Option<Running>,
    echo: Option<Running>,
    tmp: TempDir,
    runs: usize,
    warnings: Vec<String>,
}

fn fds_of(pid: u32) -> u64 {
    procstat::fds(pid)
}

/// Start a server on a free port (`spawn(port)` returns the child and its
/// log), retrying with another port if it does not come up listening (a port
/// taken between our probe and its bind).
fn start_on_free_port(
    name: &str,
    graceful: bool,
    mut spawn: impl FnMut(u16) -> Result<(Child, PathBuf)>,
) -> Result<Running> {
    let mut last = None;
    for _ in 0..5 {
        let port = free_port()?;
        let (child, log) = spawn(port)?;
        let mut proc = Proc {
            name: name.into(),
            child,
            forked: Vec::new(),
            graceful,
            log,
        };
        match wait_listening(&mut proc, port, Duration::from_secs(10)) {
            Ok(()) => {
                let pid = proc.pid();
                return Ok(Running {
                    proc,
                    port,
                    tls_ports: Vec::new(),
                    watch: pid,
                    fds0: fds_of(pid),
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("{name} did not start")))
}

impl Lab<'_> {
    fn dir(&self) -> &Path {
        &self.tmp.path
    }

    fn echo_port(&self) -> u16 {
        self.echo.as_ref().map_or(0, |e| e.port)
    }

    fn start_echo(&mut self) -> Result<()> {
        let (bin, cpu, dir) = (
            self.bins.echo.clone(),
            self.plan.load_cpu,
            self.dir().to_path_buf(),
        );
        let running = start_on_free_port("ringway-echo", false, |port| {
            let log = dir.join("echo.log");
            let child = spawn_pinned(
                Command::new(&bin)
                    .args(["--listen", &format!("127.0.0.1:{port}")])
                    .args(["--threads", "1", "--pin", &cpu.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::from(File::create(&log)?))
                    .stderr(Stdio::from(File::create(log.with_extension("err"))?)),
                cpu,
            )?;
            Ok((child, log.with_extension("err")))
        })?;
        self.echo = Some(running);
        Ok(())
    }

    fn start_ringway(&mut self) -> Result<()> {
        let (bin, cpu, dir) = (
            self.bins.ringway.clone(),
            self.plan.proxy_cpu,
            self.dir().to_path_buf(),
        );
        let upstream = format!("127.0.0.1:{}", self.echo_port());
        let (plan, tls) = (self.plan, self.tls.clone());
        let mut tls_port = 0;
        let mut running = start_on_free_port("ringway", true, |port| {
            let log = dir.join("ringway.log");
            let mut args = plan.ringway_args(port, &upstream);
            if let Some((cert, key)) = &tls {
                tls_port = free_port()?;
                args.extend(Plan::ringway_tls_args(tls_port, cert, key));
            }
            let child = spawn_pinned(
                Command::new(&bin)
                    .args(args)
                    .env_remove("RUST_LOG")
                    .stdin(Stdio::null())
                    .stdout(Stdio::from(File::create(&log)?))
                    .stderr(Stdio::from(
                        File::options().create(true).append(true).open(&log)?,
                    )),
                cpu,
            )?;
            Ok((child, log))
        })?;
        if tls.is_some() {
            wait_listening(&mut running.proc, tls_port, Duration::from_secs(10))?;
            running.tls_ports = TlsVariant::ALL.map(|v| (v, tls_port)).to_vec();
        }
        // ringway binds its listeners before its worker makes its rings and
        // splice pipes: count the descriptors it holds at rest once that
        // count has stopped moving, or a busy machine catches it halfway and
        // every later run seems to leave descriptors open (and waits out
        // `settle` for them).
        running.fds0 = settled_fds(running.watch, Duration::from_secs(10));
        self.ringway = Some(running);
        Ok(())
    }

    fn nginx_conf(&self, port: u16, tls_ports: &[(TlsVariant, u16)]) -> NginxConf {
        NginxConf {
            dir: self.dir().join("nginx"),
            port,
            echo_port: self.echo_port(),
            cpu: self.plan.proxy_cpu,
            nofile: self.nofile,
            buffer_size: self.nginx_buffer_size.clone(),
            tls: self.tls.as_ref().map(|(cert, key)| NginxTls {
                cert: cert.clone(),
                key: key.clone(),
                servers: tls_ports.to_vec(),
            }),
        }
    }

    fn start_nginx(&mut self) -> Result<()> {
        let bin = self.nginx_bin.clone().context("no nginx")?;
        let dir = self.dir().join("nginx");
        std::fs::create_dir_all(&dir)?;
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let mut tls_ports = Vec::new();
            if self.tls.is_some() {
                for v in TlsVariant::ALL {
                    tls_ports.push((v, free_port()?));
                }
            }
            let conf = self.nginx_conf(port, &tls_ports);
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, nginx_config(&conf))?;
            let log = dir.join("stderr.log");
            let mut cmd = Command::new(&bin.path);
            cmd.arg("-p")
                .arg(format!("{}/", dir.display()))
                .arg("-c")
                .arg(&conf_path);
            // -e (1.19.5+): no attempt at the compiled-in error log path.
            if bin.parsed.is_some_and(|v| v >= (1, 19, 5)) {
                cmd.arg("-e").arg(dir.join("error.log"));
            }
            let child = spawn_pinned(
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::from(File::create(&log)?))
                    .stderr(Stdio::from(
                        File::options().create(true).append(true).open(&log)?,
                    )),
                self.plan.proxy_cpu,
            )?;
            let mut proc = Proc {
                name: "nginx".into(),
                child,
                forked: Vec::new(),
                graceful: true,
                log: dir.join("error.log"),
            };
            if let Err(e) = wait_listening(&mut proc, port, Duration::from_secs(10)) {
                let said = tail(&log, 3);
                // Only a port taken in the meantime is worth another try.
                if said.contains("in use") {
                    last = Some(e);
                    continue;
                }
                if said.trim().is_empty() {
                    return Err(e);
                }
                bail!("{}", said.trim());
            }
            // The worker is what works: wait for it.
            let end = Instant::now() + Duration::from_secs(10);
            let workers = loop {
                let w = children_of(proc.pid());
                if !w.is_empty() || Instant::now() >= end {
                    break w;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            proc.forked = workers.clone();
            let Some(&worker) = workers.first() else {
                bail!("nginx started but no worker process appeared");
            };
            self.nginx = Some(Running {
                proc,
                port,
                tls_ports,
                watch: worker,
                fds0: fds_of(worker),
            });
            return Ok(());
        }
        Err(last.unwrap_or_else(|| anyhow!("nginx did not start")))
    }

    fn start(&mut self, t: Target) -> Result<()> {
        match t {
            Target::Direct => self.start_echo(),
            Target::Ringway => self.start_ringway(),
            Target::Nginx => self.start_nginx(),
        }
    }

    fn slot(&mut self, t: Target) -> &mut Option<Running> {
        match t {
            Target::Direct => &mut self.echo,
            Target::Ringway => &mut self.ringway,
            Target::Nginx => &mut self.nginx,
        }
    }

    /// Stop and start a proxy (fresh memory for the idle scenario).
    fn restart(&mut self, t: Target) -> Result<()> {
        if let Some(mut r) = self.slot(t).take() {
            r.proc.stop();
        }
        self.start(t)
    }

    /// Is the target up? A proxy that died is started again once.
    fn ensure(&mut self, t: Target) -> Result<()> {
        let dead = match self.slot(t) {
            Some(r) => r.proc.exited().map(|st| (st, tail(&r.proc.log, 5))),
            None => return Err(anyhow!("{} is not running", t.name())),
        };
        if let Some((st, log)) = dead {
            self.warnings
                .push(format!("{} exited ({st}); restarted. Log: {log}", t.name()));
            *self.slot(t) = None;
            if t == Target::Direct {
                bail!("the echo backend exited ({st})");
            }
            self.start(t)?;
        }
        Ok(())
    }

    /// After a run: wait (bounded) until every process is back near its
    /// descriptor count at start, so one run's closing does not load the next.
    fn settle(&mut self) {
        let end = Instant::now() + Duration::from_secs(15);
        for t in Target::ALL {
            let Some(r) = self.slot(t).as_ref() else {
                continue;
            };
            let (watch, fds0, name) = (r.watch, r.fds0, t.name());
            loop {
                let now = fds_of(watch);
                if now <= fds0 + 8 {
                    break;
                }
                if Instant::now() >= end {
                    self.warnings.push(format!(
                        "{name}: {now} descriptors open after a run (at start {fds0})"
                    ));
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Sockets closed by the kernel a moment after the processes let go.
        std::thread::sleep(Duration::from_millis(200));
    }

    fn run_one(&mut self, round: usize, sc: Scenario, t: Target) -> RunRecord {
        let started = Instant::now();
        let (report, error, host) = match self.try_run(sc, t) {
            Ok((v, host)) => {
                let e = generator_errors(&v, t);
                (Some(v), e, host)
            }
            Err(e) => (None, Some(format!("{e:#}")), None),
        };
        self.settle();
        RunRecord {
            round,
            scenario: sc,
            target: t,
            report,
            error,
            wall_s: started.elapsed().as_secs_f64(),
            host,
        }
    }

    /// CPU seconds used so far by every proxy process (both proxies run
    /// all the time; the idle one uses next to nothing).
    fn proxies_cpu_s(&self) -> Option<f64> {
        let mut pids = Vec::new();
        for r in [&self.ringway, &self.nginx].into_iter().flatten() {
            pids.push(r.watch);
            if r.watch != r.proc.child.id() {
                pids.push(r.proc.child.id());
            }
        }
        pids.iter()
            .map(|&p| procstat::sample(p).ok().map(|s| s.cpu_s))
            .sum()
    }

    fn try_run(&mut self, sc: Scenario, t: Target) -> Result<(Value, Option<HostUse>)> {
        if sc.fresh_proxy() && t != Target::Direct {
            self.restart(t)?;
        }
        self.ensure(t)?;
        self.ensure(Target::Direct)?;
        let r = self.slot(t).as_ref().context("not running")?;
        let (url, watch) = (url_for(r, sc)?, r.watch);
        self.runs += 1;
        let json_path = self.dir().join(format!("run-{:03}.json", self.runs));
        let log = self.dir().join(format!("run-{:03}.log", self.runs));
        let duration = self.plan.duration_of(sc);
        let mut cmd = Command::new(&self.bins.load);
        cmd.args(self.plan.scenario_args(sc))
            .args(["--url", &url])
            .args(["--threads", "1", "--pin", &self.plan.load_cpu.to_string()])
            .args(["--duration", &dur_arg(duration)])
            .args(["--warmup", &dur_arg(self.plan.warmup)])
            .arg("--json")
            .arg(&json_path);
        if t != Target::Direct {
            cmd.args(["--watch-pid", &watch.to_string()]);
        }
        if !self.plan.count_syscalls {
            cmd.arg("--no-perf");
        }
        // Setting up many connections takes a while (a TLS handshake each
        // for wss://); everything else is bounded by the window plus the
        // generator's 5 s grace.
        let limit = self.plan.warmup
            + duration
            + Duration::from_secs(40)
            + Duration::from_millis(self.plan.held(sc) as u64 * 4);
        let (p0, l0, ours0) = (
            cpu_times(self.plan.proxy_cpu),
            cpu_times(self.plan.load_cpu),
            self.proxies_cpu_s(),
        );
        let t0 = Instant::now();
        let st = run_bounded(&mut cmd, limit, &log, self.stop)?;
        let wall = t0.elapsed().as_secs_f64();
        let (p1, l1, ours1) = (
            cpu_times(self.plan.proxy_cpu),
            cpu_times(self.plan.load_cpu),
            self.proxies_cpu_s(),
        );
        let host = match (p0, p1, l0, l1) {
            (Some(p0), Some(p1), Some(l0), Some(l1)) => Some(HostUse {
                proxy_core: CoreUse::between(p0, p1, wall, ours0.zip(ours1).map(|(a, b)| b - a)),
                load_core: CoreUse::between(l0, l1, wall, None),
            }),
            _ => None,
        };
        if !st.success() {
            bail!(
                "ringway-load {} failed ({st}): {}",
                sc.name(),
                tail(&log, 6)
            );
        }
        let text = std::fs::read_to_string(&json_path)
            .with_context(|| format!("reading {}", json_path.display()))?;
        let v: Value = serde_json::from_str(&text).context("parsing the report")?;
        Ok((v, host))
    }
}

/// Where a run's load goes: `ws://` to the plain port, `wss://` to the
/// port of the scenario's TLS set-up.
fn url_for(r: &Running, sc: Scenario) -> Result<String> {
    let Scenario::Wss(w) = sc else {
        return Ok(format!("ws://127.0.0.1:{}/", r.port));
    };
    let server = w.nginx_server();
    let (_, port) = r
        .tls_ports
        .iter()
        .find(|(v, _)| *v == server)
        .with_context(|| format!("no wss:// port for {}", server.words()))?;
    Ok(format!("wss://127.0.0.1:{port}/"))
}

// ---------------------------------------------------------------------------
// The run

/// The noise line, and whether another process disturbed the runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Noise {
    /// The figures: `noise: on the proxy core, ...`.
    pub line: String,
    /// Another process took more than 10% of the proxy core in a run.
    pub disturbed: bool,
}

impl Noise {
    /// The line as printed and written to the JSON: with [`DISTURBED`]
    /// after it when disturbed.
    pub fn full(&self) -> String {
        if self.disturbed {
            format!("{} -- {DISTURBED}", self.line)
        } else {
            self.line.clone()
        }
    }
}

/// How busy the proxy core was with other work during the runs.
pub fn noise_summary(records: &[RunRecord]) -> Option<Noise> {
    let others: Vec<f64> = records
        .iter()
        .filter_map(|r| r.host.and_then(|h| h.proxy_core.others_pct))
        .collect();
    let steal: Vec<f64> = records
        .iter()
        .filter_map(|r| r.host.map(|h| h.proxy_core.steal_pct))
        .collect();
    let max = others.iter().copied().fold(0.0f64, f64::max);
    let line = format!(
        "noise: on the proxy core, work other than the proxies took {:.1}% of a run (median; max {max:.1}%), steal {:.1}%",
        median(&others)?,
        median(&steal).unwrap_or(0.0)
    );
    Some(Noise {
        line,
        disturbed: max > 10.0,
    })
}

/// What the noise line adds when another process took more than 10% of
/// the proxy core in a run; the chart says it too.
pub const DISTURBED: &str =
    "another process shared the proxy core; rerun on a quiet machine for firm numbers";

/// Printed once when a wss:// or fleet scenario ran.
pub const DIRECT_NA: &str = "direct: n/a for the wss:// and fleet rows (the echo backend serves \
    ws:// only, and the fleet's figures are the proxies')";

/// Median busy % of the proxy core and the load core, per scenario and
/// target: which core was the bottleneck of each scenario.
pub fn core_use(records: &[RunRecord], scenarios: &[Scenario]) -> String {
    let mut out = String::from(
        "core use (median busy % over the run, proxy core / load core; 100 = saturated):\n",
    );
    for &sc in scenarios {
        let mut line = format!("  {:<13}", sc.name());
        for t in Target::ALL {
            let of = |f: fn(&HostUse) -> f64| {
                let v: Vec<f64> = records
                    .iter()
                    .filter(|r| r.scenario == sc && r.target == t && r.report.is_some())
                    .filter_map(|r| r.host.as_ref().map(f))
                    .collect();
                median(&v)
            };
            if let (Some(p), Some(l)) =
                (of(|h| h.proxy_core.busy_pct), of(|h| h.load_core.busy_pct))
            {
                let _ = write!(line, "  {} {p:>3.0}/{l:<3.0}", t.name());
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Why system calls were not counted, once (the first run that says so,
/// and how many did): the table then shows `-` for them.
pub fn syscall_warning(records: &[RunRecord]) -> Option<String> {
    let notes: Vec<(&RunRecord, &str)> = records
        .iter()
        .filter_map(|r| {
            let note = r.report.as_ref()?.get("syscalls_note")?.as_str()?;
            Some((r, note))
        })
        .collect();
    let (first, note) = notes.first()?;
    Some(format!(
        "system calls not counted in {} of {} (first: round {} {} {}): {note}",
        plural(notes.len(), "run"),
        records.iter().filter(|r| r.report.is_some()).count(),
        first.round + 1,
        first.scenario.name(),
        first.target.name(),
    ))
}

/// The errors of a run through nginx that ends with echoes in flight.
pub const HALF_CLOSE: &str =
    "closed with echoes in flight after the window (half-close, see below)";

/// Printed once under the table when a run had [`HALF_CLOSE`] errors.
pub const HALF_CLOSE_NOTE: &str = "half-close: when the generator stops sending it shuts down its \
    side; nginx then closes the whole tunnel (it keeps no half-closed upgraded connection), so \
    echoes still in flight are lost. That is after the measured window: the figures are unaffected.";

/// The generator's errors in words, `None` without errors.
pub fn generator_errors(report: &Value, t: Target) -> Option<String> {
    let n = report.get("errors").and_then(Value::as_u64).unwrap_or(0);
    if n == 0 {
        return None;
    }
    let samples: Vec<&str> = report
        .get("error_samples")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let only_end = !samples.is_empty()
        && samples
            .iter()
            .all(|s| *s == "connection closed with echoes missing");
    if only_end && t == Target::Nginx {
        return Some(format!("{} {HALF_CLOSE}", plural(n as usize, "connection")));
    }
    Some(format!(
        "{n} errors reported by the generator: {}",
        samples.join("; ")
    ))
}

fn machine() -> (String, usize, String) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    (cpu, n, kernel)
}

fn summary_line(sc: Scenario, v: &Value) -> String {
    let g = |m: Metric| m.extract(v).map_or("-".into(), num);
    // A wss:// run reads like the ws:// one beneath it.
    let base = sc.base();
    let idle = base == Scenario::Idle;
    let mut s = match base {
        Scenario::Echo | Scenario::Open | Scenario::Fleet => {
            format!("{} msg/s, p50 {} µs, p99 {} µs", g(PerSec), g(P50), g(P99))
        }
        Scenario::Bulk => format!("{} MB/s, p50 {} µs", g(MbPerSec), g(P50)),
        Scenario::Connect => format!("{} handshakes/s, p99 {} µs", g(PerSec), g(P99)),
        Scenario::Idle | Scenario::Wss(_) => format!(
            "{} of {} alive",
            v.get("received").and_then(Value::as_u64).unwrap_or(0),
            v.get("connections").and_then(Value::as_u64).unwrap_or(0)
        ),
    };
    if base == Scenario::Fleet {
        let _ = write!(
            s,
            ", {} tunnels",
            v.get("connections").and_then(Value::as_u64).unwrap_or(0)
        );
    }
    if let Some(tls) = wss::tls_words(v) {
        let _ = write!(s, ", {tls}");
    }
    if let Some(c) = ProxyCpu.extract(v) {
        if !idle {
            let _ = write!(s, ", proxy {} µs/unit", num(c));
        }
    }
    if let Some(c) = ProxySyscalls.extract(v) {
        if !idle {
            let _ = write!(s, ", {} syscalls/unit", num(c));
            if let Some(u) = ProxyUringEnters.extract(v).filter(|u| *u > 0.0) {
                let _ = write!(s, " ({} io_uring_enter)", num(u));
            }
        }
    }
    if let Some(r) = ProxyRss.extract(v) {
        let _ = write!(s, ", proxy {} KiB/conn", num(r));
    }
    s
}

/// A figure's name in the table: `label (unit)`, or the label alone for
/// a count.
fn row_name(f: &Figure) -> String {
    if f.unit.is_empty() {
        f.label.to_string()
    } else {
        format!("{} ({})", f.label, f.unit)
    }
}

/// The ratio column of ringway against `other`: `0.50 (2.00x better)`;
/// `n/a` when both have a value but one is zero (no ratio: e.g. nginx's
/// io_uring_enter count); `-` when a value is missing.
fn ratio_cell(r: &Row, other: Target, verdicts: bool) -> String {
    match (r.ratio_to(other), r.advantage_over(other)) {
        (Some(x), Some(a)) if verdicts => format!("{x:.2} ({})", verdict(a)),
        (Some(x), _) => format!("{x:.2}"),
        _ if r.get(Target::Ringway).is_some() && r.get(other).is_some() => "n/a".to_string(),
        _ => "-".to_string(),
    }
}

/// The table, as printed.
pub fn table(rows: &[Row], have_nginx: bool) -> String {
    let mut out = String::new();
    let cell = |v: Option<f64>| v.map_or("-".to_string(), num);
    let w = rows
        .iter()
        .map(|r| row_name(&r.figure).chars().count())
        .fold(44, usize::max);
    let _ = writeln!(
        out,
        "{:<w$} {:>6} {:>10} {:>10} {:>10}  {:<22} {:>9}",
        "figure (median over rounds)",
        "better",
        "direct",
        "ringway",
        "nginx",
        "ringway/nginx",
        "rw/direct"
    );
    let _ = writeln!(out, "{}", "-".repeat(w + 75));
    let mut group = None;
    for r in rows {
        if group != Some(r.figure.scenario) {
            group = Some(r.figure.scenario);
            let _ = writeln!(out, "[{}]", r.figure.scenario.name());
        }
        let vs_nginx = if have_nginx {
            ratio_cell(r, Target::Nginx, true)
        } else {
            "n/a (no nginx)".to_string()
        };
        let vs_direct = ratio_cell(r, Target::Direct, false);
        let _ = writeln!(
            out,
            "{:<w$} {:>6} {:>10} {:>10} {:>10}  {:<22} {:>9}",
            row_name(&r.figure),
            r.figure.better.word(),
            cell(r.get(Target::Direct)),
            cell(r.get(Target::Ringway)),
            cell(r.get(Target::Nginx)),
            vs_nginx,
            vs_direct
        );
    }
    out
}

/// The bars of the chart: ringway against nginx, or against direct when
/// nginx is missing.
pub fn bars(rows: &[Row], plan: &Plan, vs: Target) -> Vec<Bar> {
    rows.iter()
        .filter(|r| r.figure.metric.charted())
        .map(|r| {
            let unit = r.figure.unit;
            let detail = match (r.get(Target::Ringway), r.get(vs)) {
                (Some(a), Some(b)) => format!(
                    "ringway {} vs {} {} {unit} ({} is better)",
                    num(a),
                    vs.name(),
                    num(b),
                    r.figure.better.word()
                ),
                (Some(a), None) => format!("ringway {} {unit}; {} n/a", num(a), vs.name()),
                _ => "no value".to_string(),
            };
            // No ratio with a zero on either side (see ratio()): the chart
            // says n/a rather than draw an infinite bar.
            let advantage = r.advantage_over(vs).filter(|a| a.is_finite() && *a > 0.0);
            Bar {
                group: plan.heading(r.figure.scenario),
                label: r.figure.label.to_string(),
                detail,
                advantage,
            }
        })
        .collect()
}

/// Run the whole comparison.
pub fn run(o: Options) -> Result<()> {
    let t0 = Instant::now();
    let started = SystemTime::now();
    let (date, stamp) = utc_stamp(started);
    let stop = Shutdown::new();
    ringway::server::signals::install_drain_only(stop.clone());
    let plan = Plan::new(&o)?;
    let bins = Binaries::resolve(&o)?;
    let (cpu_model, ncpu, kernel) = machine();
    for (what, cpu) in [
        ("--proxy-cpu", plan.proxy_cpu),
        ("--load-cpu", plan.load_cpu),
    ] {
        if cpu >= ncpu {
            bail!("{what} {cpu}: this machine has CPUs 0 to {}", ncpu - 1);
        }
    }
    let mut warnings = Vec::new();
    if plan.proxy_cpu == plan.load_cpu {
        warnings.push("proxy and load share a CPU: CPU figures include contention".to_string());
    }
    let tmp_path =
        std::env::temp_dir().join(format!("ringway-compare-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&tmp_path)?;
    let tmp = TempDir {
        path: tmp_path,
        keep: o.keep_temp,
    };
    let nofile = ringway::sys::raise_nofile_limit().map_or(1024, |(_, hard)| hard.min(1 << 20));
    if plan.idle_connections * 2 + 64 > nofile as usize {
        warnings.push(format!(
            "{} idle connections need {} descriptors in a proxy; the limit is {nofile}",
            plan.idle_connections,
            plan.idle_connections * 2 + 64
        ));
    }

    let mut nginx_note = String::new();
    let nginx_bin = if o.no_nginx {
        nginx_note = "left out (--no-nginx)".into();
        None
    } else {
        match find_or_install_nginx(&o, &tmp.path, &stop) {
            Ok(b) => Some(b),
            Err(e) => {
                nginx_note = format!("unavailable: {e:#}");
                println!("nginx {nginx_note}; comparing direct and ringway only");
                None
            }
        }
    };

    let tls = if plan.scenarios.iter().any(|s| s.tls().is_some()) {
        Some(wss::write_certificate(&tmp.path)?)
    } else {
        None
    };
    let mut lab = Lab {
        plan: &plan,
        bins: &bins,
        stop: &stop,
        nginx_bin,
        nginx_buffer_size: o.nginx_buffer_size.clone(),
        nofile,
        tls,
        echo: None,
        ringway: None,
        nginx: None,
        tmp,
        runs: 0,
        warnings: Vec::new(),
    };
    lab.start(Target::Direct)
        .context("starting the echo backend")?;
    lab.start(Target::Ringway).context("starting ringway")?;
    if lab.nginx_bin.is_some() {
        if let Err(e) = lab.start(Target::Nginx) {
            nginx_note = format!("did not start: {e:#}");
            println!("nginx {nginx_note}; comparing direct and ringway only");
            lab.nginx_bin = None;
        }
    }
    let nginx_conf = lab
        .nginx
        .as_ref()
        .map(|n| nginx_config(&lab.nginx_conf(n.port, &n.tls_ports)));
    let have_nginx = lab.nginx.is_some();
    let targets: Vec<Target> = Target::ALL
        .into_iter()
        .filter(|t| *t != Target::Nginx || have_nginx)
        .collect();
    let nginx_version = lab.nginx_bin.as_ref().map(|b| b.version.clone());
    println!(
        "ringway-compare: {} x {} scenarios x {} targets (wss:// and fleet: the proxies only), {:?} each (+{:?} warm-up); proxies on CPU {}, backend and generator on CPU {}",
        plural(plan.rounds, "round"),
        plan.scenarios.len(),
        targets.len(),
        plan.duration,
        plan.warmup,
        plan.proxy_cpu,
        plan.load_cpu
    );
    if let Some(v) = &nginx_version {
        println!("nginx: {v}");
    }

    let total_runs = plan.rounds
        * plan
            .scenarios
            .iter()
            .map(|sc| targets.iter().filter(|t| sc.runs_on(**t)).count())
            .sum::<usize>();
    let mut records = Vec::new();
    let mut interrupted = false;
    'rounds: for round in 0..plan.rounds {
        let order: Vec<Target> = round_order(round)
            .into_iter()
            .filter(|t| targets.contains(t))
            .collect();
        for &sc in &plan.scenarios {
            for &t in order.iter().filter(|t| sc.runs_on(**t)) {
                if stop.is_triggered() {
                    interrupted = true;
                    break 'rounds;
                }
                let rec = lab.run_one(round, sc, t);
                let n = records.len() + 1;
                match (&rec.report, &rec.error) {
                    (Some(v), e) => println!(
                        "[{n:>2}/{total_runs}] round {} {:<13} {:<7} {}{} ({:.1}s)",
                        round + 1,
                        sc.name(),
                        t.name(),
                        summary_line(sc, v),
                        e.as_ref().map_or(String::new(), |e| format!("  !! {e}")),
                        rec.wall_s
                    ),
                    (None, e) => println!(
                        "[{n:>2}/{total_runs}] round {} {:<13} {:<7} FAILED: {}",
                        round + 1,
                        sc.name(),
                        t.name(),
                        e.as_deref().unwrap_or("?")
                    ),
                }
                records.push(rec);
            }
        }
    }
    let nginx_errors = std::fs::read_to_string(lab.dir().join("nginx/error.log"))
        .map(|s| nginx::notable_errors(&s))
        .unwrap_or_default();
    warnings.append(&mut lab.warnings);
    drop(lab);
    if interrupted {
        warnings.push("interrupted: partial results".into());
    }
    if let Some(w) = syscall_warning(&records) {
        warnings.push(w);
    }

    let summary = Summary {
        rows: rows(&records, &plan.scenarios),
        noise: noise_summary(&records),
        plan: &plan,
        records: &records,
        warnings,
        nginx: NginxInfo {
            version: nginx_version,
            note: nginx_note,
            config: nginx_conf,
            errors: nginx_errors,
            buffer_size: o.nginx_buffer_size.clone(),
        },
        machine: (cpu_model, ncpu, kernel),
        nofile,
        date,
        total_s: t0.elapsed().as_secs_f64(),
        interrupted,
    };
    summary.print();

    let out = o
        .out
        .clone()
        .unwrap_or_else(|| o.results_dir.join(format!("compare-{stamp}.json")));
    let svg_path = o.svg.clone().unwrap_or_else(|| out.with_extension("svg"));
    for p in [&out, &svg_path] {
        if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&summary.json())?)
        .with_context(|| format!("writing {}", out.display()))?;
    let json_name = out
        .file_name()
        .map_or(String::new(), |f| f.to_string_lossy().into_owned());
    std::fs::write(&svg_path, summary.svg(&json_name))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    println!();
    println!("wrote {} and {}", out.display(), svg_path.display());
    println!(
        "total time {:.0} s ({:.1} min)",
        summary.total_s,
        summary.total_s / 60.0
    );
    if interrupted {
        bail!("interrupted");
    }
    Ok(())
}

/// What is known about nginx at the end.
struct NginxInfo {
    version: Option<String>,
    /// Why it is missing, if it is.
    note: String,
    config: Option<String>,
    /// The first lines of its error log.
    errors: Vec<String>,
    buffer_size: Option<String>,
}

/// Everything the table, the JSON file and the chart are made from.
struct Summary<'a> {
    plan: &'a Plan,
    records: &'a [RunRecord],
    rows: Vec<Row>,
    noise: Option<Noise>,
    warnings: Vec<String>,
    nginx: NginxInfo,
    /// CPU model, CPUs, kernel.
    machine: (String, usize, String),
    nofile: u64,
    date: String,
    total_s: f64,
    interrupted: bool,
}

impl Summary<'_> {
    fn have_nginx(&self) -> bool {
        self.nginx.config.is_some()
    }

    fn header(&self) -> String {
        let (cpu, n, kernel) = &self.machine;
        format!(
            "{cpu}, {n} CPUs, Linux {kernel}; proxies pinned to CPU {}, echo backend and generator to CPU {}",
            self.plan.proxy_cpu, self.plan.load_cpu
        )
    }

    fn settings_line(&self) -> String {
        format!(
            "{}, {:?} per run (+{:?} warm-up), median over rounds; {}",
            plural(self.plan.rounds, "round"),
            self.plan.duration,
            self.plan.warmup,
            self.date
        )
    }

    fn nginx_words(&self) -> String {
        match (&self.nginx.version, &self.nginx.buffer_size) {
            (Some(v), Some(b)) => format!("{v} (proxy_buffer_size {b})"),
            (Some(v), None) => format!("{v} (the guides' config, default proxy_buffer_size)"),
            (None, _) => "nginx n/a".to_string(),
        }
    }

    /// The line above the table: what ran against what,
    /// `ringway --tunnel-io=readiness vs nginx/1.22.1 (...)`.
    fn heading(&self) -> String {
        format!("{} vs {}", self.plan.ringway_words(), self.nginx_words())
    }

    fn print(&self) {
        println!();
        println!("{}", self.heading());
        println!("{}", self.header());
        println!("{}", self.settings_line());
        for sc in &self.plan.scenarios {
            println!("  {:<13} {}", sc.name(), self.plan.describe(*sc));
        }
        if !self.have_nginx() {
            println!("NOTE: nginx {}: direct and ringway only", self.nginx.note);
        }
        println!();
        print!("{}", table(&self.rows, self.have_nginx()));
        println!(
            "ratios are raw (ringway divided by the other); 'better' says which way wins. \
             rw/direct is ringway's cost over no proxy at all."
        );
        for l in self.notes() {
            println!("{l}");
        }
        let failed: Vec<&RunRecord> = self.records.iter().filter(|r| r.error.is_some()).collect();
        for r in &failed {
            println!(
                "  run round {} {} {}: {}",
                r.round + 1,
                r.scenario.name(),
                r.target.name(),
                r.error.as_deref().unwrap_or("")
            );
        }
        if failed
            .iter()
            .any(|r| r.error.as_deref().is_some_and(|e| e.ends_with(HALF_CLOSE)))
        {
            println!("  {HALF_CLOSE_NOTE}");
        }
        print!("{}", core_use(self.records, &self.plan.scenarios));
        if let Some(n) = &self.noise {
            println!("{}", n.full());
        }
        for w in &self.warnings {
            println!("  warning: {w}");
        }
        for l in &self.nginx.errors {
            println!("  nginx error.log: {l}");
        }
    }

    fn json(&self) -> Value {
        let plan = self.plan;
        let figures: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "key": r.figure.key,
                    "label": r.figure.label,
                    "unit": r.figure.unit,
                    "scenario": r.figure.scenario.name(),
                    "better": r.figure.better.word(),
                    "direct": r.get(Target::Direct),
                    "ringway": r.get(Target::Ringway),
                    "nginx": r.get(Target::Nginx),
                    "runs": {"direct": r.counts[0], "ringway": r.counts[1], "nginx": r.counts[2]},
                    "ringway_over_nginx": r.ratio_to(Target::Nginx),
                    "ringway_over_direct": r.ratio_to(Target::Direct),
                    "ringway_advantage_over_nginx": r.advantage_over(Target::Nginx),
                })
            })
            .collect();
        let runs: Vec<Value> = self
            .records
            .iter()
            .map(|r| {
                json!({
                    "round": r.round + 1,
                    "scenario": r.scenario.name(),
                    "target": r.target.name(),
                    "wall_s": r.wall_s,
                    "error": r.error,
                    "host": r.host.map(|h| json!({
                        "proxy_core": h.proxy_core.json(),
                        "load_core": h.load_core.json(),
                    })),
                    "report": r.report,
                })
            })
            .collect();
        let (cpu, n, kernel) = &self.machine;
        json!({
            "tool": "ringway-compare",
            "started_utc": self.date,
            "total_s": self.total_s,
            "interrupted": self.interrupted,
            "machine": {"cpu": cpu, "cpus": n, "kernel": kernel, "nofile_limit": self.nofile},
            "settings": {
                "quick": plan.quick,
                "rounds": plan.rounds,
                "duration_s": plan.duration.as_secs_f64(),
                "warmup_s": plan.warmup.as_secs_f64(),
                "proxy_cpu": plan.proxy_cpu,
                "load_cpu": plan.load_cpu,
                "scenarios": plan.scenarios.iter().map(|s| json!({
                    "name": s.name(),
                    "description": plan.describe(*s),
                    "ringway_load_args": plan.scenario_args(*s),
                })).collect::<Vec<_>>(),
                "ringway_args": plan.ringway_flags(),
                "ringway_extra_args": plan.ringway_extra,
                "count_syscalls": plan.count_syscalls,
            },
            "nginx": {
                "available": self.have_nginx(),
                "version": self.nginx.version,
                "note": self.nginx.note,
                "proxy_buffer_size": self.nginx.buffer_size,
                "config": self.nginx.config,
                "error_log": self.nginx.errors,
            },
            "figures": figures,
            "noise": self.noise.as_ref().map(Noise::full),
            "warnings": self.warnings,
            "runs": runs,
        })
    }

    /// Lines under the table (and the chart): direct's n/a, said once,
    /// and what the wss:// runs negotiated.
    fn notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self
            .plan
            .scenarios
            .iter()
            .any(|s| !s.runs_on(Target::Direct))
        {
            out.push(DIRECT_NA.to_string());
        }
        let tls = wss::negotiated(
            self.records
                .iter()
                .filter_map(|r| Some((r.target.name(), r.report.as_ref()?))),
        );
        out.extend(tls.into_iter().map(|l| format!("wss:// negotiated by {l}")));
        out
    }

    /// Red lines of the chart: the disturbance warning of the noise line,
    /// and the run's warnings.
    fn alerts(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.noise.as_ref().is_some_and(|n| n.disturbed) {
            out.push(format!("Disturbed run: {DISTURBED}."));
        }
        // One line each in the chart (the text and the JSON have them whole).
        out.extend(self.warnings.iter().map(|w| {
            let w: String = format!("warning: {w}");
            match w.char_indices().nth(140) {
                Some((at, _)) => format!("{}...", &w[..at]),
                None => w,
            }
        }));
        out
    }

    fn svg(&self, json_name: &str) -> String {
        let vs = if self.have_nginx() {
            Target::Nginx
        } else {
            Target::Direct
        };
        let title = if self.have_nginx() {
            "ringway vs nginx: WebSocket proxy, one worker each"
        } else {
            "ringway vs no proxy (nginx unavailable)"
        };
        let subtitle = [
            self.header(),
            format!("{}; {}", self.heading(), self.settings_line()),
        ];
        let footer = [
            format!(
                "Bars: how many times better ringway is than {} (log scale): for 'higher is better' \
                 figures ringway/{0}, for 'lower is better' {0}/ringway.",
                vs.name()
            ),
            "On a 2-core machine the generator and the backend share one core: read CPU per unit \
             of work, fixed-rate latency and memory, not raw throughput alone."
                .to_string(),
        ];
        let footer: Vec<String> = footer
            .into_iter()
            .chain(self.notes())
            .chain(self.noise.iter().map(|n| n.line.clone()))
            .chain([format!("Raw reports and medians: {json_name}")])
            .collect();
        svg_chart(
            title,
            &subtitle,
            vs.name(),
            &bars(&self.rows, self.plan, vs),
            &self.alerts(),
            &footer,
        )
    }
}

/// ringway's flags besides --listen and --upstream.
const RINGWAY_ARGS: [&str; 6] = [
    "--workers",
    "1",
    "--idle-timeout",
    "1h",
    "--log-level",
    "warn",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    }

    #[test]
    fn ratio_direction() {
        assert_eq!(ratio(Some(2.0), Some(1.0)), Some(2.0));
        assert_eq!(ratio(Some(2.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        // Twice the throughput is 2x better; twice the latency 2x worse.
        assert_eq!(advantage(Better::Higher, 2.0), 2.0);
        assert_eq!(advantage(Better::Lower, 2.0), 0.5);
        assert_eq!(verdict(2.0), "2.00x better");
        assert_eq!(verdict(0.5), "2.00x worse");
        assert_eq!(verdict(1.01), "same");
    }

    #[test]
    fn order_rotates() {
        use Target::*;
        assert_eq!(round_order(0), [Direct, Ringway, Nginx]);
        assert_eq!(round_order(1), [Nginx, Direct, Ringway]);
        assert_eq!(round_order(2), [Ringway, Nginx, Direct]);
        assert_eq!(round_order(3), round_order(0));
    }

    fn report(per_sec: f64, p99: f64, cpu: Option<f64>) -> Value {
        json!({
            "per_sec": per_sec,
            "mb_per_sec": 1.0,
            "latency": {"p50_us": p99 / 2.0, "p99_us": p99, "p999_us": p99 * 2.0},
            "cpu_us_per_unit": cpu.into_iter().collect::<Vec<_>>(),
            "rss_kib_per_conn": [],
            "errors": 0,
        })
    }

    fn record(round: usize, target: Target, rep: Value) -> RunRecord {
        RunRecord {
            round,
            scenario: Scenario::Echo,
            target,
            report: Some(rep),
            error: None,
            wall_s: 1.0,
            host: None,
        }
    }

    #[test]
    fn rows_take_medians_per_target() {
        let recs = vec![
            record(0, Target::Direct, report(100.0, 10.0, None)),
            record(0, Target::Ringway, report(80.0, 20.0, Some(5.0))),
            record(1, Target::Ringway, report(90.0, 30.0, Some(7.0))),
            record(2, Target::Ringway, report(70.0, 40.0, Some(6.0))),
            record(0, Target::Nginx, report(40.0, 60.0, Some(12.0))),
        ];
        let rows = rows(&recs, &[Scenario::Echo]);
        assert_eq!(rows.len(), 6);
        let rate = &rows[0];
        assert_eq!(rate.figure.key, "echo_rate");
        assert_eq!(rate.get(Target::Ringway), Some(80.0));
        assert_eq!(rate.counts, [1, 3, 1]);
        assert_eq!(rate.advantage_over(Target::Nginx), Some(2.0));
        let p99 = rows.iter().find(|r| r.figure.key == "echo_p99").unwrap();
        assert_eq!(p99.get(Target::Ringway), Some(30.0));
        assert_eq!(p99.advantage_over(Target::Nginx), Some(2.0));
        let cpu = rows.iter().find(|r| r.figure.key == "echo_cpu").unwrap();
        assert_eq!(cpu.get(Target::Direct), None);
        assert_eq!(cpu.get(Target::Ringway), Some(6.0));
        assert_eq!(cpu.advantage_over(Target::Nginx), Some(2.0));
        let t = table(&rows, true);
        assert!(t.contains("2.00x better"), "{t}");
    }

    fn plan() -> Plan {
        Plan::new(&Options::parse_from(["ringway-compare", "--quick"])).unwrap()
    }

    #[test]
    fn plan_defaults() {
        let p = plan();
        // Quick mode: three rounds too, so that a median is a median.
        assert_eq!((p.rounds, p.idle_connections), (3, 1000));
        assert_eq!(p.duration, Duration::from_secs(1));
        assert_eq!(p.fleet_tunnels, Some(2000));
        assert_eq!(p.scenarios.len(), Scenario::ALL.len());
        let full = Plan::new(&Options::parse_from(["ringway-compare"])).unwrap();
        assert_eq!((full.rounds, full.idle_connections), (3, 8000));
        // The full fleet: as many tunnels as ringway-load finds room for.
        assert_eq!(full.fleet_tunnels, None);
        assert!(!full
            .scenario_args(Scenario::Fleet)
            .contains(&"--tunnels".to_string()));
        assert_eq!(full.duration_of(Scenario::Idle), Duration::from_secs(5));
        let args = p.scenario_args(Scenario::Connect).join(" ");
        assert!(args.contains("--source-ips 127.0.0.2,127.0.0.3,"), "{args}");
        assert!(args.ends_with("127.0.0.17"), "{args}");
        assert!(p
            .scenario_args(Scenario::Open)
            .contains(&"--rate".to_string()));
        assert!(Scenario::parse("nope").is_err());
        assert_eq!(Scenario::parse("wss").unwrap().len(), Wss::ALL.len());
        assert_eq!(dur_arg(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn svg_has_one_bar_per_figure() {
        let rows: Vec<Row> = FIGURES
            .iter()
            .enumerate()
            .map(|(i, f)| Row {
                figure: *f,
                values: [Some(1.0), Some(1.0 + i as f64), Some(2.0)],
                counts: [1, 1, 1],
            })
            .collect();
        let p = plan();
        let b = bars(&rows, &p, Target::Nginx);
        let svg = svg_chart("t <&>", &["sub".into()], "nginx", &b, &[], &["foot".into()]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        let charted = FIGURES.iter().filter(|f| f.metric.charted()).count();
        assert_eq!(charted, FIGURES.len() - 2);
        assert_eq!(svg.matches(r#"class="bar""#).count(), charted);
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert!(svg.contains("t &lt;&amp;&gt;"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        // Groups are headed once each.
        assert_eq!(svg.matches(&p.describe(Scenario::Open)).count(), 1);
    }

    /// A report with system call counts (per unit) of the watched proxy.
    fn report_sys(cpu: f64, sys: Option<f64>, uring: Option<f64>) -> Value {
        let mut r = report(100.0, 10.0, Some(cpu));
        r["syscalls_per_unit"] = json!([sys]);
        r["io_uring_enters_per_unit"] = json!([uring]);
        r["syscalls_note"] = if sys.is_none() {
            json!("perf not found")
        } else {
            Value::Null
        };
        r
    }

    #[test]
    fn syscall_rows_and_zero_ratios() {
        let recs = vec![
            record(0, Target::Direct, report(100.0, 10.0, None)),
            record(0, Target::Ringway, report_sys(5.0, Some(0.4), Some(0.2))),
            record(1, Target::Ringway, report_sys(5.0, Some(0.5), Some(0.1))),
            record(2, Target::Ringway, report_sys(5.0, Some(0.3), Some(0.3))),
            record(0, Target::Nginx, report_sys(9.0, Some(3.9), Some(0.0))),
        ];
        let rows = rows(&recs, &[Scenario::Echo]);
        let sys = rows
            .iter()
            .find(|r| r.figure.key == "echo_syscalls")
            .unwrap();
        assert_eq!(sys.figure.better, Better::Lower);
        assert_eq!(sys.get(Target::Direct), None);
        assert_eq!(sys.get(Target::Ringway), Some(0.4));
        assert_eq!(sys.get(Target::Nginx), Some(3.9));
        assert_eq!(sys.counts, [0, 3, 1]);
        let uring = rows.iter().find(|r| r.figure.key == "echo_uring").unwrap();
        assert_eq!(uring.get(Target::Ringway), Some(0.2));
        assert_eq!(uring.get(Target::Nginx), Some(0.0));
        // nginx makes no io_uring_enter: no ratio, not an infinite one.
        assert_eq!(uring.ratio_to(Target::Nginx), None);
        assert_eq!(uring.advantage_over(Target::Nginx), None);
        let t = table(&rows, true);
        let line = |name: &str| {
            t.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name:?} in\n{t}"))
                .to_string()
        };
        let l = line("proxy syscalls per message ");
        assert!(l.contains("0.10 (9.75x better)"), "{l}");
        let l = line("proxy io_uring_enter per message ");
        assert!(l.contains(" n/a "), "{l}");
        assert!(l.contains("0.20") && l.contains("0.00"), "{l}");
        assert!(!t.contains("inf") && !t.contains("NaN"), "{t}");
        // The rows sit in the [echo] group, after the CPU figure.
        let keys: Vec<&str> = rows.iter().map(|r| r.figure.key).collect();
        assert_eq!(
            keys,
            [
                "echo_rate",
                "echo_p50",
                "echo_p99",
                "echo_cpu",
                "echo_syscalls",
                "echo_uring"
            ]
        );
        // The chart leaves io_uring_enter out and draws no infinite bar.
        let p = plan();
        let b = bars(&rows, &p, Target::Nginx);
        assert_eq!(b.len(), 5);
        assert!(b.iter().all(|b| b.advantage.is_none_or(f64::is_finite)));
        let svg = svg_chart("t", &[], "nginx", &b, &[], &[]);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        // A zero on ringway's side of a charted figure: n/a, not a bar.
        let mut zero = sys.clone();
        zero.values[1] = Some(0.0);
        assert_eq!(ratio_cell(&zero, Target::Nginx, true), "n/a");
        assert!(bars(&[zero], &p, Target::Nginx)[0].advantage.is_none());
        // The progress line of a run names the counts.
        let line = summary_line(Scenario::Echo, &report_sys(5.0, Some(0.4), Some(0.2)));
        assert!(
            line.ends_with("0.40 syscalls/unit (0.20 io_uring_enter)"),
            "{line}"
        );
    }

    #[test]
    fn absent_syscall_counts_show_a_dash() {
        let recs = vec![
            record(0, Target::Ringway, report_sys(5.0, None, None)),
            record(0, Target::Nginx, report_sys(9.0, None, None)),
        ];
        let rows = rows(&recs, &[Scenario::Echo]);
        let sys = rows
            .iter()
            .find(|r| r.figure.key == "echo_syscalls")
            .unwrap();
        assert_eq!(sys.values, [None, None, None]);
        assert_eq!(ratio_cell(sys, Target::Nginx, true), "-");
        let t = table(&rows, true);
        let l = t
            .lines()
            .find(|l| l.starts_with("proxy syscalls per message"))
            .unwrap();
        assert_eq!(l.split_whitespace().filter(|w| *w == "-").count(), 5, "{l}");
        let w = syscall_warning(&recs).unwrap();
        assert!(
            w.contains("2 runs of 2")
                && w.contains("round 1 echo ringway")
                && w.ends_with("perf not found"),
            "{w}"
        );
        let counted = vec![record(
            0,
            Target::Ringway,
            report_sys(5.0, Some(1.0), Some(0.0)),
        )];
        assert_eq!(syscall_warning(&counted), None);
        let line = summary_line(Scenario::Echo, &recs[0].report.clone().unwrap());
        assert!(!line.contains("syscalls"), "{line}");
    }

    #[test]
    fn every_ws_scenario_but_idle_has_a_syscall_row() {
        for sc in Scenario::ALL
            .into_iter()
            .filter(|s| s.runs_on(Target::Direct))
        {
            let n = FIGURES
                .iter()
                .filter(|f| f.scenario == sc && f.metric == Metric::ProxySyscalls)
                .count();
            assert_eq!(n, usize::from(sc != Scenario::Idle), "{sc:?}");
            let u = FIGURES
                .iter()
                .filter(|f| f.scenario == sc && f.metric == Metric::ProxyUringEnters)
                .count();
            assert_eq!(
                u,
                usize::from(matches!(sc, Scenario::Echo | Scenario::Open))
            );
        }
        let r = report_sys(5.0, Some(2.5), Some(0.5));
        assert_eq!(Metric::ProxySyscalls.extract(&r), Some(2.5));
        assert_eq!(Metric::ProxyUringEnters.extract(&r), Some(0.5));
        assert_eq!(
            Metric::ProxySyscalls.extract(&report_sys(5.0, None, None)),
            None
        );
        assert!(Metric::ProxySyscalls.of_proxy() && Metric::ProxyUringEnters.of_proxy());
    }

    #[test]
    fn ringway_args_are_appended() {
        let o = Options::parse_from([
            "ringway-compare",
            "--quick",
            "--ringway-arg=--tunnel-io=readiness",
            "--ringway-arg",
            "--recv-buffers=64",
        ]);
        assert_eq!(
            o.ringway_arg,
            ["--tunnel-io=readiness", "--recv-buffers=64"]
        );
        let p = Plan::new(&o).unwrap();
        let args = p.ringway_args(8080, "127.0.0.1:9000");
        assert_eq!(
            args[..4],
            ["--listen", "127.0.0.1:8080", "--upstream", "127.0.0.1:9000"]
        );
        assert!(
            args.join(" ").ends_with(
                "--workers 1 --idle-timeout 1h --log-level warn --tunnel-io=readiness --recv-buffers=64"
            ),
            "{args:?}"
        );
        assert_eq!(
            p.ringway_words(),
            "ringway --tunnel-io=readiness --recv-buffers=64"
        );
        assert_eq!(p.ringway_flags().len(), RINGWAY_ARGS.len() + 2);
        // Without: ringway as before.
        let p = plan();
        assert_eq!(p.ringway_words(), "ringway");
        assert_eq!(p.ringway_flags(), RINGWAY_ARGS);
        assert!(p.count_syscalls);
        let o = Options::parse_from(["ringway-compare", "--no-perf"]);
        assert!(!Plan::new(&o).unwrap().count_syscalls);
    }

    #[test]
    fn the_last_results_dir_wins() {
        // loadtest/compare passes its own before the caller's flags.
        let o = Options::parse_from([
            "ringway-compare",
            "--results-dir",
            "/repo/loadtest/results",
            "--results-dir",
            "/tmp/load-check",
        ]);
        assert_eq!(o.results_dir, PathBuf::from("/tmp/load-check"));
    }

    #[test]
    fn the_wss_and_fleet_scenarios_are_planned() {
        let p = plan();
        for w in Wss::ALL {
            assert!(p.scenarios.contains(&Scenario::Wss(w)), "{w:?}");
            // The backend is ws:// only: the proxies alone.
            assert!(!Scenario::Wss(w).runs_on(Target::Direct));
            assert!(Scenario::Wss(w).runs_on(Target::Nginx));
        }
        assert!(!Scenario::Fleet.runs_on(Target::Direct));
        assert!(Scenario::Idle.runs_on(Target::Direct));
        let args = |sc| p.scenario_args(sc).join(" ");
        let a = args(Scenario::Wss(Wss::Connect13));
        assert!(
            a.starts_with("connect --concurrency 50 --source-ips 127.0.0.2,")
                && a.ends_with("--insecure --tls-version 1.3"),
            "{a}"
        );
        let a = args(Scenario::Wss(Wss::Resume12));
        assert!(a.ends_with("--insecure --tls-version 1.2 --resume"), "{a}");
        let a = args(Scenario::Wss(Wss::Idle));
        assert!(a.starts_with("idle --connections 1000 "), "{a}");
        let a = args(Scenario::Fleet);
        assert!(
            a.starts_with("fleet --active 0.05 --rate 2000 --size 64 --source-ips 127.0.1.2,")
                && a.ends_with("--tunnels 2000"),
            "{a}"
        );
        // Every scenario has figures, and the memory ones get a fresh proxy.
        for sc in Scenario::ALL {
            assert!(FIGURES.iter().any(|f| f.scenario == sc), "{sc:?}");
        }
        assert!(Scenario::Fleet.fresh_proxy() && Scenario::Wss(Wss::Idle).fresh_proxy());
        assert!(!Scenario::Wss(Wss::Echo).fresh_proxy());
        // ringway's wss:// listener.
        let t = Plan::ringway_tls_args(8443, Path::new("/c.pem"), Path::new("/k.pem"));
        assert_eq!(
            t.join(" "),
            "--tls-listen 127.0.0.1:8443 --cert /c.pem --key /k.pem"
        );
    }

    #[test]
    fn labels_say_each_thing_once() {
        for f in FIGURES {
            // "per message" in the label: the unit is not "µs/msg" too.
            assert!(
                !(f.label.contains(" per ") && f.unit.contains('/')),
                "{}: {} ({})",
                f.key,
                f.label,
                f.unit
            );
            let name = row_name(f);
            assert!(!name.contains("()"), "{name}");
        }
        let p = plan();
        for sc in Scenario::ALL {
            let h = p.heading(sc);
            let words: Vec<&str> = h
                .split([' ', ',', ':', ';'])
                .filter(|w| !w.is_empty())
                .collect();
            for pair in words.windows(2) {
                assert_ne!(pair[0], pair[1], "{h}");
            }
            assert_eq!(h.matches(sc.name()).count(), 1, "{h}");
            assert_eq!(
                h.matches("TLS").count(),
                usize::from(sc.tls().is_some()),
                "{h}"
            );
        }
    }

    fn summary_of<'a>(plan: &'a Plan, recs: &'a [RunRecord]) -> Summary<'a> {
        Summary {
            plan,
            records: recs,
            rows: rows(recs, &plan.scenarios),
            noise: noise_summary(recs),
            warnings: Vec::new(),
            nginx: NginxInfo {
                version: Some("nginx/1.22.1".into()),
                note: String::new(),
                config: Some("conf".into()),
                errors: Vec::new(),
                buffer_size: None,
            },
            machine: ("cpu".into(), 2, "6.1".into()),
            nofile: 20000,
            date: "2026-12-03 18:00 UTC".into(),
            total_s: 1.0,
            interrupted: false,
        }
    }

    #[test]
    fn a_disturbed_run_says_so_in_the_chart_too() {
        let plan = Plan::new(&Options::parse_from([
            "ringway-compare",
            "--quick",
            "--scenarios",
            "echo,wss-connect",
        ]))
        .unwrap();
        let with_others = |others: f64| {
            let core = |o| CoreUse {
                busy_pct: 90.0,
                softirq_pct: 1.0,
                steal_pct: 0.0,
                others_pct: o,
            };
            let mut r = record(0, Target::Ringway, report(100.0, 10.0, Some(5.0)));
            r.host = Some(HostUse {
                proxy_core: core(Some(others)),
                load_core: core(None),
            });
            let mut tls = record(0, Target::Nginx, report(100.0, 10.0, Some(5.0)));
            tls.scenario = Scenario::Wss(Wss::Connect13);
            tls.report.as_mut().unwrap()["tls"] = json!({"version": "TLSv1_3",
                "suite": "TLS13_AES_256_GCM_SHA384", "full_handshakes": 9, "resumed_handshakes": 0});
            vec![r, tls]
        };
        let recs = with_others(35.0);
        let s = summary_of(&plan, &recs);
        assert!(s.noise.as_ref().unwrap().full().contains(DISTURBED));
        let svg = s.svg("x.json");
        assert!(svg.contains(DISTURBED), "{svg}");
        assert!(svg.contains("#b23b3b\">Disturbed run:"), "{svg}");
        // The noise figures themselves are in the chart, once.
        assert_eq!(svg.matches("noise: on the proxy core").count(), 1);
        // Said once: direct is n/a for wss://; and what was negotiated.
        assert_eq!(svg.matches(&xml_escape(DIRECT_NA)).count(), 1, "{svg}");
        assert!(svg.contains("wss:// negotiated by nginx: TLSv1_3 TLS13_AES_256_GCM_SHA384"));
        let notes = s.notes();
        assert_eq!(
            notes.iter().filter(|n| n.contains("direct: n/a")).count(),
            1
        );
        // A quiet run: no warning.
        let recs = with_others(2.0);
        let mut quiet = summary_of(&plan, &recs);
        quiet.warnings = vec!["x".repeat(300)];
        assert_eq!(quiet.alerts(), [format!("warning: {}...", "x".repeat(131))]);
        let svg = quiet.svg("x.json");
        assert!(!svg.contains(DISTURBED), "{svg}");
        assert!(svg.contains("noise: on the proxy core"));
        // Without wss:// or fleet, nothing to say about direct.
        let ws = Plan::new(&Options::parse_from([
            "ringway-compare",
            "--scenarios",
            "echo",
        ]))
        .unwrap();
        assert!(summary_of(&ws, &[]).notes().is_empty());
    }

    #[test]
    fn fleet_flags_are_checked_when_parsed() {
        let parse = |flag: &str, v: &str| Options::try_parse_from(["ringway-compare", flag, v]);
        let e = parse("--fleet-active", "0").unwrap_err().to_string();
        assert!(
            e.contains("--fleet-active") && e.contains("a share above 0"),
            "{e}"
        );
        assert!(parse("--fleet-active", "1.5").is_err());
        assert!(parse("--fleet-rate", "0").is_err());
        assert_eq!(parse("--fleet-active", "0.2").unwrap().fleet_active, 0.2);
    }

    #[test]
    fn fleet_share_in_words() {
        assert_eq!(percent(0.05), "5");
        assert_eq!(percent(0.07), "7");
        assert_eq!(percent(1.0), "100");
        assert_eq!(percent(0.001), "0.1");
        assert_eq!(percent(0.125), "12.5");
    }

    #[test]
    fn json_and_headings_carry_ringway_args_and_syscalls() {
        let plan = Plan::new(&Options::parse_from([
            "ringway-compare",
            "--quick",
            "--scenarios",
            "echo",
            "--ringway-arg=--tunnel-io=readiness",
        ]))
        .unwrap();
        let recs = vec![
            record(0, Target::Ringway, report_sys(5.0, Some(0.4), Some(0.2))),
            record(0, Target::Nginx, report_sys(9.0, Some(3.9), Some(0.0))),
        ];
        let summary = Summary {
            noise: None,
            ..summary_of(&plan, &recs)
        };
        assert!(
            summary
                .heading()
                .starts_with("ringway --tunnel-io=readiness vs nginx/1.22.1"),
            "{}",
            summary.heading()
        );
        let v = summary.json();
        let settings = &v["settings"];
        assert_eq!(
            settings["ringway_extra_args"],
            json!(["--tunnel-io=readiness"])
        );
        assert_eq!(
            settings["ringway_args"].as_array().unwrap().last().unwrap(),
            "--tunnel-io=readiness"
        );
        assert_eq!(settings["count_syscalls"], true);
        let fig = |key: &str| {
            v["figures"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["key"] == key)
                .unwrap_or_else(|| panic!("no {key}"))
                .clone()
        };
        let sys = fig("echo_syscalls");
        assert_eq!(
            (sys["ringway"].as_f64(), sys["nginx"].as_f64()),
            (Some(0.4), Some(3.9))
        );
        assert_eq!(sys["better"], "lower");
        let uring = fig("echo_uring");
        assert_eq!(uring["nginx"], 0.0);
        assert!(uring["ringway_over_nginx"].is_null());
        assert!(uring["direct"].is_null());
        let svg = summary.svg("x.json");
        assert!(svg.contains("ringway --tunnel-io=readiness vs nginx/1.22.1"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        let (d, s) = utc_stamp(UNIX_EPOCH + Duration::from_secs(19_723 * 86_400 + 3661));
        assert_eq!(d, "2024-01-01 01:01 UTC");
        assert_eq!(s, "20240101-010101");
    }

    #[test]
    fn cpu_lines() {
        let stat =
            "cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 10 1 5 100 7 2 3 4 0 0\ncpu1 1 2 3 4 5 6 7 8 0 0\n";
        let c0 = parse_cpu_times(stat, 0).unwrap();
        assert_eq!((c0.busy, c0.softirq, c0.steal), (10 + 1 + 5 + 2 + 3, 3, 4));
        assert_eq!(parse_cpu_times(stat, 1).unwrap().busy, 1 + 2 + 3 + 6 + 7);
        assert_eq!(parse_cpu_times(stat, 2), None);
        // 100 jiffies busy in 2 s, of which the proxies used 0.5 s: 25% others.
        let u = CoreUse::between(
            CpuTimes::default(),
            CpuTimes {
                busy: 100,
                softirq: 10,
                steal: 2,
            },
            2.0,
            Some(0.5),
        );
        assert_eq!((u.busy_pct, u.softirq_pct, u.steal_pct), (50.0, 5.0, 1.0));
        assert_eq!(u.others_pct, Some(25.0));
    }

    #[test]
    fn core_use_lines() {
        let core = |busy_pct| CoreUse {
            busy_pct,
            softirq_pct: 0.0,
            steal_pct: 0.0,
            others_pct: None,
        };
        let mut r = record(0, Target::Ringway, report(1.0, 1.0, None));
        r.host = Some(HostUse {
            proxy_core: core(99.6),
            load_core: core(42.0),
        });
        let text = core_use(&[r], &[Scenario::Echo, Scenario::Idle]);
        assert!(
            text.contains(&format!("  {:<13}  ringway 100/42", "echo")),
            "{text}"
        );
        assert!(text.contains("\n  idle\n"), "{text}");
    }

    #[test]
    fn generator_error_words() {
        let ok = json!({"errors": 0, "error_samples": []});
        assert_eq!(generator_errors(&ok, Target::Nginx), None);
        let end = json!({"errors": 3, "error_samples": ["connection closed with echoes missing"]});
        assert!(generator_errors(&end, Target::Nginx)
            .unwrap()
            .ends_with(HALF_CLOSE));
        assert!(generator_errors(&end, Target::Ringway)
            .unwrap()
            .contains("3 errors"));
    }

    #[test]
    fn xml_escapes() {
        assert_eq!(xml_escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
    }
}
