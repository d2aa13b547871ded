//! TLS (wss://) for the load tools: rustls over monoio's owned-buffer TCP,
//! without extra tasks or copies beyond rustls' own.
//!
//! A [`TlsStream`] is always two halves sharing the rustls connection
//! (`Rc<RefCell<_>>`, never borrowed across an await): the read half owns the
//! TCP read side and a ciphertext buffer, the write half the TCP write side
//! and the buffer records are written from. The echo scenario runs them
//! concurrently; the other scenarios use the whole stream. Only the write
//! half writes to the socket, so records go out in the order rustls made
//! them; anything the read side makes rustls queue (an alert) goes out with
//! the next write.
//!
//! Buffers follow the caller's: the ciphertext buffer takes the size of the
//! plaintext buffer passed to a read, and both are freed after the upgrade
//! (see [`TlsStream::release_buffers`]), so an idle connection holds only
//! the rustls state.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use monoio::io::{
    AsyncReadRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent, OwnedReadHalf,
    OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::crypto::{self, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    CipherSuite, ClientConfig, ClientConnection, Connection, HandshakeKind, NamedGroup,
    ProtocolVersion, RootCertStore, ServerConfig, ServerConnection, SupportedProtocolVersion,
};

/// The smallest ciphertext read: a TLS record header and a little more.
const MIN_READ: usize = 4096;

/// TLS settings of a wss:// run, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Accept any certificate (signatures are still checked, so the server
    /// must hold the key of the certificate it sends).
    pub insecure: bool,
    /// PEM file of the roots to verify the server's certificate against.
    pub ca: Option<PathBuf>,
    /// Name sent as SNI and verified; default: the target's IP (no SNI).
    pub server_name: Option<String>,
    /// Resume sessions (tickets or IDs) across connections.
    pub resume: bool,
    /// Offer only this version: `"1.2"` or `"1.3"` (default: both).
    pub version: Option<String>,
}

impl TlsOptions {
    /// Is any TLS setting given? (They make no sense for ws://.)
    pub fn any(&self) -> bool {
        self.insecure
            || self.ca.is_some()
            || self.server_name.is_some()
            || self.resume
            || self.version.is_some()
    }
}

/// What a wss:// target connects with: built once per run, shared by every
/// connection of every thread.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("name", &self.name)
            .field("resumption", &self.config.resumption)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(crypto::ring::default_provider())
}

fn versions(version: Option<&str>) -> Result<&'static [&'static SupportedProtocolVersion]> {
    static TLS12: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
    static TLS13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    Ok(match version {
        None => rustls::ALL_VERSIONS,
        Some("1.2") => &TLS12,
        Some("1.3") => &TLS13,
        Some(v) => bail!("--tls-version {v:?}: use 1.2 or 1.3"),
    })
}

impl ClientTls {
    /// The client configuration for a wss:// target at `ip`.
    pub fn new(opts: &TlsOptions, ip: IpAddr) -> Result<ClientTls> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions(opts.version.as_deref())?)?;
        let mut config = match (&opts.ca, opts.insecure) {
            (Some(_), true) => bail!("--ca and --insecure exclude each other"),
            (None, false) => bail!(
                "wss:// needs --ca FILE (PEM roots to verify the server against) \
                 or --insecure (accept any certificate)"
            ),
            (None, true) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ringway::proto::tls::NoVerification(
                    provider,
                )))
                .with_no_client_auth(),
            (Some(path), false) => builder
                .with_root_certificates(roots(path)?)
                .with_no_client_auth(),
        };
        config.resumption = if opts.resume {
            Resumption::store(Arc::new(SessionStore::default()))
        } else {
            Resumption::disabled()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = match &opts.server_name {
            Some(n) => ServerName::try_from(n.clone())
                .map_err(|e| anyhow::anyhow!("--server-name {n:?}: {e}"))?,
            None => ServerName::from(ip),
        };
        Ok(ClientTls {
            config: Arc::new(config),
            name,
        })
    }
}

fn roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading --ca {}", path.display()))?;
    for cert in certs {
        let cert = cert.with_context(|| format!("parsing --ca {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("a certificate of --ca {}", path.display()))?;
    }
    if roots.is_empty() {
        bail!("--ca {}: no PEM certificate in it", path.display());
    }
    Ok(roots)
}

/// `--resume`: where sessions wait for the next connection. A run has one
/// server, so this is one slot, with room for as many TLS 1.3 tickets (each
/// good for one resumption) as the connections in flight can use: rustls'
/// own memory cache keeps 8 per server, and a connect run with 50 at a time
/// would then do most handshakes in full.
#[derive(Default)]
struct SessionStore(Mutex<Sessions>);

#[derive(Default)]
struct Sessions {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    /// Oldest first; the newest is taken.
    tls13: VecDeque<Tls13ClientSessionValue>,
}

const MAX_TICKETS: usize = 4096;

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0.lock().unwrap();
        f.debug_struct("SessionStore")
            .field("tls12", &s.tls12.is_some())
            .field("tls13_tickets", &s.tls13.len())
            .finish()
    }
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, _: ServerName<'static>, group: NamedGroup) {
        self.0.lock().unwrap().kx_hint = Some(group);
    }

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        self.0.lock().unwrap().kx_hint
    }

    fn set_tls12_session(&self, _: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.0.lock().unwrap().tls12 = Some(value);
    }

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.0.lock().unwrap().tls12.clone()
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {
        self.0.lock().unwrap().tls12 = None;
    }

    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut s = self.0.lock().unwrap();
        if s.tls13.len() == MAX_TICKETS {
            s.tls13.pop_front();
        }
        s.tls13.push_back(value);
    }

    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.0.lock().unwrap().tls13.pop_back()
    }
}

/// A server configuration from a PEM certificate chain and a PEM private key
/// (the echo backend's `--tls-cert`/`--tls-key`).
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the certificate PEM")?;
    if chain.is_empty() {
        bail!("no PEM certificate found");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("parsing the private key PEM")?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// [`server_config`] from files.
pub fn server_config_from_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    server_config(&read(cert)?, &read(key)?)
        .with_context(|| format!("{} and {}", cert.display(), key.display()))
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A TLS connection over TCP, client or server side, handshake done.
pub struct TlsStream {
    rd: TlsReadHalf,
    wr: TlsWriteHalf,
}

/// The reading half: ciphertext in, plaintext out.
pub struct TlsReadHalf {
    tcp: OwnedReadHalf<TcpStream>,
    tls: Rc<RefCell<Connection>>,
    /// Ciphertext read from the socket; `cbuf[cpos..]` not yet given to rustls.
    cbuf: Vec<u8>,
    cpos: usize,
    /// close_notify received and every plaintext byte before it read.
    closed: bool,
}

/// The writing half: plaintext in, records out.
pub struct TlsWriteHalf {
    tcp: OwnedWriteHalf<TcpStream>,
    tls: Rc<RefCell<Connection>>,
    /// Records on their way to the socket; empty until the first write.
    wbuf: Vec<u8>,
}

impl TlsStream {
    fn new(tcp: TcpStream, conn: Connection) -> TlsStream {
        let tls = Rc::new(RefCell::new(conn));
        let (rd, wr) = tcp.into_split();
        TlsStream {
            rd: TlsReadHalf {
                tcp: rd,
                tls: tls.clone(),
                cbuf: Vec::new(),
                cpos: 0,
                closed: false,
            },
            wr: TlsWriteHalf {
                tcp: wr,
                tls,
                wbuf: Vec::new(),
            },
        }
    }

    /// Client handshake. `early` (the upgrade request) is queued first, so
    /// that it leaves with the client's last handshake flight, in the same
    /// write, as a browser's request usually does.
    pub async fn connect(tcp: TcpStream, tls: &ClientTls, early: &[u8]) -> io::Result<TlsStream> {
        let mut conn =
            ClientConnection::new(tls.config.clone(), tls.name.clone()).map_err(tls_error)?;
        conn.writer().write_all(early)?;
        let mut s = TlsStream::new(tcp, conn.into());
        s.handshake().await?;
        Ok(s)
    }

    /// Server handshake.
    pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
        let conn = ServerConnection::new(config).map_err(tls_error)?;
        let mut s = TlsStream::new(tcp, conn.into());
        s.handshake().await?;
        Ok(s)
    }

    async fn handshake(&mut self) -> io::Result<()> {
        loop {
            self.wr.flush().await?;
            if !self.rd.tls.borrow().is_handshaking() {
                return Ok(());
            }
            if self.rd.cpos == self.rd.cbuf.len() {
                let (res, buf) = self.rd.fill(None, 16 * 1024).await;
                self.rd.cbuf = buf;
                if res? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed during the TLS handshake",
                    ));
                }
            }
            if let Err(e) = self.rd.feed_handshake() {
                // Send the alert rustls queued, if the peer still listens.
                let _ = self.wr.flush().await;
                return Err(e);
            }
        }
    }

    /// Read plaintext into `buf` (cleared first, filled up to its capacity);
    /// `Ok(0)` at the end of the stream.
    pub async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.rd.read(buf).await
    }

    pub async fn write_all<B: AsRef<[u8]>>(&mut self, data: B) -> (io::Result<usize>, B) {
        self.wr.write_all(data).await
    }

    pub fn into_split(self) -> (TlsReadHalf, TlsWriteHalf) {
        (self.rd, self.wr)
    }

    /// Free the buffers of both halves if they hold nothing (an idle
    /// connection then costs only its rustls state).
    pub fn release_buffers(&mut self) {
        if self.rd.cpos == self.rd.cbuf.len() {
            self.rd.cbuf = Vec::new();
            self.rd.cpos = 0;
        }
        self.wr.wbuf = Vec::new();
    }

    /// Full or resumed handshake, and the negotiated version and suite.
    pub fn info(&self) -> TlsInfo {
        let tls = self.rd.tls.borrow();
        TlsInfo {
            resumed: matches!(tls.handshake_kind(), Some(HandshakeKind::Resumed)),
            version: tls.protocol_version(),
            suite: tls.negotiated_cipher_suite().map(|s| s.suite()),
        }
    }
}

/// What a handshake negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsInfo {
    pub resumed: bool,
    pub version: Option<ProtocolVersion>,
    pub suite: Option<CipherSuite>,
}

impl TlsReadHalf {
    /// Read ciphertext into the (cleared) ciphertext buffer, at least
    /// `size` bytes of room.
    async fn fill(
        &mut self,
        cancel: Option<&CancelHandle>,
        size: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        let mut buf = std::mem::take(&mut self.cbuf);
        buf.clear();
        self.cpos = 0;
        buf.reserve(size.max(MIN_READ));
        match cancel {
            Some(c) => self.tcp.cancelable_read(buf, c.clone()).await,
            None => self.tcp.read(buf).await,
        }
    }

    /// During the handshake: give rustls the ciphertext it takes, until the
    /// handshake is done or the buffer is used up.
    fn feed_handshake(&mut self) -> io::Result<()> {
        let mut tls = self.tls.borrow_mut();
        while self.cpos < self.cbuf.len() && tls.is_handshaking() {
            let n = tls.read_tls(&mut &self.cbuf[self.cpos..])?;
            if n == 0 {
                self.cpos = self.cbuf.len();
            }
            self.cpos += n;
            tls.process_new_packets().map_err(tls_error)?;
        }
        Ok(())
    }

    /// Move decrypted plaintext into `buf` up to its capacity, decrypting
    /// buffered ciphertext as needed.
    fn drain(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        let mut tls = self.tls.borrow_mut();
        loop {
            let state = tls.process_new_packets().map_err(tls_error)?;
            let avail = state.plaintext_bytes_to_read();
            let room = buf.capacity() - buf.len();
            if avail > 0 && room > 0 {
                let n = avail.min(room);
                let at = buf.len();
                buf.resize(at + n, 0);
                tls.reader().read_exact(&mut buf[at..])?;
            }
            self.closed = state.peer_has_closed() && avail <= room;
            if buf.len() == buf.capacity() || self.cpos == self.cbuf.len() {
                return Ok(());
            }
            // Room left: feed more. rustls takes one record or a few at a
            // time and buffers at most 16 KiB of plaintext, which the next
            // round moves out.
            let n = tls.read_tls(&mut &self.cbuf[self.cpos..])?;
            if n == 0 {
                // close_notify seen: nothing after it counts.
                self.cpos = self.cbuf.len();
            }
            self.cpos += n;
        }
    }

    async fn read_with(
        &mut self,
        mut buf: Vec<u8>,
        cancel: Option<&CancelHandle>,
    ) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        if buf.capacity() == 0 {
            buf.reserve(MIN_READ);
        }
        loop {
            if let Err(e) = self.drain(&mut buf) {
                return (Err(e), buf);
            }
            if !buf.is_empty() {
                return (Ok(buf.len()), buf);
            }
            if self.closed {
                return (Ok(0), buf);
            }
            let (res, cbuf) = self.fill(cancel, buf.capacity()).await;
            self.cbuf = cbuf;
            match res {
                Ok(0) => return (Ok(0), buf),
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
        }
    }

    /// Read plaintext into `buf` (cleared first, filled up to its capacity);
    /// `Ok(0)` at the end of the stream.
    pub async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.read_with(buf, None).await
    }

    /// [`read`](Self::read) that `cancel` can stop while it waits for the
    /// socket (`ECANCELED` then). Ciphertext already read is kept for the
    /// next read.
    pub async fn cancelable_read(
        &mut self,
        buf: Vec<u8>,
        cancel: CancelHandle,
    ) -> (io::Result<usize>, Vec<u8>) {
        self.read_with(buf, Some(&cancel)).await
    }
}

impl TlsWriteHalf {
    /// Encrypt and send all of `data` (64 KiB of records at a time: rustls'
    /// default limit on unsent records), then anything else rustls queued.
    pub async fn write_all<B: AsRef<[u8]>>(&mut self, data: B) -> (io::Result<usize>, B) {
        let bytes = data.as_ref();
        let len = bytes.len();
        let mut off = 0;
        loop {
            let queued = {
                let mut tls = self.tls.borrow_mut();
                let mut wrote = if off < len {
                    tls.writer().write(&bytes[off..])
                } else {
                    Ok(0)
                };
                if let Ok(n) = wrote {
                    off += n;
                    self.wbuf.clear();
                    while tls.wants_write() {
                        if let Err(e) = tls.write_tls(&mut self.wbuf) {
                            wrote = Err(e);
                            break;
                        }
                    }
                }
                wrote
            };
            if let Err(e) = queued {
                return (Err(e), data);
            }
            if self.wbuf.is_empty() {
                if off < len {
                    // rustls took nothing and has nothing to send (closed).
                    return (Err(io::ErrorKind::WriteZero.into()), data);
                }
            } else {
                let (res, b) = self.tcp.write_all(std::mem::take(&mut self.wbuf)).await;
                self.wbuf = b;
                if let Err(e) = res {
                    return (Err(e), data);
                }
            }
            if off >= len {
                return (Ok(len), data);
            }
        }
    }

    /// Send whatever rustls has queued (handshake messages, alerts).
    async fn flush(&mut self) -> io::Result<()> {
        self.write_all([]).await.0.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use monoio::io::Canceller;
    use monoio::net::TcpListener;

    fn configs() -> (Arc<ServerConfig>, ClientTls) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let server = server_config(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
        let opts = TlsOptions {
            insecure: true,
            ..TlsOptions::default()
        };
        (
            server,
            ClientTls::new(&opts, "127.0.0.1".parse().unwrap()).unwrap(),
        )
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Read exactly `n` bytes with reads of the given buffer sizes in turn.
    async fn read_n(s: &mut TlsStream, n: usize, sizes: &[usize]) -> Vec<u8> {
        let mut got = Vec::new();
        let mut k = 0;
        while got.len() < n {
            let buf = Vec::with_capacity(sizes[k % sizes.len()]);
            k += 1;
            let (res, buf) = s.read(buf).await;
            let m = res.unwrap();
            assert!(m > 0, "early end after {} bytes", got.len());
            assert_eq!(m, buf.len());
            got.extend_from_slice(&buf);
        }
        got
    }

    #[test]
    fn bytes_arrive_whole_whatever_the_buffer_sizes() {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let (server_config, client) = configs();
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            const N: usize = 300_000;
            let server = monoio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut s = TlsStream::accept(tcp, server_config).await.unwrap();
                // The request sent with the handshake, in reads of 1 and 5 bytes.
                assert_eq!(read_n(&mut s, 5, &[1, 4]).await, b"hello");
                // Many records, read far smaller and far larger than one.
                let data = read_n(&mut s, N, &[3, 100_000, 17_000, 1]).await;
                assert_eq!(data, pattern(N));
                let (res, _) = s.write_all(data).await;
                res.unwrap();
                // Dropped: the client sees the end.
            });
            let tcp = TcpStream::connect_addr(addr).await.unwrap();
            let mut s = TlsStream::connect(tcp, &client, b"hello").await.unwrap();
            assert_eq!(s.info().version, Some(ProtocolVersion::TLSv1_3));
            assert!(!s.info().resumed);
            s.release_buffers();

            let (res, _) = s.write_all(Bytes::from(pattern(N))).await;
            assert_eq!(res.unwrap(), N);
            let (mut rd, _wr) = s.into_split();
            // A read cancelled before anything comes keeps nothing back.
            let c = Canceller::new();
            let handle = c.handle();
            c.cancel();
            let (res, _) = rd.cancelable_read(Vec::with_capacity(64), handle).await;
            assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
            let mut got = Vec::new();
            loop {
                let (res, buf) = rd.read(Vec::with_capacity(40_000)).await;
                if res.unwrap() == 0 {
                    break;
                }
                got.extend_from_slice(&buf);
            }
            assert_eq!(got, pattern(N));
            server.await;
        });
    }
}
