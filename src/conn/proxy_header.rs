//! A PROXY protocol header (v1 or v2), on listeners configured with
//! `,proxy-protocol`: the client's real address, taken from the socket
//! byte-exactly, so that what follows it (a TLS hello, a request head) is
//! read by the next phase as if the header had never been there.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use monoio::net::TcpStream;

use crate::config::Config;
use crate::io::sweep::Tracked;
use crate::policy::limits;
use crate::proto::proxy_protocol;
use crate::sys::{self, Xfer};

/// Why no PROXY header was taken: the client's (or its balancer's) fault,
/// or its socket's.
#[derive(Debug)]
pub(super) enum HeaderError {
    /// The peer is not a `--trusted-proxy`.
    Untrusted(IpAddr),
    Timeout,
    /// It closed before a whole header (`midway`: after some of it).
    Closed {
        midway: bool,
    },
    /// Bytes no PROXY header has, or too many of them.
    Invalid(proxy_protocol::Error),
    /// The peeked bytes were gone when taken.
    NotTaken,
    Io(io::Error),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Untrusted(ip) => write!(
                f,
                "{ip} is not a --trusted-proxy, so its PROXY header is not believed"
            ),
            HeaderError::Timeout => f.write_str("no complete header within --handshake-timeout"),
            HeaderError::Closed { midway: false } => f.write_str("closed before sending a header"),
            HeaderError::Closed { midway: true } => {
                f.write_str("closed in the middle of its header")
            }
            HeaderError::Invalid(e) => write!(f, "{e}"),
            HeaderError::NotTaken => f.write_str("the header's bytes could not be taken"),
            HeaderError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Take the PROXY protocol header from a listener that requires one: the
/// client's address and the one it connected to (`None` for a LOCAL or
/// UNKNOWN header: the connection's own). What is waiting is looked at with
/// MSG_PEEK; only bytes known to belong to the header are taken (a prefix
/// that can still become one, then the rest of it), so what follows it (a
/// TLS hello, a request head) stays in the socket. Bounded by
/// [`proxy_protocol::MAX_HEADER`] bytes and the handshake timeout.
pub(super) async fn read(
    config: &Config,
    sock: &TcpStream,
    peer: SocketAddr,
    track: &Tracked,
) -> Result<(SocketAddr, Option<SocketAddr>), HeaderError> {
    if !limits::trusted(&config.trusted_proxies, peer.ip()) {
        return Err(HeaderError::Untrusted(peer.ip()));
    }
    let mut buf = [0u8; proxy_protocol::MAX_HEADER];
    // Bytes of the header taken from the socket so far.
    let mut taken = 0;
    loop {
        let ready = sock.readable(false).await;
        if track.expired().is_some() {
            return Err(HeaderError::Timeout);
        }
        ready.map_err(HeaderError::Io)?;
        let n = match sys::peek_into(sock, &mut buf[taken..]) {
            Ok(Xfer::Done(n)) => n,
            Ok(Xfer::WouldBlock) => continue,
            Ok(Xfer::Eof) => return Err(HeaderError::Closed { midway: taken > 0 }),
            Err(e) => return Err(HeaderError::Io(e)),
        };
        let have = taken + n;
        let complete = match proxy_protocol::parse(&buf[..have]) {
            Ok(Some(found)) => Some(found),
            // All of it is header so far: take it, and wait for the rest.
            Ok(None) if have < buf.len() => None,
            Ok(None) => return Err(HeaderError::Invalid(proxy_protocol::Error::TooLong)),
            Err(e) => return Err(HeaderError::Invalid(e)),
        };
        let upto = complete.map_or(have, |(_, len)| len);
        match sys::recv(sock, &mut buf[taken..upto]) {
            Ok(Xfer::Done(got)) if got == upto - taken => taken = upto,
            Ok(_) => return Err(HeaderError::NotTaken),
            Err(e) => return Err(HeaderError::Io(e)),
        }
        let Some((header, _)) = complete else {
            continue;
        };
        return Ok(match header.addrs {
            Some((src, dst)) => (src, Some(dst)),
            None => (peer, None),
        });
    }
}
