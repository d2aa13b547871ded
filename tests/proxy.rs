//! The proxy's job, end to end: messages through the tunnel byte-exact, the
//! handshake rewritten as nginx's seed configuration would, plain requests
//! streamed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;

use common::*;

#[test]
fn text_and_binary_messages_from_0_bytes_to_16_mib() {
    let backend = Backend::echo();
    let proxy = start_proxy(&backend, &[]);
    let mut ws = ws_client(&proxy, "/ws");
    echo_all_sizes(&mut ws);
    close_and_drain(&mut ws);
    drop(ws);
    proxy
        .wait_log("tunnel client=", PATIENCE)
        .expect("one line per tunnel");
    proxy.assert_fds_at_baseline();
}

#[test]
fn fragments_ping_pong_and_close_codes() {
    let backend = Backend::echo();
    let proxy = start_proxy(&backend, &[]);
    let mut ws = ws_client(&proxy, "/ws");
    fragments_ping_and_backend_close(&mut ws);
    drop(ws);
    let mut ws = ws_client(&proxy, "/ws");
    client_close_is_echoed(&mut ws);
    drop(ws);
    proxy.assert_fds_at_baseline();
}

#[test]
fn a_hundred_concurrent_clients() {
    let backend = Backend::echo();
    let proxy = start_proxy(&backend, &[]);
    let (url, addr) = (proxy.url("/ws"), proxy.addr);
    concurrent_clients(100, 20, move || {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        tungstenite::client(url.clone(), stream).unwrap().0
    });
    assert_eq!(*backend.accepted.lock().unwrap(), 100);
    proxy.assert_fds_at_baseline();
}

#[test]
fn frames_pipelined_behind_the_handshake_arrive_first() {
    // tungstenite's server refuses bytes behind a request head, so this uses
    // ringway's own demo echo backend, which takes them.
    let backend = ringway::demo::spawn_echo_backend("127.0.0.1:0".parse().unwrap()).unwrap();
    let proxy = Proxy::start(&["--upstream", &backend.to_string()]);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut bytes = upgrade_head("/ws", "").into_bytes();
    bytes.extend(client_frame(ringway::proto::ws::OP_TEXT, b"early bird"));
    bytes.extend(client_frame(ringway::proto::ws::OP_BINARY, &[1, 2, 3]));
    s.write_all(&bytes).unwrap();
    let (head, mut rest) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    assert!(head.contains("Connection: upgrade\r\n"), "{head}");
    let want = [&[0x81, 10][..], b"early bird", &[0x82, 3, 1, 2, 3]].concat();
    while rest.len() < want.len() {
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        rest.extend_from_slice(&buf[..n]);
    }
    assert_eq!(rest, want);
    drop(s);
    proxy.assert_fds_at_baseline();
}

#[test]
fn subprotocol_and_extensions_reach_the_backend_and_come_back() {
    let backend = Backend::spawn(|stream, b| {
        let ws = accept_ws(stream, b, |resp| {
            resp.headers_mut().insert(
                "sec-websocket-extensions",
                "permessage-deflate; server_no_context_takeover"
                    .parse()
                    .unwrap(),
            );
        });
        if let Some(mut ws) = ws {
            while ws.read().is_ok() {}
        }
    });
    let proxy = start_proxy(&backend, &[]);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let head = upgrade_head(
        "/chat",
        "Sec-WebSocket-Protocol: chat, superchat\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    );
    s.write_all(head.as_bytes()).unwrap();
    let (resp, _) = read_head(&mut s);
    assert!(resp.starts_with("HTTP/1.1 101 "), "{resp}");
    let lower = resp.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nsec-websocket-protocol: chat\r\n"),
        "{resp}"
    );
    assert!(
        lower.contains(
            "\r\nsec-websocket-extensions: permessage-deflate; server_no_context_takeover\r\n"
        ),
        "{resp}"
    );
    let seen = &backend.wait_requests(1)[0];
    assert_eq!(
        header(seen, "sec-websocket-protocol"),
        Some("chat, superchat")
    );
    assert_eq!(
        header(seen, "sec-websocket-extensions"),
        Some("permessage-deflate; client_max_window_bits")
    );
    assert_eq!(
        header(seen, "sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    drop(s);
    proxy.assert_fds_at_baseline();
}

#[test]
fn what_the_backend_sees() {
    let backend = Backend::echo();
    let proxy = start_proxy(&backend, &[]);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let head = "GET /ws?x=1 HTTP/1.1\r\nHost: chat.example.com:8443\r\nUpgrade: websocket\r\n\
         Connection: keep-alive, Upgrade, X-Hop\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nX-Forwarded-For: 203.0.113.9\r\nX-Real-IP: 6.6.6.6\r\n\
         X-Forwarded-Proto: gopher\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nX-Hop: secret\r\n\
         Proxy-Connection: keep-alive\r\nCookie: a=b\r\n\r\n";
    s.write_all(head.as_bytes()).unwrap();
    let (resp, _) = read_head(&mut s);
    assert!(resp.starts_with("HTTP/1.1 101 "), "{resp}");
    let seen = &backend.wait_requests(1)[0];
    assert_eq!(header(seen, "host"), Some("chat.example.com:8443"));
    assert_eq!(
        header(seen, "x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(header(seen, "x-real-ip"), Some("127.0.0.1"));
    assert_eq!(header(seen, "x-forwarded-proto"), Some("http"));
    assert_eq!(header(seen, "upgrade"), Some("websocket"));
    assert_eq!(header(seen, "connection"), Some("upgrade"));
    assert_eq!(header(seen, "cookie"), Some("a=b"));
    for hop in ["keep-alive", "te", "x-hop", "proxy-connection"] {
        assert_eq!(header(seen, hop), None, "{hop} was forwarded: {seen:?}");
    }
    for one in ["x-forwarded-for", "x-real-ip", "connection", "upgrade"] {
        let n = seen
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(one))
            .count();
        assert_eq!(n, 1, "{one} appears {n} times");
    }
    drop(s);
    proxy.assert_fds_at_baseline();
}

#[test]
fn plain_requests_are_streamed_with_connection_close() {
    // A backend that reads a request with a body and answers its length.
    let backend = Backend::spawn(|mut s, b| {
        let (head, mut body) = read_head(&mut s);
        let headers: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let len: usize = header(&headers, "content-length").map_or(0, |v| v.parse().unwrap());
        b.requests.lock().unwrap().push(headers);
        let mut buf = vec![0u8; 65536];
        while body.len() < len {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            body.extend_from_slice(&buf[..n]);
        }
        let sum: u64 = body.iter().map(|&b| b as u64).sum();
        let answer = format!("{} bytes, sum {sum}", body.len());
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: keep-alive\r\nX-App: yes\r\n\r\n{answer}",
            answer.len()
        )
        .unwrap();
        // Keep the connection open: ringway must end the exchange by itself
        // at the end of the declared body.
        thread::sleep(std::time::Duration::from_secs(3));
    });
    let proxy = start_proxy(&backend, &[]);
    let body = payload(8 << 20, 7);
    let sum: u64 = body.iter().map(|&b| b as u64).sum();
    let mut req = format!(
        "POST /upload HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let started = std::time::Instant::now();
    let resp = raw_exchange(proxy.addr, &req);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "waited for the backend to close"
    );
    let text = String::from_utf8(resp).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
    assert!(!text.contains("keep-alive"), "{text}");
    assert!(text.contains("\r\nX-App: yes\r\n"));
    assert!(
        text.ends_with(&format!("{} bytes, sum {sum}", body.len())),
        "{text}"
    );
    let seen = &backend.wait_requests(1)[0];
    assert_eq!(header(seen, "connection"), Some("close"));
    assert_eq!(header(seen, "upgrade"), None);
    proxy.wait_log("request client=", PATIENCE).unwrap();
    proxy.assert_fds_at_baseline();
}

#[test]
fn a_backend_refusing_the_upgrade_is_answered_as_is() {
    let backend = Backend::spawn(|mut s, _| {
        let _ = read_head(&mut s);
        let _ = s.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\nnot for you!!\n");
        thread::sleep(std::time::Duration::from_millis(500));
    });
    let proxy = start_proxy(&backend, &[]);
    let resp = raw_exchange(proxy.addr, upgrade_head("/ws", "").as_bytes());
    assert_eq!(status_of(&resp), 403);
    let text = String::from_utf8(resp).unwrap();
    assert!(text.ends_with("\r\n\r\nnot for you!!\n"), "{text}");
    proxy.assert_fds_at_baseline();
}

/// A backend that records every byte it receives for a moment, answers the
/// first request with `answer`, and keeps the connection open.
fn recording_backend(
    answer: &'static [u8],
) -> (Backend, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let backend = Backend::spawn(move |mut s, _| {
        s.set_read_timeout(Some(std::time::Duration::from_millis(150)))
            .unwrap();
        let mut answered = false;
        let started = std::time::Instant::now();
        let mut buf = [0u8; 4096];
        while started.elapsed() < std::time::Duration::from_millis(800) {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            let got = sink.lock().unwrap().clone();
            if !answered && got.windows(4).any(|w| w == b"\r\n\r\n") {
                s.write_all(answer).unwrap();
                answered = true;
            }
        }
    });
    (backend, seen)
}

#[test]
fn nothing_behind_a_refused_upgrade_reaches_the_backend() {
    let (backend, seen) = recording_backend(
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
    );
    let proxy = start_proxy(&backend, &[]);
    let mut attack = upgrade_head("/ws", "").into_bytes();
    attack
        .extend_from_slice(b"GET /admin HTTP/1.1\r\nHost: internal\r\nX-Real-IP: 6.6.6.6\r\n\r\n");
    let resp = raw_exchange(proxy.addr, &attack);
    assert_eq!(status_of(&resp), 403);
    thread::sleep(std::time::Duration::from_millis(900));
    let got = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert_eq!(
        got.matches("GET ").count(),
        1,
        "smuggled request reached the backend: {got}"
    );
    assert!(!got.contains("/admin") && !got.contains("6.6.6.6"), "{got}");
    proxy.assert_fds_at_baseline();
}

#[test]
fn a_plain_request_forwards_its_body_and_nothing_after() {
    let (backend, seen) = recording_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let proxy = start_proxy(&backend, &[]);
    let req = b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /admin HTTP/1.1\r\nHost: internal\r\n\r\n";
    let resp = raw_exchange(proxy.addr, req);
    assert_eq!(status_of(&resp), 200);
    thread::sleep(std::time::Duration::from_millis(900));
    let got = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(got.ends_with("\r\n\r\nhello"), "{got}");
    assert!(!got.contains("/admin"), "{got}");
    proxy.assert_fds_at_baseline();
}

#[test]
fn a_chunked_response_ends_at_its_last_chunk() {
    // The backend ignores `Connection: close` and keeps the socket open:
    // the response must still end when its chunked body does.
    let (backend, _) = recording_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    let proxy = start_proxy(&backend, &[]);
    let started = std::time::Instant::now();
    let resp = raw_exchange(proxy.addr, b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    let text = String::from_utf8(resp).unwrap();
    assert!(
        text.ends_with("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        "{text}"
    );
    proxy.assert_fds_at_baseline();
}

#[test]
fn the_demo_backend_survives_absurd_frame_lengths() {
    let backend = ringway::demo::spawn_echo_backend("127.0.0.1:0".parse().unwrap()).unwrap();
    let attack = |frame: &[u8]| {
        let mut s = TcpStream::connect(backend).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(upgrade_head("/ws", "").as_bytes()).unwrap();
        let (head, _) = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s.write_all(frame).unwrap();
        read_to_close(&mut s)
    };
    // A 64-bit length of u64::MAX: closed, not a panic.
    let mut huge = vec![0x82, 0xFF];
    huge.extend_from_slice(&u64::MAX.to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    attack(&huge);
    // And it still echoes.
    let echoed = attack(
        &[
            client_frame(ringway::proto::ws::OP_TEXT, b"still here"),
            client_frame(ringway::proto::ws::OP_CLOSE, &[]),
        ]
        .concat(),
    );
    assert!(echoed.windows(10).any(|w| w == b"still here"), "{echoed:?}");
}
