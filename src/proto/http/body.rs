//! Message body framing (RFC 9112 section 6): how many of the bytes that
//! follow a head belong to its message. ringway forwards bodies as they come
//! and never buffers them; it only needs to know where each one ends, so that
//! what follows (a pipelined or smuggled second request) is never forwarded.

/// Where the rest of a body ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// The body is complete (or there is none).
    Done,
    /// Exactly this many more bytes.
    Exact(u64),
    /// A chunked body, scanned as it passes.
    Chunked(Chunked),
    /// Until the sender closes (a response without length).
    UntilClose,
}

/// A chunked body that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct BadChunk;

impl Framing {
    /// The most bytes worth reading now (never past the end of the body).
    pub fn cap(&self, buf_len: usize) -> usize {
        match self {
            Framing::Done => 0,
            Framing::Exact(n) => (*n).min(buf_len as u64) as usize,
            Framing::Chunked(_) | Framing::UntilClose => buf_len,
        }
    }

    /// Account for `data`, which arrived after what was seen so far. Returns
    /// how many of its bytes belong to the body; the body is complete when
    /// `self` is `Done` afterwards.
    pub fn take(&mut self, data: &[u8]) -> Result<usize, BadChunk> {
        match self {
            Framing::Done => Ok(0),
            Framing::Exact(n) => {
                let used = (*n).min(data.len() as u64);
                *n -= used;
                if *n == 0 {
                    *self = Framing::Done;
                }
                Ok(used as usize)
            }
            Framing::Chunked(c) => {
                let used = c.feed(data)?;
                if c.state == State::End {
                    *self = Framing::Done;
                }
                Ok(used)
            }
            Framing::UntilClose => Ok(data.len()),
        }
    }

    pub fn is_done(&self) -> bool {
        *self == Framing::Done
    }
}

/// Longest chunk-size line (with extensions) or trailer line accepted.
const MAX_LINE: u32 = 4096;

/// The state of a chunked-body scanner (RFC 9112 7.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunked {
    state: State,
    /// Size being read, or data bytes left in the current chunk.
    n: u64,
    /// Length of the current size/trailer line, to bound it.
    line: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Hex digits of a chunk size (at least one).
    #[default]
    SizeStart,
    Size,
    /// Chunk extensions, up to the line's LF.
    Extension,
    /// Chunk data, `n` bytes left.
    Data,
    /// The CR LF after a chunk's data.
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line (or the end).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// The LF of the empty line that ends the body.
    EndLf,
    End,
}

impl Chunked {
    /// Feed bytes; returns how many belong to the body (all of them, unless
    /// the body ends inside `data`).
    fn feed(&mut self, data: &[u8]) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                State::SizeStart | State::Size => match super::hex_digit(b) {
                    Some(d) => {
                        if self.n >> 60 != 0 {
                            return Err(BadChunk);
                        }
                        self.n = self.n << 4 | d as u64;
                        self.state = State::Size;
                    }
                    None if self.state == State::SizeStart => return Err(BadChunk),
                    None if b == b'\n' => self.end_size_line(),
                    None if b == b';' || b == b'\r' || b == b' ' || b == b'\t' => {
                        self.state = State::Extension;
                        self.line = 0;
                    }
                    None => return Err(BadChunk),
                },
                State::Extension => {
                    if b == b'\n' {
                        self.end_size_line();
                    } else {
                        self.bump_line()?;
                    }
                }
                State::Data => {
                    let take = (self.n).min((data.len() - i) as u64) as usize;
                    self.n -= take as u64;
                    i += take;
                    if self.n == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    self.state = match b {
                        b'\r' => State::DataLf,
                        b'\n' => State::SizeStart,
                        _ => return Err(BadChunk),
                    }
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = State::SizeStart;
                }
                State::TrailerStart => {
                    self.line = 0;
                    self.state = match b {
                        b'\r' => State::EndLf,
                        b'\n' => State::End,
                        _ => State::Trailer,
                    };
                    if self.state == State::End {
                        return Ok(i + 1);
                    }
                }
                State::Trailer => {
                    if b == b'\n' {
                        self.state = State::TrailerStart;
                    } else {
                        self.bump_line()?;
                    }
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = State::End;
                    return Ok(i + 1);
                }
                State::End => return Ok(i),
            }
            i += 1;
        }
        Ok(data.len())
    }

    fn end_size_line(&mut self) {
        self.state = if self.n == 0 {
            State::TrailerStart
        } else {
            State::Data
        };
    }

    fn bump_line(&mut self) -> Result<(), BadChunk> {
        self.line += 1;
        if self.line > MAX_LINE {
            return Err(BadChunk);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `body` in pieces of `step`; the number of bytes taken as body.
    fn taken(body: &[u8], step: usize) -> Result<(usize, bool), BadChunk> {
        let mut f = Framing::Chunked(Chunked::default());
        let mut total = 0;
        for part in body.chunks(step.max(1)) {
            let used = f.take(part)?;
            total += used;
            if used < part.len() {
                break;
            }
        }
        Ok((total, f.is_done()))
    }

    #[test]
    fn chunked_bodies_end_exactly_where_they_end() {
        let body =
            b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n";
        let mut with_next = body.to_vec();
        with_next.extend_from_slice(b"GET /smuggled HTTP/1.1\r\n\r\n");
        for step in [1, 2, 3, 7, 64, 1000] {
            assert_eq!(
                taken(body, step).unwrap(),
                (body.len(), true),
                "step {step}"
            );
            assert_eq!(
                taken(&with_next, step).unwrap(),
                (body.len(), true),
                "step {step}"
            );
        }
        assert_eq!(taken(b"0\r\n\r\n", 1).unwrap(), (5, true));
        assert_eq!(taken(b"0\n\n", 1).unwrap(), (3, true));
        assert_eq!(taken(b"5\r\nhel", 2).unwrap(), (6, false));
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"fffffffffffffffff\r\n",
            b"5 ;\r\nhello\r\n0\r\n\rX",
        ] {
            assert!(taken(bad, 1).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut long = b"1;".to_vec();
        long.resize(MAX_LINE as usize + 10, b'a');
        assert!(taken(&long, 100).is_err());
    }

    #[test]
    fn exact_and_open_framing() {
        let mut f = Framing::Exact(5);
        assert_eq!(f.cap(100), 5);
        assert_eq!(f.take(b"abc").unwrap(), 3);
        assert_eq!(f.take(b"defgh").unwrap(), 2);
        assert!(f.is_done());
        assert_eq!(f.cap(100), 0);
        let mut f = Framing::UntilClose;
        assert_eq!(f.take(b"abc").unwrap(), 3);
        assert!(!f.is_done());
    }
}
