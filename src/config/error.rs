//! Every configuration mistake a user can be shown, as types: [`ConfigError`]
//! (exit code 2 at start, a refused file at reload) and the enums it holds,
//! one per family of flags. The texts here are the messages; nothing else in
//! `config/` formats one.
//!
//! The bottom of `config/`: it imports nothing from the folder, so the flag,
//! file, upstream and route code above it can all return it.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::policy::balance::MAX_SERVERS;

/// A configuration mistake: shown to the user, exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no backend: give at least one --upstream HOST:PORT (or a --static route)")]
    NoUpstream,
    /// One `--upstream` value as typed, and what is wrong with it.
    #[error("--upstream {0:?}: {1}")]
    BadUpstream(String, UpstreamError),
    /// A flag's long name and the range it must be in.
    #[error("--{0} must be {1}")]
    OutOfRange(&'static str, &'static str),
    #[error("--listen/--tls-listen {0} is given twice")]
    DuplicateListen(SocketAddr),
    #[error(
        "a proxy-protocol listener needs --trusted-proxy CIDR: the addresses of the \
         balancers allowed to send PROXY headers"
    )]
    ProxyProtocolUntrusted,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The `--config` file, and what is wrong with it.
    #[error("--config {0}: {1}")]
    File(PathBuf, FileError),
}

/// What is wrong with one `--upstream` value.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0:?} is not a group name (letters, digits, '-', '_', '.')")]
    GroupName(String),
    /// A server parameter (`weight`, `max_fails`) without its number.
    #[error("{0} needs a number: {0}=N")]
    NeedsNumber(String),
    #[error("weight must be 1 to 1000000")]
    Weight,
    /// `fail_timeout=` that is not a duration (`parse_duration`'s reason).
    #[error("{0}")]
    FailTimeout(String),
    #[error("fail_timeout must not be 0")]
    ZeroFailTimeout,
    #[error(
        "unknown server parameter {0:?} (known: weight=N, max_fails=N, \
         fail_timeout=DURATION, backup, down)"
    )]
    UnknownParameter(String),
    #[error("only ws:// and wss:// backends (or a bare HOST:PORT) are supported")]
    Scheme,
    #[error("a backend has no path; give HOST:PORT")]
    Path,
    #[error("expected HOST:PORT")]
    NotHostPort,
    #[error("cannot resolve: {0}")]
    Resolve(std::io::Error),
    #[error("resolves to no address")]
    NoAddress,
    #[error("the host is not a name a certificate can be checked against")]
    NotCertificateName,
}

/// A mistake in how servers make groups (`--upstream`, `--balance`,
/// `--send-proxy-protocol`).
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("--balance: group {0} is given a method twice")]
    MethodTwice(String),
    /// `--balance` for a group no `--upstream` makes; the groups there are.
    #[error(
        "--balance {group}=...: no --upstream in group {group} (groups: {})",
        .known.join(", ")
    )]
    BalanceUnknown { group: String, known: Vec<String> },
    /// `--send-proxy-protocol` for a group no `--upstream` makes.
    #[error(
        "--send-proxy-protocol {group}=...: no --upstream in group {group} (groups: {})",
        .known.join(", ")
    )]
    SendProxyUnknown { group: String, known: Vec<String> },
    #[error("group {group}: {count} server addresses, at most {}", MAX_SERVERS)]
    TooManyServers { group: String, count: usize },
    #[error(
        "group {0}: `backup` servers cannot be used with ip-hash (as in nginx): \
         a client's server must not depend on others' failures"
    )]
    BackupWithIpHash(String),
    #[error("group {0}: every server is a backup; give at least one primary")]
    AllBackup(String),
}

/// A mistake in the routes (`--route`, `--static`).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// `--route` (as `[HOST]PREFIX`) to a group that does not exist; the
    /// groups there are (`none` when there is none).
    #[error(
        "--route {route}={group}: no group {group} (groups: {}; a group is made by \
         --upstream {group}=HOST:PORT)",
        or_none(.known)
    )]
    NoGroup {
        route: String,
        group: String,
        known: Vec<String>,
    },
    /// `--static` (as `[HOST]PREFIX`) whose directory cannot be opened.
    #[error("--static {route}={dir}: {why}")]
    Static {
        route: String,
        dir: String,
        why: String,
    },
    #[error("group {0} is reached by no route: add --route PREFIX={0}")]
    Unreached(String),
    /// Several groups (how many) and no `--route` to choose between them.
    #[error("{0} groups and no --route: say which paths go where (--route /ws/=GROUP)")]
    NoRoute(usize),
    /// The same `[HOST]PREFIX` twice.
    #[error("route {0} is given twice")]
    Twice(String),
}

/// A mistake in the certificates or in how wss:// backends are verified.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificates are given but no --tls-listen address to use them on")]
    CertificatesUnused,
    #[error("--tls-listen needs a certificate: give --cert FILE --key FILE")]
    NoCertificate,
    #[error("--upstream-ca/--upstream-insecure are for wss:// backends, and none is given")]
    TrustUnused,
    /// A certificate or key file that cannot be used (the reason names it).
    #[error("{0}")]
    Certificates(String),
    /// The roots for wss:// backends cannot be read (the reason names them).
    #[error("{0}")]
    UpstreamTrust(String),
}

/// What is wrong with the `--config` file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    Read(std::io::Error),
    /// Not TOML: toml's position and reason, in one line.
    #[error("{0}")]
    Syntax(String),
    #[error("unknown setting {0:?} (settings are flag names, like idle-timeout)")]
    UnknownSetting(String),
    #[error("{0}: expected true or false")]
    NotBool(String),
    #[error("{0}: expected a string or a number")]
    NotScalar(String),
    #[error("{0}: takes one value, not a list")]
    NotList(String),
    /// A value its flag refuses (clap's reason, in one line).
    #[error("{0}")]
    Value(String),
}

/// Names joined by ", ", or `none`.
fn or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}
