//! Command-line flags (`Cli`), resolved into a validated, read-only `Config`.
//!
//! `Cli` is what the user typed; `Config` can no longer be wrong: at least
//! one listener and one backend, every timeout non-zero, sizes in range,
//! backend names resolved. Each worker reads it through an `Arc`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::tls::{self, CertFiles, ServerTls, UpstreamTrust};

/// Default listen address (nginx's `listen 80` needs root; 8080 does not).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default `--connect-timeout`: nginx's `proxy_connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: &str = "60s";
/// Default `--handshake-timeout`: time for a client to send a whole request head.
pub const DEFAULT_HANDSHAKE_TIMEOUT: &str = "10s";
/// Default `--idle-timeout`: no byte either way for this long closes a tunnel.
/// nginx's 60 s `proxy_read_timeout` cuts idle WebSockets; the seeds raise it
/// to 1 h or 24 h, so ringway starts at 1 h.
pub const DEFAULT_IDLE_TIMEOUT: &str = "1h";
/// Default `--drain-timeout`: how long live tunnels may finish at shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: &str = "30s";
/// Default `--max-header-bytes`: the largest request head accepted (431 above).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default `--buffer-size`: the per-core scratch buffer tunnel bytes move through.
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;
/// Default `--ring-entries`: io_uring submission queue size per worker.
pub const DEFAULT_RING_ENTRIES: u32 = 4096;
/// Default `--backlog`: listen queue length per worker listener.
pub const DEFAULT_BACKLOG: u32 = 4096;
/// Default `--fail-timeout`: how long a backend whose connect failed is skipped.
pub const DEFAULT_FAIL_TIMEOUT: &str = "10s";

#[derive(Debug, Parser)]
#[command(
    name = "ringway",
    version,
    about = "A thread-per-core io_uring WebSocket (ws://) reverse proxy",
    long_about = "A thread-per-core io_uring WebSocket (ws://) reverse proxy.\n\n\
        Example, the nginx seeds' `location /websocket/ { proxy_pass ...; }`:\n  \
        ringway --listen 0.0.0.0:80 --upstream 127.0.0.1:8080 --idle-timeout 24h\n\n\
        Try it without a backend:  ringway demo",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Log level: error, warn, info, debug or trace (default info; RUST_LOG
    /// is used when this flag is absent).
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<log::LevelFilter>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run ringway on 127.0.0.1 in front of a built-in WebSocket echo backend,
    /// with a page to try it in a browser.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address the demo proxy listens on for ws:// (and the page over http).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Address the demo proxy listens on for wss:// (and the page over
    /// https), with a certificate generated at start.
    #[arg(long, default_value = "127.0.0.1:8443", value_name = "ADDR")]
    pub tls_listen: SocketAddr,
    /// Worker threads (default: the cores this process may run on, at most 2).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
}

/// Flags of the proxy itself.
#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// Address to accept ws:// clients on, IPv4 or [IPv6]:port (repeatable;
    /// default 0.0.0.0:8080 unless --tls-listen is given).
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Address to accept wss:// (TLS) clients on (repeatable); needs --cert
    /// and --key (or --sni-cert).
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Vec<SocketAddr>,
    /// Certificate chain (PEM, leaf first) for --tls-listen: the default
    /// certificate, for clients without SNI or with a name no --sni-cert has.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, RSA or EC) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Certificate for one SNI name: HOST=CERT,KEY, HOST a name or
    /// *.example.com (repeatable). SIGHUP reloads all certificate files.
    #[arg(long, value_name = "HOST=CERT,KEY", value_parser = tls::parse_sni_cert)]
    pub sni_cert: Vec<(String, PathBuf, PathBuf)>,
    /// Fail the TLS handshake of a client whose SNI name has no certificate
    /// (no --sni-cert, and the default certificate does not name it),
    /// instead of answering with the default certificate.
    #[arg(long)]
    pub sni_strict: bool,
    /// Backend HOST:PORT, ws://HOST:PORT or wss://HOST:PORT (repeatable);
    /// several are used round-robin, and a name that resolves to several
    /// addresses adds each. wss:// backends are verified against the system
    /// roots (or --upstream-ca), with HOST as the SNI name.
    #[arg(long, value_name = "HOST:PORT")]
    pub upstream: Vec<String>,
    /// Verify wss:// backends against the CA certificates in this PEM file
    /// instead of the system roots.
    #[arg(long, value_name = "FILE", conflicts_with = "upstream_insecure")]
    pub upstream_ca: Option<PathBuf>,
    /// Do not verify wss:// backends' certificates (encryption without
    /// authentication: for tests and private networks only).
    #[arg(long)]
    pub upstream_insecure: bool,
    /// Worker threads, one event loop each (default: the cores this process
    /// may run on).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Do not pin worker threads to cores (and do not steer connections).
    #[arg(long)]
    pub no_pin: bool,
    /// I/O driver: io_uring, epoll (legacy), or auto (io_uring when the kernel
    /// allows it, else epoll).
    #[arg(long, value_enum, default_value_t = Driver::Auto)]
    pub driver: Driver,
    /// io_uring submission queue entries per worker (power of two).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RING_ENTRIES)]
    pub ring_entries: u32,
    /// Listen backlog of each worker's listener (capped by net.core.somaxconn).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BACKLOG)]
    pub backlog: u32,
    /// Time allowed to connect to a backend (504 after it); e.g. 500ms, 60s, 1h.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_CONNECT_TIMEOUT, value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Time a client has to send its whole request head (408 after it).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_HANDSHAKE_TIMEOUT, value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// A tunnel with no byte in either direction for this long is closed;
    /// also the longest wait for a backend's answer (504). nginx: proxy_read_timeout.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_IDLE_TIMEOUT, value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// At SIGTERM/SIGINT, how long live tunnels may go on before they are closed.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_DRAIN_TIMEOUT, value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// How long a backend whose connect failed is skipped (groups of two or
    /// more; nginx: fail_timeout, with max_fails=1).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_FAIL_TIMEOUT, value_parser = parse_duration)]
    pub fail_timeout: Duration,
    /// Largest request head accepted, in bytes (431 above it).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,
    /// Size of the per-core scratch buffer tunnel bytes move through (with
    /// TLS at least 72 KiB is used, room for a whole handshake message).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_BUFFER_SIZE)]
    pub buffer_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Driver {
    Auto,
    Uring,
    Legacy,
}

/// One backend address, with the name it was given as (for log lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    /// wss://: the name its certificate is verified against (and sent as SNI).
    pub tls: Option<ServerName<'static>>,
}

/// The validated configuration. Built once, read-only, shared by `Arc`.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    /// The TLS listeners' certificates (when there are TLS listeners).
    pub tls: Option<Arc<ServerTls>>,
    pub backends: Vec<Backend>,
    /// How wss:// backends are spoken to (when there are any).
    pub upstream_tls: Option<Arc<ClientConfig>>,
    pub workers: usize,
    pub pin: bool,
    pub driver: Driver,
    pub ring_entries: u32,
    pub backlog: u32,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub fail_timeout: Duration,
    pub max_header_bytes: usize,
    pub buffer_size: usize,
}

/// A configuration mistake: shown to the user, exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no backend: give at least one --upstream HOST:PORT")]
    NoUpstream,
    #[error("--upstream {0:?}: {1}")]
    BadUpstream(String, String),
    #[error("--{0} must be {1}")]
    OutOfRange(&'static str, &'static str),
    #[error("--listen/--tls-listen {0} is given twice")]
    DuplicateListen(SocketAddr),
    #[error("{0}")]
    Tls(String),
}

/// Most worker threads accepted.
const MAX_WORKERS: usize = 1024;

impl Config {
    /// Validate flags. `available_cores` is the default worker count.
    pub fn from_args(args: &ProxyArgs, available_cores: usize) -> Result<Config, ConfigError> {
        if args.upstream.is_empty() {
            return Err(ConfigError::NoUpstream);
        }
        let mut listen = args.listen.clone();
        if listen.is_empty() && args.tls_listen.is_empty() {
            listen.push(DEFAULT_LISTEN.parse().expect("valid default address"));
        }
        let all: Vec<SocketAddr> = listen.iter().chain(&args.tls_listen).copied().collect();
        for (i, addr) in all.iter().enumerate() {
            // Port 0 asks for a fresh port each time.
            if addr.port() != 0 && all[..i].contains(addr) {
                return Err(ConfigError::DuplicateListen(*addr));
            }
        }
        let cert_files = CertFiles {
            default: args.cert.clone().zip(args.key.clone()),
            sni: args.sni_cert.clone(),
            strict: args.sni_strict,
        };
        if args.tls_listen.is_empty() != cert_files.is_empty() {
            return Err(ConfigError::Tls(if args.tls_listen.is_empty() {
                "certificates are given but no --tls-listen address to use them on".into()
            } else {
                "--tls-listen needs a certificate: give --cert FILE --key FILE".into()
            }));
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
        // Last: resolving names and reading files are the slow checks.
        let mut backends = Vec::new();
        for raw in &args.upstream {
            backends.extend(resolve_upstream(raw)?);
        }
        let trust = UpstreamTrust {
            ca: args.upstream_ca.clone(),
            insecure: args.upstream_insecure,
        };
        let upstream_tls = if backends.iter().any(|b| b.tls.is_some()) {
            Some(tls::client_config(&trust).map_err(ConfigError::Tls)?)
        } else if trust != UpstreamTrust::default() {
            return Err(ConfigError::Tls(
                "--upstream-ca/--upstream-insecure are for wss:// backends, and none is given"
                    .into(),
            ));
        } else {
            None
        };
        let tls = if cert_files.is_empty() {
            None
        } else {
            Some(Arc::new(
                ServerTls::load(cert_files).map_err(ConfigError::Tls)?,
            ))
        };
        Ok(Config {
            listen,
            tls_listen: args.tls_listen.clone(),
            tls,
            backends,
            upstream_tls,
            workers,
            pin: !args.no_pin,
            driver: args.driver,
            ring_entries: args.ring_entries,
            backlog: args.backlog,
            connect_timeout: args.connect_timeout,
            handshake_timeout: args.handshake_timeout,
            idle_timeout: args.idle_timeout,
            drain_timeout: args.drain_timeout,
            fail_timeout: args.fail_timeout,
            max_header_bytes: args.max_header_bytes,
            buffer_size: args.buffer_size,
        })
    }
}

/// `HOST:PORT`, `ws://HOST:PORT[/]` or `wss://HOST:PORT[/]` to every
/// address the name resolves to.
fn resolve_upstream(raw: &str) -> Result<Vec<Backend>, ConfigError> {
    let bad = |why: &str| ConfigError::BadUpstream(raw.to_string(), why.to_string());
    let (hostport, secure) = if let Some(rest) = raw.strip_prefix("ws://") {
        (rest.trim_end_matches('/'), false)
    } else if let Some(rest) = raw.strip_prefix("wss://") {
        (rest.trim_end_matches('/'), true)
    } else if raw.contains("://") {
        return Err(bad(
            "only ws:// and wss:// backends (or a bare HOST:PORT) are supported",
        ));
    } else {
        (raw, false)
    };
    if hostport.contains('/') {
        return Err(bad("a backend has no path; give HOST:PORT"));
    }
    if hostport
        .rsplit_once(':')
        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    {
        return Err(bad("expected HOST:PORT"));
    }
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .map_err(|e| bad(&format!("cannot resolve: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(bad("resolves to no address"));
    }
    let tls = if secure {
        let (host, _) = hostport.rsplit_once(':').unwrap_or((hostport, ""));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| bad("the host is not a name a certificate can be checked against"))?;
        Some(name)
    } else {
        None
    };
    Ok(addrs
        .into_iter()
        .map(|addr| Backend {
            name: hostport.to_string(),
            addr,
            tls: tls.clone(),
        })
        .collect())
}

/// nginx-style durations: `30` (seconds), `500ms`, `30s`, `5m`, `1h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 30s, 5m, 1h"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(format!("{s:?}: unit must be ms, s, m, h or d")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<ProxyArgs, clap::Error> {
        let mut v = vec!["ringway"];
        v.extend_from_slice(extra);
        Cli::try_parse_from(v).map(|c| c.proxy)
    }

    fn config(extra: &[&str]) -> Result<Config, ConfigError> {
        Config::from_args(&args(extra).unwrap(), 4)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86400));
        for bad in ["", "s", "1.5s", "-1", "10x", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults() {
        let c = config(&["--upstream", "127.0.0.1:9000"]).unwrap();
        assert_eq!(
            c.listen,
            vec!["0.0.0.0:8080".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.workers, 4);
        assert!(c.pin);
        assert_eq!(c.driver, Driver::Auto);
        assert_eq!(c.connect_timeout, Duration::from_secs(60));
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.max_header_bytes, 16384);
        assert_eq!(c.backends[0].addr, "127.0.0.1:9000".parse().unwrap());
    }

    #[test]
    fn every_flag_parses() {
        let c = config(&[
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
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.backends.len(), 2);
        assert_eq!(c.backends[0].name, "127.0.0.1:9000");
        assert_eq!((c.workers, c.pin, c.driver), (3, false, Driver::Legacy));
        assert_eq!((c.ring_entries, c.backlog), (256, 128));
        assert_eq!(c.idle_timeout, Duration::from_secs(86400));
        assert_eq!(c.fail_timeout, Duration::from_secs(1));
        assert_eq!((c.max_header_bytes, c.buffer_size), (4096, 8192));
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
    fn demo_subcommand() {
        let cli = Cli::try_parse_from(["ringway", "demo", "--listen", "127.0.0.1:0"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Demo(ref d)) if d.listen.port() == 0));
    }
}
