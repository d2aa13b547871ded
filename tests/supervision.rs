//! What a supervisor sees: `--pid-file`, systemd readiness
//! (`NOTIFY_SOCKET`), `--version` with the commit, `ringway_build_info`,
//! and the error log as JSON (`--log-format json`).

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn the_pid_file_appears_once_listening_and_goes_at_exit() {
    let backend = Backend::echo();
    let dir = TempDir::new();
    let pid_file = dir.path("run/ringway.pid");
    std::fs::create_dir_all(dir.path("run")).unwrap();
    let mut proxy = start_proxy(&backend, &["--pid-file", &pid_file]);
    let deadline = Instant::now() + PATIENCE;
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&pid_file) {
            break t;
        }
        assert!(Instant::now() < deadline, "no pid file");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(text, format!("{}\n", proxy.pid()));
    // No temporary left beside it.
    assert_eq!(std::fs::read_dir(dir.path("run")).unwrap().count(), 1);
    proxy.signal("TERM");
    proxy.wait_exit(PATIENCE).expect("exits on SIGTERM");
    assert!(!std::path::Path::new(&pid_file).exists());
}

#[test]
fn a_pid_file_that_cannot_be_written_stops_the_start_with_its_reason() {
    let (code, err) = run_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:9",
            "--pid-file",
            "/nonexistent-dir/ringway.pid",
        ],
        PATIENCE,
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--pid-file /nonexistent-dir/ringway.pid"),
        "{err}"
    );
}

/// The next notification on `sock`, within the patience.
fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    let backend = Backend::echo();
    let dir = TempDir::new();
    let path = dir.path("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let file = dir.file(
        "ringway.toml",
        &format!("upstream = [\"{}\"]\n", backend.addr),
    );
    let mut proxy = Proxy::start_env(&[("NOTIFY_SOCKET", &path)], &["--config", &file]);

    let ready = next(&sock);
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(
        ready.contains(&format!("MAINPID={}", proxy.pid())),
        "{ready}"
    );
    assert!(
        ready.contains(&format!("STATUS=running; listening on {}", proxy.addr)),
        "{ready}"
    );
    // By READY=1 the proxy accepts.
    let mut ws = ws_client(&proxy, "/");
    echo_once(&mut ws, "ready means ready");

    proxy.signal("HUP");
    let reloading = next(&sock);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let usec: u64 = reloading
        .split("MONOTONIC_USEC=")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(usec > 0);
    let again = next(&sock);
    assert!(
        again.contains("READY=1") && again.contains("reload applied"),
        "{again}"
    );

    // A refused reload is still followed by READY=1: systemd must not wait.
    dir.file("ringway.toml", "upstream = [\n");
    proxy.signal("HUP");
    assert!(next(&sock).starts_with("RELOADING=1"));
    let refused = next(&sock);
    assert!(
        refused.contains("READY=1") && refused.contains("refused"),
        "{refused}"
    );

    close_and_drain(&mut ws);
    drop(ws);
    proxy.signal("TERM");
    let stopping = next(&sock);
    assert!(stopping.starts_with("STOPPING=1"), "{stopping}");
    proxy.wait_exit(PATIENCE).expect("exits");
}

#[test]
fn version_and_build_info_carry_the_commit_and_the_driver() {
    let (code, out, _) = run_with_output(&["--version"], PATIENCE);
    assert_eq!(code, Some(0));
    let out = out.trim().to_string();
    // `ringway 0.1.0 (commit abcdef123456)`: a commit of hex digits, or
    // `unknown` when built outside git.
    let commit = out
        .strip_prefix(&format!("ringway {} (commit ", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{out}"
    );

    let backend = Backend::echo();
    let proxy = start_proxy(&backend, &["--metrics-listen", "127.0.0.1:0"]);
    let started = proxy
        .wait_log("started: core", PATIENCE)
        .expect("a worker's start line");
    // `io_uring (defer taskrun) driver` or `epoll driver`.
    let driver = if started.contains(", io_uring") {
        "io_uring"
    } else {
        assert!(started.contains("epoll driver"), "{started}");
        "epoll"
    };
    let (_, text) = scrape(metrics_addr(&proxy), "/metrics");
    let series = format!(
        "ringway_build_info{{version=\"{}\",commit=\"{commit}\",driver=\"{driver}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&text, &series), Some(1.0), "{text}");
    if std::env::var_os("MONOIO_FORCE_LEGACY_DRIVER").is_some() {
        assert_eq!(driver, "epoll");
    }
}

#[test]
fn the_json_error_log_is_one_object_per_line() {
    let backend = Backend::echo();
    let proxy = start_proxy(&backend, &["--log-format", "json"]);
    // A request target no log line may carry raw.
    let mut s = std::net::TcpStream::connect(proxy.addr).unwrap();
    std::io::Write::write_all(&mut s, b"GET /\x1b[31m\"x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let _ = read_to_close(&mut s);
    proxy
        .wait_log("\"level\":\"WARN\"", PATIENCE)
        .expect("the refusal's WARN line");
    let lines = proxy.logs();
    let mut levels = std::collections::BTreeSet::new();
    for line in &lines {
        assert!(line.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{line:?}");
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for key in ["time", "level", "target", "message"] {
            assert!(v[key].is_string(), "{key} in {line}");
        }
        levels.insert(v["level"].as_str().unwrap().to_string());
    }
    assert!(
        levels.contains("INFO") && levels.contains("WARN"),
        "{levels:?}"
    );
    assert!(lines.iter().any(|l| l.contains("listening on")));
}
