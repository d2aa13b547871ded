//! Static files for `--static` routes.
//!
//! A [`Root`] is a directory opened with the configuration; [`serve`]
//! answers one `GET` or `HEAD` from it and writes the whole response. Every
//! file is opened with [`Root::open_file`] (`sys::open_beneath`), so the kernel (`openat2`
//! `RESOLVE_BENEATH`) guarantees that no path, `..` or symlink reaches
//! anything outside the root; the request path has already been through
//! [`crate::proto::http::path::normalize`]. The body goes out one chunk at a time
//! through one reused buffer, so a file of any size costs at most
//! [`CHUNK`] bytes of memory while it is sent. Every response ends with
//! `Connection: close`: the caller closes the connection after `serve`.
//!
//! Opening and `fstat` are blocking syscalls made on the worker thread. For
//! files on a local disk they take microseconds (the dentry and inode are
//! almost always cached), which is cheaper than sending them elsewhere; a
//! root on a slow network filesystem would stall its core meanwhile.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::config::static_root::Root;
use crate::io::tunnel::{Ctx, Peer};
use crate::proto::http::date::{http_date, parse_http_date};
use crate::proto::http::path;
use crate::proto::http::status::{plain_answer, reason_of};

/// Most bytes of a file held in memory at once while it is sent.
pub const CHUNK: usize = 64 * 1024;

/// What the request asks of the static route (all borrowed from the parsed
/// request head).
#[derive(Debug, Clone, Copy)]
pub struct FileRequest<'a> {
    /// The request method, as sent (methods are case-sensitive).
    pub method: &'a str,
    /// The path, as [`crate::proto::http::path::normalize`] returns it: decoded,
    /// starting with '/', with no `..`, `.` or empty segment.
    pub path: &'a str,
    /// The raw `If-Modified-Since` value, if the request has one.
    pub if_modified_since: Option<&'a [u8]>,
}

/// How it went, for the connection's log line.
#[derive(Debug)]
pub struct Served {
    /// The status sent (or meant to be sent, if the client left first).
    pub status: u16,
    /// Body bytes written (the head is not counted; 0 for `HEAD` and 304).
    pub bytes: u64,
    /// Why a 4xx/5xx was given; for a 2xx/3xx, why the response was cut
    /// short (the client left, the file shrank or failed to read), else None.
    pub why: Option<String>,
}

/// Answer one request from `root`: writes the whole response (head and body)
/// to `client` with [`Ctx::write_all`] (which handles TLS clients,
/// backpressure and the idle timer via `track`), never holding more than one
/// chunk ([`CHUNK`]) of the file in memory. The caller closes the connection
/// afterwards (every response says `Connection: close`, and a body cut
/// short can only be told by the close).
pub async fn serve(client: Peer<'_>, cx: Ctx<'_>, root: &Root, req: &FileRequest<'_>) -> Served {
    let head_only = match req.method {
        "GET" => false,
        "HEAD" => true,
        other => {
            let why = format!("method {other} on a static route");
            let out = small(405, "Allow: GET, HEAD\r\n", false);
            return send_small(client, cx, 405, out, why).await;
        }
    };
    let found = match find(root, req.path) {
        Ok(found) => found,
        Err(Refused { status, why }) => {
            let out = small(status, "", head_only);
            return send_small(client, cx, status, out, why).await;
        }
    };
    let (file, meta, name) = match found {
        Found::Redirect(location) => {
            let extra = format!("Location: {location}\r\n");
            let out = small(301, &extra, head_only);
            let sent = cx.write_all(client, &out.bytes).await;
            return Served {
                status: 301,
                bytes: if sent.is_ok() { out.body } else { 0 },
                why: sent.err().map(gone),
            };
        }
        Found::File { file, meta, name } => (file, meta, name),
    };
    let mtime = meta.mtime();
    let last_modified = http_date(mtime);
    if not_modified(mtime, req.if_modified_since) {
        let head = format!(
            "HTTP/1.1 304 Not Modified\r\nLast-Modified: {last_modified}\r\nConnection: close\r\n\r\n"
        );
        let sent = cx.write_all(client, head.as_bytes()).await;
        return Served {
            status: 304,
            bytes: 0,
            why: sent.err().map(gone),
        };
    }
    let size = meta.len();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {size}\r\nLast-Modified: {last_modified}\r\nConnection: close\r\n\r\n",
        content_type(&name)
    );
    let mut served = Served {
        status: 200,
        bytes: 0,
        why: None,
    };
    if let Err(e) = cx.write_all(client, head.as_bytes()).await {
        served.why = Some(gone(e));
        return served;
    }
    if head_only || size == 0 {
        return served;
    }
    let (bytes, why) = send_body(client, cx, file, size).await;
    served.bytes = bytes;
    served.why = why;
    served
}

/// What a path names, once opened.
enum Found {
    /// A regular file, its metadata, and the name its type is told by.
    File {
        file: std::fs::File,
        meta: std::fs::Metadata,
        name: String,
    },
    /// A directory asked for without its trailing slash: where it lives.
    Redirect(String),
}

/// Why a path cannot be served.
struct Refused {
    status: u16,
    why: String,
}

/// Open what `path` names beneath `root` (blocking: `openat2` and `fstat`).
fn find(root: &Root, path: &str) -> Result<Found, Refused> {
    let rel = path.strip_prefix('/').unwrap_or(path);
    let rel = if rel.is_empty() || rel.ends_with('/') {
        format!("{rel}index.html")
    } else {
        rel.to_owned()
    };
    let file = root.open_file(&rel).map_err(|e| refused(e, &rel))?;
    let meta = file.metadata().map_err(|e| refused(e, &rel))?;
    if meta.is_dir() && !path.ends_with('/') {
        return Ok(Found::Redirect(format!("{}/", path::encode(path))));
    }
    if !meta.is_file() {
        return Err(Refused {
            status: 404,
            why: format!("not a regular file: {rel}"),
        });
    }
    Ok(Found::File {
        file,
        meta,
        name: rel,
    })
}

/// The answer to a failed open.
fn refused(err: io::Error, rel: &str) -> Refused {
    let (status, why) = match err.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG) => (404, "no such file"),
        Some(libc::EXDEV) => (404, "symlink leads outside the root"),
        Some(libc::ELOOP) => (404, "symlink leads outside the root or loops"),
        Some(libc::EACCES | libc::EPERM) => (403, "permission denied"),
        _ => {
            return Refused {
                status: 500,
                why: format!("cannot open {rel}: {err}"),
            }
        }
    };
    Refused {
        status,
        why: format!("{why}: {rel}"),
    }
}

/// Send `size` bytes of `file`, a chunk at a time through one buffer.
/// Returns the bytes sent and, if it stopped short, why.
async fn send_body(
    client: Peer<'_>,
    cx: Ctx<'_>,
    file: std::fs::File,
    size: u64,
) -> (u64, Option<String>) {
    let file = match monoio::fs::File::from_std(file) {
        Ok(file) => file,
        Err(e) => return (0, Some(format!("cannot read the file: {e}"))),
    };
    // Reads fill the Vec's capacity and set its length; it is reused for
    // every chunk. With io_uring the read is a ring operation; with the
    // epoll driver it is a plain `pread` on this thread.
    let mut buf = Vec::with_capacity(size.min(CHUNK as u64) as usize);
    let mut sent = 0u64;
    while sent < size {
        let (res, back) = file.read_at(buf, sent).await;
        buf = back;
        let n = match res {
            // Never send more than Content-Length promised, if it grew.
            Ok(n) if n > 0 => n.min((size - sent) as usize),
            Ok(_) => {
                let why = format!("file shrank while being sent ({sent} of {size} bytes)");
                return (sent, Some(why));
            }
            Err(e) => return (sent, Some(format!("read failed after {sent} bytes: {e}"))),
        };
        if let Err(e) = cx.write_all(client, &buf[..n]).await {
            return (sent, Some(gone(e)));
        }
        sent += n as u64;
    }
    (sent, None)
}

fn gone(e: io::Error) -> String {
    format!("client went away: {e}")
}

/// A small answer: its bytes, and how many of them are body.
struct Small {
    bytes: Vec<u8>,
    body: u64,
}

/// The head (and, unless `head_only`, the one-line body) of a short answer,
/// like [`crate::proto::http::status::Status::response`]. The body says no more
/// than the status: why a file is missing is for the log, not the client.
fn small(status: u16, extra_headers: &str, head_only: bool) -> Small {
    let body = format!("{status} {}\n", reason_of(status));
    Small {
        bytes: plain_answer(status, extra_headers, &body, head_only),
        body: if head_only { 0 } else { body.len() as u64 },
    }
}

async fn send_small(client: Peer<'_>, cx: Ctx<'_>, status: u16, out: Small, why: String) -> Served {
    match cx.write_all(client, &out.bytes).await {
        Ok(()) => Served {
            status,
            bytes: out.body,
            why: Some(why),
        },
        Err(e) => Served {
            status,
            bytes: 0,
            why: Some(format!("{why}; {}", gone(e))),
        },
    }
}

/// The `Content-Type` of a file, by its name's extension (ASCII
/// case-insensitive); `application/octet-stream` for anything else.
pub fn content_type(name: &str) -> &'static str {
    let Some(ext) = Path::new(name).extension().and_then(|e| e.to_str()) else {
        return "application/octet-stream";
    };
    const TYPES: &[(&str, &str)] = &[
        ("html", "text/html; charset=utf-8"),
        ("htm", "text/html; charset=utf-8"),
        ("css", "text/css; charset=utf-8"),
        ("js", "text/javascript; charset=utf-8"),
        ("mjs", "text/javascript; charset=utf-8"),
        ("json", "application/json; charset=utf-8"),
        ("map", "application/json; charset=utf-8"),
        ("txt", "text/plain; charset=utf-8"),
        ("md", "text/markdown; charset=utf-8"),
        ("csv", "text/csv; charset=utf-8"),
        ("xml", "application/xml; charset=utf-8"),
        ("svg", "image/svg+xml; charset=utf-8"),
        ("png", "image/png"),
        ("jpg", "image/jpeg"),
        ("jpeg", "image/jpeg"),
        ("gif", "image/gif"),
        ("ico", "image/x-icon"),
        ("webp", "image/webp"),
        ("avif", "image/avif"),
        ("wasm", "application/wasm"),
        ("pdf", "application/pdf"),
        ("woff", "font/woff"),
        ("woff2", "font/woff2"),
        ("ttf", "font/ttf"),
        ("otf", "font/otf"),
        ("mp4", "video/mp4"),
        ("webm", "video/webm"),
        ("mp3", "audio/mpeg"),
        ("ogg", "audio/ogg"),
        ("wav", "audio/wav"),
    ];
    TYPES
        .iter()
        .find(|(e, _)| e.eq_ignore_ascii_case(ext))
        .map_or("application/octet-stream", |&(_, t)| t)
}

/// Should a file last modified at `mtime` (seconds since the epoch) be
/// answered `304 Not Modified` to this `If-Modified-Since`? Only if the
/// value is an IMF-fixdate (the other two obsolete formats are ignored, as
/// is anything unparsable) and the file is not newer than it.
fn not_modified(mtime: i64, if_modified_since: Option<&[u8]>) -> bool {
    if_modified_since
        .and_then(|v| parse_http_date(crate::proto::http::trim(v)))
        .is_some_and(|since| mtime <= since)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::tunnel::Scratch;
    use std::path::PathBuf;

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("a/b/INDEX.HTM"), "text/html; charset=utf-8");
        assert_eq!(content_type("app.mjs"), "text/javascript; charset=utf-8");
        assert_eq!(
            content_type("app.js.map"),
            "application/json; charset=utf-8"
        );
        assert_eq!(content_type("logo.svg"), "image/svg+xml; charset=utf-8");
        assert_eq!(content_type("photo.JPEG"), "image/jpeg");
        assert_eq!(content_type("font.woff2"), "font/woff2");
        assert_eq!(content_type("m.wasm"), "application/wasm");
        assert_eq!(content_type("data.csv"), "text/csv; charset=utf-8");
        assert_eq!(content_type("README.md"), "text/markdown; charset=utf-8");
        assert_eq!(content_type("archive.tar.gz"), "application/octet-stream");
        assert_eq!(content_type("Makefile"), "application/octet-stream");
        assert_eq!(
            content_type(".html"),
            "application/octet-stream",
            "a dotfile"
        );
        assert_eq!(content_type("dir.html/x"), "application/octet-stream");
        assert_eq!(content_type("x."), "application/octet-stream");
    }

    #[test]
    fn not_modified_when_the_file_is_not_newer() {
        let date = Some(&b"Sun, 06 Nov 1994 08:49:37 GMT"[..]);
        assert!(not_modified(784_111_777, date), "same second");
        assert!(not_modified(784_111_000, date), "older");
        assert!(!not_modified(784_111_778, date), "a second newer");
        assert!(not_modified(
            784_111_777,
            Some(b"  Sun, 06 Nov 1994 08:49:37 GMT\t")
        ));
        assert!(!not_modified(0, None));
        assert!(
            !not_modified(0, Some(b"Sunday, 06-Nov-94 08:49:37 GMT")),
            "ignored"
        );
        assert!(!not_modified(0, Some(b"garbage")));
    }

    #[test]
    fn small_answers_are_well_formed() {
        let s = small(405, "Allow: GET, HEAD\r\n", false);
        let text = String::from_utf8(s.bytes).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 23\r\nAllow: GET, HEAD\r\nConnection: close\r\n\r\n405 Method Not Allowed\n"
        );
        assert_eq!(s.body, 23);
        let s = small(404, "", true);
        assert!(String::from_utf8(s.bytes)
            .unwrap()
            .ends_with("Content-Length: 14\r\nConnection: close\r\n\r\n"));
        assert_eq!(s.body, 0);
    }

    /// A static tree for [`serve`]: ROOT/{index.html, a.css, big.bin (1 MiB),
    /// empty.txt, sub/index.html, bare/ (no index), fifo, inside -> a.css,
    /// passwd -> /etc/passwd, out -> ../outside}. Removed on drop.
    struct Site(PathBuf);

    impl Site {
        fn new(name: &str) -> Site {
            use std::os::unix::fs::symlink;
            let base =
                std::env::temp_dir().join(format!("ringway-files-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&base);
            let root = base.join("root");
            std::fs::create_dir_all(root.join("sub")).unwrap();
            std::fs::create_dir_all(root.join("bare")).unwrap();
            std::fs::write(base.join("outside"), b"secret").unwrap();
            std::fs::write(root.join("index.html"), b"<h1>home</h1>").unwrap();
            std::fs::write(root.join("a.css"), b"body{}").unwrap();
            std::fs::write(root.join("empty.txt"), b"").unwrap();
            std::fs::write(root.join("sub/index.html"), b"sub").unwrap();
            std::fs::write(root.join("big.bin"), big()).unwrap();
            symlink("a.css", root.join("inside")).unwrap();
            symlink("/etc/passwd", root.join("passwd")).unwrap();
            symlink("../outside", root.join("out")).unwrap();
            let status = std::process::Command::new("mkfifo")
                .arg(root.join("fifo"))
                .status();
            assert!(status.is_ok_and(|s| s.success()));
            Site(base)
        }

        fn root(&self) -> Root {
            Root::open(&self.0.join("root")).unwrap()
        }
    }

    impl Drop for Site {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// 1 MiB that is not periodic in any chunk size.
    fn big() -> Vec<u8> {
        let mut x = 0x1234_5678u32;
        (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// What a client got: status line and headers, and the body.
    struct Got {
        head: String,
        body: Vec<u8>,
        served: Served,
    }

    impl Got {
        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().skip(1).find_map(|l| {
                let (n, v) = l.split_once(": ")?;
                n.eq_ignore_ascii_case(name).then_some(v)
            })
        }
    }

    /// Run `serve` for one request over a real TCP connection on 127.0.0.1,
    /// with the epoll driver or io_uring; a thread reads what arrives until
    /// the connection closes.
    fn fetch(uring: bool, root: &Root, method: &str, path: &str, ims: Option<&str>) -> Got {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            client.read_to_end(&mut all).unwrap();
            all
        });
        let run = async {
            use std::os::fd::AsRawFd;
            let stream = monoio::net::TcpStream::from_std(server).unwrap();
            let s = std::time::Duration::from_secs(10);
            let sweeper = std::rc::Rc::new(crate::io::sweep::Sweeper::new(
                crate::io::sweep::Timeouts::all(s),
            ));
            let track = sweeper.register(stream.as_raw_fd());
            let scratch = Scratch::new(65536, false, false);
            let pipes = crate::io::pipes::Pipes::new(0);
            let cx = Ctx {
                scratch: &scratch,
                track: &track,
                pipes: &pipes,
            };
            let req = FileRequest {
                method,
                path,
                if_modified_since: ims.map(str::as_bytes),
            };
            serve(Peer::plain(&stream), cx, root, &req).await
        };
        let served = if uring {
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .build()
                .unwrap()
                .block_on(run)
        } else {
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .build()
                .unwrap()
                .block_on(run)
        };
        let all = reader.join().unwrap();
        let split = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a whole head");
        Got {
            head: String::from_utf8(all[..split].to_vec()).unwrap(),
            body: all[split + 4..].to_vec(),
            served,
        }
    }

    fn serve_everything(uring: bool) {
        let site = Site::new(if uring { "uring" } else { "epoll" });
        let root = site.root();
        let get = |path: &str| fetch(uring, &root, "GET", path, None);

        let g = get("/a.css");
        assert!(g.head.starts_with("HTTP/1.1 200 OK\r\n"), "{}", g.head);
        assert_eq!(g.body, b"body{}");
        assert_eq!(g.header("Content-Type"), Some("text/css; charset=utf-8"));
        assert_eq!(g.header("Content-Length"), Some("6"));
        assert_eq!(g.header("Connection"), Some("close"));
        let mtime = std::fs::metadata(site.0.join("root/a.css"))
            .unwrap()
            .mtime();
        let last_modified = http_date(mtime);
        assert_eq!(g.header("Last-Modified"), Some(last_modified.as_str()));
        assert_eq!((g.served.status, g.served.bytes), (200, 6));
        assert!(g.served.why.is_none());

        let g = get("/");
        assert_eq!((g.served.status, &g.body[..]), (200, &b"<h1>home</h1>"[..]));
        assert_eq!(g.header("Content-Type"), Some("text/html; charset=utf-8"));
        assert_eq!(get("/sub/").body, b"sub");
        assert_eq!(get("/inside").body, b"body{}", "a symlink inside the root");
        let g = get("/empty.txt");
        assert_eq!(
            (g.served.status, g.header("Content-Length")),
            (200, Some("0"))
        );
        assert!(g.body.is_empty());

        let g = get("/sub");
        assert!(
            g.head.starts_with("HTTP/1.1 301 Moved Permanently\r\n"),
            "{}",
            g.head
        );
        assert_eq!(g.header("Location"), Some("/sub/"));
        let g = get("/bare");
        assert_eq!(
            (g.served.status, g.header("Location")),
            (301, Some("/bare/"))
        );
        let g = get("/bare/");
        assert_eq!(g.served.status, 404, "a directory without index.html");
        assert_eq!(g.body, b"404 Not Found\n");

        let g = fetch(uring, &root, "GET", "/a.css", Some(&last_modified));
        assert!(
            g.head.starts_with("HTTP/1.1 304 Not Modified\r\n"),
            "{}",
            g.head
        );
        assert_eq!(g.header("Last-Modified"), Some(last_modified.as_str()));
        assert!(g.body.is_empty());
        let older = http_date(mtime - 1);
        let g = fetch(uring, &root, "GET", "/a.css", Some(&older));
        assert_eq!((g.served.status, &g.body[..]), (200, &b"body{}"[..]));

        let g = fetch(uring, &root, "HEAD", "/a.css", None);
        assert!(g.head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert_eq!(g.header("Content-Length"), Some("6"));
        assert!(g.body.is_empty());
        assert_eq!(g.served.bytes, 0);
        let g = fetch(uring, &root, "HEAD", "/missing", None);
        assert_eq!((g.served.status, g.body.len()), (404, 0));

        for method in ["POST", "PUT", "DELETE", "get"] {
            let g = fetch(uring, &root, method, "/a.css", None);
            assert!(g.head.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
            assert_eq!(g.header("Allow"), Some("GET, HEAD"));
        }

        let g = get("/missing.html");
        assert_eq!(g.served.status, 404);
        assert_eq!(g.served.why.as_deref(), Some("no such file: missing.html"));
        assert_eq!(get("/a.css/x").served.status, 404);
        assert_eq!(get("/fifo").served.status, 404, "not a regular file");
        for escape in ["/passwd", "/out"] {
            let g = get(escape);
            assert_eq!(g.served.status, 404, "{escape}");
            let why = g.served.why.unwrap();
            assert!(why.contains("symlink leads outside the root"), "{why}");
            assert_eq!(g.body, b"404 Not Found\n", "nothing about why");
        }

        let g = get("/big.bin");
        assert_eq!(g.header("Content-Length"), Some("1048576"));
        assert_eq!(g.header("Content-Type"), Some("application/octet-stream"));
        assert!(g.body == big(), "1 MiB arrives byte-exact");
        assert_eq!(g.served.bytes, 1 << 20);
    }

    #[test]
    fn serve_with_the_epoll_driver() {
        serve_everything(false);
    }

    #[test]
    fn serve_with_io_uring() {
        if monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .build()
            .is_err()
        {
            eprintln!("io_uring is not available here; skipped");
            return;
        }
        serve_everything(true);
    }
}
