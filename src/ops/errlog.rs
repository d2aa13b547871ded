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
//! Two formats (`--log-format`): `text`, `env_logger`'s default
//! `[time LEVEL target] message`, and `json`, one object per line
//! (`{"time":..,"level":..,"target":..,"message":..}`, the time as the
//! access log writes it), for log shippers that parse lines.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

use super::access_log::Format;
use super::escape::{Escaped, Line};
use super::ratelog::{self, Topic};

/// Start the error log at `level` (`None`: `RUST_LOG`, else `info`) in
/// `format`, and read the rate limit's interval
/// ([`ratelog::INTERVAL_ENV`]). Call once, first thing.
pub fn init(level: Option<LevelFilter>, format: Format) {
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
    match format {
        Format::Text => b.format(|buf, record| {
            let style = buf.default_level_style(record.level());
            writeln!(
                buf,
                "[{} {style}{:<5}{style:#} {}] {}",
                buf.timestamp_millis(),
                record.level(),
                record.target(),
                Line::text(record.args()),
            )
        }),
        Format::Json => b
            .write_style(env_logger::WriteStyle::Never)
            .format(|buf, record| {
                let mut line = Vec::with_capacity(256);
                json_line(&mut line, std::time::SystemTime::now(), record);
                buf.write_all(&line)
            }),
    };
    ratelog::interval_from_env();
    let inner = b.build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Logger { inner })).is_ok() {
        log::set_max_level(max);
    }
}

/// One JSON error-log line, with its newline.
fn json_line(out: &mut Vec<u8>, time: std::time::SystemTime, record: &Record<'_>) {
    out.extend_from_slice(b"{\"time\":\"");
    super::access_log::push_time(out, time);
    // Writing to a Vec cannot fail.
    let _ = writeln!(
        out,
        "\",\"level\":\"{}\",\"target\":\"{}\",\"message\":\"{}\"}}",
        record.level(),
        Escaped::json(record.target()),
        Line::json(record.args()),
    );
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
    fn a_json_line_is_one_valid_object_of_printable_ascii() {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_796_342_400_123);
        let sni = "evil\n\u{1b}[31m\"name\"\u{e9}";
        let args = format_args!("bad SNI {sni}");
        let record = Record::builder()
            .level(Level::Warn)
            .target("rustls::server")
            .args(args)
            .build();
        let mut out = Vec::new();
        json_line(&mut out, time, &record);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with("}\n") && text.matches('\n').count() == 1,
            "{text}"
        );
        assert!(
            text.trim_end().bytes().all(|b| (0x20..=0x7e).contains(&b)),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["time"], "2026-12-04T00:00:00.123Z");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "rustls::server");
        assert_eq!(v["message"], format!("bad SNI {sni}"));
    }

    #[test]
    fn our_targets_and_the_others() {
        assert!(ours("ringway") && ours("ringway::conn::outcome"));
        assert!(!ours("rustls::msgs::handshake") && !ours("ringway_load") && !ours(""));
    }
}
