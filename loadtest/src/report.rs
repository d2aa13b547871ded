//! Results: one JSON document per run (what `ringway-compare` reads) and a
//! short human summary.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procstat::Usage;
use crate::tls::TlsInfo;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// A latency histogram in nanoseconds, 1 µs to 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 100_000_000_000, 3).expect("valid bounds")
}

/// The outcome of one scenario run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub target: String,
    /// Length of the measured window, seconds.
    pub window_s: f64,
    pub connections: u64,
    /// Messages written (echo, bulk), connection cycles begun (connect), or
    /// connections opened (idle), over the whole run.
    pub sent: u64,
    /// Of those, the ones answered: echoes received, cycles completed,
    /// connections that answered the final ping. Equal to `sent` in a run
    /// without loss.
    pub echoed: u64,
    /// Echoes received (echo, bulk), handshakes completed (connect), or
    /// connections that answered the final ping (idle).
    pub received: u64,
    pub errors: u64,
    /// First few error messages, for the reader.
    pub error_samples: Vec<String>,
    /// received / window.
    pub per_sec: f64,
    /// Payload bytes each way per second, in MB (10^6).
    pub mb_per_sec: f64,
    /// Echo round trip (echo, bulk) or handshake time (connect).
    pub latency: Latency,
    /// One per `--watch-pid`.
    pub usage: Vec<Usage>,
    /// Per watched pid: CPU µs per unit of work (message, handshake, MB).
    pub cpu_us_per_unit: Vec<f64>,
    /// Per watched pid: system calls per unit of work (`null`: not counted).
    pub syscalls_per_unit: Vec<Option<f64>>,
    /// Per watched pid: io_uring_enter(2) calls per unit of work.
    pub io_uring_enters_per_unit: Vec<Option<f64>>,
    /// Why system calls were not counted (no perf, no permission, ...);
    /// `null` when they were, or when no pid was watched.
    pub syscalls_note: Option<String>,
    /// Per watched pid (idle): RSS growth per held connection, KiB.
    pub rss_kib_per_conn: Vec<f64>,
    /// wss:// runs only: what the handshakes negotiated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSummary>,
}

/// The TLS handshakes of a wss:// run (all of them, window or not).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TlsSummary {
    /// Negotiated by the first handshake, e.g. `TLSv1_3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub suite: String,
    pub full_handshakes: u64,
    pub resumed_handshakes: u64,
}

impl TlsSummary {
    pub fn add(&mut self, info: &TlsInfo) {
        if self.version.is_empty() {
            self.version = info.version.map(|v| format!("{v:?}")).unwrap_or_default();
            self.suite = info.suite.map(|s| format!("{s:?}")).unwrap_or_default();
        }
        if info.resumed {
            self.resumed_handshakes += 1;
        } else {
            self.full_handshakes += 1;
        }
    }

    pub fn merge(&mut self, other: &TlsSummary) {
        if self.version.is_empty() {
            self.version.clone_from(&other.version);
            self.suite.clone_from(&other.suite);
        }
        self.full_handshakes += other.full_handshakes;
        self.resumed_handshakes += other.resumed_handshakes;
    }
}

/// The unit of work of a scenario, as the summary names it.
pub fn unit_of(scenario: &str) -> &'static str {
    match scenario {
        "echo" | "fleet" => "msg",
        "bulk" => "MB",
        "connect" => "handshake",
        _ => "conn",
    }
}

/// `3.52 syscalls/msg (0.10 io_uring_enter)`, or `syscalls n/a`.
pub fn syscalls_words(per_unit: Option<f64>, uring_per_unit: Option<f64>, unit: &str) -> String {
    let n = |v: f64| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        }
    };
    match (per_unit, uring_per_unit) {
        (Some(s), Some(u)) => format!("{} syscalls/{unit} ({} io_uring_enter)", n(s), n(u)),
        (Some(s), None) => format!("{} syscalls/{unit}", n(s)),
        _ => "syscalls n/a".to_string(),
    }
}

impl Report {
    pub fn print_summary(&self) {
        let unit = match self.scenario {
            "connect" => "handshakes",
            "idle" => "alive",
            _ => "msgs",
        };
        println!(
            "{} {}: {} conns, {:.1}s window: {} sent, {} {unit}, {} errors",
            self.scenario,
            self.target,
            self.connections,
            self.window_s,
            self.sent,
            self.received,
            self.errors
        );
        if self.scenario != "idle" {
            println!(
                "  rate {:.0} {unit}/s, {:.1} MB/s each way; latency µs p50 {:.0} p90 {:.0} p99 {:.0} p99.9 {:.0} max {:.0}",
                self.per_sec,
                self.mb_per_sec,
                self.latency.p50_us,
                self.latency.p90_us,
                self.latency.p99_us,
                self.latency.p999_us,
                self.latency.max_us
            );
        }
        if let Some(t) = &self.tls {
            println!(
                "  tls {} {}: {} full, {} resumed handshakes",
                t.version, t.suite, t.full_handshakes, t.resumed_handshakes
            );
        }
        for (i, u) in self.usage.iter().enumerate() {
            println!(
                "  pid {}: {:.2} CPU s, {:.2} µs/unit, {}, RSS {} -> {} KiB{}, fds {} -> {}",
                u.pid,
                u.cpu_s,
                self.cpu_us_per_unit.get(i).copied().unwrap_or(0.0),
                syscalls_words(
                    self.syscalls_per_unit.get(i).copied().flatten(),
                    self.io_uring_enters_per_unit.get(i).copied().flatten(),
                    unit_of(self.scenario)
                ),
                u.rss_kib_before,
                u.rss_kib_after,
                self.rss_kib_per_conn
                    .get(i)
                    .map_or(String::new(), |k| format!(" ({k:.2} KiB/conn)")),
                u.fds_before,
                u.fds_after
            );
        }
        for e in &self.error_samples {
            println!("  error: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_microseconds() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let l = Latency::from_histogram(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50_us - 500.0).abs() < 2.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() < 2.0, "{l:?}");
        assert!((l.max_us - 1000.0).abs() < 2.0, "{l:?}");
    }

    #[test]
    fn syscall_words_per_unit() {
        assert_eq!(
            syscalls_words(Some(3.5), Some(0.0), unit_of("echo")),
            "3.50 syscalls/msg (0.00 io_uring_enter)"
        );
        assert_eq!(
            syscalls_words(Some(1234.4), None, unit_of("bulk")),
            "1234 syscalls/MB"
        );
        assert_eq!(
            syscalls_words(None, None, unit_of("connect")),
            "syscalls n/a"
        );
        assert_eq!(unit_of("connect"), "handshake");
    }

    #[test]
    fn absent_counts_are_null_in_json() {
        let u = crate::procstat::Usage {
            pid: 7,
            cpu_s: 1.0,
            rss_kib_before: 1,
            rss_kib_after: 2,
            fds_before: 3,
            fds_after: 4,
            syscalls: None,
            io_uring_enters: Some(0),
        };
        let r = Report {
            scenario: "echo",
            target: "ws://127.0.0.1:1/".into(),
            window_s: 1.0,
            connections: 1,
            sent: 10,
            echoed: 10,
            received: 10,
            errors: 0,
            error_samples: Vec::new(),
            per_sec: 10.0,
            mb_per_sec: 0.0,
            latency: Latency::default(),
            usage: vec![u],
            cpu_us_per_unit: vec![1.0],
            syscalls_per_unit: vec![None],
            io_uring_enters_per_unit: vec![Some(0.0)],
            syscalls_note: Some("perf not found".into()),
            rss_kib_per_conn: Vec::new(),
            tls: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert!(v["usage"][0]["syscalls"].is_null());
        assert_eq!(v["usage"][0]["io_uring_enters"], 0);
        assert!(v["syscalls_per_unit"][0].is_null());
        assert_eq!(v["io_uring_enters_per_unit"][0], 0.0);
        assert_eq!(v["syscalls_note"], "perf not found");
    }
}
