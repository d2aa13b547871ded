//! Upstream groups against the real binary, as nginx balances them: smooth
//! weighted round-robin (exact shares and order), least-conn over live
//! tunnels (weighted too), ip-hash and ip-hash-full computed here with
//! nginx's formula for many client source addresses, backup servers,
//! failover with `max_fails`/`fail_timeout` marks, `--upstream-tries`, 502
//! versus 503, bad answers that do not mark a server, and routing by path
//! prefix and Host with the target passed on unchanged.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use socket2::{Domain, Socket, Type};

/// A plain HTTP backend named `name`: reads one request head, records its
/// request line (as `request-line`) and headers in `requests`, answers
/// `200` with `name` as the body, and closes.
fn http_backend(name: &'static str) -> Backend {
    Backend::spawn(move |mut s, b| {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let Some(head) = read_request_head(&mut s) else {
            return;
        };
        let mut lines = head.split("\r\n");
        let mut recorded = vec![(
            "request-line".to_string(),
            lines.next().unwrap_or_default().to_string(),
        )];
        recorded.extend(lines.filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        }));
        b.requests.lock().unwrap().push(recorded);
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
            name.len()
        );
    })
}

/// A backend that accepts, reads the request head and closes without a
/// word.
fn mute_backend() -> Backend {
    Backend::spawn(|mut s, _| {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let _ = read_request_head(&mut s);
    })
}

/// The request head (without its blank line), or `None` if the peer closed
/// first.
fn read_request_head(s: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            got.truncate(end);
            return Some(String::from_utf8_lossy(&got).into_owned());
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A GET request head for `path` with `Host: host`.
fn get_head(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: balancing-test\r\n\r\n")
}

/// Status and body of one GET through the proxy.
fn get(proxy: &Proxy, path: &str, host: &str) -> (u16, String) {
    split(&raw_exchange(proxy.addr, get_head(path, host).as_bytes()))
}

/// Status and body of a whole response.
fn split(resp: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(resp).into_owned();
    let status = status_of(resp);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// The body of a GET that must be answered 200: the answering backend's name.
fn get_name(proxy: &Proxy, path: &str) -> String {
    let (status, body) = get(proxy, path, "test.local");
    assert_eq!(status, 200, "{body}; logs {:#?}", proxy.logs());
    body
}

/// One GET to `to` from the client address `src` (any 127/8 address is
/// local): status and body.
fn get_from(src: Ipv4Addr, to: SocketAddr, path: &str) -> (u16, String) {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((src, 0)).into())
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    sock.connect_timeout(&to.into(), PATIENCE).unwrap();
    let mut s = TcpStream::from(sock);
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(get_head(path, "test.local").as_bytes())
        .unwrap();
    split(&read_to_close(&mut s))
}

fn accepted(b: &Backend) -> usize {
    *b.accepted.lock().unwrap()
}

fn name(b: &Backend) -> String {
    b.addr.to_string()
}

/// `--upstream GROUP=ADDR[,params]`.
fn upstream(group: &str, b: &Backend, params: &str) -> String {
    format!("{group}={}{params}", b.addr)
}

/// ringway with `flags` and an `--upstream` for each of `servers`.
fn start_with(flags: &[&str], servers: &[String]) -> Proxy {
    let mut args = flags.to_vec();
    for server in servers {
        args.extend(["--upstream", server]);
    }
    Proxy::start(&args)
}

// ---------------------------------------------------------------------------
// Round-robin

#[test]
fn weighted_round_robin_gives_exact_shares_and_nginx_smooth_order() {
    let (a, b, c) = (http_backend("a"), http_backend("b"), http_backend("c"));
    let proxy = start_with(
        &["--workers", "1"],
        &[
            upstream("g", &a, ",weight=3"),
            upstream("g", &b, ",weight=2"),
            upstream("g", &c, ",weight=1"),
        ],
    );
    let mut by_body = [0usize; 3];
    for _ in 0..600 {
        match get_name(&proxy, "/").as_str() {
            "a" => by_body[0] += 1,
            "b" => by_body[1] += 1,
            "c" => by_body[2] += 1,
            other => panic!("unknown backend {other:?}"),
        }
    }
    assert_eq!(by_body, [300, 200, 100]);
    assert_eq!([accepted(&a), accepted(&b), accepted(&c)], [300, 200, 100]);
    proxy.wait_count("request client=", 600, PATIENCE);
    assert_eq!(
        proxy.count_logs(&format!("backend={} status=200", name(&c))),
        100,
        "the log names the server"
    );
    proxy.assert_fds_at_baseline();
    drop(proxy);

    // nginx's smooth order for 5,1,1: a a b a c a a, and again.
    let proxy = start_with(
        &["--workers", "1"],
        &[
            upstream("g", &a, ",weight=5"),
            upstream("g", &b, ""),
            upstream("g", &c, ",weight=1"),
        ],
    );
    let order: String = (0..14).map(|_| get_name(&proxy, "/x")).collect();
    assert_eq!(order, "aabacaaaabacaa");
    proxy.assert_fds_at_baseline();
}

// ---------------------------------------------------------------------------
// least-conn

/// Open a tunnel and say which of `servers` accepted it.
fn open_tunnel(proxy: &Proxy, servers: &[&Backend]) -> (tungstenite::WebSocket<TcpStream>, usize) {
    let before: Vec<usize> = servers.iter().map(|b| accepted(b)).collect();
    let mut ws = ws_client(proxy, "/ws");
    echo_once(&mut ws, "hello");
    let after: Vec<usize> = servers.iter().map(|b| accepted(b)).collect();
    let grew: Vec<usize> = (0..servers.len())
        .filter(|&i| after[i] != before[i])
        .collect();
    assert_eq!(
        grew.len(),
        1,
        "one backend accepted: {before:?} -> {after:?}"
    );
    assert_eq!(after[grew[0]], before[grew[0]] + 1);
    (ws, grew[0])
}

/// Close the tunnels, then wait until the proxy has logged `ended` tunnels
/// in all (their connection counts are given back before the line).
fn close_tunnels(proxy: &Proxy, tunnels: Vec<tungstenite::WebSocket<TcpStream>>, ended: usize) {
    for mut ws in tunnels {
        close_and_drain(&mut ws);
    }
    proxy.wait_count("tunnel client=", ended, PATIENCE);
    assert_eq!(proxy.count_logs("tunnel client="), ended);
}

#[test]
fn least_conn_sends_each_tunnel_to_the_server_with_fewer_live_tunnels() {
    let (a, b) = (Backend::echo(), Backend::echo());
    let proxy = start_with(
        &["--workers", "1", "--balance", "least-conn"],
        &[a.addr.to_string(), b.addr.to_string()],
    );
    let servers = [&a, &b];
    let mut live: [Vec<tungstenite::WebSocket<TcpStream>>; 2] = [Vec::new(), Vec::new()];
    // Six tunnels: never more than one apart, so three each.
    for _ in 0..6 {
        let (ws, i) = open_tunnel(&proxy, &servers);
        assert!(
            live[i].len() <= live[1 - i].len(),
            "landed on the busier server ({} vs {})",
            live[i].len(),
            live[1 - i].len()
        );
        live[i].push(ws);
    }
    assert_eq!([live[0].len(), live[1].len()], [3, 3]);

    // Close B's three: A holds 3, B none; the next three all go to B.
    close_tunnels(&proxy, std::mem::take(&mut live[1]), 3);
    for n in 0..3 {
        let (ws, i) = open_tunnel(&proxy, &servers);
        assert_eq!(i, 1, "tunnel {n}: B has {n} live, A has 3");
        live[1].push(ws);
    }
    // Close two of A's: 1 against 3, so two go to A.
    let two: Vec<_> = live[0].drain(..2).collect();
    close_tunnels(&proxy, two, 5);
    for n in 0..2 {
        let (ws, i) = open_tunnel(&proxy, &servers);
        assert_eq!(i, 0, "tunnel {n}: A has {} live, B has 3", 1 + n);
        live[0].push(ws);
    }
    assert_eq!([accepted(&a), accepted(&b)], [3 + 2, 3 + 3]);
    let [l0, l1] = live;
    close_tunnels(&proxy, l0.into_iter().chain(l1).collect(), 11);
    proxy.assert_fds_at_baseline();
}

#[test]
fn least_conn_with_weights_follows_conns_per_weight() {
    let (a, b) = (Backend::echo(), Backend::echo());
    let proxy = start_with(
        &["--workers", "1", "--balance", "g=least-conn"],
        &[
            upstream("g", &a, ",weight=2"),
            upstream("g", &b, ",weight=1"),
        ],
    );
    let servers = [&a, &b];
    let weight = [2usize, 1];
    let mut live: [Vec<tungstenite::WebSocket<TcpStream>>; 2] = [Vec::new(), Vec::new()];
    let mut order = String::new();
    for _ in 0..9 {
        let (ws, i) = open_tunnel(&proxy, &servers);
        let o = 1 - i;
        // nginx: conns * other.weight <= other.conns * weight for the chosen.
        assert!(
            live[i].len() * weight[o] <= live[o].len() * weight[i],
            "chose {i} with {:?} live",
            [live[0].len(), live[1].len()]
        );
        live[i].push(ws);
        order.push(if i == 0 { 'A' } else { 'B' });
    }
    // Ties (0:0, 2:1, 4:2) go by smooth weighted round-robin, as nginx's.
    assert_eq!(order, "ABABAAABA");
    assert_eq!([live[0].len(), live[1].len()], [6, 3]);

    // Close four of A's (2 live against 3 on B): A's load 2/2 < 3/1, and
    // it stays lower until A has 6 again.
    let four: Vec<_> = live[0].drain(..4).collect();
    close_tunnels(&proxy, four, 4);
    for n in 0..4 {
        let (ws, i) = open_tunnel(&proxy, &servers);
        assert_eq!(i, 0, "tunnel {n}: A has {} of weight 2, B 3", 2 + n);
        live[0].push(ws);
    }
    let [l0, l1] = live;
    close_tunnels(&proxy, l0.into_iter().chain(l1).collect(), 4 + 9);
    proxy.assert_fds_at_baseline();
}

// ---------------------------------------------------------------------------
// ip-hash

/// nginx's ip_hash over `key` (3 bytes of an IPv4 client, 4 with
/// ip-hash-full): the index of the server chosen when nothing has failed,
/// or `None` when 21 hashes all hit down servers (round-robin then).
fn nginx_ip_hash(key: &[u8], weights: &[u32], down: &[bool]) -> Option<usize> {
    let total: u32 = weights.iter().sum();
    let mut hash = 89usize;
    for _ in 0..21 {
        for &byte in key {
            hash = (hash * 113 + usize::from(byte)) % 6271;
        }
        let mut w = (hash % total as usize) as u32;
        let mut p = 0;
        while w >= weights[p] {
            w -= weights[p];
            p += 1;
        }
        if !down[p] {
            return Some(p);
        }
    }
    None
}

const NAMES: [&str; 3] = ["a", "b", "c"];

fn index_of(name: &str) -> usize {
    NAMES
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("unknown backend {name:?}"))
}

/// The server index `src` reached, checking that the backend saw `src` as
/// the client (X-Real-IP) so that the source binding is what was hashed.
fn reached_from(proxy: &Proxy, servers: &[&Backend], src: Ipv4Addr) -> usize {
    let (status, body) = get_from(src, proxy.addr, "/hash");
    assert_eq!(status, 200, "{src}: {body}; logs {:#?}", proxy.logs());
    let i = index_of(&body);
    let last = servers[i].requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(header(&last, "X-Real-IP"), Some(src.to_string().as_str()));
    i
}

#[test]
fn ip_hash_follows_nginx_formula_with_a_down_server() {
    let (a, b, c) = (http_backend("a"), http_backend("b"), http_backend("c"));
    let weights = [2, 1, 1];
    let down = [false, true, false];
    let proxy = start_with(
        &["--balance", "g=ip-hash"],
        &[
            upstream("g", &a, ",weight=2"),
            upstream("g", &b, ",down"),
            upstream("g", &c, ""),
        ],
    );
    let servers = [&a, &b, &c];
    let mut seen = [0usize; 3];
    let mut rehashed = 0;
    for x in 1..=64u8 {
        let src = Ipv4Addr::new(127, 0, x, x.wrapping_mul(3).max(1));
        let key = &src.octets()[..3];
        let expected = nginx_ip_hash(key, &weights, &down).expect("no fallback");
        let all_up = nginx_ip_hash(key, &weights, &[false; 3]).unwrap();
        rehashed += usize::from(all_up == 1);
        let got = reached_from(&proxy, &servers, src);
        assert_eq!(got, expected, "{src}");
        seen[got] += 1;
    }
    assert_eq!(seen[1], 0, "the down server gets nothing");
    assert_eq!(accepted(&b), 0);
    assert!(
        seen[0] > 0 && seen[2] > 0,
        "both live servers used: {seen:?}"
    );
    assert!(rehashed > 0, "some sources hash to the down server first");
    assert_eq!(seen[0] + seen[2], accepted(&a) + accepted(&c));

    // One /24, one server, whatever the last octet.
    let first = reached_from(&proxy, &servers, Ipv4Addr::new(127, 0, 77, 1));
    for y in [2u8, 50, 99, 200, 254] {
        let got = reached_from(&proxy, &servers, Ipv4Addr::new(127, 0, 77, y));
        assert_eq!(got, first, "127.0.77.{y}");
    }
    proxy.assert_fds_at_baseline();
}

#[test]
fn ip_hash_full_spreads_one_slash_24_by_the_whole_address() {
    let (a, b, c) = (http_backend("a"), http_backend("b"), http_backend("c"));
    let weights = [1, 1, 1];
    let down = [false; 3];
    let proxy = start_with(
        &["--balance", "g=ip-hash-full"],
        &[
            upstream("g", &a, ""),
            upstream("g", &b, ""),
            upstream("g", &c, ""),
        ],
    );
    let servers = [&a, &b, &c];
    let mut seen = [0usize; 3];
    for y in 1..=40u8 {
        let src = Ipv4Addr::new(127, 0, 77, y);
        let expected = nginx_ip_hash(&src.octets(), &weights, &down).unwrap();
        let got = reached_from(&proxy, &servers, src);
        assert_eq!(got, expected, "{src}");
        seen[got] += 1;
    }
    assert!(
        seen.iter().filter(|&&n| n > 0).count() >= 2,
        "one /24 spreads: {seen:?}"
    );
    proxy.assert_fds_at_baseline();
}

// ---------------------------------------------------------------------------
// backup, failover, marks

#[test]
fn backup_only_when_every_primary_is_dead() {
    let (a, b, spare) = (http_backend("a"), http_backend("b"), http_backend("c"));
    let proxy = start_with(
        &["--workers", "1"],
        &[
            upstream("g", &a, ""),
            upstream("g", &b, ""),
            upstream("g", &spare, ",backup"),
        ],
    );
    for _ in 0..20 {
        assert_ne!(get_name(&proxy, "/"), "c");
    }
    assert_eq!([accepted(&a), accepted(&b), accepted(&spare)], [10, 10, 0]);
    proxy.assert_fds_at_baseline();
    drop(proxy);

    let (dead1, dead2) = (dead_port(), dead_port());
    let proxy = start_with(
        &["--workers", "1"],
        &[
            format!("g={dead1}"),
            format!("g={dead2}"),
            upstream("g", &spare, ",backup"),
        ],
    );
    for _ in 0..5 {
        assert_eq!(get_name(&proxy, "/"), "c");
    }
    assert_eq!(accepted(&spare), 5);
    proxy.wait_count("request client=", 5, PATIENCE);
    // The first connection tried both primaries, marking each, then the
    // backup; the next ones went straight to the backup.
    for dead in [dead1, dead2] {
        let marked = format!("server {dead} ({dead}) marked unavailable for 10s");
        assert_eq!(proxy.count_logs(&marked), 1, "{:#?}", proxy.logs());
    }
    assert_eq!(
        proxy.count_logs(&format!("{dead1}: connect to {dead1} failed")),
        1
    );
    assert_eq!(proxy.count_logs(&format!("; trying {dead2}")), 1);
    assert_eq!(proxy.count_logs(&format!("; trying {}", name(&spare))), 1);
    assert_eq!(proxy.count_logs("; trying "), 2);
    assert_eq!(
        proxy.count_logs(&format!("backend={} status=200", name(&spare))),
        5
    );
    proxy.assert_fds_at_baseline();
}

#[test]
fn a_failed_server_is_skipped_for_its_fail_timeout_then_tried_again() {
    let dead = dead_port();
    let b = http_backend("b");
    let proxy = start_with(
        &["--workers", "1"],
        &[format!("{dead},fail_timeout=1s"), b.addr.to_string()],
    );
    let retry = format!("{dead}: connect to {dead} failed");
    let trying = format!("; trying {}", name(&b));

    let t0 = Instant::now();
    assert_eq!(get_name(&proxy, "/"), "b");
    let line = proxy
        .wait_log(
            &format!("server {dead} ({dead}) marked unavailable for 1s"),
            PATIENCE,
        )
        .unwrap_or_else(|| panic!("no mark: {:#?}", proxy.logs()));
    assert!(line.contains("group default"), "{line}");
    proxy.wait_count("request client=", 1, PATIENCE);
    let line = proxy.wait_log(&trying, PATIENCE).unwrap();
    assert!(line.contains(&retry), "{line}");

    // Inside the second: straight to B, no new attempt on the dead one.
    let mut within = 0;
    while within < 5 && t0.elapsed() < Duration::from_millis(600) {
        assert_eq!(get_name(&proxy, "/"), "b");
        within += 1;
        proxy.wait_count("request client=", 1 + within, PATIENCE);
    }
    assert!(within >= 2, "too slow to test inside fail_timeout");
    assert_eq!(proxy.count_logs(&retry), 1, "{:#?}", proxy.logs());
    assert_eq!(proxy.count_logs("marked unavailable"), 1);

    // After fail_timeout the dead server is tried again (smooth round-robin
    // brings it back within a few choices: its weight was lowered).
    let wait = Duration::from_millis(1100).saturating_sub(t0.elapsed());
    thread::sleep(wait);
    let mut after = 0;
    while proxy.count_logs(&retry) == 1 {
        assert!(after < 6, "never tried again: {:#?}", proxy.logs());
        assert_eq!(get_name(&proxy, "/"), "b");
        after += 1;
        proxy.wait_count("request client=", 1 + within + after, PATIENCE);
    }
    assert_eq!(proxy.count_logs(&retry), 2);
    assert_eq!(proxy.count_logs("marked unavailable"), 2);
    assert_eq!(accepted(&b), 1 + within + after);
    proxy.assert_fds_at_baseline();
}

#[test]
fn upstream_tries_1_answers_502_and_all_marked_answers_503() {
    // One try: a connection that picks the dead server gets 502.
    let dead = dead_port();
    let b = http_backend("b");
    let proxy = start_with(
        &["--workers", "1", "--upstream-tries", "1"],
        &[dead.to_string(), b.addr.to_string()],
    );
    let (status, body) = get(&proxy, "/", "test.local");
    assert_eq!(status, 502, "{body}");
    let line = proxy
        .wait_log("status=502", PATIENCE)
        .unwrap_or_else(|| panic!("{:#?}", proxy.logs()));
    assert!(line.contains(&format!("backend={dead} ")), "{line}");
    assert!(line.contains("connect to"), "{line}");
    assert_eq!(accepted(&b), 0, "not retried on B");
    assert_eq!(proxy.count_logs("; trying "), 0);
    // Marked now: the next ones go to B.
    for _ in 0..3 {
        assert_eq!(get_name(&proxy, "/"), "b");
    }
    proxy.assert_fds_at_baseline();
    drop(proxy);

    // Every server dead: 502 after trying both, then 503 while both are
    // marked.
    let (d1, d2) = (dead_port(), dead_port());
    let proxy = start_with(&["--workers", "1"], &[d1.to_string(), d2.to_string()]);
    assert_eq!(get(&proxy, "/", "test.local").0, 502);
    proxy.wait_log("status=502", PATIENCE).unwrap();
    assert_eq!(proxy.count_logs("marked unavailable"), 2);
    assert_eq!(proxy.count_logs(&format!("; trying {d2}")), 1);
    let attempts = proxy.count_logs("connect to");
    for n in 1..=3 {
        let (status, body) = get(&proxy, "/", "test.local");
        assert_eq!(status, 503, "{body}");
        proxy.wait_count("status=503", n, PATIENCE);
    }
    let line = proxy.wait_log("status=503", PATIENCE).unwrap();
    assert!(line.contains("backend=- "), "{line}");
    assert!(
        line.contains("no server of group default is available"),
        "{line}"
    );
    assert_eq!(
        proxy.count_logs("connect to"),
        attempts,
        "no new connect attempt: {:#?}",
        proxy.logs()
    );
    proxy.assert_fds_at_baseline();
    drop(proxy);

    // A one-server group is never marked: always 502, never 503.
    let only = dead_port();
    let proxy = Proxy::start(&["--workers", "1", "--upstream", &only.to_string()]);
    for n in 1..=4 {
        let (status, body) = get(&proxy, "/", "test.local");
        assert_eq!(status, 502, "{body}");
        proxy.wait_count("status=502", n, PATIENCE);
    }
    assert_eq!(proxy.count_logs("status=503"), 0);
    assert_eq!(proxy.count_logs("marked unavailable"), 0);
    assert_eq!(proxy.count_logs(&format!("connect to {only} failed")), 4);
    proxy.assert_fds_at_baseline();
}

#[test]
fn a_backend_that_answers_badly_is_not_marked() {
    let (mute, good) = (mute_backend(), http_backend("good"));
    let proxy = start_with(
        &["--workers", "1"],
        &[mute.addr.to_string(), good.addr.to_string()],
    );
    let mut statuses = Vec::new();
    for n in 1..=10 {
        let (status, _) = get(&proxy, "/", "test.local");
        statuses.push(status);
        // One access-log line per request.
        proxy.wait_count(" handshake=", n, PATIENCE);
    }
    // Strict alternation: the mute server keeps its turn.
    assert_eq!(statuses, [502, 200, 502, 200, 502, 200, 502, 200, 502, 200]);
    assert_eq!([accepted(&mute), accepted(&good)], [5, 5]);
    assert_eq!(
        proxy.count_logs("reason=\"the backend closed without answering\""),
        5
    );
    assert_eq!(proxy.count_logs("marked unavailable"), 0);
    assert_eq!(proxy.count_logs("; trying "), 0);
    assert_eq!(proxy.count_logs("status=503"), 0);
    proxy.assert_fds_at_baseline();
}

// ---------------------------------------------------------------------------
// Routes

/// The request line the backend saw last.
fn last_request_line(b: &Backend) -> String {
    let r = b.requests.lock().unwrap();
    let last = r.last().expect("a request");
    header(last, "request-line").unwrap().to_string()
}

#[test]
fn path_routes_longest_prefix_wins_and_the_target_is_passed_unchanged() {
    let (chat, api, web) = (Backend::echo(), http_backend("api"), http_backend("web"));
    // The chat group also answers plain requests: a second server for them.
    let chat_http = http_backend("chat");
    let proxy = start_with(
        &[
            "--route",
            "/ws/=chat",
            "--route",
            "/api/=api",
            "--route",
            "/=web",
        ],
        &[
            upstream("chat", &chat_http, ""),
            upstream("api", &api, ""),
            upstream("web", &web, ""),
        ],
    );
    for (path, expected) in [
        ("/ws/x", "chat"),
        ("/ws/", "chat"),
        ("/wsx", "web"),
        ("/ws", "web"),
        ("/api", "web"),
        ("/api/v1", "api"),
        ("/api/", "api"),
        ("/", "web"),
        ("/other/api/", "web"),
    ] {
        assert_eq!(get_name(&proxy, path), expected, "{path}");
    }
    // The backend sees the target as sent: escapes and query kept.
    assert_eq!(get_name(&proxy, "/ws/a%20b?x=1"), "chat");
    assert_eq!(last_request_line(&chat_http), "GET /ws/a%20b?x=1 HTTP/1.1");
    // Routing looks at the normalized path; the backend still gets the raw
    // target.
    assert_eq!(get_name(&proxy, "/api//v1/./x%41"), "api");
    assert_eq!(last_request_line(&api), "GET /api//v1/./x%41 HTTP/1.1");
    assert_eq!(get_name(&proxy, "/%77s/x"), "chat");
    assert_eq!(last_request_line(&chat_http), "GET /%77s/x HTTP/1.1");
    proxy
        .wait_log("route=/ws/ target=/ws/a%20b?x=1 backend=", PATIENCE)
        .unwrap_or_else(|| panic!("{:#?}", proxy.logs()));
    // Dot segments are resolved for routing, as nginx matches locations
    // (`/ws/../api/x` is `/api/x`), and the backend still gets the target as
    // sent; `%2F` is a slash for routing.
    for (path, expected) in [
        ("/ws/../api/x", "api"),
        ("/ws/%2e%2e/api/x", "api"),
        ("/api%2Fv1", "api"),
        ("/api/../ws/x", "chat"),
    ] {
        assert_eq!(get_name(&proxy, path), expected, "{path}");
    }
    assert_eq!(last_request_line(&chat_http), "GET /api/../ws/x HTTP/1.1");
    // Above the root, a broken escape or a NUL is refused, reaching nobody.
    let seen = accepted(&chat_http) + accepted(&api) + accepted(&web);
    for path in [
        "/..",
        "/ws/../../x",
        "/ws/%2E%2e/%2e%2e/x",
        "/ws/%zz",
        "/ws/a%00b",
    ] {
        let (status, body) = get(&proxy, path, "test.local");
        assert_eq!(status, 400, "{path}: {body}");
        proxy
            .wait_log(
                &format!("route=- target={path} backend=- status=400"),
                PATIENCE,
            )
            .unwrap_or_else(|| panic!("{path}: {:#?}", proxy.logs()));
    }
    assert_eq!(accepted(&chat_http) + accepted(&api) + accepted(&web), seen);
    proxy.assert_fds_at_baseline();
    drop(proxy);

    // WebSocket upgrades are routed the same way.
    let proxy = start_with(
        &["--route", "/ws/=chat", "--route", "/=web"],
        &[upstream("chat", &chat, ""), upstream("web", &web, "")],
    );
    let mut ws = ws_client(&proxy, "/ws/room%201?token=a");
    echo_once(&mut ws, "routed");
    close_and_drain(&mut ws);
    drop(ws);
    let line = proxy.wait_log("tunnel client=", PATIENCE).unwrap();
    assert!(
        line.contains(&format!(
            "route=/ws/ target=/ws/room%201?token=a backend={} status=101",
            name(&chat)
        )),
        "{line}"
    );
    assert_eq!(accepted(&chat), 1);
    proxy.assert_fds_at_baseline();
    drop(proxy);

    // Without a `/` route, a path outside every route is 404.
    let proxy = start_with(
        &["--route", "/ws/=chat", "--route", "/api/=api"],
        &[upstream("chat", &chat_http, ""), upstream("api", &api, "")],
    );
    let seen = accepted(&chat_http) + accepted(&api);
    for path in ["/other", "/ws", "/apix/"] {
        let (status, body) = get(&proxy, path, "test.local");
        assert_eq!(status, 404, "{path}: {body}");
        let line = proxy
            .wait_log(
                &format!("route=- target={path} backend=- status=404"),
                PATIENCE,
            )
            .unwrap_or_else(|| panic!("{path}: {:#?}", proxy.logs()));
        assert!(line.contains("reason=\"no route"), "{line}");
    }
    assert_eq!(accepted(&chat_http) + accepted(&api), seen);
    assert_eq!(get_name(&proxy, "/ws/ok"), "chat");
    proxy.assert_fds_at_baseline();
}

#[test]
fn host_routes_exact_wildcard_and_default() {
    let (ga, gb, gc) = (http_backend("a"), http_backend("b"), http_backend("c"));
    let proxy = start_with(
        &[
            "--route",
            "a.test/=ga",
            "--route",
            "*.b.test/=gb",
            "--route",
            "/=gc",
        ],
        &[
            upstream("ga", &ga, ""),
            upstream("gb", &gb, ""),
            upstream("gc", &gc, ""),
        ],
    );
    for (host, expected) in [
        ("a.test", "a"),
        ("A.Test:8080", "a"),
        ("x.b.test", "b"),
        ("deep.x.b.test:81", "b"),
        ("b.test", "c"),
        ("xb.test", "c"),
        ("a.test.evil", "c"),
        ("other", "c"),
    ] {
        let (status, body) = get(&proxy, "/path", host);
        assert_eq!(status, 200, "{host}: {body}");
        assert_eq!(body, expected, "Host {host}");
        let last = match expected {
            "a" => &ga,
            "b" => &gb,
            _ => &gc,
        };
        let r = last.requests.lock().unwrap().last().cloned().unwrap();
        assert_eq!(header(&r, "Host"), Some(host), "the Host is forwarded");
    }
    assert_eq!([accepted(&ga), accepted(&gb), accepted(&gc)], [2, 2, 4]);
    proxy.assert_fds_at_baseline();
}
