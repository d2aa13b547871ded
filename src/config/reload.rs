//! Configuration reload (SIGHUP): read the command line again, with its
//! `--config` file and every certificate, check the result whole, and
//! publish it for new connections.
//!
//! The [`Reloader`] holds the configuration in force and a version number.
//! A worker compares the version with its own when it accepts a connection
//! (one atomic load of a line that only a reload writes) and, when it moved,
//! builds its per-core state for the new configuration (`percore`,
//! `Generation`). Each connection keeps the generation it was accepted
//! under until it ends, so live tunnels keep their routes, their backend and
//! their place in its balancer's counts, and nothing lingers once they end.
//!
//! Only a [`Config`] is published: the settings bound when ringway starts
//! ([`Startup`]: listeners, workers, the ring, the metrics and access-log
//! destinations) stay those it started with. A file whose `Startup` differs
//! from them is refused whole, like any invalid file
//! ([`ReloadError::NeedsRestart`]), and the old configuration stays in
//! force.

use std::ffi::OsString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::cli::{self, CliError};
use crate::config::error::ConfigError;
use crate::config::{Config, Settings, Startup};

/// The configuration in force, and how to read it again.
#[derive(Debug)]
pub struct Reloader {
    /// The command line ringway was started with (`None`: started from
    /// `Settings` built in code, which has nothing to read again).
    argv: Option<Vec<OsString>>,
    /// The default worker count the start-up configuration was built with.
    cores: usize,
    /// The start-up settings in force: never replaced, and what a new file
    /// must agree with.
    startup: Startup,
    current: Mutex<Arc<Config>>,
    /// Bumped after `current` changes; 0 is the start-up configuration.
    version: AtomicU64,
}

/// Why a reload was refused (the configuration in force stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("started without a command line to read again")]
    NoCommandLine,
    /// The command line (or its file) no longer parses.
    #[error("{}", cli::usage_reason(.0))]
    Usage(clap::Error),
    /// It parses but is not a valid configuration.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// It is valid but changes these start-up settings (by flag name).
    #[error("{} cannot change without a restart", .0.join(", "))]
    NeedsRestart(Vec<&'static str>),
}

impl Reloader {
    pub fn new(settings: Settings, argv: Option<Vec<OsString>>, cores: usize) -> Reloader {
        let Settings { startup, config } = settings;
        Reloader {
            argv,
            cores,
            startup,
            current: Mutex::new(Arc::new(config)),
            version: AtomicU64::new(0),
        }
    }

    /// The start-up settings, fixed for the life of the process.
    pub fn startup(&self) -> &Startup {
        &self.startup
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
    pub fn reload(&self) -> Result<String, ReloadError> {
        let Some(argv) = &self.argv else {
            return Err(ReloadError::NoCommandLine);
        };
        let cli = cli::parse_cli(argv.iter().cloned()).map_err(|e| match e {
            CliError::Usage(e) => ReloadError::Usage(e),
            CliError::Config(e) => ReloadError::Invalid(e),
        })?;
        let Settings {
            startup,
            config: mut new,
        } = Settings::from_args(&cli.proxy, self.cores)?;
        let mut current = self.lock();
        let changed = startup.changed_from(&self.startup);
        if !changed.is_empty() {
            return Err(ReloadError::NeedsRestart(changed));
        }
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
        let cli = cli::parse_cli(argv(file)).unwrap();
        let settings = Settings::from_args(&cli.proxy, 1).unwrap();
        Reloader::new(settings, Some(argv(file)), 1)
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
        let why = r.reload().unwrap_err().to_string();
        assert!(why.contains("no group nope"), "{why}");
        // Not TOML at all.
        write(&file, "upstream = [\n");
        assert!(r.reload().is_err());
        // A setting only a restart can change.
        write(
            &file,
            "upstream = [\"a=127.0.0.1:9001\"]\nbuffer-size = 8192\n",
        );
        let why = r.reload().unwrap_err().to_string();
        assert_eq!(why, "buffer-size cannot change without a restart");
        let (version, config) = r.current();
        assert_eq!(version, 1, "no failed reload is published");
        assert_eq!(config.groups.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_command_line_there_is_nothing_to_read() {
        let cli = cli::parse_cli(["ringway", "--upstream", "127.0.0.1:9"]).unwrap();
        let settings = Settings::from_args(&cli.proxy, 1).unwrap();
        let r = Reloader::new(settings, None, 1);
        assert!(r.reload().is_err());
        assert_eq!(r.version(), 0);
    }
}
