//! The one cross-thread signal: "stop accepting and drain" (and, on a second
//! signal, "stop now"). Set by the signal thread or a test, awaited by every
//! worker. Touched only at shutdown, never on the data path.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

// State 0 (the default) is running.
const DRAINING: u8 = 1;
const FORCED: u8 = 2;

/// A cloneable shutdown trigger. Workers wake from another thread's trigger,
/// which is why monoio's `sync` feature is on.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    state: AtomicU8,
    wakers: Mutex<Vec<Waker>>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Begin the drain (first SIGTERM/SIGINT). A second call forces.
    pub fn trigger(&self) {
        let prev = self.0.state.fetch_max(DRAINING, Ordering::SeqCst);
        if prev == DRAINING {
            self.force();
            return;
        }
        self.wake();
    }

    /// Close everything now, without waiting for the drain timeout.
    pub fn force(&self) {
        self.0.state.store(FORCED, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        let wakers = std::mem::take(&mut *self.0.wakers.lock().unwrap_or_else(|p| p.into_inner()));
        for w in wakers {
            w.wake();
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.0.state.load(Ordering::SeqCst) >= DRAINING
    }

    pub fn is_forced(&self) -> bool {
        self.0.state.load(Ordering::SeqCst) == FORCED
    }

    /// Resolves once the shutdown has been triggered.
    pub fn triggered(&self) -> Triggered<'_> {
        Triggered(self)
    }
}

pub struct Triggered<'a>(&'a Shutdown);

impl Future for Triggered<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.is_triggered() {
            return Poll::Ready(());
        }
        self.0
             .0
            .wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(cx.waker().clone());
        // Re-check: a trigger between the load and the push must not be lost.
        if self.0.is_triggered() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_then_force() {
        let s = Shutdown::new();
        assert!(!s.is_triggered());
        s.trigger();
        assert!(s.is_triggered() && !s.is_forced());
        s.trigger();
        assert!(s.is_forced());
    }

    #[test]
    fn wakes_a_worker_on_another_thread() {
        let s = Shutdown::new();
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .build()
                .unwrap();
            rt.block_on(async move { s2.triggered().await });
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        s.trigger();
        t.join().unwrap();
    }
}
