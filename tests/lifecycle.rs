//! How tunnels end: half-close, idle timeout, the backend dying, SIGTERM
//! drains; and how the process starts and refuses to start.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

#[test]
fn half_close_is_propagated_both_ways() {
    let backend = half_close_backend();
    let proxy = start_proxy(&backend, &[]);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(upgrade_head("/ws", "").as_bytes()).unwrap();
    let (head, rest) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(rest.is_empty());
    s.write_all(b"twelve bytes").unwrap();
    half_close(&s);
    // The backend saw our EOF while its own direction stayed open.
    let tail = read_to_close(&mut s);
    assert_eq!(String::from_utf8(tail).unwrap(), "after-eof:12");
    let line = proxy.wait_log("tunnel client=", PATIENCE).unwrap();
    // Bytes written to each side, heads included.
    let count = |key: &str| -> u64 {
        let v = line.split(&format!(" {key}=")).nth(1).unwrap();
        v.split_whitespace().next().unwrap().parse().unwrap()
    };
    let head = upgrade_head("/ws", "").len() as u64;
    assert!(
        count("up") > 12 + head / 2 && count("up") < 12 + head * 2,
        "{line}"
    );
    assert!(count("down") > "after-eof:12".len() as u64 + 50, "{line}");
    assert!(line.contains("closed=\"client closed\""), "{line}");
    proxy.assert_fds_at_baseline();
}

#[test]
fn idle_tunnels_close_and_busy_ones_do_not() {
    let backend = Backend::echo();
    let proxy = start_proxy(&backend, &["--idle-timeout", "700ms"]);
    let mut ws = ws_client(&proxy, "/ws");
    // Traffic for three times the timeout keeps it open.
    let busy_until = Instant::now() + Duration::from_millis(2100);
    while Instant::now() < busy_until {
        ws.send(Message::Text("tick".into())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::Text("tick".into()));
        thread::sleep(Duration::from_millis(150));
    }
    // Silence closes it.
    let quiet = Instant::now();
    assert!(ws.read().is_err(), "the tunnel should be closed");
    let waited = quiet.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let line = proxy.wait_log("closed=\"idle timeout\"", PATIENCE).unwrap();
    assert!(line.contains("status=101"), "{line}");
    proxy.assert_fds_at_baseline();
}

#[test]
fn a_backend_that_dies_mid_tunnel_closes_the_client() {
    let backend = Backend::spawn(|stream, b| {
        if let Some(mut ws) = accept_ws(stream, b, |_| {}) {
            let _ = ws.read();
            // Dropped without a close frame: a crash, as the client sees it.
        }
    });
    let proxy = start_proxy(&backend, &[]);
    let mut ws = ws_client(&proxy, "/ws");
    ws.send(Message::Text("bye".into())).unwrap();
    let started = Instant::now();
    assert!(ws.read().is_err(), "client must see the tunnel end");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Having seen the EOF, the client closes its side: the tunnel is over.
    drop(ws);
    assert!(
        proxy
            .wait_log("closed=\"backend closed\"", PATIENCE)
            .is_some(),
        "{:#?}",
        proxy.logs()
    );
    proxy.assert_fds_at_baseline();
}

#[test]
fn sigterm_stops_accepting_and_lets_tunnels_finish() {
    let backend = Backend::echo();
    let mut proxy = start_proxy(&backend, &["--drain-timeout", "20s"]);
    let mut ws = ws_client(&proxy, "/ws");
    proxy.signal("TERM");
    proxy.wait_log("no longer accepting", PATIENCE).unwrap();
    // New clients are refused...
    let deadline = Instant::now() + PATIENCE;
    loop {
        let refused = match TcpStream::connect(proxy.addr) {
            Err(_) => true,
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let _ = s.write_all(upgrade_head("/ws", "").as_bytes());
                let mut buf = [0u8; 64];
                !matches!(s.read(&mut buf), Ok(n) if n > 0)
            }
        };
        if refused {
            break;
        }
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        thread::sleep(Duration::from_millis(20));
    }
    // ...while the live tunnel still works.
    for i in 0..5 {
        ws.send(Message::Text(format!("still here {i}"))).unwrap();
        assert_eq!(ws.read().unwrap(), Message::Text(format!("still here {i}")));
    }
    assert!(
        proxy.wait_exit(Duration::from_millis(300)).is_none(),
        "exited with a live tunnel"
    );
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    drop(ws);
    let status = proxy
        .wait_exit(PATIENCE)
        .expect("exits once the tunnel is done");
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_drain_timeout_closes_what_is_left_and_exits_0() {
    let backend = Backend::echo();
    let mut proxy = start_proxy(&backend, &["--drain-timeout", "500ms"]);
    let mut ws = ws_client(&proxy, "/ws");
    ws.send(Message::Text("x".into())).unwrap();
    ws.read().unwrap();
    let started = Instant::now();
    proxy.signal("INT");
    assert!(ws.read().is_err(), "closed at the drain deadline");
    let status = proxy.wait_exit(PATIENCE).expect("exits after the drain");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        proxy.count_logs("closed=\"closed at shutdown\"") == 1,
        "{:#?}",
        proxy.logs()
    );
}

#[test]
fn an_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_ringway"))
        .args(["--listen", &addr, "--upstream", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already in use"), "{err}");
}

#[test]
fn configuration_mistakes_exit_2() {
    for args in [
        &["--listen", "127.0.0.1:0"][..],
        &["--upstream", "127.0.0.1:1", "--workers", "0"],
        &["--upstream", "127.0.0.1:1", "--idle-timeout", "forever"],
        &["--upstream", "127.0.0.1:1", "--driver", "kqueue"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ringway"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn the_epoll_driver_can_be_chosen() {
    let backend = Backend::echo();
    let proxy = start_proxy(&backend, &["--driver", "legacy"]);
    assert!(proxy.wait_log("epoll driver", PATIENCE).is_some());
    let mut ws = ws_client(&proxy, "/ws");
    ws.send(Message::Binary(vec![7; 300_000])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Binary(vec![7; 300_000]));
    drop(ws);
    proxy.assert_fds_at_baseline();
}
