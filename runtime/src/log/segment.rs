//! One segment: a `.log` file of consecutive record batches, named by its base offset,
//! with its in-memory sparse indexes and the bookkeeping to append, scan and seal it.
//!
//! A segment knows its own bytes and nothing of partitions, group commit or retention.
//! Scanning validates every batch it passes (length, magic, CRC, record structure and
//! dense offsets) and reports the first bad position instead of skipping it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::batch::{BatchError, BatchHeader, RecordBatch, BATCH_HEADER_BYTES, MAGIC_V2};
use super::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use super::io::{Io, IoFile};

/// Bytes read per I/O while scanning a segment.
const SCAN_WINDOW_BYTES: usize = 1024 * 1024;

pub fn log_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}
pub fn index_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.index"))
}
pub fn time_index_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.timeindex"))
}

/// Parse a segment file name (`00000000000000000042.log`) into its base offset.
pub fn parse_log_name(path: &Path) -> Option<u64> {
    if path.extension()? != "log" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// A segment of a partition.
#[derive(Debug)]
pub struct Segment {
    pub base_offset: u64,
    pub path: PathBuf,
    pub file: Arc<dyn IoFile>,
    /// Bytes of valid batches.
    pub size: u64,
    /// The offset after the last record (== base_offset when empty).
    pub next_offset: u64,
    /// Largest record timestamp, `i64::MIN` when empty.
    pub max_timestamp_ms: i64,
    /// Clock time when this segment was created or opened (for roll by age).
    pub created_ms: i64,
    pub index: OffsetIndex,
    pub time_index: TimeIndex,
    bytes_since_index: u64,
}

/// Where a scan stopped early and why.
#[derive(Debug)]
pub struct ScanStop {
    pub position: u64,
    /// The offset the next batch should have had.
    pub offset: u64,
    pub reason: BatchError,
    /// True when no valid batch follows the bad position, so what is there can only be
    /// the remains of an unfinished write (a torn tail). False means good data follows
    /// the damage: corruption before the tail.
    pub torn: bool,
}

impl Segment {
    pub fn new(base_offset: u64, path: PathBuf, file: Arc<dyn IoFile>, created_ms: i64) -> Segment {
        Segment {
            base_offset,
            path,
            file,
            size: 0,
            next_offset: base_offset,
            max_timestamp_ms: i64::MIN,
            created_ms,
            index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            bytes_since_index: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Account for a batch of `len` bytes just written at `self.size`.
    pub fn on_append(&mut self, h: &BatchHeader, len: u64, index_interval_bytes: u64) {
        let rel = (h.base_offset as u64 - self.base_offset) as u32;
        self.max_timestamp_ms = self.max_timestamp_ms.max(h.max_timestamp);
        if self.size > 0 && self.bytes_since_index >= index_interval_bytes {
            self.index.push(OffsetEntry { relative_offset: rel, position: self.size as u32 });
            self.time_index.maybe_push(TimeEntry { max_timestamp_ms: self.max_timestamp_ms, relative_offset: rel });
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += len;
        self.size += len;
        self.next_offset = h.last_offset() as u64 + 1;
    }

    /// Add a final time index entry so the index's last entry holds the segment's
    /// maximum timestamp (done when the segment is sealed, as Kafka does on roll).
    pub fn seal_time_index(&mut self) {
        if self.size > 0 {
            let rel = self.index.last().map_or(0, |e| e.relative_offset);
            self.time_index.maybe_push(TimeEntry { max_timestamp_ms: self.max_timestamp_ms, relative_offset: rel });
        }
    }

    /// Scan batches from `from` (which must be a batch boundary holding offset
    /// `self.next_offset`) up to `limit` bytes, validating each and updating the
    /// indexes, size and next offset. Returns where it stopped early, if it did.
    pub fn scan_from(&mut self, from: u64, limit: u64, index_interval_bytes: u64) -> std::io::Result<Option<ScanStop>> {
        debug_assert_eq!(from, self.size);
        let mut pos = from;
        let mut window = Bytes::new();
        let mut window_pos = pos;
        while pos < limit {
            // Make sure the header is in the window.
            let in_window =
                |pos: u64, need: u64, wpos: u64, w: &Bytes| pos >= wpos && pos + need <= wpos + w.len() as u64;
            let hdr_need = (BATCH_HEADER_BYTES as u64).min(limit - pos);
            if !in_window(pos, hdr_need, window_pos, &window) {
                let len = (SCAN_WINDOW_BYTES as u64).min(limit - pos);
                window = read_range(self.file.as_ref(), pos, len as usize)?;
                window_pos = pos;
            }
            let at = (pos - window_pos) as usize;
            let stop =
                |reason: BatchError, torn: bool| ScanStop { position: pos, offset: self.next_offset, reason, torn };
            let header = match BatchHeader::parse(&window[at..]) {
                Ok(h) => h,
                Err(e) => {
                    let torn = !valid_batch_follows(self.file.as_ref(), pos + 1, limit, self.next_offset)?;
                    return Ok(Some(stop(e, torn)));
                }
            };
            let total = header.total_bytes() as u64;
            if pos + total > limit {
                let e = BatchError::Incomplete { needed: total as usize, available: (limit - pos) as usize };
                let torn = !valid_batch_follows(self.file.as_ref(), pos + 1, limit, self.next_offset)?;
                return Ok(Some(stop(e, torn)));
            }
            let bytes = if pos + total <= window_pos + window.len() as u64 {
                window.slice(at..at + total as usize)
            } else {
                read_range(self.file.as_ref(), pos, total as usize)?
            };
            let checked = RecordBatch::from_bytes(bytes).and_then(|b| b.validate_records().map(|()| b));
            let batch = match checked {
                Ok(b) => b,
                Err(e) => {
                    let torn = !valid_batch_follows(self.file.as_ref(), pos + 1, limit, self.next_offset)?;
                    return Ok(Some(stop(e, torn)));
                }
            };
            if batch.base_offset() != self.next_offset {
                let e = BatchError::MalformedRecord {
                    index: 0,
                    what: "batch base offset breaks the dense offset sequence",
                };
                let torn = !valid_batch_follows(self.file.as_ref(), pos + 1, limit, self.next_offset)?;
                return Ok(Some(stop(e, torn)));
            }
            self.on_append(batch.header(), total, index_interval_bytes);
            pos += total;
        }
        Ok(None)
    }

    /// Write the indexes next to the log (atomically, durably).
    pub fn write_indexes(&self, io: &dyn Io, dir: &Path) -> std::io::Result<()> {
        io.write_atomic(&index_path(dir, self.base_offset), &self.index.encode())?;
        io.write_atomic(&time_index_path(dir, self.base_offset), &self.time_index.encode())
    }

    /// Try to load the index files of a sealed segment of `log_bytes` bytes. Returns
    /// `Err(reason)` when they are missing or do not check out; the caller rebuilds.
    pub fn load_indexes(&mut self, io: &dyn Io, dir: &Path, log_bytes: u64) -> Result<(), String> {
        let idx = io.read(&index_path(dir, self.base_offset)).map_err(|e| format!("offset index: {e}"))?;
        let tidx = io.read(&time_index_path(dir, self.base_offset)).map_err(|e| format!("time index: {e}"))?;
        let index = OffsetIndex::decode(&idx, log_bytes)?;
        let time_index = TimeIndex::decode(&tidx, u64::from(u32::MAX))?;
        self.index = index;
        self.time_index = time_index;
        Ok(())
    }

    /// Position of the batch from which to scan for `offset` (index floor).
    pub fn position_for(&self, offset: u64) -> u64 {
        let rel = offset.saturating_sub(self.base_offset).min(u64::from(u32::MAX)) as u32;
        u64::from(self.index.lookup(rel).position)
    }

    /// Position of the batch from which to scan for the first record with timestamp `>= ts`.
    pub fn position_for_time(&self, ts: i64) -> u64 {
        let rel = self.time_index.lookup(ts);
        self.position_for(self.base_offset + u64::from(rel))
    }

    /// The last index entry's relative offset after loading sealed indexes, used to
    /// resume a scan near the end of the segment.
    pub fn resume_point(&self) -> (u64, u64) {
        match self.index.last() {
            Some(e) => (u64::from(e.position), self.base_offset + u64::from(e.relative_offset)),
            None => (0, self.base_offset),
        }
    }

    /// Reset counters so a scan can resume at (`position`, `offset`) keeping the loaded indexes.
    pub fn reset_to(&mut self, position: u64, offset: u64, max_timestamp_ms: i64) {
        self.size = position;
        self.next_offset = offset;
        self.max_timestamp_ms = max_timestamp_ms;
        self.bytes_since_index = 0;
    }
}

/// Read `len` bytes at `pos` into a fresh shared buffer.
pub fn read_range(file: &dyn IoFile, pos: u64, len: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    file.read_exact_at(&mut buf, pos)?;
    Ok(buf.freeze())
}

/// Whether a complete, CRC-valid batch with base offset `>= min_offset` starts at any
/// byte in `from..limit`. Used after a bad batch to tell a torn tail (nothing valid
/// follows: the remains of an interrupted write) from corruption before the tail.
fn valid_batch_follows(file: &dyn IoFile, from: u64, limit: u64, min_offset: u64) -> std::io::Result<bool> {
    let mut wpos = from;
    while wpos + BATCH_HEADER_BYTES as u64 <= limit {
        let len = (SCAN_WINDOW_BYTES as u64).min(limit - wpos) as usize;
        let w = read_range(file, wpos, len)?;
        // Candidate starts whose header lies wholly inside this window.
        let last_start = len - BATCH_HEADER_BYTES;
        for q in 0..=last_start {
            if w[q + 16] != MAGIC_V2 as u8 {
                continue;
            }
            let Ok(h) = BatchHeader::parse(&w[q..]) else {
                continue;
            };
            if (h.base_offset as u64) < min_offset {
                continue;
            }
            let start = wpos + q as u64;
            let total = h.total_bytes();
            if start + total as u64 > limit {
                continue;
            }
            let bytes = if q + total <= w.len() { w.slice(q..q + total) } else { read_range(file, start, total)? };
            if RecordBatch::from_bytes(bytes).is_ok() {
                return Ok(true);
            }
        }
        wpos += last_start as u64 + 1;
    }
    Ok(false)
}
