//! Decisions without I/O: which server a connection goes to ([`balance`],
//! per core), and whether it may come in at all ([`limits`]: the per-address
//! and global counts every core shares, the Origin allow-list, the trusted
//! proxies).

pub mod balance;
pub mod limits;
