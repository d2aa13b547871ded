//! The processes of a hold scenario: ringway and `ringway-echo` backends,
//! each a child started on 127.0.0.1 port 0 (or a given port, to restart a
//! backend where it was) whose address is read from its own start-up line.
//! Their output is read on a thread per pipe, which keeps the last lines
//! (shown when something goes wrong) and counts what the scenarios wait
//! for (reloads, errors). Every child is stopped when its handle drops:
//! ringway with SIGTERM then SIGKILL after 5 s, a backend with SIGKILL.
//! ringway's `/metrics` is read by [`Metrics::scrape`].

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::hold::Setup;
use crate::perfstat::signal;
use crate::procstat::{self, Sample};

/// How long a process may take to start listening.
const START_LIMIT: Duration = Duration::from_secs(15);

/// What a child's output said so far.
#[derive(Debug, Default)]
struct Seen {
    /// The last lines, for error messages.
    tail: VecDeque<String>,
    /// `listening on ADDR` (ringway's first plain listener, or the echo
    /// backend's address).
    listening: Option<SocketAddr>,
    /// ringway's `metrics on http://ADDR/metrics`.
    metrics: Option<SocketAddr>,
    /// ringway's `started: core` lines (one per worker).
    workers: usize,
    /// ringway's `SIGHUP: configuration reloaded` lines.
    reloaded: u64,
    /// ringway's `SIGHUP: configuration reload failed` lines.
    reload_failed: u64,
    /// Lines at level ERROR, and the first of them.
    errors: u64,
    first_error: Option<String>,
}

impl Seen {
    fn note(&mut self, line: String) {
        if let Some(rest) = line.split("listening on ").nth(1) {
            let addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            self.listening = self.listening.or(addr);
        }
        if let Some(rest) = line.split("metrics on http://").nth(1) {
            self.metrics = rest.split('/').next().and_then(|a| a.parse().ok());
        }
        if line.contains("started: core") {
            self.workers += 1;
        }
        if line.contains("SIGHUP: configuration reloaded") {
            self.reloaded += 1;
        }
        if line.contains("SIGHUP: configuration reload failed") {
            self.reload_failed += 1;
        }
        if line.contains(" ERROR ") {
            self.errors += 1;
            self.first_error.get_or_insert_with(|| line.clone());
        }
        if self.tail.len() == 40 {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }
}

/// A child process, stopped on drop.
pub struct Proc {
    name: String,
    child: Child,
    seen: Arc<Mutex<Seen>>,
    /// SIGTERM first (and wait up to 5 s), or SIGKILL at once.
    graceful: bool,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, graceful: bool) -> Result<Proc> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("piped")),
            Box::new(child.stderr.take().expect("piped")),
        ];
        for pipe in pipes {
            let seen = seen.clone();
            // Ends at EOF, when the child is gone.
            std::thread::Builder::new()
                .name(format!("{name}-output"))
                .spawn(move || {
                    for line in BufReader::new(pipe).lines() {
                        let Ok(line) = line else { break };
                        seen.lock().unwrap().note(line);
                    }
                })?;
        }
        Ok(Proc {
            name: name.into(),
            child,
            seen,
            graceful,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running (not exited, not reaped).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines it wrote.
    pub fn tail(&self) -> String {
        let seen = self.seen.lock().unwrap();
        seen.tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap())
    }

    /// Wait until `ready` finds what it looks for in the output, the child
    /// exits, or [`START_LIMIT`].
    fn wait_for<T>(&mut self, setup: &Setup, ready: impl Fn(&Seen) -> Option<T>) -> Result<T> {
        let end = Instant::now() + START_LIMIT;
        loop {
            setup.check_stop()?;
            if let Some(t) = self.seen(&ready) {
                return Ok(t);
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                // Let the output threads catch the last lines.
                std::thread::sleep(Duration::from_millis(50));
                bail!("{} exited at start ({st}):\n{}", self.name, self.tail());
            }
            if Instant::now() >= end {
                bail!(
                    "{} not ready after {START_LIMIT:?}:\n{}",
                    self.name,
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL now, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stop(&mut self) {
        if !self.running() {
            return;
        }
        if self.graceful {
            signal(self.pid(), "TERM");
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if !self.running() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            eprintln!(
                "{} did not stop within 5 s of SIGTERM; killing it",
                self.name
            );
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `ringway-echo` backend that names itself in its 101s.
pub struct Echo {
    pub proc: Proc,
    pub name: String,
    pub addr: SocketAddr,
}

impl Echo {
    /// Start `ringway-echo --name NAME` on `listen` (port 0 for any).
    pub fn start(setup: &Setup, name: &str, listen: SocketAddr) -> Result<Echo> {
        let mut proc = Proc::spawn(
            &format!("ringway-echo {name}"),
            Command::new(&setup.echo)
                .args(["--listen", &listen.to_string()])
                .args(["--threads", "1", "--name", name]),
            false,
        )?;
        let addr = proc.wait_for(setup, |s| s.listening)?;
        Ok(Echo {
            proc,
            name: name.into(),
            addr,
        })
    }
}

/// A running ringway.
pub struct Ringway {
    pub proc: Proc,
    /// Its plain listener.
    pub addr: SocketAddr,
    /// Its metrics endpoint.
    pub metrics: SocketAddr,
}

impl Ringway {
    /// Start ringway with `args` (which must not name the listeners, the
    /// workers or the log level: they are added here), wait until every
    /// worker has started, and learn its addresses from its log.
    pub fn start(setup: &Setup, args: &[String]) -> Result<Ringway> {
        let workers = setup.workers.max(1);
        let mut proc = Proc::spawn(
            "ringway",
            Command::new(&setup.ringway)
                .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
                .args(["--workers", &workers.to_string(), "--no-pin"])
                .args(["--log-level", "info"])
                .args(args)
                .args(&setup.ringway_args)
                .env_remove("RUST_LOG"),
            true,
        )?;
        let (addr, metrics) = proc.wait_for(setup, |s| {
            (s.workers >= workers)
                .then_some(())
                .and(s.listening.zip(s.metrics))
        })?;
        Ok(Ringway {
            proc,
            addr,
            metrics,
        })
    }

    /// Memory, descriptors and CPU time now.
    pub fn sample(&self) -> Result<Sample> {
        procstat::sample(self.proc.pid())
    }

    /// Send SIGHUP.
    pub fn hup(&self) {
        signal(self.proc.pid(), "HUP");
    }

    /// Reloads logged so far: (done, failed).
    pub fn reloads(&self) -> (u64, u64) {
        self.proc.seen(|s| (s.reloaded, s.reload_failed))
    }

    /// ERROR lines logged so far, and the first of them.
    pub fn errors(&self) -> (u64, Option<String>) {
        self.proc.seen(|s| (s.errors, s.first_error.clone()))
    }

    pub fn scrape(&self) -> Result<Metrics> {
        Metrics::scrape(self.metrics)
    }

    /// Wait up to `limit` until the descriptors are `fds` and `open`
    /// connections are open (a connection's descriptors close a moment
    /// after its client sees the end); returns the last sample (judged by
    /// the caller).
    pub fn settle(&self, setup: &Setup, fds: u64, open: usize, limit: Duration) -> Result<Sample> {
        let end = Instant::now() + limit;
        loop {
            setup.check_stop()?;
            // The descriptors first, then the scrape: the metrics endpoint
            // keeps each scrape's socket open for up to 100 ms after its
            // answer, and the last scrape's must be gone when counting.
            std::thread::sleep(SCRAPE_LINGER);
            let s = self.sample()?;
            let now_open = self
                .scrape()?
                .get("ringway_connections_open", &[])
                .unwrap_or(-1.0);
            if (s.fds == fds && now_open == open as f64) || Instant::now() >= end {
                return Ok(s);
            }
        }
    }
}

/// Longer than the metrics endpoint keeps a scrape's socket open after its
/// answer (100 ms).
const SCRAPE_LINGER: Duration = Duration::from_millis(150);

/// One sample of a scrape: its name, its labels, its value.
type MetricSample = (String, Vec<(String, String)>, f64);

/// One scrape of ringway's `/metrics`: every sample, by name and labels.
#[derive(Debug, Default)]
pub struct Metrics {
    samples: Vec<MetricSample>,
}

impl Metrics {
    /// GET /metrics (HTTP/1.0: the endpoint closes when it has answered).
    pub fn scrape(addr: SocketAddr) -> Result<Metrics> {
        let limit = Duration::from_secs(3);
        let mut s = TcpStream::connect_timeout(&addr, limit)
            .with_context(|| format!("connecting to the metrics endpoint {addr}"))?;
        s.set_read_timeout(Some(limit))?;
        s.set_write_timeout(Some(limit))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: ringway\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)
            .context("reading the metrics answer")?;
        let (head, text) = body
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("metrics answer without a head: {body:?}"))?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            bail!("metrics answer {:?}", head.lines().next());
        }
        Ok(Metrics::parse(text))
    }

    /// The Prometheus text format's samples (comments skipped).
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split(',')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                        .collect();
                    (name, labels)
                }
                None => (series, Vec::new()),
            };
            samples.push((name.to_string(), labels, value));
        }
        Metrics { samples }
    }

    /// The sample named `name` whose labels include every one of `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| *v)
    }

    /// [`Metrics::get`], 0 when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Result<TempDir> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringway-hold-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_metrics_text() {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE x counter\nringway_tunnels_active 3\n\
             ringway_upstream_failures_total{group=\"default\",server=\"127.0.0.1:9\"} 1\n\
             ringway_upstream_failures_total{group=\"default\",server=\"127.0.0.1:8\"} 0\n",
        );
        assert_eq!(m.get("ringway_tunnels_active", &[]), Some(3.0));
        let f = "ringway_upstream_failures_total";
        assert_eq!(m.get(f, &[("server", "127.0.0.1:9")]), Some(1.0));
        assert_eq!(m.get(f, &[("server", "127.0.0.1:8")]), Some(0.0));
        assert_eq!(m.get(f, &[("server", "127.0.0.1:7")]), None);
        assert_eq!(m.value(f, &[("server", "127.0.0.1:7")]), 0.0);
    }

    #[test]
    fn notes_start_up_lines() {
        let mut s = Seen::default();
        s.note("[.. INFO  ringway::server] listening on 127.0.0.1:4321 (ws, 1 workers)".into());
        s.note("[.. INFO  ringway::server] metrics on http://127.0.0.1:4322/metrics (and /status, /healthz)".into());
        s.note("ringway-echo listening on 127.0.0.1:999".into());
        s.note("[.. ERROR ringway::server] SIGHUP: configuration reload failed: x".into());
        assert_eq!(s.listening, Some("127.0.0.1:4321".parse().unwrap()));
        assert_eq!(s.metrics, Some("127.0.0.1:4322".parse().unwrap()));
        assert_eq!((s.reloaded, s.reload_failed, s.errors), (0, 1, 1));
    }
}
