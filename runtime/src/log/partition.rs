//! One partition: an ordered list of segments, appends with group commit, reads by
//! offset and time, recovery on open, tail waiting and retention.
//!
//! Concurrency: one mutex guards the segment list and end offset (held only for the
//! write syscall and bookkeeping, never for an fsync); a second mutex plus condvar
//! runs group commit: the first appender that needs durability becomes the leader,
//! fsyncs everything written so far, and wakes every appender it covered. Lock order:
//! `state` before `sync`; nobody holds `sync` while taking `state`.
//! This module knows nothing of topics' metadata, partitioners or consumer groups.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use super::batch::{
    encode_batch, set_base_offset, BatchError, BatchHeader, NewRecord, Record, RecordBatch, BATCH_BYTES_MAX,
    BATCH_HEADER_BYTES,
};
use super::error::{LogError, Result};
use super::io::{Clock, Io};
use super::retention::{segments_to_delete, RetentionPolicy, SegmentSummary};
use super::segment::{index_path, log_path, parse_log_name, read_range, time_index_path, Segment};

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Acks {
    /// After `fdatasync`: survives power loss (as far as the guest OS can tell).
    #[default]
    Fsync,
    /// After the write reached the OS page cache: survives a crash of this process,
    /// not a crash of the machine.
    Os,
}

/// Whether a partition is opened to write (exclusive; runs recovery) or only to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    /// Never modifies files; a torn tail is treated as the end (a writer in another
    /// process may be in the middle of an append). Use [`Partition::refresh`] to see
    /// data appended by another process.
    ReadOnly,
}

/// Per-partition settings (from the topic's configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionConfig {
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub index_interval_bytes: u64,
    pub retention: RetentionPolicy,
}

/// Something recovery did or found, reported to the caller (and logged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryEvent {
    /// A torn last batch was cut off.
    TruncatedTail {
        topic: String,
        partition: u32,
        segment: PathBuf,
        position: u64,
        offset: u64,
        bytes_cut: u64,
        reason: String,
    },
    /// A missing or inconsistent index was rebuilt from the log.
    IndexRebuilt { topic: String, partition: u32, segment: PathBuf, reason: String },
}

impl std::fmt::Display for RecoveryEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryEvent::TruncatedTail { topic, partition, segment, position, offset, bytes_cut, reason } => write!(
                f,
                "topic `{topic}` partition {partition}: truncated a torn tail of {bytes_cut} bytes at offset {offset} (byte {position} of {}): {reason}",
                segment.display()
            ),
            RecoveryEvent::IndexRebuilt { topic, partition, segment, reason } => write!(
                f,
                "topic `{topic}` partition {partition}: rebuilt the index of {} ({reason})",
                segment.display()
            ),
        }
    }
}

/// Offsets of an acknowledged append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub partition: u32,
    pub base_offset: u64,
    pub last_offset: u64,
}

/// A summary of a partition for `describe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    pub start_offset: u64,
    pub end_offset: u64,
    pub size_bytes: u64,
    pub segments: usize,
}

/// What a retention pass deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
}

#[derive(Debug)]
struct State {
    segments: Vec<Segment>,
    next_offset: u64,
    failed: Option<String>,
}

#[derive(Debug)]
struct SyncState {
    /// Every offset below this is known durable.
    durable_offset: u64,
    syncing: bool,
    failed: Option<String>,
}

/// A partition of a topic.
#[derive(Debug)]
pub struct Partition {
    topic: String,
    id: u32,
    dir: PathBuf,
    io: Arc<dyn Io>,
    clock: Arc<dyn Clock>,
    config: PartitionConfig,
    access: Access,
    state: Mutex<State>,
    data_cv: Condvar,
    sync: Mutex<SyncState>,
    sync_cv: Condvar,
    end_tx: tokio::sync::watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock is a bug; the data it guards stays consistent
    // enough to report errors, so keep going rather than cascade panics.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Partition {
    /// Create the directory and first (empty) segment of a new partition.
    pub fn create(dir: &Path, io: &dyn Io) -> Result<()> {
        io.create_dir_all(dir).map_err(|e| LogError::io(format!("creating {}", dir.display()), e))?;
        let p = log_path(dir, 0);
        io.open_rw(&p).map_err(|e| LogError::io(format!("creating {}", p.display()), e))?;
        io.sync_dir(dir).map_err(|e| LogError::io(format!("syncing {}", dir.display()), e))?;
        Ok(())
    }

    /// Open a partition, recovering it if it was not closed cleanly.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        topic: &str,
        id: u32,
        dir: &Path,
        io: Arc<dyn Io>,
        clock: Arc<dyn Clock>,
        config: PartitionConfig,
        access: Access,
    ) -> Result<(Partition, Vec<RecoveryEvent>)> {
        let ioerr = |what: &str, p: &Path, e| LogError::io(format!("{what} {}", p.display()), e);
        let mut bases: Vec<u64> =
            io.list_dir(dir).map_err(|e| ioerr("listing", dir, e))?.iter().filter_map(|p| parse_log_name(p)).collect();
        bases.sort_unstable();
        if bases.is_empty() {
            return Err(LogError::CorruptFile {
                what: "partition",
                path: dir.to_path_buf(),
                reason: "no segment files".into(),
            });
        }
        let now = clock.now_ms();
        let interval = config.index_interval_bytes;
        let mut events = Vec::new();
        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
        let corrupt = |seg: &Segment, stop: super::segment::ScanStop| LogError::Corrupt {
            topic: topic.to_string(),
            partition: id,
            segment: seg.path.clone(),
            offset: stop.offset,
            position: stop.position,
            reason: stop.reason,
        };
        for (i, &base) in bases.iter().enumerate() {
            let path = log_path(dir, base);
            let file = match access {
                Access::ReadWrite => io.open_rw(&path),
                Access::ReadOnly => io.open_read(&path),
            }
            .map_err(|e| ioerr("opening", &path, e))?;
            let len = file.size().map_err(|e| ioerr("reading the size of", &path, e))?;
            let mut seg = Segment::new(base, path.clone(), file, now);
            if let Some(prev) = segments.last() {
                if prev.next_offset != base {
                    return Err(LogError::CorruptFile {
                        what: "segment sequence",
                        path,
                        reason: format!(
                            "the previous segment ends at offset {}, but this one starts at {base}",
                            prev.next_offset
                        ),
                    });
                }
            }
            let active = i + 1 == bases.len();
            if !active {
                // Sealed: trust checked indexes and validate from the last index entry on.
                let loaded = seg.load_indexes(io.as_ref(), dir, len);
                let mut rebuilt = None;
                match loaded {
                    Ok(()) => {
                        let (pos, off) = seg.resume_point();
                        let max_ts = seg.time_index.last().map_or(i64::MIN, |e| e.max_timestamp_ms);
                        seg.reset_to(pos, off, max_ts);
                        let stop = seg.scan_from(pos, len, interval).map_err(|e| ioerr("reading", &path, e))?;
                        if stop.is_some() {
                            rebuilt = Some("the index does not match the log".to_string());
                        }
                    }
                    Err(reason) => rebuilt = Some(reason),
                }
                if let Some(reason) = rebuilt {
                    let file = seg.file.clone();
                    seg = Segment::new(base, path.clone(), file, now);
                    if let Some(stop) = seg.scan_from(0, len, interval).map_err(|e| ioerr("reading", &path, e))? {
                        return Err(corrupt(&seg, stop));
                    }
                    seg.seal_time_index();
                    if access == Access::ReadWrite {
                        seg.write_indexes(io.as_ref(), dir).map_err(|e| ioerr("writing the indexes of", &path, e))?;
                    }
                    let ev = RecoveryEvent::IndexRebuilt {
                        topic: topic.to_string(),
                        partition: id,
                        segment: path.clone(),
                        reason,
                    };
                    tracing::warn!("{ev}");
                    events.push(ev);
                }
            } else if let Some(stop) = seg.scan_from(0, len, interval).map_err(|e| ioerr("reading", &path, e))? {
                if !stop.torn {
                    return Err(corrupt(&seg, stop));
                }
                if access == Access::ReadWrite {
                    seg.file.set_len(stop.position).map_err(|e| ioerr("truncating", &path, e))?;
                    seg.file.sync_data().map_err(|e| ioerr("syncing", &path, e))?;
                    let ev = RecoveryEvent::TruncatedTail {
                        topic: topic.to_string(),
                        partition: id,
                        segment: path.clone(),
                        position: stop.position,
                        offset: stop.offset,
                        bytes_cut: len - stop.position,
                        reason: stop.reason.to_string(),
                    };
                    tracing::warn!("{ev}");
                    events.push(ev);
                }
            }
            segments.push(seg);
        }
        let next_offset = segments.last().map_or(0, |s| s.next_offset);
        let (end_tx, _) = tokio::sync::watch::channel(next_offset);
        let p = Partition {
            topic: topic.to_string(),
            id,
            dir: dir.to_path_buf(),
            io,
            clock,
            config,
            access,
            state: Mutex::new(State { segments, next_offset, failed: None }),
            data_cv: Condvar::new(),
            // Recovery validated what is on disk; treat it as the durable baseline.
            sync: Mutex::new(SyncState { durable_offset: next_offset, syncing: false, failed: None }),
            sync_cv: Condvar::new(),
            end_tx,
        };
        if access == Access::ReadWrite {
            p.enforce_retention()?;
        }
        Ok((p, events))
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// Append `records` as one batch. Blocking: with [`Acks::Fsync`] it returns once an
    /// fdatasync covering the batch completed (shared with concurrent appenders).
    pub fn append(&self, records: &[NewRecord], acks: Acks) -> Result<Appended> {
        if records.is_empty() {
            return Err(LogError::EmptyAppend);
        }
        let buf = encode_batch(0, records);
        if buf.len() > BATCH_BYTES_MAX {
            return Err(LogError::BatchTooLarge { bytes: buf.len(), limit: BATCH_BYTES_MAX });
        }
        self.append_encoded(buf, acks)
    }

    /// Append one batch that was encoded elsewhere (a Kafka producer's batch, possibly
    /// compressed, with its producer id and sequence), stored byte for byte as given
    /// except the base offset (assigned here) and the leader epoch (set to 0); neither is
    /// covered by the CRC. It is checked first: length, magic, CRC, codec and every
    /// record (decompressed), so nothing unreadable enters the log.
    pub fn append_batch(&self, batch: &[u8], acks: Acks) -> Result<Appended> {
        if batch.len() > BATCH_BYTES_MAX {
            return Err(LogError::BatchTooLarge { bytes: batch.len(), limit: BATCH_BYTES_MAX });
        }
        let checked = RecordBatch::from_bytes(Bytes::copy_from_slice(batch))
            .and_then(|b| b.validate_records().map(|()| b))
            .map_err(LogError::InvalidBatch)?;
        if checked.bytes().len() != batch.len() {
            return Err(LogError::InvalidBatch(BatchError::BadLength(batch.len() as i64)));
        }
        if checked.header().record_count == 0 {
            return Err(LogError::EmptyAppend);
        }
        if checked.is_control() {
            return Err(LogError::InvalidBatch(BatchError::MalformedRecord {
                index: 0,
                what: "control batches (transactions) are not supported",
            }));
        }
        let mut buf = bytes::BytesMut::from(batch);
        buf[12..16].copy_from_slice(&0i32.to_be_bytes());
        self.append_encoded(buf, acks)
    }

    fn append_encoded(&self, mut buf: bytes::BytesMut, acks: Acks) -> Result<Appended> {
        let appended = {
            let mut st = lock(&self.state);
            self.check_writable(&st)?;
            self.roll_if_needed(&mut st, buf.len() as u64)?;
            let base = st.next_offset;
            set_base_offset(&mut buf, base);
            let header = BatchHeader::parse(&buf).map_err(|e| self.internal_batch_error(e, base))?;
            let seg = st.segments.last_mut().ok_or_else(|| self.no_segment())?;
            if let Err(e) = seg.file.write_all_at(&buf, seg.size) {
                // Undo a partial write so the file stays a sequence of whole batches.
                let undo = seg.file.set_len(seg.size);
                let err = LogError::io(format!("appending to {}", seg.path.display()), e);
                if undo.is_err() {
                    st.failed = Some(err.to_string());
                }
                return Err(err);
            }
            seg.on_append(&header, buf.len() as u64, self.config.index_interval_bytes);
            st.next_offset = seg.next_offset;
            let end = st.next_offset;
            drop(st);
            self.data_cv.notify_all();
            self.end_tx.send_replace(end);
            Appended { partition: self.id, base_offset: base, last_offset: end - 1 }
        };
        if acks == Acks::Fsync {
            self.wait_durable(appended.last_offset + 1)?;
        }
        Ok(appended)
    }

    /// Block until every offset up to and including `offset` is fsynced (sharing the
    /// fsync with concurrent appenders). `append(.., Acks::Os)` followed by this is
    /// `append(.., Acks::Fsync)` split in two, so a caller can overlap several partitions.
    /// Offsets not written yet are ignored (only what exists can be synced).
    pub fn sync_through(&self, offset: u64) -> Result<()> {
        let end = offset.saturating_add(1).min(self.end_offset());
        self.wait_durable(end)
    }

    /// Group commit: wait until every offset below `end` is fsynced, doing the fsync
    /// ourselves if nobody else is.
    fn wait_durable(&self, end: u64) -> Result<()> {
        let mut s = lock(&self.sync);
        loop {
            if let Some(reason) = &s.failed {
                return Err(self.failed_error(reason.clone()));
            }
            if s.durable_offset >= end {
                return Ok(());
            }
            if s.syncing {
                s = self.sync_cv.wait(s).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            s.syncing = true;
            drop(s);
            let (target, file, path) = {
                let st = lock(&self.state);
                match st.segments.last() {
                    Some(seg) => (st.next_offset, seg.file.clone(), seg.path.clone()),
                    None => return Err(self.no_segment()),
                }
            };
            let r = file.sync_data();
            s = lock(&self.sync);
            s.syncing = false;
            match r {
                Ok(()) => s.durable_offset = s.durable_offset.max(target),
                Err(e) => {
                    // After a failed fsync the page cache state is unknown (the "fsyncgate"
                    // lesson): refuse further writes until the partition is reopened and
                    // recovered from what is really on disk.
                    // (check_writable sees this flag; taking `state` here would invert the lock order)
                    s.failed = Some(format!("fsync of {} failed: {e}", path.display()));
                }
            }
            self.sync_cv.notify_all();
        }
    }

    fn check_writable(&self, st: &State) -> Result<()> {
        if self.access == Access::ReadOnly {
            return Err(LogError::ReadOnly(self.topic.clone()));
        }
        if let Some(reason) = &st.failed {
            return Err(self.failed_error(reason.clone()));
        }
        if let Some(reason) = &lock(&self.sync).failed {
            return Err(self.failed_error(reason.clone()));
        }
        Ok(())
    }

    fn failed_error(&self, reason: String) -> LogError {
        LogError::Failed { topic: self.topic.clone(), partition: self.id, reason }
    }

    fn no_segment(&self) -> LogError {
        LogError::CorruptFile { what: "partition", path: self.dir.clone(), reason: "no segments".into() }
    }

    fn internal_batch_error(&self, reason: BatchError, offset: u64) -> LogError {
        LogError::Corrupt {
            topic: self.topic.clone(),
            partition: self.id,
            segment: self.dir.clone(),
            offset,
            position: 0,
            reason,
        }
    }

    fn roll_if_needed(&self, st: &mut State, incoming: u64) -> Result<()> {
        let now = self.clock.now_ms();
        let Some(active) = st.segments.last() else {
            return Err(self.no_segment());
        };
        let by_size = active.size > 0 && active.size + incoming > self.config.segment_bytes;
        let by_age = active.size > 0 && now.saturating_sub(active.created_ms) >= self.config.segment_ms;
        if by_size || by_age {
            self.roll_locked(st)?;
        }
        Ok(())
    }

    /// Seal the active segment and start a new one (no-op if the active one is empty).
    pub fn roll(&self) -> Result<()> {
        let mut st = lock(&self.state);
        self.check_writable(&st)?;
        if st.segments.last().is_some_and(|s| !s.is_empty()) {
            self.roll_locked(&mut st)?;
        }
        Ok(())
    }

    fn roll_locked(&self, st: &mut State) -> Result<()> {
        let base = st.next_offset;
        {
            let Some(active) = st.segments.last_mut() else {
                return Err(self.no_segment());
            };
            if let Err(e) = active.file.sync_data() {
                let reason = format!("fsync of {} failed: {e}", active.path.display());
                st.failed = Some(reason.clone());
                lock(&self.sync).failed = Some(reason.clone());
                self.sync_cv.notify_all();
                return Err(self.failed_error(reason));
            }
            active.seal_time_index();
            active
                .write_indexes(self.io.as_ref(), &self.dir)
                .map_err(|e| LogError::io(format!("writing the indexes of {}", active.path.display()), e))?;
        }
        {
            let mut s = lock(&self.sync);
            s.durable_offset = s.durable_offset.max(base);
        }
        let path = log_path(&self.dir, base);
        let file = self.io.open_rw(&path).map_err(|e| LogError::io(format!("creating {}", path.display()), e))?;
        self.io.sync_dir(&self.dir).map_err(|e| LogError::io(format!("syncing {}", self.dir.display()), e))?;
        st.segments.push(Segment::new(base, path, file, self.clock.now_ms()));
        self.retention_locked(st)?;
        Ok(())
    }

    /// Delete old sealed segments per the retention policy (never the active one).
    pub fn enforce_retention(&self) -> Result<RetentionOutcome> {
        if self.access == Access::ReadOnly {
            return Err(LogError::ReadOnly(self.topic.clone()));
        }
        let mut st = lock(&self.state);
        self.retention_locked(&mut st)
    }

    fn retention_locked(&self, st: &mut State) -> Result<RetentionOutcome> {
        let total: u64 = st.segments.iter().map(|s| s.size).sum();
        let sealed: Vec<SegmentSummary> = st.segments[..st.segments.len().saturating_sub(1)]
            .iter()
            .map(|s| SegmentSummary {
                base_offset: s.base_offset,
                size_bytes: s.size,
                max_timestamp_ms: s.max_timestamp_ms,
            })
            .collect();
        let n = segments_to_delete(&sealed, total, self.clock.now_ms(), self.config.retention);
        let mut out = RetentionOutcome::default();
        for seg in st.segments.drain(..n) {
            for p in
                [index_path(&self.dir, seg.base_offset), time_index_path(&self.dir, seg.base_offset), seg.path.clone()]
            {
                match self.io.remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(LogError::io(format!("deleting {}", p.display()), e)),
                }
            }
            tracing::info!(topic = %self.topic, partition = self.id, base_offset = seg.base_offset, "retention deleted a segment");
            out.segments_deleted += 1;
            out.bytes_deleted += seg.size;
        }
        if n > 0 {
            self.io.sync_dir(&self.dir).map_err(|e| LogError::io(format!("syncing {}", self.dir.display()), e))?;
        }
        Ok(out)
    }

    /// The first retained offset.
    pub fn start_offset(&self) -> u64 {
        lock(&self.state).segments.first().map_or(0, |s| s.base_offset)
    }

    /// The offset the next append will get (one past the last record).
    pub fn end_offset(&self) -> u64 {
        lock(&self.state).next_offset
    }

    pub fn info(&self) -> PartitionInfo {
        let st = lock(&self.state);
        PartitionInfo {
            partition: self.id,
            start_offset: st.segments.first().map_or(0, |s| s.base_offset),
            end_offset: st.next_offset,
            size_bytes: st.segments.iter().map(|s| s.size).sum(),
            segments: st.segments.len(),
        }
    }

    /// Whole batches starting with the one that holds `offset`, up to about `max_bytes`
    /// (at least one batch). The first batch may hold records before `offset`.
    /// Every batch returned passed its CRC check. Empty at the end of the log.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<Vec<RecordBatch>> {
        let (file, mut pos, limit, path) = {
            let st = lock(&self.state);
            let start = st.segments.first().map_or(0, |s| s.base_offset);
            if offset < start || offset > st.next_offset {
                return Err(LogError::OffsetOutOfRange {
                    topic: self.topic.clone(),
                    partition: self.id,
                    offset,
                    start,
                    end: st.next_offset,
                });
            }
            if offset == st.next_offset {
                return Ok(Vec::new());
            }
            let mut i = st.segments.partition_point(|s| s.base_offset <= offset).saturating_sub(1);
            while i + 1 < st.segments.len() && st.segments[i].next_offset <= offset {
                i += 1;
            }
            let s = &st.segments[i];
            (s.file.clone(), s.position_for(offset), s.size, s.path.clone())
        };
        let window_len = (max_bytes as u64)
            .saturating_add(self.config.index_interval_bytes)
            .saturating_add(BATCH_HEADER_BYTES as u64);
        let mut out = Vec::new();
        let mut taken = 0usize;
        let mut window = Bytes::new();
        let mut wpos = pos;
        let mut expected = None;
        while pos < limit {
            let in_window = |p: u64, n: u64, wpos: u64, w: &Bytes| p >= wpos && p + n <= wpos + w.len() as u64;
            if !in_window(pos, BATCH_HEADER_BYTES as u64, wpos, &window) {
                if !out.is_empty() {
                    break;
                }
                window = read_range(file.as_ref(), pos, window_len.min(limit - pos) as usize)
                    .map_err(|e| LogError::io(format!("reading {}", path.display()), e))?;
                wpos = pos;
            }
            let at = (pos - wpos) as usize;
            let corrupt = |reason, off| LogError::Corrupt {
                topic: self.topic.clone(),
                partition: self.id,
                segment: path.clone(),
                offset: off,
                position: pos,
                reason,
            };
            let header = BatchHeader::parse(&window[at..]).map_err(|e| corrupt(e, expected.unwrap_or(offset)))?;
            let total = header.total_bytes() as u64;
            if pos + total > limit {
                return Err(corrupt(
                    BatchError::Incomplete { needed: total as usize, available: (limit - pos) as usize },
                    header.base_offset as u64,
                ));
            }
            if (header.last_offset() as u64) < offset {
                pos += total;
                expected = Some(header.last_offset() as u64 + 1);
                continue;
            }
            if !out.is_empty() && taken + total as usize > max_bytes {
                break;
            }
            if !in_window(pos, total, wpos, &window) {
                if !out.is_empty() {
                    break;
                }
                window = read_range(file.as_ref(), pos, total.max(window_len.min(limit - pos)) as usize)
                    .map_err(|e| LogError::io(format!("reading {}", path.display()), e))?;
                wpos = pos;
            }
            let at = (pos - wpos) as usize;
            let batch = RecordBatch::from_bytes(window.slice(at..at + total as usize))
                .map_err(|e| corrupt(e, header.base_offset as u64))?;
            if let Some(exp) = expected {
                if batch.base_offset() != exp {
                    return Err(corrupt(
                        BatchError::MalformedRecord {
                            index: 0,
                            what: "batch base offset breaks the dense offset sequence",
                        },
                        exp,
                    ));
                }
            }
            expected = Some(batch.last_offset() + 1);
            taken += total as usize;
            pos += total;
            out.push(batch);
            if taken >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Records with offset `>= offset`, from batches read as by [`Partition::read`].
    pub fn read_records(&self, offset: u64, max_bytes: usize) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for b in self.read(offset, max_bytes)? {
            for r in b.records() {
                let r = r.map_err(|e| LogError::Corrupt {
                    topic: self.topic.clone(),
                    partition: self.id,
                    segment: self.dir.clone(),
                    offset: b.base_offset(),
                    position: 0,
                    reason: e,
                })?;
                if r.offset >= offset {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// The first offset whose record timestamp is `>= ts_ms`, or `None` if there is none
    /// (Kafka's ListOffsets by timestamp).
    pub fn offset_for_time(&self, ts_ms: i64) -> Result<Option<u64>> {
        let found = {
            let st = lock(&self.state);
            st.segments
                .iter()
                .find(|s| s.max_timestamp_ms >= ts_ms)
                .map(|s| (s.base_offset + u64::from(s.time_index.lookup(ts_ms)), s.next_offset))
        };
        let Some((mut offset, _)) = found else {
            return Ok(None);
        };
        // The segment holds a record at or after `ts_ms`, so the scan ends there; it
        // only runs past the segment if the data changed under us (then the end stops it).
        loop {
            let batches = self.read(offset, 1024 * 1024)?;
            if batches.is_empty() {
                return Ok(None);
            }
            for b in &batches {
                if b.max_timestamp() >= ts_ms {
                    for r in b.records() {
                        let r = r.map_err(|e| LogError::Corrupt {
                            topic: self.topic.clone(),
                            partition: self.id,
                            segment: self.dir.clone(),
                            offset: b.base_offset(),
                            position: 0,
                            reason: e,
                        })?;
                        if r.offset >= offset && r.timestamp_ms >= ts_ms {
                            return Ok(Some(r.offset));
                        }
                    }
                }
                offset = b.last_offset() + 1;
            }
        }
    }

    /// Wait (async) until the partition holds an offset `>= offset`, i.e. its end
    /// offset is greater than `offset`. Only appends made through this handle wake it;
    /// for another process's appends, poll [`Partition::refresh`].
    pub async fn wait_for(&self, offset: u64) {
        let mut rx = self.end_tx.subscribe();
        let _ = rx.wait_for(|&end| end > offset).await;
    }

    /// Blocking variant of [`Partition::wait_for`] with a timeout; returns whether data is there.
    pub fn wait_for_blocking(&self, offset: u64, timeout: Duration) -> bool {
        let st = lock(&self.state);
        let (st, _) = self
            .data_cv
            .wait_timeout_while(st, timeout, |st| st.next_offset <= offset)
            .unwrap_or_else(|p| p.into_inner());
        st.next_offset > offset
    }

    /// For read-only handles: pick up batches and segments appended by another process.
    /// Returns the new end offset.
    pub fn refresh(&self) -> Result<u64> {
        let mut st = lock(&self.state);
        loop {
            let interval = self.config.index_interval_bytes;
            let Some(seg) = st.segments.last_mut() else {
                return Err(self.no_segment());
            };
            let len =
                seg.file.size().map_err(|e| LogError::io(format!("reading the size of {}", seg.path.display()), e))?;
            if len > seg.size {
                let from = seg.size;
                if let Some(stop) = seg
                    .scan_from(from, len, interval)
                    .map_err(|e| LogError::io(format!("reading {}", seg.path.display()), e))?
                {
                    if !stop.torn {
                        return Err(LogError::Corrupt {
                            topic: self.topic.clone(),
                            partition: self.id,
                            segment: seg.path.clone(),
                            offset: stop.offset,
                            position: stop.position,
                            reason: stop.reason,
                        });
                    }
                }
            }
            let next = seg.next_offset;
            st.next_offset = next;
            let path = log_path(&self.dir, next);
            if st.segments.last().is_none_or(|s| s.base_offset != next) && path.exists() {
                match self.io.open_read(&path) {
                    Ok(file) => {
                        let now = self.clock.now_ms();
                        st.segments.push(Segment::new(next, path, file, now));
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(LogError::io(format!("opening {}", path.display()), e)),
                }
            }
            let end = st.next_offset;
            drop(st);
            self.end_tx.send_replace(end);
            self.data_cv.notify_all();
            return Ok(end);
        }
    }

    /// Make everything appended so far durable (as if it had been appended with
    /// [`Acks::Fsync`]), sharing the fsync with concurrent appenders.
    pub fn flush(&self) -> Result<()> {
        let end = self.end_offset();
        self.wait_durable(end)
    }
}
