//! A backend killed and restarted under live tunnels.
//!
//! Two backends, `a` and `b`, one group, round-robin; `tunnels` tunnels
//! echo every `period`. Then `b` is killed (SIGKILL), and:
//!
//! 1. every tunnel on `b` ends (ringway passes the backend's close on), and
//!    none on `a` does, nor loses or garbles an echo, then or later;
//! 2. short connections (connect, echo, close) made one after another from
//!    then on until just before `fail_timeout` has passed since `b`'s first
//!    failed connect are all answered by `a`. Half way, `b` is started again
//!    on the same port: it is up, but marked, so still skipped. ringway's
//!    `ringway_upstream_failures_total` for `b` stays at one per core at
//!    most (it was tried once, then skipped, never retried per connection),
//!    and `ringway_upstream_unavailable` says it is marked;
//! 3. after `fail_timeout`, new connections reach `b` again.
//!
//! Finally every tunnel left closes cleanly and ringway's descriptors come
//! back to where they were before the first tunnel.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::hold::procs::{Echo, Metrics, Ringway, TempDir};
use crate::hold::tunnels::{self, Ending, Seen, Tunnels};
use crate::hold::ws::{self, IO_TIMEOUT};
use crate::hold::{count, mib, Setup, Verdict};

#[derive(Debug, Clone)]
pub struct Options {
    pub tunnels: usize,
    /// Each tunnel echoes once per period.
    pub period: Duration,
    /// `fail_timeout` of both servers.
    pub fail_timeout: Duration,
    /// `max_fails` of both servers (1, nginx's default; 0 turns marking
    /// off, which the skip check must then catch).
    pub max_fails: u32,
    /// Short connections made after `fail_timeout`.
    pub probes_after: usize,
}

/// Margin kept on either side of the `fail_timeout` edge, so that the
/// judgement does not hang on the scheduler.
const EDGE: Duration = Duration::from_millis(300);
/// Pause between two probes.
const PROBE_GAP: Duration = Duration::from_millis(20);

const PATH: &str = "/hold/restart";

pub fn run(setup: &Setup, o: &Options) -> Result<Verdict> {
    if o.fail_timeout < EDGE * 4 {
        bail!("--fail-timeout must be at least {:?}", EDGE * 4);
    }
    if o.period * 2 > o.fail_timeout {
        // a's tunnels must echo while b is marked.
        bail!("--period must be at most half of --fail-timeout");
    }
    let mut v = Verdict::new("hold: a backend killed and restarted under live tunnels");
    let dir = TempDir::new("restart")?;
    let a = Echo::start(setup, "a", "127.0.0.1:0".parse()?)?;
    let mut b = Echo::start(setup, "b", "127.0.0.1:0".parse()?)?;
    let server = |e: &Echo| {
        format!(
            "{},max_fails={},fail_timeout={}ms",
            e.addr,
            o.max_fails,
            o.fail_timeout.as_millis()
        )
    };
    let rw = Ringway::start(
        setup,
        &[
            "--upstream".into(),
            server(&a),
            "--upstream".into(),
            server(&b),
            "--access-log".into(),
            dir.path().join("access.log").display().to_string(),
        ],
    )?;
    let b_label = b.addr.to_string();
    let b_server = [("server", b_label.as_str())];
    v.setup = vec![
        format!(
            "ringway {} --workers {} (pid {}), round-robin over a {} and b {}",
            rw.addr,
            setup.workers,
            rw.proc.pid(),
            a.addr,
            b.addr
        ),
        format!(
            "{} tunnels echoing every {:?}; max_fails={} fail_timeout={:?}",
            o.tunnels, o.period, o.max_fails, o.fail_timeout
        ),
    ];
    let s0 = rw.sample()?;

    // Tunnels over both backends.
    let tunnels = Tunnels::open(rw.addr, PATH, o.tunnels, o.period, 1)?;
    let opened = tunnels.seen().iter().filter(|t| t.live()).count();
    v.check(
        "tunnels opened",
        format!("{opened} of {}", o.tunnels),
        "all",
        opened == o.tunnels,
    );
    let before = tunnels.seen();
    let spread = tunnels::spread(&before, &["a", "b"]);
    let (on_a, on_b) = (spread[0], spread[1]);
    v.check(
        "spread before the kill",
        format!("a {on_a}, b {on_b}"),
        "each >= 25%",
        on_a * 4 >= o.tunnels && on_b * 4 >= o.tunnels,
    );
    wait_until(setup, o.period * 2 + IO_TIMEOUT, || {
        tunnels.seen().iter().all(|t| t.echoed > 0 || !t.live())
    })?;
    let s1 = rw.sample()?;
    let m0 = rw.scrape()?;

    // Kill b: its tunnels end, a's do not.
    let at_kill = tunnels.seen();
    b.proc.kill();
    let killed = Instant::now();
    let on = |t: &Seen, name: &str| t.backend.as_deref() == Some(name);
    let b_ended = |all: &[Seen]| {
        all.iter()
            .filter(|t| on(t, "b") && t.ending.is_some())
            .count()
    };
    wait_until(
        setup,
        o.period + IO_TIMEOUT + Duration::from_secs(1),
        || b_ended(&tunnels.seen()) == on_b,
    )?;
    let after_kill = tunnels.seen();
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    let mut last = Duration::ZERO;
    for t in after_kill.iter().filter(|t| on(t, "b")) {
        if let Some(Ending::Failed { kind, at, .. }) = &t.ending {
            last = last.max(at.saturating_duration_since(killed));
            match kinds.iter_mut().find(|(k, _)| k == kind) {
                Some((_, n)) => *n += 1,
                None => kinds.push((kind, 1)),
            }
        }
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let closed_b = b_ended(&after_kill);
    v.check(
        "b's tunnels ended after b was killed",
        format!(
            "{closed_b} of {on_b}, the last {} ms after the kill ({})",
            last.as_millis(),
            kinds.join(", ")
        ),
        "all, within period + 6 s",
        closed_b == on_b,
    );
    // ringway counts each of them closed by the backend: its close (FIN)
    // or its reset (RST, when b died with bytes unread); any other error
    // would be a wrong reason.
    let closes = |m: &Metrics, reason: &str| {
        m.value("ringway_tunnels_closed_total", &[("reason", reason)]) as u64
    };
    let mut m1 = rw.scrape()?;
    let counted = |m: &Metrics| {
        closes(m, "backend_close") + closes(m, "backend_reset")
            - closes(&m0, "backend_close")
            - closes(&m0, "backend_reset")
    };
    let end = Instant::now() + Duration::from_secs(2);
    while counted(&m1) < on_b as u64 && Instant::now() < end {
        setup.sleep(Duration::from_millis(20))?;
        m1 = rw.scrape()?;
    }
    v.check(
        "ringway closed them for the backend",
        format!(
            "backend_close {}, backend_reset {}, error {}",
            closes(&m1, "backend_close") - closes(&m0, "backend_close"),
            closes(&m1, "backend_reset") - closes(&m0, "backend_reset"),
            closes(&m1, "error") - closes(&m0, "error")
        ),
        &format!("sum = {on_b}"),
        counted(&m1) == on_b as u64,
    );

    // Probes through fail_timeout; b comes back half way.
    let mut during = Probes::default();
    let mut marked: Option<(Instant, Instant)> = None;
    let mut restarted: Option<Duration> = None;
    let mut unavailable = None;
    let mut tag = 1 << 40;
    let window_end = loop {
        if let Some((lo, _)) = marked {
            if Instant::now() >= lo + o.fail_timeout - EDGE {
                break Instant::now();
            }
            if restarted.is_none() && Instant::now() >= lo + o.fail_timeout / 2 {
                b = Echo::start(setup, "b", b.addr)?;
                restarted = Some(Instant::now() - lo);
                unavailable = Some(
                    rw.scrape()?
                        .value("ringway_upstream_unavailable", &b_server),
                );
            }
        } else if during.total() > 20 {
            bail!("b was never tried in 20 connections after it was killed");
        }
        let t = Instant::now();
        during.run(rw.addr, tag);
        tag += 1;
        if marked.is_none()
            && rw
                .scrape()?
                .value("ringway_upstream_failures_total", &b_server)
                >= 1.0
        {
            marked = Some((t, Instant::now()));
        }
        setup.sleep(PROBE_GAP)?;
    };
    let (mark_lo, mark_hi) = marked.expect("the loop ends once marked");
    let window = window_end - mark_lo;
    v.check(
        "connections while b is marked",
        format!(
            "{} in {:.1} s: a {}, b {}, failed {}{}",
            during.total(),
            window.as_secs_f64(),
            during.a,
            during.b,
            during.failed,
            during.first_error()
        ),
        "all answered by a",
        during.failed == 0 && during.b == 0 && during.a > 0,
    );
    let m2 = rw.scrape()?;
    let b_failures = m2.value("ringway_upstream_failures_total", &b_server) as u64;
    v.check(
        "b tried while marked",
        format!("{b_failures} failed connect(s) to b (ringway_upstream_failures_total)"),
        &format!("<= {} (once per core, then skipped)", setup.workers),
        (1..=setup.workers as u64).contains(&b_failures),
    );
    let restarted = restarted.unwrap_or_default();
    v.check(
        "b marked unavailable after its restart",
        format!(
            "ringway_upstream_unavailable {} with b up again, {:.1} s into fail_timeout",
            unavailable.unwrap_or(-1.0),
            restarted.as_secs_f64()
        ),
        "= 1",
        unavailable == Some(1.0),
    );

    // After fail_timeout: b is used again.
    setup.sleep_until(mark_hi + o.fail_timeout + EDGE)?;
    let mut after = Probes::default();
    for _ in 0..o.probes_after {
        after.run(rw.addr, tag);
        tag += 1;
        setup.sleep(PROBE_GAP)?;
    }
    v.check(
        "connections after fail_timeout",
        format!(
            "{}: a {}, b {}, failed {}{}",
            after.total(),
            after.a,
            after.b,
            after.failed,
            after.first_error()
        ),
        "none failed; b >= 25% (used again)",
        after.failed == 0 && after.b * 4 >= o.probes_after && o.probes_after > 0,
    );

    // a's tunnels: untouched throughout. Judged once they are closed, so
    // that no echo is in flight.
    let open_now = tunnels
        .seen()
        .iter()
        .filter(|t| on(t, "a") && t.live())
        .count();
    let ended = tunnels.finish();
    let a_end: Vec<&Seen> = ended.iter().filter(|t| on(t, "a")).collect();
    let (sent, echoed): (u64, u64) = a_end
        .iter()
        .fold((0, 0), |(s, e), t| (s + t.sent, e + t.echoed));
    let min_since_kill = a_end
        .iter()
        .zip(at_kill.iter().filter(|t| on(t, "a")))
        .map(|(t, k)| t.echoed - k.echoed)
        .min()
        .unwrap_or(0);
    v.check(
        "a's tunnels through it all",
        format!(
            "{open_now} of {on_a} open; {} echoes sent, {} back; each >= {min_since_kill} since the kill",
            count(sent),
            count(echoed)
        ),
        "none ended or lost; each echoing",
        open_now == on_a && sent == echoed && min_since_kill >= 1,
    );
    let clean = a_end
        .iter()
        .filter(|t| matches!(t.ending, Some(Ending::Clean)))
        .count();
    v.check(
        "a's tunnels closed cleanly at the end",
        format!("{clean} of {on_a}"),
        "all",
        clean == on_a,
    );
    let s2 = rw.settle(setup, s0.fds, 0, Duration::from_secs(5))?;
    v.check(
        "ringway descriptors",
        format!(
            "{} before the tunnels, {} with them, {} at the end",
            s0.fds, s1.fds, s2.fds
        ),
        "end = before",
        s2.fds == s0.fds,
    );
    v.info(
        "ringway RSS",
        format!(
            "{} before the tunnels, {} with them, {} at the end",
            mib(s0.rss_kib),
            mib(s1.rss_kib),
            mib(s2.rss_kib)
        ),
    );
    let (errors, first) = rw.errors();
    v.check(
        "ringway ERROR lines",
        format!(
            "{errors}{}",
            first.map(|l| format!(": {l}")).unwrap_or_default()
        ),
        "0",
        errors == 0,
    );
    drop(b);
    Ok(v)
}

/// Short connections, counted by who answered.
#[derive(Debug, Default)]
struct Probes {
    a: usize,
    b: usize,
    failed: usize,
    first_error: Option<String>,
}

impl Probes {
    fn run(&mut self, addr: SocketAddr, tag: u64) {
        match ws::probe(addr, PATH, 1, tag) {
            Ok(name) if name == "a" => self.a += 1,
            Ok(name) if name == "b" => self.b += 1,
            Ok(name) => {
                self.failed += 1;
                self.first_error
                    .get_or_insert(format!("answered by {name:?}"));
            }
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert(e.to_string());
            }
        }
    }

    fn total(&self) -> usize {
        self.a + self.b + self.failed
    }

    fn first_error(&self) -> String {
        self.first_error
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    }
}

/// Poll `done` until it holds or `limit` passes (not an error: the checks
/// that follow say what did not happen).
fn wait_until(setup: &Setup, limit: Duration, done: impl Fn() -> bool) -> Result<()> {
    let end = Instant::now() + limit;
    while !done() && Instant::now() < end {
        setup.sleep(Duration::from_millis(10))?;
    }
    Ok(())
}
