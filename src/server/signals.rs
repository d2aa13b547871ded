//! Signals, on a thread of their own ("ringway-signals"): SIGTERM and
//! SIGINT start the drain (a second one closes everything at once), SIGHUP
//! reloads the configuration (or, for `ringway demo` and the load tools,
//! is logged and ignored).

use crate::server::shutdown::Shutdown;

/// SIGTERM/SIGINT drain through `shutdown`; SIGHUP is logged and ignored.
pub fn install_drain_only(shutdown: Shutdown) {
    install(
        shutdown,
        Box::new(|| log::info!("SIGHUP: nothing to reload")),
    );
}

/// SIGTERM/SIGINT drain through `shutdown`; SIGHUP calls `on_hup`.
pub fn install(shutdown: Shutdown, on_hup: Box<dyn Fn() + Send>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot install signal handlers ({e}); SIGTERM will not drain");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("ringway-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    on_hup();
                    continue;
                }
                if shutdown.is_triggered() {
                    log::warn!("signal {sig} again: closing every connection now");
                } else {
                    log::info!("signal {sig}: no longer accepting; draining live tunnels");
                    super::notify::stopping();
                }
                shutdown.trigger();
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the signal thread ({e}); SIGTERM will not drain");
    }
}
