//! Kafka v2 `RecordBatch` encoding and decoding, byte for byte, with its CRC-32C.
//!
//! Owns the on-disk (and on-wire) layout of one batch and nothing else: it knows
//! nothing of files, segments or offsets assignment. The layout (all integers
//! big-endian, `varint`/`varlong` are zig-zag as in Kafka):
//!
//! ```text
//! baseOffset int64 | batchLength int32 | partitionLeaderEpoch int32 | magic int8 (=2)
//! crc uint32 (CRC-32C of attributes..end) | attributes int16 | lastOffsetDelta int32
//! baseTimestamp int64 | maxTimestamp int64 | producerId int64 | producerEpoch int16
//! baseSequence int32 | recordCount int32 | records...
//! record: length varint | attributes int8 | timestampDelta varlong | offsetDelta varint
//!         keyLength varint | key | valueLength varint | value | headerCount varint
//!         header: keyLength varint | key (utf-8) | valueLength varint | value
//! ```
//!
//! The base offset and leader epoch sit before the CRC, so the log can assign offsets
//! to an encoded batch by patching 8 bytes, without recomputing the checksum.
//! Decoding is total: any byte sequence yields a batch or a [`BatchError`], never a panic.
//!
//! Compressed batches (attributes bits 0-2: gzip, snappy, lz4, zstd, as Kafka clients
//! send them) are stored as they are; [`RecordBatch::records`] decompresses the records
//! section (bounded by [`DECOMPRESSED_BYTES_MAX`]) before decoding it.

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes of the fixed batch header, up to and including the record count.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before `batchLength` counts: baseOffset (8) + batchLength (4).
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The only record-batch format version we write or read.
pub const MAGIC_V2: i8 = 2;
/// Largest batch we accept on read or write (Kafka's default `message.max.bytes` is ~1 MiB;
/// we allow more for batched appends but bound it so a corrupt length cannot ask for GiBs).
pub const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest records section a compressed batch may expand to (a bound against
/// decompression bombs; Kafka clients' batches are 1 MiB by default).
pub const DECOMPRESSED_BYTES_MAX: usize = 256 * 1024 * 1024;

const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const COMPRESSION_MASK: i16 = 0x07;
const TRANSACTIONAL_FLAG: i16 = 0x10;
const CONTROL_FLAG: i16 = 0x20;

/// A record handed to [`encode_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

impl NewRecord {
    /// A record with a value, an optional key, no headers.
    pub fn new(timestamp_ms: i64, key: Option<Bytes>, value: impl Into<Bytes>) -> Self {
        NewRecord { timestamp_ms, key, value: Some(value.into()), headers: Vec::new() }
    }
}

/// A record header: a UTF-8 key and an optional value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

/// A record decoded from a stored batch. Key, value and header values are slices of the
/// batch's buffer: no payload is copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

/// What is wrong with a batch's bytes. The caller adds where (topic, partition, segment).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch is incomplete: needs {needed} bytes, {available} available")]
    Incomplete { needed: usize, available: usize },
    #[error("batch length {0} is out of range")]
    BadLength(i64),
    #[error("unsupported magic {0} (only v2 record batches are supported)")]
    BadMagic(i8),
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unknown compression codec {0}")]
    UnknownCodec(i16),
    #[error("cannot decompress the {codec} records: {reason}")]
    Decompress { codec: &'static str, reason: String },
    #[error("malformed record {index}: {what}")]
    MalformedRecord { index: usize, what: &'static str },
    #[error("impossible offsets: base {base_offset}, last delta {last_offset_delta}, count {record_count}")]
    BadOffsets { base_offset: i64, last_offset_delta: i32, record_count: i32 },
    #[error("record count {count} does not match last offset delta {last_offset_delta}")]
    CountMismatch { count: i32, last_offset_delta: i32 },
}

/// The fixed header of a v2 batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Bytes after the `batchLength` field.
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Total bytes of the batch including the 12-byte log overhead.
    pub fn total_bytes(&self) -> usize {
        LOG_OVERHEAD_BYTES + self.batch_length as usize
    }

    /// The offset of the last record in the batch.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Parse and sanity-check the fixed header (not the CRC). Needs 61 bytes.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::Incomplete { needed: BATCH_HEADER_BYTES, available: buf.len() });
        }
        let h = BatchHeader {
            base_offset: be_i64(buf, 0),
            batch_length: be_i32(buf, 8),
            partition_leader_epoch: be_i32(buf, 12),
            magic: buf[16] as i8,
            crc: be_u32(buf, 17),
            attributes: be_i16(buf, 21),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            record_count: be_i32(buf, 57),
        };
        let len = i64::from(h.batch_length);
        if len < (BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES) as i64 || len as usize > BATCH_BYTES_MAX - LOG_OVERHEAD_BYTES
        {
            return Err(BatchError::BadLength(len));
        }
        if h.magic != MAGIC_V2 {
            return Err(BatchError::BadMagic(h.magic));
        }
        if h.base_offset < 0
            || h.last_offset_delta < 0
            || h.record_count < 0
            || h.base_offset.checked_add(i64::from(h.last_offset_delta)).is_none()
        {
            return Err(BatchError::BadOffsets {
                base_offset: h.base_offset,
                last_offset_delta: h.last_offset_delta,
                record_count: h.record_count,
            });
        }
        Ok(h)
    }
}

/// CRC-32C over `attributes..end` of a complete batch.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..])
}

/// Encode `records` as one uncompressed v2 batch with base offset `base_offset`.
/// The CRC is filled in. Offsets deltas are 0..n; timestamps are relative to the first.
///
/// # Panics
/// Never on user data; `records` must not be empty (an internal invariant of the log).
pub fn encode_batch(base_offset: u64, records: &[NewRecord]) -> BytesMut {
    assert!(!records.is_empty(), "encode_batch needs at least one record");
    let base_ts = records[0].timestamp_ms;
    let max_ts = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(base_ts);
    let body_hint: usize = records
        .iter()
        .map(|r| {
            24 + r.key.as_ref().map_or(0, |k| k.len())
                + r.value.as_ref().map_or(0, |v| v.len())
                + r.headers.iter().map(|h| 10 + h.key.len() + h.value.as_ref().map_or(0, |v| v.len())).sum::<usize>()
        })
        .sum();
    let mut buf = BytesMut::with_capacity(BATCH_HEADER_BYTES + body_hint);
    buf.put_i64(base_offset as i64);
    buf.put_i32(0); // batch length, patched below
    buf.put_i32(0); // partition leader epoch: a single node, epoch 0
    buf.put_i8(MAGIC_V2);
    buf.put_u32(0); // crc, patched below
    buf.put_i16(0); // attributes: no compression, CreateTime, not transactional
    buf.put_i32(records.len() as i32 - 1);
    buf.put_i64(base_ts);
    buf.put_i64(max_ts);
    buf.put_i64(-1); // producer id: not idempotent
    buf.put_i16(-1);
    buf.put_i32(-1);
    buf.put_i32(records.len() as i32);
    for (i, r) in records.iter().enumerate() {
        let ts_delta = r.timestamp_ms.wrapping_sub(base_ts);
        let body = 1
            + varlong_len(ts_delta)
            + varint_len(i as i32)
            + bytes_len(r.key.as_deref())
            + bytes_len(r.value.as_deref())
            + varint_len(r.headers.len() as i32)
            + r.headers
                .iter()
                .map(|h| bytes_len(Some(h.key.as_bytes())) + bytes_len(h.value.as_deref()))
                .sum::<usize>();
        put_varint(&mut buf, body as i32);
        let start = buf.len();
        buf.put_u8(0); // record attributes
        put_varlong(&mut buf, ts_delta);
        put_varint(&mut buf, i as i32);
        put_bytes(&mut buf, r.key.as_deref());
        put_bytes(&mut buf, r.value.as_deref());
        put_varint(&mut buf, r.headers.len() as i32);
        for h in &r.headers {
            put_bytes(&mut buf, Some(h.key.as_bytes()));
            put_bytes(&mut buf, h.value.as_deref());
        }
        debug_assert_eq!(buf.len() - start, body);
    }
    let batch_length = (buf.len() - LOG_OVERHEAD_BYTES) as i32;
    buf[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let crc = compute_crc(&buf);
    buf[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    buf
}

/// Encode `records` as one v2 batch whose records section is compressed with `codec`
/// (as a Kafka producer with `compression.type` set sends it).
pub fn encode_compressed_batch(base_offset: u64, records: &[NewRecord], codec: Compression) -> BytesMut {
    use std::io::Write;
    let plain = encode_batch(base_offset, records);
    if codec == Compression::None {
        return plain;
    }
    let section = &plain[BATCH_HEADER_BYTES..];
    // Writing into a Vec cannot fail.
    let compressed: Vec<u8> = match codec {
        Compression::None => section.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = e.write_all(section);
            e.finish().unwrap_or_default()
        }
        Compression::Snappy => snap::raw::Encoder::new().compress_vec(section).unwrap_or_default(),
        Compression::Lz4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            let _ = e.write_all(section);
            e.finish().unwrap_or_default()
        }
        Compression::Zstd => zstd::bulk::compress(section, 1).unwrap_or_default(),
    };
    let mut buf = BytesMut::with_capacity(BATCH_HEADER_BYTES + compressed.len());
    buf.extend_from_slice(&plain[..BATCH_HEADER_BYTES]);
    buf.extend_from_slice(&compressed);
    let attributes = be_i16(&buf, ATTRIBUTES_OFFSET) | codec as i16;
    buf[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    let batch_length = (buf.len() - LOG_OVERHEAD_BYTES) as i32;
    buf[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let crc = compute_crc(&buf);
    buf[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    buf
}

/// Overwrite the base offset of an encoded batch (not covered by the CRC).
pub fn set_base_offset(batch: &mut [u8], base_offset: u64) {
    batch[0..8].copy_from_slice(&(base_offset as i64).to_be_bytes());
}

/// A complete, CRC-checked v2 batch backed by shared bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordBatch {
    header: BatchHeader,
    bytes: Bytes,
}

impl RecordBatch {
    /// Validate `bytes` (exactly one batch: header, length, magic, CRC, records) and wrap it.
    pub fn from_bytes(bytes: Bytes) -> Result<RecordBatch, BatchError> {
        let header = BatchHeader::parse(&bytes)?;
        if bytes.len() < header.total_bytes() {
            return Err(BatchError::Incomplete { needed: header.total_bytes(), available: bytes.len() });
        }
        let bytes = bytes.slice(..header.total_bytes());
        let computed = compute_crc(&bytes);
        if computed != header.crc {
            return Err(BatchError::CrcMismatch { stored: header.crc, computed });
        }
        Compression::from_attributes(header.attributes)?;
        if i64::from(header.record_count) != i64::from(header.last_offset_delta) + 1 {
            return Err(BatchError::CountMismatch {
                count: header.record_count,
                last_offset_delta: header.last_offset_delta,
            });
        }
        Ok(RecordBatch { header, bytes })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }
    /// The stored bytes, exactly as on disk (and as a Kafka Fetch would send them).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
    pub fn base_offset(&self) -> u64 {
        self.header.base_offset as u64
    }
    pub fn last_offset(&self) -> u64 {
        self.header.last_offset() as u64
    }
    pub fn max_timestamp(&self) -> i64 {
        self.header.max_timestamp
    }
    pub fn is_control(&self) -> bool {
        self.header.attributes & (CONTROL_FLAG | TRANSACTIONAL_FLAG) == CONTROL_FLAG | TRANSACTIONAL_FLAG
    }

    /// How the records section is compressed.
    pub fn compression(&self) -> Compression {
        // Checked in `from_bytes`.
        Compression::from_attributes(self.header.attributes).unwrap_or(Compression::None)
    }

    /// Decode every record, checking the structure (the CRC was checked on construction).
    /// A compressed batch is decompressed first (a failure is the first and only item).
    /// The first malformed record ends the iteration with an error.
    pub fn records(&self) -> impl Iterator<Item = Result<Record, BatchError>> + '_ {
        self.records_iter()
    }

    /// Decode every record once, to check the batch's structure beyond its CRC.
    pub fn validate_records(&self) -> Result<(), BatchError> {
        let mut n = 0usize;
        for r in self.records_iter() {
            r?;
            n += 1;
        }
        if n != self.header.record_count as usize {
            return Err(BatchError::CountMismatch {
                count: self.header.record_count,
                last_offset_delta: self.header.last_offset_delta,
            });
        }
        Ok(())
    }

    fn records_iter(&self) -> RecordIter<'_> {
        let section = self.bytes.slice(BATCH_HEADER_BYTES..);
        let (data, failed) = match self.compression().decompress(&section) {
            Ok(data) => (data, None),
            Err(e) => (Bytes::new(), Some(e)),
        };
        RecordIter { header: &self.header, data, failed, pos: 0, index: 0 }
    }
}

/// The compression codec of a batch (attributes bits 0-2), as Kafka numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

impl Compression {
    pub fn from_attributes(attributes: i16) -> Result<Compression, BatchError> {
        Ok(match attributes & COMPRESSION_MASK {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => return Err(BatchError::UnknownCodec(other)),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// The records section of a batch, decompressed (a cheap clone when uncompressed).
    /// Output beyond [`DECOMPRESSED_BYTES_MAX`] is an error.
    pub fn decompress(self, section: &Bytes) -> Result<Bytes, BatchError> {
        use std::io::Read;
        let fail = |reason: String| BatchError::Decompress { codec: self.name(), reason };
        let limit = DECOMPRESSED_BYTES_MAX as u64 + 1;
        let mut out = Vec::new();
        let read = match self {
            Compression::None => return Ok(section.clone()),
            Compression::Gzip => flate2::read::MultiGzDecoder::new(&section[..]).take(limit).read_to_end(&mut out),
            Compression::Lz4 => lz4_flex::frame::FrameDecoder::new(&section[..]).take(limit).read_to_end(&mut out),
            Compression::Zstd => match zstd::stream::read::Decoder::new(&section[..]) {
                Ok(d) => d.take(limit).read_to_end(&mut out),
                Err(e) => Err(e),
            },
            Compression::Snappy => {
                out = snappy_decompress(section).map_err(fail)?;
                Ok(out.len())
            }
        };
        read.map_err(|e| fail(e.to_string()))?;
        if out.len() > DECOMPRESSED_BYTES_MAX {
            return Err(fail(format!("expands beyond {DECOMPRESSED_BYTES_MAX} bytes")));
        }
        Ok(Bytes::from(out))
    }
}

/// The header of the xerial snappy-java framing the Java client writes; librdkafka
/// writes one raw snappy block. Both are accepted.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";

fn snappy_decompress(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut dec = snap::raw::Decoder::new();
    let mut block = |b: &[u8], out: &mut Vec<u8>| -> Result<(), String> {
        let n = snap::raw::decompress_len(b).map_err(|e| e.to_string())?;
        if out.len() + n > DECOMPRESSED_BYTES_MAX {
            return Err(format!("expands beyond {DECOMPRESSED_BYTES_MAX} bytes"));
        }
        let at = out.len();
        out.resize(at + n, 0);
        let got = dec.decompress(b, &mut out[at..]).map_err(|e| e.to_string())?;
        out.truncate(at + got);
        Ok(())
    };
    let mut out = Vec::new();
    if data.len() >= 16 && &data[..8] == XERIAL_MAGIC {
        // magic (8), version (4), compatible version (4), then blocks: length (4, BE) + raw snappy.
        let mut pos = 16;
        while pos < data.len() {
            let Some(len) = data.get(pos..pos + 4) else {
                return Err("truncated xerial block length".into());
            };
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            pos += 4;
            let Some(b) = data.get(pos..pos.saturating_add(len)) else {
                return Err("truncated xerial block".into());
            };
            block(b, &mut out)?;
            pos += len;
        }
    } else {
        block(data, &mut out)?;
    }
    Ok(out)
}

struct RecordIter<'a> {
    header: &'a BatchHeader,
    /// The (decompressed) records section.
    data: Bytes,
    failed: Option<BatchError>,
    pos: usize,
    index: usize,
}

impl Iterator for RecordIter<'_> {
    type Item = Result<Record, BatchError>;
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            self.index = usize::MAX;
            return Some(Err(e));
        }
        if self.index >= self.header.record_count.max(0) as usize {
            if self.pos != self.data.len() && self.index == self.header.record_count as usize {
                self.index += 1;
                return Some(Err(BatchError::MalformedRecord {
                    index: self.index - 1,
                    what: "trailing bytes after the last record",
                }));
            }
            return None;
        }
        let r = decode_record(self.header, &self.data, &mut self.pos, self.index);
        self.index += 1;
        if r.is_err() {
            // Stop after the first error.
            self.index = usize::MAX;
        }
        Some(r)
    }
}

fn decode_record(header: &BatchHeader, data: &Bytes, pos: &mut usize, index: usize) -> Result<Record, BatchError> {
    let buf = &data[..];
    let bad = |what| BatchError::MalformedRecord { index, what };
    let len = get_varint(buf, pos).ok_or(bad("bad length"))?;
    if len < 0 || *pos + len as usize > buf.len() {
        return Err(bad("length runs past the batch"));
    }
    let end = *pos + len as usize;
    let body = &buf[..end];
    if *pos >= end {
        return Err(bad("empty record"));
    }
    *pos += 1; // attributes
    let ts_delta = get_varlong(body, pos).ok_or(bad("bad timestamp delta"))?;
    let offset_delta = get_varint(body, pos).ok_or(bad("bad offset delta"))?;
    if offset_delta < 0 || offset_delta > header.last_offset_delta {
        return Err(bad("offset delta out of range"));
    }
    let key = get_bytes(data, body.len(), pos).ok_or(bad("bad key"))?;
    let value = get_bytes(data, body.len(), pos).ok_or(bad("bad value"))?;
    let nh = get_varint(body, pos).ok_or(bad("bad header count"))?;
    if nh < 0 || nh as usize > len as usize {
        return Err(bad("bad header count"));
    }
    let mut headers = Vec::with_capacity(nh as usize);
    for _ in 0..nh {
        let k = get_bytes(data, body.len(), pos).ok_or(bad("bad header key"))?.ok_or(bad("null header key"))?;
        let key = String::from_utf8(k.to_vec()).map_err(|_| bad("header key is not utf-8"))?;
        let value = get_bytes(data, body.len(), pos).ok_or(bad("bad header value"))?;
        headers.push(Header { key, value });
    }
    if *pos != end {
        return Err(bad("record length does not match its fields"));
    }
    Ok(Record {
        offset: (header.base_offset + i64::from(offset_delta)) as u64,
        timestamp_ms: header.base_timestamp.wrapping_add(ts_delta),
        key,
        value,
        headers,
    })
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(a)
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    be_i32(b, at) as u32
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn put_uvarint(out: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}
fn put_varint(out: &mut impl BufMut, v: i32) {
    put_uvarint(out, ((v << 1) ^ (v >> 31)) as u32 as u64);
}
fn put_varlong(out: &mut impl BufMut, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}
fn put_bytes(out: &mut impl BufMut, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i32);
            out.put_slice(b);
        }
    }
}
fn uvarint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}
fn varint_len(v: i32) -> usize {
    uvarint_len(((v << 1) ^ (v >> 31)) as u32 as u64)
}
fn varlong_len(v: i64) -> usize {
    uvarint_len(((v << 1) ^ (v >> 63)) as u64)
}
fn bytes_len(b: Option<&[u8]>) -> usize {
    match b {
        None => varint_len(-1),
        Some(b) => varint_len(b.len() as i32) + b.len(),
    }
}

fn get_uvarint(buf: &[u8], pos: &mut usize, max_bytes: usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..max_bytes {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}
fn get_varint(buf: &[u8], pos: &mut usize) -> Option<i32> {
    let u = get_uvarint(buf, pos, 5)?;
    if u > u64::from(u32::MAX) {
        return None;
    }
    let u = u as u32;
    Some(((u >> 1) as i32) ^ -((u & 1) as i32))
}
fn get_varlong(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let u = get_uvarint(buf, pos, 10)?;
    Some(((u >> 1) as i64) ^ -((u & 1) as i64))
}
/// A length-prefixed byte field, sliced out of `bytes` (zero copy), bounded by `end`.
fn get_bytes(bytes: &Bytes, end: usize, pos: &mut usize) -> Option<Option<Bytes>> {
    let len = get_varint(&bytes[..end], pos)?;
    if len < 0 {
        return if len == -1 { Some(None) } else { None };
    }
    let len = len as usize;
    if *pos + len > end {
        return None;
    }
    let b = bytes.slice(*pos..*pos + len);
    *pos += len;
    Some(Some(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ts: i64, k: Option<&str>, v: &str) -> NewRecord {
        NewRecord::new(ts, k.map(|k| Bytes::copy_from_slice(k.as_bytes())), Bytes::copy_from_slice(v.as_bytes()))
    }

    #[test]
    fn round_trip_preserves_every_field() {
        let mut r3 = rec(1_700_000_000_500, None, "");
        r3.value = None;
        r3.headers = vec![
            Header { key: "h1".into(), value: Some(Bytes::from_static(b"\x00\xff")) },
            Header { key: "h1".into(), value: None },
        ];
        let recs = vec![rec(1_700_000_000_000, Some("k"), "hello"), rec(1_699_999_999_000, None, "x"), r3];
        let buf = encode_batch(42, &recs).freeze();
        let b = RecordBatch::from_bytes(buf.clone()).unwrap();
        assert_eq!(b.base_offset(), 42);
        assert_eq!(b.last_offset(), 44);
        assert_eq!(b.max_timestamp(), 1_700_000_000_500);
        b.validate_records().unwrap();
        let out: Vec<Record> = b.records().map(Result::unwrap).collect();
        assert_eq!(out.len(), 3);
        for (i, (o, r)) in out.iter().zip(&recs).enumerate() {
            assert_eq!(o.offset, 42 + i as u64);
            assert_eq!(o.timestamp_ms, r.timestamp_ms);
            assert_eq!(o.key, r.key);
            assert_eq!(o.value, r.value);
            assert_eq!(o.headers, r.headers);
        }
    }

    /// The field-by-field layout of the Kafka protocol's v2 RecordBatch (KIP-98) for one
    /// record with key "k" and value "v" at time 0, spelled out by hand.
    #[test]
    fn layout_matches_kafka_v2() {
        let b = encode_batch(0, &[rec(0, Some("k"), "v")]);
        let expected_head: [u8; 61] = [
            0, 0, 0, 0, 0, 0, 0, 0, // base offset
            0, 0, 0, 58, // batch length = 61 - 12 + 9
            0, 0, 0, 0, // leader epoch
            2, // magic
            0, 0, 0, 0, // crc (checked below)
            0, 0, // attributes
            0, 0, 0, 0, // last offset delta
            0, 0, 0, 0, 0, 0, 0, 0, // base ts
            0, 0, 0, 0, 0, 0, 0, 0, // max ts
            255, 255, 255, 255, 255, 255, 255, 255, // producer id -1
            255, 255, // producer epoch -1
            255, 255, 255, 255, // base sequence -1
            0, 0, 0, 1, // record count
        ];
        let mut head = b[..61].to_vec();
        head[17..21].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(head, expected_head);
        // record: len=8 (zigzag 16), attrs 0, tsDelta 0, offDelta 0, keyLen 1 (2) 'k', valLen 1 (2) 'v', headers 0
        assert_eq!(&b[61..], &[16, 0, 0, 0, 2, b'k', 2, b'v', 0]);
        assert_eq!(u32::from_be_bytes([b[17], b[18], b[19], b[20]]), crc32c::crc32c(&b[21..]));
    }

    #[test]
    fn compressed_batches_decode_with_every_codec() {
        let recs: Vec<NewRecord> = (0..50)
            .map(|i| rec(1000 + i, Some(&format!("k{i}")), &format!("value number {i} {}", "x".repeat(40))))
            .collect();
        for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let b = encode_compressed_batch(10, &recs, codec).freeze();
            assert!(b.len() < encode_batch(10, &recs).len(), "{codec:?} did not compress");
            let batch = RecordBatch::from_bytes(b).unwrap();
            assert_eq!(batch.compression(), codec);
            batch.validate_records().unwrap();
            let out: Vec<Record> = batch.records().map(Result::unwrap).collect();
            assert_eq!(out.len(), 50);
            for (i, (o, r)) in out.iter().zip(&recs).enumerate() {
                assert_eq!(
                    (o.offset, o.timestamp_ms, &o.key, &o.value),
                    (10 + i as u64, r.timestamp_ms, &r.key, &r.value)
                );
            }
        }
    }

    #[test]
    fn xerial_framed_snappy_is_accepted() {
        let plain = encode_batch(0, &[rec(1, Some("k"), "hello"), rec(2, None, "world")]);
        let section = &plain[BATCH_HEADER_BYTES..];
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&1i32.to_be_bytes());
        framed.extend_from_slice(&1i32.to_be_bytes());
        // Two blocks, as snappy-java writes for large inputs.
        for part in [&section[..7], &section[7..]] {
            let c = snap::raw::Encoder::new().compress_vec(part).unwrap();
            framed.extend_from_slice(&(c.len() as u32).to_be_bytes());
            framed.extend_from_slice(&c);
        }
        assert_eq!(Compression::Snappy.decompress(&Bytes::from(framed)).unwrap(), Bytes::copy_from_slice(section));
    }

    #[test]
    fn corrupt_compressed_data_is_an_error_not_a_panic() {
        for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let b = encode_compressed_batch(0, &[rec(1, Some("k"), "hello world hello world")], codec);
            for cut in [BATCH_HEADER_BYTES + 1, b.len() - 3] {
                let mut c = b[..cut].to_vec();
                c.extend_from_slice(&[0xff, 0x00, 0x13]);
                let len = (c.len() - LOG_OVERHEAD_BYTES) as i32;
                c[8..12].copy_from_slice(&len.to_be_bytes());
                let crc = compute_crc(&c);
                c[17..21].copy_from_slice(&crc.to_be_bytes());
                let batch = RecordBatch::from_bytes(Bytes::from(c)).unwrap();
                assert!(batch.validate_records().is_err(), "{codec:?} cut at {cut}");
            }
        }
        let mut c = encode_batch(0, &[rec(1, None, "x")]).to_vec();
        c[22] |= 5;
        let crc = compute_crc(&c);
        c[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(RecordBatch::from_bytes(Bytes::from(c)).unwrap_err(), BatchError::UnknownCodec(5));
    }

    #[test]
    fn crc32c_known_vector() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
    }

    #[test]
    fn base_offset_patch_keeps_crc_valid() {
        let mut b = encode_batch(0, &[rec(5, None, "a"), rec(6, None, "b")]);
        set_base_offset(&mut b, 1000);
        let batch = RecordBatch::from_bytes(b.freeze()).unwrap();
        assert_eq!(batch.records().map(|r| r.unwrap().offset).collect::<Vec<_>>(), vec![1000, 1001]);
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let b = encode_batch(7, &[rec(5, Some("key"), "value-one"), rec(6, None, "two")]);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            let r = RecordBatch::from_bytes(c.freeze()).and_then(|b| b.validate_records());
            if i < 8 || (12..16).contains(&i) {
                // base offset and leader epoch are outside the CRC by design
                continue;
            }
            assert!(r.is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn truncations_are_incomplete_not_panics() {
        let b = encode_batch(7, &[rec(5, Some("key"), "value")]).freeze();
        for n in 0..b.len() {
            assert!(RecordBatch::from_bytes(b.slice(..n)).is_err());
        }
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = RecordBatch::from_bytes(Bytes::from(data)).map(|b| b.validate_records());
        }

        #[test]
        fn arbitrary_header_fields_never_panic(header in proptest::collection::vec(proptest::num::u8::ANY, 61)) {
            let b = encode_batch(3, &[rec(5, Some("key"), "value"), rec(9, None, "other")]);
            let mut c = b.to_vec();
            c[..61].copy_from_slice(&header);
            c[16] = 2; // keep magic 2 so the deeper checks run
            let crc = compute_crc(&c);
            c[17..21].copy_from_slice(&crc.to_be_bytes());
            if let Ok(h) = BatchHeader::parse(&c) {
                let _ = h.last_offset();
            }
            let _ = RecordBatch::from_bytes(Bytes::from(c)).map(|b| (b.validate_records(), b.records().count(), b.last_offset()));
        }

        #[test]
        fn decoding_mutated_batches_never_panics(idx in 0usize..200, val in proptest::num::u8::ANY) {
            let b = encode_batch(3, &[rec(5, Some("key"), "value"), rec(9, None, "other")]);
            let mut c = b.to_vec();
            let i = idx % c.len();
            c[i] = val;
            // Fix the CRC so the record decoder itself is exercised.
            let crc = compute_crc(&c);
            c[17..21].copy_from_slice(&crc.to_be_bytes());
            let _ = RecordBatch::from_bytes(Bytes::from(c)).map(|b| (b.validate_records(), b.records().count()));
        }
    }
}
