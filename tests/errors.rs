//! Every error ringway answers itself: the status line, the log line, and
//! no descriptor left behind.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Expect `status` for `request`, and one log line for it naming the client.
fn expect(proxy: &Proxy, request: &[u8], status: u16) -> String {
    let resp = raw_exchange(proxy.addr, request);
    assert_eq!(
        status_of(&resp),
        status,
        "{}",
        String::from_utf8_lossy(&resp)
    );
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("\r\nConnection: close"), "{head}");
    assert!(
        body.starts_with(&status.to_string()),
        "short text body: {body:?}"
    );
    let line = proxy
        .wait_log(&format!("status={status} "), PATIENCE)
        .unwrap_or_else(|| panic!("no log line for {status}: {:#?}", proxy.logs()));
    assert!(line.contains("client=127.0.0.1:"), "{line}");
    text
}

#[test]
fn handshake_errors_400_426_431() {
    let backend = Backend::echo();
    let proxy = start_proxy(&backend, &["--max-header-bytes", "2048"]);
    expect(&proxy, b"this is not http\r\n\r\n", 400);
    expect(
        &proxy,
        upgrade_head("/ws", "")
            .replace("dGhlIHNhbXBsZSBub25jZQ==", "short")
            .as_bytes(),
        400,
    );
    expect(
        &proxy,
        upgrade_head("/ws", "").replace("GET", "POST").as_bytes(),
        400,
    );
    let line = proxy.wait_log("route=- target=/ws backend=- status=400", PATIENCE);
    assert!(line.is_some(), "the route is named: {:#?}", proxy.logs());
    let resp = expect(
        &proxy,
        upgrade_head("/ws", "")
            .replace("Version: 13", "Version: 8")
            .as_bytes(),
        426,
    );
    assert!(resp.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{resp}");
    let huge = upgrade_head("/ws", &format!("X-Pad: {}\r\n", "a".repeat(4000)));
    expect(&proxy, huge.as_bytes(), 431);
    assert_eq!(
        *backend.accepted.lock().unwrap(),
        0,
        "nothing reached the backend"
    );
    proxy.assert_fds_at_baseline();
}

#[test]
fn handshake_timeout_is_408_and_a_vanishing_client_costs_nothing() {
    let backend = Backend::echo();
    let proxy = start_proxy(&backend, &["--handshake-timeout", "300ms"]);
    let started = Instant::now();
    let resp = raw_exchange(proxy.addr, b"GET /ws HTTP/1.1\r\nHost: x\r\n");
    assert_eq!(status_of(&resp), 408);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    proxy.wait_log("status=408", PATIENCE).unwrap();

    // Clients that leave silently, before or during their head.
    for partial in [&b""[..], b"GET /ws HT"] {
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.write_all(partial).unwrap();
        drop(s);
    }
    proxy.assert_fds_at_baseline();
    assert_eq!(
        proxy.count_logs("WARN  ringway::conn"),
        1,
        "only the 408 is worth a warning: {:#?}",
        proxy.logs()
    );
}

#[test]
fn backend_refused_is_502_then_503_when_all_are_marked_failed() {
    let one = dead_port();
    let proxy = Proxy::start(&["--upstream", &one.to_string()]);
    expect(&proxy, upgrade_head("/ws", "").as_bytes(), 502);
    let line = proxy.wait_log("status=502", PATIENCE).unwrap();
    assert!(
        line.contains(&format!("route=/ target=/ws backend={one} ")),
        "{line}"
    );
    // A lone backend is never marked failed: 502 again, not 503.
    expect(&proxy, upgrade_head("/ws", "").as_bytes(), 502);
    proxy.assert_fds_at_baseline();
    drop(proxy);

    let (a, b) = (dead_port(), dead_port());
    let proxy = Proxy::start(&[
        "--upstream",
        &a.to_string(),
        "--upstream",
        &b.to_string(),
        "--workers",
        "1",
    ]);
    expect(&proxy, upgrade_head("/ws", "").as_bytes(), 502);
    expect(&proxy, upgrade_head("/ws", "").as_bytes(), 503);
    proxy.assert_fds_at_baseline();
}

#[test]
fn a_refused_backend_is_skipped_for_the_next_one() {
    let live = Backend::echo();
    let dead = dead_port();
    let proxy = Proxy::start(&[
        "--upstream",
        &dead.to_string(),
        "--upstream",
        &live.addr.to_string(),
        "--workers",
        "1",
    ]);
    for _ in 0..4 {
        let mut ws = ws_client(&proxy, "/ws");
        ws.send(tungstenite::Message::Text("hi".into())).unwrap();
        assert_eq!(ws.read().unwrap(), tungstenite::Message::Text("hi".into()));
    }
    assert_eq!(*live.accepted.lock().unwrap(), 4);
    let line = proxy.wait_log("; trying ", PATIENCE).unwrap();
    assert!(
        line.contains(&format!("{dead}: connect to {dead} failed")),
        "{line}"
    );
}

#[test]
fn garbage_or_silence_from_the_backend_is_502() {
    let garbage = Backend::spawn(|mut s, _| {
        let _ = read_head(&mut s);
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n");
        thread::sleep(Duration::from_millis(300));
    });
    let proxy = Proxy::start(&["--upstream", &garbage.addr.to_string()]);
    expect(&proxy, upgrade_head("/ws", "").as_bytes(), 502);
    proxy.assert_fds_at_baseline();
    drop(proxy);

    let hangs_up = Backend::spawn(|mut s, _| {
        let _ = read_head(&mut s);
    });
    let proxy = Proxy::start(&["--upstream", &hangs_up.addr.to_string()]);
    expect(&proxy, upgrade_head("/ws", "").as_bytes(), 502);
    proxy.assert_fds_at_baseline();
}

#[test]
fn connect_timeout_and_answer_timeout_are_504() {
    let (hole, _fillers, _listener) = blackhole();
    let proxy = Proxy::start(&[
        "--upstream",
        &hole.to_string(),
        "--connect-timeout",
        "300ms",
    ]);
    let started = Instant::now();
    expect(&proxy, upgrade_head("/ws", "").as_bytes(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    proxy.assert_fds_at_baseline();
    drop(proxy);

    let mute = Backend::spawn(|mut s, _| {
        let _ = read_head(&mut s);
        thread::sleep(Duration::from_secs(4));
    });
    let proxy = Proxy::start(&[
        "--upstream",
        &mute.addr.to_string(),
        "--upstream-answer-timeout",
        "400ms",
    ]);
    let text = expect(&proxy, upgrade_head("/ws", "").as_bytes(), 504);
    assert!(
        !text.contains("127.0.0.1"),
        "no address in an answer: {text}"
    );
    let line = proxy.wait_log("--upstream-answer-timeout", PATIENCE);
    assert!(line.is_some(), "{:#?}", proxy.logs());
    proxy.assert_fds_at_baseline();
    drop(proxy);
    // A plain request (a long poll) waits for its answer up to
    // --idle-timeout, not --upstream-answer-timeout.
    let proxy = Proxy::start(&[
        "--upstream",
        &mute.addr.to_string(),
        "--upstream-answer-timeout",
        "100ms",
        "--idle-timeout",
        "400ms",
    ]);
    let started = Instant::now();
    expect(&proxy, b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n", 504);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(proxy.wait_log("within --idle-timeout", PATIENCE).is_some());
    proxy.assert_fds_at_baseline();
}

#[test]
fn a_connect_timeout_does_not_doom_the_next_backend() {
    let (hole, _fillers, _listener) = blackhole();
    let live = Backend::echo();
    let proxy = Proxy::start(&[
        "--upstream",
        &hole.to_string(),
        "--upstream",
        &live.addr.to_string(),
        "--connect-timeout",
        "300ms",
        "--workers",
        "1",
    ]);
    for _ in 0..3 {
        let mut ws = ws_client(&proxy, "/ws");
        ws.send(tungstenite::Message::Text("through".into()))
            .unwrap();
        assert_eq!(
            ws.read().unwrap(),
            tungstenite::Message::Text("through".into())
        );
    }
    assert!(proxy
        .wait_log(
            &format!("{hole}: connect to {hole} timed out; trying"),
            PATIENCE
        )
        .is_some());
    assert_eq!(proxy.count_logs("status=503"), 0, "{:#?}", proxy.logs());
    proxy.assert_fds_at_baseline();
}

#[test]
fn after_an_error_answer_the_socket_closes_even_if_the_client_stays() {
    let (hole, _fillers, _listener) = blackhole();
    let proxy = Proxy::start(&[
        "--upstream",
        &hole.to_string(),
        "--connect-timeout",
        "200ms",
    ]);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(upgrade_head("/ws", "").as_bytes()).unwrap();
    // Read the 504 and its end, but keep our socket open.
    let resp = read_to_close(&mut s);
    assert_eq!(status_of(&resp), 504);
    proxy.assert_fds_at_baseline();
    drop(s);
}

#[test]
fn a_client_that_leaves_before_the_answer_is_a_499_not_a_502() {
    let slow = Backend::spawn(|mut s, _| {
        let _ = read_head(&mut s);
        thread::sleep(Duration::from_millis(600));
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    });
    let proxy = Proxy::start(&["--upstream", &slow.addr.to_string()]);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    thread::sleep(Duration::from_millis(100));
    drop(s);
    let line = proxy.wait_log("status=499", PATIENCE).expect("a 499 line");
    assert!(
        // The access-log line: a request the client left.
        line.contains(" request client=") && line.contains("target=/slow"),
        "{line}"
    );
    assert_eq!(proxy.count_logs("status=502"), 0, "{:#?}", proxy.logs());
    proxy.assert_fds_at_baseline();
}

#[test]
fn a_502_reaches_a_client_that_keeps_sending_before_the_answer() {
    // The client sends frames after its head while the backend thinks; the
    // backend then answers garbage. The 502 must be readable, not lost to a
    // reset caused by closing over unread bytes.
    let garbage = Backend::spawn(|mut s, _| {
        let _ = read_head(&mut s);
        thread::sleep(Duration::from_millis(300));
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n");
        thread::sleep(Duration::from_millis(300));
    });
    let proxy = Proxy::start(&["--upstream", &garbage.addr.to_string()]);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(upgrade_head("/ws", "").as_bytes()).unwrap();
    for _ in 0..20 {
        s.write_all(&client_frame(ringway::proto::ws::OP_BINARY, &[7u8; 4000]))
            .unwrap();
        thread::sleep(Duration::from_millis(20));
    }
    let resp = read_to_close(&mut s);
    assert_eq!(status_of(&resp), 502, "{}", String::from_utf8_lossy(&resp));
    proxy.assert_fds_at_baseline();
}

#[test]
fn a_character_across_byte_7_of_the_path_is_routed() {
    // Found by the `path` fuzz target: routing compared the path's first 7
    // bytes with "http://" by slicing it inside this `é`, and the panic
    // took the worker, and with it the proxy, down.
    let backend = Backend::echo();
    let proxy = start_proxy(&backend, &[]);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(upgrade_head("/ws/aa\u{e9}", "").as_bytes())
        .unwrap();
    let (head, _) = read_head(&mut s);
    assert_eq!(status_of(head.as_bytes()), 101, "{head}");
    drop(s);
    expect(&proxy, b"this is not http\r\n\r\n", 400);
    proxy.assert_fds_at_baseline();
}
