//! The client's request head: validation (RFC 6455 section 4.2.1 for
//! upgrades) and the upstream request, written once into one buffer.
//!
//! The head is parsed by httparse straight from the bytes the connection
//! read; header names and values are never copied except into the output.

use std::io::Write as _;
use std::net::IpAddr;

use super::body::{Chunked, Framing};
use super::status::Status;
use super::{has_token, put_header, tokens, trim, MAX_HEADERS};
use crate::policy::limits::{self, Cidr};

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A valid WebSocket upgrade: tunnel if the backend answers 101.
    Upgrade,
    /// Anything else: forwarded with `Connection: close`, streamed, closed.
    Plain,
}

/// Facts about the connection that the rewrite needs.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo<'a> {
    /// The connection's client address (the TCP peer, or what a trusted
    /// PROXY header said): appended to `X-Forwarded-For`.
    pub ip: IpAddr,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: &'static str,
    /// `--trusted-proxy`: when `ip` is one of these, its `X-Forwarded-For`
    /// names the real client.
    pub trusted: &'a [Cidr],
}

/// A complete, valid request head and the upstream request built from it.
#[derive(Debug)]
pub struct Prepared {
    pub kind: Kind,
    /// The rewritten head, and for a plain request the part of its body that
    /// was read with the head: written to the backend as it is.
    pub upstream: Vec<u8>,
    /// An upgrade's bytes read behind its head (frames sent early): held
    /// until the backend has answered 101, like nginx, so that nothing the
    /// client sends can reach the backend as a request of its own.
    pub early: Vec<u8>,
    /// What is left of a plain request's body after the bytes in `upstream`;
    /// nothing past its end is ever forwarded.
    pub body: Framing,
    /// The request target, for log lines (cut to [`TARGET_LOG_MAX`] bytes).
    pub target: Box<str>,
    /// A `HEAD` request: its response has no body whatever it says.
    pub head_method: bool,
    /// What routing and static files need; boxed, so that a connection's
    /// state keeps one pointer for it, and emptied by the connection before
    /// it connects upstream, so that an idle tunnel keeps none of it.
    pub facts: Box<Facts>,
    /// The client after the trusted-proxy rules: `ip`, or the address its
    /// trusted proxies named in `X-Forwarded-For` (X-Real-IP, limits, ip-hash).
    pub client_ip: IpAddr,
}

/// Facts of the request head that choose where it goes.
#[derive(Debug, Default)]
pub struct Facts {
    pub method: Box<str>,
    /// The target's path (before any `?`), as sent.
    pub path: Box<str>,
    /// The `Host` header's value, for routing by host.
    pub host: Option<Box<[u8]>>,
    /// The `Origin` header, for `--allow-origin`.
    pub origin: Option<Box<str>>,
    /// For static files.
    pub if_modified_since: Option<Box<[u8]>>,
}

/// Longest request target kept for log lines.
pub const TARGET_LOG_MAX: usize = 256;

/// Why a request head is refused; each maps to one status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("invalid WebSocket handshake: {0}")]
    BadHandshake(&'static str),
    #[error("unsupported WebSocket version")]
    BadVersion,
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
}

impl HandshakeError {
    pub fn status(&self) -> Status {
        match self {
            HandshakeError::Malformed(_) | HandshakeError::BadHandshake(_) => Status::BadRequest,
            HandshakeError::BadVersion => Status::UpgradeRequired,
            HandshakeError::TooLarge(_) | HandshakeError::TooManyHeaders => {
                Status::HeaderFieldsTooLarge
            }
        }
    }
}

/// Headers never forwarded as the client sent them: hop-by-hop ones (RFC 9110
/// 7.6.1, and nginx's list: it blanks `Expect` too), and the ones ringway
/// sets itself. `Transfer-Encoding` is kept: the body passes through
/// unchanged, so its framing must too.
pub(crate) const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "expect",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-for",
];

/// Headers that a `Connection` list can never remove: dropping them would
/// break the request's framing or the handshake itself.
pub(crate) const PROTECTED: &[&str] = &["host", "content-length", "transfer-encoding"];

/// Most `Connection` tokens honoured; more is a malformed request.
pub(crate) const MAX_CONNECTION_TOKENS: usize = 16;

/// Parse and validate the request head at the start of `buf`.
///
/// `Ok(None)`: the head is incomplete and `buf` is still under `max_head`
/// bytes, so read more. `Ok(Some(_))`: the upstream request is ready.
pub fn prepare(
    buf: &[u8],
    max_head: usize,
    client: &ClientInfo,
) -> Result<Option<Prepared>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(HandshakeError::TooLarge(max_head))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
        Err(_) => return Err(HandshakeError::Malformed("not an HTTP/1.x request head")),
    };
    if head_len > max_head {
        return Err(HandshakeError::TooLarge(max_head));
    }
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    let version = req.version.unwrap_or_default();
    let headers = &*req.headers;

    let mut host = None;
    let mut upgrade = None;
    let mut connection_upgrade = false;
    let mut content_length = None;
    let mut chunked = false;
    let mut key_count = 0;
    let mut key_ok = false;
    let mut ws_version = None;
    let mut origin = None;
    let mut if_modified_since = None;
    let mut conn_tokens: [&[u8]; MAX_CONNECTION_TOKENS] = [b""; MAX_CONNECTION_TOKENS];
    let mut n_tokens = 0;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err(HandshakeError::Malformed("more than one Host header"));
            }
            host = Some(h.value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = Some(h.value);
        } else if name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"upgrade") {
                    connection_upgrade = true;
                }
                if n_tokens == MAX_CONNECTION_TOKENS {
                    return Err(HandshakeError::Malformed("too many Connection options"));
                }
                conn_tokens[n_tokens] = t;
                n_tokens += 1;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let v = parse_content_length(h.value)
                .ok_or(HandshakeError::Malformed("invalid Content-Length"))?;
            if content_length.is_some_and(|old| old != v) {
                return Err(HandshakeError::Malformed(
                    "conflicting Content-Length headers",
                ));
            }
            content_length = Some(v);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked` as the final coding frames a request body.
            let last = tokens(h.value).last();
            if chunked || !last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")) {
                return Err(HandshakeError::Malformed("unsupported Transfer-Encoding"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key_count += 1;
            key_ok = is_websocket_key(trim(h.value));
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            ws_version = Some(trim(h.value));
        } else if name.eq_ignore_ascii_case("origin") {
            if origin.is_some() {
                return Err(HandshakeError::Malformed("more than one Origin header"));
            }
            origin = Some(trim(h.value));
        } else if name.eq_ignore_ascii_case("if-modified-since") {
            if_modified_since = Some(trim(h.value));
        }
    }
    if version == 1 && host.is_none() {
        return Err(HandshakeError::Malformed("HTTP/1.1 request without Host"));
    }
    if chunked && content_length.is_some() {
        return Err(HandshakeError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }

    // An `Upgrade` that names websocket is a WebSocket handshake and must be a
    // valid one; any other upgrade is not ours to tunnel and goes as a plain
    // request (without its Upgrade header).
    let kind = match upgrade {
        Some(u) if has_token(u, "websocket") => {
            if method != "GET" {
                return Err(HandshakeError::BadHandshake("method is not GET"));
            }
            if version != 1 {
                return Err(HandshakeError::BadHandshake("not HTTP/1.1"));
            }
            if !connection_upgrade {
                return Err(HandshakeError::BadHandshake(
                    "Connection does not contain upgrade",
                ));
            }
            if key_count != 1 || !key_ok {
                return Err(HandshakeError::BadHandshake(
                    "Sec-WebSocket-Key is not one base64 16-byte value",
                ));
            }
            match ws_version {
                None => {
                    return Err(HandshakeError::BadHandshake(
                        "no Sec-WebSocket-Version header",
                    ))
                }
                Some(b"13") => {}
                Some(_) => return Err(HandshakeError::BadVersion),
            }
            // A body behind an upgrade is ambiguous (the backend may take
            // it for the tunnel's first bytes, or a second request): a
            // smuggling vector, refused rather than forwarded.
            if chunked || content_length.is_some_and(|n| n > 0) {
                return Err(HandshakeError::BadHandshake(
                    "an upgrade request must not have a body",
                ));
            }
            Kind::Upgrade
        }
        _ => Kind::Plain,
    };

    let rest = &buf[head_len..];
    let (mut body, early) = match kind {
        Kind::Upgrade => (Framing::Done, rest.to_vec()),
        Kind::Plain if chunked => (Framing::Chunked(Chunked::default()), Vec::new()),
        Kind::Plain => match content_length {
            Some(n) if n > 0 => (Framing::Exact(n), Vec::new()),
            _ => (Framing::Done, Vec::new()),
        },
    };
    let in_head = body
        .take(rest)
        .map_err(|_| HandshakeError::Malformed("malformed chunked body"))?;
    let rest = &rest[..in_head];
    let mut out = Vec::with_capacity(head_len + 160 + rest.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let connection_named = &conn_tokens[..n_tokens];
    for h in headers {
        let name = h.name;
        if DROPPED.iter().any(|d| name.eq_ignore_ascii_case(d)) {
            continue;
        }
        if !PROTECTED.iter().any(|p| name.eq_ignore_ascii_case(p))
            && connection_named
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
        {
            continue;
        }
        put_header(&mut out, name.as_bytes(), h.value);
    }
    // `$proxy_add_x_forwarded_for`: every earlier value, in order, then the
    // client address.
    out.extend_from_slice(b"X-Forwarded-For: ");
    for h in headers {
        if h.name.eq_ignore_ascii_case("x-forwarded-for") && !trim(h.value).is_empty() {
            out.extend_from_slice(trim(h.value));
            out.extend_from_slice(b", ");
        }
    }
    let _ = write!(out, "{}\r\n", client.ip);
    let client_ip = real_client(client, headers);
    if host.is_none() {
        // HTTP/1.0 without Host: the backend still needs one.
        out.extend_from_slice(b"Host: localhost\r\n");
    }
    match kind {
        Kind::Upgrade => {
            put_header(&mut out, b"Upgrade", upgrade.unwrap_or(b"websocket"));
            out.extend_from_slice(b"Connection: upgrade\r\n");
        }
        Kind::Plain => out.extend_from_slice(b"Connection: close\r\n"),
    }
    out.extend_from_slice(b"X-Real-IP: ");
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{client_ip}");
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(client.proto.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(rest);

    let mut cut = target.len().min(TARGET_LOG_MAX);
    while !target.is_char_boundary(cut) {
        cut -= 1;
    }
    Ok(Some(Prepared {
        kind,
        upstream: out,
        early,
        body,
        target: target[..cut].into(),
        head_method: method == "HEAD",
        facts: Box::new(Facts {
            method: method.into(),
            path: target.split(['?', '#']).next().unwrap_or_default().into(),
            host: host.map(Into::into),
            origin: origin.map(|o| String::from_utf8_lossy(o).into()),
            if_modified_since: if_modified_since.map(Into::into),
        }),
        client_ip,
    }))
}

/// nginx's realip with `real_ip_recursive on`: when the connection comes
/// from a trusted proxy, walk `X-Forwarded-For` from the right (the last
/// header's last address first), skipping trusted addresses; the first
/// untrusted one is the client. An unparsable entry ends the walk at the
/// last good address; all trusted gives the leftmost.
fn real_client(client: &ClientInfo<'_>, headers: &[httparse::Header<'_>]) -> IpAddr {
    let mut found = client.ip;
    if !limits::trusted(client.trusted, found) {
        return found;
    }
    let values = headers
        .iter()
        .rev()
        .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"));
    for h in values {
        for item in h.value.rsplit(|&b| b == b',').map(trim) {
            if item.is_empty() {
                continue;
            }
            let Some(ip) = std::str::from_utf8(item).ok().and_then(parse_forwarded_ip) else {
                return found;
            };
            found = ip.to_canonical();
            if !limits::trusted(client.trusted, found) {
                return found;
            }
        }
    }
    found
}

/// An `X-Forwarded-For` element: an address, or one with a port.
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// The request target of a (possibly invalid or partial) head, for log lines:
/// the second word of the first line, cut to [`TARGET_LOG_MAX`] bytes, as
/// sent (bytes that are not UTF-8 become U+FFFD); log lines escape it when
/// they write it (`ops::escape`).
pub fn target_for_log(buf: &[u8]) -> Option<Box<str>> {
    let line = buf.split(|&b| b == b'\n').next()?;
    let target = line.split(|&b| b == b' ').nth(1)?;
    let target = &target[..target.len().min(TARGET_LOG_MAX)];
    let text = String::from_utf8_lossy(target);
    (!text.is_empty()).then(|| text.into())
}

/// A decimal Content-Length (digits only, as RFC 9110 8.6 requires).
pub(crate) fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Is `key` the base64 encoding of exactly 16 bytes (RFC 6455 4.1)? That is 22
/// base64 characters, the 22nd carrying no stray bits, and `==`.
fn is_websocket_key(key: &[u8]) -> bool {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if key.len() != 24 || &key[22..] != b"==" {
        return false;
    }
    let value = |c: u8| ALPHABET.iter().position(|&a| a == c);
    // The last character encodes 2 data bits followed by 4 zero bits.
    key[..22].iter().all(|&c| value(c).is_some()) && value(key[21]).is_some_and(|v| v & 0xF == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: ClientInfo = ClientInfo {
        ip: IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)),
        proto: "http",
        trusted: &[],
    };

    const WS: &[u8] = b"GET /chat?room=1 HTTP/1.1\r\n\
Host: example.com:8080\r\n\
Upgrade: websocket\r\n\
Connection: keep-alive, Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
Origin: http://example.com\r\n\r\n";

    fn ok(buf: &[u8]) -> Prepared {
        prepare(buf, 16 * 1024, &CLIENT).unwrap().unwrap()
    }

    fn err(buf: &[u8]) -> HandshakeError {
        prepare(buf, 16 * 1024, &CLIENT).unwrap_err()
    }

    fn with(replace: &str, by: &str) -> Vec<u8> {
        let s = std::str::from_utf8(WS).unwrap();
        assert!(s.contains(replace), "fixture lacks {replace}");
        s.replacen(replace, by, 1).into_bytes()
    }

    #[test]
    fn upgrade_is_rewritten_exactly() {
        let p = ok(WS);
        assert_eq!(p.kind, Kind::Upgrade);
        assert_eq!(&*p.target, "/chat?room=1");
        assert_eq!(
            std::str::from_utf8(&p.upstream).unwrap(),
            "GET /chat?room=1 HTTP/1.1\r\n\
Host: example.com:8080\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
Origin: http://example.com\r\n\
X-Forwarded-For: 192.0.2.7\r\n\
Upgrade: websocket\r\n\
Connection: upgrade\r\n\
X-Real-IP: 192.0.2.7\r\n\
X-Forwarded-Proto: http\r\n\r\n"
        );
    }

    #[test]
    fn an_upgrade_holds_the_bytes_behind_its_head() {
        let mut buf = WS.to_vec();
        buf.extend_from_slice(b"\x81\x85frameGET /admin HTTP/1.1\r\n\r\n");
        let p = ok(&buf);
        assert!(
            p.upstream.ends_with(b"\r\n\r\n"),
            "nothing behind the head goes up"
        );
        assert_eq!(p.early, b"\x81\x85frameGET /admin HTTP/1.1\r\n\r\n");
        assert!(p.body.is_done());
    }

    #[test]
    fn an_upgrade_with_a_body_is_refused() {
        for framing in [
            "Content-Length: 5\r\n",
            "Transfer-Encoding: chunked\r\n",
            "Transfer-Encoding: gzip, chunked\r\n",
        ] {
            let buf = with("Origin", &format!("{framing}Origin"));
            let e = err(&buf);
            assert_eq!(e.status().code(), 400, "{framing}");
            assert!(e.to_string().contains("must not have a body"), "{e}");
        }
        // An empty body says nothing ambiguous.
        assert_eq!(
            ok(&with("Origin", "Content-Length: 0\r\nOrigin")).kind,
            Kind::Upgrade
        );
    }

    #[test]
    fn a_plain_request_forwards_its_body_and_nothing_after_it() {
        let p = ok(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /smuggled HTTP/1.1\r\n\r\n");
        assert!(p.upstream.ends_with(b"\r\n\r\nhello"));
        assert!(p.body.is_done() && p.early.is_empty());
        let p = ok(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhello");
        assert_eq!(p.body, Framing::Exact(5));
        let p = ok(b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /x HTTP/1.1\r\n\r\n");
        assert!(p.upstream.ends_with(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"));
        assert!(p.body.is_done());
        let p = ok(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
        assert!(p.upstream.ends_with(b"\r\n\r\n") && p.body.is_done());
        assert_eq!(
            err(b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n")
                .status()
                .code(),
            400
        );
        assert_eq!(
            err(b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
                .status()
                .code(),
            400
        );
    }

    #[test]
    fn forwarded_for_is_appended_in_order() {
        let buf = with(
            "Origin",
            "X-Forwarded-For: 10.0.0.1\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-For: 10.0.0.2, 10.0.0.3\r\nOrigin",
        );
        let out = String::from_utf8(ok(&buf).upstream).unwrap();
        assert!(out.contains("\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7\r\n"));
        assert_eq!(out.matches("X-Forwarded-For").count(), 1);
        assert_eq!(out.matches("X-Real-IP").count(), 1);
        assert!(out.contains("\r\nX-Real-IP: 192.0.2.7\r\n"));
        // The last header being the forwarded-for list closes it too.
        let buf = with(
            "Origin: http://example.com\r\n",
            "X-Forwarded-For: 10.0.0.1\r\n",
        );
        let out = String::from_utf8(ok(&buf).upstream).unwrap();
        assert!(out.contains("\r\nX-Forwarded-For: 10.0.0.1, 192.0.2.7\r\nUpgrade"));
        // Two lists with other headers between them still make one.
        let buf = with(
            "Origin",
            "X-Forwarded-For: 10.0.0.1\r\nX-Other: 1\r\nX-Forwarded-For: 10.0.0.2\r\nOrigin",
        );
        let out = String::from_utf8(ok(&buf).upstream).unwrap();
        assert!(out.contains("\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\n"));
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let buf = with(
            "Connection: keep-alive, Upgrade",
            "Connection: keep-alive, Upgrade, X-Secret, Host\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Secret: 1\r\nExpect: 100-continue\r\nProxy-Connection: x",
        );
        let out = String::from_utf8(ok(&buf).upstream).unwrap();
        for gone in [
            "Keep-Alive",
            "TE:",
            "X-Secret",
            "Expect",
            "Proxy-Connection",
            "keep-alive",
        ] {
            assert!(!out.contains(gone), "{gone} still in {out}");
        }
        assert!(
            out.contains("Host: example.com:8080\r\n"),
            "Host is protected"
        );
        assert_eq!(out.matches("Connection:").count(), 1);
    }

    #[test]
    fn plain_requests_get_connection_close() {
        let p = ok(b"POST /api HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc");
        assert!(p.body.is_done());
        assert_eq!(p.kind, Kind::Plain);
        let out = String::from_utf8(p.upstream).unwrap();
        assert!(out.contains("\r\nConnection: close\r\n"));
        assert!(out.contains("\r\nContent-Length: 3\r\n"));
        assert!(!out.contains("keep-alive"));
        assert!(out.ends_with("\r\n\r\nabc"));
        assert!(!ok(b"GET / HTTP/1.0\r\n\r\n").head_method);
        assert!(ok(b"HEAD / HTTP/1.0\r\n\r\n").head_method);
        let other = ok(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n");
        assert_eq!(other.kind, Kind::Plain);
        assert!(!String::from_utf8(other.upstream).unwrap().contains("h2c"));
    }

    #[test]
    fn x_forwarded_for_names_the_client_only_from_a_trusted_peer() {
        let trusted: Vec<Cidr> = vec![
            "192.0.2.0/24".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let from = |ip: &str, xff: &[&str]| {
            let c = ClientInfo {
                ip: ip.parse().unwrap(),
                proto: "http",
                trusted: &trusted,
            };
            let mut head = String::from("GET /x HTTP/1.1\r\nHost: h\r\n");
            for v in xff {
                head.push_str(&format!("X-Forwarded-For: {v}\r\n"));
            }
            head.push_str("\r\n");
            let p = prepare(head.as_bytes(), 16384, &c).unwrap().unwrap();
            let out = String::from_utf8(p.upstream).unwrap();
            assert!(
                out.contains(&format!("X-Real-IP: {}\r\n", p.client_ip)),
                "{out}"
            );
            (p.client_ip.to_string(), out)
        };
        // A trusted peer: the rightmost untrusted address.
        assert_eq!(from("192.0.2.7", &["203.0.113.9"]).0, "203.0.113.9");
        assert_eq!(
            from("192.0.2.7", &["198.51.100.1, 203.0.113.9, 10.1.1.1"]).0,
            "203.0.113.9"
        );
        assert_eq!(
            from("192.0.2.7", &["198.51.100.1", "203.0.113.9, 10.1.1.1"]).0,
            "203.0.113.9"
        );
        assert_eq!(
            from("192.0.2.7", &["10.0.0.1, 10.0.0.2"]).0,
            "10.0.0.1",
            "all trusted: leftmost"
        );
        assert_eq!(from("192.0.2.7", &["junk, 203.0.113.9"]).0, "203.0.113.9");
        assert_eq!(
            from("192.0.2.7", &["203.0.113.9, junk"]).0,
            "192.0.2.7",
            "stops at junk"
        );
        assert_eq!(from("192.0.2.7", &["[2001:db8::5]:443"]).0, "2001:db8::5");
        assert_eq!(from("192.0.2.7", &[]).0, "192.0.2.7");
        // An untrusted peer's header is only passed along.
        let (ip, out) = from("198.51.100.77", &["203.0.113.9"]);
        assert_eq!(ip, "198.51.100.77");
        assert!(
            out.contains("X-Forwarded-For: 203.0.113.9, 198.51.100.77\r\n"),
            "{out}"
        );
        // The chain still names the hop that connected.
        let (_, out) = from("192.0.2.7", &["203.0.113.9"]);
        assert!(
            out.contains("X-Forwarded-For: 203.0.113.9, 192.0.2.7\r\n"),
            "{out}"
        );
    }

    #[test]
    fn routing_facts_are_kept() {
        let p = ok(WS);
        let f = &p.facts;
        assert_eq!(&*f.path, "/chat");
        assert_eq!(f.host.as_deref(), Some(&b"example.com:8080"[..]));
        assert_eq!(f.origin.as_deref(), Some("http://example.com"));
        assert_eq!(&*f.method, "GET");
        assert_eq!(
            err(&with(
                "Origin: http://example.com\r\n",
                "Origin: a\r\nOrigin: b\r\n"
            ))
            .status()
            .code(),
            400
        );
    }

    #[test]
    fn proto_and_ipv6_client() {
        let c = ClientInfo {
            ip: "2001:db8::1".parse().unwrap(),
            proto: "https",
            trusted: &[],
        };
        let out = String::from_utf8(prepare(WS, 16384, &c).unwrap().unwrap().upstream).unwrap();
        assert!(out.contains("X-Real-IP: 2001:db8::1\r\n"));
        assert!(out.contains("X-Forwarded-Proto: https\r\n"));
    }

    #[test]
    fn partial_heads_ask_for_more() {
        for cut in [0, 1, 10, WS.len() - 1] {
            assert!(
                prepare(&WS[..cut], 16384, &CLIENT).unwrap().is_none(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn invalid_handshakes_are_refused_with_their_status() {
        let cases: &[(Vec<u8>, u16)] = &[
            (with("GET", "POST"), 400),
            (with("HTTP/1.1\r\nHost", "HTTP/1.0\r\nHost"), 400),
            (with("keep-alive, Upgrade", "keep-alive"), 400),
            (with("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ"), 400),
            (with("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZR=="), 400),
            (with("dGhlIHNhbXBsZSBub25jZQ==", "!!!!!!!!!!!!!!!!!!!!!A=="), 400),
            (with("Sec-WebSocket-Version: 13\r\n", ""), 400),
            (with("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"), 426),
            (with("Host: example.com:8080\r\n", ""), 400),
            (with("Host: example.com:8080\r\n", "Host: a\r\nHost: b\r\n"), 400),
            (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), 400),
            (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec(), 400),
            (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n".to_vec(), 400),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), 400),
            (b"GET / HTTP/1.1\r\nHo st: h\r\n\r\n".to_vec(), 400),
        ];
        for (buf, code) in cases {
            let e = err(buf);
            assert_eq!(
                e.status().code(),
                *code,
                "{e} for {:?}",
                String::from_utf8_lossy(buf)
            );
        }
        // The same key twice is not "one key".
        let twice = with(
            "Sec-WebSocket-Version",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version",
        );
        assert_eq!(err(&twice).status().code(), 400);
    }

    #[test]
    fn oversized_heads_are_431() {
        let mut big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ".to_vec();
        big.resize(200, b'a');
        assert_eq!(
            prepare(&big, 100, &CLIENT).unwrap_err().status().code(),
            431
        );
        let mut complete = big.clone();
        complete.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            prepare(&complete, 100, &CLIENT)
                .unwrap_err()
                .status()
                .code(),
            431
        );
        let mut many = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(err(&many).status().code(), 431);
    }

    #[test]
    fn websocket_keys() {
        assert!(is_websocket_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(is_websocket_key(b"AAAAAAAAAAAAAAAAAAAAAA=="));
        assert!(!is_websocket_key(b"AAAAAAAAAAAAAAAAAAAAAB=="));
        assert!(!is_websocket_key(b"AAAAAAAAAAAAAAAAAAAAAAA="));
        assert!(!is_websocket_key(b""));
    }

    #[test]
    fn targets_for_logs() {
        assert_eq!(
            target_for_log(b"GET /a?b HTTP/1.1\r\n").as_deref(),
            Some("/a?b")
        );
        assert_eq!(target_for_log(b"GET /partial").as_deref(), Some("/partial"));
        assert_eq!(target_for_log(b"garbage").as_deref(), None);
        // Kept as sent (escaped only when written into a line).
        assert_eq!(
            target_for_log(b"GET /\x1b[31m\xff HTTP/1.1").as_deref(),
            Some("/\x1b[31m\u{fffd}")
        );
    }

    #[test]
    fn content_lengths() {
        assert_eq!(parse_content_length(b" 42 "), Some(42));
        assert_eq!(parse_content_length(b"+1"), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
        assert_eq!(parse_content_length(b""), None);
    }
}
