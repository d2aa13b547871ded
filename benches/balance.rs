//! Backend choice per connection: one `GroupBalancer::next` (with the
//! attempt it needs and the release that follows) for each method, over
//! groups of 1, 4 and 32 servers, and with half of them marked failed.
//!
//! `cargo bench --bench balance`; CI only builds it.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use ringway::policy::balance::{GroupBalancer, Method, ServerParams};

const METHODS: [(&str, Method); 3] = [
    ("round-robin", Method::RoundRobin),
    ("least-conn", Method::LeastConn),
    (
        "ip-hash",
        Method::IpHash {
            full_address: false,
        },
    ),
];

/// Weights 1, 2, 3, 1, 2, 3, ...: the weighted paths.
fn servers(n: usize) -> Vec<ServerParams> {
    (0..n)
        .map(|i| ServerParams {
            weight: 1 + (i % 3) as u32,
            ..ServerParams::default()
        })
        .collect()
}

/// One connection's first choice, released at once so that least-conn's
/// counts stay level.
fn choose(g: &GroupBalancer, client: IpAddr, now: Instant) -> Option<usize> {
    let mut attempt = g.attempt(client);
    let chosen = g.next(&mut attempt, now);
    if let Some(i) = chosen {
        g.release(i);
    }
    chosen
}

fn next(c: &mut Criterion) {
    let now = Instant::now();
    let clients: Vec<IpAddr> = (0..=255u8)
        .map(|x| IpAddr::V4(Ipv4Addr::new(10, x, 255 - x, 1)))
        .collect();
    for (name, method) in METHODS {
        for n in [1usize, 4, 32] {
            let g = GroupBalancer::new(&servers(n), method);
            let mut k = 0;
            c.bench_function(&format!("balance/{name}/next-of-{n}"), |bench| {
                bench.iter(|| {
                    k = (k + 1) % clients.len();
                    black_box(choose(&g, black_box(clients[k]), black_box(now)))
                })
            });
        }
        // Half of the servers marked failed: the passes skip them, ip-hash
        // rehashes past them.
        let g = GroupBalancer::new(&servers(32), method);
        for i in (0..32).step_by(2) {
            let mut attempt = g.attempt(clients[0]);
            while let Some(j) = g.next(&mut attempt, now) {
                if j == i {
                    g.failed(i, now);
                    break;
                }
                g.release(j);
            }
        }
        let mut k = 0;
        c.bench_function(&format!("balance/{name}/next-of-32-half-failed"), |bench| {
            bench.iter(|| {
                k = (k + 1) % clients.len();
                black_box(choose(&g, black_box(clients[k]), black_box(now)))
            })
        });
    }
}

criterion_group!(benches, next);
criterion_main!(benches);
