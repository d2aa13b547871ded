//! The `ringway-load` binary as `ringway-compare` runs it: flags in, a JSON
//! report out, with the scenario named and CPU divided by the right unit.

use std::process::Command;

fn run(args: &[&str]) -> serde_json::Value {
    let backend = ringway_load::echo::spawn("127.0.0.1:0".parse().unwrap(), 1, &[]).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "ringway-load-cli-{}-{}",
        std::process::id(),
        args[0]
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let url = format!("ws://{backend}/");
    let me = std::process::id().to_string();
    let mut all = args.to_vec();
    all.extend([
        "--url",
        &url,
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--watch-pid",
        &me,
        "--json",
        json.to_str().unwrap(),
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_ringway-load"))
        .args(&all)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    report
}

#[test]
fn echo_and_bulk_are_named_and_measured_per_message_and_per_mb() {
    let echo = run(&["echo", "--connections", "4", "--size", "64"]);
    assert_eq!(echo["scenario"], "echo");
    assert_eq!(echo["errors"], 0);
    assert_eq!(echo["sent"], echo["echoed"]);
    let bulk = run(&["bulk", "--size", "100000"]);
    assert_eq!(bulk["scenario"], "bulk");
    assert_eq!(bulk["sent"], bulk["echoed"]);
    // Per message vs per MB: this process did the same kind of work for
    // both, and a 64 B message is 1/15625 of a MB, so CPU per unit must
    // differ by orders of magnitude in that direction.
    let per_msg = echo["cpu_us_per_unit"][0].as_f64().unwrap();
    let per_mb = bulk["cpu_us_per_unit"][0].as_f64().unwrap();
    assert!(
        per_msg < per_mb,
        "per message {per_msg} µs, per MB {per_mb} µs"
    );
    // A 64 B echo through loopback costs microseconds, not milliseconds.
    assert!(per_msg < 1000.0, "per message {per_msg} µs");
}
