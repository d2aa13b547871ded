//! Many reloads under live tunnels.
//!
//! ringway runs with `--config FILE`, and the file alternates between two
//! valid configurations: "a" (`upstream = [backend a]`, `idle-timeout =
//! "1h"`) and "b" (`upstream = [backend b]`, `idle-timeout = "2h"`). Half of
//! the tunnels are opened under "a", half under "b", so live tunnels hold
//! two generations. Then the file is rewritten and ringway sent SIGHUP
//! `reloads` times, at most `rate` per second (and over two tunnel periods
//! at least), each reload awaited in the log before the next; after each one a short connection (connect, echo,
//! close) must be answered by the backend the new file names, so every
//! reload is proven in force (and makes the core build a generation for
//! it). Judged at the end:
//!
//! - every reload applied, none failed (log and `ringway_config_reloads_total`);
//! - every probe answered by the right backend;
//! - every tunnel still open, every echo back and right, each tunnel echoing
//!   through the reloads, then closed cleanly;
//! - ringway's RSS at the end within `max(RSS_SLACK_KIB, RSS_SLACK_PCT)` of
//!   its RSS after the warm-up reloads, and its descriptors where they were
//!   (with the tunnels, and after them).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::hold::procs::{Echo, Ringway, TempDir};
use crate::hold::tunnels::{self, Ending, Tunnels};
use crate::hold::ws;
use crate::hold::{count, mib, Setup, Verdict};

#[derive(Debug, Clone)]
pub struct Options {
    pub tunnels: usize,
    pub reloads: usize,
    /// Most reloads per second.
    pub rate: f64,
    /// Each tunnel echoes once per period.
    pub period: Duration,
}

/// RSS may grow this much over the reloads after the warm-up, or
/// [`RSS_SLACK_PCT`] percent, whichever is more. The allocator takes memory
/// from the kernel in steps (mimalloc segments, and transparent huge pages
/// back a 2 MiB region at once), so a bound below one step would judge the
/// step, not a leak; 4 MiB over 1,000 reloads still catches 4 KiB kept per
/// reload, about the size of one configuration's state per core.
pub const RSS_SLACK_KIB: u64 = 4 * 1024;
pub const RSS_SLACK_PCT: u64 = 10;

/// The part of the warm-up: RSS is judged from after this many reloads.
const WARMUP_SHARE: usize = 10;

const PATH: &str = "/hold/reloads";

/// How long ringway's descriptors may take to settle after a connection.
const SETTLE: Duration = Duration::from_secs(5);

/// The `--config` file for backend `name` at `addr`.
fn config(name: &str, addr: &str) -> String {
    let idle = if name == "a" { "1h" } else { "2h" };
    format!("# ringway-hold reloads: configuration {name}\nupstream = [\"{addr}\"]\nidle-timeout = \"{idle}\"\n")
}

/// Replace the file whole (a rename), so that a reload never reads half.
fn write_config(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The bound on RSS at the end, from RSS after the warm-up.
pub fn rss_bound(warm_kib: u64) -> u64 {
    warm_kib + RSS_SLACK_KIB.max(warm_kib * RSS_SLACK_PCT / 100)
}

pub fn run(setup: &Setup, o: &Options) -> Result<Verdict> {
    let mut v = Verdict::new("hold: reloads under live tunnels");
    let dir = TempDir::new("reloads")?;
    let a = Echo::start(setup, "a", "127.0.0.1:0".parse()?)?;
    let b = Echo::start(setup, "b", "127.0.0.1:0".parse()?)?;
    let file = dir.path().join("ringway.toml");
    let texts = [
        config("a", &a.addr.to_string()),
        config("b", &b.addr.to_string()),
    ];
    write_config(&file, &texts[0])?;
    let rw = Ringway::start(
        setup,
        &[
            "--config".into(),
            file.display().to_string(),
            "--access-log".into(),
            dir.path().join("access.log").display().to_string(),
        ],
    )?;
    v.setup = vec![
        format!(
            "ringway {} --workers {} --config FILE (pid {}); FILE alternates upstream a {} / b {}",
            rw.addr,
            setup.workers,
            rw.proc.pid(),
            a.addr,
            b.addr
        ),
        format!(
            "{} tunnels echoing every {:?}; {} reloads at most {}/s, a probe after each",
            o.tunnels, o.period, o.reloads, o.rate
        ),
    ];
    let s0 = rw.sample()?;

    // Half the tunnels under "a", half under "b".
    let half = o.tunnels / 2;
    let first = Tunnels::open(rw.addr, PATH, half, o.period, 1)?;
    write_config(&file, &texts[1])?;
    rw.hup();
    let switched = wait_reloads(setup, &rw, 1)?;
    let second = Tunnels::open(rw.addr, PATH, o.tunnels - half, o.period, 1 << 32)?;
    let opened: Vec<usize> = [&first, &second]
        .iter()
        .map(|t| tunnels::spread(&t.seen(), &["a", "b"]).iter().sum())
        .collect();
    let spread = [
        tunnels::spread(&first.seen(), &["a", "b"]),
        tunnels::spread(&second.seen(), &["a", "b"]),
    ];
    v.check(
        "tunnels opened under each configuration",
        format!(
            "under a: {} (a {}, b {}); under b: {} (a {}, b {})",
            opened[0], spread[0][0], spread[0][1], opened[1], spread[1][0], spread[1][1]
        ),
        "all, each on its configuration's backend",
        switched
            && spread[0] == [half, 0]
            && spread[1] == [0, o.tunnels - half]
            && opened.iter().sum::<usize>() == o.tunnels,
    );
    let at_start: Vec<u64> = [&first, &second]
        .iter()
        .flat_map(|t| t.seen())
        .map(|t| t.echoed)
        .collect();
    // With the tunnels open, before the reloads (echoes have not all
    // started: their phases spread over a period).
    let s1 = rw.sample()?;

    // The reloads.
    // Each tunnel holds two descriptors of ringway's: client and backend.
    let with_tunnels = s0.fds + 2 * o.tunnels as u64;
    // At most `rate` per second, and spread over two periods at least, so
    // that every tunnel echoes while the reloads go on.
    let gap =
        Duration::from_secs_f64(1.0 / o.rate.max(0.01)).max(o.period * 2 / o.reloads.max(1) as u32);
    let warmup = (o.reloads / WARMUP_SHARE).max(1).min(o.reloads);
    let mut warm = None;
    let mut probes = (0usize, 0usize);
    let mut first_wrong = None;
    let mut applied = 0usize;
    let mut rss_peak = 0;
    let started = Instant::now();
    let mut next = Instant::now();
    for i in 0..o.reloads {
        setup.sleep_until(next)?;
        next += gap;
        // Reload 1 goes back to "a" (the file names "b" now).
        let which = i % 2;
        write_config(&file, &texts[which])?;
        rw.hup();
        if !wait_reloads(setup, &rw, 2 + i as u64)? {
            break;
        }
        applied += 1;
        let want = ["a", "b"][which];
        match ws::probe(rw.addr, PATH, 1, (2 << 40) + i as u64) {
            Ok(name) if name == want => probes.0 += 1,
            Ok(name) => {
                probes.1 += 1;
                first_wrong.get_or_insert(format!("reload {}: {name:?}, not {want}", i + 1));
            }
            Err(e) => {
                probes.1 += 1;
                first_wrong.get_or_insert(format!("reload {}: {e}", i + 1));
            }
        }
        let s = rw.sample()?;
        rss_peak = rss_peak.max(s.rss_kib);
        if i + 1 == warmup {
            // The probe's descriptors close a moment after it saw the end.
            warm = Some(rw.settle(setup, with_tunnels, o.tunnels, SETTLE)?);
        }
    }
    let took = started.elapsed();
    let (done, failed) = rw.reloads();
    let m = rw.scrape()?;
    let counted_ok = m.value("ringway_config_reloads_total", &[("result", "ok")]) as u64;
    let counted_failed = m.value("ringway_config_reloads_total", &[("result", "failed")]) as u64;
    v.check(
        "reloads applied",
        format!(
            "{applied} of {} in {:.1} s; log: {done} reloaded, {failed} failed; metrics: ok {counted_ok}, failed {counted_failed}",
            o.reloads,
            took.as_secs_f64()
        ),
        &format!("all, none failed (ok = {} with the switch to b)", o.reloads + 1),
        applied == o.reloads
            && done == o.reloads as u64 + 1
            && failed == 0
            && counted_ok == done
            && counted_failed == 0,
    );
    v.check(
        "a probe after each reload",
        format!(
            "{} answered by the new file's backend, {} not{}",
            probes.0,
            probes.1,
            first_wrong
                .map(|w| format!(" (first: {w})"))
                .unwrap_or_default()
        ),
        "all",
        probes.0 == o.reloads && probes.1 == 0,
    );

    // The tunnels, still there; their echoes are judged once they are
    // closed, so that none is in flight.
    let end_sample = rw.settle(setup, with_tunnels, o.tunnels, SETTLE)?;
    let live_metric = rw.scrape()?.value("ringway_tunnels_active", &[]) as usize;
    let live = [&first, &second]
        .iter()
        .flat_map(|t| t.seen())
        .filter(|t| t.live())
        .count();
    let ended: Vec<_> = [first, second]
        .into_iter()
        .flat_map(Tunnels::finish)
        .collect();
    let (sent, echoed) = ended
        .iter()
        .fold((0, 0), |(s, e), t| (s + t.sent, e + t.echoed));
    let min_during = ended
        .iter()
        .zip(&at_start)
        .map(|(t, e0)| t.echoed - e0)
        .min()
        .unwrap_or(0);
    let first_end = ended
        .iter()
        .find_map(|t| match &t.ending {
            Some(Ending::Failed { error, .. }) => Some(format!(" (first ended: {error})")),
            _ => None,
        })
        .unwrap_or_default();
    v.check(
        "tunnels through the reloads",
        format!(
            "{live} of {} open (ringway: {live_metric} active); {} echoes sent, {} back; each >= {min_during} during the reloads{first_end}",
            o.tunnels,
            count(sent),
            count(echoed)
        ),
        "none dropped or lost; each echoing",
        live == o.tunnels && live_metric == o.tunnels && sent == echoed && min_during >= 1,
    );
    let clean = ended
        .iter()
        .filter(|t| matches!(t.ending, Some(Ending::Clean)))
        .count();
    v.check(
        "tunnels closed cleanly at the end",
        format!("{clean} of {}", o.tunnels),
        "all",
        clean == o.tunnels,
    );
    let warm = warm.unwrap_or(end_sample);
    let bound = rss_bound(warm.rss_kib);
    v.check(
        "ringway RSS",
        format!(
            "{} at start, {} with the tunnels, {} after {warmup} reloads, {} after {applied} (peak {})",
            mib(s0.rss_kib),
            mib(s1.rss_kib),
            mib(warm.rss_kib),
            mib(end_sample.rss_kib),
            mib(rss_peak)
        ),
        &format!(
            "end <= {} (+max({}, {RSS_SLACK_PCT}%))",
            mib(bound),
            mib(RSS_SLACK_KIB)
        ),
        end_sample.rss_kib <= bound,
    );
    v.check(
        "ringway descriptors with the tunnels",
        format!(
            "{} before the tunnels, {} after {warmup} reloads, {} after {applied}",
            s0.fds, warm.fds, end_sample.fds
        ),
        &format!("{with_tunnels} (2 per tunnel) at both"),
        end_sample.fds == with_tunnels && warm.fds == with_tunnels,
    );
    let s2 = rw.settle(setup, s0.fds, 0, SETTLE)?;
    v.check(
        "ringway descriptors after the tunnels",
        format!("{} before the tunnels, {} after", s0.fds, s2.fds),
        "equal",
        s2.fds == s0.fds,
    );
    let (errors, first_error) = rw.errors();
    v.check(
        "ringway ERROR lines",
        format!(
            "{errors}{}",
            first_error.map(|l| format!(": {l}")).unwrap_or_default()
        ),
        "0",
        errors == 0,
    );
    Ok(v)
}

/// Wait (5 s at most) until ringway has logged `n` reloads in all;
/// whether it did, and none failed.
fn wait_reloads(setup: &Setup, rw: &Ringway, n: u64) -> Result<bool> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let (done, failed) = rw.reloads();
        if failed > 0 {
            return Ok(false);
        }
        if done >= n {
            return Ok(true);
        }
        if Instant::now() >= end {
            return Ok(false);
        }
        setup.sleep(Duration::from_millis(1))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_bound_is_the_larger_slack() {
        assert_eq!(rss_bound(10 * 1024), 10 * 1024 + RSS_SLACK_KIB);
        assert_eq!(rss_bound(100 * 1024), 110 * 1024);
    }

    #[test]
    fn configurations_differ_only_in_backend_and_timeout() {
        let (a, b) = (config("a", "127.0.0.1:1"), config("b", "127.0.0.1:2"));
        assert!(a.contains("upstream = [\"127.0.0.1:1\"]") && a.contains("\"1h\""));
        assert!(b.contains("upstream = [\"127.0.0.1:2\"]") && b.contains("\"2h\""));
    }
}
