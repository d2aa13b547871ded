//! What a watched process spends: CPU seconds (utime + stime of all its
//! threads, from /proc/PID/stat), resident memory and open descriptors;
//! its system calls come from [`crate::perfstat`].

use anyhow::{Context, Result};
use serde::Serialize;

/// One reading of one process.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Sample {
    pub pid: u32,
    /// CPU seconds used since the process started.
    pub cpu_s: f64,
    pub rss_kib: u64,
    pub fds: u64,
}

pub fn sample(pid: u32) -> Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (is pid {pid} running?)"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line (11 and 12 here).
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Sample {
        pid,
        cpu_s: sched_cpu_s(pid).unwrap_or(ticks as f64 / clock_ticks()),
        rss_kib,
        fds: fds(pid),
    })
}

/// Open descriptors of `pid` (entries of /proc/PID/fd); 0 when they
/// cannot be read. Cheap enough to poll, unlike a whole [`sample`].
pub fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// CPU seconds of every live thread, in nanoseconds from
/// /proc/PID/task/*/schedstat (its first field), where the kernel has it:
/// /proc/PID/stat counts in 10 ms ticks, coarse for a 2 s run.
fn sched_cpu_s(pid: u32) -> Option<f64> {
    let mut ns: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

fn clock_ticks() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux ABI ringway runs on; USER_HZ
    // is fixed by the kernel's ABI, not configurable per host.
    100.0
}

/// What a watched process did during a measured window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Usage {
    pub pid: u32,
    pub cpu_s: f64,
    pub rss_kib_before: u64,
    pub rss_kib_after: u64,
    pub fds_before: u64,
    pub fds_after: u64,
    /// System calls over the window (`perf stat`, see [`crate::perfstat`]);
    /// `None` when they could not be counted.
    pub syscalls: Option<u64>,
    /// Of those, io_uring_enter(2) calls.
    pub io_uring_enters: Option<u64>,
}

impl Usage {
    pub fn between(a: &Sample, b: &Sample) -> Usage {
        Usage {
            pid: a.pid,
            cpu_s: b.cpu_s - a.cpu_s,
            rss_kib_before: a.rss_kib,
            rss_kib_after: b.rss_kib,
            fds_before: a.fds,
            fds_after: b.fds,
            syscalls: None,
            io_uring_enters: None,
        }
    }
}

/// Sample every pid; a pid that cannot be read is an error worth stopping for.
pub fn sample_all(pids: &[u32]) -> Result<Vec<Sample>> {
    pids.iter().map(|&p| sample(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let a = sample(me).unwrap();
        // Burn a little CPU so that the difference is visible.
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(60) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        let b = sample(me).unwrap();
        assert!(a.rss_kib > 0 && a.fds > 0);
        assert!(fds(me) > 0 && fds(u32::MAX) == 0);
        let u = Usage::between(&a, &b);
        assert!(u.cpu_s >= 0.0 && u.cpu_s < 10.0, "{u:?}");
        assert!(sample(u32::MAX).is_err());
    }
}
