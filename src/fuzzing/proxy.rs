//! The `proxy_protocol` target: [`crate::proto::proxy_protocol`], the
//! PROXY header a balancer sends first, and the one ringway writes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::Input;
use crate::proto::proxy_protocol::{encode, parse, Header, Version, MAX_HEADER, MAX_V1_LEN};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The PROXY protocol target. The first byte picks a case:
///
/// - arbitrary bytes (most inputs): a complete header is at most the
///   input, at most its version's maximum, starts with its signature (v1
///   ends in CRLF) and parses the same from its own bytes; a header with
///   addresses round-trips through [`encode`] (and a v2 TCP header without
///   TLVs is exactly what [`encode`] writes); `Ok(None)` (peek more) only
///   below the version's maximum; and the answer for any prefix, once it
///   is not `Ok(None)`, is the answer for the whole (more bytes never
///   change a decision, so a prefix of a valid header is never refused; a
///   refusal may name another fault of the same bytes);
/// - addresses built from the input (IPv4, IPv6, IPv4-mapped, any ports):
///   [`encode`] in both versions gives a header that parses back, whole
///   and followed by anything, to the same addresses (canonical families).
pub fn proxy_protocol(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 4 {
        0 => round_trip(&mut input),
        _ => check_parse(input.rest()),
    }
}

fn check_parse(buf: &[u8]) {
    let got = parse(buf);
    match &got {
        Ok(None) => {
            let max = if buf.first() == Some(&b'P') {
                MAX_V1_LEN
            } else {
                MAX_HEADER
            };
            assert!(buf.len() < max, "asks for more past {max} bytes");
        }
        Ok(Some((h, len))) => {
            let len = *len;
            assert!(len <= buf.len() && len <= MAX_HEADER, "length {len}");
            match h.version {
                Version::V1 => {
                    assert!(len <= MAX_V1_LEN);
                    assert!(buf.starts_with(b"PROXY ") && buf[..len].ends_with(b"\r\n"));
                }
                Version::V2 => assert!(buf.starts_with(V2_SIGNATURE) && len >= 16),
            }
            assert_eq!(parse(&buf[..len]), got, "from its own bytes");
            if let Some((src, dst)) = h.addrs {
                let mut out = Vec::new();
                encode(h.version, src, dst, &mut out);
                assert_eq!(
                    parse(&out),
                    Ok(Some((encoded(h.version, src, dst), out.len())))
                );
                if h.version == Version::V2 && out.len() == len && out[..14] == buf[..14] {
                    assert_eq!(out, &buf[..len], "v2 without TLVs as encode writes it");
                }
            }
        }
        Err(_) => {}
    }
    // A decision, once made, is final: every prefix answers `Ok(None)`, or
    // what the whole answers (for a refusal, the reason named may be
    // another fault in the same bytes: the connection is closed either way).
    for n in 0..buf.len().min(MAX_HEADER + 2) {
        let early = parse(&buf[..n]);
        assert!(
            early == Ok(None) || early == got || (early.is_err() && got.is_err()),
            "{n} bytes: {early:?}, all {} bytes: {got:?}",
            buf.len()
        );
    }
}

/// What [`encode`] promises a header for `src` -> `dst` parses back as:
/// IPv4 when both are IPv4 (or IPv4-mapped), else both IPv6.
fn encoded(version: Version, src: SocketAddr, dst: SocketAddr) -> Header {
    let (s, d) = (src.ip().to_canonical(), dst.ip().to_canonical());
    let (s, d) = match (s, d) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (s, d),
        _ => (IpAddr::V6(v6(s)), IpAddr::V6(v6(d))),
    };
    Header {
        version,
        addrs: Some((
            SocketAddr::new(s, src.port()),
            SocketAddr::new(d, dst.port()),
        )),
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// An address built from the input: IPv4, IPv6 or IPv4-mapped IPv6.
fn address(input: &mut Input<'_>) -> SocketAddr {
    let kind = input.byte();
    let ip = match kind % 3 {
        0 => IpAddr::V4(Ipv4Addr::from(input.u32())),
        1 => IpAddr::V6(Ipv4Addr::from(input.u32()).to_ipv6_mapped()),
        _ => {
            let mut octets = [0u8; 16];
            // Sparse addresses too, so `::` compression shows up.
            for o in octets.iter_mut() {
                *o = if kind & 0x80 != 0 && input.byte().is_multiple_of(2) {
                    0
                } else {
                    input.byte()
                };
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
    };
    SocketAddr::new(ip, input.u16())
}

fn round_trip(input: &mut Input<'_>) {
    let (src, dst) = (address(input), address(input));
    let after = input.rest();
    for version in [Version::V1, Version::V2] {
        let mut out = Vec::new();
        encode(version, src, dst, &mut out);
        let len = out.len();
        if version == Version::V1 {
            assert!(len <= MAX_V1_LEN, "{}", String::from_utf8_lossy(&out));
        }
        let want = Ok(Some((encoded(version, src, dst), len)));
        assert_eq!(parse(&out), want, "{src} {dst} {version:?}");
        out.extend_from_slice(after);
        assert_eq!(parse(&out), want, "followed by other bytes");
    }
}
