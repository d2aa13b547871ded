//! The configuration files of `examples/` (the nginx guides' chat,
//! load-balancing and wss:// examples): every one passes `ringway check`
//! as it is shipped, and `ringway --config examples/chat.toml`, run from the
//! repository root as the README says, serves its page from `examples/www`
//! and tunnels WebSockets on `/ws/` to its backend.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The repository root, where the examples' relative paths (the chat
/// example's `examples/www`) are meant to be resolved: ringway takes a
/// relative directory from its working directory, not from the file's
/// folder. Cargo runs tests there already; this says so instead of relying
/// on it, for every test of this file alike.
fn at_repository_root() -> &'static Path {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(root).unwrap();
    root
}

/// `examples/*.toml`, sorted.
fn example_files() -> Vec<PathBuf> {
    let dir = at_repository_root().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// The placeholder certificate paths of `examples/wss.toml` (the guide's).
const PLACEHOLDER_CERT: &str = "/path/to/cert.pem";

#[test]
fn every_example_passes_check() {
    let files = example_files();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    for expected in ["chat.toml", "load-balancing.toml", "wss.toml"] {
        assert!(names.iter().any(|n| n == expected), "{expected}: {names:?}");
    }
    let pki = Pki::new();
    let leaf = pki.leaf("example", &["example.com"]);
    for file in &files {
        // Relative, as a user types it from the repository root.
        let rel = format!("examples/{}", file.file_name().unwrap().to_str().unwrap());
        let text = std::fs::read_to_string(file).unwrap();
        let mut args = vec!["check", "--config", rel.as_str()];
        if text.contains(PLACEHOLDER_CERT) {
            // The guide's certificate paths are placeholders, meant to be
            // replaced: as shipped, the file fails naming them, and with real
            // files given on the command line (which override the file's
            // `cert` and `key`) it passes.
            let (code, out, err) = run_with_output(&args, PATIENCE);
            assert_eq!(code, Some(2), "{rel}: stdout {out} stderr {err}");
            assert!(
                err.contains(&format!("certificate file {PLACEHOLDER_CERT}")),
                "{rel}: {err}"
            );
            args.extend(["--cert", leaf.cert.as_str(), "--key", leaf.key.as_str()]);
        }
        let (code, out, err) = run_with_output(&args, PATIENCE);
        assert_eq!(code, Some(0), "{rel}: stderr {err}");
        assert!(out.starts_with("configuration OK\n"), "{rel}: {out}");
    }
}

#[test]
fn chat_example_resolves_its_page_in_the_repository() {
    let root = at_repository_root();
    let (code, out, err) = run_with_output(&["check", "--config", "examples/chat.toml"], PATIENCE);
    assert_eq!(code, Some(0), "{err}");
    let www = std::fs::canonicalize(root.join("examples/www")).unwrap();
    assert!(
        out.contains("  /ws/ -> group chat\n")
            && out.contains(&format!("  / -> static files from {}\n", www.display())),
        "{out}"
    );
    assert!(out.contains("idle 3600s"), "{out}");
}

#[test]
fn chat_example_serves_its_page_and_tunnels_websockets() {
    let root = at_repository_root();
    let backend = Backend::echo();
    let upstream = format!("chat={}", backend.addr);
    // The file as shipped; only its listener (127.0.0.1:8000) and its
    // backend (localhost:8080) are replaced by the command line.
    let proxy = Proxy::start(&[
        "--config",
        "examples/chat.toml",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream,
    ]);

    // The page: examples/www/index.html, byte for byte, on `/`.
    let page = std::fs::read(root.join("examples/www/index.html")).unwrap();
    let resp = raw_exchange(proxy.addr, b"GET / HTTP/1.1\r\nHost: chat.test\r\n\r\n");
    assert_eq!(status_of(&resp), 200, "{}", String::from_utf8_lossy(&resp));
    let body_at = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&resp[..body_at]).to_ascii_lowercase();
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert_eq!(&resp[body_at..], &page[..], "{head}");

    // The WebSocket the page opens, /ws/chat, reaches the backend.
    let mut ws = ws_client(&proxy, "/ws/chat");
    echo_once(&mut ws, "hello through examples/chat.toml");
    close_and_drain(&mut ws);
    drop(ws);
    assert_one_tunnel_through(&proxy, &backend, "/ws/");
    proxy.assert_fds_at_baseline();
}
