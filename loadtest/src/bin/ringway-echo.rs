//! `ringway-echo`: the WebSocket echo backend of the load runs.

use std::net::SocketAddr;

use anyhow::Result;
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
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let bound = ringway_load::echo::spawn(cli.listen, cli.threads, &cli.pin)?;
    println!("ringway-echo listening on {bound}");
    loop {
        std::thread::park();
    }
}
