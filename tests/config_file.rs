//! `ringway check` and `--config FILE`: check prints the resolved routes,
//! groups, server parameters and timeouts and exits 0; every configuration
//! mistake exits 2 with a message saying what is wrong (and, for the file's
//! own mistakes, naming the file); a TOML file sets what flags set, a flag
//! on the command line replaces the file's setting of the same name (a list
//! flag the whole list); and a proxy started from a file really routes by
//! it.

mod common;

use common::*;

/// Run `ringway ARGS` to its exit (killed after `PATIENCE`): exit code,
/// stdout, stderr.
fn ringway(args: &[&str]) -> (Option<i32>, String, String) {
    run_with_output(args, PATIENCE)
}

/// `ringway check ARGS` must pass; returns what it printed.
fn check_ok(args: &[&str]) -> String {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let (code, out, err) = ringway(&all);
    assert_eq!(code, Some(0), "check {args:?}: stderr {err}");
    assert!(out.starts_with("configuration OK\n"), "{out}");
    out
}

/// `ringway check ARGS` must fail with exit code 2 and `phrase` on stderr,
/// and print nothing on stdout.
fn check_fails(args: &[&str], phrase: &str) -> String {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let (code, out, err) = ringway(&all);
    assert_eq!(code, Some(2), "check {args:?}: stdout {out} stderr {err}");
    assert!(
        err.contains(phrase),
        "check {args:?}: expected {phrase:?} in stderr: {err}"
    );
    assert!(!out.contains("configuration OK"), "{out}");
    err
}

/// The lines of `out` between the `title` line and the next section.
fn section<'a>(out: &'a str, title: &str) -> Vec<&'a str> {
    out.lines()
        .skip_while(|l| !l.starts_with(title))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .map(str::trim)
        .collect()
}

/// The `timeouts:` line.
fn timeouts(out: &str) -> &str {
    out.lines()
        .find(|l| l.starts_with("timeouts:"))
        .unwrap_or_else(|| panic!("no timeouts line: {out}"))
}

#[test]
fn check_lists_routes_groups_and_server_parameters() {
    let s = TempDir::new();
    let www = s.path("www");
    let static_arg = format!("/={www}");
    let out = check_ok(&[
        "--listen",
        "127.0.0.1:0",
        "--route",
        "/ws/=chat",
        "--upstream",
        "chat=127.0.0.1:9000,weight=2",
        "--upstream",
        "chat=127.0.0.1:9001,backup",
        "--balance",
        "chat=least-conn",
        "--static",
        &static_arg,
    ]);
    let real = std::fs::canonicalize(&www).unwrap();
    assert_eq!(
        section(&out, "routes"),
        [
            "/ws/ -> group chat".to_string(),
            format!("/ -> static files from {}", real.display()),
        ],
        "{out}"
    );
    let groups = section(&out, "groups:");
    assert_eq!(groups[0], "chat (least-conn)", "{out}");
    assert_eq!(groups.len(), 3, "{out}");
    let primary = groups[1];
    assert!(primary.starts_with("127.0.0.1:9000 "), "{out}");
    assert!(primary.contains(" weight=2 ") && !primary.contains("backup"));
    let backup = groups[2];
    assert!(backup.starts_with("127.0.0.1:9001 "), "{out}");
    assert!(backup.contains(" weight=1 ") && backup.ends_with(" backup"));
    assert_eq!(section(&out, "listeners:"), ["ws  127.0.0.1:0"], "{out}");
    // Defaults are shown too.
    assert!(timeouts(&out).contains("idle 3600s"), "{out}");
}

#[test]
fn check_refuses_each_mistake_with_exit_2() {
    let s = TempDir::new();
    let missing = format!("/={}", s.path("no-such-dir"));
    let a_file = format!("/={}", s.path("www/index.html"));
    let up = "chat=127.0.0.1:9000";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--route", "/ws/=nope", "--upstream", up],
            "no group nope",
        ),
        (
            vec!["--upstream", "chat=127.0.0.1:9000,weight=0"],
            "weight must be 1 to 1000000",
        ),
        (
            vec![
                "--upstream",
                "chat=127.0.0.1:9000",
                "--upstream",
                "chat=127.0.0.1:9001,backup",
                "--balance",
                "chat=ip-hash",
            ],
            "`backup` servers cannot be used with ip-hash",
        ),
        (
            vec!["--upstream", up, "--balance", "chat=random"],
            "unknown method \"random\"",
        ),
        (
            vec!["--upstream", "chat=127.0.0.1:9000,maxfails=3"],
            "unknown server parameter \"maxfails=3\"",
        ),
        (
            vec![
                "--upstream",
                "a=127.0.0.1:9000",
                "--upstream",
                "b=127.0.0.1:9001",
            ],
            "2 groups and no --route",
        ),
        (
            vec!["--upstream", up, "--static", &missing],
            "No such file or directory",
        ),
        (
            vec!["--upstream", up, "--static", &a_file],
            "not a directory",
        ),
        (
            vec!["--upstream", up, "--listen", "127.0.0.1:0,proxy-protocol"],
            "needs --trusted-proxy",
        ),
        (
            vec![
                "--upstream",
                up,
                "--limit-conn-per-ip",
                "1",
                "--limit-conn-status",
                "200",
            ],
            "--limit-conn-status must be a status from 400 to 599",
        ),
        (
            vec!["--upstream", up, "--trusted-proxy", "10.0.0.0/33"],
            "the prefix length must be 0 to 32",
        ),
        (
            vec!["--upstream", up, "--trusted-proxy", "10.0.0.300"],
            "--trusted-proxy",
        ),
        (
            vec!["--upstream", up, "--allow-origin", "https://app.test/path"],
            "an origin has no path",
        ),
        (
            vec!["--upstream", up, "--allow-origin", "app.test"],
            "an exact origin needs its scheme",
        ),
        (
            vec![
                "--route",
                "/ws/=a",
                "--upstream",
                "a=127.0.0.1:9000",
                "--upstream",
                "b=127.0.0.1:9001",
            ],
            "group b is reached by no route",
        ),
        (vec![], "no backend"),
    ];
    for (args, phrase) in &cases {
        check_fails(args, phrase);
    }
    // Each one of those mistakes also stops a real start, before listening.
    for (args, phrase) in &cases[..3] {
        let mut all = args.clone();
        all.extend(["--listen", "127.0.0.1:0"]);
        let (code, err) = run_to_exit(&all, PATIENCE);
        assert_eq!(code, Some(2), "{all:?}: {err}");
        assert!(err.contains(phrase), "{all:?}: {err}");
        assert!(!err.contains("listening on"), "{err}");
    }
}

/// The file of the brief: an upstream list, a route, a timeout, a method.
const CHAT_TOML: &str = r#"# ringway settings
upstream = ["chat=127.0.0.1:9000"]
route = ["/ws/=chat"]
idle-timeout = "2h"
balance = ["chat=ip-hash"]
"#;

#[test]
fn config_file_settings_are_what_check_shows() {
    let s = TempDir::new();
    let file = s.file("chat.toml", CHAT_TOML);
    let out = check_ok(&["--config", &file]);
    assert_eq!(section(&out, "routes"), ["/ws/ -> group chat"], "{out}");
    let groups = section(&out, "groups:");
    assert_eq!(groups[0], "chat (ip-hash)", "{out}");
    assert_eq!(groups.len(), 2, "{out}");
    assert!(groups[1].starts_with("127.0.0.1:9000 "), "{out}");
    assert!(timeouts(&out).contains("idle 7200s"), "{out}");

    // Numbers, booleans and snake_case keys as well.
    let file = s.file(
        "more.toml",
        &format!("{CHAT_TOML}workers = 3\nno_pin = true\nmax-conns = 77\n"),
    );
    let out = check_ok(&["--config", &file]);
    assert!(timeouts(&out).ends_with("workers 3"), "{out}");
    assert!(out.contains("connections 77"), "{out}");
}

#[test]
fn command_line_flags_replace_the_file_settings() {
    let s = TempDir::new();
    let file = s.file("chat.toml", CHAT_TOML);

    let out = check_ok(&["--config", &file, "--idle-timeout", "5m"]);
    let t = timeouts(&out);
    assert!(t.contains("idle 300s") && !t.contains("7200"), "{out}");
    // The flag wins wherever it stands.
    let out = check_ok(&["--idle-timeout=5m", "--config", &file]);
    assert!(timeouts(&out).contains("idle 300s"), "{out}");

    // A list flag replaces the file's whole list.
    let out = check_ok(&["--upstream", "chat=127.0.0.1:9100", "--config", &file]);
    let groups = section(&out, "groups:");
    assert_eq!(groups.len(), 2, "only the command line's server: {out}");
    assert!(groups[1].starts_with("127.0.0.1:9100 "), "{out}");
    assert!(!out.contains(":9000"), "{out}");
    // What the command line leaves alone still comes from the file.
    assert_eq!(groups[0], "chat (ip-hash)", "{out}");
    assert!(timeouts(&out).contains("idle 7200s"), "{out}");

    let out = check_ok(&["--config", &file, "--balance", "chat=least-conn"]);
    assert_eq!(section(&out, "groups:")[0], "chat (least-conn)", "{out}");
}

/// A valid file with no timeout in it, for the mistakes to be added to.
const BASE_TOML: &str = "upstream = [\"chat=127.0.0.1:9000\"]\nroute = [\"/ws/=chat\"]\n";

#[test]
fn file_mistakes_exit_2_naming_the_file() {
    let s = TempDir::new();
    let cases = [
        (
            "unknown.toml",
            "idle-timout = \"2h\"\n",
            "unknown setting \"idle-timout\"",
        ),
        (
            "list.toml",
            "idle-timeout = [\"1h\", \"2h\"]\n",
            "takes one value, not a list",
        ),
        (
            "syntax.toml",
            "route = [\"/ws/=chat\"\n",
            "TOML parse error at line 3",
        ),
        (
            "twice.toml",
            "idle-timeout = \"1h\"\nidle-timeout = \"2h\"\n",
            "TOML parse error at line 4",
        ),
        (
            "value.toml",
            "idle-timeout = \"soon\"\n",
            "\"soon\" is not a duration",
        ),
        ("flag.toml", "no-pin = \"yes\"\n", "expected true or false"),
        (
            "config.toml",
            "config = \"other.toml\"\n",
            "unknown setting \"config\"",
        ),
    ];
    for (name, bad, phrase) in cases {
        let text = format!("{BASE_TOML}{bad}");
        let file = s.file(name, &text);
        let err = check_fails(&["--config", &file], phrase);
        assert!(
            err.contains(&format!("--config {file}")),
            "names the file: {err}"
        );
        // The real start refuses it the same way.
        let (code, err) = run_to_exit(&["--config", &file, "--listen", "127.0.0.1:0"], PATIENCE);
        assert_eq!(code, Some(2), "{name}: {err}");
        assert!(err.contains(phrase) && err.contains(&file), "{name}: {err}");
    }
    let missing = s.path("missing.toml");
    let err = check_fails(&["--config", &missing], "No such file or directory");
    assert!(err.contains(&missing), "names the file: {err}");

    // A file that parses but configures a mistake: refused like the flags.
    let file = s.file(
        "route.toml",
        "upstream = [\"chat=127.0.0.1:9000\"]\nroute = [\"/ws/=nope\"]\n",
    );
    check_fails(&["--config", &file], "no group nope");
}

#[test]
fn proxy_started_from_a_config_file_routes_by_it() {
    let s = TempDir::new();
    let backend = Backend::echo();
    let file = s.file(
        "run.toml",
        &format!(
            "upstream = [\"chat={}\"]\nroute = [\"/chat/=chat\"]\nidle-timeout = \"2h\"\n\
             allow-origin = [\"https://app.test\"]\n",
            backend.addr
        ),
    );
    let proxy = Proxy::start(&["--config", &file]);

    let mut ws = ws_client(&proxy, "/chat/room");
    echo_once(&mut ws, "configured by a file");
    close_and_drain(&mut ws);
    drop(ws);
    let line = proxy
        .wait_log("tunnel client=", PATIENCE)
        .unwrap_or_else(|| panic!("no tunnel line: {:#?}", proxy.logs()));
    assert!(line.contains(" route=/chat/ target=/chat/room "), "{line}");
    assert!(
        line.contains(&format!(" backend={} ", backend.addr)),
        "{line}"
    );

    // Off the file's route: 404; an Origin the file does not allow: 403.
    let resp = raw_exchange(proxy.addr, upgrade_head("/other", "").as_bytes());
    assert_eq!(status_of(&resp), 404, "{}", String::from_utf8_lossy(&resp));
    let evil = upgrade_head("/chat/", "Origin: https://evil.test\r\n");
    let resp = raw_exchange(proxy.addr, evil.as_bytes());
    assert_eq!(status_of(&resp), 403, "{}", String::from_utf8_lossy(&resp));
    let good = upgrade_head("/chat/", "Origin: https://app.test\r\n");
    let mut sock = std::net::TcpStream::connect(proxy.addr).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    std::io::Write::write_all(&mut sock, good.as_bytes()).unwrap();
    let (head, _) = read_head(&mut sock);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    drop(sock);
    assert_eq!(backend.wait_requests(2).len(), 2);
    proxy.assert_fds_at_baseline();
}
