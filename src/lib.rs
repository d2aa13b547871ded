//! ringway: a thread-per-core io_uring WebSocket reverse proxy.
//!
//! The path of one connection, module by module (ARCHITECTURE.md draws it):
//!
//! - [`config`]: flags, validated into a read-only [`config::Config`].
//! - [`server`]: binds the listener groups ([`listener`]), starts one pinned
//!   worker per core, relays SIGTERM/SIGINT through [`shutdown`].
//! - [`worker`]: one core's runtime, accept loop, timeout sweep ([`sweep`])
//!   and drain; owns the per-core state [`worker::Core`].
//! - [`drain`]: close frames to both sides of each tunnel at a drain
//!   (`--drain-close-frames`), at frame boundaries ([`ws_frames`]).
//! - [`conn`]: one connection: request head ([`http::request`]), backend
//!   choice ([`balance`]) and connect, the answer ([`http::response`]), then
//!   the tunnel ([`tunnel`]).
//! - [`reload`]: SIGHUP reads the configuration again; each core builds a
//!   [`worker::Generation`] for it, each connection keeps its own.
//! - [`metrics`] and [`access_log`]: per-core counters and log lines, read
//!   and written by threads of their own, off the data path.
//! - [`sys`]: the raw system calls, the only `unsafe` code.
//! - [`demo`] and [`ws`]: the built-in echo backend of `ringway demo`.
#![deny(unsafe_code)] // also in Cargo.toml [lints]; only `sys` allows it

pub mod access_log;
pub mod balance;
pub mod config;
pub mod conn;
pub mod demo;
pub mod drain;
pub mod files;
pub mod http;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod proxy_protocol;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod sweep;
pub mod sys;
pub mod tls;
pub mod tunnel;
pub mod worker;
pub mod ws;
pub mod ws_frames;
