//! One worker: a thread pinned to one core, its own monoio runtime (io_uring,
//! or epoll), its own listener per `--listen` address, its per-core state
//! ([`Core`], `percore`), and the tasks that run on it: one accept loop per
//! listener (each accepted client becomes a `conn::serve` task), the
//! timeout sweep, the access log's flush, and at shutdown the drain
//! (`server::drain`).
//!
//! Nothing here is shared with other workers but the read-only `Config`
//! (and the `Reloader` that publishes new ones), the limits' counts and
//! the `Shutdown` signal.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use log::Level;
use monoio::net::TcpListener;

use crate::config::reload::Reloader;
use crate::config::{Driver, Listen, TunnelIo};
use crate::io::meter::TunnelHook;
use crate::io::ring::{self, Reactor};
use crate::io::sweep::Sweeper;
use crate::ops::access_log::CoreLog;
use crate::ops::metrics::CoreMetrics;
use crate::ops::ratelog::{self, limited, Topic};
use crate::percore::{Core, CoreParts, TlsSetupError};
use crate::policy::limits::Shared;
use crate::server::drain;
use crate::server::shutdown::Shutdown;

/// How often a core hands its access-log lines to the writer thread (and
/// at its end).
const LOG_FLUSH: Duration = Duration::from_millis(100);

/// Everything a worker thread is started with.
pub struct WorkerSpec {
    pub id: usize,
    pub cpu: Option<core_affinity::CoreId>,
    /// Each with what it was configured as.
    pub listeners: Vec<(std::net::TcpListener, Listen)>,
    /// The configuration in force, and the start-up settings
    /// (`Reloader::startup`: the driver, the ring, the buffer size).
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
    Tls { id: usize, why: TlsSetupError },
    #[error("worker {id}: cannot set up the completion ring (--tunnel-io completion): {source}")]
    Ring {
        id: usize,
        #[source]
        source: std::io::Error,
    },
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
    let startup = spec.reloader.startup();
    let (driver, entries) = (startup.driver, startup.ring_entries);
    let want_uring = match driver {
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
            Err(e) if driver == Driver::Uring => {
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

pub type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

/// Build an io_uring runtime whose completions do not interrupt the worker:
/// `DEFER_TASKRUN` (kernel 6.1+) runs completion work only when the worker
/// waits for events, in one batch; `COOP_TASKRUN` (5.19+) at its next
/// syscall, without an IPI. Measured on the echo load (`ringway-load echo`,
/// 100 connections, 64 B): 29.6 µs of proxy CPU per echo with neither,
/// 18.0 with COOP, 14.8 with DEFER. Older kernels get the plain ring.
pub fn build_uring(entries: u32) -> std::io::Result<(UringRuntime, &'static str)> {
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

/// The core's completion ring, as `--tunnel-io` asks: none with the epoll
/// driver or `readiness`; with `auto`, none (and a warning) where the
/// kernel cannot make one; with `completion`, that is an error.
fn completion_ring(
    id: usize,
    reloader: &Reloader,
    epoll: bool,
    sweeper: Rc<Sweeper>,
) -> Result<Option<Rc<Reactor<TunnelHook>>>, WorkerError> {
    let startup = reloader.startup();
    if epoll || startup.tunnel_io == TunnelIo::Readiness {
        return Ok(None);
    }
    let settings = ring::Settings {
        entries: startup.ring_entries,
        buffers: startup.recv_buffers,
        buffer_size: startup.recv_buffer_size,
    };
    match Reactor::new(settings, move || sweeper.refresh_clock()) {
        Ok(ring) => Ok(Some(ring)),
        Err(source) if startup.tunnel_io == TunnelIo::Completion => {
            Err(WorkerError::Ring { id, source })
        }
        Err(e) => {
            log::warn!("worker {id}: no completion ring ({e}); tunnel bytes move by readiness");
            Ok(None)
        }
    }
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
    let parts = CoreParts {
        id,
        reloader,
        shared,
        metrics,
        log,
        // With the epoll driver a busy pump pauses now and then (io::tunnel).
        yield_by_timer: driver == "epoll",
    };
    let core = Rc::new(Core::new(parts).map_err(|why| WorkerError::Tls { id, why })?);
    let ring = completion_ring(id, core.reloader(), driver == "epoll", core.sweeper.clone())?;
    let tunnel_io = match ring {
        Some(ring) => {
            monoio::spawn(ring.clone().run());
            let _ = core.ring.set(ring);
            "completion"
        }
        None => "readiness",
    };
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
        "worker {id} started: core {}, {driver} driver, {tunnel_io} tunnel io",
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
                core.publish_ring_stats();
                ratelog::flush();
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
    drain::drain(&core, &held, &shutdown).await;
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
                // TCP_NODELAY comes from the listener (server::listener).
                let core = core.clone();
                monoio::spawn(async move { crate::conn::serve(&core, stream, peer, listen).await });
            }
            Err(_) if shutdown.is_triggered() => break,
            Err(e) => match e.raw_os_error() {
                Some(libc::ECONNABORTED) | Some(libc::EINTR) => {}
                Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS)
                | Some(libc::ENOMEM) => {
                    core.metrics.accept_errors.inc();
                    limited!(
                        Topic::Accept,
                        Level::Error,
                        "worker {}: accept: {e}; pausing accepts for 100ms (raise the open-files limit?)",
                        core.id
                    );
                    monoio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => {
                    core.metrics.accept_errors.inc();
                    limited!(
                        Topic::Accept,
                        Level::Error,
                        "worker {}: accept: {e}",
                        core.id
                    );
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}
