//! The raw system calls ringway makes itself, and nothing else.
//!
//! This is one of the few modules allowed `unsafe`. Every call here works on a
//! descriptor that the caller owns (a monoio stream or a socket2 socket) and
//! that stays open for the whole call; no pointer outlives the call it is
//! passed to. Everything else in the crate goes through these safe wrappers.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Outcome of one non-blocking transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Xfer {
    /// This many bytes moved (never 0 for `send`).
    Done(usize),
    /// The socket has nothing to read / no room to write right now.
    WouldBlock,
    /// The peer has closed its write side (recv only).
    Eof,
}

fn xfer(ret: isize) -> io::Result<Xfer> {
    if ret > 0 {
        return Ok(Xfer::Done(ret as usize));
    }
    if ret == 0 {
        return Ok(Xfer::Eof);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) => Ok(Xfer::WouldBlock),
        Some(libc::EINTR) => Ok(Xfer::WouldBlock),
        _ => Err(err),
    }
}

/// `recv(fd, buf, MSG_DONTWAIT)`: never blocks, whatever the descriptor's mode.
pub fn recv(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<Xfer> {
    // SAFETY: `buf` is a live, exclusively borrowed slice for the whole call and
    // the kernel writes at most `buf.len()` bytes into it; `fd` is borrowed
    // from its owner, so the descriptor cannot be closed during the call.
    let ret = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    xfer(ret)
}

/// Look at (without taking) the next byte: `Eof` if the peer has closed,
/// `Done(1)` if data is waiting. Lets a connection notice a client that
/// leaves while bytes it sent must stay unread.
pub fn peek(fd: &impl AsRawFd) -> io::Result<Xfer> {
    let mut byte = 0u8;
    // SAFETY: `byte` is a live local the kernel writes at most 1 byte into;
    // `fd` is borrowed from its owner for the call.
    let ret = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_DONTWAIT | libc::MSG_PEEK,
        )
    };
    xfer(ret)
}

/// `recv(fd, buf, MSG_DONTWAIT | MSG_PEEK)`: copy what is waiting without
/// taking it (a PROXY protocol header is looked at first, then exactly its
/// bytes are taken, so nothing behind it is ever read by mistake).
pub fn peek_into(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<Xfer> {
    // SAFETY: `buf` is a live, exclusively borrowed slice for the whole call and
    // the kernel writes at most `buf.len()` bytes into it; `fd` is borrowed
    // from its owner for the call.
    let ret = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_PEEK,
        )
    };
    xfer(ret)
}

/// `send(fd, buf, MSG_DONTWAIT | MSG_NOSIGNAL)`: never blocks, never raises
/// SIGPIPE; a peer that is gone shows up as `EPIPE`/`ECONNRESET`.
pub fn send(fd: &impl AsRawFd, buf: &[u8]) -> io::Result<Xfer> {
    if buf.is_empty() {
        return Ok(Xfer::Done(0));
    }
    // SAFETY: `buf` is a live shared slice for the whole call and the kernel
    // only reads `buf.len()` bytes from it; `fd` is borrowed from its owner.
    let ret = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    match xfer(ret)? {
        Xfer::Eof => Ok(Xfer::WouldBlock),
        x => Ok(x),
    }
}

/// `getsockopt(SO_ERROR)`: the pending error of a socket, such as the
/// outcome of a non-blocking `connect` once it is writable.
pub fn take_error(fd: &impl AsRawFd) -> io::Result<Option<io::Error>> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are live locals the kernel writes at most
    // `len` bytes into; `fd` is borrowed from its owner for the call.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

/// Which halves `shutdown` closes.
#[derive(Debug, Clone, Copy)]
pub enum Half {
    Read,
    Write,
    Both,
}

/// `shutdown(2)` by raw descriptor. Used by the timeout sweep and the drain to
/// wake a connection's pending readiness waits (they complete, and the next
/// `recv` reads EOF), and by the tunnel to propagate a half-close. Errors
/// (`ENOTCONN` on a socket the peer already reset) are of no interest.
pub fn shutdown_raw(fd: RawFd, how: Half) {
    let how = match how {
        Half::Read => libc::SHUT_RD,
        Half::Write => libc::SHUT_WR,
        Half::Both => libc::SHUT_RDWR,
    };
    // SAFETY: shutdown takes no pointers. The descriptor numbers passed here
    // are of sockets still open: the per-core registry's, whose entries are
    // removed before the connection that owns the descriptors closes them
    // (single thread); a live connection's own streams; or the listeners a
    // worker holds until it returns.
    unsafe {
        libc::shutdown(fd, how);
    }
}

/// Attach a classic BPF program to a SO_REUSEPORT group that sends each new
/// connection to the listener of the worker pinned to the CPU that handled
/// the connection's SYN. `cpu_to_index[i] = (cpu, socket index in the group)`;
/// a CPU without a worker falls back to `cpu % group_size`.
pub fn attach_reuseport_cpu_steering(
    listener: &impl AsRawFd,
    cpu_to_index: &[(u32, u32)],
    group_size: u32,
) -> io::Result<()> {
    use libc::{BPF_A, BPF_ABS, BPF_ALU, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_MOD, BPF_RET, BPF_W};
    let op = |bits: u32| bits as u16;
    let skf_ad_cpu = (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32;
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };

    if group_size == 0 || cpu_to_index.len() > 1000 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "steering program: bad group size",
        ));
    }
    let mut prog = Vec::with_capacity(cpu_to_index.len() * 2 + 3);
    prog.push(ins(op(BPF_LD | BPF_W | BPF_ABS), 0, 0, skf_ad_cpu));
    for &(cpu, index) in cpu_to_index {
        // if A == cpu { return index } (jeq falls through on true, skips the ret on false)
        prog.push(ins(op(BPF_JMP | BPF_JEQ | BPF_K), 0, 1, cpu));
        prog.push(ins(op(BPF_RET | BPF_K), 0, 0, index));
    }
    prog.push(ins(op(BPF_ALU | BPF_MOD | BPF_K), 0, 0, group_size));
    prog.push(ins(op(BPF_RET | BPF_A), 0, 0, 0));
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `prog`, which lives until the end of this
    // function; the kernel copies the program during the call.
    let ret = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `SO_INCOMING_CPU`: the fallback steering hint when the BPF attach fails.
pub fn set_incoming_cpu(listener: &impl AsRawFd, cpu: u32) -> io::Result<()> {
    let val = cpu as libc::c_int;
    // SAFETY: `val` is a live c_int for the duration of the call.
    let ret = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_INCOMING_CPU,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit. Returns the limit now
/// in force (soft), and the hard limit.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live local the kernel fills in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a live local the kernel only reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn recv_send_and_eof() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(recv(&b, &mut buf).unwrap(), Xfer::WouldBlock);
        a.write_all(b"hello").unwrap();
        // Loopback delivers synchronously, but allow for scheduling.
        let mut got = Xfer::WouldBlock;
        for _ in 0..100 {
            got = recv(&b, &mut buf).unwrap();
            if got != Xfer::WouldBlock {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, Xfer::Done(5));
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(send(&b, b"yo").unwrap(), Xfer::Done(2));
        a.write_all(b"z").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(peek(&b).unwrap(), Xfer::Done(1));
        assert_eq!(peek(&b).unwrap(), Xfer::Done(1), "peeking takes nothing");
        assert_eq!(recv(&b, &mut buf).unwrap(), Xfer::Done(1));
        shutdown_raw(a.as_raw_fd(), Half::Write);
        let mut eof = Xfer::WouldBlock;
        for _ in 0..100 {
            eof = recv(&b, &mut buf).unwrap();
            if eof != Xfer::WouldBlock {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(eof, Xfer::Eof);
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let (soft, hard) = raise_nofile_limit().unwrap();
        assert_eq!(soft, hard);
    }

    #[test]
    fn steering_program_is_accepted_by_the_kernel() {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        attach_reuseport_cpu_steering(&s, &[(0, 0), (1, 1)], 2).unwrap();
    }
}
