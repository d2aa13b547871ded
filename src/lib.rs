//! ringway: a thread-per-core io_uring WebSocket reverse proxy.
//!
//! The layers, lowest first; each imports only from those above it in
//! this list (ARCHITECTURE.md draws the path of one connection through
//! them):
//!
//! - [`sys`]: the raw system calls, the only `unsafe` code.
//! - [`policy`]: decisions without I/O: balancing, limits, trust.
//! - [`proto`]: protocols: HTTP heads and bodies, WebSocket keys and frames,
//!   the PROXY protocol, TLS certificates and sessions.
//! - [`ops`]: what operators see: metrics and the access log.
//! - [`config`]: flags and the `--config` file, validated into a read-only
//!   configuration; its reload on SIGHUP.
//! - [`io`]: moving bytes (the tunnel), per-core timeouts (the sweep), the
//!   drain's close frames.
//! - [`percore`]: one core's state ([`percore::Core`]) and one
//!   configuration's per-core state ([`percore::Generation`]).
//! - [`conn`]: one connection: PROXY header, TLS, request head, route,
//!   upstream, answer, tunnel, and the one line that logs its end.
//! - [`server`]: start-up, the pinned workers and their accept loops,
//!   listeners, signals, shutdown and drain.
//! - [`demo`]: `ringway demo` and its built-in echo backend.
//!
//! Beside them, `fuzzing` (hidden from the docs) holds the fuzz targets'
//! checks of the `proto` parsers, for `fuzz/` and `tests/fuzz_corpus.rs`.
#![deny(unsafe_code)] // also in Cargo.toml [lints]; only `sys` allows it

/// The commit ringway was built from (`build.rs`: `RINGWAY_COMMIT`, else
/// git, else `unknown`), for `--version` and `ringway_build_info`.
pub const COMMIT: &str = env!("RINGWAY_COMMIT");

/// `--version`: the crate's version and that commit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RINGWAY_COMMIT"),
    ")"
);

pub mod config;
pub mod conn;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod io;
pub mod ops;
pub mod percore;
pub mod policy;
pub mod proto;
pub mod server;
pub mod sys;
