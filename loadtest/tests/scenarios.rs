//! Every load scenario, briefly, through a real ringway (in-process, via its
//! library API) in front of the load echo backend: the counts the generator
//! reports must add up exactly.

use std::time::Duration;

use clap::Parser;
use ringway::config::{Cli, Config};
use ringway::shutdown::Shutdown;
use ringway_load::client::Target;
use ringway_load::report::Report;
use ringway_load::scenario::{self, Common, EchoOpts, Load};

struct Rig {
    common: Common,
    shutdown: Shutdown,
    server: Option<ringway::server::Server>,
}

impl Rig {
    fn new() -> Rig {
        let backend = ringway_load::echo::spawn("127.0.0.1:0".parse().unwrap(), 1, &[]).unwrap();
        let cli = Cli::try_parse_from([
            "ringway",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &backend.to_string(),
            "--workers",
            "1",
            "--no-pin",
        ])
        .unwrap();
        let config = Config::from_args(&cli.proxy, 1).unwrap();
        let shutdown = Shutdown::new();
        let server = ringway::server::start(config, shutdown.clone()).unwrap();
        let addr = server.local_addrs()[0];
        let common = Common {
            target: Target::parse(&format!("ws://{addr}/load")).unwrap(),
            threads: 1,
            pin: Vec::new(),
            source_ips: Vec::new(),
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(500),
            watch: vec![std::process::id()],
        };
        Rig {
            common,
            shutdown,
            server: Some(server),
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.force();
        if let Some(s) = self.server.take() {
            let _ = s.wait();
        }
    }
}

fn assert_lossless(r: &Report) {
    assert_eq!(r.errors, 0, "{:?}", r.error_samples);
    assert!(r.received > 0, "nothing measured: {r:?}");
    assert_eq!(r.sent, r.echoed, "every message answered: {r:?}");
    assert!(r.received <= r.echoed);
    assert_eq!(r.usage.len(), 1);
    assert!(
        r.latency.count == r.received || r.scenario == "idle",
        "{r:?}"
    );
}

#[test]
fn echo_closed_and_open_loop() {
    let rig = Rig::new();
    let closed = scenario::echo(
        &rig.common,
        &EchoOpts {
            scenario: "echo",
            connections: 8,
            size: 100,
            binary: true,
            load: Load::Closed { inflight: 4 },
        },
    )
    .unwrap();
    assert_lossless(&closed);
    assert_eq!(closed.connections, 8);
    assert!(closed.latency.p50_us > 0.0 && closed.latency.p50_us <= closed.latency.max_us);

    let open = scenario::echo(
        &rig.common,
        &EchoOpts {
            scenario: "echo",
            connections: 4,
            size: 10,
            binary: false,
            load: Load::Open { rate: 400.0 },
        },
    )
    .unwrap();
    assert_lossless(&open);
    // 400/s for 0.5 s after a 0.1 s warm-up: ~240 sent, ~200 in the window.
    assert!((150..=330).contains(&open.sent), "{open:?}");
    assert!((120..=260).contains(&open.received), "{open:?}");
}

#[test]
fn bulk_messages() {
    let rig = Rig::new();
    let r = scenario::echo(
        &rig.common,
        &EchoOpts {
            scenario: "bulk",
            connections: 1,
            size: 1 << 20,
            binary: true,
            load: Load::Closed { inflight: 2 },
        },
    )
    .unwrap();
    assert_lossless(&r);
    assert_eq!(r.scenario, "bulk");
    assert!((r.mb_per_sec - r.received as f64 * 1.048576 / r.window_s).abs() < 0.01);
}

#[test]
fn connect_cycles() {
    let rig = Rig::new();
    let r = scenario::connect(&rig.common, 4).unwrap();
    assert_lossless(&r);
    assert!(r.per_sec > 0.0);
}

#[test]
fn idle_connections_all_answer() {
    let rig = Rig::new();
    let r = scenario::idle(&rig.common, 50).unwrap();
    assert_lossless(&r);
    assert_eq!((r.sent, r.echoed, r.received), (50, 50, 50));
    assert_eq!(r.rss_kib_per_conn.len(), 1);
}

#[test]
fn a_dead_target_is_an_error_not_a_hang() {
    let rig = Rig::new();
    let mut common = rig.common.clone();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    common.target = Target::parse(&format!("ws://{dead}/")).unwrap();
    let err = scenario::idle(&common, 3).unwrap_err();
    assert!(
        format!("{err:#}").contains("setting up connections"),
        "{err:#}"
    );
}
