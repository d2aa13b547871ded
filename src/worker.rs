//! One worker: a thread pinned to one core, its own monoio runtime, its own
//! listener per `--listen` address, and all per-core state ([`Core`]).
//!
//! Nothing here is shared with other workers but the read-only `Config`
//! (and the [`Reloader`] that publishes new ones), the limits' counts and
//! the `Shutdown` signal.

use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpListener;

use crate::access_log::CoreLog;
use crate::balance::GroupBalancer;
use crate::config::{Config, Driver, Listen};
use crate::limits::Shared;
use crate::metrics::{CoreMetrics, RouteMetrics, ServerMetrics};
use crate::reload::Reloader;
use crate::shutdown::Shutdown;
use crate::sweep::{Expiry, Sweeper};
use crate::sys::{self, Half};
use crate::tls::{self, CoreTls, SessionCache};
use crate::tunnel::Scratch;

/// How long connections get to finish once the drain deadline has shut their
/// sockets down (they normally need one loop turn).
const FORCED_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How often a core hands its access-log lines to the writer thread (and
/// at its end).
const LOG_FLUSH: Duration = Duration::from_millis(100);

/// Per-core state, owned by the worker's thread; connections borrow it.
#[derive(Debug)]
pub struct Core {
    /// Worker index, for log lines.
    pub id: usize,
    /// The buffer every transfer on this core goes through.
    pub scratch: Scratch,
    /// Live connections and their deadlines.
    pub sweeper: Rc<Sweeper>,
    /// The limits all cores share.
    pub shared: Arc<Shared>,
    /// Where new configurations come from.
    reloader: Arc<Reloader>,
    /// The generation new connections get (see [`Core::generation`]).
    current: RefCell<Rc<Generation>>,
    /// The reloader's version last looked at.
    seen: Cell<u64>,
    /// TLS sessions remembered for resumption, kept across reloads.
    tls_cache: SessionCache,
    /// This core's counters (only this core writes them).
    pub metrics: Arc<CoreMetrics>,
    /// This core's access-log buffer.
    pub log: CoreLog,
}

/// What one configuration gives this core: the configuration, this core's
/// balancing state for its groups, its TLS server configuration. Each
/// connection holds the generation it was accepted under until it ends, so
/// a reload never changes a live connection's routes, backend or counts;
/// the old generation is freed with its last connection.
#[derive(Debug)]
pub struct Generation {
    pub config: Arc<Config>,
    /// The reloader's version of `config`.
    pub version: u64,
    /// Per group (as in `config.groups`): this core's balancing state.
    pub balancers: Vec<GroupBalancer>,
    /// This core's TLS server configuration (with TLS listeners).
    pub tls: Option<CoreTls>,
    /// Per route (as in `config.routes.iter()`): its label and counters.
    pub routes: Vec<(Box<str>, Arc<RouteMetrics>)>,
    /// Per group, per server (as in `config.groups`): its counters.
    pub servers: Vec<Vec<Arc<ServerMetrics>>>,
}

impl Generation {
    fn new(
        config: Arc<Config>,
        version: u64,
        cache: &SessionCache,
        metrics: &CoreMetrics,
    ) -> Result<Generation, String> {
        let tls = match &config.tls {
            Some(shared) => Some(CoreTls::new(shared, cache.clone())?),
            None => None,
        };
        // Counters are found by label, so that a reload keeps counting on
        // the same ones.
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let label = r.label();
                let m = metrics.route(&label);
                (label.into_boxed_str(), m)
            })
            .collect();
        let servers = config
            .groups
            .iter()
            .map(|g| {
                g.servers
                    .iter()
                    .map(|s| {
                        let m = metrics.server(&g.name, &s.name);
                        m.set_down(s.params.down);
                        m
                    })
                    .collect()
            })
            .collect();
        Ok(Generation {
            routes,
            servers,
            balancers: config
                .groups
                .iter()
                .map(|g| {
                    let params: Vec<_> = g.servers.iter().map(|s| s.params).collect();
                    GroupBalancer::new(&params, g.method)
                })
                .collect(),
            tls,
            config,
            version,
        })
    }
}

impl Core {
    /// The generation for a connection accepted now: the configuration in
    /// force, this core's state for it built on first use after a reload.
    pub fn generation(&self) -> Rc<Generation> {
        self.refresh();
        self.current.borrow().clone()
    }

    /// Adopt a reloaded configuration if there is one (at each accept, and
    /// at each sweep, so that a quiet core's state follows too).
    pub fn refresh(&self) {
        if self.reloader.version() != self.seen.get() {
            self.adopt();
        }
    }

    /// The configuration new connections get (for settings read outside a
    /// connection: the drain, the sweep).
    pub fn config(&self) -> Arc<Config> {
        self.current.borrow().config.clone()
    }

    fn adopt(&self) {
        let (version, config) = self.reloader.current();
        // Tried once per reload, whatever the outcome.
        self.seen.set(version);
        match Generation::new(config, version, &self.tls_cache, &self.metrics) {
            Ok(generation) => {
                let c = &generation.config;
                self.sweeper
                    .set_timeouts(c.handshake_timeout, c.connect_timeout, c.idle_timeout);
                *self.current.borrow_mut() = Rc::new(generation);
            }
            Err(e) => {
                log::error!(
                    "worker {}: cannot use the reloaded configuration: {e}; keeping the old one",
                    self.id
                );
            }
        }
    }
}

/// Everything a worker thread is started with.
pub struct WorkerSpec {
    pub id: usize,
    pub cpu: Option<core_affinity::CoreId>,
    /// Each with what it was configured as.
    pub listeners: Vec<(std::net::TcpListener, Listen)>,
    /// The configuration (its settings fixed at start are read from it).
    pub reloader: Arc<Reloader>,
    pub shared: Arc<Shared>,
    pub shutdown: Shutdown,
    /// This worker's counters, which the metrics endpoint reads.
    pub metrics: Arc<CoreMetrics>,
    /// This worker's access-log buffer.
    pub log: CoreLog,
}

/// Why a worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker {id}: cannot build the {driver} runtime: {source}")]
    Runtime {
        id: usize,
        driver: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("worker {id}: cannot set up TLS: {why}")]
    Tls { id: usize, why: String },
    #[error("worker {id}: cannot register a listener: {source}")]
    Listener {
        id: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Run a worker on the current thread until shutdown completes. `ready` is
/// called once the runtime is built (or failed to build).
pub fn run(
    spec: WorkerSpec,
    ready: impl FnOnce(Result<&'static str, String>),
) -> Result<(), WorkerError> {
    if let Some(cpu) = spec.cpu {
        if !core_affinity::set_for_current(cpu) {
            log::warn!("worker {}: could not pin to core {}", spec.id, cpu.id);
        }
    }
    let id = spec.id;
    let (_, config) = spec.reloader.current();
    let entries = config.ring_entries;
    let want_uring = match config.driver {
        Driver::Uring => true,
        Driver::Legacy => false,
        Driver::Auto => monoio::utils::detect_uring(),
    };
    if want_uring {
        match build_uring(entries) {
            Ok((mut rt, mode)) => {
                ready(Ok("io_uring"));
                return rt.block_on(main(spec, mode));
            }
            Err(e) if config.driver == Driver::Uring => {
                ready(Err(e.to_string()));
                return Err(WorkerError::Runtime {
                    id,
                    driver: "io_uring",
                    source: e,
                });
            }
            Err(e) => log::warn!("worker {id}: io_uring unavailable ({e}); using epoll"),
        }
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => {
            ready(Ok("epoll"));
            rt.block_on(main(spec, "epoll"))
        }
        Err(e) => {
            ready(Err(e.to_string()));
            Err(WorkerError::Runtime {
                id,
                driver: "epoll",
                source: e,
            })
        }
    }
}

type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

/// Build an io_uring runtime whose completions do not interrupt the worker:
/// `DEFER_TASKRUN` (kernel 6.1+) runs completion work only when the worker
/// waits for events, in one batch; `COOP_TASKRUN` (5.19+) at its next
/// syscall, without an IPI. Measured on the echo load (`ringway-load echo`,
/// 100 connections, 64 B): 29.6 µs of proxy CPU per echo with neither,
/// 18.0 with COOP, 14.8 with DEFER. Older kernels get the plain ring.
fn build_uring(entries: u32) -> std::io::Result<(UringRuntime, &'static str)> {
    type SetupFlags = fn(&mut io_uring::Builder);
    let attempts: [(&str, SetupFlags); 3] = [
        ("io_uring (defer taskrun)", |b| {
            b.setup_single_issuer().setup_defer_taskrun();
        }),
        ("io_uring (coop taskrun)", |b| {
            b.setup_coop_taskrun().setup_taskrun_flag();
        }),
        ("io_uring", |_| {}),
    ];
    let mut last = None;
    for (name, flags) in attempts {
        let mut urb = io_uring::IoUring::builder();
        flags(&mut urb);
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(entries)
            .uring_builder(urb)
            .enable_timer()
            .build()
        {
            Ok(rt) => return Ok((rt, name)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no io_uring setup worked")))
}

async fn main(spec: WorkerSpec, driver: &'static str) -> Result<(), WorkerError> {
    let WorkerSpec {
        id,
        cpu,
        listeners,
        reloader,
        shared,
        shutdown,
        metrics,
        log,
    } = spec;
    let (version, config) = reloader.current();
    let sweeper = Rc::new(Sweeper::new(
        config.handshake_timeout,
        config.connect_timeout,
        config.idle_timeout,
    ));
    let tls_cache = tls::session_cache();
    let buffer_size = config.buffer_size;
    let generation = Generation::new(config, version, &tls_cache, &metrics)
        .map_err(|why| WorkerError::Tls { id, why })?;
    let core = Rc::new(Core {
        id,
        // Always ready for TLS: a reload may add wss:// backends.
        scratch: Scratch::new(buffer_size, true, driver == "epoll"),
        sweeper: sweeper.clone(),
        shared,
        reloader,
        current: RefCell::new(Rc::new(generation)),
        seen: Cell::new(version),
        tls_cache,
        metrics,
        log,
    });
    // The worker holds every listener until it returns, so shutting them down
    // below always names open sockets of ours.
    let mut held: Vec<Rc<TcpListener>> = Vec::new();
    for (std_listener, listen) in listeners {
        let listener = Rc::new(
            TcpListener::from_std(std_listener)
                .map_err(|source| WorkerError::Listener { id, source })?,
        );
        held.push(listener.clone());
        monoio::spawn(accept_loop(
            core.clone(),
            listener,
            listen,
            shutdown.clone(),
        ));
    }
    log::info!(
        "worker {id} started: core {}, {driver} driver",
        cpu.map_or("unpinned".to_string(), |c| c.id.to_string())
    );

    let sweep = {
        let core = core.clone();
        monoio::spawn(async move {
            loop {
                // Read each time: a reload may change the timeouts.
                monoio::time::sleep(core.sweeper.tick_interval()).await;
                core.refresh();
                core.sweeper.tick();
            }
        })
    };
    let flush = core.log.is_on().then(|| {
        let core = core.clone();
        monoio::spawn(async move {
            loop {
                monoio::time::sleep(LOG_FLUSH).await;
                core.log.flush();
            }
        })
    });

    shutdown.triggered().await;
    // Stop accepting at once: shutting a listener down wakes its pending
    // accept with an error, and its accept loop ends and closes it.
    for listener in &held {
        sys::shutdown_raw(listener.as_raw_fd(), Half::Read);
    }
    let deadline = Instant::now() + core.config().drain_timeout;
    if core.config().drain_close_frames {
        // Tunnels close themselves with close frames, spread over the
        // first half of the drain (drain.rs); the rest close at the deadline.
        let spread = core.config().drain_timeout / 2;
        monoio::spawn(crate::drain::ask_spread(sweeper.clone(), spread));
    }
    let poll = Duration::from_millis(20);
    while !sweeper.is_empty() && Instant::now() < deadline && !shutdown.is_forced() {
        monoio::time::sleep(poll).await;
    }
    let open = sweeper.len();
    if open > 0 {
        let why = if shutdown.is_forced() {
            "on a second signal"
        } else {
            "at the drain deadline"
        };
        log::info!("worker {id}: closing {open} connection(s) still open {why}");
        sweeper.expire_all(Expiry::Drain);
        let grace = Instant::now() + FORCED_CLOSE_GRACE;
        while !sweeper.is_empty() && Instant::now() < grace {
            monoio::time::sleep(poll).await;
        }
    }
    drop(sweep);
    drop(flush);
    core.log.flush();
    log::debug!("worker {id}: stopped");
    Ok(())
}

async fn accept_loop(
    core: Rc<Core>,
    listener: Rc<TcpListener>,
    listen: Listen,
    shutdown: Shutdown,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                core.metrics.accepted.inc();
                if shutdown.is_triggered() {
                    // Accepted in the instant before the listener was shut.
                    drop(stream);
                    continue;
                }
                if let Err(e) = stream.set_nodelay(true) {
                    log::debug!("client={peer}: TCP_NODELAY: {e}");
                }
                let core = core.clone();
                monoio::spawn(async move { crate::conn::serve(&core, stream, peer, listen).await });
            }
            Err(_) if shutdown.is_triggered() => break,
            Err(e) => match e.raw_os_error() {
                Some(libc::ECONNABORTED) | Some(libc::EINTR) => {}
                Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS)
                | Some(libc::ENOMEM) => {
                    log::error!(
                        "worker {}: accept: {e}; pausing accepts for 100ms (raise the open-files limit?)",
                        core.id
                    );
                    monoio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => {
                    log::error!("worker {}: accept: {e}", core.id);
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}
