//! Running out of descriptors: ringway keeps room for what it must still
//! do (a backend socket per client, the metrics endpoint), answers 503
//! beyond it, and never blames a backend for its own want.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Whether `prlimit` (util-linux) runs here.
fn have_prlimit() -> bool {
    let ok = Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: no prlimit on this host");
    }
    ok
}

/// The status ringway answers an upgrade with (the socket is dropped
/// after its head).
fn upgrade_status(proxy: &Proxy) -> u16 {
    let mut s = std::net::TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    std::io::Write::write_all(&mut s, upgrade_head("/ws", "").as_bytes()).unwrap();
    let (head, _) = read_head(&mut s);
    status_of(head.as_bytes())
}

/// ringway's soft open-files limit now.
fn soft_nofile(proxy: &Proxy) -> usize {
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proxy.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// Set ringway's soft open-files limit while it runs (the hard one
/// stays, so that it can be raised again without privileges).
fn set_nofile(proxy: &Proxy, n: usize) {
    let status = Command::new("prlimit")
        .args(["--pid", &proxy.pid().to_string(), &format!("--nofile={n}:")])
        .output()
        .unwrap();
    assert!(status.status.success(), "prlimit --pid: {status:?}");
}

#[test]
fn clients_beyond_the_descriptors_get_503_and_metrics_stay_reachable() {
    if !have_prlimit() {
        return;
    }
    let backend = Backend::echo();
    // 200 descriptors: 72 kept in reserve, 25 for each of the two
    // workers, 39 tunnels' worth for the rest (the start line says so).
    let addr = backend.addr.to_string();
    let proxy = Proxy::start_via(
        &["prlimit", "--nofile=200:200", "--"],
        &["--upstream", &addr, "--metrics-listen", "127.0.0.1:0"],
    );
    let line = proxy.wait_log("holds only 39 tunnels", PATIENCE);
    assert!(line.is_some(), "{:#?}", proxy.logs());
    let metrics = metrics_addr(&proxy);
    let mut held: Vec<_> = (0..39).map(|_| ws_client(&proxy, "/ws")).collect();
    for ws in &mut held {
        echo_once(ws, "in");
    }
    // The fortieth: 503, as over --max-conns, with its backend socket
    // never attempted.
    let resp = raw_exchange(proxy.addr, upgrade_head("/ws", "").as_bytes());
    assert_eq!(status_of(&resp), 503, "{}", String::from_utf8_lossy(&resp));
    assert!(String::from_utf8_lossy(&resp).contains("connection limit"));
    assert!(proxy
        .wait_log("open-files limit leaves room", PATIENCE)
        .is_some());
    // The balancer in front still hears from us.
    assert_eq!(scrape(metrics, "/healthz").0, 200);
    // Service resumes as tunnels close.
    held.truncate(30);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if upgrade_status(&proxy) == 101 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still refused");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(held);
    proxy.assert_fds_at_baseline();
}

#[test]
fn a_local_failure_is_503_and_marks_no_backend() {
    if !have_prlimit() {
        return;
    }
    let (a, b) = (Backend::echo(), Backend::echo());
    let proxy = Proxy::start(&[
        "--upstream",
        &a.addr.to_string(),
        "--upstream",
        &b.addr.to_string(),
        "--workers",
        "1",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let metrics = metrics_addr(&proxy);
    let mut ws = ws_client(&proxy, "/ws");
    echo_once(&mut ws, "before");
    let fds = proxy.fd_numbers();
    let soft = soft_nofile(&proxy);
    // Room for one more descriptor: the next client's own, and none for
    // its backend socket. (Which slot the kernel hands out can differ by
    // driver: a slot the accept cannot use shows as a client left waiting,
    // and the limit is raised by one until the accept takes one. The
    // first answer must be the 503; a 101 would mean the backend socket
    // found room.)
    let mut limit = (1..)
        .find(|&n| n - fds.iter().filter(|&&f| f < n).count() == 1)
        .unwrap();
    set_nofile(&proxy, limit);
    let mut c = std::net::TcpStream::connect(proxy.addr).unwrap();
    std::io::Write::write_all(&mut c, upgrade_head("/ws", "").as_bytes()).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut first = [0u8; 1];
    loop {
        match std::io::Read::read(&mut c, &mut first) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                limit += 1;
                assert!(limit < fds.len() + 8, "never accepted");
                set_nofile(&proxy, limit);
            }
            Err(e) => panic!("{e}"),
        }
    }
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut resp = first.to_vec();
    resp.extend(read_to_close(&mut c));
    let text = String::from_utf8_lossy(&resp);
    assert_eq!(status_of(&resp), 503, "{text}");
    assert!(!text.contains("os error"), "{text}");
    let line = proxy.wait_log("out of a local resource", PATIENCE);
    assert!(line.is_some(), "{:#?}", proxy.logs());
    // Descriptors back: the very next clients get through, on both
    // servers, none of which was marked.
    set_nofile(&proxy, soft);
    for _ in 0..4 {
        let mut ws = ws_client(&proxy, "/ws");
        echo_once(&mut ws, "after");
    }
    assert_eq!(
        proxy.count_logs("marked unavailable"),
        0,
        "{:#?}",
        proxy.logs()
    );
    let body = scrape(metrics, "/metrics").1;
    assert_eq!(
        value(&body, "ringway_local_failures_total"),
        Some(1.0),
        "{body}"
    );
    for server in [a.addr, b.addr] {
        let series =
            format!("ringway_upstream_failures_total{{group=\"default\",server=\"{server}\"}}");
        assert_eq!(value(&body, &series), Some(0.0), "{body}");
    }
    drop(ws);
    proxy.assert_fds_at_baseline();
}
