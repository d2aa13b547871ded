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
//! The scratch buffer is borrowed only between two awaits, so the tasks of
//! one core can never hold it at the same time.

use std::cell::{Cell, RefCell};
use std::io;

use monoio::net::TcpStream;

use crate::http::body::Framing;
use crate::sweep::Tracked;
use crate::sys::{self, Xfer};

/// Reads in a row before a pump yields to the other connections of its core.
const BUDGET: usize = 16;

/// The per-core buffer every transfer of that core goes through, and how
/// that core's pumps give way to each other.
#[derive(Debug)]
pub struct Scratch {
    buf: RefCell<Box<[u8]>>,
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
    pub fn new(size: usize, yield_by_timer: bool) -> Scratch {
        Scratch {
            buf: RefCell::new(vec![0; size].into_boxed_slice()),
            yield_by_timer,
        }
    }
}

/// How a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The source closed its write side.
    Eof,
    /// The framed body is complete.
    Complete,
}

/// A pump's failure, by the side it happened on.
#[derive(Debug)]
pub enum PumpError {
    /// Reading from the source failed (it reset).
    Read(io::Error),
    /// Writing to the destination failed (it reset or went away).
    Write(io::Error),
}

/// Wait until `src` is readable, `recv` once into the scratch buffer and pass
/// the bytes to `f`. `Ok(None)`: the peer closed its write side.
pub async fn read_some<R>(
    src: &TcpStream,
    scratch: &Scratch,
    f: impl FnOnce(&[u8]) -> R,
) -> io::Result<Option<R>> {
    loop {
        src.readable(false).await?;
        let mut buf = scratch.buf.borrow_mut();
        match sys::recv(src, &mut buf)? {
            Xfer::WouldBlock => continue,
            Xfer::Eof => return Ok(None),
            Xfer::Done(n) => return Ok(Some(f(&buf[..n]))),
        }
    }
}

/// Write all of `buf`, waiting for room whenever the socket is full. Each
/// bit of progress counts as activity for the idle timeout.
pub async fn write_all(dst: &TcpStream, mut buf: &[u8], track: &Tracked) -> io::Result<()> {
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

/// Copy from `src` to `dst` until `src` reaches EOF or `framing` says the
/// body is complete (nothing past its end is read). Counts the bytes in
/// `moved`. Does not shut anything down: the caller decides what an end means.
pub async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    scratch: &Scratch,
    track: &Tracked,
    framing: &mut Framing,
    moved: &Cell<u64>,
) -> Result<End, PumpError> {
    // Since when this pump has been moving full buffers without a break.
    let mut busy_since: Option<std::time::Instant> = None;
    while !framing.is_done() {
        src.readable(false).await.map_err(PumpError::Read)?;
        let mut burst = true;
        for _ in 0..BUDGET {
            let (n, cap, unsent) = {
                let mut buf = scratch.buf.borrow_mut();
                let cap = framing.cap(buf.len());
                let n = match sys::recv(src, &mut buf[..cap]).map_err(PumpError::Read)? {
                    Xfer::WouldBlock => {
                        burst = false;
                        break;
                    }
                    Xfer::Eof => return Ok(End::Eof),
                    Xfer::Done(n) => n,
                };
                track.touch();
                let used = framing
                    .take(&buf[..n])
                    .map_err(|e| PumpError::Read(io::Error::new(io::ErrorKind::InvalidData, e)))?;
                moved.set(moved.get() + used as u64);
                let unsent = match sys::send(dst, &buf[..used]).map_err(PumpError::Write)? {
                    Xfer::Done(m) if m == used => None,
                    Xfer::Done(m) => Some(buf[m..used].to_vec()),
                    Xfer::WouldBlock | Xfer::Eof => Some(buf[..used].to_vec()),
                };
                (n, cap, unsent)
            };
            if let Some(rest) = unsent {
                // Backpressure: this connection alone holds a buffer, until
                // the destination has taken it.
                write_all(dst, &rest, track)
                    .await
                    .map_err(PumpError::Write)?;
            }
            if n < cap || framing.is_done() {
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
                monoio::time::sleep(BURST_PAUSE).await;
                busy_since = None;
            }
            Some(_) => {}
        }
    }
    Ok(End::Complete)
}
