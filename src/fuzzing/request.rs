//! The `request` target: [`crate::proto::http::request::prepare`] against
//! an oracle written here from RFC 9110/9112 and RFC 6455, on the same
//! httparse reading of the head.

use std::net::{IpAddr, Ipv4Addr};

use super::{cuts, seed_of};
use crate::policy::limits::{self, Cidr};
use crate::proto::http::body::{Chunked, Framing};
use crate::proto::http::request::TARGET_LOG_MAX;
// The header lists are the policy under test, taken as they are; what the
// oracle states independently is how they apply (`forwarded`).
use crate::proto::http::request::{
    prepare, ClientInfo, HandshakeError, Kind, Prepared, DROPPED, MAX_CONNECTION_TOKENS, PROTECTED,
};
use crate::proto::http::{has_token, path, tokens, trim, MAX_HEADERS};
use crate::proto::ws::base64;

/// The head limit the target runs `prepare` with.
const MAX_HEAD: usize = 16 * 1024;

/// The request head target. For two clients (an untrusted IPv4 one over
/// http, an IPv6 one over https behind trusted proxies), `prepare` must:
///
/// - agree with httparse on complete, partial and invalid heads, ask for
///   more (`Ok(None)`) only below the head limit, and at every cut before
///   a complete head's end;
/// - accept a complete head exactly when the oracle finds nothing wrong in
///   it (one Host, required on HTTP/1.1; Content-Length digits only and all
///   alike; one Transfer-Encoding ending in `chunked`, never with a
///   Content-Length; one Origin; at most 16 Connection options; a valid
///   chunked body so far; and for a WebSocket upgrade GET, HTTP/1.1,
///   `Connection: upgrade`, one canonical 16-byte base64 key, version 13),
///   and refuse it with an error of the class of a fault present;
/// - rewrite it to exactly: the request line as sent (`HTTP/1.1`), every
///   header that is not hop-by-hop, not ringway's own and not named by
///   `Connection` (Host, Content-Length and Transfer-Encoding always)
///   byte-identical and in order, then `X-Forwarded-For` (every earlier
///   value, then the peer), `Host: localhost` for a head without one,
///   `Upgrade`/`Connection`, `X-Real-IP`, `X-Forwarded-Proto`; a head that
///   httparse reads back as the same request;
/// - forward exactly the body bytes its headers frame (none for an
///   upgrade, whose bytes behind the head are held whole) and report what
///   is left of the body consistently with them;
/// - keep the facts routing needs as sent, and refuse the same head under
///   a limit one byte shorter than it.
pub fn request(data: &[u8]) {
    let trusted: [Cidr; 2] = [
        "2001:db8::/32".parse().expect("a CIDR"),
        "10.0.0.0/8".parse().expect("a CIDR"),
    ];
    let clients = [
        ClientInfo {
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            proto: "http",
            trusted: &[],
        },
        ClientInfo {
            ip: "2001:db8::1".parse().expect("an address"),
            proto: "https",
            trusted: &trusted,
        },
    ];
    for client in &clients {
        check(data, client);
    }
}

fn check(data: &[u8], client: &ClientInfo<'_>) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = req.parse(data);
    let got = prepare(data, MAX_HEAD, client);
    let head_len = match (parsed, &got) {
        (Ok(httparse::Status::Partial), Ok(None)) => {
            assert!(data.len() < MAX_HEAD, "asks for more past the limit");
            return;
        }
        (Ok(httparse::Status::Partial), Err(HandshakeError::TooLarge(_))) => {
            assert!(data.len() >= MAX_HEAD, "too large below the limit");
            return;
        }
        (Err(httparse::Error::TooManyHeaders), Err(HandshakeError::TooManyHeaders)) => return,
        (Err(_), Err(HandshakeError::Malformed(_))) => return,
        (Ok(httparse::Status::Complete(n)), _) => n,
        (parsed, got) => panic!("httparse: {parsed:?}, prepare: {got:?}"),
    };
    if head_len > MAX_HEAD {
        assert!(matches!(got, Err(HandshakeError::TooLarge(_))), "{got:?}");
        return;
    }
    let rest = &data[head_len..];
    let facts = Oracle::read(&req, rest);
    match got {
        Err(e) => {
            let fault = match e {
                HandshakeError::Malformed(_) => facts.malformed,
                HandshakeError::BadHandshake(_) | HandshakeError::BadVersion => {
                    facts.websocket && facts.bad_handshake
                }
                HandshakeError::TooLarge(_) | HandshakeError::TooManyHeaders => false,
            };
            assert!(
                fault,
                "a head the oracle finds nothing wrong in refused: {e}"
            );
        }
        Ok(None) => panic!("a complete head read as partial"),
        Ok(Some(p)) => {
            let faulty = facts.malformed || (facts.websocket && facts.bad_handshake);
            assert!(!faulty, "a faulty head accepted: {facts:?}");
            check_prepared(data, head_len, &req, &facts, &p, client);
        }
    }
}

/// What the oracle reads in a complete head.
#[derive(Debug)]
struct Oracle<'h> {
    hosts: Vec<&'h [u8]>,
    /// The last `Upgrade` value.
    upgrade: Option<&'h [u8]>,
    /// Every `Connection` option, in order.
    options: Vec<&'h [u8]>,
    /// Every `Content-Length` value, as a number if it is one.
    lengths: Vec<Option<u64>>,
    chunked: bool,
    /// Whether the head is a WebSocket upgrade (`Upgrade` names websocket).
    websocket: bool,
    /// A fault that makes any head malformed (400).
    malformed: bool,
    /// A fault of the WebSocket handshake itself (400 or 426).
    bad_handshake: bool,
}

impl<'h> Oracle<'h> {
    fn read(req: &httparse::Request<'_, 'h>, rest: &[u8]) -> Self {
        let mut o = Oracle {
            hosts: Vec::new(),
            upgrade: None,
            options: Vec::new(),
            lengths: Vec::new(),
            chunked: false,
            websocket: false,
            malformed: false,
            bad_handshake: false,
        };
        let (mut te, mut origins, mut keys, mut version) = (Vec::new(), 0, Vec::new(), None);
        for h in req.headers.iter() {
            let name = h.name.to_ascii_lowercase();
            match name.as_str() {
                "host" => o.hosts.push(h.value),
                "upgrade" => o.upgrade = Some(h.value),
                "connection" => o.options.extend(tokens(h.value)),
                "content-length" => o.lengths.push(decimal(trim(h.value))),
                "transfer-encoding" => te.push(h.value),
                "origin" => origins += 1,
                "sec-websocket-key" => keys.push(trim(h.value)),
                "sec-websocket-version" => version = Some(trim(h.value)),
                _ => {}
            }
        }
        o.chunked = !te.is_empty();
        let te_ok = te.len() <= 1
            && te.iter().all(|v| {
                tokens(v)
                    .last()
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
            });
        let lengths_ok =
            o.lengths.iter().all(Option::is_some) && o.lengths.windows(2).all(|w| w[0] == w[1]);
        o.websocket = o.upgrade.is_some_and(|u| has_token(u, "websocket"));
        let chunks_ok = o.websocket || !o.chunked || {
            let mut f = Framing::Chunked(Chunked::default());
            f.take(rest).is_ok()
        };
        o.malformed = o.hosts.len() > 1
            || (req.version == Some(1) && o.hosts.is_empty())
            || !lengths_ok
            || !te_ok
            || (o.chunked && !o.lengths.is_empty())
            || origins > 1
            || o.options.len() > MAX_CONNECTION_TOKENS
            || !chunks_ok;
        o.bad_handshake = req.method != Some("GET")
            || req.version != Some(1)
            || !o.options.iter().any(|t| t.eq_ignore_ascii_case(b"upgrade"))
            || !matches!(keys[..], [key] if canonical_key(key))
            || version != Some(b"13")
            // A body behind an upgrade (smuggling): refused.
            || o.chunked
            || o.lengths.iter().any(|l| l.is_some_and(|n| n > 0));
        o
    }

    /// Whether a header of this name is passed on as the client sent it.
    fn forwarded(&self, name: &str) -> bool {
        let named = |list: &[&str]| list.iter().any(|n| n.eq_ignore_ascii_case(name));
        if named(DROPPED) {
            return false;
        }
        named(PROTECTED)
            || !self
                .options
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// A Content-Length value: 1-19 ASCII digits (RFC 9110 8.6).
fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Whether `key` is the canonical base64 of 16 bytes (RFC 6455 4.1):
/// decoded and encoded again, it is the same text.
fn canonical_key(key: &[u8]) -> bool {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let Some(body) = key.strip_suffix(b"==") else {
        return false;
    };
    let mut bits: Vec<u8> = Vec::new();
    let (mut acc, mut n) = (0u32, 0);
    for &c in body {
        let Some(v) = ALPHABET.iter().position(|&a| a == c) else {
            return false;
        };
        acc = acc << 6 | v as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            bits.push((acc >> n) as u8);
        }
    }
    bits.len() == 16 && base64(&bits).as_bytes() == key
}

/// The checks of an accepted head.
fn check_prepared(
    data: &[u8],
    head_len: usize,
    req: &httparse::Request<'_, '_>,
    o: &Oracle<'_>,
    p: &Prepared,
    client: &ClientInfo<'_>,
) {
    let method = req.method.expect("a complete head has a method");
    let target = req.path.expect("a complete head has a target");
    let rest = &data[head_len..];
    assert_eq!(p.kind == Kind::Upgrade, o.websocket, "kind");

    // The client address: the peer unless it is a trusted proxy, and then
    // one its X-Forwarded-For headers name.
    let forwarded_for: Vec<&[u8]> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
        .map(|h| trim(h.value))
        .filter(|v| !v.is_empty())
        .collect();
    if p.client_ip != client.ip {
        assert!(limits::trusted(client.trusted, client.ip), "XFF believed");
        let named = forwarded_for
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .filter_map(|item| std::str::from_utf8(trim(item)).ok())
            .filter_map(|item| {
                let addr = item.parse::<std::net::SocketAddr>().map(|a| a.ip());
                item.parse::<IpAddr>().or(addr).ok()
            });
        assert!(
            named
                .map(|ip| ip.to_canonical())
                .any(|ip| ip == p.client_ip),
            "{} named by no X-Forwarded-For",
            p.client_ip
        );
    }

    // The rewritten head, byte for byte.
    let mut want = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
    let mut line = |name: &[u8], value: &[u8]| {
        want.extend_from_slice(name);
        want.extend_from_slice(b": ");
        want.extend_from_slice(value);
        want.extend_from_slice(b"\r\n");
    };
    for h in req.headers.iter().filter(|h| o.forwarded(h.name)) {
        line(h.name.as_bytes(), h.value);
    }
    let mut xff = forwarded_for.join(&b", "[..]);
    if !xff.is_empty() {
        xff.extend_from_slice(b", ");
    }
    xff.extend_from_slice(client.ip.to_string().as_bytes());
    line(b"X-Forwarded-For", &xff);
    if o.hosts.is_empty() {
        line(b"Host", b"localhost");
    }
    match p.kind {
        Kind::Upgrade => {
            line(b"Upgrade", o.upgrade.expect("an upgrade names websocket"));
            line(b"Connection", b"upgrade");
        }
        Kind::Plain => line(b"Connection", b"close"),
    }
    line(b"X-Real-IP", p.client_ip.to_string().as_bytes());
    line(b"X-Forwarded-Proto", client.proto.as_bytes());
    want.extend_from_slice(b"\r\n");
    let head = &p.upstream[..want.len().min(p.upstream.len())];
    assert_eq!(
        String::from_utf8_lossy(head),
        String::from_utf8_lossy(&want),
        "rewritten head"
    );
    reparse(&p.upstream, method, target, want.len());

    // The body: exactly what the headers frame.
    let sent = &p.upstream[want.len()..];
    assert!(rest.starts_with(sent), "forwarded bytes that were not sent");
    match p.kind {
        Kind::Upgrade => {
            assert!(sent.is_empty() && p.body.is_done());
            assert_eq!(p.early, rest, "an upgrade holds what follows its head");
        }
        Kind::Plain if o.chunked => {
            assert!(p.early.is_empty());
            let mut again = Framing::Chunked(Chunked::default());
            assert_eq!(again.take(sent), Ok(sent.len()));
            if p.body.is_done() {
                assert!(again.is_done(), "a chunked body done early");
            } else {
                assert_eq!(sent.len(), rest.len(), "a chunked body cut short");
                assert!(matches!(p.body, Framing::Chunked(_)) && !again.is_done());
            }
        }
        Kind::Plain => {
            assert!(p.early.is_empty());
            let length = o.lengths.first().map_or(0, |n| n.expect("checked"));
            let fwd = length.min(rest.len() as u64);
            assert_eq!(sent.len() as u64, fwd, "body bytes forwarded");
            let left = length - fwd;
            let want = if left == 0 {
                Framing::Done
            } else {
                Framing::Exact(left)
            };
            assert_eq!(p.body, want, "body left");
        }
    }

    // What routing and logs keep.
    let f = &p.facts;
    assert_eq!(&*f.method, method);
    assert_eq!(
        &*f.path,
        target.split(['?', '#']).next().unwrap_or_default()
    );
    assert_eq!(f.host.as_deref(), o.hosts.first().copied());
    assert_eq!(p.head_method, method == "HEAD");
    assert!(target.starts_with(&*p.target) && p.target.len() <= TARGET_LOG_MAX);
    assert!(p.target.len() == target.len() || p.target.len() + 4 > TARGET_LOG_MAX);
    // The connection routes by this path next: it must not panic on it.
    let _ = path::route_path(&f.path);
    let _ = path::normalize(&f.path);

    // Read in pieces, the same head asks for more until it is whole.
    for cut in cuts(head_len, seed_of(data), 4) {
        if cut < head_len {
            assert!(
                matches!(prepare(&data[..cut], MAX_HEAD, client), Ok(None)),
                "cut {cut}"
            );
        }
    }
    let alone = prepare(&data[..head_len], MAX_HEAD, client);
    let alone = alone.expect("the head alone").expect("complete");
    assert_eq!(alone.upstream, want, "the head alone");
    assert!(matches!(
        prepare(data, head_len - 1, client),
        Err(HandshakeError::TooLarge(_))
    ));
}

/// The rewritten head parses back as the same request, `len` bytes long.
fn reparse(upstream: &[u8], method: &str, target: &str, len: usize) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
    let mut again = httparse::Request::new(&mut headers);
    let parsed = again.parse(upstream);
    assert_eq!(parsed, Ok(httparse::Status::Complete(len)), "reparse");
    assert_eq!(again.method, Some(method));
    assert_eq!(again.path, Some(target));
    assert_eq!(again.version, Some(1));
}
