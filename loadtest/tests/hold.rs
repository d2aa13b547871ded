//! The "keep what held" scenarios (`ringway-hold`), small: the same code
//! paths and the same checks as the full runs, against the real ringway
//! binary and `ringway-echo` processes, a few seconds each. One at a time,
//! so that their timing bounds are not judged under each other's load.
//! And one run with failure marks turned off, which the skip checks must
//! catch: they can fail.
//!
//! ringway's binary is the workspace's (`target/<profile>/ringway`), which
//! `cargo test --workspace` builds with everything else.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use ringway::server::shutdown::Shutdown;
use ringway_load::hold::{churn, reloads, restart, Setup, Verdict};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn setup() -> Setup {
    let echo = PathBuf::from(env!("CARGO_BIN_EXE_ringway-echo"));
    let ringway = echo.with_file_name("ringway");
    assert!(
        ringway.is_file(),
        "{} is missing: run `cargo test --workspace` (or `cargo build -p ringway`) first",
        ringway.display()
    );
    Setup {
        ringway,
        echo,
        workers: 1,
        ringway_args: Vec::new(),
        stop: Shutdown::new(),
    }
}

fn assert_held(v: &Verdict) {
    assert!(v.passed(), "\n{}", v.render());
}

#[test]
fn a_backend_killed_and_restarted_under_live_tunnels() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let v = restart::run(
        &setup(),
        &restart::Options {
            tunnels: 40,
            period: Duration::from_millis(250),
            fail_timeout: Duration::from_secs(2),
            max_fails: 1,
            probes_after: 20,
        },
    )
    .unwrap();
    assert_held(&v);
    for name in [
        "b's tunnels ended after b was killed",
        "connections while b is marked",
        "b tried while marked",
        "b marked unavailable after its restart",
        "connections after fail_timeout",
        "a's tunnels through it all",
        "ringway descriptors",
    ] {
        assert!(v.get(name).is_some(), "no check {name:?}:\n{}", v.render());
    }
}

#[test]
fn without_failure_marks_the_skip_checks_fail() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // max_fails=0: b is never marked, so every connection that picks it
    // tries it (and, once it is back, gets it).
    let v = restart::run(
        &setup(),
        &restart::Options {
            tunnels: 6,
            period: Duration::from_millis(250),
            fail_timeout: Duration::from_millis(1500),
            max_fails: 0,
            probes_after: 8,
        },
    )
    .unwrap();
    let failed: Vec<&str> = v.failed().iter().map(|c| c.name.as_str()).collect();
    let render = v.render();
    assert!(failed.contains(&"b tried while marked"), "{render}");
    assert!(
        failed.contains(&"b marked unavailable after its restart"),
        "{render}"
    );
    // Nothing else breaks: b's absence costs no connection, a's tunnels
    // keep going.
    let skip_checks = [
        "connections while b is marked",
        "b tried while marked",
        "b marked unavailable after its restart",
    ];
    assert!(failed.iter().all(|f| skip_checks.contains(f)), "{render}");
}

#[test]
fn reloads_under_live_tunnels() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let v = reloads::run(
        &setup(),
        &reloads::Options {
            tunnels: 40,
            reloads: 100,
            rate: 50.0,
            period: Duration::from_millis(250),
        },
    )
    .unwrap();
    assert_held(&v);
    let applied = v.get("reloads applied").unwrap();
    assert!(applied.measured.starts_with("100 of 100"), "{}", v.render());
}

#[test]
fn churn_with_memory_flat() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let v = churn::run(
        &setup(),
        &churn::Options {
            duration: Duration::from_secs(5),
            rate: 100.0,
            threads: 2,
            echoes: 3,
            warmup: Duration::from_secs(1),
            sample: Duration::from_millis(200),
        },
    )
    .unwrap();
    assert_held(&v);
}

#[test]
fn the_command_says_what_it_cannot_run() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringway-hold"))
        .args(["--ringway", "/nonexistent/ringway", "churn"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/ringway"), "{err}");
    // A bound that the scenario could not judge is refused before anything starts.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringway-hold"))
        .args(["backend-restart", "--fail-timeout", "500ms"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
