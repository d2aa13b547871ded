//! `ringway-load`: run one load scenario against a ws:// or wss:// URL.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ringway::config::parse_duration;
use ringway_load::client::Target;
use ringway_load::fleet::{self, FleetOpts};
use ringway_load::scenario::{self, Common, EchoOpts, Load};
use ringway_load::tls::TlsOptions;

#[derive(Parser)]
#[command(
    name = "ringway-load",
    version,
    about = "WebSocket load generator (ws:// and wss://, loopback)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Fixed-size messages over N connections, closed loop (--inflight) or
    /// open loop (--rate); throughput and round-trip latency.
    Echo {
        #[command(flatten)]
        common: CommonArgs,
        /// Connections.
        #[arg(long, default_value_t = 100)]
        connections: usize,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Messages in flight per connection (closed loop).
        #[arg(long, default_value_t = 1)]
        inflight: usize,
        /// Total messages per second on a fixed schedule (open loop; latency
        /// from the intended send time). Overrides --inflight.
        #[arg(long)]
        rate: Option<f64>,
        /// Text frames instead of binary.
        #[arg(long)]
        text: bool,
    },
    /// Large messages as fast as the echo allows; MB/s each way.
    Bulk {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 1 << 20)]
        size: usize,
        #[arg(long, default_value_t = 2)]
        inflight: usize,
    },
    /// Open, upgrade (101 and Sec-WebSocket-Accept checked), one echo, clean
    /// close, again and again; handshakes/s and handshake latency.
    Connect {
        #[command(flatten)]
        common: CommonArgs,
        /// Connections in progress at once.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
    },
    /// Hold N idle connections for the duration, then ping every one;
    /// RSS per held connection of each watched process.
    Idle {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
    },
    /// A chat service's shape: hold many tunnels, a small share of them
    /// sending at a fixed total rate (open loop), the rest idle and pinged
    /// at the end; RSS per tunnel, CPU per message and latency of each
    /// watched process. Spread the tunnels over --source-ips.
    Fleet {
        #[command(flatten)]
        common: CommonArgs,
        /// Tunnels held [as many as the open-files limits of this process
        /// and of the watched ones allow: half the smallest, less 200, since
        /// a proxy holds 2 descriptors per tunnel].
        #[arg(long)]
        tunnels: Option<usize>,
        /// Share of the tunnels that send (0 to 1, at least one tunnel).
        #[arg(long, default_value_t = fleet::DEFAULT_ACTIVE_SHARE, value_parser = fleet::parse_share)]
        active: f64,
        /// Messages per second over all active tunnels (open loop).
        #[arg(long, default_value_t = fleet::DEFAULT_RATE, value_parser = fleet::parse_rate)]
        rate: f64,
        /// Payload bytes per message.
        #[arg(long, default_value_t = fleet::DEFAULT_SIZE)]
        size: usize,
    },
}

#[derive(Args)]
struct CommonArgs {
    /// ws://IP:PORT/path or wss://IP:PORT/path to load (wss:// needs --ca
    /// or --insecure).
    #[arg(long, default_value = "ws://127.0.0.1:8080/")]
    url: String,
    /// wss://: accept any server certificate (handshake signatures are still
    /// checked).
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
    /// wss://: PEM file of the roots to verify the server certificate against.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// wss://: name to send as SNI and to verify the certificate for
    /// (default: the URL's IP, and no SNI).
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// wss://: resume TLS sessions across connections (default: a full
    /// handshake every time).
    #[arg(long)]
    resume: bool,
    /// wss://: offer only TLS 1.2 or only 1.3 (default: both; 1.3 wins).
    #[arg(long, value_name = "1.2|1.3", value_parser = ["1.2", "1.3"])]
    tls_version: Option<String>,
    /// Generator threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// CPUs to pin generator threads to (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pin: Vec<usize>,
    /// Source addresses to connect from, round-robin (e.g. 127.0.0.2,127.0.0.3)
    /// to get past one address's ephemeral ports.
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    /// Measured time (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Time before measuring starts.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Process whose CPU, system calls, RSS and descriptors to report
    /// (repeatable).
    #[arg(long = "watch-pid")]
    watch: Vec<u32>,
    /// The perf binary that counts each watched process's system calls
    /// over the window (`perf stat -e raw_syscalls:sys_enter -e
    /// syscalls:sys_enter_io_uring_enter -p PID`, counting mode; needs root
    /// or a low perf_event_paranoid). Without it the counts are absent.
    #[arg(long, value_name = "PATH", default_value = "perf")]
    perf: PathBuf,
    /// Do not count system calls (no perf at all).
    #[arg(long)]
    no_perf: bool,
    /// Write the JSON report here (else only the summary is printed).
    #[arg(long)]
    json: Option<PathBuf>,
}

impl CommonArgs {
    fn common(&self) -> Result<Common> {
        Ok(Common {
            target: Target::parse_with(
                &self.url,
                &TlsOptions {
                    insecure: self.insecure,
                    ca: self.ca.clone(),
                    server_name: self.server_name.clone(),
                    resume: self.resume,
                    version: self.tls_version.clone(),
                },
            )?,
            threads: self.threads.max(1),
            pin: self.pin.clone(),
            source_ips: self.source_ips.clone(),
            warmup: self.warmup,
            duration: self.duration,
            watch: self.watch.clone(),
            perf: (!self.no_perf).then(|| self.perf.clone()),
        })
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (args, report) = match &cli.scenario {
        Scenario::Echo {
            common,
            connections,
            size,
            inflight,
            rate,
            text,
        } => {
            let load = match rate {
                Some(rate) => Load::Open { rate: *rate },
                None => Load::Closed {
                    inflight: *inflight,
                },
            };
            let opts = EchoOpts {
                scenario: "echo",
                connections: *connections,
                size: *size,
                binary: !text,
                load,
            };
            (common, scenario::echo(&common.common()?, &opts)?)
        }
        Scenario::Bulk {
            common,
            connections,
            size,
            inflight,
        } => {
            let opts = EchoOpts {
                scenario: "bulk",
                connections: *connections,
                size: *size,
                binary: true,
                load: Load::Closed {
                    inflight: *inflight,
                },
            };
            (common, scenario::echo(&common.common()?, &opts)?)
        }
        Scenario::Connect {
            common,
            concurrency,
        } => (common, scenario::connect(&common.common()?, *concurrency)?),
        Scenario::Idle {
            common,
            connections,
        } => (common, scenario::idle(&common.common()?, *connections)?),
        Scenario::Fleet {
            common,
            tunnels,
            active,
            rate,
            size,
        } => {
            let opts = FleetOpts {
                tunnels: tunnels.unwrap_or_else(|| fleet::default_tunnels(&common.watch)),
                active_share: *active,
                rate: *rate,
                size: *size,
            };
            (common, fleet::fleet(&common.common()?, &opts)?)
        }
    };
    report.print_summary();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
