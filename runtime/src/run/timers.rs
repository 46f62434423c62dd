//! [`Timers`]: the session window's timer queue — slot ids due at a watermark.
//!
//! A `BTreeMap` from due time to ids costs a tree search per timer set, and with one
//! due time per millisecond in flight (100,000 keys' sessions) that search misses the
//! caches at every level: it was a fifth of the session path. Here due times share
//! coarse buckets (`2^shift` ms each, chosen from the session gap so that the gap spans
//! about 64 of them) in a ring indexed by bucket number, so setting a timer is an index
//! and a push. Buckets beyond the ring (far-off timers, as with a long allowed
//! lateness) wait in a tree and move into the ring as it reaches them.
//!
//! Timers come out in exactly the order the `BTreeMap` gave: by due time, and those due
//! at the same time in the order they were set. The front bucket is sorted by due time
//! when it is first looked at (stably: by counting over its offsets, or for buckets
//! wider than 4 s by a stable sort), then drained with a cursor. Once it is drained the
//! ring moves on even if the watermark has not passed the bucket's end; a timer set
//! before the front after that (rare) goes to a small map of its own, by time.

use std::collections::{BTreeMap, VecDeque};

/// A bucket's timers: each as its time within the bucket and its id.
type Bucket = Vec<(u32, u32)>;

/// Buckets held in the ring; later ones wait in a tree.
const RING: usize = 1024;

/// Buckets of at most `2^COUNTING_SHIFT_MAX` ms are sorted by counting.
const COUNTING_SHIFT_MAX: u32 = 12;

/// Ids due at watermarks (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Timers {
    shift: u32,
    /// Buckets `base..base + ring.len()` in order. The first (the front) is sorted
    /// once it is first looked at (`sorted`), and its first `gone` timers are taken.
    ring: VecDeque<Bucket>,
    base: i64,
    gone: usize,
    sorted: bool,
    /// Buckets `base + RING` and later (far-off timers), in the order set.
    far: BTreeMap<i64, Bucket>,
    /// Timers set before the front bucket (it moved past empty buckets): by time.
    past: BTreeMap<i64, Vec<u32>>,
    len: usize,
    /// Scratch for sorting a bucket by counting.
    counts: Vec<u32>,
    sorted_out: Bucket,
}

impl Timers {
    /// Timers for sessions with gap `gap` ms: buckets of about `gap / 64` ms (a power
    /// of two, from 16 ms to 64 s).
    pub fn for_gap(gap: i64) -> Timers {
        let width = (gap.max(1) as u64 / 64).clamp(16, 1 << 16).next_power_of_two();
        Timers { shift: width.trailing_zeros(), ..Timers::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held, for the state-size report.
    pub fn bytes(&self) -> usize {
        self.ring.iter().chain(self.far.values()).map(|v| v.capacity() * 8).sum::<usize>()
            + self.ring.capacity() * std::mem::size_of::<Bucket>()
            + self.far.len() * 64
            + self.past.values().map(|v| v.capacity() * 4 + 64).sum::<usize>()
    }

    /// Sets a timer for `id` at watermark `at`.
    #[inline]
    pub fn push(&mut self, at: i64, id: u32) {
        let (b, off) = (at >> self.shift, (at & ((1i64 << self.shift) - 1)) as u32);
        self.len += 1;
        if self.len == 1 {
            // Empty: the ring starts at this bucket.
            self.ring.clear();
            self.base = b;
            self.gone = 0;
            self.sorted = false;
        }
        if b < self.base {
            self.past.entry(at).or_default().push(id);
            return;
        }
        // b >= base, so this neither overflows nor wraps.
        let i = (b as i128 - self.base as i128) as u128;
        if i >= RING as u128 {
            self.far.entry(b).or_default().push((off, id));
            return;
        }
        let i = i as usize;
        if self.ring.len() <= i {
            self.ring.resize_with(i + 1, Bucket::new);
        }
        let v = &mut self.ring[i];
        if i == 0 && self.sorted {
            // Into the sorted front: in order, after those due at the same time.
            let at = self.gone + v[self.gone..].partition_point(|&(o, _)| o <= off);
            v.insert(at, (off, id));
        } else {
            v.push((off, id));
        }
    }

    /// Moves the ring on by one bucket (the front is done), and far buckets it now
    /// reaches into it.
    fn step(&mut self) {
        self.ring.pop_front();
        self.base += 1;
        self.gone = 0;
        self.sorted = false;
        if self.ring.is_empty() {
            // Jump to the first far bucket, if any.
            if let Some((&b, _)) = self.far.first_key_value() {
                self.base = b;
            }
        }
        while let Some(e) = self.far.first_entry() {
            let i = (*e.key() as i128 - self.base as i128) as usize;
            if i >= RING {
                break;
            }
            if self.ring.len() <= i {
                self.ring.resize_with(i + 1, Bucket::new);
            }
            // Nothing was set in it yet: it was beyond the ring until now.
            self.ring[i] = e.remove();
        }
    }

    /// The front bucket, sorted, skipping buckets that are empty; None if the ring
    /// and the tree are empty.
    fn front(&mut self) -> Option<&[(u32, u32)]> {
        loop {
            match self.ring.front() {
                Some(v) if self.gone < v.len() => break,
                Some(_) => self.step(),
                None if self.far.is_empty() => return None,
                None => self.step(),
            }
        }
        if !self.sorted {
            // Stable: those due at the same time stay in the order set.
            let v = &mut self.ring[0];
            if self.shift <= COUNTING_SHIFT_MAX {
                // By counting: one pass to count, one to place (a bucket has a few
                // thousand timers over at most a few thousand offsets).
                let c = &mut self.counts;
                c.clear();
                c.resize((1 << self.shift) + 1, 0);
                for &(o, _) in &v[self.gone..] {
                    c[o as usize + 1] += 1;
                }
                for i in 1..c.len() {
                    c[i] += c[i - 1];
                }
                let out = &mut self.sorted_out;
                out.clear();
                out.resize(v.len() - self.gone, (0, 0));
                for &(o, id) in &v[self.gone..] {
                    out[c[o as usize] as usize] = (o, id);
                    c[o as usize] += 1;
                }
                v.truncate(self.gone);
                v.extend_from_slice(out);
            } else {
                v[self.gone..].sort_by_key(|&(o, _)| o);
            }
            self.sorted = true;
        }
        Some(&self.ring[0][self.gone..])
    }

    /// The ids of the timers due at watermark `wm` or before, earliest first, into `out`
    /// (cleared first); false if none is due. Call again until false: timers set
    /// meanwhile are due later, or come out next.
    pub fn pop_due(&mut self, wm: i64, out: &mut Vec<u32>) -> bool {
        out.clear();
        if let Some(e) = self.past.first_entry() {
            if *e.key() > wm {
                // Everything else is later still.
                return false;
            }
            out.extend(e.remove());
            self.len -= out.len();
            return true;
        }
        let shift = self.shift;
        if self.front().is_none() {
            return false;
        }
        let b = self.base;
        let rest = &self.ring[0][self.gone..];
        let n = if b < wm >> shift {
            rest.len()
        } else if b == wm >> shift {
            let off = (wm & ((1i64 << shift) - 1)) as u32;
            rest.partition_point(|&(o, _)| o <= off)
        } else {
            0
        };
        out.extend(rest[..n].iter().map(|&(_, id)| id));
        self.gone += n;
        self.len -= n;
        n > 0
    }

    /// Up to `n` of the ids due next, for prefetching: those of the front bucket, as
    /// [`Timers::first_due`] or [`Timers::pop_due`] left it.
    pub fn next_ids(&self, n: usize) -> impl Iterator<Item = u32> + '_ {
        let front = if self.sorted { self.ring.front().map(|v| &v[self.gone.min(v.len())..]) } else { None };
        front.unwrap_or_default().iter().take(n).map(|&(_, id)| id)
    }

    /// The earliest watermark a timer is set at.
    pub fn first_due(&mut self) -> Option<i64> {
        if let Some((&at, _)) = self.past.first_key_value() {
            return Some(at);
        }
        let off = self.front()?.first()?.0;
        Some((self.base << self.shift) | i64::from(off))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the timers replaced: ids by due time, in the order set.
    fn model_pop(m: &mut BTreeMap<i64, Vec<u32>>, wm: i64) -> Vec<u32> {
        let mut out = Vec::new();
        while let Some(e) = m.first_entry() {
            if *e.key() > wm {
                break;
            }
            out.extend(e.remove());
        }
        out
    }

    #[test]
    fn buckets_from_the_gap() {
        assert_eq!(Timers::for_gap(5_000).shift, 7);
        assert_eq!(Timers::for_gap(1).shift, 4);
        assert_eq!(Timers::for_gap(i64::MAX).shift, 16);
    }

    #[test]
    fn extremes_of_time() {
        let mut t = Timers::for_gap(1000);
        t.push(i64::MAX, 1);
        t.push(i64::MIN, 2);
        t.push(0, 3);
        let mut out = Vec::new();
        assert!(t.pop_due(i64::MIN, &mut out));
        assert_eq!(out, [2]);
        assert_eq!(t.first_due(), Some(0));
        assert!(t.pop_due(i64::MAX - 1, &mut out));
        assert_eq!(out, [3]);
        assert!(!t.pop_due(i64::MAX - 1, &mut out));
        assert!(t.pop_due(i64::MAX, &mut out));
        assert_eq!(out, [1]);
        assert!(t.is_empty());
        assert_eq!(t.first_due(), None);
    }

    #[test]
    fn the_ids_due_next_are_those_popped_next() {
        let mut t = Timers::for_gap(1000);
        for (at, id) in [(10, 1), (30, 3), (20, 2), (40, 4), (5000, 9)] {
            t.push(at, id);
        }
        let mut out = Vec::new();
        assert!(t.pop_due(15, &mut out));
        assert_eq!(out, [1]);
        assert_eq!(t.first_due(), Some(20));
        assert_eq!(t.next_ids(2).collect::<Vec<_>>(), [2, 3]);
        assert!(t.pop_due(20, &mut out));
        assert_eq!(out, [2]);
        assert_eq!(t.next_ids(5).collect::<Vec<_>>(), [3], "only the front bucket is looked at");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        /// Timers set and taken in any interleaving come out as the BTreeMap gave them.
        #[test]
        fn same_order_as_a_btreemap(
            gap in prop_oneof![1i64..100_000, 100_000i64..10_000_000],
            steps in proptest::collection::vec(
                (
                    any::<bool>(),
                    // Coarse times too, so that many timers are due at the same time.
                    prop_oneof![(-20i64..20).prop_map(|x| x * 37), -3_000i64..3_000, -3_000_000i64..3_000_000],
                    0u32..50,
                ),
                1..300,
            ),
        ) {
            let mut t = Timers::for_gap(gap);
            let mut m: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
            let mut wm = i64::MIN;
            let mut out = Vec::new();
            for (pop, x, id) in steps {
                if pop {
                    wm = wm.max(x);
                    let mut got = Vec::new();
                    while t.pop_due(wm, &mut out) {
                        got.extend_from_slice(&out);
                    }
                    prop_assert_eq!(got, model_pop(&mut m, wm));
                } else {
                    t.push(x, id);
                    m.entry(x).or_default().push(id);
                }
                prop_assert_eq!(t.first_due(), m.keys().next().copied());
                prop_assert_eq!(t.is_empty(), m.is_empty());
            }
        }
    }
}
