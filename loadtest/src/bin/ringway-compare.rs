//! `ringway-compare`: ringway against nginx (and no proxy at all) on the
//! same echo backend under the same load; see `loadtest/README.md`.
//! `loadtest/compare` builds everything and runs it.

use clap::Parser;
use ringway_load::compare::{self, Options};

fn main() {
    if let Err(e) = compare::run(Options::parse()) {
        eprintln!("ringway-compare: {e:#}");
        // 130: stopped by a signal, as a shell reports Ctrl-C.
        let interrupted = e.to_string() == "interrupted";
        std::process::exit(if interrupted { 130 } else { 1 });
    }
}
