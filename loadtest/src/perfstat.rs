//! System calls of a watched process over the measured window, counted by
//! `perf stat` on two tracepoints: `raw_syscalls:sys_enter` (every system
//! call) and `syscalls:sys_enter_io_uring_enter` (the io_uring submissions
//! and waits among them).
//!
//! One `perf stat` per watched pid, in counting mode (no samples, no
//! records: the kernel adds one to a counter on each system call of that
//! process). It is started before the connections are set up, with its
//! counters disabled (`-D -1`), so that its own start-up (reading the
//! tracepoints, opening the events) is out of the window; it takes
//! `enable` and `disable` on its stdin (`--control fd:0,1`) and answers
//! `ack` on its stdout, and they are sent at the window's two edges. Then it
//! is stopped with SIGINT and writes its counts (`-x,` CSV) to a file,
//! which [`parse`] reads.
//!
//! Without perf, or when it cannot count (not root, `perf_event_paranoid`,
//! no such tracepoint, a perf older than 5.9 without `--control`), the
//! counts are absent and a note says why; the run goes on.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Every system call entry.
pub const SYSCALL_EVENT: &str = "raw_syscalls:sys_enter";
/// io_uring_enter(2) entries (also counted in [`SYSCALL_EVENT`]).
pub const URING_EVENT: &str = "syscalls:sys_enter_io_uring_enter";

/// How long perf may take to come up (reading tracefs, opening events).
const START_LIMIT: Duration = Duration::from_secs(5);
/// How long an `enable` or `disable` may take to be acknowledged.
const ACK_LIMIT: Duration = Duration::from_secs(2);
/// How long perf may take to write its counts and exit after SIGINT.
const EXIT_LIMIT: Duration = Duration::from_secs(3);

/// What one watched process did over the window; `None`: not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub syscalls: Option<u64>,
    pub io_uring_enters: Option<u64>,
}

/// One line of `perf stat -x,` output: the event and its count, `None` for
/// `<not counted>` and `<not supported>`. Comments, blank lines and lines
/// that are not a count are `None` as a whole.
///
/// The fields: `count,unit,event,run time,enabled %,metric,metric unit`,
/// e.g. `12345,,raw_syscalls:sys_enter,2003112,100.00,,`.
pub fn parse_line(line: &str) -> Option<(&str, Option<u64>)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut f = line.split(',');
    let count = f.next()?.trim();
    let _unit = f.next()?;
    let event = f.next()?.trim();
    if event.is_empty() {
        return None;
    }
    if count.starts_with('<') {
        // <not counted>: the event was never running (the process did not
        // run in the window, or perf could not schedule it); <not
        // supported>: the kernel refused it.
        return Some((event, None));
    }
    // Plain integers with -x (no thousands separators); a float would mean
    // a scaled estimate, rounded here.
    let value = count
        .parse::<u64>()
        .ok()
        .or_else(|| count.parse::<f64>().ok().map(|v| v.round() as u64))?;
    Some((event, Some(value)))
}

/// The two counts in perf's output text (anything else is ignored). An
/// event name may carry a modifier (`raw_syscalls:sys_enter:u`).
pub fn parse(text: &str) -> Counts {
    let mut c = Counts::default();
    for (event, value) in text.lines().filter_map(parse_line) {
        let base = |name: &str| event == name || event.starts_with(&format!("{name}:"));
        if base(SYSCALL_EVENT) {
            c.syscalls = value;
        } else if base(URING_EVENT) {
            c.io_uring_enters = value;
        }
    }
    c
}

/// perf writes its acks with their C string terminator (`ack\n\0`), so a
/// line after the first starts with a NUL.
pub fn is_ack(line: &str) -> bool {
    line.trim_matches(|c: char| c == '\0' || c.is_whitespace()) == "ack"
}

/// The count per unit of work, when both are there.
pub fn per_unit(count: Option<u64>, units: f64) -> Option<f64> {
    count
        .filter(|_| units > 0.0)
        .map(|n| n as f64 / units)
        .filter(|x| x.is_finite())
}

/// The first few lines perf wrote to stderr, minus its own chatter.
fn perf_said(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("Events ")
                && !l.starts_with("Usage:")
                && !l.starts_with("-p,")
                && !l.starts_with("-e,")
        })
        .take(3)
        .collect();
    if lines.is_empty() {
        "no message".to_string()
    } else {
        lines.join(" | ")
    }
}

/// Send signal `sig` (INT, KILL) to `pid` with the shell's `kill`.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("sh")
        .args([
            "-c",
            "kill -s \"$0\" \"$1\" 2>/dev/null",
            sig,
            &pid.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// One `perf stat` attached to one pid.
struct Watch {
    pid: u32,
    child: Child,
    /// perf's control input: kept open until perf is gone.
    control: Option<ChildStdin>,
    /// perf's acks, line by line, from a reader thread.
    acks: Receiver<String>,
    out: PathBuf,
    err: PathBuf,
    /// Why this one has no counts.
    failed: Option<String>,
}

impl Watch {
    fn start(perf: &Path, pid: u32, dir: &Path, seq: usize) -> Result<Watch, String> {
        let stem = format!("ringway-load-perf-{}-{pid}-{seq}", std::process::id());
        let out = dir.join(format!("{stem}.csv"));
        let err = dir.join(format!("{stem}.err"));
        let err_file =
            std::fs::File::create(&err).map_err(|e| format!("creating {}: {e}", err.display()))?;
        let spawned = Command::new(perf)
            .args(["stat", "-x,", "-e", SYSCALL_EVENT, "-e", URING_EVENT])
            .args(["-D", "-1", "--control", "fd:0,1", "-p", &pid.to_string()])
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err_file))
            .spawn();
        let mut child = spawned.map_err(|e| {
            let _ = std::fs::remove_file(&err);
            match e.kind() {
                std::io::ErrorKind::NotFound => format!("{} not found", perf.display()),
                _ => format!("starting {}: {e}", perf.display()),
            }
        })?;
        let control = child.stdin.take();
        let stdout = child.stdout.take();
        let (tx, acks) = mpsc::channel();
        if let Some(stdout) = stdout {
            // Ends at perf's exit (end of file).
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Watch {
            pid,
            child,
            control,
            acks,
            out,
            err,
            failed: None,
        })
    }

    /// Send a control command (`enable`, `disable`).
    fn send(&mut self, cmd: &str) {
        if self.failed.is_some() {
            return;
        }
        let ok = self.control.as_mut().is_some_and(|c| {
            c.write_all(format!("{cmd}\n").as_bytes()).is_ok() && c.flush().is_ok()
        });
        if !ok {
            self.failed = Some(self.gone(&format!("could not send {cmd:?}")));
        }
    }

    /// Wait (until `deadline`) for the ack of the command sent last.
    fn ack(&mut self, cmd: &str, deadline: Instant) {
        if self.failed.is_some() {
            return;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.acks.recv_timeout(left) {
                Ok(line) if is_ack(&line) => return,
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    self.failed = Some(format!(
                        "perf stat on pid {} did not acknowledge {cmd:?} in time ({})",
                        self.pid,
                        perf_said(&self.err)
                    ));
                    return;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.failed = Some(self.gone(&format!("exited before acknowledging {cmd:?}")));
                    return;
                }
            }
        }
    }

    /// perf is (probably) gone: its exit status and what it said.
    fn gone(&mut self, what: &str) -> String {
        let end = Instant::now() + Duration::from_millis(500);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                _ => break None,
            }
        };
        format!(
            "perf stat on pid {} {what}{}: {}",
            self.pid,
            status.map_or(String::new(), |s| format!(" ({s})")),
            perf_said(&self.err)
        )
    }

    /// SIGINT, wait for the exit (bounded), read the counts.
    fn finish(&mut self) -> Counts {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.child.id(), "INT");
        }
        let end = Instant::now() + EXIT_LIMIT;
        let exited = loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break true,
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                _ => break false,
            }
        };
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.failed.get_or_insert_with(|| {
                format!("perf stat on pid {} did not exit on SIGINT", self.pid)
            });
        }
        self.control = None;
        if self.failed.is_some() {
            return Counts::default();
        }
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let c = parse(&text);
        if c.syscalls.is_none() {
            let line = text
                .lines()
                .find(|l| l.contains(SYSCALL_EVENT))
                .map_or_else(|| perf_said(&self.err), str::to_string);
            let hint = if line.contains("<not counted>") {
                " (the process did not run in the window?)"
            } else {
                ""
            };
            self.failed = Some(format!(
                "perf stat on pid {} gave no system call count: {line}{hint}",
                self.pid
            ));
        }
        c
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(&self.err);
    }
}

/// The system call counters of every watched pid over one window.
pub struct Counters {
    watches: Vec<Option<Watch>>,
    /// The first reason a count is missing.
    note: Option<String>,
}

impl Counters {
    /// Start one `perf stat` (the `perf` binary; `None`: do not count) per
    /// pid, with its counters off, and wait (bounded) until each is ready.
    /// Never fails: what cannot be counted is noted.
    pub fn start(perf: Option<&Path>, pids: &[u32]) -> Counters {
        let mut c = Counters {
            watches: Vec::new(),
            note: None,
        };
        let Some(perf) = perf else {
            if !pids.is_empty() {
                c.note = Some("not counted (--no-perf)".to_string());
            }
            c.watches = pids.iter().map(|_| None).collect();
            return c;
        };
        let dir = std::env::temp_dir();
        for (i, &pid) in pids.iter().enumerate() {
            match Watch::start(perf, pid, &dir, i) {
                Ok(w) => c.watches.push(Some(w)),
                Err(e) => {
                    c.note.get_or_insert(e);
                    c.watches.push(None);
                }
            }
        }
        // The counters start disabled; a `disable` is answered once perf
        // has set up its events and reads its control input: it is ready.
        c.command("disable", START_LIMIT);
        c
    }

    /// Send `cmd` to every perf, then wait for every ack.
    fn command(&mut self, cmd: &str, limit: Duration) {
        for w in self.watches.iter_mut().flatten() {
            w.send(cmd);
        }
        self.wait(cmd, limit);
    }

    fn wait(&mut self, cmd: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        for w in self.watches.iter_mut().flatten() {
            w.ack(cmd, deadline);
            if let Some(f) = &w.failed {
                self.note.get_or_insert_with(|| f.clone());
            }
        }
    }

    /// Start counting (the window's start); [`Counters::acked`] waits for it.
    pub fn enable(&mut self) {
        for w in self.watches.iter_mut().flatten() {
            w.send("enable");
        }
    }

    /// Stop counting (the window's end).
    pub fn disable(&mut self) {
        for w in self.watches.iter_mut().flatten() {
            w.send("disable");
        }
    }

    /// Wait for the acks of the last `enable` or `disable`.
    pub fn acked(&mut self, cmd: &str) {
        self.wait(cmd, ACK_LIMIT);
    }

    /// Stop every perf and read its counts, in the order of the pids, and
    /// the first reason a count is missing.
    pub fn finish(mut self) -> (Vec<Counts>, Option<String>) {
        let mut out = Vec::new();
        for w in &mut self.watches {
            let c = match w {
                Some(w) => {
                    let c = w.finish();
                    if let Some(f) = &w.failed {
                        self.note.get_or_insert_with(|| f.clone());
                    }
                    c
                }
                None => Counts::default(),
            };
            out.push(c);
        }
        (out, self.note.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_lines() {
        assert_eq!(
            parse_line("12345,,raw_syscalls:sys_enter,2003112,100.00,,"),
            Some((SYSCALL_EVENT, Some(12345)))
        );
        assert_eq!(
            parse_line("0,,syscalls:sys_enter_io_uring_enter,338179040,100.00,,"),
            Some((URING_EVENT, Some(0)))
        );
        assert_eq!(
            parse_line("<not counted>,,raw_syscalls:sys_enter,0,100.00,,"),
            Some((SYSCALL_EVENT, None))
        );
        assert_eq!(
            parse_line("<not supported>,,syscalls:sys_enter_io_uring_enter,0,100.00,,"),
            Some((URING_EVENT, None))
        );
        assert_eq!(parse_line("# started on Thu Dec  3 18:49:49 2026"), None);
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line("Events disabled"), None);
        assert_eq!(parse_line("garbage,,x"), None);
    }

    #[test]
    fn acks() {
        assert!(is_ack("ack"));
        assert!(is_ack("\0ack"));
        assert!(!is_ack("Events enabled"));
    }

    #[test]
    fn whole_output() {
        let text = "# started on Thu Dec  3 18:49:49 2026\n\n\
                    747861,,raw_syscalls:sys_enter,310901897,100.00,,\n\
                    1234,,syscalls:sys_enter_io_uring_enter,310901897,100.00,,\n";
        assert_eq!(
            parse(text),
            Counts {
                syscalls: Some(747_861),
                io_uring_enters: Some(1234)
            }
        );
        // A process that did not run in the window, and an unknown event.
        let text = "<not counted>,,raw_syscalls:sys_enter,0,100.00,,\n\
                    <not supported>,,syscalls:sys_enter_io_uring_enter,0,100.00,,\n";
        assert_eq!(parse(text), Counts::default());
        // Modifiers and other events.
        let text = "10,,raw_syscalls:sys_enter:u,1,100.00,,\n5,,task-clock,1,100.00,,\n";
        assert_eq!(
            parse(text),
            Counts {
                syscalls: Some(10),
                io_uring_enters: None
            }
        );
        assert_eq!(parse(""), Counts::default());
    }

    #[test]
    fn per_unit_counts() {
        assert_eq!(per_unit(Some(350), 100.0), Some(3.5));
        assert_eq!(per_unit(Some(0), 100.0), Some(0.0));
        assert_eq!(per_unit(Some(5), 0.0), None);
        assert_eq!(per_unit(None, 10.0), None);
    }

    #[test]
    fn missing_perf_is_a_note_not_an_error() {
        let c = Counters::start(Some(Path::new("/nonexistent/perf")), &[1, 2]);
        let (counts, note) = c.finish();
        assert_eq!(counts, vec![Counts::default(); 2]);
        assert!(note.unwrap().contains("not found"));
        let (counts, note) = Counters::start(None, &[1]).finish();
        assert_eq!(counts, vec![Counts::default()]);
        assert!(note.unwrap().contains("--no-perf"));
        let (counts, note) = Counters::start(None, &[]).finish();
        assert!(counts.is_empty() && note.is_none());
    }
}
