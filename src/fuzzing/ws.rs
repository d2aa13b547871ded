//! The `frame_tracker` target: [`FrameTracker`], which follows a tunnel's
//! WebSocket frames so that a drain can stop at a boundary.

use super::{cuts, seed_of, Input};
use crate::proto::ws::tracker::{FrameTracker, Scan};
use crate::proto::ws::{read_header, Header, OP_CLOSE};

/// The frame tracker target. The first byte picks a case:
///
/// - valid frames built from the input (data and control opcodes, FIN and
///   RSV bits, masked or not, lengths in minimal and non-minimal
///   encodings, payloads of arbitrary bytes) and cut into arbitrary pieces:
///   after every piece the tracker is at a boundary exactly where a frame
///   ended, has seen a Close exactly once the first Close frame's last byte
///   went by, and never loses framing; told to stop at boundaries, it stops
///   at each boundary once and in order, which are the boundaries it finds
///   when fed the stream whole (it counts the same frames);
/// - arbitrary bytes in arbitrary pieces: no panic, `scan` never consumes
///   more than the piece, and after every piece the tracker agrees with a
///   model that walks the bytes so far with [`read_header`] (at a boundary,
///   lost, Close seen); stopping at boundaries finds the model's
///   boundaries; once lost it stays lost.
pub fn frame_tracker(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 2 {
        0 => {
            let (stream, ends, close_end) = build_frames(&mut input);
            let seed = seed_of(data);
            for c in [vec![stream.len()], cuts(stream.len(), seed, 12)] {
                follow(&stream, &c, |at| {
                    let state = model(&stream[..at]);
                    assert_eq!(state.boundary, at == 0 || ends.binary_search(&at).is_ok());
                    assert_eq!(state.close_seen, close_end.is_some_and(|e| at >= e));
                    assert!(!state.lost);
                    state
                });
                let mut all = vec![0];
                all.extend_from_slice(&ends);
                assert_eq!(stops(&stream, &c), all, "stops");
            }
        }
        _ => {
            let stream = input.rest();
            let seed = seed_of(stream);
            let whole = model(stream);
            for c in [vec![stream.len()], cuts(stream.len(), seed, 12)] {
                follow(stream, &c, |at| model(&stream[..at]));
                assert_eq!(stops(stream, &c), whole.boundaries, "stops");
            }
        }
    }
}

/// Frames built from the input: the stream, the offsets where frames end,
/// and where the first Close frame ends.
fn build_frames(input: &mut Input<'_>) -> (Vec<u8>, Vec<usize>, Option<usize>) {
    const OPCODES: [u8; 6] = [0x0, 0x1, 0x2, 0x8, 0x9, 0xA];
    let mut out = Vec::new();
    let mut ends = Vec::new();
    let mut close_end = None;
    while !input.is_empty() && ends.len() < 64 {
        let flags = input.byte();
        let opcode = OPCODES[usize::from(flags % 6)];
        let control = opcode >= 8;
        let fin = control || flags & 0x08 != 0;
        let shape = input.byte();
        let len = if control {
            usize::from(shape % 126)
        } else {
            match shape >> 6 {
                0 => usize::from(shape % 126),
                1 => usize::from(input.byte()) + 126,
                2 => usize::from(input.u16() % 2048),
                _ => 65_536 + usize::from(input.byte()),
            }
        };
        // RSV bits are the extensions' business: the tracker ignores them.
        out.push(u8::from(fin) << 7 | (flags & 0x70) | opcode);
        let mask_bit = if shape & 0x20 != 0 { 0x80 } else { 0 };
        // The length in the shortest encoding, or (control frames aside) in
        // a longer one, which RFC 6455 forbids but parsers accept.
        let wide = !control && flags & 0x80 != 0;
        if len < 126 && !wide {
            out.push(mask_bit | len as u8);
        } else if len <= 0xFFFF && !(wide && len < 126 && shape & 1 != 0) {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if mask_bit != 0 {
            let key = input.take(4);
            out.extend_from_slice(key);
            out.resize(out.len() + 4 - key.len(), 0);
        }
        // The payload is arbitrary: it may look like headers of any kind.
        let payload = input.take(len);
        out.extend_from_slice(payload);
        out.resize(out.len() + len - payload.len(), 0x88);
        ends.push(out.len());
        if opcode == OP_CLOSE && close_end.is_none() {
            close_end = Some(out.len());
        }
    }
    (out, ends, close_end)
}

/// Where a tracker fed `bytes` from the start must be.
#[derive(Debug, PartialEq, Eq)]
struct State {
    boundary: bool,
    lost: bool,
    close_seen: bool,
    /// Every boundary passed (0 first), up to where framing ends or is lost.
    boundaries: Vec<usize>,
}

/// The model: walk `bytes` frame by frame with [`read_header`].
fn model(bytes: &[u8]) -> State {
    let mut s = State {
        boundary: false,
        lost: false,
        close_seen: false,
        boundaries: Vec::new(),
    };
    let mut pos = 0usize;
    loop {
        s.boundaries.push(pos);
        if pos == bytes.len() {
            s.boundary = true;
            return s;
        }
        match read_header(&bytes[pos..]) {
            Header::Incomplete => return s,
            Header::Invalid => {
                s.lost = true;
                return s;
            }
            Header::Complete(h) => {
                let end = (pos + h.header_len) as u64 + h.len;
                if end > bytes.len() as u64 {
                    return s;
                }
                pos = end as usize;
                if h.opcode == OP_CLOSE {
                    s.close_seen = true;
                }
            }
        }
    }
}

/// Feed `bytes` in the pieces ending at `cuts` without stopping, checking
/// the tracker after every piece against `expect(offset)`.
fn follow(bytes: &[u8], cuts: &[usize], expect: impl Fn(usize) -> State) {
    let mut t = FrameTracker::default();
    let mut at = 0;
    let mut lost = false;
    for &cut in cuts {
        let s = t.scan(&bytes[at..cut], false);
        assert_eq!(
            s,
            Scan {
                consumed: cut - at,
                stopped: false
            }
        );
        at = cut;
        let want = expect(at);
        assert_eq!(t.at_boundary(), want.boundary, "boundary at {at}");
        assert_eq!(t.is_lost(), want.lost, "lost at {at}");
        assert_eq!(t.close_seen(), want.close_seen, "close seen at {at}");
        assert!(!lost || t.is_lost(), "found again after being lost");
        lost = t.is_lost();
    }
}

/// Feed `bytes` in the pieces ending at `cuts`, stopping at boundaries
/// (and stepping one byte past each without stopping): the distinct
/// offsets it stopped at.
fn stops(bytes: &[u8], cuts: &[usize]) -> Vec<usize> {
    let mut t = FrameTracker::default();
    let mut found: Vec<usize> = Vec::new();
    let mut at = 0;
    for &cut in cuts {
        loop {
            let s = t.scan(&bytes[at..cut], true);
            assert!(s.consumed <= cut - at, "consumed past the piece");
            if !s.stopped {
                assert_eq!(s.consumed, cut - at);
                at = cut;
                break;
            }
            at += s.consumed;
            assert!(t.at_boundary(), "stopped off a boundary at {at}");
            if found.last() != Some(&at) {
                assert!(found.last() < Some(&at), "stops out of order");
                found.push(at);
            }
            if at == cut {
                break;
            }
            let s = t.scan(&bytes[at..at + 1], false);
            assert_eq!(s.consumed, 1);
            at += 1;
        }
    }
    found
}
