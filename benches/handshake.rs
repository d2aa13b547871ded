//! The hot functions of a connection's start: parsing + rewriting a client's
//! upgrade request, and parsing + rewriting the backend's 101.
//!
//! `cargo bench --bench handshake`; CI only builds it (`cargo bench --no-run`).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringway::proto::http::{request, response};

const SMALL: &[u8] = b"GET /chat HTTP/1.1\r\n\
Host: example.com\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

/// What a browser sends: cookies, user agent, extensions, forwarded headers.
fn browser_request() -> Vec<u8> {
    let mut r = b"GET /socket/v2/stream?token=abcdef0123456789&room=lobby HTTP/1.1\r\n\
Host: chat.example.com\r\n\
Connection: keep-alive, Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://chat.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-GB,en;q=0.9,de;q=0.8\r\n\
Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
Sec-WebSocket-Protocol: graphql-ws, graphql-transport-ws\r\n\
X-Forwarded-For: 198.51.100.7, 203.0.113.20\r\n"
        .to_vec();
    r.extend_from_slice(b"Cookie: ");
    for i in 0..20 {
        r.extend_from_slice(
            format!("session_part_{i}=0123456789abcdef0123456789abcdef; ").as_bytes(),
        );
    }
    r.extend_from_slice(b"\r\n\r\n");
    r
}

const SWITCH: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
Sec-WebSocket-Protocol: graphql-ws\r\n\r\n";

fn handshake(c: &mut Criterion) {
    let client = request::ClientInfo {
        ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        proto: "http",
        trusted: &[],
    };
    let browser = browser_request();
    let mut g = c.benchmark_group("request");
    for (name, head) in [("small", SMALL), ("browser", browser.as_slice())] {
        g.throughput(Throughput::Bytes(head.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                request::prepare(black_box(head), 16 * 1024, &client)
                    .unwrap()
                    .unwrap()
            })
        });
    }
    g.finish();
    c.bench_function("response/101", |b| {
        b.iter(|| {
            response::prepare(black_box(SWITCH), 16 * 1024, true, false)
                .unwrap()
                .unwrap()
        })
    });
}

criterion_group!(benches, handshake);
criterion_main!(benches);
