//! Splice for ws:// tunnels (`--splice`): one direction's bytes move
//! socket -> pipe -> socket with non-blocking `splice(2)` on readiness,
//! never copied through ringway's memory.
//!
//! Pipes come from the core's pool (`io::pipes`), made when the core
//! starts (so descriptors are counted once, at start) and taken only while
//! bytes are in flight: a direction takes one when its source is readable and
//! gives it back as soon as the pipe is empty again, so an idle tunnel
//! holds none. A pipe that the destination cannot drain (back-pressure)
//! stays with its direction until it can. When the pool is empty the
//! direction copies through the scratch buffer for that read instead.
//!
//! Splice needs its sockets non-blocking (`SPLICE_F_NONBLOCK` covers only
//! the pipe), which monoio's io_uring driver does not make them: a tunnel
//! that splices sets `O_NONBLOCK` on both first ([`prepare`]).

use std::io;

use monoio::net::TcpStream;

use crate::io::pipes::Pipe;
use crate::io::tunnel::{Ctx, End, Moved, Peer, PumpError};
use crate::proto::http::body::Framing;
use crate::sys::{self, Xfer};

/// The most one splice call moves.
const CHUNK: usize = 64 * 1024;

/// Splices in a row before a direction gives way to the core's other
/// tasks.
const BUDGET: usize = 16;

/// Make both sockets of a tunnel fit for splice (non-blocking). An error
/// means the tunnel should copy instead.
pub fn prepare(a: &TcpStream, b: &TcpStream) -> io::Result<()> {
    sys::set_nonblocking(a)?;
    sys::set_nonblocking(b)
}

impl Ctx<'_> {
    /// [`Ctx::pump`] by splice: copy from `src` to `dst` (both plain
    /// sockets, made non-blocking by [`prepare`]) until `src` reaches EOF,
    /// through a pipe from the core's pool while bytes are in flight,
    /// counting the bytes in `moved`. Does not shut anything down.
    pub async fn splice(
        self,
        src: &TcpStream,
        dst: &TcpStream,
        moved: &Moved<'_>,
    ) -> Result<End, PumpError> {
        let pipes = self.pipes;
        loop {
            src.readable(false).await.map_err(PumpError::Read)?;
            let Some(pipe) = pipes.take() else {
                // None free: this read copies.
                let (s, d) = (Peer::plain(src), Peer::plain(dst));
                let once = &mut Framing::Exact(CHUNK as u64);
                match self.pump(s, d, None, once, moved, 0).await? {
                    End::Eof => return Ok(End::Eof),
                    _ => continue,
                }
            };
            let step = self.splice_some(src, dst, &pipe, moved).await;
            // A failed transfer may leave bytes in the pipe: never reused.
            match step {
                Ok(_) => pipes.give(pipe),
                Err(_) => pipes.discard(pipe),
            }
            match step? {
                Some(End::Eof) => return Ok(End::Eof),
                // A burst: give the core's other tasks their turn.
                Some(_) => crate::io::yield_now().await,
                None => {}
            }
        }
    }

    /// Up to [`BUDGET`] splices from a readable `src`, each drained into
    /// `dst` before the next (so the pipe is empty when this returns).
    /// `Some(Eof)`: `src` closed; `Some(Complete)`: the budget is spent
    /// with more to read; `None`: `src` is drained.
    async fn splice_some(
        self,
        src: &TcpStream,
        dst: &TcpStream,
        pipe: &Pipe,
        moved: &Moved<'_>,
    ) -> Result<Option<End>, PumpError> {
        for _ in 0..BUDGET {
            let n = match sys::splice(src, &pipe.wr, CHUNK).map_err(PumpError::Read)? {
                Xfer::Done(n) => n,
                Xfer::WouldBlock => return Ok(None),
                Xfer::Eof => return Ok(Some(End::Eof)),
            };
            self.track.touch();
            let mut left = n;
            while left > 0 {
                match sys::splice(&pipe.rd, dst, left).map_err(PumpError::Write)? {
                    Xfer::Done(m) => {
                        left -= m;
                        moved.add(m as u64);
                        self.track.touch();
                    }
                    // Full: the pipe stays with this direction until the
                    // destination takes what it holds.
                    Xfer::WouldBlock | Xfer::Eof => {
                        dst.writable(false).await.map_err(PumpError::Write)?
                    }
                }
            }
            if n < CHUNK {
                // A short read almost always means the socket is drained.
                return Ok(None);
            }
        }
        Ok(Some(End::Complete))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::pipes::Pipes;
    use crate::io::sweep::Sweeper;
    use crate::io::tunnel::Scratch;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::rc::Rc;
    use std::time::Duration;

    fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    /// A transfer that fails half way (its destination reset) leaves its
    /// bytes in the pipe; the next tunnel to splice must not send them.
    #[test]
    fn a_failed_transfer_never_leaks_its_bytes_to_the_next_tunnel() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = Duration::from_secs(10);
            let sweeper = Rc::new(Sweeper::new(crate::io::sweep::Timeouts::all(s)));
            let scratch = Scratch::new(65536, false, false);
            let pipes = Pipes::new(1);
            // Tunnel A: its destination's peer has reset.
            let (mut a_in, a_src) = pair(&l);
            let (a_peer, a_dst) = pair(&l);
            socket2::SockRef::from(&a_peer)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(a_peer);
            std::thread::sleep(Duration::from_millis(20));
            a_in.write_all(&[b'A'; 1000]).unwrap();
            for s in [&a_src, &a_dst] {
                s.set_nonblocking(true).unwrap();
            }
            let (src, dst) = (
                monoio::net::TcpStream::from_std(a_src).unwrap(),
                monoio::net::TcpStream::from_std(a_dst).unwrap(),
            );
            let track = sweeper.register(src.as_raw_fd());
            let cx = Ctx {
                scratch: &scratch,
                track: &track,
                pipes: &pipes,
            };
            let total = crate::ops::metrics::Counter::default();
            let moved = Moved::new(&total);
            assert!(cx.splice(&src, &dst, &moved).await.is_err());
            assert_eq!(pipes.free(), 1, "the pool keeps its size");
            // Tunnel B: four bytes, then EOF; its peer gets exactly those.
            let (mut b_in, b_src) = pair(&l);
            let (mut b_peer, b_dst) = pair(&l);
            b_in.write_all(b"BBBB").unwrap();
            drop(b_in);
            for s in [&b_src, &b_dst] {
                s.set_nonblocking(true).unwrap();
            }
            let (src, dst) = (
                monoio::net::TcpStream::from_std(b_src).unwrap(),
                monoio::net::TcpStream::from_std(b_dst).unwrap(),
            );
            assert_eq!(cx.splice(&src, &dst, &moved).await.unwrap(), End::Eof);
            drop(dst);
            let mut got = Vec::new();
            b_peer.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"BBBB");
        });
    }
}
