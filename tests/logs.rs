//! The logs under hostile input: every byte value a client can send (in
//! the request target, in header values, in a TLS SNI name, TLS spoken to a
//! ws:// port) leaves every line of the error log and of the access log
//! (text and JSON) printable ASCII and short; and a flood of garbage
//! connections costs a few error-log lines, while the metrics count them
//! all.
//!
//! These tests read ringway's stderr as bytes (the common harness reads
//! lines of UTF-8, which a raw byte would end), so they start it
//! themselves.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{scrape, value, wait_child, Backend, Pki, TempDir, PATIENCE};

/// Longest line either log may have.
const LINE_BOUND: usize = 2048;

/// ringway with its stderr kept as bytes.
struct Raw {
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Listeners in the order logged: ws ones, then wss ones.
    listeners: Vec<SocketAddr>,
    metrics: Option<SocketAddr>,
    /// The thread that copies stderr into `stderr`, until its end.
    reader: Option<thread::JoinHandle<()>>,
}

impl Raw {
    /// Start ringway with `args` (`--workers 2`); `interval_ms` sets the
    /// error log's rate-limit interval (`None`: its default).
    fn start(args: &[&str], interval_ms: Option<&str>) -> Raw {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringway"));
        cmd.args(args)
            .args(["--workers", "2"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match interval_ms {
            Some(ms) => cmd.env("RINGWAY_LOG_INTERVAL_MS", ms),
            None => cmd.env_remove("RINGWAY_LOG_INTERVAL_MS"),
        };
        let mut child = cmd.spawn().expect("start ringway");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let reader = thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut raw = Raw {
            child,
            stderr,
            listeners: Vec::new(),
            metrics: None,
            reader: Some(reader),
        };
        let deadline = Instant::now() + PATIENCE;
        while raw.text().matches("started: core").count() < 2 {
            assert!(Instant::now() < deadline, "no start: {}", raw.text());
            thread::sleep(Duration::from_millis(10));
        }
        let text = raw.text();
        for line in text.lines() {
            if let Some(rest) = line.split("listening on ").nth(1) {
                raw.listeners
                    .push(rest.split(' ').next().unwrap().parse().unwrap());
            }
            if let Some(rest) = line.split("metrics on http://").nth(1) {
                raw.metrics = Some(rest.split('/').next().unwrap().parse().unwrap());
            }
        }
        raw
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// SIGTERM, wait for the exit; everything it wrote to stderr.
    fn stop(mut self) -> Vec<u8> {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        assert!(
            wait_child(&mut self.child, PATIENCE).is_some(),
            "no exit after SIGTERM"
        );
        // The pipe's only writer is gone: the reader ends at its end.
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        let out = self.stderr.lock().unwrap().clone();
        out
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send `bytes`, read until ringway closes (or a second passes), close.
fn poke(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // ringway may close before taking all of it (a bad head is answered
    // at its first bad byte).
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

/// A TLS 1.2 ClientHello naming `sni` (any bytes), offering one cipher
/// suite ringway does not have, so that the handshake fails at once, after
/// the hello (and its SNI) has been read.
fn client_hello(sni: &[u8]) -> Vec<u8> {
    let u16be = |n: usize| u16::try_from(n).unwrap().to_be_bytes();
    let mut names = vec![0u8]; // host_name
    names.extend(u16be(sni.len()));
    names.extend(sni);
    let mut server_name = u16be(names.len()).to_vec();
    server_name.extend(names);
    let mut ext = vec![0, 0]; // server_name
    ext.extend(u16be(server_name.len()));
    ext.extend(server_name);
    let mut body = vec![3, 3];
    body.extend([7u8; 32]); // random
    body.push(0); // no session id
    body.extend([0, 2, 0x00, 0x0a]); // TLS_RSA_WITH_3DES_EDE_CBC_SHA only
    body.extend([1, 0]); // no compression
    body.extend(u16be(ext.len()));
    body.extend(ext);
    let mut hs = vec![1];
    hs.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    hs.extend(body);
    let mut record = vec![0x16, 3, 1];
    record.extend(u16be(hs.len()));
    record.extend(hs);
    record
}

/// Every byte value.
fn every_byte() -> Vec<u8> {
    (0..=255u8).collect()
}

/// The bytes httparse takes in a header value: tab, printable ASCII and
/// everything above 0x7f.
fn header_bytes() -> Vec<u8> {
    every_byte()
        .into_iter()
        .filter(|&b| b == b'\t' || (0x20..=0x7e).contains(&b) || b >= 0x80)
        .collect()
}

/// Each line of `log` is printable ASCII and shorter than [`LINE_BOUND`].
fn assert_clean(what: &str, log: &[u8]) {
    assert!(!log.is_empty(), "{what}: empty");
    assert_eq!(log.last(), Some(&b'\n'), "{what}: cut short");
    for line in log[..log.len() - 1].split(|&b| b == b'\n') {
        let shown = String::from_utf8_lossy(line);
        assert!(
            line.iter().all(|b| (0x20..=0x7e).contains(b)),
            "{what}: a line with a byte outside printable ASCII: {shown:?}"
        );
        assert!(
            line.len() < LINE_BOUND,
            "{what}: a line of {} bytes: {shown}",
            line.len()
        );
    }
}

/// Send every kind of hostile value; return ringway's stderr and access
/// log.
fn hostile_run(format: &str) -> (Vec<u8>, Vec<u8>) {
    let backend = Backend::echo();
    let pki = Pki::new();
    let leaf = pki.leaf("server", &["localhost"]);
    let dir = TempDir::new();
    let access = dir.path("access.log");
    let upstream = backend.addr.to_string();
    let raw = Raw::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--cert",
            &leaf.cert,
            "--key",
            &leaf.key,
            "--upstream",
            &upstream,
            "--allow-origin",
            "https://good.example",
            "--access-log",
            &access,
            "--access-log-format",
            format,
            "--log-level",
            "debug",
        ],
        // Every line written: each hostile value has its own line.
        Some("0"),
    );
    let (ws, wss) = (raw.listeners[0], raw.listeners[1]);
    let every = every_byte();

    // 1. The request target: every byte value (a space and a newline would
    //    end it: those go into a second one), and TLS spoken to a ws:// port.
    let mut target = b"GET /".to_vec();
    target.extend(every.iter().filter(|&&b| b != b' ' && b != b'\n'));
    target.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = poke(ws, &target);
    assert!(answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");
    poke(ws, b"GET /a\nb c HTTP/1.1\r\n\r\n");
    poke(ws, &client_hello(&every));
    // Its SNI with a space before the first newline: the hello's first
    // "line" then has a "target".
    let reversed: Vec<u8> = every.iter().rev().copied().collect();
    poke(ws, &client_hello(&reversed));

    // 2. Header values: an Origin that is refused (and quoted in the
    //    reason), with a Host and an X-Forwarded-For of the same bytes;
    //    then every byte value, which makes the head a bad one.
    let hv = header_bytes();
    let upgrade = |host: &[u8], origin: &[u8], forwarded: &[u8]| {
        let mut head = b"GET /ws HTTP/1.1\r\nHost: ".to_vec();
        head.extend(host);
        head.extend_from_slice(b"\r\nOrigin: https://");
        head.extend(origin);
        head.extend_from_slice(b"\r\nX-Forwarded-For: ");
        head.extend(forwarded);
        head.extend_from_slice(
            b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        );
        head
    };
    let answer = poke(ws, &upgrade(b"x", &hv, &hv));
    assert!(
        answer.starts_with(b"HTTP/1.1 403"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    poke(ws, &upgrade(&hv, &hv, b"1.2.3.4"));
    let mut bad = b"GET /ws HTTP/1.1\r\nHost: x\r\nOrigin: ".to_vec();
    bad.extend(every.iter().filter(|&&b| b != b'\n'));
    bad.extend_from_slice(b"\r\n\r\n");
    poke(ws, &bad);

    // 3. SNI: every byte value, to the wss:// port; and a plain request
    //    with a hostile target to it.
    poke(wss, &client_hello(&every));
    poke(wss, &client_hello(&hv[100..]));
    poke(wss, &target);

    // Every refusal has reached its line.
    let deadline = Instant::now() + PATIENCE;
    while raw.text().matches("status=40").count() < 7 {
        assert!(Instant::now() < deadline, "{}", raw.text());
        thread::sleep(Duration::from_millis(10));
    }
    let stderr = raw.stop();
    let access = std::fs::read(&access).unwrap();
    (stderr, access)
}

#[test]
fn every_byte_value_from_a_client_leaves_every_log_line_printable_and_short() {
    for format in ["text", "json"] {
        let (stderr, access) = hostile_run(format);
        let text = String::from_utf8_lossy(&stderr);
        // The hostile values did reach the lines checked.
        assert!(
            text.contains("status=403 reason=\"Origin https://"),
            "{text}"
        );
        assert!(text.contains("tls handshake failed"), "{text}");
        assert!(text.contains("status=400"), "{text}");
        assert_clean("stderr", &stderr);
        assert_clean(&format!("access log ({format})"), &access);
        let lines = String::from_utf8(access).unwrap();
        assert!(lines.lines().count() >= 5, "{lines}");
        if format == "json" {
            for line in lines.lines() {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                assert!(v["status"].is_u64(), "{line}");
            }
        }
    }
}

/// Connections of garbage: `n` each of a bad head to ws://, bytes that are
/// not TLS to wss://, plain HTTP to wss://, a path with no route, and a bad
/// PROXY header; `slow` sockets that send nothing until the handshake
/// timeout.
#[test]
fn a_flood_of_garbage_costs_a_few_lines_and_every_one_is_counted() {
    const N: usize = 400;
    const SLOW: usize = 200;
    let backend = Backend::echo();
    let pki = Pki::new();
    let leaf = pki.leaf("server", &["localhost"]);
    let dir = TempDir::new();
    let access = dir.path("access.log");
    let upstream = format!("chat={}", backend.addr);
    let raw = Raw::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0,proxy-protocol",
            "--trusted-proxy",
            "127.0.0.0/8",
            "--tls-listen",
            "127.0.0.1:0",
            "--cert",
            &leaf.cert,
            "--key",
            &leaf.key,
            "--upstream",
            &upstream,
            "--route",
            "/ws/=chat",
            "--metrics-listen",
            "127.0.0.1:0",
            "--handshake-timeout",
            "2s",
            "--access-log",
            &access,
        ],
        // The default interval (10 s): the flood takes less.
        None,
    );
    let started = Instant::now();
    let before = raw.text().lines().count();
    let (ws, proxied, wss) = (raw.listeners[0], raw.listeners[1], raw.listeners[2]);
    let metrics = raw.metrics.unwrap();
    let slow: Vec<TcpStream> = (0..SLOW).map(|_| TcpStream::connect(ws).unwrap()).collect();
    let kinds: [(SocketAddr, &[u8]); 5] = [
        (ws, b"\x00\x01garbage\r\n\r\n"),
        (wss, &[0xff; 64]),
        (wss, b"GET /ws/ HTTP/1.1\r\nHost: x\r\n\r\n"),
        (ws, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"),
        (proxied, b"PROXY TCP9 nonsense\r\n"),
    ];
    let threads: Vec<_> = kinds
        .into_iter()
        .map(|(addr, bytes)| {
            let bytes = bytes.to_vec();
            thread::spawn(move || {
                for _ in 0..N {
                    poke(addr, &bytes);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The slow ones are answered 408 at the handshake timeout.
    for mut s in slow {
        let mut got = Vec::new();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let _ = s.read_to_end(&mut got);
        assert!(got.starts_with(b"HTTP/1.1 408"), "{got:?}");
    }
    let took = started.elapsed();

    // Every one is counted.
    let series = [
        (
            "ringway_handshakes_total{result=\"error\",status=\"400\"}",
            2 * N,
        ),
        (
            "ringway_handshakes_total{result=\"error\",status=\"408\"}",
            SLOW,
        ),
        ("ringway_requests_total{status=\"404\"}", N),
        ("ringway_tls_handshake_failures_total", N),
        ("ringway_proxy_header_errors_total", N),
    ];
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got: Vec<usize> = series
            .iter()
            .map(|(s, _)| {
                let text = scrape(metrics, "/metrics").1;
                value(&text, s).unwrap_or(0.0) as usize
            })
            .collect();
        if got.iter().zip(&series).all(|(g, (_, want))| g == want) {
            break;
        }
        assert!(Instant::now() < deadline, "{series:?}: {got:?}");
        thread::sleep(Duration::from_millis(20));
    }
    let stderr = String::from_utf8(raw.stop()).unwrap();
    let flood = stderr.lines().count() - before;
    eprintln!(
        "{} garbage connections in {took:?}: {flood} error-log lines",
        5 * N + SLOW
    );
    // Six reasons, two workers: a line each, a summary and a line more
    // for any that ran past the 10 s interval; plus the shutdown's lines.
    let bound = if took < Duration::from_secs(9) {
        20
    } else {
        40
    };
    assert!(flood <= bound, "{flood} lines:\n{stderr}");
    // The access log still has its line per request answered.
    let access = std::fs::read_to_string(&access).unwrap();
    assert_eq!(access.lines().count(), 3 * N + SLOW, "{access}");
}

/// Out of descriptors, each worker's accept fails every 100 ms: one ERROR
/// line per worker, not one per failure, and every failure counted. (The
/// room ringway keeps from its open-files limit at start closes clients
/// far over it before accepts can fail; the limit is lowered under it
/// here, as an operator's `prlimit` or another part of the process could.)
#[test]
fn accepts_failing_for_want_of_descriptors_are_logged_once_and_counted() {
    let backend = Backend::echo();
    let upstream = backend.addr.to_string();
    let raw = Raw::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--metrics-listen",
            "127.0.0.1:0",
            "--handshake-timeout",
            "60s",
            "--access-log",
            "off",
        ],
        None,
    );
    let pid = raw.child.id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let lowered = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={}:", open + 4),
        ])
        .status();
    if !lowered.is_ok_and(|s| s.success()) {
        eprintln!("skipped: prlimit cannot lower the limit here");
        return;
    }
    let ws = raw.listeners[0];
    // Silent clients, each holding a descriptor of ringway's, until there
    // are none left; then some more wait in the backlog.
    let held: Vec<TcpStream> = (0..200).map(|_| TcpStream::connect(ws).unwrap()).collect();
    let deadline = Instant::now() + PATIENCE;
    while !raw.text().contains("accept: ") {
        assert!(Instant::now() < deadline, "no accept error: {}", raw.text());
        thread::sleep(Duration::from_millis(10));
    }
    // Long enough for each worker to fail 10 more times.
    thread::sleep(Duration::from_millis(1500));
    drop(held);
    let metrics = raw.metrics.unwrap();
    let deadline = Instant::now() + PATIENCE;
    let failures = loop {
        let n = std::panic::catch_unwind(|| scrape(metrics, "/metrics").1)
            .ok()
            .and_then(|text| value(&text, "ringway_accept_errors_total"));
        match n {
            Some(n) if n >= 10.0 => break n,
            _ => assert!(Instant::now() < deadline, "{n:?}: {}", raw.text()),
        }
        thread::sleep(Duration::from_millis(50));
    };
    let stderr = String::from_utf8(raw.stop()).unwrap();
    let lines = stderr.lines().filter(|l| l.contains("accept: ")).count();
    eprintln!("{failures} failed accepts: {lines} error-log lines");
    assert!((1..=2).contains(&lines), "{lines} lines:\n{stderr}");
}
