//! Idempotent produce: the sequence numbers of each producer on one partition.
//!
//! A producer with `enable.idempotence` numbers its batches per partition
//! (`base_sequence`, counting records). A retried batch that was already written comes
//! again with the same sequence: it is a duplicate, answered with the offset it got the
//! first time and not written again. A batch that skips ahead or goes back further than
//! the remembered batches is out of order. As in Kafka, the last
//! [`BATCHES_REMEMBERED`] batches of each producer are remembered. The state lives in
//! memory: after a restart a producer's next batch is accepted as its new start.
//!
//! Pure bookkeeping: no I/O, no clock.

use std::collections::{HashMap, VecDeque};

/// Batches remembered per producer and partition (Kafka's
/// `max.in.flight.requests.per.connection` limit for idempotence is 5).
pub const BATCHES_REMEMBERED: usize = 5;
/// Producers remembered per partition; the least recently written is forgotten first.
pub const PRODUCERS_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Written {
    first_seq: i32,
    last_seq: i32,
    base_offset: u64,
}

#[derive(Debug, Default)]
struct Producer {
    epoch: i16,
    batches: VecDeque<Written>,
    last_used: u64,
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it (then call [`ProducerStates::record`]).
    Append,
    /// Already written at this base offset: answer success without writing.
    Duplicate { base_offset: u64 },
    /// Kafka's OUT_OF_ORDER_SEQUENCE_NUMBER.
    OutOfOrder,
    /// An older epoch than the producer's current one: Kafka's INVALID_PRODUCER_EPOCH.
    StaleEpoch,
}

/// The idempotence state of one partition.
#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, Producer>,
    tick: u64,
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

fn last_seq(first: i32, count: i32) -> i32 {
    // Sequences wrap at i32::MAX back to 0, as in Kafka.
    ((i64::from(first) + i64::from(count) - 1) % (i64::from(i32::MAX) + 1)) as i32
}

impl ProducerStates {
    /// Check a batch of `count` records from `producer_id` (>= 0) with `epoch` and
    /// `base_sequence`.
    pub fn check(&self, producer_id: i64, epoch: i16, base_sequence: i32, count: i32) -> Verdict {
        let Some(p) = self.producers.get(&producer_id) else {
            return Verdict::Append;
        };
        if epoch < p.epoch {
            return Verdict::StaleEpoch;
        }
        if epoch > p.epoch {
            // A new epoch starts its sequences again at 0.
            return if base_sequence == 0 { Verdict::Append } else { Verdict::OutOfOrder };
        }
        let last = last_seq(base_sequence, count);
        if let Some(w) = p.batches.iter().find(|w| w.first_seq == base_sequence && w.last_seq == last) {
            return Verdict::Duplicate { base_offset: w.base_offset };
        }
        match p.batches.back() {
            Some(w) if next_seq(w.last_seq) == base_sequence => Verdict::Append,
            Some(_) => Verdict::OutOfOrder,
            None => Verdict::Append,
        }
    }

    /// Remember a batch that was written at `base_offset`.
    pub fn record(&mut self, producer_id: i64, epoch: i16, base_sequence: i32, count: i32, base_offset: u64) {
        self.tick += 1;
        if !self.producers.contains_key(&producer_id) && self.producers.len() >= PRODUCERS_MAX {
            if let Some((&oldest, _)) = self.producers.iter().min_by_key(|(_, p)| p.last_used) {
                self.producers.remove(&oldest);
            }
        }
        let p = self.producers.entry(producer_id).or_default();
        if epoch != p.epoch {
            p.epoch = epoch;
            p.batches.clear();
        }
        p.last_used = self.tick;
        p.batches.push_back(Written {
            first_seq: base_sequence,
            last_seq: last_seq(base_sequence, count),
            base_offset,
        });
        while p.batches.len() > BATCHES_REMEMBERED {
            p.batches.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_batches_append_and_retries_are_duplicates() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check(7, 0, 0, 10), Verdict::Append);
        s.record(7, 0, 0, 10, 100);
        assert_eq!(s.check(7, 0, 10, 5), Verdict::Append);
        s.record(7, 0, 10, 5, 110);
        // The retry of either batch is answered with its first offsets.
        assert_eq!(s.check(7, 0, 0, 10), Verdict::Duplicate { base_offset: 100 });
        assert_eq!(s.check(7, 0, 10, 5), Verdict::Duplicate { base_offset: 110 });
        // A gap or a step back is out of order.
        assert_eq!(s.check(7, 0, 16, 1), Verdict::OutOfOrder);
        assert_eq!(s.check(7, 0, 3, 1), Verdict::OutOfOrder);
        assert_eq!(s.check(7, 0, 15, 1), Verdict::Append);
        // Another producer is independent.
        assert_eq!(s.check(8, 0, 0, 1), Verdict::Append);
    }

    #[test]
    fn epochs_fence_and_restart_sequences() {
        let mut s = ProducerStates::default();
        s.record(1, 3, 0, 4, 0);
        assert_eq!(s.check(1, 2, 4, 1), Verdict::StaleEpoch);
        assert_eq!(s.check(1, 4, 4, 1), Verdict::OutOfOrder);
        assert_eq!(s.check(1, 4, 0, 1), Verdict::Append);
        s.record(1, 4, 0, 1, 4);
        assert_eq!(s.check(1, 4, 0, 1), Verdict::Duplicate { base_offset: 4 });
        assert_eq!(s.check(1, 3, 0, 4), Verdict::StaleEpoch);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            s.record(1, 0, i, 1, i as u64);
        }
        assert_eq!(s.check(1, 0, 6, 1), Verdict::Duplicate { base_offset: 6 });
        assert_eq!(s.check(1, 0, 2, 1), Verdict::Duplicate { base_offset: 2 });
        assert_eq!(s.check(1, 0, 1, 1), Verdict::OutOfOrder);
        let mut w = ProducerStates::default();
        w.record(2, 0, i32::MAX - 1, 2, 0);
        assert_eq!(w.check(2, 0, 0, 1), Verdict::Append);
    }
}
