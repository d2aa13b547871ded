//! The access log: one line per finished tunnel or plain request, written
//! without ever blocking a worker.
//!
//! Each core formats its lines into its own buffer ([`CoreLog`]: no lock, and
//! no allocation per line once the buffer has grown) and hands a buffer over
//! when it passes [`BUF_LIMIT`], on the worker's flush timer and at shutdown.
//! Buffers travel over one bounded channel ([`CHANNEL_BOUND`]) to the single
//! writer thread `ringway-log`, which does the `write(2)`s to the file or
//! stderr and sends each emptied buffer back to its core for reuse. When the
//! writer is behind and the channel is full, the core drops that buffer's
//! lines and counts them ([`AccessLog::dropped`]): a slow disk costs lines,
//! never a worker's time or unbounded memory.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ops::ending::{Closed, Kind};
use crate::ops::escape::Escaped;
use crate::proto::http::date::civil_from_days;

/// A core hands its buffer to the writer once it holds this many bytes.
pub const BUF_LIMIT: usize = 64 * 1024;

/// What a fresh buffer reserves: the limit plus room for the line that
/// crosses it, so that a buffer never regrows on the way.
const BUF_CAP: usize = BUF_LIMIT + 16 * 1024;

/// Buffers (from all cores together) that may wait for the writer; one more
/// is dropped. At most about `CHANNEL_BOUND * BUF_CAP` bytes (20 MiB) wait.
pub const CHANNEL_BOUND: usize = 256;

/// Mode of a log file that ringway creates (before the umask).
const FILE_MODE: u32 = 0o640;

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// No access log: nothing is formatted, no thread is started.
    Off,
    /// The process's standard error, beside the diagnostic log.
    Stderr,
    /// A file, opened for append (created with mode 0o640).
    File(PathBuf),
}

impl std::str::FromStr for Sink {
    type Err = AccessLogError;

    /// `off`, `stderr`, or else a file path; an empty value is an error.
    fn from_str(s: &str) -> Result<Sink, AccessLogError> {
        match s {
            "" => Err(AccessLogError::EmptySink),
            "off" => Ok(Sink::Off),
            "stderr" => Ok(Sink::Stderr),
            path => Ok(Sink::File(PathBuf::from(path))),
        }
    }
}

/// How lines look, in the access log (`--access-log-format`) and the
/// error log (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Lines for people: `key=value` fields (the access log), or
    /// `[time LEVEL target] message` (the error log).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Why the access log could not start.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// An empty `--access-log` value (neither `off`, `stderr` nor a path).
    #[error("access log: empty value; give \"off\", \"stderr\" or a file path")]
    EmptySink,
    /// The file could not be opened for append.
    #[error("access log {}: {source}", path.display())]
    Open {
        /// The file as configured.
        path: PathBuf,
        /// Why `open(2)` failed.
        source: io::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the access log writer thread: {0}")]
    Spawn(io::Error),
}

/// One finished connection, as the access log shows it. Borrowed from the
/// connection's state for the time of [`CoreLog::record`].
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// What it was.
    pub kind: Kind,
    /// The TCP peer, or the PROXY-protocol source.
    pub client: SocketAddr,
    /// The address from trusted-proxy `X-Forwarded-For`, when it differs
    /// from the client's.
    pub real_ip: Option<IpAddr>,
    /// The matched route as configured, e.g. "/ws/" or "chat.example.com/ws/".
    pub route: Option<&'a str>,
    /// The request target as sent (escaped on output).
    pub target: Option<&'a str>,
    /// The backend server, as configured ("host:port").
    pub backend: Option<&'a str>,
    /// The status of the answer sent to the client.
    pub status: u16,
    /// From accept to the answer's head sent.
    pub handshake: Duration,
    /// From accept to close.
    pub duration: Duration,
    /// Bytes from the client to the backend.
    pub up: u64,
    /// Bytes from the backend to the client.
    pub down: u64,
    /// Why it closed.
    pub closed: Closed,
    /// The error text behind `closed`, if any.
    pub detail: Option<&'a str>,
    /// The TLS version, e.g. "TLSv1_3", when the client spoke TLS.
    pub tls: Option<&'a str>,
}

/// What travels to the writer thread.
enum Msg {
    /// Whole lines, and where to send the emptied buffer back.
    Lines { buf: Vec<u8>, back: Sender<Vec<u8>> },
    /// Reopen the file before the next write.
    Reopen,
    /// Everything before this is written; end the thread.
    Close,
}

/// What every handle shares with the others (not with the writer thread,
/// which holds only the receiving end, so that dropping every handle ends it).
struct Shared {
    tx: SyncSender<Msg>,
    format: Format,
    /// Lines dropped because the channel was full (or the writer gone).
    dropped: AtomicU64,
    /// A reopen asked for while the channel was full; the writer looks at it
    /// after each write.
    reopen_pending: Arc<AtomicBool>,
    /// The writer thread, until one handle's `close` joins it.
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The writer thread and the channel to it. Clones are handles to the same
/// writer (e.g. one for the SIGHUP thread's [`AccessLog::reopen`]).
#[derive(Clone)]
pub struct AccessLog {
    /// `None` for [`Sink::Off`].
    shared: Option<Arc<Shared>>,
}

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLog")
            .field("on", &self.shared.is_some())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl AccessLog {
    /// Open the sink (a file for append, created with mode 0o640) and start
    /// the writer thread "ringway-log". [`Sink::Off`] starts nothing. Errors
    /// name the path.
    pub fn start(sink: Sink, format: Format) -> Result<AccessLog, AccessLogError> {
        let out: Box<dyn Output> = match sink {
            Sink::Off => return Ok(AccessLog { shared: None }),
            Sink::Stderr => Box::new(StderrOut),
            Sink::File(path) => match open_append(&path) {
                Ok(file) => Box::new(FileOut { path, file }),
                Err(source) => return Err(AccessLogError::Open { path, source }),
            },
        };
        AccessLog::spawn(out, format)
    }

    /// Start the writer thread on any output (tests use one they can stall).
    fn spawn(out: Box<dyn Output>, format: Format) -> Result<AccessLog, AccessLogError> {
        let (tx, rx) = mpsc::sync_channel(CHANNEL_BOUND);
        let reopen_pending = Arc::new(AtomicBool::new(false));
        let pending = Arc::clone(&reopen_pending);
        let thread = std::thread::Builder::new()
            .name("ringway-log".into())
            .spawn(move || write_loop(rx, out, &pending))
            .map_err(AccessLogError::Spawn)?;
        Ok(AccessLog {
            shared: Some(Arc::new(Shared {
                tx,
                format,
                dropped: AtomicU64::new(0),
                reopen_pending,
                thread: Mutex::new(Some(thread)),
            })),
        })
    }

    /// A per-core handle, built anywhere and moved to its worker.
    pub fn core(&self) -> CoreLog {
        CoreLog {
            on: self.shared.as_ref().map(|shared| {
                let (back_tx, back_rx) = mpsc::channel();
                CoreOn {
                    shared: Arc::clone(shared),
                    back_tx,
                    back_rx,
                }
            }),
            buf: RefCell::new(Vec::new()),
            lines: Cell::new(0),
        }
    }

    /// Reopen the file (after logrotate moved it). The writer does it between
    /// two writes, after the buffers already waiting when the channel had
    /// room; errors are logged and the old file kept. Never blocks: with the
    /// channel full, the writer reopens after its next write.
    pub fn reopen(&self) {
        let Some(shared) = &self.shared else { return };
        if shared.tx.try_send(Msg::Reopen).is_err() {
            shared.reopen_pending.store(true, Ordering::Relaxed);
        }
    }

    /// Lines dropped because the writer was behind (all cores).
    pub fn dropped(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.dropped.load(Ordering::Relaxed))
    }

    /// Wait until everything handed over so far is written and the writer
    /// thread has ended. Call it after every core has flushed its
    /// [`CoreLog`] (after the workers are joined); lines handed over later
    /// are counted as dropped. Safe on [`Sink::Off`] and on a second handle
    /// whose writer is already closed. Blocks while the writer is stalled.
    pub fn close(self) {
        let Some(shared) = self.shared else { return };
        let thread = shared
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(thread) = thread else { return };
        // Behind every buffer already queued; an error means the writer is
        // gone already.
        let _ = shared.tx.send(Msg::Close);
        if thread.join().is_err() {
            log::error!("access log writer thread panicked");
        }
    }
}

/// The part of a [`CoreLog`] that exists only when the log is on.
struct CoreOn {
    shared: Arc<Shared>,
    /// Given to the writer with each buffer, to send it back emptied.
    back_tx: Sender<Vec<u8>>,
    /// Emptied buffers, taken before allocating a new one.
    back_rx: Receiver<Vec<u8>>,
}

/// One core's buffer. Lives on its worker thread (in the shared `Rc` state,
/// hence the `RefCell`), but is `Send` so the main thread can build it.
pub struct CoreLog {
    /// `None` for [`Sink::Off`]: every method returns at once.
    on: Option<CoreOn>,
    /// Whole lines not handed over yet; no capacity until the first line.
    buf: RefCell<Vec<u8>>,
    /// How many lines `buf` holds, to count them if they are dropped.
    lines: Cell<u64>,
}

impl fmt::Debug for CoreLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoreLog")
            .field("on", &self.on.is_some())
            .field("buffered_lines", &self.lines.get())
            .finish()
    }
}

impl CoreLog {
    /// Whether lines are kept at all (false for [`Sink::Off`]), so a caller
    /// can skip gathering an entry's fields.
    pub fn is_on(&self) -> bool {
        self.on.is_some()
    }

    /// Format `entry` into this core's buffer, time-stamped now (UTC, RFC
    /// 3339 with milliseconds); hand the buffer over once it passes
    /// [`BUF_LIMIT`].
    pub fn record(&self, entry: &Entry<'_>) {
        let Some(on) = &self.on else { return };
        let mut buf = self.buf.borrow_mut();
        if buf.capacity() == 0 {
            *buf = on
                .back_rx
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(BUF_CAP));
        }
        let now = SystemTime::now();
        match on.shared.format {
            Format::Text => format_text(entry, now, &mut buf),
            Format::Json => format_json(entry, now, &mut buf),
        }
        self.lines.set(self.lines.get() + 1);
        if buf.len() >= BUF_LIMIT {
            self.hand_over(on, &mut buf);
        }
    }

    /// Hand over whatever is buffered (the flush timer and shutdown). Cheap
    /// when empty.
    pub fn flush(&self) {
        let Some(on) = &self.on else { return };
        let mut buf = self.buf.borrow_mut();
        if !buf.is_empty() {
            self.hand_over(on, &mut buf);
        }
        // Buffers the writer gave back: one is kept for the next hand-over,
        // the rest (a burst's) are freed, so memory returns to its baseline.
        if let Ok(spare) = on.back_rx.try_recv() {
            while on.back_rx.try_recv().is_ok() {}
            let _ = on.back_tx.send(spare);
        }
    }

    /// Send the buffer to the writer, or, if it is behind, drop its lines,
    /// count them and keep the buffer. Never blocks.
    fn hand_over(&self, on: &CoreOn, buf: &mut Vec<u8>) {
        let lines = self.lines.replace(0);
        let msg = Msg::Lines {
            buf: std::mem::take(buf),
            back: on.back_tx.clone(),
        };
        if let Err(TrySendError::Full(msg) | TrySendError::Disconnected(msg)) =
            on.shared.tx.try_send(msg)
        {
            if let Msg::Lines { buf: mut kept, .. } = msg {
                kept.clear();
                *buf = kept;
            }
            on.shared.dropped.fetch_add(lines, Ordering::Relaxed);
        }
    }
}

impl Drop for CoreLog {
    /// Lines still buffered are handed over, not lost with the worker.
    fn drop(&mut self) {
        self.flush();
    }
}

/// Where the writer thread writes.
trait Output: Send {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Open the file again under its name; a no-op for stderr.
    fn reopen(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct StderrOut;

impl Output for StderrOut {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // Whole buffers under the lock, so that diagnostic lines never land
        // inside an access log line.
        io::stderr().lock().write_all(buf)
    }
}

struct FileOut {
    path: PathBuf,
    file: File,
}

impl Output for FileOut {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.file = open_append(&self.path)?;
        Ok(())
    }
}

fn open_append(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)
}

/// The writer thread: write each buffer in arrival order, send it back, and
/// end on [`Msg::Close`] or when every handle is gone.
fn write_loop(rx: Receiver<Msg>, mut out: Box<dyn Output>, reopen_pending: &AtomicBool) {
    // Log a failing sink once per run of failures, not once per buffer.
    let mut failing = false;
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Lines { mut buf, back } => {
                match out.write_all(&buf) {
                    Ok(()) if failing => {
                        failing = false;
                        log::warn!("access log: writing again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        log::error!("access log: write failed, lines are lost: {e}");
                    }
                    Err(_) => {}
                }
                buf.clear();
                // A buffer that one huge line made huge is not kept.
                if buf.capacity() <= 2 * BUF_CAP {
                    let _ = back.send(buf);
                }
                if reopen_pending.swap(false, Ordering::Relaxed) {
                    reopen(&mut *out);
                }
            }
            Msg::Reopen => reopen(&mut *out),
            Msg::Close => break,
        }
    }
}

fn reopen(out: &mut dyn Output) {
    if let Err(e) = out.reopen() {
        log::error!("access log: reopen failed, keeping the old file: {e}");
    }
}

/// One text line: the time, the kind, then `key=value` fields; `route`,
/// `target` and `backend` print `-` when absent, `real_ip` and `tls` are left
/// out. Values go through [`Escaped`]: none can hold a space, a quote
/// outside its own quotes or a byte outside printable ASCII, or pass its
/// cap, so a line can be neither split nor forged, and stays short.
fn format_text(e: &Entry<'_>, time: SystemTime, out: &mut Vec<u8>) {
    push_time(out, time);
    out.push(b' ');
    push_bare(out, e.kind.as_str());
    // Writing to a Vec cannot fail.
    let _ = write!(out, " client={}", e.client);
    if let Some(ip) = e.real_ip {
        let _ = write!(out, " real_ip={ip}");
    }
    for (key, value) in [
        (&b" route="[..], e.route),
        (b" target=", e.target),
        (b" backend=", e.backend),
    ] {
        out.extend_from_slice(key);
        match value {
            Some(v) => push_bare(out, v),
            None => out.push(b'-'),
        }
    }
    let _ = write!(
        out,
        " status={} handshake={:.3}s duration={:.3}s up={} down={} closed=\"",
        e.status,
        e.handshake.as_secs_f64(),
        e.duration.as_secs_f64(),
        e.up,
        e.down,
    );
    // Our own words: printable ASCII without quotes or backslashes.
    let _ = write!(out, "{}", e.closed);
    if let Some(detail) = e.detail {
        let _ = write!(out, ": {}", Escaped::quoted(detail));
    }
    out.push(b'"');
    if let Some(tls) = e.tls {
        out.extend_from_slice(b" tls=");
        push_bare(out, tls);
    }
    out.push(b'\n');
}

/// One JSON object on one line, printable ASCII ([`Escaped::json`]);
/// absent fields are `null`.
fn format_json(e: &Entry<'_>, time: SystemTime, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":\"");
    push_time(out, time);
    out.extend_from_slice(b"\",\"kind\":");
    push_json_str(out, e.kind.as_str());
    let _ = write!(out, ",\"client\":\"{}\",\"real_ip\":", e.client);
    match e.real_ip {
        Some(ip) => {
            let _ = write!(out, "\"{ip}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    for (key, value) in [
        (&b",\"route\":"[..], e.route),
        (b",\"target\":", e.target),
        (b",\"backend\":", e.backend),
    ] {
        out.extend_from_slice(key);
        push_json_opt(out, value);
    }
    let _ = write!(
        out,
        ",\"status\":{},\"handshake_s\":{:.3},\"duration_s\":{:.3},\"up\":{},\"down\":{},\"closed\":",
        e.status,
        e.handshake.as_secs_f64(),
        e.duration.as_secs_f64(),
        e.up,
        e.down,
    );
    let _ = write!(out, "\"{}\"", e.closed);
    out.extend_from_slice(b",\"detail\":");
    push_json_opt(out, e.detail);
    out.extend_from_slice(b",\"tls\":");
    push_json_opt(out, e.tls);
    out.extend_from_slice(b"}\n");
}

/// `time` as RFC 3339 UTC with milliseconds (truncated, never rounded up
/// into the next second), e.g. `2026-11-21T10:00:00.123Z`. Times before 1970
/// (a clock set far back) print as the epoch.
pub(crate) fn push_time(out: &mut Vec<u8>, time: SystemTime) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        since.subsec_millis(),
    );
}

/// A value in its text form, bare (`key=value`).
fn push_bare(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{}", Escaped::bare(s));
}

/// A JSON string with its quotes.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    let _ = write!(out, "\"{}\"", Escaped::json(s));
}

fn push_json_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis)
    }

    fn time_str(t: SystemTime) -> String {
        let mut out = Vec::new();
        push_time(&mut out, t);
        String::from_utf8(out).unwrap()
    }

    /// The example entry of the module's documentation.
    fn example() -> Entry<'static> {
        Entry {
            kind: Kind::Tunnel,
            client: "127.0.0.1:5555".parse().unwrap(),
            real_ip: Some("203.0.113.9".parse().unwrap()),
            route: Some("/ws/"),
            target: Some("/ws/room?x=1"),
            backend: Some("chat/127.0.0.1:8080"),
            status: 101,
            handshake: Duration::from_millis(2),
            duration: Duration::from_millis(12_345),
            up: 100,
            down: 200,
            closed: Closed::Client,
            detail: None,
            tls: Some("TLSv1_3"),
        }
    }

    fn text(e: &Entry<'_>) -> String {
        let mut out = Vec::new();
        format_text(e, at(1_795_255_200, 123), &mut out);
        String::from_utf8(out).unwrap()
    }

    fn json(e: &Entry<'_>) -> String {
        let mut out = Vec::new();
        format_json(e, at(1_795_255_200, 123), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn time_at_known_epochs() {
        assert_eq!(time_str(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(time_str(at(951_782_400, 0)), "2000-02-29T00:00:00.000Z");
        assert_eq!(time_str(at(1_795_219_200, 0)), "2026-11-21T00:00:00.000Z");
        assert_eq!(time_str(at(1_795_255_200, 123)), "2026-11-21T10:00:00.123Z");
        // The last millisecond of a leap year, and the next day.
        assert_eq!(time_str(at(1_735_689_599, 999)), "2024-12-31T23:59:59.999Z");
        assert_eq!(time_str(at(1_735_689_600, 0)), "2025-01-01T00:00:00.000Z");
        // 2100 is not a leap year.
        assert_eq!(time_str(at(4_107_542_400, 0)), "2100-03-01T00:00:00.000Z");
        // Before 1970: the epoch.
        assert_eq!(
            time_str(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn milliseconds_truncate_and_never_carry() {
        let t = UNIX_EPOCH + Duration::new(59, 999_999_999);
        assert_eq!(time_str(t), "1970-01-01T00:00:59.999Z");
        let t = UNIX_EPOCH + Duration::new(0, 1_499_999);
        assert_eq!(time_str(t), "1970-01-01T00:00:00.001Z");
    }

    #[test]
    fn text_line_exact() {
        assert_eq!(
            text(&example()),
            "2026-11-21T10:00:00.123Z tunnel client=127.0.0.1:5555 real_ip=203.0.113.9 \
             route=/ws/ target=/ws/room?x=1 backend=chat/127.0.0.1:8080 status=101 \
             handshake=0.002s duration=12.345s up=100 down=200 closed=\"client closed\" \
             tls=TLSv1_3\n"
        );
    }

    #[test]
    fn text_line_absent_fields_and_detail() {
        let e = Entry {
            kind: Kind::Refused,
            client: "[2001:db8::1]:443".parse().unwrap(),
            real_ip: None,
            route: None,
            target: None,
            backend: None,
            status: 502,
            closed: Closed::Refused,
            detail: Some("connect to 10.0.0.1:80 failed: connection refused"),
            tls: None,
            ..example()
        };
        assert_eq!(
            text(&e),
            "2026-11-21T10:00:00.123Z refused client=[2001:db8::1]:443 route=- target=- \
             backend=- status=502 handshake=0.002s duration=12.345s up=100 down=200 \
             closed=\"refused: connect to 10.0.0.1:80 failed: connection refused\"\n"
        );
    }

    #[test]
    fn text_escapes_so_a_line_cannot_be_split_or_forged() {
        let e = Entry {
            target: Some("/a b\"c\\d\ne\u{1b}\u{7f}\té"),
            closed: Closed::Refused,
            detail: Some("bad \"x\"\r\nfake line \\ é\0"),
            ..example()
        };
        let line = text(&e);
        assert!(line.contains(r#" target=/a%20b\"c\\d\x0ae\x1b\x7f\x09\xc3\xa9 "#));
        assert!(line.contains(r#" closed="refused: bad \"x\"\x0d\x0afake line \\ \xc3\xa9\x00" "#));
        // One line, printable ASCII only.
        assert_eq!(line.find('\n'), Some(line.len() - 1));
        assert!(line[..line.len() - 1]
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b)));
        // A forged field in the target stays inside the target.
        let e = Entry {
            target: Some("/x status=200 closed=\"ok\""),
            ..example()
        };
        assert!(text(&e).contains(r#" target=/x%20status=200%20closed=\"ok\" backend="#));
    }

    #[test]
    fn json_line_exact() {
        assert_eq!(
            json(&example()),
            "{\"time\":\"2026-11-21T10:00:00.123Z\",\"kind\":\"tunnel\",\
             \"client\":\"127.0.0.1:5555\",\"real_ip\":\"203.0.113.9\",\"route\":\"/ws/\",\
             \"target\":\"/ws/room?x=1\",\"backend\":\"chat/127.0.0.1:8080\",\"status\":101,\
             \"handshake_s\":0.002,\"duration_s\":12.345,\"up\":100,\"down\":200,\
             \"closed\":\"client closed\",\"detail\":null,\"tls\":\"TLSv1_3\"}\n"
        );
    }

    /// A JSON value as far as the access log writes them.
    #[derive(Debug, PartialEq)]
    enum Value {
        Str(String),
        Num(f64),
        Null,
    }

    /// A strict little parser for one flat JSON object: string keys; string,
    /// number or null values. Panics on anything else.
    fn parse_object(s: &str) -> BTreeMap<String, Value> {
        fn string(s: &[u8], i: &mut usize) -> String {
            assert_eq!(s[*i], b'"');
            *i += 1;
            let mut out = Vec::new();
            loop {
                match s[*i] {
                    b'"' => break,
                    b'\\' => {
                        *i += 1;
                        match s[*i] {
                            b'"' => out.push(b'"'),
                            b'\\' => out.push(b'\\'),
                            b'/' => out.push(b'/'),
                            b'n' => out.push(b'\n'),
                            b'u' => {
                                let hex = std::str::from_utf8(&s[*i + 1..*i + 5]).unwrap();
                                let c =
                                    char::from_u32(u32::from_str_radix(hex, 16).unwrap()).unwrap();
                                out.extend_from_slice(c.to_string().as_bytes());
                                *i += 4;
                            }
                            other => panic!("escape \\{}", other as char),
                        }
                    }
                    b if b < 0x20 => panic!("raw control byte {b} in a string"),
                    b => out.push(b),
                }
                *i += 1;
            }
            *i += 1;
            String::from_utf8(out).unwrap()
        }
        let s = s.as_bytes();
        let mut map = BTreeMap::new();
        let mut i = 0;
        assert_eq!(s[i], b'{');
        i += 1;
        loop {
            let key = string(s, &mut i);
            assert_eq!(s[i], b':');
            i += 1;
            let value = match s[i] {
                b'"' => Value::Str(string(s, &mut i)),
                b'n' => {
                    assert_eq!(&s[i..i + 4], b"null");
                    i += 4;
                    Value::Null
                }
                _ => {
                    let start = i;
                    while s[i].is_ascii_digit() || s[i] == b'.' || s[i] == b'-' {
                        i += 1;
                    }
                    let n = std::str::from_utf8(&s[start..i]).unwrap();
                    Value::Num(n.parse().unwrap())
                }
            };
            assert!(map.insert(key, value).is_none(), "duplicate key");
            match s[i] {
                b',' => i += 1,
                b'}' => break,
                b => panic!("unexpected {}", b as char),
            }
        }
        assert_eq!(&s[i + 1..], b"\n", "one object, then the line's end");
        map
    }

    #[test]
    fn json_parses_back_with_every_awkward_character() {
        let nasty = "a \"q\" \\ b\nc\r\t\u{0}\u{1f}\u{7f} é ✓";
        let e = Entry {
            real_ip: None,
            route: None,
            target: Some(nasty),
            detail: Some(nasty),
            closed: Closed::Refused,
            tls: None,
            ..example()
        };
        let line = json(&e);
        assert_eq!(line.matches('\n').count(), 1);
        let map = parse_object(&line);
        let s = |v: &str| Value::Str(v.to_string());
        assert_eq!(map["time"], s("2026-11-21T10:00:00.123Z"));
        assert_eq!(map["kind"], s("tunnel"));
        assert_eq!(map["client"], s("127.0.0.1:5555"));
        assert_eq!(map["real_ip"], Value::Null);
        assert_eq!(map["route"], Value::Null);
        assert_eq!(map["target"], s(nasty));
        assert_eq!(map["backend"], s("chat/127.0.0.1:8080"));
        assert_eq!(map["status"], Value::Num(101.0));
        assert_eq!(map["handshake_s"], Value::Num(0.002));
        assert_eq!(map["duration_s"], Value::Num(12.345));
        assert_eq!(map["up"], Value::Num(100.0));
        assert_eq!(map["down"], Value::Num(200.0));
        assert_eq!(map["closed"], s("refused"));
        assert_eq!(map["detail"], s(nasty));
        assert_eq!(map["tls"], Value::Null);
        assert_eq!(map.len(), 15);
    }

    #[test]
    fn every_byte_value_leaves_both_formats_printable_and_short() {
        let every: Vec<u8> = (0..=255u8).collect();
        let value = String::from_utf8_lossy(&every).repeat(8);
        let e = Entry {
            route: Some(&value),
            target: Some(&value),
            backend: Some(&value),
            detail: Some(&value),
            closed: Closed::Refused,
            ..example()
        };
        for line in [text(&e), json(&e)] {
            let body = line.strip_suffix('\n').unwrap();
            assert!(body.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{line}");
            assert!(line.len() < 4 * 1024, "{} bytes", line.len());
        }
        let map = parse_object(&json(&e));
        let Value::Str(target) = &map["target"] else {
            panic!("{map:?}")
        };
        // Cut, but what is there is the value's start.
        let kept = target.strip_suffix("...").unwrap();
        assert!(value.starts_with(kept) && kept.len() > 40, "{kept:?}");
    }

    #[test]
    fn sink_from_str() {
        assert_eq!("off".parse::<Sink>().unwrap(), Sink::Off);
        assert_eq!("stderr".parse::<Sink>().unwrap(), Sink::Stderr);
        assert_eq!(
            "/var/log/ringway/access.log".parse::<Sink>().unwrap(),
            Sink::File("/var/log/ringway/access.log".into())
        );
        assert_eq!(
            "access.log".parse::<Sink>().unwrap(),
            Sink::File("access.log".into())
        );
        assert!(matches!("".parse::<Sink>(), Err(AccessLogError::EmptySink)));
    }

    /// A scratch directory of this test, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("ringway-access-log-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn entry_for(target: &str) -> Entry<'_> {
        Entry {
            target: Some(target),
            ..example()
        }
    }

    #[test]
    fn file_sink_gets_lines_of_two_cores() {
        use std::os::unix::fs::PermissionsExt;
        let dir = Scratch::new("file");
        let path = dir.0.join("access.log");
        let log = AccessLog::start(Sink::File(path.clone()), Format::Text).unwrap();
        let (a, b) = (log.core(), log.core());
        assert!(a.is_on());
        a.record(&entry_for("/from-a"));
        b.record(&entry_for("/from-b"));
        b.record(&entry_for("/from-b-2"));
        a.flush();
        b.flush();
        b.flush(); // empty: nothing more
        let handle = log.clone();
        log.clone().close();
        log.close(); // a second close is harmless
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        for t in ["/from-a ", "/from-b ", "/from-b-2 "] {
            assert_eq!(text.matches(&format!(" target={t}")).count(), 1, "{text}");
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777 & !FILE_MODE, 0, "mode {mode:o}");
        // After close, lines are counted as dropped, not lost silently.
        a.record(&entry_for("/late"));
        a.flush();
        assert_eq!(handle.dropped(), 1);
        handle.close();
    }

    #[test]
    fn file_sink_appends_and_errors_name_the_path() {
        let dir = Scratch::new("append");
        let path = dir.0.join("access.log");
        std::fs::write(&path, "earlier\n").unwrap();
        let log = AccessLog::start(Sink::File(path.clone()), Format::Json).unwrap();
        let core = log.core();
        core.record(&example());
        drop(core); // flushes
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("earlier\n{\"time\":"), "{text}");
        assert_eq!(text.lines().count(), 2);

        let missing = dir.0.join("no-such-dir/access.log");
        let err = AccessLog::start(Sink::File(missing.clone()), Format::Text).unwrap_err();
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );
    }

    #[test]
    fn big_buffers_are_handed_over_without_flush() {
        let dir = Scratch::new("big");
        let path = dir.0.join("access.log");
        let log = AccessLog::start(Sink::File(path.clone()), Format::Text).unwrap();
        let core = log.core();
        let long = "/".repeat(1000);
        let mut n = 0;
        while std::fs::metadata(&path).unwrap().len() == 0 {
            core.record(&entry_for(&long));
            n += 1;
            assert!(n < 10_000, "nothing was handed over");
            if n % 100 == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        assert!(core.buf.borrow().capacity() <= BUF_CAP);
        core.flush();
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), n);
    }

    #[test]
    fn reopen_after_rename_goes_to_the_new_file() {
        let dir = Scratch::new("reopen");
        let path = dir.0.join("access.log");
        let moved = dir.0.join("access.log.1");
        let log = AccessLog::start(Sink::File(path.clone()), Format::Text).unwrap();
        let core = log.core();
        core.record(&entry_for("/before"));
        core.flush();
        // The writer has not necessarily written "/before" yet: the rename
        // and the reopen still put it in the old file, as the reopen travels
        // behind it.
        std::fs::rename(&path, &moved).unwrap();
        log.reopen();
        core.record(&entry_for("/after"));
        core.flush();
        log.close();
        let old = std::fs::read_to_string(&moved).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(
            old.contains(" target=/before ") && !old.contains("/after"),
            "{old}"
        );
        assert!(
            new.contains(" target=/after ") && !new.contains("/before"),
            "{new}"
        );
        assert_eq!(new.lines().count(), 1);
    }

    /// An output whose writes wait for the test: it says when a write has
    /// begun, and goes on once the test lets it.
    struct Gate {
        began: mpsc::Sender<()>,
        go: Receiver<()>,
        written: Arc<Mutex<Vec<u8>>>,
        reopens: Arc<AtomicU64>,
    }

    impl Output for Gate {
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            let _ = self.began.send(());
            // Err: the test dropped its end: no more waiting.
            let _ = self.go.recv();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(())
        }

        fn reopen(&mut self) -> io::Result<()> {
            self.reopens.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    #[test]
    fn full_channel_drops_and_counts_without_blocking() {
        let (began_tx, began) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let reopens = Arc::new(AtomicU64::new(0));
        let gate = Gate {
            began: began_tx,
            go: go_rx,
            written: Arc::clone(&written),
            reopens: Arc::clone(&reopens),
        };
        let log = AccessLog::spawn(Box::new(gate), Format::Text).unwrap();
        let core = log.core();
        // The writer takes the first buffer and stalls in its write.
        core.record(&entry_for("/0"));
        core.flush();
        began.recv().unwrap();
        // These fill the channel.
        for i in 1..=CHANNEL_BOUND {
            core.record(&entry_for(&format!("/{i}")));
            core.flush();
        }
        assert_eq!(log.dropped(), 0);
        // These find it full: their lines are dropped and counted, at once.
        core.record(&entry_for("/lost-a"));
        core.record(&entry_for("/lost-b"));
        core.flush();
        core.record(&entry_for("/lost-c"));
        core.flush();
        assert_eq!(log.dropped(), 3);
        // The buffer was kept for reuse, empty.
        assert!(core.buf.borrow().is_empty() && core.buf.borrow().capacity() > 0);
        // A reopen asked for now cannot queue; it is done after a write.
        log.reopen();
        drop(go);
        log.clone().close();
        let written = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert_eq!(written.lines().count(), CHANNEL_BOUND + 1);
        assert!(written.contains(&format!(" target=/{CHANNEL_BOUND} ")));
        assert!(!written.contains("/lost"));
        assert_eq!(reopens.load(Ordering::Relaxed), 1);
        assert_eq!(log.dropped(), 3);
    }

    #[test]
    fn emptied_buffers_come_back_for_reuse() {
        let dir = Scratch::new("reuse");
        let log = AccessLog::start(Sink::File(dir.0.join("access.log")), Format::Json).unwrap();
        let core = log.core();
        core.record(&example());
        core.flush();
        let on = core.on.as_ref().unwrap();
        let back = on
            .back_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the buffer comes back");
        assert!(back.is_empty() && back.capacity() >= BUF_CAP);
        drop(core);
        log.close();
    }

    #[test]
    fn off_records_nothing_and_costs_nothing() {
        let log = AccessLog::start(Sink::Off, Format::Text).unwrap();
        let core = log.core();
        assert!(!core.is_on());
        for _ in 0..1000 {
            core.record(&example());
        }
        core.flush();
        log.reopen();
        assert_eq!(core.buf.borrow().capacity(), 0);
        assert_eq!(core.lines.get(), 0);
        assert_eq!(log.dropped(), 0);
        log.close();
    }

    #[test]
    fn core_log_is_send() {
        fn is_send<T: Send>() {}
        is_send::<CoreLog>();
        is_send::<AccessLog>();
        fn is_sync<T: Sync>() {}
        is_sync::<AccessLog>();
    }
}
