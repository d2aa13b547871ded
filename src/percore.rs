//! Per-core state: [`Core`], owned by one worker thread and borrowed by
//! each of its connections, and [`Generation`], what one configuration
//! gives that core (balancers, TLS, counters). Below both the worker
//! (`server::worker`, which builds a `Core`) and the connection (`conn`,
//! which holds a `Generation` for its whole life).
//!
//! Nothing here is shared with other cores but the read-only `Config`, the
//! [`Reloader`] that publishes new ones, the limits' counts and this core's
//! counters (which the metrics thread reads).

use std::cell::{Cell, OnceCell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use crate::config::reload::Reloader;
use crate::config::{Config, Group};
use crate::io::meter::TunnelHook;
use crate::io::pipes::Pipes;
use crate::io::ring::Reactor;
use crate::io::sweep::{Sweeper, Timeouts};
use crate::io::tunnel::Scratch;
use crate::ops::access_log::CoreLog;
use crate::ops::metrics::{CoreMetrics, RouteMetrics, ServerMetrics};
use crate::policy::balance::GroupBalancer;
use crate::policy::limits::Shared;
use crate::proto::tls::{CoreTls, SessionCache};

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
    /// The completion ring ws:// tunnels ride (io_uring driver, `--tunnel-io`
    /// not `readiness`), set once by the worker; unset: every tunnel moves
    /// by readiness.
    pub ring: OnceCell<Rc<Reactor<TunnelHook>>>,
    /// Pipes for --splice, made at start.
    pub pipes: Pipes,
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

/// Why a core cannot serve a configuration: its TLS server configuration
/// could not be built from the certificates (loaded and checked already, so
/// the fault is the system's or the build's, not the user's files).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsSetupError(pub String);

impl Generation {
    /// This core's (`core`) state for `config`; `previous` is the
    /// generation it replaces (none at start).
    fn new(
        config: Arc<Config>,
        version: u64,
        core: usize,
        previous: Option<&Generation>,
        cache: &SessionCache,
        metrics: &CoreMetrics,
    ) -> Result<Generation, TlsSetupError> {
        let tls = match &config.tls {
            Some(shared) => Some(CoreTls::new(shared, cache.clone()).map_err(TlsSetupError)?),
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
                    // A group whose servers are unchanged carries on where
                    // it was; any other starts at this core's and this
                    // reload's offset, so that reloads do not send every
                    // core's first connections to the first server.
                    let offset = core.wrapping_add(version as usize);
                    let mut balancer = GroupBalancer::new(&params, g.method).starting_at(offset);
                    if let Some(old) = previous.and_then(|p| p.balancer_of(g)) {
                        balancer.carry_on_from(old);
                    }
                    balancer
                })
                .collect(),
            tls,
            config,
            version,
        })
    }
}

impl Generation {
    /// This generation's balancer of a group with `group`'s name, method
    /// and servers (addresses, names, parameters, in order), if it has one.
    fn balancer_of(&self, group: &Group) -> Option<&GroupBalancer> {
        let i = self.config.groups.iter().position(|g| {
            g.name == group.name && g.method == group.method && g.servers == group.servers
        })?;
        self.balancers.get(i)
    }
}

/// What a worker hands [`Core::new`].
pub struct CoreParts {
    /// Worker index, for log lines.
    pub id: usize,
    /// The configuration in force, and the start-up settings (the scratch
    /// buffer's size).
    pub reloader: Arc<Reloader>,
    pub shared: Arc<Shared>,
    pub metrics: Arc<CoreMetrics>,
    pub log: CoreLog,
    /// Pumps pause after a burst (the epoll driver: see `io::tunnel`).
    pub yield_by_timer: bool,
}

impl Core {
    /// This core's state, with the first generation built from the
    /// configuration in force. Fails when its TLS configuration cannot be
    /// built.
    pub fn new(parts: CoreParts) -> Result<Core, TlsSetupError> {
        let CoreParts {
            id,
            reloader,
            shared,
            metrics,
            log,
            yield_by_timer,
        } = parts;
        let (version, config) = reloader.current();
        let sweeper = Rc::new(Sweeper::new(timeouts(&config)));
        let tls_cache = crate::proto::tls::session_cache();
        let buffer_size = reloader.startup().buffer_size;
        let pipes = Pipes::new(reloader.startup().splice_pipes);
        let generation = Generation::new(config, version, id, None, &tls_cache, &metrics)?;
        Ok(Core {
            id,
            // Always ready for TLS: a reload may add wss:// backends.
            scratch: Scratch::new(buffer_size, true, yield_by_timer),
            sweeper,
            shared,
            reloader,
            current: RefCell::new(Rc::new(generation)),
            seen: Cell::new(version),
            tls_cache,
            metrics,
            log,
            ring: OnceCell::new(),
            pipes,
        })
    }

    /// Copy the completion ring's counts into this core's metrics (at each
    /// sweep: off the data path).
    pub fn publish_ring_stats(&self) {
        if let Some(ring) = self.ring.get() {
            let stats = ring.stats();
            self.metrics.ring_buffer_waits.set(stats.enobufs);
            self.metrics.ring_bulk_handoffs.set(stats.bulk);
            self.metrics
                .ring_buffers_free
                .set(i64::from(ring.buffers_free()));
        }
    }

    /// Where new configurations come from (and the start-up settings).
    pub fn reloader(&self) -> &Reloader {
        &self.reloader
    }

    /// TCP keepalive for backend sockets (`--tcp-keepalive`; fixed at
    /// start, as the listeners' that client sockets inherit).
    pub fn keepalive(&self) -> crate::config::Keepalive {
        self.reloader.startup().tcp_keepalive
    }

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
        let previous = self.current.borrow().clone();
        match Generation::new(
            config,
            version,
            self.id,
            Some(&previous),
            &self.tls_cache,
            &self.metrics,
        ) {
            Ok(generation) => {
                self.sweeper.set_timeouts(timeouts(&generation.config));
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

/// A configuration's timeouts, for the sweep.
fn timeouts(c: &Config) -> Timeouts {
    Timeouts {
        handshake: c.handshake_timeout,
        connect: c.connect_timeout,
        answer: c.upstream_answer_timeout,
        idle: c.idle_timeout,
        half_close: c.half_close_timeout,
    }
}
