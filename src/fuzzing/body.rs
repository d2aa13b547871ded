//! The `body` target: [`crate::proto::http::body::Framing`], the scanner
//! that decides where a body ends so that nothing behind it is forwarded.

use super::{cuts, seed_of, Input};
use crate::proto::http::body::{BadChunk, Chunked, Framing};

/// The body framing target. The first byte picks a case:
///
/// - arbitrary bytes as a chunked body: fed whole or in any pieces, the
///   scanner gives the same answer (error or not, bytes taken, done or
///   not); it never takes more than it is given, takes nothing once done,
///   and a body it calls done ends in LF and is done again when fed alone;
/// - a valid chunked body built from the input (sizes, hex case, leading
///   zeros, extensions, bare LF line ends, trailers) followed by arbitrary
///   bytes: in any pieces, exactly the body is taken, none of what follows;
/// - a `Content-Length` body: `min(length, sent)` bytes are taken, it is
///   done exactly when the length is reached, and `cap` never goes past
///   the end.
pub fn body(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 3 {
        0 => arbitrary_chunks(input.rest()),
        1 => valid_chunks(&mut input),
        _ => exact(&mut input),
    }
}

/// Feed `data` to `framing` in the pieces ending at `cuts`, stopping where
/// a piece is not taken whole: `(taken, done)`, and every piece's rule
/// checked.
fn feed(mut framing: Framing, data: &[u8], cuts: &[usize]) -> Result<(usize, bool), BadChunk> {
    let mut at = 0;
    for &cut in cuts {
        let piece = &data[at..cut];
        let cap = framing.cap(piece.len());
        assert!(cap <= piece.len(), "cap past the piece");
        let was_done = framing.is_done();
        let used = framing.take(piece)?;
        assert!(used <= piece.len(), "took more than given");
        if let Framing::Exact(_) = framing {
            assert!(used <= cap, "took past the cap");
        }
        if was_done {
            assert_eq!(used, 0, "took bytes after the end");
        }
        at += used;
        if used < piece.len() {
            assert!(framing.is_done(), "stopped early without an end");
            // Whatever comes after, nothing more is taken.
            assert_eq!(framing.take(&data[at..]), Ok(0));
            return Ok((at, true));
        }
        at = cut;
    }
    Ok((at, framing.is_done()))
}

fn chunked() -> Framing {
    Framing::Chunked(Chunked::default())
}

fn arbitrary_chunks(data: &[u8]) {
    let whole = feed(chunked(), data, &[data.len()]);
    let split = feed(chunked(), data, &cuts(data.len(), seed_of(data), 16));
    assert_eq!(whole, split, "whole and in pieces");
    let Ok((taken, done)) = whole else { return };
    if done {
        assert_eq!(data[taken - 1], b'\n', "a body ends in LF");
        assert_eq!(feed(chunked(), &data[..taken], &[taken]), Ok((taken, true)));
    } else {
        assert_eq!(taken, data.len());
    }
}

/// Build a valid chunked body from `input`; returns it.
fn build_chunked(input: &mut Input<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let flags = input.byte();
    let eol: &[u8] = if flags & 1 == 0 { b"\r\n" } else { b"\n" };
    let chunks = input.byte() % 6;
    for i in 0..=chunks {
        let last = i == chunks;
        let size = if last {
            0
        } else {
            usize::from(input.u16() % 700) + 1
        };
        let shape = input.byte();
        out.extend(std::iter::repeat_n(b'0', usize::from(shape % 3)));
        let hex = if shape & 4 == 0 {
            format!("{size:x}")
        } else {
            format!("{size:X}")
        };
        if size != 0 || shape.is_multiple_of(3) {
            out.extend_from_slice(hex.as_bytes());
        }
        match (shape >> 3) % 4 {
            0 => {}
            1 => out.extend_from_slice(b";name=value"),
            2 => out.extend_from_slice(b" ; a=\"q;x\"; b"),
            _ => out.extend_from_slice(b"\t;x"),
        }
        out.extend_from_slice(eol);
        if last {
            break;
        }
        // The data is arbitrary: it may look like anything at all.
        let data = input.take(size);
        out.extend_from_slice(data);
        out.resize(out.len() + size - data.len(), b'\r');
        out.extend_from_slice(eol);
    }
    for t in 0..(flags >> 1) % 3 {
        out.extend_from_slice(format!("X-Trailer-{t}: v{t}").as_bytes());
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(eol);
    out
}

fn valid_chunks(input: &mut Input<'_>) {
    let body = build_chunked(input);
    let mut stream = body.clone();
    stream.extend_from_slice(input.rest());
    let seed = seed_of(&stream);
    for c in [vec![stream.len()], cuts(stream.len(), seed, 24)] {
        let got = feed(chunked(), &stream, &c);
        assert_eq!(got, Ok((body.len(), true)), "valid body {body:?}");
    }
}

fn exact(input: &mut Input<'_>) {
    let length = match input.byte() % 3 {
        0 => u64::from(input.byte()),
        1 => u64::from(input.u16()),
        _ => u64::from(input.u32()) << 16,
    };
    let data = input.rest();
    let want = (
        length.min(data.len() as u64) as usize,
        data.len() as u64 >= length,
    );
    for c in [vec![data.len()], cuts(data.len(), seed_of(data), 16)] {
        assert_eq!(feed(Framing::Exact(length), data, &c), Ok(want));
    }
}
