//! ringway-load: the tools that measure ringway against nginx.
//!
//! - [`scenario`]: the load scenarios (echo, bulk, connect, idle) on pinned
//!   monoio threads, reported by [`report`] with CPU and memory of watched
//!   processes from [`procstat`] and their system calls from [`perfstat`].
//! - [`fleet`]: many tunnels held, a few of them busy (a chat service).
//! - [`client`]: one connection's handshake and a header-only frame counter.
//! - [`tls`]: wss:// (rustls over monoio), for the generator and the backend.
//! - [`echo`]: the fast echo backend the runs are made against.
//! - [`compare`]: starts backend, ringway and nginx, runs every scenario
//!   against each, and prints and charts the ratios.
//! - [`hold`]: starts ringway and named backends, and checks that what held
//!   still holds: a backend killed and restarted under live tunnels, many
//!   reloads under live tunnels, connection churn with memory flat.

pub mod client;
pub mod compare;
pub mod echo;
pub mod fleet;
pub mod hold;
pub mod perfstat;
pub mod procstat;
pub mod report;
pub mod scenario;
pub mod tls;
