//! `ringway-compare`, tiny, without nginx: the real ringway binary (the
//! workspace's, next to `ringway-echo`) serving wss:// with the certificate
//! the run makes, the wss:// scenarios and the fleet run through
//! `ringway-load`, and the table, JSON and chart written. About 10 s.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

#[test]
fn wss_and_fleet_through_ringway_without_nginx() {
    let echo = PathBuf::from(env!("CARGO_BIN_EXE_ringway-echo"));
    let ringway = echo.with_file_name("ringway");
    assert!(
        ringway.is_file(),
        "{} is missing: run `cargo test --workspace` (or `cargo build -p ringway`) first",
        ringway.display()
    );
    let dir = std::env::temp_dir().join(format!("ringway-compare-wss-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let last_cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    let out = Command::new(env!("CARGO_BIN_EXE_ringway-compare"))
        .arg("--ringway")
        .arg(&ringway)
        .arg("--echo")
        .arg(&echo)
        .args(["--load", env!("CARGO_BIN_EXE_ringway-load")])
        .args(["--no-nginx", "--no-perf", "--rounds", "1"])
        .args(["--duration", "300ms", "--warmup", "100ms"])
        .args(["--scenarios", "wss-connect,wss-resume,wss-idle,fleet"])
        .args(["--idle-connections", "20", "--concurrency", "4"])
        .args(["--fleet-tunnels", "40", "--fleet-rate", "200"])
        .args(["--proxy-cpu", "0", "--load-cpu", &last_cpu.to_string()])
        .arg("--results-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The table: the wss:// and fleet groups, direct's n/a said once.
    for group in ["[wss-connect]", "[wss-resume]", "[wss-idle]", "[fleet]"] {
        assert!(stdout.contains(group), "no {group} in\n{stdout}");
    }
    assert_eq!(stdout.matches("direct: n/a").count(), 1, "{stdout}");
    assert!(
        stdout.contains("wss:// negotiated by ringway: TLSv1_3 TLS13_"),
        "{stdout}"
    );
    // No run failed: four, against ringway only.
    assert!(!stdout.contains("FAILED"), "{stdout}");
    assert!(stdout.contains(" 4/4] round 1 fleet"), "{stdout}");

    let json = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a JSON file");
    let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    let run = |sc: &str| {
        let r = runs
            .iter()
            .find(|r| r["scenario"] == sc)
            .unwrap_or_else(|| panic!("no {sc} run"));
        assert_eq!(r["target"], "ringway");
        assert!(r["error"].is_null(), "{r}");
        r["report"].clone()
    };
    let connect = run("wss-connect");
    assert!(connect["target"].as_str().unwrap().starts_with("wss://"));
    assert_eq!(connect["tls"]["resumed_handshakes"], 0);
    let resume = run("wss-resume");
    assert!(
        resume["tls"]["resumed_handshakes"].as_u64().unwrap() > 0,
        "{resume}"
    );
    assert_eq!(run("wss-idle")["received"], 20);
    let fleet = run("fleet");
    assert_eq!(fleet["connections"], 40);
    assert!(fleet["received"].as_u64().unwrap() > 0, "{fleet}");
    // Figures with a ringway value, none for direct.
    let fig = |key: &str| {
        v["figures"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["key"] == key)
            .unwrap_or_else(|| panic!("no figure {key}"))
            .clone()
    };
    for key in [
        "wss_connect_cpu",
        "wss_resume_rate",
        "wss_idle_rss",
        "fleet_rss",
        "fleet_p99",
    ] {
        let f = fig(key);
        assert!(f["ringway"].is_number(), "{f}");
        assert!(f["direct"].is_null(), "{f}");
    }
    let svg = std::fs::read_to_string(json.with_extension("svg")).unwrap();
    assert!(
        svg.contains("wss-connect: TLS 1.3, full handshakes"),
        "{svg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
