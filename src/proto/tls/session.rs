//! One TLS session over a socket, driven through rustls's unbuffered API so
//! that the session holds no record buffers of its own.
//!
//! Received ciphertext is read into the per-core scratch buffer and handed
//! to rustls there; the plaintext it yields is copied into the core's second
//! buffer. Plaintext to send is sealed into a per-core buffer and sent at
//! once. The session keeps bytes only while something is half done:
//!
//! - `incoming`: the start of a record (or, in the handshake, of a handshake
//!   message) whose rest has not arrived yet;
//! - `outgoing`: ciphertext the socket has not taken yet (the handshake's
//!   flights, or a backlog while the peer reads slowly).
//!
//! Both are released (no capacity kept) as soon as they empty, so an idle
//! wss tunnel holds only rustls's connection state (keys and sequence
//! numbers). The functions here never wait: `io::tunnel` does the waiting.

use std::io;
use std::sync::Arc;

use monoio::net::TcpStream;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedConnectionCommon, UnbufferedStatus,
};
use rustls::{ClientConfig, ServerConfig};

use crate::sys::{self, Xfer};

/// Largest amount of ciphertext the session may have to hold at once, and
/// so the least scratch space a TLS read needs: a whole handshake message
/// (at most 64 KiB, spread over records) plus record headers.
pub const MIN_READ_SPACE: usize = 72 * 1024;

/// Bytes of record framing, padding and authentication tag one sealed
/// record may add (TLS 1.2 GCM adds 29, TLS 1.3 22), with room to spare.
const RECORD_OVERHEAD: usize = 64;

/// rustls's largest record payload: plaintext is sealed in pieces this big.
const MAX_FRAGMENT: usize = 16 * 1024;

/// The largest record on the wire (TLS 1.2 allows 2 KiB of expansion).
pub(crate) const MAX_RECORD: usize = 5 + MAX_FRAGMENT + 2048;

/// Most bytes sealing `len` bytes of plaintext can produce.
pub fn sealed_len(len: usize) -> usize {
    len + (len / MAX_FRAGMENT + 1) * RECORD_OVERHEAD
}

enum Tls {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

/// Run `$body` with `$c` bound to the connection, whichever side it is (the
/// two types share their methods but not a trait).
macro_rules! either {
    ($tls:expr, $c:ident => $body:expr) => {
        match $tls {
            Tls::Server($c) => $body,
            Tls::Client($c) => $body,
        }
    };
}

/// A TLS session, server side (a wss:// client) or client side (a wss://
/// backend).
pub struct Session {
    tls: Tls,
    incoming: Vec<u8>,
    outgoing: Vec<u8>,
    /// Right after the handshake rustls may hold decrypted data already:
    /// read once before waiting for the socket.
    pending: bool,
    /// The peer sent close_notify (or its socket closed): nothing more to read.
    peer_closed: bool,
    /// No byte has come from the peer yet (to recognise plain HTTP).
    fresh: bool,
    /// rustls failed (or kept bytes were lost): never call into it again.
    broken: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("server", &matches!(self.tls, Tls::Server(_)))
            .field("incoming", &self.incoming.len())
            .field("outgoing", &self.outgoing.len())
            .finish()
    }
}

/// What one [`Session::recv`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Plaintext bytes now at the start of the output buffer.
    pub plain: usize,
    /// Ciphertext bytes read from the socket by this call.
    pub raw: usize,
    /// Nothing more will come: close_notify, or the socket closed.
    pub eof: bool,
}

/// What one step of the handshake came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Bytes were taken (or none were there): go on.
    Progress,
    /// The peer closed before the handshake finished.
    Eof,
    /// The first bytes are a plain HTTP request, not TLS.
    PlainHttp,
}

/// A TLS failure as an I/O error, so that it travels with socket errors.
pub fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Session {
    /// A server-side session for a client that has just connected.
    pub fn server(config: Arc<ServerConfig>) -> Result<Session, rustls::Error> {
        Ok(Session::new(Tls::Server(UnbufferedServerConnection::new(
            config,
        )?)))
    }

    /// A client-side session to a backend; its ClientHello is queued at once.
    pub fn client(config: Arc<ClientConfig>, name: ServerName<'static>) -> io::Result<Session> {
        let conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
        let mut session = Session::new(Tls::Client(conn));
        session.process(&mut [], &mut [], true)?;
        Ok(session)
    }

    fn new(tls: Tls) -> Session {
        Session {
            tls,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            pending: false,
            peer_closed: false,
            fresh: true,
            broken: false,
        }
    }

    pub fn is_handshaking(&self) -> bool {
        either!(&self.tls, c => c.is_handshaking())
    }

    /// The peer has sent close_notify: nothing more will come.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Whether a read may find data (or the end) without the socket
    /// becoming readable.
    pub fn has_pending(&self) -> bool {
        self.pending || self.peer_closed
    }

    /// The negotiated protocol version, for log lines.
    pub fn version(&self) -> &'static str {
        match either!(&self.tls, c => c.protocol_version()) {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        }
    }

    /// One handshake step: read what the socket has into `buf[..cap]` (after
    /// any bytes kept from before) and let rustls take it; its answers are
    /// queued for [`Session::try_flush`]. Data records that arrive with the
    /// end of the handshake are left for the first [`Session::recv`].
    pub fn handshake_step(
        &mut self,
        sock: &TcpStream,
        buf: &mut [u8],
        cap: usize,
    ) -> io::Result<Step> {
        self.handshake_with(buf, cap, |room| sys::recv(sock, room))
    }

    /// [`Session::handshake_step`] with `read` standing for the socket's
    /// `recv` (the fuzz targets read from a byte slice).
    pub(crate) fn handshake_with(
        &mut self,
        buf: &mut [u8],
        cap: usize,
        read: impl FnOnce(&mut [u8]) -> io::Result<Xfer>,
    ) -> io::Result<Step> {
        let (filled, got) = self.fill(buf, cap, true, read)?;
        if got == Xfer::Eof {
            return Ok(Step::Eof);
        }
        if self.fresh && filled > 0 {
            self.fresh = false;
            if matches!(self.tls, Tls::Server(_)) && looks_like_http(&buf[..filled]) {
                return Ok(Step::PlainHttp);
            }
        }
        let done = self.process(&mut buf[..filled], &mut [], true)?;
        self.keep(&buf[done.consumed..filled]);
        if done.closed {
            return Ok(Step::Eof);
        }
        if !self.is_handshaking() {
            self.pending = true;
        }
        Ok(Step::Progress)
    }

    /// Read what the socket has into `buf[..cap]` (after any bytes kept from
    /// before), decrypt it, and copy the plaintext to the start of
    /// `plain_out`, which must be at least `cap` long.
    pub fn recv(
        &mut self,
        sock: &TcpStream,
        buf: &mut [u8],
        cap: usize,
        plain_out: &mut [u8],
    ) -> io::Result<Received> {
        let got = self.recv_with(buf, cap, plain_out, |room| sys::recv(sock, room))?;
        // Answers rustls owes the peer (a key update): out now if they fit.
        self.try_flush(sock)?;
        Ok(got)
    }

    /// [`Session::recv`] with `read` standing for the socket's `recv`, and
    /// without the flush of what rustls owes the peer (it waits in
    /// `outgoing`).
    pub(crate) fn recv_with(
        &mut self,
        buf: &mut [u8],
        cap: usize,
        plain_out: &mut [u8],
        read: impl FnOnce(&mut [u8]) -> io::Result<Xfer>,
    ) -> io::Result<Received> {
        // Right after the handshake, only what is kept: rustls may hold a
        // record's plaintext already, and more on top could overflow
        // `plain_out`.
        let read_socket = !std::mem::take(&mut self.pending);
        let (filled, got) = self.fill(buf, cap, read_socket, read)?;
        let raw = match got {
            Xfer::Done(n) => n,
            _ => 0,
        };
        let done = self.process(&mut buf[..filled], plain_out, false)?;
        let rest = &buf[done.consumed..filled];
        // After its handshake a client sends records, and at most a key
        // update: more than a record kept would be a half-sent handshake
        // message held open to make an idle connection cost memory.
        if matches!(self.tls, Tls::Server(_)) && rest.len() > MAX_RECORD {
            self.broken = true;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS: an unfinished message larger than a record",
            ));
        }
        self.keep(rest);
        if done.closed {
            self.peer_closed = true;
        }
        let eof = done.plain == 0 && (self.peer_closed || got == Xfer::Eof);
        Ok(Received {
            plain: done.plain,
            raw,
            eof,
        })
    }

    /// Put the kept bytes at the start of `buf`, then (if `read_socket`)
    /// read after them.
    fn fill(
        &mut self,
        buf: &mut [u8],
        cap: usize,
        read_socket: bool,
        read: impl FnOnce(&mut [u8]) -> io::Result<Xfer>,
    ) -> io::Result<(usize, Xfer)> {
        let kept = self.incoming.len();
        if kept >= cap {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS message larger than the read buffer",
            ));
        }
        buf[..kept].copy_from_slice(&self.incoming);
        self.incoming = Vec::new();
        if self.peer_closed {
            return Ok((kept, Xfer::Eof));
        }
        if !read_socket {
            return Ok((kept, Xfer::WouldBlock));
        }
        let got = match read(&mut buf[kept..cap]) {
            Ok(g) => g,
            Err(e) => {
                self.incoming = buf[..kept].to_vec();
                return Err(e);
            }
        };
        let filled = match got {
            Xfer::Done(n) => kept + n,
            _ => kept,
        };
        Ok((filled, got))
    }

    /// Take what waits to be sent, as a socket that takes everything would
    /// (the fuzz targets hand it to their client).
    pub(crate) fn take_outgoing(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outgoing)
    }

    /// Bytes kept for the next read (the start of a record).
    pub(crate) fn kept(&self) -> usize {
        self.incoming.len()
    }

    /// Keep the bytes rustls could not take yet (the start of a record).
    fn keep(&mut self, rest: &[u8]) {
        if !rest.is_empty() {
            self.incoming = rest.to_vec();
        }
    }

    fn process(
        &mut self,
        buf: &mut [u8],
        plain_out: &mut [u8],
        stop_at_data: bool,
    ) -> io::Result<Processed> {
        self.usable()?;
        let outgoing = &mut self.outgoing;
        let r =
            either!(&mut self.tls, c => process(&mut **c, buf, plain_out, outgoing, stop_at_data));
        if r.is_err() {
            self.broken = true;
        }
        r.map_err(tls_error)
    }

    /// A session rustls failed on must never be called into again: rustls
    /// may hold positions into bytes that are gone.
    fn usable(&self) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other("TLS session failed"));
        }
        Ok(())
    }

    /// Seal `data` into `out` (at least [`sealed_len`] of it long) and
    /// return the sealed length. Send it with [`Session::send`].
    pub fn seal(&mut self, data: &[u8], out: &mut [u8]) -> io::Result<usize> {
        self.usable()?;
        let (incoming, outgoing) = (&mut self.incoming, &mut self.outgoing);
        either!(&mut self.tls, c => seal(&mut **c, incoming, outgoing, |w| w.encrypt(data, out)))
    }

    /// Queue a close_notify alert (then [`Session::try_flush`] it).
    pub fn close_notify(&mut self) -> io::Result<()> {
        self.usable()?;
        let mut alert = [0u8; RECORD_OVERHEAD];
        let (incoming, outgoing) = (&mut self.incoming, &mut self.outgoing);
        let n = either!(&mut self.tls, c => seal(&mut **c, incoming, outgoing, |w| {
            w.queue_close_notify(&mut alert)
        }))?;
        self.outgoing.extend_from_slice(&alert[..n]);
        Ok(())
    }

    /// Send sealed bytes after anything already waiting, as far as the
    /// socket takes them; the rest waits in the session. `Ok(true)`: all out.
    pub fn send(&mut self, sock: &TcpStream, sealed: &[u8]) -> io::Result<bool> {
        if !self.outgoing.is_empty() {
            self.outgoing.extend_from_slice(sealed);
            return self.try_flush(sock);
        }
        let sent = match sys::send(sock, sealed)? {
            Xfer::Done(n) => n,
            Xfer::WouldBlock | Xfer::Eof => 0,
        };
        if sent == sealed.len() {
            return Ok(true);
        }
        self.outgoing.extend_from_slice(&sealed[sent..]);
        Ok(false)
    }

    /// Send what is waiting, as far as the socket takes it. `Ok(true)`:
    /// nothing is left (and the buffer is released).
    pub fn try_flush(&mut self, sock: &TcpStream) -> io::Result<bool> {
        let mut sent = 0;
        while sent < self.outgoing.len() {
            match sys::send(sock, &self.outgoing[sent..])? {
                Xfer::Done(n) => sent += n,
                Xfer::WouldBlock | Xfer::Eof => {
                    self.outgoing.drain(..sent);
                    return Ok(false);
                }
            }
        }
        self.outgoing = Vec::new();
        Ok(true)
    }

    /// A failed session may owe the peer an alert: send it if the socket
    /// takes it now, never wait for it.
    pub fn send_alert(&mut self, sock: &TcpStream) {
        let _ = self.try_flush(sock);
    }
}

/// The first bytes of a plain HTTP request, not of a TLS record.
fn looks_like_http(bytes: &[u8]) -> bool {
    let method_len = bytes
        .iter()
        .take(8)
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    method_len >= 3 && bytes.get(method_len) == Some(&b' ')
}

/// What one pass over received bytes came to.
struct Processed {
    /// Bytes at the start of the buffer rustls is done with.
    consumed: usize,
    /// Plaintext bytes copied to the output buffer.
    plain: usize,
    /// The peer sent close_notify.
    closed: bool,
}

/// The two unbuffered connection types, for the code both share.
trait Records {
    type Data;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Records for UnbufferedConnectionCommon<ServerConnectionData> {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(buf)
    }
}

impl Records for UnbufferedConnectionCommon<ClientConnectionData> {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(buf)
    }
}

/// Let rustls take every whole record in `buf`: handshake messages it
/// answers into `outgoing`, application data it decrypts, which is copied
/// to `plain_out` (unless `stop_at_data`: then it stays with rustls).
fn process<C: Records>(
    conn: &mut C,
    buf: &mut [u8],
    plain_out: &mut [u8],
    outgoing: &mut Vec<u8>,
    stop_at_data: bool,
) -> Result<Processed, rustls::Error> {
    let mut done = Processed {
        consumed: 0,
        plain: 0,
        closed: false,
    };
    loop {
        let UnbufferedStatus { discard, state } = conn.process(&mut buf[done.consumed..]);
        let mut more = 0;
        let stop = match state {
            Err(e) => {
                // rustls has queued an alert for the peer; take it along.
                // (It is shown the same bytes: rustls keeps positions in
                // them between calls.)
                let rest = &mut buf[done.consumed + discard..];
                if let Ok(ConnectionState::EncodeTlsData(mut enc)) = conn.process(rest).state {
                    let _ = encode(&mut enc, outgoing);
                }
                return Err(e);
            }
            Ok(ConnectionState::ReadTraffic(_)) if stop_at_data => true,
            Ok(ConnectionState::ReadTraffic(mut data)) => {
                while let Some(record) = data.next_record() {
                    let record = record?;
                    let end = done.plain + record.payload.len();
                    // Cannot fail: plaintext is never longer than the
                    // ciphertext it came from, and `plain_out` is as long as
                    // the buffer that ciphertext was read into.
                    let Some(dst) = plain_out.get_mut(done.plain..end) else {
                        return Err(rustls::Error::General("plaintext buffer too small".into()));
                    };
                    dst.copy_from_slice(record.payload);
                    done.plain = end;
                    more += record.discard;
                }
                false
            }
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                encode(&mut enc, outgoing)?;
                false
            }
            // Queued in `outgoing`, which is always sent before later bytes.
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                false
            }
            Ok(ConnectionState::PeerClosed) => {
                done.closed = true;
                false
            }
            Ok(ConnectionState::Closed) => {
                done.closed = true;
                true
            }
            // No whole record left to take.
            Ok(ConnectionState::BlockedHandshake) | Ok(ConnectionState::WriteTraffic(_)) => true,
            Ok(ConnectionState::ReadEarlyData(_)) => {
                return Err(rustls::Error::General("unexpected early data".into()))
            }
            Ok(_) => true,
        };
        done.consumed += discard + more;
        if stop {
            return Ok(done);
        }
    }
}

/// Copy a handshake record rustls has ready to the end of `outgoing`.
fn encode<D>(enc: &mut EncodeTlsData<'_, D>, outgoing: &mut Vec<u8>) -> Result<(), rustls::Error> {
    let start = outgoing.len();
    let mut room = 4096;
    loop {
        outgoing.resize(start + room, 0);
        match enc.encode(&mut outgoing[start..]) {
            Ok(n) => {
                outgoing.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                room = required_size;
            }
            Err(EncodeError::AlreadyEncoded) => {
                outgoing.truncate(start);
                return Ok(());
            }
        }
    }
}

/// Bring the connection to its write state (queueing anything rustls owes
/// the peer first) and run `write` there. rustls is shown the kept bytes
/// again (it may hold positions in them); they are never a whole record.
fn seal<C: Records>(
    conn: &mut C,
    incoming: &mut Vec<u8>,
    outgoing: &mut Vec<u8>,
    write: impl FnOnce(
        &mut rustls::unbuffered::WriteTraffic<'_, C::Data>,
    ) -> Result<usize, EncryptError>,
) -> io::Result<usize> {
    let mut write = Some(write);
    let mut consumed = 0;
    let result = loop {
        let UnbufferedStatus { discard, state } = conn.process(&mut incoming[consumed..]);
        consumed += discard;
        let state = match state {
            Ok(state) => state,
            Err(e) => break Err(tls_error(e)),
        };
        match state {
            ConnectionState::WriteTraffic(mut w) => {
                let Some(write) = write.take() else {
                    break Err(io::Error::other("TLS write state reached twice"));
                };
                break write(&mut w).map_err(|e| match e {
                    EncryptError::EncryptExhausted => {
                        io::Error::new(io::ErrorKind::BrokenPipe, "TLS keys exhausted")
                    }
                    e => io::Error::other(format!("TLS: {e}")),
                });
            }
            ConnectionState::EncodeTlsData(mut enc) => {
                if let Err(e) = encode(&mut enc, outgoing) {
                    break Err(tls_error(e));
                }
            }
            ConnectionState::TransmitTlsData(t) => t.done(),
            ConnectionState::PeerClosed => {}
            ConnectionState::Closed => {
                break Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "TLS session closed",
                ))
            }
            ConnectionState::BlockedHandshake => {
                break Err(io::Error::other("TLS handshake not finished"))
            }
            ConnectionState::ReadTraffic(_) => {
                break Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS data arrived before it was expected",
                ))
            }
            _ => break Err(io::Error::other("unexpected TLS state")),
        }
    };
    incoming.drain(..consumed);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_recognised_and_tls_is_not() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"OPTIONS * HTTP/1.1"));
        assert!(!looks_like_http(&[0x16, 0x03, 0x01, 0x00, 0x05]));
        assert!(!looks_like_http(b"GE"));
        assert!(!looks_like_http(b"get / HTTP/1.1"));
    }

    #[test]
    fn sealed_len_covers_every_record() {
        assert!(sealed_len(0) >= RECORD_OVERHEAD);
        assert_eq!(sealed_len(MAX_FRAGMENT), MAX_FRAGMENT + 2 * RECORD_OVERHEAD);
        assert!(sealed_len(4 * MAX_FRAGMENT + 1) >= 4 * MAX_FRAGMENT + 1 + 5 * 29);
    }
}
