//! wss://: TLS from clients (`--tls-listen`, certificates, SNI, reload) and
//! to backends (`--upstream wss://`), end to end with rustls clients and a
//! TLS echo backend, certificates from a test CA made per test.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use rustls::ProtocolVersion;
use tungstenite::Message;

const NEEDLE_FAILED: &str = "tls handshake failed";

/// A PKI with a default leaf for `localhost` and 127.0.0.1, and a proxy
/// with a plain and a TLS listener serving it, in front of `backend`.
fn tls_proxy(backend: &Backend, extra: &[&str]) -> (Pki, Leaf, Proxy) {
    let pki = Pki::new();
    let leaf = pki.leaf("default", &["localhost", "127.0.0.1"]);
    let proxy = start_tls_proxy(backend, &leaf, extra);
    (pki, leaf, proxy)
}

/// The certificate the proxy presents to a client sending `sni`.
fn cert_for(proxy: &Proxy, client: &TlsClient, sni: Option<&str>) -> Vec<u8> {
    let tls = client
        .connect(proxy.tls(), sni)
        .unwrap_or_else(|e| panic!("TLS with SNI {sni:?}: {e}; logs {:#?}", proxy.logs()));
    leaf_seen(&tls)
}

/// A hand-made ClientHello record whose `legacy_version` is `version`,
/// without a supported_versions extension: what a TLS 1.0/1.1 (or a plain
/// TLS 1.2) client sends.
fn client_hello(version: u16) -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend(kind.to_be_bytes());
        out.extend((data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }
    let mut body = Vec::new();
    body.extend(version.to_be_bytes());
    body.extend([0x5a; 32]); // random
    body.push(0); // no session id
                  // ECDHE-ECDSA/RSA with AES-GCM (TLS 1.2), then the TLS 1.0 CBC suites.
    let suites: [u16; 6] = [0xc02b, 0xc02f, 0xc009, 0xc013, 0x002f, 0x0035];
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend(s.to_be_bytes());
    }
    body.extend([1, 0]); // compression: null
    let mut exts = Vec::new();
    ext(&mut exts, 0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]); // groups: x25519, P-256
    ext(&mut exts, 0x000b, &[1, 0]); // point formats: uncompressed
    ext(
        &mut exts,
        0x000d, // signature algorithms
        &[0, 6, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
    );
    ext(&mut exts, 0x0017, &[]); // extended master secret
    ext(&mut exts, 0xff01, &[0]); // renegotiation info
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);
    let mut hs = vec![0x01]; // ClientHello
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}

/// Send raw bytes to the TLS port and read until it closes.
fn raw_tls_port(proxy: &Proxy, bytes: &[u8]) -> Vec<u8> {
    raw_exchange(proxy.tls(), bytes)
}

/// Nothing but (at most) an alert came back: no ServerHello, no HTTP.
fn assert_refused(what: &str, resp: &[u8]) {
    assert!(
        resp.is_empty() || resp[0] == 0x15,
        "{what}: expected an alert record or nothing, got {:02x?}",
        &resp[..resp.len().min(32)]
    );
}

// ---------------------------------------------------------------------------
// Messages through a TLS client side.

#[test]
fn wss_text_and_binary_messages_from_0_bytes_to_16_mib() {
    let backend = Backend::echo();
    let (pki, _, proxy) = tls_proxy(&backend, &[]);
    let mut ws = TlsClient::new(pki.ca_der()).ws(proxy.tls(), Some("localhost"), "/ws");
    echo_all_sizes(&mut ws);
    close_and_drain(&mut ws);
    drop(ws);
    let line = proxy
        .wait_log("tunnel client=", PATIENCE)
        .expect("one line per tunnel");
    assert!(line.contains("status=101"), "{line}");
    proxy.assert_fds_at_baseline();
}

#[test]
fn wss_fragments_ping_pong_and_close_codes() {
    let backend = Backend::echo();
    let (pki, _, proxy) = tls_proxy(&backend, &[]);
    let client = TlsClient::new(pki.ca_der());
    let mut ws = client.ws(proxy.tls(), Some("localhost"), "/ws");
    fragments_ping_and_backend_close(&mut ws);
    drop(ws);
    let mut ws = client.ws(proxy.tls(), Some("localhost"), "/ws");
    client_close_is_echoed(&mut ws);
    drop(ws);
    proxy.assert_fds_at_baseline();
}

#[test]
fn fifty_concurrent_wss_clients() {
    let backend = Backend::echo();
    let (pki, _, proxy) = tls_proxy(&backend, &[]);
    let client = TlsClient::new(pki.ca_der());
    let addr = proxy.tls();
    concurrent_clients(50, 20, move || client.ws(addr, Some("localhost"), "/ws"));
    assert_eq!(*backend.accepted.lock().unwrap(), 50);
    proxy.wait_count("tunnel client=", 50, PATIENCE);
    proxy.assert_fds_at_baseline();
}

#[test]
fn the_backend_sees_x_forwarded_proto_https_for_tls_clients_only() {
    let backend = Backend::echo();
    let (pki, _, proxy) = tls_proxy(&backend, &[]);
    // A client-sent X-Forwarded-Proto is replaced.
    let mut tls = TlsClient::new(pki.ca_der())
        .connect(proxy.tls(), Some("localhost"))
        .unwrap();
    tls.write_all(upgrade_head("/ws", "X-Forwarded-Proto: http\r\n").as_bytes())
        .unwrap();
    tls.flush().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101 "), "{got:?}");
    let seen = &backend.wait_requests(1)[0];
    assert_eq!(header(seen, "x-forwarded-proto"), Some("https"), "{seen:?}");
    let n = seen
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-proto"))
        .count();
    assert_eq!(n, 1, "{seen:?}");
    drop(tls);

    // The plain listener of the same process still says http.
    let mut ws = ws_client(&proxy, "/ws");
    echo_once(&mut ws, "plain");
    let seen = &backend.wait_requests(2)[1];
    assert_eq!(header(seen, "x-forwarded-proto"), Some("http"), "{seen:?}");
    drop(ws);
    proxy.assert_fds_at_baseline();
}

#[test]
fn errors_and_plain_requests_are_answered_inside_tls() {
    let backend = Backend::spawn(|mut s, _| {
        let _ = read_head(&mut s);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world");
        std::thread::sleep(Duration::from_millis(500));
    });
    let (pki, _, proxy) = tls_proxy(&backend, &[]);
    let client = TlsClient::new(pki.ca_der());

    // 426 from ringway itself, over TLS.
    let mut tls = client.connect(proxy.tls(), Some("localhost")).unwrap();
    let head = upgrade_head("/ws", "").replace("Version: 13", "Version: 8");
    let (resp, _) = tls_exchange(&mut tls, head.as_bytes());
    assert_eq!(status_of(&resp), 426, "{}", String::from_utf8_lossy(&resp));
    proxy.wait_log("status=426", PATIENCE).unwrap();

    // A plain request is streamed back, then the connection ends.
    let mut tls = client.connect(proxy.tls(), Some("localhost")).unwrap();
    let (resp, _) = tls_exchange(&mut tls, b"GET /page HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let text = String::from_utf8_lossy(&resp);
    assert_eq!(status_of(&resp), 200, "{text}");
    assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello world"), "{text}");
    drop(tls);
    proxy.assert_fds_at_baseline();
}

// ---------------------------------------------------------------------------
// Protocol versions and ALPN.

#[test]
fn tls_1_2_and_1_3_are_served_and_alpn_is_http_1_1() {
    let backend = Backend::echo();
    let (pki, _, proxy) = tls_proxy(&backend, &[]);
    for (version, want) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let client = TlsClient::with(pki.ca_der(), &[version], &[b"h2", b"http/1.1"], true);
        let mut ws = client.ws(proxy.tls(), Some("localhost"), "/ws");
        let conn = &ws.get_ref().conn;
        assert_eq!(conn.protocol_version(), Some(want));
        assert_eq!(
            conn.alpn_protocol(),
            Some(&b"http/1.1"[..]),
            "ALPN with {want:?}"
        );
        echo_once(&mut ws, &format!("over {want:?}"));
        close_and_drain(&mut ws);
        drop(ws);
        // The tunnel's log line names the version.
        let tag = match want {
            ProtocolVersion::TLSv1_2 => "tls=TLSv1.2",
            _ => "tls=TLSv1.3",
        };
        let line = proxy
            .wait_log_where(
                |l| l.contains("tunnel client=") && l.contains(tag),
                PATIENCE,
            )
            .unwrap_or_else(|| panic!("no tunnel line with {tag}: {:#?}", proxy.logs()));
        assert!(line.contains("status=101"), "{line}");
    }
    // A client offering no ALPN is served too.
    let client = TlsClient::with(pki.ca_der(), &[&rustls::version::TLS13], &[], true);
    let mut ws = client.ws(proxy.tls(), Some("localhost"), "/ws");
    assert_eq!(ws.get_ref().conn.alpn_protocol(), None);
    echo_once(&mut ws, "no alpn");
    close_and_drain(&mut ws);
    // A client offering only h2 is not: http/1.1 is all ringway speaks.
    let client = TlsClient::with(pki.ca_der(), &[&rustls::version::TLS13], &[b"h2"], true);
    match client.connect(proxy.tls(), Some("localhost")) {
        Err(_) => {}
        Ok(tls) => assert_ne!(
            tls.conn.alpn_protocol(),
            Some(&b"h2"[..]),
            "ringway agreed to speak h2"
        ),
    }
    drop(ws);
    proxy.assert_fds_at_baseline();
}

#[test]
fn tls_1_0_and_1_1_hellos_are_refused() {
    let backend = Backend::echo();
    let (_pki, _, proxy) = tls_proxy(&backend, &[]);
    for (n, version) in [(1, 0x0301u16), (2, 0x0302)] {
        let resp = raw_tls_port(&proxy, &client_hello(version));
        assert_refused(&format!("hello {version:#06x}"), &resp);
        // README: refused with a protocol_version alert (fatal, 70).
        assert!(
            resp.len() >= 7 && resp[5..7] == [2, 70],
            "hello {version:#06x}: a protocol_version alert, got {resp:02x?}"
        );
        proxy.wait_count(NEEDLE_FAILED, n, PATIENCE);
    }
    // The same hello with 0x0303 gets a ServerHello: the refusals above are
    // about the version, not a malformed hello.
    let mut s = TcpStream::connect(proxy.tls()).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(&client_hello(0x0303)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < 6 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after a TLS 1.2 hello: {got:02x?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        (got[0], got[5]),
        (0x16, 0x02),
        "a ServerHello record: {:02x?}",
        &got[..got.len().min(16)]
    );
    drop(s);
    assert_eq!(
        *backend.accepted.lock().unwrap(),
        0,
        "nothing reached the backend"
    );
    proxy.assert_fds_at_baseline();
}

// ---------------------------------------------------------------------------
// Bad input on the TLS port.

#[test]
fn garbage_and_plain_http_on_the_tls_port() {
    let backend = Backend::echo();
    let (_pki, _, proxy) = tls_proxy(&backend, &[]);
    let garbage: Vec<u8> = (0..200u32).map(|i| (i * 7 + 0x80) as u8).collect();
    let resp = raw_tls_port(&proxy, &garbage);
    assert_refused("garbage", &resp);
    proxy.wait_count(NEEDLE_FAILED, 1, PATIENCE);

    // Bytes that look like a TLS record but are not a handshake.
    let resp = raw_tls_port(&proxy, b"\x17\x03\x03\x00\x05hello");
    assert_refused("application data first", &resp);
    proxy.wait_count(NEEDLE_FAILED, 2, PATIENCE);

    for request in [
        upgrade_head("/ws", ""),
        "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_string(),
    ] {
        let started = Instant::now();
        let resp = raw_tls_port(&proxy, request.as_bytes());
        let text = String::from_utf8_lossy(&resp);
        assert_eq!(status_of(&resp), 400, "{text}");
        assert!(
            text.to_ascii_lowercase().contains("plain http"),
            "the body says why: {text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "closed at once, not after a wait: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        *backend.accepted.lock().unwrap(),
        0,
        "nothing reached the backend"
    );
    proxy.assert_fds_at_baseline();
}

#[test]
fn a_stalled_tls_handshake_times_out() {
    let backend = Backend::echo();
    let (pki, _, proxy) = tls_proxy(&backend, &["--handshake-timeout", "300ms"]);
    let hello = client_hello(0x0303);
    let started = Instant::now();
    let resp = raw_tls_port(&proxy, &hello[..hello.len() / 2]);
    let took = started.elapsed();
    assert_refused("half a hello", &resp);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    proxy.wait_count(NEEDLE_FAILED, 1, PATIENCE);

    // A client that connects and says nothing is closed too.
    let started = Instant::now();
    let mut s = TcpStream::connect(proxy.tls()).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let resp = read_to_close(&mut s);
    assert_refused("silence", &resp);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "silent client closed after {:?}",
        started.elapsed()
    );
    drop(s);

    // A client that finishes the TLS handshake but not its request head
    // gets the usual 408, inside TLS.
    let mut tls = TlsClient::new(pki.ca_der())
        .connect(proxy.tls(), Some("localhost"))
        .unwrap();
    let started = Instant::now();
    let (resp, _) = tls_exchange(&mut tls, b"GET /ws HTTP/1.1\r\nHost: x\r\n");
    assert_eq!(status_of(&resp), 408, "{}", String::from_utf8_lossy(&resp));
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(tls);
    assert_eq!(*backend.accepted.lock().unwrap(), 0);
    proxy.assert_fds_at_baseline();
}

// ---------------------------------------------------------------------------
// Certificates: SNI, key formats, chains.

#[test]
fn sni_picks_the_certificate() {
    let backend = Backend::echo();
    let pki = Pki::new();
    let default = pki.leaf("default", &["default.test", "127.0.0.1"]);
    let a = pki.leaf("a", &["a.test"]);
    let wild = pki.leaf("wild", &["*.wild.test"]);
    let (a_arg, wild_arg) = (a.sni_arg("a.test"), wild.sni_arg("*.wild.test"));
    let proxy = start_tls_proxy(
        &backend,
        &default,
        &["--sni-cert", &a_arg, "--sni-cert", &wild_arg],
    );
    let any = TlsClient::any_name(pki.ca_der());
    let strict_client = TlsClient::new(pki.ca_der());
    for (sni, want, name) in [
        (Some("a.test"), &a, "a"),
        (Some("x.wild.test"), &wild, "wildcard"),
        (Some("default.test"), &default, "default by name"),
        (None, &default, "default without SNI"),
        (
            Some("unknown.test"),
            &default,
            "default for an unknown name",
        ),
        (
            Some("a.b.wild.test"),
            &default,
            "default: a wildcard is one label",
        ),
    ] {
        assert!(
            cert_for(&proxy, &any, sni) == want.der,
            "{name}: SNI {sni:?} got another certificate"
        );
    }
    // Names it is valid for also verify strictly, and carry a tunnel.
    for sni in ["a.test", "x.wild.test", "default.test"] {
        let mut ws = strict_client.ws(proxy.tls(), Some(sni), "/ws");
        echo_once(&mut ws, sni);
        close_and_drain(&mut ws);
    }
    let mut ws = strict_client.ws(proxy.tls(), None, "/ws");
    echo_once(&mut ws, "by address");
    close_and_drain(&mut ws);
    drop(ws);
    proxy.assert_fds_at_baseline();
}

#[test]
fn sni_strict_refuses_unknown_names() {
    let backend = Backend::echo();
    let pki = Pki::new();
    let default = pki.leaf("default", &["default.test", "127.0.0.1"]);
    let a = pki.leaf("a", &["a.test"]);
    let a_arg = a.sni_arg("a.test");
    let proxy = start_tls_proxy(&backend, &default, &["--sni-cert", &a_arg, "--sni-strict"]);
    let any = TlsClient::any_name(pki.ca_der());
    assert!(cert_for(&proxy, &any, Some("a.test")) == a.der);
    assert!(cert_for(&proxy, &any, Some("default.test")) == default.der);
    let before = proxy.count_logs(NEEDLE_FAILED);
    for sni in ["unknown.test", "x.a.test"] {
        match any.connect(proxy.tls(), Some(sni)) {
            Err(_) => {}
            Ok(tls) => panic!(
                "--sni-strict served {sni} (leaf {} bytes)",
                leaf_seen(&tls).len()
            ),
        }
    }
    proxy.wait_count(NEEDLE_FAILED, before + 2, PATIENCE);
    let mut ws = TlsClient::new(pki.ca_der()).ws(proxy.tls(), Some("a.test"), "/ws");
    echo_once(&mut ws, "still serving known names");
    close_and_drain(&mut ws);
    drop(ws);
    proxy.assert_fds_at_baseline();
}

#[test]
fn rsa_pkcs1_ec_sec1_and_pkcs8_keys_are_loaded() {
    let backend = Backend::echo();
    let pki = Pki::new();
    for format in [
        KeyFormat::RsaPkcs1,
        KeyFormat::EcdsaSec1,
        KeyFormat::EcdsaPkcs8,
    ] {
        let leaf = pki.leaf_with("keys", &["localhost", "127.0.0.1"], format);
        let header = leaf.key_pem.lines().next().unwrap().to_string();
        let proxy = start_tls_proxy(&backend, &leaf, &[]);
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let client = TlsClient::with(pki.ca_der(), &[version], &[b"http/1.1"], true);
            let mut ws = client.ws(proxy.tls(), Some("localhost"), "/ws");
            assert!(
                leaf_seen(ws.get_ref()) == leaf.der,
                "{format:?} ({header}): another certificate"
            );
            echo_once(&mut ws, &format!("{format:?}"));
            close_and_drain(&mut ws);
        }
        proxy.assert_fds_at_baseline();
    }
}

#[test]
fn a_certificate_chain_file_is_served_whole() {
    let backend = Backend::echo();
    let pki = Pki::new();
    // The client trusts only the root: the intermediate must come from
    // ringway.
    let leaf = pki.leaf_via_intermediate("chained", &["localhost"]);
    let proxy = start_tls_proxy(&backend, &leaf, &[]);
    let mut ws = TlsClient::new(pki.ca_der()).ws(proxy.tls(), Some("localhost"), "/ws");
    let chain = ws.get_ref().conn.peer_certificates().unwrap().len();
    assert_eq!(chain, 2, "leaf and intermediate");
    assert!(leaf_seen(ws.get_ref()) == leaf.der);
    echo_once(&mut ws, "chained");
    close_and_drain(&mut ws);
    drop(ws);
    proxy.assert_fds_at_baseline();
}

// ---------------------------------------------------------------------------
// SIGHUP reload.

#[test]
fn sighup_reloads_certificates_and_keeps_the_old_ones_on_failure() {
    let backend = Backend::echo();
    let pki = Pki::new();
    let names = ["localhost", "127.0.0.1"];
    let (cert, key) = (pki.path("live.crt"), pki.path("live.key"));
    let (a_cert, a_key) = (pki.path("live-a.crt"), pki.path("live-a.key"));
    let first = pki.leaf("first", &names);
    first.write_to(&cert, &key);
    let a_first = pki.leaf("a-first", &["a.test"]);
    a_first.write_to(&a_cert, &a_key);
    let a_arg = format!("a.test={a_cert},{a_key}");
    let proxy = start_proxy(
        &backend,
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--cert",
            &cert,
            "--key",
            &key,
            "--sni-cert",
            &a_arg,
        ],
    );
    let client = TlsClient::new(pki.ca_der());
    let sees = |sni: &str| cert_for(&proxy, &client, Some(sni));
    let mut old = client.ws(proxy.tls(), Some("localhost"), "/ws");
    assert!(leaf_seen(old.get_ref()) == first.der);
    assert!(sees("a.test") == a_first.der);
    echo_once(&mut old, "before");

    // New files, SIGHUP: new connections get them, the open tunnel lives on.
    let second = pki.leaf("second", &names);
    second.write_to(&cert, &key);
    let a_second = pki.leaf("a-second", &["a.test"]);
    a_second.write_to(&a_cert, &a_key);
    proxy.signal("HUP");
    proxy.wait_count("configuration reloaded", 1, PATIENCE);
    assert!(sees("localhost") == second.der, "default not reloaded");
    assert!(sees("a.test") == a_second.der, "--sni-cert not reloaded");
    echo_once(&mut old, "after the reload");

    // Broken files: the reload fails, the certificates stay.
    let third = pki.leaf("third", &names);
    let breakages: [(&str, &dyn Fn()); 4] = [
        ("garbage key", &|| {
            std::fs::write(&key, "not a key\n").unwrap()
        }),
        ("key of another certificate", &|| {
            std::fs::write(&cert, &third.cert_pem).unwrap();
            std::fs::write(&key, &second.key_pem).unwrap();
        }),
        ("missing key file", &|| {
            second.write_to(&cert, &key);
            std::fs::remove_file(&key).unwrap();
        }),
        ("garbage --sni-cert certificate", &|| {
            second.write_to(&cert, &key);
            std::fs::write(&a_cert, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        }),
    ];
    for (n, (what, breakage)) in breakages.iter().enumerate() {
        breakage();
        proxy.signal("HUP");
        proxy.wait_count("configuration reload failed", n + 1, PATIENCE);
        assert!(sees("localhost") == second.der, "{what}: default changed");
        assert!(sees("a.test") == a_second.der, "{what}: SNI cert changed");
    }
    assert_eq!(proxy.count_logs("configuration reloaded"), 1);

    // Good files again: reloaded.
    let fourth = pki.leaf("fourth", &names);
    fourth.write_to(&cert, &key);
    a_first.write_to(&a_cert, &a_key);
    proxy.signal("HUP");
    proxy.wait_count("configuration reloaded", 2, PATIENCE);
    assert!(sees("localhost") == fourth.der);
    assert!(sees("a.test") == a_first.der);
    echo_once(&mut old, "after everything");
    close_and_drain(&mut old);
    drop(old);
    proxy.assert_fds_at_baseline();
}

// ---------------------------------------------------------------------------
// Start-up errors.

#[test]
fn bad_certificate_files_at_start_exit_2() {
    let pki = Pki::new();
    let leaf = pki.leaf("good", &["localhost"]);
    let other = pki.leaf("other", &["localhost"]);
    let missing = pki.path("missing.pem");
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let base = ["--upstream", "127.0.0.1:9", "--tls-listen", "127.0.0.1:0"];
    let sni_missing = format!("a.test={missing},{}", leaf.key);
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "missing certificate file",
            vec!["--cert", &missing, "--key", &leaf.key],
            vec!["missing.pem"],
        ),
        (
            "missing key file",
            vec!["--cert", &leaf.cert, "--key", &missing],
            vec!["missing.pem"],
        ),
        (
            "garbage certificate",
            vec!["--cert", &garbage, "--key", &leaf.key],
            vec!["garbage.pem"],
        ),
        (
            "garbage key",
            vec!["--cert", &leaf.cert, "--key", &garbage],
            vec!["garbage.pem"],
        ),
        (
            "key of another certificate",
            vec!["--cert", &leaf.cert, "--key", &other.key],
            vec!["match"],
        ),
        ("--tls-listen without a certificate", vec![], vec![]),
        (
            "--sni-cert with a missing file",
            vec![
                "--cert",
                &leaf.cert,
                "--key",
                &leaf.key,
                "--sni-cert",
                &sni_missing,
            ],
            vec!["missing.pem"],
        ),
    ];
    for (what, args, mentions) in cases {
        let all: Vec<&str> = base.iter().copied().chain(args).collect();
        let (code, stderr) = run_to_exit(&all, PATIENCE);
        assert_eq!(code, Some(2), "{what}: {all:?}: {stderr}");
        assert!(!stderr.trim().is_empty(), "{what}: no message");
        for m in mentions {
            assert!(
                stderr
                    .to_ascii_lowercase()
                    .contains(&m.to_ascii_lowercase()),
                "{what}: the message names {m:?}: {stderr}"
            );
        }
    }
    // --upstream-ca that does not exist.
    let (code, stderr) = run_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "wss://127.0.0.1:9",
            "--upstream-ca",
            &missing,
        ],
        PATIENCE,
    );
    assert_eq!(code, Some(2), "missing --upstream-ca: {stderr}");
    assert!(stderr.contains("missing.pem"), "{stderr}");
}

// ---------------------------------------------------------------------------
// TLS to the backend.

/// A TLS echo backend with a certificate for `names` from `pki`.
fn tls_backend(pki: &Pki, names: &[&str]) -> Backend {
    Backend::tls_echo(pki.leaf("backend", names).server_config())
}

fn wss_upstream_proxy(addr: SocketAddr, host: &str, extra: &[&str]) -> Proxy {
    let upstream = format!("wss://{host}:{}", addr.port());
    let mut args = vec!["--upstream", &upstream];
    args.extend_from_slice(extra);
    Proxy::start(&args)
}

#[test]
fn wss_upstream_verified_against_upstream_ca() {
    let pki = Pki::new();
    let backend = tls_backend(&pki, &["127.0.0.1"]);
    let proxy = wss_upstream_proxy(backend.addr, "127.0.0.1", &["--upstream-ca", &pki.ca_file]);
    let mut ws = ws_client(&proxy, "/ws");
    echo_once(&mut ws, "through TLS to the backend");
    let big = payload(3 << 20, 9);
    ws.send(Message::Binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Binary(big));
    close_and_drain(&mut ws);
    drop(ws);
    assert_eq!(
        *backend.tls_names.lock().unwrap(),
        vec![None],
        "no SNI for an IP address"
    );
    let seen = &backend.wait_requests(1)[0];
    assert_eq!(header(seen, "x-forwarded-proto"), Some("http"));
    proxy.wait_log("tunnel client=", PATIENCE).unwrap();
    proxy.assert_fds_at_baseline();
}

#[test]
fn wss_upstream_by_name_sends_sni() {
    let pki = Pki::new();
    let backend = tls_backend(&pki, &["localhost"]);
    let proxy = wss_upstream_proxy(backend.addr, "localhost", &["--upstream-ca", &pki.ca_file]);
    let mut ws = ws_client(&proxy, "/ws");
    echo_once(&mut ws, "by name");
    close_and_drain(&mut ws);
    drop(ws);
    assert_eq!(
        *backend.tls_names.lock().unwrap(),
        vec![Some("localhost".to_string())]
    );
    proxy.assert_fds_at_baseline();
}

#[test]
fn wss_client_to_wss_backend() {
    let pki = Pki::new();
    let backend = tls_backend(&pki, &["127.0.0.1"]);
    let leaf = pki.leaf("front", &["localhost"]);
    let upstream = format!("wss://127.0.0.1:{}", backend.addr.port());
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream,
        "--upstream-ca",
        &pki.ca_file,
        "--tls-listen",
        "127.0.0.1:0",
        "--cert",
        &leaf.cert,
        "--key",
        &leaf.key,
    ]);
    let mut ws = TlsClient::new(pki.ca_der()).ws(proxy.tls(), Some("localhost"), "/ws");
    fragments_ping_and_backend_close(&mut ws);
    drop(ws);
    let mut ws = TlsClient::new(pki.ca_der()).ws(proxy.tls(), Some("localhost"), "/ws");
    for len in [0, 70_000, 5 << 20] {
        let data = payload(len, 3);
        ws.send(Message::Binary(data.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::Binary(data), "{len}");
    }
    close_and_drain(&mut ws);
    drop(ws);
    let seen = &backend.wait_requests(2)[1];
    assert_eq!(header(seen, "x-forwarded-proto"), Some("https"));
    proxy.assert_fds_at_baseline();
}

/// A 502 whose log names the certificate problem, and no request at the
/// backend.
fn expect_certificate_502(proxy: &Proxy, backend: &Backend) {
    let before = proxy.logs().len();
    let resp = raw_exchange(proxy.addr, upgrade_head("/ws", "").as_bytes());
    assert_eq!(status_of(&resp), 502, "{}", String::from_utf8_lossy(&resp));
    proxy.wait_log("status=502", PATIENCE).unwrap();
    let logs = proxy.logs();
    assert!(
        logs[before..]
            .iter()
            .any(|l| l.to_ascii_lowercase().contains("certificate")),
        "a log line names the certificate: {logs:#?}"
    );
    assert!(backend.requests.lock().unwrap().is_empty());
    assert!(backend.tls_names.lock().unwrap().is_empty());
}

#[test]
fn wss_upstream_with_an_unknown_ca_or_wrong_name_is_502() {
    let pki = Pki::new();
    let other_ca = Pki::new();
    // Issued by a CA ringway does not trust.
    let backend = tls_backend(&pki, &["127.0.0.1"]);
    let proxy = wss_upstream_proxy(
        backend.addr,
        "127.0.0.1",
        &["--upstream-ca", &other_ca.ca_file],
    );
    expect_certificate_502(&proxy, &backend);
    proxy.assert_fds_at_baseline();
    drop(proxy);

    // Trusted CA, but no IP SAN for the address (only a DNS name).
    let backend = tls_backend(&pki, &["localhost"]);
    let proxy = wss_upstream_proxy(backend.addr, "127.0.0.1", &["--upstream-ca", &pki.ca_file]);
    expect_certificate_502(&proxy, &backend);
    proxy.assert_fds_at_baseline();

    // Without --upstream-ca: system roots do not know the test CA.
    let backend = tls_backend(&pki, &["127.0.0.1"]);
    let proxy = wss_upstream_proxy(backend.addr, "127.0.0.1", &[]);
    expect_certificate_502(&proxy, &backend);
    proxy.assert_fds_at_baseline();
}

#[test]
fn wss_upstream_insecure_skips_verification() {
    let pki = Pki::new();
    // Neither the CA (not given to ringway, not a system root) nor the name
    // would verify.
    let backend = tls_backend(&pki, &["somewhere.else"]);
    let proxy = wss_upstream_proxy(backend.addr, "127.0.0.1", &["--upstream-insecure"]);
    let mut ws = ws_client(&proxy, "/ws");
    echo_once(&mut ws, "unverified");
    let big = payload(1 << 20, 5);
    ws.send(Message::Binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Binary(big));
    close_and_drain(&mut ws);
    drop(ws);
    assert_eq!(backend.tls_names.lock().unwrap().len(), 1);
    proxy.assert_fds_at_baseline();
}

// ---------------------------------------------------------------------------
// Tunnel lifetime with TLS on the client side.

#[test]
fn idle_and_vanishing_wss_clients_are_cleaned_up() {
    let backend = Backend::echo();
    let (pki, _, proxy) = tls_proxy(&backend, &["--idle-timeout", "700ms"]);
    let client = TlsClient::new(pki.ca_der());
    let mut ws = client.ws(proxy.tls(), Some("localhost"), "/ws");
    // Traffic for twice the timeout keeps it open...
    let busy_until = Instant::now() + Duration::from_millis(1400);
    while Instant::now() < busy_until {
        echo_once(&mut ws, "tick");
        std::thread::sleep(Duration::from_millis(150));
    }
    // ...silence closes it.
    let started = Instant::now();
    let end = ws.read();
    assert!(
        !matches!(end, Ok(Message::Text(_) | Message::Binary(_))),
        "{end:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    proxy.wait_log("idle timeout", PATIENCE).unwrap();
    drop(ws);

    // A client that leaves in the middle of a big message, and one that
    // leaves in the middle of its TLS handshake.
    let mut ws = client.ws(proxy.tls(), Some("localhost"), "/ws");
    let _ = ws.write(Message::Binary(payload(4 << 20, 1)));
    let _ = ws.flush();
    drop(ws);
    let hello = client_hello(0x0303);
    let mut s = TcpStream::connect(proxy.tls()).unwrap();
    s.write_all(&hello[..20]).unwrap();
    drop(s);
    proxy.assert_fds_at_baseline();
}

#[test]
fn sigterm_drains_wss_tunnels_then_closes_them() {
    let backend = Backend::echo();
    let (pki, _, mut proxy) = tls_proxy(&backend, &["--drain-timeout", "1s"]);
    let client = TlsClient::new(pki.ca_der());
    let mut ws = client.ws(proxy.tls(), Some("localhost"), "/ws");
    echo_once(&mut ws, "before");
    let started = Instant::now();
    proxy.signal("TERM");
    proxy.wait_log("no longer accepting", PATIENCE).unwrap();
    echo_once(&mut ws, "during the drain");
    let end = ws.read();
    assert!(
        !matches!(end, Ok(Message::Text(_) | Message::Binary(_))),
        "{end:?}"
    );
    let status = proxy.wait_exit(PATIENCE).expect("exits after the drain");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        proxy.count_logs("closed=\"closed at shutdown\""),
        1,
        "{:#?}",
        proxy.logs()
    );
}

/// A stream whose writes go out a few bytes at a time, each in its own
/// segment, while `.1` is true.
struct Trickle(TcpStream, bool);

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.1 {
            return self.0.write(buf);
        }
        let n = self.0.write(&buf[..buf.len().min(7)])?;
        std::thread::sleep(Duration::from_micros(300));
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[test]
fn a_trickled_handshake_and_one_byte_records_work() {
    let backend = Backend::echo();
    let (pki, leaf, proxy) = tls_proxy(&backend, &[]);
    let sock = TcpStream::connect(proxy.tls()).unwrap();
    sock.set_nodelay(true).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn =
        rustls::ClientConnection::new(TlsClient::new(pki.ca_der()).config.clone(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, Trickle(sock, true));
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    assert!(tls.conn.peer_certificates().unwrap()[0].as_ref() == leaf.der);
    // The request head, one TLS record per byte.
    for b in upgrade_head("/ws", "").as_bytes() {
        tls.write_all(&[*b]).unwrap();
        tls.flush().unwrap();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101 "), "{got:?}");
    tls.sock.1 = false;
    let mut ws = tungstenite::WebSocket::from_raw_socket(
        tls,
        tungstenite::protocol::Role::Client,
        Some(big_messages()),
    );
    echo_once(&mut ws, "after a slow start");
    let big = payload(300_000, 4);
    ws.send(Message::Binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Binary(big));
    close_and_drain(&mut ws);
    drop(ws);
    proxy.assert_fds_at_baseline();
}

#[test]
fn close_notify_is_a_half_close_both_ways() {
    // The backend reads until EOF, then answers and closes.
    let backend = half_close_backend();
    let (pki, _, proxy) = tls_proxy(&backend, &[]);
    let (mut tls, got, rest) = tls_upgrade(&pki, &proxy);
    assert!(got.starts_with(b"HTTP/1.1 101 "), "{got:?}");
    assert!(rest.is_empty());
    tls.write_all(b"twelve bytes").unwrap();
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    // The backend saw our end while its own direction stayed open; its end
    // comes back as close_notify.
    let (tail, clean) = tls_exchange(&mut tls, b"");
    assert_eq!(String::from_utf8_lossy(&tail), "after-eof:12");
    assert!(clean, "the backend's end should arrive as close_notify");
    let line = proxy.wait_log("tunnel client=", PATIENCE).unwrap();
    assert!(line.contains("closed=\"client closed\""), "{line}");
    drop(tls);
    proxy.assert_fds_at_baseline();
}

#[test]
fn a_small_buffer_and_key_updates_do_not_disturb_wss() {
    let backend = Backend::echo();
    let (pki, _, proxy) = tls_proxy(&backend, &["--buffer-size", "4096"]);
    let client = TlsClient::with(
        pki.ca_der(),
        &[&rustls::version::TLS13],
        &[b"http/1.1"],
        true,
    );
    let mut ws = client.ws(proxy.tls(), Some("localhost"), "/ws");
    for round in 0..3u8 {
        for len in [10, 5000, 20_000, 1 << 20] {
            let data = payload(len, round);
            ws.send(Message::Binary(data.clone())).unwrap();
            assert_eq!(ws.read().unwrap(), Message::Binary(data), "{len}");
        }
        // TLS 1.3 KeyUpdate (asking ringway to update its keys too).
        ws.get_mut().conn.refresh_traffic_keys().unwrap();
    }
    close_and_drain(&mut ws);
    drop(ws);
    proxy.assert_fds_at_baseline();
}

#[test]
fn a_backend_that_stalls_its_tls_handshake_is_504() {
    // Accepts, reads the ClientHello, never answers.
    let backend = Backend::spawn(|mut s, _| {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        std::thread::sleep(Duration::from_secs(4));
    });
    let upstream = format!("wss://127.0.0.1:{}", backend.addr.port());
    let proxy = Proxy::start(&[
        "--upstream",
        &upstream,
        "--upstream-insecure",
        "--connect-timeout",
        "500ms",
    ]);
    let started = Instant::now();
    let resp = raw_exchange(proxy.addr, upgrade_head("/ws", "").as_bytes());
    assert_eq!(status_of(&resp), 504, "{}", String::from_utf8_lossy(&resp));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    proxy.wait_log("status=504", PATIENCE).unwrap();
    proxy.assert_fds_at_baseline();
}

#[test]
fn a_backend_failing_verification_is_skipped_for_the_next() {
    let pki = Pki::new();
    let good = tls_backend(&pki, &["127.0.0.1"]);
    let bad = Backend::tls_echo(Pki::new().leaf("bad", &["127.0.0.1"]).server_config());
    let (good_up, bad_up) = (
        format!("wss://127.0.0.1:{}", good.addr.port()),
        format!("wss://127.0.0.1:{}", bad.addr.port()),
    );
    let proxy = Proxy::start(&[
        "--upstream",
        &bad_up,
        "--upstream",
        &good_up,
        "--upstream-ca",
        &pki.ca_file,
    ]);
    for i in 0..6 {
        let mut ws = ws_client(&proxy, "/ws");
        echo_once(&mut ws, &format!("client {i}"));
        close_and_drain(&mut ws);
    }
    assert_eq!(good.tls_names.lock().unwrap().len(), 6);
    assert!(bad.requests.lock().unwrap().is_empty());
    assert!(
        *bad.accepted.lock().unwrap() >= 1,
        "the bad backend was tried"
    );
    proxy.assert_fds_at_baseline();
}

#[test]
fn tls_sessions_are_resumed_with_two_workers() {
    let backend = Backend::echo();
    let (pki, leaf, proxy) = tls_proxy(&backend, &[]);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let client = TlsClient::with(pki.ca_der(), &[version], &[b"http/1.1"], true).resuming();
        let mut kinds = Vec::new();
        for i in 0..8 {
            let mut ws = client.ws(proxy.tls(), Some("localhost"), "/ws");
            kinds.push(ws.get_ref().conn.handshake_kind());
            assert!(leaf_seen(ws.get_ref()) == leaf.der);
            echo_once(&mut ws, &format!("connection {i}"));
            close_and_drain(&mut ws);
        }
        assert_eq!(
            kinds[0],
            Some(rustls::HandshakeKind::Full),
            "{:?}",
            version.version
        );
        assert!(
            kinds[1..]
                .iter()
                .all(|k| *k == Some(rustls::HandshakeKind::Resumed)),
            "{:?}: {kinds:?}",
            version.version
        );
    }
    proxy.assert_fds_at_baseline();
}

/// `ringway demo` serves the page and an echo over ws:// and wss://, with the
/// certificate of the CA it prints, and removes its files when it stops.
#[test]
fn the_demo_serves_ws_and_wss_with_the_printed_ca() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringway"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
        ])
        .args(["--workers", "1", "--log-level", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ringway demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut http, mut wss, mut ca) = (None, None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "Open") {
            http = Some(words[i + 1].to_string());
        }
        if let Some(i) = words.iter().position(|w| *w == "--cacert") {
            wss = Some(words[0].to_string());
            ca = Some(std::path::PathBuf::from(words[i + 1]));
        }
        if line.contains("Ctrl-C") {
            break;
        }
    }
    let (http, wss, ca) = (http.unwrap(), wss.unwrap(), ca.unwrap());
    // http://127.0.0.1:PORT/ and https://localhost:PORT/ws
    let plain: SocketAddr = http["http://".len()..]
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let port: u16 = wss["https://localhost:".len()..]
        .trim_end_matches("/ws")
        .parse()
        .unwrap();
    let tls_at: SocketAddr = ([127, 0, 0, 1], port).into();

    let (mut ws, _) = tungstenite::connect(format!("ws://{plain}/ws")).unwrap();
    ws.send(Message::text("over ws")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("over ws"));

    let pem = std::fs::read(&ca).unwrap();
    use rustls::pki_types::pem::PemObject;
    let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    let client = TlsClient::new(&ca_der);
    for sni in [Some("localhost"), None] {
        let mut wss = client.ws(tls_at, sni, "/ws");
        wss.send(Message::text("over wss")).unwrap();
        assert_eq!(wss.read().unwrap(), Message::text("over wss"));
    }
    drop(ws); // the drain would wait for it

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the demo did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!ca.exists(), "the demo left {} behind", ca.display());
}
