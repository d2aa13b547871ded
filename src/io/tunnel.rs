//! Moving bytes between sockets without per-connection buffers.
//!
//! Every read here is a readiness wait (io_uring `PollAdd`, or epoll) followed
//! by a non-blocking `recv` into the one per-core [`Scratch`] buffer, and the
//! bytes are sent on at once with a non-blocking `send`. No read is ever in
//! flight while a connection waits, so an idle tunnel holds no data buffer,
//! and nothing can be lost if a wait is abandoned. Only when the destination
//! is full does the connection copy the unsent rest into a buffer of its own
//! and wait for room; that buffer is freed as soon as it is written.
//!
//! The scratch buffers are borrowed only between two awaits, so the tasks of
//! one core can never hold them at the same time.
//!
//! A [`Peer`] may be TLS (`tls::session`): then reads decrypt from the
//! scratch buffer into the second per-core buffer, and writes seal into it;
//! the session keeps bytes only for a record half received or a backlog.

use std::cell::{Cell, RefCell};
use std::io;

use monoio::net::TcpStream;

use crate::io::frames::Watch;
use crate::io::pipes::Pipes;
use crate::io::sweep::Tracked;
use crate::ops::metrics::Counter;
use crate::proto::http::body::Framing;
use crate::proto::tls::session::{self, Session, Step};
use crate::sys::{self, Xfer};

/// Reads in a row before a pump yields to the other connections of its core.
const BUDGET: usize = 16;

/// The per-core buffers every transfer of that core goes through, and how
/// that core's pumps give way to each other.
#[derive(Debug)]
pub struct Scratch {
    /// Bytes read from a socket land here.
    buf: RefCell<Box<[u8]>>,
    /// With TLS only (else empty): decrypted plaintext, or sealed ciphertext.
    aux: RefCell<Box<[u8]>>,
    /// Most bytes one read takes, leaving room for what sealing adds.
    cap: usize,
    /// With the epoll driver a readiness wait on a busy socket returns at
    /// once without yielding, so after a burst a pump sleeps for a moment
    /// instead, letting the runtime poll everyone's I/O and its timers.
    /// With io_uring the next readiness wait is itself a yield.
    yield_by_timer: bool,
}

/// On the epoll driver, the longest a pump may keep its core without a
/// pause, and the pause (the timer's resolution). Measured with one saturating
/// bulk tunnel on one worker: other clients were answered in 0.3 ms (median)
/// instead of up to 900 ms without the pause.
const MAX_BUSY: std::time::Duration = std::time::Duration::from_millis(4);
const BURST_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

impl Scratch {
    /// `size` bytes per read; with `tls`, at least a whole TLS handshake
    /// message, and a second buffer for plaintext and sealed records.
    pub fn new(size: usize, tls: bool, yield_by_timer: bool) -> Scratch {
        let (cap, len) = if tls {
            let cap = size.max(session::MIN_READ_SPACE);
            (cap, session::sealed_len(cap))
        } else {
            (size, size)
        };
        Scratch {
            buf: RefCell::new(vec![0; len].into_boxed_slice()),
            aux: RefCell::new(vec![0; if tls { len } else { 0 }].into_boxed_slice()),
            cap,
            yield_by_timer,
        }
    }
}

/// One end of a connection: its socket and, for TLS, its session. Reads and
/// writes through a `Peer` carry plaintext; the session turns it into
/// records and back.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    pub sock: &'a TcpStream,
    pub tls: Option<&'a RefCell<Session>>,
}

impl<'a> Peer<'a> {
    pub fn new(sock: &'a TcpStream, tls: Option<&'a RefCell<Session>>) -> Peer<'a> {
        Peer { sock, tls }
    }

    pub fn plain(sock: &'a TcpStream) -> Peer<'a> {
        Peer { sock, tls: None }
    }
}

/// How a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The source closed its write side.
    Eof,
    /// The framed body is complete.
    Complete,
    /// A drain asked, and the tunnel's frames allowed it: stopped at a frame
    /// boundary, everything before it forwarded, nothing after it (see
    /// `io::frames`).
    Stopped,
    /// It made the reads it was allowed before the completion ring takes
    /// the direction over; everything read was sent, nothing is held.
    Promote,
}

/// A pump's failure, by the side it happened on.
#[derive(Debug)]
pub enum PumpError {
    /// Reading from the source failed (it reset).
    Read(io::Error),
    /// Writing to the destination failed (it reset or went away).
    Write(io::Error),
}

/// What one non-blocking read of plaintext got.
enum Got<'s> {
    /// Plaintext, and the other buffer, free for sealing it.
    Data {
        data: &'s [u8],
        spare: &'s mut [u8],
        /// Bytes taken from the socket (ciphertext, with TLS).
        raw: usize,
    },
    /// Nothing usable yet.
    WouldBlock,
    Eof,
}

/// Read once from `peer` without waiting, at most `cap` bytes.
fn recv<'s>(
    peer: Peer<'_>,
    buf: &'s mut [u8],
    aux: &'s mut [u8],
    cap: usize,
) -> io::Result<Got<'s>> {
    match peer.tls {
        None => match sys::recv(peer.sock, &mut buf[..cap])? {
            Xfer::Done(n) => Ok(Got::Data {
                data: &buf[..n],
                spare: aux,
                raw: n,
            }),
            Xfer::WouldBlock => Ok(Got::WouldBlock),
            Xfer::Eof => Ok(Got::Eof),
        },
        Some(tls) => {
            let got = tls.borrow_mut().recv(peer.sock, buf, cap, aux)?;
            if got.eof {
                Ok(Got::Eof)
            } else if got.plain == 0 {
                Ok(Got::WouldBlock)
            } else {
                Ok(Got::Data {
                    data: &aux[..got.plain],
                    spare: buf,
                    raw: got.raw,
                })
            }
        }
    }
}

/// Wait until reading `peer` may give something, or, with a `watch`, until
/// the drain wants its direction to stop. (A plain function around the
/// socket's wait, so that no state of its own is added to the future.) The
/// wait is a readiness wait, which holds no data, so abandoning it for the
/// drain loses nothing.
fn readable<'a>(
    peer: Peer<'a>,
    watch: Option<(Watch<'a>, &'a Tracked)>,
) -> impl std::future::Future<Output = io::Result<()>> + 'a {
    let pending = peer.tls.is_some_and(|t| t.borrow().has_pending());
    let sock = peer.sock;
    async move {
        if pending {
            return Ok(());
        }
        let Some((watch, track)) = watch else {
            return sock.readable(false).await;
        };
        let mut wait = std::pin::pin!(sock.readable(false));
        // The drain wakes the task through the waker its tunnel left in the
        // sweep slot, so this registers no waker of its own.
        std::future::poll_fn(|cx| {
            if watch.should_stop(track) {
                return std::task::Poll::Ready(Ok(()));
            }
            std::future::Future::poll(wait.as_mut(), cx)
        })
        .await
    }
}

/// What a send left for later.
enum Backlog {
    Clear,
    /// Plaintext the socket did not take.
    Plain(Vec<u8>),
    /// Records waiting in the TLS session.
    Sealed,
}

/// Send `data` to `peer` as far as its socket takes it now (sealing it in
/// `spare` first for TLS); what it does not take is kept for [`finish`].
fn send_now(peer: Peer<'_>, data: &[u8], spare: &mut [u8]) -> io::Result<Backlog> {
    match peer.tls {
        None => Ok(match sys::send(peer.sock, data)? {
            Xfer::Done(m) if m == data.len() => Backlog::Clear,
            Xfer::Done(m) => Backlog::Plain(data[m..].to_vec()),
            Xfer::WouldBlock | Xfer::Eof => Backlog::Plain(data.to_vec()),
        }),
        Some(tls) => {
            let mut tls = tls.borrow_mut();
            let n = tls.seal(data, spare)?;
            Ok(if tls.send(peer.sock, &spare[..n])? {
                Backlog::Clear
            } else {
                Backlog::Sealed
            })
        }
    }
}

/// Write out what [`send_now`] left, waiting for room as needed.
async fn finish(peer: Peer<'_>, backlog: Backlog, track: &Tracked) -> io::Result<()> {
    match backlog {
        Backlog::Clear => Ok(()),
        Backlog::Plain(rest) => write_raw(peer.sock, &rest, track).await,
        Backlog::Sealed => flush(peer, track).await,
    }
}

/// Wait until `peer`'s socket has taken every record waiting for it.
async fn flush(peer: Peer<'_>, track: &Tracked) -> io::Result<()> {
    let Some(tls) = peer.tls else {
        return Ok(());
    };
    while !tls.borrow_mut().try_flush(peer.sock)? {
        peer.sock.writable(false).await?;
        track.touch();
    }
    Ok(())
}

/// What every transfer of one connection goes through: its core's scratch
/// buffers (and pipes), and its timeout slot (progress is activity, and an
/// expiry shuts its sockets). Three references, copied into each call.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub scratch: &'a Scratch,
    pub track: &'a Tracked,
    /// The core's pipes, for a tunnel that splices (`io::splice`).
    pub pipes: &'a Pipes,
}

/// How a TLS handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// The peer closed (or the deadline shut the socket) first.
    Closed,
    /// A plain HTTP request came to a TLS listener.
    PlainHttp,
    Failed(io::Error),
}

impl Ctx<'_> {
    /// Run `peer`'s TLS handshake to its end (the deadline is the sweep's).
    pub async fn handshake(self, peer: Peer<'_>) -> Result<(), HandshakeError> {
        let Ctx { scratch, track, .. } = self;
        let Some(tls) = peer.tls else {
            return Ok(());
        };
        let failed = |e: io::Error| {
            tls.borrow_mut().send_alert(peer.sock);
            HandshakeError::Failed(e)
        };
        loop {
            flush(peer, track).await.map_err(HandshakeError::Failed)?;
            if !tls.borrow().is_handshaking() {
                return Ok(());
            }
            peer.sock
                .readable(false)
                .await
                .map_err(HandshakeError::Failed)?;
            let step = {
                let mut buf = scratch.buf.borrow_mut();
                tls.borrow_mut()
                    .handshake_step(peer.sock, &mut buf, scratch.cap)
            };
            match step.map_err(failed)? {
                Step::Progress => {}
                Step::Eof => return Err(HandshakeError::Closed),
                Step::PlainHttp => return Err(HandshakeError::PlainHttp),
            }
        }
    }

    /// Close `peer`'s writing half: a close_notify first for TLS.
    pub async fn close_write(self, peer: Peer<'_>) {
        if let Some(tls) = peer.tls {
            let queued = tls.borrow_mut().close_notify();
            if queued.is_ok() {
                let _ = Box::pin(flush(peer, self.track)).await;
            }
        }
        sys::shutdown_raw(std::os::fd::AsRawFd::as_raw_fd(peer.sock), sys::Half::Write);
    }

    /// Read from `sock` and throw the bytes away, `budget` bytes at most, until
    /// it closes. `Ok(true)`: it closed.
    pub async fn discard(self, sock: &TcpStream, budget: usize) -> io::Result<bool> {
        let mut left = budget;
        while left > 0 {
            sock.readable(false).await?;
            let mut buf = self.scratch.buf.borrow_mut();
            match sys::recv(sock, &mut buf)? {
                Xfer::WouldBlock => {}
                Xfer::Eof => return Ok(true),
                Xfer::Done(n) => left = left.saturating_sub(n),
            }
        }
        Ok(false)
    }

    /// Wait until `src` has data, read it once and pass the plaintext to `f`.
    /// `Ok(None)`: the peer closed its write side.
    pub async fn read_some<R>(
        self,
        src: Peer<'_>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> io::Result<Option<R>> {
        self.read_after(src, false, f).await
    }

    /// [`Ctx::read_some`], told whether `src` is known to be readable
    /// already (`ready`: a readiness wait just ended), when it reads at once
    /// and waits only if nothing was there after all: no second wait.
    pub async fn read_after<R>(
        self,
        src: Peer<'_>,
        mut ready: bool,
        f: impl FnOnce(&[u8]) -> R,
    ) -> io::Result<Option<R>> {
        let scratch = self.scratch;
        loop {
            if !std::mem::take(&mut ready) {
                readable(src, None).await?;
            }
            let mut buf = scratch.buf.borrow_mut();
            let mut aux = scratch.aux.borrow_mut();
            match recv(src, &mut buf, &mut aux, scratch.cap)? {
                Got::WouldBlock => continue,
                Got::Eof => return Ok(None),
                Got::Data { data, .. } => return Ok(Some(f(data))),
            }
        }
    }

    /// Write all of `buf` to `dst`, waiting for room whenever the socket is
    /// full. Each bit of progress counts as activity for the idle timeout.
    pub async fn write_all(self, dst: Peer<'_>, buf: &[u8]) -> io::Result<()> {
        let Ctx { scratch, track, .. } = self;
        if dst.tls.is_none() {
            return write_raw(dst.sock, buf, track).await;
        }
        for chunk in buf.chunks(scratch.cap) {
            let backlog = {
                let mut aux = scratch.aux.borrow_mut();
                send_now(dst, chunk, &mut aux)?
            };
            finish(dst, backlog, track).await?;
        }
        Ok(())
    }
}

/// Write all of `buf` to the socket as it is.
async fn write_raw(dst: &TcpStream, mut buf: &[u8], track: &Tracked) -> io::Result<()> {
    while !buf.is_empty() {
        match sys::send(dst, buf)? {
            Xfer::Done(n) => {
                buf = &buf[n..];
                track.touch();
            }
            Xfer::WouldBlock | Xfer::Eof => dst.writable(false).await?,
        }
    }
    Ok(())
}

/// Bytes one direction of an exchange moved: its own count, and the
/// core's total (which the metrics endpoint reads while tunnels live).
#[derive(Debug)]
pub struct Moved<'a> {
    count: Cell<u64>,
    total: &'a Counter,
}

impl<'a> Moved<'a> {
    pub fn new(total: &'a Counter) -> Moved<'a> {
        Moved {
            count: Cell::new(0),
            total,
        }
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.count.set(self.count.get() + n);
        self.total.add(n);
    }

    pub fn get(&self) -> u64 {
        self.count.get()
    }

    /// Bytes moved that the core's total counted already (the completion
    /// ring's hook counts them as they move): this direction's own count.
    pub fn add_own(&self, n: u64) {
        self.count.set(self.count.get() + n);
    }
}

impl Ctx<'_> {
    /// Copy from `src` to `dst` until `src` reaches EOF or `framing` says the
    /// body is complete. From a plain socket nothing past the body's end is
    /// read; from TLS, plaintext past it (a pipelined request) is dropped.
    /// Counts the bytes in `moved`. Does not shut anything down: the caller
    /// decides what an end means. With a `watch` (a tunnel under
    /// `--drain-close-frames`) it follows the frames it copies and stops at a
    /// boundary when the drain asks ([`End::Stopped`]). With a non-zero
    /// `promote_after`, it returns [`End::Promote`] once it has made that
    /// many reads, between two of them (nothing held).
    pub async fn pump(
        self,
        src: Peer<'_>,
        dst: Peer<'_>,
        watch: Option<Watch<'_>>,
        framing: &mut Framing,
        moved: &Moved<'_>,
        promote_after: u32,
    ) -> Result<End, PumpError> {
        let Ctx { scratch, track, .. } = self;
        // Since when this pump has been moving full buffers without a break.
        let mut busy_since: Option<std::time::Instant> = None;
        let mut reads = 0u32;
        while !framing.is_done() {
            // A drain that asks a tunnel following its frames wants it
            // stopped at a boundary here, never promoted past one.
            let asked = watch.is_some() && track.asked();
            if promote_after > 0 && reads >= promote_after && !asked {
                return Ok(End::Promote);
            }
            let stop = watch.map(|w| (w, track));
            readable(src, stop).await.map_err(PumpError::Read)?;
            let mut burst = true;
            for _ in 0..BUDGET {
                if watch.is_some_and(|w| w.stop_now(track)) {
                    return Ok(End::Stopped);
                }
                let (raw, cap, backlog, stopped) = {
                    let mut buf = scratch.buf.borrow_mut();
                    let mut aux = scratch.aux.borrow_mut();
                    // A TLS read must be able to take a whole record, whatever
                    // is left of the body.
                    let cap = match src.tls {
                        None => framing.cap(scratch.cap),
                        Some(_) => scratch.cap,
                    };
                    let (data, spare, raw) =
                        match recv(src, &mut buf, &mut aux, cap).map_err(PumpError::Read)? {
                            Got::WouldBlock => {
                                burst = false;
                                break;
                            }
                            Got::Eof => return Ok(End::Eof),
                            Got::Data { data, spare, raw } => (data, spare, raw),
                        };
                    track.touch();
                    reads += 1;
                    let (data, stopped) = match watch {
                        None => (data, false),
                        Some(w) => {
                            let (upto, stopped) = w.follow(data, track);
                            (&data[..upto], stopped)
                        }
                    };
                    let used = framing.take(data).map_err(|e| {
                        PumpError::Read(io::Error::new(io::ErrorKind::InvalidData, e))
                    })?;
                    moved.add(used as u64);
                    let backlog = send_now(dst, &data[..used], spare).map_err(PumpError::Write)?;
                    (raw, cap, backlog, stopped)
                };
                // Backpressure: this connection alone holds a buffer, until the
                // destination has taken it. (Boxed: the rare wait must not make
                // every idle tunnel's future larger.)
                if !matches!(backlog, Backlog::Clear) {
                    Box::pin(finish(dst, backlog, track))
                        .await
                        .map_err(PumpError::Write)?;
                }
                if stopped {
                    return Ok(End::Stopped);
                }
                if raw < cap || framing.is_done() {
                    // A short read almost always means the socket is drained:
                    // wait for readiness rather than pay for an EAGAIN.
                    burst = false;
                    break;
                }
            }
            if !burst || !scratch.yield_by_timer {
                busy_since = None;
                continue;
            }
            let now = std::time::Instant::now();
            match busy_since {
                None => busy_since = Some(now),
                Some(t) if now - t >= MAX_BUSY => {
                    // Boxed: only a busy pump on epoll ever needs its room.
                    Box::pin(monoio::time::sleep(BURST_PAUSE)).await;
                    busy_since = None;
                }
                Some(_) => {}
            }
        }
        Ok(End::Complete)
    }
}
