//! Command-line flags (`Cli`), resolved into a validated, read-only `Config`.
//!
//! `Cli` is what the user typed; `Config` can no longer be wrong: at least
//! one listener and one backend, every timeout non-zero, sizes in range,
//! backend names resolved. Each worker reads it through an `Arc`.

pub mod reload;
pub mod static_root;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::config::static_root::Root;
use crate::ops::access_log;
use crate::policy::balance::{Method, ServerParams, MAX_SERVERS};
use crate::policy::limits::{Cidr, OriginPattern};
use crate::proto::proxy_protocol;
use crate::proto::tls::{self, CertFiles, ServerTls, UpstreamTrust};

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
/// Default `--fail-timeout`: nginx's `fail_timeout` for servers that set none.
pub const DEFAULT_FAIL_TIMEOUT: &str = "10s";

#[derive(Debug, Parser)]
#[command(
    name = "ringway",
    version,
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
        Check a configuration without starting:  ringway check [FLAGS]\n\
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
    /// Validate the flags (and --config file), print the resolved listeners,
    /// routes and groups, and exit: 0 when valid, 2 with the mistake if not.
    Check(Box<CheckArgs>),
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

/// One address of a backend server, with the name it was given as (for log
/// lines) and nginx's server parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    /// wss://: the name its certificate is verified against (and sent as SNI).
    pub tls: Option<ServerName<'static>>,
    pub params: ServerParams,
}

/// A named upstream group: its servers (in configuration order, backups
/// among them) and how one is chosen.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub method: Method,
    pub servers: Vec<Backend>,
    /// A PROXY protocol header to send to its servers first.
    pub send_proxy: Option<proxy_protocol::Version>,
}

/// Where a route sends its requests.
#[derive(Debug, Clone)]
pub enum Target {
    /// Index into [`Config::groups`].
    Group(usize),
    Static(Arc<Root>),
}

/// One route: requests whose Host matches `host` (any, when `None`) and
/// whose normalized path starts with `prefix`.
#[derive(Debug, Clone)]
pub struct Route {
    /// Lowercase; `*.example.com` matches every subdomain.
    pub host: Option<String>,
    pub prefix: String,
    pub target: Target,
}

impl Route {
    /// The route as written (`[HOST]PREFIX`), for metrics and logs.
    pub fn label(&self) -> String {
        format!("{}{}", self.host.as_deref().unwrap_or(""), self.prefix)
    }
}

/// The routes, ordered for lookup (longest prefix first).
#[derive(Debug, Clone, Default)]
pub struct Routes {
    list: Vec<Route>,
}

impl Routes {
    /// Like nginx's server_name, then location: the routes of the most
    /// specific host class that matches (exact name, then the longest
    /// `*.domain`, then routes without a host) and, among them, the longest
    /// prefix of `path`, with its index in [`Routes::iter`]. `None` is a 404.
    pub fn find(&self, host: Option<&[u8]>, path: &str) -> Option<(usize, &Route)> {
        let host = host.map(host_name).unwrap_or(b"");
        let class = |r: &Route| -> Option<usize> {
            match &r.host {
                None => Some(0),
                Some(h) if h.starts_with("*.") => {
                    let suffix = &h.as_bytes()[1..];
                    (host.len() > suffix.len()
                        && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
                    .then_some(suffix.len())
                }
                Some(h) => h
                    .as_bytes()
                    .eq_ignore_ascii_case(host)
                    .then_some(usize::MAX),
            }
        };
        let best = self.list.iter().filter_map(class).max()?;
        self.list
            .iter()
            .enumerate()
            .filter(|(_, r)| class(r) == Some(best))
            .find(|(_, r)| path.starts_with(&r.prefix))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.list.iter()
    }
}

/// The name part of a Host header value: no port, no brackets' contents
/// split (`[::1]:80` is `[::1]`).
fn host_name(v: &[u8]) -> &[u8] {
    let v = crate::proto::http::trim(v);
    if v.first() == Some(&b'[') {
        return match v.iter().position(|&b| b == b']') {
            Some(i) => &v[..=i],
            None => v,
        };
    }
    let name = match v.iter().rposition(|&b| b == b':') {
        Some(i) => &v[..i],
        None => v,
    };
    // `example.com.` is `example.com` (nginx drops the dot too).
    name.strip_suffix(b".").unwrap_or(name)
}

/// One listening address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub tls: bool,
    /// A PROXY protocol header must come first.
    pub proxy_protocol: bool,
}

/// The validated configuration. Built once, read-only, shared by `Arc`.
#[derive(Debug, Clone)]
pub struct Config {
    /// ws:// listeners first, then wss://, each in flag order.
    pub listen: Vec<Listen>,
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
    pub workers: usize,
    pub pin: bool,
    pub driver: Driver,
    pub ring_entries: u32,
    pub backlog: u32,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_header_bytes: usize,
    pub buffer_size: usize,
    pub metrics_listen: Option<SocketAddr>,
    pub access_log: access_log::Sink,
    pub access_log_format: access_log::Format,
    pub drain_close_frames: bool,
}

/// A configuration mistake: shown to the user, exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no backend: give at least one --upstream HOST:PORT (or a --static route)")]
    NoUpstream,
    #[error("--upstream {0:?}: {1}")]
    BadUpstream(String, String),
    #[error("--{0} must be {1}")]
    OutOfRange(&'static str, &'static str),
    #[error("--listen/--tls-listen {0} is given twice")]
    DuplicateListen(SocketAddr),
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Routing(String),
    #[error("--config {0}: {1}")]
    File(PathBuf, String),
}

/// Most worker threads accepted.
const MAX_WORKERS: usize = 1024;

impl Config {
    /// Validate flags. `available_cores` is the default worker count.
    pub fn from_args(args: &ProxyArgs, available_cores: usize) -> Result<Config, ConfigError> {
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
            return Err(ConfigError::Routing(
                "a proxy-protocol listener needs --trusted-proxy CIDR: the addresses of the \
                 balancers allowed to send PROXY headers"
                    .into(),
            ));
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
            workers,
            pin: !args.no_pin,
            driver: args.driver,
            ring_entries: args.ring_entries,
            backlog: args.backlog,
            connect_timeout: args.connect_timeout,
            handshake_timeout: args.handshake_timeout,
            idle_timeout: args.idle_timeout,
            drain_timeout: args.drain_timeout,
            max_header_bytes: args.max_header_bytes,
            buffer_size: args.buffer_size,
            metrics_listen: args.metrics_listen,
            access_log: args.access_log.clone(),
            access_log_format: args.access_log_format,
            drain_close_frames: args.drain_close_frames,
        })
    }

    /// The listeners' addresses of one kind.
    pub fn listen_addrs(&self, tls: bool) -> impl Iterator<Item = SocketAddr> + '_ {
        self.listen
            .iter()
            .filter(move |l| l.tls == tls)
            .map(|l| l.addr)
    }

    /// What `ringway check` prints: the resolved configuration.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "listeners:");
        for l in &self.listen {
            let _ = writeln!(
                s,
                "  {} {}{}",
                if l.tls { "wss" } else { "ws " },
                l.addr,
                if l.proxy_protocol {
                    " (PROXY protocol required)"
                } else {
                    ""
                }
            );
        }
        let _ = writeln!(s, "routes (first match wins, longest prefix first):");
        for r in self.routes.iter() {
            let target = match &r.target {
                Target::Group(g) => format!("group {}", self.groups[*g].name),
                Target::Static(root) => format!("static files from {}", root.path().display()),
            };
            let _ = writeln!(
                s,
                "  {}{} -> {target}",
                r.host.as_deref().unwrap_or(""),
                r.prefix
            );
        }
        let _ = writeln!(s, "groups:");
        for g in &self.groups {
            let method = match g.method {
                Method::RoundRobin => "round-robin",
                Method::LeastConn => "least-conn",
                Method::IpHash {
                    full_address: false,
                } => "ip-hash",
                Method::IpHash { full_address: true } => "ip-hash-full",
            };
            let proxy = match g.send_proxy {
                Some(proxy_protocol::Version::V1) => ", sends PROXY v1",
                Some(proxy_protocol::Version::V2) => ", sends PROXY v2",
                None => "",
            };
            let _ = writeln!(s, "  {} ({method}{proxy})", g.name);
            for b in &g.servers {
                let p = &b.params;
                let _ = writeln!(
                    s,
                    "    {} {}{} weight={} max_fails={} fail_timeout={:?}{}{}",
                    b.name,
                    b.addr,
                    if b.tls.is_some() { " wss" } else { "" },
                    p.weight,
                    p.max_fails,
                    p.fail_timeout,
                    if p.backup { " backup" } else { "" },
                    if p.down { " down" } else { "" },
                );
            }
        }
        let none = || "none".to_string();
        let _ = writeln!(
            s,
            "limits: per client address {} (answered {}), connections {}, tries per connection {}",
            self.limit_conn_per_ip.map_or_else(none, |n| n.to_string()),
            self.limit_conn_status,
            self.max_conns.map_or_else(none, |n| n.to_string()),
            match self.upstream_tries {
                0 => "every server once".to_string(),
                n => n.to_string(),
            },
        );
        let list = |v: Vec<String>| if v.is_empty() { none() } else { v.join(" ") };
        let _ = writeln!(
            s,
            "origins allowed: {}; trusted proxies: {}",
            if self.allow_origin.is_empty() {
                "any".to_string()
            } else {
                list(self.allow_origin.iter().map(|o| o.to_string()).collect())
            },
            list(self.trusted_proxies.iter().map(|c| c.to_string()).collect()),
        );
        let _ = writeln!(
            s,
            "timeouts: connect {:?}, handshake {:?}, idle {:?}, drain {:?}; workers {}",
            self.connect_timeout,
            self.handshake_timeout,
            self.idle_timeout,
            self.drain_timeout,
            self.workers
        );
        let _ = writeln!(
            s,
            "operations: metrics {}, access log {} ({:?}), close frames at drain {}",
            self.metrics_listen
                .map_or_else(|| "off".to_string(), |a| format!("on http://{a}/metrics")),
            match &self.access_log {
                access_log::Sink::Off => "off".to_string(),
                access_log::Sink::Stderr => "stderr".to_string(),
                access_log::Sink::File(p) => p.display().to_string(),
            },
            self.access_log_format,
            if self.drain_close_frames { "on" } else { "off" },
        );
        s
    }
}

/// `--upstream`, `--balance`, `--send-proxy-protocol` to groups, in order of
/// first mention.
fn build_groups(args: &ProxyArgs) -> Result<Vec<Group>, ConfigError> {
    let mut groups: Vec<Group> = Vec::new();
    for raw in &args.upstream {
        let (name, servers) = parse_upstream(raw, args.fail_timeout)?;
        match groups.iter_mut().find(|g| g.name == name) {
            Some(g) => g.servers.extend(servers),
            None => groups.push(Group {
                name,
                method: Method::RoundRobin,
                servers,
                send_proxy: None,
            }),
        }
    }
    let known = |groups: &[Group]| {
        groups
            .iter()
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut methods_set: Vec<&str> = Vec::new();
    for (name, method) in &args.balance {
        if methods_set.contains(&name.as_str()) {
            return Err(ConfigError::Routing(format!(
                "--balance: group {name} is given a method twice"
            )));
        }
        methods_set.push(name);
        let Some(g) = groups.iter_mut().find(|g| &g.name == name) else {
            return Err(ConfigError::Routing(format!(
                "--balance {name}=...: no --upstream in group {name} (groups: {})",
                known(&groups)
            )));
        };
        g.method = *method;
    }
    for (name, version) in &args.send_proxy_protocol {
        let Some(g) = groups.iter_mut().find(|g| &g.name == name) else {
            return Err(ConfigError::Routing(format!(
                "--send-proxy-protocol {name}=...: no --upstream in group {name} (groups: {})",
                known(&groups)
            )));
        };
        g.send_proxy = Some(*version);
    }
    for g in &groups {
        if g.servers.len() > MAX_SERVERS {
            return Err(ConfigError::Routing(format!(
                "group {}: {} server addresses, at most {MAX_SERVERS}",
                g.name,
                g.servers.len()
            )));
        }
        let backups = g.servers.iter().filter(|s| s.params.backup).count();
        if backups > 0 && matches!(g.method, Method::IpHash { .. }) {
            return Err(ConfigError::Routing(format!(
                "group {}: `backup` servers cannot be used with ip-hash (as in nginx): \
                 a client's server must not depend on others' failures",
                g.name
            )));
        }
        if backups == g.servers.len() {
            return Err(ConfigError::Routing(format!(
                "group {}: every server is a backup; give at least one primary",
                g.name
            )));
        }
    }
    Ok(groups)
}

/// `[GROUP=]SERVER[,PARAM...]` to its group name and every address.
fn parse_upstream(
    raw: &str,
    fail_timeout: Duration,
) -> Result<(String, Vec<Backend>), ConfigError> {
    let bad = |why: String| ConfigError::BadUpstream(raw.to_string(), why);
    let mut parts = raw.split(',');
    let first = parts.next().unwrap_or_default();
    // `chat=host:port`; a scheme's `:` or an IPv6 address never precede '='.
    let (group, server) = match first.split_once('=') {
        Some((g, s)) => (g, s),
        None => (DEFAULT_GROUP, first),
    };
    if group.is_empty()
        || !group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(bad(format!(
            "{group:?} is not a group name (letters, digits, '-', '_', '.')"
        )));
    }
    let mut params = ServerParams {
        fail_timeout,
        ..ServerParams::default()
    };
    for p in parts {
        let (key, value) = match p.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (p.trim(), None),
        };
        let number = |v: Option<&str>| -> Result<u32, ConfigError> {
            v.and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| bad(format!("{key} needs a number: {key}=N")))
        };
        match (key, value) {
            ("weight", v) => {
                params.weight = number(v)?;
                if !(1..=1_000_000).contains(&params.weight) {
                    return Err(bad("weight must be 1 to 1000000".into()));
                }
            }
            ("max_fails", v) => params.max_fails = number(v)?,
            ("fail_timeout", Some(v)) => {
                params.fail_timeout = parse_duration(v).map_err(bad)?;
                if params.fail_timeout.is_zero() {
                    return Err(bad("fail_timeout must not be 0".into()));
                }
            }
            ("backup", None) => params.backup = true,
            ("down", None) => params.down = true,
            _ => {
                return Err(bad(format!(
                    "unknown server parameter {p:?} (known: weight=N, max_fails=N, \
                     fail_timeout=DURATION, backup, down)"
                )))
            }
        }
    }
    let servers = resolve_upstream(server)
        .map_err(bad)?
        .into_iter()
        .map(|(name, addr, tls)| Backend {
            name,
            addr,
            tls,
            params,
        })
        .collect();
    Ok((group.to_string(), servers))
}

/// `--route` and `--static` to the lookup table.
fn build_routes(args: &ProxyArgs, groups: &[Group]) -> Result<Routes, ConfigError> {
    let mut list = Vec::new();
    for r in &args.route {
        let Some(g) = groups.iter().position(|g| g.name == r.target) else {
            let known: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
            return Err(ConfigError::Routing(format!(
                "--route {}{}={}: no group {} (groups: {}; a group is made by --upstream {}=HOST:PORT)",
                r.host.as_deref().unwrap_or(""),
                r.prefix,
                r.target,
                r.target,
                if known.is_empty() { "none".to_string() } else { known.join(", ") },
                r.target,
            )));
        };
        list.push(Route {
            host: r.host.clone(),
            prefix: r.prefix.clone(),
            target: Target::Group(g),
        });
    }
    for r in &args.static_dirs {
        let root = Root::open(std::path::Path::new(&r.target)).map_err(|e| {
            ConfigError::Routing(format!(
                "--static {}{}={}: {e}",
                r.host.as_deref().unwrap_or(""),
                r.prefix,
                r.target
            ))
        })?;
        list.push(Route {
            host: r.host.clone(),
            prefix: r.prefix.clone(),
            target: Target::Static(Arc::new(root)),
        });
    }
    if args.route.is_empty() {
        let claims_root = list.iter().any(|r| r.host.is_none() && r.prefix == "/");
        match groups {
            [] => {}
            [_] if !claims_root => list.push(Route {
                host: None,
                prefix: "/".into(),
                target: Target::Group(0),
            }),
            [g] => {
                return Err(ConfigError::Routing(format!(
                    "group {} is reached by no route: add --route PREFIX={}",
                    g.name, g.name
                )))
            }
            _ => {
                return Err(ConfigError::Routing(format!(
                    "{} groups and no --route: say which paths go where (--route /ws/=GROUP)",
                    groups.len()
                )))
            }
        }
    }
    for (i, g) in groups.iter().enumerate() {
        if !list
            .iter()
            .any(|r| matches!(r.target, Target::Group(t) if t == i))
        {
            return Err(ConfigError::Routing(format!(
                "group {} is reached by no route: add --route PREFIX={}",
                g.name, g.name
            )));
        }
    }
    for (i, r) in list.iter().enumerate() {
        if list[..i]
            .iter()
            .any(|o| o.host == r.host && o.prefix == r.prefix)
        {
            return Err(ConfigError::Routing(format!(
                "route {}{} is given twice",
                r.host.as_deref().unwrap_or(""),
                r.prefix
            )));
        }
    }
    // Longest prefix first; equal lengths keep flag order (stable sort).
    list.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    Ok(Routes { list })
}

/// `HOST:PORT`, `ws://HOST:PORT[/]` or `wss://HOST:PORT[/]` to every
/// address the name resolves to.
fn resolve_upstream(
    raw: &str,
) -> Result<Vec<(String, SocketAddr, Option<ServerName<'static>>)>, String> {
    let (hostport, secure) = if let Some(rest) = raw.strip_prefix("ws://") {
        (rest.trim_end_matches('/'), false)
    } else if let Some(rest) = raw.strip_prefix("wss://") {
        (rest.trim_end_matches('/'), true)
    } else if raw.contains("://") {
        return Err("only ws:// and wss:// backends (or a bare HOST:PORT) are supported".into());
    } else {
        (raw, false)
    };
    if hostport.contains('/') {
        return Err("a backend has no path; give HOST:PORT".into());
    }
    if hostport
        .rsplit_once(':')
        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    {
        return Err("expected HOST:PORT".into());
    }
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err("resolves to no address".into());
    }
    let tls = if secure {
        let (host, _) = hostport.rsplit_once(':').unwrap_or((hostport, ""));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| "the host is not a name a certificate can be checked against")?;
        Some(name)
    } else {
        None
    };
    Ok(addrs
        .into_iter()
        .map(|addr| (hostport.to_string(), addr, tls.clone()))
        .collect())
}

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
    let from_file = file_arguments(&file, &on_command_line)?;
    // The file alone first, so that its mistakes are reported as its own.
    let mut alone: Vec<std::ffi::OsString> = vec![argv[0].clone()];
    alone.extend(sub.map(Into::into));
    alone.extend(from_file.iter().cloned());
    if let Err(e) = Cli::command().try_get_matches_from(&alone) {
        return Err(CliError::Config(ConfigError::File(file, usage_reason(&e))));
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

/// The `--config` file's settings as command-line arguments, leaving out
/// those the command line sets itself.
fn file_arguments(
    file: &std::path::Path,
    on_command_line: &dyn Fn(&str) -> bool,
) -> Result<Vec<std::ffi::OsString>, ConfigError> {
    use clap::CommandFactory;
    let err = |why: String| ConfigError::File(file.to_path_buf(), why);
    let text = std::fs::read_to_string(file).map_err(|e| err(e.to_string()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        // toml's message is "at line L, column C", the line with a caret
        // under it, then the reason: keep the first and the last.
        let text = e.to_string();
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.next().unwrap_or_default();
        match lines.next_back() {
            Some(reason) => err(format!("{first}: {reason}")),
            None => err(first.to_string()),
        }
    })?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "log-level")
            .filter(|a| a.get_id() != "config")
            .ok_or_else(|| {
                err(format!(
                    "unknown setting {key:?} (settings are flag names, like idle-timeout)"
                ))
            })?;
        if on_command_line(arg.get_id().as_str()) {
            continue;
        }
        let flag = !arg.get_action().takes_values();
        let many = matches!(arg.get_action(), clap::ArgAction::Append);
        let scalar = |v: &toml::Value| -> Result<String, ConfigError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                _ => Err(err(format!("{key}: expected a string or a number"))),
            }
        };
        match value {
            toml::Value::Boolean(b) if flag => {
                if *b {
                    out.push(format!("--{long}").into());
                }
            }
            _ if flag => return Err(err(format!("{key}: expected true or false"))),
            toml::Value::Array(items) if many => {
                for item in items {
                    out.push(format!("--{long}").into());
                    out.push(scalar(item)?.into());
                }
            }
            toml::Value::Array(_) => {
                return Err(err(format!("{key}: takes one value, not a list")))
            }
            v => {
                out.push(format!("--{long}").into());
                out.push(scalar(v)?.into());
            }
        }
    }
    Ok(out)
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
            c.listen_addrs(false).collect::<Vec<_>>(),
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
        assert_eq!(c.groups[0].servers.len(), 2);
        assert_eq!(c.groups[0].servers[0].name, "127.0.0.1:9000");
        assert_eq!((c.workers, c.pin, c.driver), (3, false, Driver::Legacy));
        assert_eq!((c.ring_entries, c.backlog), (256, 128));
        assert_eq!(c.idle_timeout, Duration::from_secs(86400));
        assert_eq!(
            c.groups[0].servers[0].params.fail_timeout,
            Duration::from_secs(1)
        );
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
    fn groups_servers_and_methods() {
        let c = config(&[
            "--upstream",
            "chat=127.0.0.1:9000,weight=3,max_fails=2,fail_timeout=30s",
            "--upstream",
            "chat=127.0.0.1:9001,backup",
            "--upstream",
            "chat=127.0.0.1:9002,down",
            "--upstream",
            "api=[::1]:9003",
            "--balance",
            "chat=least-conn",
            "--balance",
            "api=ip-hash-full",
            "--send-proxy-protocol",
            "api=v2",
            "--route",
            "/ws/=chat",
            "--route",
            "/api/=api",
            "--upstream-tries",
            "2",
        ])
        .unwrap();
        assert_eq!(c.groups.len(), 2);
        let chat = &c.groups[0];
        assert_eq!(
            (chat.name.as_str(), chat.method),
            ("chat", Method::LeastConn)
        );
        let p = chat.servers[0].params;
        assert_eq!(
            (p.weight, p.max_fails, p.fail_timeout),
            (3, 2, Duration::from_secs(30))
        );
        assert!(chat.servers[1].params.backup && chat.servers[2].params.down);
        assert_eq!(chat.servers[1].params.fail_timeout, Duration::from_secs(10));
        let api = &c.groups[1];
        assert_eq!(api.method, Method::IpHash { full_address: true });
        assert_eq!(api.send_proxy, Some(proxy_protocol::Version::V2));
        assert_eq!(chat.send_proxy, None);
        assert_eq!(c.upstream_tries, 2);
    }

    fn target_of(c: &Config, host: Option<&str>, path: &str) -> String {
        match c
            .routes
            .find(host.map(str::as_bytes), path)
            .map(|(_, r)| &r.target)
        {
            Some(Target::Group(g)) => c.groups[*g].name.clone(),
            Some(Target::Static(_)) => "static".into(),
            None => "404".into(),
        }
    }

    #[test]
    fn routes_longest_prefix_then_host() {
        let dir = std::env::temp_dir();
        let dir = dir.to_str().unwrap();
        let stat = format!("/={dir}");
        let c = config(&[
            "--upstream",
            "chat=127.0.0.1:9000",
            "--upstream",
            "api=127.0.0.1:9001",
            "--upstream",
            "a=127.0.0.1:9002",
            "--upstream",
            "w=127.0.0.1:9003",
            "--route",
            "/ws/=chat",
            "--route",
            "/ws/api/=api",
            "--route",
            "A.test/=a",
            "--route",
            "*.w.test/=w",
            "--static",
            &stat,
        ])
        .unwrap();
        assert_eq!(target_of(&c, Some("x"), "/ws/room"), "chat");
        assert_eq!(target_of(&c, Some("x"), "/ws/api/v1"), "api");
        assert_eq!(target_of(&c, Some("x"), "/wsx"), "static");
        assert_eq!(
            target_of(&c, Some("x"), "/ws"),
            "static",
            "no trailing slash"
        );
        assert_eq!(target_of(&c, None, "/ws/"), "chat");
        // A host with routes of its own uses only those (nginx server blocks).
        assert_eq!(target_of(&c, Some("a.test"), "/ws/room"), "a");
        assert_eq!(target_of(&c, Some("A.TEST:8080"), "/"), "a");
        assert_eq!(target_of(&c, Some("a.test."), "/"), "a", "trailing dot");
        assert_eq!(target_of(&c, Some("x.w.test"), "/z"), "w");
        assert_eq!(target_of(&c, Some("y.x.w.test:1"), "/z"), "w");
        assert_eq!(
            target_of(&c, Some("w.test"), "/ws/"),
            "chat",
            "*.w.test is subdomains only"
        );
        assert_eq!(target_of(&c, Some("[::1]:80"), "/ws/"), "chat");
        let only = config(&["--upstream", "127.0.0.1:1", "--route", "/ws/=default"]).unwrap();
        assert_eq!(target_of(&only, None, "/other"), "404");
        let implicit = config(&["--upstream", "127.0.0.1:1"]).unwrap();
        assert_eq!(target_of(&implicit, None, "/anything"), "default");
    }

    #[test]
    fn listen_options_and_limits() {
        let c = config(&[
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
        assert!(c.listen[0].proxy_protocol && !c.listen[0].tls);
        assert_eq!(c.trusted_proxies.len(), 1);
        assert_eq!(
            (c.limit_conn_per_ip, c.limit_conn_status, c.max_conns),
            (Some(3), 429, Some(100))
        );
        assert_eq!(c.allow_origin.len(), 2);
        let text = c.describe();
        assert!(text.contains("PROXY protocol required"), "{text}");
        assert!(
            text.contains("per client address 3 (answered 429)"),
            "{text}"
        );
    }

    #[test]
    fn routing_mistakes_are_clear_errors() {
        for (flags, needle) in [
            (
                &["--upstream", "a=127.0.0.1:1", "--route", "/=b"][..],
                "no group b",
            ),
            (&["--upstream", "127.0.0.1:1,weight=0"][..], "weight"),
            (&["--upstream", "127.0.0.1:1,weight"][..], "weight=N"),
            (
                &["--upstream", "127.0.0.1:1,heavy"][..],
                "unknown server parameter",
            ),
            (
                &["--upstream", "127.0.0.1:1,fail_timeout=0"][..],
                "fail_timeout",
            ),
            (&["--upstream", "bad name=127.0.0.1:1"][..], "group name"),
            (
                &[
                    "--upstream",
                    "127.0.0.1:1",
                    "--upstream",
                    "127.0.0.1:2,backup",
                    "--balance",
                    "ip-hash",
                ][..],
                "ip-hash",
            ),
            (
                &["--upstream", "127.0.0.1:1,backup"][..],
                "every server is a backup",
            ),
            (
                &["--upstream", "a=127.0.0.1:1", "--upstream", "b=127.0.0.1:2"][..],
                "no --route",
            ),
            (
                &[
                    "--upstream",
                    "a=127.0.0.1:1",
                    "--upstream",
                    "b=127.0.0.1:2",
                    "--route",
                    "/=a",
                ][..],
                "group b is reached by no route",
            ),
            (
                &["--upstream", "127.0.0.1:1", "--balance", "x=least-conn"][..],
                "no --upstream in group x",
            ),
            (
                &[
                    "--upstream",
                    "127.0.0.1:1",
                    "--balance",
                    "least-conn",
                    "--balance",
                    "ip-hash",
                ][..],
                "twice",
            ),
            (
                &["--upstream", "127.0.0.1:1", "--send-proxy-protocol", "x=v1"][..],
                "group x",
            ),
            (
                &[
                    "--upstream",
                    "127.0.0.1:1",
                    "--route",
                    "/=default",
                    "--route",
                    "/=default",
                ][..],
                "twice",
            ),
            (
                &[
                    "--upstream",
                    "127.0.0.1:1",
                    "--static",
                    "/=/nonexistent-ringway-dir",
                ][..],
                "--static",
            ),
            (
                &[
                    "--upstream",
                    "127.0.0.1:1",
                    "--listen",
                    "127.0.0.1:0,proxy-protocol",
                ][..],
                "--trusted-proxy",
            ),
            (
                &["--upstream", "127.0.0.1:1", "--limit-conn-status", "200"][..],
                "limit-conn-status",
            ),
            (
                &["--upstream", "127.0.0.1:1", "--limit-conn-per-ip", "0"][..],
                "limit-conn-per-ip",
            ),
            (
                &["--upstream", "127.0.0.1:1", "--max-conns", "0"][..],
                "max-conns",
            ),
        ] {
            let msg = match config(flags) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{flags:?} accepted"),
            };
            assert!(msg.contains(needle), "{flags:?}: {msg}");
        }
        for bad in [
            &["--balance", "random"][..],
            &["--route", "ws=chat"][..],
            &["--route", "/ws/"][..],
            &["--route", "/a%2f/=x"][..],
            &["--listen", "127.0.0.1:1,ssl"][..],
            &["--trusted-proxy", "10.0.0.0/99"][..],
            &["--allow-origin", "example.com"][..],
            &["--send-proxy-protocol", "v3"][..],
        ] {
            assert!(args(bad).is_err(), "{bad:?} parsed");
        }
    }

    /// A TOML file in a fresh temp directory.
    fn toml_file(name: &str, text: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ringway-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ringway.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn config_file_under_flags() {
        let file = toml_file(
            "ok",
            "upstream = [\"chat=127.0.0.1:9000\", \"chat=127.0.0.1:9001\"]\n\
             route = [\"/ws/=chat\"]\n\
             idle_timeout = \"2h\"\n\
             no-pin = true\n\
             workers = 3\n",
        );
        let f = file.to_str().unwrap();
        let cli = parse_cli(["ringway", "--config", f]).unwrap();
        let c = Config::from_args(&cli.proxy, 4).unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(7200));
        assert_eq!((c.workers, c.pin), (3, false));
        assert_eq!(c.groups[0].servers.len(), 2);
        // A flag replaces the file's setting of the same name, lists whole.
        let cli = parse_cli([
            "ringway",
            "--idle-timeout",
            "5m",
            "--config",
            f,
            "--upstream",
            "chat=127.0.0.1:9100",
        ])
        .unwrap();
        let c = Config::from_args(&cli.proxy, 4).unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.groups[0].servers.len(), 1);
        assert_eq!(c.groups[0].servers[0].addr.port(), 9100);
        // `check` reads it too.
        let cli = parse_cli(["ringway", "check", "--config", f]).unwrap();
        let Some(Command::Check(check)) = cli.command else {
            panic!("not check")
        };
        assert_eq!(check.proxy.workers, Some(3));
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    }

    #[test]
    fn config_file_mistakes_name_the_file() {
        for (name, text, needle) in [
            ("unknown", "colour = \"blue\"\n", "unknown setting"),
            ("list", "idle-timeout = [\"1h\", \"2h\"]\n", "not a list"),
            ("syntax", "upstream = [\n", ""),
            ("value", "idle-timeout = \"soon\"\n", "soon"),
            ("flag", "no-pin = \"yes\"\n", "true or false"),
            ("nested", "config = \"other.toml\"\n", "unknown setting"),
            ("table", "[groups]\nx = 1\n", "unknown setting"),
            (
                "nested-value",
                "upstream = [[\"a\"]]\n",
                "expected a string",
            ),
        ] {
            let file = toml_file(name, text);
            let f = file.to_str().unwrap();
            match parse_cli(["ringway", "--config", f]) {
                Err(CliError::Config(e)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(f) && msg.contains(needle), "{name}: {msg}");
                }
                other => panic!("{name}: {other:?}"),
            }
            let _ = std::fs::remove_dir_all(file.parent().unwrap());
        }
        let missing = parse_cli(["ringway", "--config", "/nonexistent/ringway.toml"]);
        assert!(matches!(
            missing,
            Err(CliError::Config(ConfigError::File(..)))
        ));
    }

    #[test]
    fn demo_subcommand() {
        let cli = Cli::try_parse_from(["ringway", "demo", "--listen", "127.0.0.1:0"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Demo(ref d)) if d.listen.port() == 0));
    }
}
