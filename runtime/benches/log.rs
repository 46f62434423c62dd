//! Criterion benches of the durable log: append of 100-byte records in batches of
//! 1,000 with `os` acks; the same with `fsync` acks from 16 concurrent producers
//! (group commit); sequential read from the page cache. `flowc bench log` runs the
//! same workloads at full size next to the file system's limits.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flow_runtime::log::{Access, Acks, LogDir, NewRecord, TopicConfig};

const RECORD_BYTES: usize = 100;
const BATCH: usize = 1000;

fn batch() -> Vec<NewRecord> {
    let v = Bytes::from(vec![b'x'; RECORD_BYTES]);
    (0..BATCH).map(|_| NewRecord::new(1_700_000_000_000, None, v.clone())).collect()
}

fn config() -> TopicConfig {
    // Size retention keeps a long bench from filling the disk.
    TopicConfig {
        segment_bytes: 64 << 20,
        retention_ms: None,
        retention_bytes: Some(512 << 20),
        ..TopicConfig::default()
    }
}

fn append_os(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LogDir::new(tmp.path());
    dir.create_topic("b", &config()).unwrap();
    let t = dir.open_topic("b", Access::ReadWrite).unwrap();
    let p = t.partition(0).unwrap();
    let recs = batch();
    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("append_os_1000x100B", |b| b.iter(|| p.append(black_box(&recs), Acks::Os).unwrap()));
    g.finish();
}

fn append_fsync_16(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LogDir::new(tmp.path());
    dir.create_topic("b", &config()).unwrap();
    let t = dir.open_topic("b", Access::ReadWrite).unwrap();
    let recs = batch();
    const PRODUCERS: u64 = 16;
    let mut g = c.benchmark_group("log");
    // One iteration = each of 16 producers appends one fsync-acked batch of 1000.
    g.throughput(Throughput::Elements(PRODUCERS * BATCH as u64));
    g.bench_function("append_fsync_16_producers_1000x100B", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..PRODUCERS {
                    let (t, recs) = (&t, &recs);
                    s.spawn(move || {
                        let p = t.partition(0).unwrap();
                        for _ in 0..iters {
                            p.append(recs, Acks::Fsync).unwrap();
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.finish();
}

fn read_page_cache(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LogDir::new(tmp.path());
    dir.create_topic("b", &config()).unwrap();
    let t = dir.open_topic("b", Access::ReadWrite).unwrap();
    let p = t.partition(0).unwrap();
    let recs = batch();
    while p.info().size_bytes < 256 << 20 {
        p.append(&recs, Acks::Os).unwrap();
    }
    let bytes = p.info().size_bytes;
    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("read_256MiB_page_cache", |b| {
        b.iter(|| {
            let mut off = p.start_offset();
            let end = p.end_offset();
            let mut n = 0usize;
            while off < end {
                for batch in p.read(off, 1 << 20).unwrap() {
                    n += batch.bytes().len();
                    off = batch.last_offset() + 1;
                }
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = append_os, append_fsync_16, read_page_cache
}
criterion_main!(benches);
