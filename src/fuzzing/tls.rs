//! The `tls_session` target: [`Session`], the server side of a wss://
//! connection on rustls's unbuffered API, fed from byte slices instead of
//! a socket (`Session::handshake_with`, `Session::recv_with`).

use std::io::{self, Read as _, Write as _};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ClientConnection, ServerConfig};

use super::{cuts, seed_of, Input};
use crate::proto::tls::session::{sealed_len, Received, Session, Step, MAX_RECORD, MIN_READ_SPACE};
use crate::proto::tls::{session_cache, CoreTls, NoVerification, ServerTls};
use crate::sys::Xfer;

/// The TLS session target. The first byte picks a case:
///
/// - arbitrary bytes as a client's first flight (a ClientHello, or
///   anything): in any pieces, no panic; a failure is a clean
///   `InvalidData` or `Other` error after which the session refuses every
///   call (it never calls into rustls again); the session's output is
///   whole TLS records; the end of the input then reads as the peer
///   closing; fed whole or in pieces, the outcome is the same (pieces only
///   change whether plain HTTP is recognised, from the first piece);
/// - a real handshake with a rustls client (TLS 1.3 or 1.2, its flights
///   cut into pieces), then the client's records (data of sizes from the
///   input, maybe a key update, maybe close_notify) cut into pieces: the
///   plaintext that comes out is exactly what was sent, the end is seen
///   exactly where it is, the session never keeps more than a record, and
///   what it seals the client opens to the same bytes;
/// - the same with the client's records damaged by the input (bytes
///   inserted, flipped, cut off): no panic, clean errors, and whatever
///   plaintext comes out is a prefix of what the client really sent.
pub fn tls_session(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 4 {
        0 | 1 => first_flight(input.rest()),
        2 => after_handshake(&mut input, false),
        _ => after_handshake(&mut input, true),
    }
}

struct Configs {
    server: Arc<ServerConfig>,
    /// TLS 1.3 and 1.2 (ringway's own backend configuration), and 1.2 only.
    clients: [Arc<ClientConfig>; 2],
}

/// Made once per process: a key pair takes longer than a case.
fn configs() -> &'static Configs {
    static CONFIGS: OnceLock<Configs> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = |name: &str| {
            let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
            let key = PrivateKeyDer::try_from(made.key_pair.serialize_der()).expect("a key");
            let chain = vec![made.cert.der().clone()];
            Arc::new(CertifiedKey::from_der(chain, key, &provider).expect("a pair"))
        };
        // Strict SNI with a named certificate: every name a ClientHello
        // carries goes through the resolver.
        let named = vec![("chat.test".to_string(), pair("chat.test"))];
        let shared = ServerTls::from_keys(pair("localhost"), named, true).expect("server TLS");
        let server = CoreTls::new(&shared, session_cache())
            .expect("core TLS")
            .config();
        let trust = crate::proto::tls::UpstreamTrust {
            ca: None,
            insecure: true,
        };
        let modern = crate::proto::tls::client_config(&trust).expect("client config");
        let tls12 = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("TLS 1.2")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth();
        Configs {
            server,
            clients: [modern, Arc::new(tls12)],
        }
    })
}

/// Buffers as large as the proxy's scratch space.
struct Scratch {
    buf: Vec<u8>,
    plain: Vec<u8>,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            buf: vec![0; MIN_READ_SPACE],
            plain: vec![0; MIN_READ_SPACE],
        }
    }
}

/// A read of the socket that returns up to the first bytes of `piece`
/// (`WouldBlock` for none); how many it gave lands in `given`.
fn read_from<'a>(
    piece: &'a [u8],
    given: &'a mut usize,
) -> impl FnOnce(&mut [u8]) -> io::Result<Xfer> + 'a {
    move |room: &mut [u8]| {
        let n = piece.len().min(room.len());
        room[..n].copy_from_slice(&piece[..n]);
        *given = n;
        Ok(if n == 0 {
            Xfer::WouldBlock
        } else {
            Xfer::Done(n)
        })
    }
}

fn eof(_: &mut [u8]) -> io::Result<Xfer> {
    Ok(Xfer::Eof)
}

/// `bytes` are whole TLS records (what the session sends).
fn whole_records(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let [kind, major, _, hi, lo, ..] = *bytes else {
            panic!("a record header cut short: {bytes:?}");
        };
        assert!(
            (20..=23).contains(&kind) && major == 3,
            "record type {kind}"
        );
        let len = 5 + usize::from(u16::from_be_bytes([hi, lo]));
        assert!(len <= MAX_RECORD && len <= bytes.len(), "record of {len}");
        bytes = &bytes[len..];
    }
}

/// A session failed with `e`: a clean error, and it stays failed.
fn failed(s: &mut Session, scratch: &mut Scratch, e: &io::Error) {
    assert!(
        matches!(e.kind(), io::ErrorKind::InvalidData | io::ErrorKind::Other),
        "{e}"
    );
    whole_records(&s.take_outgoing());
    let mut given = 0;
    let again = s.handshake_with(
        &mut scratch.buf,
        MIN_READ_SPACE,
        read_from(b"x", &mut given),
    );
    assert!(again.is_err(), "a failed session went on");
    let again = s.recv_with(&mut scratch.buf, MIN_READ_SPACE, &mut scratch.plain, eof);
    assert!(again.is_err(), "a failed session went on");
}

/// How a client's first flight ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Still in its handshake (the session waits for more).
    Handshaking,
    Eof,
    PlainHttp,
    Failed,
}

fn first_flight(data: &[u8]) {
    let mut scratch = Scratch::new();
    let whole = handshake(data, &[data.len()], &mut scratch);
    let split = handshake(data, &cuts(data.len(), seed_of(data), 12), &mut scratch);
    if whole != Outcome::PlainHttp && split != Outcome::PlainHttp {
        assert_eq!(whole, split, "whole and in pieces");
    }
}

/// Feed `data` to a new server session as its client's first bytes, in the
/// pieces ending at `cuts`, then the end of the stream.
fn handshake(data: &[u8], cuts: &[usize], scratch: &mut Scratch) -> Outcome {
    let mut s = Session::server(configs().server.clone()).expect("a session");
    let mut at = 0;
    for &cut in cuts {
        let mut piece = &data[at..cut];
        at = cut;
        loop {
            let mut given = 0;
            let step = s.handshake_with(
                &mut scratch.buf,
                MIN_READ_SPACE,
                read_from(piece, &mut given),
            );
            piece = &piece[given..];
            match step {
                Err(e) => {
                    failed(&mut s, scratch, &e);
                    return Outcome::Failed;
                }
                Ok(Step::Eof) => return Outcome::Eof,
                Ok(Step::PlainHttp) => return Outcome::PlainHttp,
                Ok(Step::Progress) => {}
            }
            whole_records(&s.take_outgoing());
            assert!(s.kept() < MIN_READ_SPACE);
            if piece.is_empty() {
                break;
            }
        }
        assert!(s.is_handshaking(), "a handshake finished without a client");
    }
    match s.handshake_with(&mut scratch.buf, MIN_READ_SPACE, eof) {
        Ok(Step::Eof) => Outcome::Handshaking,
        Ok(step) => panic!("the end of the stream read as {step:?}"),
        Err(e) => {
            failed(&mut s, scratch, &e);
            Outcome::Failed
        }
    }
}

/// Everything `client` has to send.
fn client_flight(client: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).expect("a Vec takes everything");
    }
    out
}

/// Hand `bytes` from the server to `client`; the plaintext it reads, and
/// whether the server closed (close_notify).
fn client_reads(client: &mut ClientConnection, mut bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut plain = Vec::new();
    let mut closed = false;
    let mut chunk = [0u8; 4096];
    while !bytes.is_empty() {
        client.read_tls(&mut bytes).expect("client read_tls");
        client
            .process_new_packets()
            .expect("the client accepts the server's records");
        loop {
            match client.reader().read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => plain.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("client read: {e}"),
            }
        }
    }
    (plain, closed)
}

/// A real handshake between a rustls client and a server session, the
/// client's flights cut into pieces.
fn handshake_with_client(
    input: &mut Input<'_>,
    scratch: &mut Scratch,
) -> (ClientConnection, Session) {
    let config = configs().clients[usize::from(input.byte() & 1)].clone();
    let name = ServerName::try_from("localhost").expect("a name");
    let mut client = ClientConnection::new(config, name).expect("a client");
    let mut server = Session::server(configs().server.clone()).expect("a session");
    let seed = u64::from(input.u32());
    for _ in 0..4 {
        let flight = client_flight(&mut client);
        let mut at = 0;
        for cut in cuts(flight.len(), seed, 6) {
            let mut piece = &flight[at..cut];
            at = cut;
            loop {
                let mut given = 0;
                let step = server.handshake_with(
                    &mut scratch.buf,
                    MIN_READ_SPACE,
                    read_from(piece, &mut given),
                );
                piece = &piece[given..];
                assert_eq!(step.expect("a real client's flight"), Step::Progress);
                if piece.is_empty() {
                    break;
                }
            }
        }
        let back = server.take_outgoing();
        whole_records(&back);
        let (plain, closed) = client_reads(&mut client, &back);
        assert!(plain.is_empty() && !closed);
        if !server.is_handshaking() && !client.is_handshaking() {
            return (client, server);
        }
    }
    panic!("the handshake did not finish");
}

fn after_handshake(input: &mut Input<'_>, hostile: bool) {
    let mut scratch = Scratch::new();
    let (mut client, mut server) = handshake_with_client(input, &mut scratch);

    // The client's records: data, maybe a key update, maybe the end.
    let mut sent = Vec::new();
    let writes = input.byte() % 4;
    for _ in 0..writes {
        let len = usize::from(input.u16() % 24_000);
        let data = input.take(len);
        let mut data = data.to_vec();
        data.resize(len, b'd');
        client.writer().write_all(&data).expect("client write");
        sent.extend_from_slice(&data);
        if input.byte().is_multiple_of(5) {
            // TLS 1.3 only; a TLS 1.2 client refuses, which is fine.
            let _ = client.refresh_traffic_keys();
        }
    }
    let close = input.byte().is_multiple_of(2);
    if close {
        client.send_close_notify();
    }
    let mut wire = client_flight(&mut client);
    if hostile {
        damage(&mut wire, input);
    }
    let seed = u64::from(input.u32());

    let mut got = Vec::new();
    let mut at = 0;
    let mut ended = false;
    let mut failure = None;
    'feed: for cut in cuts(wire.len(), seed, 16) {
        let mut piece = &wire[at..cut];
        at = cut;
        loop {
            let mut given = 0;
            let r = server.recv_with(
                &mut scratch.buf,
                MIN_READ_SPACE,
                &mut scratch.plain,
                read_from(piece, &mut given),
            );
            piece = &piece[given..];
            match r {
                Ok(Received { plain, raw, eof }) => {
                    assert_eq!(raw, given, "raw bytes read");
                    got.extend_from_slice(&scratch.plain[..plain]);
                    assert!(server.kept() <= MAX_RECORD, "kept {}", server.kept());
                    ended |= eof;
                    assert!(!ended || plain == 0);
                }
                Err(e) => {
                    failure = Some(e);
                    break 'feed;
                }
            }
            if ended {
                break 'feed;
            }
            // Right after the handshake (and after close_notify) a read
            // takes nothing from the socket: call again.
            if piece.is_empty() && !server.has_pending() {
                break;
            }
        }
    }
    if let Some(e) = failure {
        assert!(hostile, "real records refused: {e}");
        failed(&mut server, &mut scratch, &e);
        assert!(sent.starts_with(&got), "plaintext that was never sent");
        return;
    }
    // The stream ends: once more with the socket closed.
    let last = server.recv_with(&mut scratch.buf, MIN_READ_SPACE, &mut scratch.plain, eof);
    match last {
        Ok(r) => {
            got.extend_from_slice(&scratch.plain[..r.plain]);
            ended |= r.eof;
        }
        Err(e) => {
            assert!(hostile, "real records refused at the end: {e}");
            failed(&mut server, &mut scratch, &e);
            assert!(sent.starts_with(&got), "plaintext that was never sent");
            return;
        }
    }
    if hostile {
        assert!(sent.starts_with(&got), "plaintext that was never sent");
        return;
    }
    assert!(
        got == sent,
        "plaintext: {} bytes sent, {} came out",
        sent.len(),
        got.len()
    );
    assert!(ended, "the end was not seen");
    assert_eq!(server.peer_closed(), close, "close_notify");

    // The other way: what the server seals, the client opens.
    let len = usize::from(input.byte()) * 97 + 1;
    let mut reply = input.take(len).to_vec();
    reply.resize(len, b'r');
    let mut sealed = vec![0; sealed_len(reply.len())];
    let n = server.seal(&reply, &mut sealed).expect("seal");
    let mut back = server.take_outgoing();
    back.extend_from_slice(&sealed[..n]);
    server.close_notify().expect("close_notify");
    back.extend_from_slice(&server.take_outgoing());
    whole_records(&back);
    let (plain, closed) = client_reads(&mut client, &back);
    assert!(plain == reply && closed, "the client read what was sealed");
}

/// Damage `wire` as the input says: bytes inserted, flipped, or the end
/// cut off.
fn damage(wire: &mut Vec<u8>, input: &mut Input<'_>) {
    let edits = 1 + input.byte() % 3;
    for _ in 0..edits {
        let at = usize::from(input.u16()) % (wire.len() + 1);
        match input.byte() % 3 {
            0 => {
                let n = usize::from(input.byte() % 32);
                let bytes = input.take(n).to_vec();
                wire.splice(at..at, bytes);
            }
            1 if at < wire.len() => wire[at] ^= input.byte() | 1,
            _ => wire.truncate(at),
        }
    }
}
