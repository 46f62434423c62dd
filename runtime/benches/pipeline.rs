//! Hot paths of a running pipeline, on one core (see `flow_runtime::bench`):
//!
//! - `nexmark/q0|q1|q2|q14`: the built-in Nexmark bid generator feeding the query's
//!   fused stage (JIT), results dropped (a null sink) — events per second;
//! - `ingest/json_lines`: JSON lines decoded into rows (the file source's work) — bytes
//!   per second.
//!
//! Run with `cargo bench -p flow-runtime --bench pipeline`; `flowc bench nexmark` and
//! `flowc bench ingest` run the same code without criterion.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flow_runtime::bench::{self, Nexmark, NEXMARK_QUERIES};

fn nexmark(c: &mut Criterion) {
    const EVENTS: u64 = 1 << 20;
    let mut g = c.benchmark_group("nexmark");
    g.throughput(Throughput::Elements(EVENTS));
    g.sample_size(10);
    for (name, _) in NEXMARK_QUERIES {
        let q = Nexmark::new(name, true).expect("compiles");
        g.bench_function(BenchmarkId::from_parameter(name), |b| b.iter(|| q.run(EVENTS).expect("runs")));
    }
    g.finish();
}

fn ingest(c: &mut Criterion) {
    // 100,000 transactions as JSON lines (about 11 MB), as a file source reads them.
    let (layout, text) = bench::transactions_json(100_000).expect("input");
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.sample_size(20);
    g.bench_function("json_lines", |b| b.iter(|| bench::ingest(&layout, &text).expect("decodes")));
    g.finish();
}

criterion_group!(benches, nexmark, ingest);
criterion_main!(benches);
