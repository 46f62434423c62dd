//! Hot paths of a running pipeline, on one core (see `flow_runtime::bench`):
//!
//! - `nexmark/q0|q1|q2|q14`: the built-in Nexmark bid generator feeding the query's
//!   fused stage (JIT), results dropped (a null sink) — events per second;
//! - `ingest/json_lines`: JSON lines decoded into rows (the file source's work) — bytes
//!   per second;
//! - `windows/tumbling|session_memory|rocksdb`: count, sum and max by key over 100,000
//!   keys from in-memory batches — events per second (`flowc bench windows` also
//!   reports the state's bytes per window);
//! - `snapshots/tumbling_full|tumbling_restore`: a checkpoint's full snapshot of the
//!   open tumbling windows of 100,000 keys, and restoring it — windows per second
//!   (`flowc bench checkpoints` also times deltas and the snapshot's share of a run).
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

fn windows(c: &mut Criterion) {
    const EVENTS: u64 = 2_000_000;
    let mut g = c.benchmark_group("windows");
    g.throughput(Throughput::Elements(EVENTS));
    g.sample_size(10);
    let dir = tempfile::tempdir().expect("dir");
    for (name, window) in [("tumbling", "tumbling(60s)"), ("session", "session(gap: 5s)")] {
        let w = bench::WindowBench::new(window, 100_000, EVENTS, true).expect("prepares");
        g.bench_function(format!("{name}_memory"), |b| b.iter(|| w.run(None).expect("runs")));
        let db = dir.path().join(name);
        g.bench_function(format!("{name}_rocksdb"), |b| b.iter(|| w.run(Some((&db, usize::MAX))).expect("runs")));
        // The interpreter and the Rust accumulator updater: the JIT's share.
        let w = bench::WindowBench::new(window, 100_000, EVENTS, false).expect("prepares");
        g.bench_function(format!("{name}_memory_interpreted"), |b| b.iter(|| w.run(None).expect("runs")));
    }
    g.finish();
}

/// A checkpoint's full snapshot of window state, and restoring it: the open tumbling
/// windows of 100,000 keys.
fn snapshots(c: &mut Criterion) {
    let w = bench::WindowBench::new("tumbling(60s)", 100_000, 2_000_000, true).expect("prepares");
    let mut fed = w.fed_windows().expect("feeds");
    let windows = fed.windows() as u64;
    let bytes = fed.snapshot().expect("snapshot");
    let mut g = c.benchmark_group("snapshots");
    g.throughput(Throughput::Elements(windows));
    g.sample_size(20);
    g.bench_function("tumbling_full", |b| b.iter(|| fed.snapshot().expect("snapshot")));
    g.bench_function("tumbling_restore", |b| b.iter(|| fed.restore_fresh(&bytes).expect("restores")));
    g.finish();
}

criterion_group!(benches, nexmark, ingest, windows, snapshots);
criterion_main!(benches);
