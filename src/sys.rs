//! The raw system calls ringway makes itself, and nothing else.
//!
//! This is one of the few modules allowed `unsafe`. Every call here works on a
//! descriptor that the caller owns (a monoio stream or a socket2 socket) and
//! that stays open for the whole call; no pointer outlives the call it is
//! passed to. Everything else in the crate goes through these safe wrappers.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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

/// TCP keepalive on `sock`: SO_KEEPALIVE with the first probe after `idle`
/// of silence, one every `interval`, `count` unanswered ending the
/// connection (`ETIMEDOUT`); and TCP_USER_TIMEOUT at their total, so that
/// data left unacknowledged that long ends it the same way. A listener's
/// settings are inherited by the sockets it accepts.
pub fn set_keepalive(
    sock: &impl std::os::fd::AsFd,
    idle: std::time::Duration,
    interval: std::time::Duration,
    count: u32,
) -> io::Result<()> {
    let sock = socket2::SockRef::from(sock);
    let params = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(count);
    sock.set_tcp_keepalive(&params)?;
    sock.set_tcp_user_timeout(Some(idle + interval * count))
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

/// A non-blocking eventfd, for the completion ring to signal its worker.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: no pointers; on success the new descriptor is ours alone and
    // is wrapped at once in an OwnedFd that closes it.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd(2) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A non-blocking pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a local array of two ints that pipe2 fills.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created by pipe2 and are ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Non-blocking `splice(2)` of at most `len` bytes from `from` to `to`
/// (one of them a pipe). `WouldBlock`: nothing to move, or no room.
/// Needs both descriptors non-blocking (see [`set_nonblocking`]):
/// `SPLICE_F_NONBLOCK` covers only the pipe.
pub fn splice(from: &impl AsRawFd, to: &impl AsRawFd, len: usize) -> io::Result<Xfer> {
    // SAFETY: no user memory; both descriptors are open for the call (the
    // caller owns or borrows them); null offsets: sockets and pipes have
    // none.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    xfer(n)
}

/// Make `fd` non-blocking (`O_NONBLOCK`), as splice needs its sockets.
pub fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: no pointers; plain fcntl calls on a descriptor the caller
    // keeps open for the call.
    let r = unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || fl & libc::O_NONBLOCK != 0 {
            fl
        } else {
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK)
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

/// The `open_how` of `openat2(2)` (linux/openat2.h); libc's is
/// `#[non_exhaustive]`, so it cannot be built with a literal.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Flags of every file `open_beneath` opens. `O_NONBLOCK` only so that
/// opening a FIFO does not wait for a writer (it is cleared again before the
/// file is returned); `O_NOCTTY` so that a terminal can never become ours.
const BENEATH_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;

/// Open `path` (relative, no leading '/') for reading beneath the directory
/// `dir`, such that nothing — a `..`, an absolute path, a symlink — can make
/// it resolve to anything outside `dir`. `dir` may be an `O_PATH` descriptor;
/// `dir_real` is its real (canonical, absolute) path, used only by the
/// fallback below.
///
/// With `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` (Linux 5.6+) the
/// kernel enforces it: an escape fails with `EXDEV` (or `ELOOP` for a
/// `/proc` magic link). A relative symlink that stays inside `dir` works; an
/// absolute symlink is refused even if it points inside (`EXDEV`), because
/// the kernel cannot resolve it beneath `dir`.
///
/// Where `openat2` is missing (`ENOSYS`, or `EPERM` from a seccomp filter
/// that does not know it) the file is opened with plain `openat` and kept only
/// if its real path (read back from `/proc/self/fd`) lies under `dir_real`,
/// else it is closed and the answer is `EXDEV`. In that mode the open itself
/// may have touched something outside (a device's open has effects), which
/// `openat2` never does.
///
/// The file may be anything that opens read-only, directories included; the
/// caller looks at its type. Blocking (one or two syscalls on the calling
/// thread).
pub fn open_beneath(
    dir: &impl AsRawFd,
    dir_real: &std::path::Path,
    path: &str,
) -> io::Result<std::fs::File> {
    let c_path =
        std::ffi::CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let how = OpenHow {
        flags: BENEATH_FLAGS as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `c_path` is a NUL-terminated string and `how` a live, fully
    // initialised `open_how` of the size passed; the kernel only reads both
    // during the call. `dir` is borrowed from its owner, so its descriptor
    // stays open for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c_path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if ret >= 0 {
        return blocking_file(ret as RawFd);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSYS | libc::EPERM) => open_beneath_by_openat(dir, dir_real, &c_path),
        _ => Err(err),
    }
}

/// The fallback of [`open_beneath`]: `openat`, then check the real path.
fn open_beneath_by_openat(
    dir: &impl AsRawFd,
    dir_real: &std::path::Path,
    path: &std::ffi::CStr,
) -> io::Result<std::fs::File> {
    let escape = || io::Error::from_raw_os_error(libc::EXDEV);
    let bytes = path.to_bytes();
    if bytes.starts_with(b"/") || bytes.split(|&b| b == b'/').any(|s| s == b"..") {
        return Err(escape());
    }
    // SAFETY: `path` is a NUL-terminated string the kernel only reads during
    // the call; `dir` is borrowed from its owner for the call.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), path.as_ptr(), BENEATH_FLAGS) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let file = blocking_file(fd)?;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    // Component-wise: `/srv/www2/x` is not under `/srv/www`.
    if real.starts_with(dir_real) {
        Ok(file)
    } else {
        Err(escape())
    }
}

/// Take ownership of a descriptor `open_beneath` just opened, and clear its
/// `O_NONBLOCK` (a regular file read must not answer `EAGAIN`).
fn blocking_file(fd: RawFd) -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was just returned by a successful open in this thread and
    // nothing else owns it; the `File` takes it over and closes it on drop.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    // SAFETY: fcntl takes no pointers; `file` owns the descriptor for the call.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

#[cfg(test)]
mod beneath_tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};

    /// A scratch tree: ROOT/{file, sub/inner, inside -> file,
    /// sub/up -> ../file, passwd -> /etc/passwd, out -> ../outside,
    /// abs -> ROOT/file}, and ROOT/../outside. Removed on drop.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Tree {
            let base = std::env::temp_dir().join(format!(
                "ringway-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&base);
            let root = base.join("root");
            std::fs::create_dir_all(root.join("sub")).unwrap();
            std::fs::write(base.join("outside"), b"secret").unwrap();
            std::fs::write(root.join("file"), b"hello").unwrap();
            std::fs::write(root.join("sub/inner"), b"inner").unwrap();
            symlink("file", root.join("inside")).unwrap();
            symlink("../file", root.join("sub/up")).unwrap();
            symlink("/etc/passwd", root.join("passwd")).unwrap();
            symlink("../outside", root.join("out")).unwrap();
            symlink(root.join("file"), root.join("abs")).unwrap();
            Tree(base)
        }

        fn root(&self) -> PathBuf {
            std::fs::canonicalize(self.0.join("root")).unwrap()
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn read(
        open: impl Fn(&std::fs::File, &Path, &str) -> io::Result<std::fs::File>,
        dir: &std::fs::File,
        real: &Path,
        path: &str,
    ) -> Result<String, i32> {
        use std::io::Read;
        let mut file = open(dir, real, path).map_err(|e| e.raw_os_error().unwrap())?;
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        Ok(text)
    }

    fn check(open: impl Fn(&std::fs::File, &Path, &str) -> io::Result<std::fs::File>, name: &str) {
        use std::os::unix::fs::OpenOptionsExt;
        let tree = Tree::new(name);
        let real = tree.root();
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&real)
            .unwrap();
        let read = |path| read(&open, &dir, &real, path);
        assert_eq!(read("file").as_deref(), Ok("hello"));
        assert_eq!(read("sub/inner").as_deref(), Ok("inner"));
        assert_eq!(read("inside").as_deref(), Ok("hello"), "a symlink inside");
        assert_eq!(
            read("sub/up").as_deref(),
            Ok("hello"),
            "'..' inside a symlink"
        );
        assert_eq!(read("missing"), Err(libc::ENOENT));
        assert_eq!(read("file/x"), Err(libc::ENOTDIR));
        assert_eq!(read("passwd"), Err(libc::EXDEV), "a symlink to /etc/passwd");
        assert_eq!(read("out"), Err(libc::EXDEV), "a symlink to ../outside");
        assert_eq!(read("../outside"), Err(libc::EXDEV));
        assert_eq!(read("/etc/passwd"), Err(libc::EXDEV));
        let sub = open(&dir, &real, "sub").unwrap();
        assert!(sub.metadata().unwrap().is_dir(), "directories open too");
    }

    #[test]
    fn openat2_keeps_every_open_beneath_the_root() {
        check(open_beneath, "openat2");
        let tree = Tree::new("openat2-abs");
        let real = tree.root();
        let dir = std::fs::File::open(&real).unwrap();
        let err = open_beneath(&dir, &real, "abs").unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EXDEV),
            "absolute symlinks are refused"
        );
    }

    #[test]
    fn the_openat_fallback_keeps_every_open_beneath_the_root() {
        let open = |d: &std::fs::File, r: &Path, p: &str| {
            let c = std::ffi::CString::new(p).unwrap();
            open_beneath_by_openat(d, r, &c)
        };
        check(open, "openat");
    }

    #[test]
    fn a_fifo_opens_without_waiting_for_a_writer() {
        let tree = Tree::new("fifo");
        let real = tree.root();
        let fifo = std::ffi::CString::new(real.join("fifo").into_os_string().into_encoded_bytes())
            .unwrap();
        // SAFETY: `fifo` is a NUL-terminated path the kernel only reads.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let dir = std::fs::File::open(&real).unwrap();
        let file = open_beneath(&dir, &real, "fifo").unwrap();
        assert!(!file.metadata().unwrap().is_file());
    }
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

/// A blocking inotify instance (`inotify_init1(IN_CLOEXEC)`), for the
/// `--watch-config` thread; read its events with `std::io::Read` on a
/// `File` made from it.
pub fn inotify() -> io::Result<OwnedFd> {
    // SAFETY: no pointers; on success the new descriptor is ours alone and
    // is wrapped at once in an OwnedFd that closes it.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by inotify_init1(2) and nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `inotify_add_watch(fd, path, mask)`: the watch descriptor (the same one
/// again for a path already watched).
pub fn inotify_add_watch(fd: &impl AsRawFd, path: &std::path::Path, mask: u32) -> io::Result<i32> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c_path` is a NUL-terminated string the kernel only reads
    // during the call; `fd` is borrowed from its owner and stays open.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c_path.as_ptr(), mask) };
    if wd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(wd)
}

/// `CLOCK_MONOTONIC` in microseconds: systemd's `MONOTONIC_USEC` of a
/// reload notification.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a local timespec that clock_gettime fills; no other
    // pointer is passed. CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}
