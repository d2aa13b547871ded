//! The `ringway-load` binary as `ringway-compare` runs it: flags in, a JSON
//! report out, with the scenario named and CPU (and system calls, where
//! perf can count them) divided by the right unit; without perf the counts
//! are absent and the run goes on.
//! And wss:// end to end: `ringway-echo` serving TLS, `ringway-load` with
//! the TLS flags.

mod common;

use std::io::BufRead;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Pki, TempDir};

fn run(args: &[&str]) -> serde_json::Value {
    run_with(args, &[]).0
}

/// Run `ringway-load` against an echo backend in this process, watching
/// this process (`extra`: more flags), for its report and its output.
fn run_with(args: &[&str], extra: &[&str]) -> (serde_json::Value, Output) {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let backend = ringway_load::echo::spawn("127.0.0.1:0".parse().unwrap(), 1, &[]).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "ringway-load-cli-{}-{}-{}",
        std::process::id(),
        args[0],
        RUNS.fetch_add(1, Ordering::Relaxed)
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
    all.extend(extra);
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
    (report, out)
}

/// The system call fields of a report's first watched pid: counted (and
/// then plausible), or absent with a note saying why.
fn check_syscalls(report: &serde_json::Value) -> Option<f64> {
    let usage = &report["usage"][0];
    for key in ["syscalls", "io_uring_enters"] {
        assert!(usage.get(key).is_some(), "no {key} in {usage}");
    }
    match usage["syscalls"].as_u64() {
        Some(n) => {
            // The echo backend in this process answered every message.
            assert!(n > 0, "{report}");
            let uring = usage["io_uring_enters"].as_u64().unwrap();
            assert!(uring <= n, "{usage}");
            assert!(report["syscalls_note"].is_null(), "{report}");
            let per_unit = report["syscalls_per_unit"][0].as_f64().unwrap();
            assert!(per_unit > 0.0, "{report}");
            let uring_per_unit = report["io_uring_enters_per_unit"][0].as_f64().unwrap();
            assert!(uring_per_unit <= per_unit, "{report}");
            Some(per_unit)
        }
        None => {
            assert!(report["syscalls_per_unit"][0].is_null(), "{report}");
            assert!(report["syscalls_note"].is_string(), "{report}");
            None
        }
    }
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
    // System calls: per message and per MB, the same way round (where this
    // machine's perf counts them; else absent, with a note).
    if let (Some(per_msg), Some(per_mb)) = (check_syscalls(&echo), check_syscalls(&bulk)) {
        assert!(per_msg < per_mb, "per message {per_msg}, per MB {per_mb}");
    }
}

#[test]
fn without_perf_the_counts_are_absent_and_the_run_goes_on() {
    let me = std::process::id().to_string();
    // A second watched pid: the note is still said once.
    let (report, out) = run_with(
        &["echo", "--connections", "2"],
        &["--watch-pid", &me, "--perf", "/nonexistent/perf"],
    );
    assert_eq!(report["errors"], 0);
    assert_eq!(report["usage"].as_array().unwrap().len(), 2);
    for i in 0..2 {
        assert!(report["usage"][i]["syscalls"].is_null(), "{report}");
        assert!(report["usage"][i]["io_uring_enters"].is_null(), "{report}");
        assert!(report["syscalls_per_unit"][i].is_null(), "{report}");
        assert!(report["io_uring_enters_per_unit"][i].is_null(), "{report}");
    }
    assert!(report["cpu_us_per_unit"][0].as_f64().unwrap() > 0.0);
    let note = report["syscalls_note"].as_str().unwrap();
    assert!(note.contains("/nonexistent/perf not found"), "{note}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("system calls not counted").count(),
        1,
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("syscalls n/a").count(), 2, "{stdout}");

    let (report, _) = run_with(&["connect", "--concurrency", "2"], &["--no-perf"]);
    assert!(report["usage"][0]["syscalls"].is_null());
    assert!(report["syscalls_note"]
        .as_str()
        .unwrap()
        .contains("--no-perf"));
}

#[test]
fn compare_takes_ringway_args_and_no_perf() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringway-compare"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--ringway-arg <ARG>"), "{help}");
    assert!(help.contains("--no-perf"), "{help}");
}

#[test]
fn wss_flags_end_to_end() {
    let pki = Pki::new();
    let dir = TempDir::new("cli-wss");
    let (cert, key) = (
        dir.file("cert.pem", &pki.cert_pem),
        dir.file("key.pem", &pki.key_pem),
    );
    let ca = dir.file("ca.pem", &pki.ca_pem);
    let mut echo = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_ringway-echo"))
            .args(["--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(echo.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "ringway-echo listening on 127.0.0.1:PORT (wss)"
    let addr = line
        .split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("{line:?}"));
    assert!(line.trim_end().ends_with("(wss)"), "{line:?}");
    let url = format!("wss://{addr}/");
    let load = |extra: &[&str]| {
        let json = dir.path().join("report.json");
        let out = Command::new(env!("CARGO_BIN_EXE_ringway-load"))
            .args(extra)
            .args(["--url", &url, "--duration", "300ms", "--warmup", "100ms"])
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap();
        let report = std::fs::read(&json)
            .ok()
            .map(|j| serde_json::from_slice::<serde_json::Value>(&j).unwrap());
        let _ = std::fs::remove_file(&json);
        (out, report)
    };

    let (out, report) = load(&["idle", "--connections", "20", "--ca", ca.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = report.unwrap();
    assert_eq!(report["errors"], 0);
    assert_eq!(report["received"], 20);
    assert_eq!(report["tls"]["full_handshakes"], 20);

    let (out, report) = load(&[
        "connect",
        "--concurrency",
        "2",
        "--insecure",
        "--resume",
        "--tls-version",
        "1.2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = report.unwrap();
    assert_eq!(report["errors"], 0);
    assert_eq!(report["tls"]["version"], "TLSv1_2");
    assert!(report["tls"]["resumed_handshakes"].as_u64().unwrap() > 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed handshakes"));

    // wss:// without a way to check the server is refused, saying what to add.
    let (out, _) = load(&["idle"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ca") && err.contains("--insecure"), "{err}");
}

/// A child process stopped when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
