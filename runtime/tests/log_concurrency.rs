//! Concurrency: 4 producers appending to one partition (mixing fsync and os acks) and
//! 2 tailing readers woken through tokio; every record is read exactly once, in
//! offset order, and each producer's records appear in the order it appended them.

use std::sync::Arc;

use bytes::Bytes;
use flow_runtime::log::{Access, Acks, LogDir, NewRecord, TopicConfig};

const PRODUCERS: usize = 4;
const APPENDS_PER_PRODUCER: usize = 300;

#[test]
fn four_producers_two_tailing_readers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LogDir::new(tmp.path());
    // Small segments so readers cross segment boundaries while producers roll.
    let cfg = TopicConfig { segment_bytes: 16 * 1024, retention_ms: None, ..TopicConfig::default() };
    dir.create_topic("c", &cfg).unwrap();
    let topic = Arc::new(dir.open_topic("c", Access::ReadWrite).unwrap());
    let total: u64 = (PRODUCERS * APPENDS_PER_PRODUCER * 3) as u64; // up to 3 records per append, computed below
    let expected_total: u64 =
        (0..PRODUCERS).map(|_| (0..APPENDS_PER_PRODUCER).map(|i| (i % 3 + 1) as u64).sum::<u64>()).sum();
    assert!(expected_total <= total);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let topic = topic.clone();
            rt.spawn(async move {
                let p = topic.partition(0).unwrap();
                let mut next = 0u64;
                let mut last_seq = [None::<u64>; PRODUCERS];
                let mut count = 0u64;
                while count < expected_total {
                    let recs = p.read_records(next, 8 * 1024).unwrap();
                    if recs.is_empty() {
                        p.wait_for(next).await;
                        continue;
                    }
                    for r in recs {
                        assert_eq!(r.offset, next, "every offset exactly once, in order");
                        next += 1;
                        count += 1;
                        let v = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
                        let (pid, seq) = v.split_once(':').unwrap();
                        let (pid, seq): (usize, u64) = (pid.parse().unwrap(), seq.parse().unwrap());
                        if let Some(prev) = last_seq[pid] {
                            assert_eq!(seq, prev + 1, "producer {pid}'s records stay in order");
                        } else {
                            assert_eq!(seq, 0);
                        }
                        last_seq[pid] = Some(seq);
                    }
                }
                count
            })
        })
        .collect();

    std::thread::scope(|s| {
        for pid in 0..PRODUCERS {
            let topic = topic.clone();
            s.spawn(move || {
                let p = topic.partition(0).unwrap();
                let mut seq = 0u64;
                for i in 0..APPENDS_PER_PRODUCER {
                    let n = i % 3 + 1;
                    let recs: Vec<NewRecord> = (0..n)
                        .map(|k| NewRecord::new(i as i64, None, Bytes::from(format!("{pid}:{}", seq + k as u64))))
                        .collect();
                    seq += n as u64;
                    let acks = if i % 2 == 0 { Acks::Fsync } else { Acks::Os };
                    p.append(&recs, acks).unwrap();
                }
            });
        }
    });
    for r in readers {
        assert_eq!(rt.block_on(r).unwrap(), expected_total);
    }
    let p = topic.partition(0).unwrap();
    assert_eq!(p.end_offset(), expected_total);
    assert!(p.info().segments > 1, "the test crossed segment boundaries");
}
