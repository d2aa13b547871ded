//! Backend servers and the groups they make: `--upstream` values parsed
//! (nginx's server parameters) and their names resolved to addresses
//! ([`Backend`]), gathered with `--balance` and `--send-proxy-protocol` into
//! [`Group`]s, and the groups checked (a method once, a primary server, no
//! backups with ip-hash, at most `MAX_SERVERS` addresses). Resolution is
//! once, when the configuration is read (at start and at each reload).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::config::cli::{parse_duration, ProxyArgs, DEFAULT_GROUP};
use crate::config::error::{ConfigError, GroupError, UpstreamError};
use crate::policy::balance::{Method, ServerParams, MAX_SERVERS};
use crate::proto::proxy_protocol;

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

/// `--upstream`, `--balance`, `--send-proxy-protocol` to groups, in order of
/// first mention.
pub(super) fn build_groups(args: &ProxyArgs) -> Result<Vec<Group>, ConfigError> {
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
    let known = |groups: &[Group]| groups.iter().map(|g| g.name.clone()).collect();
    let mut methods_set: Vec<&str> = Vec::new();
    for (name, method) in &args.balance {
        if methods_set.contains(&name.as_str()) {
            return Err(GroupError::MethodTwice(name.clone()).into());
        }
        methods_set.push(name);
        let Some(g) = groups.iter_mut().find(|g| &g.name == name) else {
            return Err(GroupError::BalanceUnknown {
                group: name.clone(),
                known: known(&groups),
            }
            .into());
        };
        g.method = *method;
    }
    for (name, version) in &args.send_proxy_protocol {
        let Some(g) = groups.iter_mut().find(|g| &g.name == name) else {
            return Err(GroupError::SendProxyUnknown {
                group: name.clone(),
                known: known(&groups),
            }
            .into());
        };
        g.send_proxy = Some(*version);
    }
    for g in &groups {
        if g.servers.len() > MAX_SERVERS {
            return Err(GroupError::TooManyServers {
                group: g.name.clone(),
                count: g.servers.len(),
            }
            .into());
        }
        let backups = g.servers.iter().filter(|s| s.params.backup).count();
        if backups > 0 && matches!(g.method, Method::IpHash { .. }) {
            return Err(GroupError::BackupWithIpHash(g.name.clone()).into());
        }
        if backups == g.servers.len() {
            return Err(GroupError::AllBackup(g.name.clone()).into());
        }
    }
    Ok(groups)
}

/// `[GROUP=]SERVER[,PARAM...]` to its group name and every address.
fn parse_upstream(
    raw: &str,
    fail_timeout: Duration,
) -> Result<(String, Vec<Backend>), ConfigError> {
    let bad = |why: UpstreamError| ConfigError::BadUpstream(raw.to_string(), why);
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
        return Err(bad(UpstreamError::GroupName(group.to_string())));
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
                .ok_or_else(|| bad(UpstreamError::NeedsNumber(key.to_string())))
        };
        match (key, value) {
            ("weight", v) => {
                params.weight = number(v)?;
                if !(1..=1_000_000).contains(&params.weight) {
                    return Err(bad(UpstreamError::Weight));
                }
            }
            ("max_fails", v) => params.max_fails = number(v)?,
            ("fail_timeout", Some(v)) => {
                params.fail_timeout =
                    parse_duration(v).map_err(|e| bad(UpstreamError::FailTimeout(e)))?;
                if params.fail_timeout.is_zero() {
                    return Err(bad(UpstreamError::ZeroFailTimeout));
                }
            }
            ("backup", None) => params.backup = true,
            ("down", None) => params.down = true,
            _ => return Err(bad(UpstreamError::UnknownParameter(p.to_string()))),
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

/// `HOST:PORT`, `ws://HOST:PORT[/]` or `wss://HOST:PORT[/]` to every
/// address the name resolves to.
fn resolve_upstream(
    raw: &str,
) -> Result<Vec<(String, SocketAddr, Option<ServerName<'static>>)>, UpstreamError> {
    let (hostport, secure) = if let Some(rest) = raw.strip_prefix("ws://") {
        (rest.trim_end_matches('/'), false)
    } else if let Some(rest) = raw.strip_prefix("wss://") {
        (rest.trim_end_matches('/'), true)
    } else if raw.contains("://") {
        return Err(UpstreamError::Scheme);
    } else {
        (raw, false)
    };
    if hostport.contains('/') {
        return Err(UpstreamError::Path);
    }
    if hostport
        .rsplit_once(':')
        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    {
        return Err(UpstreamError::NotHostPort);
    }
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .map_err(UpstreamError::Resolve)?
        .collect();
    if addrs.is_empty() {
        return Err(UpstreamError::NoAddress);
    }
    let tls = if secure {
        let (host, _) = hostport.rsplit_once(':').unwrap_or((hostport, ""));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| UpstreamError::NotCertificateName)?;
        Some(name)
    } else {
        None
    };
    Ok(addrs
        .into_iter()
        .map(|addr| (hostport.to_string(), addr, tls.clone()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::config;

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
        .unwrap()
        .config;
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
}
