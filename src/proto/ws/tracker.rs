//! WebSocket frame boundaries in a tunnel's byte stream (RFC 6455 §5.2), so
//! that a drain can inject a Close frame without cutting another frame.
//!
//! [`FrameTracker`] follows one direction of a tunnel, sans I/O: it reads
//! only frame headers (keeping a header split across chunks, at most 14
//! bytes) and skips payloads arithmetically, never buffering or allocating.
//! It promises that [`FrameTracker::at_boundary`] is true only where a frame
//! has provably just ended; a header no valid frame has makes it lose
//! framing for good, after which it never reports a boundary again.
//! [`close_frame`] builds the Close frame to inject, masked or not.

use crate::proto::ws::{read_header, Header, MAX_CONTROL_PAYLOAD, MAX_HEADER, OP_CLOSE};

/// The longest reason a Close frame carries after its 2-byte code.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;
/// The longest frame [`close_frame`] builds: header with key, and payload.
const MAX_CLOSE_FRAME: usize = 2 + 4 + MAX_CONTROL_PAYLOAD;

/// `FrameTracker::state`: the current frame's opcode (low 4 bits)...
const OPCODE_MASK: u8 = 0x0F;
/// ...framing was lost...
const LOST: u8 = 0x10;
/// ...a whole Close frame has gone by.
const CLOSE_SEEN: u8 = 0x20;

/// The close code the proxy sends at a drain ("going away", RFC 6455 §7.4.1).
pub const GOING_AWAY: u16 = 1001;
/// The close reason the proxy sends at a drain.
pub const GOING_AWAY_REASON: &str = "going away";

/// Tracks frame boundaries in one direction of a WebSocket tunnel.
///
/// 24 bytes: two live in every tunnel. The default tracker is at a boundary
/// (the start of the stream).
#[derive(Debug, Clone, Default)]
pub struct FrameTracker {
    /// Payload bytes left in the current frame.
    remaining: u64,
    /// The start of a header split across chunks (`head_len` bytes of it).
    head: [u8; MAX_HEADER],
    /// Bytes in `head`; 0 when no header is in progress.
    head_len: u8,
    /// The current frame's opcode and the `LOST` and `CLOSE_SEEN` flags.
    state: u8,
}

/// What [`FrameTracker::scan`] did with a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Bytes of the chunk followed: the boundary's offset when `stopped`,
    /// else the whole chunk.
    pub consumed: usize,
    /// The scan stopped at a frame boundary (only with `stop_at_boundary`).
    pub stopped: bool,
}

impl FrameTracker {
    /// Follow `data` (the next bytes of the stream). With `stop_at_boundary`,
    /// stop at the first frame boundary at or after the start of `data`
    /// (offset 0 if the stream is at a boundary now): `consumed` is that
    /// offset and `stopped` is true; if no boundary is reached within `data`,
    /// consume all of it and `stopped` is false. Without it, consume all of
    /// `data`.
    ///
    /// A boundary at the very end of `data` counts as reached. Payloads are
    /// skipped without being read; only header bytes are looked at.
    pub fn scan(&mut self, data: &[u8], stop_at_boundary: bool) -> Scan {
        let all = Scan {
            consumed: data.len(),
            stopped: false,
        };
        if self.is_lost() {
            return all;
        }
        let mut pos = 0;
        loop {
            if self.remaining > 0 {
                let left = (data.len() - pos) as u64;
                if left < self.remaining {
                    self.remaining -= left;
                    return all;
                }
                // `remaining <= left`, so it fits in a usize.
                pos += self.remaining as usize;
                self.remaining = 0;
                self.frame_ended();
                continue;
            }
            if self.head_len == 0 {
                if stop_at_boundary {
                    return Scan {
                        consumed: pos,
                        stopped: true,
                    };
                }
                if pos == data.len() {
                    return all;
                }
                // A new header, read in place when the chunk holds it whole.
                match read_header(&data[pos..]) {
                    Header::Complete(h) => {
                        pos += h.header_len;
                        self.frame_started(h.len, h.opcode);
                    }
                    Header::Incomplete => {
                        // Shorter than a header, so it fits in `head`.
                        let rest = &data[pos..];
                        self.head[..rest.len()].copy_from_slice(rest);
                        self.head_len = rest.len() as u8;
                        return all;
                    }
                    Header::Invalid => {
                        self.lose();
                        return all;
                    }
                }
            } else {
                if pos == data.len() {
                    return all;
                }
                // Continue the split header: copy what may belong to it, then
                // keep only the bytes that did.
                let had = usize::from(self.head_len);
                let take = (MAX_HEADER - had).min(data.len() - pos);
                self.head[had..had + take].copy_from_slice(&data[pos..pos + take]);
                match read_header(&self.head[..had + take]) {
                    Header::Complete(h) => {
                        pos += h.header_len - had;
                        self.head_len = 0;
                        self.frame_started(h.len, h.opcode);
                    }
                    Header::Incomplete => {
                        // Incomplete below MAX_HEADER bytes: `take` was all of
                        // the chunk.
                        self.head_len = (had + take) as u8;
                        return all;
                    }
                    Header::Invalid => {
                        self.lose();
                        return all;
                    }
                }
            }
        }
    }

    /// The stream is between two frames (no partial header, no payload left)
    /// and framing was never lost.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.head_len == 0 && !self.is_lost()
    }

    /// Framing could not be followed (a header no valid frame has: 64-bit
    /// length with its top bit set, a control frame longer than 125 bytes or
    /// fragmented (FIN=0 on opcodes 8-15), a reserved opcode 3-7 or 11-15).
    /// Once lost, never at a boundary again, and `scan` consumes everything
    /// and never stops.
    pub fn is_lost(&self) -> bool {
        self.state & LOST != 0
    }

    /// A whole Close frame (opcode 8, header and payload) has gone by since
    /// the tracker was made.
    pub fn close_seen(&self) -> bool {
        self.state & CLOSE_SEEN != 0
    }

    /// A header announcing `payload` bytes of an `opcode` frame was read.
    fn frame_started(&mut self, payload: u64, opcode: u8) {
        self.state = (self.state & !OPCODE_MASK) | opcode;
        self.remaining = payload;
        if payload == 0 {
            self.frame_ended();
        }
    }

    /// The current frame's last byte was read.
    fn frame_ended(&mut self) {
        if self.state & OPCODE_MASK == OP_CLOSE {
            self.state |= CLOSE_SEEN;
        }
    }

    /// Framing is lost for good.
    fn lose(&mut self) {
        self.state |= LOST;
        self.remaining = 0;
        self.head_len = 0;
    }
}

/// A Close frame with `code` and `reason` (reason at most 123 bytes; panics
/// otherwise, callers pass constants): unmasked (server to client) when
/// `mask` is None, else masked with that key (client to server, RFC 6455
/// §5.3). Returns the bytes in a fixed array and the length used (no
/// allocation).
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> ([u8; 131], usize) {
    let reason = reason.as_bytes();
    assert!(
        reason.len() <= MAX_CLOSE_REASON,
        "close reason longer than {MAX_CLOSE_REASON} bytes"
    );
    let payload_len = 2 + reason.len();
    let mut out = [0u8; MAX_CLOSE_FRAME];
    out[0] = 0x80 | OP_CLOSE;
    out[1] = payload_len as u8;
    let mut at = 2;
    if let Some(key) = mask {
        out[1] |= 0x80;
        out[2..6].copy_from_slice(&key);
        at = 6;
    }
    let payload = &mut out[at..at + payload_len];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..].copy_from_slice(reason);
    if let Some(key) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    (out, at + payload_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
    use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};

    /// A tiny xorshift64 for reproducible split points.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A byte stream of frames and what a tracker must find in it.
    struct Stream {
        bytes: Vec<u8>,
        /// Offsets where a frame ends, ascending (0 is the start, also a
        /// boundary).
        ends: Vec<usize>,
        /// The offset where the first Close frame ends.
        close_end: Option<usize>,
    }

    impl Stream {
        fn new() -> Self {
            Stream {
                bytes: Vec::new(),
                ends: Vec::new(),
                close_end: None,
            }
        }

        /// Appends a frame formatted by tungstenite, masked with `mask`.
        fn push(&mut self, mut frame: Frame, mask: Option<[u8; 4]>) {
            frame.header_mut().mask = mask;
            let is_close = frame.header().opcode == OpCode::Control(Control::Close);
            let len = frame.len();
            frame.format(&mut self.bytes).unwrap();
            self.mark(len, is_close);
        }

        /// Appends raw frame bytes (`len` of them already in `bytes`).
        fn mark(&mut self, len: usize, is_close: bool) {
            let end = self.ends.last().copied().unwrap_or(0) + len;
            assert_eq!(end, self.bytes.len());
            self.ends.push(end);
            if is_close && self.close_end.is_none() {
                self.close_end = Some(end);
            }
        }

        fn is_boundary(&self, at: usize) -> bool {
            at == 0 || self.ends.binary_search(&at).is_ok()
        }

        /// Feeds the stream in chunks ending at `cuts` (ascending, the last
        /// one the stream's length) without stopping, checking the state
        /// after every chunk.
        fn check_plain(&self, cuts: &[usize]) {
            let mut t = FrameTracker::default();
            assert!(t.at_boundary());
            let mut at = 0;
            for &cut in cuts {
                let s = t.scan(&self.bytes[at..cut], false);
                assert_eq!(
                    s,
                    Scan {
                        consumed: cut - at,
                        stopped: false
                    }
                );
                at = cut;
                assert_eq!(t.at_boundary(), self.is_boundary(at), "at {at}");
                assert_eq!(
                    t.close_seen(),
                    self.close_end.is_some_and(|e| at >= e),
                    "close_seen at {at}"
                );
                assert!(!t.is_lost());
            }
            assert_eq!(at, self.bytes.len());
        }

        /// Feeds the same chunks stopping at boundaries: the distinct stops
        /// must be exactly the boundaries, in order. After a stop the test
        /// steps over one byte without stopping.
        fn check_stops(&self, cuts: &[usize]) {
            let mut t = FrameTracker::default();
            let mut stops = Vec::new();
            let mut at = 0;
            for &cut in cuts {
                while at < cut || (at == cut && stops.last() != Some(&at)) {
                    if stops.last() == Some(&at) {
                        let s = t.scan(&self.bytes[at..at + 1], false);
                        assert_eq!(s.consumed, 1);
                        at += 1;
                        continue;
                    }
                    let s = t.scan(&self.bytes[at..cut], true);
                    at += s.consumed;
                    if s.stopped {
                        assert!(t.at_boundary(), "stopped off a boundary at {at}");
                        stops.push(at);
                    } else {
                        assert_eq!(at, cut);
                        assert!(!t.at_boundary());
                        break;
                    }
                }
            }
            let mut want = vec![0];
            want.extend(self.ends.iter().copied().filter(|&e| e != 0));
            want.dedup();
            assert_eq!(stops, want);
        }

        /// Byte at a time, every two-chunk split (short streams), and seeded
        /// random chunkings.
        fn check_all(&self, seed: u64) {
            let n = self.bytes.len();
            let bytewise: Vec<usize> = (1..=n).collect();
            self.check_plain(&bytewise);
            self.check_stops(&bytewise);
            self.check_plain(&[n]);
            self.check_stops(&[n]);
            if n <= 4096 {
                for k in 0..=n {
                    self.check_plain(&[k, n]);
                    self.check_stops(&[k, n]);
                }
            }
            let mut rng = XorShift(seed);
            for round in 0..200 {
                let mut cuts = Vec::new();
                let mut at = 0;
                // Alternate small chunks (split headers) and large ones.
                let max = if round % 2 == 0 { 20 } else { 70_000 };
                while at < n {
                    at = (at + 1 + rng.below(max)).min(n);
                    cuts.push(at);
                }
                self.check_plain(&cuts);
                self.check_stops(&cuts);
            }
        }
    }

    fn payload(len: usize, seed: u8) -> Vec<u8> {
        // Bytes that look like headers, to catch a tracker reading payload.
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    const LENGTHS: [usize; 10] = [0, 1, 2, 125, 126, 127, 65535, 65536, 70000, 3];

    /// Fragmented text with interleaved pings and pongs, binaries of every
    /// length class, a close, and a frame after it.
    fn mixed_stream(mask: impl Fn(usize) -> Option<[u8; 4]>) -> Stream {
        let mut s = Stream::new();
        let mut i = 0;
        let mut next_mask = || {
            i += 1;
            mask(i)
        };
        let text = OpCode::Data(Data::Text);
        let cont = OpCode::Data(Data::Continue);
        s.push(Frame::message(b"hel".to_vec(), text, false), next_mask());
        s.push(Frame::ping(payload(0, 1)), next_mask());
        s.push(Frame::message(payload(126, 2), cont, false), next_mask());
        s.push(Frame::pong(payload(125, 3)), next_mask());
        s.push(Frame::ping(payload(1, 4)), next_mask());
        s.push(Frame::message(b"lo".to_vec(), cont, true), next_mask());
        for (k, &len) in LENGTHS.iter().enumerate() {
            let op = OpCode::Data(Data::Binary);
            s.push(Frame::message(payload(len, k as u8), op, true), next_mask());
        }
        s.push(Frame::message(Vec::new(), text, true), next_mask());
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        s.push(Frame::close(Some(close)), next_mask());
        s.push(Frame::pong(payload(5, 9)), next_mask());
        s
    }

    const KEY: [u8; 4] = [0x81, 0x7E, 0x7F, 0x88];

    #[test]
    fn small_enough_for_every_tunnel() {
        assert!(std::mem::size_of::<FrameTracker>() <= 24);
    }

    #[test]
    fn unmasked_stream_at_every_split() {
        mixed_stream(|_| None).check_all(0x9E37_79B9_7F4A_7C15);
    }

    #[test]
    fn masked_stream_at_every_split() {
        mixed_stream(|_| Some(KEY)).check_all(0xD1B5_4A32_D192_ED03);
    }

    #[test]
    fn mixed_masking_at_every_split() {
        mixed_stream(|i| (i % 3 == 0).then_some([i as u8, 0x7F, 0xFE, 126]))
            .check_all(0x2545_F491_4F6C_DD1D);
    }

    #[test]
    fn each_length_alone_at_every_split() {
        for (k, &len) in LENGTHS.iter().enumerate() {
            for mask in [None, Some(KEY)] {
                let mut s = Stream::new();
                let op = OpCode::Data(Data::Binary);
                s.push(Frame::message(payload(len, k as u8), op, true), mask);
                s.push(Frame::ping(payload(2, 7)), mask);
                s.check_all(k as u64 + 1);
            }
        }
    }

    #[test]
    fn close_seen_after_last_payload_byte() {
        for payload_len in [0, 2, 125] {
            for mask in [None, Some(KEY)] {
                let mut s = Stream::new();
                s.push(Frame::ping(payload(3, 0)), mask);
                let close_at = s.bytes.len();
                let mut close = Frame::close(None);
                *close.payload_mut() = payload(payload_len, 5);
                s.push(close, mask);
                s.push(
                    Frame::message(b"x".to_vec(), OpCode::Data(Data::Text), true),
                    mask,
                );
                assert!(s.close_end.unwrap() > close_at);
                // check_plain asserts close_seen exactly from close_end on.
                s.check_all(payload_len as u64 + 11);
            }
        }
    }

    #[test]
    fn tungstenite_agrees_on_the_boundaries() {
        let s = mixed_stream(|i| (i % 2 == 0).then_some(KEY));
        let mut cur = Cursor::new(&s.bytes[..]);
        let mut ends = Vec::new();
        while let Some((_, len)) = FrameHeader::parse(&mut cur).unwrap() {
            let end = cur.position() + len;
            cur.set_position(end);
            ends.push(end as usize);
        }
        assert_eq!(ends, s.ends);
    }

    #[test]
    fn non_minimal_lengths_and_rsv_bits_are_followed() {
        let mut s = Stream::new();
        // Length 5 in the 16-bit form, then in the 64-bit form, masked.
        s.bytes.extend([0x82, 126, 0, 5]);
        s.bytes.extend(payload(5, 0));
        s.mark(9, false);
        s.bytes
            .extend([0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4]);
        s.bytes.extend(payload(5, 1));
        s.mark(19, false);
        // RSV1 (permessage-deflate) is not the tracker's business.
        s.bytes.extend([0xC1, 2, 0xAA, 0xBB]);
        s.mark(4, false);
        s.check_all(77);
    }

    #[test]
    fn empty_chunks() {
        let mut t = FrameTracker::default();
        assert_eq!(
            t.scan(&[], true),
            Scan {
                consumed: 0,
                stopped: true
            }
        );
        assert_eq!(
            t.scan(&[], false),
            Scan {
                consumed: 0,
                stopped: false
            }
        );
        t.scan(&[0x82], false);
        assert_eq!(
            t.scan(&[], true),
            Scan {
                consumed: 0,
                stopped: false
            }
        );
        assert_eq!(
            t.scan(&[3, 0, 0], true),
            Scan {
                consumed: 3,
                stopped: false
            }
        );
        assert_eq!(
            t.scan(&[0, 9], true),
            Scan {
                consumed: 1,
                stopped: true
            }
        );
    }

    #[test]
    fn huge_payload_is_skipped_arithmetically() {
        let mut t = FrameTracker::default();
        let len: u64 = (1 << 40) + 3;
        let mut head = vec![0x82, 127];
        head.extend(len.to_be_bytes());
        assert_eq!(
            t.scan(&head, false),
            Scan {
                consumed: 10,
                stopped: false
            }
        );
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..16 {
            assert!(!t.scan(&chunk, true).stopped);
        }
        assert_eq!(t.remaining, len - 16 * 64 * 1024);
        assert!(!t.at_boundary() && !t.is_lost());
    }

    /// Headers no valid frame has, each after some good frames.
    fn bad_headers() -> Vec<Vec<u8>> {
        let mut bad: Vec<Vec<u8>> = Vec::new();
        for op in (3..=7).chain(11..=15) {
            bad.push(vec![0x80 | op, 0]);
        }
        // Fragmented control frames.
        for op in [0x8, 0x9, 0xA] {
            bad.push(vec![op, 0]);
            bad.push(vec![op, 0x80 | 3, 1, 2, 3, 4]);
        }
        // Control frames longer than 125 bytes.
        for op in [0x88, 0x89, 0x8A] {
            bad.push(vec![op, 126, 0, 126]);
            bad.push(vec![op, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 5]);
        }
        // 64-bit length with the top bit set, masked or not.
        bad.push(vec![0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1]);
        bad.push(vec![
            0x01,
            0x80 | 127,
            0xFF,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            1,
            2,
            3,
            4,
        ]);
        bad
    }

    #[test]
    fn lost_framing_is_for_good() {
        let mut good = Stream::new();
        good.push(Frame::ping(payload(4, 0)), None);
        good.push(
            Frame::message(payload(300, 1), OpCode::Data(Data::Binary), true),
            Some(KEY),
        );
        let tail = payload(500, 3);
        for bad in bad_headers() {
            let mut bytes = good.bytes.clone();
            let bad_at = bytes.len();
            bytes.extend(&bad);
            bytes.extend(&tail);
            // Whole, then byte at a time (the header split everywhere).
            let mut t = FrameTracker::default();
            assert_eq!(t.scan(&bytes, false).consumed, bytes.len());
            assert!(t.is_lost() && !t.at_boundary(), "{bad:?}");
            let mut t = FrameTracker::default();
            for (i, b) in bytes.iter().enumerate() {
                // Stepping off a boundary needs a scan that does not stop.
                let stop = !t.at_boundary();
                let s = t.scan(std::slice::from_ref(b), stop);
                assert_eq!(s.consumed, 1, "{bad:?} at {i}");
                if i + 1 < bad_at {
                    assert!(!t.is_lost());
                } else if i + 1 == bad_at {
                    assert!(s.stopped && t.at_boundary());
                } else if i + 1 >= bad_at + bad.len() {
                    assert!(t.is_lost(), "{bad:?} not lost at {i}");
                }
                if t.is_lost() {
                    assert!(!s.stopped && !t.at_boundary());
                }
            }
            // Nothing brings it back, not even a valid frame.
            assert_eq!(
                t.scan(&[], true),
                Scan {
                    consumed: 0,
                    stopped: false
                }
            );
            let s = t.scan(&[0x81, 0, 0x81, 0], true);
            assert_eq!(
                s,
                Scan {
                    consumed: 4,
                    stopped: false
                }
            );
            assert!(t.is_lost() && !t.at_boundary());
        }
    }

    /// Parses a frame `close_frame` built: header by tungstenite, payload
    /// unmasked here.
    fn parse_close(bytes: &[u8], mask: Option<[u8; 4]>) -> (u16, Vec<u8>) {
        let mut cur = Cursor::new(bytes);
        let (header, len) = FrameHeader::parse(&mut cur).unwrap().unwrap();
        assert!(header.is_final);
        assert_eq!(header.opcode, OpCode::Control(Control::Close));
        assert_eq!(header.mask, mask);
        let start = cur.position() as usize;
        assert_eq!(start + len as usize, bytes.len());
        let mut payload = bytes[start..].to_vec();
        if let Some(key) = mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        (code, payload[2..].to_vec())
    }

    #[test]
    fn close_frame_going_away() {
        let (buf, n) = close_frame(GOING_AWAY, GOING_AWAY_REASON, None);
        assert_eq!(&buf[..4], &[0x88, 12, 0x03, 0xE9]);
        assert_eq!(&buf[4..n], b"going away");
        assert_eq!(n, 14);

        let (buf, n) = close_frame(GOING_AWAY, GOING_AWAY_REASON, Some(KEY));
        assert_eq!(n, 18);
        assert_eq!(&buf[..6], &[0x88, 0x80 | 12, 0x81, 0x7E, 0x7F, 0x88]);
        let (code, reason) = parse_close(&buf[..n], Some(KEY));
        assert_eq!(code, 1001);
        assert_eq!(reason, b"going away");
    }

    #[test]
    fn close_frame_matches_tungstenite() {
        let long = "r".repeat(MAX_CLOSE_REASON);
        for reason in ["", "going away", long.as_str()] {
            for mask in [None, Some(KEY), Some([0, 0, 0, 0])] {
                let (buf, n) = close_frame(GOING_AWAY, reason, mask);
                let mut frame = Frame::close(Some(CloseFrame {
                    code: CloseCode::Away,
                    reason: reason.into(),
                }));
                frame.header_mut().mask = mask;
                let mut want = Vec::new();
                frame.format(&mut want).unwrap();
                assert_eq!(&buf[..n], &want[..]);
                let (code, back) = parse_close(&buf[..n], mask);
                assert_eq!((code, back.as_slice()), (1001, reason.as_bytes()));

                // A tracker sees it as one whole Close frame.
                let mut t = FrameTracker::default();
                assert!(!t.scan(&buf[..n - 1], false).stopped);
                assert!(!t.close_seen());
                assert_eq!(
                    t.scan(&buf[n - 1..n], true),
                    Scan {
                        consumed: 1,
                        stopped: true
                    }
                );
                assert!(t.close_seen() && t.at_boundary());
            }
        }
    }

    #[test]
    #[should_panic(expected = "close reason longer")]
    fn close_frame_rejects_long_reason() {
        close_frame(GOING_AWAY, &"r".repeat(MAX_CLOSE_REASON + 1), None);
    }
}
