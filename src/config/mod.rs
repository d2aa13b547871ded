//! The configuration: flags (and the `--config` file) validated into
//! [`Settings`], which can no longer be wrong: at least one listener and one
//! backend, every timeout non-zero, sizes in range, backend names resolved,
//! routes to groups that exist, certificates loaded.
//!
//! [`Settings`] is two parts. [`Startup`] is what is bound when ringway
//! starts (listeners, workers, the ring, the metrics and access-log
//! destinations): the server reads it at start. [`Config`] is everything a
//! connection reads (certificates, groups, routes, limits, timeouts): each
//! worker reads it through an `Arc`, and a reload (`reload.rs`) replaces it
//! whole. A reload publishes only a `Config`, so it cannot express a
//! start-up change; one that would need one is refused
//! ([`Startup::changed_from`]).
//!
//! The folder, lowest first: `error.rs` (every message), `file.rs` (the
//! TOML file as arguments), `cli.rs` (clap's types, `parse_cli`),
//! `static_root.rs`, `upstream.rs` (servers and groups), `routes.rs`, this
//! file (validation), `describe.rs` (`ringway check`), `reload.rs`,
//! `docs.rs` (`ringway man`, `ringway completions`). The
//! names used outside are re-exported here.

pub mod cli;
mod describe;
pub mod docs;
pub mod error;
mod file;
pub mod reload;
pub mod routes;
pub mod static_root;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

pub use crate::config::cli::{
    parse_cli, parse_duration, usage_reason, CheckArgs, Cli, CliError, Command, DemoArgs, Driver,
    Keepalive, KeepaliveProbes, ListenArg, ProxyArgs, RouteArg, Splice, TunnelIo, DEFAULT_BACKLOG,
    DEFAULT_BUFFER_SIZE, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRAIN_TIMEOUT, DEFAULT_FAIL_TIMEOUT,
    DEFAULT_GROUP, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_LIMIT_CONN_STATUS,
    DEFAULT_LISTEN, DEFAULT_MAX_HEADER_BYTES, DEFAULT_RECV_BUFFERS, DEFAULT_RECV_BUFFER_SIZE,
    DEFAULT_RING_ENTRIES,
};
pub use crate::config::error::ConfigError;
pub use crate::config::routes::{Route, Routes, Target};
pub use crate::config::upstream::{Backend, Group};

use crate::config::error::TlsError;
use crate::config::routes::build_routes;
use crate::config::upstream::build_groups;
use crate::ops::access_log;
use crate::policy::limits::{Cidr, OriginPattern};
use crate::proto::tls::{self, CertFiles, ServerTls, UpstreamTrust};

/// One listening address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub tls: bool,
    /// A PROXY protocol header must come first.
    pub proxy_protocol: bool,
}

/// The validated configuration, both parts: what [`Settings::from_args`]
/// builds, at start and at each reload.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Fixed while ringway runs.
    pub startup: Startup,
    /// What a reload may replace.
    pub config: Config,
}

/// What is fixed when ringway starts: what it binds and opens, and how its
/// workers run. The server and its workers read it at start; a reload that
/// would change it is refused.
#[derive(Debug, Clone)]
pub struct Startup {
    /// ws:// listeners first, then wss://, each in flag order.
    pub listen: Vec<Listen>,
    pub workers: usize,
    pub pin: bool,
    pub driver: Driver,
    pub ring_entries: u32,
    pub backlog: u32,
    /// The per-core scratch buffer's size.
    pub buffer_size: usize,
    /// How tunnel bytes move with io_uring (`--tunnel-io`).
    pub tunnel_io: TunnelIo,
    /// Each core's receive buffer ring: how many buffers, of what size.
    pub recv_buffers: u16,
    pub recv_buffer_size: u32,
    /// Pipes in each core's pool for splice.
    pub splice_pipes: usize,
    pub metrics_listen: Option<SocketAddr>,
    pub access_log: access_log::Sink,
    pub access_log_format: access_log::Format,
    /// TCP keepalive for every client and backend socket (set on the
    /// listeners, whose accepted sockets inherit it).
    pub tcp_keepalive: Keepalive,
    /// The `--config` file to watch and reload on change (`--watch-config`).
    pub watch_config: Option<PathBuf>,
    /// Where the process id is written once listening.
    pub pid_file: Option<PathBuf>,
}

/// What a reload may replace: everything a connection reads. Read-only,
/// shared by `Arc`; each connection keeps the one it was accepted under
/// until it ends.
#[derive(Debug, Clone)]
pub struct Config {
    /// The TLS listeners' certificates (when there are TLS listeners).
    pub tls: Option<Arc<ServerTls>>,
    pub groups: Vec<Group>,
    pub routes: Routes,
    /// How wss:// backends are spoken to (when there are any).
    pub upstream_tls: Option<Arc<ClientConfig>>,
    /// Most servers one connection tries; 0: all of its group.
    pub upstream_tries: usize,
    pub limit_conn_per_ip: Option<u32>,
    pub limit_conn_status: u16,
    pub max_conns: Option<usize>,
    pub allow_origin: Vec<OriginPattern>,
    pub trusted_proxies: Vec<Cidr>,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// The wait for a backend's answer to an upgrade.
    pub upstream_answer_timeout: Duration,
    pub half_close_timeout: Duration,
    /// Read by each worker when the drain begins, from the configuration it
    /// holds then.
    pub drain_timeout: Duration,
    pub max_header_bytes: usize,
    pub drain_close_frames: bool,
    /// When ws:// tunnels splice (`--splice`).
    pub splice: Splice,
}

/// Most worker threads accepted.
const MAX_WORKERS: usize = 1024;

impl Settings {
    /// Validate flags. `available_cores` is the default worker count.
    pub fn from_args(args: &ProxyArgs, available_cores: usize) -> Result<Settings, ConfigError> {
        if args.upstream.is_empty() && args.static_dirs.is_empty() {
            return Err(ConfigError::NoUpstream);
        }
        let mut listen: Vec<Listen> = args
            .listen
            .iter()
            .map(|l| (l, false))
            .chain(args.tls_listen.iter().map(|l| (l, true)))
            .map(|(l, tls)| Listen {
                addr: l.addr,
                tls,
                proxy_protocol: l.proxy_protocol,
            })
            .collect();
        if listen.is_empty() {
            listen.push(Listen {
                addr: DEFAULT_LISTEN.parse().expect("valid default address"),
                tls: false,
                proxy_protocol: false,
            });
        }
        for (i, l) in listen.iter().enumerate() {
            // Port 0 asks for a fresh port each time.
            if l.addr.port() != 0 && listen[..i].iter().any(|o| o.addr == l.addr) {
                return Err(ConfigError::DuplicateListen(l.addr));
            }
        }
        if listen.iter().any(|l| l.proxy_protocol) && args.trusted_proxy.is_empty() {
            return Err(ConfigError::ProxyProtocolUntrusted);
        }
        let cert_files = CertFiles {
            default: args.cert.clone().zip(args.key.clone()),
            sni: args.sni_cert.clone(),
            strict: args.sni_strict,
        };
        if args.tls_listen.is_empty() != cert_files.is_empty() {
            return Err(if args.tls_listen.is_empty() {
                TlsError::CertificatesUnused
            } else {
                TlsError::NoCertificate
            }
            .into());
        }
        let workers = args.workers.unwrap_or(available_cores.max(1));
        if workers == 0 || workers > MAX_WORKERS {
            return Err(ConfigError::OutOfRange("workers", "between 1 and 1024"));
        }
        if !args.ring_entries.is_power_of_two() || !(8..=32768).contains(&args.ring_entries) {
            return Err(ConfigError::OutOfRange(
                "ring-entries",
                "a power of two from 8 to 32768",
            ));
        }
        if !(1..=65535).contains(&args.backlog) {
            return Err(ConfigError::OutOfRange("backlog", "between 1 and 65535"));
        }
        for (name, d) in [
            ("connect-timeout", args.connect_timeout),
            ("handshake-timeout", args.handshake_timeout),
            ("idle-timeout", args.idle_timeout),
            ("upstream-answer-timeout", args.upstream_answer_timeout),
            ("half-close-timeout", args.half_close_timeout),
            ("drain-timeout", args.drain_timeout),
            ("fail-timeout", args.fail_timeout),
        ] {
            if d < Duration::from_millis(10) {
                return Err(ConfigError::OutOfRange(name, "at least 10ms"));
            }
        }
        if !(1024..=1024 * 1024).contains(&args.max_header_bytes) {
            return Err(ConfigError::OutOfRange(
                "max-header-bytes",
                "between 1024 and 1048576",
            ));
        }
        if !(4096..=16 * 1024 * 1024).contains(&args.buffer_size) {
            return Err(ConfigError::OutOfRange(
                "buffer-size",
                "between 4096 and 16777216",
            ));
        }
        if !(1..=32768).contains(&args.recv_buffers) {
            return Err(ConfigError::OutOfRange(
                "recv-buffers",
                "between 1 and 32768",
            ));
        }
        if !(1024..=1024 * 1024).contains(&args.recv_buffer_size) {
            return Err(ConfigError::OutOfRange(
                "recv-buffer-size",
                "between 1024 and 1048576",
            ));
        }
        if args.splice_pipes > 1024 {
            return Err(ConfigError::OutOfRange("splice-pipes", "at most 1024"));
        }
        if args.upstream_tries > 1000 {
            return Err(ConfigError::OutOfRange("upstream-tries", "at most 1000"));
        }
        if args.limit_conn_per_ip == Some(0) {
            return Err(ConfigError::OutOfRange("limit-conn-per-ip", "at least 1"));
        }
        if !(400..=599).contains(&args.limit_conn_status) {
            return Err(ConfigError::OutOfRange(
                "limit-conn-status",
                "a status from 400 to 599",
            ));
        }
        if args.max_conns == Some(0) {
            return Err(ConfigError::OutOfRange("max-conns", "at least 1"));
        }
        // Last: resolving names and reading files are the slow checks.
        let groups = build_groups(args)?;
        let routes = build_routes(args, &groups)?;
        let trust = UpstreamTrust {
            ca: args.upstream_ca.clone(),
            insecure: args.upstream_insecure,
        };
        let any_wss = groups
            .iter()
            .flat_map(|g| &g.servers)
            .any(|b| b.tls.is_some());
        let upstream_tls = if any_wss {
            Some(tls::client_config(&trust).map_err(TlsError::UpstreamTrust)?)
        } else if trust != UpstreamTrust::default() {
            return Err(TlsError::TrustUnused.into());
        } else {
            None
        };
        let tls = if cert_files.is_empty() {
            None
        } else {
            Some(Arc::new(
                ServerTls::load(cert_files).map_err(TlsError::Certificates)?,
            ))
        };
        Ok(Settings {
            startup: Startup {
                listen,
                workers,
                pin: !args.no_pin,
                driver: args.driver,
                ring_entries: args.ring_entries,
                backlog: args.backlog,
                buffer_size: args.buffer_size,
                tunnel_io: args.tunnel_io,
                recv_buffers: args.recv_buffers,
                recv_buffer_size: args.recv_buffer_size,
                splice_pipes: args.splice_pipes,
                metrics_listen: args.metrics_listen,
                access_log: args.access_log.clone(),
                access_log_format: args.access_log_format,
                tcp_keepalive: args.tcp_keepalive,
                watch_config: args.config.clone().filter(|_| args.watch_config),
                pid_file: args.pid_file.clone(),
            },
            config: Config {
                tls,
                groups,
                routes,
                upstream_tls,
                upstream_tries: args.upstream_tries,
                limit_conn_per_ip: args.limit_conn_per_ip,
                limit_conn_status: args.limit_conn_status,
                max_conns: args.max_conns,
                allow_origin: args.allow_origin.clone(),
                trusted_proxies: args.trusted_proxy.clone(),
                connect_timeout: args.connect_timeout,
                handshake_timeout: args.handshake_timeout,
                idle_timeout: args.idle_timeout,
                upstream_answer_timeout: args.upstream_answer_timeout,
                half_close_timeout: args.half_close_timeout,
                drain_timeout: args.drain_timeout,
                max_header_bytes: args.max_header_bytes,
                drain_close_frames: args.drain_close_frames,
                splice: args.splice,
            },
        })
    }
}

impl Startup {
    /// The listeners' addresses of one kind.
    pub fn listen_addrs(&self, tls: bool) -> impl Iterator<Item = SocketAddr> + '_ {
        self.listen
            .iter()
            .filter(move |l| l.tls == tls)
            .map(|l| l.addr)
    }

    /// The flags (by name) whose setting differs from `old`'s: what a
    /// reload to `self` would need a restart for. Empty when none does.
    pub fn changed_from(&self, old: &Startup) -> Vec<&'static str> {
        // Every field by name, so that a new one cannot be left unchecked.
        let Startup {
            listen,
            workers,
            pin,
            driver,
            ring_entries,
            backlog,
            buffer_size,
            tunnel_io,
            recv_buffers,
            recv_buffer_size,
            splice_pipes,
            metrics_listen,
            access_log,
            access_log_format,
            tcp_keepalive,
            watch_config,
            pid_file,
        } = self;
        [
            ("listen/tls-listen", *listen == old.listen),
            ("workers", *workers == old.workers),
            ("no-pin", *pin == old.pin),
            ("driver", *driver == old.driver),
            ("ring-entries", *ring_entries == old.ring_entries),
            ("backlog", *backlog == old.backlog),
            ("buffer-size", *buffer_size == old.buffer_size),
            ("tunnel-io", *tunnel_io == old.tunnel_io),
            ("recv-buffers", *recv_buffers == old.recv_buffers),
            (
                "recv-buffer-size",
                *recv_buffer_size == old.recv_buffer_size,
            ),
            ("splice-pipes", *splice_pipes == old.splice_pipes),
            ("metrics-listen", *metrics_listen == old.metrics_listen),
            ("access-log", *access_log == old.access_log),
            (
                "access-log-format",
                *access_log_format == old.access_log_format,
            ),
            ("tcp-keepalive", *tcp_keepalive == old.tcp_keepalive),
            ("watch-config", *watch_config == old.watch_config),
            ("pid-file", *pid_file == old.pid_file),
        ]
        .into_iter()
        .filter(|&(_, same)| !same)
        .map(|(name, _)| name)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cli::DEFAULT_GROUP;
    use crate::policy::balance::{Method, ServerParams};

    /// The proxy's flags as clap parses them (`ringway` prepended).
    pub(crate) fn args(extra: &[&str]) -> Result<ProxyArgs, clap::Error> {
        let mut v = vec!["ringway"];
        v.extend_from_slice(extra);
        <Cli as clap::Parser>::try_parse_from(v).map(|c| c.proxy)
    }

    /// Those flags validated, with 4 cores.
    pub(crate) fn config(extra: &[&str]) -> Result<Settings, ConfigError> {
        Settings::from_args(&args(extra).unwrap(), 4)
    }

    #[test]
    fn defaults() {
        let Settings {
            startup: s,
            config: c,
        } = config(&["--upstream", "127.0.0.1:9000"]).unwrap();
        assert_eq!(
            s.listen_addrs(false).collect::<Vec<_>>(),
            vec!["0.0.0.0:8080".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(s.workers, 4);
        assert!(s.pin);
        assert_eq!(s.driver, Driver::Auto);
        assert_eq!(c.connect_timeout, Duration::from_secs(60));
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.max_header_bytes, 16384);
        let g = &c.groups[0];
        assert_eq!(g.name, DEFAULT_GROUP);
        assert_eq!(g.method, Method::RoundRobin);
        assert_eq!(g.servers[0].addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(g.servers[0].params, ServerParams::default());
        assert_eq!(c.upstream_tries, 0);
        assert_eq!(
            (c.limit_conn_per_ip, c.limit_conn_status, c.max_conns),
            (None, 503, None)
        );
    }

    #[test]
    fn every_flag_parses() {
        let Settings {
            startup: s,
            config: c,
        } = config(&[
            "--listen",
            "127.0.0.1:1",
            "--listen",
            "[::1]:2",
            "--upstream",
            "ws://127.0.0.1:9000/",
            "--upstream",
            "[::1]:9001",
            "--workers",
            "3",
            "--no-pin",
            "--driver",
            "legacy",
            "--ring-entries",
            "256",
            "--backlog",
            "128",
            "--connect-timeout",
            "2s",
            "--handshake-timeout",
            "3s",
            "--idle-timeout",
            "24h",
            "--drain-timeout",
            "5s",
            "--fail-timeout",
            "1s",
            "--max-header-bytes",
            "4096",
            "--buffer-size",
            "8192",
        ])
        .unwrap();
        assert_eq!(s.listen.len(), 2);
        assert_eq!(c.groups[0].servers.len(), 2);
        assert_eq!(c.groups[0].servers[0].name, "127.0.0.1:9000");
        assert_eq!((s.workers, s.pin, s.driver), (3, false, Driver::Legacy));
        assert_eq!((s.ring_entries, s.backlog), (256, 128));
        assert_eq!(c.idle_timeout, Duration::from_secs(86400));
        assert_eq!(
            c.groups[0].servers[0].params.fail_timeout,
            Duration::from_secs(1)
        );
        assert_eq!((c.max_header_bytes, s.buffer_size), (4096, 8192));
    }

    #[test]
    fn mistakes_are_clear_errors() {
        assert!(matches!(config(&[]), Err(ConfigError::NoUpstream)));
        for (flags, needle) in [
            (&["--upstream", "nohostport"][..], "HOST:PORT"),
            (&["--upstream", "http://127.0.0.1:1"][..], "ws://"),
            (&["--upstream", "127.0.0.1:1/path"][..], "path"),
            (
                &["--upstream", "127.0.0.1:1", "--workers", "0"][..],
                "workers",
            ),
            (
                &["--upstream", "127.0.0.1:1", "--ring-entries", "100"][..],
                "ring-entries",
            ),
            (
                &["--upstream", "127.0.0.1:1", "--idle-timeout", "0"][..],
                "idle-timeout",
            ),
            (
                &["--upstream", "127.0.0.1:1", "--max-header-bytes", "10"][..],
                "max-header-bytes",
            ),
            (
                &["--upstream", "127.0.0.1:1", "--buffer-size", "1"][..],
                "buffer-size",
            ),
            (
                &[
                    "--upstream",
                    "127.0.0.1:1",
                    "--listen",
                    "127.0.0.1:1",
                    "--listen",
                    "127.0.0.1:1",
                ][..],
                "twice",
            ),
        ] {
            let msg = match config(flags) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{flags:?} accepted"),
            };
            assert!(msg.contains(needle), "{flags:?}: {msg}");
        }
        assert!(args(&["--driver", "kqueue"]).is_err());
        assert!(args(&["--listen", "localhost"]).is_err());
    }

    #[test]
    fn listen_options_and_limits() {
        let settings = config(&[
            "--upstream",
            "127.0.0.1:1",
            "--listen",
            "127.0.0.1:0,proxy-protocol",
            "--trusted-proxy",
            "10.0.0.0/8",
            "--limit-conn-per-ip",
            "3",
            "--limit-conn-status",
            "429",
            "--max-conns",
            "100",
            "--allow-origin",
            "https://a.example.com",
            "--allow-origin",
            "*.example.org",
        ])
        .unwrap();
        let (s, c) = (&settings.startup, &settings.config);
        assert!(s.listen[0].proxy_protocol && !s.listen[0].tls);
        assert_eq!(c.trusted_proxies.len(), 1);
        assert_eq!(
            (c.limit_conn_per_ip, c.limit_conn_status, c.max_conns),
            (Some(3), 429, Some(100))
        );
        assert_eq!(c.allow_origin.len(), 2);
        let text = settings.describe();
        assert!(text.contains("PROXY protocol required"), "{text}");
        assert!(
            text.contains("per client address 3 (answered 429)"),
            "{text}"
        );
    }
}
