//! `ringway demo` leaves nothing behind: not when its port is taken (it says
//! which flag to change), not when a signal stops it, and its private key
//! is off the disk while it runs.
//!
//! Each test gives the demo a temp directory of its own (`TMPDIR`), so what
//! it leaves there can be checked without looking at anyone else's files.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{wait_child, PATIENCE};

/// A temp directory for one test; removed (with whatever is in it) on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("ringway-test-demo-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// Everything under the directory, as paths relative to it.
    fn contents(&self) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if p.is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.0, &self.0, &mut out);
        out.sort();
        out
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The demo's process, killed on drop if a failed assertion left it running.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Demo {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Demo {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

fn demo(tmp: &Scratch, listen: &str, tls_listen: &str) -> Demo {
    let child = Command::new(env!("CARGO_BIN_EXE_ringway"))
        .args(["demo", "--listen", listen, "--tls-listen", tls_listen])
        .args(["--workers", "1", "--log-level", "warn"])
        .env("TMPDIR", &tmp.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringway demo");
    Demo(child)
}

/// Read a pipe to its end on a thread of its own.
fn collect(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} failed");
}

/// Run the demo with one of its ports taken: it exits with an error that
/// names the address and the flag to change, and leaves no files.
fn taken(flag: &str) {
    let tmp = Scratch::new(flag.trim_start_matches('-'));
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = holder.local_addr().unwrap().to_string();
    let mut child = if flag == "--listen" {
        demo(&tmp, &busy, "127.0.0.1:0")
    } else {
        demo(&tmp, "127.0.0.1:0", &busy)
    };
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let status = wait_child(&mut child, PATIENCE).expect("the demo did not exit");
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(!status.success(), "{status:?}\n{out}\n{err}");
    assert!(status.code().is_some(), "not an exit: {status:?}\n{err}");
    assert!(err.contains(&busy), "the message names {busy}:\n{err}");
    let hint = format!("ringway demo {flag} 127.0.0.1:PORT");
    assert!(err.contains(&hint), "the message says {hint:?}:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(tmp.contents(), Vec::<String>::new(), "left behind");
}

#[test]
fn a_taken_ws_port_is_named_with_the_flag_to_change_and_leaves_no_files() {
    taken("--listen");
}

#[test]
fn a_taken_wss_port_is_named_with_the_flag_to_change_and_leaves_no_files() {
    taken("--tls-listen");
}

/// Start the demo and read its stdout up to the "Ctrl-C" line (bounded);
/// returns the lines read.
fn until_ready(child: &mut Child) -> Vec<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + PATIENCE;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains("Ctrl-C");
                lines.push(line);
                if done {
                    return lines;
                }
            }
            Err(e) => panic!("the demo did not get ready ({e}): {lines:?}"),
        }
    }
}

#[test]
fn only_the_ca_is_on_disk_while_it_runs_and_sigterm_removes_it() {
    for sig in ["TERM", "INT"] {
        let tmp = Scratch::new(&format!("sig{sig}"));
        let mut child = demo(&tmp, "127.0.0.1:0", "127.0.0.1:0");
        let err = collect(child.stderr.take().unwrap());
        let lines = until_ready(&mut child);
        let dir = format!("ringway-demo-{}", child.id());
        // The certificate and its private key are in memory once loaded;
        // only the CA, which a client needs, stays.
        assert_eq!(
            tmp.contents(),
            vec![dir.clone(), format!("{dir}/ca.pem")],
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.contains(&format!("{dir}/ca.pem"))),
            "the CA's path is printed: {lines:?}"
        );
        signal(&child, sig);
        let status = wait_child(&mut child, PATIENCE).expect("the demo did not stop");
        let err = err.join().unwrap();
        assert!(status.success(), "SIG{sig}: {status:?}\n{err}");
        assert_eq!(
            tmp.contents(),
            Vec::<String>::new(),
            "SIG{sig}: left behind"
        );
    }
}

/// A signal at any moment of the start-up (before the certificate is made,
/// while it is, while the listeners start) leaves nothing behind: signals
/// are caught before the directory exists.
#[test]
fn a_signal_during_start_up_leaves_no_files() {
    for delay_ms in [0, 2, 5, 10, 20, 40, 80] {
        let tmp = Scratch::new(&format!("early{delay_ms}"));
        let mut child = demo(&tmp, "127.0.0.1:0", "127.0.0.1:0");
        let _out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        thread::sleep(Duration::from_millis(delay_ms));
        signal(&child, "TERM");
        let status = wait_child(&mut child, PATIENCE).expect("the demo did not stop");
        let err = err.join().unwrap();
        assert_eq!(
            tmp.contents(),
            Vec::<String>::new(),
            "SIGTERM after {delay_ms} ms ({status:?}): left behind\n{err}"
        );
    }
}
