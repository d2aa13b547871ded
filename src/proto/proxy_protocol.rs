//! PROXY protocol v1 and v2 (HAProxy's `proxy-protocol.txt`): reading the
//! header that a balancer in front puts before the client's first byte, and
//! writing one for a backend behind ringway.
//!
//! Sans-I/O: [`parse`] looks at bytes peeked from the socket and says how many
//! of them are the header; [`encode`] appends a header to a buffer. Parsing is
//! strict and decides as early as the bytes allow: a client that speaks TLS or
//! HTTP straight away is told apart after its first byte, a v1 line that can
//! no longer be valid is refused at the byte that breaks it, and a v2 header's
//! size is judged from its 16-byte preamble.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// Longest v1 header, CRLF included (the spec's worst case, a TCP6 line).
pub const MAX_V1_LEN: usize = 107;
/// Longest v2 header ringway accepts: the 16-byte preamble and up to 512
/// bytes of addresses and TLVs. The spec allows 64 KiB; balancers send the
/// addresses and a few short TLVs (at most 216 + a few dozen bytes), and a
/// peek buffer this size is cheap to keep per connection.
pub const MAX_V2_LEN: usize = V2_PREAMBLE + 512;
/// Longest header ringway accepts, either version: how many bytes a caller
/// must be ready to peek before [`parse`] answers with more than `Ok(None)`.
pub const MAX_HEADER: usize = MAX_V2_LEN;
const _: () = assert!(MAX_V1_LEN <= MAX_HEADER);

/// Which format a header was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text line, `PROXY TCP4 ...\r\n`.
    V1,
    /// The binary header that starts with the 12-byte signature.
    V2,
}

/// What the balancer in front told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// The client's address and the address it connected to, as
    /// `(source, destination)`. `None` for v1 `UNKNOWN`, v2 `LOCAL` (the
    /// balancer's own health checks) and v2 families other than TCP over
    /// IPv4/IPv6: use the connection's own addresses then. Addresses are
    /// reported as sent: an IPv4-mapped IPv6 address stays IPv6.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
}

/// Why the bytes at the start of a connection are not an acceptable header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The bytes start with neither the v1 nor the v2 signature: the peer
    /// talks to ringway directly (or through a balancer that sends none).
    #[error("no PROXY protocol header")]
    NotProxy,
    /// The header has a signature but breaks the spec.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    /// A v1 line longer than [`MAX_V1_LEN`] or a v2 header longer than
    /// [`MAX_V2_LEN`].
    #[error("PROXY protocol header too long")]
    TooLong,
}

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/protocol, 16-bit length.
const V2_PREAMBLE: usize = 16;

/// The v1 protocol word: which address family the line carries.
#[derive(Debug, Clone, Copy)]
enum V1Proto {
    Tcp4,
    Tcp6,
    Unknown,
}

/// Each word with what follows it: a space, or for `UNKNOWN` the CR of a line
/// whose rest the sender left out. Nothing else may follow (`UNKNOWNx` is
/// refused).
const V1_PROTOCOLS: [(&[u8], V1Proto); 4] = [
    (b"TCP4 ", V1Proto::Tcp4),
    (b"TCP6 ", V1Proto::Tcp6),
    (b"UNKNOWN ", V1Proto::Unknown),
    (b"UNKNOWN\r", V1Proto::Unknown),
];

/// Parse a header at the start of `buf` (bytes peeked from the socket, maybe
/// incomplete).
///
/// - `Ok(None)`: `buf` could still become a valid header; peek more (this is
///   only ever the answer while `buf` is shorter than its version's maximum).
/// - `Ok(Some((header, len)))`: a complete header of `len` bytes; take exactly
///   `len` bytes from the socket, the rest belongs to TLS or HTTP.
/// - `Err(NotProxy)`: the bytes so far match neither signature (decided at
///   the first byte that differs; for plain HTTP or TLS that is the first).
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    match buf.first() {
        None => Ok(None),
        Some(&b) if b == V1_PREFIX[0] => parse_v1(buf),
        Some(&b) if b == V2_SIGNATURE[0] => parse_v2(buf),
        Some(_) => Err(Error::NotProxy),
    }
}

/// Whether `buf` and `pattern` agree on the bytes they both have.
fn starts_like(buf: &[u8], pattern: &[u8]) -> bool {
    let n = buf.len().min(pattern.len());
    buf[..n] == pattern[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    if !starts_like(buf, V1_PREFIX) {
        return Err(Error::NotProxy);
    }
    let rest = buf.get(V1_PREFIX.len()..).unwrap_or_default();
    // While only part of the word is here several may match; they differ
    // before the line can end, so a complete line has exactly one.
    let Some(&(word, proto)) = V1_PROTOCOLS.iter().find(|(w, _)| starts_like(rest, w)) else {
        return Err(Error::Malformed("v1 protocol is not TCP4, TCP6 or UNKNOWN"));
    };

    // The line ends at the first CR, which must be followed by LF, and the
    // whole line must fit in MAX_V1_LEN bytes.
    let window = &buf[..buf.len().min(MAX_V1_LEN)];
    let cr = match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) if window[i] == b'\n' => {
            return Err(Error::Malformed("v1 line ends in LF without CR"))
        }
        Some(i) if i + 2 > MAX_V1_LEN => return Err(Error::TooLong),
        Some(i) => Some(i),
        None if buf.len() >= MAX_V1_LEN => return Err(Error::TooLong),
        None => None,
    };
    let line = &buf[..cr.unwrap_or(buf.len())];

    // Addresses and ports need hex digits, dots, colons and spaces only:
    // anything else is refused now rather than when the line ends.
    let fields = line.get(V1_PREFIX.len() + word.len()..).unwrap_or_default();
    let tcp = !matches!(proto, V1Proto::Unknown);
    if tcp
        && !fields
            .iter()
            .all(|&b| b.is_ascii_hexdigit() || b == b'.' || b == b':' || b == b' ')
    {
        return Err(Error::Malformed(
            "v1 line has a byte no address or port has",
        ));
    }

    let Some(cr) = cr else { return Ok(None) };
    match buf.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(Error::Malformed("v1 CR not followed by LF")),
    }
    let len = cr + 2;
    let header = |addrs| {
        Ok(Some((
            Header {
                version: Version::V1,
                addrs,
            },
            len,
        )))
    };
    let ip: fn(&str) -> Option<IpAddr> = match proto {
        // "the receiver must ignore anything presented before the CRLF"
        V1Proto::Unknown => return header(None),
        V1Proto::Tcp4 => |s| Ipv4Addr::from_str(s).ok().map(IpAddr::V4),
        V1Proto::Tcp6 => |s| Ipv6Addr::from_str(s).ok().map(IpAddr::V6),
    };

    // Only ASCII is left (checked above), so this cannot fail.
    let fields = std::str::from_utf8(fields).map_err(|_| Error::Malformed("v1 line not ASCII"))?;
    // split(' ') keeps empty fields, so a doubled or trailing space shows up
    // as an empty address or port, or as a fifth field.
    let mut it = fields.split(' ');
    let (Some(src), Some(dst), Some(sport), Some(dport), None) =
        (it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return Err(Error::Malformed("v1 needs two addresses and two ports"));
    };
    let src = ip(src).ok_or(Error::Malformed(
        "v1 source address not of the line's family",
    ))?;
    let dst = ip(dst).ok_or(Error::Malformed(
        "v1 destination address not of the line's family",
    ))?;
    let sport = v1_port(sport).ok_or(Error::Malformed("v1 source port not in 0-65535"))?;
    let dport = v1_port(dport).ok_or(Error::Malformed("v1 destination port not in 0-65535"))?;
    header(Some((
        SocketAddr::new(src, sport),
        SocketAddr::new(dst, dport),
    )))
}

/// A v1 port: decimal, no sign, no leading zero (except `0` itself), at most
/// 65535.
fn v1_port(s: &str) -> Option<u16> {
    let canonical = (1..=5).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    if !starts_like(buf, V2_SIGNATURE) {
        return Err(Error::NotProxy);
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 {
        return Err(Error::Malformed("v2 version is not 2"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Error::Malformed("v2 command is neither LOCAL nor PROXY")),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(None);
    };
    // LOCAL: "the receiver must ... discard the protocol block including the
    // family which is ignored". PROXY: only the assigned values; a receiver
    // may accept UNSPEC, UDP and UNIX and use the real addresses, which
    // ringway does (the block must still be as long as the family says).
    let needed = match fam {
        _ if local => 0,
        0x00 => 0,
        0x11 | 0x12 => 12,
        0x21 | 0x22 => 36,
        0x31 | 0x32 => 216,
        _ => return Err(Error::Malformed("v2 address family or protocol unknown")),
    };
    let Some(&[hi, lo]) = buf.get(14..V2_PREAMBLE) else {
        return Ok(None);
    };
    let block_len = usize::from(u16::from_be_bytes([hi, lo]));
    let len = V2_PREAMBLE + block_len;
    if len > MAX_V2_LEN {
        return Err(Error::TooLong);
    }
    if block_len < needed {
        return Err(Error::Malformed(
            "v2 address block shorter than its family needs",
        ));
    }
    // TLVs after the addresses are skipped: ringway uses none of them.
    let Some(block) = buf.get(V2_PREAMBLE..len) else {
        return Ok(None);
    };
    let addrs = match fam {
        _ if local => None,
        0x11 => {
            let ip = |at: usize| Ipv4Addr::from(array::<4>(block, at));
            let port = |at: usize| u16::from_be_bytes(array(block, at));
            Some((
                SocketAddr::new(ip(0).into(), port(8)),
                SocketAddr::new(ip(4).into(), port(10)),
            ))
        }
        0x21 => {
            let ip = |at: usize| Ipv6Addr::from(array::<16>(block, at));
            let port = |at: usize| u16::from_be_bytes(array(block, at));
            Some((
                SocketAddr::new(ip(0).into(), port(32)),
                SocketAddr::new(ip(16).into(), port(34)),
            ))
        }
        _ => None,
    };
    Ok(Some((
        Header {
            version: Version::V2,
            addrs,
        },
        len,
    )))
}

/// `N` bytes of `block` from `at`; the caller has checked the length.
fn array<const N: usize>(block: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&block[at..at + N]);
    out
}

/// Append to `out` a header announcing `src` -> `dst` (the client and the
/// address it connected to), for sending to a backend first thing.
///
/// v1 writes `PROXY TCP4 ...` or `PROXY TCP6 ...`; v2 writes the PROXY
/// command, TCP over IPv4 or IPv6, and no TLVs. Families: IPv4-mapped IPv6
/// addresses (what a dual-stack listener sees for IPv4 clients) are first
/// turned back into IPv4, so that a backend sees the client's real IPv4
/// address; if both are then IPv4 the header is IPv4, otherwise any IPv4
/// address is written IPv4-mapped and the header is IPv6. Flow info and
/// scope ids are not carried (neither format has room for them).
pub fn encode(version: Version, src: SocketAddr, dst: SocketAddr, out: &mut Vec<u8>) {
    let (sport, dport) = (src.port(), dst.port());
    let ips = match (src.ip().to_canonical(), dst.ip().to_canonical()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => IpPair::V4(s, d),
        (s, d) => IpPair::V6(v6(s), v6(d)),
    };
    // Writing to a Vec cannot fail.
    match (version, ips) {
        (Version::V1, IpPair::V4(s, d)) => {
            let _ = write!(out, "PROXY TCP4 {s} {d} {sport} {dport}\r\n");
        }
        (Version::V1, IpPair::V6(s, d)) => {
            let _ = write!(out, "PROXY TCP6 {s} {d} {sport} {dport}\r\n");
        }
        (Version::V2, IpPair::V4(s, d)) => {
            out.extend_from_slice(V2_SIGNATURE);
            out.extend_from_slice(&[0x21, 0x11, 0, 12]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
            out.extend_from_slice(&sport.to_be_bytes());
            out.extend_from_slice(&dport.to_be_bytes());
        }
        (Version::V2, IpPair::V6(s, d)) => {
            out.extend_from_slice(V2_SIGNATURE);
            out.extend_from_slice(&[0x21, 0x21, 0, 36]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
            out.extend_from_slice(&sport.to_be_bytes());
            out.extend_from_slice(&dport.to_be_bytes());
        }
    }
}

/// Source and destination addresses, both of one family.
#[derive(Clone, Copy)]
enum IpPair {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v1(addrs: Option<(&str, &str)>) -> Header {
        Header {
            version: Version::V1,
            addrs: addrs.map(|(s, d)| (sa(s), sa(d))),
        }
    }

    fn v2(addrs: Option<(&str, &str)>) -> Header {
        Header {
            version: Version::V2,
            addrs: addrs.map(|(s, d)| (sa(s), sa(d))),
        }
    }

    /// Every proper prefix of `header` asks for more; the whole gives
    /// `expected` with its length; bytes behind it are not counted.
    fn check_complete(header: &[u8], expected: Header) {
        for n in 0..header.len() {
            assert_eq!(parse(&header[..n]), Ok(None), "prefix of {n} bytes");
        }
        assert_eq!(parse(header), Ok(Some((expected, header.len()))));
        let mut more = header.to_vec();
        more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(parse(&more), Ok(Some((expected, header.len()))));
        more.truncate(header.len());
        more.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0xf4, 0x01]);
        assert_eq!(parse(&more), Ok(Some((expected, header.len()))));
    }

    fn malformed(buf: &[u8]) {
        assert!(
            matches!(parse(buf), Err(Error::Malformed(_))),
            "{:?} gave {:?}",
            String::from_utf8_lossy(buf),
            parse(buf)
        );
    }

    // ---- v1 ----

    #[test]
    fn v1_tcp4() {
        check_complete(
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
            v1(Some(("192.0.2.1:56324", "198.51.100.2:443"))),
        );
        check_complete(
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
            v1(Some(("0.0.0.0:0", "255.255.255.255:65535"))),
        );
    }

    #[test]
    fn v1_tcp6() {
        check_complete(
            b"PROXY TCP6 2001:db8::1 2001:DB8::2 56324 443\r\n",
            v1(Some(("[2001:db8::1]:56324", "[2001:db8::2]:443"))),
        );
        check_complete(
            b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n",
            v1(Some(("[::ffff:192.0.2.1]:1", "[::1]:2"))),
        );
    }

    #[test]
    fn v1_longest_line() {
        let full = b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let mut line = b"PROXY TCP6 ".to_vec();
        line.extend_from_slice(full);
        line.push(b' ');
        line.extend_from_slice(full);
        line.extend_from_slice(b" 65535 65535\r\n");
        assert_eq!(line.len(), 104);
        let ip = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        check_complete(&line, v1(Some((ip, ip))));

        // The spec's 107-byte worst case, with UNKNOWN.
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.extend_from_slice(full);
        line.push(b' ');
        line.extend_from_slice(full);
        line.extend_from_slice(b" 65535 65535\r\n");
        assert_eq!(line.len(), MAX_V1_LEN);
        check_complete(&line, v1(None));
    }

    #[test]
    fn v1_unknown() {
        check_complete(b"PROXY UNKNOWN\r\n", v1(None));
        check_complete(b"PROXY UNKNOWN 192.0.2.1 198.51.100.2 1 2\r\n", v1(None));
        // The rest of an UNKNOWN line is ignored, whatever it is.
        check_complete(b"PROXY UNKNOWN  whatever \x00\xff!\r\n", v1(None));
    }

    #[test]
    fn v1_too_long() {
        let mut line = b"PROXY TCP4 ".to_vec();
        line.resize(200, b'1');
        assert_eq!(parse(&line), Err(Error::TooLong));
        assert_eq!(parse(&line[..MAX_V1_LEN]), Err(Error::TooLong));
        assert_eq!(parse(&line[..MAX_V1_LEN - 1]), Ok(None));

        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(200, b'x');
        assert_eq!(parse(&line), Err(Error::TooLong));
        // A CR as the 107th byte: its LF would make the line 108 bytes.
        line.truncate(MAX_V1_LEN - 1);
        line.push(b'\r');
        assert_eq!(parse(&line), Err(Error::TooLong));
        line.truncate(MAX_V1_LEN - 2);
        line.extend_from_slice(b"\r\n");
        assert_eq!(parse(&line), Ok(Some((v1(None), MAX_V1_LEN))));
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            // ports
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 99999 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 123456 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 0443 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 00 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 0x1bb\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 a\r\n",
            // addresses
            b"PROXY TCP4 256.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1. 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 ::1 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 ::1 1 2\r\n",
            b"PROXY TCP6 ::1 2001:db8:::2 1 2\r\n",
            b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
            b"PROXY TCP6 [::1] ::1 1 2\r\n",
            // spacing and fields
            b"PROXY TCP4  192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1  198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n",
            b"PROXY TCP4\r\n",
            b"PROXY TCP4 \r\n",
            b"PROXY  TCP4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY UNKNOWNx\r\n",
            b"PROXY \r\n",
            // line ends
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",
            b"PROXY UNKNOWN\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\rx",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\r\n",
        ] {
            malformed(bad);
        }
    }

    #[test]
    fn v1_refused_early() {
        // The first byte that can no longer lead to a valid line decides.
        malformed(b"PROXY TCP5");
        malformed(b"PROXY X");
        malformed(b"PROXY TCP4x");
        malformed(b"PROXY TCP4 GET");
        malformed(b"PROXY TCP4 1.2.3.4 \x00");
        malformed(b"PROXY TCP4 1.2.3.4\n");
        malformed(b"PROXY UNKNOWN\rx");
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4 "), Ok(None));
        assert_eq!(parse(b"PROXY UNKNOWN garbage\x00"), Ok(None));
    }

    // ---- v2 ----

    /// A v2 header: signature, the two type bytes, then `block`.
    fn v2_bytes(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend_from_slice(&[ver_cmd, fam]);
        out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    const V4_BLOCK: [u8; 12] = [192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x01, 0xbb];

    fn v6_block() -> Vec<u8> {
        let mut block = Vec::new();
        block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&[0xdc, 0x04, 0x01, 0xbb]);
        block
    }

    /// Two TLVs: ALPN "h2" and a NOOP of three bytes.
    const TLVS: [u8; 11] = [0x01, 0x00, 0x02, b'h', b'2', 0x04, 0x00, 0x03, 0, 0, 0];

    #[test]
    fn v2_tcp4() {
        let header =
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x02\xdc\x04\x01\xbb";
        assert_eq!(&header[..], &v2_bytes(0x21, 0x11, &V4_BLOCK)[..]);
        let expected = v2(Some(("192.0.2.1:56324", "198.51.100.2:443")));
        check_complete(header, expected);

        let mut block = V4_BLOCK.to_vec();
        block.extend_from_slice(&TLVS);
        check_complete(&v2_bytes(0x21, 0x11, &block), expected);
    }

    #[test]
    fn v2_tcp6() {
        let expected = v2(Some(("[2001:db8::1]:56324", "[2001:db8::2]:443")));
        check_complete(&v2_bytes(0x21, 0x21, &v6_block()), expected);
        let mut block = v6_block();
        block.extend_from_slice(&TLVS);
        check_complete(&v2_bytes(0x21, 0x21, &block), expected);
    }

    #[test]
    fn v2_local() {
        check_complete(b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00", v2(None));
        check_complete(&v2_bytes(0x20, 0x00, &TLVS), v2(None));
        // LOCAL ignores the family and whatever addresses come with it.
        check_complete(&v2_bytes(0x20, 0x11, &V4_BLOCK), v2(None));
        check_complete(&v2_bytes(0x20, 0xff, &[]), v2(None));
    }

    #[test]
    fn v2_other_families_use_real_addresses() {
        check_complete(&v2_bytes(0x21, 0x00, &[]), v2(None));
        check_complete(&v2_bytes(0x21, 0x00, &TLVS), v2(None));
        check_complete(&v2_bytes(0x21, 0x12, &V4_BLOCK), v2(None));
        check_complete(&v2_bytes(0x21, 0x22, &v6_block()), v2(None));
        check_complete(&v2_bytes(0x21, 0x31, &[0; 216]), v2(None));
        check_complete(&v2_bytes(0x21, 0x32, &[0; 216]), v2(None));
    }

    #[test]
    fn v2_longest_header() {
        let block = vec![0; MAX_V2_LEN - V2_PREAMBLE];
        let header = v2_bytes(0x21, 0x00, &block);
        assert_eq!(header.len(), MAX_HEADER);
        assert_eq!(parse(&header[..MAX_HEADER - 1]), Ok(None));
        assert_eq!(parse(&header), Ok(Some((v2(None), MAX_HEADER))));

        let block = vec![0; MAX_V2_LEN - V2_PREAMBLE + 1];
        assert_eq!(
            parse(&v2_bytes(0x21, 0x00, &block)[..16]),
            Err(Error::TooLong)
        );
    }

    #[test]
    fn v2_too_long_from_preamble() {
        let preamble = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xea\x60"; // length 60000
        assert_eq!(parse(&preamble[..15]), Ok(None));
        assert_eq!(parse(preamble), Err(Error::TooLong));
        let preamble = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\xff\xff";
        assert_eq!(parse(preamble), Err(Error::TooLong));
    }

    #[test]
    fn v2_malformed() {
        // Version 1 and other versions, decided at the 13th byte.
        malformed(b"\r\n\r\n\0\r\nQUIT\n\x11");
        malformed(&v2_bytes(0x11, 0x11, &V4_BLOCK));
        malformed(&v2_bytes(0x31, 0x11, &V4_BLOCK));
        malformed(&v2_bytes(0x01, 0x11, &V4_BLOCK));
        // Command 3 (and other unassigned ones).
        malformed(b"\r\n\r\n\0\r\nQUIT\n\x23");
        malformed(&v2_bytes(0x23, 0x11, &V4_BLOCK));
        malformed(&v2_bytes(0x2f, 0x11, &V4_BLOCK));
        // Unassigned family or protocol, decided at the 14th byte.
        malformed(b"\r\n\r\n\0\r\nQUIT\n\x21\x41");
        for fam in [0x01, 0x02, 0x10, 0x13, 0x20, 0x23, 0x30, 0x41, 0xff] {
            malformed(&v2_bytes(0x21, fam, &v6_block()));
        }
        // Address block too short for its family, decided at the 16th byte.
        malformed(b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x08");
        malformed(&v2_bytes(0x21, 0x11, &V4_BLOCK[..11]));
        malformed(&v2_bytes(0x21, 0x21, &v6_block()[..35]));
        malformed(&v2_bytes(0x21, 0x21, &V4_BLOCK));
        malformed(&v2_bytes(0x21, 0x12, &V4_BLOCK[..4]));
        malformed(&v2_bytes(0x21, 0x31, &[0; 215]));
    }

    // ---- neither ----

    #[test]
    fn not_proxy() {
        assert_eq!(parse(b""), Ok(None));
        for bytes in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"G",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"\x16",
            b"PUT / HTTP/1.1\r\n",
            b"P\x00",
            b"PROXX TCP4",
            b"PROXY\t",
            b"PROXY\r\n",
            b"PROXY\tTCP4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"proxy TCP4",
            b"\r\nGET",
            b"\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x0c",
            b"\r\n\r\n\0\r\nQUIT\r",
            b"\n",
            b"\x00",
        ] {
            assert_eq!(parse(bytes), Err(Error::NotProxy), "{bytes:?}");
        }
        // Prefixes of either signature wait.
        assert_eq!(parse(b"PROX"), Ok(None));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQU"), Ok(None));
    }

    // ---- encode ----

    fn round_trip(version: Version, src: &str, dst: &str) -> Header {
        let mut out = b"kept".to_vec();
        encode(version, sa(src), sa(dst), &mut out);
        assert_eq!(&out[..4], b"kept", "encode appends");
        let (header, len) = parse(&out[4..]).unwrap().unwrap();
        assert_eq!(len, out.len() - 4);
        assert_eq!(header.version, version);
        header
    }

    #[test]
    fn encode_round_trips() {
        for version in [Version::V1, Version::V2] {
            for (src, dst) in [
                ("192.0.2.1:56324", "198.51.100.2:443"),
                ("0.0.0.0:0", "255.255.255.255:65535"),
                ("[2001:db8::1]:56324", "[2001:db8::2]:443"),
                ("[::]:0", "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
            ] {
                let header = round_trip(version, src, dst);
                assert_eq!(
                    header.addrs,
                    Some((sa(src), sa(dst))),
                    "{version:?} {src} {dst}"
                );
            }
        }
    }

    #[test]
    fn encode_bytes() {
        let mut out = Vec::new();
        encode(
            Version::V1,
            sa("192.0.2.1:56324"),
            sa("198.51.100.2:443"),
            &mut out,
        );
        assert_eq!(out, b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n");
        out.clear();
        encode(Version::V1, sa("[2001:db8::1]:1"), sa("[::1]:2"), &mut out);
        assert_eq!(out, b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n");
        out.clear();
        encode(
            Version::V2,
            sa("192.0.2.1:56324"),
            sa("198.51.100.2:443"),
            &mut out,
        );
        assert_eq!(out, v2_bytes(0x21, 0x11, &V4_BLOCK));
        out.clear();
        encode(
            Version::V2,
            sa("[2001:db8::1]:56324"),
            sa("[2001:db8::2]:443"),
            &mut out,
        );
        assert_eq!(out, v2_bytes(0x21, 0x21, &v6_block()));
    }

    #[test]
    fn encode_families() {
        for version in [Version::V1, Version::V2] {
            // IPv4-mapped on both sides: written as IPv4.
            let header = round_trip(version, "[::ffff:192.0.2.1]:1", "[::ffff:198.51.100.2]:2");
            assert_eq!(
                header.addrs,
                Some((sa("192.0.2.1:1"), sa("198.51.100.2:2")))
            );
            // Mapped on one side only, IPv4 on the other: still IPv4.
            let header = round_trip(version, "[::ffff:192.0.2.1]:1", "198.51.100.2:2");
            assert_eq!(
                header.addrs,
                Some((sa("192.0.2.1:1"), sa("198.51.100.2:2")))
            );
            // Really mixed: IPv6, the IPv4 side mapped.
            let header = round_trip(version, "192.0.2.1:1", "[2001:db8::2]:2");
            assert_eq!(
                header.addrs,
                Some((sa("[::ffff:192.0.2.1]:1"), sa("[2001:db8::2]:2")))
            );
            let header = round_trip(version, "[2001:db8::1]:1", "198.51.100.2:2");
            assert_eq!(
                header.addrs,
                Some((sa("[2001:db8::1]:1"), sa("[::ffff:198.51.100.2]:2")))
            );
            // Scope ids are dropped.
            let header = round_trip(version, "[fe80::1%2]:1", "[fe80::2%2]:2");
            assert_eq!(header.addrs, Some((sa("[fe80::1]:1"), sa("[fe80::2]:2"))));
        }
    }
}
