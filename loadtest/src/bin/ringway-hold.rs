//! `ringway-hold`: start ringway and `ringway-echo` backends, drive one
//! "keep what held" scenario, print its table of checks, and exit 0 if
//! every check held, 1 if one did not, 2 if the scenario could not run
//! (130 when interrupted). See `loadtest/README.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ringway::config::parse_duration;
use ringway::server::shutdown::Shutdown;
use ringway_load::hold::{churn, reloads, restart, Setup};

#[derive(Parser)]
#[command(
    name = "ringway-hold",
    version,
    about = "Check that ringway keeps what held: a backend restart, reloads and churn under load"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args)]
struct Common {
    /// The ringway binary (default: next to this one).
    #[arg(long, global = true, value_name = "PATH")]
    ringway: Option<PathBuf>,
    /// The ringway-echo binary (default: next to this one).
    #[arg(long, global = true, value_name = "PATH")]
    echo: Option<PathBuf>,
    /// ringway's --workers.
    #[arg(long, global = true, default_value_t = 1)]
    workers: usize,
    /// One more flag for ringway (repeatable): --ringway-arg=--driver=legacy.
    #[arg(
        long = "ringway-arg",
        global = true,
        value_name = "ARG",
        allow_hyphen_values = true
    )]
    ringway_args: Vec<String>,
    /// Small sizes (as the tests use): a few seconds instead of minutes.
    /// Flags given explicitly still win.
    #[arg(long, global = true)]
    quick: bool,
}

#[derive(Subcommand)]
enum Scenario {
    /// Two backends under live tunnels; one is killed (SIGKILL), skipped for
    /// fail_timeout even once restarted, then used again; the other's
    /// tunnels lose nothing.
    BackendRestart {
        /// Live tunnels over both backends [default: 200, quick 50].
        #[arg(long)]
        tunnels: Option<usize>,
        /// Each tunnel echoes once per period.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        period: Duration,
        /// fail_timeout of both servers [default: 10s, quick 2s].
        #[arg(long, value_parser = parse_duration)]
        fail_timeout: Option<Duration>,
        /// max_fails of both servers (0 turns marking off: the skip checks
        /// then fail, which shows that they can).
        #[arg(long, default_value_t = 1)]
        max_fails: u32,
        /// Short connections made after fail_timeout.
        #[arg(long, default_value_t = 40)]
        probes_after: usize,
    },
    /// SIGHUP reloads alternating two --config files under live tunnels,
    /// each reload proven in force by a probe; nothing dropped, RSS and
    /// descriptors flat.
    Reloads {
        /// Live tunnels, half opened under each file [default: 200, quick 50].
        #[arg(long)]
        tunnels: Option<usize>,
        /// Reloads [default: 1000, quick 100].
        #[arg(long)]
        reloads: Option<usize>,
        /// Most reloads per second.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Each tunnel echoes once per period.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        period: Duration,
    },
    /// Connect / echo / close at a fixed rate; ringway's RSS flat after the
    /// warm-up, every descriptor given back, no error.
    Churn {
        /// How long [default: 120s, quick 10s].
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Connections per second [default: 500, quick 100].
        #[arg(long)]
        rate: Option<f64>,
        /// Client threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Messages echoed per connection.
        #[arg(long, default_value_t = 3)]
        echoes: usize,
        /// RSS samples before this are not judged [default: duration / 6].
        #[arg(long, value_parser = parse_duration)]
        warmup: Option<Duration>,
        /// Time between two samples of ringway [default: 1s, quick 250ms].
        #[arg(long, value_parser = parse_duration)]
        sample: Option<Duration>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stop = Shutdown::new();
    ringway::server::signals::install_drain_only(stop.clone());
    let c = &cli.common;
    let mut setup = Setup::beside_this_exe(stop);
    if let Some(p) = &c.ringway {
        setup.ringway = p.clone();
    }
    if let Some(p) = &c.echo {
        setup.echo = p.clone();
    }
    setup.workers = c.workers.max(1);
    setup.ringway_args = c.ringway_args.clone();
    for (what, p) in [("ringway", &setup.ringway), ("ringway-echo", &setup.echo)] {
        if !p.is_file() {
            eprintln!(
                "ringway-hold: {what} not found at {} (build with `cargo build --release \
                 --workspace`, or pass --{})",
                p.display(),
                if what == "ringway" { "ringway" } else { "echo" }
            );
            return ExitCode::from(2);
        }
    }
    let quick = c.quick;
    let result = match cli.scenario {
        Scenario::BackendRestart {
            tunnels,
            period,
            fail_timeout,
            max_fails,
            probes_after,
        } => restart::run(
            &setup,
            &restart::Options {
                tunnels: tunnels.unwrap_or(pick(quick, 50, 200)),
                period,
                fail_timeout: fail_timeout.unwrap_or(pick(
                    quick,
                    Duration::from_secs(2),
                    Duration::from_secs(10),
                )),
                max_fails,
                probes_after,
            },
        ),
        Scenario::Reloads {
            tunnels,
            reloads,
            rate,
            period,
        } => reloads::run(
            &setup,
            &reloads::Options {
                tunnels: tunnels.unwrap_or(pick(quick, 50, 200)),
                reloads: reloads.unwrap_or(pick(quick, 100, 1000)),
                rate,
                period,
            },
        ),
        Scenario::Churn {
            duration,
            rate,
            threads,
            echoes,
            warmup,
            sample,
        } => {
            let duration = duration.unwrap_or(pick(
                quick,
                Duration::from_secs(10),
                Duration::from_secs(120),
            ));
            churn::run(
                &setup,
                &churn::Options {
                    duration,
                    rate: rate.unwrap_or(pick(quick, 100.0, 500.0)),
                    threads,
                    echoes,
                    warmup: warmup.unwrap_or(duration / 6),
                    sample: sample.unwrap_or(pick(
                        quick,
                        Duration::from_millis(250),
                        Duration::from_secs(1),
                    )),
                },
            )
        }
    };
    match result {
        Ok(verdict) => {
            print!("{}", verdict.render());
            if verdict.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) if e.to_string() == "interrupted" => {
            eprintln!("ringway-hold: interrupted");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("ringway-hold: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The quick size or the full one.
fn pick<T>(quick: bool, small: T, full: T) -> T {
    if quick {
        small
    } else {
        full
    }
}
