//! Every way tunnel bytes move, end to end through the real binary: the
//! completion ring (`--tunnel-io completion`, io_uring only; under
//! MONOIO_FORCE_LEGACY_DRIVER=1 the same runs take the epoll driver's
//! readiness path), readiness, splice always and splice for bulk, a buffer
//! ring far smaller than the bytes in flight. Each run: byte-exact at every
//! size, fragments, pings and closes; then descriptors (and the ring's
//! buffers) back where they started.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

/// The ring's free buffers, as the metrics show them (after a sweep).
fn buffers_free(proxy: &Proxy) -> f64 {
    let (_, body) = scrape(metrics_addr(proxy), "/metrics");
    value(&body, "ringway_ring_buffers_free").unwrap_or(0.0)
}

/// Whether this run's workers use the completion ring (io_uring driver).
fn on_the_ring(proxy: &Proxy) -> bool {
    let line = proxy
        .wait_log("started: core", PATIENCE)
        .expect("a worker's start line");
    line.contains("completion tunnel io")
}

/// Wait until every one of the ring's `total` buffers is free again.
fn wait_buffers_back(proxy: &Proxy, total: f64) {
    let deadline = Instant::now() + PATIENCE;
    while buffers_free(proxy) != total {
        assert!(Instant::now() < deadline, "ring buffers never came back");
        thread::sleep(Duration::from_millis(50));
    }
}

fn byte_exact_through(args: &[&str]) -> Proxy {
    let backend = Backend::echo();
    let mut all = vec!["--metrics-listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let proxy = start_proxy(&backend, &all);
    let mut ws = ws_client(&proxy, "/ws");
    echo_all_sizes(&mut ws);
    fragments_ping_and_backend_close(&mut ws);
    drop(ws);
    let mut ws = ws_client(&proxy, "/ws");
    client_close_is_echoed(&mut ws);
    drop(ws);
    proxy.wait_count("tunnel client=", 2, PATIENCE);
    proxy.assert_fds_at_baseline();
    proxy
}

#[test]
fn the_completion_ring_is_byte_exact() {
    let proxy = byte_exact_through(&[
        "--tunnel-io",
        "completion",
        "--splice",
        "off",
        "--recv-buffers",
        "64",
    ]);
    if on_the_ring(&proxy) {
        // Two workers, 64 buffers each.
        wait_buffers_back(&proxy, 128.0);
    }
}

#[test]
fn readiness_is_byte_exact() {
    let proxy = byte_exact_through(&["--tunnel-io", "readiness"]);
    assert!(!on_the_ring(&proxy));
}

#[test]
fn splice_is_byte_exact() {
    byte_exact_through(&["--splice", "on"]);
}

#[test]
fn bulk_handed_to_splice_is_byte_exact() {
    let proxy = byte_exact_through(&["--splice", "auto", "--recv-buffers", "32"]);
    if on_the_ring(&proxy) {
        // The 1 MiB and 16 MiB messages filled whole buffers in a row.
        let (_, body) = scrape(metrics_addr(&proxy), "/metrics");
        let handoffs = value(&body, "ringway_ring_bulk_handoffs_total").unwrap();
        assert!(handoffs >= 1.0, "{body}");
        wait_buffers_back(&proxy, 64.0);
    }
}

/// Two buffers of 1 KiB per core for everything: receives wait for
/// buffers all the time, and nothing is lost.
#[test]
fn a_starved_ring_is_byte_exact() {
    let proxy = byte_exact_through(&[
        "--splice",
        "off",
        "--recv-buffers",
        "2",
        "--recv-buffer-size",
        "1024",
    ]);
    if on_the_ring(&proxy) {
        let (_, body) = scrape(metrics_addr(&proxy), "/metrics");
        assert!(
            value(&body, "ringway_ring_buffer_waits_total").unwrap() >= 1.0,
            "{body}"
        );
        wait_buffers_back(&proxy, 4.0);
    }
}

/// 1,000 tunnels open at once share a ring of 16 buffers per core: their
/// messages (8 KiB, more than the ring holds when they cross) wait for
/// buffers and come back byte-exact.
#[test]
fn a_thousand_tunnels_share_a_small_ring() {
    let backend = Backend::echo();
    let proxy = start_proxy(
        &backend,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--splice",
            "off",
            "--recv-buffers",
            "16",
            "--recv-buffer-size",
            "4096",
        ],
    );
    let (url, addr) = (proxy.url("/ws"), proxy.addr);
    let threads: Vec<_> = (0..20)
        .map(|t| {
            let url = url.clone();
            thread::spawn(move || {
                // Each thread holds 50 tunnels open, then talks on all.
                let mut wss: Vec<_> = (0..50)
                    .map(|_| {
                        let s = TcpStream::connect(addr).unwrap();
                        s.set_read_timeout(Some(PATIENCE)).unwrap();
                        tungstenite::client(url.clone(), s).unwrap().0
                    })
                    .collect();
                for round in 0..3u8 {
                    for (i, ws) in wss.iter_mut().enumerate() {
                        let msg = payload(8 * 1024, t ^ round ^ i as u8);
                        ws.send(Message::Binary(msg.clone())).unwrap();
                        assert_eq!(ws.read().unwrap(), Message::Binary(msg));
                    }
                }
                for ws in &mut wss {
                    close_and_drain(ws);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(*backend.accepted.lock().unwrap(), 1000);
    proxy.wait_count("tunnel client=", 1000, PATIENCE);
    proxy.assert_fds_at_baseline();
    if on_the_ring(&proxy) {
        wait_buffers_back(&proxy, 32.0);
    }
}

/// A tunnel ends by each side, and by the idle timeout, while the ring's
/// receives are armed on both of its sockets (and after waiting for
/// buffers): each end is told apart, and nothing is left behind.
#[test]
fn tunnels_end_by_each_side_and_by_the_idle_timeout_while_receives_are_armed() {
    let backend = Backend::spawn(|stream, b| {
        if let Some(mut ws) = accept_ws(stream, b, |_| {}) {
            // Echo until "bye", then close from the backend's side.
            while let Ok(m) = ws.read() {
                if m == Message::Text("bye".into()) {
                    let _ = ws.close(None);
                    while ws.read().is_ok() {}
                    return;
                }
                if (m.is_binary() || m.is_text()) && ws.send(m).is_err() {
                    return;
                }
            }
        }
    });
    let proxy = start_proxy(
        &backend,
        &[
            "--idle-timeout",
            "800ms",
            "--metrics-listen",
            "127.0.0.1:0",
            "--recv-buffers",
            "2",
            "--recv-buffer-size",
            "1024",
        ],
    );
    // Bigger than the ring: receives waited for buffers on the way.
    let big = payload(64 * 1024, 7);
    let talk = |ws: &mut tungstenite::WebSocket<TcpStream>| {
        ws.send(Message::Binary(big.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::Binary(big.clone()));
    };
    // The client closes (its TCP connection, first).
    let mut ws = ws_client(&proxy, "/ws");
    talk(&mut ws);
    drop(ws);
    let line = proxy.wait_log("closed=\"client closed\"", PATIENCE);
    assert!(line.is_some(), "{:#?}", proxy.logs());
    // The backend closes.
    let mut ws = ws_client(&proxy, "/ws");
    talk(&mut ws);
    ws.send(Message::Text("bye".into())).unwrap();
    while ws.read().is_ok() {}
    drop(ws);
    let line = proxy.wait_log("closed=\"backend closed\"", PATIENCE);
    assert!(line.is_some(), "{:#?}", proxy.logs());
    // Nobody says anything: the idle timeout, with both receives armed.
    let mut ws = ws_client(&proxy, "/ws");
    talk(&mut ws);
    let quiet = Instant::now();
    assert!(ws.read().is_err(), "closed by the idle timeout");
    assert!(quiet.elapsed() < PATIENCE);
    let line = proxy.wait_log("closed=\"idle timeout\"", PATIENCE);
    assert!(line.is_some(), "{:#?}", proxy.logs());
    drop(ws);
    proxy.assert_fds_at_baseline();
    if on_the_ring(&proxy) {
        wait_buffers_back(&proxy, 4.0);
    }
}

/// Splice towards a backend that reads slowly: the pipe waits with its
/// bytes (back-pressure) and every byte arrives, in order; the pipes go
/// back to the pool (descriptors at baseline).
#[test]
fn splice_towards_a_slow_reader() {
    let total = 4 << 20;
    let backend = Backend::spawn(move |mut stream, _| {
        // A raw backend: answer the upgrade, then read slowly and check.
        let (head, mut body) = read_head(&mut stream);
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap()
            .trim()
            .to_string();
        let accept = ringway::proto::ws::accept_key(key.as_bytes());
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        stream.write_all(answer.as_bytes()).unwrap();
        let mut buf = vec![0u8; 8192];
        while body.len() < total {
            thread::sleep(Duration::from_millis(2));
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "the client's bytes ended early");
            body.extend_from_slice(&buf[..n]);
        }
        assert_eq!(body, payload(total, 9), "byte-exact, in order");
        stream.write_all(b"ok").unwrap();
    });
    let proxy = start_proxy(&backend, &["--splice", "on", "--splice-pipes", "2"]);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE * 3)).unwrap();
    s.write_all(upgrade_head("/ws", "").as_bytes()).unwrap();
    let (head, _) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Raw bytes after the 101: splice does not care what they are.
    s.write_all(&payload(total, 9)).unwrap();
    let mut ok = [0u8; 2];
    s.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"ok");
    drop(s);
    proxy.wait_log("tunnel client=", PATIENCE).unwrap();
    proxy.assert_fds_at_baseline();
}
