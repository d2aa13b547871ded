//! Per-core backend choice for one group, as nginx's upstream balancing does
//! it: smooth weighted round-robin, `least_conn` and `ip_hash`, with `down`
//! and `backup` servers and `max_fails`/`fail_timeout` failure marks
//! (`ngx_http_upstream_round_robin.c`, `ngx_http_upstream_least_conn_module.c`,
//! `ngx_http_upstream_ip_hash_module.c`; comments name the nginx function each
//! part follows and say where ringway differs).
//!
//! [`GroupBalancer`] is one group's state on one core (`Cell`s, no locks):
//! weights, failure marks and connection counts are per core, like nginx
//! without a shared `zone`. One client connection's choosing lives in an
//! [`Attempt`]: [`GroupBalancer::next`] gives the next server to try, the
//! caller reports the connect with [`GroupBalancer::failed`] or
//! [`GroupBalancer::succeeded`], and calls [`GroupBalancer::release`] when the
//! tunnel ends.
//!
//! Reloads: each configuration gets new balancers (one per group per core).
//! A group whose servers are unchanged carries on its predecessor's
//! round-robin ([`GroupBalancer::carry_on_from`]); any other starts its
//! passes at an offset ([`GroupBalancer::starting_at`]: the core and the
//! reload's number), so that frequent reloads do not send every core's
//! first connections to the first server (nginx, which rebuilds its peers
//! from zero at each reload, does).
//!
//! Time: nginx keeps `checked`/`accessed` in whole seconds (`ngx_time()`) and
//! compares `now - checked <= fail_timeout` in seconds; ringway compares exact
//! [`Instant`]s and [`Duration`]s, so a mark lasts exactly `fail_timeout`.

use std::cell::Cell;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The most servers one group may have: an [`Attempt`]'s tried set is a
/// fixed bitset of this many bits, so that choosing never allocates. The
/// config enforces it.
pub const MAX_SERVERS: usize = 256;

/// `ip_hash` rehashes past unavailable servers this many times, then falls
/// back to round-robin (nginx: `if (++iphp->tries > 20)`).
const IP_HASH_MAX_MISSES: u8 = 20;

/// Parameters of one server of a group, as configured (nginx defaults:
/// `weight=1 max_fails=1 fail_timeout=10s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerParams {
    /// Share of the choices (round-robin), of the connections (least-conn)
    /// or of the hash space (ip-hash). At least 1.
    pub weight: u32,
    /// Failures within `fail_timeout` that mark the server unavailable for
    /// `fail_timeout`; 0: never marked.
    pub max_fails: u32,
    /// The window in which `max_fails` failures count, and how long the
    /// mark then lasts.
    pub fail_timeout: Duration,
    /// Used only when no primary server is available to the attempt.
    pub backup: bool,
    /// Never chosen (kept in the group so that ip-hash keeps the others'
    /// mapping).
    pub down: bool,
}

impl Default for ServerParams {
    /// nginx's defaults: `weight=1 max_fails=1 fail_timeout=10s`.
    fn default() -> ServerParams {
        ServerParams {
            weight: 1,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            backup: false,
            down: false,
        }
    }
}

/// How a group chooses among its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// nginx's default: smooth weighted round-robin.
    RoundRobin,
    /// nginx's `least_conn`: fewest connections per weight, ties by
    /// weighted round-robin.
    LeastConn,
    /// nginx's `ip_hash`. `full_address`: the key is all 4 bytes of an IPv4
    /// client instead of nginx's first 3 (a /24 otherwise lands on one
    /// server); IPv6 always uses all 16.
    IpHash { full_address: bool },
}

/// One server's configuration and per-core state (nginx's
/// `ngx_http_upstream_rr_peer_t`); lives as long as its [`GroupBalancer`].
#[derive(Debug)]
struct Server {
    params: ServerParams,
    /// Smooth round-robin: grows by `effective_weight` in each pass that
    /// considers the server, falls by the pass's total when chosen.
    current_weight: Cell<i64>,
    /// `weight`, lowered by `weight / max_fails` per failure (not below 0)
    /// and raised back by 1 in each pass that considers the server.
    effective_weight: Cell<i64>,
    /// Failures since the last success that followed a check (nginx never
    /// resets it by time alone).
    fails: Cell<u32>,
    /// When the server last failed (nginx `accessed`); `None`: never (nginx
    /// starts at 0, the epoch).
    accessed: Cell<Option<Instant>>,
    /// Start of the current failure window (nginx `checked`): the last
    /// failure, or a choice made after the previous window ran out.
    checked: Cell<Option<Instant>>,
    /// Connections counted by `next` and not yet given back by `failed` or
    /// `release` (nginx `conns`).
    conns: Cell<u32>,
}

impl Server {
    fn new(params: ServerParams) -> Server {
        Server {
            params,
            current_weight: Cell::new(0),
            effective_weight: Cell::new(i64::from(params.weight)),
            fails: Cell::new(0),
            accessed: Cell::new(None),
            checked: Cell::new(None),
            conns: Cell::new(0),
        }
    }

    fn weight(&self) -> i64 {
        i64::from(self.params.weight)
    }

    /// Marked: `max_fails && fails >= max_fails && now - checked <=
    /// fail_timeout` (the test in every nginx `get` function).
    fn failed(&self, now: Instant) -> bool {
        self.params.max_fails != 0
            && self.fails.get() >= self.params.max_fails
            && self.checked.get().is_some_and(|checked| {
                now.saturating_duration_since(checked) <= self.params.fail_timeout
            })
    }

    /// Not a candidate now: `down`, or marked failed.
    fn skipped(&self, now: Instant) -> bool {
        self.params.down || self.failed(now)
    }

    /// On being chosen, nginx's `if (now - best->checked >
    /// best->fail_timeout) best->checked = now;`: a choice after the window
    /// opens a new one, and a success on it then clears `fails`.
    fn touch(&self, now: Instant) {
        let expired = self.checked.get().is_none_or(|checked| {
            now.saturating_duration_since(checked) > self.params.fail_timeout
        });
        if expired {
            self.checked.set(Some(now));
        }
    }

    /// One smooth round-robin step for a candidate (shared by
    /// `ngx_http_upstream_get_peer` and least_conn's tie pass): returns the
    /// effective weight to add to the pass's total.
    fn step(&self) -> i64 {
        let effective = self.effective_weight.get();
        self.current_weight
            .set(self.current_weight.get() + effective);
        if effective < self.weight() {
            self.effective_weight.set(effective + 1);
        }
        effective
    }

    fn release(&self) {
        let conns = self.conns.get();
        debug_assert!(conns > 0, "release without a counted connection");
        self.conns.set(conns.saturating_sub(1));
    }
}

/// Per-core state of one group. Servers are indexed in configuration order;
/// backups may be anywhere in it and form their own tier (nginx's
/// `peers->next`). `!Sync`: one per core.
#[derive(Debug)]
pub struct GroupBalancer {
    method: Method,
    /// Every server, in configuration order.
    servers: Box<[Server]>,
    /// Indexes of the primary servers, in configuration order (nginx's
    /// `peers`).
    primary: Box<[usize]>,
    /// Indexes of the backup servers, in configuration order (nginx's
    /// `peers->next`).
    backup: Box<[usize]>,
    /// nginx's `peers->single`: one primary server and no backup
    /// (`ngx_http_upstream_init_round_robin` sets it from the primary count,
    /// then clears it when backups exist). Its server's failures are never
    /// counted or checked; only `down` keeps it from being chosen.
    single: bool,
    /// Sum of the primary servers' weights, `down` ones included (nginx's
    /// `peers->total_weight`, which ip-hash walks).
    total_weight: u64,
    /// Where a pass over a tier begins (modulo its length): smooth
    /// round-robin's and least-conn's ties go to the first server from
    /// here. 0 is nginx's order.
    start: usize,
}

/// One client connection's choosing (nginx's per-request
/// `ngx_http_upstream_rr_peer_data_t` plus ip-hash's
/// `ngx_http_upstream_ip_hash_peer_data_t`). Lives until the connection has
/// its backend or gives up; never allocates.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Servers already given to this connection, by configuration index.
    /// nginx indexes by position in the tier and clears the set on moving to
    /// the backups; configuration indexes need no clearing.
    tried: [u64; MAX_SERVERS / 64],
    /// The primary tier gave nothing: this and later tries use the backups.
    on_backup: bool,
    /// ip-hash key bytes (`key[..key_len]`).
    key: [u8; 16],
    key_len: u8,
    /// ip-hash: the running hash, continued by the next try.
    hash: usize,
    /// ip-hash: rehashes past unavailable servers so far (nginx
    /// `iphp->tries`); above [`IP_HASH_MAX_MISSES`], round-robin.
    misses: u8,
}

impl Attempt {
    /// `server` was already given to this connection.
    pub fn tried(&self, server: usize) -> bool {
        self.tried[server / 64] & (1 << (server % 64)) != 0
    }

    /// The primary servers gave nothing and this connection now uses the
    /// backups.
    pub fn on_backup(&self) -> bool {
        self.on_backup
    }

    fn set_tried(&mut self, server: usize) {
        self.tried[server / 64] |= 1 << (server % 64);
    }
}

impl GroupBalancer {
    /// The state of one group on one core. The config guarantees what is
    /// asserted: 1 to [`MAX_SERVERS`] servers, at least one primary, weights
    /// of at least 1, no backup with ip-hash (nginx rejects `backup` there).
    pub fn new(servers: &[ServerParams], method: Method) -> GroupBalancer {
        assert!(
            servers.len() <= MAX_SERVERS,
            "config caps a group at {MAX_SERVERS} servers"
        );
        assert!(
            servers.iter().all(|s| s.weight >= 1),
            "config rejects weight 0"
        );
        let primary: Box<[usize]> = (0..servers.len()).filter(|&i| !servers[i].backup).collect();
        let backup: Box<[usize]> = (0..servers.len()).filter(|&i| servers[i].backup).collect();
        assert!(!primary.is_empty(), "config guarantees a primary server");
        if let Method::IpHash { .. } = method {
            assert!(backup.is_empty(), "config rejects backup with ip-hash");
        }
        GroupBalancer {
            method,
            total_weight: primary.iter().map(|&i| u64::from(servers[i].weight)).sum(),
            single: primary.len() == 1 && backup.is_empty(),
            servers: servers.iter().copied().map(Server::new).collect(),
            primary,
            backup,
            start: 0,
        }
    }

    /// The same, its passes beginning at `offset` (modulo the tier's
    /// length): with equal weights, its first choice is the `offset`-th
    /// server. Any offset keeps the round-robin smooth and exact: each
    /// cycle of total-weight choices gives each server its weight.
    pub fn starting_at(mut self, offset: usize) -> GroupBalancer {
        self.start = offset;
        self
    }

    /// Carry on `old`'s round-robin, where it left off (after a reload that
    /// kept the group's servers): its current weights and its offset, so
    /// that the two balancers' choices together are one smooth sequence.
    /// Connection counts and failure marks stay with `old` (its
    /// connections give their counts back to it). Only when both have the
    /// same method and the same servers' parameters, in order (the caller
    /// checks that they are the same servers); returns whether it did.
    pub fn carry_on_from(&mut self, old: &GroupBalancer) -> bool {
        let same = self.method == old.method
            && self.servers.len() == old.servers.len()
            && self
                .servers
                .iter()
                .zip(old.servers.iter())
                .all(|(a, b)| a.params == b.params);
        if same {
            for (new, old) in self.servers.iter().zip(old.servers.iter()) {
                new.current_weight.set(old.current_weight.get());
            }
            self.start = old.start;
        }
        same
    }

    /// Start choosing for one connection from `client` (the client address
    /// after trusted-proxy rules).
    pub fn attempt(&self, client: IpAddr) -> Attempt {
        let (key, key_len) = match self.method {
            Method::IpHash { full_address } => ip_hash_key(client, full_address),
            Method::RoundRobin | Method::LeastConn => ([0; 16], 0),
        };
        Attempt {
            tried: [0; MAX_SERVERS / 64],
            on_backup: false,
            key,
            key_len: key_len as u8,
            hash: 89,
            misses: 0,
        }
    }

    /// The next server to try, or `None` when no server is available any
    /// more (every one tried, down, or failed within `fail_timeout`, backups
    /// included). Counts a connection on the chosen server (nginx's
    /// `peer->conns++`).
    pub fn next(&self, attempt: &mut Attempt, now: Instant) -> Option<usize> {
        let chosen = match self.method {
            Method::RoundRobin => self.round_robin(attempt, now),
            Method::LeastConn => self.least_conn(attempt, now),
            Method::IpHash { .. } => self.ip_hash(attempt, now),
        }?;
        let server = &self.servers[chosen];
        server.conns.set(server.conns.get() + 1);
        Some(chosen)
    }

    /// The connect to `server` failed or timed out
    /// (`ngx_http_upstream_free_round_robin_peer` with `NGX_PEER_FAILED`):
    /// `fails++`, `accessed = checked = now`, `effective_weight -=
    /// weight / max_fails` (not below 0). Also releases its connection count.
    pub fn failed(&self, server: usize, now: Instant) {
        let s = &self.servers[server];
        s.release();
        if self.single {
            // nginx: a single peer only gives back its conns.
            return;
        }
        s.fails.set(s.fails.get().saturating_add(1));
        s.accessed.set(Some(now));
        s.checked.set(Some(now));
        // nginx: `if (peer->max_fails) effective_weight -= weight /
        // max_fails`, then the clamp at 0.
        if let Some(step) = s.params.weight.checked_div(s.params.max_fails) {
            let lowered = s.effective_weight.get() - i64::from(step);
            s.effective_weight.set(lowered.max(0));
        }
    }

    /// The connect to `server` succeeded (nginx's free without
    /// `NGX_PEER_FAILED`: `if (accessed < checked) fails = 0`, i.e. only a
    /// success on a choice made after the failure window ran out clears the
    /// count). Keeps the connection count, given back by
    /// [`GroupBalancer::release`] when the tunnel ends. nginx runs this when
    /// the request ends; for a tunnel that is its whole life, so ringway runs
    /// it once the connect is done. `_now` is unused, as in nginx.
    pub fn succeeded(&self, server: usize, _now: Instant) {
        let s = &self.servers[server];
        if !self.single && s.accessed.get() < s.checked.get() {
            s.fails.set(0);
        }
    }

    /// A connection on `server` ended (`conns--`).
    pub fn release(&self, server: usize) {
        self.servers[server].release();
    }

    /// Connections on `server` counted by this core.
    pub fn conns(&self, server: usize) -> u32 {
        self.servers[server].conns.get()
    }

    /// `server` is marked unavailable now (`max_fails` reached within
    /// `fail_timeout`); for metrics and logs. Never for a single server.
    pub fn unavailable(&self, server: usize, now: Instant) -> bool {
        !self.single && self.servers[server].failed(now)
    }

    /// The tier this attempt chooses from.
    fn tier(&self, attempt: &Attempt) -> &[usize] {
        if attempt.on_backup {
            &self.backup
        } else {
            &self.primary
        }
    }

    /// The position in `tier` where a pass begins.
    fn first_of(&self, tier: &[usize]) -> usize {
        self.start.checked_rem(tier.len()).unwrap_or(0)
    }

    /// nginx's `failed:` label: the primary tier gave nothing, so this and
    /// later tries use the backups, if there are any and the attempt is not
    /// on them already.
    fn enter_backup(&self, attempt: &mut Attempt) -> bool {
        if attempt.on_backup || self.backup.is_empty() {
            return false;
        }
        attempt.on_backup = true;
        true
    }

    /// `ngx_http_upstream_get_round_robin_peer`.
    fn round_robin(&self, attempt: &mut Attempt, now: Instant) -> Option<usize> {
        if self.single {
            // nginx takes the single peer without looking at fails or the
            // tried set: it gets one try (`pc->tries = 1`, and its free sets
            // 0). The tried set gives that one try here.
            let only = self.primary[0];
            if attempt.tried(only) || self.servers[only].params.down {
                return None;
            }
            attempt.set_tried(only);
            return Some(only);
        }
        if let Some(chosen) = self.smooth_weighted(attempt, now) {
            return Some(chosen);
        }
        if self.enter_backup(attempt) {
            return self.smooth_weighted(attempt, now);
        }
        None
    }

    /// `ngx_http_upstream_get_peer`: smooth weighted round-robin over the
    /// attempt's tier, skipping tried, down and failed servers.
    fn smooth_weighted(&self, attempt: &mut Attempt, now: Instant) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut total = 0;
        let tier = self.tier(attempt);
        let (wrapped, from_first) = tier.split_at(self.first_of(tier));
        for &i in from_first.iter().chain(wrapped) {
            let s = &self.servers[i];
            if attempt.tried(i) || s.skipped(now) {
                continue;
            }
            total += s.step();
            if best.is_none_or(|b| s.current_weight.get() > self.servers[b].current_weight.get()) {
                best = Some(i);
            }
        }
        let best = best?;
        let s = &self.servers[best];
        s.current_weight.set(s.current_weight.get() - total);
        s.touch(now);
        attempt.set_tried(best);
        Some(best)
    }

    /// `ngx_http_upstream_get_least_conn_peer`.
    fn least_conn(&self, attempt: &mut Attempt, now: Instant) -> Option<usize> {
        if self.single {
            return self.round_robin(attempt, now);
        }
        if let Some(chosen) = self.least_conn_tier(attempt, now) {
            return Some(chosen);
        }
        if self.enter_backup(attempt) {
            return self.least_conn_tier(attempt, now);
        }
        None
    }

    /// The least-conn pass over the attempt's tier: the lowest
    /// `conns / weight`, compared as `conns * best.weight < best.conns *
    /// weight`; if several share it (`many`), a smooth round-robin pass over
    /// those, starting at the first of them.
    fn least_conn_tier(&self, attempt: &mut Attempt, now: Instant) -> Option<usize> {
        // conns * weight fits in u64 (u32 * u32); nginx multiplies ngx_uint_t.
        let load =
            |of: &Server, by: &Server| u64::from(of.conns.get()) * u64::from(by.params.weight);
        let tier = self.tier(attempt);
        // Positions count from where the pass begins.
        let first = self.first_of(tier);
        let at = |p: usize| tier[(first + p) % tier.len()];
        let mut best: Option<usize> = None; // position in the pass
        let mut many = false;
        for p in 0..tier.len() {
            let i = at(p);
            let s = &self.servers[i];
            if attempt.tried(i) || s.skipped(now) {
                continue;
            }
            match best {
                None => {
                    best = Some(p);
                    many = false;
                }
                Some(b) => {
                    let b = &self.servers[at(b)];
                    if load(s, b) < load(b, s) {
                        best = Some(p);
                        many = false;
                    } else if load(s, b) == load(b, s) {
                        many = true;
                    }
                }
            }
        }
        let mut best = best?;
        let mut total = 0;
        if many {
            // From the first of the least loaded on; `best` moves on below.
            let from = best;
            for p in from..tier.len() {
                let i = at(p);
                let s = &self.servers[i];
                let b = &self.servers[at(best)];
                // nginx's order: tried, down, same load, failed.
                if attempt.tried(i) || s.params.down || load(s, b) != load(b, s) || s.failed(now) {
                    continue;
                }
                total += s.step();
                if s.current_weight.get() > b.current_weight.get() {
                    best = p;
                }
            }
        }
        let chosen = at(best);
        let s = &self.servers[chosen];
        s.current_weight.set(s.current_weight.get() - total);
        s.touch(now);
        attempt.set_tried(chosen);
        Some(chosen)
    }

    /// `ngx_http_upstream_get_ip_hash_peer` (the current one: servers that
    /// are down or failed are rehashed past without entering the tried set,
    /// and the 21st miss falls back to round-robin with the same tried set).
    fn ip_hash(&self, attempt: &mut Attempt, now: Instant) -> Option<usize> {
        if attempt.misses > IP_HASH_MAX_MISSES || self.single {
            return self.round_robin(attempt, now);
        }
        let mut hash = attempt.hash;
        let chosen = loop {
            hash = ip_hash_round(hash, &attempt.key[..usize::from(attempt.key_len)]);
            // Walk the weights over every primary server, down ones
            // included, so that `down` keeps the others' mapping.
            let mut w = hash as u64 % self.total_weight;
            let mut p = 0;
            while w >= u64::from(self.servers[self.primary[p]].params.weight) {
                w -= u64::from(self.servers[self.primary[p]].params.weight);
                p += 1;
            }
            let i = self.primary[p];
            if !attempt.tried(i) && !self.servers[i].skipped(now) {
                break i;
            }
            attempt.misses += 1;
            if attempt.misses > IP_HASH_MAX_MISSES {
                return self.round_robin(attempt, now);
            }
        };
        self.servers[chosen].touch(now);
        attempt.set_tried(chosen);
        attempt.hash = hash;
        Some(chosen)
    }
}

/// nginx's ip-hash key of a client: the first 3 bytes of an IPv4 address
/// (all 4 with `full_address`), all 16 of an IPv6 address. Returns the key
/// bytes (`key[..len]`) and `len`. An IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`) counts as its IPv4 address: a dual-stack listener sees
/// IPv4 clients that way, where nginx's usual `ipv6only=on` listeners see
/// them as IPv4.
///
/// The hash over the key starts at 89 and takes, for each byte,
/// `hash = (hash * 113 + byte) % 6271`; `hash % total_weight` then walks the
/// servers' weights.
pub fn ip_hash_key(ip: IpAddr, full_address: bool) -> ([u8; 16], usize) {
    let v4 = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4,
            None => return (v6.octets(), 16),
        },
    };
    let len = if full_address { 4 } else { 3 };
    let mut key = [0; 16];
    key[..len].copy_from_slice(&v4.octets()[..len]);
    (key, len)
}

/// One round of nginx's ip-hash over the key bytes.
fn ip_hash_round(hash: usize, key: &[u8]) -> usize {
    key.iter()
        .fold(hash, |hash, &byte| (hash * 113 + usize::from(byte)) % 6271)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const SECOND: Duration = Duration::from_secs(1);

    fn weighted(weight: u32) -> ServerParams {
        ServerParams {
            weight,
            ..ServerParams::default()
        }
    }

    fn group(weights: &[u32], method: Method) -> GroupBalancer {
        let servers: Vec<ServerParams> = weights.iter().map(|&w| weighted(w)).collect();
        GroupBalancer::new(&servers, method)
    }

    /// The first choice of a fresh attempt, released at once.
    fn first(g: &GroupBalancer, now: Instant) -> usize {
        let mut a = g.attempt(CLIENT);
        let i = g.next(&mut a, now).expect("a server");
        g.release(i);
        i
    }

    /// Every choice of one attempt whose tries all fail to connect (without
    /// reporting them, so that no mark changes), in order.
    fn exhaust(g: &GroupBalancer, client: IpAddr, now: Instant) -> Vec<usize> {
        let mut a = g.attempt(client);
        let mut out = Vec::new();
        while let Some(i) = g.next(&mut a, now) {
            g.release(i);
            out.push(i);
        }
        assert_eq!(g.next(&mut a, now), None, "None stays None");
        out
    }

    /// Make one attempt reach `server` (others are released unreported);
    /// its connection stays counted.
    fn reach(g: &GroupBalancer, server: usize, now: Instant) {
        let mut a = g.attempt(CLIENT);
        while let Some(i) = g.next(&mut a, now) {
            if i == server {
                return;
            }
            g.release(i);
        }
        panic!("server {server} was not offered");
    }

    // ---- smooth weighted round-robin ----

    #[test]
    fn smooth_wrr_5_1_1_gives_nginx_sequence() {
        // The sequence in nginx's commit message for smooth weighted
        // round-robin: { a, a, b, a, c, a, a }, then again.
        let g = group(&[5, 1, 1], Method::RoundRobin);
        let t = Instant::now();
        let picks: Vec<usize> = (0..14).map(|_| first(&g, t)).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn smooth_wrr_1000_picks_over_3_2_1() {
        // Period 6 (a b a c b a): 166 periods plus a b a c.
        let g = group(&[3, 2, 1], Method::RoundRobin);
        let t = Instant::now();
        let mut counts = [0; 3];
        for _ in 0..1000 {
            counts[first(&g, t)] += 1;
        }
        assert_eq!(counts, [500, 333, 167]);
    }

    // ---- reloads: one generation after another ----

    /// `generations` balancers in turn, each made as a reload makes it
    /// (`make(previous, number)`), each taking `per` connections: how many
    /// each server got.
    fn over_generations(
        weights: &[u32],
        generations: usize,
        per: usize,
        make: impl Fn(Option<&GroupBalancer>, usize) -> GroupBalancer,
    ) -> Vec<usize> {
        let t = Instant::now();
        let mut counts = vec![0; weights.len()];
        let mut previous: Option<GroupBalancer> = None;
        for n in 0..generations {
            let g = make(previous.as_ref(), n);
            for _ in 0..per {
                counts[first(&g, t)] += 1;
            }
            previous = Some(g);
        }
        counts
    }

    fn params(weights: &[u32]) -> Vec<ServerParams> {
        weights.iter().map(|&w| weighted(w)).collect()
    }

    #[test]
    fn a_reload_that_keeps_the_servers_carries_on_the_round_robin() {
        for method in [Method::RoundRobin, Method::LeastConn] {
            for (weights, want) in [
                (&[1, 1, 1][..], &[100, 100, 100][..]),
                (&[5, 1, 1], &[500, 100, 100]),
                (&[3, 2, 1], &[350, 233, 117]),
            ] {
                let total = want.iter().sum::<usize>();
                // One connection per generation: before, every one went to
                // the first server.
                let counts = over_generations(weights, total, 1, |prev, _| {
                    let mut g = GroupBalancer::new(&params(weights), method);
                    if let Some(prev) = prev {
                        assert!(g.carry_on_from(prev));
                    }
                    g
                });
                assert_eq!(counts, want, "{method:?} {weights:?}");
                // The sequence is the one a single balancer gives.
                let g = GroupBalancer::new(&params(weights), method);
                let t = Instant::now();
                let mut one = vec![0; weights.len()];
                for _ in 0..total {
                    one[first(&g, t)] += 1;
                }
                assert_eq!(one, counts, "{method:?} {weights:?}");
            }
        }
    }

    #[test]
    fn without_a_predecessor_each_generation_starts_at_its_offset() {
        // Servers changed at each reload: nothing to carry on; the offset
        // (the reload's number here) spreads the first choices.
        let counts = over_generations(&[1, 1, 1, 1], 400, 1, |_, n| {
            GroupBalancer::new(&params(&[1, 1, 1, 1]), Method::RoundRobin).starting_at(n)
        });
        assert_eq!(counts, [100, 100, 100, 100]);
        let counts = over_generations(&[1, 1, 1], 300, 1, |_, n| {
            GroupBalancer::new(&params(&[1, 1, 1]), Method::LeastConn).starting_at(n)
        });
        assert_eq!(counts, [100, 100, 100]);
        // Cores at their own offsets: their first choices differ.
        let t = Instant::now();
        let firsts: Vec<usize> = (0..6)
            .map(|core| first(&group(&[1, 1, 1], Method::RoundRobin).starting_at(core), t))
            .collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn any_offset_keeps_the_round_robin_smooth_and_exact() {
        let t = Instant::now();
        for weights in [&[5, 1, 1][..], &[3, 2, 1], &[1, 1, 1, 1, 1], &[2, 7, 1, 4]] {
            let total: u32 = weights.iter().sum();
            for offset in 0..weights.len() + 2 {
                for method in [Method::RoundRobin, Method::LeastConn] {
                    let g = GroupBalancer::new(&params(weights), method).starting_at(offset);
                    // Every window of one cycle, over three cycles, gives
                    // each server exactly its weight.
                    let picks: Vec<usize> = (0..3 * total).map(|_| first(&g, t)).collect();
                    for window in picks.windows(total as usize) {
                        let mut counts = vec![0u32; weights.len()];
                        for &p in window {
                            counts[p] += 1;
                        }
                        assert_eq!(counts, weights, "{method:?} offset {offset}: {picks:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn nothing_is_carried_on_from_other_servers_or_another_method() {
        let t = Instant::now();
        let old = group(&[1, 1], Method::RoundRobin).starting_at(1);
        assert_eq!(first(&old, t), 1);
        let mut other_weights = group(&[2, 1], Method::RoundRobin);
        assert!(!other_weights.carry_on_from(&old));
        assert_eq!(first(&other_weights, t), 0, "a fresh start");
        let mut other_method = group(&[1, 1], Method::LeastConn);
        assert!(!other_method.carry_on_from(&old));
        let mut more = group(&[1, 1, 1], Method::RoundRobin);
        assert!(!more.carry_on_from(&old));
        let mut same = group(&[1, 1], Method::RoundRobin);
        assert!(same.carry_on_from(&old));
        assert_eq!(first(&same, t), 0, "where the old one left off");
        assert_eq!(first(&same, t), 1);
    }

    #[test]
    fn a_failure_lowers_effective_weight_which_recovers_by_one_per_pass() {
        let t0 = Instant::now();
        let p = |weight, max_fails| ServerParams {
            weight,
            max_fails,
            ..ServerParams::default()
        };
        // weight / max_fails = 2 per failure; the pass that reaches the
        // server again gives 1 back first.
        let g = GroupBalancer::new(&[p(6, 3), p(1, 3)], Method::RoundRobin);
        let eff = |i: usize| g.servers[i].effective_weight.get();
        for expected in [4, 3] {
            reach(&g, 0, t0);
            g.failed(0, t0);
            assert_eq!(eff(0), expected);
        }

        // weight / max_fails = 5: to 0, and never below.
        let g = GroupBalancer::new(&[p(5, 1), p(1, 1)], Method::RoundRobin);
        let eff = |i: usize| g.servers[i].effective_weight.get();
        reach(&g, 0, t0);
        g.failed(0, t0);
        assert_eq!(eff(0), 0);
        // Marked: no pass considers server 0, so nothing recovers.
        assert_eq!(first(&g, t0), 1);
        assert_eq!(eff(0), 0);
        // After fail_timeout passes consider it again: +1 each, and with a
        // small effective weight it is not chosen at once.
        let t1 = t0 + 11 * SECOND;
        assert_eq!(first(&g, t1), 1);
        assert_eq!(eff(0), 1);
        reach(&g, 0, t1); // two passes: 3
        g.failed(0, t1);
        assert_eq!(eff(0), 0, "3 - 5, clamped");
        // A success on the probe after the window clears the mark.
        let t2 = t1 + 11 * SECOND;
        reach(&g, 0, t2);
        g.succeeded(0, t2);
        g.release(0);
        for _ in 0..10 {
            first(&g, t2);
        }
        assert_eq!(eff(0), 5, "back to weight, not above");
    }

    // ---- least_conn ----

    #[test]
    fn least_conn_sends_new_connections_to_the_least_loaded() {
        let g = group(&[1, 1], Method::LeastConn);
        let t = Instant::now();
        let a = first_held(&g, t);
        let b = first_held(&g, t);
        assert_ne!(a, b, "the second goes to the idle server");
        let c = first_held(&g, t); // 1:1, a tie
        let d = first_held(&g, t);
        assert_ne!(c, d, "2:1 then goes to the other");
        assert_eq!((g.conns(0), g.conns(1)), (2, 2));
        g.release(1);
        g.release(1);
        for _ in 0..2 {
            assert_eq!(first_held(&g, t), 1);
        }
        assert_eq!(first_held(&g, t), 0, "2:2, tie, the round-robin pass");
    }

    /// Like `first`, but the connection stays counted.
    fn first_held(g: &GroupBalancer, now: Instant) -> usize {
        let mut a = g.attempt(CLIENT);
        g.next(&mut a, now).expect("a server")
    }

    #[test]
    fn least_conn_compares_conns_per_weight() {
        let g = group(&[3, 1], Method::LeastConn);
        let t = Instant::now();
        // 0:0 tie (round-robin: 0), 1:0 -> 1, 1:1 (1/3 < 1/1) -> 0,
        // 2:1 (2/3 < 1/1) -> 0; unweighted it would go to 1.
        let picks: Vec<usize> = (0..4).map(|_| first_held(&g, t)).collect();
        assert_eq!(picks, [0, 1, 0, 0]);
        assert_eq!(first_held(&g, t), 0, "3:1 is a tie: round-robin");
        assert_eq!(first_held(&g, t), 1, "4:1 (4/3 > 1/1)");
    }

    #[test]
    fn least_conn_breaks_ties_by_weighted_round_robin() {
        let g = group(&[2, 1], Method::LeastConn);
        let t = Instant::now();
        let picks: Vec<usize> = (0..6).map(|_| first(&g, t)).collect();
        assert_eq!(picks, [0, 1, 0, 0, 1, 0]);
    }

    #[test]
    fn least_conn_uses_backups_only_when_every_primary_is_unavailable() {
        let t = Instant::now();
        let backup = ServerParams {
            backup: true,
            ..ServerParams::default()
        };
        let p = ServerParams::default();
        let g = GroupBalancer::new(&[p, backup, p], Method::LeastConn);
        // Primaries loaded, the backup idle: still a primary.
        for _ in 0..10 {
            assert_ne!(first_held(&g, t), 1);
        }
        // Tried: one attempt goes 0, 2 then the backup.
        let tried = exhaust(&g, CLIENT, t);
        assert_eq!(tried.len(), 3);
        assert_eq!(tried[2], 1);
        // One primary failed: the other, however loaded.
        reach(&g, 0, t);
        g.failed(0, t);
        assert_eq!(first(&g, t), 2);
        // Both failed: the backup.
        reach(&g, 2, t);
        g.failed(2, t);
        let mut a = g.attempt(CLIENT);
        assert_eq!(g.next(&mut a, t), Some(1));
        assert!(a.on_backup());
        assert_eq!(g.next(&mut a, t), None);
    }

    // ---- ip_hash ----

    /// nginx's ip_hash, written out plainly: the servers one attempt gets
    /// when every try fails, until it would fall back to round-robin.
    fn model_ip_hash(ip: IpAddr, full: bool, weights: &[u32], down: &[bool]) -> Vec<usize> {
        let key: Vec<u8> = match ip {
            IpAddr::V4(v4) => v4.octets()[..if full { 4 } else { 3 }].to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        let total: u32 = weights.iter().sum();
        let mut tried = vec![false; weights.len()];
        let mut out = Vec::new();
        let mut hash = 89;
        let mut misses = 0;
        loop {
            for &b in &key {
                hash = (hash * 113 + b as usize) % 6271;
            }
            let mut w = (hash % total as usize) as u32;
            let mut p = 0;
            while w >= weights[p] {
                w -= weights[p];
                p += 1;
            }
            if !tried[p] && !down[p] {
                tried[p] = true;
                out.push(p);
                continue;
            }
            misses += 1;
            if misses > 20 {
                return out;
            }
        }
    }

    fn ip_hash_group(weights: &[u32], down: &[bool], full_address: bool) -> GroupBalancer {
        let servers: Vec<ServerParams> = weights
            .iter()
            .zip(down)
            .map(|(&weight, &down)| ServerParams {
                weight,
                down,
                ..ServerParams::default()
            })
            .collect();
        GroupBalancer::new(&servers, Method::IpHash { full_address })
    }

    fn clients() -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = (0..40u8)
            .flat_map(|x| [1u8, 9, 77, 200, 254].map(|y| IpAddr::V4(Ipv4Addr::new(127, 0, x, y))))
            .collect();
        for i in 0..40u16 {
            out.push(IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                i,
                0,
                0,
                0,
                i * 7,
                1,
            )));
        }
        out
    }

    #[test]
    fn ip_hash_matches_nginx_formula() {
        let weights = [2, 1, 3, 1];
        let down = [false, true, false, false];
        let t = Instant::now();
        for full in [false, true] {
            let g = ip_hash_group(&weights, &down, full);
            for client in clients() {
                let expected = model_ip_hash(client, full, &weights, &down);
                let got = exhaust(&g, client, t);
                assert_eq!(
                    &got[..expected.len()],
                    &expected[..],
                    "{client} full={full}"
                );
                // Round-robin finishes the rest, never repeating.
                let mut sorted = got.clone();
                sorted.sort();
                assert_eq!(sorted, [0, 2, 3], "{client}");
            }
        }
    }

    #[test]
    fn ip_hash_down_server_keeps_the_others_mapping() {
        let weights = [1, 2, 1, 1];
        let t = Instant::now();
        let all_up = ip_hash_group(&weights, &[false; 4], false);
        let one_down = ip_hash_group(&weights, &[false, true, false, false], false);
        let mut rehashed = 0;
        for client in clients() {
            let before = first_of(&all_up, client, t);
            let after = first_of(&one_down, client, t);
            if before == 1 {
                rehashed += 1;
                assert_ne!(after, 1);
                assert_eq!(
                    after,
                    model_ip_hash(client, false, &weights, &[false, true, false, false])[0]
                );
            } else {
                assert_eq!(after, before, "{client} keeps its server");
            }
        }
        assert!(rehashed > 0, "the table has clients of the down server");
    }

    fn first_of(g: &GroupBalancer, client: IpAddr, now: Instant) -> usize {
        let mut a = g.attempt(client);
        let i = g.next(&mut a, now).expect("a server");
        g.release(i);
        i
    }

    #[test]
    fn ip_hash_continues_the_hash_and_falls_back_to_round_robin() {
        // A heavy down server: most rehashes miss, and some clients run out
        // of the 21 hashes and get round-robin, with the same tried set.
        let weights = [1, 1, 400];
        let down = [false, false, true];
        let g = ip_hash_group(&weights, &down, true);
        let t = Instant::now();
        let mut fell_back = 0;
        for client in clients() {
            let expected = model_ip_hash(client, true, &weights, &down);
            let got = exhaust(&g, client, t);
            assert_eq!(&got[..expected.len()], &expected[..]);
            assert_eq!(got.len(), 2, "{client}: both servers, once each");
            assert_ne!(got[0], got[1]);
            fell_back += usize::from(expected.len() < 2);
        }
        assert!(fell_back > 0, "the table covers the round-robin fallback");
    }

    #[test]
    fn ip_hash_full_address_changes_the_key() {
        let ip = IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4));
        assert_eq!(
            ip_hash_key(ip, false),
            ([1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 3)
        );
        assert_eq!(
            ip_hash_key(ip, true),
            ([1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 4)
        );
        assert_eq!(ip_hash_round(89, &[1, 2, 3]), 751);
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
        assert_eq!(ip_hash_key(IpAddr::V6(v6), false), (v6.octets(), 16));
        assert_eq!(ip_hash_key(IpAddr::V6(v6), true), (v6.octets(), 16));
        // One /24: one server with nginx's key, several with the full one.
        let t = Instant::now();
        let spread = |full| {
            let g = group(&[1, 1, 1, 1], Method::IpHash { full_address: full });
            let mut seen = [false; 4];
            for d in 0..=255 {
                seen[first_of(&g, IpAddr::V4(Ipv4Addr::new(10, 1, 2, d)), t)] = true;
            }
            seen.iter().filter(|&&s| s).count()
        };
        assert_eq!(spread(false), 1);
        assert_eq!(spread(true), 4);
    }

    #[test]
    fn ip_hash_key_of_v4_mapped_is_the_v4_key() {
        let v4 = Ipv4Addr::new(1, 2, 3, 4);
        for full in [false, true] {
            assert_eq!(
                ip_hash_key(IpAddr::V6(v4.to_ipv6_mapped()), full),
                ip_hash_key(IpAddr::V4(v4), full)
            );
        }
        // Not the IPv4-compatible form (::1.2.3.4): that is IPv6.
        assert_eq!(
            ip_hash_key(IpAddr::V6(v4.to_ipv6_compatible()), false).1,
            16
        );
    }

    // ---- failures ----

    fn with_fails(max_fails: u32) -> ServerParams {
        ServerParams {
            max_fails,
            ..ServerParams::default()
        }
    }

    #[test]
    fn max_fails_within_fail_timeout_marks_the_server() {
        let g = GroupBalancer::new(&[with_fails(2), with_fails(2)], Method::RoundRobin);
        let t0 = Instant::now();
        reach(&g, 0, t0);
        g.failed(0, t0);
        assert!(!g.unavailable(0, t0), "one failure of two");
        reach(&g, 0, t0 + SECOND);
        g.failed(0, t0 + SECOND);
        assert_eq!(g.conns(0), 0, "failed gives back the conn count");
        // The window restarts at the last failure (checked = now).
        let marked_at = t0 + SECOND;
        for dt in [Duration::ZERO, 5 * SECOND, 10 * SECOND] {
            assert!(g.unavailable(0, marked_at + dt));
            assert_eq!(exhaust(&g, CLIENT, marked_at + dt), [1], "skipped");
        }
        let after = marked_at + 10 * SECOND + Duration::from_nanos(1);
        assert!(!g.unavailable(0, after));
        assert!(exhaust(&g, CLIENT, after).contains(&0), "tried again");
    }

    #[test]
    fn a_success_after_the_window_resets_the_count() {
        let g = GroupBalancer::new(&[with_fails(2), with_fails(2)], Method::RoundRobin);
        let t0 = Instant::now();
        for _ in 0..2 {
            reach(&g, 0, t0);
            g.failed(0, t0);
        }
        assert!(g.unavailable(0, t0));
        // Chosen after fail_timeout: a new window (checked = now); success.
        let t1 = t0 + 11 * SECOND;
        reach(&g, 0, t1);
        g.succeeded(0, t1);
        g.release(0);
        assert_eq!(g.servers[0].fails.get(), 0);
        reach(&g, 0, t1);
        g.failed(0, t1);
        assert!(!g.unavailable(0, t1), "one failure of two again");
    }

    #[test]
    fn after_fail_timeout_one_probe_goes_through_until_it_succeeds() {
        // nginx: choosing a marked server after the window sets checked =
        // now, and fails stays at max_fails, so the server is skipped again
        // for fail_timeout unless that probe succeeds.
        let g = GroupBalancer::new(&[ServerParams::default(); 2], Method::RoundRobin);
        let t0 = Instant::now();
        reach(&g, 0, t0);
        g.failed(0, t0);
        let t1 = t0 + 11 * SECOND;
        assert!(!g.unavailable(0, t1));
        reach(&g, 0, t1);
        assert!(g.unavailable(0, t1), "skipped while the probe is out");
        assert_eq!(exhaust(&g, CLIENT, t1 + SECOND), [1]);
        g.succeeded(0, t1 + SECOND);
        assert!(!g.unavailable(0, t1 + SECOND));
        assert!(exhaust(&g, CLIENT, t1 + SECOND).contains(&0));
    }

    #[test]
    fn a_success_inside_the_window_keeps_the_count() {
        // nginx: fails only clear when the success follows a choice made
        // after the window (accessed < checked); max_fails counts failures
        // within fail_timeout, successes between them or not.
        let g = GroupBalancer::new(&[with_fails(2), with_fails(2)], Method::RoundRobin);
        let t0 = Instant::now();
        reach(&g, 0, t0);
        g.failed(0, t0);
        reach(&g, 0, t0 + SECOND);
        g.succeeded(0, t0 + SECOND);
        g.release(0);
        reach(&g, 0, t0 + 2 * SECOND);
        g.failed(0, t0 + 2 * SECOND);
        assert!(g.unavailable(0, t0 + 2 * SECOND));
    }

    #[test]
    fn max_fails_zero_never_marks() {
        let g = GroupBalancer::new(&[with_fails(0), with_fails(0)], Method::LeastConn);
        let t = Instant::now();
        for _ in 0..10 {
            reach(&g, 0, t);
            g.failed(0, t);
        }
        assert!(!g.unavailable(0, t));
        assert_eq!(exhaust(&g, CLIENT, t).len(), 2);
        assert_eq!(g.servers[0].effective_weight.get(), 1, "no weight / 0");
    }

    #[test]
    fn a_single_server_is_never_marked() {
        let t = Instant::now();
        for method in [
            Method::RoundRobin,
            Method::LeastConn,
            Method::IpHash {
                full_address: false,
            },
        ] {
            let g = GroupBalancer::new(&[ServerParams::default()], method);
            for _ in 0..5 {
                reach(&g, 0, t);
                g.failed(0, t);
                assert!(!g.unavailable(0, t));
            }
            assert_eq!(g.conns(0), 0);
            assert_eq!(exhaust(&g, CLIENT, t), [0], "one try per attempt");
            let down = ServerParams {
                down: true,
                ..ServerParams::default()
            };
            let g = GroupBalancer::new(&[down], method);
            assert_eq!(
                exhaust(&g, CLIENT, t),
                [] as [usize; 0],
                "down still counts"
            );
        }
    }

    #[test]
    fn one_primary_with_a_backup_is_not_single() {
        // nginx clears peers->single when backups exist.
        let backup = ServerParams {
            backup: true,
            ..ServerParams::default()
        };
        let g = GroupBalancer::new(&[backup, ServerParams::default()], Method::RoundRobin);
        let t = Instant::now();
        assert_eq!(first(&g, t), 1);
        reach(&g, 1, t);
        g.failed(1, t);
        assert!(g.unavailable(1, t));
        assert_eq!(exhaust(&g, CLIENT, t), [0]);
    }

    #[test]
    fn tries_never_repeat_and_end_in_none() {
        let t = Instant::now();
        for method in [
            Method::RoundRobin,
            Method::LeastConn,
            Method::IpHash { full_address: true },
        ] {
            let g = group(&[1, 3, 2, 1, 5], method);
            for client in clients().into_iter().take(20) {
                let mut got = exhaust(&g, client, t);
                got.sort();
                assert_eq!(got, [0, 1, 2, 3, 4], "{method:?}");
            }
        }
    }

    #[test]
    fn backups_only_when_primaries_are_down_failed_or_tried() {
        let t = Instant::now();
        let p = ServerParams::default();
        let b = ServerParams {
            backup: true,
            ..ServerParams::default()
        };
        let g = GroupBalancer::new(&[p, b, p, b], Method::RoundRobin);
        for _ in 0..20 {
            assert!([0, 2].contains(&first(&g, t)));
        }
        // Tried: the primaries first, then the backups.
        let order = exhaust(&g, CLIENT, t);
        assert_eq!(order.len(), 4);
        assert!(order[..2].iter().all(|i| [0, 2].contains(i)), "{order:?}");
        assert!(order[2..].iter().all(|i| [1, 3].contains(i)), "{order:?}");
        // Down and failed: straight to the backups.
        let down = ServerParams { down: true, ..p };
        let g = GroupBalancer::new(&[down, b, p, b], Method::RoundRobin);
        reach(&g, 2, t);
        g.failed(2, t);
        let mut a = g.attempt(CLIENT);
        assert!([1, 3].contains(&g.next(&mut a, t).unwrap()));
        assert!(a.on_backup());
    }

    #[test]
    fn conns_count_chosen_connections_until_released() {
        let g = group(&[1, 1], Method::RoundRobin);
        let t = Instant::now();
        let mut a = g.attempt(CLIENT);
        let i = g.next(&mut a, t).unwrap();
        assert_eq!(g.conns(i), 1);
        g.succeeded(i, t);
        assert_eq!(g.conns(i), 1, "the tunnel holds it");
        g.release(i);
        assert_eq!(g.conns(i), 0);
    }
}
