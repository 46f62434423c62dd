//! Model-based property test: random sequences of appends, reads, time lookups,
//! segment rolls, retention passes (with an injected clock) and reopen-from-disk,
//! checked against an in-memory model of the partition.
//!
//! The model keeps every record and its own list of segment boundaries (rolling by
//! size exactly as documented, so retention deletes the same whole segments); the
//! retention rule itself is the pure function tested in `retention.rs`.

use std::sync::Arc;

use bytes::Bytes;
use flow_runtime::log::batch::encode_batch;
use flow_runtime::log::io::{ManualClock, StdIo};
use flow_runtime::log::retention::{segments_to_delete, RetentionPolicy, SegmentSummary};
use flow_runtime::log::{Access, Acks, LogDir, LogError, NewRecord, Topic, TopicConfig};
use proptest::prelude::*;

const SEGMENT_BYTES: u64 = 2048;
const RETENTION_MS: i64 = 10_000;
const RETENTION_BYTES: u64 = 6 * 1024;

#[derive(Clone, Debug)]
enum Op {
    /// Records with (value length, timestamp offset from now).
    Append(Vec<(usize, i64)>),
    Read {
        at: u8,
        max_bytes: usize,
    },
    TimeLookup(i64),
    Roll,
    Advance(i64),
    Retention,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec((0usize..300, -20_000i64..1000), 1..8).prop_map(Op::Append),
        3 => (any::<u8>(), 1usize..4096).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => (-30_000i64..2000).prop_map(Op::TimeLookup),
        1 => Just(Op::Roll),
        1 => (0i64..8000).prop_map(Op::Advance),
        1 => Just(Op::Retention),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone)]
struct ModelSegment {
    base: u64,
    size: u64,
    max_ts: i64,
}

#[derive(Debug, Default)]
struct Model {
    /// (offset, timestamp, value); offsets dense from `start`.
    records: Vec<(u64, i64, Bytes)>,
    start: u64,
    segments: Vec<ModelSegment>,
}

impl Model {
    fn end(&self) -> u64 {
        self.start + self.records.len() as u64
    }
    /// Append as the log does: roll first if the batch does not fit (a roll runs a
    /// retention pass before the batch is written).
    fn append(&mut self, recs: &[NewRecord], now: i64) {
        let len = encode_batch(0, recs).len() as u64;
        let active = self.segments.last().unwrap();
        if active.size > 0 && active.size + len > SEGMENT_BYTES {
            self.roll();
            self.retention(now);
        }
        let end = self.end();
        let active = self.segments.last_mut().unwrap();
        for (i, r) in recs.iter().enumerate() {
            active.max_ts = active.max_ts.max(r.timestamp_ms);
            self.records.push((end + i as u64, r.timestamp_ms, r.value.clone().unwrap()));
        }
        active.size += len;
    }
    /// Seal the active segment unless it is empty; returns whether it rolled.
    fn roll(&mut self) -> bool {
        if self.segments.last().unwrap().size == 0 {
            return false;
        }
        let base = self.end();
        self.segments.push(ModelSegment { base, size: 0, max_ts: i64::MIN });
        true
    }
    fn retention(&mut self, now: i64) {
        let total = self.segments.iter().map(|s| s.size).sum();
        let sealed: Vec<SegmentSummary> = self.segments[..self.segments.len() - 1]
            .iter()
            .map(|s| SegmentSummary { base_offset: s.base, size_bytes: s.size, max_timestamp_ms: s.max_ts })
            .collect();
        let policy = RetentionPolicy { retention_ms: Some(RETENTION_MS), retention_bytes: Some(RETENTION_BYTES) };
        let n = segments_to_delete(&sealed, total, now, policy);
        self.segments.drain(..n);
        let new_start = self.segments[0].base;
        self.records.drain(..(new_start - self.start) as usize);
        self.start = new_start;
    }
}

fn open(dir: &LogDir) -> Topic {
    let t = dir.open_topic("m", Access::ReadWrite).unwrap();
    assert!(t.recovery_events().is_empty(), "a clean reopen needs no repair: {:?}", t.recovery_events());
    t
}

fn run(ops: Vec<Op>) {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let dir = LogDir::with_io(tmp.path(), Arc::new(StdIo), clock.clone());
    let cfg = TopicConfig {
        segment_bytes: SEGMENT_BYTES,
        index_interval_bytes: 300,
        retention_ms: Some(RETENTION_MS),
        retention_bytes: Some(RETENTION_BYTES),
        ..TopicConfig::default()
    };
    dir.create_topic("m", &cfg).unwrap();
    let mut topic = Some(open(&dir));
    let mut model = Model { segments: vec![ModelSegment { base: 0, size: 0, max_ts: i64::MIN }], ..Model::default() };
    let mut counter = 0u64;
    for op in ops {
        let t = topic.as_ref().unwrap();
        let p = t.partition(0).unwrap();
        match op {
            Op::Append(spec) => {
                let now = clock.now_ms_for_test();
                let recs: Vec<NewRecord> = spec
                    .iter()
                    .map(|&(len, dt)| {
                        counter += 1;
                        let mut v = format!("#{counter}:").into_bytes();
                        v.resize(v.len() + len, b'a' + (counter % 26) as u8);
                        NewRecord::new(now + dt, None, Bytes::from(v))
                    })
                    .collect();
                let a = p.append(&recs, Acks::Os).unwrap();
                assert_eq!(a.base_offset, model.end());
                model.append(&recs, now);
            }
            Op::Read { at, max_bytes } => {
                let span = model.end() - model.start + 1;
                let offset = model.start + u64::from(at) % span;
                let got = p.read_records(offset, max_bytes).unwrap();
                if offset == model.end() {
                    assert!(got.is_empty());
                } else {
                    assert!(!got.is_empty(), "a read returns at least one record");
                }
                for (i, r) in got.iter().enumerate() {
                    let (mo, mts, mv) = &model.records[(offset - model.start) as usize + i];
                    assert_eq!((r.offset, r.timestamp_ms, r.value.as_ref().unwrap()), (*mo, *mts, mv));
                }
                if model.start > 0 {
                    assert!(matches!(p.read(model.start - 1, 100), Err(LogError::OffsetOutOfRange { .. })));
                }
            }
            Op::TimeLookup(dt) => {
                let ts = clock.now_ms_for_test() + dt;
                let want = model.records.iter().find(|(_, t, _)| *t >= ts).map(|(o, _, _)| *o);
                assert_eq!(p.offset_for_time(ts).unwrap(), want, "first offset with timestamp >= {ts}");
            }
            Op::Roll => {
                p.roll().unwrap();
                if model.roll() {
                    model.retention(clock.now_ms_for_test());
                }
            }
            Op::Advance(ms) => clock.advance(ms),
            Op::Retention => {
                p.enforce_retention().unwrap();
                model.retention(clock.now_ms_for_test());
            }
            Op::Reopen => {
                drop(topic.take());
                topic = Some(open(&dir));
                model.retention(clock.now_ms_for_test());
            }
        }
        let t = topic.as_ref().unwrap();
        let info = t.partition(0).unwrap().info();
        assert_eq!((info.start_offset, info.end_offset), (model.start, model.end()));
        assert_eq!(info.segments, model.segments.len());
        assert_eq!(info.size_bytes, model.segments.iter().map(|s| s.size).sum::<u64>());
    }
    // Finally, everything the model holds reads back from a fresh open.
    drop(topic);
    let t = open(&dir);
    model.retention(clock.now_ms_for_test()); // opening runs a retention pass
    let p = t.partition(0).unwrap();
    assert_eq!(p.start_offset(), model.start);
    let mut off = model.start;
    while off < model.end() {
        for r in p.read_records(off, 4096).unwrap() {
            assert_eq!(r.value.as_ref().unwrap(), &model.records[(r.offset - model.start) as usize].2);
            off = r.offset + 1;
        }
    }
}

trait NowForTest {
    fn now_ms_for_test(&self) -> i64;
}
impl NowForTest for ManualClock {
    fn now_ms_for_test(&self) -> i64 {
        flow_runtime::log::io::Clock::now_ms(self)
    }
}

proptest! {
    // PROPTEST_CASES overrides the number of cases.
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48), ..ProptestConfig::default() })]
    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops);
    }
}
