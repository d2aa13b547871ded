//! Connect / echo / close churn with ringway's memory flat.
//!
//! `threads` client threads open connections through ringway on a fixed
//! schedule (`rate` per second in all, never faster; a late one starts at
//! once, without a burst to catch up), and each connection upgrades, echoes
//! `echoes` numbered messages, and closes (Close handshake, then the EOF).
//! ringway's RSS and descriptors are sampled every `sample`. Judged:
//!
//! - every connection completed, none failed, and ringway counted each
//!   upgrade (`ringway_handshakes_total{result="upgraded"}`);
//! - the rate held (at least [`RATE_FLOOR_PCT`]% of the schedule), so the
//!   memory was judged under the churn asked for;
//! - RSS flat: over the samples after `warmup`, the mean of the last third
//!   exceeds the mean of the first third by at most `max(FLAT_SLACK_KIB,
//!   FLAT_SLACK_PCT)` (see [`flat_bound`]);
//! - the descriptors back to where they were before the churn, and no
//!   connection left open.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::hold::procs::{Echo, Ringway, TempDir};
use crate::hold::ws;
use crate::hold::{count, mib, Setup, Verdict};

#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    /// Connections per second, all threads together.
    pub rate: f64,
    pub threads: usize,
    /// Messages echoed per connection.
    pub echoes: usize,
    /// Samples before this are not judged.
    pub warmup: Duration,
    /// Time between two samples of ringway.
    pub sample: Duration,
}

/// The last third's mean RSS may exceed the first third's by this much, or
/// [`FLAT_SLACK_PCT`] percent, whichever is more: one step of the
/// allocator's (a transparent huge page backs 2 MiB at once) is not a leak.
pub const FLAT_SLACK_KIB: u64 = 2 * 1024;
pub const FLAT_SLACK_PCT: u64 = 5;
/// The achieved rate must be at least this share of the one asked for.
pub const RATE_FLOOR_PCT: u64 = 80;

const PATH: &str = "/hold/churn";

/// One sample of ringway.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// Seconds since the churn began.
    pub t: f64,
    pub rss_kib: u64,
    pub fds: u64,
}

/// The flatness judgement of RSS samples taken after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flatness {
    pub first_third_kib: u64,
    pub last_third_kib: u64,
    /// Least-squares slope over the judged samples.
    pub slope_kib_per_min: f64,
    pub bound_kib: u64,
    pub flat: bool,
}

/// The bound on the last third's mean from the first third's.
pub fn flat_bound(first_kib: u64) -> u64 {
    first_kib + FLAT_SLACK_KIB.max(first_kib * FLAT_SLACK_PCT / 100)
}

/// Judge `points` (those after the warm-up); `None` with fewer than three.
pub fn flatness(points: &[Point]) -> Option<Flatness> {
    let n = points.len();
    if n < 3 {
        return None;
    }
    let third = n / 3;
    let mean = |p: &[Point]| p.iter().map(|p| p.rss_kib).sum::<u64>() / p.len() as u64;
    let first = mean(&points[..third]);
    let last = mean(&points[n - third..]);
    let (mt, mr) = (
        points.iter().map(|p| p.t).sum::<f64>() / n as f64,
        points.iter().map(|p| p.rss_kib as f64).sum::<f64>() / n as f64,
    );
    let (mut num, mut den) = (0.0, 0.0);
    for p in points {
        num += (p.t - mt) * (p.rss_kib as f64 - mr);
        den += (p.t - mt) * (p.t - mt);
    }
    let slope = if den > 0.0 { num / den * 60.0 } else { 0.0 };
    let bound = flat_bound(first);
    Some(Flatness {
        first_third_kib: first,
        last_third_kib: last,
        slope_kib_per_min: slope,
        bound_kib: bound,
        flat: last <= bound,
    })
}

/// What the client threads did.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

pub fn run(setup: &Setup, o: &Options) -> Result<Verdict> {
    let mut v = Verdict::new("hold: connect / echo / close churn, memory flat");
    let dir = TempDir::new("churn")?;
    let a = Echo::start(setup, "a", "127.0.0.1:0".parse()?)?;
    let rw = Ringway::start(
        setup,
        &[
            "--upstream".into(),
            a.addr.to_string(),
            "--access-log".into(),
            dir.path().join("access.log").display().to_string(),
        ],
    )?;
    let threads = o.threads.max(1);
    v.setup = vec![
        format!(
            "ringway {} --workers {} (pid {}) in front of {}",
            rw.addr,
            setup.workers,
            rw.proc.pid(),
            a.addr
        ),
        format!(
            "{:.0} s of churn at {}/s on {threads} threads, {} echoes per connection; RSS sampled every {:?}, judged after {:.1} s",
            o.duration.as_secs_f64(),
            o.rate,
            o.echoes,
            o.sample,
            o.warmup.as_secs_f64()
        ),
    ];
    let s0 = rw.sample()?;
    let m0 = rw.scrape()?;
    let upgraded = |m: &crate::hold::procs::Metrics| {
        m.value("ringway_handshakes_total", &[("result", "upgraded")]) as u64
    };

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let end = start + o.duration;
    let interval = Duration::from_secs_f64(threads as f64 / o.rate.max(0.01));
    let mut handles = Vec::new();
    for t in 0..threads {
        let (tally, stop, addr, echoes) = (tally.clone(), stop.clone(), rw.addr, o.echoes);
        let first = start + interval.mul_f64(t as f64 / threads as f64);
        handles.push(
            std::thread::Builder::new()
                .name(format!("churn-{t}"))
                .spawn(move || client(&tally, &stop, addr, echoes, first, interval, end, t))?,
        );
    }
    let mut points = Vec::new();
    let mut next = start;
    let sampled = loop {
        if setup.check_stop().is_err() {
            break Err(anyhow::anyhow!("interrupted"));
        }
        if Instant::now() >= end {
            break Ok(());
        }
        let s = match rw.sample() {
            Ok(s) => s,
            Err(e) => break Err(e),
        };
        points.push(Point {
            t: start.elapsed().as_secs_f64(),
            rss_kib: s.rss_kib,
            fds: s.fds,
        });
        next += o.sample;
        let _ = setup.sleep_until(next.min(end));
    };
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    sampled?;
    let took = start.elapsed().as_secs_f64();
    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let s_end = rw.sample()?;
    let s2 = rw.settle(setup, s0.fds, 0, Duration::from_secs(5))?;
    let m2 = rw.scrape()?;
    let first_error = tally.first_error.lock().unwrap().clone();
    v.check(
        "connections",
        format!(
            "{} completed, {failed} failed{}; ringway upgraded {}",
            count(ok),
            first_error
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
            count(upgraded(&m2) - upgraded(&m0))
        ),
        "none failed; every one upgraded",
        failed == 0 && ok > 0 && upgraded(&m2) - upgraded(&m0) == ok,
    );
    let floor = o.rate * RATE_FLOOR_PCT as f64 / 100.0;
    let achieved = ok as f64 / took;
    v.check(
        "churn rate",
        format!("{achieved:.0}/s over {took:.1} s"),
        &format!(">= {floor:.0}/s ({RATE_FLOOR_PCT}% of {})", o.rate),
        achieved >= floor,
    );
    let judged: Vec<Point> = points
        .iter()
        .copied()
        .filter(|p| p.t >= o.warmup.as_secs_f64())
        .collect();
    match flatness(&judged) {
        Some(f) => {
            let peak = judged.iter().map(|p| p.rss_kib).max().unwrap_or(0);
            // Connections between the middles of the first and last thirds.
            let between =
                ok as f64 * (2.0 / 3.0) * (took - o.warmup.as_secs_f64()).max(0.0) / took.max(1e-9);
            v.check(
                "ringway RSS flat after the warm-up",
                format!(
                    "first third {}, last third {} ({} samples; peak {}, slope {:+.0} KiB/min)",
                    mib(f.first_third_kib),
                    mib(f.last_third_kib),
                    judged.len(),
                    mib(peak),
                    f.slope_kib_per_min
                ),
                &format!(
                    "last <= {} (first +max({}, {FLAT_SLACK_PCT}%): a leak of {:.0} B per connection)",
                    mib(f.bound_kib),
                    mib(FLAT_SLACK_KIB),
                    (f.bound_kib - f.first_third_kib) as f64 * 1024.0 / between.max(1.0)
                ),
                f.flat,
            );
        }
        None => v.check(
            "ringway RSS flat after the warm-up",
            format!("{} samples after the warm-up", judged.len()),
            "at least 3",
            false,
        ),
    }
    v.info(
        "ringway RSS",
        format!(
            "{} before, {} after the warm-up, {} at the end",
            mib(s0.rss_kib),
            judged.first().map_or("-".into(), |p| mib(p.rss_kib)),
            mib(s_end.rss_kib)
        ),
    );
    let max_fds = points.iter().map(|p| p.fds).max().unwrap_or(0);
    v.check(
        "ringway descriptors",
        format!(
            "{} before, at most {max_fds} during, {} after",
            s0.fds, s2.fds
        ),
        "after = before",
        s2.fds == s0.fds,
    );
    let open = m2.value("ringway_connections_open", &[]);
    let tunnels = m2.value("ringway_tunnels_active", &[]);
    v.check(
        "ringway connections left open",
        format!("{open} open, {tunnels} tunnels"),
        "0",
        open == 0.0 && tunnels == 0.0,
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
    Ok(v)
}

/// One client thread: connections at `first`, `first + interval`, ...
/// until `end` (or `stop`).
#[allow(clippy::too_many_arguments)]
fn client(
    tally: &Tally,
    stop: &AtomicBool,
    addr: SocketAddr,
    echoes: usize,
    first: Instant,
    interval: Duration,
    end: Instant,
    thread: usize,
) {
    let mut next = first;
    let mut n = 0u64;
    loop {
        let now = Instant::now();
        if stop.load(Ordering::Relaxed) || now >= end {
            return;
        }
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(50)));
            continue;
        }
        // A late connection starts now; the schedule does not burst to catch up.
        next = next.max(now - interval) + interval;
        let tag = ((thread as u64) << 48) | n;
        n += 1;
        match ws::probe(addr, PATH, echoes, tag) {
            Ok(_) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                tally
                    .first_error
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(rss: impl Fn(usize) -> u64) -> Vec<Point> {
        (0..30)
            .map(|i| Point {
                t: i as f64,
                rss_kib: rss(i),
                fds: 10,
            })
            .collect()
    }

    #[test]
    fn flat_memory_passes_and_a_leak_fails() {
        let flat = flatness(&series(|i| 20_000 + (i as u64 % 3) * 300)).unwrap();
        assert!(flat.flat, "{flat:?}");
        assert!(flat.slope_kib_per_min.abs() < 500.0, "{flat:?}");
        // One allocator step of 2 MiB half way is not a leak.
        let step = flatness(&series(|i| 20_000 + if i > 15 { 2048 } else { 0 })).unwrap();
        assert!(step.flat, "{step:?}");
        // 200 KiB a second is.
        let leak = flatness(&series(|i| 20_000 + i as u64 * 200)).unwrap();
        assert!(!leak.flat, "{leak:?}");
        assert!(leak.slope_kib_per_min > 11_000.0, "{leak:?}");
        assert!(flatness(&series(|_| 1)[..2]).is_none());
    }

    #[test]
    fn bound_is_the_larger_slack() {
        assert_eq!(flat_bound(10_000), 10_000 + FLAT_SLACK_KIB);
        assert_eq!(flat_bound(100_000), 105_000);
    }
}
