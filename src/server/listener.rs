//! Listening sockets: one SO_REUSEPORT listener per worker for each
//! `--listen` address, built with socket2, plus connection steering.
//!
//! The group is built on the main thread before any worker starts, so that
//! port 0 resolves to one port for every worker and the group's socket order
//! (the order of `listen()`) is worker order, which the steering program
//! relies on. The first socket is bound *without* SO_REUSEPORT: if another
//! process holds the address, that bind fails and ringway says so, instead
//! of silently sharing the port (monoio's own `bind` turns SO_REUSEPORT on).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Keepalive;
use crate::sys;

/// Why a listener could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: the address is already in use (is another ringway or server running there?)")]
    InUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Bind `count` listeners that share `addr`, all non-blocking (monoio's epoll
/// driver needs that) and with TCP_NODELAY and `keepalive` (which the
/// sockets they accept inherit), in group order. Returns them and the bound address
/// (port 0 resolved).
pub fn bind_group(
    addr: SocketAddr,
    count: usize,
    backlog: u32,
    keepalive: Keepalive,
) -> Result<(Vec<std::net::TcpListener>, SocketAddr), ListenError> {
    let io_err = |source| ListenError::Io { addr, source };
    let new_socket = || -> io::Result<Socket> {
        let s = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            Some(Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        // Inherited by every accepted socket (as nginx's tcp_nodelay): one
        // setsockopt per listener instead of one per connection.
        s.set_nodelay(true)?;
        // Inherited too: dead clients are found without a syscall per
        // connection.
        if let Some(k) = keepalive.0 {
            sys::set_keepalive(&s, k.idle, k.interval, k.count)?;
        }
        if addr.is_ipv6() {
            // Like nginx's ipv6only=on: [::] does not also take IPv4.
            s.set_only_v6(true)?;
        }
        Ok(s)
    };
    let first = new_socket().map_err(io_err)?;
    if let Err(e) = first.bind(&addr.into()) {
        return Err(if e.kind() == io::ErrorKind::AddrInUse {
            ListenError::InUse { addr }
        } else {
            io_err(e)
        });
    }
    let bound = first
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| io_err(io::Error::other("no local address")))?;
    // Bound exclusively; now open the port to our own group only.
    first.set_reuse_port(true).map_err(io_err)?;
    let mut sockets = vec![first];
    for _ in 1..count {
        let s = new_socket().map_err(io_err)?;
        s.set_reuse_port(true).map_err(io_err)?;
        s.bind(&bound.into()).map_err(io_err)?;
        sockets.push(s);
    }
    let backlog = backlog.min(i32::MAX as u32) as i32;
    for s in &sockets {
        s.listen(backlog).map_err(io_err)?;
    }
    Ok((sockets.into_iter().map(Into::into).collect(), bound))
}

/// How new connections are steered to the worker pinned on the CPU that
/// received them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    /// A reuseport BPF program maps the receiving CPU to its worker's socket.
    Cbpf,
    /// `SO_INCOMING_CPU` on each listener (the kernel prefers a match).
    IncomingCpu,
    /// Neither could be set: the kernel's hash spreads connections.
    None,
}

/// Steer a group whose socket `i` belongs to the worker pinned on `cpus[i]`.
pub fn steer(group: &[std::net::TcpListener], cpus: &[usize]) -> Steering {
    let mut map: Vec<(u32, u32)> = Vec::new();
    for (i, &cpu) in cpus.iter().enumerate() {
        if !map.iter().any(|&(c, _)| c == cpu as u32) {
            map.push((cpu as u32, i as u32));
        }
    }
    match sys::attach_reuseport_cpu_steering(&group[0], &map, group.len() as u32) {
        Ok(()) => Steering::Cbpf,
        Err(e) => {
            log::debug!("SO_ATTACH_REUSEPORT_CBPF failed ({e}); trying SO_INCOMING_CPU");
            let all = group
                .iter()
                .zip(cpus)
                .all(|(l, &cpu)| sys::set_incoming_cpu(l, cpu as u32).is_ok());
            if all {
                Steering::IncomingCpu
            } else {
                Steering::None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_tcp_nodelay() {
        let (group, bound) =
            bind_group("127.0.0.1:0".parse().unwrap(), 1, 16, Keepalive(None)).unwrap();
        let _c = std::net::TcpStream::connect(bound).unwrap();
        let l = &group[0];
        l.set_nonblocking(false).unwrap();
        let (a, _) = l.accept().unwrap();
        assert!(a.nodelay().unwrap(), "no per-connection setsockopt needed");
    }

    #[test]
    fn accepted_sockets_inherit_keepalive() {
        use std::time::Duration;
        let probes = crate::config::KeepaliveProbes {
            idle: Duration::from_secs(7),
            interval: Duration::from_secs(3),
            count: 4,
        };
        let addr = "127.0.0.1:0".parse().unwrap();
        let (group, bound) = bind_group(addr, 1, 16, Keepalive(Some(probes))).unwrap();
        let _c = std::net::TcpStream::connect(bound).unwrap();
        let l = &group[0];
        l.set_nonblocking(false).unwrap();
        let (a, _) = l.accept().unwrap();
        let a = socket2::SockRef::from(&a);
        assert!(a.keepalive().unwrap());
        assert_eq!(a.keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(a.keepalive_interval().unwrap(), Duration::from_secs(3));
        assert_eq!(a.keepalive_retries().unwrap(), 4);
        assert_eq!(a.tcp_user_timeout().unwrap(), Some(Duration::from_secs(19)));
        // Off: nothing set.
        let (group, bound) = bind_group(addr, 1, 16, Keepalive(None)).unwrap();
        let _c = std::net::TcpStream::connect(bound).unwrap();
        group[0].set_nonblocking(false).unwrap();
        let (a, _) = group[0].accept().unwrap();
        assert!(!socket2::SockRef::from(&a).keepalive().unwrap());
    }

    #[test]
    fn port_zero_gives_one_port_to_the_whole_group() {
        let (group, bound) =
            bind_group("127.0.0.1:0".parse().unwrap(), 3, 16, Keepalive(None)).unwrap();
        assert_ne!(bound.port(), 0);
        for l in &group {
            assert_eq!(l.local_addr().unwrap(), bound);
        }
        assert_eq!(steer(&group, &[0, 1, 0]), Steering::Cbpf);
    }

    #[test]
    fn an_address_held_by_someone_else_is_refused() {
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = other.local_addr().unwrap();
        match bind_group(addr, 2, 16, Keepalive(None)) {
            Err(ListenError::InUse { addr: a }) => assert_eq!(a, addr),
            other => panic!("expected InUse, got {other:?}"),
        }
        // Even a process that also uses SO_REUSEPORT is not silently joined.
        let (_ours, bound) =
            bind_group("127.0.0.1:0".parse().unwrap(), 2, 16, Keepalive(None)).unwrap();
        assert!(matches!(
            bind_group(bound, 2, 16, Keepalive(None)),
            Err(ListenError::InUse { .. })
        ));
    }
}
