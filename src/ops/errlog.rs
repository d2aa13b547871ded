//! The error log (stderr): `env_logger`, with two guarantees on top.
//!
//! - Every line is one line of printable ASCII, at most
//!   [`LINE_MAX`](super::escape::LINE_MAX) bytes of message: the message is
//!   escaped once more as it is written ([`Line`]), so that a line this
//!   crate does not format (a library's: rustls quotes a client's SNI name
//!   in its warnings) obeys the same rule as ringway's own.
//! - A library's WARN and INFO lines go through the rate limit
//!   ([`Topic::Library`]): rustls warns once per bad ClientHello, which a
//!   flood of them must not turn into a flood of lines.
//!
//! The format is `env_logger`'s default: `[time LEVEL target] message`.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

use super::escape::Line;
use super::ratelog::{self, Topic};

/// Start the error log at `level` (`None`: `RUST_LOG`, else `info`), and
/// read the rate limit's interval ([`ratelog::INTERVAL_ENV`]). Call once,
/// first thing.
pub fn init(level: Option<LevelFilter>) {
    let mut b = env_logger::Builder::new();
    match level {
        Some(l) => {
            b.filter_level(l);
        }
        None if std::env::var_os("RUST_LOG").is_some() => {
            b.parse_default_env();
        }
        None => {
            b.filter_level(LevelFilter::Info);
        }
    }
    b.format(|buf, record| {
        let style = buf.default_level_style(record.level());
        writeln!(
            buf,
            "[{} {style}{:<5}{style:#} {}] {}",
            buf.timestamp_millis(),
            record.level(),
            record.target(),
            Line(record.args()),
        )
    });
    ratelog::interval_from_env();
    let inner = b.build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Logger { inner })).is_ok() {
        log::set_max_level(max);
    }
}

/// `env_logger`'s logger behind the rate limit for libraries' lines.
struct Logger {
    inner: env_logger::Logger,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.inner.matches(record) {
            return;
        }
        if matches!(record.level(), Level::Warn | Level::Info)
            && !ours(record.target())
            && !ratelog::admit(Topic::Library, record.level(), module_path!())
        {
            return;
        }
        self.inner.log(record);
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// A target of ringway's own.
fn ours(target: &str) -> bool {
    target == "ringway" || target.starts_with("ringway::")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_targets_and_the_others() {
        assert!(ours("ringway") && ours("ringway::conn::outcome"));
        assert!(!ours("rustls::msgs::handshake") && !ours("ringway_load") && !ours(""));
    }
}
