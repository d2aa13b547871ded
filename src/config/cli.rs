//! The command line as typed: clap's [`Cli`] (the subcommands, the proxy's
//! flags in [`ProxyArgs`]), each flag's value parser, the `DEFAULT_*`
//! values, and [`parse_cli`], which puts the `--config` file's settings
//! (`file.rs`) under the flags. Nothing here is checked against anything
//! else; `Settings::from_args` (`mod.rs`) does that.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::error::{ConfigError, FileError};
use crate::config::file;
use crate::ops::access_log;
use crate::policy::balance::Method;
use crate::policy::limits::{Cidr, OriginPattern};
use crate::proto::proxy_protocol;
use crate::proto::tls;

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
/// Default `--upstream-answer-timeout`: a WebSocket backend answers an
/// upgrade at once; one that accepted but says nothing for this long is
/// hung (nginx's `proxy_read_timeout` also bounds this wait, at 60 s).
pub const DEFAULT_UPSTREAM_ANSWER_TIMEOUT: &str = "5s";
/// Default `--half-close-timeout`: a tunnel one side of which has closed
/// lives this long without a byte before both are closed (HAProxy's
/// `timeout client-fin`/`server-fin`).
pub const DEFAULT_HALF_CLOSE_TIMEOUT: &str = "30s";
/// Default `--tcp-keepalive`: the first probe after 60 s of silence, then
/// one every 10 s; 6 unanswered probes (2 minutes in all) end the tunnel.
pub const DEFAULT_TCP_KEEPALIVE: &str = "60s,10s,6";
/// Default `--drain-timeout`: how long live tunnels may finish at shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: &str = "30s";
/// Default `--max-header-bytes`: the largest request head accepted (431 above).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default `--buffer-size`: the per-core scratch buffer tunnel bytes move through.
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;
/// Default `--ring-entries`: io_uring submission queue size per worker.
pub const DEFAULT_RING_ENTRIES: u32 = 4096;
/// Default `--recv-buffers`: buffers in each core's receive buffer ring.
pub const DEFAULT_RECV_BUFFERS: u16 = 1024;
/// Default `--recv-buffer-size`: bytes per receive buffer.
pub const DEFAULT_RECV_BUFFER_SIZE: u32 = 16 * 1024;
/// Default `--splice-pipes`: pipes in each core's pool for splice.
pub const DEFAULT_SPLICE_PIPES: usize = 8;
/// Default `--backlog`: listen queue length per worker listener.
pub const DEFAULT_BACKLOG: u32 = 4096;
/// Default `--fail-timeout`: nginx's `fail_timeout` for servers that set none.
pub const DEFAULT_FAIL_TIMEOUT: &str = "10s";

#[derive(Debug, Parser)]
#[command(
    name = "ringway",
    version = crate::VERSION,
    about = "A thread-per-core io_uring WebSocket (ws:// and wss://) reverse proxy",
    long_about = "A thread-per-core io_uring WebSocket (ws:// and wss://) reverse proxy.\n\n\
        The nginx seeds' `location /websocket/ { proxy_pass ...; }`:\n  \
        ringway --listen 0.0.0.0:80 --upstream 127.0.0.1:8080 --idle-timeout 24h\n\n\
        The chat example (static files on /, WebSockets on /ws/):\n  \
        ringway --listen 0.0.0.0:80 --static /=/var/www/html \\\n    \
        --route /ws/=chat --upstream chat=localhost:8080 --idle-timeout 1h\n\n\
        Load balancing (nginx's upstream { ip_hash; server ...; }):\n  \
        ringway --listen 0.0.0.0:80 --route /ws/=ws --balance ws=ip-hash \\\n    \
        --upstream ws=backend1:8080 --upstream ws=backend2:8080 --upstream ws=backend3:8080\n\n\
        Check a configuration without starting:  ringway check [FLAGS]\n\n\
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
    /// Error log (stderr) format: text (`[time LEVEL target] message`) or
    /// json (one object per line: time, level, target, message).
    #[arg(long, global = true, value_enum, value_name = "FORMAT", default_value_t = access_log::Format::Text)]
    pub log_format: access_log::Format,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run ringway on 127.0.0.1 in front of a built-in WebSocket echo backend,
    /// with a page to try it in a browser.
    Demo(DemoArgs),
    /// Validate the flags (and --config file), print the resolved listeners,
    /// routes and groups, and exit: 0 when valid, 2 with the mistake if not.
    Check(Box<CheckArgs>),
    /// Print ringway's man page (roff) to stdout, made from these flags'
    /// help; with --out-dir, write it and one page per subcommand there.
    Man(ManArgs),
    /// Print the completion script for SHELL (bash, zsh, fish, elvish or
    /// powershell) to stdout, made from these flags and subcommands.
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write ringway.1 and a page per subcommand (ringway-check.1, ...)
    /// into DIR (made if missing) instead of printing ringway.1.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
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

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

/// Flags of the proxy itself.
#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// Read settings from this TOML file: each key is a flag's long name
    /// (`idle-timeout = "1h"`, `upstream = ["chat=10.0.0.1:8080", ...]`,
    /// `no-pin = true`). Flags given on the command line override the file's
    /// setting of the same name (a list flag replaces the file's whole list).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Reload when the --config file changes, as on SIGHUP: watched with
    /// inotify, a rewrite in place and an atomic rename or symlink swap (a
    /// Kubernetes ConfigMap's) alike; a bad file is refused and logged, and
    /// the configuration in force stays.
    #[arg(long, requires = "config")]
    pub watch_config: bool,
    /// Write the process id to FILE once listening (removed at exit).
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Address to accept ws:// clients on, IPv4 or [IPv6]:port, with
    /// `,proxy-protocol` to require a PROXY protocol v1/v2 header first
    /// (repeatable; default 0.0.0.0:8080 unless --tls-listen is given).
    #[arg(long, value_name = "ADDR[,proxy-protocol]", value_parser = parse_listen)]
    pub listen: Vec<ListenArg>,
    /// Address to accept wss:// (TLS) clients on (repeatable; `,proxy-protocol`
    /// as for --listen); needs --cert and --key (or --sni-cert).
    #[arg(long, value_name = "ADDR[,proxy-protocol]", value_parser = parse_listen)]
    pub tls_listen: Vec<ListenArg>,
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
    /// A backend server of group GROUP (default group: `default`), repeatable:
    /// [GROUP=]HOST:PORT (or ws:// / wss://HOST:PORT) followed by nginx's
    /// server parameters: ,weight=N ,max_fails=N ,fail_timeout=DURATION
    /// ,backup ,down. A name that resolves to several addresses adds each.
    /// wss:// servers are verified against the system roots (or --upstream-ca).
    #[arg(long, value_name = "[GROUP=]HOST:PORT[,PARAM...]")]
    pub upstream: Vec<String>,
    /// How GROUP picks a server: round-robin (smooth weighted, the default),
    /// least-conn, ip-hash (nginx's key: the /24 of an IPv4 client, the whole
    /// IPv6 address) or ip-hash-full (the whole IPv4 address). Repeatable.
    #[arg(long, value_name = "[GROUP=]METHOD", value_parser = parse_balance)]
    pub balance: Vec<(String, Method)>,
    /// Send a PROXY protocol header (v1 or v2) with the client's address to
    /// the servers of GROUP, before anything else (repeatable).
    #[arg(long, value_name = "[GROUP=]v1|v2", value_parser = parse_send_proxy)]
    pub send_proxy_protocol: Vec<(String, proxy_protocol::Version)>,
    /// Send requests whose path starts with PREFIX to GROUP: [HOST]PREFIX=GROUP,
    /// e.g. /ws/=chat, or chat.example.com/=chat for one Host (or *.DOMAIN).
    /// Like nginx's server_name then location: a Host with routes of its own
    /// uses only those, and among them the longest matching prefix wins.
    /// With no --route, everything goes to the one group. Repeatable.
    #[arg(long, value_name = "[HOST]PREFIX=GROUP", value_parser = parse_route)]
    pub route: Vec<RouteArg>,
    /// Serve the files of DIR for requests under PREFIX: [HOST]PREFIX=DIR,
    /// e.g. /=/var/www/html. Like nginx's `root`: the whole request path is
    /// looked up under DIR; index.html for directories. Repeatable.
    #[arg(long = "static", value_name = "[HOST]PREFIX=DIR", value_parser = parse_route)]
    pub static_dirs: Vec<RouteArg>,
    /// Most servers one connection tries before it is answered 502/504
    /// (nginx: proxy_next_upstream_tries); 0: every server of the group once.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub upstream_tries: usize,
    /// Verify wss:// backends against the CA certificates in this PEM file
    /// instead of the system roots.
    #[arg(long, value_name = "FILE", conflicts_with = "upstream_insecure")]
    pub upstream_ca: Option<PathBuf>,
    /// Do not verify wss:// backends' certificates (encryption without
    /// authentication: for tests and private networks only).
    #[arg(long)]
    pub upstream_insecure: bool,
    /// Most concurrent connections (tunnels) one client address may hold,
    /// counted across all cores; more are answered --limit-conn-status
    /// (nginx: limit_conn on $binary_remote_addr).
    #[arg(long, value_name = "N")]
    pub limit_conn_per_ip: Option<u32>,
    /// Status answered over --limit-conn-per-ip (nginx: limit_conn_status).
    #[arg(long, value_name = "CODE", default_value_t = DEFAULT_LIMIT_CONN_STATUS)]
    pub limit_conn_status: u16,
    /// Most client connections open at once over all cores; more are
    /// answered 503.
    #[arg(long, value_name = "N")]
    pub max_conns: Option<usize>,
    /// Accept WebSocket handshakes only from this Origin (repeatable):
    /// https://app.example.com, *.example.com (any subdomain), or null.
    /// Others get 403; a handshake without Origin (not a browser) passes.
    #[arg(long, value_name = "ORIGIN", value_parser = parse_origin)]
    pub allow_origin: Vec<OriginPattern>,
    /// Peers (a load balancer, a CDN) trusted to tell the client's address:
    /// an address or CIDR range (repeatable). Their X-Forwarded-For and
    /// PROXY protocol headers are believed; nobody else's.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub trusted_proxy: Vec<Cidr>,
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
    /// Time a backend has to answer a WebSocket upgrade (and between the
    /// bytes of its answer's head): after it the server counts as failed
    /// (max_fails) and the next one is tried, as nginx's proxy_next_upstream
    /// timeout does; 504 when none is left. Plain requests wait up to
    /// --idle-timeout (a long poll may). nginx: proxy_read_timeout.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_UPSTREAM_ANSWER_TIMEOUT, value_parser = parse_duration)]
    pub upstream_answer_timeout: Duration,
    /// A tunnel one side of which has closed (sent its FIN) is closed when
    /// no byte has moved for this long (HAProxy: timeout client-fin).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_HALF_CLOSE_TIMEOUT, value_parser = parse_duration)]
    pub half_close_timeout: Duration,
    /// TCP keepalive on client and backend sockets, IDLE,INTERVAL,COUNT
    /// (e.g. 60s,10s,6: the first probe after 60 s of silence, one every
    /// 10 s, 6 unanswered end the connection), with TCP_USER_TIMEOUT set to
    /// their total so that unacknowledged data ends it too; or off. Frees
    /// tunnels of clients that vanished without a FIN. nginx: so_keepalive.
    #[arg(long, value_name = "IDLE,INTERVAL,COUNT|off", default_value = DEFAULT_TCP_KEEPALIVE, value_parser = parse_keepalive)]
    pub tcp_keepalive: Keepalive,
    /// At SIGTERM/SIGINT, how long live tunnels may go on before they are closed.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_DRAIN_TIMEOUT, value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// fail_timeout of servers that do not set their own: how long a server
    /// with max_fails failed connects is skipped (and the window they are
    /// counted in). nginx's default: 10s.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_FAIL_TIMEOUT, value_parser = parse_duration)]
    pub fail_timeout: Duration,
    /// Largest request head accepted, in bytes (431 above it).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,
    /// Size of the per-core scratch buffer tunnel bytes move through (at
    /// least 72 KiB is used: room for a whole TLS handshake message).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_BUFFER_SIZE)]
    pub buffer_size: usize,
    /// Serve Prometheus metrics on http://ADDR/metrics, a summary on
    /// /status, and /healthz (200 while accepting, 503 while draining) for
    /// the balancer in front.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Where one line per tunnel or request goes when it ends: a file (SIGHUP
    /// reopens it, for logrotate), stderr, or off.
    #[arg(long, value_name = "PATH|stderr|off", default_value = "stderr")]
    pub access_log: access_log::Sink,
    /// How access-log lines look: text (key=value) or json (one object per
    /// line).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = access_log::Format::Text)]
    pub access_log_format: access_log::Format,
    /// At SIGTERM, send both sides of every tunnel a WebSocket close (1001
    /// going away), spread over the first half of --drain-timeout, each at a
    /// frame boundary; tunnels not at one by the deadline are closed then.
    #[arg(long)]
    pub drain_close_frames: bool,
    /// How tunnel bytes move with the io_uring driver: completion
    /// (multishot receives into a per-core buffer ring, sends submitted in
    /// batches: no system call per message), readiness (a readiness wait,
    /// then recv and send through the scratch buffer), or auto (completion
    /// where the kernel offers buffer rings). The epoll driver always uses
    /// readiness.
    #[arg(long, value_enum, default_value_t = TunnelIo::Auto)]
    pub tunnel_io: TunnelIo,
    /// Buffers in each core's receive buffer ring (completion only): bytes
    /// in flight take one each until they are sent on; an idle tunnel none.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RECV_BUFFERS)]
    pub recv_buffers: u16,
    /// Size of each receive buffer, in bytes (completion only).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RECV_BUFFER_SIZE)]
    pub recv_buffer_size: u32,
    /// Move ws:// tunnel bytes socket -> pipe -> socket with splice(2),
    /// never copying them through ringway: on, off, or auto (ringway
    /// decides per direction: see the README). TLS tunnels, and tunnels
    /// that follow their frames for --drain-close-frames, always copy.
    #[arg(long, value_enum, default_value_t = Splice::Auto)]
    pub splice: Splice,
    /// Pipes in each core's pool for --splice, made at start (2 descriptors
    /// each): at most this many directions splice at once per core, the
    /// rest copy.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SPLICE_PIPES)]
    pub splice_pipes: usize,
}

/// `--tunnel-io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TunnelIo {
    Auto,
    Completion,
    Readiness,
}

/// `--splice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Splice {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Driver {
    Auto,
    Uring,
    Legacy,
}

/// `--listen`/`--tls-listen` as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenArg {
    pub addr: SocketAddr,
    pub proxy_protocol: bool,
}

impl From<SocketAddr> for ListenArg {
    fn from(addr: SocketAddr) -> ListenArg {
        ListenArg {
            addr,
            proxy_protocol: false,
        }
    }
}

fn parse_listen(s: &str) -> Result<ListenArg, String> {
    let (addr, opt) = match s.split_once(',') {
        Some((a, o)) => (a, Some(o)),
        None => (s, None),
    };
    let addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an address like 0.0.0.0:8080 or [::]:8080"))?;
    let proxy_protocol = match opt {
        None => false,
        Some("proxy-protocol") => true,
        Some(o) => {
            return Err(format!(
                "unknown listen option {o:?} (known: proxy-protocol)"
            ))
        }
    };
    Ok(ListenArg {
        addr,
        proxy_protocol,
    })
}

/// `--route`/`--static` as typed: `[HOST]PREFIX=TARGET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteArg {
    pub host: Option<String>,
    pub prefix: String,
    pub target: String,
}

fn parse_route(s: &str) -> Result<RouteArg, String> {
    let (pattern, target) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected [HOST]PREFIX=TARGET, e.g. /ws/=chat"))?;
    let slash = pattern
        .find('/')
        .ok_or_else(|| format!("{s:?}: the prefix must start with '/'"))?;
    let (host, prefix) = pattern.split_at(slash);
    if target.is_empty() {
        return Err(format!("{s:?}: nothing after '='"));
    }
    if prefix.contains(['?', '#', '%'])
        || crate::proto::http::path::route_path(prefix).as_deref() != Ok(prefix)
    {
        return Err(format!(
            "{s:?}: a prefix is a plain, normalized path (no '?', '#', '%', '//', '.' or '..' segments)"
        ));
    }
    let host = match host {
        "" => None,
        h if valid_host_pattern(h) => Some(h.to_ascii_lowercase()),
        h => return Err(format!("{s:?}: {h:?} is not a host name or *.domain")),
    };
    Ok(RouteArg {
        host,
        prefix: prefix.to_string(),
        target: target.to_string(),
    })
}

fn valid_host_pattern(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// Split `GROUP=VALUE` (no `=`: the default group).
fn group_and(s: &str) -> (&str, &str) {
    match s.split_once('=') {
        Some((g, v)) => (g, v),
        None => (DEFAULT_GROUP, s),
    }
}

fn parse_balance(s: &str) -> Result<(String, Method), String> {
    let (group, method) = group_and(s);
    let method = match method {
        "round-robin" => Method::RoundRobin,
        "least-conn" => Method::LeastConn,
        "ip-hash" => Method::IpHash {
            full_address: false,
        },
        "ip-hash-full" => Method::IpHash { full_address: true },
        m => {
            return Err(format!(
                "unknown method {m:?} (known: round-robin, least-conn, ip-hash, ip-hash-full)"
            ))
        }
    };
    Ok((group.to_string(), method))
}

fn parse_send_proxy(s: &str) -> Result<(String, proxy_protocol::Version), String> {
    let (group, v) = group_and(s);
    let v = match v {
        "v1" | "1" => proxy_protocol::Version::V1,
        "v2" | "2" => proxy_protocol::Version::V2,
        v => return Err(format!("unknown PROXY protocol version {v:?} (v1 or v2)")),
    };
    Ok((group.to_string(), v))
}

fn parse_origin(s: &str) -> Result<OriginPattern, String> {
    s.parse()
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse()
}

/// The group of `--upstream` entries that name none.
pub const DEFAULT_GROUP: &str = "default";
/// Default `--limit-conn-status`: nginx's `limit_conn_status`.
pub const DEFAULT_LIMIT_CONN_STATUS: u16 = 503;

/// Parse the command line, with the `--config` file's settings under it:
/// the file's keys are flag names, and a flag given on the command line
/// replaces the file's setting of that name. Usage mistakes come back as
/// clap errors (which print themselves, exit code 2), file mistakes as
/// [`ConfigError::File`].
pub fn parse_cli<I, T>(argv: I) -> Result<Cli, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
    let matches = Cli::command().try_get_matches_from(&argv)?;
    let (proxy_matches, sub) = match matches.subcommand() {
        Some(("check", m)) => (m, Some("check")),
        Some(_) => return Ok(Cli::from_arg_matches(&matches)?),
        None => (&matches, None),
    };
    let Some(file) = proxy_matches.get_one::<PathBuf>("config").cloned() else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let on_command_line =
        |id: &str| proxy_matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    let from_file = file::arguments(&file, Cli::command(), &on_command_line)
        .map_err(|e| ConfigError::File(file.clone(), e))?;
    // The file alone first, so that its mistakes are reported as its own.
    let mut alone: Vec<std::ffi::OsString> = vec![argv[0].clone()];
    alone.extend(sub.map(Into::into));
    alone.extend(from_file.iter().cloned());
    if let Err(e) = Cli::command().try_get_matches_from(&alone) {
        return Err(CliError::Config(ConfigError::File(
            file,
            FileError::Value(usage_reason(&e)),
        )));
    }
    let skip = 1 + usize::from(sub.is_some());
    let mut merged = alone;
    merged.extend(argv.into_iter().skip(skip));
    Ok(Cli::try_parse_from(merged)?)
}

/// A usage error's reason in one line, without clap's `error: ` prefix and
/// its usage hints (for a line in a log or a file's error).
pub fn usage_reason(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").to_string()
}

/// Why the command line could not be turned into a [`Cli`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Usage(#[from] clap::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// nginx-style durations: `30` (seconds), `500ms`, `30s`, `5m`, `1h`, `1d`.
/// `--tcp-keepalive`: TCP keepalive and TCP_USER_TIMEOUT for every client
/// and backend socket, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive(pub Option<KeepaliveProbes>);

/// When a silent peer is probed and given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveProbes {
    /// Silence before the first probe.
    pub idle: Duration,
    /// Between probes.
    pub interval: Duration,
    /// Unanswered probes that end the connection.
    pub count: u32,
}

impl KeepaliveProbes {
    /// How long a dead peer keeps its connection: the silence, then every
    /// probe. Also the TCP_USER_TIMEOUT, so that unacknowledged data gives
    /// up on the same budget.
    pub fn budget(&self) -> Duration {
        self.idle + self.interval * self.count
    }
}

/// Parse `IDLE,INTERVAL,COUNT` (durations in whole seconds, as the kernel
/// takes them) or `off`.
pub fn parse_keepalive(s: &str) -> Result<Keepalive, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(Keepalive(None));
    }
    let usage = || format!("{s:?}: expected IDLE,INTERVAL,COUNT (e.g. 60s,10s,6) or off");
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [idle, interval, count] = parts[..] else {
        return Err(usage());
    };
    // The kernel's units and ranges (TCP_KEEPIDLE/TCP_KEEPINTVL up to
    // 32767 s, TCP_KEEPCNT up to 127).
    let secs = |what: &str, v: &str| -> Result<Duration, String> {
        let d = parse_duration(v)?;
        if d.subsec_millis() != 0 || !(1..=32767).contains(&d.as_secs()) {
            return Err(format!(
                "{what} {v:?} must be whole seconds from 1s to 32767s"
            ));
        }
        Ok(d)
    };
    let count: u32 = match count.parse() {
        Ok(n) if (1..=127).contains(&n) => n,
        _ => return Err(format!("COUNT {count:?} must be from 1 to 127")),
    };
    Ok(Keepalive(Some(KeepaliveProbes {
        idle: secs("IDLE", idle)?,
        interval: secs("INTERVAL", interval)?,
        count,
    })))
}

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
    fn keepalive() {
        let k = parse_keepalive(DEFAULT_TCP_KEEPALIVE).unwrap().0.unwrap();
        assert_eq!(k.idle, Duration::from_secs(60));
        assert_eq!(k.interval, Duration::from_secs(10));
        assert_eq!(k.count, 6);
        assert_eq!(k.budget(), Duration::from_secs(120));
        assert_eq!(parse_keepalive("off").unwrap(), Keepalive(None));
        assert_eq!(
            parse_keepalive(" 1 , 2s ,3").unwrap().0.unwrap().budget(),
            Duration::from_secs(7)
        );
        for bad in [
            "",
            "on",
            "60s,10s",
            "60s,10s,6,1",
            "500ms,1s,1",
            "0,1,1",
            "1,1,0",
            "1,1,128",
            "40000,1,1",
            "1,1,x",
        ] {
            assert!(parse_keepalive(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn demo_subcommand() {
        let cli = Cli::try_parse_from(["ringway", "demo", "--listen", "127.0.0.1:0"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Demo(ref d)) if d.listen.port() == 0));
    }
}
