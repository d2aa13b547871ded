//! "Keep what held": three scenarios that start a real ringway and
//! `ringway-echo` backends themselves (127.0.0.1, port 0), drive them, and
//! check that what held once still holds, each check with its measured
//! numbers and its bound, so that a run either passes every check or says
//! which one broke:
//!
//! - [`restart`]: a backend killed and restarted under live tunnels. The
//!   tunnels on the other backend lose nothing; the dead one's tunnels are
//!   closed; new connections skip it for `fail_timeout` (one failed connect
//!   per core, then none), even once it is back; after that it is used
//!   again.
//! - [`reloads`]: many SIGHUP reloads, alternating two `--config` files,
//!   under live tunnels: every reload applies (a probe after each one is
//!   answered by the backend the new file names), no tunnel drops, memory
//!   and descriptors stay flat.
//! - [`churn`]: connect / echo / close at a bounded rate for a while, with
//!   ringway's memory sampled every interval: flat after the warm-up, every
//!   descriptor given back, no error.
//!
//! [`procs`] starts and stops the processes (every child is stopped on every
//! path, by `Drop`), [`ws`] is the blocking client each connection runs on,
//! [`tunnels`] keeps many tunnels echoing on threads of their own, and
//! [`Verdict`] is the table a scenario returns. `ringway-hold` is the
//! command line; `loadtest/tests/hold.rs` runs each scenario small.

pub mod churn;
pub mod procs;
pub mod reloads;
pub mod restart;
pub mod tunnels;
pub mod ws;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ringway::server::shutdown::Shutdown;

/// What every scenario needs: the binaries, and how to run ringway.
#[derive(Debug, Clone)]
pub struct Setup {
    pub ringway: PathBuf,
    pub echo: PathBuf,
    /// `--workers` of ringway. Balancing state (failure marks included) is
    /// per core, so the restart scenario's bounds scale with it.
    pub workers: usize,
    /// More flags for ringway, appended to the scenario's own.
    pub ringway_args: Vec<String>,
    /// Set by SIGINT/SIGTERM (or a test): every wait gives up, every child
    /// is stopped.
    pub stop: Shutdown,
}

impl Setup {
    /// The binaries next to this executable (`target/<profile>/`).
    pub fn beside_this_exe(stop: Shutdown) -> Setup {
        let here = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(PathBuf::from))
            .unwrap_or_default();
        Setup {
            ringway: here.join("ringway"),
            echo: here.join("ringway-echo"),
            workers: 1,
            ringway_args: Vec::new(),
            stop,
        }
    }

    /// Sleep `d` in short steps; an error once stopped.
    pub fn sleep(&self, d: Duration) -> Result<()> {
        self.sleep_until(Instant::now() + d)
    }

    pub fn sleep_until(&self, t: Instant) -> Result<()> {
        loop {
            self.check_stop()?;
            let now = Instant::now();
            if now >= t {
                return Ok(());
            }
            std::thread::sleep((t - now).min(Duration::from_millis(20)));
        }
    }

    pub fn check_stop(&self) -> Result<()> {
        if self.stop.is_triggered() {
            bail!("interrupted");
        }
        Ok(())
    }
}

/// One check of a scenario: what was measured, what it had to be, and
/// whether it was (`None`: a figure reported, not judged).
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub measured: String,
    pub bound: String,
    pub pass: Option<bool>,
}

/// What a scenario found: its setup, its checks in the order they were
/// made, and notes.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub title: String,
    pub setup: Vec<String>,
    pub checks: Vec<Check>,
}

impl Verdict {
    pub fn new(title: impl Into<String>) -> Verdict {
        Verdict {
            title: title.into(),
            ..Verdict::default()
        }
    }

    /// A judged check.
    pub fn check(&mut self, name: &str, measured: String, bound: &str, pass: bool) {
        self.checks.push(Check {
            name: name.into(),
            measured,
            bound: bound.into(),
            pass: Some(pass),
        });
    }

    /// A figure that is reported, not judged.
    pub fn info(&mut self, name: &str, measured: String) {
        self.checks.push(Check {
            name: name.into(),
            measured,
            bound: String::new(),
            pass: None,
        });
    }

    /// Every judged check held (and there was at least one).
    pub fn passed(&self) -> bool {
        self.judged() > 0 && self.failed().is_empty()
    }

    pub fn judged(&self) -> usize {
        self.checks.iter().filter(|c| c.pass.is_some()).count()
    }

    pub fn failed(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.pass == Some(false))
            .collect()
    }

    /// The check named `name` (tests look them up).
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The table: one line per check, then PASS or FAIL.
    pub fn render(&self) -> String {
        let mut out = format!("== {}\n", self.title);
        for s in &self.setup {
            let _ = writeln!(out, "   {s}");
        }
        let w = |f: fn(&Check) -> usize, head: &str| {
            self.checks.iter().map(f).max().unwrap_or(0).max(head.len())
        };
        let (wn, wm, wb) = (
            w(|c| c.name.chars().count(), "check"),
            w(|c| c.measured.chars().count(), "measured"),
            w(|c| c.bound.chars().count(), "bound"),
        );
        let _ = writeln!(
            out,
            "\n{:<wn$}  {:<wm$}  {:<wb$}  result",
            "check", "measured", "bound"
        );
        let _ = writeln!(out, "{}", "-".repeat(wn + wm + wb + 12));
        for c in &self.checks {
            let result = match c.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "info",
            };
            let _ = writeln!(
                out,
                "{:<wn$}  {:<wm$}  {:<wb$}  {result}",
                c.name, c.measured, c.bound
            );
        }
        let failed = self.failed();
        if self.passed() {
            let _ = writeln!(out, "\nPASS: all {} checks held", self.judged());
        } else {
            let names: Vec<&str> = failed.iter().map(|c| c.name.as_str()).collect();
            let _ = writeln!(
                out,
                "\nFAIL: {} of {} checks did not hold: {}",
                failed.len(),
                self.judged(),
                names.join("; ")
            );
        }
        out
    }
}

/// `n` with thousands separated by commas, for tables.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut rest = digits.as_str();
    let mut groups = Vec::new();
    while rest.len() > 3 {
        let (head, tail) = rest.split_at(rest.len() - 3);
        groups.push(tail);
        rest = head;
    }
    groups.push(rest);
    groups.reverse();
    groups.join(",")
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_passes_only_when_every_judged_check_holds() {
        let mut v = Verdict::new("t");
        assert!(!v.passed(), "no checks: nothing proven");
        v.info("rss", "1 MiB".into());
        assert!(!v.passed());
        v.check("a", "1".into(), "= 1", true);
        assert!(v.passed());
        assert!(v.render().contains("PASS: all 1 checks held"));
        v.check("b", "2".into(), "= 1", false);
        assert!(!v.passed());
        let table = v.render();
        assert!(
            table.contains("FAIL: 1 of 2 checks did not hold: b"),
            "{table}"
        );
        assert!(table
            .lines()
            .any(|l| l.starts_with("rss") && l.ends_with("info")));
        assert_eq!(v.get("b").unwrap().pass, Some(false));
    }

    #[test]
    fn numbers() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(mib(2048), "2.0 MiB");
    }
}
