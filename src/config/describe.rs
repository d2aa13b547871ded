//! What `ringway check` prints: the resolved configuration, both parts, in
//! words (listeners, routes, groups and their servers, limits, timeouts,
//! operations). Read by people and by `tests/config_file.rs`.

use std::fmt::Write as _;

use crate::config::{Settings, Target};
use crate::ops::access_log;
use crate::policy::balance::Method;
use crate::proto::proxy_protocol;

impl Settings {
    /// What `ringway check` prints: the resolved configuration.
    pub fn describe(&self) -> String {
        let Settings { startup, config } = self;
        let mut s = String::new();
        let _ = writeln!(s, "listeners:");
        for l in &startup.listen {
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
        for r in config.routes.iter() {
            let target = match &r.target {
                Target::Group(g) => format!("group {}", config.groups[*g].name),
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
        for g in &config.groups {
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
        let _ =
            writeln!(
            s,
            "limits: per client address {} (answered {}), connections {}, tries per connection {}",
            config.limit_conn_per_ip.map_or_else(none, |n| n.to_string()),
            config.limit_conn_status,
            config.max_conns.map_or_else(none, |n| n.to_string()),
            match config.upstream_tries {
                0 => "every server once".to_string(),
                n => n.to_string(),
            },
        );
        let list = |v: Vec<String>| if v.is_empty() { none() } else { v.join(" ") };
        let _ = writeln!(
            s,
            "origins allowed: {}; trusted proxies: {}",
            if config.allow_origin.is_empty() {
                "any".to_string()
            } else {
                list(config.allow_origin.iter().map(|o| o.to_string()).collect())
            },
            list(
                config
                    .trusted_proxies
                    .iter()
                    .map(|c| c.to_string())
                    .collect()
            ),
        );
        let _ = writeln!(
            s,
            "timeouts: connect {:?}, handshake {:?}, upstream answer {:?}, idle {:?}, \
             half-close {:?}, drain {:?}; tcp keepalive {}; workers {}",
            config.connect_timeout,
            config.handshake_timeout,
            config.upstream_answer_timeout,
            config.idle_timeout,
            config.half_close_timeout,
            config.drain_timeout,
            match startup.tcp_keepalive.0 {
                Some(k) => format!(
                    "{:?} idle, {:?} interval, {} probes ({:?} in all)",
                    k.idle,
                    k.interval,
                    k.count,
                    k.budget()
                ),
                None => "off".to_string(),
            },
            startup.workers
        );
        let _ = writeln!(
            s,
            "operations: metrics {}, access log {} ({:?}), close frames at drain {}, \
             config watch {}, pid file {}",
            startup
                .metrics_listen
                .map_or_else(|| "off".to_string(), |a| format!("on http://{a}/metrics")),
            match &startup.access_log {
                access_log::Sink::Off => "off".to_string(),
                access_log::Sink::Stderr => "stderr".to_string(),
                access_log::Sink::File(p) => p.display().to_string(),
            },
            startup.access_log_format,
            if config.drain_close_frames {
                "on"
            } else {
                "off"
            },
            startup
                .watch_config
                .as_ref()
                .map_or_else(|| "off".to_string(), |p| p.display().to_string()),
            startup
                .pid_file
                .as_ref()
                .map_or_else(|| "off".to_string(), |p| p.display().to_string()),
        );
        let _ = writeln!(
            s,
            "tunnel bytes: {:?} io ({} receive buffers of {} bytes per core), splice {:?} \
             ({} pipes per core)",
            startup.tunnel_io,
            startup.recv_buffers,
            startup.recv_buffer_size,
            config.splice,
            startup.splice_pipes,
        );
        s
    }
}
