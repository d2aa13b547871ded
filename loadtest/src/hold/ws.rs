//! A blocking WebSocket client for the hold scenarios: one connection per
//! thread, every read and write bounded by a timeout, every echo checked
//! byte for byte, and the way a connection ended told apart (the server
//! closed it, reset it, or said something wrong). Throughput is not the
//! point here (see [`crate::client`] for that); knowing exactly what
//! happened to each connection is.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ringway::proto::ws;

use crate::client::{self, frame_with, KEY};
use crate::echo::NAME_HEADER;

/// How long one read, write or connect may take before the connection
/// counts as stuck.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection stopped.
#[derive(Debug)]
pub enum WsError {
    /// The server closed the connection (EOF) where a frame was expected.
    Closed,
    /// A socket error: reset, refused, timed out.
    Io(io::Error),
    /// The server answered something other than what was sent or expected.
    Wrong(String),
}

impl WsError {
    /// A short word for tables: `closed`, `reset`, `timeout`, `error`, `wrong`.
    pub fn kind(&self) -> &'static str {
        match self {
            WsError::Closed => "closed",
            WsError::Io(e) => match e.kind() {
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => "reset",
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timeout",
                _ => "error",
            },
            WsError::Wrong(_) => "wrong",
        }
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::Closed => write!(f, "closed by the server"),
            WsError::Io(e) => write!(f, "{e}"),
            WsError::Wrong(what) => write!(f, "{what}"),
        }
    }
}

impl std::error::Error for WsError {}

impl From<io::Error> for WsError {
    fn from(e: io::Error) -> WsError {
        WsError::Io(e)
    }
}

fn wrong(what: impl Into<String>) -> WsError {
    WsError::Wrong(what.into())
}

/// One upgraded connection.
pub struct Ws {
    s: TcpStream,
    /// Bytes received and not yet consumed as a frame.
    acc: Vec<u8>,
    /// The `X-Echo-Name` of the backend that answered the upgrade.
    pub backend: Option<String>,
}

impl Ws {
    /// Connect to `addr`, ask to upgrade `path`, and check the 101 (its
    /// `Sec-WebSocket-Accept` included).
    pub fn connect(addr: SocketAddr, path: &str) -> Result<Ws, WsError> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut ws = Ws {
            s,
            acc: Vec::with_capacity(1024),
            backend: None,
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        ws.s.write_all(request.as_bytes())?;
        let end = loop {
            if let Some(i) = ws.acc.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if ws.acc.len() > 16 * 1024 {
                return Err(wrong("upgrade answer head too large"));
            }
            ws.fill()?;
        };
        let head = ws.acc[..end].to_vec();
        ws.acc.drain(..end);
        client::check_switch(&head).map_err(|e| wrong(format!("{e:#}")))?;
        ws.backend = header(&head, NAME_HEADER);
        Ok(ws)
    }

    /// Send `payload` as one binary message and wait for it to come back
    /// unchanged.
    pub fn echo(&mut self, payload: &[u8]) -> Result<(), WsError> {
        self.s.write_all(&frame_with(ws::OP_BINARY, payload))?;
        let (op, back) = self.frame()?;
        if op != ws::OP_BINARY || back != payload {
            return Err(wrong(format!(
                "echo differs: sent {} bytes, got opcode {op} with {} bytes",
                payload.len(),
                back.len()
            )));
        }
        Ok(())
    }

    /// The clean end: send a Close (1000), read the server's Close, then
    /// its EOF.
    pub fn close(mut self) -> Result<(), WsError> {
        self.s
            .write_all(&frame_with(ws::OP_CLOSE, &1000u16.to_be_bytes()))?;
        let (op, _) = self.frame()?;
        if op != ws::OP_CLOSE {
            return Err(wrong(format!("opcode {op} instead of the Close")));
        }
        let mut rest = [0u8; 64];
        match self.s.read(&mut rest)? {
            0 => Ok(()),
            n => Err(wrong(format!("{n} bytes after the Close"))),
        }
    }

    /// One whole frame from the server (unmasked): its opcode and payload.
    fn frame(&mut self) -> Result<(u8, Vec<u8>), WsError> {
        loop {
            match ws::read_header(&self.acc) {
                ws::Header::Complete(h) if h.mask.is_some() => {
                    return Err(wrong("masked frame from the server"))
                }
                ws::Header::Complete(h) => {
                    let end = h.header_len + h.len as usize;
                    if self.acc.len() >= end {
                        let payload = self.acc[h.header_len..end].to_vec();
                        self.acc.drain(..end);
                        return Ok((h.opcode, payload));
                    }
                }
                ws::Header::Invalid => return Err(wrong("invalid frame header")),
                ws::Header::Incomplete => {}
            }
            self.fill()?;
        }
    }

    /// Read once more into `acc`; EOF is [`WsError::Closed`].
    fn fill(&mut self) -> Result<(), WsError> {
        let mut buf = [0u8; 4096];
        match self.s.read(&mut buf)? {
            0 => Err(WsError::Closed),
            n => {
                self.acc.extend_from_slice(&buf[..n]);
                Ok(())
            }
        }
    }
}

/// The value of header `name` in a response head.
fn header(head: &[u8], name: &str) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(head).ok()?;
    resp.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
}

/// Connect, echo `echoes` messages, close: one short connection. Returns
/// the backend that answered.
pub fn probe(addr: SocketAddr, path: &str, echoes: usize, tag: u64) -> Result<String, WsError> {
    let mut ws = Ws::connect(addr, path)?;
    for i in 0..echoes {
        ws.echo(&payload(tag, i as u64))?;
    }
    let backend = ws.backend.take().unwrap_or_default();
    ws.close()?;
    Ok(backend)
}

/// The 16 bytes one message carries: who sent it and its number, so that
/// an echo from the wrong connection or out of order cannot pass.
pub fn payload(tag: u64, seq: u64) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&tag.to_le_bytes());
    p[8..].copy_from_slice(&seq.to_le_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_backend_name() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nX-Echo-Name: b\r\n\r\n";
        assert_eq!(header(head, NAME_HEADER).as_deref(), Some("b"));
        assert_eq!(header(b"HTTP/1.1 101 OK\r\n\r\n", NAME_HEADER), None);
    }

    #[test]
    fn error_kinds() {
        assert_eq!(WsError::Closed.kind(), "closed");
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(WsError::Io(reset).kind(), "reset");
        let late = io::Error::from(io::ErrorKind::WouldBlock);
        assert_eq!(WsError::Io(late).kind(), "timeout");
        assert_eq!(wrong("x").kind(), "wrong");
        assert_ne!(payload(1, 2), payload(2, 1));
    }
}
