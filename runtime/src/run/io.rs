//! Where records go: topics, file and stdout sinks, dead-letter outputs.
//!
//! An [`Output`] writes whole batches: to a topic (one append per batch, keyed by the
//! topic's key so the murmur2 partitioner places it as Kafka would, timestamped with
//! the record's event time) or to a sink shared by every pipeline and instance that
//! writes it. [`DeadLetters`] collects a source's bad records with their position and
//! reason and writes them a batch at a time ([`DeadLetters::flush`]) — before the
//! batch they came with is acknowledged, so a committed input offset never covers a
//! dead letter that was not written.

use super::{io_err, RunError};
use crate::format;
use crate::log::{Acks, NewRecord, Topic};
use bytes::Bytes;
use flow_compiler::ir::{self, Format};
use flow_types::row::{Batch, BatchBuilder, Layout, RowRef};
use flow_types::Value;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Dead letters buffered before a write.
const DEAD_LETTERS_BUFFERED_MAX: usize = 1024;

/// A destination of records.
pub(crate) enum Output {
    Topic {
        topic: Arc<Topic>,
        key: Option<usize>,
        time: Option<ir::EventTime>,
    },
    Sink(Arc<Mutex<SinkWriter>>),
    Kafka {
        sink: Arc<super::kafka::KafkaSink>,
        time: Option<ir::EventTime>,
    },
    /// A topic written with checkpoints: each writer stages its own part; the records
    /// enter the log when the checkpoint covering them completes.
    TxTopic {
        sink: Arc<super::checkpoint::TxTopicSink>,
        key: Option<usize>,
        time: Option<ir::EventTime>,
    },
    /// A file sink committed with checkpoints: each writer stages its own part.
    TxFile(Arc<super::checkpoint::TxFileSink>),
}

/// A file or stdout sink; several pipelines may share one.
pub(crate) struct SinkWriter {
    pub out: Box<dyn Write + Send>,
    pub format: Format,
    pub wrote_header: bool,
}

impl SinkWriter {
    fn write(&mut self, batch: &Batch) -> std::io::Result<()> {
        if !self.wrote_header {
            if let Some(h) = sink_header(batch, self.format) {
                self.wrote_header = true;
                self.out.write_all(h.as_bytes())?;
            }
        }
        self.out.write_all(&encode_sink_rows(batch, self.format))
    }
}

/// The header line a file sink of `format` starts with (CSV: the field names).
pub(crate) fn sink_header(batch: &Batch, format: Format) -> Option<String> {
    if format != Format::Csv {
        return None;
    }
    let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
    let names: Vec<&str> = batch.layout.record.fields.iter().map(|f| f.name.as_str()).collect();
    // Writing into memory cannot fail.
    let _ = w.write_record(&names);
    Some(String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default())
}

/// `batch`'s rows as a file or stdout sink writes them in `format`.
pub(crate) fn encode_sink_rows(batch: &Batch, format: Format) -> Vec<u8> {
    let mut text = String::with_capacity(batch.len * 64);
    match format {
        Format::Json => {
            for i in 0..batch.len {
                format::encode_json_row(&batch.row(i), &mut text);
                text.push('\n');
            }
            text.into_bytes()
        }
        Format::Text => {
            for i in 0..batch.len {
                text.push_str(&format::csv_cell(&batch.row(i), 0));
                text.push('\n');
            }
            text.into_bytes()
        }
        Format::Csv => {
            let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
            for i in 0..batch.len {
                let row = batch.row(i);
                let cells: Vec<String> = (0..batch.layout.len()).map(|f| format::csv_cell(&row, f)).collect();
                // Writing into memory cannot fail.
                let _ = w.write_record(&cells);
            }
            w.into_inner().unwrap_or_default()
        }
    }
}

/// The text form of a key value, hashed by the Kafka partitioner: a string's UTF-8
/// bytes, other scalars as the JSON encoder writes them (unquoted); None for null.
pub(super) fn key_bytes(row: &RowRef, field: usize) -> Option<Bytes> {
    if row.is_null(field) {
        return None;
    }
    Some(Bytes::from(format::csv_cell(row, field).into_bytes()))
}

impl Output {
    pub fn write(&self, batch: &Batch) -> Result<(), RunError> {
        self.write_by(batch, "shared")
    }

    /// Writes `batch` as writer `writer` (a last-stage instance: its own staged part of
    /// a checkpointed file sink).
    pub fn write_by(&self, batch: &Batch, writer: &str) -> Result<(), RunError> {
        if batch.len == 0 {
            return Ok(());
        }
        match self {
            Output::TxFile(sink) => sink.write(writer, batch),
            Output::TxTopic { sink, key, time } => sink.write(writer, topic_records(batch, *key, time)),
            Output::Topic { topic, key, time } => {
                let records = topic_records(batch, *key, time);
                topic.append(records, Acks::Os)?;
                Ok(())
            }
            Output::Sink(w) => {
                let mut w = w.lock().map_err(|_| RunError::Setup("a sink writer panicked".into()))?;
                w.write(batch).map_err(io_err("writing a sink"))
            }
            Output::Kafka { sink, time } => sink.write(batch, time),
        }
    }
}

/// `batch`'s rows as records of a topic: JSON values, the declared key, event time (or
/// now) as the timestamp.
fn topic_records(batch: &Batch, key: Option<usize>, time: &Option<ir::EventTime>) -> Vec<NewRecord> {
    let now = wall_clock_ms();
    // Every value is encoded into one buffer; records hold slices of it (one
    // allocation per batch, not per record).
    let mut text = String::with_capacity(batch.len * 96);
    let mut ends = Vec::with_capacity(batch.len);
    for i in 0..batch.len {
        format::encode_json_row(&batch.row(i), &mut text);
        ends.push(text.len());
    }
    let all = Bytes::from(text.into_bytes());
    let mut records = Vec::with_capacity(batch.len);
    let mut start = 0;
    for (i, &end) in ends.iter().enumerate() {
        let row = batch.row(i);
        let ts = match time {
            Some(et) if !row.is_null(et.field) => row.i64(et.field).saturating_add(et.offset_ms),
            _ => now,
        };
        records.push(NewRecord::new(ts, key.and_then(|k| key_bytes(&row, k)), all.slice(start..end)));
        start = end;
    }
    records
}

/// Ingestion time for records without event time (the runtime's clock, never an operator's).
pub(crate) fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A dead-letter output: the source's declared one or its default `<source>.dlq` topic.
pub(crate) struct DeadLetters {
    pub source: String,
    pub output: Output,
    pub layout: Arc<Layout>,
    pub count: AtomicU64,
    pending: Mutex<Option<BatchBuilder>>,
}

impl DeadLetters {
    pub fn new(source: String, output: Output, layout: Arc<Layout>) -> DeadLetters {
        DeadLetters { source, output, layout, count: AtomicU64::new(0), pending: Mutex::new(None) }
    }

    /// Adds a dead letter; written by the next [`DeadLetters::flush`] (or when many wait).
    pub fn send(&self, position: &str, reason: &str, raw: &str) -> Result<(), RunError> {
        let full = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let b = pending.get_or_insert_with(|| BatchBuilder::new(self.layout.clone()));
            b.push_values(&[
                Value::String(self.source.as_str().into()),
                Value::String(position.into()),
                Value::String(reason.into()),
                Value::String(raw.into()),
            ])
            .map_err(|e| RunError::Setup(format!("dead-letter record: {e:?}")))?;
            self.count.fetch_add(1, Ordering::Relaxed);
            b.len() >= DEAD_LETTERS_BUFFERED_MAX
        };
        if full {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered dead letters.
    pub fn flush(&self) -> Result<(), RunError> {
        let taken = self.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
        match taken {
            Some(b) if !b.is_empty() => self.output.write(&b.finish()),
            _ => Ok(()),
        }
    }
}
