//! Limits and protection against the real binary: the per-client-address
//! tunnel limit (exact whichever core a connection lands on, keyed on the
//! real client behind a trusted proxy, its status chosen by a flag), the
//! global connection cap, the Origin allow-list, X-Forwarded-For/X-Real-IP
//! from trusted proxies, PROXY protocol v1/v2 on a listener (valid headers
//! believed, bad, slow and untrusted ones closed without an answer) and
//! PROXY headers sent on to a backend.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

/// A TCP connection to `to` from the source address `src` (any port).
fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let src: IpAddr = src.parse().unwrap();
    let domain = if src.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(src, 0).into()).unwrap();
    sock.connect_timeout(&to.into(), PATIENCE).unwrap();
    let s = TcpStream::from(sock);
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Send an upgrade for `/ws` with `extra` header lines on `s`: the tunnel
/// when the answer is 101, else the whole answer (read until ringway
/// closes).
fn upgrade_on(mut s: TcpStream, extra: &str) -> Result<WebSocket<TcpStream>, Vec<u8>> {
    s.write_all(upgrade_head("/ws", extra).as_bytes()).unwrap();
    answer(s)
}

/// Read the answer to an upgrade already sent on `s` (see [`upgrade_on`]).
fn answer(mut s: TcpStream) -> Result<WebSocket<TcpStream>, Vec<u8>> {
    let (head, rest) = read_head(&mut s);
    if status_of(head.as_bytes()) == 101 {
        return Ok(WebSocket::from_partially_read(s, rest, Role::Client, None));
    }
    let mut all = head.into_bytes();
    all.extend_from_slice(&rest);
    all.extend_from_slice(&read_to_close(&mut s));
    Err(all)
}

/// An upgrade from `src` that must open a tunnel, checked to echo.
fn tunnel_from(proxy: &Proxy, src: &str, extra: &str) -> WebSocket<TcpStream> {
    let mut ws = upgrade_on(connect_from(src, proxy.addr), extra).unwrap_or_else(|resp| {
        panic!(
            "expected 101 from {src}, got {:?}; logs {:#?}",
            String::from_utf8_lossy(&resp),
            proxy.logs()
        )
    });
    echo(&mut ws, &format!("hello from {src}"));
    ws
}

/// An upgrade from `src` that must be refused: the answer as text.
fn refused_from(proxy: &Proxy, src: &str, extra: &str) -> Refused {
    refused_on(connect_from(src, proxy.addr), extra)
        .unwrap_or_else(|_| panic!("upgrade from {src} with {extra:?} was let in"))
}

/// A refused upgrade: the answer, and the client's address, which its
/// WARN line names (`client=ADDR`).
#[derive(Debug)]
struct Refused {
    text: String,
    client: SocketAddr,
}

/// An upgrade on `s`, expected to be refused (`Err(())`: it was let in).
fn refused_on(s: TcpStream, extra: &str) -> Result<Refused, ()> {
    let client = s.local_addr().unwrap();
    match upgrade_on(s, extra) {
        Ok(_) => Err(()),
        Err(resp) => Ok(Refused {
            text: String::from_utf8(resp).unwrap(),
            client,
        }),
    }
}

/// The status of a refusal, checked to be a whole `Connection: close`
/// answer with its short text body, which names no address and no flag,
/// and its own log line (by the client's address) naming `why`.
fn check_refusal(proxy: &Proxy, refused: &Refused, status: u16, why: &str) {
    let resp = &refused.text;
    assert_eq!(status_of(resp.as_bytes()), status, "{resp}");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("\r\nConnection: close"), "{head}");
    assert!(head.contains("\r\nContent-Type: text/plain"), "{head}");
    assert!(body.starts_with(&status.to_string()), "{body:?}");
    for internal in ["--", "127.0.0.", "198.51.100."] {
        assert!(!body.contains(internal), "{body:?} has {internal:?}");
    }
    let client = format!("client={} ", refused.client);
    let line = proxy.wait_log_where(|l| l.contains(&client) && l.contains(why), PATIENCE);
    assert!(
        line.is_some(),
        "no log line of {client:?} with {why:?}: {:#?}",
        proxy.logs()
    );
}

/// One message there and back through an open tunnel.
fn echo(ws: &mut WebSocket<TcpStream>, text: &str) {
    ws.send(Message::Text(text.into())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Text(text.into()));
}

/// The client side's address of a tunnel (as ringway logs it).
fn local(ws: &WebSocket<TcpStream>) -> SocketAddr {
    ws.get_ref().local_addr().unwrap()
}

/// Run `f` on a thread pinned to the `i`-th CPU this process may use, so
/// that the connection it makes is steered to that CPU's worker.
fn on_core<T: Send + 'static>(i: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        if let Some(cores) = core_affinity::get_core_ids() {
            core_affinity::set_for_current(cores[i % cores.len()]);
        }
        f()
    })
    .join()
    .unwrap()
}

/// Close a tunnel and wait for ringway's line for it: by then its slots
/// are released or about to be.
fn close_tunnel(proxy: &Proxy, ws: WebSocket<TcpStream>) {
    let me = local(&ws);
    drop(ws);
    proxy
        .wait_log(&format!("tunnel client={me} "), PATIENCE)
        .unwrap_or_else(|| panic!("no line for the closed tunnel: {:#?}", proxy.logs()));
}

/// Try upgrades from `src` until one opens (a released slot): every try
/// before it must be refused with `status`.
fn poll_for_tunnel(proxy: &Proxy, src: &str, status: u16) -> WebSocket<TcpStream> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match upgrade_on(connect_from(src, proxy.addr), "") {
            Ok(mut ws) => {
                echo(&mut ws, "after the release");
                return ws;
            }
            Err(resp) => assert_eq!(status_of(&resp), status),
        }
        assert!(
            Instant::now() < deadline,
            "the slot was never released: {:#?}",
            proxy.logs()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn per_ip_limit_is_exact_across_cores() {
    let backend = Backend::echo();
    let proxy = start_proxy(&backend, &["--workers", "2", "--limit-conn-per-ip", "3"]);
    let addr = proxy.addr;
    // Three tunnels, opened from alternating cores: all let in.
    let mut held: Vec<WebSocket<TcpStream>> = (0..3)
        .map(|i| {
            let mut ws = on_core(i, move || {
                upgrade_on(connect_from("127.0.0.1", addr), "").expect("one of the first three")
            });
            echo(&mut ws, "held");
            ws
        })
        .collect();

    // Twenty more at once, spread over the cores: each refused.
    let tries: Vec<_> = (0..20)
        .map(|i| {
            thread::spawn(move || {
                on_core(i, move || refused_on(connect_from("127.0.0.1", addr), ""))
            })
        })
        .collect();
    for t in tries {
        let refused = t.join().unwrap().expect("a fourth tunnel was let in");
        check_refusal(
            &proxy,
            &refused,
            503,
            "127.0.0.1 already has 3 tunnels (--limit-conn-per-ip)",
        );
    }
    proxy.wait_count("status=503 ", 20, PATIENCE);
    let refusals: Vec<String> = proxy
        .logs()
        .into_iter()
        .filter(|l| l.contains("status=503 "))
        .collect();
    for line in &refusals {
        assert!(line.contains(" WARN "), "{line}");
        assert!(line.contains("client=127.0.0.1:"), "{line}");
        assert!(line.contains("backend=- status=503"), "{line}");
        assert!(line.contains("--limit-conn-per-ip"), "{line}");
    }
    assert_eq!(
        *backend.accepted.lock().unwrap(),
        3,
        "refused ones never reach it"
    );

    // Another address has its own count, and its own limit.
    let mut others: Vec<_> = (0..3)
        .map(|_| tunnel_from(&proxy, "127.0.0.2", ""))
        .collect();
    check_refusal(
        &proxy,
        &refused_from(&proxy, "127.0.0.2", ""),
        503,
        "127.0.0.2 already has 3",
    );
    for ws in held.iter_mut().chain(others.iter_mut()) {
        echo(ws, "still open");
    }

    // Closing one lets one more in, and only one.
    close_tunnel(&proxy, held.remove(0));
    held.push(poll_for_tunnel(&proxy, "127.0.0.1", 503));
    check_refusal(
        &proxy,
        &refused_from(&proxy, "127.0.0.1", ""),
        503,
        "--limit-conn-per-ip",
    );
    drop((held, others));
    proxy.assert_fds_at_baseline();
}

#[test]
fn limit_conn_status_changes_the_answer() {
    let backend = Backend::echo();
    let proxy = start_proxy(
        &backend,
        &["--limit-conn-per-ip", "1", "--limit-conn-status", "429"],
    );
    let mut ws = tunnel_from(&proxy, "127.0.0.1", "");
    let resp = refused_from(&proxy, "127.0.0.1", "");
    assert!(
        resp.text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{resp:?}"
    );
    check_refusal(&proxy, &resp, 429, "--limit-conn-per-ip");
    let line = proxy.wait_log("status=429 ", PATIENCE).unwrap();
    assert!(
        line.contains("client=127.0.0.1:") && line.contains("--limit-conn-per-ip"),
        "{line}"
    );
    echo(&mut ws, "unaffected");
    drop(ws);
    proxy.assert_fds_at_baseline();
}

#[test]
fn max_conns_caps_all_connections() {
    let backend = Backend::echo();
    let proxy = start_proxy(&backend, &["--max-conns", "2"]);
    let mut a = tunnel_from(&proxy, "127.0.0.1", "");
    let b = tunnel_from(&proxy, "127.0.0.2", "");
    // The cap is global: a third address is refused too.
    for src in ["127.0.0.3", "127.0.0.1"] {
        check_refusal(&proxy, &refused_from(&proxy, src, ""), 503, "--max-conns");
    }
    let line = proxy.wait_log("over --max-conns", PATIENCE).unwrap();
    assert!(
        line.contains(" WARN ") && line.contains("status=503"),
        "{line}"
    );
    echo(&mut a, "still open");
    close_tunnel(&proxy, b);
    let c = poll_for_tunnel(&proxy, "127.0.0.3", 503);
    check_refusal(
        &proxy,
        &refused_from(&proxy, "127.0.0.4", ""),
        503,
        "--max-conns",
    );
    drop((a, c));
    proxy.assert_fds_at_baseline();
}

/// A backend that answers upgrades with 101 and then echoes raw bytes,
/// and plain requests with `200 plain`; it records every head.
fn upgrade_or_plain_backend() -> Backend {
    Backend::spawn(|mut s, b| {
        s.set_read_timeout(Some(PATIENCE * 3)).unwrap();
        let (head, _) = read_head(&mut s);
        let headers: Headers = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let key = header(&headers, "sec-websocket-key").map(str::to_string);
        let upgrade = header(&headers, "upgrade").is_some();
        b.requests.lock().unwrap().push(headers);
        if !upgrade {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain");
            return;
        }
        let accept = ringway::proto::ws::accept_key(key.unwrap().as_bytes());
        let _ = write!(
            s,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        echo_loop(WebSocket::from_raw_socket(s, Role::Server, None));
    })
}

#[test]
fn origin_allow_list_checks_upgrades_only() {
    let backend = upgrade_or_plain_backend();
    let proxy = start_proxy(
        &backend,
        &[
            "--allow-origin",
            "https://app.example.com",
            "--allow-origin",
            "*.example.org",
        ],
    );
    let mut open = Vec::new();
    for origin in [
        "Origin: https://app.example.com\r\n",
        "Origin: https://x.example.org\r\n",
        "",
    ] {
        open.push(tunnel_from(&proxy, "127.0.0.1", origin));
    }
    for bad in ["https://evil.com", "http://app.example.com"] {
        let resp = refused_from(&proxy, "127.0.0.1", &format!("Origin: {bad}\r\n"));
        check_refusal(&proxy, &resp, 403, "is not in --allow-origin");
        let line = proxy
            .wait_log(&format!("Origin {bad} is not in"), PATIENCE)
            .unwrap_or_else(|| panic!("no line for {bad}: {:#?}", proxy.logs()));
        assert!(
            line.contains(" WARN ")
                && line.contains("client=127.0.0.1:")
                && line.contains("route=/ target=/ws backend=- status=403"),
            "{line}"
        );
    }
    // A plain request is not a cross-site WebSocket: proxied whatever its
    // Origin.
    let resp = raw_exchange(
        proxy.addr,
        b"GET /page HTTP/1.1\r\nHost: test.local\r\nOrigin: https://evil.com\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&resp);
    assert_eq!(status_of(&resp), 200, "{text}");
    assert!(text.ends_with("plain"), "{text}");
    proxy
        .wait_log("request client=127.0.0.1:", PATIENCE)
        .unwrap();
    // The backend saw the three tunnels and the plain request, nothing else.
    let seen = backend.wait_requests(4);
    assert_eq!(*backend.accepted.lock().unwrap(), 4, "{seen:?}");
    let origins: Vec<Option<&str>> = seen.iter().map(|h| header(h, "origin")).collect();
    assert_eq!(
        origins,
        [
            Some("https://app.example.com"),
            Some("https://x.example.org"),
            None,
            Some("https://evil.com")
        ]
    );
    drop(open);
    proxy.assert_fds_at_baseline();
}

#[test]
fn forwarded_for_is_believed_from_trusted_proxies_only() {
    let backend = Backend::echo();
    let proxy = start_proxy(&backend, &["--trusted-proxy", "127.0.0.1"]);
    let xff = "X-Forwarded-For: 203.0.113.9\r\n";
    let trusted = tunnel_from(&proxy, "127.0.0.1", xff);
    let seen = backend.wait_requests(1);
    assert_eq!(header(&seen[0], "x-real-ip"), Some("203.0.113.9"));
    assert_eq!(
        header(&seen[0], "x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    let untrusted = tunnel_from(&proxy, "127.0.0.2", xff);
    let seen = backend.wait_requests(2);
    assert_eq!(header(&seen[1], "x-real-ip"), Some("127.0.0.2"));
    assert_eq!(
        header(&seen[1], "x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.2")
    );
    let (t, u) = (local(&trusted), local(&untrusted));
    drop((trusted, untrusted));
    let line = proxy
        .wait_log(&format!("tunnel client={t} "), PATIENCE)
        .unwrap();
    assert!(
        line.contains(&format!("client={t} real_ip=203.0.113.9 route=")),
        "{line}"
    );
    let line = proxy
        .wait_log(&format!("tunnel client={u} "), PATIENCE)
        .unwrap();
    assert!(!line.contains("real_ip="), "{line}");
    proxy.assert_fds_at_baseline();
}

#[test]
fn per_ip_limit_counts_the_real_client() {
    let backend = Backend::echo();
    let proxy = start_proxy(
        &backend,
        &["--trusted-proxy", "127.0.0.1", "--limit-conn-per-ip", "1"],
    );
    // Two clients behind the one trusted balancer address.
    let mut a = tunnel_from(&proxy, "127.0.0.1", "X-Forwarded-For: 198.51.100.1\r\n");
    let mut b = tunnel_from(&proxy, "127.0.0.1", "X-Forwarded-For: 198.51.100.2\r\n");
    // The balancer's own connection is one more address.
    let mut c = tunnel_from(&proxy, "127.0.0.1", "");
    let resp = refused_from(&proxy, "127.0.0.1", "X-Forwarded-For: 198.51.100.1\r\n");
    check_refusal(&proxy, &resp, 503, "198.51.100.1 already has 1 tunnels");
    let line = proxy.wait_log("status=503 ", PATIENCE).unwrap();
    assert!(
        line.contains("real_ip=198.51.100.1 ") && line.contains("--limit-conn-per-ip"),
        "{line}"
    );
    // An untrusted peer's X-Forwarded-For does not get it a new key.
    let resp = refused_from(&proxy, "127.0.0.1", "");
    check_refusal(&proxy, &resp, 503, "127.0.0.1 already has 1 tunnels");
    for ws in [&mut a, &mut b, &mut c] {
        echo(ws, "still open");
    }
    let mut d = tunnel_from(&proxy, "127.0.0.2", "X-Forwarded-For: 198.51.100.3\r\n");
    let resp = refused_from(&proxy, "127.0.0.2", "X-Forwarded-For: 198.51.100.4\r\n");
    check_refusal(&proxy, &resp, 503, "127.0.0.2 already has 1 tunnels");
    echo(&mut d, "still open");
    drop((a, b, c, d));
    proxy.assert_fds_at_baseline();
}

// ---------------------------------------------------------------------------
// PROXY protocol

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 header: command byte, family byte, then the address block.
fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[ver_cmd, fam]);
    out.extend_from_slice(&(block.len() as u16).to_be_bytes());
    out.extend_from_slice(block);
    out
}

fn v2_tcp4(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        unreachable!()
    };
    let mut block = Vec::new();
    block.extend_from_slice(&s.ip().octets());
    block.extend_from_slice(&d.ip().octets());
    block.extend_from_slice(&s.port().to_be_bytes());
    block.extend_from_slice(&d.port().to_be_bytes());
    v2(0x21, 0x11, &block)
}

fn v2_tcp6(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V6(s), SocketAddr::V6(d)) = (src, dst) else {
        unreachable!()
    };
    let mut block = Vec::new();
    block.extend_from_slice(&s.ip().octets());
    block.extend_from_slice(&d.ip().octets());
    block.extend_from_slice(&s.port().to_be_bytes());
    block.extend_from_slice(&d.port().to_be_bytes());
    v2(0x21, 0x21, &block)
}

/// Send `first`, then (unless empty) `later` in a separate write after a
/// pause, from `src`; expect a tunnel. Returns it.
fn through_header(proxy: &Proxy, src: &str, first: &[u8], later: &[u8]) -> WebSocket<TcpStream> {
    let mut s = connect_from(src, proxy.addr);
    s.write_all(first).unwrap();
    if !later.is_empty() {
        thread::sleep(Duration::from_millis(150));
        s.write_all(later).unwrap();
    }
    let mut ws = answer(s).unwrap_or_else(|resp| {
        panic!(
            "no tunnel: {:?}; logs {:#?}",
            String::from_utf8_lossy(&resp),
            proxy.logs()
        )
    });
    echo(&mut ws, "behind a PROXY header");
    ws
}

/// The client address ringway must have taken from a header: the backend's
/// `n`-th request names it, and the tunnel's line names it as the client.
fn check_client(
    proxy: &Proxy,
    backend: &Backend,
    n: usize,
    ws: WebSocket<TcpStream>,
    client: &str,
) {
    let seen = backend.wait_requests(n + 1);
    let ip = client.rsplit_once(':').unwrap().0.trim_matches(['[', ']']);
    assert_eq!(header(&seen[n], "x-real-ip"), Some(ip), "{:?}", seen[n]);
    assert_eq!(
        header(&seen[n], "x-forwarded-for"),
        Some(ip),
        "{:?}",
        seen[n]
    );
    drop(ws);
    let line = proxy
        .wait_log(&format!("tunnel client={client} "), PATIENCE)
        .unwrap_or_else(|| panic!("no tunnel line for {client}: {:#?}", proxy.logs()));
    assert!(line.contains("status=101"), "{line}");
}

/// Send `bytes` from a fresh connection (then half-close when `close`):
/// ringway must close without a byte of answer, and log why, naming the
/// connection's TCP peer. Returns how long the close took.
fn rejected(proxy: &Proxy, bytes: &[u8], close: bool, why: &str) -> Duration {
    let mut s = connect_from("127.0.0.1", proxy.addr);
    let me = s.local_addr().unwrap();
    let start = Instant::now();
    s.write_all(bytes).unwrap();
    if close {
        half_close(&s);
    }
    let got = read_to_close(&mut s);
    let took = start.elapsed();
    assert!(
        got.is_empty(),
        "answered {:?} to {:?}",
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(bytes)
    );
    let line = proxy
        .wait_log(&format!("client={me} PROXY protocol: "), PATIENCE)
        .unwrap_or_else(|| panic!("no line for {me}: {:#?}", proxy.logs()));
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains(why), "{line} lacks {why:?}");
    assert!(line.ends_with("; connection closed"), "{line}");
    took
}

#[test]
fn proxy_protocol_listener() {
    let backend = Backend::echo();
    let proxy = Proxy::start(&[
        "--listen",
        "127.0.0.1:0,proxy-protocol",
        "--trusted-proxy",
        "127.0.0.0/8",
        "--handshake-timeout",
        "1s",
        "--upstream",
        &backend.addr.to_string(),
    ]);
    let head = upgrade_head("/ws", "");
    let v1 = b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 80\r\n";

    // v1, header and request in one write.
    let together = [&v1[..], head.as_bytes()].concat();
    let ws = through_header(&proxy, "127.0.0.1", &together, b"");
    check_client(&proxy, &backend, 0, ws, "198.51.100.7:5555");

    // v1, the request in a later write (the header alone first).
    let v1b = b"PROXY TCP4 198.51.100.17 127.0.0.1 5556 80\r\n";
    let ws = through_header(&proxy, "127.0.0.1", v1b, head.as_bytes());
    check_client(&proxy, &backend, 1, ws, "198.51.100.17:5556");

    // v2 over IPv4 and IPv6, each both ways.
    let dst4: SocketAddr = "127.0.0.1:80".parse().unwrap();
    let h = v2_tcp4("198.51.100.8:6000".parse().unwrap(), dst4);
    let ws = through_header(
        &proxy,
        "127.0.0.1",
        &[&h[..], head.as_bytes()].concat(),
        b"",
    );
    check_client(&proxy, &backend, 2, ws, "198.51.100.8:6000");
    let h = v2_tcp4("198.51.100.9:6001".parse().unwrap(), dst4);
    let ws = through_header(&proxy, "127.0.0.1", &h, head.as_bytes());
    check_client(&proxy, &backend, 3, ws, "198.51.100.9:6001");
    let dst6 = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 80);
    let h = v2_tcp6("[2001:db8::7]:7000".parse().unwrap(), dst6);
    let ws = through_header(
        &proxy,
        "127.0.0.1",
        &[&h[..], head.as_bytes()].concat(),
        b"",
    );
    check_client(&proxy, &backend, 4, ws, "[2001:db8::7]:7000");
    let h = v2_tcp6("[2001:db8::8]:7001".parse().unwrap(), dst6);
    let ws = through_header(&proxy, "127.0.0.1", &h, head.as_bytes());
    check_client(&proxy, &backend, 5, ws, "[2001:db8::8]:7001");

    // v2 LOCAL (a balancer's health check): the real peer is the client.
    let local_cmd = v2(0x20, 0x00, &[]);
    let ws = through_header(
        &proxy,
        "127.0.0.3",
        &[&local_cmd[..], head.as_bytes()].concat(),
        b"",
    );
    let me = local(&ws).to_string();
    check_client(&proxy, &backend, 6, ws, &me);

    // Truncated, then closed: closed without an answer. (Why, and how
    // soon: `truncated_header_then_close_is_seen_at_once`.)
    rejected(&proxy, b"PROXY TCP4 198.51.100.7 12", true, "");
    let short_v2 = &v2_tcp4("198.51.100.8:6000".parse().unwrap(), dst4)[..20];
    rejected(&proxy, short_v2, true, "");
    // Plain HTTP with no header at all.
    rejected(&proxy, head.as_bytes(), false, "no PROXY protocol header");
    // A v1 line that never ends within its 107 bytes.
    let mut long = b"PROXY TCP4 ".to_vec();
    long.resize(200, b'1');
    rejected(&proxy, &long, false, "too long");
    // A v2 header announcing 60000 bytes: refused from its preamble, at
    // once, not at the handshake timeout.
    let huge = [&V2_SIGNATURE[..], &[0x21, 0x11, 0xea, 0x60]].concat();
    let took = rejected(&proxy, &huge, false, "too long");
    assert!(took < Duration::from_millis(900), "took {took:?}");
    // Malformed at the byte that breaks it.
    rejected(&proxy, b"PROXY TCP5 ", false, "malformed");
    // A header that never completes: closed at --handshake-timeout.
    let took = rejected(
        &proxy,
        b"PROXY TCP4 198.51.100.7 ",
        false,
        "no complete header within --handshake-timeout",
    );
    assert!(
        took >= Duration::from_millis(900) && took < PATIENCE,
        "took {took:?}"
    );
    // Nothing was sent on for any of these.
    assert_eq!(*backend.accepted.lock().unwrap(), 7);

    // Still serving.
    let ws = through_header(&proxy, "127.0.0.1", &together, b"");
    check_client(&proxy, &backend, 7, ws, "198.51.100.7:5555");
    proxy.assert_fds_at_baseline();
}

#[test]
fn truncated_header_then_close_is_seen_at_once() {
    let backend = Backend::echo();
    let proxy = Proxy::start(&[
        "--listen",
        "127.0.0.1:0,proxy-protocol",
        "--trusted-proxy",
        "127.0.0.0/8",
        "--handshake-timeout",
        "5s",
        "--upstream",
        &backend.addr.to_string(),
    ]);
    let v2_start = &v2_tcp4(
        "198.51.100.8:6000".parse().unwrap(),
        "127.0.0.1:80".parse().unwrap(),
    )[..20];
    for partial in [&b"PROXY TCP4 198.51.100.7 12"[..], v2_start] {
        let took = rejected(&proxy, partial, true, "closed in the middle of its header");
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
    proxy.assert_fds_at_baseline();
}

#[test]
fn proxy_protocol_from_an_untrusted_peer_is_not_believed() {
    let backend = Backend::echo();
    let proxy = Proxy::start(&[
        "--listen",
        "127.0.0.1:0,proxy-protocol",
        "--trusted-proxy",
        "10.0.0.0/8",
        "--upstream",
        &backend.addr.to_string(),
    ]);
    let bytes = [
        &b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 80\r\n"[..],
        upgrade_head("/ws", "").as_bytes(),
    ]
    .concat();
    rejected(&proxy, &bytes, false, "127.0.0.1 is not a --trusted-proxy");
    assert_eq!(*backend.accepted.lock().unwrap(), 0);
    proxy.assert_fds_at_baseline();
}

#[test]
fn proxy_protocol_listener_needs_trusted_proxy() {
    let backend = dead_port().to_string();
    let (code, stderr) = run_to_exit(
        &[
            "--listen",
            "127.0.0.1:0,proxy-protocol",
            "--upstream",
            &backend,
        ],
        PATIENCE,
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("proxy-protocol"), "{stderr}");
    assert!(stderr.contains("--trusted-proxy"), "{stderr}");
}

// ---------------------------------------------------------------------------
// PROXY protocol sent to backends

/// An echo backend that first takes a PROXY header (v1 line or v2 header)
/// off each connection and records its bytes.
fn proxy_header_backend() -> (Backend, Arc<Mutex<Vec<Vec<u8>>>>) {
    let headers: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let sink = headers.clone();
    let backend = Backend::spawn(move |mut s, b| {
        s.set_read_timeout(Some(PATIENCE * 3)).unwrap();
        let mut got = vec![0u8; 16];
        if s.read_exact(&mut got).is_err() {
            return;
        }
        if got.starts_with(V2_SIGNATURE) {
            let len = u16::from_be_bytes([got[14], got[15]]) as usize;
            let mut block = vec![0u8; len];
            s.read_exact(&mut block).unwrap();
            got.extend_from_slice(&block);
        } else {
            // A v1 line: byte by byte, so that nothing past it is taken.
            let mut byte = [0u8; 1];
            while !got.ends_with(b"\r\n") {
                s.read_exact(&mut byte).unwrap();
                got.push(byte[0]);
            }
        }
        sink.lock().unwrap().push(got);
        if let Some(ws) = accept_ws(s, b, |_| {}) {
            echo_loop(ws);
        }
    });
    (backend, headers)
}

fn wait_headers(headers: &Mutex<Vec<Vec<u8>>>, n: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let h = headers.lock().unwrap().clone();
        if h.len() >= n {
            return h;
        }
        assert!(Instant::now() < deadline, "backend got {} headers", h.len());
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn send_proxy_protocol_v1() {
    let (backend, headers) = proxy_header_backend();
    let proxy = start_proxy(&backend, &["--send-proxy-protocol", "v1"]);
    let mut ws = tunnel_from(&proxy, "127.0.0.1", "");
    let me = local(&ws);
    let got = wait_headers(&headers, 1);
    assert_eq!(
        String::from_utf8_lossy(&got[0]),
        format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
            me.port(),
            proxy.addr.port()
        )
    );
    // The request head follows it, whole.
    let seen = backend.wait_requests(1);
    assert_eq!(header(&seen[0], "x-real-ip"), Some("127.0.0.1"));
    echo(&mut ws, "after the header");
    drop(ws);
    proxy.assert_fds_at_baseline();
}

#[test]
fn send_proxy_protocol_v2() {
    let (backend, headers) = proxy_header_backend();
    let proxy = start_proxy(&backend, &["--send-proxy-protocol", "default=v2"]);
    let mut ws = tunnel_from(&proxy, "127.0.0.2", "");
    let me = local(&ws);
    let got = wait_headers(&headers, 1);
    let expected = v2_tcp4(
        me,
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), proxy.addr.port()),
    );
    assert_eq!(got[0].len(), 28);
    assert_eq!(got[0], expected);
    backend.wait_requests(1);
    echo(&mut ws, "after the header");
    drop(ws);
    proxy.assert_fds_at_baseline();
}

#[test]
fn send_proxy_protocol_passes_on_the_incoming_header() {
    let (backend, headers) = proxy_header_backend();
    let proxy = Proxy::start(&[
        "--listen",
        "127.0.0.1:0,proxy-protocol",
        "--trusted-proxy",
        "127.0.0.0/8",
        "--upstream",
        &backend.addr.to_string(),
        "--send-proxy-protocol",
        "v1",
    ]);
    let incoming = b"PROXY TCP4 198.51.100.7 203.0.113.1 5555 80\r\n";
    let ws = through_header(
        &proxy,
        "127.0.0.1",
        &[&incoming[..], upgrade_head("/ws", "").as_bytes()].concat(),
        b"",
    );
    let got = wait_headers(&headers, 1);
    assert_eq!(got[0], incoming, "{:?}", String::from_utf8_lossy(&got[0]));
    check_client(&proxy, &backend, 0, ws, "198.51.100.7:5555");

    // A v2 header in, v1 out: the same addresses.
    let h = v2_tcp6(
        "[2001:db8::7]:7000".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
    );
    let ws = through_header(&proxy, "127.0.0.1", &h, upgrade_head("/ws", "").as_bytes());
    let got = wait_headers(&headers, 2);
    assert_eq!(
        String::from_utf8_lossy(&got[1]),
        "PROXY TCP6 2001:db8::7 2001:db8::1 7000 443\r\n"
    );
    check_client(&proxy, &backend, 1, ws, "[2001:db8::7]:7000");
    proxy.assert_fds_at_baseline();
}

#[test]
fn plain_requests_do_not_take_tunnel_slots_and_444_closes_silently() {
    let backend = upgrade_or_plain_backend();
    let proxy = start_proxy(
        &backend,
        &["--limit-conn-per-ip", "1", "--limit-conn-status", "444"],
    );
    let mut ws = tunnel_from(&proxy, "127.0.0.1", "");
    // A plain request (a page, an asset) is not a tunnel: not counted.
    for _ in 0..3 {
        let resp = raw_exchange(proxy.addr, b"GET /page HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(status_of(&resp), 200, "{}", String::from_utf8_lossy(&resp));
    }
    // nginx's 444: the second tunnel is closed without an answer.
    let resp = raw_exchange(proxy.addr, upgrade_head("/ws", "").as_bytes());
    assert!(resp.is_empty(), "{}", String::from_utf8_lossy(&resp));
    proxy.wait_log("status=444 ", PATIENCE).unwrap();
    echo(&mut ws, "unaffected");
    drop(ws);
    proxy.assert_fds_at_baseline();
}

#[test]
fn an_addressless_proxy_header_does_not_lend_its_trust_to_x_forwarded_for() {
    let backend = Backend::echo();
    let proxy = Proxy::start(&[
        "--listen",
        "127.0.0.1:0,proxy-protocol",
        "--trusted-proxy",
        "127.0.0.0/8",
        "--upstream",
        &backend.addr.to_string(),
    ]);
    // UNKNOWN (and v2 LOCAL) leave the balancer as the peer; the client's
    // own X-Forwarded-For must not become its address.
    let mut first = b"PROXY UNKNOWN\r\n".to_vec();
    first.extend_from_slice(upgrade_head("/ws", "X-Forwarded-For: 9.9.9.9\r\n").as_bytes());
    let ws = through_header(&proxy, "127.0.0.5", &first, b"");
    let seen = backend.wait_requests(1);
    assert_eq!(
        header(&seen[0], "x-real-ip"),
        Some("127.0.0.5"),
        "{:?}",
        seen[0]
    );
    drop(ws);
    let line = proxy.wait_log("tunnel client=", PATIENCE).unwrap();
    assert!(!line.contains("real_ip=9.9.9.9"), "{line}");
    // With addresses, the announced client (not trusted itself) is the key.
    let mut first = b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 80\r\n".to_vec();
    first.extend_from_slice(upgrade_head("/ws", "X-Forwarded-For: 9.9.9.9\r\n").as_bytes());
    let ws = through_header(&proxy, "127.0.0.5", &first, b"");
    let seen = backend.wait_requests(2);
    assert_eq!(
        header(&seen[1], "x-real-ip"),
        Some("198.51.100.7"),
        "{:?}",
        seen[1]
    );
    drop(ws);
    proxy.assert_fds_at_baseline();
}
