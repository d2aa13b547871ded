//! The four load scenarios. Each runs on `threads` pinned threads with a
//! monoio runtime each, every connection's work split evenly among them, and
//! measures only inside a common window that starts after a warm-up.
//!
//! Latency is measured from the *intended* send time: in open-loop mode a
//! message that is sent late because the system is behind still counts from
//! when it should have been sent, so a stall shows up in the percentiles
//! instead of hiding (no coordinated omission).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use monoio::io::Canceller;
use ringway::proto::ws;

use crate::client::{self, Conn, ConnRead, FrameCounter, Target};
use crate::perfstat::{self, Counters};
use crate::procstat::{self, Usage};
use crate::report::{self, Latency, Report, TlsSummary};
use crate::tls::TlsInfo;

/// Options every scenario shares.
#[derive(Debug, Clone)]
pub struct Common {
    pub target: Target,
    pub threads: usize,
    /// CPUs to pin the threads to, in order (empty: no pinning).
    pub pin: Vec<usize>,
    /// Source addresses, used round-robin for new connections.
    pub source_ips: Vec<IpAddr>,
    pub warmup: Duration,
    pub duration: Duration,
    pub watch: Vec<u32>,
    /// The `perf` binary that counts the watched processes' system calls
    /// over the window (`None`: do not count them).
    pub perf: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// Keep this many messages in flight per connection.
    Closed { inflight: usize },
    /// Send this many messages per second in total, on a fixed schedule.
    Open { rate: f64 },
}

#[derive(Debug, Clone)]
pub struct EchoOpts {
    /// `"echo"` or `"bulk"`: the report's name, and whether CPU is divided
    /// by messages or by MB.
    pub scenario: &'static str,
    pub connections: usize,
    pub size: usize,
    pub binary: bool,
    pub load: Load,
}

/// What one thread measured.
pub(crate) struct Tally {
    pub(crate) sent: u64,
    /// Every echo (or completed cycle), inside the window or not.
    pub(crate) echoed: u64,
    /// Those inside the measured window.
    pub(crate) received: u64,
    pub(crate) errors: Vec<String>,
    pub(crate) error_count: u64,
    pub(crate) hist: Histogram<u64>,
    /// wss:// only.
    pub(crate) tls: Option<TlsSummary>,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally {
            sent: 0,
            echoed: 0,
            received: 0,
            errors: Vec::new(),
            error_count: 0,
            hist: report::histogram(),
            tls: None,
        }
    }

    pub(crate) fn tls(&mut self, info: Option<TlsInfo>) {
        if let Some(info) = info {
            self.tls.get_or_insert_with(TlsSummary::default).add(&info);
        }
    }

    pub(crate) fn error(&mut self, e: impl std::fmt::Display) {
        self.error_count += 1;
        if self.errors.len() < 5 {
            self.errors.push(e.to_string());
        }
    }

    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.echoed += other.echoed;
        self.received += other.received;
        self.error_count += other.error_count;
        for e in other.errors {
            if self.errors.len() < 5 {
                self.errors.push(e);
            }
        }
        let _ = self.hist.add(&other.hist);
        if let Some(o) = other.tls {
            self.tls.get_or_insert_with(TlsSummary::default).merge(&o);
        }
    }
}

/// The shared timeline of a run: set once every thread is connected.
#[derive(Clone, Copy)]
pub(crate) struct Window {
    pub(crate) start: Instant,
    pub(crate) end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

/// What [`run_threads`] measured: the threads' tally, what each watched pid
/// used in the window, the window's length, and why system calls were not
/// counted (if they were not).
pub(crate) struct Measured {
    pub(crate) total: Tally,
    usage: Vec<Usage>,
    window_s: f64,
    syscalls_note: Option<String>,
}

/// Run `per_thread(thread, window)` on every thread. Each thread first runs
/// `setup`, then waits until all threads are set up; the window starts after
/// the warm-up from that moment. Samples watched pids at its edges, and
/// counts their system calls in between (`perf stat`, started before the
/// threads with its counters off, switched on and off at the edges).
pub(crate) fn run_threads<S, F, SF, RF>(common: &Common, setup: SF, work: RF) -> Result<Measured>
where
    S: 'static,
    SF: Fn(usize) -> Pin<Box<dyn Future<Output = Result<S>>>> + Send + Sync + 'static,
    RF: Fn(usize, S, Window) -> F + Send + Sync + 'static,
    F: Future<Output = Tally> + 'static,
{
    let n = common.threads.max(1);
    // perf's start-up (tens of ms) overlaps the connections' set-up.
    let mut perf = Counters::start(common.perf.as_deref(), &common.watch);
    let barrier = Arc::new(Barrier::new(n + 1));
    let window: Arc<Mutex<Option<Window>>> = Arc::new(Mutex::new(None));
    let setup = Arc::new(setup);
    let work = Arc::new(work);
    let mut handles = Vec::new();
    for t in 0..n {
        let (barrier, window, setup, work) =
            (barrier.clone(), window.clone(), setup.clone(), work.clone());
        let cpu = (!common.pin.is_empty()).then(|| common.pin[t % common.pin.len()]);
        handles.push(std::thread::spawn(move || -> Result<Tally> {
            if let Some(cpu) = cpu {
                core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
            }
            let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build()?;
            rt.block_on(async move {
                let state = setup(t).await;
                // Every thread reaches the barriers, even one that failed, so
                // that the others are not left waiting. The first says "set
                // up"; between the two, the main thread publishes the window.
                barrier.wait();
                barrier.wait();
                let state = state?;
                let w = window
                    .lock()
                    .unwrap()
                    .expect("window set after the barrier");
                Ok(work(t, state, w).await)
            })
        }));
    }
    barrier.wait();
    let start = Instant::now() + common.warmup;
    let w = Window {
        start,
        end: start + common.duration,
    };
    *window.lock().unwrap() = Some(w);
    barrier.wait();
    sleep_until(w.start);
    perf.enable();
    let before = procstat::sample_all(&common.watch)?;
    perf.acked("enable");
    sleep_until(w.end);
    perf.disable();
    let after = procstat::sample_all(&common.watch)?;
    perf.acked("disable");
    let (counts, syscalls_note) = perf.finish();
    if let Some(note) = &syscalls_note {
        eprintln!("ringway-load: system calls not counted: {note}");
    }
    let usage = before
        .iter()
        .zip(&after)
        .zip(
            counts
                .iter()
                .chain(std::iter::repeat(&perfstat::Counts::default())),
        )
        .map(|((a, b), c)| Usage {
            syscalls: c.syscalls,
            io_uring_enters: c.io_uring_enters,
            ..Usage::between(a, b)
        })
        .collect();
    let mut total = Tally::new();
    let mut failure = None;
    for h in handles {
        match h.join() {
            Ok(Ok(t)) => total.merge(t),
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(_) => bail!("a load thread panicked"),
        }
    }
    if let Some(e) = failure {
        return Err(e.context("setting up connections"));
    }
    Ok(Measured {
        total,
        usage,
        window_s: common.duration.as_secs_f64(),
        syscalls_note,
    })
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Connections of thread `t` out of `total` split over `threads`.
pub(crate) fn share(total: usize, threads: usize, t: usize) -> usize {
    total / threads + usize::from(t < total % threads)
}

fn source(common: &Common, i: usize) -> Option<IpAddr> {
    (!common.source_ips.is_empty()).then(|| common.source_ips[i % common.source_ips.len()])
}

/// Open `count` connections from thread `t`, 64 at a time.
pub(crate) async fn open_many(
    common: &Common,
    t: usize,
    count: usize,
) -> Result<Vec<(Conn, Vec<u8>)>> {
    let request = common.target.request();
    let mut out = Vec::with_capacity(count);
    let mut i = 0;
    while i < count {
        let batch = (count - i).min(64);
        let mut pending = Vec::with_capacity(batch);
        for k in 0..batch {
            let src = source(common, t * 1_000_003 + i + k);
            let (target, request) = (common.target.clone(), request.clone());
            pending.push(monoio::spawn(async move {
                client::connect(&target, &request, src).await
            }));
        }
        for p in pending {
            let (s, rest, _) = p.await?;
            out.push((s, rest));
        }
        i += batch;
    }
    Ok(out)
}

/// Echo (and bulk): messages over `connections`, closed or open loop.
pub fn echo(common: &Common, opts: &EchoOpts) -> Result<Report> {
    let opcode = if opts.binary {
        ws::OP_BINARY
    } else {
        ws::OP_TEXT
    };
    let frame = client::frame(opcode, opts.size);
    let inflight = match opts.load {
        Load::Closed { inflight } => inflight.max(1),
        Load::Open { .. } => 1,
    };
    let burst = client::burst(&frame, inflight);
    let (c1, c2) = (common.clone(), common.clone());
    let (conns, threads, load) = (opts.connections, common.threads.max(1), opts.load);
    let measured = run_threads(
        common,
        move |t| {
            let c = c1.clone();
            Box::pin(async move { open_many(&c, t, share(conns, threads, t)).await })
        },
        move |t, streams, w| {
            let (frame, burst) = (frame.clone(), burst.clone());
            let per_conn_rate = match load {
                Load::Open { rate } => Some(rate / conns.max(1) as f64),
                Load::Closed { .. } => None,
            };
            let _ = (&c2, t);
            async move {
                let tally = Rc::new(RefCell::new(Tally::new()));
                for (s, _) in &streams {
                    tally.borrow_mut().tls(s.tls_info());
                }
                let mut tasks = Vec::new();
                for (i, (s, rest)) in streams.into_iter().enumerate() {
                    let (tally, frame, burst) = (tally.clone(), frame.clone(), burst.clone());
                    // Spread open-loop schedules so connections do not send in lockstep.
                    let phase = per_conn_rate
                        .map(|r| Duration::from_secs_f64((i as f64 / conns as f64) / r));
                    tasks.push(monoio::spawn(echo_conn(
                        s,
                        rest,
                        frame,
                        burst,
                        inflight,
                        per_conn_rate,
                        phase,
                        w,
                        tally,
                    )));
                }
                for task in tasks {
                    task.await;
                }
                Rc::try_unwrap(tally).ok().expect("tasks done").into_inner()
            }
        },
    )?;
    let bytes = measured.total.received as f64 * opts.size as f64;
    let bulk = opts.scenario == "bulk";
    Ok(finish(
        if bulk { "bulk" } else { "echo" },
        common,
        opts.connections as u64,
        measured,
        bytes,
        |received, mb| if bulk { mb } else { received },
    ))
}

/// Build the report; `units(received, mb)` is what CPU and system calls
/// are divided by.
pub(crate) fn finish(
    scenario: &'static str,
    common: &Common,
    connections: u64,
    measured: Measured,
    payload_bytes: f64,
    units: impl Fn(f64, f64) -> f64,
) -> Report {
    let Measured {
        total,
        usage,
        window_s,
        syscalls_note,
    } = measured;
    let mb = payload_bytes / 1e6;
    let work = units(total.received as f64, mb);
    let syscalls_per_unit = usage
        .iter()
        .map(|u| perfstat::per_unit(u.syscalls, work))
        .collect();
    let io_uring_enters_per_unit = usage
        .iter()
        .map(|u| perfstat::per_unit(u.io_uring_enters, work))
        .collect();
    let cpu_us_per_unit = usage
        .iter()
        .map(|u| {
            if work > 0.0 {
                u.cpu_s * 1e6 / work
            } else {
                0.0
            }
        })
        .collect();
    Report {
        scenario,
        target: common.target.url(),
        window_s,
        connections,
        sent: total.sent,
        echoed: total.echoed,
        received: total.received,
        errors: total.error_count,
        error_samples: total.errors,
        per_sec: total.received as f64 / window_s,
        mb_per_sec: mb / window_s,
        latency: Latency::from_histogram(&total.hist),
        usage,
        cpu_us_per_unit,
        syscalls_per_unit,
        io_uring_enters_per_unit,
        syscalls_note,
        rss_kib_per_conn: Vec::new(),
        tls: total.tls,
    }
}

/// A count of echoes the writer may send, with a waker: the reader hands
/// credits to the writer of the same connection (same thread).
#[derive(Default)]
struct Credits {
    n: Cell<usize>,
    closed: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Credits {
    fn give(&self, n: usize) {
        self.n.set(self.n.get() + n);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn close(&self) {
        self.closed.set(true);
        self.give(0);
    }

    /// Wait for credits; 0 means the reader is gone.
    fn take(&self) -> impl Future<Output = usize> + '_ {
        std::future::poll_fn(move |cx: &mut Context<'_>| {
            let n = self.n.replace(0);
            if n > 0 || self.closed.get() {
                return Poll::Ready(n);
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn echo_conn(
    stream: Conn,
    early: Vec<u8>,
    frame: Bytes,
    burst: Bytes,
    inflight: usize,
    rate: Option<f64>,
    phase: Option<Duration>,
    w: Window,
    tally: Rc<RefCell<Tally>>,
) {
    let (mut rd, mut wr) = stream.into_split();
    // Intended send times of the messages in flight, oldest first.
    let sent_at: Rc<RefCell<VecDeque<Instant>>> = Rc::default();
    let credits = Rc::new(Credits::default());
    // The writer borrows its half: dropping it when the window ends would send
    // a FIN, and a proxy without half-close (nginx) would then cut the tunnel
    // before the last echoes are back. It is dropped after the reader is done.
    let writer = async {
        let len = frame.len();
        if let Some(rate) = rate {
            let interval = Duration::from_secs_f64(1.0 / rate.max(1e-9));
            let mut next = Instant::now() + phase.unwrap_or_default();
            while next < w.end {
                if next > Instant::now() {
                    monoio::time::sleep_until(next.into()).await;
                }
                sent_at.borrow_mut().push_back(next);
                let (r, _) = wr.write_all(frame.clone()).await;
                if let Err(e) = r {
                    tally.borrow_mut().error(format!("send: {e}"));
                    return;
                }
                tally.borrow_mut().sent += 1;
                next += interval;
            }
            return;
        }
        let mut n = inflight;
        loop {
            let now = Instant::now();
            if now >= w.end {
                return;
            }
            for _ in 0..n {
                sent_at.borrow_mut().push_back(now);
            }
            let (r, _) = wr.write_all(burst.slice(..n * len)).await;
            if let Err(e) = r {
                tally.borrow_mut().error(format!("send: {e}"));
                return;
            }
            tally.borrow_mut().sent += n as u64;
            n = credits.take().await;
            if n == 0 {
                return;
            }
        }
    };
    let reader = async {
        let mut counter = FrameCounter::default();
        let mut buf = Vec::with_capacity(64 * 1024);
        let grace = w.end + Duration::from_secs(5);
        let mut on_data = |data: &[u8]| {
            let mut done = 0;
            let now = Instant::now();
            counter.feed(data, |_| {
                done += 1;
                if let Some(t0) = sent_at.borrow_mut().pop_front() {
                    let mut t = tally.borrow_mut();
                    t.echoed += 1;
                    if w.contains(now) {
                        t.received += 1;
                        let _ = t.hist.record((now - t0).as_nanos().max(1000) as u64);
                    }
                }
            });
            done
        };
        let mut got = on_data(&early);
        loop {
            if got > 0 {
                credits.give(got);
            }
            if Instant::now() >= w.end && sent_at.borrow().is_empty() {
                break;
            }
            // Wake at the end of the window (to stop if nothing is in
            // flight), then at the end of the grace period at the latest.
            let wake = if Instant::now() < w.end { w.end } else { grace };
            buf.clear();
            let (res, b) = read_until(&mut rd, buf, wake).await;
            let res = match res {
                Some(r) => r,
                None if wake < grace => {
                    buf = b;
                    got = 0;
                    continue;
                }
                None => {
                    tally
                        .borrow_mut()
                        .error("echoes missing at the end of the run");
                    break;
                }
            };
            buf = b;
            match res {
                Ok(0) => {
                    if !sent_at.borrow().is_empty() {
                        tally
                            .borrow_mut()
                            .error("connection closed with echoes missing");
                    }
                    break;
                }
                Ok(_) => got = on_data(&buf),
                Err(e) => {
                    tally.borrow_mut().error(format!("receive: {e}"));
                    break;
                }
            }
        }
        credits.close();
    };
    monoio::join!(writer, reader);
}

/// Read, or give up at `deadline` without losing bytes: the read is then
/// cancelled and awaited, so data that raced the cancel is still returned
/// (a dropped io_uring read can swallow it: its cancel reaches the kernel
/// only at the next submission, and bytes that arrive meanwhile land in
/// the abandoned buffer). `None`:
/// the deadline passed and nothing was read.
async fn read_until(
    rd: &mut ConnRead,
    buf: Vec<u8>,
    deadline: Instant,
) -> (Option<std::io::Result<usize>>, Vec<u8>) {
    let canceller = Canceller::new();
    let mut read = std::pin::pin!(rd.cancelable_read(buf, canceller.handle()));
    let timer = monoio::time::sleep_until(deadline.into());
    let finished = monoio::select! {
        r = &mut read => Some(r),
        _ = timer => None,
    };
    let (res, buf) = match finished {
        Some(r) => r,
        None => {
            canceller.cancel();
            read.await
        }
    };
    match res {
        Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => (None, buf),
        r => (Some(r), buf),
    }
}

/// Connect: open, upgrade, one echo, clean close; `concurrency` at a time.
pub fn connect(common: &Common, concurrency: usize) -> Result<Report> {
    let c = common.clone();
    let threads = common.threads.max(1);
    let measured = run_threads(
        common,
        |_| Box::pin(async { Ok(()) }),
        move |t, (), w| {
            let c = c.clone();
            async move {
                let tally = Rc::new(RefCell::new(Tally::new()));
                let request = c.target.request();
                let ping = client::frame_with(ws::OP_TEXT, b"hello");
                let close = client::frame_with(ws::OP_CLOSE, &1000u16.to_be_bytes());
                let mut tasks = Vec::new();
                for k in 0..share(concurrency, threads, t) {
                    let (c, tally, request, ping, close) = (
                        c.clone(),
                        tally.clone(),
                        request.clone(),
                        ping.clone(),
                        close.clone(),
                    );
                    tasks.push(monoio::spawn(async move {
                        let mut i = k;
                        while Instant::now() < w.end {
                            let src = source(&c, t * 1_000_003 + i);
                            i += concurrency;
                            tally.borrow_mut().sent += 1;
                            match one_exchange(&c.target, &request, src, &ping, &close).await {
                                Ok((took, tls)) => {
                                    let mut tl = tally.borrow_mut();
                                    tl.tls(tls);
                                    tl.echoed += 1;
                                    if w.contains(Instant::now()) {
                                        tl.received += 1;
                                        let _ = tl.hist.record(took.as_nanos().max(1000) as u64);
                                    }
                                }
                                Err(e) => {
                                    tally.borrow_mut().error(format!("{e:#}"));
                                    monoio::time::sleep(Duration::from_millis(10)).await;
                                }
                            }
                        }
                    }));
                }
                for task in tasks {
                    task.await;
                }
                Rc::try_unwrap(tally).ok().expect("tasks done").into_inner()
            }
        },
    )?;
    Ok(finish(
        "connect",
        common,
        concurrency as u64,
        measured,
        0.0,
        |r, _| r,
    ))
}

/// One connect scenario cycle; returns the handshake time, and what TLS
/// negotiated for wss://.
async fn one_exchange(
    target: &Target,
    request: &Bytes,
    src: Option<IpAddr>,
    ping: &Bytes,
    close: &Bytes,
) -> Result<(Duration, Option<TlsInfo>)> {
    let (mut stream, early, took) = client::connect(target, request, src).await?;
    let mut counter = FrameCounter::default();
    let mut seen = Vec::new();
    counter.feed(&early, |op| seen.push(op));
    let (r, _) = stream.write_all(ping.clone()).await;
    r?;
    let (r, _) = stream.write_all(close.clone()).await;
    r?;
    let mut buf = Vec::with_capacity(256);
    let deadline = Duration::from_secs(10);
    while !seen.contains(&ws::OP_CLOSE) {
        buf.clear();
        let (res, b) = monoio::time::timeout(deadline, stream.read(buf))
            .await
            .map_err(|_| anyhow::anyhow!("no echo/close within 10s"))?;
        buf = b;
        if res? == 0 {
            bail!("closed before the close frame came back");
        }
        counter.feed(&buf, |op| seen.push(op));
    }
    if seen.first() != Some(&ws::OP_TEXT) {
        bail!("expected the echo before the close, got opcodes {seen:?}");
    }
    Ok((took, stream.tls_info()))
}

/// Idle: hold `connections` open for the window, then ping every one.
pub fn idle(common: &Common, connections: usize) -> Result<Report> {
    let c = common.clone();
    let threads = common.threads.max(1);
    let before = procstat::sample_all(&common.watch)?;
    let measured = run_threads(
        common,
        move |t| {
            let c = c.clone();
            Box::pin(async move { open_many(&c, t, share(connections, threads, t)).await })
        },
        move |_, streams, w| async move {
            let mut tally = Tally::new();
            tally.sent = streams.len() as u64;
            for (s, _) in &streams {
                tally.tls(s.tls_info());
            }
            // Hold: nothing pending on any connection.
            monoio::time::sleep_until(w.end.into()).await;
            ping_all(streams.into_iter().map(|(s, _)| s), &mut tally).await;
            tally
        },
    )?;
    let mut r = finish("idle", common, connections as u64, measured, 0.0, |r, _| r);
    held_memory(&mut r, &before, connections);
    Ok(r)
}

/// Memory per held connection: from `before` (sampled before the
/// connections were opened) to the end of the window, per connection.
pub(crate) fn held_memory(r: &mut Report, before: &[procstat::Sample], connections: usize) {
    r.rss_kib_per_conn = before
        .iter()
        .zip(&r.usage)
        .map(|(b, u)| (u.rss_kib_after as f64 - b.rss_kib as f64) / connections.max(1) as f64)
        .collect();
    for (u, b) in r.usage.iter_mut().zip(before) {
        u.rss_kib_before = b.rss_kib;
        u.fds_before = b.fds;
    }
}

/// Ping every connection and wait for each pong (10 s at most each, from
/// the ping's send to its pong): a pong counts as echoed and received,
/// anything else as an error.
pub(crate) async fn ping_all(streams: impl Iterator<Item = Conn>, tally: &mut Tally) {
    let ping = client::frame_with(ws::OP_PING, b"alive?");
    let mut tasks = Vec::new();
    for mut s in streams {
        let ping = ping.clone();
        tasks.push(monoio::spawn(async move {
            let exchange = async {
                let (r, _) = s.write_all(ping).await;
                r?;
                let mut counter = FrameCounter::default();
                let mut pong = false;
                let mut buf = Vec::with_capacity(64);
                while !pong {
                    buf.clear();
                    let (res, b) = s.read(buf).await;
                    buf = b;
                    if res? == 0 {
                        bail!("closed while idle");
                    }
                    counter.feed(&buf, |op| pong |= op == ws::OP_PONG);
                }
                Ok::<_, anyhow::Error>(())
            };
            monoio::time::timeout(Duration::from_secs(10), exchange)
                .await
                .map_err(|_| anyhow::anyhow!("no pong within 10s"))?
        }));
    }
    for task in tasks {
        match task.await {
            Ok(()) => {
                tally.echoed += 1;
                tally.received += 1;
            }
            Err(e) => tally.error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_add_up() {
        for total in 0..20 {
            for threads in 1..5 {
                let sum: usize = (0..threads).map(|t| share(total, threads, t)).sum();
                assert_eq!(sum, total);
            }
        }
    }
}
