//! Operations: SIGHUP reloads the `--config` file without touching live
//! tunnels (and refuses a bad file whole).

mod common;

use common::*;

/// How many request heads `b` has seen.
fn requests(b: &Backend) -> usize {
    b.requests.lock().unwrap().len()
}

#[test]
fn reload_sends_new_connections_by_the_new_file_and_keeps_live_tunnels() {
    let (one, two) = (Backend::echo(), Backend::echo());
    let dir = TempDir::new();
    let file = dir.file(
        "ringway.toml",
        &format!(
            "upstream = [\"chat={}\"]\nroute = [\"/ws/=chat\"]\n",
            one.addr
        ),
    );
    let proxy = Proxy::start(&["--config", &file]);
    let mut live = ws_client(&proxy, "/ws/old");
    echo_once(&mut live, "before the reload");
    assert_eq!(requests(&one), 1);

    // The same route to another server, and a new route.
    dir.file(
        "ringway.toml",
        &format!(
            "upstream = [\"chat={}\", \"api={}\"]\nroute = [\"/ws/=chat\", \"/api/=api\"]\n",
            two.addr, one.addr
        ),
    );
    proxy.signal("HUP");
    let line = proxy
        .wait_log("configuration reloaded", PATIENCE)
        .expect("reload logged");
    assert!(line.contains("2 routes, 2 groups, 2 servers"), "{line}");

    // The live tunnel is untouched and still reaches its old server.
    echo_once(&mut live, "after the reload");
    let mut new = ws_client(&proxy, "/ws/new");
    echo_once(&mut new, "on the new server");
    assert_eq!(requests(&two), 1, "the new connection follows the new file");
    let mut api = ws_client(&proxy, "/api/x");
    echo_once(&mut api, "a new route");
    assert_eq!(
        requests(&one),
        2,
        "/api/ is the new route to the first server"
    );
    echo_once(&mut live, "still here");

    // The old tunnel ends as it would have: counted on its old backend.
    close_and_drain(&mut live);
    drop(live);
    let old = proxy
        .wait_log("tunnel client=", PATIENCE)
        .expect("the old tunnel's line");
    assert!(old.contains(&format!("backend={} ", one.addr)), "{old}");
    assert!(old.contains("route=/ws/ target=/ws/old "), "{old}");
}

#[test]
fn a_bad_file_is_refused_whole_and_the_old_configuration_stays() {
    let (one, two) = (Backend::echo(), Backend::echo());
    let dir = TempDir::new();
    let good = format!(
        "upstream = [\"chat={}\"]\nroute = [\"/ws/=chat\"]\n",
        one.addr
    );
    let file = dir.file("ringway.toml", &good);
    let proxy = Proxy::start(&["--config", &file]);
    let mut live = ws_client(&proxy, "/ws/a");

    // Each mistake, and one valid file that changes a start-up setting:
    // one error line each, and nothing changes.
    let bad = [
        (
            format!(
                "upstream = [\"chat={}\"]\nroute = [\"/ws/=nope\"]\n",
                two.addr
            ),
            "no group nope",
        ),
        ("upstream = [\n".to_string(), "ringway.toml"),
        (
            format!(
                "upstream = [\"chat={}\"]\nidle-timeout = \"soon\"\n",
                two.addr
            ),
            "idle-timeout",
        ),
        (
            format!("upstream = [\"chat={}\"]\nbuffer-size = 8192\n", two.addr),
            "buffer-size cannot change without a restart",
        ),
    ];
    for (n, (text, reason)) in bad.iter().enumerate() {
        dir.file("ringway.toml", text);
        proxy.signal("HUP");
        proxy.wait_count("configuration reload failed", n + 1, PATIENCE);
        let lines: Vec<String> = proxy
            .logs()
            .into_iter()
            .filter(|l| l.contains("configuration reload failed"))
            .collect();
        let line = &lines[n];
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains(reason), "{reason:?} not in {line}");
        assert!(
            line.contains("keeping the configuration in force"),
            "{line}"
        );
    }
    assert_eq!(proxy.count_logs("configuration reloaded"), 0);
    echo_once(&mut live, "untouched");
    let mut new = ws_client(&proxy, "/ws/b");
    echo_once(&mut new, "still the old file's server");
    assert_eq!(requests(&one), 2);
    assert_eq!(requests(&two), 0);

    // Fixed: the next reload works.
    dir.file(
        "ringway.toml",
        &format!(
            "upstream = [\"chat={}\"]\nroute = [\"/ws/=chat\"]\n",
            two.addr
        ),
    );
    proxy.signal("HUP");
    proxy.wait_log("configuration reloaded", PATIENCE).unwrap();
    let mut after = ws_client(&proxy, "/ws/c");
    echo_once(&mut after, "now the second server");
    assert_eq!(requests(&two), 1);
}

/// Scrape until `series` has `want` (the counters are summed from every
/// core at each scrape; a tunnel's end is counted when its task finishes).
fn wait_value(addr: std::net::SocketAddr, series: &str, want: f64) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = scrape(addr, "/metrics");
        assert_eq!(status, 200);
        if value(&body, series) == Some(want) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} is {:?}, not {want}:\n{body}",
            value(&body, series)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn metrics_count_a_known_sequence_and_healthz_turns_503_while_draining() {
    let backend = Backend::echo();
    let (dead_a, dead_b) = (dead_port(), dead_port());
    let proxy = Proxy::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--upstream",
        &format!("chat={}", backend.addr),
        "--upstream",
        &format!("gone={dead_a}"),
        "--upstream",
        &format!("gone={dead_b}"),
        "--route",
        "/ws/=chat",
        "--route",
        "/gone/=gone",
        "--drain-timeout",
        "3s",
    ]);
    let addr = metrics_addr(&proxy);
    assert_eq!(scrape(addr, "/healthz"), (200, "ok\n".to_string()));

    // Three tunnels (on whichever of the two cores), each echoing once.
    let mut tunnels: Vec<_> = (0..3).map(|_| ws_client(&proxy, "/ws/room")).collect();
    for ws in &mut tunnels {
        echo_once(ws, "counted");
    }
    let m = wait_value(addr, "ringway_tunnels_active", 3.0);
    let cores = value(&m, "ringway_core_tunnels_active{core=\"0\"}").unwrap()
        + value(&m, "ringway_core_tunnels_active{core=\"1\"}").unwrap();
    assert_eq!(cores, 3.0, "{m}");
    assert_eq!(
        value(&m, "ringway_route_tunnels_active{route=\"/ws/\"}"),
        Some(3.0)
    );
    let chat = format!("group=\"chat\",server=\"{}\"", backend.addr);
    assert_eq!(
        value(&m, &format!("ringway_upstream_tunnels_active{{{chat}}}")),
        Some(3.0)
    );
    assert_eq!(
        value(&m, "ringway_handshakes_total{result=\"upgraded\"}"),
        Some(3.0)
    );
    assert_eq!(
        value(&m, "ringway_upstream_connect_seconds_count"),
        Some(3.0)
    );
    assert!(value(&m, "ringway_bytes_total{direction=\"up\"}").unwrap() > 0.0);
    assert!(value(&m, "ringway_bytes_total{direction=\"down\"}").unwrap() > 0.0);

    // Both servers of `gone` refuse: one 502, two failures, both marked.
    let resp = raw_exchange(proxy.addr, upgrade_head("/gone/x", "").as_bytes());
    assert_eq!(status_of(&resp), 502);
    let resp = raw_exchange(proxy.addr, upgrade_head("/nowhere", "").as_bytes());
    assert_eq!(status_of(&resp), 404);
    // Each is counted when its connection ends, just after the client has
    // read its answer.
    wait_value(
        addr,
        "ringway_handshakes_total{result=\"error\",status=\"502\"}",
        1.0,
    );
    let m = wait_value(
        addr,
        "ringway_handshakes_total{result=\"error\",status=\"404\"}",
        1.0,
    );
    for dead in [dead_a, dead_b] {
        let server = format!("group=\"gone\",server=\"{dead}\"");
        assert_eq!(
            value(&m, &format!("ringway_upstream_failures_total{{{server}}}")),
            Some(1.0),
            "{m}"
        );
        assert_eq!(
            value(&m, &format!("ringway_upstream_unavailable{{{server}}}")),
            Some(1.0),
            "{m}"
        );
    }
    assert_eq!(
        value(&m, &format!("ringway_upstream_unavailable{{{chat}}}")),
        Some(0.0)
    );
    assert_eq!(value(&m, "ringway_connections_accepted_total"), Some(5.0));

    // One client leaves without a close handshake: a client close.
    let gone = tunnels.pop().unwrap();
    gone.get_ref().shutdown(std::net::Shutdown::Both).unwrap();
    drop(gone);
    wait_value(
        addr,
        "ringway_tunnels_closed_total{reason=\"client_close\"}",
        1.0,
    );
    // Read at one scrape, the gauge and the counter may be a moment apart.
    let m = wait_value(addr, "ringway_tunnels_active", 2.0);
    assert_eq!(
        value(&m, "ringway_route_tunnels_total{route=\"/ws/\"}"),
        Some(3.0)
    );
    let (status, text) = scrape(addr, "/status");
    assert_eq!(status, 200);
    assert!(text.contains("Active tunnels: 2\n"), "{text}");
    assert!(text.contains("State: accepting"), "{text}");

    // A reload (no --config: the command line is read again, and it has
    // not changed).
    proxy.signal("HUP");
    let m = wait_value(addr, "ringway_config_reloads_total{result=\"ok\"}", 1.0);
    assert_eq!(
        value(&m, "ringway_config_reloads_total{result=\"failed\"}"),
        Some(0.0)
    );

    // Draining: the balancer in front is told to stop sending.
    proxy.signal("TERM");
    let deadline = std::time::Instant::now() + PATIENCE;
    while scrape(addr, "/healthz").0 != 503 {
        assert!(std::time::Instant::now() < deadline, "/healthz never 503");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(scrape(addr, "/healthz").1, "draining\n");
    assert_eq!(
        value(&scrape(addr, "/metrics").1, "ringway_draining"),
        Some(1.0)
    );
    assert!(scrape(addr, "/status").1.contains("State: draining"));
    // The tunnels still open keep it draining until they end.
    for ws in &mut tunnels {
        echo_once(ws, "still served while draining");
    }
}

/// The JSON lines of an access-log file, once `n` are there.
fn json_lines(path: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} lines in {path}",
            lines.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn the_access_log_has_one_json_line_per_connection_and_reopens_on_sighup() {
    let backend = Backend::echo();
    let dir = TempDir::new();
    let path = dir.path("access.log");
    let proxy = Proxy::start(&[
        "--upstream",
        &format!("chat={}", backend.addr),
        "--route",
        "/ws/=chat",
        "--access-log",
        &path,
        "--access-log-format",
        "json",
        "--trusted-proxy",
        "127.0.0.1/32",
    ]);
    // A tunnel from a client behind a trusted proxy, which it closes.
    let stream = std::net::TcpStream::connect(proxy.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let request =
        tungstenite::client::IntoClientRequest::into_client_request(proxy.url("/ws/room?x=1"))
            .map(|mut r| {
                r.headers_mut()
                    .insert("X-Forwarded-For", "203.0.113.7".parse().unwrap());
                r
            })
            .unwrap();
    let (mut ws, _) = tungstenite::client::client(request, stream).unwrap();
    echo_once(&mut ws, "logged");
    let me = ws.get_ref().local_addr().unwrap();
    ws.get_ref().shutdown(std::net::Shutdown::Both).unwrap();
    drop(ws);
    // A request with no route.
    let resp = raw_exchange(proxy.addr, b"GET /nope HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(status_of(&resp), 404);

    let lines = json_lines(&path, 2);
    let tunnel = lines.iter().find(|l| l["kind"] == "tunnel").unwrap();
    assert_eq!(tunnel["client"], me.to_string());
    assert_eq!(tunnel["real_ip"], "203.0.113.7");
    assert_eq!(tunnel["route"], "/ws/");
    assert_eq!(tunnel["target"], "/ws/room?x=1");
    assert_eq!(tunnel["backend"], backend.addr.to_string());
    assert_eq!(tunnel["status"], 101);
    assert_eq!(tunnel["closed"], "client closed");
    assert!(tunnel["up"].as_u64().unwrap() > 0);
    assert!(tunnel["down"].as_u64().unwrap() > 0);
    let (handshake, duration) = (
        tunnel["handshake_s"].as_f64().unwrap(),
        tunnel["duration_s"].as_f64().unwrap(),
    );
    assert!(handshake <= duration, "{tunnel}");
    assert!(tunnel["time"].as_str().unwrap().ends_with('Z'), "{tunnel}");
    let refused = lines.iter().find(|l| l["kind"] == "refused").unwrap();
    assert_eq!(refused["status"], 404);
    assert_eq!(refused["route"], serde_json::Value::Null);
    assert_eq!(refused["target"], "/nope");
    assert_eq!(refused["backend"], serde_json::Value::Null);

    // logrotate: the file is moved, SIGHUP, and new lines go to a new file.
    let rotated = dir.path("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    proxy.signal("HUP");
    proxy.wait_log("configuration reloaded", PATIENCE).unwrap();
    let resp = raw_exchange(proxy.addr, b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(status_of(&resp), 404);
    let after = json_lines(&path, 1);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["target"], "/after");
    assert_eq!(json_lines(&rotated, 2).len(), 2);
}

#[test]
fn text_access_lines_are_whole_even_for_hostile_targets() {
    let backend = Backend::echo();
    let proxy = Proxy::start(&[
        "--upstream",
        &backend.addr.to_string(),
        "--route",
        "/ws/=default",
    ]);
    // A target with a quote and a backslash (bytes a request line may
    // carry): escaped, so that the fields after it stay where they are.
    let resp = raw_exchange(
        proxy.addr,
        b"GET /a\"b\\c?FAKE=1 HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    assert_eq!(status_of(&resp), 404);
    let line = proxy
        .wait_log(" refused client=", PATIENCE)
        .unwrap_or_else(|| panic!("{:#?}", proxy.logs()));
    assert!(
        line.contains(" route=- target=/a\\\"b\\\\c?FAKE=1 backend=- status=404 "),
        "{line}"
    );
    for field in [
        "handshake=",
        "duration=",
        "up=0",
        "down=0",
        "closed=\"refused\"",
    ] {
        assert!(line.contains(field), "{field}: {line}");
    }
}

#[test]
fn a_reload_s_timeouts_and_limits_count_live_tunnels_without_touching_them() {
    let backend = Backend::echo();
    let dir = TempDir::new();
    let upstream = format!("upstream = [\"{}\"]\n", backend.addr);
    let file = dir.file("ringway.toml", &upstream);
    let proxy = Proxy::start(&["--config", &file, "--idle-timeout", "1h"]);
    let mut old: Vec<_> = (0..2).map(|_| ws_client(&proxy, "/ws")).collect();

    // The file cannot lower --idle-timeout (the command line's stays), so
    // lower the handshake timeout and set a per-address limit instead.
    dir.file(
        "ringway.toml",
        &format!("{upstream}handshake-timeout = \"300ms\"\nlimit-conn-per-ip = 2\n"),
    );
    proxy.signal("HUP");
    proxy.wait_log("configuration reloaded", PATIENCE).unwrap();

    // The two tunnels opened before the limit count against it.
    let resp = raw_exchange(proxy.addr, upgrade_head("/ws", "").as_bytes());
    assert_eq!(status_of(&resp), 503, "{}", String::from_utf8_lossy(&resp));
    // A new connection gets the new handshake timeout.
    let mut slow = std::net::TcpStream::connect(proxy.addr).unwrap();
    slow.set_read_timeout(Some(PATIENCE)).unwrap();
    std::io::Write::write_all(&mut slow, b"GET /ws HTTP/1.1\r\n").unwrap();
    let answer = read_to_close(&mut slow);
    assert_eq!(status_of(&answer), 408);
    // The old tunnels are untouched.
    for ws in &mut old {
        echo_once(ws, "still open");
    }
}
