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
                "  pid {}: {:.2} CPU s, {:.2} µs/unit, RSS {} -> {} KiB{}, fds {} -> {}",
                u.pid,
                u.cpu_s,
                self.cpu_us_per_unit.get(i).copied().unwrap_or(0.0),
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
}
