//! The metrics endpoint (`--metrics-listen`): `/metrics`, `/status` and
//! `/healthz` served from a blocking thread of its own ("ringway-metrics"),
//! off the workers' runtimes, each request on a short-lived thread.

use std::io::{Read, Write};
use std::net::{Shutdown as NetShutdown, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::Level;

use super::{Metrics, State};
use crate::ops::ratelog::{limited, Topic};

/// How long the endpoint waits for a whole request head, from accept.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one write of a response may block.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest request head the endpoint reads.
const MAX_HEAD: usize = 8 * 1024;

/// How long, after answering, the endpoint reads and drops what the client
/// still sends, so that closing does not reset the connection under the
/// answer.
const LINGER: Duration = Duration::from_millis(100);

/// Most requests the endpoint answers at once; more are closed unanswered.
pub const MAX_CLIENTS: usize = 8;

/// How the endpoint learns what the process is doing.
pub type StateFn = Arc<dyn Fn() -> State + Send + Sync>;

/// Serve `/metrics`, `/status` and `/healthz` on `listener` from a thread of
/// its own ("ringway-metrics"), until the process exits. `state` is called
/// per request. Each request is answered on a short-lived thread, at most
/// [`MAX_CLIENTS`] at once, so a client that sends nothing (it has
/// [`READ_TIMEOUT`]) does not hold up the balancer's health checks.
pub fn spawn_endpoint(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    state: StateFn,
) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(false)?;
    std::thread::Builder::new()
        .name("ringway-metrics".into())
        .spawn(move || serve(&listener, &metrics, &state))
}

fn serve(listener: &TcpListener, metrics: &Arc<Metrics>, state: &StateFn) {
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    log::debug!("metrics endpoint: {peer}: {MAX_CLIENTS} requests already open");
                    continue;
                }
                let (metrics, state, done) = (metrics.clone(), state.clone(), busy.clone());
                let spawned = std::thread::Builder::new()
                    .name("ringway-metrics-req".into())
                    .spawn(move || {
                        if let Err(e) = answer(stream, &metrics, &*state) {
                            log::debug!("metrics endpoint: {peer}: {e}");
                        }
                        done.fetch_sub(1, Ordering::AcqRel);
                    });
                if let Err(e) = spawned {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    limited!(
                        Topic::MetricsEndpoint,
                        Level::Warn,
                        "metrics endpoint: cannot start a thread: {e}"
                    );
                }
            }
            Err(e) => {
                // EMFILE and the like: wait for descriptors to come back.
                limited!(
                    Topic::MetricsEndpoint,
                    Level::Warn,
                    "metrics endpoint: accept: {e}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A response of the endpoint.
struct Reply {
    /// Code and reason, `200 OK`.
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn text(status: &'static str, body: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// What the client asked for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    /// A GET (`head_only` false) or HEAD of `path`, query removed.
    Get { head_only: bool, path: String },
    /// Any other method: 405.
    OtherMethod,
    /// A malformed or oversized head: 400.
    Bad,
}

/// Read one request head within [`READ_TIMEOUT`] of being called. A client
/// that stops sending or closes first is an error: there is no one to
/// answer.
fn read_head(stream: &mut TcpStream) -> std::io::Result<Ask> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Ok(Ask::Bad);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf[filled..])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        if let Some(ask) = parse_head(&buf[..filled]) {
            return Ok(ask);
        }
    }
}

/// The request in `buf`, or `None` while its head is incomplete.
fn parse_head(buf: &[u8]) -> Option<Ask> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Ask::Bad),
        Ok(httparse::Status::Complete(_)) => {
            let (Some(method), Some(path)) = (req.method, req.path) else {
                return Some(Ask::Bad);
            };
            let path = path.split('?').next().unwrap_or(path).to_string();
            Some(match method {
                "GET" => Ask::Get {
                    head_only: false,
                    path,
                },
                "HEAD" => Ask::Get {
                    head_only: true,
                    path,
                },
                _ => Ask::OtherMethod,
            })
        }
    }
}

fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    state: &dyn Fn() -> State,
) -> std::io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let (head_only, reply) = match read_head(&mut stream)? {
        Ask::Bad => (false, Reply::text("400 Bad Request", "bad request\n")),
        Ask::OtherMethod => (
            false,
            Reply::text("405 Method Not Allowed", "method not allowed\n"),
        ),
        Ask::Get { head_only, path } => (head_only, route(&path, metrics, state)),
    };
    let allow = if reply.status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    if !head_only {
        out.push_str(&reply.body);
    }
    stream.write_all(out.as_bytes())?;
    linger(&mut stream);
    Ok(())
}

fn route(path: &str, metrics: &Metrics, state: &dyn Fn() -> State) -> Reply {
    match path {
        "/metrics" => Reply {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics.render(state()),
        },
        "/status" => Reply {
            status: "200 OK",
            content_type: "text/plain; charset=utf-8",
            body: metrics.status(state()),
        },
        "/healthz" if state().draining => Reply::text("503 Service Unavailable", "draining\n"),
        "/healthz" => Reply::text("200 OK", "ok\n"),
        _ => Reply::text("404 Not Found", "not found\n"),
    }
}

/// Close our side, then read and drop what the client still sends for a
/// short while, so that unread bytes do not turn the close into a reset
/// that destroys the answer.
fn linger(stream: &mut TcpStream) {
    if stream.shutdown(NetShutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < 64 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn has(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn heads() {
        let get = |head_only, path: &str| Ask::Get {
            head_only,
            path: path.into(),
        };
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\n"), None);
        assert_eq!(
            parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(get(false, "/metrics"))
        );
        assert_eq!(
            parse_head(b"HEAD /status HTTP/1.0\r\n\r\n"),
            Some(get(true, "/status"))
        );
        assert_eq!(
            parse_head(b"DELETE /metrics HTTP/1.1\r\n\r\n"),
            Some(Ask::OtherMethod)
        );
        assert_eq!(parse_head(b"\x00garbage\r\n\r\n"), Some(Ask::Bad));
    }

    // The endpoint, over real sockets.

    struct Answer {
        status: u16,
        head: String,
        body: String,
    }

    fn ask(addr: std::net::SocketAddr, request: &[u8]) -> Answer {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(READ_TIMEOUT * 2)).unwrap();
        s.write_all(request).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("a whole head");
        let status = head[9..12].parse().unwrap();
        Answer {
            status,
            head: head.to_string(),
            body: body.to_string(),
        }
    }

    fn endpoint() -> (std::net::SocketAddr, Arc<Metrics>, Arc<AtomicBool>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new(2));
        let draining = Arc::new(AtomicBool::new(false));
        let d = draining.clone();
        let state = Arc::new(move || State {
            draining: d.load(Ordering::SeqCst),
            open_connections: 7,
        });
        spawn_endpoint(listener, metrics.clone(), state).unwrap();
        (addr, metrics, draining)
    }

    #[test]
    fn endpoint_answers() {
        let (addr, metrics, draining) = endpoint();
        metrics.cores[1].active.inc();

        let a = ask(addr, b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(a.status, 200);
        assert!(a
            .head
            .contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(a.head.contains("\r\nConnection: close"));
        assert!(a
            .head
            .contains(&format!("\r\nContent-Length: {}\r\n", a.body.len())));
        assert!(has(&a.body, "ringway_tunnels_active 1"), "{}", a.body);
        assert!(has(&a.body, "ringway_connections_open 7"));

        let s = ask(addr, b"GET /status HTTP/1.0\r\n\r\n");
        assert_eq!(s.status, 200);
        assert!(s.body.starts_with("Active connections: 7\n"), "{}", s.body);

        let h = ask(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
        draining.store(true, Ordering::SeqCst);
        let h = ask(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!((h.status, h.body.as_str()), (503, "draining\n"));

        let head = ask(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        assert!(!head.head.contains("Content-Length: 0\r\n"));

        let post = ask(
            addr,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert_eq!(post.status, 405);
        assert!(post.head.contains("\r\nAllow: GET, HEAD\r\n"));
        assert_eq!(ask(addr, b"GET /nope HTTP/1.1\r\n\r\n").status, 404);
        assert_eq!(ask(addr, b"garbage garbage\r\n\r\n").status, 400);
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 100, b'a');
        assert_eq!(ask(addr, &huge).status, 400, "oversized head");
    }

    #[test]
    fn a_silent_client_does_not_stop_the_endpoint() {
        let (addr, _, _) = endpoint();
        let start = Instant::now();
        let silent: Vec<_> = (1..MAX_CLIENTS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        // Give the endpoint time to take the silent ones first.
        std::thread::sleep(Duration::from_millis(50));
        let a = ask(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!(a.status, 200);
        let took = start.elapsed();
        assert!(took < READ_TIMEOUT, "not served beside them: {took:?}");
        drop(silent);
    }
}
