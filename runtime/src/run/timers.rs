//! [`Timers`]: the session window's timer queue — slot ids due at a watermark.
//!
//! A `BTreeMap` from due time to ids costs a tree search per timer set, and with one
//! due time per millisecond in flight (100,000 keys' sessions) that search misses the
//! caches at every level: it was a fifth of the session path. Here due times share
//! coarse buckets (`2^shift` ms each, chosen from the session gap so that the gap spans
//! about 64 of them), so the tree stays small enough to stay in the cache, and setting
//! a timer is a search of that small tree and a push.
//!
//! Timers come out in exactly the order the `BTreeMap` gave: by due time, and those due
//! at the same time in the order they were set. A bucket is sorted by due time (a
//! stable sort, nearly free: timers are mostly set in due order) when it is taken.

use std::collections::BTreeMap;

/// A bucket's timers: each as its time within the bucket and its id.
type Bucket = Vec<(u32, u32)>;

/// Ids due at watermarks (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Timers {
    shift: u32,
    /// Timers by bucket (`at >> shift`), each as its time within the bucket and its id,
    /// in the order set.
    buckets: BTreeMap<i64, Bucket>,
    /// The earliest bucket, taken out of the tree and sorted; `front.2` timers of it
    /// are gone. Timers set in or before it are inserted in order.
    front: Option<(i64, Bucket, usize)>,
    len: usize,
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
        self.buckets.values().chain(self.front.as_ref().map(|f| &f.1)).map(|v| v.capacity() * 8 + 64).sum()
    }

    /// Sets a timer for `id` at watermark `at`.
    #[inline]
    pub fn push(&mut self, at: i64, id: u32) {
        let (b, off) = (at >> self.shift, (at & ((1i64 << self.shift) - 1)) as u32);
        self.len += 1;
        match &mut self.front {
            Some((fb, v, gone)) if b == *fb => {
                // Due in the bucket being taken: in order, after those due at the same
                // time.
                let at = *gone + v[*gone..].partition_point(|&(o, _)| o <= off);
                v.insert(at, (off, id));
                return;
            }
            Some((fb, _, _)) if b < *fb => {
                // Due before it (rare): it goes back into the tree, still in order.
                if let Some((fb, mut v, gone)) = self.front.take() {
                    v.drain(..gone);
                    self.buckets.insert(fb, v);
                }
            }
            _ => {}
        }
        self.buckets.entry(b).or_default().push((off, id));
    }

    /// Makes the earliest bucket the front one (sorted), if there is none.
    fn take_front(&mut self) -> bool {
        if self.front.as_ref().is_some_and(|f| f.2 < f.1.len()) {
            return true;
        }
        self.front = None;
        let Some((b, mut v)) = self.buckets.pop_first() else { return false };
        // Stable: those due at the same time stay in the order set. Nearly free, as
        // timers are mostly set in due order.
        v.sort_by_key(|&(o, _)| o);
        self.front = Some((b, v, 0));
        true
    }

    /// The ids of the timers due at watermark `wm` or before, earliest first, into `out`
    /// (cleared first); false if none is due. Call again until false: timers set
    /// meanwhile are due later, or come out next.
    pub fn pop_due(&mut self, wm: i64, out: &mut Vec<u32>) -> bool {
        out.clear();
        if !self.take_front() {
            return false;
        }
        let shift = self.shift;
        let Some((b, v, gone)) = &mut self.front else { return false };
        let rest = &v[*gone..];
        let n = if *b < wm >> shift {
            rest.len()
        } else if *b == wm >> shift {
            let off = (wm & ((1i64 << shift) - 1)) as u32;
            rest.partition_point(|&(o, _)| o <= off)
        } else {
            0
        };
        out.extend(rest[..n].iter().map(|&(_, id)| id));
        *gone += n;
        self.len -= n;
        n > 0
    }

    /// The earliest watermark a timer is set at.
    pub fn first_due(&mut self) -> Option<i64> {
        if !self.take_front() {
            return None;
        }
        let (b, v, gone) = self.front.as_ref()?;
        Some((b << self.shift) | i64::from(v[*gone].0))
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

    proptest! {
        /// Timers set and taken in any interleaving come out as the BTreeMap gave them.
        #[test]
        fn same_order_as_a_btreemap(
            gap in 1i64..100_000,
            steps in proptest::collection::vec((any::<bool>(), -3_000i64..3_000, 0u32..50), 1..300),
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
