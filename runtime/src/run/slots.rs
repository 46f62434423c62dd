//! [`SlotIndex`]: an open-addressing index from hashes to slot ids, made for the window
//! operator's hot path.
//!
//! The windows of 100,000 keys outgrow the caches, so a record's probe and the update of
//! its slot are two misses to memory; one at a time they bound the operator to a few
//! million records a second. This index lets the operator overlap them across a batch:
//! [`SlotIndex::prefetch`] pulls a hash's bucket into the cache ahead of time and
//! [`SlotIndex::candidate`] reads the slot id a probe will most likely find, so the slot
//! can be prefetched as well. `hashbrown` (used elsewhere) exposes neither, which is why
//! this one exists.
//!
//! Layout: an array of `u64` buckets, `tag << 32 | id`, 0 for empty; linear probing; at
//! most three quarters full, growing by half (memory per window counts: 8 bytes a
//! bucket); deletion by backward shift (no tombstones). The tag is the hash's high 32
//! bits (never 0) and also gives the home bucket (`tag * buckets >> 32`), so growing
//! needs no rehash of the slots. Equal tags are confirmed by the caller's `eq` on the
//! slot.

/// Hashes to `u32` slot ids (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct SlotIndex {
    buckets: Vec<u64>,
    len: usize,
}

/// The bucket tag of `hash`: its high 32 bits, 0 taken as 1 (0 marks an empty bucket).
#[inline]
fn tag(hash: u64) -> u32 {
    ((hash >> 32) as u32).max(1)
}

/// Mixes a hash so that its high bits depend on all of its bits (murmur3's finalizer).
#[inline]
pub(crate) fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl SlotIndex {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.buckets.capacity() * 8
    }

    /// The home bucket of `tag`.
    #[inline]
    fn home(&self, tag: u32) -> usize {
        ((u64::from(tag) * self.buckets.len() as u64) >> 32) as usize
    }

    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.buckets.len() {
            0
        } else {
            i + 1
        }
    }

    /// Asks the CPU to load `hash`'s home bucket (a hint; never faults).
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        if self.buckets.is_empty() {
            return;
        }
        let p = &self.buckets[self.home(tag(hash))];
        prefetch(p as *const u64 as *const i8);
    }

    /// The first id whose tag matches `hash`: what [`SlotIndex::find`] most likely returns.
    #[inline]
    pub fn candidate(&self, hash: u64) -> Option<u32> {
        self.find(hash, |_| true)
    }

    /// The id stored under `hash` for which `eq` holds.
    #[inline]
    pub fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.buckets.is_empty() {
            return None;
        }
        let t = tag(hash);
        let mut i = self.home(t);
        loop {
            let b = self.buckets[i];
            if b == 0 {
                return None;
            }
            if (b >> 32) as u32 == t && eq(b as u32) {
                return Some(b as u32);
            }
            i = self.next(i);
        }
    }

    /// Stores `id` under `hash` (the caller knows it is not there yet).
    pub fn insert(&mut self, hash: u64, id: u32) {
        if (self.len + 1) * 4 > self.buckets.len() * 3 {
            self.grow();
        }
        self.put(u64::from(tag(hash)) << 32 | u64::from(id));
        self.len += 1;
    }

    fn put(&mut self, entry: u64) {
        let mut i = self.home((entry >> 32) as u32);
        while self.buckets[i] != 0 {
            i = self.next(i);
        }
        self.buckets[i] = entry;
    }

    fn grow(&mut self) {
        let cap = (self.buckets.len() + self.buckets.len() / 2).max(16);
        // Advised before it is first written (zeroed), so that it faults in huge pages.
        let mut fresh = Vec::with_capacity(cap);
        advise_huge(&fresh);
        fresh.resize(cap, 0);
        let old = std::mem::replace(&mut self.buckets, fresh);
        for e in old {
            if e != 0 {
                self.put(e);
            }
        }
    }

    /// Removes `id` stored under `hash`; false if it is not there.
    pub fn remove(&mut self, hash: u64, id: u32) -> bool {
        if self.buckets.is_empty() {
            return false;
        }
        let want = u64::from(tag(hash)) << 32 | u64::from(id);
        let n = self.buckets.len();
        let mut i = self.home(tag(hash));
        loop {
            match self.buckets[i] {
                0 => return false,
                b if b == want => break,
                _ => i = self.next(i),
            }
        }
        // Backward shift: pull later entries of the run into the hole when the hole lies
        // between their home and where they sit.
        let mut hole = i;
        let mut j = self.next(i);
        // Forward distance from a to b around the ring.
        let dist = |a: usize, b: usize| if b >= a { b - a } else { b + n - a };
        loop {
            let b = self.buckets[j];
            if b == 0 {
                break;
            }
            let home = self.home((b >> 32) as u32);
            // It may move back into the hole if the hole is not before its home.
            if dist(home, j) >= dist(hole, j) {
                self.buckets[hole] = b;
                hole = j;
            }
            j = self.next(j);
        }
        self.buckets[hole] = 0;
        self.len -= 1;
        true
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn prefetch(p: *const i8) {
    // SAFETY: a prefetch is a hint: it reads nothing architecturally and cannot fault,
    // whatever the address; SSE is part of the x86_64 baseline.
    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p) }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn prefetch(_p: *const i8) {}

/// Prefetches the cache line at `p` (a hint).
#[inline]
pub(crate) fn prefetch_ptr<T>(p: *const T) {
    prefetch(p as *const i8);
}

/// Bytes of a transparent huge page (x86_64, aarch64 with 4 KiB pages).
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the 2 MiB-aligned whole pages of `v`'s buffer with
/// transparent huge pages (`madvise(MADV_HUGEPAGE)`; a hint, failures are ignored).
///
/// The window state of 100,000 keys spans thousands of 4 KiB pages touched at
/// random: beyond the TLB's reach, so each record's probe and update also walked the
/// page table, and the prefetches that overlap those misses stalled on the walks.
/// Huge pages take the walks away. Distributions default to THP `madvise` mode (only
/// regions that ask get them) or `always` (this changes nothing); small buffers are
/// left alone.
pub(crate) fn advise_huge<T>(v: &Vec<T>) {
    let bytes = v.capacity() * std::mem::size_of::<T>();
    if bytes < 2 * HUGE_PAGE {
        return;
    }
    let start = v.as_ptr() as usize;
    let first = start.next_multiple_of(HUGE_PAGE);
    let end = (start + bytes) / HUGE_PAGE * HUGE_PAGE;
    if end > first {
        #[cfg(target_os = "linux")]
        // SAFETY: madvise with MADV_HUGEPAGE changes no contents and no mapping, only
        // how the kernel may back the range, which lies within `v`'s allocation.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Against a `HashMap`: any mix of inserts and removes, with colliding hashes.
        #[test]
        fn agrees_with_a_hash_map(ops in prop::collection::vec((any::<bool>(), 0u64..64, 0u32..200), 1..600)) {
            let mut idx = SlotIndex::default();
            let mut model: HashMap<u32, u64> = HashMap::new();
            // Few distinct hashes (0..64, spread by a multiplier) so runs and wraps happen.
            let h = |k: u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15) | (k << 58);
            for (insert, k, id) in ops {
                let hash = h(k);
                if insert {
                    if let std::collections::hash_map::Entry::Vacant(e) = model.entry(id) {
                        idx.insert(hash, id);
                        e.insert(hash);
                    }
                } else if let Some(&hh) = model.get(&id) {
                    prop_assert!(idx.remove(hh, id));
                    model.remove(&id);
                } else {
                    prop_assert!(!idx.remove(hash, id));
                }
                prop_assert_eq!(idx.len(), model.len());
            }
            for (&id, &hash) in &model {
                prop_assert_eq!(idx.find(hash, |i| i == id), Some(id));
            }
            for id in 200..210 {
                prop_assert_eq!(idx.find(h(1), |i| i == id), None);
            }
        }
    }

    #[test]
    fn candidate_is_the_first_tag_match() {
        let mut idx = SlotIndex::default();
        idx.insert(mix(7), 3);
        idx.insert(mix(8), 4);
        assert_eq!(idx.candidate(mix(7)), Some(3));
        assert_eq!(idx.candidate(mix(8)), Some(4));
        assert_eq!(idx.find(mix(7), |i| i == 4), None);
        assert!(idx.remove(mix(7), 3));
        assert_eq!(idx.candidate(mix(7)), None);
    }
}
