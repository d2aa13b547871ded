//! `ringway demo`: ringway on 127.0.0.1 in front of a built-in WebSocket echo
//! backend that also serves a page to try it in a browser.
//!
//! The backend runs on its own thread and runtime, so the proxy in front of
//! it is the real one, configured like any other. It serves ws:// and, with
//! a certificate from a CA made for the run (rcgen), wss://. The files live
//! in a private directory that the demo removes on every way out
//! (`DemoDir`); the certificate and key leave it once loaded.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use crate::config::{Cli, ConfigError, DemoArgs, ProxyArgs, Settings};
use crate::proto::ws;
use crate::server::listener::ListenError;
use crate::server::ServerError;

/// Largest message the demo backend buffers.
const MAX_BUFFERED: usize = 64 * 1024 * 1024;

const PAGE: &str = include_str!("demo.html");

/// Start the echo backend on `addr` (port 0 for any) on a thread of its own;
/// returns the bound address.
pub fn spawn_echo_backend(addr: SocketAddr) -> io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    std::thread::Builder::new()
        .name("ringway-demo-backend".into())
        .spawn(move || {
            let mut rt = match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build() {
                Ok(rt) => rt,
                Err(e) => {
                    log::error!("demo backend: cannot build its runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        log::error!("demo backend: {e}");
                        return;
                    }
                };
                loop {
                    match listener.accept().await {
                        Ok((s, _)) => {
                            monoio::spawn(async move {
                                if let Err(e) = serve(s).await {
                                    log::debug!("demo backend connection: {e}");
                                }
                            });
                        }
                        Err(e) => log::warn!("demo backend accept: {e}"),
                    }
                }
            });
        })?;
    Ok(bound)
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot make a directory for the demo's certificates in {}: {source}", .dir.display())]
    TempDir { dir: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot make the demo's certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("cannot start the demo's echo backend: {0}")]
    Backend(#[source] io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// One of the demo's own addresses is taken: say which flag moves it.
    #[error(
        "cannot listen on {addr}: the address is already in use (another demo or server?); \
         choose another port: ringway demo {flag} 127.0.0.1:PORT (port 0 takes any free one)"
    )]
    InUse {
        addr: SocketAddr,
        flag: &'static str,
    },
    #[error(transparent)]
    Server(ServerError),
    #[error("cannot build the demo's settings: {0}")]
    Defaults(#[source] clap::Error),
}

/// Run the demo until SIGTERM/SIGINT.
///
/// Nothing it writes outlives it: signals are caught before its directory
/// exists, the directory is owned by a guard that removes it on every return
/// and unwind, and the certificate and private key leave the disk as soon as
/// they are loaded (the demo never reloads them), so even a SIGKILL leaves at
/// most the CA's public certificate.
pub fn run(args: &DemoArgs, cores: usize) -> Result<(), DemoError> {
    // Before anything is written: a SIGTERM/SIGINT from now on stops the
    // demo through its normal return, never the default action, which
    // would skip the guard's drop.
    let shutdown = crate::server::shutdown::Shutdown::new();
    crate::server::signals::install_drain_only(shutdown.clone());
    let dir = DemoDir::create()?;
    let certs = DemoCerts::generate(&dir)?;
    let backend = spawn_echo_backend(([127, 0, 0, 1], 0).into()).map_err(DemoError::Backend)?;
    let mut proxy = default_proxy_args()?;
    proxy.upstream = vec![backend.to_string()];
    proxy.listen = vec![args.listen.into()];
    proxy.tls_listen = vec![args.tls_listen.into()];
    proxy.cert = Some(certs.cert.clone());
    proxy.key = Some(certs.key.clone());
    proxy.workers = args.workers.or(Some(cores.min(2)));
    let settings = Settings::from_args(&proxy, cores)?;
    // Loaded into memory; SIGHUP does not reload the demo.
    certs.forget_key();
    // Stopped while starting: there is nothing to drain.
    if shutdown.is_triggered() {
        return Ok(());
    }
    let server = crate::server::start(settings, shutdown).map_err(|e| match e {
        ServerError::Listen(ListenError::InUse { addr }) => DemoError::InUse {
            addr,
            flag: if addr == args.tls_listen {
                "--tls-listen"
            } else {
                "--listen"
            },
        },
        e => DemoError::Server(e),
    })?;
    let (at, tls_at) = (server.local_addrs()[0], server.local_addrs()[1]);
    let tls_port = tls_at.port();
    let ca = certs.ca.display();
    println!(
        "\nringway demo: a WebSocket echo backend on {backend}, ringway in front of it.\n\n\
         Open  http://{at}/  (ws://) or  https://localhost:{tls_port}/  (wss://) in a\n\
         browser and send a message, or:\n\n  \
         curl -i -N -H 'Connection: Upgrade' -H 'Upgrade: websocket' \\\n       \
         -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \\\n       \
         http://{at}/ws\n\n\
         (a 101 Switching Protocols answer, then the tunnel). For wss://, use\n  \
         https://localhost:{tls_port}/ws  with  --cacert {ca}  (or -k).\n\
         The certificate is made for this run by a throwaway CA; a browser warns\n\
         about it unless {ca} is imported as a trusted authority.\n\
         Ctrl-C stops it.\n"
    );
    server.wait().map_err(DemoError::Server)?;
    drop(dir);
    Ok(())
}

/// The proxy's flags at their defaults (an upstream is required to parse;
/// the demo replaces it).
fn default_proxy_args() -> Result<ProxyArgs, DemoError> {
    <Cli as clap::Parser>::try_parse_from(["ringway", "--upstream", "x:1"])
        .map(|cli| cli.proxy)
        .map_err(DemoError::Defaults)
}

/// The demo's directory under the temp dir (`ringway-demo-PID`), removed
/// with everything in it when this is dropped: on every return and unwind.
struct DemoDir(PathBuf);

impl DemoDir {
    /// Make a new directory only its owner may enter. One that exists (left
    /// by a killed demo whose process id is now ours, or made by someone
    /// else in a shared /tmp) is never written into: the next free name
    /// (`ringway-demo-PID.1`, ...) is taken instead.
    fn create() -> Result<DemoDir, DemoError> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir().join(format!("ringway-demo-{}", std::process::id()));
        let mut last = None;
        for n in 0..100 {
            let dir = if n == 0 {
                base.clone()
            } else {
                base.with_extension(n.to_string())
            };
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(DemoDir(dir)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(source) => {
                    return Err(DemoError::TempDir {
                        dir: std::env::temp_dir(),
                        source,
                    })
                }
            }
        }
        let source = last.unwrap_or_else(|| io::Error::other("no free name"));
        Err(DemoError::TempDir { dir: base, source })
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {e}", self.0.display());
            }
        }
    }
}

/// A throwaway CA and a certificate it signs for localhost and 127.0.0.1,
/// written as PEM files into the demo's directory.
struct DemoCerts {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl DemoCerts {
    fn generate(dir: &DemoDir) -> Result<DemoCerts, DemoError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ringway demo CA");
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf_key = KeyPair::generate()?;
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;

        let certs = DemoCerts {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        let write = |path: &Path, pem: &str| {
            write_private(path, pem).map_err(|source| DemoError::Write {
                path: path.to_path_buf(),
                source,
            })
        };
        write(&certs.ca, &ca.pem())?;
        // The chain a server sends: its own certificate, then the CA's.
        write(&certs.cert, &format!("{}{}", leaf.pem(), ca.pem()))?;
        write(&certs.key, &leaf_key.serialize_pem())?;
        Ok(certs)
    }

    /// Remove the certificate and its private key once they are loaded:
    /// the CA alone stays, for clients to trust.
    fn forget_key(&self) {
        for path in [&self.key, &self.cert] {
            if let Err(e) = std::fs::remove_file(path) {
                log::warn!("cannot remove {}: {e}", path.display());
            }
        }
    }
}

/// Write a file only its owner can read.
fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

async fn serve(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut acc: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 64 * 1024];
    let (head_len, reply, upgraded) = loop {
        let (res, c) = s.read(chunk).await;
        chunk = c;
        let n = res?;
        if n == 0 {
            return Ok(());
        }
        acc.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&acc) {
            Ok(httparse::Status::Complete(len)) => {
                let (reply, upgraded) = answer(&req);
                break (len, reply, upgraded);
            }
            Ok(httparse::Status::Partial) if acc.len() < 64 * 1024 => continue,
            _ => {
                let (r, _) = s.write_all(not_found("bad request")).await;
                return r.map(drop);
            }
        }
    };
    let (r, _) = s.write_all(reply).await;
    r?;
    if !upgraded {
        return Ok(());
    }
    acc.drain(..head_len);
    echo_frames(&mut s, acc, chunk).await
}

/// The answer to a request head, and whether it upgrades.
fn answer(req: &httparse::Request<'_, '_>) -> (Vec<u8>, bool) {
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if let Some(key) = header("sec-websocket-key") {
        let mut r = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            ws::accept_key(crate::proto::http::trim(key))
        );
        if let Some(p) =
            header("sec-websocket-protocol").and_then(|v| crate::proto::http::tokens(v).next())
        {
            r.push_str(&format!(
                "Sec-WebSocket-Protocol: {}\r\n",
                String::from_utf8_lossy(p)
            ));
        }
        r.push_str("\r\n");
        return (r.into_bytes(), true);
    }
    if req.path == Some("/") || req.path == Some("/index.html") {
        let r = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
            PAGE.len()
        );
        return (r.into_bytes(), false);
    }
    (not_found("no such page"), false)
}

fn not_found(why: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{why}\n",
        why.len() + 1
    )
    .into_bytes()
}

/// Echo every data frame back (unmasked, same opcode and fin bit, so
/// fragmented messages come back fragmented), answer pings, echo the close.
async fn echo_frames(s: &mut TcpStream, mut acc: Vec<u8>, mut chunk: Vec<u8>) -> io::Result<()> {
    loop {
        loop {
            let h = match ws::read_header(&acc) {
                ws::Header::Complete(h) => h,
                ws::Header::Incomplete => break,
                // Not a WebSocket peer: nothing sensible to echo.
                ws::Header::Invalid => return Ok(()),
            };
            // Checked before adding: a frame may claim a length near u64::MAX.
            if h.len > MAX_BUFFERED as u64 {
                return Ok(());
            }
            let total = h.header_len as u64 + h.len;
            if (acc.len() as u64) < total {
                break;
            }
            let total = total as usize;
            let mut payload = acc[h.header_len..total].to_vec();
            if let Some(m) = h.mask {
                ws::apply_mask(&mut payload, m, 0);
            }
            let opcode = if h.opcode == ws::OP_PING {
                ws::OP_PONG
            } else {
                h.opcode
            };
            let mut out = Vec::with_capacity(payload.len() + 10);
            ws::encode_header(&mut out, h.fin, opcode, payload.len() as u64, None);
            out.extend_from_slice(&payload);
            acc.drain(..total);
            if h.opcode != ws::OP_PONG {
                let (r, _) = s.write_all(out).await;
                r?;
            }
            if h.opcode == ws::OP_CLOSE {
                return Ok(());
            }
        }
        let (res, c) = s.read(chunk).await;
        chunk = c;
        let n = res?;
        if n == 0 {
            return Ok(());
        }
        acc.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(b"GET /ws HTTP/1.1\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: chat, x\r\n\r\n")
            .unwrap();
        let (r, up) = answer(&req);
        let r = String::from_utf8(r).unwrap();
        assert!(up);
        assert!(r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(r.contains("Sec-WebSocket-Protocol: chat\r\n"));
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let (r, up) = answer(&req);
        assert!(!up && String::from_utf8(r).unwrap().contains("<html"));
    }
}
