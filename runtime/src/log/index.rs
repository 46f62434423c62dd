//! Sparse per-segment indexes: offset -> file position, and timestamp -> offset.
//!
//! An entry is added every `index_interval_bytes` of log data, so a lookup finds the
//! nearest batch at or before the target and the reader scans forward at most that
//! many bytes. Entries are kept in memory and written to `.index` / `.timeindex`
//! files when a segment is sealed or the log closes cleanly; the files are doubted on
//! load (size, order, bounds) and rebuilt from the log when they do not check out.
//! This module knows nothing of batches or files beyond the bytes it is given.

/// One offset index entry: offset relative to the segment base, byte position in the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// One time index entry: the largest timestamp up to and including the batch that
/// starts at `relative_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeEntry {
    pub max_timestamp_ms: i64,
    pub relative_offset: u32,
}

/// The sparse offset index of one segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffsetIndex {
    entries: Vec<OffsetEntry>,
}

impl OffsetIndex {
    pub fn push(&mut self, e: OffsetEntry) {
        debug_assert!(self
            .entries
            .last()
            .is_none_or(|l| l.relative_offset < e.relative_offset && l.position < e.position));
        self.entries.push(e);
    }

    /// The last entry whose offset is `<= relative_offset`, or position 0.
    pub fn lookup(&self, relative_offset: u32) -> OffsetEntry {
        let i = self.entries.partition_point(|e| e.relative_offset <= relative_offset);
        if i == 0 {
            OffsetEntry { relative_offset: 0, position: 0 }
        } else {
            self.entries[i - 1]
        }
    }

    pub fn last(&self) -> Option<OffsetEntry> {
        self.entries.last().copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 8);
        for e in &self.entries {
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        out
    }

    /// Decode and check: whole entries, strictly increasing, positions inside `log_bytes`.
    pub fn decode(bytes: &[u8], log_bytes: u64) -> Result<OffsetIndex, String> {
        if !bytes.len().is_multiple_of(8) {
            return Err(format!("size {} is not a multiple of 8", bytes.len()));
        }
        let mut idx = OffsetIndex::default();
        for c in bytes.chunks_exact(8) {
            let e = OffsetEntry {
                relative_offset: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                position: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
            };
            if let Some(l) = idx.entries.last() {
                if l.relative_offset >= e.relative_offset || l.position >= e.position {
                    return Err("entries are not increasing".into());
                }
            }
            if u64::from(e.position) >= log_bytes {
                return Err(format!("position {} is past the end of the log ({log_bytes} bytes)", e.position));
            }
            idx.entries.push(e);
        }
        Ok(idx)
    }
}

/// The sparse time index of one segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimeIndex {
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    /// Add an entry if it raises the maximum timestamp (entries stay increasing in both fields).
    pub fn maybe_push(&mut self, e: TimeEntry) {
        match self.entries.last_mut() {
            Some(l) if e.max_timestamp_ms <= l.max_timestamp_ms => {}
            Some(l) if e.relative_offset == l.relative_offset => l.max_timestamp_ms = e.max_timestamp_ms,
            Some(l) if e.relative_offset < l.relative_offset => {}
            _ => self.entries.push(e),
        }
    }

    /// The relative offset of a batch from which a forward scan finds the first record
    /// with timestamp `>= ts`: the last entry whose maximum is `< ts` (all records up to
    /// and including that batch are older), or 0.
    pub fn lookup(&self, ts: i64) -> u32 {
        let i = self.entries.partition_point(|e| e.max_timestamp_ms < ts);
        if i == 0 {
            0
        } else {
            self.entries[i - 1].relative_offset
        }
    }

    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 12);
        for e in &self.entries {
            out.extend_from_slice(&e.max_timestamp_ms.to_be_bytes());
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
        }
        out
    }

    /// Decode and check: whole entries, increasing, offsets below `relative_end`.
    pub fn decode(bytes: &[u8], relative_end: u64) -> Result<TimeIndex, String> {
        if !bytes.len().is_multiple_of(12) {
            return Err(format!("size {} is not a multiple of 12", bytes.len()));
        }
        let mut idx = TimeIndex::default();
        for c in bytes.chunks_exact(12) {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&c[..8]);
            let e = TimeEntry {
                max_timestamp_ms: i64::from_be_bytes(ts),
                relative_offset: u32::from_be_bytes([c[8], c[9], c[10], c[11]]),
            };
            if let Some(l) = idx.entries.last() {
                if l.max_timestamp_ms >= e.max_timestamp_ms || l.relative_offset > e.relative_offset {
                    return Err("entries are not increasing".into());
                }
            }
            if u64::from(e.relative_offset) >= relative_end {
                return Err("offset past the end of the segment".into());
            }
            idx.entries.push(e);
        }
        Ok(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_lookup_is_a_floor() {
        let mut i = OffsetIndex::default();
        i.push(OffsetEntry { relative_offset: 10, position: 4096 });
        i.push(OffsetEntry { relative_offset: 20, position: 8200 });
        assert_eq!(i.lookup(0).position, 0);
        assert_eq!(i.lookup(9).position, 0);
        assert_eq!(i.lookup(10).position, 4096);
        assert_eq!(i.lookup(19).position, 4096);
        assert_eq!(i.lookup(1000).position, 8200);
        let d = OffsetIndex::decode(&i.encode(), 9000).unwrap();
        assert_eq!(d, i);
        assert!(OffsetIndex::decode(&i.encode(), 8200).is_err(), "position past the log end");
        assert!(OffsetIndex::decode(&i.encode()[..7], 9000).is_err());
    }

    #[test]
    fn time_lookup_starts_before_the_first_newer_record() {
        let mut t = TimeIndex::default();
        t.maybe_push(TimeEntry { max_timestamp_ms: 100, relative_offset: 0 });
        t.maybe_push(TimeEntry { max_timestamp_ms: 90, relative_offset: 5 }); // not a new max
        t.maybe_push(TimeEntry { max_timestamp_ms: 200, relative_offset: 10 });
        assert_eq!(t.lookup(50), 0);
        assert_eq!(t.lookup(100), 0);
        assert_eq!(t.lookup(101), 0);
        assert_eq!(t.lookup(201), 10);
        assert_eq!(TimeIndex::decode(&t.encode(), 11).unwrap(), t);
        assert!(TimeIndex::decode(&t.encode(), 10).is_err());
    }
}
