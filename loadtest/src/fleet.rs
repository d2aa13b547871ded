//! The fleet scenario: a chat service's shape. Many tunnels held open, a
//! small share of them active at a fixed total message rate (open loop,
//! latency from the intended send time), the rest idle; at the end every
//! idle tunnel is pinged, so none was lost quietly.
//!
//! It reports, per watched process, the RSS grown per tunnel (from before
//! the first connection to the end of the window), the CPU per message of
//! the active share, and the messages' latency percentiles. The number of
//! tunnels defaults to what the open-files limits allow: a proxy holds two
//! descriptors per tunnel (client and backend), so the limit is half of the
//! smallest soft limit among this generator (after raising it to its hard
//! limit) and the watched processes, less [`HEADROOM`].

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Result};
use ringway::proto::ws;

use crate::client;
use crate::procstat;
use crate::report::Report;
use crate::scenario::{self, Common, Tally};

/// Descriptors kept free in every process for listeners, logs, pipes and
/// the like (ringway holds about 30 at start, nginx about 10).
pub const HEADROOM: u64 = 200;

/// Defaults of the `fleet` flags.
pub const DEFAULT_ACTIVE_SHARE: f64 = 0.05;
pub const DEFAULT_RATE: f64 = 2000.0;
pub const DEFAULT_SIZE: usize = 64;

/// Parses a share of the tunnels that send (`--active`, `--fleet-active`):
/// above 0, at most 1.
pub fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err("give a share above 0, at most 1".to_string())
    }
}

/// Parses a total message rate (`--rate`, `--fleet-rate`): above 0.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v > 0.0 {
        Ok(v)
    } else {
        Err("give a rate above 0".to_string())
    }
}

/// What a fleet run does.
#[derive(Debug, Clone)]
pub struct FleetOpts {
    /// Tunnels held (all of them open before the window).
    pub tunnels: usize,
    /// Share of the tunnels that send, 0 to 1 (at least one sends).
    pub active_share: f64,
    /// Messages per second over all active tunnels.
    pub rate: f64,
    /// Payload bytes per message.
    pub size: usize,
}

impl FleetOpts {
    /// Active tunnels: the share, rounded up, at least 1, at most all.
    pub fn active(&self) -> usize {
        ((self.tunnels as f64 * self.active_share).ceil() as usize).clamp(1, self.tunnels.max(1))
    }
}

/// The soft open-files limit of `pid`, from /proc/PID/limits.
pub fn nofile_of(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    parse_nofile(&text)
}

/// The soft limit on the `Max open files` line of /proc/PID/limits text.
pub fn parse_nofile(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The most tunnels the limits allow: two descriptors each in a proxy,
/// [`HEADROOM`] kept free, from the smallest of `limits`.
pub fn max_tunnels(limits: &[u64]) -> usize {
    let least = limits.iter().copied().min().unwrap_or(1024);
    (least.saturating_sub(HEADROOM) / 2).max(1) as usize
}

/// The default tunnel count for `watch`ed processes: raises this
/// process's soft limit to its hard one first.
pub fn default_tunnels(watch: &[u32]) -> usize {
    let mine = ringway::sys::raise_nofile_limit().map_or(1024, |(soft, _)| soft);
    let mut limits = vec![mine];
    limits.extend(watch.iter().filter_map(|&p| nofile_of(p)));
    max_tunnels(&limits)
}

/// Run the fleet: open `tunnels`, send `rate` msg/s over the active share
/// during the window, ping the idle ones at its end.
pub fn fleet(common: &Common, opts: &FleetOpts) -> Result<Report> {
    if opts.tunnels == 0 {
        bail!("--tunnels 0: nothing to hold");
    }
    // The generator holds one descriptor per tunnel.
    let (soft, _) = ringway::sys::raise_nofile_limit().unwrap_or((1024, 1024));
    if opts.tunnels as u64 + HEADROOM / 2 > soft {
        bail!(
            "--tunnels {} needs more descriptors than this process may open ({soft}); \
             raise `ulimit -n`",
            opts.tunnels
        );
    }
    let (tunnels, active, threads) = (opts.tunnels, opts.active(), common.threads.max(1));
    let (rate, per_conn_rate) = (opts.rate, opts.rate / active as f64);
    let frame = client::frame(ws::OP_BINARY, opts.size);
    let c = common.clone();
    let before = procstat::sample_all(&common.watch)?;
    let measured = scenario::run_threads(
        common,
        move |t| {
            let c = c.clone();
            Box::pin(async move {
                scenario::open_many(&c, t, scenario::share(tunnels, threads, t)).await
            })
        },
        move |t, streams, w| {
            let frame = frame.clone();
            let mine = scenario::share(active, threads, t);
            // The active tunnels before this thread's, for the send phases.
            let first: usize = (0..t).map(|k| scenario::share(active, threads, k)).sum();
            async move {
                let tally = Rc::new(RefCell::new(Tally::new()));
                for (s, _) in &streams {
                    tally.borrow_mut().tls(s.tls_info());
                }
                let mut streams = streams.into_iter();
                let mut tasks = Vec::new();
                for (i, (s, rest)) in streams.by_ref().take(mine).enumerate() {
                    // Spread the schedules over one interval, as `echo --rate` does:
                    // ((first + i) / active) / per_conn_rate, per_conn_rate being
                    // rate / active.
                    let phase = Duration::from_secs_f64((first + i) as f64 / rate);
                    tasks.push(monoio::spawn(scenario::echo_conn(
                        s,
                        rest,
                        frame.clone(),
                        frame.clone(),
                        1,
                        Some(per_conn_rate),
                        Some(phase),
                        w,
                        tally.clone(),
                    )));
                }
                let idle: Vec<_> = streams.map(|(s, _)| s).collect();
                monoio::time::sleep_until(w.end.into()).await;
                for task in tasks {
                    task.await;
                }
                // Every idle tunnel still answers; its pong is not a message.
                let mut pings = Tally::new();
                let n = idle.len() as u64;
                scenario::ping_all(idle.into_iter(), &mut pings).await;
                let mut tally = Rc::try_unwrap(tally).ok().expect("tasks done").into_inner();
                if pings.received < n {
                    tally.error(format!(
                        "{} of {n} idle tunnels did not answer a ping: {}",
                        n - pings.received,
                        pings.errors.join("; ")
                    ));
                }
                tally
            }
        },
    )?;
    let bytes = measured.total.received as f64 * opts.size as f64;
    let mut r = scenario::finish("fleet", common, tunnels as u64, measured, bytes, |m, _| m);
    scenario::held_memory(&mut r, &before, tunnels);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_give_the_tunnels() {
        // This machine: 20,000 for everyone, so 9,900 tunnels.
        assert_eq!(max_tunnels(&[20_000, 20_000]), 9_900);
        // The smallest limit decides.
        assert_eq!(max_tunnels(&[1_048_576, 4_096]), 1_948);
        assert_eq!(max_tunnels(&[100]), 1);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63459                63459                processes \n\
                      Max open files            20000                20000                files     \n";
        assert_eq!(parse_nofile(limits), Some(20_000));
        assert_eq!(parse_nofile("nothing"), None);
        assert!(nofile_of(std::process::id()).is_some());
    }

    #[test]
    fn the_active_share() {
        let o = |tunnels, active_share| FleetOpts {
            tunnels,
            active_share,
            rate: 1.0,
            size: 1,
        };
        assert_eq!(o(9_900, 0.05).active(), 495);
        assert_eq!(o(50, 0.05).active(), 3);
        assert_eq!(o(10, 0.001).active(), 1);
        assert_eq!(o(10, 1.0).active(), 10);
    }

    #[test]
    fn flag_values() {
        assert_eq!(parse_share("0.05"), Ok(0.05));
        assert_eq!(parse_share("1"), Ok(1.0));
        assert!(parse_share("0").unwrap_err().contains("above 0, at most 1"));
        assert!(parse_share("1.5").is_err());
        assert!(parse_share("NaN").is_err());
        assert!(parse_share("x").is_err());
        assert_eq!(parse_rate("200"), Ok(200.0));
        assert!(parse_rate("0").unwrap_err().contains("above 0"));
        assert!(parse_rate("-1").is_err());
    }
}
