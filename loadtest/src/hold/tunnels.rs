//! Live tunnels for the hold scenarios: each on a thread of its own
//! (blocking, small stack), opened through ringway, then echoing one
//! numbered message every `period` (phases spread so that they do not
//! send in lockstep) and checking each echo byte for byte. A tunnel either
//! keeps going until [`Tunnels::finish`] asks it to close (the Close
//! handshake, then the server's EOF), or ends on its own, and then says how
//! and when: that is what the scenarios judge.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::hold::ws::{payload, Ws, WsError};

/// How a tunnel ended.
#[derive(Debug, Clone)]
pub enum Ending {
    /// Closed by us at [`Tunnels::finish`], the Close handshake complete.
    Clean,
    /// Ended on its own (or its Close failed): `kind` is [`WsError::kind`].
    Failed {
        kind: &'static str,
        error: String,
        at: Instant,
    },
}

/// One tunnel's record, written by its thread.
#[derive(Debug, Default)]
struct Slot {
    /// The backend that answered its upgrade, once it is open.
    backend: Mutex<Option<String>>,
    /// Messages sent, and echoes that came back right.
    sent: AtomicU64,
    echoed: AtomicU64,
    ending: Mutex<Option<Ending>>,
}

/// What the threads share with the scenario.
#[derive(Debug, Default)]
struct Board {
    /// Close every tunnel cleanly and return.
    finish: AtomicBool,
    /// Return at once (on drop; the sockets just close).
    stop: AtomicBool,
    slots: Vec<Slot>,
}

/// A tunnel as the scenario sees it at one moment.
#[derive(Debug, Clone)]
pub struct Seen {
    pub backend: Option<String>,
    pub sent: u64,
    pub echoed: u64,
    pub ending: Option<Ending>,
}

impl Seen {
    /// Open, and not ended.
    pub fn live(&self) -> bool {
        self.backend.is_some() && self.ending.is_none()
    }
}

/// A set of tunnels, each on its own thread.
pub struct Tunnels {
    board: Arc<Board>,
    threads: Vec<JoinHandle<()>>,
}

impl Tunnels {
    /// Open `n` tunnels to `addr` (path `path`), tagged `tag..tag+n` in
    /// their messages, echoing every `period`. Returns once every one is
    /// open or has failed to open.
    pub fn open(
        addr: SocketAddr,
        path: &str,
        n: usize,
        period: Duration,
        tag: u64,
    ) -> Result<Tunnels> {
        let board = Arc::new(Board {
            slots: (0..n).map(|_| Slot::default()).collect(),
            ..Board::default()
        });
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (board, path) = (board.clone(), path.to_string());
            let phase = period.mul_f64(i as f64 / n.max(1) as f64);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("tunnel-{i}"))
                    .stack_size(256 * 1024)
                    .spawn(move || run(&board, i, addr, &path, period, phase, tag + i as u64))?,
            );
        }
        let tunnels = Tunnels { board, threads };
        // Connects are bounded (ws::IO_TIMEOUT), so this ends.
        while tunnels
            .seen()
            .iter()
            .any(|t| t.backend.is_none() && t.ending.is_none())
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(tunnels)
    }

    /// Every tunnel now.
    pub fn seen(&self) -> Vec<Seen> {
        self.board
            .slots
            .iter()
            .map(|s| Seen {
                backend: s.backend.lock().unwrap().clone(),
                sent: s.sent.load(Ordering::Relaxed),
                echoed: s.echoed.load(Ordering::Relaxed),
                ending: s.ending.lock().unwrap().clone(),
            })
            .collect()
    }

    /// Close every tunnel still open (Close handshake) and wait for every
    /// thread; every tunnel as it ended.
    pub fn finish(mut self) -> Vec<Seen> {
        self.board.finish.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.seen()
    }
}

impl Drop for Tunnels {
    fn drop(&mut self) {
        self.board.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One tunnel's thread.
fn run(
    board: &Board,
    i: usize,
    addr: SocketAddr,
    path: &str,
    period: Duration,
    phase: Duration,
    tag: u64,
) {
    let slot = &board.slots[i];
    let end = |e: WsError| {
        *slot.ending.lock().unwrap() = Some(Ending::Failed {
            kind: e.kind(),
            error: e.to_string(),
            at: Instant::now(),
        });
    };
    let mut ws = match Ws::connect(addr, path) {
        Ok(ws) => ws,
        Err(e) => return end(e),
    };
    *slot.backend.lock().unwrap() = Some(ws.backend.clone().unwrap_or_default());
    let mut next = Instant::now() + phase;
    let mut seq = 0u64;
    loop {
        // Wait for the next send, watching for finish and stop.
        loop {
            if board.stop.load(Ordering::Relaxed) {
                return;
            }
            if board.finish.load(Ordering::Relaxed) {
                match ws.close() {
                    Ok(()) => *slot.ending.lock().unwrap() = Some(Ending::Clean),
                    Err(e) => end(e),
                }
                return;
            }
            let now = Instant::now();
            if now >= next {
                break;
            }
            std::thread::sleep((next - now).min(Duration::from_millis(20)));
        }
        seq += 1;
        slot.sent.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = ws.echo(&payload(tag, seq)) {
            return end(e);
        }
        slot.echoed.fetch_add(1, Ordering::Relaxed);
        next += period;
    }
}

/// How many of `tunnels` are on each backend, in the order of `names`
/// (tunnels on no named backend are not counted).
pub fn spread(tunnels: &[Seen], names: &[&str]) -> Vec<usize> {
    names
        .iter()
        .map(|n| {
            tunnels
                .iter()
                .filter(|t| t.backend.as_deref() == Some(n))
                .count()
        })
        .collect()
}
