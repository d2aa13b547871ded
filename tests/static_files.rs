//! `--static` routes over real sockets: files arrive byte-exact with their
//! type, length and date (and every response closes the connection),
//! directories get their index or a redirect, If-Modified-Since gives 304,
//! other methods 405; no request path, encoding, NUL or symlink reaches a
//! byte outside the root, and each refusal is logged; the chat example
//! serves files and WebSockets on one listener; files go out over TLS too;
//! and no descriptor is left behind.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use common::*;

/// Sun, 06 Nov 1994 08:49:37 GMT: the mtime given to the site's files.
const MTIME: u64 = 784_111_777;
const MTIME_TEXT: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

const INDEX: &[u8] = b"<!doctype html><title>home</title><h1>chat</h1>\n";
const APP_JS: &[u8] = b"const ws = new WebSocket('/ws/'); // app\n";
const STYLE: &[u8] = b"body { color: #333 }\n";
const SUB_INDEX: &[u8] = b"<p>the sub index</p>\n";
const WS_DECOY: &[u8] = b"DECOY: a file under /ws/ that must never be served\n";
const ASSET: &[u8] = b"// assets/app.js, not the top one\n";
const SPACED: &[u8] = b"a folder with a space\n";
const SUMMER: &[u8] = b"\xc3\xa9t\xc3\xa9\n";
const SECRET: &str = "TOP-SECRET-OUTSIDE-THE-ROOT";
const BIG_LEN: usize = 3 << 20;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A web root with everything the tests ask for, next to an `outside`
/// folder holding a secret; both removed on drop.
///
/// ```text
/// BASE/root/{index.html, app.js, style.css, big.bin (3 MiB),
///            sub/index.html, empty/, ws/index.html (decoy),
///            assets/app.js, "a b"/index.html, été/index.html,
///            inside-link -> style.css, passwd-link -> /etc/passwd,
///            outside-link -> ../outside/secret.txt}
/// BASE/outside/secret.txt
/// BASE/secret.txt
/// ```
struct Site {
    base: PathBuf,
}

impl Site {
    fn new() -> Site {
        use std::os::unix::fs::symlink;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let base = std::env::temp_dir().join(format!(
            "ringway-static-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let root = base.join("root");
        for d in ["sub", "empty", "ws", "assets", "a b", "\u{e9}t\u{e9}"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::create_dir_all(base.join("outside")).unwrap();
        std::fs::write(base.join("outside/secret.txt"), SECRET).unwrap();
        std::fs::write(base.join("secret.txt"), SECRET).unwrap();
        let files: [(&str, &[u8]); 8] = [
            ("assets/app.js", ASSET),
            ("a b/index.html", SPACED),
            ("\u{e9}t\u{e9}/index.html", SUMMER),
            ("index.html", INDEX),
            ("app.js", APP_JS),
            ("style.css", STYLE),
            ("sub/index.html", SUB_INDEX),
            ("ws/index.html", WS_DECOY),
        ];
        for (name, bytes) in files {
            write_dated(&root.join(name), bytes);
        }
        write_dated(&root.join("big.bin"), &big());
        symlink("style.css", root.join("inside-link")).unwrap();
        symlink("/etc/passwd", root.join("passwd-link")).unwrap();
        symlink("../outside/secret.txt", root.join("outside-link")).unwrap();
        Site { base }
    }

    fn root(&self) -> String {
        self.base.join("root").to_str().unwrap().to_string()
    }

    /// The `--static` value serving the root on `/`.
    fn arg(&self) -> String {
        format!("/={}", self.root())
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Write `bytes` to `path` and date it [`MTIME`].
fn write_dated(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME))
        .unwrap();
}

/// 3 MiB that repeats in no chunk size (xorshift).
fn big() -> Vec<u8> {
    let mut x = 0x9e37_79b9u32;
    (0..BIG_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
        .collect()
}

/// One response as read until the proxy closed.
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
    /// The whole of what arrived, for "never the secret" checks.
    raw: Vec<u8>,
    /// The local port of the client, to find its log line.
    port: u16,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

/// Send `request` as is and read until ringway closes the connection.
fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let port = s.local_addr().unwrap().port();
    s.write_all(request).unwrap();
    let raw = read_to_close(&mut s);
    parse(raw, port)
}

fn parse(raw: Vec<u8>, port: u16) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no whole head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let body = raw[split + 4..].to_vec();
    Resp {
        status: status_of(&raw),
        head,
        body,
        raw,
        port,
    }
}

/// `METHOD path` with a Host and nothing else.
fn request(method: &str, path: &str, extra: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: site.test\r\n{extra}\r\n").into_bytes()
}

fn get(proxy: &Proxy, path: &str) -> Resp {
    exchange(proxy.addr, &request("GET", path, ""))
}

/// The `file client=` line of the client on `port`.
fn file_line(proxy: &Proxy, port: u16) -> String {
    let needle = format!("file client=127.0.0.1:{port} ");
    proxy
        .wait_log(&needle, PATIENCE)
        .unwrap_or_else(|| panic!("no {needle:?} line: {:#?}", proxy.logs()))
}

/// Whether the log line has `field` as one of its space-separated words.
fn has(line: &str, field: &str) -> bool {
    line.split_whitespace().any(|w| w == field)
}

/// A 200 with the whole of `content`, its type, length, date and close.
fn assert_file(r: &Resp, content: &[u8], content_type: &str) {
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.head.starts_with("HTTP/1.1 200 OK\r\n"), "{}", r.head);
    assert!(r.body == content, "body differs: {}", r.head);
    assert_eq!(r.header("Content-Type"), Some(content_type), "{}", r.head);
    let len = content.len().to_string();
    assert_eq!(r.header("Content-Length"), Some(len.as_str()), "{}", r.head);
    assert_eq!(r.header("Last-Modified"), Some(MTIME_TEXT), "{}", r.head);
    assert_eq!(r.header("Connection"), Some("close"), "{}", r.head);
}

#[test]
fn files_arrive_byte_exact_with_type_length_and_date() {
    let site = Site::new();
    let proxy = Proxy::start(&["--static", &site.arg()]);

    let r = get(&proxy, "/");
    assert_file(&r, INDEX, "text/html; charset=utf-8");
    let line = file_line(&proxy, r.port);
    assert!(
        line.contains(" route=/ target=/ backend=- status=200 "),
        "{line}"
    );
    assert!(has(&line, &format!("down={}", INDEX.len())), "{line}");

    assert_file(
        &get(&proxy, "/index.html"),
        INDEX,
        "text/html; charset=utf-8",
    );
    assert_file(
        &get(&proxy, "/app.js"),
        APP_JS,
        "text/javascript; charset=utf-8",
    );
    assert_file(&get(&proxy, "/style.css"), STYLE, "text/css; charset=utf-8");
    // A query string is not part of the file name.
    assert_file(
        &get(&proxy, "/style.css?v=3"),
        STYLE,
        "text/css; charset=utf-8",
    );

    let r = get(&proxy, "/big.bin");
    assert_file(&r, &big(), "application/octet-stream");
    let line = file_line(&proxy, r.port);
    assert!(has(&line, &format!("down={BIG_LEN}")), "{line}");
    assert!(
        line.contains("closed=\"response complete\""),
        "not cut short: {line}"
    );

    // HEAD: the very same head, and not one byte of body.
    for path in ["/", "/app.js", "/big.bin"] {
        let got = get(&proxy, path);
        let head = exchange(proxy.addr, &request("HEAD", path, ""));
        assert_eq!(head.head, got.head, "HEAD {path}");
        assert!(
            head.body.is_empty(),
            "HEAD {path}: {} bytes",
            head.body.len()
        );
        assert!(has(&file_line(&proxy, head.port), "down=0"));
    }

    // Every static response ends the connection: a second, pipelined
    // request gets nothing.
    let mut two = request("GET", "/app.js", "");
    two.extend(request("GET", "/style.css", ""));
    let r = exchange(proxy.addr, &two);
    assert_file(&r, APP_JS, "text/javascript; charset=utf-8");
    assert_eq!(r.text().matches("HTTP/1.1 ").count(), 1, "{}", r.text());
    proxy.assert_fds_at_baseline();
}

#[test]
fn directories_index_redirect_and_missing() {
    let site = Site::new();
    let proxy = Proxy::start(&["--static", &site.arg()]);

    assert_file(&get(&proxy, "/sub/"), SUB_INDEX, "text/html; charset=utf-8");
    // `.` segments and doubled slashes are normalized away.
    assert_file(
        &get(&proxy, "//sub/./"),
        SUB_INDEX,
        "text/html; charset=utf-8",
    );

    let r = get(&proxy, "/sub");
    assert!(
        r.head.starts_with("HTTP/1.1 301 Moved Permanently\r\n"),
        "{}",
        r.head
    );
    assert_eq!(r.header("Location"), Some("/sub/"));
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(file_line(&proxy, r.port).contains(" status=301 "));

    let r = get(&proxy, "/empty/");
    assert_eq!(
        r.status,
        404,
        "a directory without index.html: {}",
        r.text()
    );
    let line = file_line(&proxy, r.port);
    assert!(
        line.contains(" status=404 ") && line.contains("closed=\"refused: "),
        "{line}"
    );

    for missing in ["/missing.html", "/sub/nope.js", "/app.js/x"] {
        let r = get(&proxy, missing);
        assert_eq!(r.status, 404, "{missing}: {}", r.text());
        assert_eq!(r.header("Connection"), Some("close"));
        assert_eq!(r.body, b"404 Not Found\n", "nothing about why: {missing}");
        let line = file_line(&proxy, r.port);
        assert!(line.contains("no such file"), "{line}");
    }
    let r = exchange(proxy.addr, &request("HEAD", "/missing.html", ""));
    assert_eq!((r.status, r.body.len()), (404, 0), "{}", r.text());

    // A symlink to a file inside the root is followed.
    assert_file(
        &get(&proxy, "/inside-link"),
        STYLE,
        "application/octet-stream",
    );
    proxy.assert_fds_at_baseline();
}

#[test]
fn if_modified_since_and_other_methods() {
    let site = Site::new();
    let proxy = Proxy::start(&["--static", &site.arg()]);

    let r = get(&proxy, "/style.css");
    let last_modified = r.header("Last-Modified").unwrap().to_string();
    assert_eq!(last_modified, MTIME_TEXT);

    for since in [MTIME_TEXT, "Mon, 01 Jan 2035 00:00:00 GMT"] {
        let ims = format!("If-Modified-Since: {since}\r\n");
        let r = exchange(proxy.addr, &request("GET", "/style.css", &ims));
        assert!(
            r.head.starts_with("HTTP/1.1 304 Not Modified\r\n"),
            "{since}: {}",
            r.text()
        );
        assert!(r.body.is_empty(), "304 has no body: {}", r.text());
        assert_eq!(r.header("Last-Modified"), Some(MTIME_TEXT));
        assert_eq!(r.header("Connection"), Some("close"));
        let line = file_line(&proxy, r.port);
        assert!(has(&line, "status=304") && has(&line, "down=0"), "{line}");
    }
    // A second older than the file, or no date ringway can read: the file.
    for since in ["Sun, 06 Nov 1994 08:49:36 GMT", "yesterday"] {
        let ims = format!("If-Modified-Since: {since}\r\n");
        let r = exchange(proxy.addr, &request("GET", "/style.css", &ims));
        assert_file(&r, STYLE, "text/css; charset=utf-8");
    }

    for method in ["POST", "PUT", "DELETE"] {
        let body = "Content-Length: 5\r\n";
        let mut req = request(method, "/index.html", body);
        req.extend_from_slice(b"hello");
        let r = exchange(proxy.addr, &req);
        assert!(
            r.head.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{method}: {}",
            r.text()
        );
        assert_eq!(r.header("Allow"), Some("GET, HEAD"), "{method}");
        assert_eq!(r.header("Connection"), Some("close"));
        assert!(!r.text().contains("<h1>chat</h1>"), "{method} got the file");
        let line = file_line(&proxy, r.port);
        assert!(
            line.contains(" status=405 ") && line.contains(method),
            "{line}"
        );
    }
    proxy.assert_fds_at_baseline();
}

#[test]
fn no_path_leaves_the_root() {
    let site = Site::new();
    let proxy = Proxy::start(&["--static", &site.arg()]);
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let passwd_mark = passwd.lines().next().unwrap_or("root:x:0:0:").to_string();

    let attempts: Vec<Vec<u8>> = [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/%2e%2e/etc/passwd",
        "/.%2e/x",
        "/sub/..%2f..%2fsecret.txt",
        "/a%2fb",
        "/index.html%00.txt",
        "/passwd-link",
        "/outside-link",
        "/..",
        "/sub/../../secret.txt",
        "/../../../../../../etc/passwd",
        "/sub/%2e%2e/%2e%2e/outside/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "http://x/../secret.txt",
        "http://x/../../etc/passwd",
    ]
    .iter()
    .map(|p| request("GET", p, ""))
    .chain([
        // No Host, an odd HEAD, a backslash: still nothing from outside.
        b"GET /../secret.txt HTTP/1.1\r\n\r\n".to_vec(),
        request("HEAD", "/outside-link", ""),
        request("GET", "/..\\..\\secret.txt", ""),
    ])
    .collect();

    for req in &attempts {
        let shown = String::from_utf8_lossy(req)
            .lines()
            .next()
            .unwrap()
            .to_string();
        let r = exchange(proxy.addr, req);
        let text = r.text();
        assert!(
            matches!(r.status, 400 | 404),
            "{shown}: status {}: {text}",
            r.status
        );
        assert!(!text.contains(SECRET), "{shown} leaked the secret: {text}");
        assert!(!text.contains(&passwd_mark), "{shown} leaked /etc/passwd");
        assert_eq!(r.header("Connection"), Some("close"), "{shown}");
        let client = format!("client=127.0.0.1:{} ", r.port);
        let status = format!("status={} ", r.status);
        let line = proxy
            .wait_log_where(
                |l| {
                    l.contains(&client)
                        && l.contains(&status)
                        && (l.contains("file client=") || l.contains(" WARN "))
                },
                PATIENCE,
            )
            .unwrap_or_else(|| panic!("{shown}: no log line: {:#?}", proxy.logs()));
        assert!(
            line.contains("reason=") || line.contains("closed=\"refused: "),
            "{shown}: {line}"
        );
    }

    // The symlinks out are named as such in the log.
    for link in ["/passwd-link", "/outside-link"] {
        let r = get(&proxy, link);
        assert_eq!(r.status, 404);
        let line = file_line(&proxy, r.port);
        assert!(line.contains("symlink leads outside the root"), "{line}");
    }
    // And the one inside still works.
    assert_file(
        &get(&proxy, "/inside-link"),
        STYLE,
        "application/octet-stream",
    );
    proxy.assert_fds_at_baseline();
}

#[test]
fn chat_example_files_on_root_websockets_on_ws() {
    let site = Site::new();
    let backend = Backend::echo();
    let upstream = format!("chat={}", backend.addr);
    let proxy = Proxy::start(&[
        "--static",
        &site.arg(),
        "--route",
        "/ws/=chat",
        "--upstream",
        &upstream,
    ]);

    assert_file(&get(&proxy, "/"), INDEX, "text/html; charset=utf-8");
    assert_file(
        &get(&proxy, "/app.js"),
        APP_JS,
        "text/javascript; charset=utf-8",
    );

    // The same listener upgrades /ws/ to the backend.
    let mut ws = ws_client(&proxy, "/ws/");
    echo_once(&mut ws, "hello through the chat route");
    echo_once(&mut ws, "and once more");
    close_and_drain(&mut ws);
    drop(ws);
    assert_one_tunnel_through(&proxy, &backend, "/ws/");

    // /ws/ never serves files, though ROOT/ws/index.html exists: a plain
    // GET goes to the backend, and the decoy stays unread.
    let r = exchange(proxy.addr, &request("GET", "/ws/", ""));
    assert!(!r.text().contains("DECOY"), "{}", r.text());
    let r2 = exchange(proxy.addr, &request("GET", "/ws/index.html", ""));
    assert!(!r2.text().contains("DECOY"), "{}", r2.text());
    for port in [r.port, r2.port] {
        let client = format!("client=127.0.0.1:{port} ");
        let line = proxy
            .wait_log(&client, PATIENCE)
            .unwrap_or_else(|| panic!("no line for {client}: {:#?}", proxy.logs()));
        assert!(!line.contains("file client="), "{line}");
        assert!(
            line.contains(&format!("backend={}", backend.addr)),
            "{line}"
        );
    }
    proxy.assert_fds_at_baseline();
}

#[test]
fn static_files_over_tls() {
    let site = Site::new();
    let pki = Pki::new();
    let leaf = pki.leaf("static", &["localhost"]);
    let proxy = Proxy::start(&[
        "--static",
        &site.arg(),
        "--tls-listen",
        "127.0.0.1:0",
        "--cert",
        &leaf.cert,
        "--key",
        &leaf.key,
    ]);
    let client = TlsClient::new(pki.ca_der());
    for (path, content, kind) in [
        ("/", INDEX, "text/html; charset=utf-8"),
        ("/big.bin", &big()[..], "application/octet-stream"),
    ] {
        let mut tls = client.connect(proxy.tls(), Some("localhost")).unwrap();
        let port = tls.sock.local_addr().unwrap().port();
        let (raw, clean) = tls_exchange(&mut tls, &request("GET", path, ""));
        // Closed before the log is awaited: ringway lingers until the
        // client closes, and logs after.
        drop(tls);
        let r = parse(raw, port);
        assert_file(&r, content, kind);
        assert!(clean, "{path}: ended with close_notify");
        let line = file_line(&proxy, port);
        assert!(line.contains(" status=200 "), "{line}");
    }
    let mut tls = client.connect(proxy.tls(), Some("localhost")).unwrap();
    let (raw, _) = tls_exchange(&mut tls, &request("GET", "/outside-link", ""));
    assert_eq!(status_of(&raw), 404);
    assert!(!String::from_utf8_lossy(&raw).contains(SECRET));
    drop(tls);
    proxy.assert_fds_at_baseline();
}

/// Reads of a response cut in pieces by a slow client still add up.
#[test]
fn a_slow_reader_gets_the_whole_big_file() {
    let site = Site::new();
    let proxy = Proxy::start(&["--static", &site.arg()]);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(&request("GET", "/big.bin", "")).unwrap();
    // Let the socket buffers fill before reading anything.
    std::thread::sleep(Duration::from_millis(300));
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read: {e} after {} bytes", raw.len()),
        }
    }
    let port = s.local_addr().unwrap().port();
    drop(s);
    let r = parse(raw, port);
    assert_file(&r, &big(), "application/octet-stream");
    let line = file_line(&proxy, port);
    assert!(has(&line, &format!("down={BIG_LEN}")), "{line}");
    assert!(
        line.contains("closed=\"response complete\""),
        "not cut short: {line}"
    );
    proxy.assert_fds_at_baseline();
}

#[test]
fn prefixes_hosts_and_encoded_names() {
    let site = Site::new();
    let sub = format!("other.test/={}/sub", site.root());
    let assets = format!("/assets/={}", site.root());
    let proxy = Proxy::start(&["--static", &assets, "--static", &sub]);
    let js = "text/javascript; charset=utf-8";
    let html = "text/html; charset=utf-8";

    // nginx's `root`: the whole path is looked up under the directory.
    assert_file(&get(&proxy, "/assets/app.js"), ASSET, js);
    assert_file(&get(&proxy, "/%61ssets/app%2Ejs"), ASSET, js);
    for off_route in ["/app.js", "/", "/assets"] {
        let r = get(&proxy, off_route);
        assert_eq!(r.status, 404, "{off_route}: {}", r.text());
        assert!(
            !r.text().contains("WebSocket("),
            "{off_route}: {}",
            r.text()
        );
    }

    // A route for one host serves its own directory, whatever the case and
    // port of the Host header.
    for host in ["other.test", "OTHER.test:8080"] {
        let r = exchange(
            proxy.addr,
            format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        );
        assert_file(&r, SUB_INDEX, html);
    }

    // Names that need escaping: served, and redirected with the escapes.
    let root = format!("/={}", site.root());
    let proxy2 = Proxy::start(&["--static", &root]);
    assert_file(&get(&proxy2, "/a%20b/"), SPACED, html);
    assert_file(&get(&proxy2, "/%C3%A9t%C3%A9/"), SUMMER, html);
    for (path, location) in [("/a%20b", "/a%20b/"), ("/%c3%a9t%c3%a9", "/%C3%A9t%C3%A9/")] {
        let r = get(&proxy2, path);
        assert_eq!(r.status, 301, "{path}: {}", r.text());
        assert_eq!(r.header("Location"), Some(location), "{path}");
    }
    let r = get(&proxy2, "/%ff");
    assert_eq!(r.status, 400, "not UTF-8: {}", r.text());
    proxy.assert_fds_at_baseline();
    proxy2.assert_fds_at_baseline();
}

#[test]
fn a_path_cannot_forge_log_lines() {
    let site = Site::new();
    let proxy = Proxy::start(&["--static", &site.arg()]);
    // Decoded, this name holds CR LF and a quote: the log line must keep
    // them escaped, inside its own line.
    let r = get(&proxy, "/x%0d%0aINJECTED%20WARN%20forged%22%20status=200");
    assert_eq!(r.status, 404);
    let line = file_line(&proxy, r.port);
    assert!(line.contains("INJECTED"), "{line}");
    for l in proxy.logs() {
        assert!(
            !l.contains("INJECTED") || l.contains("file client="),
            "a forged line: {l:?}"
        );
    }
    assert!(!line.contains("forged\" status=200"), "{line}");
    proxy.assert_fds_at_baseline();
}
