//! Per-core backend choice: round-robin over the configured backends,
//! skipping for `--fail-timeout` a backend whose connect failed (nginx's
//! defaults `max_fails=1 fail_timeout=10s`; a lone backend is never skipped).
//!
//! State is per core (`Cell`s, no locks), like nginx without a shared `zone`.

use std::cell::Cell;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Balancer {
    cursor: Cell<usize>,
    /// Per backend: skipped until this instant after a failed connect.
    failed_until: Box<[Cell<Option<Instant>>]>,
    fail_timeout: Duration,
}

impl Balancer {
    pub fn new(backends: usize, fail_timeout: Duration) -> Balancer {
        assert!(backends > 0, "config guarantees at least one backend");
        Balancer {
            cursor: Cell::new(0),
            failed_until: (0..backends).map(|_| Cell::new(None)).collect(),
            fail_timeout,
        }
    }

    /// The backends one connection tries, in order: every backend once,
    /// starting at the round-robin cursor (which moves on by one), leaving
    /// out those marked failed.
    pub fn plan(&self, now: Instant) -> impl Iterator<Item = usize> + '_ {
        let n = self.failed_until.len();
        let start = self.cursor.get();
        self.cursor.set((start + 1) % n);
        (0..n)
            .map(move |k| (start + k) % n)
            .filter(move |&i| self.available(i, now))
    }

    fn available(&self, i: usize, now: Instant) -> bool {
        match self.failed_until[i].get() {
            Some(until) if until > now => false,
            Some(_) => {
                self.failed_until[i].set(None);
                true
            }
            None => true,
        }
    }

    /// A connect to backend `i` failed or timed out.
    pub fn mark_failed(&self, i: usize, now: Instant) {
        if self.failed_until.len() > 1 {
            self.failed_until[i].set(Some(now + self.fail_timeout));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_and_fail_marks() {
        let b = Balancer::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let firsts: Vec<usize> = (0..6).map(|_| b.plan(t0).next().unwrap()).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        assert_eq!(b.plan(t0).collect::<Vec<_>>(), [0, 1, 2]);
        b.mark_failed(1, t0);
        assert_eq!(b.plan(t0).collect::<Vec<_>>(), [2, 0]);
        assert_eq!(b.plan(t0).collect::<Vec<_>>(), [2, 0]);
        b.mark_failed(0, t0);
        b.mark_failed(2, t0);
        assert_eq!(b.plan(t0).count(), 0, "all skipped: 503");
        let later = t0 + Duration::from_secs(11);
        assert_eq!(b.plan(later).count(), 3, "marks expire");
    }

    #[test]
    fn a_lone_backend_is_never_skipped() {
        let b = Balancer::new(1, Duration::from_secs(10));
        let t0 = Instant::now();
        b.mark_failed(0, t0);
        assert_eq!(b.plan(t0).collect::<Vec<_>>(), [0]);
    }
}
