//! Running a checked program: the operator runtime.
//!
//! [`run`] takes the program's physical plan ([`flow_compiler::physical`]) and starts,
//! on one tokio runtime, every stage instance of every pipeline asked for: the read
//! stage on a blocking thread (file, stdin, generator or topic; `source.rs`), every
//! other stage instance as a task that runs its fused stateless operators (native
//! code from cranelift, or the reference interpreter with `jit: false`) over each
//! batch — inside `block_in_place`, so a CPU-bound stage never holds up the runtime's
//! I/O — and either routes the result to the next stage's instances
//! (`exchange.rs`: bounded channels, hash shuffles for `key_by`) or, in the last
//! stage, writes it to the pipeline's outputs (`io.rs`). End of input flows through
//! the graph as [`exchange::Msg::End`]; a pipeline reading a topic written in the same
//! run ends when every writer of that topic has ended and it has read all they wrote.
//!
//! Bad input never stops a run: a record that does not decode, or whose expression
//! fails (overflow, division by zero), goes to the source's dead-letter output with the
//! reason, and is counted; `strict` makes it fatal instead. Setting
//! [`RunOptions::stop`] (Ctrl-C in `flowc run`) stops the inputs; what was read is
//! processed and written, sinks are flushed, and the run returns its summary.
//! Operators the runtime does not run yet (windows, aggregates, joins, dedup, top-N,
//! patterns, lookups, unions, unnest) are reported before anything starts; the other
//! pipelines run.

pub(crate) mod agg;
mod aggregate;
pub(crate) mod checkpoint;
pub use checkpoint::{stateful_ops, StatefulOp};
mod exchange;
pub(crate) mod head;
mod io;
mod kafka;
mod slots;
mod snapshot;
pub(crate) mod source;
pub(crate) mod spill;
pub mod stamp;
mod timers;
pub(crate) mod window;

use crate::log::{LogDir, Topic, TopicConfig};
use exchange::{select_rows, CommitTracker, InBatch, KeyHasher, Msg, Router};
use flow_compiler::exec::stage::{self, Stage, StageSpec};
use flow_compiler::exec::{interp, EvalError};
use flow_compiler::ir::{self, Connector};
use flow_compiler::physical::{self, Exchange, StageKind};
use flow_compiler::source::Span;
use flow_types::row::{Batch, Layout};
use flow_types::Value;
use io::{DeadLetters, Output, SinkWriter};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Rows per batch read from a source.
pub const BATCH_ROWS_MAX: usize = 4096;
/// Batches in flight into one stage instance (backpressure beyond).
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
    /// Instances of each parallel stage.
    pub parallelism: u32,
    /// Set to stop the inputs; the run drains what it read and returns.
    pub stop: Arc<AtomicBool>,
    /// Counters a caller may watch while the run goes (a progress line).
    pub live: Arc<Live>,
    /// Threads of the tokio runtime (the stage instances' tasks).
    pub worker_threads: usize,
    /// Ctrl-C sets `stop` (a second one exits at once, with status 130).
    pub handle_ctrl_c: bool,
    /// Topic inputs wait for more records until `stop`, even once no pipeline of the
    /// run writes them (`flowc serve --pipelines`, where Kafka clients write them).
    pub follow_topics: bool,
    /// Threads decoding a JSON-lines file's chunks (handed on in file order).
    pub decode_threads: usize,
    /// Where topic inputs start reading.
    pub start_from: StartFrom,
    /// The state backend (None: the program's `config { state_backend }`).
    pub state_backend: Option<ir::StateBackend>,
    /// With the RocksDB backend: bytes of window state each stage instance keeps in
    /// memory before it moves the least recently updated windows to RocksDB.
    pub state_memory: u64,
    /// Milliseconds between checkpoints (None: the program's `checkpoint_interval`).
    pub checkpoint_interval_ms: Option<i64>,
    /// Ignore (and delete) the checkpoints of earlier runs: start from nothing.
    pub fresh: bool,
    /// Completed checkpoints kept.
    pub checkpoints_keep: usize,
    /// Resume from this checkpoint instead of the newest one.
    pub from_checkpoint: Option<u64>,
    /// Resume from this savepoint (a changed program restores the operators that did
    /// not change).
    pub from_savepoint: Option<PathBuf>,
}

/// The default memory budget of a stage instance's window state (RocksDB backend).
pub const STATE_MEMORY_DEFAULT: u64 = 256 << 20;

/// Where a topic input starts reading (`flowc run --from`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// The pipeline's consumer group's committed offsets; the earliest where it has none.
    #[default]
    Committed,
    /// The earliest offset each partition still holds.
    Earliest,
    /// The end of each partition: only records appended from now on.
    Latest,
    /// The first record with a timestamp at or after this one (epoch milliseconds).
    Time(i64),
}

impl std::str::FromStr for StartFrom {
    type Err = String;

    fn from_str(s: &str) -> Result<StartFrom, String> {
        Ok(match s {
            "committed" => StartFrom::Committed,
            "earliest" => StartFrom::Earliest,
            "latest" => StartFrom::Latest,
            _ => match s.parse::<i64>() {
                Ok(ms) => StartFrom::Time(ms),
                Err(_) => StartFrom::Time(flow_types::time::parse_record_timestamp(s).map_err(|e| {
                    format!("`{s}` is not committed, earliest, latest, epoch milliseconds or a timestamp ({e})")
                })?),
            },
        })
    }
}

impl RunOptions {
    pub fn new(data_dir: PathBuf, base_dir: PathBuf) -> RunOptions {
        RunOptions {
            data_dir,
            base_dir,
            pipelines: Vec::new(),
            strict: false,
            jit: true,
            parallelism: 1,
            stop: Arc::new(AtomicBool::new(false)),
            live: Arc::new(Live::default()),
            worker_threads: std::thread::available_parallelism().map_or(2, |n| n.get()).max(2),
            handle_ctrl_c: false,
            decode_threads: std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8),
            start_from: StartFrom::Committed,
            follow_topics: false,
            state_backend: None,
            state_memory: STATE_MEMORY_DEFAULT,
            checkpoint_interval_ms: None,
            fresh: false,
            checkpoints_keep: 3,
            from_checkpoint: None,
            from_savepoint: None,
        }
    }
}

/// Totals over the whole run, updated as it goes.
#[derive(Debug, Default)]
pub struct Live {
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    /// Bytes read from input files so far, and their total size (0: unknown).
    pub bytes_read: AtomicU64,
    pub bytes_total: AtomicU64,
    /// Records bounded generators will produce (0: unknown or unbounded).
    pub records_total: AtomicU64,
}

/// What one stage of a pipeline did, summed over its instances.
#[derive(Clone, Debug, Default)]
pub struct StageStats {
    /// The stage's operators, e.g. `read source bank` or `where | select`.
    pub label: String,
    pub parallelism: u32,
    pub records_in: u64,
    pub records_out: u64,
}

/// What one pipeline did.
#[derive(Clone, Debug, Default)]
pub struct PipelineStats {
    pub name: String,
    pub records_in: u64,
    pub records_out: u64,
    pub dead_lettered: u64,
    /// Records every window refused (routed to the late output, or only counted).
    pub late: u64,
    /// Records of them written to a late output.
    pub late_routed: u64,
    /// Windows still open when a stopped run ended (not emitted).
    pub open_windows: u64,
    pub stages: Vec<StageStats>,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub pipelines: Vec<PipelineStats>,
    /// Pipelines not run, with why and where.
    pub skipped: Vec<Unsupported>,
    pub elapsed: Duration,
    /// The run was stopped (Ctrl-C) before its inputs ended.
    pub stopped: bool,
    /// The checkpoint the run resumed from.
    pub restored_from: Option<u64>,
    /// It was the last checkpoint of a run that ended (its files were read to the end).
    pub restored_last: bool,
    /// Checkpoints completed (the last one commits what the run wrote).
    pub checkpoints: u64,
    /// Warnings about unusable checkpoints that were skipped.
    pub warnings: Vec<String>,
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
            ir::OpKind::WindowAggregate { .. } | ir::OpKind::Aggregate { .. } => continue,
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
            message: format!("{what} is not supported by this runtime yet"),
        });
    }
    None
}

/// Everything shared by the pipelines of a run.
struct Shared {
    log: LogDir,
    topics: HashMap<String, Arc<Topic>>,
    sinks: HashMap<String, Arc<Mutex<SinkWriter>>>,
    kafka_sinks: HashMap<String, Arc<kafka::KafkaSink>>,
    /// Per topic: how many pipelines of this run still write it.
    writers_left: HashMap<String, Arc<AtomicU64>>,
    /// Commit trackers of topic inputs (their errors are reported at the end).
    trackers: Mutex<Vec<Arc<CommitTracker>>>,
    /// File sinks and topics committed with checkpoints.
    tx_sinks: HashMap<String, Arc<checkpoint::TxFileSink>>,
    tx_topics: HashMap<String, Arc<checkpoint::TxTopicSink>>,
    coord: Arc<checkpoint::Coordinator>,
    /// Stable ids of the stateful operators, by pipeline and operator index.
    op_ids: HashMap<(String, usize), String>,
}

impl Shared {
    fn output(
        &self,
        target: &ir::Target,
        program: &ir::Program,
        time: Option<ir::EventTime>,
    ) -> Result<Output, RunError> {
        Ok(match target {
            ir::Target::Topic(t) if self.tx_topics.contains_key(t) => {
                let decl = program.topics.iter().find(|x| x.name == *t);
                Output::TxTopic { sink: self.tx_topics[t].clone(), key: decl.and_then(|d| d.key), time }
            }
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
            ir::Target::Sink(s) if self.tx_sinks.contains_key(s) => Output::TxFile(self.tx_sinks[s].clone()),
            ir::Target::Sink(s) if self.kafka_sinks.contains_key(s) => {
                Output::Kafka { sink: self.kafka_sinks[s].clone(), time }
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

pub(super) fn resolve(base: &Path, p: &str) -> PathBuf {
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
        for t in targets(p) {
            if let ir::Target::Topic(t) = t {
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
        match log.open_topic_shared(&t.name) {
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
                topics.insert(t.name.clone(), topic);
            }
            Err(crate::log::LogError::UnknownTopic(_)) => {
                log.create_topic(&t.name, &topic_config(t))?;
                topics.insert(t.name.clone(), log.open_topic_shared(&t.name)?);
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Checkpoints: resume from the newest usable one unless told to start fresh.
    let failed = Arc::new(AtomicBool::new(false));
    let store = crate::checkpoint::CheckpointStore::new(&opts.data_dir);
    let fingerprint = fingerprint(program, &runnable, opts);
    let file_sinks: HashSet<String> = program
        .sinks
        .iter()
        .filter(|s| matches!(s.connector, Connector::File { .. }))
        .map(|s| s.name.clone())
        .collect();
    let restored = restore_point(&store, &fingerprint, opts, &mut summary, &topics, &file_sinks)?;
    summary.restored_from = restored.as_ref().map(|(m, _)| m.id);
    summary.restored_last = restored.as_ref().is_some_and(|(m, _)| m.last);
    if std::env::var("FLOW_DEBUG_RESTORE").is_ok() {
        eprintln!("restore: {:?} {:?}", restored.as_ref().map(|(m, _)| (m.id, &m.positions)), summary.warnings);
    }
    let committed = |sink: &str| {
        restored.as_ref().and_then(|(m, _)| m.sinks.iter().find(|c| c.sink == sink)).map_or(0, |c| c.len_after)
    };
    let (mut sinks, mut kafka_sinks, mut tx_sinks) = (HashMap::new(), HashMap::new(), HashMap::new());
    for s in &program.sinks {
        let target = ir::Target::Sink(s.name.clone());
        let output = runnable.iter().any(|p| p.outputs.iter().any(|o| o.target == target));
        let side =
            runnable.iter().any(|p| targets(p).any(|t| *t == target) && !p.outputs.iter().any(|o| o.target == target))
                || program.sources.iter().any(|src| src.dead_letter.as_ref() == Some(&target));
        match &s.connector {
            Connector::Kafka { .. } if output || side => {
                kafka_sinks.insert(s.name.clone(), Arc::new(kafka::KafkaSink::open(s, &opts.base_dir)?));
            }
            // Only pipeline outputs stage their rows per writer; a file that also takes
            // dead letters or late records is written at once (at-least-once).
            Connector::File { path, format, .. } if output && !side => {
                let path = resolve(&opts.base_dir, path);
                let sink =
                    checkpoint::TxFileSink::open(&s.name, &path, *format, &store.parts_dir(), committed(&s.name))
                        .map_err(RunError::Setup)?;
                tx_sinks.insert(s.name.clone(), Arc::new(sink));
            }
            _ if output || side => {
                sinks.insert(s.name.clone(), Arc::new(Mutex::new(open_sink(&s.connector, &opts.base_dir)?)));
            }
            _ => {}
        }
    }
    // Topics written only as pipeline outputs take part in checkpoints too.
    let mut tx_topics = HashMap::new();
    for (name, topic) in &topics {
        let target = ir::Target::Topic(name.clone());
        let output = runnable.iter().any(|p| p.outputs.iter().any(|o| o.target == target));
        let side =
            runnable.iter().any(|p| targets(p).any(|t| *t == target) && !p.outputs.iter().any(|o| o.target == target))
                || program.sources.iter().any(|src| src.dead_letter.as_ref() == Some(&target));
        if output && !side {
            let sink =
                checkpoint::TxTopicSink::new(name, topic.clone(), &store.parts_dir()).map_err(RunError::Setup)?;
            tx_topics.insert(name.clone(), Arc::new(sink));
        }
    }
    let mut staged: Vec<Arc<dyn checkpoint::Staged>> = Vec::new();
    staged.extend(tx_sinks.values().map(|s| s.clone() as Arc<dyn checkpoint::Staged>));
    staged.extend(tx_topics.values().map(|s| s.clone() as Arc<dyn checkpoint::Staged>));
    let interval = opts.checkpoint_interval_ms.unwrap_or(program.config.checkpoint_interval_ms).max(1);
    let coord = Arc::new(checkpoint::Coordinator::new(
        store,
        Duration::from_millis(interval as u64),
        opts.checkpoints_keep,
        fingerprint,
        restored,
        staged,
        failed.clone(),
    ));
    let mut writers_left: HashMap<String, Arc<AtomicU64>> = HashMap::new();
    for p in &runnable {
        for t in targets(p) {
            if let ir::Target::Topic(t) = t {
                writers_left
                    .entry(t.clone())
                    .or_insert_with(|| Arc::new(AtomicU64::new(0)))
                    .fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    let shared = Arc::new(Shared {
        log,
        topics,
        sinks,
        kafka_sinks,
        writers_left,
        trackers: Mutex::new(Vec::new()),
        tx_sinks,
        tx_topics,
        coord: coord.clone(),
        op_ids: checkpoint::stateful_ops(program).into_iter().map(|o| ((o.pipeline, o.index), o.id)).collect(),
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.worker_threads.max(1))
        .enable_all()
        .build()
        .map_err(io_err("starting the runtime"))?;
    if opts.handle_ctrl_c {
        let stop = opts.stop.clone();
        rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::SeqCst);
                eprintln!("\nstopping: finishing the records already read (Ctrl-C again to abort)");
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
    }
    // Pipelines with event-time operators carry each record's watermark (stamp.rs).
    let program = Arc::new(stamp::stamp_program(program));
    let plan = physical::physical(&program, opts.parallelism);
    // Every participant joins the checkpoints before any starts.
    let mut joined = HashMap::new();
    for p in &runnable {
        let Some(pp) = plan.pipelines.iter().find(|x| x.name == p.name) else { continue };
        let ids: Vec<Vec<usize>> =
            pp.stages.iter().map(|s| (0..s.parallelism.max(1)).map(|_| coord.join()).collect()).collect();
        joined.insert(p.name.clone(), Arc::new(ids));
    }
    let ticking = Arc::new(AtomicBool::new(true));
    let ticker = {
        let (coord, ticking) = (coord.clone(), ticking.clone());
        std::thread::spawn(move || {
            while ticking.load(Ordering::SeqCst) {
                coord.tick();
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let results = rt.block_on(async {
        let mut handles = Vec::new();
        for p in &runnable {
            let Some(pp) = plan.pipelines.iter().find(|x| x.name == p.name) else { continue };
            let (program, shared, opts, failed) = (program.clone(), shared.clone(), opts.clone(), failed.clone());
            let pp = pp.clone();
            let ids = joined[&p.name].clone();
            handles.push(tokio::spawn(async move {
                let r = run_pipeline(program, pp, shared, opts, failed.clone(), ids).await;
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
    });
    ticking.store(false, Ordering::SeqCst);
    let _ = ticker.join();
    // The last checkpoint commits what is left (after a failure, nothing more is).
    let finished = if failed.load(Ordering::SeqCst) { Ok(()) } else { coord.finish() };
    summary.checkpoints = coord.completed();
    // Sinks are flushed whatever happened: what was written stays written.
    for w in shared.sinks.values() {
        if let Ok(mut w) = w.lock() {
            w.out.flush().map_err(io_err("flushing a sink"))?;
        }
    }
    let mut first_error = None;
    for r in results? {
        match r {
            Ok(stats) => summary.pipelines.push(stats),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    finished?;
    let trackers = shared.trackers.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = trackers.iter().find_map(|t| t.error()) {
        return Err(RunError::Setup(format!("committing consumer-group offsets: {e}")));
    }
    summary.stopped = opts.stop.load(Ordering::SeqCst);
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// What checkpoints of this run must match to be restored: the program's text (less
/// its config) and the pipelines and parallelism run.
fn fingerprint(program: &ir::Program, runnable: &[&ir::Pipeline], opts: &RunOptions) -> String {
    let text: String =
        program.to_string().lines().filter(|l| !l.starts_with("config ")).map(|l| format!("{l}\n")).collect();
    let names: Vec<&str> = runnable.iter().map(|p| p.name.as_str()).collect();
    let all = format!("{text}pipelines {names:?} parallelism {}", opts.parallelism);
    format!("{:08x}", crc32c::crc32c(all.as_bytes()))
}

/// The checkpoint to resume from, if any; re-applies its sink commits (a crash may have
/// cut them short) and deletes staged output no checkpoint committed.
fn restore_point(
    store: &crate::checkpoint::CheckpointStore,
    fingerprint: &str,
    opts: &RunOptions,
    summary: &mut Summary,
    topics: &HashMap<String, Arc<Topic>>,
    file_sinks: &HashSet<String>,
) -> Result<Option<(crate::checkpoint::Metadata, PathBuf)>, RunError> {
    if let Some(sp) = &opts.from_savepoint {
        // A savepoint: the program may have changed; operators are matched by their
        // stable ids when they start. The checkpoints of earlier runs are dropped.
        let mut m = crate::checkpoint::load_dir(sp)
            .map_err(|e| RunError::Setup(format!("savepoint {} cannot be used: {e}", sp.display())))?;
        store.clear().map_err(RunError::Setup)?;
        // Files this program still writes are cut back to what the savepoint committed.
        m.sinks.retain(|c| c.topic.is_none() && file_sinks.contains(&c.sink));
        for c in &m.sinks {
            checkpoint::apply_commit(c, &store.parts_dir())
                .map_err(|e| RunError::Setup(format!("savepoint {}: {e}", sp.display())))?;
        }
        return Ok(Some((m, sp.clone())));
    }
    // Reading topics from a position given by hand starts a new run too.
    if opts.fresh || opts.start_from != StartFrom::Committed {
        store.clear().map_err(RunError::Setup)?;
        return Ok(None);
    }
    let (latest, warnings) = match opts.from_checkpoint {
        Some(id) => (
            Some(store.load(id).map_err(|e| {
                RunError::Setup(format!("checkpoint {id} in {} cannot be used: {e}", store.root().display()))
            })?),
            Vec::new(),
        ),
        None => store.latest(),
    };
    summary.warnings.extend(warnings);
    let parts = store.parts_dir();
    let Some(m) = latest else {
        let _ = std::fs::remove_dir_all(&parts);
        return Ok(None);
    };
    // The last run of another program (or pipelines, or parallelism) ended normally:
    // this one is a new job and starts over. The same program resumes even after a
    // normal end — a restart after a crash at the very end must not read its files
    // again — so its files are not read again and its topics are read from where they
    // were left (`--fresh` reads everything again).
    if m.last && m.program != fingerprint {
        let _ = std::fs::remove_dir_all(&parts);
        store.clear().map_err(RunError::Setup)?;
        return Ok(None);
    }
    if m.program != fingerprint {
        return Err(RunError::Setup(format!(
            "the program, its pipelines or its parallelism changed since checkpoint {} in {} was taken, so its state cannot be restored; run with --fresh to start over",
            m.id,
            store.root().display()
        )));
    }
    for c in &m.sinks {
        let r = match &c.topic {
            Some(t) => match topics.get(t) {
                Some(topic) => checkpoint::apply_topic_commit(c, topic, &parts),
                None => Err(format!("topic `{t}` is not open")),
            },
            None => checkpoint::apply_commit(c, &parts),
        };
        r.map_err(|e| RunError::Setup(format!("re-committing checkpoint {}: {e}", m.id)))?;
    }
    if let Ok(entries) = std::fs::read_dir(&parts) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let dir = store.root().to_path_buf();
    Ok(Some((m, dir)))
}

/// What every instance of one stage shares.
struct StageRt {
    stats: StageCounters,
    /// The stage's fused operators, compiled once (None: nothing to run).
    fused: Option<Box<dyn Stage>>,
    /// Its stateful head (then `fused` is None: the head's finishing stage runs them).
    head: Option<head::HeadRt>,
}

#[derive(Default)]
pub(crate) struct StageCounters {
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
}

/// What the last stage's instances share: the pipeline's outputs.
struct Writes {
    outputs: Vec<(Option<ir::Expr>, Output)>,
    written: AtomicU64,
}

/// A short label for a stage's operators.
fn stage_label(p: &ir::Pipeline, kind: &StageKind) -> String {
    match kind {
        StageKind::Read(ir::Input::Source(s)) => format!("read source {s}"),
        StageKind::Read(ir::Input::Topic(t)) => format!("read topic {t}"),
        StageKind::Ops { head, fused } => {
            let names: Vec<&str> = head
                .iter()
                .chain(fused)
                .map(|&i| match &p.ops[i].kind {
                    ir::OpKind::Filter(_) => "where",
                    ir::OpKind::Project(_) => "select",
                    ir::OpKind::KeyBy(_) => "key_by",
                    ir::OpKind::WindowAggregate { .. } => "window",
                    ir::OpKind::Aggregate { .. } => "aggregate",
                    ir::OpKind::Dedup { .. } => "dedup",
                    ir::OpKind::TopN { .. } => "top",
                    ir::OpKind::Join { .. } => "join",
                    ir::OpKind::Lookup { .. } => "lookup",
                    ir::OpKind::Union(_) => "union",
                    ir::OpKind::Unnest { .. } => "unnest",
                    ir::OpKind::Pattern { .. } => "pattern",
                })
                .collect();
            if names.is_empty() {
                "pass".into()
            } else {
                names.join(" | ")
            }
        }
    }
}

async fn run_pipeline(
    program: Arc<ir::Program>,
    pp: physical::PhysicalPipeline,
    shared: Arc<Shared>,
    opts: RunOptions,
    failed: Arc<AtomicBool>,
    ids: Arc<Vec<Vec<usize>>>,
) -> Result<PipelineStats, RunError> {
    let p = program.pipelines[pp.pipeline].clone();
    let name = p.name.clone();
    let dead = dead_letters(&program, &p.input, &shared)?;

    // Compile every stage's fused operators once; instances share the code.
    let mut rts = Vec::new();
    for s in &pp.stages {
        if let StageKind::Ops { head: Some(hi), fused } = &s.kind {
            let late = match &p.ops[*hi].kind {
                ir::OpKind::WindowAggregate { late: Some(t), .. } => {
                    Some(shared.output(t, &program, op_input_time(&program, &p, *hi))?)
                }
                _ => None,
            };
            let head = head::HeadRt::new(&program, &p, *hi, fused, &s.input, opts.jit, late)?;
            rts.push(Arc::new(StageRt { stats: StageCounters::default(), fused: None, head: Some(head) }));
            continue;
        }
        let fused = match &s.kind {
            StageKind::Ops { fused, .. } if !fused.is_empty() => {
                let spec = StageSpec { input: s.input.clone(), ops: fused.iter().map(|&i| p.ops[i].clone()).collect() };
                Some(if opts.jit {
                    stage::jit(&spec, &program)
                        .map_err(|e| RunError::Setup(format!("compiling pipeline `{name}`: {e}")))?
                } else {
                    stage::interpreted(&spec, &program)
                        .map_err(|e| RunError::Setup(format!("pipeline `{name}`: {e}")))?
                })
            }
            _ => None,
        };
        rts.push(Arc::new(StageRt { stats: StageCounters::default(), fused, head: None }));
    }

    let out_time = p.ops.last().map_or_else(|| input_event_time(&program, &p.input), |o| o.event_time.clone());
    let outputs: Vec<(Option<ir::Expr>, Output)> = p
        .outputs
        .iter()
        .map(|o| Ok((o.when.clone(), shared.output(&o.target, &program, out_time.clone())?)))
        .collect::<Result<_, RunError>>()?;
    let writes = Arc::new(Writes { outputs, written: AtomicU64::new(0) });

    // Channels into every instance of stages 1..; senders cloned into each upstream router.
    let mut inboxes: Vec<Vec<mpsc::Receiver<Msg>>> = vec![Vec::new()];
    let mut senders: Vec<Vec<mpsc::Sender<Msg>>> = vec![Vec::new()];
    for s in &pp.stages[1..] {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..s.parallelism).map(|_| mpsc::channel::<Msg>(CHANNEL_BATCHES_MAX)).unzip();
        senders.push(tx);
        inboxes.push(rx);
    }
    let router_for = |from: usize, me: usize| -> Router {
        let next = &pp.stages[from + 1];
        let exchange = next.exchange.clone().unwrap_or(Exchange::Forward);
        let key = match &exchange {
            Exchange::Hash(keys) => {
                Some(KeyHasher::new(keys, &Layout::new(pp.stages[from].output.clone()), program.clone()))
            }
            _ => None,
        };
        Router::new(exchange, senders[from + 1].clone(), me, key)
    };

    let mut tasks = Vec::new();
    let last = pp.stages.len() - 1;
    for si in 1..pp.stages.len() {
        let upstream = pp.stages[si - 1].parallelism as usize;
        for (me, rx) in std::mem::take(&mut inboxes[si]).into_iter().enumerate() {
            let down = if si == last { Down::Write(writes.clone()) } else { Down::Next(router_for(si, me)) };
            let backend = opts.state_backend.unwrap_or(program.config.state_backend);
            let spill = match &pp.stages[si].kind {
                StageKind::Ops { head: Some(hi), .. } if backend == ir::StateBackend::RocksDb => Some((
                    opts.data_dir.join("state").join(&name).join(format!("stage{si}-{me}")),
                    format!("op{hi}-window"),
                )),
                _ => None,
            };
            let op_id = match &pp.stages[si].kind {
                StageKind::Ops { head: Some(hi), .. } => {
                    Some(shared.op_ids.get(&(name.clone(), *hi)).cloned().unwrap_or_else(|| format!("op{hi}")))
                }
                _ => None,
            };
            let inst = Instance {
                ckpt: InstanceCkpt {
                    coord: shared.coord.clone(),
                    me: ids[si][me],
                    operator: op_id.map(|operator| checkpoint::OperatorId {
                        pipeline: name.clone(),
                        operator,
                        instance: me,
                    }),
                    writer: format!("{name}.s{si}.i{me}"),
                    instances: pp.stages[si].parallelism.max(1) as usize,
                    chain: Arc::new(Mutex::new(Vec::new())),
                },
                spill,
                rt: rts[si].clone(),
                dead: dead.clone(),
                opts: opts.clone(),
                failed: failed.clone(),
                program: program.clone(),
            };
            tasks.push(tokio::spawn(inst.run(rx, upstream, down)));
        }
    }
    let reader = {
        let (program, shared, opts, dead, failed) =
            (program.clone(), shared.clone(), opts.clone(), dead.clone(), failed.clone());
        let input = p.input.clone();
        let layout = Arc::new(Layout::new(p.input_schema.clone()));
        let group = format!("flow.{name}");
        let router = router_for(0, 0);
        let read_rt = rts[0].clone();
        let ckpt = source::Reader {
            coord: shared.coord.clone(),
            me: ids[0][0],
            pipeline: name.clone(),
            resume: shared.coord.restored.as_ref().and_then(|m| m.positions.get(&name).cloned()),
            watermarks: shared.coord.restored.as_ref().and_then(|m| m.watermarks.get(&name).cloned()),
        };
        tokio::task::spawn_blocking(move || {
            let live = opts.live.clone();
            let r = source::read_input(
                &program,
                &input,
                layout,
                &shared,
                &opts,
                dead,
                &group,
                router,
                &read_rt.stats,
                &live,
                failed.clone(),
                ckpt,
            );
            if r.is_err() {
                failed.store(true, Ordering::SeqCst);
            }
            r
        })
    };
    drop(senders);
    let mut first_error: Option<RunError> = None;
    for t in tasks {
        let r = t.await.map_err(|e| RunError::Setup(format!("a stage task failed: {e}")))?;
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
    }
    let read = reader.await.map_err(|e| RunError::Setup(format!("input task failed: {e}")))?;
    // Its staged topic output is committed before the topics' readers in this run are
    // told it is done (they see committed records only).
    if targets(&p).any(|t| matches!(t, ir::Target::Topic(t) if shared.tx_topics.contains_key(t))) {
        let coord = shared.coord.clone();
        tokio::task::spawn_blocking(move || coord.commit_now())
            .await
            .map_err(|e| RunError::Setup(format!("committing: {e}")))?;
    }
    // This pipeline no longer writes its topics: their readers may finish.
    for t in targets(&p) {
        if let ir::Target::Topic(t) = t {
            if let Some(w) = shared.writers_left.get(t) {
                w.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
    // A reader's own error comes first: it is the cause of the others.
    read?;
    if let Some(e) = first_error {
        return Err(e);
    }
    let records_in = rts[0].stats.records_in.load(Ordering::Relaxed);
    let stages = pp
        .stages
        .iter()
        .zip(&rts)
        .map(|(s, rt)| StageStats {
            label: stage_label(&p, &s.kind),
            parallelism: s.parallelism,
            records_in: rt.stats.records_in.load(Ordering::Relaxed),
            records_out: rt.stats.records_out.load(Ordering::Relaxed),
        })
        .collect();
    let heads = rts.iter().filter_map(|r| r.head.as_ref());
    let (mut late, mut late_routed, mut open_windows) = (0, 0, 0);
    for h in heads {
        late += h.late_count.load(Ordering::Relaxed);
        late_routed += h.late_routed.load(Ordering::Relaxed);
        open_windows += h.open_windows.load(Ordering::Relaxed);
    }
    Ok(PipelineStats {
        name,
        records_in,
        records_out: writes.written.load(Ordering::Relaxed),
        dead_lettered: dead.as_ref().map_or(0, |d| d.count.load(Ordering::Relaxed)),
        late,
        late_routed,
        open_windows,
        stages,
    })
}

/// Where a stage instance's results go.
enum Down {
    Next(Router),
    Write(Arc<Writes>),
}

/// A stage instance's part in checkpoints.
struct InstanceCkpt {
    coord: Arc<checkpoint::Coordinator>,
    /// Its participant index.
    me: usize,
    /// Its stateful operator, if it has one.
    operator: Option<checkpoint::OperatorId>,
    /// Its name as a writer of staged sink output.
    writer: String,
    /// Instances of its stage.
    instances: usize,
    /// The state files of its last checkpoint (a full snapshot, then deltas).
    chain: Arc<Mutex<Vec<crate::checkpoint::StateFile>>>,
}

/// A checkpoint after this many files in an operator's chain takes a full snapshot
/// (restoring reads at most this many files).
const FULL_SNAPSHOT_EVERY: usize = 8;

/// One instance of a stage.
struct Instance {
    ckpt: InstanceCkpt,
    /// Where its window state spills (RocksDB backend): the database's directory and
    /// the operator's column family.
    spill: Option<(PathBuf, String)>,
    rt: Arc<StageRt>,
    dead: Option<Arc<DeadLetters>>,
    opts: RunOptions,
    failed: Arc<AtomicBool>,
    program: Arc<ir::Program>,
}

impl Instance {
    async fn run(self, mut rx: mpsc::Receiver<Msg>, upstream: usize, mut down: Down) -> Result<(), RunError> {
        let mut ended = 0;
        // Watermarks: per upstream instance, their minimum, and what was sent on.
        let mut channels = vec![stamp::WM_MIN; upstream.max(1)];
        let mut sent_wm = stamp::WM_MIN;
        let mut window = match self.rt.head.as_ref() {
            None => None,
            Some(h) if !h.windowed => Some(HeadOp::Agg(Box::new(aggregate::KeyedAggOp::new(
                h.spec.clone(),
                h.ttl,
                h.event_time,
                &h.op_input,
                upstream,
            )))),
            Some(h) => {
                let op = window::WindowOp::new(h.spec.clone(), &h.op_input, upstream);
                Some(HeadOp::Window(Box::new(match &self.spill {
                    None => op,
                    Some((dir, cf)) => {
                        let store = tokio::task::block_in_place(|| spill::RocksStore::open(dir, cf));
                        let store = self.check(store.map_err(RunError::Setup))?;
                        // A window in memory costs its accumulator words plus about 80
                        // bytes of header, key and index (docs/architecture.md, "State
                        // backends").
                        let per_window = h.spec.acc.width as u64 * 8 + 80;
                        op.with_store(Box::new(store), (self.opts.state_memory / per_window) as usize)
                    }
                })))
            }
        };
        // Resuming: the operator's state from the checkpoint restored.
        if let (Some(op), Some(id), Some(m)) = (&mut window, &self.ckpt.operator, &self.ckpt.coord.restored) {
            let found = m
                .operators
                .iter()
                .find(|o| o.pipeline == id.pipeline && o.operator == id.operator && o.instance == id.instance);
            // State is split by key over the instances: it restores only at the
            // parallelism it was taken at.
            let taken = m.operators.iter().filter(|o| o.pipeline == id.pipeline && o.operator == id.operator).count();
            if taken > 0 && taken != self.ckpt.instances {
                return self.check(Err(RunError::Setup(format!(
                    "the state of {} was taken at parallelism {taken}; run with --parallelism {taken} to restore it",
                    id.operator
                ))));
            }
            let dir = self.ckpt.coord.restored_dir.clone().unwrap_or_default();
            // The next checkpoint takes a full snapshot (a new chain).
            if let Some(o) = found {
                let r = tokio::task::block_in_place(|| {
                    for (i, f) in o.files().into_iter().enumerate() {
                        let bytes = crate::checkpoint::read_checked(&dir.join(&f.name), f)?;
                        if i == 0 {
                            op.restore(&bytes)?;
                        } else {
                            op.apply_delta(&bytes)?;
                        }
                    }
                    Ok::<(), String>(())
                });
                self.check(
                    r.map_err(|e| RunError::Setup(format!("restoring {} from checkpoint {}: {e}", o.file.name, m.id))),
                )?;
            }
        }
        let mut aligner = checkpoint::Aligner::new(upstream);
        // The write of this instance's part of the last checkpoint, if still going.
        let mut pending: Option<tokio::task::JoinHandle<()>> = None;
        let windowed = self.rt.head.as_ref().is_some_and(|h| h.windowed);
        // Acks of batches whose records may sit in window state: committed only once
        // every window has fired (checkpoints will commit them sooner).
        let mut held: Vec<Arc<exchange::Ack>> = Vec::new();
        loop {
            let msg = match aligner.next() {
                Some(checkpoint::Step::Msg(m)) => m,
                Some(checkpoint::Step::Aligned(id)) => {
                    if !self.checkpoint(id, &mut window, &mut down, &mut pending).await? {
                        return Ok(());
                    }
                    continue;
                }
                None => match rx.recv().await {
                    Some(m) => {
                        aligner.offer(m);
                        continue;
                    }
                    None => break,
                },
            };
            if self.failed.load(Ordering::SeqCst) {
                return Ok(());
            }
            let (out, inb) = match msg {
                Msg::Barrier { .. } => continue,
                Msg::End { .. } => {
                    ended += 1;
                    if ended == upstream {
                        break;
                    }
                    continue;
                }
                Msg::Watermark { from, wm } => {
                    let out = match &mut window {
                        Some(op) => {
                            let r = tokio::task::block_in_place(|| {
                                op.watermark(from, wm).map_err(RunError::Setup)?;
                                self.finish_results(op)
                            });
                            self.check(r)?
                        }
                        None => None,
                    };
                    let new = match &window {
                        Some(op) => op.wm(),
                        None => {
                            channels[from] = channels[from].max(wm);
                            channels.iter().copied().min().unwrap_or(wm)
                        }
                    };
                    if let Some(out) = out {
                        if !self.deliver(out, "window results".into(), None, &mut down).await? {
                            return Ok(());
                        }
                    }
                    if new > sent_wm {
                        sent_wm = new;
                        if let Down::Next(router) = &mut down {
                            if !router.watermark(new).await {
                                return Ok(());
                            }
                        }
                    }
                    continue;
                }
                Msg::Data(inb) => {
                    self.rt.stats.records_in.fetch_add(inb.batch.len as u64, Ordering::Relaxed);
                    let r = tokio::task::block_in_place(|| {
                        let out = match &mut window {
                            Some(op) => self.run_head(op, &inb)?,
                            None => Some(match &self.rt.fused {
                                None => inb.batch.clone(),
                                Some(st) => run_stage(st.as_ref(), &inb, &self.dead, &self.opts)?,
                            }),
                        };
                        // Dead letters of this batch are written before its ack can complete.
                        if let Some(d) = &self.dead {
                            d.flush()?;
                        }
                        Ok(out)
                    });
                    (self.check(r)?, inb)
                }
            };
            if let Some(out) = out {
                if !self.deliver(out, inb.origin.clone(), inb.ack.clone(), &mut down).await? {
                    return Ok(());
                }
            }
            if windowed {
                held.extend(inb.ack.clone());
            }
            // The input batch (and its ack) is released only now, after its results moved
            // on. The last ack's drop commits group offsets (file I/O): off the runtime.
            if inb.ack.is_some() {
                tokio::task::block_in_place(|| drop(inb));
            }
        }
        let mut last = checkpoint::AckData::default();
        if let Some(op) = &mut window {
            let head = self.rt.head.as_ref().expect("head");
            if self.opts.stop.load(Ordering::SeqCst) {
                // Stopped, not ended: open windows are not emitted, and the offsets of
                // their records are not committed (the next run reads them again).
                // The last checkpoint keeps them: the next run resumes with them.
                head.open_windows.fetch_add(op.open_windows() as u64, Ordering::Relaxed);
                for a in held.drain(..) {
                    a.abandon();
                }
                if let Some(id) = &self.ckpt.operator {
                    let bytes = tokio::task::block_in_place(|| op.snapshot());
                    last.state = Some((id.clone(), self.check(bytes.map_err(RunError::Setup))?));
                }
            } else {
                let r = tokio::task::block_in_place(|| {
                    op.finish().map_err(RunError::Setup)?;
                    self.finish_results(op)
                });
                if let Some(out) = self.check(r)? {
                    if !self.deliver(out, "window results".into(), None, &mut down).await? {
                        return Ok(());
                    }
                }
                tokio::task::block_in_place(|| drop(std::mem::take(&mut held)));
            }
        }
        if matches!(down, Down::Write(_)) {
            last.parts = self.check(self.ckpt.coord.seal_all(&self.ckpt.writer).map_err(RunError::Setup))?;
        }
        // Its last acknowledgement first: what it leaves belongs to later checkpoints.
        if let Some(h) = pending.take() {
            let _ = h.await;
        }
        self.ckpt.coord.ended(self.ckpt.me, last);
        if let Down::Next(router) = down {
            if !self.failed.load(Ordering::SeqCst) {
                router.end().await;
            }
        }
        Ok(())
    }

    /// Checkpoint `id`'s barrier has come from every input: the operator's state and
    /// the staged sink output go into it, and the barrier goes on. False once the run
    /// stops.
    ///
    /// Only encoding the state and taking the staged parts out of the sinks happen
    /// here; writing and fsyncing them run on a blocking thread (`pending`) that
    /// acknowledges when they are durable, while this instance goes on.
    async fn checkpoint(
        &self,
        id: u64,
        window: &mut Option<HeadOp>,
        down: &mut Down,
        pending: &mut Option<tokio::task::JoinHandle<()>>,
    ) -> Result<bool, RunError> {
        // The previous checkpoint's writes are done before this one's start (its chain
        // is this one's base).
        if let Some(h) = pending.take() {
            let _ = h.await;
        }
        let mut state = None;
        if let (Some(op), Some(op_id)) = (window.as_mut(), &self.ckpt.operator) {
            // A delta on the last chain, or a full snapshot to start a new one.
            let base = self.ckpt.chain.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let delta = !base.is_empty() && base.len() < FULL_SNAPSHOT_EVERY;
            let r = tokio::task::block_in_place(|| {
                if delta {
                    if let Ok(bytes) = op.snapshot_delta() {
                        return Ok((bytes, Some(base)));
                    }
                }
                op.snapshot().map(|b| (b, None))
            });
            state = Some((op_id.clone(), self.check(r.map_err(RunError::Setup))?));
        }
        let detached =
            if matches!(down, Down::Write(_)) { self.ckpt.coord.detach_all(&self.ckpt.writer) } else { Vec::new() };
        let (coord, me, chain) = (self.ckpt.coord.clone(), self.ckpt.me, self.ckpt.chain.clone());
        *pending = Some(tokio::task::spawn_blocking(move || {
            let mut data = checkpoint::AckData::default();
            let r = (|| -> Result<(), String> {
                if let Some((op_id, (bytes, base))) = state {
                    let written = coord.write_state(id, op_id, &bytes, base)?;
                    *chain.lock().unwrap_or_else(|e| e.into_inner()) = written.chain.clone();
                    data.written = Some(written);
                }
                for d in detached {
                    data.parts.push(d.seal()?);
                }
                Ok(())
            })();
            match r {
                Ok(()) => coord.ack(me, id, data),
                Err(e) => coord.fail(e),
            }
        }));
        match down {
            Down::Next(router) => Ok(router.barrier(id).await),
            Down::Write(_) => Ok(true),
        }
    }

    fn check<T>(&self, r: Result<T, RunError>) -> Result<T, RunError> {
        if r.is_err() {
            self.failed.store(true, Ordering::SeqCst);
        }
        r
    }

    /// Counts `out` and writes it (last stage) or sends it on; false once the run stops.
    async fn deliver(
        &self,
        out: Batch,
        origin: Arc<str>,
        ack: Option<Arc<exchange::Ack>>,
        down: &mut Down,
    ) -> Result<bool, RunError> {
        self.rt.stats.records_out.fetch_add(out.len as u64, Ordering::Relaxed);
        match down {
            Down::Write(w) => {
                let inb = InBatch::new(Batch::empty(out.layout.clone()), origin, ack);
                let r = tokio::task::block_in_place(|| {
                    write_outputs(w, &out, &inb, &self.dead, &self.opts, &self.program, &self.ckpt.writer)?;
                    match &self.dead {
                        Some(d) => d.flush(),
                        None => Ok(()),
                    }
                });
                self.check(r)?;
                Ok(true)
            }
            Down::Next(router) => {
                if out.len == 0 {
                    return Ok(true);
                }
                Ok(router.send(InBatch::new(out, origin, ack)).await)
            }
        }
    }

    /// Runs a data batch through the stage's window operator; returns the results it fired.
    fn run_head(&self, op: &mut HeadOp, inb: &InBatch) -> Result<Option<Batch>, RunError> {
        let head = self.rt.head.as_ref().expect("head");
        // Keys and arguments that are expressions first; a failing row is dead-lettered.
        let (batch, index) = match &head.pre {
            None => (inb.batch.clone(), None),
            Some(pre) => {
                let mut out = stage::output_builder(pre.as_ref(), &inb.batch);
                let mut index = Vec::with_capacity(inb.batch.len);
                let mut from = 0;
                loop {
                    let rest = if from == 0 { inb.batch.clone() } else { inb.batch.slice_from(from) };
                    let before = out.len();
                    match pre.run(&rest, &mut out) {
                        Ok(()) => {
                            index.extend(from..from + (out.len() - before));
                            break;
                        }
                        Err(e) => {
                            let bad = from + e.row;
                            index.extend(from..bad);
                            expression_failed(&self.dead, &self.opts, &e, &inb.origin, &inb.batch.row(bad))?;
                            from = bad + 1;
                            if from >= inb.batch.len {
                                break;
                            }
                        }
                    }
                }
                (out.finish(), Some(index))
            }
        };
        let orig = |r: usize| index.as_ref().map_or(r, |ix| ix[r]);
        let outcome = op.process(&batch, inb.from).map_err(RunError::Setup)?;
        for (r, why) in &outcome.failed {
            let e = EvalError { span: head.span, message: (*why).to_string(), row: 0 };
            expression_failed(&self.dead, &self.opts, &e, &inb.origin, &inb.batch.row(orig(*r)))?;
        }
        if !outcome.late.is_empty() {
            let n = outcome.late.len() as u64;
            head.late_count.fetch_add(n, Ordering::Relaxed);
            if let Some(late) = &head.late {
                let rows: Vec<usize> = outcome.late.iter().map(|&r| orig(r)).collect();
                late.write(&head.late_rows(&inb.batch, &rows)?)?;
                head.late_routed.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.finish_results(op)
    }

    /// The window's fired results through the finishing stage (the operator's output
    /// expressions and the fused operators after it).
    fn finish_results(&self, op: &mut HeadOp) -> Result<Option<Batch>, RunError> {
        let head = self.rt.head.as_ref().expect("head");
        let Some(raw) = op.take_results() else { return Ok(None) };
        let inb = InBatch::new(raw, "window results".into(), None);
        Ok(Some(run_stage(head.finish.as_ref(), &inb, &self.dead, &self.opts)?))
    }
}

/// A stage instance's stateful operator.
enum HeadOp {
    Window(Box<window::WindowOp>),
    Agg(Box<aggregate::KeyedAggOp>),
}

impl HeadOp {
    fn process(&mut self, batch: &Batch, from: usize) -> Result<window::Outcome, String> {
        match self {
            HeadOp::Window(op) => op.process(batch, from),
            HeadOp::Agg(op) => Ok(window::Outcome { late: Vec::new(), failed: op.process(batch, from)? }),
        }
    }

    fn watermark(&mut self, from: usize, wm: i64) -> Result<(), String> {
        match self {
            HeadOp::Window(op) => op.watermark(from, wm),
            HeadOp::Agg(op) => {
                op.watermark(from, wm);
                Ok(())
            }
        }
    }

    fn finish(&mut self) -> Result<(), String> {
        match self {
            HeadOp::Window(op) => op.finish(),
            HeadOp::Agg(op) => {
                op.finish();
                Ok(())
            }
        }
    }

    /// The operator's whole state, for a checkpoint.
    fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        match self {
            HeadOp::Window(op) => op.snapshot(),
            HeadOp::Agg(op) => op.snapshot(),
        }
    }

    /// What changed since its last snapshot or delta.
    fn snapshot_delta(&mut self) -> Result<Vec<u8>, String> {
        match self {
            HeadOp::Window(op) => op.snapshot_delta(),
            HeadOp::Agg(op) => op.snapshot_delta(),
        }
    }

    /// Applies a delta after [`HeadOp::restore`].
    fn apply_delta(&mut self, bytes: &[u8]) -> Result<(), String> {
        match self {
            HeadOp::Window(op) => op.apply_delta(bytes),
            HeadOp::Agg(op) => op.apply_delta(bytes),
        }
    }

    /// Loads a checkpoint's state into a fresh operator.
    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        match self {
            HeadOp::Window(op) => op.restore(bytes),
            HeadOp::Agg(op) => op.restore(bytes),
        }
    }

    fn take_results(&mut self) -> Option<Batch> {
        match self {
            HeadOp::Window(op) => op.take_results(),
            HeadOp::Agg(op) => op.take_results(),
        }
    }

    fn wm(&self) -> i64 {
        match self {
            HeadOp::Window(op) => op.wm,
            HeadOp::Agg(op) => op.wm,
        }
    }

    /// Windows that have not fired (an unwindowed aggregate has none: every result is out).
    fn open_windows(&self) -> usize {
        match self {
            HeadOp::Window(op) => {
                let (hot, spilled, _) = op.state_size();
                hot + spilled
            }
            HeadOp::Agg(_) => 0,
        }
    }
}

/// Routes a batch of the pipeline's results to its outputs (`when` conditions first
/// match wins; an unconditional output takes what no condition took).
fn write_outputs(
    w: &Writes,
    batch: &Batch,
    inb: &InBatch,
    dead: &Option<Arc<DeadLetters>>,
    opts: &RunOptions,
    program: &ir::Program,
    writer: &str,
) -> Result<(), RunError> {
    let ctx = interp::EvalCtx::new(program);
    let conditional = w.outputs.iter().any(|(c, _)| c.is_some());
    let mut taken = vec![false; batch.len];
    for (when, out) in &w.outputs {
        let chosen = match when {
            None if conditional => select_rows(batch, |i| !taken[i]),
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
                            expression_failed(dead, opts, &e, &inb.origin, &batch.row(i))?;
                        }
                    }
                }
                select_rows(batch, |i| keep[i])
            }
        };
        w.written.fetch_add(chosen.len as u64, Ordering::Relaxed);
        opts.live.records_out.fetch_add(chosen.len as u64, Ordering::Relaxed);
        out.write_by(&chosen, writer)?;
    }
    Ok(())
}

/// Everything a pipeline writes: its outputs and its windows' late outputs.
fn targets(p: &ir::Pipeline) -> impl Iterator<Item = &ir::Target> {
    let late = p.ops.iter().filter_map(|o| match &o.kind {
        ir::OpKind::WindowAggregate { late: Some(t), .. } => Some(t),
        _ => None,
    });
    p.outputs.iter().map(|o| &o.target).chain(late)
}

/// The event time of operator `i`'s input.
fn op_input_time(program: &ir::Program, p: &ir::Pipeline, i: usize) -> Option<ir::EventTime> {
    if i == 0 {
        input_event_time(program, &p.input)
    } else {
        p.ops[i - 1].event_time.clone()
    }
}

fn input_event_time(program: &ir::Program, input: &ir::Input) -> Option<ir::EventTime> {
    match input {
        ir::Input::Source(s) => program.sources.iter().find(|x| x.name == *s).and_then(|x| x.event_time.clone()),
        ir::Input::Topic(t) => program.topics.iter().find(|x| x.name == *t).and_then(|x| x.event_time.clone()),
    }
}

/// The dead-letter output of a pipeline's input: a source's declared one, or the
/// default topic `<source>.dlq` / `<topic>.dlq` (one shared handle in the process,
/// however many pipelines read the input).
fn dead_letters(
    program: &ir::Program,
    input: &ir::Input,
    shared: &Shared,
) -> Result<Option<Arc<DeadLetters>>, RunError> {
    let (name, declared) = match input {
        ir::Input::Source(name) => {
            let Some(src) = program.sources.iter().find(|s| s.name == *name) else { return Ok(None) };
            (name, src.dead_letter.clone())
        }
        ir::Input::Topic(name) => (name, None),
    };
    let output = match &declared {
        Some(t) => shared.output(t, program, None)?,
        None => {
            let t = format!("{name}.dlq");
            let topic = match shared.log.open_topic_shared(&t) {
                Ok(topic) => topic,
                Err(crate::log::LogError::UnknownTopic(_)) => {
                    // Another pipeline of this run may be creating it at the same moment.
                    match shared.log.create_topic(&t, &TopicConfig::default()) {
                        Ok(()) | Err(crate::log::LogError::TopicExists(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                    shared.log.open_topic_shared(&t)?
                }
                Err(e) => return Err(e.into()),
            };
            Output::Topic { topic, key: None, time: None }
        }
    };
    let layout = Arc::new(Layout::new(flow_compiler::check::dead_letter_record()));
    Ok(Some(Arc::new(DeadLetters::new(name.clone(), output, layout))))
}

fn expression_failed(
    dead: &Option<Arc<DeadLetters>>,
    opts: &RunOptions,
    e: &EvalError,
    origin: &str,
    row: &flow_types::row::RowRef,
) -> Result<(), RunError> {
    if opts.strict || dead.is_none() {
        return Err(RunError::Eval { span: e.span, message: e.message.clone() });
    }
    let mut raw = String::new();
    crate::format::encode_json_row(row, &mut raw);
    if let Some(d) = dead {
        d.send(origin, &format!("expression failed: {}", e.message), &raw)?;
    }
    Ok(())
}

/// Runs the stage over a batch. A row whose expression fails is dead-lettered and the
/// stage resumes after it, so the rest of the batch runs at full speed.
fn run_stage(
    st: &dyn Stage,
    inb: &InBatch,
    dead: &Option<Arc<DeadLetters>>,
    opts: &RunOptions,
) -> Result<Batch, RunError> {
    let mut out = stage::output_builder(st, &inb.batch);
    let mut from = 0;
    loop {
        let rest = if from == 0 { inb.batch.clone() } else { inb.batch.slice_from(from) };
        match st.run(&rest, &mut out) {
            Ok(()) => return Ok(out.finish()),
            Err(e) => {
                let failed_row = from + e.row;
                expression_failed(dead, opts, &e, &inb.origin, &inb.batch.row(failed_row))?;
                from = failed_row + 1;
                if from >= inb.batch.len {
                    return Ok(out.finish());
                }
            }
        }
    }
}
