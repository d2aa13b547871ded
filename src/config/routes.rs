//! Routes: `--route` and `--static` checked and ordered into [`Routes`]
//! when the configuration is read, and [`Routes::find`], the lookup each
//! request makes (nginx's server_name, then location: the most specific
//! Host class, then the longest prefix). A route's target is a group, by
//! its index, or a static directory opened once ([`Root`]).

use std::sync::Arc;

use crate::config::cli::ProxyArgs;
use crate::config::error::RouteError;
use crate::config::static_root::Root;
use crate::config::upstream::Group;

/// Where a route sends its requests.
#[derive(Debug, Clone)]
pub enum Target {
    /// Index into the configuration's `groups`.
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

/// `--route` and `--static` to the lookup table.
pub(super) fn build_routes(args: &ProxyArgs, groups: &[Group]) -> Result<Routes, RouteError> {
    // A route as written: `[HOST]PREFIX`.
    let label =
        |host: &Option<String>, prefix: &str| format!("{}{prefix}", host.as_deref().unwrap_or(""));
    let mut list = Vec::new();
    for r in &args.route {
        let Some(g) = groups.iter().position(|g| g.name == r.target) else {
            return Err(RouteError::NoGroup {
                route: label(&r.host, &r.prefix),
                group: r.target.clone(),
                known: groups.iter().map(|g| g.name.clone()).collect(),
            });
        };
        list.push(Route {
            host: r.host.clone(),
            prefix: r.prefix.clone(),
            target: Target::Group(g),
        });
    }
    for r in &args.static_dirs {
        let root =
            Root::open(std::path::Path::new(&r.target)).map_err(|why| RouteError::Static {
                route: label(&r.host, &r.prefix),
                dir: r.target.clone(),
                why,
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
            [g] => return Err(RouteError::Unreached(g.name.clone())),
            _ => return Err(RouteError::NoRoute(groups.len())),
        }
    }
    for (i, g) in groups.iter().enumerate() {
        if !list
            .iter()
            .any(|r| matches!(r.target, Target::Group(t) if t == i))
        {
            return Err(RouteError::Unreached(g.name.clone()));
        }
    }
    for (i, r) in list.iter().enumerate() {
        if list[..i]
            .iter()
            .any(|o| o.host == r.host && o.prefix == r.prefix)
        {
            return Err(RouteError::Twice(label(&r.host, &r.prefix)));
        }
    }
    // Longest prefix first; equal lengths keep flag order (stable sort).
    list.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    Ok(Routes { list })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{args, config};
    use crate::config::Config;

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
        .unwrap()
        .config;
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
        let only = config(&["--upstream", "127.0.0.1:1", "--route", "/ws/=default"])
            .unwrap()
            .config;
        assert_eq!(target_of(&only, None, "/other"), "404");
        let implicit = config(&["--upstream", "127.0.0.1:1"]).unwrap().config;
        assert_eq!(target_of(&implicit, None, "/anything"), "default");
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
}
