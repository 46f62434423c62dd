//! The `kafka(...)` connector: sources that consume from a Kafka cluster in a consumer
//! group, and sinks that produce to one (rdkafka over the system's librdkafka).
//!
//! A source subscribes to its topic with its group (`group:`, else `flow.<pipeline>`;
//! a group with no committed offset starts at the earliest record), decodes each
//! record's value with the `format` decoders into batches of up to [`BATCH_ROWS_MAX`]
//! rows (a batch also goes out once nothing new arrived for [`BATCH_WAIT`]), and sends
//! a record that does not decode to the dead-letter output with its position
//! (`topic t partition p offset o`). Offsets are at-least-once: each batch carries an
//! [`Ack`](super::exchange::Ack) of a [`CommitTracker`] and, once every batch up to
//! it has been written by the pipeline's outputs, its next offsets are stored in the
//! consumer; librdkafka commits stored offsets every second, on a rebalance and when
//! the consumer closes (after the last batch's ack is dropped). Committing with
//! checkpoints, exactly once, comes with the checkpoints issue.
//!
//! A Kafka source is unbounded: it ends when the run is stopped (Ctrl-C), or — for
//! tests and batch jobs — once the environment variable [`IDLE_ENV`] (milliseconds) is
//! set and that long passed with partitions assigned and no new record (with it set, a
//! source that gets no partition within 30 s fails instead of waiting forever).
//!
//! A sink produces each batch's rows as one record each (JSON, or a CSV line with
//! `format: csv`), timestamped with the rows' event time when they have one, with
//! `acks=all` and idempotence on; a batch's write returns once every record of it is
//! acknowledged, so the source offsets it completes are stored only then. With `key:`
//! each record's key is that field's value as text ([`super::io::key_bytes`], the same
//! text topics are keyed by; a null gives no key), placed by librdkafka's
//! `murmur2_random` partitioner: the Java client's (and flow's topics') murmur2, so a
//! key lands on the partition a Java producer would choose.
//!
//! Both connect as [`client_config`] says: `security.protocol`, SASL with the password
//! read from the environment variable `password_env:` names, and TLS's CA file. An
//! authentication or TLS failure fails the run at once (librdkafka would retry it
//! forever).

use super::exchange::CommitTracker;
use super::{RunError, BATCH_ROWS_MAX};
use crate::format::{self, CsvColumns, DecodeError};
use flow_compiler::ir::{self, Format};
use flow_types::row::{Batch, BatchBuilder, Layout, RowRef};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Milliseconds without a new record after which a Kafka source ends (unset: never).
pub const IDLE_ENV: &str = "FLOW_KAFKA_IDLE_MS";
/// A partial batch goes out after this long without a new record.
const BATCH_WAIT: Duration = Duration::from_millis(100);
/// With an idle timeout, how long a source may wait for its first partitions.
const ASSIGN_WAIT_MAX: Duration = Duration::from_secs(30);
/// How long a sink waits for a batch's acknowledgements before failing the run.
const SINK_FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// librdkafka's logs and errors, through `tracing`; the latest error is kept for reports.
#[derive(Default)]
struct Ctx {
    what: String,
    last_error: Mutex<Option<String>>,
    delivery_error: Mutex<Option<String>>,
    /// An authentication or TLS failure: retrying will not mend it.
    fatal: Mutex<Option<String>>,
    /// Who logs in, for a refused login's report.
    login: Option<String>,
}

impl Ctx {
    fn new(what: String, security: &ir::KafkaSecurity) -> Ctx {
        let login = security.sasl.as_ref().map(|s| format!("user {:?}, password from ${}", s.user, s.password_env));
        Ctx { what, login, ..Ctx::default() }
    }

    /// Keeps `error` if it is one that retries cannot mend.
    fn note_fatal(&self, error: &KafkaError, reason: &str) {
        if let Some(mut why) = fatal_error(error, reason) {
            if let (true, Some(login)) = (why.starts_with("authentication"), &self.login) {
                why.push_str(&format!(" ({login})"));
            }
            self.fatal.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(why);
        }
    }

    fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What to report for an error no retry mends: a failed SASL login or TLS handshake.
fn fatal_error(error: &KafkaError, reason: &str) -> Option<String> {
    let why = if reason.is_empty() { error.to_string() } else { reason.to_string() };
    match error.rdkafka_error_code()? {
        RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => {
            Some(format!("authentication failed: {why}"))
        }
        RDKafkaErrorCode::SSL => Some(format!("TLS failed: {why}")),
        _ => None,
    }
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!("{}: librdkafka {fac}: {message}", self.what)
            }
            RDKafkaLogLevel::Warning => tracing::warn!("{}: librdkafka {fac}: {message}", self.what),
            _ => tracing::debug!("{}: librdkafka {fac}: {message}", self.what),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!("{}: {error}: {reason}", self.what);
        self.note_fatal(&error, reason);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.delivery_error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| e.to_string());
        }
    }
}

/// The settings every client of a `kafka(...)` connector starts from: the brokers and
/// how to reach them (TLS, SASL). `what` names the source or sink in errors; a relative
/// `ca:` is relative to `base_dir` (the .flow file's directory).
fn client_config(
    brokers: &str,
    security: &ir::KafkaSecurity,
    base_dir: &Path,
    what: &str,
) -> Result<ClientConfig, RunError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers).set("client.id", "flowc").set("security.protocol", security.protocol.names().1);
    if let Some(sasl) = &security.sasl {
        let var = &sasl.password_env;
        let password = match std::env::var(var) {
            Ok(p) if !p.is_empty() => p,
            Ok(_) => {
                return Err(RunError::Setup(format!(
                    "{what}: the environment variable {var} (its `password_env`) is empty"
                )))
            }
            Err(std::env::VarError::NotPresent) => {
                return Err(RunError::Setup(format!(
                    "{what}: the environment variable {var} (its `password_env`) is not set; set it to the password of user {:?}",
                    sasl.user
                )))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(RunError::Setup(format!(
                    "{what}: the environment variable {var} (its `password_env`) is not valid UTF-8"
                )))
            }
        };
        c.set("sasl.mechanisms", sasl.mechanism.names().1)
            .set("sasl.username", &sasl.user)
            .set("sasl.password", password);
    }
    if let Some(ca) = &security.ca {
        let path = super::resolve(base_dir, ca);
        // librdkafka's own error for a missing file does not name it.
        if let Err(e) = std::fs::File::open(&path) {
            return Err(RunError::Setup(format!("{what}: cannot read its `ca` file {}: {e}", path.display())));
        }
        c.set("ssl.ca.location", path.to_string_lossy());
    }
    Ok(c)
}

/// The idle timeout of Kafka sources, from [`IDLE_ENV`].
fn idle_timeout() -> Result<Option<Duration>, RunError> {
    match std::env::var(IDLE_ENV) {
        Err(_) => Ok(None),
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(|ms| Some(Duration::from_millis(ms)))
            .map_err(|_| RunError::Setup(format!("{IDLE_ENV}={v:?}: expected a number of milliseconds"))),
    }
}

/// The decoder of one record value.
enum Decoder {
    Json,
    Csv(CsvColumns),
}

impl Decoder {
    fn decode(&self, raw: &str, b: &mut BatchBuilder) -> Result<(), DecodeError> {
        match self {
            Decoder::Json => format::decode_json_row(raw, b),
            Decoder::Csv(cols) => {
                let mut rdr = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(raw.as_bytes());
                let mut rec = csv::StringRecord::new();
                match rdr.read_record(&mut rec) {
                    Ok(true) => format::decode_csv_row(&rec, cols, b),
                    Ok(false) => Err(DecodeError("an empty record".into())),
                    Err(e) => Err(DecodeError(e.to_string())),
                }
            }
        }
    }
}

/// What a batch being built covers: first and last offset per partition.
#[derive(Default)]
struct Span(BTreeMap<i32, (i64, i64)>);

impl Span {
    fn add(&mut self, partition: i32, offset: i64) {
        let e = self.0.entry(partition).or_insert((offset, offset));
        e.1 = offset;
    }

    fn origin(&self, topic: &str) -> String {
        let parts: Vec<String> = self.0.iter().map(|(p, (a, b))| format!("partition {p} offsets {a}-{b}")).collect();
        format!("kafka topic {topic} {}", parts.join(", "))
    }
}

/// The decoded batch, the source callbacks and the offsets to complete.
pub(super) struct SourceFeed<'a> {
    pub send_acked: &'a super::exchange::SendAcked<'a>,
    pub bad: &'a dyn Fn(String, &str, DecodeError) -> Result<(), RunError>,
    pub stopping: &'a dyn Fn() -> bool,
    pub failed: &'a Arc<AtomicBool>,
    /// Called while no records come: idle partitions may move the watermark.
    pub tick: &'a dyn Fn() -> bool,
    /// A point the input could resume from (the next offset per partition): injects a
    /// checkpoint barrier when one is asked for; false to stop.
    pub at: &'a dyn Fn(Option<crate::checkpoint::Position>) -> bool,
    /// Where the checkpoint this run resumed from left each partition.
    pub resume: Option<BTreeMap<u32, u64>>,
    /// Registers what to do with the next offsets of each checkpoint that completes.
    pub on_commit: &'a dyn Fn(super::checkpoint::CommitHook),
}

/// Consumes source `src`'s topic in `group` until the run stops (or the idle timeout),
/// sending batches.
pub(super) fn read(
    src: &ir::Source,
    group: &str,
    base_dir: &Path,
    layout: &Arc<Layout>,
    feed: &SourceFeed,
) -> Result<(), RunError> {
    let ir::Connector::Kafka { brokers, topic, format: fmt, security, .. } = &src.connector else {
        return Err(RunError::Setup(format!("source `{}` is not a kafka source", src.name)));
    };
    let (topic, fmt) = (topic.as_str(), *fmt);
    let idle = idle_timeout()?;
    let what = format!("kafka source `{}` (topic {topic}, group {group})", src.name);
    let consumer: BaseConsumer<Ctx> = client_config(brokers, security, base_dir, &what)?
        .set("group.id", group)
        // Offsets are committed when checkpoints complete (below), never on their own.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // A run killed mid-way leaves its member in the group until this passes: the
        // smallest a Kafka broker allows by default, so a restart is not kept waiting.
        .set("session.timeout.ms", "6000")
        .create_with_context(Ctx::new(what.clone(), security))
        .map_err(|e| RunError::Setup(format!("{what}: {e}")))?;
    consumer.subscribe(&[topic]).map_err(|e| RunError::Setup(format!("{what}: {e}")))?;
    let fatal = |consumer: &BaseConsumer<Ctx>| match consumer.context().fatal() {
        Some(why) => Err(RunError::Setup(format!("{what}: {why}"))),
        None => Ok(()),
    };
    let consumer = Arc::new(consumer);

    // The group's offsets are committed to the cluster when a checkpoint completes:
    // the checkpoint's next offset per partition (of the partitions this member owns
    // then; another owner commits its own). A restart resumes from the checkpoint, not
    // from them (they may lag it), so they are for other consumers of the group and
    // for `--fresh` runs.
    {
        let (consumer, topic) = (consumer.clone(), topic.to_string());
        (feed.on_commit)(Box::new(move |offsets: &BTreeMap<u32, u64>| {
            let mut tpl = TopicPartitionList::new();
            let owned = consumer.assignment().unwrap_or_default();
            for (&p, &next) in offsets {
                if owned.find_partition(&topic, p as i32).is_some() {
                    let _ = tpl.add_partition_offset(&topic, p as i32, Offset::Offset(next as i64));
                }
            }
            if tpl.count() > 0 {
                if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                    tracing::debug!("kafka source (topic {topic}): committing offsets: {e}");
                }
            }
        }));
    }
    // Acks still travel with the batches; completing them commits nothing here.
    let tracker = CommitTracker::with_commit(Box::new(|_: &BTreeMap<u32, u64>| Ok(())), feed.failed.clone());

    let decoder = match fmt {
        Format::Csv => Decoder::Csv(CsvColumns::by_position(&layout.record)),
        _ => Decoder::Json,
    };
    // Positions start where the resumed checkpoint left them: a partition this run has
    // not read yet keeps its place in the next checkpoint.
    let mut next: BTreeMap<u32, u64> = feed.resume.clone().unwrap_or_default();
    let mut b = BatchBuilder::new(layout.clone());
    let mut span = Span::default();
    let mut last_record = Instant::now();
    let mut assigned_since: Option<Instant> = None;
    let started = Instant::now();
    // The partition of each row, for per-partition watermarks.
    let mut parts: Vec<u32> = Vec::new();
    let send = |b: &mut BatchBuilder, span: &mut Span, next: &BTreeMap<u32, u64>, parts: &mut Vec<u32>| -> bool {
        let full = std::mem::replace(b, BatchBuilder::new(layout.clone()));
        let origin = std::mem::take(span).origin(topic);
        let ok = (feed.send_acked)(full.finish(), origin, Some(tracker.ack(next.clone())), parts);
        parts.clear();
        ok && (feed.at)(Some(crate::checkpoint::Position::Topic { next: next.clone() }))
    };
    // The offset each partition must go on from: the checkpoint's when resuming, then
    // the one after the last record read. A record elsewhere (the group's committed
    // offset lags or leads the checkpoint; a rebalance hands a partition back from its
    // last commit) moves the partition there first; a gap that remains after that is
    // real (compaction) and is accepted.
    let mut expect: std::collections::HashMap<i32, i64> =
        feed.resume.as_ref().map(|r| r.iter().map(|(&p, &o)| (p as i32, o as i64)).collect()).unwrap_or_default();
    let mut sought: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
    loop {
        if (feed.stopping)() {
            return Ok(());
        }
        match consumer.poll(BATCH_WAIT) {
            Some(Ok(m)) => {
                last_record = Instant::now();
                let (p, o) = (m.partition(), m.offset());
                if let Some(&want) = expect.get(&p) {
                    if o != want && sought.get(&p) != Some(&want) {
                        drop(m);
                        consumer.seek(topic, p, Offset::Offset(want), Duration::from_secs(10)).map_err(|e| {
                            RunError::Setup(format!("{what}: seeking partition {p} to offset {want}: {e}"))
                        })?;
                        sought.insert(p, want);
                        continue;
                    }
                    if o < want {
                        // Read before (delivered again after the seek): skipped.
                        continue;
                    }
                }
                expect.insert(p, o + 1);
                let position = format!("topic {topic} partition {p} offset {o}");
                match m.payload().map(std::str::from_utf8) {
                    None => (feed.bad)(position, "", DecodeError("the record has no value".into()))?,
                    Some(Err(_)) => (feed.bad)(position, "", DecodeError("not valid UTF-8".into()))?,
                    Some(Ok(raw)) => match decoder.decode(raw.trim_end_matches(['\n', '\r']), &mut b) {
                        Ok(()) => parts.push(p.max(0) as u32),
                        Err(e) => (feed.bad)(position, raw, e)?,
                    },
                }
                span.add(p, o);
                next.insert(p.max(0) as u32, (o + 1).max(0) as u64);
                if b.len() >= BATCH_ROWS_MAX && !send(&mut b, &mut span, &next, &mut parts) {
                    return Ok(());
                }
            }
            Some(Err(e)) => {
                // librdkafka retries by itself (brokers down, leader moves); say so and go
                // on, unless retrying cannot help (a refused login).
                consumer.context().note_fatal(&e, "");
                fatal(&consumer)?;
                tracing::warn!("{what}: {e}");
            }
            None => {
                fatal(&consumer)?;
                // A batch of only dead letters still completes its offsets.
                if !span.0.is_empty() && !send(&mut b, &mut span, &next, &mut parts) {
                    return Ok(());
                }
                if !(feed.tick)() || !(feed.at)(Some(crate::checkpoint::Position::Topic { next: next.clone() })) {
                    return Ok(());
                }
                let Some(idle) = idle else { continue };
                if assigned_since.is_none() && consumer.assignment().is_ok_and(|a| a.count() > 0) {
                    assigned_since = Some(Instant::now());
                }
                match assigned_since {
                    Some(since) if since.max(last_record).elapsed() >= idle => return Ok(()),
                    Some(_) => {}
                    // Never assigned: the cluster is unreachable or the topic missing.
                    None if started.elapsed() >= idle.max(ASSIGN_WAIT_MAX) => {
                        let why = consumer.context().last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        return Err(RunError::Setup(format!(
                            "{what}: no partition assigned after {}s{}",
                            started.elapsed().as_secs(),
                            why.map_or(String::new(), |w| format!(" (last error: {w})"))
                        )));
                    }
                    None => {}
                }
            }
        }
    }
}

/// A `kafka(...)` sink: an idempotent producer with `acks=all`.
pub(crate) struct KafkaSink {
    name: String,
    topic: String,
    format: Format,
    /// The field whose text is each record's key.
    key: Option<String>,
    producer: BaseProducer<Ctx>,
}

/// The producer settings of a sink, on top of [`client_config`]'s.
fn producer_config(sink: &ir::Sink, base_dir: &Path) -> Result<(ClientConfig, String), RunError> {
    let ir::Connector::Kafka { brokers, topic, security, .. } = &sink.connector else {
        return Err(RunError::Setup(format!("sink `{}` is not a kafka sink", sink.name)));
    };
    let what = format!("kafka sink `{}` (topic {topic})", sink.name);
    let mut c = client_config(brokers, security, base_dir, &what)?;
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        // Keyed records go where the Java client (and flow's own topics) put them:
        // murmur2 of the key. librdkafka's default, consistent_random, hashes with
        // CRC32 and would place the same key elsewhere. Unkeyed records: random.
        .set("partitioner", "murmur2_random");
    Ok((c, what))
}

impl KafkaSink {
    pub fn open(sink: &ir::Sink, base_dir: &Path) -> Result<KafkaSink, RunError> {
        let ir::Connector::Kafka { topic, format, key, security, .. } = &sink.connector else {
            return Err(RunError::Setup(format!("sink `{}` is not a kafka sink", sink.name)));
        };
        let (config, what) = producer_config(sink, base_dir)?;
        let producer = config
            .create_with_context(Ctx::new(what.clone(), security))
            .map_err(|e| RunError::Setup(format!("{what}: {e}")))?;
        Ok(KafkaSink { name: sink.name.clone(), topic: topic.clone(), format: *format, key: key.clone(), producer })
    }

    /// Where the key field is in `batch`'s rows (found by name: writers' layouts may
    /// order fields differently from the sink's schema).
    fn key_field(&self, batch: &Batch) -> Result<Option<usize>, RunError> {
        let Some(key) = &self.key else { return Ok(None) };
        match batch.layout.record.index_of(key) {
            Some(i) => Ok(Some(i)),
            None => Err(self.failed(format!("its records have no key field `{key}`"))),
        }
    }

    fn fatal(&self) -> Result<(), RunError> {
        match self.producer.context().fatal() {
            Some(why) => Err(self.failed(why)),
            None => Ok(()),
        }
    }

    fn encode(&self, row: &RowRef, out: &mut String) -> Result<(), RunError> {
        match self.format {
            Format::Json => format::encode_json_row(row, out),
            Format::Text => out.push_str(&format::csv_cell(row, 0)),
            Format::Csv => {
                let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
                let cells: Vec<String> = (0..row.batch.layout.len()).map(|f| format::csv_cell(row, f)).collect();
                w.write_record(&cells).map_err(|e| RunError::Setup(format!("kafka sink `{}`: {e}", self.name)))?;
                let bytes = w.into_inner().map_err(|e| RunError::Setup(format!("kafka sink `{}`: {e}", self.name)))?;
                out.push_str(String::from_utf8_lossy(&bytes).trim_end_matches('\n'));
            }
        }
        Ok(())
    }

    /// Produces the batch's rows and waits until every one is acknowledged.
    pub fn write(&self, batch: &Batch, time: &Option<ir::EventTime>) -> Result<(), RunError> {
        let now = super::io::wall_clock_ms();
        let key_field = self.key_field(batch)?;
        let mut text = String::new();
        for i in 0..batch.len {
            let row = batch.row(i);
            text.clear();
            self.encode(&row, &mut text)?;
            let ts = match time {
                Some(et) if !row.is_null(et.field) => row.i64(et.field).saturating_add(et.offset_ms),
                _ => now,
            };
            let key = key_field.and_then(|f| super::io::key_bytes(&row, f));
            let mut record: BaseRecord<'_, [u8], str> =
                BaseRecord::to(&self.topic).payload(text.as_str()).timestamp(ts);
            if let Some(k) = &key {
                record = record.key(&k[..]);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        self.producer.poll(Duration::from_millis(10));
                        self.fatal()?;
                    }
                    Err((e, _)) => return Err(self.failed(e.to_string())),
                }
            }
        }
        // Flushed in slices, so a refused login fails the run at once rather than after
        // the flush timeout.
        let deadline = Instant::now() + SINK_FLUSH_TIMEOUT;
        loop {
            match self.producer.flush(Duration::from_millis(100)) {
                Ok(()) => break,
                Err(e) => {
                    self.fatal()?;
                    if Instant::now() >= deadline {
                        let why = self.producer.context().last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        return Err(self.failed(match why {
                            Some(why) => format!("{e} ({why})"),
                            None => e.to_string(),
                        }));
                    }
                }
            }
        }
        if let Some(e) = self.producer.context().delivery_error.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(self.failed(e));
        }
        Ok(())
    }

    fn failed(&self, why: String) -> RunError {
        RunError::Setup(format!("kafka sink `{}` (topic {}): {why}", self.name, self.topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_types::{Field, Kind, RecordType, Type};

    fn layout() -> Arc<Layout> {
        let rec = RecordType {
            name: None,
            fields: vec![
                Field { name: "id".into(), ty: Type::new(Kind::Int) },
                Field { name: "name".into(), ty: Type::new(Kind::String) },
            ],
        };
        Arc::new(Layout::new(Arc::new(rec)))
    }

    #[test]
    fn record_values_decode_as_json_or_csv_and_bad_ones_say_why() {
        let l = layout();
        let mut b = BatchBuilder::new(l.clone());
        Decoder::Json.decode(r#"{"id": 7, "name": "a"}"#, &mut b).unwrap();
        let csv = Decoder::Csv(CsvColumns::by_position(&l.record));
        csv.decode("8,\"b, c\"", &mut b).unwrap();
        assert!(csv.decode("", &mut b).is_err());
        assert!(csv.decode("x,y", &mut b).is_err());
        assert!(Decoder::Json.decode("[1]", &mut b).is_err());
        let batch = b.finish();
        assert_eq!(batch.len, 2);
        assert_eq!((batch.row(0).i64(0), batch.row(0).str(1)), (7, "a"));
        assert_eq!((batch.row(1).i64(0), batch.row(1).str(1)), (8, "b, c"));
    }

    #[test]
    fn a_batch_origin_names_each_partition_offset_range() {
        let mut s = Span::default();
        s.add(1, 10);
        s.add(0, 3);
        s.add(1, 12);
        assert_eq!(s.origin("t"), "kafka topic t partition 0 offsets 3-3, partition 1 offsets 10-12");
    }

    fn program(src: &str) -> ir::Program {
        let r = flow_compiler::compile_str("t.flow", src);
        r.program.unwrap_or_else(|| panic!("{src}: {:?}", r.diagnostics))
    }

    #[test]
    fn record_keys_are_the_fields_json_text_without_quotes_and_null_gives_none() {
        let p = program(
            "schema R { account: string?, n: int?, amount: decimal(12, 2)?, ts: timestamp?, ok: bool?, d: duration?, big: decimal(38, 4)? }\n\
             sink k: R = kafka(\"127.0.0.1:1\", topic: \"t\", key: amount)",
        );
        let sink = KafkaSink::open(&p.sinks[0], Path::new(".")).unwrap();
        let layout = Arc::new(Layout::new(p.sinks[0].schema.clone()));
        let mut b = BatchBuilder::new(layout.clone());
        let full = r#"{"account":"acct-\"7\" é","n":-42,"amount":1234.5,"ts":1700000000123,"ok":true,"d":90000,"big":-0.0001}"#;
        crate::format::decode_json_row(full, &mut b).unwrap();
        let nulls = r#"{"account":null,"n":null,"amount":null,"ts":null,"ok":null,"d":null,"big":null}"#;
        crate::format::decode_json_row(nulls, &mut b).unwrap();
        let batch = b.finish();
        let mut json = String::new();
        crate::format::encode_json_row(&batch.row(0), &mut json);
        let text = json;
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        for (f, field) in layout.record.fields.iter().enumerate() {
            let key = super::super::io::key_bytes(&batch.row(0), f).expect("a key");
            // A string's text is the string; any other value's is its JSON token as written.
            let want = match &json[&field.name] {
                serde_json::Value::String(s) => s.clone(),
                _ => {
                    let at = text.find(&format!("\"{}\":", field.name)).unwrap() + field.name.len() + 3;
                    text[at..].split([',', '}']).next().unwrap().to_string()
                }
            };
            assert_eq!(std::str::from_utf8(&key).unwrap(), want, "field {}", field.name);
            assert_eq!(super::super::io::key_bytes(&batch.row(1), f), None, "a null {} gives no key", field.name);
        }
        assert_eq!(
            [0, 2, 3, 4]
                .map(|f| String::from_utf8(super::super::io::key_bytes(&batch.row(0), f).unwrap().to_vec()).unwrap()),
            ["acct-\"7\" é", "1234.50", "1700000000123", "true"]
        );
        assert_eq!(
            String::from_utf8(super::super::io::key_bytes(&batch.row(0), 6).unwrap().to_vec()).unwrap(),
            "-0.0001"
        );
        // The sink finds its key field by name in whatever layout a writer sends.
        assert_eq!(sink.key_field(&batch).unwrap(), Some(2));
        let other = Arc::new(Layout::new(Arc::new(RecordType {
            name: None,
            fields: vec![
                Field { name: "x".into(), ty: Type::new(Kind::Int) },
                Field { name: "amount".into(), ty: Type::decimal(12, 2) },
            ],
        })));
        assert_eq!(sink.key_field(&BatchBuilder::new(other).finish()).unwrap(), Some(1));
    }

    #[test]
    fn security_options_reach_the_client_config_and_the_password_comes_from_the_environment() {
        let base = tempfile::tempdir().unwrap();
        std::fs::create_dir(base.path().join("certs")).unwrap();
        std::fs::write(base.path().join("certs/ca.pem"), "not a certificate").unwrap();
        let abs = base.path().join("abs.pem");
        std::fs::write(&abs, "").unwrap();
        let p = program(&format!(
            "schema R {{ id: int }}\n\
             sink a: R = kafka(\"h:9093\", topic: \"t\", security: sasl_ssl, sasl_mechanism: scram_sha_512, user: \"svc\", password_env: \"FLOW_TEST_KAFKA_PW_A\", ca: \"certs/ca.pem\")\n\
             sink b: R = kafka(\"h:9093\", topic: \"t\", security: ssl, ca: {abs:?})\n\
             sink c: R = kafka(\"h:9092\", topic: \"t\")\n\
             sink d: R = kafka(\"h:9092\", topic: \"t\", security: sasl_plaintext, user: \"svc\", password_env: \"FLOW_TEST_KAFKA_PW_UNSET\")\n\
             sink e: R = kafka(\"h:9093\", topic: \"t\", security: ssl, ca: \"missing.pem\")"
        ));
        let base = base.path();
        std::env::set_var("FLOW_TEST_KAFKA_PW_A", "pw with ;=");
        let (a, _) = producer_config(&p.sinks[0], base).unwrap();
        let get = |c: &ClientConfig, k: &str| c.get(k).map(str::to_string);
        assert_eq!(get(&a, "bootstrap.servers").as_deref(), Some("h:9093"));
        assert_eq!(get(&a, "security.protocol").as_deref(), Some("SASL_SSL"));
        assert_eq!(get(&a, "sasl.mechanisms").as_deref(), Some("SCRAM-SHA-512"));
        assert_eq!(get(&a, "sasl.username").as_deref(), Some("svc"));
        assert_eq!(get(&a, "sasl.password").as_deref(), Some("pw with ;="));
        assert_eq!(get(&a, "ssl.ca.location"), Some(base.join("certs/ca.pem").to_string_lossy().into_owned()));
        assert_eq!(get(&a, "partitioner").as_deref(), Some("murmur2_random"));

        let (b, _) = producer_config(&p.sinks[1], base).unwrap();
        assert_eq!(get(&b, "security.protocol").as_deref(), Some("SSL"));
        assert_eq!(get(&b, "ssl.ca.location"), Some(abs.to_string_lossy().into_owned()));
        assert_eq!(get(&b, "sasl.username"), None);

        let (c, _) = producer_config(&p.sinks[2], base).unwrap();
        assert_eq!(get(&c, "security.protocol").as_deref(), Some("PLAINTEXT"));
        assert_eq!((get(&c, "sasl.mechanisms"), get(&c, "ssl.ca.location")), (None, None));

        // The default mechanism with SASL is PLAIN; a variable that is not set is a
        // setup error naming the sink and the variable.
        let Err(RunError::Setup(e)) = producer_config(&p.sinks[3], base) else {
            panic!("an unset password variable was accepted");
        };
        assert!(e.contains("kafka sink `d`") && e.contains("FLOW_TEST_KAFKA_PW_UNSET") && e.contains("not set"), "{e}");
        std::env::set_var("FLOW_TEST_KAFKA_PW_UNSET", "x");
        let (d, _) = producer_config(&p.sinks[3], base).unwrap();
        std::env::remove_var("FLOW_TEST_KAFKA_PW_UNSET");
        assert_eq!(get(&d, "sasl.mechanisms").as_deref(), Some("PLAIN"));
        // A CA file that is not there is a setup error naming it; librdkafka reads the
        // file when the client is created, so one that is not PEM fails then.
        let Err(RunError::Setup(e)) = KafkaSink::open(&p.sinks[4], base) else {
            panic!("a missing CA file was accepted");
        };
        assert!(e.contains("kafka sink `e`") && e.contains(&*base.join("missing.pem").to_string_lossy()), "{e}");
        let Err(RunError::Setup(e)) = KafkaSink::open(&p.sinks[1], base) else {
            panic!("an empty CA file was accepted");
        };
        assert!(e.contains("kafka sink `b`") && e.contains("ssl.ca.location"), "{e}");
    }

    #[test]
    fn refused_logins_and_tls_failures_are_fatal_and_transport_errors_are_not() {
        let auth = KafkaError::Global(RDKafkaErrorCode::Authentication);
        let why = fatal_error(&auth, "SASL authentication error: invalid user name or password").unwrap();
        assert_eq!(why, "authentication failed: SASL authentication error: invalid user name or password");
        assert!(fatal_error(&KafkaError::MessageConsumption(RDKafkaErrorCode::SSL), "")
            .unwrap()
            .starts_with("TLS failed"));
        assert_eq!(fatal_error(&KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure), "down"), None);
    }

    #[test]
    fn sinks_encode_rows_as_json_or_one_csv_line() {
        let l = layout();
        let mut b = BatchBuilder::new(l.clone());
        b.push_values(&[flow_types::Value::Int(1), flow_types::Value::String("x, \"y\"".into())]).unwrap();
        let batch = b.finish();
        let sink = |format| {
            let program = flow_compiler::compile_str(
                "t.flow",
                &format!(
                    "schema R {{ id: int, name: string }}\nsink k: R = kafka(\"127.0.0.1:1\", topic: \"t\", format: {format})"
                ),
            )
            .program
            .expect("program");
            KafkaSink::open(&program.sinks[0], Path::new(".")).expect("a producer is created without connecting")
        };
        let (mut json, mut csv) = (String::new(), String::new());
        sink("json").encode(&batch.row(0), &mut json).unwrap();
        sink("csv").encode(&batch.row(0), &mut csv).unwrap();
        assert_eq!(json, r#"{"id":1,"name":"x, \"y\""}"#);
        assert_eq!(csv, r#"1,"x, ""y""""#);
    }
}
