//! The completion ring against real loopback sockets: byte-exact both ways
//! at every size, half-close, release mid-stream, many tunnels on a ring
//! much smaller than their data in flight, a reset, a dropped handle. Every
//! wait is bounded in time, every loop in count.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{DirEnd, Hook, Op, Reactor, Settings, Tunnel};

const LIMIT: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_secs(20);

type Runtime = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

fn runtime() -> Option<Runtime> {
    let mut b = io_uring::IoUring::builder();
    b.setup_single_issuer().setup_defer_taskrun();
    let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(1024)
        .uring_builder(b)
        .enable_timer()
        .build();
    match rt {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("io_uring is not available here ({e}); skipped");
            None
        }
    }
}

/// Bytes seen per direction, in order: the hook checks each byte against
/// the pattern of its stream.
#[derive(Default)]
struct Seen {
    bytes: [u64; 2],
    /// The stream ids to check against (none: count only).
    check: Option<[u64; 2]>,
}

impl Hook for Seen {
    fn chunk(&mut self, d: usize, data: &[u8]) {
        if let Some(ids) = self.check {
            for (i, &b) in data.iter().enumerate() {
                assert_eq!(b, pattern(ids[d], self.bytes[d] + i as u64));
            }
        }
        self.bytes[d] += data.len() as u64;
    }
}

/// The byte at `at` of test stream `id`.
fn pattern(id: u64, at: u64) -> u8 {
    (at.wrapping_mul(31).wrapping_add(id.wrapping_mul(131)) % 251) as u8
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// (outside, inside) of one loopback connection.
fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    for x in [&c, &s] {
        x.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        x.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    }
    (c, s)
}

/// The test's client and backend, and the tunnel's two sockets.
struct Ends {
    client: TcpStream,
    backend: TcpStream,
    inside: [TcpStream; 2],
}

fn ends(l: &TcpListener) -> Ends {
    let (client, c) = pair(l);
    let (b, backend) = pair(l);
    Ends {
        client,
        backend,
        inside: [c, b],
    }
}

fn open(r: &Rc<Reactor<Seen>>, e: &Ends, hook: Seen) -> Tunnel<Seen> {
    let fds = (e.inside[0].as_raw_fd(), e.inside[1].as_raw_fd());
    r.open(fds, [true, true], 0, hook)
}

/// Write `len` bytes of stream `id` in random fragments, then shut the
/// writing half.
fn writer(mut s: TcpStream, id: u64, len: usize, seed: u64) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = Rng(seed | 1);
        let mut at = 0;
        while at < len {
            let n = (1 + rng.below(100_000) as usize).min(len - at);
            let buf: Vec<u8> = (at..at + n).map(|i| pattern(id, i as u64)).collect();
            s.write_all(&buf).unwrap();
            at += n;
        }
        s.shutdown(Shutdown::Write).unwrap();
    })
}

/// Read to EOF checking stream `id`; the byte count.
fn reader(mut s: TcpStream, id: u64) -> JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0;
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < LIMIT, "reader timed out");
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                return at;
            }
            for (i, &b) in buf[..n].iter().enumerate() {
                assert_eq!(
                    b,
                    pattern(id, (at + i) as u64),
                    "stream {id} byte {}",
                    at + i
                );
            }
            at += n;
        }
    })
}

/// Run `f` with a reactor of `settings` on an io_uring runtime; afterwards
/// no tunnel is left and every buffer is back.
fn with_reactor<F, Fut>(settings: Settings, f: F)
where
    F: FnOnce(Rc<Reactor<Seen>>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(mut rt) = runtime() else {
        return;
    };
    rt.block_on(async move {
        let r = match Reactor::<Seen>::new(settings, || {}) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("no completion ring here ({e}); skipped");
                return;
            }
        };
        monoio::spawn(r.clone().run());
        f(r.clone()).await;
        let start = Instant::now();
        while r.live() > 0 || r.buffers_free() < u32::from(settings.buffers) {
            assert!(
                start.elapsed() < LIMIT,
                "tunnels or buffers never came back"
            );
            monoio::time::sleep(Duration::from_millis(2)).await;
        }
    });
}

/// Both directions' ends, within [`LIMIT`].
async fn both_ends(t: &Tunnel<Seen>) -> [DirEnd; 2] {
    let both = async { [t.end(0).await, t.end(1).await] };
    monoio::time::timeout(LIMIT, both)
        .await
        .expect("tunnel did not end")
}

/// Both directions' ends; a direction released to its owner (the ring ran
/// short, or bulk) is finished here as a connection would: its spill, then
/// the rest of its source, then its half-close. Returns the ends, the hook
/// and the bytes forwarded outside the ring.
async fn drive(t: Tunnel<Seen>, e: &Ends) -> ([DirEnd; 2], Seen, [u64; 2]) {
    let got = both_ends(&t).await;
    let spills = [t.take_spill(0), t.take_spill(1)];
    let seen = t.finish().unwrap();
    let [c, b] = &e.inside;
    let mut hs = Vec::new();
    for (d, (src, dst)) in [(c, b), (b, c)].into_iter().enumerate() {
        let (mut src, mut dst) = (src.try_clone().unwrap(), dst.try_clone().unwrap());
        let released = matches!(got[d], DirEnd::Released | DirEnd::Bulk);
        let spill = spills[d].clone();
        hs.push(std::thread::spawn(move || {
            if !released {
                return 0;
            }
            dst.write_all(&spill).unwrap();
            let n = std::io::copy(&mut src, &mut dst).unwrap();
            dst.shutdown(Shutdown::Write).unwrap();
            n
        }));
    }
    let mut moved = [0u64; 2];
    for (d, h) in hs.into_iter().enumerate() {
        moved[d] = h.join().unwrap();
    }
    (got, seen, moved)
}

fn settings(buffers: u16, size: u32) -> Settings {
    Settings {
        entries: 1024,
        buffers,
        buffer_size: size,
    }
}

#[test]
fn byte_exact_both_ways_at_every_size() {
    byte_exact(7, false);
}

/// A tunnel whose sockets were made non-blocking (for splice, which a
/// direction released as bulk does while the other still rides the ring).
#[test]
fn byte_exact_on_non_blocking_sockets() {
    byte_exact(4, true);
}

fn byte_exact(rounds: u64, non_blocking: bool) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    with_reactor(settings(64, 16 * 1024), |r| async move {
        let mut rng = Rng(7);
        for k in 0..rounds {
            let (up, down) = match k {
                0 => (0, 0),
                1 => (1, 3),
                2 => (16 * 1024, 16 * 1024 + 1),
                _ => (rng.below(4 << 20) as usize, rng.below(4 << 20) as usize),
            };
            let e = ends(&l);
            for s in &e.inside {
                s.set_nonblocking(non_blocking).unwrap();
            }
            let hook = Seen {
                check: Some([2 * k, 2 * k + 1]),
                ..Seen::default()
            };
            let t = open(&r, &e, hook);
            let hs = [
                writer(e.client.try_clone().unwrap(), 2 * k, up, k + 1),
                writer(e.backend.try_clone().unwrap(), 2 * k + 1, down, k + 2),
            ];
            let br = reader(e.backend.try_clone().unwrap(), 2 * k);
            let cr = reader(e.client.try_clone().unwrap(), 2 * k + 1);
            let (_, seen, outside) = drive(t, &e).await;
            assert_eq!(seen.bytes[0] + outside[0], up as u64);
            assert_eq!(seen.bytes[1] + outside[1], down as u64);
            for h in hs {
                h.join().unwrap();
            }
            assert_eq!((br.join().unwrap(), cr.join().unwrap()), (up, down));
        }
    });
}

#[test]
fn half_close_each_way() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    with_reactor(settings(16, 4096), |r| async move {
        for first in 0..2 {
            let e = ends(&l);
            let t = open(&r, &e, Seen::default());
            let (mut a, mut b) = if first == 0 {
                (
                    e.client.try_clone().unwrap(),
                    e.backend.try_clone().unwrap(),
                )
            } else {
                (
                    e.backend.try_clone().unwrap(),
                    e.client.try_clone().unwrap(),
                )
            };
            let h = std::thread::spawn(move || {
                a.write_all(b"request").unwrap();
                a.shutdown(Shutdown::Write).unwrap();
                let mut got = Vec::new();
                b.read_to_end(&mut got).unwrap();
                assert_eq!(got, b"request");
                // The other direction still carries bytes.
                b.write_all(b"answer after the half-close").unwrap();
                b.shutdown(Shutdown::Write).unwrap();
                let mut back = Vec::new();
                a.read_to_end(&mut back).unwrap();
                assert_eq!(back, b"answer after the half-close");
            });
            // The first direction ends while the other is still open.
            let first_end = monoio::time::timeout(LIMIT, t.end(first)).await.unwrap();
            assert_eq!(first_end, DirEnd::Eof);
            assert_eq!(both_ends(&t).await, [DirEnd::Eof, DirEnd::Eof]);
            t.finish();
            h.join().unwrap();
        }
    });
}

/// A release mid-stream while both sides keep sending: the test forwards
/// the rest itself; every byte arrives once, in order.
#[test]
fn release_mid_stream_loses_nothing() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    with_reactor(settings(32, 16 * 1024), |r| async move {
        for k in 0..4u64 {
            let e = ends(&l);
            let t = open(&r, &e, Seen::default());
            let (up, down) = (3 << 20, 2 << 20);
            let hs = [
                writer(e.client.try_clone().unwrap(), 10 + k, up, k + 1),
                writer(e.backend.try_clone().unwrap(), 20 + k, down, k + 2),
            ];
            let br = reader(e.backend.try_clone().unwrap(), 10 + k);
            let cr = reader(e.client.try_clone().unwrap(), 20 + k);
            monoio::time::sleep(Duration::from_millis(2 + 5 * k)).await;
            // Release one direction first, the other a moment later.
            t.release(0);
            monoio::time::sleep(Duration::from_millis(1)).await;
            t.release(1);
            let got = both_ends(&t).await;
            let spills = [t.take_spill(0), t.take_spill(1)];
            let seen = t.finish().unwrap();
            let mut forwarded = [0u64; 2];
            let [c, b] = &e.inside;
            for (d, (src, dst)) in [(c, b), (b, c)].into_iter().enumerate() {
                if got[d] == DirEnd::Released {
                    let (mut src, mut dst) = (src.try_clone().unwrap(), dst.try_clone().unwrap());
                    // What the ring took but did not send goes first.
                    dst.write_all(&spills[d]).unwrap();
                    forwarded[d] = std::io::copy(&mut src, &mut dst).unwrap();
                    dst.shutdown(Shutdown::Write).unwrap();
                } else {
                    assert_eq!(got[d], DirEnd::Eof);
                }
            }
            for h in hs {
                h.join().unwrap();
            }
            assert_eq!((br.join().unwrap(), cr.join().unwrap()), (up, down));
            assert_eq!(seen.bytes[0] + forwarded[0], up as u64);
            assert_eq!(seen.bytes[1] + forwarded[1], down as u64);
        }
    });
}

/// 1,000 tunnels share a ring far smaller than their data in flight:
/// receives wait for buffers and directions pause, nothing is lost.
#[test]
fn a_thousand_tunnels_on_a_small_ring() {
    let tunnels = 1000;
    let per = 64 * 1024;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut outside = Vec::new();
    let mut all = Vec::new();
    for _ in 0..tunnels {
        let e = ends(&l);
        outside.push((
            e.client.try_clone().unwrap(),
            e.backend.try_clone().unwrap(),
        ));
        all.push(e);
    }
    // Both sides of every tunnel send `per` bytes and check what they get,
    // from one thread of non-blocking sockets, bounded in time.
    let peers = std::thread::spawn(move || {
        let mut socks = Vec::new();
        for (i, (c, b)) in outside.into_iter().enumerate() {
            for (s, out, inn) in [(c, 2 * i, 2 * i + 1), (b, 2 * i + 1, 2 * i)] {
                s.set_nonblocking(true).unwrap();
                // Small receive buffers: the ring's sends wait for room and
                // hold their buffers, so the ring runs short.
                socket2::SockRef::from(&s)
                    .set_recv_buffer_size(4096)
                    .unwrap();
                socks.push((s, out as u64, inn as u64, 0usize, 0usize, false));
            }
        }
        let start = Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            assert!(start.elapsed() < LIMIT, "peers timed out");
            let mut done = true;
            for (s, out, inn, sent, got, eof) in socks.iter_mut() {
                if *sent < per {
                    let n = (per - *sent).min(7000);
                    let chunk: Vec<u8> = (*sent..*sent + n)
                        .map(|i| pattern(*out, i as u64))
                        .collect();
                    if let Ok(m) = s.write(&chunk) {
                        *sent += m;
                        if *sent == per {
                            s.shutdown(Shutdown::Write).unwrap();
                        }
                    }
                }
                while !*eof {
                    match s.read(&mut buf) {
                        Ok(0) => *eof = true,
                        Ok(n) => {
                            for (i, &b) in buf[..n].iter().enumerate() {
                                assert_eq!(b, pattern(*inn, (*got + i) as u64));
                            }
                            *got += n;
                        }
                        Err(_) => break,
                    }
                }
                done &= *sent == per && *eof;
                if *eof {
                    assert_eq!(*got, per);
                }
            }
            if done {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    with_reactor(settings(32, 4096), |r| async move {
        let ts: Vec<_> = all.iter().map(|e| open(&r, e, Seen::default())).collect();
        for (t, e) in ts.into_iter().zip(&all) {
            let (_, seen, outside) = drive(t, e).await;
            assert_eq!(seen.bytes[0] + outside[0], per as u64);
            assert_eq!(seen.bytes[1] + outside[1], per as u64);
        }
        let s = r.stats();
        assert!(
            s.enobufs + s.short_releases > 0,
            "the ring was never short: {s:?}"
        );
        drop(all);
    });
    peers.join().unwrap();
}

/// A peer resets: both directions end failed, after every completion; the
/// failure names the operation that met it.
#[test]
fn a_reset_fails_the_tunnel() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    with_reactor(settings(16, 4096), |r| async move {
        let e = ends(&l);
        let t = open(&r, &e, Seen::default());
        let mut client = e.client;
        let mut backend = e.backend.try_clone().unwrap();
        // Blocking I/O on a thread of its own: the reactor runs here.
        let h = std::thread::spawn(move || {
            client.write_all(b"hello").unwrap();
            let mut buf = [0u8; 5];
            backend.read_exact(&mut buf).unwrap();
            // A reset: linger 0, then close.
            socket2::SockRef::from(&client)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(client);
            let mut rest = Vec::new();
            let _ = backend.read_to_end(&mut rest);
        });
        let got = both_ends(&t).await;
        t.finish();
        let failed = got
            .iter()
            .find_map(|e| match e {
                DirEnd::Failed { errno, op } => Some((*errno, *op)),
                _ => None,
            })
            .expect("a failure");
        assert_eq!(failed, (libc::ECONNRESET, Op::Recv(0)), "{got:?}");
        h.join().unwrap();
    });
}

/// The owner drops its handle mid-tunnel: everything is cancelled, the
/// slot freed at the last completion, and the slot serves the next tunnel.
#[test]
fn a_dropped_handle_is_cancelled_and_freed() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    with_reactor(settings(16, 4096), |r| async move {
        let e = ends(&l);
        let t = open(&r, &e, Seen::default());
        // The backend does not read yet.
        let mut client = e.client.try_clone().unwrap();
        std::thread::spawn(move || client.write_all(&[1u8; 64 * 1024]))
            .join()
            .unwrap()
            .unwrap();
        monoio::time::sleep(Duration::from_millis(20)).await;
        drop(t);
        let start = Instant::now();
        while r.live() > 0 {
            assert!(start.elapsed() < LIMIT, "slot never freed");
            monoio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(e);
        let e = ends(&l);
        let t = open(&r, &e, Seen::default());
        drop(e.client);
        drop(e.backend);
        assert_eq!(both_ends(&t).await, [DirEnd::Eof, DirEnd::Eof]);
        t.finish();
    });
}

/// A direction that receives whole buffers in a row is released as bulk
/// (the connection splices it from there); the other stays in the ring.
/// Nothing is lost either way.
#[test]
fn bulk_is_released_and_small_messages_stay() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    with_reactor(settings(32, 4096), |r| async move {
        let e = ends(&l);
        let fds = (e.inside[0].as_raw_fd(), e.inside[1].as_raw_fd());
        let t = r.open(fds, [true, true], 4, Seen::default());
        let (up, down) = (2 << 20, 100);
        let hs = [
            writer(e.client.try_clone().unwrap(), 1, up, 3),
            writer(e.backend.try_clone().unwrap(), 2, down, 4),
        ];
        let br = reader(e.backend.try_clone().unwrap(), 1);
        let cr = reader(e.client.try_clone().unwrap(), 2);
        let got = both_ends(&t).await;
        let spill = t.take_spill(0);
        let seen = t.finish().unwrap();
        assert_eq!(got, [DirEnd::Bulk, DirEnd::Eof]);
        assert!(seen.bytes[0] < up as u64, "released before the end");
        assert_eq!(seen.bytes[1], down as u64);
        // The hook saw the spilled bytes; the copy below moves the rest.
        let seen_sent = seen.bytes[0];
        // The rest of the bulk direction, as the connection would move it.
        let (mut src, mut dst) = (
            e.inside[0].try_clone().unwrap(),
            e.inside[1].try_clone().unwrap(),
        );
        let rest = std::thread::spawn(move || {
            dst.write_all(&spill).unwrap();
            let n = std::io::copy(&mut src, &mut dst).unwrap();
            dst.shutdown(Shutdown::Write).unwrap();
            n
        })
        .join()
        .unwrap();
        assert_eq!(seen_sent + rest, up as u64);
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!((br.join().unwrap(), cr.join().unwrap()), (up, down));
        assert!(r.stats().bulk >= 1);
    });
}

/// A tunnel opened with one direction riding: the other is moved by its
/// owner until it is adopted; both then end in the ring, byte-exact.
#[test]
fn a_direction_joins_later() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    with_reactor(settings(16, 4096), |r| async move {
        let e = ends(&l);
        let fds = (e.inside[0].as_raw_fd(), e.inside[1].as_raw_fd());
        let hook = Seen {
            check: Some([5, 6]),
            ..Seen::default()
        };
        // Only the backend's direction rides at first.
        let t = r.open(fds, [false, true], 0, hook);
        let (up, down) = (300_000, 200_000);
        let bw = writer(e.backend.try_clone().unwrap(), 6, down, 2);
        let cr = reader(e.client.try_clone().unwrap(), 6);
        // The client's first bytes arrive before the direction joins: they
        // wait in the socket, and the ring takes them from there.
        let mut c = e.client.try_clone().unwrap();
        std::thread::spawn(move || {
            let first: Vec<u8> = (0..1000).map(|i| pattern(5, i)).collect();
            c.write_all(&first).unwrap();
        })
        .join()
        .unwrap();
        monoio::time::sleep(Duration::from_millis(20)).await;
        t.adopt(0);
        let mut c = e.client.try_clone().unwrap();
        let rest = std::thread::spawn(move || {
            let rest: Vec<u8> = (1000..up).map(|i| pattern(5, i as u64)).collect();
            c.write_all(&rest).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
        });
        let br = reader(e.backend.try_clone().unwrap(), 5);
        let (_, seen, outside) = drive(t, &e).await;
        assert_eq!(seen.bytes[0] + outside[0], up as u64);
        assert_eq!(seen.bytes[1] + outside[1], down as u64);
        rest.join().unwrap();
        bw.join().unwrap();
        assert_eq!((br.join().unwrap(), cr.join().unwrap()), (up, down));
    });
}

/// Destinations that never read cannot take the ring's buffers from every
/// other tunnel: each such direction is released to its owner holding at
/// most the one buffer of its send in flight, and a tunnel that does flow
/// keeps flowing.
#[test]
fn slow_readers_are_released_and_others_keep_flowing() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    with_reactor(settings(64, 4096), |r| async move {
        let mut stalled = Vec::new();
        for k in 0..30u64 {
            let e = ends(&l);
            // Small buffers on the backend: sends stop at once.
            socket2::SockRef::from(&e.backend)
                .set_recv_buffer_size(4096)
                .unwrap();
            socket2::SockRef::from(&e.inside[1])
                .set_send_buffer_size(4096)
                .unwrap();
            let t = open(&r, &e, Seen::default());
            // The client sends 1 MiB; the backend never reads.
            let w = e.client.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut w = w;
                let _ = w.write_all(&vec![k as u8; 1 << 20]);
            });
            stalled.push((e, t));
        }
        // Let them stall, and the ring run short.
        monoio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            r.stats().short_releases > 0,
            "no stalled direction was released"
        );
        // A tunnel that flows is not held up.
        let e = ends(&l);
        let t = open(&r, &e, Seen::default());
        let hs = [
            writer(e.client.try_clone().unwrap(), 1, 200_000, 5),
            writer(e.backend.try_clone().unwrap(), 2, 200_000, 6),
        ];
        let br = reader(e.backend.try_clone().unwrap(), 1);
        let cr = reader(e.client.try_clone().unwrap(), 2);
        let _ = drive(t, &e).await;
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!((br.join().unwrap(), cr.join().unwrap()), (200_000, 200_000));
        // The stalled ones end when their sockets do.
        for (e, t) in stalled {
            for s in &e.inside {
                let _ = s.shutdown(Shutdown::Both);
            }
            let _ = monoio::time::timeout(LIMIT, both_ends(&t)).await.unwrap();
            drop(t);
        }
    });
}
