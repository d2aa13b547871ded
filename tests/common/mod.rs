//! Test harness: the real `ringway` binary on 127.0.0.1 port 0, real
//! WebSocket backends and clients (tungstenite), raw sockets for bad input.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::handshake::server::{Request, Response};
use tungstenite::{Message, WebSocket};

/// Generous bound for anything that should happen "at once".
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A running ringway process.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// Open descriptors right after start-up.
    pub baseline_fds: usize,
}

impl Proxy {
    /// Start ringway with `args` (plus `--listen 127.0.0.1:0 --workers 2`
    /// unless given) and wait until it listens.
    pub fn start(args: &[&str]) -> Proxy {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if !args.contains(&"--listen") {
            all.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        if !args.contains(&"--workers") {
            all.extend(["--workers".into(), "2".into()]);
        }
        all.extend(["--log-level".into(), "debug".into()]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringway"))
            .args(&all)
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
            logs,
            baseline_fds: 0,
        };
        let line = proxy
            .wait_log("listening on ", PATIENCE)
            .unwrap_or_else(|| panic!("ringway did not start: {:?}", proxy.logs()));
        let addr = line.split("listening on ").nth(1).unwrap();
        proxy.addr = addr.split_whitespace().next().unwrap().parse().unwrap();
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

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn count_logs(&self, needle: &str) -> usize {
        self.logs().iter().filter(|l| l.contains(needle)).count()
    }

    /// The first log line containing `needle`, waiting up to `within`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.logs().into_iter().find(|l| l.contains(needle)) {
                return Some(l);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
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

    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
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
}

impl Backend {
    pub fn spawn(handler: impl Fn(TcpStream, &Backend) + Send + Sync + 'static) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = Backend {
            addr,
            requests: Arc::default(),
            accepted: Arc::default(),
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
        }
    }

    /// A WebSocket echo server: echoes data messages, answers pings,
    /// returns close frames, picks the first offered subprotocol, and closes
    /// with code 4001 when it receives the text "close-me".
    pub fn echo() -> Backend {
        Backend::spawn(|stream, b| {
            let Some(mut ws) = accept_ws(stream, b, |_| {}) else {
                return;
            };
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

/// Server side of a WebSocket handshake that records the request headers
/// and lets `extra` add response headers.
pub fn accept_ws(
    stream: TcpStream,
    b: &Backend,
    extra: impl FnOnce(&mut Response),
) -> Option<WebSocket<TcpStream>> {
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
    ringway::ws::encode_header(&mut out, true, opcode, payload.len() as u64, Some(mask));
    let start = out.len();
    out.extend_from_slice(payload);
    ringway::ws::apply_mask(&mut out[start..], mask, 0);
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
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
