//! Running a checked program: sources, fused stateless stages, outputs.
//!
//! [`run`] starts every pipeline of a program (or those asked for) on a tokio runtime.
//! A pipeline is a chain: an input task (a file, stdin, a generator or a topic; run on
//! a blocking thread) sends batches over a bounded channel (backpressure) to a task
//! that runs the pipeline's fused stateless stage (native code from cranelift, or the
//! reference interpreter with `jit: false`) and writes the results to its targets.
//! Bounded inputs end the pipeline; a pipeline reading a topic written in the same run
//! ends when every writer of that topic has ended and it has read all they wrote.
//!
//! Bad input never stops a run: a record that does not decode, or whose expression
//! fails (overflow, division by zero), goes to the source's dead-letter output with the
//! reason, and is counted; `strict` makes it fatal instead. Operators the runtime does
//! not run yet (windows, aggregates, joins, dedup, top-N, patterns, lookups, unions,
//! unnest) are reported before anything starts; the other pipelines run.

use crate::format::{self, CsvColumns, DecodeError};
use crate::log::{Access, Acks, LogDir, NewRecord, Topic, TopicConfig};
use bytes::Bytes;
use flow_compiler::exec::stage::{self, Stage, StageSpec};
use flow_compiler::exec::{interp, EvalError};
use flow_compiler::ir::{self, Connector, Format};
use flow_compiler::source::Span;
use flow_types::row::{Batch, BatchBuilder, Layout, RowRef};
use flow_types::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Rows per batch read from a source.
pub const BATCH_ROWS_MAX: usize = 4096;
/// Batches in flight between an input and its stage (backpressure beyond).
pub const CHANNEL_BATCHES_MAX: usize = 8;

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The log's data directory.
    pub data_dir: PathBuf,
    /// Relative file paths in connectors are relative to this (the .flow file's directory).
    pub base_dir: PathBuf,
    /// Run only these pipelines (all when empty).
    pub pipelines: Vec<String>,
    /// A bad record stops the run instead of being dead-lettered.
    pub strict: bool,
    /// Compile stages with cranelift (else run them on the reference interpreter).
    pub jit: bool,
}

/// What one pipeline did.
#[derive(Clone, Debug, Default)]
pub struct PipelineStats {
    pub name: String,
    pub records_in: u64,
    pub records_out: u64,
    pub dead_lettered: u64,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub pipelines: Vec<PipelineStats>,
    /// Pipelines not run, with why and where.
    pub skipped: Vec<Unsupported>,
    pub elapsed: Duration,
}

/// An operator this runtime cannot run yet.
#[derive(Clone, Debug)]
pub struct Unsupported {
    pub pipeline: String,
    pub span: Span,
    pub message: String,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Log(#[from] crate::log::LogError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Setup(String),
    /// `strict`: a bad record, with where it came from and why.
    #[error("{position}: {reason}")]
    BadRecord { position: String, reason: String },
    /// `strict`: an expression failed at run time.
    #[error("{message}")]
    Eval { span: Span, message: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

/// Which operators of a pipeline this runtime can run, or why not.
pub fn unsupported(p: &ir::Pipeline) -> Option<Unsupported> {
    for op in &p.ops {
        let what = match &op.kind {
            ir::OpKind::Filter(_) | ir::OpKind::Project(_) | ir::OpKind::KeyBy(_) => continue,
            ir::OpKind::WindowAggregate { .. } => "`window ... | aggregate`",
            ir::OpKind::Aggregate { .. } => "`aggregate`",
            ir::OpKind::Dedup { .. } => "`dedup`",
            ir::OpKind::TopN { .. } => "`top`",
            ir::OpKind::Join { .. } => "`join`",
            ir::OpKind::Lookup { .. } => "`lookup`",
            ir::OpKind::Union(_) => "`union`",
            ir::OpKind::Unnest { .. } => "`unnest`",
            ir::OpKind::Pattern { .. } => "`pattern`",
        };
        return Some(Unsupported {
            pipeline: p.name.clone(),
            span: op.span,
            message: format!("{what} is not supported by this runtime yet (stateful operators arrive with event-time windows and state)"),
        });
    }
    None
}

/// A destination of records.
enum Output {
    Topic { topic: Arc<Topic>, key: Option<usize>, time: Option<ir::EventTime> },
    Sink(Arc<Mutex<SinkWriter>>),
}

/// A file or stdout sink; several pipelines may share one.
struct SinkWriter {
    out: Box<dyn Write + Send>,
    format: Format,
    wrote_header: bool,
}

impl SinkWriter {
    fn write(&mut self, batch: &Batch) -> std::io::Result<()> {
        let mut text = String::with_capacity(batch.len * 64);
        match self.format {
            Format::Json => {
                for i in 0..batch.len {
                    format::encode_json_row(&batch.row(i), &mut text);
                    text.push('\n');
                }
                self.out.write_all(text.as_bytes())
            }
            Format::Text => {
                for i in 0..batch.len {
                    text.push_str(&format::csv_cell(&batch.row(i), 0));
                    text.push('\n');
                }
                self.out.write_all(text.as_bytes())
            }
            Format::Csv => {
                let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
                if !self.wrote_header {
                    self.wrote_header = true;
                    let names: Vec<&str> = batch.layout.record.fields.iter().map(|f| f.name.as_str()).collect();
                    w.write_record(&names).map_err(std::io::Error::other)?;
                }
                for i in 0..batch.len {
                    let row = batch.row(i);
                    let cells: Vec<String> = (0..batch.layout.len()).map(|f| format::csv_cell(&row, f)).collect();
                    w.write_record(&cells).map_err(std::io::Error::other)?;
                }
                let bytes = w.into_inner().map_err(|e| std::io::Error::other(e.to_string()))?;
                self.out.write_all(&bytes)
            }
        }
    }
}

/// The text form of a key value, hashed by the Kafka partitioner.
fn key_bytes(row: &RowRef, field: usize) -> Option<Bytes> {
    if row.is_null(field) {
        return None;
    }
    Some(Bytes::from(format::csv_cell(row, field).into_bytes()))
}

impl Output {
    fn write(&self, batch: &Batch) -> Result<(), RunError> {
        if batch.len == 0 {
            return Ok(());
        }
        match self {
            Output::Topic { topic, key, time } => {
                let now = wall_clock_ms();
                let mut records = Vec::with_capacity(batch.len);
                let mut text = String::new();
                for i in 0..batch.len {
                    let row = batch.row(i);
                    text.clear();
                    format::encode_json_row(&row, &mut text);
                    let ts = match time {
                        Some(et) if !row.is_null(et.field) => row.i64(et.field).saturating_add(et.offset_ms),
                        _ => now,
                    };
                    records.push(NewRecord::new(
                        ts,
                        key.and_then(|k| key_bytes(&row, k)),
                        Bytes::from(text.clone().into_bytes()),
                    ));
                }
                topic.append(records, Acks::Os)?;
                Ok(())
            }
            Output::Sink(w) => {
                let mut w = w.lock().map_err(|_| RunError::Setup("a sink writer panicked".into()))?;
                w.write(batch).map_err(io_err("writing a sink"))
            }
        }
    }
}

/// Ingestion time for records without event time (the runtime's clock, never an operator's).
fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A dead-letter output: the source's declared one or its default `<source>.dlq` topic.
struct DeadLetters {
    source: String,
    output: Output,
    layout: Arc<Layout>,
    count: AtomicU64,
}

impl DeadLetters {
    fn send(&self, position: &str, reason: &str, raw: &str) -> Result<(), RunError> {
        let mut b = BatchBuilder::new(self.layout.clone());
        b.push_values(&[
            Value::String(self.source.as_str().into()),
            Value::String(position.into()),
            Value::String(reason.into()),
            Value::String(raw.into()),
        ])
        .map_err(|e| RunError::Setup(format!("dead-letter record: {e:?}")))?;
        self.output.write(&b.finish())?;
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Everything shared by the pipelines of a run.
struct Shared {
    log: LogDir,
    topics: HashMap<String, Arc<Topic>>,
    sinks: HashMap<String, Arc<Mutex<SinkWriter>>>,
    /// Per topic: how many pipelines of this run still write it.
    writers_left: HashMap<String, Arc<AtomicU64>>,
}

impl Shared {
    fn output(
        &self,
        target: &ir::Target,
        program: &ir::Program,
        time: Option<ir::EventTime>,
    ) -> Result<Output, RunError> {
        Ok(match target {
            ir::Target::Topic(t) => {
                let decl = program.topics.iter().find(|x| x.name == *t);
                Output::Topic {
                    topic: self
                        .topics
                        .get(t)
                        .cloned()
                        .ok_or_else(|| RunError::Setup(format!("topic `{t}` is not open")))?,
                    key: decl.and_then(|d| d.key),
                    time,
                }
            }
            ir::Target::Sink(s) => Output::Sink(
                self.sinks.get(s).cloned().ok_or_else(|| RunError::Setup(format!("sink `{s}` is not open")))?,
            ),
        })
    }
}

fn topic_config(t: &ir::Topic) -> TopicConfig {
    let mut c = TopicConfig { partitions: t.partitions, retention_ms: Some(t.retention_ms), ..TopicConfig::default() };
    c.retention_bytes = t.retention_bytes.map(|b| b as u64);
    if let Some(s) = t.segment_bytes {
        c.segment_bytes = s as u64;
    }
    c
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

fn open_sink(conn: &Connector, base: &Path) -> Result<SinkWriter, RunError> {
    Ok(match conn {
        Connector::Stdout { format } => {
            SinkWriter { out: Box::new(std::io::stdout()), format: *format, wrote_header: false }
        }
        Connector::File { path, format, .. } => {
            let p = resolve(base, path);
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
            }
            let f = std::fs::File::create(&p).map_err(io_err(format!("creating {}", p.display())))?;
            SinkWriter { out: Box::new(std::io::BufWriter::new(f)), format: *format, wrote_header: false }
        }
        Connector::Kafka { .. } => return Err(RunError::Setup("`kafka` sinks come with the Kafka connector".into())),
        other => return Err(RunError::Setup(format!("{other:?} is not a sink"))),
    })
}

/// Runs `program`'s pipelines until their bounded inputs end.
pub fn run(program: &ir::Program, opts: &RunOptions) -> Result<Summary, RunError> {
    let started = Instant::now();
    let mut summary = Summary::default();
    let chosen: Vec<&ir::Pipeline> =
        program.pipelines.iter().filter(|p| opts.pipelines.is_empty() || opts.pipelines.contains(&p.name)).collect();
    let mut runnable = Vec::new();
    for p in chosen {
        match unsupported(p) {
            Some(u) => summary.skipped.push(u),
            None => runnable.push(p),
        }
    }

    // Open the log: every declared topic exists with its declared partitions.
    let log = LogDir::new(&opts.data_dir);
    let mut topics = HashMap::new();
    let mut needed: HashSet<String> = HashSet::new();
    for p in &runnable {
        if let ir::Input::Topic(t) = &p.input {
            needed.insert(t.clone());
        }
        for o in &p.outputs {
            if let ir::Target::Topic(t) = &o.target {
                needed.insert(t.clone());
            }
        }
    }
    for s in &program.sources {
        if let Some(ir::Target::Topic(t)) = &s.dead_letter {
            needed.insert(t.clone());
        }
    }
    for t in &program.topics {
        if !needed.contains(&t.name) {
            continue;
        }
        match log.open_topic(&t.name, Access::ReadWrite) {
            Ok(topic) => {
                if topic.partitions().len() as u32 != t.partitions {
                    return Err(RunError::Setup(format!(
                        "topic `{}` exists with {} partitions, but the program declares {}; delete it (`flowc topic delete {}`) or declare {}",
                        t.name,
                        topic.partitions().len(),
                        t.partitions,
                        t.name,
                        topic.partitions().len()
                    )));
                }
                topics.insert(t.name.clone(), Arc::new(topic));
            }
            Err(crate::log::LogError::UnknownTopic(_)) => {
                log.create_topic(&t.name, &topic_config(t))?;
                topics.insert(t.name.clone(), Arc::new(log.open_topic(&t.name, Access::ReadWrite)?));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut sinks = HashMap::new();
    for s in &program.sinks {
        let used = runnable.iter().any(|p| p.outputs.iter().any(|o| o.target == ir::Target::Sink(s.name.clone())))
            || program.sources.iter().any(|src| src.dead_letter == Some(ir::Target::Sink(s.name.clone())));
        if used {
            sinks.insert(s.name.clone(), Arc::new(Mutex::new(open_sink(&s.connector, &opts.base_dir)?)));
        }
    }
    let mut writers_left: HashMap<String, Arc<AtomicU64>> = HashMap::new();
    for p in &runnable {
        for o in &p.outputs {
            if let ir::Target::Topic(t) = &o.target {
                writers_left
                    .entry(t.clone())
                    .or_insert_with(|| Arc::new(AtomicU64::new(0)))
                    .fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    let shared = Arc::new(Shared { log, topics, sinks, writers_left });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_err("starting the runtime"))?;
    let program = Arc::new(program.clone());
    let failed = Arc::new(AtomicBool::new(false));
    let results = rt.block_on(async {
        let mut handles = Vec::new();
        for p in &runnable {
            let (program, shared, opts, failed) = (program.clone(), shared.clone(), opts.clone(), failed.clone());
            let name = p.name.clone();
            handles.push(tokio::spawn(async move {
                let r = run_pipeline(program, &name, shared, opts, failed.clone()).await;
                if r.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                r
            }));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.map_err(|e| RunError::Setup(format!("a pipeline task failed: {e}")))?);
        }
        Ok::<_, RunError>(out)
    })?;
    for r in results {
        summary.pipelines.push(r?);
    }
    for w in shared.sinks.values() {
        if let Ok(mut w) = w.lock() {
            w.out.flush().map_err(io_err("flushing a sink"))?;
        }
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// One batch plus where its rows came from (for dead-letter positions).
struct InBatch {
    batch: Batch,
    /// A description of the rows' origin, e.g. `data/txns.jsonl:120-4215`.
    origin: String,
    /// For topic inputs: the consumer group's offsets once this batch is written
    /// (committed by the pipeline task after its outputs took the batch).
    commit: Option<(String, BTreeMap<u32, u64>)>,
}

async fn run_pipeline(
    program: Arc<ir::Program>,
    name: &str,
    shared: Arc<Shared>,
    opts: RunOptions,
    failed: Arc<AtomicBool>,
) -> Result<PipelineStats, RunError> {
    let p = program
        .pipelines
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| RunError::Setup(format!("no pipeline `{name}`")))?
        .clone();
    let input_layout = Arc::new(Layout::new(p.input_schema.clone()));
    // The stateless chain as one fused stage (key_by only repartitions; one instance here).
    let ops: Vec<ir::Op> = p.ops.iter().filter(|o| !matches!(o.kind, ir::OpKind::KeyBy(_))).cloned().collect();
    let spec = StageSpec { input: p.input_schema.clone(), ops: ops.clone() };
    let stage: Option<Box<dyn Stage>> = if ops.is_empty() {
        None
    } else if opts.jit {
        Some(stage::jit(&spec, &program).map_err(|e| RunError::Setup(format!("compiling pipeline `{name}`: {e}")))?)
    } else {
        Some(stage::interpreted(&spec, &program).map_err(|e| RunError::Setup(format!("pipeline `{name}`: {e}")))?)
    };
    let out_time = p.ops.last().map_or_else(|| input_event_time(&program, &p.input), |o| o.event_time.clone());
    let outputs: Vec<(Option<ir::Expr>, Output)> = p
        .outputs
        .iter()
        .map(|o| Ok((o.when.clone(), shared.output(&o.target, &program, out_time.clone())?)))
        .collect::<Result<_, RunError>>()?;
    let dead = dead_letters(&program, &p.input, &shared)?;

    let (tx, mut rx) = tokio::sync::mpsc::channel::<InBatch>(CHANNEL_BATCHES_MAX);
    let records_in = Arc::new(AtomicU64::new(0));
    let reader = {
        let (program, shared, opts, dead, records_in, failed) =
            (program.clone(), shared.clone(), opts.clone(), dead.clone(), records_in.clone(), failed.clone());
        let input = p.input.clone();
        let layout = input_layout.clone();
        let group = format!("flow.{name}");
        tokio::task::spawn_blocking(move || {
            read_input(&program, &input, layout, &shared, &opts, dead, &group, tx, records_in, failed)
        })
    };

    let mut stats = PipelineStats { name: name.to_string(), ..PipelineStats::default() };
    let ctx = interp::EvalCtx::new(&program);
    let group = format!("flow.{name}");
    let commit_groups = crate::log::GroupStore::new(shared.log.root().to_path_buf(), Arc::new(crate::log::io::StdIo));
    while let Some(mut inb) = rx.recv().await {
        if failed.load(Ordering::SeqCst) {
            break;
        }
        let inb_commit = inb.commit.take();
        let result = tokio::task::block_in_place(|| -> Result<u64, RunError> {
            let batch = match &stage {
                None => inb.batch,
                Some(st) => run_stage(st.as_ref(), &inb, &dead, &opts)?,
            };
            let mut written = 0;
            let mut taken = vec![false; batch.len];
            for (when, out) in &outputs {
                let chosen = match when {
                    None if outputs.iter().any(|(w, _)| w.is_some()) => select_rows(&batch, |i| !taken[i]),
                    None => batch.clone(),
                    Some(cond) => {
                        let mut keep = vec![false; batch.len];
                        for (i, k) in keep.iter_mut().enumerate() {
                            if taken[i] {
                                continue;
                            }
                            match interp::eval(cond, &batch.row(i), &ctx) {
                                Ok(Value::Bool(true)) => {
                                    *k = true;
                                    taken[i] = true;
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    taken[i] = true;
                                    expression_failed(&dead, &opts, &e, &inb.origin, &batch.row(i))?;
                                }
                            }
                        }
                        select_rows(&batch, |i| keep[i])
                    }
                };
                written += chosen.len as u64;
                out.write(&chosen)?;
            }
            Ok(written)
        });
        // Offsets are committed only once the outputs took the batch: at-least-once.
        let result = result.and_then(|n| {
            if let Some((topic, offsets)) = &inb_commit {
                commit_groups.commit(&group, topic, offsets)?;
            }
            Ok(n)
        });
        match result {
            Ok(n) => stats.records_out += n,
            Err(e) => {
                failed.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
    }
    let read = reader.await.map_err(|e| RunError::Setup(format!("input task failed: {e}")))?;
    for o in &p.outputs {
        if let ir::Target::Topic(t) = &o.target {
            if let Some(w) = shared.writers_left.get(t) {
                w.fetch_sub(1, Ordering::SeqCst);
            }
            if let Some(topic) = shared.topics.get(t) {
                // Wake readers of the topic so they notice the writer ended.
                for part in topic.partitions() {
                    let _ = part.end_offset();
                }
            }
        }
    }
    read?;
    stats.records_in = records_in.load(Ordering::Relaxed);
    stats.dead_lettered = dead.as_ref().map_or(0, |d| d.count.load(Ordering::Relaxed));
    Ok(stats)
}

fn input_event_time(program: &ir::Program, input: &ir::Input) -> Option<ir::EventTime> {
    match input {
        ir::Input::Source(s) => program.sources.iter().find(|x| x.name == *s).and_then(|x| x.event_time.clone()),
        ir::Input::Topic(t) => program.topics.iter().find(|x| x.name == *t).and_then(|x| x.event_time.clone()),
    }
}

fn dead_letters(
    program: &ir::Program,
    input: &ir::Input,
    shared: &Shared,
) -> Result<Option<Arc<DeadLetters>>, RunError> {
    let ir::Input::Source(name) = input else { return Ok(None) };
    let Some(src) = program.sources.iter().find(|s| s.name == *name) else { return Ok(None) };
    let output = match &src.dead_letter {
        Some(t) => shared.output(t, program, None)?,
        None => {
            // The default dead-letter topic `<source>.dlq`.
            let t = format!("{name}.dlq");
            let topic = match shared.log.open_topic(&t, Access::ReadWrite) {
                Ok(topic) => topic,
                Err(crate::log::LogError::UnknownTopic(_)) => {
                    shared.log.create_topic(&t, &TopicConfig::default())?;
                    shared.log.open_topic(&t, Access::ReadWrite)?
                }
                Err(e) => return Err(e.into()),
            };
            Output::Topic { topic: Arc::new(topic), key: None, time: None }
        }
    };
    let layout = Arc::new(Layout::new(flow_compiler::check::dead_letter_record()));
    Ok(Some(Arc::new(DeadLetters { source: name.clone(), output, layout, count: AtomicU64::new(0) })))
}

/// The rows of `batch` for which `keep` holds (row bytes copied; strings stay in the
/// shared arena).
fn select_rows(batch: &Batch, keep: impl Fn(usize) -> bool) -> Batch {
    let w = batch.layout.width as usize;
    let mut b = BatchBuilder::with_base(batch.layout.clone(), batch.arena_bytes());
    let mut n = 0;
    let (rows, _, _) = b.raw_parts();
    for i in (0..batch.len).filter(|&i| keep(i)) {
        rows.extend_from_slice(&batch.rows[i * w..(i + 1) * w]);
        n += 1;
    }
    b.set_len(n);
    b.finish()
}

fn expression_failed(
    dead: &Option<Arc<DeadLetters>>,
    opts: &RunOptions,
    e: &EvalError,
    origin: &str,
    row: &RowRef,
) -> Result<(), RunError> {
    if opts.strict || dead.is_none() {
        return Err(RunError::Eval { span: e.span, message: e.message.clone() });
    }
    let mut raw = String::new();
    format::encode_json_row(row, &mut raw);
    if let Some(d) = dead {
        d.send(origin, &format!("expression failed: {}", e.message), &raw)?;
    }
    Ok(())
}

/// Runs the stage over a batch; on an expression error, runs the rows one by one so
/// only the failing rows are dead-lettered.
fn run_stage(
    st: &dyn Stage,
    inb: &InBatch,
    dead: &Option<Arc<DeadLetters>>,
    opts: &RunOptions,
) -> Result<Batch, RunError> {
    let mut out = stage::output_builder(st, &inb.batch);
    match st.run(&inb.batch, &mut out) {
        Ok(()) => Ok(out.finish()),
        Err(_) => {
            let mut out = BatchBuilder::new(st.output_layout());
            for i in 0..inb.batch.len {
                let one = select_rows(&inb.batch, |j| j == i);
                let mut single = stage::output_builder(st, &one);
                match st.run(&one, &mut single) {
                    Ok(()) => {
                        let b = single.finish();
                        for r in 0..b.len {
                            let _ = out.push_values(&b.row(r).values());
                        }
                    }
                    Err(e) => expression_failed(dead, opts, &e, &inb.origin, &inb.batch.row(i))?,
                }
            }
            Ok(out.finish())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn read_input(
    program: &ir::Program,
    input: &ir::Input,
    layout: Arc<Layout>,
    shared: &Shared,
    opts: &RunOptions,
    dead: Option<Arc<DeadLetters>>,
    group: &str,
    tx: tokio::sync::mpsc::Sender<InBatch>,
    records_in: Arc<AtomicU64>,
    failed: Arc<AtomicBool>,
) -> Result<(), RunError> {
    let send_committing = |b: Batch, origin: String, commit: Option<(String, BTreeMap<u32, u64>)>| -> bool {
        records_in.fetch_add(b.len as u64, Ordering::Relaxed);
        !failed.load(Ordering::SeqCst) && tx.blocking_send(InBatch { batch: b, origin, commit }).is_ok()
    };
    let send = |b: Batch, origin: String| -> bool { send_committing(b, origin, None) };
    let bad = |position: String, raw: &str, e: DecodeError| -> Result<(), RunError> {
        records_in.fetch_add(1, Ordering::Relaxed);
        match (&dead, opts.strict) {
            (Some(d), false) => d.send(&position, &e.0, raw),
            _ => Err(RunError::BadRecord { position, reason: e.0 }),
        }
    };
    match input {
        ir::Input::Source(name) => {
            let src = program
                .sources
                .iter()
                .find(|s| s.name == *name)
                .ok_or_else(|| RunError::Setup(format!("no source `{name}`")))?;
            match &src.connector {
                Connector::File { path, format, header, delimiter } => {
                    for file in expand_glob(&resolve(&opts.base_dir, path))? {
                        let f = std::fs::File::open(&file).map_err(io_err(format!("opening {}", file.display())))?;
                        let shown = file.display().to_string();
                        match format {
                            Format::Csv => read_csv(f, &shown, *header, *delimiter, &layout, &send, &bad)?,
                            _ => read_json_lines(std::io::BufReader::new(f), &shown, &layout, &send, &bad)?,
                        }
                    }
                }
                Connector::Stdin { format } => {
                    let stdin = std::io::stdin();
                    match format {
                        Format::Csv => read_csv(stdin.lock(), "stdin", true, b',', &layout, &send, &bad)?,
                        _ => read_json_lines(stdin.lock(), "stdin", &layout, &send, &bad)?,
                    }
                }
                Connector::Generator { kind, rate_per_s, seed, count, keys } => {
                    crate::generate::generate(*kind, *seed, *count, *keys, *rate_per_s, &layout, &mut |b| {
                        send(b, format!("generator `{name}`"))
                    })
                    .map_err(RunError::Setup)?;
                }
                Connector::Kafka { .. } => {
                    return Err(RunError::Setup("`kafka` sources come with the Kafka connector".into()))
                }
                Connector::Stdout { .. } => return Err(RunError::Setup("stdout is not a source".into())),
            }
        }
        ir::Input::Topic(t) => {
            let topic =
                shared.topics.get(t).cloned().ok_or_else(|| RunError::Setup(format!("topic `{t}` is not open")))?;
            let groups = crate::log::GroupStore::new(shared.log.root().to_path_buf(), Arc::new(crate::log::io::StdIo));
            let mut next: BTreeMap<u32, u64> = groups.committed(group, t)?;
            let writers = shared.writers_left.get(t).cloned();
            loop {
                let writers_done = writers.as_ref().is_none_or(|w| w.load(Ordering::SeqCst) == 0);
                let mut progressed = false;
                for part in topic.partitions() {
                    let pid = part.id();
                    let from = next.get(&pid).copied().unwrap_or_else(|| part.start_offset()).max(part.start_offset());
                    let records = part.read_records(from, 4 << 20)?;
                    if records.is_empty() {
                        continue;
                    }
                    progressed = true;
                    let mut b = BatchBuilder::new(layout.clone());
                    let first = records[0].offset;
                    let mut last = first;
                    for r in &records {
                        last = r.offset;
                        let raw = r.value.as_ref().map_or("", |v| std::str::from_utf8(v).unwrap_or(""));
                        if let Err(e) = format::decode_json_row(raw, &mut b) {
                            bad(format!("topic {t} partition {pid} offset {}", r.offset), raw, e)?;
                        }
                    }
                    next.insert(pid, last + 1);
                    let origin = format!("topic {t} partition {pid} offsets {first}-{last}");
                    if !send_committing(b.finish(), origin, Some((t.clone(), next.clone()))) {
                        return Ok(());
                    }
                }
                if !progressed {
                    // `writers_done` was read before this pass: a pass that found nothing
                    // after every writer had ended has read all they wrote.
                    if writers_done {
                        break;
                    }
                    if failed.load(Ordering::SeqCst) {
                        break;
                    }
                    for part in topic.partitions() {
                        let at = next.get(&part.id()).copied().unwrap_or(0);
                        if part.wait_for_blocking(at, Duration::from_millis(20)) {
                            break;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn expand_glob(path: &Path) -> Result<Vec<PathBuf>, RunError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !name.contains('*') {
        return Ok(vec![path.to_path_buf()]);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let (pre, post) = name.split_once('*').unwrap_or((name, ""));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(format!("listing {}", dir.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(pre) && n.ends_with(post) && n.len() >= pre.len() + post.len())
        })
        .collect();
    files.sort();
    Ok(files)
}

fn read_json_lines(
    mut r: impl BufRead,
    shown: &str,
    layout: &Arc<Layout>,
    send: &dyn Fn(Batch, String) -> bool,
    bad: &dyn Fn(String, &str, DecodeError) -> Result<(), RunError>,
) -> Result<(), RunError> {
    let mut line = String::new();
    let mut lineno = 0u64;
    let mut b = BatchBuilder::new(layout.clone());
    let mut first = 1u64;
    loop {
        line.clear();
        let n = match r.read_line(&mut line) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                lineno += 1;
                bad(format!("{shown}:{lineno}"), "", DecodeError("not valid UTF-8".into()))?;
                let mut skip = Vec::new();
                r.read_until(b'\n', &mut skip).map_err(io_err(format!("reading {shown}")))?;
                continue;
            }
            Err(e) => return Err(RunError::Io { what: format!("reading {shown}"), source: e }),
        };
        if n == 0 {
            break;
        }
        lineno += 1;
        let text = line.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        if let Err(e) = format::decode_json_row(text, &mut b) {
            bad(format!("{shown}:{lineno}"), text, e)?;
        }
        if b.len() >= BATCH_ROWS_MAX {
            let full = std::mem::replace(&mut b, BatchBuilder::new(layout.clone()));
            if !send(full.finish(), format!("{shown}:{first}-{lineno}")) {
                return Ok(());
            }
            first = lineno + 1;
        }
    }
    if !b.is_empty() {
        send(b.finish(), format!("{shown}:{first}-{lineno}"));
    }
    Ok(())
}

fn read_csv(
    r: impl std::io::Read,
    shown: &str,
    header: bool,
    delimiter: u8,
    layout: &Arc<Layout>,
    send: &dyn Fn(Batch, String) -> bool,
    bad: &dyn Fn(String, &str, DecodeError) -> Result<(), RunError>,
) -> Result<(), RunError> {
    let mut rdr = csv::ReaderBuilder::new().has_headers(header).delimiter(delimiter).flexible(true).from_reader(r);
    let cols = if header {
        let h = rdr.headers().map_err(|e| RunError::Setup(format!("{shown}: {e}")))?.clone();
        let cols = CsvColumns::from_header(&layout.record, &h);
        if let Some(missing) =
            layout.record.fields.iter().zip(&cols.columns).find(|(f, c)| c.is_none() && !f.ty.nullable)
        {
            return Err(RunError::Setup(format!("{shown}: the header has no column `{}`", missing.0.name)));
        }
        cols
    } else {
        CsvColumns::by_position(&layout.record)
    };
    let mut b = BatchBuilder::new(layout.clone());
    let mut rec = csv::StringRecord::new();
    let mut first = 1 + u64::from(header);
    loop {
        let line = rdr.position().line();
        match rdr.read_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {
                if let Err(e) = format::decode_csv_row(&rec, &cols, &mut b) {
                    bad(format!("{shown}:{line}"), &rec.iter().collect::<Vec<_>>().join(","), e)?;
                }
            }
            Err(e) => bad(format!("{shown}:{line}"), "", DecodeError(e.to_string()))?,
        }
        if b.len() >= BATCH_ROWS_MAX {
            let full = std::mem::replace(&mut b, BatchBuilder::new(layout.clone()));
            if !send(full.finish(), format!("{shown}:{first}-{line}")) {
                return Ok(());
            }
            first = line + 1;
        }
    }
    if !b.is_empty() {
        send(b.finish(), format!("{shown}:{first}-"));
    }
    Ok(())
}
