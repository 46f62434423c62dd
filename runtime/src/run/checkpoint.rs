//! The checkpoint protocol: barriers, their alignment, the coordinator, and file sinks
//! that commit with checkpoints (docs/checkpoints.md).
//!
//! Every `checkpoint_interval` the [`Coordinator`] asks for checkpoint `n`. Each
//! pipeline's reader, at its next batch boundary, reports where its input stands and
//! sends barrier `n` to every instance of the next stage. An instance with several
//! upstream instances *aligns*: once barrier `n` came from an input, what that input
//! sends next is held back until every input's barrier came ([`Aligner`]). Then the
//! instance writes its operator's state into the checkpoint, seals the sink output it
//! staged since the previous barrier ([`TxFileSink`]), acknowledges, and sends the
//! barrier on. When every participant of every pipeline has acknowledged, the
//! coordinator writes the checkpoint's metadata (atomically: it is the commit point),
//! then appends the sealed parts to the sink files, then prunes old checkpoints.
//!
//! A participant that ends (its input ended, or the run was stopped) acknowledges every
//! later checkpoint with its final state: a stopped instance's open windows, its
//! reader's position where it stopped. At the end of a run a last checkpoint commits
//! what is left, so a run that ends normally leaves every output committed.

use super::io::{encode_sink_rows, sink_header};
use super::RunError;
use crate::checkpoint::{CheckpointStore, Metadata, OperatorState, Position, SinkCommit, StateFile, FORMAT_VERSION};
use bytes::Bytes;
use flow_compiler::ir::Format;
use flow_types::row::Batch;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::exchange::Msg;

/// What an instance handles next: a message, or the alignment of a checkpoint.
pub(crate) enum Step {
    Msg(Msg),
    Aligned(u64),
}

/// Barrier alignment at an instance with `upstream` inputs (see the module docs).
pub(crate) struct Aligner {
    ended: Vec<bool>,
    aligning: Option<u64>,
    arrived: Vec<bool>,
    /// Messages from inputs whose barrier came, held until alignment.
    held: VecDeque<Msg>,
    ready: VecDeque<Step>,
}

fn sender(m: &Msg) -> usize {
    match m {
        Msg::Data(b) => b.from,
        Msg::Watermark { from, .. } | Msg::Barrier { from, .. } | Msg::End { from } => *from,
    }
}

impl Aligner {
    pub fn new(upstream: usize) -> Aligner {
        let n = upstream.max(1);
        Aligner {
            ended: vec![false; n],
            aligning: None,
            arrived: vec![false; n],
            held: VecDeque::new(),
            ready: VecDeque::new(),
        }
    }

    /// Takes a message off the channel.
    pub fn offer(&mut self, msg: Msg) {
        let from = sender(&msg).min(self.ended.len() - 1);
        if self.aligning.is_some() && self.arrived[from] {
            self.held.push_back(msg);
            return;
        }
        match msg {
            Msg::Barrier { id, .. } => {
                if self.aligning.is_none() {
                    self.aligning = Some(id);
                    self.arrived.iter_mut().for_each(|a| *a = false);
                }
                self.arrived[from] = true;
            }
            Msg::End { .. } => {
                self.ended[from] = true;
                self.ready.push_back(Step::Msg(msg));
            }
            other => self.ready.push_back(Step::Msg(other)),
        }
        if let Some(id) = self.aligning {
            if (0..self.ended.len()).all(|i| self.arrived[i] || self.ended[i]) {
                self.aligning = None;
                self.ready.push_back(Step::Aligned(id));
                for m in std::mem::take(&mut self.held) {
                    self.offer(m);
                }
            }
        }
    }

    /// What to handle next, if anything is ready.
    pub fn next(&mut self) -> Option<Step> {
        self.ready.pop_front()
    }
}

/// A stateful operator of a program, as checkpoints and savepoints know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatefulOp {
    pub pipeline: String,
    /// Its index in the pipeline's operators.
    pub index: usize,
    /// Stable across edits elsewhere in the .flow: the pipeline's name, the operator's
    /// kind and a hash of its definition and input record (spans and comments play no
    /// part), e.g. `fraud.window-3f2a19c0`.
    pub id: String,
    /// The operator as text, for reports.
    pub text: String,
}

/// Every stateful operator (window, keyed aggregate) of `program`'s pipelines.
pub fn stateful_ops(program: &flow_compiler::ir::Program) -> Vec<StatefulOp> {
    use flow_compiler::ir::OpKind;
    let mut out = Vec::new();
    for p in &program.pipelines {
        let mut input = p.input_schema.clone();
        for (i, op) in p.ops.iter().enumerate() {
            let kind = match op.kind {
                OpKind::WindowAggregate { .. } => Some("window"),
                OpKind::Aggregate { .. } => Some("aggregate"),
                _ => None,
            };
            if let Some(kind) = kind {
                let text = program.op_text(op, &input);
                let fields: Vec<String> = input.fields.iter().map(|f| format!("{}: {}", f.name, f.ty)).collect();
                let hash = crc32c::crc32c(format!("{text}\n{}", fields.join(", ")).as_bytes());
                out.push(StatefulOp {
                    pipeline: p.name.clone(),
                    index: i,
                    id: format!("{}.{kind}-{hash:08x}", p.name),
                    text,
                });
            }
            input = op.output.clone();
        }
    }
    out
}

/// Called with a pipeline's input positions (next offset per partition) when a
/// checkpoint completes: a Kafka source commits them to its cluster.
pub(crate) type CommitHook = Box<dyn Fn(&BTreeMap<u32, u64>) + Send + Sync>;

/// What a participant hands the coordinator for one checkpoint.
#[derive(Default)]
pub(crate) struct AckData {
    /// A reader's: its pipeline and where its input stands (None: not replayable).
    pub position: Option<(String, Option<Position>)>,
    /// A reader's: its source's watermarks.
    pub watermarks: Option<crate::checkpoint::Watermarks>,
    /// An operator instance's state (encoded by the operator).
    pub state: Option<(OperatorId, Vec<u8>)>,
    /// An operator instance's state, already written.
    pub written: Option<OperatorState>,
    /// Sealed sink parts: (sink, part).
    pub parts: Vec<(String, StateFile)>,
}

/// Which operator instance a state belongs to.
#[derive(Clone, Debug)]
pub(crate) struct OperatorId {
    pub pipeline: String,
    pub operator: String,
    pub instance: usize,
}

struct Pending {
    id: u64,
    triggered: Instant,
    triggered_ms: i64,
    acked: Vec<bool>,
    positions: BTreeMap<String, Position>,
    watermarks: BTreeMap<String, crate::checkpoint::Watermarks>,
    operators: Vec<OperatorState>,
    parts: Vec<(String, StateFile)>,
}

#[derive(Default)]
struct CoordState {
    next_id: u64,
    in_flight: Option<Pending>,
    last_done: Option<Instant>,
    ended: Vec<bool>,
    /// Final acknowledgements of ended participants, for the next checkpoint.
    carry: Vec<(usize, AckData)>,
    /// Where the readers that ended left their inputs: part of every later checkpoint.
    final_positions: BTreeMap<String, Position>,
    /// The state stopped operators left (written once): part of every later checkpoint.
    final_states: Vec<OperatorState>,
    final_watermarks: BTreeMap<String, crate::checkpoint::Watermarks>,
    completed: u64,
    error: Option<String>,
}

/// Runs a run's checkpoints (see the module docs).
pub(crate) struct Coordinator {
    pub store: CheckpointStore,
    interval: Duration,
    keep: usize,
    program: String,
    requested: AtomicU64,
    participants: AtomicU64,
    st: Mutex<CoordState>,
    sinks: Vec<Arc<dyn Staged>>,
    /// The checkpoint (or savepoint) this run resumed from, and its directory.
    pub restored: Option<Metadata>,
    pub restored_dir: Option<PathBuf>,
    /// A savepoint asked for: where, and the first checkpoint that may make it.
    savepoint: Mutex<Option<(PathBuf, u64)>>,
    request: PathBuf,
    hooks: Mutex<Vec<(String, CommitHook)>>,
    /// A reader stopped before its input's end (Ctrl-C).
    stopped: AtomicBool,
    failed: Arc<AtomicBool>,
}

impl Coordinator {
    pub fn new(
        store: CheckpointStore,
        interval: Duration,
        keep: usize,
        program: String,
        restored: Option<(Metadata, PathBuf)>,
        sinks: Vec<Arc<dyn Staged>>,
        failed: Arc<AtomicBool>,
    ) -> Coordinator {
        let next_id = store.highest_id() + 1;
        let request = store.root().join("savepoint-request");
        let (restored, restored_dir) = match restored {
            Some((m, d)) => (Some(m), Some(d)),
            None => (None, None),
        };
        Coordinator {
            restored_dir,
            savepoint: Mutex::new(None),
            request,
            hooks: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            store,
            interval,
            keep,
            program,
            requested: AtomicU64::new(0),
            participants: AtomicU64::new(0),
            st: Mutex::new(CoordState { next_id, last_done: Some(Instant::now()), ..CoordState::default() }),
            sinks,
            restored,
            failed,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CoordState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new participant (a reader or a stage instance); returns its index.
    pub fn join(&self) -> usize {
        let i = self.participants.fetch_add(1, Ordering::SeqCst) as usize;
        self.lock().ended.push(false);
        i
    }

    /// The checkpoint readers should inject a barrier for (0: none yet).
    pub fn requested(&self) -> u64 {
        self.requested.load(Ordering::SeqCst)
    }

    /// Seals writer `writer`'s staged parts of every checkpointed file sink.
    pub fn seal_all(&self, writer: &str) -> Result<Vec<(String, StateFile)>, String> {
        self.detach_all(writer).into_iter().map(Detached::seal).collect()
    }

    /// Takes writer `writer`'s open parts of every staged sink (to seal off its path).
    pub fn detach_all(&self, writer: &str) -> Vec<Detached> {
        self.sinks.iter().filter_map(|s| s.detach(writer)).collect()
    }

    /// Writes operator `op`'s state for checkpoint `id` (fsynced): a full snapshot, or a
    /// delta on `chain` (the files of the checkpoint before).
    pub fn write_state(
        &self,
        id: u64,
        op: OperatorId,
        bytes: &[u8],
        delta_on: Option<Vec<StateFile>>,
    ) -> Result<OperatorState, String> {
        let kind = if delta_on.is_some() { "delta" } else { "full" };
        let name = format!("{}-{}-{}-{id:010}.{kind}", op.pipeline, op.operator, op.instance);
        let file = self.store.write_state(id, &name, bytes)?;
        let mut chain = delta_on.unwrap_or_default();
        chain.push(file.clone());
        Ok(OperatorState { pipeline: op.pipeline, operator: op.operator, instance: op.instance, file, chain })
    }

    /// A checkpoint's part failed (writing state or sealing output): the run fails.
    pub fn fail(&self, e: String) {
        self.lock().error.get_or_insert(e);
        self.failed.store(true, Ordering::SeqCst);
    }

    /// A reader stopped before the end of its input: the run's last checkpoint is not the
    /// end of its inputs.
    pub fn reader_stopped(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Calls `hook` with pipeline `pipeline`'s topic positions whenever a checkpoint
    /// completes.
    pub fn on_complete(&self, pipeline: String, hook: CommitHook) {
        self.hooks.lock().unwrap_or_else(|e| e.into_inner()).push((pipeline, hook));
    }

    /// Checkpoints completed in this run.
    pub fn completed(&self) -> u64 {
        self.lock().completed
    }

    pub fn error(&self) -> Option<String> {
        self.lock().error.clone()
    }

    /// Starts a checkpoint if the interval has passed and none is in flight, or at once
    /// when a savepoint was asked for (`flowc savepoint create` leaves a request file).
    pub fn tick(&self) {
        if self.take_request() {
            self.trigger();
        }
        let due = {
            let st = self.lock();
            st.in_flight.is_none() && st.last_done.is_none_or(|t| t.elapsed() >= self.interval)
        };
        if due {
            self.trigger();
        }
    }

    /// Takes a savepoint request left by `flowc savepoint create`, if there is one: the
    /// next checkpoint to start makes the savepoint.
    fn take_request(&self) -> bool {
        if !self.request.exists() {
            return false;
        }
        let to = fs::read_to_string(&self.request).unwrap_or_default();
        let _ = fs::remove_file(&self.request);
        let to = PathBuf::from(to.trim());
        if to.as_os_str().is_empty() {
            return false;
        }
        let first = self.lock().next_id;
        *self.savepoint.lock().unwrap_or_else(|e| e.into_inner()) = Some((to, first));
        true
    }

    /// Starts a checkpoint now (unless one is in flight).
    pub fn trigger(&self) {
        let mut st = self.lock();
        // A failed run commits nothing more (its inputs may have stopped mid-way).
        if st.in_flight.is_some() || st.error.is_some() || self.failed.load(Ordering::SeqCst) {
            return;
        }
        let id = st.next_id;
        st.next_id += 1;
        let n = st.ended.len();
        let triggered_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        st.in_flight = Some(Pending {
            id,
            triggered: Instant::now(),
            triggered_ms,
            acked: vec![false; n],
            positions: BTreeMap::new(),
            watermarks: BTreeMap::new(),
            operators: Vec::new(),
            parts: Vec::new(),
        });
        // Ended participants acknowledge it with what they left.
        for (p, data) in std::mem::take(&mut st.carry) {
            self.record(&mut st, p, data);
        }
        let ended: Vec<usize> = (0..n).filter(|&i| st.ended[i]).collect();
        if let Some(pending) = st.in_flight.as_mut() {
            for i in ended {
                pending.acked[i] = true;
            }
        }
        self.requested.store(id, Ordering::SeqCst);
        self.complete_if_done(&mut st);
    }

    /// Participant `p`'s acknowledgement of checkpoint `id`.
    pub fn ack(&self, p: usize, id: u64, data: AckData) {
        let mut st = self.lock();
        if st.in_flight.as_ref().is_none_or(|x| x.id != id) {
            return;
        }
        self.record(&mut st, p, data);
        self.complete_if_done(&mut st);
    }

    /// Participant `p` has ended; `data` is what it leaves (final position, state of a
    /// stopped operator, sealed parts). It acknowledges every later checkpoint.
    pub fn ended(&self, p: usize, data: AckData) {
        let mut st = self.lock();
        if p < st.ended.len() {
            st.ended[p] = true;
        }
        if let Some((pipeline, Some(pos))) = &data.position {
            st.final_positions.insert(pipeline.clone(), pos.clone());
        }
        if let (Some((pipeline, _)), Some(w)) = (&data.position, &data.watermarks) {
            st.final_watermarks.insert(pipeline.clone(), w.clone());
        }
        let acked = st.in_flight.as_ref().is_some_and(|x| x.acked.get(p).copied().unwrap_or(true));
        if st.in_flight.is_some() && !acked {
            self.record(&mut st, p, data);
            self.complete_if_done(&mut st);
        } else {
            st.carry.push((p, data));
        }
    }

    /// Waits until what ended participants left is committed: two checkpoints complete
    /// (one in flight may not hold it), started at once (or the run fails).
    pub fn commit_now(&self) {
        let target = self.completed() + 2;
        while self.completed() < target && !self.failed.load(Ordering::SeqCst) && self.error().is_none() {
            self.trigger();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A last checkpoint once every participant has ended: commits what is left.
    pub fn finish(&self) -> Result<(), RunError> {
        // A savepoint asked for after the ticker's last look: the final checkpoint makes it.
        self.take_request();
        // One may be in flight (completing as participants end); then the final one.
        self.trigger();
        let needs_final = !self.lock().carry.is_empty();
        if needs_final {
            self.trigger();
        }
        match self.error() {
            Some(e) => Err(RunError::Setup(format!("checkpoint: {e}"))),
            None => Ok(()),
        }
    }

    fn record(&self, st: &mut CoordState, p: usize, data: AckData) {
        let Some(pending) = st.in_flight.as_mut() else { return };
        if let Some(a) = pending.acked.get_mut(p) {
            *a = true;
        }
        if let (Some((pipeline, _)), Some(w)) = (&data.position, data.watermarks) {
            pending.watermarks.insert(pipeline.clone(), w);
        }
        if let Some((pipeline, Some(pos))) = data.position {
            pending.positions.insert(pipeline, pos);
        }
        if let Some((op, bytes)) = data.state {
            match self.write_state(pending.id, op, &bytes, None) {
                Ok(o) => {
                    pending.operators.push(o.clone());
                    st.final_states.push(o);
                }
                Err(e) => {
                    st.error.get_or_insert(e);
                    self.failed.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
        if let Some(pending) = st.in_flight.as_mut() {
            pending.operators.extend(data.written);
            pending.parts.extend(data.parts);
        }
    }

    fn complete_if_done(&self, st: &mut CoordState) {
        let done = st.in_flight.as_ref().is_some_and(|p| p.acked.iter().all(|&a| a));
        if !done || self.failed.load(Ordering::SeqCst) {
            return;
        }
        let Some(p) = st.in_flight.take() else { return };
        // The end of a run that read its inputs to their end (not one stopped early).
        let last = st.ended.iter().all(|&e| e) && !self.stopped.load(Ordering::SeqCst);
        let finals = (st.final_positions.clone(), st.final_states.clone(), st.final_watermarks.clone());
        match self.complete(p, last, finals) {
            Ok(()) => {
                st.completed += 1;
                st.last_done = Some(Instant::now());
            }
            Err(e) => {
                st.error.get_or_insert(e);
                self.failed.store(true, Ordering::SeqCst);
            }
        }
    }

    fn complete(
        &self,
        mut p: Pending,
        last: bool,
        (finals, states, final_wms): (
            BTreeMap<String, Position>,
            Vec<OperatorState>,
            BTreeMap<String, crate::checkpoint::Watermarks>,
        ),
    ) -> Result<(), String> {
        for o in states {
            let same =
                |x: &OperatorState| x.pipeline == o.pipeline && x.operator == o.operator && x.instance == o.instance;
            if !p.operators.iter().any(same) {
                p.operators.push(o);
            }
        }
        let mut sinks = Vec::new();
        for s in &self.sinks {
            let parts: Vec<StateFile> = p.parts.iter().filter(|(n, _)| n == s.name()).map(|(_, f)| f.clone()).collect();
            sinks.push(s.prepare(parts)?);
        }
        // A pipeline whose reader ended before this checkpoint: where it ended. One that
        // has not read since the run resumed: where the restored checkpoint left it.
        let prev = self.restored.as_ref();
        let positions = fill_in(p.positions, finals, prev.map(|m| &m.positions));
        let watermarks = fill_in(p.watermarks, final_wms, prev.map(|m| &m.watermarks));
        let meta = Metadata {
            watermarks,
            version: FORMAT_VERSION,
            id: p.id,
            triggered_ms: p.triggered_ms,
            duration_ms: p.triggered.elapsed().as_millis() as u64,
            program: self.program.clone(),
            positions,
            operators: p.operators,
            sinks: sinks.clone(),
            last,
        };
        fault("before-metadata");
        self.store.complete(&meta)?;
        fault("after-metadata");
        for (s, c) in self.sinks.iter().zip(&sinks) {
            s.apply(c, &self.store.parts_dir())?;
        }
        fault("after-commit");
        for (pipeline, hook) in self.hooks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if let Some(Position::Topic { next }) = meta.positions.get(pipeline) {
                hook(next);
            }
        }
        let wanted = self.savepoint.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((to, first)) = wanted {
            if p.id >= first {
                // A savepoint that cannot be written fails it, not the run.
                match self.store.copy_to(p.id, &to) {
                    Ok(_) => {}
                    Err(e) => {
                        let _ = fs::write(to.with_extension("failed"), e);
                    }
                }
            } else {
                *self.savepoint.lock().unwrap_or_else(|e| e.into_inner()) = Some((to, first));
            }
        }
        self.store.prune(self.keep)
    }
}

/// `acked`, with the pipelines it lacks taken from `finals`, then from `restored`.
fn fill_in<V: Clone>(
    mut acked: BTreeMap<String, V>,
    finals: BTreeMap<String, V>,
    restored: Option<&BTreeMap<String, V>>,
) -> BTreeMap<String, V> {
    for (k, v) in finals {
        acked.entry(k).or_insert(v);
    }
    for (k, v) in restored.into_iter().flatten() {
        acked.entry(k.clone()).or_insert_with(|| v.clone());
    }
    acked
}

/// Fault injection for the crash tests: `FLOW_FAULT=<point>` kills the process at that
/// point of a checkpoint's completion (as kill -9 would).
fn fault(point: &str) {
    if std::env::var("FLOW_FAULT").is_ok_and(|p| p == point) {
        std::process::abort();
    }
}

/// A sink whose writers stage output until the checkpoint covering it completes.
pub(crate) trait Staged: Send + Sync {
    fn name(&self) -> &str;
    /// Takes writer `writer`'s open part, if it has one (its next write opens another).
    fn detach(&self, writer: &str) -> Option<Detached>;
    /// The commit of `parts` (written into the checkpoint's metadata before it is applied).
    fn prepare(&self, parts: Vec<StateFile>) -> Result<SinkCommit, String>;
    /// Applies a commit (again, harmlessly, if it was applied before).
    fn apply(&self, c: &SinkCommit, parts_dir: &Path) -> Result<(), String>;
}

/// A writer's open part file.
pub(crate) struct PartWriter {
    name: String,
    file: fs::File,
    bytes: u64,
    /// CRC32C of what was written so far.
    crc: u32,
    /// Records per partition (topic sinks).
    counts: BTreeMap<u32, u64>,
}

/// Opens a part file for `writer` in `dir` (numbered by `opened`).
/// Names parts apart from every other run's: a part an applied commit deleted may be
/// checked for again (its name must not come back with other bytes).
fn run_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        format!("{:x}{:05x}", nanos as u64, std::process::id())
    })
}

fn open_part(dir: &Path, sink: &str, writer: &str, opened: &AtomicU64) -> Result<PartWriter, RunError> {
    let n = opened.fetch_add(1, Ordering::SeqCst);
    let name = format!("{sink}-{}-{n:06}-{}", run_tag(), writer.replace(['/', '\\'], "_"));
    let path = dir.join(&name);
    let file = fs::File::create(&path)
        .map_err(|e| RunError::Io { what: format!("creating {}", path.display()), source: e })?;
    Ok(PartWriter { name, file, bytes: 0, crc: 0, counts: BTreeMap::new() })
}

/// Seals `w`: fsynced.
fn seal_part(w: PartWriter) -> Result<StateFile, String> {
    w.file.sync_all().map_err(|e| format!("syncing part {}: {e}", w.name))?;
    Ok(StateFile { name: w.name, bytes: w.bytes, crc32c: w.crc })
}

/// A writer's part taken out of its sink at a barrier (later writes go to a new one),
/// to be sealed off the writer's path.
pub(crate) struct Detached {
    sink: String,
    part: PartWriter,
}

impl Detached {
    /// Fsyncs the part: it can then be named in a checkpoint.
    pub fn seal(self) -> Result<(String, StateFile), String> {
        Ok((self.sink, seal_part(self.part)?))
    }
}

/// A sink's staging area: each writer's open part file in `dir`.
struct Parts {
    sink: String,
    dir: PathBuf,
    writers: Mutex<HashMap<String, PartWriter>>,
    /// Parts opened so far (numbers them: a writer may open its next part while the
    /// checkpoint its last one went into is still in flight).
    opened: AtomicU64,
}

impl Parts {
    fn new(sink: &str, dir: &Path) -> Result<Parts, String> {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(Parts {
            sink: sink.to_string(),
            dir: dir.to_path_buf(),
            writers: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
        })
    }

    /// Appends `bytes` (holding `counts` records per partition) to writer `writer`'s
    /// open part, opening one if it has none.
    fn append(&self, writer: &str, bytes: &[u8], counts: &[(u32, u64)]) -> Result<(), RunError> {
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        let w = match writers.get_mut(writer) {
            Some(w) => w,
            None => {
                let w = open_part(&self.dir, &self.sink, writer, &self.opened)?;
                writers.entry(writer.to_string()).or_insert(w)
            }
        };
        w.file.write_all(bytes).map_err(|e| RunError::Io { what: format!("writing part {}", w.name), source: e })?;
        w.bytes += bytes.len() as u64;
        w.crc = crc32c::crc32c_append(w.crc, bytes);
        for &(p, n) in counts {
            *w.counts.entry(p).or_default() += n;
        }
        Ok(())
    }

    /// Takes writer `writer`'s open part, if it has one.
    fn detach(&self, writer: &str) -> Option<Detached> {
        let part = self.writers.lock().unwrap_or_else(|e| e.into_inner()).remove(writer)?;
        Some(Detached { sink: self.sink.clone(), part })
    }
}

/// A file sink whose output becomes visible only when the checkpoint covering it
/// completes. Each writer (a last-stage instance) stages its rows in a part file of its
/// own, sealed at each barrier; a commit appends the checkpoint's parts to the file.
pub(crate) struct TxFileSink {
    pub name: String,
    pub path: PathBuf,
    format: Format,
    /// The file's committed length.
    committed: Mutex<u64>,
    /// The CSV header line, once a batch has shown the record's fields.
    header: std::sync::OnceLock<String>,
    parts: Parts,
}

impl TxFileSink {
    /// Opens sink `name` writing `path`, whose committed length is `committed` (0 on a
    /// fresh run: the file is emptied).
    pub fn open(name: &str, path: &Path, format: Format, parts_dir: &Path, committed: u64) -> Result<Self, String> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let parts = Parts::new(name, parts_dir)?;
        let f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        // Anything past the committed length was never committed. A file shorter than
        // that (deleted or cut by hand) is not padded: its length is the committed one.
        let len = f.metadata().map_err(|e| format!("reading {}: {e}", path.display()))?.len();
        let committed = committed.min(len);
        f.set_len(committed).map_err(|e| format!("truncating {}: {e}", path.display()))?;
        Ok(TxFileSink {
            name: name.to_string(),
            path: path.to_path_buf(),
            format,
            committed: Mutex::new(committed),
            header: std::sync::OnceLock::new(),
            parts,
        })
    }

    /// Stages `batch` in writer `writer`'s open part.
    pub fn write(&self, writer: &str, batch: &Batch) -> Result<(), RunError> {
        if self.header.get().is_none() {
            if let Some(h) = sink_header(batch, self.format) {
                let _ = self.header.set(h);
            }
        }
        self.parts.append(writer, &encode_sink_rows(batch, self.format), &[])
    }
}

impl Staged for TxFileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn detach(&self, writer: &str) -> Option<Detached> {
        self.parts.detach(writer)
    }

    /// The commit of `parts`, from the committed length on.
    fn prepare(&self, parts: Vec<StateFile>) -> Result<SinkCommit, String> {
        let before = *self.committed.lock().unwrap_or_else(|e| e.into_inner());
        let header = if before == 0 && !parts.is_empty() { self.header.get().cloned() } else { None };
        let after = before + header.as_ref().map_or(0, |h| h.len() as u64) + parts.iter().map(|p| p.bytes).sum::<u64>();
        Ok(SinkCommit {
            sink: self.name.clone(),
            path: self.path.clone(),
            len_before: before,
            len_after: after,
            parts,
            header,
            topic: None,
            before: BTreeMap::new(),
            after: BTreeMap::new(),
        })
    }

    /// Applies `c` (see [`apply_commit`]) and records the new committed length.
    fn apply(&self, c: &SinkCommit, parts_dir: &Path) -> Result<(), String> {
        apply_commit(c, parts_dir)?;
        *self.committed.lock().unwrap_or_else(|e| e.into_inner()) = c.len_after;
        Ok(())
    }
}

/// A topic of the log written with checkpoints: each writer stages its records, as
/// one encoded batch per partition and write, in a part file of its own; a commit
/// appends the parts' batches to their partitions. Records enter the log only once
/// committed, so the topic's readers see committed records only (like Kafka's
/// `read_committed`), and records of a run that crashed never appear.
///
/// A part is a sequence of frames: partition (u32 LE), record count (u32 LE), batch
/// length (u32 LE), the batch as `log::batch::encode_batch` makes it.
pub(crate) struct TxTopicSink {
    pub name: String,
    topic: Arc<crate::log::Topic>,
    parts: Parts,
    /// Records per partition of each sealed part (for the commit's end offsets).
    sealed: Mutex<HashMap<String, BTreeMap<u32, u64>>>,
}

impl TxTopicSink {
    pub fn new(name: &str, topic: Arc<crate::log::Topic>, parts_dir: &Path) -> Result<Self, String> {
        Ok(TxTopicSink {
            name: name.to_string(),
            topic,
            parts: Parts::new(name, parts_dir)?,
            sealed: Mutex::new(HashMap::new()),
        })
    }

    /// Stages `records` in writer `writer`'s open part.
    pub fn write(&self, writer: &str, records: Vec<crate::log::NewRecord>) -> Result<(), RunError> {
        let mut by_partition: BTreeMap<u32, Vec<crate::log::NewRecord>> = BTreeMap::new();
        for r in records {
            by_partition.entry(self.topic.partition_for(r.key.as_deref())).or_default().push(r);
        }
        let mut frames = Vec::new();
        let mut counts = Vec::new();
        for (p, recs) in by_partition {
            let batch = crate::log::batch::encode_batch(0, &recs);
            frames.extend_from_slice(&p.to_le_bytes());
            frames.extend_from_slice(&(recs.len() as u32).to_le_bytes());
            frames.extend_from_slice(&(batch.len() as u32).to_le_bytes());
            frames.extend_from_slice(&batch);
            counts.push((p, recs.len() as u64));
        }
        self.parts.append(writer, &frames, &counts)
    }
}

impl Staged for TxTopicSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn detach(&self, writer: &str) -> Option<Detached> {
        let d = self.parts.detach(writer)?;
        self.sealed.lock().unwrap_or_else(|e| e.into_inner()).insert(d.part.name.clone(), d.part.counts.clone());
        Some(d)
    }

    fn prepare(&self, parts: Vec<StateFile>) -> Result<SinkCommit, String> {
        let before: BTreeMap<u32, u64> = self.topic.partitions().iter().map(|p| (p.id(), p.end_offset())).collect();
        let mut after = before.clone();
        let mut sealed = self.sealed.lock().unwrap_or_else(|e| e.into_inner());
        for part in &parts {
            for (p, n) in sealed.remove(&part.name).unwrap_or_default() {
                *after.entry(p).or_default() += n;
            }
        }
        Ok(SinkCommit {
            sink: self.name.clone(),
            path: PathBuf::new(),
            len_before: 0,
            len_after: 0,
            parts,
            header: None,
            topic: Some(self.topic.name().to_string()),
            before,
            after,
        })
    }

    fn apply(&self, c: &SinkCommit, parts_dir: &Path) -> Result<(), String> {
        apply_topic_commit(c, &self.topic, parts_dir)
    }
}

/// Makes topic `topic` hold commit `c`'s records: per partition, the batches not yet
/// appended (the partition's end offset says how many were) are appended, synced, then
/// the parts deleted. Idempotent, as [`apply_commit`]; it assumes the run is the only
/// writer of the partitions while it commits.
pub(crate) fn apply_topic_commit(c: &SinkCommit, topic: &crate::log::Topic, parts_dir: &Path) -> Result<(), String> {
    let present = c.parts.iter().all(|p| parts_dir.join(&p.name).exists());
    let end = |p: u32| topic.partition(p).map(|x| x.end_offset()).map_err(|e| e.to_string());
    if !present {
        for (&p, &want) in &c.after {
            let e = end(p)?;
            if e < want {
                return Err(format!(
                    "topic {} partition {p} ends at offset {e} but its commit needs {want} and its parts are gone",
                    topic.name()
                ));
            }
        }
        return Ok(());
    }
    // Frames per partition, in part order.
    let mut frames: BTreeMap<u32, Vec<(u64, Bytes)>> = BTreeMap::new();
    for part in &c.parts {
        let bytes = Bytes::from(crate::checkpoint::read_checked(&parts_dir.join(&part.name), part)?);
        let mut at = 0usize;
        let u32_at = |i: usize| -> Result<u32, String> {
            bytes
                .get(i..i + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| format!("part {} is truncated", part.name))
        };
        while at < bytes.len() {
            let (p, n, len) = (u32_at(at)?, u32_at(at + 4)?, u32_at(at + 8)? as usize);
            let body = bytes.get(at + 12..at + 12 + len).ok_or_else(|| format!("part {} is truncated", part.name))?;
            frames.entry(p).or_default().push((u64::from(n), bytes.slice_ref(body)));
            at += 12 + len;
        }
    }
    for (p, list) in frames {
        let before = c.before.get(&p).copied().unwrap_or(0);
        let e = end(p)?;
        let mut done = e.checked_sub(before).ok_or_else(|| {
            format!("topic {} partition {p} ends at offset {e}, before its commit's start {before}", topic.name())
        })?;
        let partition = topic.partition(p).map_err(|e| e.to_string())?;
        let mut last = None;
        for (n, batch) in list {
            if done >= n {
                done -= n;
                continue;
            }
            if done > 0 {
                return Err(format!(
                    "topic {} partition {p} holds part of a committed batch (another writer?)",
                    topic.name()
                ));
            }
            let a = partition.append_batch(&batch, crate::log::Acks::Os).map_err(|e| e.to_string())?;
            last = Some(a.last_offset);
            fault("mid-commit");
        }
        if let Some(l) = last {
            partition.sync_through(l).map_err(|e| e.to_string())?;
        }
    }
    for p in &c.parts {
        let _ = fs::remove_file(parts_dir.join(&p.name));
    }
    Ok(())
}

/// Makes `c`'s file hold its committed output: cut back to `len_before`, the header and
/// the parts appended, fsynced, then the parts deleted. Idempotent: a commit cut short
/// by a crash is applied again on recovery; one already applied (its parts deleted and
/// the file at `len_after`) is left alone.
pub(crate) fn apply_commit(c: &SinkCommit, parts_dir: &Path) -> Result<(), String> {
    let shown = c.path.display();
    let present = c.parts.iter().all(|p| parts_dir.join(&p.name).exists());
    let len = fs::metadata(&c.path).map(|m| m.len()).unwrap_or(0);
    if !present {
        // Applied before (parts are deleted only once the file holds them).
        if len < c.len_after {
            return Err(format!(
                "{shown} holds {len} bytes but its commit needs {} and its parts are gone",
                c.len_after
            ));
        }
        let f = fs::OpenOptions::new().write(true).open(&c.path).map_err(|e| format!("opening {shown}: {e}"))?;
        return f.set_len(c.len_after).map_err(|e| format!("truncating {shown}: {e}"));
    }
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&c.path)
        .map_err(|e| format!("opening {shown}: {e}"))?;
    f.set_len(c.len_before).map_err(|e| format!("truncating {shown}: {e}"))?;
    f.seek(SeekFrom::Start(c.len_before)).map_err(|e| format!("seeking {shown}: {e}"))?;
    if let Some(h) = &c.header {
        f.write_all(h.as_bytes()).map_err(|e| format!("writing {shown}: {e}"))?;
    }
    for p in &c.parts {
        let bytes = crate::checkpoint::read_checked(&parts_dir.join(&p.name), p)?;
        f.write_all(&bytes).map_err(|e| format!("writing {shown}: {e}"))?;
        fault("mid-commit");
    }
    f.sync_all().map_err(|e| format!("syncing {shown}: {e}"))?;
    for p in &c.parts {
        let _ = fs::remove_file(parts_dir.join(&p.name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::exchange::InBatch;
    use flow_types::row::Layout;
    use flow_types::{Field, RecordType, Type};

    fn data(from: usize, tag: i64) -> Msg {
        let layout = Arc::new(Layout::new(Arc::new(RecordType {
            name: None,
            fields: vec![Field { name: "x".into(), ty: Type::int() }],
        })));
        let mut b = flow_types::row::BatchBuilder::new(layout);
        let r = b.push_row();
        b.set_i64(r, 0, tag);
        let mut inb = InBatch::new(b.finish(), "t".into(), None);
        inb.from = from;
        Msg::Data(inb)
    }

    /// `flowc savepoint create` while a run ends: a request left after the ticker's last
    /// look is made by the run's final checkpoint (it used to be left unread, and the
    /// command waited in vain).
    #[test]
    fn a_savepoint_asked_for_as_the_run_ends_is_made_by_the_final_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        let failed = Arc::new(AtomicBool::new(false));
        let c = Coordinator::new(store, Duration::from_secs(3600), 3, "prog".into(), None, vec![], failed);
        let p = c.join();
        c.ended(p, AckData::default());
        let request = c.store.root().join("savepoint-request");
        std::fs::create_dir_all(c.store.root()).unwrap();
        let sp = dir.path().join("sp");
        std::fs::write(&request, sp.display().to_string()).unwrap();
        c.finish().unwrap();
        assert!(!request.exists(), "the request was taken");
        let meta = crate::checkpoint::load_dir(&sp).unwrap_or_else(|e| panic!("no savepoint: {e}"));
        assert_eq!(meta.program, "prog");
    }

    fn drain(a: &mut Aligner) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(s) = a.next() {
            out.push(match s {
                Step::Aligned(id) => format!("aligned {id}"),
                Step::Msg(Msg::Data(b)) => format!("data {} {}", b.from, b.batch.row(0).i64(0)),
                Step::Msg(Msg::Watermark { from, wm }) => format!("wm {from} {wm}"),
                Step::Msg(Msg::End { from }) => format!("end {from}"),
                Step::Msg(Msg::Barrier { .. }) => "barrier".into(),
            });
        }
        out
    }

    #[test]
    fn two_inputs_align_and_hold_back_the_faster_one() {
        let mut a = Aligner::new(2);
        a.offer(data(0, 1));
        a.offer(Msg::Barrier { from: 0, id: 7 });
        // Input 0 is past the barrier: held. Input 1 is not: handled.
        a.offer(data(0, 2));
        a.offer(Msg::Watermark { from: 0, wm: 5 });
        a.offer(data(1, 10));
        assert_eq!(drain(&mut a), ["data 0 1", "data 1 10"]);
        a.offer(Msg::Barrier { from: 1, id: 7 });
        a.offer(data(1, 11));
        assert_eq!(drain(&mut a), ["aligned 7", "data 0 2", "wm 0 5", "data 1 11"]);
    }

    #[test]
    fn an_ended_input_does_not_hold_alignment() {
        let mut a = Aligner::new(3);
        a.offer(Msg::End { from: 2 });
        a.offer(Msg::Barrier { from: 0, id: 1 });
        a.offer(data(0, 1));
        assert_eq!(drain(&mut a), ["end 2"]);
        // The last input ends instead of sending the barrier: aligned, then what was held.
        a.offer(data(1, 2));
        a.offer(Msg::End { from: 1 });
        assert_eq!(drain(&mut a), ["data 1 2", "end 1", "aligned 1", "data 0 1"]);
        // One input: its barrier aligns at once.
        let mut one = Aligner::new(1);
        one.offer(data(0, 1));
        one.offer(Msg::Barrier { from: 0, id: 3 });
        one.offer(data(0, 2));
        assert_eq!(drain(&mut one), ["data 0 1", "aligned 3", "data 0 2"]);
    }

    #[test]
    fn a_commit_applies_once_even_when_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let parts = dir.path().join("parts");
        fs::create_dir_all(&parts).unwrap();
        let out = dir.path().join("out.jsonl");
        fs::write(&out, "committed\nnot committed\n").unwrap();
        let mut files = Vec::new();
        for (i, text) in ["a\n", "bb\n"].iter().enumerate() {
            let name = format!("part{i}");
            fs::write(parts.join(&name), text).unwrap();
            files.push(StateFile { name, bytes: text.len() as u64, crc32c: crc32c::crc32c(text.as_bytes()) });
        }
        let c = SinkCommit {
            sink: "out".into(),
            path: out.clone(),
            len_before: 10,
            len_after: 15,
            parts: files,
            header: None,
            topic: None,
            before: BTreeMap::new(),
            after: BTreeMap::new(),
        };
        // Cut short after the file was written but before the parts were deleted.
        apply_commit(&c, &parts).unwrap();
        assert_eq!(fs::read_to_string(&out).unwrap(), "committed\na\nbb\n");
        assert!(!parts.join("part0").exists());
        apply_commit(&c, &parts).unwrap();
        assert_eq!(fs::read_to_string(&out).unwrap(), "committed\na\nbb\n");
        // A part that is gone while the file is short is an error, not a silent loss.
        fs::write(&out, "committed\n").unwrap();
        assert!(apply_commit(&c, &parts).is_err());
    }
}
