//! A fast WebSocket echo backend for load runs, so that the backend is not
//! what gets measured: one thread per core, SO_REUSEPORT listeners, each
//! read's complete frames echoed in one write. With a TLS configuration it
//! serves wss:// instead. With a name it says which backend answered, in an
//! `X-Echo-Name` header of its 101 (the hold scenarios tell backends apart
//! by it).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use monoio::net::{TcpListener, TcpStream};
use ringway::proto::ws;
use rustls::ServerConfig;

use crate::client::Conn;
use crate::tls::TlsStream;

/// Largest frame echoed; bigger ones close the connection.
const MAX_FRAME: u64 = 64 << 20;

/// Bind `threads` listeners on `addr` and serve ws:// on as many threads
/// (pinned to `pin` CPUs when given). Returns the bound address; threads run
/// until the process ends.
pub fn spawn(addr: SocketAddr, threads: usize, pin: &[usize]) -> Result<SocketAddr> {
    spawn_with(addr, threads, pin, None)
}

/// [`spawn`], serving wss:// when `tls` is given.
pub fn spawn_with(
    addr: SocketAddr,
    threads: usize,
    pin: &[usize],
    tls: Option<Arc<ServerConfig>>,
) -> Result<SocketAddr> {
    spawn_named(addr, threads, pin, tls, None)
}

/// The header of the 101 that names the backend (see [`spawn_named`]).
pub const NAME_HEADER: &str = "X-Echo-Name";

/// [`spawn_with`], answering every upgrade with `X-Echo-Name: NAME` when
/// `name` is given.
pub fn spawn_named(
    addr: SocketAddr,
    threads: usize,
    pin: &[usize],
    tls: Option<Arc<ServerConfig>>,
    name: Option<String>,
) -> Result<SocketAddr> {
    // The 101's extra header line, written once.
    let named: Arc<str> = name
        .map_or_else(String::new, |n| format!("{NAME_HEADER}: {n}\r\n"))
        .into();
    let (group, bound) = ringway::server::listener::bind_group(
        addr,
        threads.max(1),
        4096,
        ringway::config::Keepalive(None),
    )
    .with_context(|| format!("echo backend on {addr}"))?;
    for (t, l) in group.into_iter().enumerate() {
        let cpu = (!pin.is_empty()).then(|| pin[t % pin.len()]);
        let (tls, named) = (tls.clone(), named.clone());
        std::thread::Builder::new()
            .name(format!("echo-{t}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                }
                let mut rt = match monoio::RuntimeBuilder::<monoio::FusionDriver>::new().build() {
                    Ok(rt) => rt,
                    Err(e) => return eprintln!("echo backend: {e}"),
                };
                rt.block_on(async move {
                    let listener = match TcpListener::from_std(l) {
                        Ok(l) => l,
                        Err(e) => return eprintln!("echo backend: {e}"),
                    };
                    while let Ok((s, _)) = listener.accept().await {
                        let (tls, named) = (tls.clone(), named.clone());
                        monoio::spawn(async move {
                            let _ = serve(s, tls, &named).await;
                        });
                    }
                });
            })?;
    }
    Ok(bound)
}

/// One connection; `named` is the 101's extra header line ("" for none).
async fn serve(s: TcpStream, tls: Option<Arc<ServerConfig>>, named: &str) -> Result<()> {
    s.set_nodelay(true)?;
    let mut s = match tls {
        None => Conn::Plain(s),
        Some(config) => Conn::Tls(Box::new(TlsStream::accept(s, config).await?)),
    };
    let mut acc: Vec<u8> = Vec::new();
    let mut chunk: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        if !read_more(&mut s, &mut chunk, &mut acc).await? {
            return Ok(());
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&acc)? {
            httparse::Status::Complete(n) => {
                let key = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
                    .map(|h| h.value);
                let Some(key) = key else {
                    let (r, _) = s
                        .write_all(&b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"[..])
                        .await;
                    r?;
                    return Ok(());
                };
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{named}\r\n",
                    ws::accept_key(key)
                );
                acc.drain(..n);
                let (r, _) = s.write_all(answer.into_bytes()).await;
                r?;
                break;
            }
            httparse::Status::Partial if acc.len() < 64 * 1024 => continue,
            httparse::Status::Partial => anyhow::bail!("request head too large"),
        }
    }
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        let mut at = 0;
        let mut closing = false;
        loop {
            let h = match ws::read_header(&acc[at..]) {
                ws::Header::Complete(h) => h,
                ws::Header::Incomplete => break,
                // Not a WebSocket peer: close.
                ws::Header::Invalid => return Ok(()),
            };
            if h.len > MAX_FRAME {
                return Ok(());
            }
            let end = at + h.header_len + h.len as usize;
            if acc.len() < end {
                break;
            }
            let op = match h.opcode {
                ws::OP_PING => ws::OP_PONG,
                op => op,
            };
            if h.opcode != ws::OP_PONG {
                ws::encode_header(&mut out, h.fin, op, h.len, None);
                let start = out.len();
                out.extend_from_slice(&acc[at + h.header_len..end]);
                if let Some(m) = h.mask {
                    ws::apply_mask(&mut out[start..], m, 0);
                }
            }
            at = end;
            if h.opcode == ws::OP_CLOSE {
                closing = true;
                break;
            }
        }
        acc.drain(..at);
        if !out.is_empty() {
            let (r, o) = s.write_all(out).await;
            out = o;
            r?;
            out.clear();
        }
        if closing || !read_more(&mut s, &mut chunk, &mut acc).await? {
            return Ok(());
        }
    }
}

/// Read once into `chunk` and append it to `acc`; `false` at EOF.
async fn read_more(s: &mut Conn, chunk: &mut Vec<u8>, acc: &mut Vec<u8>) -> Result<bool> {
    let mut buf = std::mem::take(chunk);
    buf.clear();
    let (res, buf) = s.read(buf).await;
    *chunk = buf;
    if res? == 0 {
        return Ok(false);
    }
    acc.extend_from_slice(chunk);
    Ok(true)
}
