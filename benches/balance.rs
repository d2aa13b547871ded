//! Backend choice per connection: the round-robin plan with failure marks.
//!
//! `cargo bench --bench balance`; CI only builds it.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ringway::balance::Balancer;

fn pick(c: &mut Criterion) {
    let now = Instant::now();
    for n in [1usize, 4, 32] {
        let b = Balancer::new(n, Duration::from_secs(10));
        c.bench_function(&format!("balance/first-of-{n}"), |bench| {
            bench.iter(|| black_box(b.plan(black_box(now)).next()))
        });
    }
    // Half of the backends marked failed: the plan skips them.
    let b = Balancer::new(32, Duration::from_secs(10));
    for i in (0..32).step_by(2) {
        b.mark_failed(i, now);
    }
    c.bench_function("balance/first-of-32-half-failed", |bench| {
        bench.iter(|| black_box(b.plan(black_box(now)).next()))
    });
}

criterion_group!(benches, pick);
criterion_main!(benches);
