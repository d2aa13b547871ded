//! `ringway-echo`: the WebSocket echo backend of the load runs.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "ringway-echo",
    version,
    about = "Fast WebSocket echo backend for load runs"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Threads (one listener each).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// CPUs to pin the threads to (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pin: Vec<usize>,
    /// Serve wss://: PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Name this backend in an `X-Echo-Name` header of every 101, so that a
    /// client can tell which backend a proxy chose.
    #[arg(long)]
    name: Option<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(ringway_load::tls::server_config_from_files(cert, key)?),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let what = if tls.is_some() { " (wss)" } else { "" };
    let bound = ringway_load::echo::spawn_named(cli.listen, cli.threads, &cli.pin, tls, cli.name)?;
    println!("ringway-echo listening on {bound}{what}");
    loop {
        std::thread::park();
    }
}
