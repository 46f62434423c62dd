//! Recovery against damaged files, as a property: after random truncation of the
//! active segment, a flipped byte anywhere in it, or garbage appended to it, opening
//! either recovers exactly the batches before the damage (for damage at the tail) or
//! fails with a corruption error naming the damaged batch's offset (for damage before
//! the tail). It never panics, never returns a record that was not written, and
//! never silently drops a batch that is followed by good data.

use std::sync::Arc;

use bytes::Bytes;
use flow_runtime::log::io::{ManualClock, StdIo};
use flow_runtime::log::partition::RecoveryEvent;
use flow_runtime::log::{Access, Acks, LogDir, LogError, NewRecord, TopicConfig};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Damage {
    Truncate(u16),
    Flip { at: u16, mask: u8 },
    AppendGarbage(Vec<u8>),
    AppendZeros(u16),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<u16>().prop_map(Damage::Truncate),
        (any::<u16>(), 1u8..=255).prop_map(|(at, mask)| Damage::Flip { at, mask }),
        proptest::collection::vec(any::<u8>(), 1..200).prop_map(Damage::AppendGarbage),
        (1u16..5000).prop_map(Damage::AppendZeros),
    ]
}

/// Write `batches` batches; return (value per offset, byte range and base offset per batch).
fn setup(dir: &LogDir, sizes: &[usize]) -> (Vec<Bytes>, Vec<(u64, u64, u64)>) {
    let cfg = TopicConfig { retention_ms: None, ..TopicConfig::default() };
    dir.create_topic("r", &cfg).unwrap();
    let t = dir.open_topic("r", Access::ReadWrite).unwrap();
    let p = t.partition(0).unwrap();
    let mut values = Vec::new();
    let mut ranges = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let start = p.info().size_bytes;
        let recs: Vec<NewRecord> = (0..n)
            .map(|k| {
                let v = Bytes::from(format!("batch{i}-rec{k}-{}", "z".repeat(k * 7 % 50)));
                values.push(v.clone());
                NewRecord::new(1000 + i as i64, None, v)
            })
            .collect();
        let a = p.append(&recs, Acks::Os).unwrap();
        ranges.push((start, p.info().size_bytes, a.base_offset));
    }
    (values, ranges)
}

fn check(sizes: Vec<usize>, dmg: Damage) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LogDir::with_io(tmp.path(), Arc::new(StdIo), ManualClock::new(0));
    let (values, ranges) = setup(&dir, &sizes);
    let log = tmp.path().join("r/0/00000000000000000000.log");
    let mut data = std::fs::read(&log).unwrap();
    let len = data.len() as u64;
    // Which batch index holds the first damaged byte, and does good data follow it?
    let batch_at = |pos: u64| ranges.iter().position(|&(s, e, _)| s <= pos && pos < e);
    // A truncation exactly at a batch boundary leaves nothing torn to cut.
    let mut clean_cut = false;
    let (first_bad, tail_damage) = match &dmg {
        Damage::Truncate(n) => {
            let cut = u64::from(*n) % (len + 1);
            data.truncate(cut as usize);
            clean_cut = ranges.iter().any(|&(s, _, _)| s == cut);
            // Batches wholly before the cut survive.
            (ranges.iter().position(|&(_, e, _)| e > cut), true)
        }
        Damage::Flip { at, mask } => {
            let at = u64::from(*at) % len;
            data[at as usize] ^= mask;
            let b = batch_at(at).unwrap();
            if (12..16).contains(&(at - ranges[b].0)) {
                // The leader epoch is outside the CRC and checked by nothing: Kafka's
                // format cannot notice this flip, and neither do we.
                (None, true)
            } else {
                (Some(b), b + 1 == ranges.len())
            }
        }
        Damage::AppendGarbage(g) => {
            data.extend_from_slice(g);
            (None, true)
        }
        Damage::AppendZeros(n) => {
            data.extend(std::iter::repeat_n(0u8, *n as usize));
            (None, true)
        }
    };
    std::fs::write(&log, &data).unwrap();

    let result = dir.open_topic("r", Access::ReadWrite);
    let good_records: usize = sizes[..first_bad.unwrap_or(sizes.len())].iter().sum();
    match result {
        Ok(t) => {
            let p = t.partition(0).unwrap();
            let end = p.end_offset() as usize;
            // Everything readable was written, at its offset.
            let mut off = 0u64;
            while (off as usize) < end {
                for r in p.read_records(off, 1 << 20).unwrap() {
                    assert_eq!(r.value.as_ref().unwrap(), &values[r.offset as usize]);
                    off = r.offset + 1;
                }
            }
            if let Some(b) = first_bad {
                // Damage in the last batch: that batch (and only it) is cut, and reported.
                assert!(tail_damage, "damage before the tail must be an error, got end {end} for {dmg:?}");
                assert_eq!(end, good_records, "{dmg:?}");
                let cut = t
                    .recovery_events()
                    .iter()
                    .any(|e| matches!(e, RecoveryEvent::TruncatedTail { offset, .. } if *offset == ranges[b].2));
                assert_eq!(cut, !clean_cut, "the cut is reported: {:?}", t.recovery_events());
            } else {
                assert_eq!(end, values.len(), "appended junk is cut, the data kept");
            }
        }
        Err(LogError::Corrupt { offset, segment, .. }) => {
            assert!(segment.ends_with("00000000000000000000.log"));
            let b = first_bad.expect("undamaged batches never fail");
            // The error names the damaged batch's offset, or (when the damage hit a base
            // offset, which is not under the CRC) the offset the sequence expected there.
            assert_eq!(offset, ranges[b].2, "{dmg:?}");
            assert!(!tail_damage, "damage in the last batch is a torn tail, not an error: {dmg:?}");
        }
        Err(e) => panic!("unexpected error {e} for {dmg:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(128), ..ProptestConfig::default() })]
    #[test]
    fn damaged_active_segment_recovers_or_names_the_offset(
        sizes in proptest::collection::vec(1usize..20, 1..12),
        dmg in damage(),
    ) {
        check(sizes, dmg);
    }
}

#[test]
fn segment_rolls_by_age_with_an_injected_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let dir = LogDir::with_io(tmp.path(), Arc::new(StdIo), clock.clone());
    let cfg = TopicConfig { segment_ms: 60_000, retention_ms: None, ..TopicConfig::default() };
    dir.create_topic("a", &cfg).unwrap();
    let t = dir.open_topic("a", Access::ReadWrite).unwrap();
    let p = t.partition(0).unwrap();
    p.append(&[NewRecord::new(0, None, Bytes::from_static(b"1"))], Acks::Os).unwrap();
    clock.advance(59_999);
    p.append(&[NewRecord::new(0, None, Bytes::from_static(b"2"))], Acks::Os).unwrap();
    assert_eq!(p.info().segments, 1);
    clock.advance(1);
    p.append(&[NewRecord::new(0, None, Bytes::from_static(b"3"))], Acks::Os).unwrap();
    assert_eq!(p.info().segments, 2, "the segment reached segment_ms and rolled");
    assert_eq!(p.read_records(0, 1000).unwrap().len() + p.read_records(2, 1000).unwrap().len(), 3);
}

#[test]
fn damage_edge_cases() {
    check(vec![3, 4], Damage::Truncate(0));
    check(vec![3, 4, 2], Damage::Flip { at: 13, mask: 1 });
    check(vec![3, 4, 2], Damage::Flip { at: 3, mask: 0x80 });
    check(vec![1], Damage::AppendZeros(61));
    check(vec![1, 1], Damage::AppendGarbage(vec![0xff; 100]));
}
