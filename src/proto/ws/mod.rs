//! The little of RFC 6455 that ringway speaks: the accept key, and frame
//! headers ([`read_header`], the one parser of them, and
//! [`encode_header`]). A tunnel moves bytes without parsing them; only a
//! drain with close frames follows its frame headers ([`tracker`]), and
//! the demo echo backend and the load tools parse frames whole.

pub mod tracker;

use sha1::{Digest, Sha1};

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    base64(&h.finalize())
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
    /// Bytes the header itself takes.
    pub header_len: usize,
}

/// The longest frame header: 2 bytes, an 8-byte extended length, a 4-byte
/// masking key.
pub const MAX_HEADER: usize = 14;

/// The longest control frame payload (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame header read from the start of some bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The bytes end before the header does.
    Incomplete,
    /// No valid frame starts this way.
    Invalid,
    /// A whole, valid header.
    Complete(FrameHeader),
}

/// The frame-header parser (RFC 6455 §5.2): reads the header at the start
/// of `buf`, rejecting it as soon as the bytes present show that no valid
/// frame has it: a reserved opcode (3-7, 11-15), a control frame that is
/// fragmented or longer than 125 bytes, a 64-bit length with its top bit
/// set. Only header bytes are looked at.
pub fn read_header(buf: &[u8]) -> Header {
    let Some(&b0) = buf.first() else {
        return Header::Incomplete;
    };
    let opcode = b0 & 0x0F;
    if matches!(opcode, 3..=7 | 11..=15) {
        return Header::Invalid;
    }
    let Some(&b1) = buf.get(1) else {
        return Header::Incomplete;
    };
    let fin = b0 & 0x80 != 0;
    let len7 = b1 & 0x7F;
    let control = opcode >= 8;
    if control && (!fin || usize::from(len7) > MAX_CONTROL_PAYLOAD) {
        return Header::Invalid;
    }
    let ext = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    if ext == 8 && buf.get(2).is_some_and(|&top| top & 0x80 != 0) {
        return Header::Invalid;
    }
    let masked = b1 & 0x80 != 0;
    let header_len = 2 + ext + if masked { 4 } else { 0 };
    if buf.len() < header_len {
        return Header::Incomplete;
    }
    let len = match ext {
        0 => u64::from(len7),
        2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        _ => u64::from_be_bytes([
            buf[2], buf[3], buf[4], buf[5], buf[6], buf[7], buf[8], buf[9],
        ]),
    };
    let mask = masked.then(|| {
        let at = 2 + ext;
        [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
    });
    Header::Complete(FrameHeader {
        fin,
        opcode,
        mask,
        len,
        header_len,
    })
}

/// The header at the start of `buf` once it is whole and valid
/// ([`read_header`]); `None` while it is incomplete, and for one no valid
/// frame has (callers that must tell the two apart use [`read_header`]).
pub fn parse_header(buf: &[u8]) -> Option<FrameHeader> {
    match read_header(buf) {
        Header::Complete(h) => Some(h),
        Header::Incomplete | Header::Invalid => None,
    }
}

/// Append a frame header to `out`.
pub fn encode_header(out: &mut Vec<u8>, fin: bool, opcode: u8, len: u64, mask: Option<[u8; 4]>) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= u16::MAX as u64 {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(k) = mask {
        out.extend_from_slice(&k);
    }
}

/// XOR `data` with `mask`, `data[0]` being payload byte number `offset`.
/// Eight bytes at a time: the load tools and the demo backend unmask MiBs.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let shift = (offset % 4) as usize;
    let m: [u8; 4] = std::array::from_fn(|i| mask[(i + shift) % 4]);
    let wide = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("chunk of 8")) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_incomplete_invalid_or_whole() {
        assert_eq!(read_header(&[]), Header::Incomplete);
        assert_eq!(read_header(&[0x82]), Header::Incomplete);
        // Masked, 16-bit length: 8 bytes of header.
        let h = [0x82, 0x80 | 126, 0x01, 0x00, 1, 2, 3, 4];
        assert_eq!(read_header(&h[..7]), Header::Incomplete);
        let Header::Complete(f) = read_header(&h) else {
            panic!("whole")
        };
        assert_eq!((f.len, f.header_len, f.mask), (256, 8, Some([1, 2, 3, 4])));
        // Seen invalid from the first bytes that show it.
        assert_eq!(read_header(&[0x83]), Header::Invalid, "reserved opcode");
        assert_eq!(read_header(&[0x09, 0]), Header::Invalid, "fragmented ping");
        assert_eq!(read_header(&[0x89, 126]), Header::Invalid, "ping over 125");
        assert_eq!(read_header(&[0x82, 127, 0x80]), Header::Invalid, "top bit");
        assert_eq!(parse_header(&[0x83, 0]), None);
        assert!(parse_header(&[0x88, 0]).is_some());
    }

    #[test]
    fn rfc_accept_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    #[test]
    fn headers_round_trip() {
        for len in [0u64, 125, 126, 65535, 65536, 1 << 40] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut out = Vec::new();
                encode_header(&mut out, len % 2 == 0, OP_BINARY, len, mask);
                let h = parse_header(&out).unwrap();
                assert_eq!(
                    (h.len, h.mask, h.header_len, h.opcode),
                    (len, mask, out.len(), OP_BINARY)
                );
                assert!(parse_header(&out[..out.len() - 1]).is_none());
            }
        }
    }

    #[test]
    fn wide_masking_matches_the_definition() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        for offset in 0..5u64 {
            for len in [0, 1, 7, 8, 9, 63, 1000] {
                let mut fast = data[..len].to_vec();
                apply_mask(&mut fast, [0xde, 0xad, 0xbe, 0xef], offset);
                let slow: Vec<u8> = data[..len]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ [0xde, 0xad, 0xbe, 0xef][((offset + i as u64) % 4) as usize])
                    .collect();
                assert_eq!(fast, slow, "offset {offset} len {len}");
            }
        }
    }

    #[test]
    fn masking_is_an_involution_at_any_offset() {
        let mut d = *b"Hello, world";
        apply_mask(&mut d[..5], [9, 8, 7, 6], 0);
        apply_mask(&mut d[5..], [9, 8, 7, 6], 5);
        apply_mask(&mut d, [9, 8, 7, 6], 0);
        assert_eq!(&d, b"Hello, world");
    }
}
