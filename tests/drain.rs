//! `--drain-close-frames`: at SIGTERM each tunnel is closed with a Close
//! frame 1001 "going away" to both of its sides, at a frame boundary; a
//! tunnel that cannot prove one is closed at the drain deadline, and without
//! the flag nothing is sent.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rustls::StreamOwned;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// The close codes a backend received, one per Close frame.
type Codes = Arc<Mutex<Vec<u16>>>;

const DRAINED: &str = "closed=\"drained (close 1001 sent)\"";
const AT_DEADLINE: &str = "closed=\"closed at shutdown\"";

/// Echo data messages; record the code of a Close (tungstenite answers it
/// with its own, as a server does), then read on until the connection ends.
fn record_loop<S: Read + Write>(mut ws: WebSocket<S>, codes: &Codes) {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                codes.lock().unwrap().push(code);
            }
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// A WebSocket echo backend that records the close codes it receives (a
/// tungstenite server: it also refuses an unmasked frame from its client).
fn recording_backend() -> (Backend, Codes) {
    let codes = Codes::default();
    let seen = codes.clone();
    let backend = Backend::spawn(move |stream, b| {
        stream.set_read_timeout(Some(PATIENCE * 3)).unwrap();
        if let Some(ws) = accept_ws(stream, b, |_| {}) {
            record_loop(ws, &seen);
        }
    });
    (backend, codes)
}

/// The same behind TLS, with `config`.
fn recording_tls_backend(config: Arc<rustls::ServerConfig>) -> (Backend, Codes) {
    let codes = Codes::default();
    let seen = codes.clone();
    let backend = Backend::spawn(move |stream, b| {
        stream.set_read_timeout(Some(PATIENCE * 3)).unwrap();
        let conn = rustls::ServerConnection::new(config.clone()).unwrap();
        let mut tls = StreamOwned::new(conn, stream);
        while tls.conn.is_handshaking() {
            if tls.conn.complete_io(&mut tls.sock).is_err() {
                return;
            }
        }
        if let Some(ws) = accept_ws(tls, b, |_| {}) {
            record_loop(ws, &seen);
        }
    });
    (backend, codes)
}

/// Read until a Close frame comes, then on until the connection ends (which
/// sends tungstenite's answer). The Close frame, if one came; bounded by
/// the socket's read timeout.
fn await_close<S: Read + Write>(mut ws: WebSocket<S>) -> Option<CloseFrame<'static>> {
    let mut close = None;
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => close = Some(frame.expect("a close code")),
            Ok(_) => {}
            Err(_) => return close,
        }
    }
}

fn assert_going_away(frame: &CloseFrame<'_>) {
    assert_eq!(frame.code, CloseCode::Away);
    assert_eq!(frame.reason, "going away");
}

/// Wait until the backend has recorded `n` close codes; returns them.
fn wait_codes(codes: &Codes, n: usize) -> Vec<u16> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = codes.lock().unwrap().clone();
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn both_sides_of_every_tunnel_get_going_away_and_the_proxy_exits_early() {
    let (backend, codes) = recording_backend();
    let drain = Duration::from_secs(4);
    let mut proxy = start_proxy(&backend, &["--drain-close-frames", "--drain-timeout", "4s"]);
    let clients: Vec<_> = (0..3)
        .map(|i| {
            let mut ws = ws_client(&proxy, "/ws");
            echo_once(&mut ws, &format!("hello {i}"));
            ws
        })
        .collect();
    let started = Instant::now();
    proxy.signal("TERM");
    let readers: Vec<_> = clients
        .into_iter()
        .map(|ws| thread::spawn(move || await_close(ws)))
        .collect();
    for reader in readers {
        let frame = reader.join().unwrap();
        let frame = frame.unwrap_or_else(|| panic!("no close frame: {:#?}", proxy.logs()));
        assert_going_away(&frame);
    }
    // Each backend connection got a valid (masked) Close 1001 too.
    assert_eq!(wait_codes(&codes, 3), vec![1001; 3]);
    let status = proxy
        .wait_exit(drain.saturating_sub(started.elapsed()))
        .unwrap_or_else(|| panic!("still running at the deadline: {:#?}", proxy.logs()));
    assert!(status.success(), "{status:?}");
    assert_eq!(proxy.count_logs(DRAINED), 3, "{:#?}", proxy.logs());
    assert_eq!(proxy.count_logs(AT_DEADLINE), 0, "{:#?}", proxy.logs());
    assert_eq!(codes.lock().unwrap().len(), 3, "one close per backend");
}

#[test]
fn a_tunnel_in_the_middle_of_a_frame_gets_no_close_and_ends_at_the_deadline() {
    let (backend, codes) = recording_backend();
    let mut proxy = start_proxy(&backend, &["--drain-close-frames", "--drain-timeout", "2s"]);
    // A raw client: the upgrade, then a header announcing 1000 bytes and
    // 10 of them.
    let mut raw = TcpStream::connect(proxy.addr).unwrap();
    raw.set_read_timeout(Some(PATIENCE)).unwrap();
    raw.write_all(upgrade_head("/ws", "").as_bytes()).unwrap();
    let (head, rest) = read_head(&mut raw);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(rest.is_empty());
    let frame = client_frame(0x2, &[7; 1000]);
    // 2 bytes, a 16-bit length, the masking key: 8 bytes of header.
    raw.write_all(&frame[..8 + 10]).unwrap();
    let mut ws = ws_client(&proxy, "/ws");
    echo_once(&mut ws, "a whole frame");
    let started = Instant::now();
    proxy.signal("TERM");
    let good = thread::spawn(move || await_close(ws));
    let frame = good.join().unwrap();
    let frame = frame.unwrap_or_else(|| panic!("no close frame: {:#?}", proxy.logs()));
    assert_going_away(&frame);
    // The raw client hears nothing until the deadline closes its tunnel.
    let got = read_to_close(&mut raw);
    assert!(got.is_empty(), "the raw client got {got:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed before the deadline"
    );
    let status = proxy.wait_exit(PATIENCE).expect("exits after the drain");
    assert!(status.success(), "{status:?}");
    // Only the whole tunnel's backend got a Close.
    assert_eq!(*codes.lock().unwrap(), vec![1001]);
    assert_eq!(proxy.count_logs(DRAINED), 1, "{:#?}", proxy.logs());
    assert_eq!(proxy.count_logs(AT_DEADLINE), 1, "{:#?}", proxy.logs());
}

#[test]
fn without_the_flag_no_close_frame_is_sent() {
    let (backend, codes) = recording_backend();
    let mut proxy = start_proxy(&backend, &["--drain-timeout", "1s"]);
    let mut ws = ws_client(&proxy, "/ws");
    echo_once(&mut ws, "x");
    proxy.signal("TERM");
    let read = ws.read();
    assert!(read.is_err(), "closed without a close frame: {read:?}");
    let status = proxy.wait_exit(PATIENCE).expect("exits after the drain");
    assert!(status.success(), "{status:?}");
    assert!(codes.lock().unwrap().is_empty());
    assert_eq!(proxy.count_logs(AT_DEADLINE), 1, "{:#?}", proxy.logs());
}

#[test]
fn close_frames_go_through_tls_on_both_sides() {
    let pki = Pki::new();
    let server = pki.leaf("backend", &["127.0.0.1"]).server_config();
    let (backend, codes) = recording_tls_backend(server);
    let leaf = pki.leaf("default", &["localhost", "127.0.0.1"]);
    let upstream = format!("wss://127.0.0.1:{}", backend.addr.port());
    let mut proxy = Proxy::start(&[
        "--upstream",
        &upstream,
        "--upstream-ca",
        &pki.ca_file,
        "--tls-listen",
        "127.0.0.1:0",
        "--cert",
        &leaf.cert,
        "--key",
        &leaf.key,
        "--drain-close-frames",
        "--drain-timeout",
        "4s",
    ]);
    let mut ws = TlsClient::new(pki.ca_der()).ws(proxy.tls(), Some("localhost"), "/ws");
    echo_once(&mut ws, "over TLS both ways");
    proxy.signal("TERM");
    let frame = await_close(ws);
    let frame = frame.unwrap_or_else(|| panic!("no close frame: {:#?}", proxy.logs()));
    assert_going_away(&frame);
    assert_eq!(wait_codes(&codes, 1), vec![1001]);
    let status = proxy.wait_exit(PATIENCE).expect("exits after the drain");
    assert!(status.success(), "{status:?}");
    assert_eq!(proxy.count_logs(DRAINED), 1, "{:#?}", proxy.logs());
}
