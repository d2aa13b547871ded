//! The client side of one WebSocket connection, as cheap as it can be:
//! frames are encoded once and written as shared `Bytes`; on receive only
//! frame headers are parsed and payloads are skipped. A connection is plain
//! TCP (`ws://`) or TLS (`wss://`, see [`crate::tls`]); [`Conn`] and its
//! halves pick the one by a match, the plain path doing exactly the socket
//! calls it did before TLS existed.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use monoio::buf::IoBuf;
use monoio::io::{
    AsyncReadRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent, OwnedReadHalf,
    OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use ringway::proto::ws;

use crate::tls::{ClientTls, TlsInfo, TlsOptions, TlsReadHalf, TlsStream, TlsWriteHalf};

/// The key every generated handshake sends, and the accept it must get back.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The mask of every generated frame. Masking is mandatory for clients; a
/// fixed key lets frames be encoded once.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Where to connect and what to ask for.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    /// Set for wss:// targets.
    pub tls: Option<ClientTls>,
}

impl Target {
    /// `ws://HOST:PORT/path` (HOST an IP address: load goes to loopback).
    /// A wss:// URL needs TLS options: see [`Target::parse_with`].
    pub fn parse(url: &str) -> Result<Target> {
        Target::parse_with(url, &TlsOptions::default())
    }

    /// `ws://` or `wss://IP:PORT/path`; `tls` must say how to verify the
    /// server for wss:// (`insecure` or `ca`) and be empty for ws://.
    pub fn parse_with(url: &str, tls: &TlsOptions) -> Result<Target> {
        let (secure, rest) = if let Some(rest) = url.strip_prefix("ws://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("wss://") {
            (true, rest)
        } else {
            bail!("the URL must start with ws:// or wss://");
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = hostport
            .parse()
            .with_context(|| format!("{hostport:?} is not IP:PORT"))?;
        let tls = match secure {
            true => Some(ClientTls::new(tls, addr.ip())?),
            false if tls.any() => {
                bail!("--insecure, --ca, --server-name, --resume and --tls-version are for wss:// URLs")
            }
            false => None,
        };
        Ok(Target {
            addr,
            host: hostport.to_string(),
            path: path.to_string(),
            tls,
        })
    }

    /// The URL, for reports.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.host, self.path)
    }

    /// The upgrade request, built once per run.
    pub fn request(&self) -> Bytes {
        Bytes::from(format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            self.path, self.host
        ))
    }
}

/// One connection, ws:// or wss://. Reads fill a `Vec` from its start up to
/// its capacity; writes take shared `Bytes`.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

/// The reading half of a split [`Conn`].
pub enum ConnRead {
    Plain(OwnedReadHalf<TcpStream>),
    Tls(Box<TlsReadHalf>),
}

/// The writing half of a split [`Conn`]. Dropping it closes the sending
/// side of a plain connection once the reading half is gone too.
pub enum ConnWrite {
    Plain(OwnedWriteHalf<TcpStream>),
    Tls(Box<TlsWriteHalf>),
}

impl Conn {
    #[inline]
    pub async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
        }
    }

    #[inline]
    pub async fn write_all<B: IoBuf + AsRef<[u8]>>(&mut self, data: B) -> (io::Result<usize>, B) {
        match self {
            Conn::Plain(s) => s.write_all(data).await,
            Conn::Tls(s) => s.write_all(data).await,
        }
    }

    pub fn into_split(self) -> (ConnRead, ConnWrite) {
        match self {
            Conn::Plain(s) => {
                let (r, w) = s.into_split();
                (ConnRead::Plain(r), ConnWrite::Plain(w))
            }
            Conn::Tls(s) => {
                let (r, w) = s.into_split();
                (ConnRead::Tls(Box::new(r)), ConnWrite::Tls(Box::new(w)))
            }
        }
    }

    /// What the TLS handshake negotiated (`None` for ws://).
    pub fn tls_info(&self) -> Option<TlsInfo> {
        match self {
            Conn::Plain(_) => None,
            Conn::Tls(s) => Some(s.info()),
        }
    }
}

impl ConnRead {
    #[inline]
    pub async fn cancelable_read(
        &mut self,
        buf: Vec<u8>,
        cancel: CancelHandle,
    ) -> (io::Result<usize>, Vec<u8>) {
        match self {
            ConnRead::Plain(s) => s.cancelable_read(buf, cancel).await,
            ConnRead::Tls(s) => s.cancelable_read(buf, cancel).await,
        }
    }
}

impl ConnWrite {
    #[inline]
    pub async fn write_all(&mut self, data: Bytes) -> (io::Result<usize>, Bytes) {
        match self {
            ConnWrite::Plain(s) => s.write_all(data).await,
            ConnWrite::Tls(s) => s.write_all(data).await,
        }
    }
}

/// A masked client frame, encoded once.
pub fn frame(opcode: u8, payload_len: usize) -> Bytes {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
    frame_with(opcode, &payload)
}

pub fn frame_with(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 14);
    ws::encode_header(&mut out, true, opcode, payload.len() as u64, Some(MASK));
    let start = out.len();
    out.extend_from_slice(payload);
    ws::apply_mask(&mut out[start..], MASK, 0);
    Bytes::from(out)
}

/// `count` copies of `frame` back to back, so that writing n frames is one
/// write of a zero-copy slice.
pub fn burst(frame: &Bytes, count: usize) -> Bytes {
    let mut out = Vec::with_capacity(frame.len() * count);
    for _ in 0..count {
        out.extend_from_slice(frame);
    }
    Bytes::from(out)
}

/// Open a TCP connection (from `source` if given), do the TLS handshake for
/// wss://, and upgrade it. Returns the connection, the bytes read behind the
/// 101 head, and the handshake time (connect + TLS + upgrade).
pub async fn connect(
    target: &Target,
    request: &Bytes,
    source: Option<IpAddr>,
) -> Result<(Conn, Vec<u8>, Duration)> {
    let started = Instant::now();
    let stream = tcp_connect(target.addr, source).await?;
    stream.set_nodelay(true)?;
    let mut conn = match &target.tls {
        None => {
            let mut stream = stream;
            let (res, _) = stream.write_all(request.clone()).await;
            res.context("sending the upgrade request")?;
            Conn::Plain(stream)
        }
        // The request leaves with the client's last handshake flight.
        Some(tls) => Conn::Tls(Box::new(
            TlsStream::connect(stream, tls, request)
                .await
                .context("TLS handshake")?,
        )),
    };
    let mut head = Vec::new();
    let mut chunk = Vec::with_capacity(4096);
    loop {
        chunk.clear();
        let (res, c) = conn.read(chunk).await;
        chunk = c;
        if res.context("reading the upgrade answer")? == 0 {
            bail!("closed before answering the upgrade");
        }
        head.extend_from_slice(&chunk);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            check_switch(&head[..end + 4])?;
            let rest = head.split_off(end + 4);
            if let Conn::Tls(s) = &mut conn {
                s.release_buffers();
            }
            return Ok((conn, rest, started.elapsed()));
        }
        if head.len() > 64 * 1024 {
            bail!("upgrade answer head too large");
        }
    }
}

/// Did the server switch protocols with the right accept key?
pub fn check_switch(head: &[u8]) -> Result<()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(head).context("invalid answer head")?;
    if resp.code != Some(101) {
        bail!("answer {:?} instead of 101", resp.code);
    }
    let accept = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|h| h.value)
        .context("101 without Sec-WebSocket-Accept")?;
    if accept != ACCEPT.as_bytes() {
        bail!(
            "wrong Sec-WebSocket-Accept {:?}",
            String::from_utf8_lossy(accept)
        );
    }
    Ok(())
}

async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream> {
    let Some(ip) = source else {
        return Ok(TcpStream::connect_addr(addr).await?);
    };
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    s.bind(&SocketAddr::new(ip, 0).into())
        .with_context(|| format!("binding to source address {ip}"))?;
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(s))?;
    stream.writable(false).await?;
    if let Ok(Some(e)) | Err(e) = ringway::sys::take_error(&stream) {
        return Err(e).context("connect");
    }
    Ok(stream)
}

/// Counts whole frames in a byte stream, looking only at headers.
#[derive(Debug, Default)]
pub struct FrameCounter {
    /// Header bytes of a frame whose header spans two reads.
    partial: Vec<u8>,
    /// Payload bytes of the current frame still to skip.
    skip: u64,
    /// Opcode of the frame being skipped.
    opcode: u8,
}

impl FrameCounter {
    /// Feed received bytes; `on_frame(opcode)` is called for each frame
    /// completed by them.
    pub fn feed(&mut self, mut data: &[u8], mut on_frame: impl FnMut(u8)) {
        loop {
            if self.skip > 0 {
                let n = (data.len() as u64).min(self.skip) as usize;
                self.skip -= n as u64;
                data = &data[n..];
                if self.skip > 0 {
                    return;
                }
                on_frame(self.opcode);
            }
            if data.is_empty() {
                return;
            }
            let header = if self.partial.is_empty() {
                ws::parse_header(data)
            } else {
                let take = data.len().min(14 - self.partial.len().min(14));
                self.partial.extend_from_slice(&data[..take]);
                ws::parse_header(&self.partial).map(|h| {
                    // Only the part of `data` that belonged to the header is consumed.
                    let used = h.header_len - (self.partial.len() - take);
                    ws::FrameHeader {
                        header_len: used,
                        ..h
                    }
                })
            };
            match header {
                Some(h) => {
                    self.partial.clear();
                    data = &data[h.header_len..];
                    self.opcode = h.opcode;
                    if h.len == 0 {
                        on_frame(h.opcode);
                    } else {
                        self.skip = h.len;
                    }
                }
                None => {
                    if self.partial.is_empty() {
                        self.partial.extend_from_slice(data);
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        ws::encode_header(&mut out, true, opcode, len as u64, None);
        out.extend(std::iter::repeat_n(7u8, len));
        out
    }

    #[test]
    fn counts_frames_split_anywhere() {
        let mut stream = Vec::new();
        let sizes = [0usize, 1, 125, 126, 300, 65536, 70000];
        for &n in &sizes {
            stream.extend(server_frame(ws::OP_BINARY, n));
        }
        stream.extend(server_frame(ws::OP_PONG, 4));
        for chunk in [1usize, 2, 3, 7, 13, 4096, stream.len()] {
            let mut c = FrameCounter::default();
            let mut seen = Vec::new();
            for part in stream.chunks(chunk) {
                c.feed(part, |op| seen.push(op));
            }
            assert_eq!(seen.len(), sizes.len() + 1, "chunk {chunk}");
            assert_eq!(*seen.last().unwrap(), ws::OP_PONG);
        }
    }

    #[test]
    fn frames_are_masked_and_decodable() {
        let f = frame_with(ws::OP_TEXT, b"hello");
        let h = ws::parse_header(&f).unwrap();
        assert_eq!((h.opcode, h.len, h.mask), (ws::OP_TEXT, 5, Some(MASK)));
        let mut p = f[h.header_len..].to_vec();
        ws::apply_mask(&mut p, MASK, 0);
        assert_eq!(p, b"hello");
        assert_eq!(burst(&f, 3).len(), f.len() * 3);
    }

    #[test]
    fn switch_checks() {
        let good =
            format!("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n");
        assert!(check_switch(good.as_bytes()).is_ok());
        assert!(check_switch(
            b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n\r\n"
        )
        .is_err());
        assert!(check_switch(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(check_switch(b"HTTP/1.1 101 OK\r\n\r\n").is_err());
    }

    #[test]
    fn targets() {
        let t = Target::parse("ws://127.0.0.1:8080/ws/echo").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, "/ws/echo");
        assert_eq!(Target::parse("ws://[::1]:9").unwrap().path, "/");
        assert!(Target::parse("http://127.0.0.1:1/").is_err());
        assert!(Target::parse("ws://localhost:1/").is_err());
        assert_eq!(t.url(), "ws://127.0.0.1:8080/ws/echo");
        assert!(t.tls.is_none());
    }

    #[test]
    fn wss_targets_need_a_way_to_verify() {
        let err = Target::parse("wss://127.0.0.1:8443/").unwrap_err();
        assert!(format!("{err:#}").contains("--insecure"), "{err:#}");
        let insecure = TlsOptions {
            insecure: true,
            ..TlsOptions::default()
        };
        let t = Target::parse_with("wss://127.0.0.1:8443/x", &insecure).unwrap();
        assert_eq!(t.url(), "wss://127.0.0.1:8443/x");
        let tls = t.tls.unwrap();
        assert_eq!(tls.name, "127.0.0.1".try_into().unwrap());
        // A full handshake every time unless --resume.
        assert!(format!("{:?}", tls.config.resumption).contains("Disabled"));
        // TLS options on a ws:// URL are a mistake, not silently ignored.
        assert!(Target::parse_with("ws://127.0.0.1:80/", &insecure).is_err());
        let both = TlsOptions {
            ca: Some("/nonexistent.pem".into()),
            ..insecure.clone()
        };
        assert!(Target::parse_with("wss://127.0.0.1:8443/", &both).is_err());
        let missing = TlsOptions {
            ca: Some("/nonexistent.pem".into()),
            ..TlsOptions::default()
        };
        let err = Target::parse_with("wss://127.0.0.1:8443/", &missing).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent.pem"), "{err:#}");
        let named = TlsOptions {
            server_name: Some("proxy.example".into()),
            version: Some("1.2".into()),
            resume: true,
            ..insecure.clone()
        };
        let t = Target::parse_with("wss://[::1]:8443/", &named).unwrap();
        assert_eq!(t.tls.unwrap().name, "proxy.example".try_into().unwrap());
        let bad_version = TlsOptions {
            version: Some("1.1".into()),
            ..insecure
        };
        assert!(Target::parse_with("wss://[::1]:8443/", &bad_version).is_err());
    }
}
