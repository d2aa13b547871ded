//! `--drain-close-frames`: at SIGTERM each tunnel is closed with a Close
//! frame 1001 "going away" to both of its sides, at a frame boundary; a
//! tunnel that cannot prove one is closed at the drain deadline, and without
//! the flag nothing is sent.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// The close codes a backend received, one per Close frame, and 0 for a
/// protocol error (a frame cut, an unmasked frame).
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
            Err(tungstenite::Error::Protocol(e))
                if e != tungstenite::error::ProtocolError::ResetWithoutClosingHandshake =>
            {
                codes.lock().unwrap().push(0);
                return;
            }
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
        let Some(tls) = accept_tls(&config, stream) else {
            return;
        };
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

/// What the client of a busy tunnel read: whole echoed frames, then maybe
/// a Close, then the end.
struct Heard {
    frames: usize,
    close: Option<u16>,
}

/// Read server frames until the connection ends, checking that each is a
/// whole, unmasked 16 KiB binary echo, or a Close after which nothing comes.
/// Sets `closed` when the Close arrives.
fn read_echoes(mut sock: TcpStream, mut buf: Vec<u8>, closed: &AtomicBool) -> Heard {
    let mut heard = Heard {
        frames: 0,
        close: None,
    };
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Some(h) = ringway::proto::ws::parse_header(&buf) {
            let end = h.header_len + h.len as usize;
            if buf.len() < end {
                break;
            }
            assert!(heard.close.is_none(), "a frame after the Close: {h:?}");
            assert!(h.fin && h.mask.is_none(), "{h:?}");
            let payload = &buf[h.header_len..end];
            match h.opcode {
                0x2 => {
                    assert_eq!(payload.len(), 16 * 1024, "{h:?}");
                    assert!(payload.iter().all(|&b| b == payload[0]), "a mixed frame");
                    heard.frames += 1;
                }
                0x8 => {
                    heard.close = Some(u16::from_be_bytes([payload[0], payload[1]]));
                    assert_eq!(&payload[2..], b"going away");
                    closed.store(true, Ordering::SeqCst);
                }
                op => panic!("opcode {op} from the proxy"),
            }
            buf.drain(..end);
        }
        match sock.read(&mut chunk) {
            Ok(0) | Err(_) => {
                assert!(buf.is_empty(), "the stream ended inside a frame");
                return heard;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn a_busy_tunnel_is_never_cut_in_the_middle_of_a_frame() {
    let (backend, codes) = recording_backend();
    let mut proxy = start_proxy(&backend, &["--drain-close-frames", "--drain-timeout", "3s"]);
    let mut sock = TcpStream::connect(proxy.addr).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    sock.write_all(upgrade_head("/ws", "").as_bytes()).unwrap();
    let (head, rest) = read_head(&mut sock);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let closed = Arc::new(AtomicBool::new(false));
    // Frames of 16 KiB both ways without a pause, until the proxy's Close
    // comes; then our own Close, at a boundary of our stream.
    let writer = {
        let mut w = sock.try_clone().unwrap();
        let closed = closed.clone();
        thread::spawn(move || {
            let deadline = Instant::now() + PATIENCE;
            let mut i = 0u8;
            while !closed.load(Ordering::SeqCst) && Instant::now() < deadline {
                if w.write_all(&client_frame(0x2, &[i; 16 * 1024])).is_err() {
                    return;
                }
                i = i.wrapping_add(1);
            }
            let _ = w.write_all(&client_frame(0x8, &1000u16.to_be_bytes()));
        })
    };
    let reader = {
        let closed = closed.clone();
        thread::spawn(move || read_echoes(sock, rest, &closed))
    };
    thread::sleep(Duration::from_millis(200));
    proxy.signal("TERM");
    let heard = reader.join().unwrap();
    closed.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let status = proxy.wait_exit(PATIENCE).expect("exits after the drain");
    assert!(status.success(), "{status:?}");
    assert!(heard.frames > 0);
    // Either the two directions met at a boundary, and both sides got a
    // Close, or they never did, and the deadline closed the tunnel: never
    // a frame cut, on either side.
    match heard.close {
        Some(code) => {
            assert_eq!(code, 1001);
            assert_eq!(wait_codes(&codes, 1), vec![1001]);
            assert_eq!(proxy.count_logs(DRAINED), 1, "{:#?}", proxy.logs());
        }
        None => {
            assert!(codes.lock().unwrap().is_empty(), "{:?}", codes);
            assert_eq!(proxy.count_logs(AT_DEADLINE), 1, "{:#?}", proxy.logs());
        }
    }
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
