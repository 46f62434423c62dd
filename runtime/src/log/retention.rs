//! Retention policy: which old segments may be deleted, by time and by size.
//!
//! A pure function over segment summaries, so the rule can be tested without files.
//! It only ever offers a prefix of the sealed segments; the active segment is not
//! passed in and so is never deleted. Compaction by key, if added later, would be a
//! separate policy that rewrites sealed segments rather than choosing a prefix.

/// What retention needs to know about one sealed segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    pub base_offset: u64,
    pub size_bytes: u64,
    /// Largest record timestamp in the segment, `i64::MIN` if it is empty.
    pub max_timestamp_ms: i64,
}

/// Retention limits of a topic. `None` means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<u64>,
}

/// How many leading segments of `sealed` to delete, given the partition's total size
/// (including the active segment) and the current time. Kafka's rules: a segment
/// expires when `now - max_timestamp > retention_ms`; by size, delete the oldest while
/// what remains after the deletion is still at least `retention_bytes`. Deletion stops
/// at the first segment that is kept.
pub fn segments_to_delete(sealed: &[SegmentSummary], total_bytes: u64, now_ms: i64, policy: RetentionPolicy) -> usize {
    let mut remaining = total_bytes;
    let mut n = 0;
    for s in sealed {
        let expired = policy
            .retention_ms
            .is_some_and(|r| s.max_timestamp_ms == i64::MIN || now_ms.saturating_sub(s.max_timestamp_ms) > r);
        let over_size = policy.retention_bytes.is_some_and(|b| remaining.saturating_sub(s.size_bytes) >= b);
        if !(expired || over_size) {
            break;
        }
        remaining = remaining.saturating_sub(s.size_bytes);
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: u64, size: u64, ts: i64) -> SegmentSummary {
        SegmentSummary { base_offset: base, size_bytes: size, max_timestamp_ms: ts }
    }

    #[test]
    fn time_retention_deletes_an_expired_prefix_only() {
        let p = RetentionPolicy { retention_ms: Some(100), retention_bytes: None };
        let s = [seg(0, 10, 0), seg(5, 10, 50), seg(9, 10, 500), seg(12, 10, 10)];
        assert_eq!(segments_to_delete(&s, 50, 151, p), 2);
        assert_eq!(segments_to_delete(&s, 50, 100, p), 0, "exactly at the limit is kept");
        assert_eq!(segments_to_delete(&s, 50, 101, p), 1);
    }

    #[test]
    fn size_retention_keeps_at_least_the_limit() {
        let p = RetentionPolicy { retention_ms: None, retention_bytes: Some(25) };
        let s = [seg(0, 10, 0), seg(5, 10, 0), seg(9, 10, 0)];
        // total 40 (10 in the active segment): deleting the first leaves 30 >= 25, the second would leave 20.
        assert_eq!(segments_to_delete(&s, 40, 0, p), 1);
        let unlimited = RetentionPolicy { retention_ms: None, retention_bytes: None };
        assert_eq!(segments_to_delete(&s, 40, i64::MAX, unlimited), 0);
    }
}
