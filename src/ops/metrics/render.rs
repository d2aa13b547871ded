//! The counters as text: Prometheus text exposition ([`Metrics::render`],
//! `/metrics`) and a short stub_status-like summary ([`Metrics::status`],
//! `/status`), both summed over all cores at scrape time.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{lock, CloseReason, CoreMetrics, Metrics, ServerKey, State, BOUND_LABELS, STATUSES};

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
            "ringway_connections_shed_total",
            "counter",
            "Client connections closed unanswered: far over the room the open-files limit leaves.",
            self.sum(|c| c.shed.get()),
        );
        o.single(
            "ringway_local_failures_total",
            "counter",
            "Backend connects that failed for want of ringway's own resources (descriptors, memory, local ports); never counted against a server.",
            self.sum(|c| c.local_failures.get()),
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
        o.single(
            "ringway_proxy_header_errors_total",
            "counter",
            "Connections closed for a bad, missing or untrusted PROXY protocol header.",
            self.sum(|c| c.proxy_header_errors.get()),
        );
        o.single(
            "ringway_accept_errors_total",
            "counter",
            "Accepts that failed (out of descriptors or memory).",
            self.sum(|c| c.accept_errors.get()),
        );
        o.single(
            "ringway_ring_buffers_free",
            "gauge",
            "Receive buffers of the completion rings waiting for bytes (all cores).",
            self.cores
                .iter()
                .map(|c| c.ring_buffers_free.get())
                .fold(0, i64::wrapping_add),
        );
        o.single(
            "ringway_ring_buffer_waits_total",
            "counter",
            "Receives of the completion rings that found no buffer free and waited.",
            self.sum(|c| c.ring_buffer_waits.get()),
        );
        o.single(
            "ringway_ring_bulk_handoffs_total",
            "counter",
            "Tunnel directions the completion rings handed over to splice as bulk.",
            self.sum(|c| c.ring_bulk_handoffs.get()),
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
        o.family(
            "ringway_build_info",
            "gauge",
            "Always 1: the version and commit ringway was built from, and the I/O driver its workers run on.",
        );
        o.sample(
            "ringway_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", crate::COMMIT),
                ("driver", self.driver()),
            ],
            1,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::metrics::{Counter, Histogram};
    use std::time::Duration;

    /// Every sample line of `text` (no comments).
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    fn has(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
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
        b.proxy_header_errors.add(4);
        a.accept_errors.inc();
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
            "ringway_proxy_header_errors_total 4",
            "ringway_accept_errors_total 1",
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
        let info = |driver: &str| {
            format!(
                "ringway_build_info{{version=\"{}\",commit=\"{}\",driver=\"{driver}\"}} 1",
                env!("CARGO_PKG_VERSION"),
                crate::COMMIT
            )
        };
        assert!(has(&text, &info("unknown")), "{text}");
        m.set_driver("io_uring");
        m.set_driver("epoll");
        let state = State {
            draining: false,
            open_connections: 0,
        };
        assert!(has(&m.render(state), &info("io_uring")));
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
}
