//! Dead peers, hung backends, bodies behind upgrades, answers that must
//! not leak, clients that leave mid-response, half-closed tunnels, and the
//! true reason each tunnel closed.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A backend that reads a request head and then says nothing for `hold`.
fn mute_backend(hold: Duration) -> Backend {
    Backend::spawn(move |mut s, _| {
        let _ = read_head(&mut s);
        thread::sleep(hold);
    })
}

/// A backend that completes the WebSocket handshake, then reads until the
/// client's end and keeps its own side open for `hold` (it never follows a
/// half-close).
fn stubborn_backend(hold: Duration) -> Backend {
    Backend::spawn(move |stream, b| {
        if let Some(mut ws) = accept_ws(stream, b, |_| {}) {
            let s = ws.get_mut();
            let mut buf = [0u8; 1024];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            thread::sleep(hold);
        }
    })
}

/// The upgrade handshake for `path` sent raw; returns the socket once the
/// 101 is read.
fn raw_tunnel(proxy: &Proxy, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(upgrade_head(path, "").as_bytes()).unwrap();
    let (head, _) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

#[test]
fn a_hung_backend_is_skipped_for_the_next_and_counted_failed() {
    let mute = mute_backend(Duration::from_secs(3));
    let live = Backend::echo();
    let proxy = Proxy::start(&[
        "--upstream",
        &mute.addr.to_string(),
        "--upstream",
        &live.addr.to_string(),
        "--upstream-answer-timeout",
        "300ms",
        "--workers",
        "1",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    // Round-robin sends one of the first two to the hung server first.
    for _ in 0..2 {
        let started = Instant::now();
        let mut ws = ws_client(&proxy, "/ws");
        echo_once(&mut ws, "through");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert!(
        *mute.accepted.lock().unwrap() >= 1,
        "the hung server was tried"
    );
    let line = proxy.wait_log("did not answer the upgrade within", PATIENCE);
    assert!(line.is_some(), "{:#?}", proxy.logs());
    let metrics = scrape(metrics_addr(&proxy), "/metrics").1;
    let series = format!(
        "ringway_upstream_failures_total{{group=\"default\",server=\"{}\"}}",
        mute.addr
    );
    assert_eq!(value(&metrics, &series), Some(1.0), "{metrics}");
}

#[test]
fn an_upgrade_with_a_body_is_400_and_reaches_no_backend() {
    let backend = Backend::echo();
    let proxy = start_proxy(&backend, &[]);
    for framing in ["Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n"] {
        let mut req = upgrade_head("/ws", framing).into_bytes();
        req.extend_from_slice(b"hello");
        let resp = raw_exchange(proxy.addr, &req);
        assert_eq!(status_of(&resp), 400, "{}", String::from_utf8_lossy(&resp));
        let line = proxy.wait_log("must not have a body", PATIENCE);
        assert!(line.is_some(), "{:#?}", proxy.logs());
    }
    assert_eq!(*backend.accepted.lock().unwrap(), 0, "nothing forwarded");
    proxy.assert_fds_at_baseline();
}

#[test]
fn error_answers_name_no_address_and_no_os_error() {
    let (dead, other) = (dead_port(), dead_port());
    // One worker: marks are per core. (A lone server is never marked.)
    let proxy = Proxy::start(&[
        "--upstream",
        &dead.to_string(),
        "--upstream",
        &other.to_string(),
        "--workers",
        "1",
    ]);
    // 502 (refused), then 503 (marked down): neither tells the client why.
    for expected in [502, 503] {
        let resp = raw_exchange(proxy.addr, upgrade_head("/ws", "").as_bytes());
        let text = String::from_utf8_lossy(&resp);
        assert_eq!(status_of(&resp), expected, "{text}");
        for secret in [
            "127.0.0.1",
            &dead.port().to_string(),
            &other.port().to_string(),
            "os error",
            "refused",
            "default",
        ] {
            assert!(!text.contains(secret), "{secret:?} leaked: {text}");
        }
    }
    // The log has it all.
    let line = proxy.wait_log("Connection refused", PATIENCE).unwrap();
    assert!(line.contains(&dead.to_string()), "{line}");
}

#[test]
fn a_client_that_leaves_a_streaming_response_frees_both_sockets() {
    // A long poll: the head and one chunk, then silence.
    let (tx, rx) = std::sync::mpsc::channel();
    let backend = Backend::spawn(move |mut s, _| {
        let _ = read_head(&mut s);
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
        s.write_all(head.as_bytes()).unwrap();
        let started = Instant::now();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut buf = [0u8; 64];
        // ringway closes its side once the client has gone.
        let n = s.read(&mut buf).unwrap_or(usize::MAX);
        let _ = tx.send((n, started.elapsed()));
    });
    let proxy = start_proxy(&backend, &[]);
    let mut c = TcpStream::connect(proxy.addr).unwrap();
    c.write_all(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("hello") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let left = Instant::now();
    drop(c);
    let (n, _) = rx
        .recv_timeout(PATIENCE)
        .expect("the backend heard nothing");
    assert_eq!(n, 0, "the backend saw its connection end");
    assert!(
        left.elapsed() < Duration::from_secs(1),
        "{:?}",
        left.elapsed()
    );
    let line = proxy.wait_log("closed=\"client closed\"", PATIENCE);
    assert!(line.is_some(), "{:#?}", proxy.logs());
    proxy.assert_fds_at_baseline();
}

/// FIN, reset, idle, half-close and drain: each tunnel's end in the access
/// log and in `ringway_tunnels_closed_total`.
#[test]
fn close_reasons_are_true() {
    // /hold/ goes to a backend that never follows a half-close; the rest
    // to one that closes when its client does.
    let stubborn = stubborn_backend(Duration::from_secs(5));
    let backend = Backend::echo();
    let hold = format!("hold={}", stubborn.addr);
    let mut proxy = start_proxy(
        &backend,
        &[
            "--route",
            "/hold/=hold",
            "--route",
            "/=default",
            "--upstream",
            &hold,
            "--idle-timeout",
            "700ms",
            "--half-close-timeout",
            "300ms",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics = metrics_addr(&proxy);
    // A FIN from the client.
    drop(raw_tunnel(&proxy, "/ws"));
    assert!(proxy
        .wait_log("closed=\"client closed\"", PATIENCE)
        .is_some());
    // A reset: SO_LINGER 0 makes close() send a RST.
    let s = raw_tunnel(&proxy, "/ws");
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    let line = proxy.wait_log("closed=\"client reset", PATIENCE);
    assert!(line.is_some(), "{:#?}", proxy.logs());
    // A half-close the backend never follows.
    let mut s = raw_tunnel(&proxy, "/hold/");
    let started = Instant::now();
    s.shutdown(Shutdown::Write).unwrap();
    let mut buf = [0u8; 16];
    assert!(
        matches!(s.read(&mut buf), Ok(0) | Err(_)),
        "closed by ringway"
    );
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(
        took < Duration::from_millis(650),
        "before the idle timeout: {took:?}"
    );
    let line = proxy.wait_log("closed=\"half-close timeout\"", PATIENCE);
    assert!(line.is_some(), "{:#?}", proxy.logs());
    // Silence both ways.
    let mut s = raw_tunnel(&proxy, "/ws");
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    assert!(proxy
        .wait_log("closed=\"idle timeout\"", PATIENCE)
        .is_some());
    let body = scrape(metrics, "/metrics").1;
    for reason in [
        "client_close",
        "client_reset",
        "half_close_timeout",
        "idle_timeout",
    ] {
        let series = format!("ringway_tunnels_closed_total{{reason=\"{reason}\"}}");
        assert_eq!(value(&body, &series), Some(1.0), "{reason}: {body}");
    }
    // The drain's, at shutdown.
    let _open = raw_tunnel(&proxy, "/ws");
    proxy.signal("TERM");
    proxy.signal("TERM");
    assert!(proxy.wait_exit(PATIENCE).is_some());
    assert!(proxy
        .wait_log("closed=\"closed at shutdown\"", PATIENCE)
        .is_some());
}

/// `ss -tnoe` for the connections with local or remote port `port`.
fn ss_lines(port: u16) -> Option<Vec<String>> {
    let out = Command::new("ss")
        .args(["-tnoeH", "state", "established"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let needle = format!(":{port} ");
    Some(
        text.lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_string)
            .collect(),
    )
}

#[test]
fn both_sockets_of_a_tunnel_keep_alive_by_default() {
    let backend = Backend::echo();
    let proxy = start_proxy(&backend, &[]);
    let mut ws = ws_client(&proxy, "/ws");
    echo_once(&mut ws, "hi");
    if ss_lines(proxy.addr.port()).is_none() {
        eprintln!("skipped: no `ss` on this host");
        return;
    }
    // Each list holds both ends of one connection: ringway's end is the
    // one whose local port is the listener's (client side) or whose peer
    // is the backend's (backend side).
    let ours = |lines: &[String], local: bool, port: u16| -> String {
        lines
            .iter()
            .find(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let col = if local { cols[2] } else { cols[3] };
                col.ends_with(&format!(":{port}"))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no line for :{port} in {lines:#?}"))
    };
    // A socket shows one timer: the retransmission timer while data is
    // unacknowledged, then keepalive's.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let lines = [
            ours(
                &ss_lines(proxy.addr.port()).unwrap(),
                true,
                proxy.addr.port(),
            ),
            ours(
                &ss_lines(backend.addr.port()).unwrap(),
                false,
                backend.addr.port(),
            ),
        ];
        if lines.iter().all(|l| l.contains("timer:(keepalive")) {
            break;
        }
        assert!(Instant::now() < deadline, "{lines:#?}");
        thread::sleep(Duration::from_millis(50));
    }
    drop(ws);
}

/// Make `sock`'s host deaf to it: a socket filter that drops every packet
/// before TCP sees it, so nothing is acknowledged, as if the peer had
/// vanished (radio loss, a NAT that forgot it) without a FIN.
fn vanish(sock: &TcpStream) {
    let drop_all = libc::sock_filter {
        code: 0x06, // BPF_RET | BPF_K
        jt: 0,
        jf: 0,
        k: 0, // keep 0 bytes: drop
    };
    socket2::SockRef::from(sock)
        .attach_filter(&[drop_all])
        .unwrap();
}

#[test]
fn peers_that_vanish_without_a_fin_are_closed_by_keepalive() {
    // A backend that vanishes after its first echo, on /gone/.
    let gone = Backend::spawn(|stream, b| {
        if let Some(mut ws) = accept_ws(stream, b, |_| {}) {
            let msg = ws.read().unwrap();
            ws.send(msg).unwrap();
            ws.flush().unwrap();
            vanish(ws.get_ref());
            thread::sleep(PATIENCE);
        }
    });
    let backend = Backend::echo();
    let route = format!("gone={}", gone.addr);
    let proxy = start_proxy(
        &backend,
        &[
            "--tcp-keepalive",
            "1s,1s,2",
            "--metrics-listen",
            "127.0.0.1:0",
            "--route",
            "/gone/=gone",
            "--upstream",
            &route,
            "--route",
            "/=default",
        ],
    );
    // The client vanishes.
    let mut ws = ws_client(&proxy, "/ws");
    echo_once(&mut ws, "alive");
    vanish(ws.get_ref());
    let vanished = Instant::now();
    let line = proxy.wait_log("closed=\"client tcp timeout", PATIENCE);
    assert!(line.is_some(), "{:#?}", proxy.logs());
    // 1 s of silence, then 2 probes 1 s apart: 3 s, and some slack.
    let took = vanished.elapsed();
    assert!(took < Duration::from_secs(6), "{took:?}");
    // The backend vanishes.
    let mut ws = ws_client(&proxy, "/gone/");
    echo_once(&mut ws, "alive");
    let line = proxy.wait_log("closed=\"backend tcp timeout", PATIENCE);
    assert!(line.is_some(), "{:#?}", proxy.logs());
    let body = scrape(metrics_addr(&proxy), "/metrics").1;
    for reason in ["client_timeout", "backend_timeout"] {
        let series = format!("ringway_tunnels_closed_total{{reason=\"{reason}\"}}");
        assert_eq!(value(&body, &series), Some(1.0), "{body}");
    }
}
