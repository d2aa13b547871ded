//! Test harness: the real `ringway` binary on 127.0.0.1 port 0, real
//! WebSocket backends and clients (tungstenite), raw sockets for bad input.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedProtocolVersion,
};
use tungstenite::handshake::server::{Request, Response};
use tungstenite::{Message, WebSocket};

/// Generous bound for anything that should happen "at once".
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A running ringway process.
pub struct Proxy {
    child: Child,
    /// The first plain (`ws://`) listener.
    pub addr: SocketAddr,
    /// The first TLS (`wss://`) listener, when `--tls-listen` was given.
    pub tls_addr: Option<SocketAddr>,
    logs: Arc<Mutex<Vec<String>>>,
    /// Open descriptors right after start-up.
    pub baseline_fds: usize,
}

impl Proxy {
    /// Start ringway with `args` (plus `--listen 127.0.0.1:0 --workers 2`
    /// unless given) and wait until it listens.
    pub fn start(args: &[&str]) -> Proxy {
        Proxy::start_via(&[], args)
    }

    /// [`Proxy::start`] through a wrapper that execs ringway (`prlimit
    /// --nofile=N:N --`, say), so that the process is still ringway.
    pub fn start_via(wrapper: &[&str], args: &[&str]) -> Proxy {
        Proxy::launch(wrapper, &[], args)
    }

    /// [`Proxy::start`] with these environment variables set.
    pub fn start_env(env: &[(&str, &str)], args: &[&str]) -> Proxy {
        Proxy::launch(&[], env, args)
    }

    fn launch(wrapper: &[&str], env: &[(&str, &str)], args: &[&str]) -> Proxy {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if !args.contains(&"--listen") {
            all.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        if !args.contains(&"--workers") {
            all.extend(["--workers".into(), "2".into()]);
        }
        all.extend(["--log-level".into(), "debug".into()]);
        let bin = env!("CARGO_BIN_EXE_ringway");
        let mut command = match wrapper {
            [] => Command::new(bin),
            [first, rest @ ..] => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
        };
        let mut child = command
            .args(&all)
            // Every refusal's line, not one per reason per 10 s: tests count
            // them (tests/logs.rs checks the rate limit).
            .env("RINGWAY_LOG_INTERVAL_MS", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ringway");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("RINGWAY_TEST_ECHO").is_some() {
                    eprintln!("ringway| {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut proxy = Proxy {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            tls_addr: None,
            logs,
            baseline_fds: 0,
        };
        // Plain listeners are logged first, as `listening on ADDR (ws, ...)`,
        // then TLS ones as `listening on ADDR (wss, ...)`.
        let line = proxy
            .wait_start_line(|l| l.contains("listening on ") && !l.contains("(wss"))
            .unwrap_or_else(|| panic!("ringway did not start: {:?}", proxy.logs()));
        proxy.addr = listening_addr(&line);
        if all.iter().any(|a| a == "--tls-listen") {
            let line = proxy
                .wait_start_line(|l| l.contains("listening on ") && l.contains("(wss"))
                .unwrap_or_else(|| panic!("no TLS listener logged: {:?}", proxy.logs()));
            proxy.tls_addr = Some(listening_addr(&line));
        }
        let workers = all
            .iter()
            .position(|a| a == "--workers")
            .map(|i| all[i + 1].parse::<usize>().unwrap())
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        while proxy.count_logs("started: core") < workers {
            assert!(
                Instant::now() < deadline,
                "workers did not start: {:?}",
                proxy.logs()
            );
            thread::sleep(Duration::from_millis(10));
        }
        proxy.baseline_fds = proxy.fds();
        proxy
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// The TLS listener's address; panics when there is none.
    pub fn tls(&self) -> SocketAddr {
        self.tls_addr.expect("started without --tls-listen")
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn count_logs(&self, needle: &str) -> usize {
        self.logs().iter().filter(|l| l.contains(needle)).count()
    }

    /// The first log line containing `needle`, waiting up to `within`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> Option<String> {
        self.wait_log_where(|l| l.contains(needle), within)
    }

    /// The first log line for which `pred` holds, waiting up to `within`.
    pub fn wait_log_where(&self, pred: impl Fn(&str) -> bool, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.logs().into_iter().find(|l| pred(l)) {
                return Some(l);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// A start-up line: as `wait_log_where` with `PATIENCE`, but gives up
    /// soon after the process has exited (a refused configuration).
    fn wait_start_line(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + PATIENCE;
        let mut exited_at: Option<Instant> = None;
        loop {
            if let Some(l) = self.logs().into_iter().find(|l| pred(l)) {
                return Some(l);
            }
            if Instant::now() > deadline {
                return None;
            }
            if exited_at.is_none() && !self.is_running() {
                exited_at = Some(Instant::now());
            }
            if exited_at.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still running (without reaping it).
    fn is_running(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .map(|s| {
                let state = s.rsplit(") ").next().unwrap_or("").chars().next();
                !matches!(state, Some('Z' | 'X'))
            })
            .unwrap_or(false)
    }

    /// Wait until at least `n` log lines contain `needle`; panics (with the
    /// logs) after `within`.
    pub fn wait_count(&self, needle: &str, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.count_logs(needle) < n {
            assert!(
                Instant::now() < deadline,
                "waited for {n} lines with {needle:?}: {:#?}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The numbers of the process's open descriptors.
    pub fn fd_numbers(&self) -> Vec<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Open file descriptors of the process.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Assert that the descriptor count comes back to its start-up value.
    pub fn assert_fds_at_baseline(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = self.fds();
            if now == self.baseline_fds {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "fd leak: {now} open, {} at start; logs: {:#?}",
                self.baseline_fds,
                self.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Its exit status, if it exits within `within` (`None`: still
    /// running, and left so).
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        exit_within(&mut self.child, within)
    }
}

/// `child`'s exit status, if it exits within `within`; `None` leaves it
/// running.
pub fn exit_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Wait for `child` to exit, at most `within`: its status, or `None` when
/// it had to be killed.
pub fn wait_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let status = exit_within(child, within);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// The long flags (names without `--`) that `help`, clap's `--help`
/// output, declares in its `Options:` section: the lines that start an
/// option (`  -h, --help`, `      --listen <ADDR>`), not the descriptions
/// under them.
pub fn help_flags(help: &str) -> std::collections::BTreeSet<String> {
    help.lines()
        .skip_while(|l| *l != "Options:")
        .filter_map(|l| {
            let rest = l.strip_prefix("      --").or_else(|| {
                l.strip_prefix("  -")
                    .and_then(|r| r.get(3..)?.strip_prefix("--"))
            })?;
            Some(rest.split([' ', '=', '[', '<']).next()?.to_string())
        })
        .collect()
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Header lines of one request head, as the backend received them.
pub type Headers = Vec<(String, String)>;

/// A backend that runs `handler` on a thread for each accepted connection.
pub struct Backend {
    pub addr: SocketAddr,
    /// Headers of each request head the backend received, in order.
    pub requests: Arc<Mutex<Vec<Headers>>>,
    pub accepted: Arc<Mutex<usize>>,
    /// For TLS backends: the SNI name of each completed TLS handshake.
    pub tls_names: Arc<Mutex<Vec<Option<String>>>>,
}

impl Backend {
    pub fn spawn(handler: impl Fn(TcpStream, &Backend) + Send + Sync + 'static) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = Backend {
            addr,
            requests: Arc::default(),
            accepted: Arc::default(),
            tls_names: Arc::default(),
        };
        let shared = Arc::new((handler, backend.clone_handles()));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                *shared.1.accepted.lock().unwrap() += 1;
                let shared = shared.clone();
                thread::spawn(move || (shared.0)(stream, &shared.1));
            }
        });
        backend
    }

    fn clone_handles(&self) -> Backend {
        Backend {
            addr: self.addr,
            requests: self.requests.clone(),
            accepted: self.accepted.clone(),
            tls_names: self.tls_names.clone(),
        }
    }

    /// A WebSocket echo server: echoes data messages, answers pings,
    /// returns close frames, picks the first offered subprotocol, and closes
    /// with code 4001 when it receives the text "close-me".
    pub fn echo() -> Backend {
        Backend::spawn(|stream, b| {
            if let Some(ws) = accept_ws(stream, b, |_| {}) {
                echo_loop(ws);
            }
        })
    }

    /// The same echo server behind TLS (`wss://`) with `config`; records
    /// the SNI name of each handshake in `tls_names`.
    pub fn tls_echo(config: Arc<rustls::ServerConfig>) -> Backend {
        Backend::spawn(move |stream, b| {
            let Some(tls) = accept_tls(&config, stream) else {
                return;
            };
            let name = tls.conn.server_name().map(str::to_string);
            b.tls_names.lock().unwrap().push(name);
            if let Some(ws) = accept_ws(tls, b, |_| {}) {
                echo_loop(ws);
            }
        })
    }

    /// Wait until the backend has recorded `n` request heads.
    pub fn wait_requests(&self, n: usize) -> Vec<Headers> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let r = self.requests.lock().unwrap().clone();
            if r.len() >= n {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "backend saw {} requests",
                r.len()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The server side of a TLS handshake with `config` (reads time out after
/// a while); `None` if it failed.
pub fn accept_tls(
    config: &Arc<rustls::ServerConfig>,
    stream: TcpStream,
) -> Option<StreamOwned<rustls::ServerConnection, TcpStream>> {
    stream.set_read_timeout(Some(PATIENCE * 3)).unwrap();
    let conn = rustls::ServerConnection::new(config.clone()).unwrap();
    let mut tls = StreamOwned::new(conn, stream);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).ok()?;
    }
    Some(tls)
}

/// Server side of a WebSocket handshake that records the request headers
/// and lets `extra` add response headers.
pub fn accept_ws<S: Read + Write>(
    stream: S,
    b: &Backend,
    extra: impl FnOnce(&mut Response),
) -> Option<WebSocket<S>> {
    let requests = b.requests.clone();
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    let cb = move |req: &Request, mut resp: Response| {
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        if let Some(p) = req.headers().get("sec-websocket-protocol") {
            let first = p
                .to_str()
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .trim()
                .to_string();
            resp.headers_mut()
                .insert("sec-websocket-protocol", first.parse().unwrap());
        }
        extra(&mut resp);
        requests.lock().unwrap().push(headers);
        Ok(resp)
    };
    tungstenite::accept_hdr_with_config(stream, cb, Some(big_messages())).ok()
}

/// The echo server's loop (see [`Backend::echo`]).
pub fn echo_loop<S: Read + Write>(mut ws: WebSocket<S>) {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) if t == "close-me" => {
                let _ = ws.close(Some(tungstenite::protocol::CloseFrame {
                    code: 4001.into(),
                    reason: "as asked".into(),
                }));
                let _ = ws.flush();
            }
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Room for the 16 MiB messages of the tests.
pub fn big_messages() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig {
        max_message_size: Some(64 << 20),
        max_frame_size: Some(64 << 20),
        ..Default::default()
    }
}

/// A WebSocket client through the proxy.
pub fn ws_client(proxy: &Proxy, path: &str) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(proxy.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let (ws, resp) =
        tungstenite::client::client_with_config(proxy.url(path), stream, Some(big_messages()))
            .unwrap_or_else(|e| {
                panic!(
                    "handshake through ringway failed: {e}; logs {:#?}",
                    proxy.logs()
                )
            });
    assert_eq!(resp.status(), 101);
    ws
}

/// Look up a header (case-insensitive) in recorded headers.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A valid upgrade request head for `path` with extra header lines.
pub fn upgrade_head(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test.local\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Send raw bytes, then read everything until the proxy closes (or the
/// patience runs out). Returns what was read.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(bytes).unwrap();
    read_to_close(&mut s)
}

pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("read: {e} after {:?}", String::from_utf8_lossy(&out)),
        }
    }
}

/// Read until the end of a response head; returns the head and any bytes
/// read behind it.
pub fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = got.split_off(end + 4);
            return (String::from_utf8(got).unwrap(), rest);
        }
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before a whole head: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// The status code of a raw HTTP response.
pub fn status_of(resp: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(resp);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// A masked client frame (the mask is fixed: tests only).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut out = Vec::new();
    ringway::proto::ws::encode_header(&mut out, true, opcode, payload.len() as u64, Some(mask));
    let start = out.len();
    out.extend_from_slice(payload);
    ringway::proto::ws::apply_mask(&mut out[start..], mask, 0);
    out
}

/// Shut a raw stream's write side.
pub fn half_close(s: &TcpStream) {
    s.shutdown(Shutdown::Write).unwrap();
}

/// An address whose connects hang: a listener that never accepts, its
/// accept queue filled. The returned value keeps it all alive.
pub fn blackhole() -> (SocketAddr, Vec<TcpStream>, socket2::Socket) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let f = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        f.set_nonblocking(true).unwrap();
        let _ = f.connect(&addr.into());
        fillers.push(TcpStream::from(f));
    }
    thread::sleep(Duration::from_millis(100));
    (addr, fillers, s)
}

/// A port on which nothing listens.
pub fn dead_port() -> SocketAddr {
    // Bound, never listening, and kept for the test process's life: a
    // connect to it is refused, and no other process (another test's
    // ringway on port 0) can be given the port meanwhile.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    std::mem::forget(sock);
    addr
}

/// The address in a `listening on ADDR (...)` log line.
fn listening_addr(line: &str) -> SocketAddr {
    let rest = line.split("listening on ").nth(1).unwrap();
    rest.split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("no address in {line:?}: {e}"))
}

/// Run the ringway binary with `args` until it exits (killed after
/// `within`); returns its exit code (`None` if it had to be killed) and
/// its stderr.
pub fn run_to_exit(args: &[&str], within: Duration) -> (Option<i32>, String) {
    let (code, _, stderr) = run_with_output(args, within);
    (code, stderr)
}

/// [`run_to_exit`], with its stdout too: exit code, stdout, stderr.
pub fn run_with_output(args: &[&str], within: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringway"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringway");
    let pipe = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = pipe(Box::new(child.stdout.take().unwrap()));
    let err = pipe(Box::new(child.stderr.take().unwrap()));
    let code = wait_child(&mut child, within).and_then(|st| st.code());
    (code, out.join().unwrap(), err.join().unwrap())
}

// ---------------------------------------------------------------------------
// Echo checks shared by the ws:// and wss:// tests, generic over the stream.

/// Deterministic, non-repeating-looking payload.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[0] ^ seed)
        .collect()
}

/// Text and binary messages of 0 bytes up to 16 MiB come back byte-exact.
pub fn echo_all_sizes<S: Read + Write>(ws: &mut WebSocket<S>) {
    for (i, len) in [0usize, 1, 125, 126, 65535, 65536, 1 << 20, 16 << 20]
        .into_iter()
        .enumerate()
    {
        let bin = payload(len, i as u8);
        ws.send(Message::Binary(bin.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::Binary(bin), "binary {len}");
        let text: String = payload(len, i as u8)
            .iter()
            .map(|b| (b'a' + b % 26) as char)
            .collect();
        ws.send(Message::Text(text.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::Text(text), "text {len}");
    }
}

/// One echo of `msg`.
pub fn echo_once<S: Read + Write>(ws: &mut WebSocket<S>, msg: &str) {
    ws.send(Message::Text(msg.into())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Text(msg.into()));
}

/// A text message in three fragments comes back whole, a ping gets its
/// pong, and the backend's close (code 4001) reaches the client.
pub fn fragments_ping_and_backend_close<S: Read + Write>(ws: &mut WebSocket<S>) {
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    use tungstenite::protocol::frame::Frame;
    for (part, op, fin) in [
        (&b"frag"[..], Data::Text, false),
        (b"men", Data::Continue, false),
        (b"ted", Data::Continue, true),
    ] {
        ws.write(Message::Frame(Frame::message(
            part.to_vec(),
            OpCode::Data(op),
            fin,
        )))
        .unwrap();
    }
    ws.flush().unwrap();
    assert_eq!(ws.read().unwrap(), Message::Text("fragmented".into()));

    ws.send(Message::Ping(b"are you there".to_vec())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Pong(b"are you there".to_vec()));

    ws.send(Message::Text("close-me".into())).unwrap();
    match ws.read().unwrap() {
        Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 4001);
            assert_eq!(f.reason, "as asked");
        }
        other => panic!("expected the backend's close, got {other:?}"),
    }
}

/// The client closes with code 4242 and the backend's echo of it comes back.
pub fn client_close_is_echoed<S: Read + Write>(ws: &mut WebSocket<S>) {
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: 4242.into(),
        reason: "client done".into(),
    }))
    .unwrap();
    match ws.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 4242),
        other => panic!("expected the close echo, got {other:?}"),
    }
}

/// Close and read until the connection ends.
pub fn close_and_drain<S: Read + Write>(ws: &mut WebSocket<S>) {
    let _ = ws.close(None);
    while ws.read().is_ok() {}
}

/// `n` clients at once, each from `connect`, each echoing `msgs` messages
/// and closing.
pub fn concurrent_clients<S, F>(n: usize, msgs: usize, connect: F)
where
    S: Read + Write,
    F: Fn() -> WebSocket<S> + Send + Sync + 'static,
{
    let connect = Arc::new(connect);
    let threads: Vec<_> = (0..n)
        .map(|c| {
            let connect = connect.clone();
            thread::spawn(move || {
                let mut ws = connect();
                for m in 0..msgs {
                    echo_once(&mut ws, &format!("client {c} message {m}"));
                }
                close_and_drain(&mut ws);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

// ---------------------------------------------------------------------------
// TLS: a test PKI, clients and a TLS backend. No process-default crypto
// provider is installed, so every config names ring's explicitly.

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The private key format of a leaf certificate.
#[derive(Clone, Copy, Debug)]
pub enum KeyFormat {
    /// ECDSA P-256, `BEGIN PRIVATE KEY` (what rcgen writes).
    EcdsaPkcs8,
    /// ECDSA P-256, `BEGIN EC PRIVATE KEY` (SEC1, what `openssl ecparam` writes).
    EcdsaSec1,
    /// RSA 2048, `BEGIN RSA PRIVATE KEY` (PKCS#1, `openssl genrsa -traditional`).
    RsaPkcs1,
}

/// A certificate with its key, as PEM, and the files holding them.
pub struct Leaf {
    /// DER of the end-entity certificate (what a client sees first).
    pub der: Vec<u8>,
    /// The certificate file's content: the leaf, then any intermediate.
    pub cert_pem: String,
    pub key_pem: String,
    pub cert: String,
    pub key: String,
}

impl Leaf {
    /// Overwrite the files at `cert` and `key` with this leaf.
    pub fn write_to(&self, cert: &str, key: &str) {
        std::fs::write(cert, &self.cert_pem).unwrap();
        std::fs::write(key, &self.key_pem).unwrap();
    }

    /// The value of `--sni-cert` for `host` with this leaf's files.
    pub fn sni_arg(&self, host: &str) -> String {
        format!("{host}={},{}", self.cert, self.key)
    }

    /// A rustls server config serving this leaf (for TLS backends).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

static PKI_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A test certificate authority and a temporary folder for PEM files,
/// removed on drop.
pub struct Pki {
    pub dir: PathBuf,
    /// `ca.pem` in `dir`: the CA certificate.
    pub ca_file: String,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    seq: AtomicUsize,
}

impl Pki {
    pub fn new() -> Pki {
        let n = PKI_SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("ringway-test-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("ringway test CA {n}-{nanos}"),
        );
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).unwrap();
        let ca_file = dir.join("ca.pem").to_str().unwrap().to_string();
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki {
            dir,
            ca_file,
            ca,
            ca_key,
            seq: AtomicUsize::new(0),
        }
    }

    pub fn ca_der(&self) -> &[u8] {
        self.ca.der()
    }

    /// A path in the folder, as a string for command lines.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    /// A fresh ECDSA (PKCS#8) leaf for `names` (DNS names, `*.x` wildcards
    /// or IP addresses), written to `<stem>-<n>.crt` and `.key`.
    pub fn leaf(&self, stem: &str, names: &[&str]) -> Leaf {
        self.leaf_with(stem, names, KeyFormat::EcdsaPkcs8)
    }

    pub fn leaf_with(&self, stem: &str, names: &[&str], format: KeyFormat) -> Leaf {
        let params = self.leaf_params(stem, names);
        let (cert, key_pem) = match format {
            KeyFormat::EcdsaPkcs8 | KeyFormat::EcdsaSec1 => {
                let key = rcgen::KeyPair::generate().unwrap();
                let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
                let pem = match format {
                    KeyFormat::EcdsaPkcs8 => key.serialize_pem(),
                    _ => to_pem("EC PRIVATE KEY", &p256_pkcs8_to_sec1(key.serialized_der())),
                };
                (cert, pem)
            }
            KeyFormat::RsaPkcs1 => {
                // ring cannot generate RSA keys: one fixed test key. rcgen
                // needs only its public half to issue the certificate.
                let der = PrivateKeyDer::from_pem_slice(TEST_RSA_PKCS1_PEM.as_bytes()).unwrap();
                assert!(matches!(der, PrivateKeyDer::Pkcs1(_)));
                let public = RsaPublicKey(rsa_public_from_pkcs1(der.secret_der()));
                let cert = params.signed_by(&public, &self.ca, &self.ca_key).unwrap();
                (cert, TEST_RSA_PKCS1_PEM.to_string())
            }
        };
        self.write_leaf(stem, cert.der().to_vec(), cert.pem(), key_pem)
    }

    /// A leaf issued by an intermediate CA under this CA; the certificate
    /// file holds the leaf, then the intermediate.
    pub fn leaf_via_intermediate(&self, stem: &str, names: &[&str]) -> Leaf {
        let inter_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{stem} intermediate"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let inter = params
            .signed_by(&inter_key, &self.ca, &self.ca_key)
            .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = self
            .leaf_params(stem, names)
            .signed_by(&key, &inter, &inter_key)
            .unwrap();
        let chain = format!("{}{}", cert.pem(), inter.pem());
        self.write_leaf(stem, cert.der().to_vec(), chain, key.serialize_pem())
    }

    fn leaf_params(&self, stem: &str, names: &[&str]) -> rcgen::CertificateParams {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{stem} {n}"));
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params
    }

    fn write_leaf(&self, stem: &str, der: Vec<u8>, cert_pem: String, key_pem: String) -> Leaf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let leaf = Leaf {
            der,
            cert_pem,
            key_pem,
            cert: self.path(&format!("{stem}-{n}.crt")),
            key: self.path(&format!("{stem}-{n}.key")),
        };
        leaf.write_to(&leaf.cert, &leaf.key);
        leaf
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An RSA public key (PKCS#1 `RSAPublicKey` DER) for rcgen to certify.
struct RsaPublicKey(Vec<u8>);

impl rcgen::PublicKeyData for RsaPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

/// A 2048-bit RSA key in PKCS#1 PEM, made for these tests with
/// `openssl genrsa -traditional 2048`. Not a secret: it protects nothing.
const TEST_RSA_PKCS1_PEM: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEpAIBAAKCAQEAt9jtDJJkb/g6uHP/Bdi8D4a4MD0XJjf2yxPHVCJ/gT0v+iKe
5cF+K/Xc6okpVXN8AXlC4Xj7XMj8f5w/OOLh9PgJiblI8u6Askq6qJgrecMkSAlD
1tS/z2qr0Esq8M0n4BOLZigw+dYrTiL6svJSkzM6MFqkE+E2PDuXxI/l8ft6/ReW
Ff5ni/c57QwJZCMCvGWaRgeeHvrGXO1FoJv7bM5Y/+w5fYy7lnHciXrkCMngZ2wK
IaCtMGyLS+VTdaVjKMnJ5eO4PW8bLLhc1qJKcXJZpSGnPkiby0bdkM3JVMpIT9gD
rt0dyZh4TKJcXr+S3Efw0+RB0IRLlrr/CFgtewIDAQABAoIBAAqY53kdCyBlJ5qw
R61M7pzagCLPsquSTZiBHbFHgnVZqI/7j5CLfxFbomNRNV+762mjqsDtGgLMLGR9
W4DqRb9leMSb4zeVmzeBFTyt9iZA+FtqpU1shViYZn+i2ukhz5WcACILA7UIV7Cx
ACXGeroKGZA7TqU9YG9HuW+Bd+4NyYG4yyZdli/RiyD5zpLXZRo6eJrakfUVgOQR
2Bxyk8hs7DKaSCIxq0foSrBbteGg++QqNs56ItCR2rXgx1S22UKAdAntVoF47mST
zvQrpd50rB+kiXTcIkTPqX4nZAeyAH5QA/bY+3kqySc9SJX7SZb0RIBKScAG0KZ5
hnfkGmECgYEA6a4HuAwd9W0jWj4krMiZlvAiSA8n5pSmvNgVuVaMdjvm/afAH6ZR
g/YfQsJpKz9c3tkpqXiNPZLyRCkGCgkMlKEA62wQlm9Dv7aLTlg8//QZXp8QiD/W
WQT4pEFF88TUiWLV2cam0qFs+5L0qZMmKFd6nvnj1mmsUqqlniG/pMsCgYEAyWhi
6a8E+tLVkk27DN634+fw0LCvGIm1sNGSZCEJp3VM39C4JbxGBxyF1kteMQy6LgAl
N51g9sMK9p/7SGtjNH7b3/arr2IBtmSFOvM62ACHoe8vSwm5Lmc2ArQDkFJQCx6U
RcS6gdtq9oAXpvad/EqIR6BNIPMyAtGwEjfPNBECgYB55rtIG6oVOdXTYc+oAw18
W9DGXoGmG63PnbnXcXrcwusBL91dpVmoyWANZ3WNhgRgjFDbg3PKxzlyrSPlYEsb
zdG4/iq5D1n8TLHnMMjBjQke/0OUkBi1X46FwTdIr0lgUhrU/HhSMLu1kTforkad
jOT+wcVFOOMYTMUQ9PIQeQKBgQCPxSIGadcGLQYjf7UsRLfDykeO0PDMdVDrPU5g
h2zaytLrWZR562GZpfSrufUs0kb8m0H15zPWMfhbgGvhkDaqvHu77ds0QKO0TSEF
qaaxlf87yv9Zc0FrLGXTnCiHFxroNRXmj74LAFPkTh+UIas48wNBDd7AzJlAhepH
tusD4QKBgQDgFi8AyDCNjOImiQYViVbkdSX7ojkXf4+uwtbksBEpO1KDjGxgA0rO
1FysMxTAiJ5IM/qIqB4oUWWA5yLD/tEvSK6yTzUyyiiXoD0TI/SaKUU1AWxARQYY
YaKwOBEAvEFA7F96FpWQin4RNwd8yzRuxRaVCMMLpY1+d34gdbAa5g==
-----END RSA PRIVATE KEY-----
";

/// One DER element at the start of `input`: (tag, whole element, content,
/// rest). Enough DER for the key conversions below.
fn der_next(input: &[u8]) -> (u8, &[u8], &[u8], &[u8]) {
    let tag = input[0];
    let (len, head) = if input[1] < 0x80 {
        (input[1] as usize, 2)
    } else {
        let n = (input[1] & 0x7f) as usize;
        let len = input[2..2 + n]
            .iter()
            .fold(0usize, |l, &b| (l << 8) | b as usize);
        (len, 2 + n)
    };
    (
        tag,
        &input[..head + len],
        &input[head..head + len],
        &input[head + len..],
    )
}

/// The elements of a constructed DER value's content.
fn der_children(mut content: &[u8]) -> Vec<(u8, &[u8], &[u8])> {
    let mut out = Vec::new();
    while !content.is_empty() {
        let (tag, whole, inner, rest) = der_next(content);
        out.push((tag, whole, inner));
        content = rest;
    }
    out
}

fn der_element(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// SEC1 `ECPrivateKey` (with the curve named in `[0]`, as OpenSSL writes
/// it) from a P-256 PKCS#8 `PrivateKeyInfo`.
pub fn p256_pkcs8_to_sec1(pkcs8: &[u8]) -> Vec<u8> {
    let (_, _, info, _) = der_next(pkcs8);
    let fields = der_children(info);
    assert_eq!(fields[2].0, 0x04, "privateKey OCTET STRING");
    let (_, _, ec_key, _) = der_next(fields[2].2);
    const PRIME256V1: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let mut content = Vec::new();
    for (tag, whole, _) in der_children(ec_key) {
        if tag == 0xa1 {
            content.extend(der_element(0xa0, PRIME256V1));
        }
        if tag != 0xa0 {
            content.extend_from_slice(whole);
        }
    }
    der_element(0x30, &content)
}

/// PKCS#1 `RSAPublicKey` from a PKCS#1 `RSAPrivateKey`.
fn rsa_public_from_pkcs1(pkcs1: &[u8]) -> Vec<u8> {
    let (_, _, seq, _) = der_next(pkcs1);
    let fields = der_children(seq);
    // version, modulus, publicExponent, ...
    der_element(0x30, &[fields[1].1, fields[2].1].concat())
}

/// PEM with `label` around `der`.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::new();
    for chunk in der.chunks(3) {
        let v = chunk
            .iter()
            .chain(std::iter::repeat(&0))
            .take(3)
            .fold(0u32, |v, &b| (v << 8) | b as u32);
        for i in 0..4 {
            b64.push(if i <= chunk.len() {
                ALPHABET[(v >> (18 - 6 * i)) as usize & 63]
            } else {
                b'='
            });
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A verifier that checks the chain against the test CA but accepts any
/// name: to look at which certificate a server picks for a name it may not
/// be valid for.
#[derive(Debug)]
struct AnyNameVerifier(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(e))
                if format!("{e:?}").contains("NotValidForName") =>
            {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// ringway in front of `backend`, plus `extra` flags.
pub fn start_proxy(backend: &Backend, extra: &[&str]) -> Proxy {
    let upstream = backend.addr.to_string();
    let mut args = vec!["--upstream", &upstream];
    args.extend_from_slice(extra);
    Proxy::start(&args)
}

/// ringway in front of `backend` with a TLS listener serving `leaf` (and a
/// plain one), plus `extra` flags.
pub fn start_tls_proxy(backend: &Backend, leaf: &Leaf, extra: &[&str]) -> Proxy {
    let mut args = vec![
        "--tls-listen",
        "127.0.0.1:0",
        "--cert",
        &leaf.cert,
        "--key",
        &leaf.key,
    ];
    args.extend_from_slice(extra);
    start_proxy(backend, &args)
}

/// A backend that answers 101 by hand, then reads until the client's EOF,
/// and only then writes `after-eof:<bytes read>` and closes.
pub fn half_close_backend() -> Backend {
    Backend::spawn(|mut s, _| {
        let (_, mut got) = read_head(&mut s);
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => return,
            }
        }
        let _ = write!(s, "after-eof:{}", got.len());
    })
}

/// Over TLS to `proxy` (SNI `localhost`, trusting `pki`'s CA): send an
/// upgrade request and read the answer head. Returns the stream, the head
/// and the bytes read past it.
pub fn tls_upgrade(pki: &Pki, proxy: &Proxy) -> (TlsStream, Vec<u8>, Vec<u8>) {
    let mut tls = TlsClient::new(pki.ca_der())
        .connect(proxy.tls(), Some("localhost"))
        .unwrap();
    tls.write_all(upgrade_head("/ws", "").as_bytes()).unwrap();
    tls.flush().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = got.split_off(end + 4);
            return (tls, got, rest);
        }
        let n = tls.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

/// How a test client speaks TLS.
#[derive(Clone)]
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
}

impl TlsClient {
    /// Trusts only `ca_der`; TLS 1.2 and 1.3; offers ALPN `http/1.1`;
    /// checks the name.
    pub fn new(ca_der: &[u8]) -> TlsClient {
        TlsClient::with(
            ca_der,
            &[&rustls::version::TLS12, &rustls::version::TLS13],
            &[b"http/1.1"],
            true,
        )
    }

    /// The same, but any name is accepted (the chain is still verified).
    pub fn any_name(ca_der: &[u8]) -> TlsClient {
        TlsClient::with(
            ca_der,
            &[&rustls::version::TLS12, &rustls::version::TLS13],
            &[b"http/1.1"],
            false,
        )
    }

    pub fn with(
        ca_der: &[u8],
        versions: &[&'static SupportedProtocolVersion],
        alpn: &[&[u8]],
        check_name: bool,
    ) -> TlsClient {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(ca_der.to_vec())).unwrap();
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap();
        let mut config = if check_name {
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .unwrap();
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyNameVerifier(inner)))
                .with_no_client_auth()
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Every connection a full handshake: a resumed session shows the
        // certificate of the session it resumes, not the one served now.
        config.resumption = rustls::client::Resumption::disabled();
        TlsClient {
            config: Arc::new(config),
        }
    }

    /// The same client, remembering sessions (tickets, session IDs) to
    /// resume them.
    pub fn resuming(&self) -> TlsClient {
        let mut config = (*self.config).clone();
        config.resumption = rustls::client::Resumption::in_memory_sessions(64);
        TlsClient {
            config: Arc::new(config),
        }
    }

    /// Connect and complete the TLS handshake, sending `sni` as the server
    /// name, or none when `sni` is `None` (then the certificate is checked
    /// against the address).
    pub fn connect(&self, addr: SocketAddr, sni: Option<&str>) -> std::io::Result<TlsStream> {
        let sock = TcpStream::connect(addr)?;
        sock.set_read_timeout(Some(PATIENCE))?;
        sock.set_write_timeout(Some(PATIENCE))?;
        let name = match sni {
            Some(n) => ServerName::try_from(n.to_string()).unwrap(),
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let conn =
            ClientConnection::new(self.config.clone(), name).map_err(std::io::Error::other)?;
        let mut tls = StreamOwned::new(conn, sock);
        let deadline = Instant::now() + PATIENCE;
        while tls.conn.is_handshaking() {
            if Instant::now() > deadline {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(tls)
    }

    /// A WebSocket client over TLS (`wss://`), the handshake done.
    pub fn ws(&self, addr: SocketAddr, sni: Option<&str>, path: &str) -> WebSocket<TlsStream> {
        let tls = self
            .connect(addr, sni)
            .unwrap_or_else(|e| panic!("TLS handshake with {addr} ({sni:?}) failed: {e}"));
        let host = sni.map_or_else(|| addr.ip().to_string(), str::to_string);
        let url = format!("wss://{host}:{}{path}", addr.port());
        let (ws, resp) = tungstenite::client::client_with_config(url, tls, Some(big_messages()))
            .unwrap_or_else(|e| panic!("WebSocket handshake over TLS failed: {e}"));
        assert_eq!(resp.status(), 101);
        ws
    }
}

/// DER of the end-entity certificate the server presented.
pub fn leaf_seen(tls: &TlsStream) -> Vec<u8> {
    tls.conn
        .peer_certificates()
        .expect("handshake done")
        .first()
        .expect("a certificate")
        .to_vec()
}

/// Send raw bytes inside TLS, then read until the peer closes; returns what
/// was read and whether the end was a clean `close_notify`.
pub fn tls_exchange(tls: &mut TlsStream, bytes: &[u8]) -> (Vec<u8>, bool) {
    tls.write_all(bytes).unwrap();
    tls.flush().unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                return (out, false)
            }
            Err(e) => panic!("TLS read: {e} after {:?}", String::from_utf8_lossy(&out)),
        }
    }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A temporary folder for config files and a web root (`www/index.html`),
/// removed on drop.
pub struct TempDir {
    dir: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "ringway-config-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::write(dir.join("www/index.html"), "hi").unwrap();
        TempDir { dir }
    }

    /// Write `text` to `name` in the folder; returns its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// The metrics endpoint.

/// The metrics endpoint's address, from its start-up line.
pub fn metrics_addr(proxy: &Proxy) -> std::net::SocketAddr {
    let line = proxy
        .wait_log("metrics on http://", PATIENCE)
        .expect("the metrics endpoint's line");
    let rest = line.split("metrics on http://").nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

/// GET `path` from the metrics endpoint: status and body.
pub fn scrape(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let resp = raw_exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: metrics\r\n\r\n").as_bytes(),
    );
    let text = String::from_utf8(resp).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

/// The value of one series (`name{labels}` exactly as rendered), if shown.
pub fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then(|| v.parse().unwrap())
    })
}

/// The access-log line of the one tunnel `proxy` has ended, checked to be a
/// `101` on `route` through `backend`, which saw exactly one request.
pub fn assert_one_tunnel_through(proxy: &Proxy, backend: &Backend, route: &str) -> String {
    let line = proxy
        .wait_log("tunnel client=", PATIENCE)
        .unwrap_or_else(|| panic!("no tunnel line: {:#?}", proxy.logs()));
    assert!(
        line.contains(&format!(" route={route} ")) && line.contains(" status=101 "),
        "{line}"
    );
    assert!(
        line.contains(&format!(" backend={} ", backend.addr)),
        "{line}"
    );
    assert_eq!(backend.wait_requests(1).len(), 1);
    line
}
