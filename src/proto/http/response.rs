//! The backend's response head: what it means for the tunnel, and the head
//! the client gets, written once into one buffer.

use super::body::{Chunked, Framing};
use super::request::parse_content_length;
use super::{has_token, put_header, tokens, MAX_HEADERS};

/// What the backend answered.
#[derive(Debug)]
pub enum Answer {
    /// A 1xx other than 101 (`100 Continue`, `103 Early Hints`): forward the
    /// first `len` bytes as they are and read the next head behind them.
    Interim { len: usize },
    /// The final head, rewritten for the client.
    Final(Final),
}

#[derive(Debug)]
pub struct Final {
    pub status: u16,
    /// A 101 to a WebSocket upgrade: the tunnel opens.
    pub upgraded: bool,
    /// The head for the client followed by the body bytes read behind it.
    pub client: Vec<u8>,
    /// The body still to come after the bytes already in `client`
    /// (`UntilClose` for a tunnel).
    pub remaining: Framing,
}

/// The backend did not answer HTTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    #[error("invalid response head from backend")]
    Malformed,
    #[error("backend response head larger than {0} bytes")]
    TooLarge(usize),
}

/// Response headers ringway never passes on: hop-by-hop ones, and the
/// `Connection` it writes itself.
const DROPPED: &[&str] = &["connection", "keep-alive", "proxy-connection", "upgrade"];

/// Parse the response head at the start of `buf`. `upgrade_requested`: the
/// client sent a valid WebSocket upgrade; `head_method`: it sent `HEAD`.
pub fn prepare(
    buf: &[u8],
    max_head: usize,
    upgrade_requested: bool,
    head_method: bool,
) -> Result<Option<Answer>, BadResponse> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= max_head => n,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => {
            return Err(BadResponse::TooLarge(max_head))
        }
        Err(_) => return Err(BadResponse::Malformed),
    };
    let status = resp.code.unwrap_or_default();
    if (100..200).contains(&status) && status != 101 {
        return Ok(Some(Answer::Interim { len: head_len }));
    }
    let upgraded = status == 101 && upgrade_requested;
    let headers = &*resp.headers;

    let mut upgrade = None;
    let mut content_length = None;
    let mut chunked = false;
    let mut named: [&[u8]; 16] = [b""; 16];
    let mut n_named = 0;
    for h in headers {
        if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if n_named < named.len() {
                    named[n_named] = t;
                    n_named += 1;
                }
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value).ok_or(BadResponse::Malformed)?;
            // Two different lengths cannot both be right (RFC 9112 6.3).
            if content_length.is_some_and(|old| old != n) {
                return Err(BadResponse::Malformed);
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = has_token(h.value, "chunked") || chunked;
        }
    }

    let rest = &buf[head_len..];
    let mut client = Vec::with_capacity(head_len + 32 + rest.len());
    client.extend_from_slice(b"HTTP/1.1 ");
    client.extend_from_slice(itoa3(status).as_slice());
    client.push(b' ');
    client.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
    client.extend_from_slice(b"\r\n");
    let named = &named[..n_named];
    for h in headers {
        let name = h.name;
        if DROPPED.iter().any(|d| name.eq_ignore_ascii_case(d)) {
            continue;
        }
        let framing = name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding");
        if !framing
            && named
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
        {
            continue;
        }
        put_header(&mut client, name.as_bytes(), h.value);
    }
    if upgraded {
        // nginx writes `Connection: upgrade` itself and copies `Upgrade`.
        put_header(&mut client, b"Upgrade", upgrade.unwrap_or(b"websocket"));
        client.extend_from_slice(b"Connection: upgrade\r\n\r\n");
        client.extend_from_slice(rest);
        return Ok(Some(Answer::Final(Final {
            status,
            upgraded,
            client,
            remaining: Framing::UntilClose,
        })));
    }
    client.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut remaining = if head_method || status == 204 || status == 304 {
        Framing::Done
    } else if chunked {
        Framing::Chunked(Chunked::default())
    } else if let Some(n) = content_length {
        Framing::Exact(n)
    } else {
        Framing::UntilClose
    };
    // Bytes past the end of the body are not the client's.
    let here = remaining.take(rest).map_err(|_| BadResponse::Malformed)?;
    let rest = &rest[..here];
    client.extend_from_slice(rest);
    Ok(Some(Answer::Final(Final {
        status,
        upgraded,
        client,
        remaining,
    })))
}

/// A status code as three ASCII digits (httparse guarantees 100..=999).
fn itoa3(code: u16) -> [u8; 3] {
    [
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fin(buf: &[u8], upgrade: bool, head: bool) -> Final {
        match prepare(buf, 16384, upgrade, head).unwrap().unwrap() {
            Answer::Final(f) => f,
            other => panic!("not final: {other:?}"),
        }
    }

    const SWITCH: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
Upgrade: WebSocket\r\n\
Connection: Upgrade, X-Hop\r\n\
X-Hop: 1\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
Sec-WebSocket-Protocol: chat\r\n\r\n";

    #[test]
    fn switching_protocols_opens_the_tunnel() {
        let mut buf = SWITCH.to_vec();
        buf.extend_from_slice(b"\x81\x02hi");
        let f = fin(&buf, true, false);
        assert!(f.upgraded);
        assert_eq!(
            f.client,
            b"HTTP/1.1 101 Switching Protocols\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
Sec-WebSocket-Protocol: chat\r\n\
Upgrade: WebSocket\r\n\
Connection: upgrade\r\n\r\n\x81\x02hi"
        );
    }

    #[test]
    fn a_101_nobody_asked_for_is_an_ordinary_answer() {
        let f = fin(SWITCH, false, false);
        assert!(!f.upgraded);
        assert_eq!(f.remaining, Framing::UntilClose);
        assert!(f.client.ends_with(b"Connection: close\r\n\r\n"));
    }

    #[test]
    fn other_answers_pass_with_their_body() {
        let f = fin(
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nnope",
            true,
            false,
        );
        assert_eq!(f.status, 403);
        assert!(!f.upgraded);
        assert_eq!(f.remaining, Framing::Exact(6));
        assert_eq!(
            std::str::from_utf8(&f.client).unwrap(),
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnope"
        );
        // Bytes past the declared length are not the client's.
        let f = fin(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
            false,
            false,
        );
        assert!(f.client.ends_with(b"\r\n\r\nok"));
        assert_eq!(f.remaining, Framing::Done);
        let f = fin(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello",
            false,
            false,
        );
        assert!(matches!(f.remaining, Framing::Chunked(_)));
        assert!(f
            .client
            .ends_with(b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello"));
        assert_eq!(
            fin(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", false, true).remaining,
            Framing::Done
        );
        assert_eq!(
            fin(b"HTTP/1.1 304 Not Modified\r\n\r\n", false, false).remaining,
            Framing::Done
        );
        assert_eq!(
            fin(b"HTTP/1.0 200 OK\r\n\r\nabc", false, false).remaining,
            Framing::UntilClose
        );
        // A chunked body that ends in the first read ends the response.
        let f = fin(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nJUNK",
            false,
            false,
        );
        assert!(f.client.ends_with(b"\r\n\r\n2\r\nok\r\n0\r\n\r\n"));
        assert_eq!(f.remaining, Framing::Done);
        // Two different lengths are a bad answer.
        assert_eq!(
            prepare(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 10\r\n\r\nok",
                16384,
                false,
                false
            )
            .unwrap_err(),
            BadResponse::Malformed
        );
    }

    #[test]
    fn interim_answers_are_passed_through() {
        let buf = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
        match prepare(buf, 16384, false, false).unwrap().unwrap() {
            Answer::Interim { len } => assert_eq!(len, 25),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_and_oversize() {
        assert_eq!(
            prepare(b"SSH-2.0-OpenSSH\r\n", 16384, true, false).unwrap_err(),
            BadResponse::Malformed
        );
        assert!(prepare(b"HTTP/1.1 200 OK\r\nA: b\r\n", 16384, true, false)
            .unwrap()
            .is_none());
        let mut big = b"HTTP/1.1 200 OK\r\nA: ".to_vec();
        big.resize(100, b'x');
        assert_eq!(
            prepare(&big, 50, true, false).unwrap_err(),
            BadResponse::TooLarge(50)
        );
        assert_eq!(
            prepare(
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                16384,
                false,
                false
            )
            .unwrap_err(),
            BadResponse::Malformed
        );
    }
}
