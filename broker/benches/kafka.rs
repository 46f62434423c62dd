//! Criterion benches of the Kafka protocol's hot paths in `flowc serve`:
//! - `produce_frame_acks1_1000x100B`: one Produce request of a batch of 1,000 100-byte
//!   records, decoded and handled (batch validation, idempotence check, append to the
//!   page cache) without a socket;
//! - `produce_loopback_acks_all`: the low-cost drivers of `flowc bench kafka` over
//!   loopback, 4 idempotent connections with 5 requests in flight, acks=all (fsynced);
//! - `fetch_loopback_1MiB`: fetching what was produced, 1 MiB per request.
//!
//! `flowc bench kafka` runs the loopback cases at full size beside the log's own
//! fsync-acked append.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flow_broker::bench::{create_topic, fetch, produce, record_batch, ProduceLoad};
use flow_broker::codec::decode_frame;
use flow_broker::handlers::{handle, Broker};
use flow_broker::Config;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader, TopicName};
use kafka_protocol::protocol::{encode_request_header_into_buffer, Encodable, StrBytes};

#[global_allocator]
static ALLOC: flow_broker::alloc::GuardedAlloc = flow_broker::alloc::GuardedAlloc;

const RECORDS: usize = 1000;
/// Size retention keeps a long bench from filling the disk.
const RETENTION: &[(&str, &str)] = &[("retention.bytes", "536870912"), ("segment.bytes", "67108864")];

/// A Produce v7 frame body (after the size) of one non-idempotent batch, acks=1.
fn produce_frame(topic: &str) -> Bytes {
    let batch = record_batch(RECORDS, 100, -1, -1, -1).unwrap();
    let req = ProduceRequest::default().with_acks(1).with_timeout_ms(30_000).with_topic_data(vec![
        TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default().with_index(0).with_records(Some(batch))]),
    ]);
    let h = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(7)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("bench")));
    let mut buf = BytesMut::new();
    encode_request_header_into_buffer(&mut buf, &h).unwrap();
    req.encode(&mut buf, 7).unwrap();
    buf.freeze()
}

fn produce_frame_bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    // Multi-threaded so the listener answers create_topic while this thread blocks.
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let handle_ = rt.block_on(flow_broker::start(Config::new(tmp.path(), "127.0.0.1:0".parse().unwrap()))).unwrap();
    create_topic(handle_.local_addr(), "frames", 1, RETENTION).unwrap();
    let broker: &Broker = handle_.broker();
    let frame = produce_frame("frames");
    let local = handle_.local_addr();
    let mut g = c.benchmark_group("kafka");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function("produce_frame_acks1_1000x100B", |b| {
        b.iter(|| {
            let decoded = decode_frame(black_box(frame.clone())).unwrap();
            let resp = rt.block_on(handle(broker, decoded, local)).unwrap();
            black_box(resp)
        })
    });
    g.finish();
    rt.block_on(handle_.shutdown());
}

fn loopback_benches(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let handle_ = rt.block_on(flow_broker::start(Config::new(tmp.path(), "127.0.0.1:0".parse().unwrap()))).unwrap();
    let addr = handle_.local_addr();
    let load = ProduceLoad { records: 200_000, ..ProduceLoad::default() };
    let mut g = c.benchmark_group("kafka");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(load.records));
    let mut n = 0;
    g.bench_function("produce_loopback_acks_all", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let topic = format!("p{n}");
                create_topic(addr, &topic, 1, RETENTION).unwrap();
                total += produce(addr, &topic, &load).unwrap().elapsed;
            }
            total
        })
    });
    create_topic(addr, "f", 1, &[("retention.ms", "-1")]).unwrap();
    let produced = produce(addr, "f", &load).unwrap().records;
    g.bench_function("fetch_loopback_1MiB", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| fetch(addr, "f", produced, 1 << 20).unwrap().elapsed).sum())
    });
    g.finish();
    rt.block_on(handle_.shutdown());
}

criterion_group!(benches, produce_frame_bench, loopback_benches);
criterion_main!(benches);
