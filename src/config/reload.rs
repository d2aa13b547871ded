//! Configuration reload (SIGHUP): read the command line again, with its
//! `--config` file and every certificate, check the result whole, and
//! publish it for new connections.
//!
//! The [`Reloader`] holds the configuration in force and a version number.
//! A worker compares the version with its own when it accepts a connection
//! (one atomic load of a line that only a reload writes) and, when it moved,
//! builds its per-core state for the new configuration (`worker.rs`,
//! `Generation`). Each connection keeps the generation it was accepted
//! under until it ends, so live tunnels keep their routes, their backend and
//! their place in its balancer's counts, and nothing lingers once they end.
//!
//! Settings bound when ringway starts (listeners, workers, the ring, the
//! metrics and access-log destinations) cannot change this way: a file that
//! changes one is refused whole, like any invalid file, and the old
//! configuration stays in force.

use std::ffi::OsString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{self, CliError, Config};

/// The configuration in force, and how to read it again.
#[derive(Debug)]
pub struct Reloader {
    /// The command line ringway was started with (`None`: started from a
    /// `Config` built in code, which has nothing to read again).
    argv: Option<Vec<OsString>>,
    /// The default worker count the start-up configuration was built with.
    cores: usize,
    current: Mutex<Arc<Config>>,
    /// Bumped after `current` changes; 0 is the start-up configuration.
    version: AtomicU64,
}

impl Reloader {
    pub fn new(config: Arc<Config>, argv: Option<Vec<OsString>>, cores: usize) -> Reloader {
        Reloader {
            argv,
            cores,
            current: Mutex::new(config),
            version: AtomicU64::new(0),
        }
    }

    /// The version of the configuration in force (cheap: one load).
    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The configuration in force and its version.
    pub fn current(&self) -> (u64, Arc<Config>) {
        let current = self.lock();
        // Read under the lock, which `reload` holds while it bumps it: the
        // pair always belongs together.
        (self.version(), current.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<Config>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read the command line, its `--config` file and the certificates
    /// again. On success the new configuration is in force for every
    /// connection accepted from now on, and a summary is returned; on any
    /// error nothing changes and the error says why.
    pub fn reload(&self) -> Result<String, String> {
        let Some(argv) = &self.argv else {
            return Err("started without a command line to read again".into());
        };
        let cli = config::parse_cli(argv.iter().cloned()).map_err(|e| match e {
            CliError::Usage(e) => config::usage_reason(&e),
            CliError::Config(e) => e.to_string(),
        })?;
        let mut new = Config::from_args(&cli.proxy, self.cores).map_err(|e| e.to_string())?;
        let mut current = self.lock();
        fixed_settings_unchanged(&current, &new)?;
        if let (Some(tls), Some(old)) = (new.tls.as_mut(), current.tls.as_deref()) {
            if let Some(tls) = Arc::get_mut(tls) {
                tls.keep_ticket_key_of(old);
            }
        }
        let summary = format!(
            "{} routes, {} groups, {} servers{}",
            new.routes.iter().count(),
            new.groups.len(),
            new.groups.iter().map(|g| g.servers.len()).sum::<usize>(),
            match &new.tls {
                Some(tls) => format!(", {} certificates", tls.count()),
                None => String::new(),
            }
        );
        *current = Arc::new(new);
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(summary)
    }
}

/// Refuse a new configuration that changes what only a restart can.
fn fixed_settings_unchanged(old: &Config, new: &Config) -> Result<(), String> {
    let mut changed = Vec::new();
    let mut check = |name: &'static str, same: bool| {
        if !same {
            changed.push(name);
        }
    };
    check("listen/tls-listen", old.listen == new.listen);
    check("workers", old.workers == new.workers);
    check("no-pin", old.pin == new.pin);
    check("driver", old.driver == new.driver);
    check("ring-entries", old.ring_entries == new.ring_entries);
    check("backlog", old.backlog == new.backlog);
    check("buffer-size", old.buffer_size == new.buffer_size);
    check("metrics-listen", old.metrics_listen == new.metrics_listen);
    check("access-log", old.access_log == new.access_log);
    check(
        "access-log-format",
        old.access_log_format == new.access_log_format,
    );
    if changed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} cannot change without a restart",
            changed.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &std::path::Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    fn argv(file: &std::path::Path) -> Vec<OsString> {
        [
            "ringway",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--config",
        ]
        .iter()
        .map(OsString::from)
        .chain([file.as_os_str().to_owned()])
        .collect()
    }

    fn start(file: &std::path::Path) -> Reloader {
        let cli = config::parse_cli(argv(file)).unwrap();
        let config = Config::from_args(&cli.proxy, 1).unwrap();
        Reloader::new(Arc::new(config), Some(argv(file)), 1)
    }

    #[test]
    fn a_good_file_is_published_and_a_bad_one_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("ringway-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ringway.toml");
        write(
            &file,
            "upstream = [\"a=127.0.0.1:9001\"]\nroute = [\"/=a\"]\n",
        );
        let r = start(&file);
        assert_eq!(r.version(), 0);

        write(
            &file,
            "upstream = [\"a=127.0.0.1:9001\", \"b=127.0.0.1:9002\"]\n\
             route = [\"/=a\", \"/b/=b\"]\nidle-timeout = \"5m\"\n",
        );
        let summary = r.reload().unwrap();
        assert!(
            summary.starts_with("2 routes, 2 groups, 2 servers"),
            "{summary}"
        );
        let (version, config) = r.current();
        assert_eq!(version, 1);
        assert_eq!(config.groups.len(), 2);
        assert_eq!(config.idle_timeout, std::time::Duration::from_secs(300));

        // Invalid: a route to a missing group. Refused whole.
        write(
            &file,
            "upstream = [\"a=127.0.0.1:9001\"]\nroute = [\"/=nope\"]\n",
        );
        let why = r.reload().unwrap_err();
        assert!(why.contains("no group nope"), "{why}");
        // Not TOML at all.
        write(&file, "upstream = [\n");
        assert!(r.reload().is_err());
        // A setting only a restart can change.
        write(
            &file,
            "upstream = [\"a=127.0.0.1:9001\"]\nbuffer-size = 8192\n",
        );
        let why = r.reload().unwrap_err();
        assert_eq!(why, "buffer-size cannot change without a restart");
        let (version, config) = r.current();
        assert_eq!(version, 1, "no failed reload is published");
        assert_eq!(config.groups.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_command_line_there_is_nothing_to_read() {
        let cli = config::parse_cli(["ringway", "--upstream", "127.0.0.1:9"]).unwrap();
        let config = Config::from_args(&cli.proxy, 1).unwrap();
        let r = Reloader::new(Arc::new(config), None, 1);
        assert!(r.reload().is_err());
        assert_eq!(r.version(), 0);
    }
}
