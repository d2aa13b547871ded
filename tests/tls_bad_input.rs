//! Hostile TLS input after a good handshake (found by review): each case
//! once panicked a worker, hung a tunnel or dropped a valid client.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::crypto::cipher::{OutboundChunks, OutboundPlainMessage};
use rustls::pki_types::ServerName;
use rustls::{
    ClientConfig, ClientConnection, ConnectionTrafficSecrets, ContentType, ProtocolVersion,
    RootCertStore,
};

fn proxy_with(backend: &Backend, extra: &[&str]) -> (Pki, Proxy) {
    let pki = Pki::new();
    let leaf = pki.leaf("default", &["localhost", "127.0.0.1"]);
    let proxy = start_tls_proxy(backend, &leaf, extra);
    (pki, proxy)
}

/// TLS 1.3 AES-128-GCM client with secret extraction: opens a wss tunnel, then
/// returns the raw socket and an encrypter for our next records.
fn open_tunnel(
    pki: &Pki,
    proxy: &Proxy,
) -> (
    TcpStream,
    Box<dyn rustls::crypto::cipher::MessageEncrypter>,
    u64,
) {
    let mut roots = RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            pki.ca_der().to_vec(),
        ))
        .unwrap();
    let mut prov = rustls::crypto::ring::default_provider();
    prov.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let mut config = ClientConfig::builder_with_provider(Arc::new(prov))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.enable_secret_extraction = true;
    config.resumption = rustls::client::Resumption::disabled();
    let mut sock = TcpStream::connect(proxy.tls()).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut conn =
        ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    conn.writer()
        .write_all(upgrade_head("/ws", "").as_bytes())
        .unwrap();
    while conn.wants_write() {
        conn.write_tls(&mut sock).unwrap();
    }
    // read the 101 (tickets come first)
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        conn.read_tls(&mut sock).unwrap();
        conn.process_new_packets().unwrap();
        let mut b = [0u8; 4096];
        loop {
            match conn.reader().read(&mut b) {
                Ok(n) if n > 0 => got.extend_from_slice(&b[..n]),
                _ => break,
            }
        }
    }
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let secrets = conn.dangerous_extract_secrets().unwrap();
    let (seq, tx) = secrets.tx;
    let ConnectionTrafficSecrets::Aes128Gcm { key, iv } = tx else {
        panic!()
    };
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .unwrap();
    (sock, suite.aead_alg.encrypter(key, iv), seq)
}

fn record(
    enc: &mut Box<dyn rustls::crypto::cipher::MessageEncrypter>,
    seq: &mut u64,
    typ: ContentType,
    payload: &[u8],
) -> Vec<u8> {
    let m = OutboundPlainMessage {
        typ,
        version: ProtocolVersion::TLSv1_2,
        payload: OutboundChunks::Single(payload),
    };
    let out = enc.encrypt(m, *seq).unwrap().encode();
    *seq += 1;
    out
}

fn check_worker_alive(pki: &Pki, proxy: &Proxy) {
    // With --workers 1, the next client must still be served.
    let c = TlsClient::new(pki.ca_der());
    match c.connect(proxy.tls(), Some("localhost")) {
        Ok(_) => {}
        Err(e) => panic!("next client failed: {e}; logs {:#?}", proxy.logs()),
    }
}

/// Partial KeyUpdate (3 of 4 header bytes) in one record, then an app-data record:
/// rustls errors (interleaved), the kept bytes are lost; the other direction's
/// close_notify then calls process_tls_records with an empty buffer.
#[test]
fn partial_handshake_then_interleaved_app_data() {
    let backend = Backend::echo();
    let (pki, proxy) = proxy_with(&backend, &["--workers", "1"]);
    let (mut sock, mut enc, mut seq) = open_tunnel(&pki, &proxy);
    let mut bytes = record(
        &mut enc,
        &mut seq,
        ContentType::Handshake,
        &[0x18, 0x00, 0x00],
    );
    bytes.extend(record(
        &mut enc,
        &mut seq,
        ContentType::ApplicationData,
        b"x",
    ));
    sock.write_all(&bytes).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    check_worker_alive(&pki, &proxy);
}

/// Partial KeyUpdate record, then a TCP reset: recv() fails after fill() took the kept bytes.
#[test]
fn partial_handshake_then_reset() {
    let backend = Backend::echo();
    let (pki, proxy) = proxy_with(&backend, &["--workers", "1"]);
    let (sock, mut enc, mut seq) = open_tunnel(&pki, &proxy);
    let bytes = record(
        &mut enc,
        &mut seq,
        ContentType::Handshake,
        &[0x18, 0x00, 0x00],
    );
    (&sock).write_all(&bytes).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let s2 = socket2::Socket::from(sock);
    s2.set_linger(Some(Duration::ZERO)).unwrap();
    drop(s2);
    std::thread::sleep(Duration::from_millis(500));
    check_worker_alive(&pki, &proxy);
}

/// Data and close_notify in one TCP segment, no FIN: the half-close is never passed on.
#[test]
fn data_and_close_notify_in_one_segment() {
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let tx = std::sync::Mutex::new(tx);
    let backend = Backend::spawn(move |mut s, _| {
        let (_, mut got) = read_head(&mut s);
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {
                    tx.lock().unwrap().send(usize::MAX).unwrap();
                    return;
                }
            }
        }
        tx.lock().unwrap().send(got.len()).unwrap();
    });
    let (pki, proxy) = proxy_with(&backend, &[]);
    let (mut tls, _, _) = tls_upgrade(&pki, &proxy);
    std::thread::sleep(Duration::from_millis(100));
    tls.conn.writer().write_all(b"twelve bytes").unwrap();
    tls.conn.send_close_notify();
    let mut wire = Vec::new();
    while tls.conn.wants_write() {
        tls.conn.write_tls(&mut wire).unwrap();
    }
    tls.sock.write_all(&wire).unwrap();
    let r = rx.recv_timeout(Duration::from_secs(8)).unwrap();
    assert_eq!(
        r, 12,
        "backend did not see EOF within 5 s (usize::MAX = read timed out)"
    );
}

/// Finished + a large request in one flight: the plaintext held back at the end
/// of the handshake plus a full read can exceed the aux buffer.
#[test]
fn big_request_right_after_finished() {
    const BODY: usize = 300_000;
    let backend = Backend::spawn(move |mut s, _| {
        let (_, mut got) = read_head(&mut s);
        let mut buf = [0u8; 65536];
        while got.len() < BODY {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let msg = format!("got {}", got.len());
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{msg}",
            msg.len()
        );
    });
    let (pki, proxy) = proxy_with(&backend, &[]);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let client = TlsClient::with(pki.ca_der(), &[version], &[b"http/1.1"], true);
        let sock = TcpStream::connect(proxy.tls()).unwrap();
        sock.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut conn = ClientConnection::new(
            client.config.clone(),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        conn.set_buffer_limit(None);
        let mut req =
            format!("POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY}\r\n\r\n").into_bytes();
        req.extend(std::iter::repeat_n(b'a', BODY));
        conn.writer().write_all(&req).unwrap();
        let mut stream = rustls::StreamOwned::new(conn, sock);
        let (out, clean) = tls_exchange(&mut stream, b"");
        eprintln!(
            "{version:?}: {:?} clean={clean}",
            String::from_utf8_lossy(&out)
        );
        for l in proxy
            .logs()
            .iter()
            .filter(|l| l.contains("ringway::conn") || l.contains("client="))
        {
            eprintln!("LOG {l}");
        }
        assert!(
            String::from_utf8_lossy(&out).contains(&format!("got {BODY}")),
            "{version:?}"
        );
    }
}

/// A client that starts a handshake message after the handshake and never
/// finishes it may not make its idle connection hold more than a record:
/// the connection is closed and the worker goes on.
#[test]
fn an_unfinished_message_larger_than_a_record_is_refused() {
    let backend = Backend::echo();
    let (pki, proxy) = proxy_with(&backend, &["--workers", "1"]);
    let (mut sock, mut enc, mut seq) = open_tunnel(&pki, &proxy);
    // A KeyUpdate header announcing 60 KiB, then 20 KiB of it in two records.
    let mut bytes = record(
        &mut enc,
        &mut seq,
        ContentType::Handshake,
        &[0x18, 0x00, 0xf0, 0x00],
    );
    for _ in 0..2 {
        bytes.extend(record(
            &mut enc,
            &mut seq,
            ContentType::Handshake,
            &[0u8; 10 * 1024],
        ));
    }
    sock.write_all(&bytes).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 4096];
    let started = std::time::Instant::now();
    loop {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => assert!(started.elapsed() < PATIENCE, "still open"),
        }
    }
    assert!(started.elapsed() < PATIENCE, "not closed");
    assert!(
        proxy.wait_log("larger than a record", PATIENCE).is_some(),
        "no log line: {:#?}",
        proxy.logs()
    );
    check_worker_alive(&pki, &proxy);
    drop(sock);
    proxy.assert_fds_at_baseline();
}
