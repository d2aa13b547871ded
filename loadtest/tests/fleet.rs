//! `ringway-load fleet`, small: 50 tunnels through a real ringway (its
//! library, in this process) to the load echo backend, 10% of them sending
//! 200 msg/s for 1 s. The report must add up: every tunnel held and
//! answering, every message echoed, memory and CPU of the watched proxy
//! reported per tunnel and per message.

use std::process::Command;

use clap::Parser;
use ringway::config::{Cli, Settings};
use ringway::server::shutdown::Shutdown;

/// ringway in this process (one worker, unpinned) in front of an echo
/// backend; its address, and what stops it.
fn ringway() -> (std::net::SocketAddr, ringway::server::Server, Shutdown) {
    let backend = ringway_load::echo::spawn("127.0.0.1:0".parse().unwrap(), 1, &[]).unwrap();
    let backend = backend.to_string();
    let cli = Cli::try_parse_from([
        "ringway",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &backend,
        "--workers",
        "1",
        "--no-pin",
    ])
    .unwrap();
    let settings = Settings::from_args(&cli.proxy, 1).unwrap();
    let shutdown = Shutdown::new();
    let server = ringway::server::start(settings, shutdown.clone()).unwrap();
    (server.local_addrs()[0], server, shutdown)
}

fn fleet(url: &str, extra: &[&str]) -> (std::process::Output, Option<serde_json::Value>) {
    let json = std::env::temp_dir().join(format!("ringway-load-fleet-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let me = std::process::id().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_ringway-load"))
        .args(["fleet", "--url", url, "--watch-pid", &me, "--no-perf"])
        .args(["--duration", "1s", "--warmup", "200ms"])
        .args(["--source-ips", "127.0.0.2,127.0.0.3"])
        .args(extra)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let report = std::fs::read(&json)
        .ok()
        .map(|j| serde_json::from_slice(&j).unwrap());
    let _ = std::fs::remove_file(&json);
    (out, report)
}

#[test]
fn fleet_holds_every_tunnel_and_echoes_the_active_share() {
    let (addr, server, shutdown) = ringway();
    let url = format!("ws://{addr}/chat");
    let (out, report) = fleet(
        &url,
        &["--tunnels", "50", "--active", "0.1", "--rate", "200"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report.unwrap();
    assert_eq!(r["scenario"], "fleet");
    assert_eq!(r["connections"], 50);
    // Every message echoed, every idle tunnel answered its ping.
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["sent"], r["echoed"], "{r}");
    // 200 msg/s over 5 tunnels for 1 s (+0.2 s warm-up): ~200 in the window.
    let received = r["received"].as_u64().unwrap();
    assert!((150..=260).contains(&received), "{r}");
    assert_eq!(r["latency"]["count"], received);
    assert!(r["latency"]["p99_us"].as_f64().unwrap() > 0.0);
    // Per message and per tunnel, of the watched process (ringway here).
    assert!(r["cpu_us_per_unit"][0].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["rss_kib_per_conn"].as_array().unwrap().len(), 1);
    // The watched process held the tunnels at the end of the window: at
    // least one descriptor each (ringway: two, the echo backend: one).
    let u = &r["usage"][0];
    assert!(
        u["fds_after"].as_u64().unwrap() >= u["fds_before"].as_u64().unwrap() + 100,
        "{u}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("KiB/conn"));

    // A share of 0 is refused, saying which flag.
    let (out, _) = fleet(&url, &["--tunnels", "5", "--active", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--active"));
    shutdown.force();
    let _ = server.wait();
}
