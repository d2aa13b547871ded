//! Operations: SIGHUP reloads the `--config` file without touching live
//! tunnels (and refuses a bad file whole).

mod common;

use common::*;

/// The backend (of `backends`) that has seen `n` requests so far.
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
