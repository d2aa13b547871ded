//! The process: start one pinned worker per core, hand each its listeners,
//! wait for them. The folder: `listener` (SO_REUSEPORT groups, steering),
//! `worker` (one core's runtime and tasks), `drain` (one core's shutdown),
//! `shutdown` (the cross-thread drain signal), `signals`, and what tells
//! the world outside: `notify` (systemd readiness), `pidfile`, `watch`
//! (`--watch-config`).
//!
//! Listeners are bound here, on the calling thread, before any worker runs
//! (see `server::listener` for why). [`start`] returns once every worker has built
//! its runtime, so a caller (a test, `main`) can use the bound addresses at
//! once; [`Server::wait`] joins the workers after a shutdown.

pub mod drain;
pub mod listener;
pub mod notify;
pub mod pidfile;
pub mod shutdown;
pub mod signals;
pub mod watch;
pub mod worker;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use crate::config::reload::Reloader;
use crate::config::{Listen, Settings, Startup};
use crate::ops::access_log::{AccessLog, AccessLogError};
use crate::ops::metrics::{self, Metrics, State};
use crate::policy::limits::Shared;
use crate::server::listener::{ListenError, Steering};
use crate::server::shutdown::Shutdown;
use crate::server::worker::{WorkerError, WorkerSpec};

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot start worker thread {0}: {1}")]
    Spawn(usize, std::io::Error),
    #[error("worker {0} could not start: {1}")]
    WorkerStart(usize, String),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("worker {0} panicked")]
    Panicked(usize),
    #[error("--access-log: {0}")]
    AccessLog(#[from] AccessLogError),
    #[error("--metrics-listen {0}: {1}")]
    Metrics(SocketAddr, std::io::Error),
    #[error("--pid-file {0}: {1}")]
    PidFile(std::path::PathBuf, std::io::Error),
    #[error("--watch-config {0}: {1}")]
    Watch(std::path::PathBuf, std::io::Error),
}

/// What asked for a reload: how its log lines begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP (`systemctl reload`, `kill -HUP`).
    Signal,
    /// The `--config` file changed (`--watch-config`).
    ConfigFile,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::Signal => "SIGHUP",
            Trigger::ConfigFile => "config file change",
        })
    }
}

/// A running ringway.
pub struct Server {
    addrs: Vec<SocketAddr>,
    shutdown: Shutdown,
    reloader: Arc<Reloader>,
    metrics: Arc<Metrics>,
    /// Where the metrics endpoint listens (`--metrics-listen`, port 0
    /// resolved).
    metrics_addr: Option<SocketAddr>,
    access: AccessLog,
    workers: Vec<JoinHandle<Result<(), WorkerError>>>,
}

impl Server {
    /// The bound listen addresses (port 0 resolved), in `--listen` order,
    /// then those of `--tls-listen`.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// A handle that starts the drain (like SIGTERM) from any thread.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The metrics endpoint's address, with `--metrics-listen`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// What SIGHUP does: read the configuration again (see `config::reload`),
    /// reopen the access log, and count the outcome.
    pub fn operations(&self) -> Operations {
        Operations {
            reloader: self.reloader.clone(),
            metrics: self.metrics.clone(),
            access: self.access.clone(),
        }
    }

    /// Stop at once, without a drain, because of `why` (a start that
    /// could not be finished); returns `why` once every worker has stopped.
    fn abandon(self, why: ServerError) -> ServerError {
        self.shutdown.force();
        let _ = self.wait();
        why
    }

    /// Wait until every worker has drained and stopped.
    pub fn wait(self) -> Result<(), ServerError> {
        let mut result = Ok(());
        for (i, w) in self.workers.into_iter().enumerate() {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = result.and(Err(e.into())),
                Err(_) => result = result.and(Err(ServerError::Panicked(i))),
            }
        }
        // Every core has handed its last lines over.
        self.access.close();
        result
    }
}

/// What a SIGHUP acts on.
#[derive(Debug)]
pub struct Operations {
    reloader: Arc<Reloader>,
    metrics: Arc<Metrics>,
    access: AccessLog,
}

impl Operations {
    /// SIGHUP (or a `--watch-config` change, `trigger`): reopen the
    /// access log; read the configuration and certificates again, or log
    /// why not (the configuration in force stays). systemd hears of the
    /// reload and of its end. Returns whether the configuration was
    /// reloaded.
    pub fn reload(&self, trigger: Trigger) -> bool {
        notify::reloading();
        self.access.reopen();
        let done = match self.reloader.reload() {
            Ok(summary) => {
                self.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                log::info!(
                    "{trigger}: configuration reloaded ({summary}); new connections use it, live ones keep theirs"
                );
                true
            }
            Err(why) => {
                self.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "{trigger}: configuration reload failed: {why}; keeping the configuration in force"
                );
                false
            }
        };
        notify::ready(if done {
            "running; last reload applied"
        } else {
            "running; last reload refused (see the log)"
        });
        done
    }
}

/// Descriptors kept aside from tunnels besides each worker's own: the
/// metrics endpoint's clients, the logs, a reload's configuration and
/// certificate files, the process's own.
const FD_RESERVE: u64 = 64;

/// Descriptors each worker holds besides its connections: its listeners,
/// its rings and their eventfd, its timer; its splice pipes come on top.
const FD_PER_WORKER: u64 = 8;

/// Tunnels below which a host's open-files limit earns a warning.
const FEW_TUNNELS: u64 = 10_000;

/// Raise the open-files limit as far as allowed, say what it allows, and
/// bound connections by it (`shared`): a client beyond the room its two
/// descriptors need is answered 503 as over `--max-conns`, before it can
/// take the descriptor its backend needs; one far beyond is closed
/// unanswered, so that the reserve (the metrics endpoint, the logs,
/// reloads) is never spent.
fn check_fd_limit(startup: &Startup, shared: &Shared) {
    match crate::sys::raise_nofile_limit() {
        Ok((soft, hard)) => {
            let per_worker =
                FD_PER_WORKER + startup.listen.len() as u64 + 2 * startup.splice_pipes as u64;
            let reserve = FD_RESERVE + crate::ops::metrics::MAX_CLIENTS as u64;
            let fixed = reserve + per_worker * startup.workers as u64;
            let tunnels = soft.saturating_sub(fixed) / 2;
            // Those over the room hold one descriptor each until answered:
            // they may take half of the reserve.
            let ceiling = tunnels + reserve / 2;
            shared.total.set_room(
                usize::try_from(tunnels).unwrap_or(usize::MAX),
                usize::try_from(ceiling).unwrap_or(usize::MAX),
            );
            if tunnels < FEW_TUNNELS {
                log::warn!(
                    "open-files limit {soft} (hard {hard}) holds only {tunnels} tunnels \
                     (2 descriptors each; more get 503); raise it: `ulimit -n 1048576`, \
                     LimitNOFILE= in the systemd unit, see tuning/"
                );
            } else {
                log::info!("open-files limit {soft}: room for {tunnels} tunnels (more get 503)");
            }
        }
        Err(e) => log::warn!("cannot read the open-files limit: {e}"),
    }
}

/// Bind, steer, and start the workers, with a configuration that cannot be
/// reloaded (it was not read from a command line).
pub fn start(settings: Settings, shutdown: Shutdown) -> Result<Server, ServerError> {
    let cores = settings.startup.workers;
    start_with(Arc::new(Reloader::new(settings, None, cores)), shutdown)
}

/// Bind, steer, and start the workers with the reloader's start-up
/// settings (the workers take its configuration in force).
pub fn start_with(reloader: Arc<Reloader>, shutdown: Shutdown) -> Result<Server, ServerError> {
    let startup = reloader.startup();
    let shared = Arc::new(Shared::default());
    check_fd_limit(startup, &shared);
    let n = startup.workers;
    let cores = if startup.pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let cpu_of = |i: usize| (!cores.is_empty()).then(|| cores[i % cores.len()]);

    // per_worker[w] = that worker's listener for each listen address.
    let mut per_worker: Vec<Vec<(std::net::TcpListener, Listen)>> =
        (0..n).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    let access = AccessLog::start(startup.access_log.clone(), startup.access_log_format)?;
    let metrics = Arc::new(Metrics::new(n));
    let metrics_addr = match startup.metrics_listen {
        Some(addr) => Some(metrics_endpoint(
            addr, &metrics, &access, &shared, &shutdown,
        )?),
        None => None,
    };
    for &listen in &startup.listen {
        let (group, bound) =
            listener::bind_group(listen.addr, n, startup.backlog, startup.tcp_keepalive)?;
        // Steering maps a CPU to one socket: with more workers than cores,
        // the extra workers would never get a connection, so leave it to
        // the kernel's hash then.
        let steering = if cores.is_empty() || n > cores.len() {
            Steering::None
        } else {
            let cpus: Vec<usize> = (0..n).map(|i| cores[i % cores.len()].id).collect();
            listener::steer(&group, &cpus)
        };
        let scheme = if listen.tls { "wss" } else { "ws" };
        let proxy = if listen.proxy_protocol {
            ", PROXY protocol"
        } else {
            ""
        };
        log::info!("listening on {bound} ({scheme}{proxy}, {n} workers, steering: {steering:?})");
        addrs.push(bound);
        for (w, l) in group.into_iter().enumerate() {
            per_worker[w].push((l, listen));
        }
    }

    let (ready_tx, ready_rx) = mpsc::channel();
    let mut workers = Vec::with_capacity(n);
    for (id, listeners) in per_worker.into_iter().enumerate() {
        let spec = WorkerSpec {
            id,
            cpu: cpu_of(id),
            listeners,
            reloader: reloader.clone(),
            shared: shared.clone(),
            shutdown: shutdown.clone(),
            metrics: metrics.cores[id].clone(),
            log: access.core(),
        };
        let tx = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("ringway-w{id}"))
            .spawn(move || {
                worker::run(spec, |r| {
                    let _ = tx.send((id, r));
                })
            })
            .map_err(|e| ServerError::Spawn(id, e))?;
        workers.push(handle);
    }
    drop(ready_tx);
    let mut failure = None;
    let mut drivers: Vec<&'static str> = Vec::with_capacity(n);
    for _ in 0..n {
        match ready_rx.recv() {
            Ok((_, Ok(driver))) => drivers.push(driver),
            Ok((id, Err(e))) => failure = failure.or(Some(ServerError::WorkerStart(id, e))),
            Err(_) => break,
        }
    }
    drivers.dedup();
    metrics.set_driver(match drivers.as_slice() {
        [one] => one,
        _ => "mixed",
    });
    let server = Server {
        addrs,
        shutdown,
        reloader,
        metrics,
        metrics_addr,
        access,
        workers,
    };
    match failure {
        Some(e) => Err(server.abandon(e)),
        None => Ok(server),
    }
}

/// Bind the metrics endpoint and start its thread; its address.
fn metrics_endpoint(
    addr: SocketAddr,
    metrics: &Arc<Metrics>,
    access: &AccessLog,
    shared: &Arc<Shared>,
    shutdown: &Shutdown,
) -> Result<SocketAddr, ServerError> {
    let fail = |e| ServerError::Metrics(addr, e);
    let listener = std::net::TcpListener::bind(addr).map_err(fail)?;
    let bound = listener.local_addr().map_err(fail)?;
    let (m, access, shared, shutdown) = (
        metrics.clone(),
        access.clone(),
        shared.clone(),
        shutdown.clone(),
    );
    let state = Arc::new(move || {
        m.access_log_dropped
            .store(access.dropped(), Ordering::Relaxed);
        State {
            draining: shutdown.is_triggered(),
            open_connections: shared.total.open() as u64,
        }
    });
    metrics::spawn_endpoint(listener, metrics.clone(), state).map_err(fail)?;
    log::info!("metrics on http://{bound}/metrics (and /status, /healthz)");
    Ok(bound)
}

/// Start, drain on the first SIGTERM/SIGINT (close at once on a second),
/// reload on SIGHUP (reading `argv` again, the command line `settings` were
/// built from, with `cores` the default worker count), and return when every
/// worker has stopped.
pub fn run(settings: Settings, argv: Vec<OsString>, cores: usize) -> Result<(), ServerError> {
    let shutdown = Shutdown::new();
    let reloader = Arc::new(Reloader::new(settings, Some(argv), cores));
    // Signals are handled from before the start, SIGHUP once it is done,
    // on a thread of its own: a slow reload (names to resolve, files to
    // read) must not hold up a SIGTERM behind it.
    // One reload at a time, whoever asks: SIGHUP or the config watcher.
    let (reload_tx, reload_rx) = std::sync::mpsc::channel::<Trigger>();
    let hup_tx = reload_tx.clone();
    signals::install(
        shutdown.clone(),
        Box::new(move || {
            let _ = hup_tx.send(Trigger::Signal);
        }),
    );
    let (pid_file, watch_config) = {
        let startup = reloader.startup();
        (startup.pid_file.clone(), startup.watch_config.clone())
    };
    let server = start_with(reloader, shutdown)?;
    let ops = server.operations();
    let spawned = std::thread::Builder::new()
        .name("ringway-reload".into())
        .spawn(move || {
            while let Ok(trigger) = reload_rx.recv() {
                ops.reload(trigger);
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the reload thread ({e}); SIGHUP will not reload");
    }
    if let Some(file) = watch_config {
        if let Err(e) = watch::spawn(file.clone(), reload_tx) {
            return Err(server.abandon(ServerError::Watch(file, e)));
        }
    }
    // Removed (if still ours) when it drops, after the workers stop.
    let _pid_file = match pid_file {
        None => None,
        Some(p) => match pidfile::PidFile::write(&p) {
            Ok(written) => Some(written),
            Err(e) => return Err(server.abandon(ServerError::PidFile(p, e))),
        },
    };
    notify::ready(&format!(
        "running; listening on {}",
        server
            .addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    server.wait()
}
