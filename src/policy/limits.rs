//! Limits and protection: the per-client-address tunnel limit and the global
//! connection cap (the only state every core shares), the `Origin`
//! allow-list, and the trusted-proxy address ranges.
//!
//! The shared counters are touched twice per connection (at its start and at
//! its end), never per byte: [`PerIp`] is a sharded map behind short mutexes,
//! so a count is exact whichever cores a client's connections land on;
//! [`Total`] is one atomic. Both hand out guards that give the slot back when
//! the connection ends, however it ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Shards of the per-address map: enough that cores rarely meet on one lock.
const SHARDS: usize = 64;

/// Concurrent connections per client address, exact across all cores.
#[derive(Debug)]
pub struct PerIp {
    shards: Box<[Mutex<HashMap<IpAddr, u32>>]>,
}

/// One counted connection of a client address; released on drop.
#[derive(Debug)]
pub struct IpSlot<'a> {
    owner: &'a PerIp,
    ip: IpAddr,
}

impl Default for PerIp {
    fn default() -> PerIp {
        PerIp::new()
    }
}

impl PerIp {
    pub fn new() -> PerIp {
        PerIp {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        // The low bits of the address spread neighbours over the shards.
        let low = match ip {
            IpAddr::V4(v4) => u32::from(*v4) as usize,
            IpAddr::V6(v6) => u128::from(*v6) as usize,
        };
        &self.shards[low % SHARDS]
    }

    fn lock(&self, ip: &IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        // A panic while holding the lock leaves a count that is still right.
        self.shard(ip).lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count one more connection of `ip`, unless it already has `limit`
    /// (the limit is the configuration's, which a reload may change; the
    /// counts stay).
    pub fn acquire(&self, ip: IpAddr, limit: u32) -> Option<IpSlot<'_>> {
        let mut map = self.lock(&ip);
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            if *n == 0 {
                map.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(IpSlot { owner: self, ip })
    }

    /// Connections of `ip` counted now.
    pub fn count(&self, ip: IpAddr) -> u32 {
        self.lock(&ip).get(&ip).copied().unwrap_or(0)
    }

    /// Addresses with at least one connection (the map never keeps zeros).
    pub fn addresses(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

impl Drop for IpSlot<'_> {
    fn drop(&mut self) {
        let mut map = self.owner.lock(&self.ip);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// All open client connections of the process, for `--max-conns` and for
/// the room the open-files limit leaves.
#[derive(Debug)]
pub struct Total {
    open: AtomicUsize,
    /// Connections the open-files limit leaves room for, two descriptors
    /// each ([`Total::set_room`]; unbounded until set).
    room: AtomicUsize,
    /// Connections beyond which a new one is closed at once, unanswered:
    /// each over [`Total::room`] still holds a descriptor until it is
    /// answered, and those must not eat the reserve that the metrics
    /// endpoint, the logs and reloads live on.
    ceiling: AtomicUsize,
}

impl Default for Total {
    fn default() -> Total {
        Total {
            open: AtomicUsize::new(0),
            room: AtomicUsize::new(usize::MAX),
            ceiling: AtomicUsize::new(usize::MAX),
        }
    }
}

/// Which cap a connection is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// `--max-conns`.
    MaxConns(usize),
    /// The room the open-files limit leaves (answered 503 as for
    /// `--max-conns`).
    Descriptors,
    /// Far over that room: closed at once, unanswered.
    Ceiling,
}

/// One counted connection; released on drop.
#[derive(Debug)]
pub struct TotalSlot<'a> {
    owner: &'a Total,
    /// Counted beyond a cap: to be refused.
    pub over: Option<Over>,
}

impl Total {
    /// Count a new connection; `over` when it makes more than `max`, or
    /// more than the descriptors allow.
    pub fn enter(&self, max: Option<usize>) -> TotalSlot<'_> {
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        let room = self.room.load(Ordering::Relaxed);
        let over = if before >= self.ceiling.load(Ordering::Relaxed) {
            Some(Over::Ceiling)
        } else if let Some(m) = max.filter(|&m| before >= m && m <= room) {
            Some(Over::MaxConns(m))
        } else if before >= room {
            Some(Over::Descriptors)
        } else {
            None
        };
        TotalSlot { owner: self, over }
    }

    /// Bound connections by descriptors: `room` of them may be served,
    /// `ceiling` (at least `room`) may be open at all.
    pub fn set_room(&self, room: usize, ceiling: usize) {
        self.room.store(room, Ordering::Relaxed);
        self.ceiling.store(ceiling.max(room), Ordering::Relaxed);
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl Drop for TotalSlot<'_> {
    fn drop(&mut self) {
        self.owner.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The state all cores share, built once by the server (it outlives
/// configuration reloads, so that counts stay exact across them).
#[derive(Debug, Default)]
pub struct Shared {
    pub per_ip: PerIp,
    pub total: Total,
}

/// An address range, `10.0.0.0/8` or `2001:db8::/32` (a bare address is
/// one host). IPv4-mapped IPv6 addresses match as their IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR range like 10.0.0.0/8"))?;
        let net = net.to_canonical();
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => match b.parse::<u8>() {
                Ok(n) if n <= max && !b.starts_with('+') => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Cidr { net, bits })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.bits)
    }
}

/// Is `ip` in any of `ranges`?
pub fn trusted(ranges: &[Cidr], ip: IpAddr) -> bool {
    ranges.iter().any(|c| c.contains(ip))
}

/// One `--allow-origin` entry: an exact origin (`https://app.example.com`,
/// `http://localhost:3000`), or a pattern `[SCHEME://]*.example.com[:PORT]`
/// that matches every subdomain (not example.com itself), with any scheme
/// and any port unless they are given. `null` matches the opaque origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: Option<String>,
    /// Lowercase; for a pattern, the suffix with its leading dot.
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

impl std::str::FromStr for OriginPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<OriginPattern, String> {
        let bad = |why: &str| format!("--allow-origin {s:?}: {why}");
        let lower = s.trim().trim_end_matches('/').to_ascii_lowercase();
        if lower == "null" {
            return Ok(OriginPattern {
                scheme: None,
                host: lower,
                wildcard: false,
                port: None,
            });
        }
        let (scheme, rest) = match lower.split_once("://") {
            Some((sch, rest)) if !sch.is_empty() => (Some(sch.to_string()), rest),
            Some(_) => return Err(bad("empty scheme")),
            None => (None, lower.as_str()),
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("an origin has no path, query or user part"));
        }
        let (host, port) = split_port(rest).ok_or_else(|| bad("invalid port"))?;
        let wildcard = host.starts_with("*.");
        let host = if wildcard { &host[1..] } else { host };
        if host.is_empty() || host.contains('*') || host == "." {
            return Err(bad("expected scheme://host[:port] or *.example.com"));
        }
        if !wildcard && scheme.is_none() {
            return Err(bad(
                "an exact origin needs its scheme (https://host); use *.host for any scheme",
            ));
        }
        Ok(OriginPattern {
            scheme,
            host: host.to_string(),
            wildcard,
            port,
        })
    }
}

/// `host[:port]`, with `[v6]:port` kept whole as the host.
fn split_port(s: &str) -> Option<(&str, Option<u16>)> {
    let colon = match s.rfind(':') {
        Some(i) if !s[i..].contains(']') => i,
        _ => return Some((s, None)),
    };
    let port = &s[colon + 1..];
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((&s[..colon], Some(port.parse().ok()?)))
}

impl OriginPattern {
    /// Does the `Origin` header value match?
    pub fn matches(&self, origin: &str) -> bool {
        let origin = origin.trim().trim_end_matches('/');
        if self.host == "null" {
            return origin.eq_ignore_ascii_case("null");
        }
        let Some((scheme, rest)) = origin.split_once("://") else {
            return false;
        };
        if self
            .scheme
            .as_deref()
            .is_some_and(|s| !s.eq_ignore_ascii_case(scheme))
        {
            return false;
        }
        let Some((host, port)) = split_port(rest) else {
            return false;
        };
        if self.port.is_some() && self.port != port {
            return false;
        }
        if self.wildcard {
            host.len() > self.host.len()
                && host.as_bytes()[host.len() - self.host.len()..]
                    .eq_ignore_ascii_case(self.host.as_bytes())
        } else {
            host.eq_ignore_ascii_case(&self.host) && self.port == port
        }
    }
}

impl std::fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(s) = &self.scheme {
            write!(f, "{s}://")?;
        }
        if self.wildcard {
            f.write_str("*")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// Is a WebSocket handshake with this `Origin` header allowed? An empty
/// list allows all; a request without `Origin` (not from a browser, so not
/// a cross-site attack) is allowed, like gorilla/websocket's default check.
pub fn origin_allowed(list: &[OriginPattern], origin: Option<&str>) -> bool {
    match origin {
        _ if list.is_empty() => true,
        None => true,
        Some(o) => list.iter().any(|p| p.matches(o)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_counts_exactly_and_forgets_zeros() {
        let l = PerIp::new();
        let a = l.acquire(ip("10.0.0.1"), 2).unwrap();
        let b = l.acquire(ip("10.0.0.1"), 2).unwrap();
        assert!(l.acquire(ip("10.0.0.1"), 2).is_none(), "third refused");
        let other = l.acquire(ip("10.0.0.2"), 2).unwrap();
        assert_eq!(l.count(ip("10.0.0.1")), 2);
        // A reload that raises the limit lets a third in, counted with the
        // two before it.
        let third = l.acquire(ip("10.0.0.1"), 3).unwrap();
        assert_eq!(l.count(ip("10.0.0.1")), 3);
        drop((a, third));
        let c = l.acquire(ip("10.0.0.1"), 2).unwrap();
        drop((b, c, other));
        assert_eq!(l.addresses(), 0, "no entry left behind");
        assert!(l.acquire(ip("::1"), 0).is_none());
        assert_eq!(l.addresses(), 0);
    }

    #[test]
    fn per_ip_is_exact_across_threads() {
        let l = std::sync::Arc::new(PerIp::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let s = l.acquire(ip("192.0.2.1"), 1000).unwrap();
                        drop(s);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(l.count(ip("192.0.2.1")), 0);
    }

    #[test]
    fn total_marks_connections_over_the_cap() {
        let t = Total::default();
        let a = t.enter(Some(2));
        let b = t.enter(Some(2));
        let c = t.enter(Some(2));
        assert_eq!((a.over, b.over), (None, None));
        assert_eq!(c.over, Some(Over::MaxConns(2)));
        drop(c);
        assert_eq!(t.open(), 2);
        assert_eq!(t.enter(None).over, None);
    }

    #[test]
    fn total_keeps_room_for_the_descriptors() {
        let t = Total::default();
        t.set_room(2, 3);
        let _a = t.enter(None);
        let _b = t.enter(Some(10));
        // Over the room: answered 503 like --max-conns...
        let c = t.enter(Some(10));
        assert_eq!(c.over, Some(Over::Descriptors));
        // ...a --max-conns below the room says so itself...
        drop(c);
        assert_eq!(t.enter(Some(1)).over, Some(Over::MaxConns(1)));
        // ...and past the ceiling they are closed unanswered.
        let _c = t.enter(None);
        assert_eq!(t.enter(None).over, Some(Over::Ceiling));
        assert_eq!(t.open(), 3, "the refused ones are given back");
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.200.1.1")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "mapped IPv4");
        assert!(!c.contains(ip("::1")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "x",
            "::/129",
            "10.0.0.0/",
            "1.2.3.4/+8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(
            "10.1.0.0/16".parse::<Cidr>().unwrap().to_string(),
            "10.1.0.0/16"
        );
    }

    #[test]
    fn origins() {
        let list: Vec<OriginPattern> = [
            "https://app.example.com",
            "*.example.org",
            "http://localhost:3000",
            "https://*.corp.net:8443",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let ok = |o: &str| origin_allowed(&list, Some(o));
        assert!(ok("https://app.example.com"));
        assert!(ok("HTTPS://APP.EXAMPLE.COM"));
        assert!(!ok("http://app.example.com"), "scheme matters");
        assert!(!ok("https://app.example.com:444"), "port matters");
        assert!(!ok("https://evil-app.example.com"));
        assert!(ok("https://a.example.org") && ok("http://b.c.example.org:81"));
        assert!(!ok("https://example.org"), "a pattern is subdomains only");
        assert!(!ok("https://example.org.evil.com"));
        assert!(!ok("https://xexample.org"));
        assert!(ok("http://localhost:3000") && !ok("http://localhost"));
        assert!(ok("https://x.corp.net:8443") && !ok("https://x.corp.net"));
        assert!(!ok("null") && !ok("garbage"));
        assert!(origin_allowed(&list, None), "no Origin: not a browser");
        assert!(origin_allowed(&[], Some("https://anything")));
        let null: Vec<OriginPattern> = vec!["null".parse().unwrap()];
        assert!(origin_allowed(&null, Some("null")));
        for bad in [
            "example.com",
            "https://",
            "https://a.com/path",
            "*",
            "https://*.",
            "http://a.com:x",
        ] {
            assert!(bad.parse::<OriginPattern>().is_err(), "{bad}");
        }
    }
}
