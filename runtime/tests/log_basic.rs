//! Append, read, reopen, roll, time lookup, retention with an injected clock,
//! consumer groups, and the fault-injection cases: torn tail, flipped byte, fsync error.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use flow_runtime::log::io::{FaultyIo, ManualClock, StdIo};
use flow_runtime::log::partition::RecoveryEvent;
use flow_runtime::log::{Access, Acks, LogDir, LogError, NewRecord, TopicConfig};

fn rec(ts: i64, v: &str) -> NewRecord {
    NewRecord::new(ts, None, Bytes::copy_from_slice(v.as_bytes()))
}

fn small_config() -> TopicConfig {
    TopicConfig { segment_bytes: 4096, index_interval_bytes: 256, retention_ms: None, ..TopicConfig::default() }
}

fn values(p: &flow_runtime::log::Partition, from: u64) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut off = from;
    loop {
        let recs = p.read_records(off, 1000).unwrap();
        if recs.is_empty() {
            return out;
        }
        for r in recs {
            assert_eq!(r.offset, off, "offsets are dense");
            off += 1;
            out.push((r.offset, String::from_utf8(r.value.unwrap().to_vec()).unwrap()));
        }
    }
}

#[test]
fn append_read_roll_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LogDir::new(tmp.path());
    dir.create_topic("t", &small_config()).unwrap();
    assert!(matches!(dir.create_topic("t", &small_config()), Err(LogError::TopicExists(_))));
    let expected: Vec<(u64, String)> = (0..500).map(|i| (i, format!("value-{i}"))).collect();
    {
        let t = dir.open_topic("t", Access::ReadWrite).unwrap();
        let p = t.partition(0).unwrap();
        for chunk in expected.chunks(7) {
            let recs: Vec<NewRecord> = chunk.iter().map(|(i, v)| rec(1000 + *i as i64, v)).collect();
            let a = p.append(&recs, Acks::Os).unwrap();
            assert_eq!(a.base_offset, chunk[0].0);
            assert_eq!(a.last_offset, chunk.last().unwrap().0);
        }
        assert!(p.info().segments > 3, "small segments rolled: {:?}", p.info());
        assert_eq!(values(p, 0), expected);
        assert_eq!(values(p, 123), expected[123..].to_vec());
        assert!(matches!(dir.open_topic("t", Access::ReadWrite), Err(LogError::Locked(_))));
        assert!(matches!(p.read(501, 100), Err(LogError::OffsetOutOfRange { .. })));
    }
    let t = dir.open_topic("t", Access::ReadWrite).unwrap();
    assert!(t.recovery_events().is_empty(), "{:?}", t.recovery_events());
    let p = t.partition(0).unwrap();
    assert_eq!(p.end_offset(), 500);
    assert_eq!(values(p, 0), expected);
    // time lookup: timestamps are 1000 + offset
    assert_eq!(p.offset_for_time(0).unwrap(), Some(0));
    assert_eq!(p.offset_for_time(1250).unwrap(), Some(250));
    assert_eq!(p.offset_for_time(1499).unwrap(), Some(499));
    assert_eq!(p.offset_for_time(1500).unwrap(), None);
    // Appends continue after reopen.
    p.append(&[rec(5000, "after")], Acks::Fsync).unwrap();
    assert_eq!(values(p, 500), vec![(500, "after".to_string())]);
}

#[test]
fn missing_and_stale_indexes_are_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LogDir::new(tmp.path());
    dir.create_topic("t", &small_config()).unwrap();
    {
        let t = dir.open_topic("t", Access::ReadWrite).unwrap();
        let p = t.partition(0).unwrap();
        for i in 0..300 {
            p.append(&[rec(i, &format!("v{i}"))], Acks::Os).unwrap();
        }
    }
    let pdir = tmp.path().join("t/0");
    let mut idx: Vec<_> = std::fs::read_dir(&pdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "index"))
        .collect();
    idx.sort();
    assert!(idx.len() >= 2);
    std::fs::remove_file(&idx[0]).unwrap();
    std::fs::write(&idx[1], [0u8, 0, 0, 9, 0, 0, 0, 1]).unwrap(); // points into the middle of a batch
    let t = dir.open_topic("t", Access::ReadWrite).unwrap();
    let rebuilt = t.recovery_events().iter().filter(|e| matches!(e, RecoveryEvent::IndexRebuilt { .. })).count();
    assert_eq!(rebuilt, 2, "{:?}", t.recovery_events());
    let p = t.partition(0).unwrap();
    let got = values(p, 0);
    assert_eq!(got.len(), 300);
    drop(t);
    let t = dir.open_topic("t", Access::ReadWrite).unwrap();
    assert!(t.recovery_events().is_empty(), "rebuilt indexes were written: {:?}", t.recovery_events());
}

#[test]
fn torn_tail_is_truncated_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let (io, faults) = FaultyIo::new();
    let dir = LogDir::with_io(tmp.path(), Arc::new(io), Arc::new(flow_runtime::log::io::SystemClock));
    dir.create_topic("t", &TopicConfig::default()).unwrap();
    {
        let t = dir.open_topic("t", Access::ReadWrite).unwrap();
        let p = t.partition(0).unwrap();
        p.append(&[rec(1, "a"), rec(2, "b")], Acks::Fsync).unwrap();
        *faults.torn_write_bytes.lock().unwrap() = Some(40);
        // The torn write fails, and the append is rolled back in-process...
        assert!(p.append(&[rec(3, "c")], Acks::Fsync).is_err());
    }
    // ...but a crash could leave the torn bytes: simulate by appending half a batch.
    let log = tmp.path().join("t/0/00000000000000000000.log");
    let good_len = std::fs::metadata(&log).unwrap().len();
    let whole = flow_runtime::log::batch::encode_batch(2, &[rec(3, "c"), rec(4, "d")]);
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, &whole[..whole.len() - 5]).unwrap();
    drop(f);
    let dir = LogDir::new(tmp.path());
    let t = dir.open_topic("t", Access::ReadWrite).unwrap();
    match t.recovery_events() {
        [RecoveryEvent::TruncatedTail { partition: 0, offset: 2, position, bytes_cut, .. }] => {
            assert_eq!(*position, good_len);
            assert_eq!(*bytes_cut, whole.len() as u64 - 5);
        }
        other => panic!("expected one truncation, got {other:?}"),
    }
    let p = t.partition(0).unwrap();
    assert_eq!(values(p, 0), vec![(0, "a".into()), (1, "b".into())]);
    assert_eq!(std::fs::metadata(&log).unwrap().len(), good_len);
    assert_eq!(p.append(&[rec(5, "e")], Acks::Fsync).unwrap().base_offset, 2);
}

#[test]
fn a_flipped_byte_mid_segment_is_an_error_naming_the_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LogDir::new(tmp.path());
    dir.create_topic("t", &TopicConfig::default()).unwrap();
    let positions: Vec<u64>;
    {
        let t = dir.open_topic("t", Access::ReadWrite).unwrap();
        let p = t.partition(0).unwrap();
        let mut pos = vec![];
        for i in 0..10 {
            pos.push(p.info().size_bytes);
            p.append(&[rec(i, &format!("record-{i}")), rec(i, "x")], Acks::Os).unwrap();
        }
        positions = pos;
    }
    // Flip a byte inside the batch holding offsets 8..9 (the 5th batch).
    let log = tmp.path().join("t/0/00000000000000000000.log");
    let mut data = std::fs::read(&log).unwrap();
    let at = positions[4] as usize + 70;
    data[at] ^= 0x01;
    std::fs::write(&log, &data).unwrap();
    // A reader sees the error at that offset.
    let ro = dir.open_topic("t", Access::ReadWrite);
    match ro {
        Err(LogError::Corrupt { topic, partition, segment, offset, position, .. }) => {
            assert_eq!(topic, "t");
            assert_eq!(partition, 0);
            assert_eq!(offset, 8);
            assert_eq!(position, positions[4]);
            assert!(segment.ends_with("00000000000000000000.log"));
            let msg = LogError::Corrupt {
                topic,
                partition,
                segment,
                offset,
                position,
                reason: flow_runtime::log::batch::BatchError::BadMagic(0),
            }
            .to_string();
            assert!(msg.contains("offset 8"), "{msg}");
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    // Nothing was truncated.
    assert_eq!(std::fs::read(&log).unwrap(), data);
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_found_by_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LogDir::new(tmp.path());
    dir.create_topic("t", &small_config()).unwrap();
    {
        let t = dir.open_topic("t", Access::ReadWrite).unwrap();
        let p = t.partition(0).unwrap();
        for i in 0..200 {
            p.append(&[rec(i, &format!("record-{i:04}"))], Acks::Os).unwrap();
        }
    }
    // Corrupt the first batch of the first (sealed) segment; its index loads fine, so
    // open does not scan it, and the read must catch it.
    let log = tmp.path().join("t/0/00000000000000000000.log");
    let mut data = std::fs::read(&log).unwrap();
    data[65] ^= 0xff;
    std::fs::write(&log, &data).unwrap();
    let t = dir.open_topic("t", Access::ReadOnly).unwrap();
    let p = t.partition(0).unwrap();
    match p.read(0, 100) {
        Err(LogError::Corrupt { offset: 0, position: 0, .. }) => {}
        other => panic!("expected corruption at offset 0, got {other:?}"),
    }
    assert!(p.read(100, 100).is_ok(), "other segments stay readable");
}

#[test]
fn fsync_error_reaches_the_producer_and_is_not_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let (io, faults) = FaultyIo::new();
    let dir = LogDir::with_io(tmp.path(), Arc::new(io), Arc::new(flow_runtime::log::io::SystemClock));
    dir.create_topic("t", &TopicConfig::default()).unwrap();
    let t = dir.open_topic("t", Access::ReadWrite).unwrap();
    let p = t.partition(0).unwrap();
    p.append(&[rec(1, "ok")], Acks::Fsync).unwrap();
    faults.fail_syncs.store(1, Ordering::SeqCst);
    let err = p.append(&[rec(2, "lost?")], Acks::Fsync).unwrap_err();
    assert!(err.to_string().contains("injected fsync failure"), "{err}");
    // The partition refuses writes until reopened.
    assert!(matches!(p.append(&[rec(3, "x")], Acks::Os), Err(LogError::Failed { .. })));
    drop(t);
    let dir = LogDir::new(tmp.path());
    let t = dir.open_topic("t", Access::ReadWrite).unwrap();
    let p = t.partition(0).unwrap();
    p.append(&[rec(4, "again")], Acks::Fsync).unwrap();
    assert_eq!(values(p, 0).first(), Some(&(0, "ok".to_string())));
}

#[test]
fn group_commit_shares_fsyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let (io, faults) = FaultyIo::new();
    let dir = LogDir::with_io(tmp.path(), Arc::new(io), Arc::new(flow_runtime::log::io::SystemClock));
    dir.create_topic("t", &TopicConfig::default()).unwrap();
    let t = dir.open_topic("t", Access::ReadWrite).unwrap();
    let per_thread = 200;
    let threads = 16;
    std::thread::scope(|s| {
        for th in 0..threads {
            let t = &t;
            s.spawn(move || {
                for i in 0..per_thread {
                    t.partition(0).unwrap().append(&[rec(i, &format!("{th}-{i}"))], Acks::Fsync).unwrap();
                }
            });
        }
    });
    let syncs = faults.syncs.load(Ordering::SeqCst);
    let appends = (threads * per_thread) as u64;
    assert_eq!(t.partition(0).unwrap().end_offset(), appends);
    assert!(syncs < appends, "group commit: {syncs} fsyncs for {appends} appends");
}

#[test]
fn retention_by_time_and_size_with_an_injected_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let dir = LogDir::with_io(tmp.path(), Arc::new(StdIo), clock.clone());
    let cfg = TopicConfig { segment_bytes: 2048, retention_ms: Some(10_000), ..TopicConfig::default() };
    dir.create_topic("t", &cfg).unwrap();
    let t = dir.open_topic("t", Access::ReadWrite).unwrap();
    let p = t.partition(0).unwrap();
    // Old records (timestamps 0..) then new ones (timestamps near now).
    for i in 0..100 {
        p.append(&[rec(i, &format!("old-{i:03}-padding-padding-padding"))], Acks::Os).unwrap();
    }
    let old_end = p.end_offset();
    p.roll().unwrap();
    for i in 0..100 {
        p.append(&[rec(1_000_000 + i, &format!("new-{i:03}-padding-padding-padding"))], Acks::Os).unwrap();
    }
    // The old segments were already expired when the new ones rolled.
    assert_eq!(p.start_offset(), old_end, "{:?}", p.info());
    clock.advance(5_000);
    assert_eq!(p.enforce_retention().unwrap().segments_deleted, 0, "new data is within retention");
    clock.advance(20_000);
    let out = p.enforce_retention().unwrap();
    let info = p.info();
    assert!(out.segments_deleted > 0);
    assert_eq!(info.segments, 1, "only the active segment is left: {info:?}");
    assert!(info.size_bytes > 0, "the active segment is never deleted");
    assert!(matches!(p.read(0, 10), Err(LogError::OffsetOutOfRange { .. })));
    assert_eq!(values(p, info.start_offset).len() as u64, info.end_offset - info.start_offset);

    // Size retention.
    let cfg =
        TopicConfig { segment_bytes: 2048, retention_ms: None, retention_bytes: Some(4096), ..TopicConfig::default() };
    dir.create_topic("s", &cfg).unwrap();
    let t = dir.open_topic("s", Access::ReadWrite).unwrap();
    let p = t.partition(0).unwrap();
    for i in 0..400 {
        p.append(&[rec(i, &format!("value-{i:05}-padding-padding"))], Acks::Os).unwrap();
    }
    let info = p.info();
    assert!(info.size_bytes >= 4096 && info.size_bytes < 4096 + 2 * 2048, "{info:?}");
    assert!(info.start_offset > 0);
}

#[test]
fn consumer_group_offsets_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LogDir::new(tmp.path());
    dir.create_topic("t", &TopicConfig { partitions: 3, ..TopicConfig::default() }).unwrap();
    let g = dir.groups();
    assert!(g.committed("g1", "t").unwrap().is_empty());
    g.commit("g1", "t", &BTreeMap::from([(0, 5), (2, 7)])).unwrap();
    g.commit("g1", "t", &BTreeMap::from([(1, 1)])).unwrap();
    g.commit("g2", "t", &BTreeMap::from([(0, 9)])).unwrap();
    let g = LogDir::new(tmp.path()).groups();
    assert_eq!(g.committed("g1", "t").unwrap(), BTreeMap::from([(0, 5), (1, 1), (2, 7)]));
    assert_eq!(g.committed("g2", "t").unwrap(), BTreeMap::from([(0, 9)]));
    assert!(matches!(g.committed("../x", "t"), Err(LogError::InvalidGroupName { .. })));
    dir.delete_topic("t").unwrap();
    assert!(g.committed("g1", "t").unwrap().is_empty());
    assert!(dir.list_topics().unwrap().is_empty());
}

#[test]
fn keyed_records_follow_murmur2() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LogDir::new(tmp.path());
    dir.create_topic("t", &TopicConfig { partitions: 3, ..TopicConfig::default() }).unwrap();
    let t = dir.open_topic("t", Access::ReadWrite).unwrap();
    let recs: Vec<NewRecord> = ["foobar", "21", "abc", "foobar"]
        .iter()
        .map(|k| NewRecord::new(0, Some(Bytes::copy_from_slice(k.as_bytes())), Bytes::from_static(b"v")))
        .collect();
    t.append(recs, Acks::Os).unwrap();
    let ends: Vec<u64> = t.partitions().iter().map(|p| p.end_offset()).collect();
    let expect = |k: &[u8]| flow_runtime::log::partitioner::partition_for_key(k, 3);
    assert_eq!(expect(b"foobar"), (0x7fff_ffff & -790_332_482i32) as u32 % 3);
    let mut want = vec![0u64; 3];
    for k in ["foobar", "21", "abc", "foobar"] {
        want[expect(k.as_bytes()) as usize] += 1;
    }
    assert_eq!(ends, want);
}

#[test]
fn flush_syncs_os_acked_appends_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (io, faults) = FaultyIo::new();
    let dir = LogDir::with_io(tmp.path(), Arc::new(io), Arc::new(flow_runtime::log::io::SystemClock));
    dir.create_topic("t", &TopicConfig::default()).unwrap();
    let t = dir.open_topic("t", Access::ReadWrite).unwrap();
    let p = t.partition(0).unwrap();
    let before = faults.syncs.load(Ordering::SeqCst);
    for i in 0..10 {
        p.append(&[rec(i, "x")], Acks::Os).unwrap();
    }
    assert_eq!(faults.syncs.load(Ordering::SeqCst), before, "os acks never fsync");
    p.flush().unwrap();
    assert_eq!(faults.syncs.load(Ordering::SeqCst), before + 1);
    p.flush().unwrap();
    p.append(&[rec(11, "y")], Acks::Fsync).unwrap();
    assert_eq!(faults.syncs.load(Ordering::SeqCst), before + 2, "nothing new to sync, then one fsync");
}

#[test]
fn topic_retention_pass_covers_every_partition() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let dir = LogDir::with_io(tmp.path(), Arc::new(StdIo), clock.clone());
    let cfg = TopicConfig { partitions: 2, retention_ms: Some(1000), ..TopicConfig::default() };
    dir.create_topic("r", &cfg).unwrap();
    let t = dir.open_topic("r", Access::ReadWrite).unwrap();
    for p in t.partitions() {
        p.append(&[rec(0, "old")], Acks::Os).unwrap();
        p.roll().unwrap(); // not expired yet: kept
        p.append(&[rec(0, "active")], Acks::Os).unwrap();
    }
    assert_eq!(t.enforce_retention().unwrap().segments_deleted, 0);
    clock.advance(1001);
    let out = t.enforce_retention().unwrap();
    assert_eq!(out.segments_deleted, 2, "one sealed segment per partition");
    for p in t.partitions() {
        assert_eq!((p.start_offset(), p.end_offset()), (1, 2), "the active segment stays");
    }
}
