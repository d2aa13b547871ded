//! Every load scenario, briefly, through a real ringway (in-process, via its
//! library API) in front of the load echo backend: the counts the generator
//! reports must add up exactly. The wss:// runs go through ringway
//! terminating TLS, and to the echo backend serving TLS itself (which needs
//! nothing of the proxy's, and tests the generator's TLS options).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use common::{Pki, TempDir};
use ringway::config::{Cli, Settings};
use ringway::server::shutdown::Shutdown;
use ringway_load::client::Target;
use ringway_load::report::Report;
use ringway_load::scenario::{self, Common, EchoOpts, Load};
use ringway_load::tls::TlsOptions;

struct Rig {
    common: Common,
    shutdown: Shutdown,
    server: Option<ringway::server::Server>,
    _dir: Option<TempDir>,
}

impl Rig {
    /// ringway on ws:// in front of the echo backend.
    fn new() -> Rig {
        let backend = ringway_load::echo::spawn("127.0.0.1:0".parse().unwrap(), 1, &[]).unwrap();
        let (server, shutdown) = ringway(&["--listen", "127.0.0.1:0"], backend);
        let addr = server.local_addrs()[0];
        Rig {
            common: short_run(Target::parse(&format!("ws://{addr}/load")).unwrap()),
            shutdown,
            server: Some(server),
            _dir: None,
        }
    }

    /// ringway terminating TLS (wss://, with a certificate from a test CA)
    /// in front of the ws:// echo backend; the generator verifies ringway's
    /// certificate against that CA.
    fn wss() -> Rig {
        let pki = Pki::new();
        let dir = TempDir::new("rig-wss");
        let cert = dir.file("cert.pem", &pki.cert_pem);
        let key = dir.file("key.pem", &pki.key_pem);
        let ca = dir.file("ca.pem", &pki.ca_pem);
        let backend = ringway_load::echo::spawn("127.0.0.1:0".parse().unwrap(), 1, &[]).unwrap();
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let (server, shutdown) = ringway(
            &["--tls-listen", "127.0.0.1:0", "--cert", cert, "--key", key],
            backend,
        );
        let addr = server.local_addrs()[0];
        let tls = TlsOptions {
            ca: Some(ca),
            ..TlsOptions::default()
        };
        Rig {
            common: short_run(Target::parse_with(&format!("wss://{addr}/load"), &tls).unwrap()),
            shutdown,
            server: Some(server),
            _dir: Some(dir),
        }
    }
}

/// Start ringway in-process with `listen` flags (one worker, unpinned) in
/// front of `backend`.
fn ringway(listen: &[&str], backend: SocketAddr) -> (ringway::server::Server, Shutdown) {
    let backend = backend.to_string();
    let mut args = vec!["ringway"];
    args.extend(listen);
    args.extend(["--upstream", &backend, "--workers", "1", "--no-pin"]);
    let cli = Cli::try_parse_from(args).unwrap();
    let settings = Settings::from_args(&cli.proxy, 1).unwrap();
    let shutdown = Shutdown::new();
    let server = ringway::server::start(settings, shutdown.clone()).unwrap();
    (server, shutdown)
}

/// A brief run against `target`, watching this process.
fn short_run(target: Target) -> Common {
    Common {
        target,
        threads: 1,
        pin: Vec::new(),
        source_ips: Vec::new(),
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(500),
        watch: vec![std::process::id()],
        perf: Some("perf".into()),
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
    // System calls: counted (where perf can), or absent with a reason.
    match r.usage[0].syscalls {
        Some(n) => {
            assert!(r.syscalls_note.is_none(), "{r:?}");
            assert!(r.usage[0].io_uring_enters.is_some_and(|u| u <= n), "{r:?}");
            assert_eq!(r.syscalls_per_unit.len(), 1);
        }
        None => assert!(r.syscalls_note.is_some(), "{r:?}"),
    }
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
    // A ws:// report says nothing about TLS.
    assert!(r.target.starts_with("ws://"), "{}", r.target);
    assert!(serde_json::to_value(&r).unwrap().get("tls").is_none());
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

#[test]
fn wss_idle_and_connect_through_ringway() {
    let rig = Rig::wss();
    let idle = scenario::idle(&rig.common, 50).unwrap();
    assert_lossless(&idle);
    assert_eq!((idle.sent, idle.echoed, idle.received), (50, 50, 50));
    assert!(idle.target.starts_with("wss://"), "{}", idle.target);
    let tls = idle.tls.as_ref().unwrap();
    assert_eq!((tls.full_handshakes, tls.resumed_handshakes), (50, 0));

    let connect = scenario::connect(&rig.common, 4).unwrap();
    assert_lossless(&connect);
    let tls = connect.tls.as_ref().unwrap();
    assert_eq!(
        (tls.full_handshakes, tls.resumed_handshakes),
        (connect.echoed, 0)
    );

    let echo = scenario::echo(
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
    assert_lossless(&echo);
}

/// A wss:// echo backend: the load echo backend with a certificate from a
/// test CA, and that CA in a PEM file for `--ca`.
struct WssRig {
    backend: SocketAddr,
    ca: PathBuf,
    _dir: TempDir,
}

impl WssRig {
    fn new(name: &str) -> WssRig {
        let pki = Pki::new();
        let dir = TempDir::new(name);
        let ca = dir.file("ca.pem", &pki.ca_pem);
        let backend = ringway_load::echo::spawn_with(
            "127.0.0.1:0".parse().unwrap(),
            1,
            &[],
            Some(pki.server_config()),
        )
        .unwrap();
        WssRig {
            backend,
            ca,
            _dir: dir,
        }
    }

    /// Verifying the backend's certificate against the test CA.
    fn verified(&self) -> TlsOptions {
        TlsOptions {
            ca: Some(self.ca.clone()),
            ..TlsOptions::default()
        }
    }

    /// A brief run against `wss://BACKEND/load`.
    fn common(&self, tls: &TlsOptions) -> Common {
        short_run(Target::parse_with(&format!("wss://{}/load", self.backend), tls).unwrap())
    }
}

#[test]
fn wss_idle_and_connect_direct() {
    let rig = WssRig::new("wss-idle-connect");
    let common = rig.common(&rig.verified());

    let idle = scenario::idle(&common, 50).unwrap();
    assert_lossless(&idle);
    assert_eq!((idle.sent, idle.echoed, idle.received), (50, 50, 50));
    assert_eq!(idle.target, format!("wss://{}/load", rig.backend));
    assert_eq!(idle.rss_kib_per_conn.len(), 1);
    let tls = idle.tls.as_ref().expect("a wss run reports its handshakes");
    assert_eq!((tls.full_handshakes, tls.resumed_handshakes), (50, 0));
    assert_eq!(tls.version, "TLSv1_3");

    let connect = scenario::connect(&common, 4).unwrap();
    assert_lossless(&connect);
    let tls = connect.tls.as_ref().unwrap();
    // Without --resume every cycle is a full handshake.
    assert_eq!(
        (tls.full_handshakes, tls.resumed_handshakes),
        (connect.echoed, 0)
    );
    let json = serde_json::to_value(&connect).unwrap();
    assert_eq!(json["tls"]["full_handshakes"], connect.echoed);
}

#[test]
fn wss_connect_resumes_sessions_with_resume() {
    let rig = WssRig::new("wss-resume");
    for version in ["1.3", "1.2"] {
        let common = rig.common(&TlsOptions {
            resume: true,
            version: Some(version.into()),
            ..rig.verified()
        });
        let r = scenario::connect(&common, 4).unwrap();
        assert_lossless(&r);
        let tls = r.tls.as_ref().unwrap();
        assert_eq!(tls.version, format!("TLSv{}", version.replace('.', "_")));
        assert_eq!(tls.full_handshakes + tls.resumed_handshakes, r.echoed);
        // The first few (one per connection in flight) find no session.
        assert!(
            tls.resumed_handshakes > tls.full_handshakes,
            "{version}: {tls:?}"
        );
    }
}

#[test]
fn wss_echo_and_bulk_direct() {
    let rig = WssRig::new("wss-echo");
    let common = rig.common(&rig.verified());
    for load in [Load::Closed { inflight: 4 }, Load::Open { rate: 400.0 }] {
        let r = scenario::echo(
            &common,
            &EchoOpts {
                scenario: "echo",
                connections: 8,
                size: 100,
                binary: true,
                load,
            },
        )
        .unwrap();
        assert_lossless(&r);
        assert_eq!(r.tls.as_ref().unwrap().full_handshakes, 8);
    }
    // Messages far over a TLS record (16 KiB) and over rustls' 64 KiB of
    // unsent records.
    let r = scenario::echo(
        &common,
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
    assert!(r.mb_per_sec > 0.0);
}

#[test]
fn wss_certificates_are_checked() {
    let rig = WssRig::new("wss-verify");
    let fails = |tls: &TlsOptions, what: &str| {
        let err = scenario::idle(&rig.common(tls), 2).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("setting up connections"), "{msg}");
        assert!(msg.contains(what), "expected {what:?} in {msg}");
    };
    // The certificate is for 127.0.0.1 and localhost, not this name.
    fails(
        &TlsOptions {
            server_name: Some("other.example".into()),
            ..rig.verified()
        },
        "certificate",
    );
    // Another CA (of the same name) did not sign it.
    let other = TempDir::new("wss-verify-other");
    let other_ca = other.file("ca.pem", &Pki::new().ca_pem);
    fails(
        &TlsOptions {
            ca: Some(other_ca),
            ..TlsOptions::default()
        },
        "invalid peer certificate",
    );
    // The right name, given as SNI, verifies.
    let named = TlsOptions {
        server_name: Some("localhost".into()),
        ..rig.verified()
    };
    assert_lossless(&scenario::idle(&rig.common(&named), 2).unwrap());
    // --insecure takes any certificate.
    let insecure = TlsOptions {
        insecure: true,
        server_name: Some("other.example".into()),
        ..TlsOptions::default()
    };
    assert_lossless(&scenario::idle(&rig.common(&insecure), 2).unwrap());
}
