//! Reading a pipeline's input: files (JSON lines, CSV, globs), stdin, generators, topics.
//!
//! [`read_input`] runs on a blocking thread. It decodes records into batches of up to
//! [`BATCH_ROWS_MAX`] rows and hands them to the router of the pipeline's first
//! exchange; a record that does not decode goes to the source's dead-letter output
//! with its position (`file:line`, `topic t partition p offset o`) and the reason.
//! It stops early, cleanly, when the run is asked to stop (Ctrl-C) or has failed.
//! A topic input reads every partition from its consumer group's committed offsets
//! and acknowledges each batch through the [`CommitTracker`]; it ends once every
//! writer of the topic in this run has ended and a pass finds nothing new.

use super::exchange::{CommitTracker, InBatch, Router};
use super::io::DeadLetters;
use super::{io_err, resolve, Live, RunError, RunOptions, Shared, BATCH_ROWS_MAX};
use crate::format::{self, CsvColumns, DecodeError};
use flow_compiler::ir::{self, Connector, Format};
use flow_types::row::{Batch, BatchBuilder, Layout};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::checkpoint::{AckData, Coordinator};
use crate::checkpoint::Position;
use std::time::Duration;

/// Where decoded batches and bad records go.
struct Feed<'a> {
    send: &'a dyn Fn(Batch, String) -> bool,
    bad: &'a dyn Fn(String, &str, DecodeError) -> Result<(), RunError>,
    live: &'a Live,
    /// Called at every point the input could resume from (after a chunk of lines):
    /// the next byte and line of the file being read. Injects a checkpoint barrier
    /// when one is asked for; false to stop.
    mark: &'a dyn Fn(u64, u64) -> bool,
}

/// Reads `input` to its end (or until the run stops), sending batches through `router`.
#[allow(clippy::too_many_arguments)]
pub(super) fn read_input(
    program: &ir::Program,
    input: &ir::Input,
    layout: Arc<Layout>,
    shared: &Shared,
    opts: &RunOptions,
    dead: Option<Arc<DeadLetters>>,
    group: &str,
    router: Router,
    counters: &super::StageCounters,
    live: &Live,
    failed: Arc<AtomicBool>,
    c: Reader,
) -> Result<(), RunError> {
    let router = RefCell::new(router);
    let stopping = || failed.load(Ordering::SeqCst) || opts.stop.load(Ordering::SeqCst);
    // A pipeline with an event-time operator gets its records stamped with watermarks:
    // they are decoded without the hidden `$wm` field and widened here.
    let stamped = layout.clone();
    let (layout, stamper) = match stamper(program, input, &stamped, shared)? {
        Some(st) => {
            let mut rec = (*stamped.record).clone();
            rec.fields.pop();
            let mut st = st;
            // Resuming: the watermarks where the checkpoint left them.
            if let Some(w) = &c.watermarks {
                st.restore(w);
            }
            (Arc::new(Layout::new(Arc::new(rec))), Some(RefCell::new(st)))
        }
        None => (stamped.clone(), None),
    };
    // A stopped run stops reading only where it could resume from (`at`), so that its
    // last checkpoint holds exactly what was read.
    let last_barrier = std::cell::Cell::new(0u64);
    let last_position: RefCell<Option<Position>> = RefCell::new(None);
    let at = |pos: Option<Position>| -> bool {
        *last_position.borrow_mut() = pos.clone();
        let id = c.coord.requested();
        if id > last_barrier.get() {
            last_barrier.set(id);
            let watermarks = stamper.as_ref().map(|st| st.borrow().state());
            let data = AckData { position: Some((c.pipeline.clone(), pos)), watermarks, ..AckData::default() };
            c.coord.ack(c.me, id, data);
            if !router.borrow_mut().blocking_barrier(id) {
                return false;
            }
        }
        !stopping()
    };

    let send_watermark = || -> bool {
        let Some(st) = &stamper else { return true };
        let wm = st.borrow_mut().to_send();
        match wm {
            Some(wm) => router.borrow_mut().blocking_watermark(wm),
            None => true,
        }
    };
    let tick = || -> bool {
        if let Some(st) = &stamper {
            if st.borrow_mut().check_idle() {
                return send_watermark();
            }
        }
        true
    };
    let send_acked = |b: Batch, origin: String, ack: Option<Arc<super::exchange::Ack>>, parts: &[u32]| -> bool {
        counters.records_in.fetch_add(b.len as u64, Ordering::Relaxed);
        counters.records_out.fetch_add(b.len as u64, Ordering::Relaxed);
        live.records_in.fetch_add(b.len as u64, Ordering::Relaxed);
        // Dead letters of this batch are written before it can be acknowledged.
        if let Some(d) = &dead {
            if d.flush().is_err() {
                failed.store(true, Ordering::SeqCst);
                return false;
            }
        }
        // Stopping is `at`'s to decide (at a point the input can resume from).
        if failed.load(Ordering::SeqCst) {
            return false;
        }
        let b = match &stamper {
            None => b,
            Some(st) if parts.len() > 1 => st.borrow_mut().stamp_parts(&b, &stamped, parts),
            Some(st) => st.borrow_mut().stamp(&b, &stamped, parts.first().copied().unwrap_or(0)),
        };
        router.borrow_mut().blocking_send(InBatch::new(b, origin.into(), ack)) && send_watermark()
    };
    let send = |b: Batch, origin: String| -> bool { send_acked(b, origin, None, &[]) };
    let bad = |position: String, raw: &str, e: DecodeError| -> Result<(), RunError> {
        counters.records_in.fetch_add(1, Ordering::Relaxed);
        live.records_in.fetch_add(1, Ordering::Relaxed);
        match (&dead, opts.strict) {
            (Some(d), false) => d.send(&position, &e.0, raw),
            _ => Err(RunError::BadRecord { position, reason: e.0 }),
        }
    };
    let file_index = std::cell::Cell::new(None::<usize>);
    let mark = |byte: u64, line: u64| at(file_index.get().map(|file| Position::File { file, byte, line }));
    let feed = Feed { send: &send, bad: &bad, live, mark: &mark };
    let resume = c.resume.clone();
    let on_commit = |hook: super::checkpoint::CommitHook| c.coord.on_complete(c.pipeline.clone(), hook);
    let hooks = Hooks {
        feed: &feed,
        send_acked: &send_acked,
        tick: &tick,
        stopping: &stopping,
        at: &at,
        on_commit: &on_commit,
    };
    let result = read(program, input, layout, shared, opts, group, &hooks, &failed, resume, &file_index, &c.pipeline);
    let flushed = dead.as_ref().map_or(Ok(()), |d| d.flush());
    // What it leaves every later checkpoint: where it stopped; that a bounded input
    // (files, a generator) ended; where a topic was read to (a later run goes on
    // from there, reading only what came since).
    let topic = matches!(input, ir::Input::Topic(_))
        || matches!(input, ir::Input::Source(n) if program.sources.iter().any(|s| s.name == *n && matches!(s.connector, Connector::Kafka { .. })));
    let stopped = opts.stop.load(Ordering::SeqCst);
    if stopped {
        c.coord.reader_stopped();
    }
    // Ended only when the input was read to its end without an error.
    let pos = if stopped || topic || result.is_err() || failed.load(Ordering::SeqCst) {
        last_position.borrow().clone()
    } else {
        Some(Position::Ended)
    };
    let watermarks = stamper.as_ref().map(|st| st.borrow().state());
    c.coord.ended(c.me, AckData { position: Some((c.pipeline.clone(), pos)), watermarks, ..AckData::default() });
    if result.is_ok() && flushed.is_ok() {
        router.into_inner().blocking_end();
    }
    result.and(flushed)
}

/// A reader's part in checkpoints.
pub(super) struct Reader {
    pub coord: Arc<Coordinator>,
    /// Its participant index.
    pub me: usize,
    pub pipeline: String,
    /// Where to resume reading (from the checkpoint the run restored).
    pub resume: Option<Position>,
    /// Where the source's watermarks stood at that checkpoint.
    pub watermarks: Option<crate::checkpoint::Watermarks>,
}

/// What the readers call.
struct Hooks<'a> {
    feed: &'a Feed<'a>,
    send_acked: &'a super::exchange::SendAcked<'a>,
    tick: &'a dyn Fn() -> bool,
    stopping: &'a dyn Fn() -> bool,
    /// A point the input could resume from: injects a barrier if one is asked for.
    at: &'a dyn Fn(Option<Position>) -> bool,
    /// Registers a hook for the input's positions when checkpoints complete.
    on_commit: &'a dyn Fn(super::checkpoint::CommitHook),
}

/// The stamper of a pipeline input whose records carry watermarks (see `stamp.rs`).
fn stamper(
    program: &ir::Program,
    input: &ir::Input,
    stamped: &Arc<Layout>,
    shared: &Shared,
) -> Result<Option<super::stamp::Stamper>, RunError> {
    if !super::stamp::has_stamp(&stamped.record) {
        return Ok(None);
    }
    let (time, delay, idle, parts) = match input {
        ir::Input::Source(n) => {
            let s = program.sources.iter().find(|s| s.name == *n);
            let s = s.ok_or_else(|| RunError::Setup(format!("no source `{n}`")))?;
            (s.event_time.clone(), s.watermark_ms, s.idle_timeout_ms, vec![0])
        }
        ir::Input::Topic(n) => {
            let t = program.topics.iter().find(|t| t.name == *n);
            let t = t.ok_or_else(|| RunError::Setup(format!("no topic `{n}`")))?;
            let parts =
                shared.topics.get(n).map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default();
            (t.event_time.clone(), t.watermark_ms, t.idle_timeout_ms, parts)
        }
    };
    let time =
        time.ok_or_else(|| RunError::Setup("an event-time operator reads an input without event time".into()))?;
    Ok(Some(super::stamp::Stamper::new(stamped, &time, delay, idle, &parts)))
}

/// The fields of source `src` that pipeline `pipeline`, reading it as `input`, needs
/// filled (per field of the source's schema), when fewer than all: those
/// `input_fields_read` finds and the event time. `None` (every field) when that is not
/// known, or when a union or join of the pipeline takes the same input again whole.
pub(crate) fn fields_wanted(
    program: &ir::Program,
    pipeline: &str,
    input: &ir::Input,
    src: &ir::Source,
) -> Option<Vec<bool>> {
    let p = program.pipelines.iter().find(|p| p.name == pipeline && p.input == *input)?;
    let again = p.ops.iter().any(|op| match &op.kind {
        ir::OpKind::Union(others) => others.contains(input),
        ir::OpKind::Join { other, .. } => other == input,
        _ => false,
    });
    if again {
        return None;
    }
    let mut w = flow_compiler::exec::stage::input_fields_read(p)?;
    if let Some(et) = &src.event_time {
        *w.get_mut(et.field)? = true;
    }
    // An event-time pipeline's input ends with the hidden `$wm`, which the stamper adds
    // after the source.
    let n = src.schema.fields.len();
    (w.len() >= n).then(|| {
        w.truncate(n);
        w
    })
}

#[allow(clippy::too_many_arguments)]
fn read(
    program: &ir::Program,
    input: &ir::Input,
    layout: Arc<Layout>,
    shared: &Shared,
    opts: &RunOptions,
    group: &str,
    hooks: &Hooks,
    failed: &Arc<AtomicBool>,
    resume: Option<Position>,
    file_index: &std::cell::Cell<Option<usize>>,
    pipeline: &str,
) -> Result<(), RunError> {
    let (feed, send_acked, tick, stopping, at) = (hooks.feed, hooks.send_acked, hooks.tick, hooks.stopping, hooks.at);
    let (send, bad) = (feed.send, feed.bad);
    match input {
        ir::Input::Source(name) => {
            let src = program
                .sources
                .iter()
                .find(|s| s.name == *name)
                .ok_or_else(|| RunError::Setup(format!("no source `{name}`")))?;
            match &src.connector {
                Connector::File { path, format, header, delimiter } => {
                    let files = expand_glob(&resolve(&opts.base_dir, path))?;
                    let decoders = opts.decode_threads.max(1);
                    let total: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
                    feed.live.bytes_total.fetch_add(total, Ordering::Relaxed);
                    let (first, mut start) = match resume {
                        Some(Position::File { file, byte, line }) => (file, (byte, line)),
                        _ => (0, (0, 1)),
                    };
                    if resume == Some(Position::Ended) {
                        return Ok(());
                    }
                    for (i, file) in files.iter().enumerate().skip(first) {
                        if stopping() {
                            break;
                        }
                        file_index.set(Some(i));
                        let mut f = std::fs::File::open(file).map_err(io_err(format!("opening {}", file.display())))?;
                        let shown = file.display().to_string();
                        // Resuming at (or past) a file's end: nothing of it is left.
                        if start.0 > 0 && std::fs::metadata(file).is_ok_and(|m| start.0 >= m.len()) {
                            start = (0, 1);
                            continue;
                        }
                        if start.0 > 0 {
                            use std::io::Seek;
                            f.seek(std::io::SeekFrom::Start(start.0)).map_err(io_err(format!(
                                "seeking {} to byte {}",
                                file.display(),
                                start.0
                            )))?;
                            feed.live.bytes_read.fetch_add(start.0, Ordering::Relaxed);
                        }
                        match format {
                            Format::Csv => {
                                // CSV resumes only at file ends (a record may span lines).
                                read_csv(f, &shown, *header, *delimiter, &layout, feed)?;
                                let len = std::fs::metadata(file).map_or(0, |m| m.len());
                                if !at(Some(Position::File { file: i, byte: len, line: 0 })) {
                                    break;
                                }
                            }
                            _ => read_json_lines(f, &shown, &layout, feed, decoders, start)?,
                        }
                        start = (0, 1);
                    }
                }
                Connector::Stdin { format } => {
                    let stdin = std::io::stdin();
                    match format {
                        Format::Csv => read_csv(stdin.lock(), "stdin", true, b',', &layout, feed)?,
                        _ => read_json_lines(stdin.lock(), "stdin", &layout, feed, 1, (0, 1))?,
                    }
                }
                Connector::Generator { count, .. } => {
                    if let Some(c) = count {
                        feed.live.records_total.fetch_add((*c).max(0) as u64, Ordering::Relaxed);
                    }
                    // Resuming: the records before the checkpoint are generated again and
                    // dropped (the generator is deterministic).
                    let mut skip = match resume {
                        Some(Position::Generator { records }) => records,
                        Some(Position::Ended) => return Ok(()),
                        _ => 0,
                    };
                    let mut records = skip;
                    let wanted = fields_wanted(program, pipeline, input, src);
                    let spec = crate::generate::GenSpec::of(&src.connector)
                        .ok_or_else(|| RunError::Setup(format!("source `{name}` is not a generator")))?;
                    crate::generate::generate(spec, &layout, wanted.as_deref(), &mut |b| {
                        if skip >= b.len as u64 {
                            skip -= b.len as u64;
                            return true;
                        }
                        let b = if skip > 0 { b.slice_from(std::mem::take(&mut skip) as usize) } else { b };
                        records += b.len as u64;
                        send(b, format!("generator `{name}`")) && at(Some(Position::Generator { records }))
                    })
                    .map_err(RunError::Setup)?;
                }
                Connector::Kafka { group: named, .. } => {
                    // Barriers carry the next offset per partition; a resumed run seeks there.
                    let resume = match &resume {
                        Some(Position::Topic { next }) => Some(next.clone()),
                        _ => None,
                    };
                    let on_commit = hooks.on_commit;
                    let feed =
                        super::kafka::SourceFeed { send_acked, bad, stopping, failed, tick, at, resume, on_commit };
                    super::kafka::read(src, named.as_deref().unwrap_or(group), &opts.base_dir, &layout, &feed)?;
                }
                Connector::Stdout { .. } => return Err(RunError::Setup("stdout is not a source".into())),
            }
        }
        ir::Input::Topic(t) => {
            let topic =
                shared.topics.get(t).cloned().ok_or_else(|| RunError::Setup(format!("topic `{t}` is not open")))?;
            let groups = crate::log::GroupStore::new(shared.log.root().to_path_buf(), Arc::new(crate::log::io::StdIo));
            if resume == Some(Position::Ended) {
                return Ok(());
            }
            let restored = match &resume {
                Some(Position::Topic { next }) => Some(next.clone()),
                _ => None,
            };
            let mut next: BTreeMap<u32, u64> = match opts.start_from {
                _ if restored.is_some() => restored.unwrap_or_default(),
                super::StartFrom::Committed => groups.committed(group, t)?,
                super::StartFrom::Earliest => BTreeMap::new(),
                super::StartFrom::Latest => topic.partitions().iter().map(|p| (p.id(), p.end_offset())).collect(),
                super::StartFrom::Time(ms) => topic
                    .partitions()
                    .iter()
                    .map(|p| Ok((p.id(), p.offset_for_time(ms)?.unwrap_or_else(|| p.end_offset()))))
                    .collect::<Result<_, RunError>>()?,
            };
            let tracker = CommitTracker::new(groups, group, t, failed.clone());
            shared.trackers.lock().unwrap_or_else(|e| e.into_inner()).push(tracker.clone());
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
                        let position = || format!("topic {t} partition {pid} offset {}", r.offset);
                        let value = r.value.as_deref().unwrap_or_default();
                        match std::str::from_utf8(value) {
                            Ok(raw) => {
                                if let Err(e) = format::decode_json_row_in(raw, &layout, &mut b) {
                                    bad(position(), raw, e)?;
                                }
                            }
                            Err(e) => bad(
                                position(),
                                &String::from_utf8_lossy(value),
                                DecodeError(format!("not valid UTF-8 (byte {} of the value)", e.valid_up_to() + 1)),
                            )?,
                        }
                    }
                    next.insert(pid, last + 1);
                    let origin = format!("topic {t} partition {pid} offsets {first}-{last}");
                    if !send_acked(b.finish(), origin, Some(tracker.ack(next.clone())), &[pid])
                        || !at(Some(Position::Topic { next: next.clone() }))
                    {
                        return Ok(());
                    }
                }
                if !progressed {
                    // `writers_done` was read before this pass: a pass that found nothing
                    // after every writer had ended has read all they wrote.
                    if writers_done && !opts.follow_topics {
                        break;
                    }
                    if stopping() || !tick() || !at(Some(Position::Topic { next: next.clone() })) {
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

/// Bytes read from a file at a time (lines are split out of these chunks in place).
const READ_CHUNK_BYTES: usize = 4 << 20;

/// What decoding one chunk of JSON lines gave, in line order.
struct Decoded {
    batches: Vec<(Batch, String)>,
    bad: Vec<(String, String, DecodeError)>,
    /// The next byte and line after the chunk.
    end: (u64, u64),
}

/// Decodes the complete lines of `chunk`, the first being line `first_line` of `shown`.
/// A line that is not UTF-8 is a bad record like any other.
fn decode_chunk(chunk: &[u8], first_line: u64, shown: &str, layout: &Arc<Layout>) -> Decoded {
    let mut out = Decoded { batches: Vec::new(), bad: Vec::new(), end: (0, 0) };
    let mut b = BatchBuilder::new(layout.clone());
    let mut lineno = first_line - 1;
    let mut first = first_line;
    let mut line = |raw: &[u8], text: Result<&str, std::str::Utf8Error>, out: &mut Decoded| {
        lineno += 1;
        match text {
            Ok(text) if text.trim().is_empty() => {}
            Ok(text) => {
                if let Err(e) = format::decode_json_row_in(text, layout, &mut b) {
                    out.bad.push((format!("{shown}:{lineno}"), text.to_string(), e));
                }
            }
            Err(e) => out.bad.push((
                format!("{shown}:{lineno}"),
                String::from_utf8_lossy(raw).into_owned(),
                DecodeError(format!("not valid UTF-8 (byte {} of the line)", e.valid_up_to() + 1)),
            )),
        }
        if b.len() >= BATCH_ROWS_MAX {
            let full = std::mem::replace(&mut b, BatchBuilder::new(layout.clone()));
            out.batches.push((full.finish(), format!("{shown}:{first}-{lineno}")));
            first = lineno + 1;
        }
    };
    let strip = |l: &'_ [u8]| -> usize {
        let l2 = l.strip_suffix(b"\n").unwrap_or(l);
        l2.strip_suffix(b"\r").unwrap_or(l2).len()
    };
    match simdutf8::basic::from_utf8(chunk) {
        // One SIMD validation for the whole chunk; lines split at '\n' stay valid.
        Ok(text) => {
            for l in format::split_lines(text) {
                line(l.as_bytes(), Ok(l), &mut out);
            }
        }
        Err(_) => {
            for l in chunk.split_inclusive(|&c| c == b'\n') {
                let raw = &l[..strip(l)];
                line(raw, std::str::from_utf8(raw), &mut out);
            }
        }
    }
    if !b.is_empty() {
        out.batches.push((b.finish(), format!("{shown}:{first}-{lineno}")));
    }
    out
}

/// Hands a decoded chunk's bad records and batches on, in order; false to stop.
fn emit(d: Decoded, feed: &Feed) -> Result<bool, RunError> {
    for (position, raw, e) in d.bad {
        (feed.bad)(position, &raw, e)?;
    }
    for (batch, origin) in d.batches {
        if !(feed.send)(batch, origin) {
            return Ok(false);
        }
    }
    Ok((feed.mark)(d.end.0, d.end.1))
}

/// Reads chunks of complete lines from `r`, calling `each(chunk, first_line)`; false
/// from `each` stops. A short read (a pipe with nothing more for now) hands on what
/// it has at once, so lines typed into stdin flow without waiting for a full chunk.
fn chunks(
    mut r: impl std::io::Read,
    shown: &str,
    feed: &Feed,
    chunk_bytes: usize,
    start: (u64, u64),
    each: &mut dyn FnMut(Vec<u8>, u64, (u64, u64)) -> Result<bool, RunError>,
) -> Result<(), RunError> {
    let mut buf: Vec<u8> = vec![0; chunk_bytes.max(1)];
    let mut filled = 0;
    let mut eof = false;
    let (mut consumed, mut next_line) = start;
    while !eof || filled > 0 {
        let mut short = false;
        if !eof {
            if filled == buf.len() {
                // One line longer than the buffer: grow it.
                buf.resize(buf.len() * 2, 0);
            }
            match r.read(&mut buf[filled..]) {
                Ok(0) => eof = true,
                Ok(n) => {
                    short = filled + n < buf.len();
                    filled += n;
                    feed.live.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RunError::Io { what: format!("reading {shown}"), source: e }),
            }
            if !short && !eof && filled < buf.len() {
                continue;
            }
        }
        let complete = match memchr::memrchr(b'\n', &buf[..filled]) {
            Some(last) => last + 1,
            None if eof => filled,
            None => continue,
        };
        if complete == 0 {
            continue;
        }
        let lines = memchr::memchr_iter(b'\n', &buf[..complete]).count() as u64 + u64::from(buf[complete - 1] != b'\n');
        let chunk = buf[..complete].to_vec();
        buf.copy_within(complete..filled, 0);
        filled -= complete;
        let first = next_line;
        next_line += lines;
        consumed += complete as u64;
        if !each(chunk, first, (consumed, next_line))? {
            return Ok(());
        }
    }
    Ok(())
}

/// Reads JSON lines: chunks of lines are decoded where they lie (no line copies), on
/// `decoders` threads for a file, and handed on strictly in file order (so a file is
/// one ordered stream, as event time needs).
fn read_json_lines(
    r: impl std::io::Read,
    shown: &str,
    layout: &Arc<Layout>,
    feed: &Feed,
    decoders: usize,
    start: (u64, u64),
) -> Result<(), RunError> {
    // `FLOW_READ_CHUNK_BYTES` makes chunks (and so the points a checkpoint can resume a
    // file from) smaller: the crash tests use it to take many checkpoints per file.
    let chunk = std::env::var("FLOW_READ_CHUNK_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(READ_CHUNK_BYTES);
    read_json_lines_sized(r, shown, layout, feed, decoders, chunk.max(1024), start)
}

fn read_json_lines_sized(
    r: impl std::io::Read,
    shown: &str,
    layout: &Arc<Layout>,
    feed: &Feed,
    decoders: usize,
    chunk_bytes: usize,
    start: (u64, u64),
) -> Result<(), RunError> {
    if decoders <= 1 {
        return chunks(r, shown, feed, chunk_bytes, start, &mut |chunk, first, end| {
            let mut d = decode_chunk(&chunk, first, shown, layout);
            d.end = end;
            emit(d, feed)
        });
    }
    let (jobs_tx, jobs_rx) = crossbeam_channel::bounded::<(u64, Vec<u8>, u64, (u64, u64))>(decoders);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<(u64, Decoded)>();
    std::thread::scope(|scope| {
        for _ in 0..decoders {
            let (jobs_rx, done_tx) = (jobs_rx.clone(), done_tx.clone());
            scope.spawn(move || {
                while let Ok((seq, chunk, first, end)) = jobs_rx.recv() {
                    let mut d = decode_chunk(&chunk, first, shown, layout);
                    d.end = end;
                    if done_tx.send((seq, d)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        // Results come back in any order; they are handed on in sequence.
        let mut pending: std::collections::BTreeMap<u64, Decoded> = Default::default();
        let (mut sent, mut next) = (0u64, 0u64);
        let mut stopped = false;
        let drain = |pending: &mut std::collections::BTreeMap<u64, Decoded>,
                     next: &mut u64,
                     until: u64,
                     stopped: &mut bool|
         -> Result<(), RunError> {
            while *next < until {
                let d = match pending.remove(next) {
                    Some(d) => d,
                    None => match done_rx.recv() {
                        Ok((seq, d)) => {
                            pending.insert(seq, d);
                            continue;
                        }
                        Err(_) => return Ok(()),
                    },
                };
                *next += 1;
                if !*stopped && !emit(d, feed)? {
                    *stopped = true;
                }
            }
            Ok(())
        };
        let result = chunks(r, shown, feed, chunk_bytes, start, &mut |chunk, first, end| {
            if jobs_tx.send((sent, chunk, first, end)).is_err() {
                return Ok(false);
            }
            sent += 1;
            // Keep at most `decoders` chunks in flight beyond the one being handed on.
            let keep = decoders as u64;
            if sent > next + keep {
                drain(&mut pending, &mut next, sent - keep, &mut stopped)?;
            }
            Ok(!stopped)
        });
        drop(jobs_tx);
        result.and_then(|()| drain(&mut pending, &mut next, sent, &mut stopped))
    })
}

fn read_csv(
    r: impl std::io::Read,
    shown: &str,
    header: bool,
    delimiter: u8,
    layout: &Arc<Layout>,
    feed: &Feed,
) -> Result<(), RunError> {
    let (send, bad) = (feed.send, feed.bad);
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
    let mut csv_bytes = 0u64;
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
            let at = rdr.position().byte();
            feed.live.bytes_read.fetch_add(at - csv_bytes, Ordering::Relaxed);
            csv_bytes = at;
            if !send(full.finish(), format!("{shown}:{first}-{line}")) {
                return Ok(());
            }
            first = line + 1;
        }
    }
    feed.live.bytes_read.fetch_add(rdr.position().byte().saturating_sub(csv_bytes), Ordering::Relaxed);
    if !b.is_empty() {
        send(b.finish(), format!("{shown}:{first}-"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flow_types::{Field, RecordType, Type, Value};
    use std::cell::RefCell;

    /// Reads `input` with the given chunk size and decoder threads; returns the rows'
    /// ids in order, the batches' origins, and the bad records' positions and reasons.
    fn read(input: &[u8], chunk: usize, decoders: usize) -> (Vec<i64>, Vec<String>, Vec<(String, String)>) {
        let layout = Arc::new(Layout::new(Arc::new(RecordType::new(
            None,
            vec![
                Field { name: "id".into(), ty: Type::int() },
                Field { name: "s".into(), ty: Type::string().nullable() },
            ],
        ))));
        let rows = RefCell::new(Vec::new());
        let origins = RefCell::new(Vec::new());
        let bad = RefCell::new(Vec::new());
        let send = |b: Batch, origin: String| {
            for r in b.to_values() {
                let Value::Int(i) = r[0] else { panic!("id") };
                rows.borrow_mut().push(i);
            }
            origins.borrow_mut().push(origin);
            true
        };
        let bad_fn = |pos: String, _raw: &str, e: DecodeError| {
            bad.borrow_mut().push((pos, e.0));
            Ok(())
        };
        let live = Live::default();
        let marks = RefCell::new(Vec::new());
        let mark = |byte: u64, line: u64| {
            marks.borrow_mut().push((byte, line));
            true
        };
        let feed = Feed { send: &send, bad: &bad_fn, live: &live, mark: &mark };
        read_json_lines_sized(input, "in.jsonl", &layout, &feed, decoders, chunk, (0, 1)).expect("reads");
        assert_eq!(live.bytes_read.load(Ordering::Relaxed), input.len() as u64);
        // Resume points: after whole lines, in order, the last at the end of the input.
        let marks = marks.into_inner();
        let lines = input.split(|&c| c == b'\n').count() as u64 - u64::from(input.ends_with(b"\n"));
        assert_eq!(marks.last().copied(), (!input.is_empty()).then_some((input.len() as u64, lines + 1)));
        for w in marks.windows(2) {
            assert!(w[0].0 < w[1].0 && w[0].1 < w[1].1, "{marks:?}");
            assert_eq!(input[w[0].0 as usize - 1], b'\n');
        }
        (rows.into_inner(), origins.into_inner(), bad.into_inner())
    }

    fn lines(n: i64) -> Vec<u8> {
        let mut v = Vec::new();
        for i in 1..=n {
            v.extend_from_slice(
                format!("{{\"id\":{i},\"s\":\"row {i} {}\"}}\n", "x".repeat((i % 7) as usize)).as_bytes(),
            );
        }
        v
    }

    #[test]
    fn every_line_arrives_once_in_order_whatever_the_chunks_and_threads() {
        let input = lines(20_000);
        for (chunk, decoders) in [(1 << 20, 1), (64, 1), (1000, 2), (777, 3), (4 << 20, 2)] {
            let (ids, _, bad) = read(&input, chunk, decoders);
            assert!(bad.is_empty(), "{bad:?}");
            assert_eq!(ids, (1..=20_000).collect::<Vec<_>>(), "chunk {chunk}, {decoders} decoders");
        }
    }

    #[test]
    fn bad_lines_keep_their_numbers_and_lose_no_neighbour() {
        let mut input = Vec::new();
        input.extend_from_slice(b"{\"id\":1}\r\n");
        input.extend_from_slice(b"{\"id\":2,\"s\":\"\xff\xfe\"}\n"); // not UTF-8
        input.extend_from_slice(b"{\"id\":3}\n");
        input.extend_from_slice(b"\n"); // blank
        input.extend_from_slice(b"{\"id\":\"four\"}\n");
        input.extend_from_slice(b"{\"id\":5}"); // no final newline
        for (chunk, decoders) in [(1 << 20, 1), (8, 1), (16, 2)] {
            let (ids, origins, bad) = read(&input, chunk, decoders);
            assert_eq!(ids, vec![1, 3, 5], "chunk {chunk}");
            assert_eq!(bad.len(), 2, "{bad:?}");
            assert_eq!(bad[0].0, "in.jsonl:2");
            assert!(bad[0].1.contains("not valid UTF-8"), "{}", bad[0].1);
            assert_eq!(bad[1].0, "in.jsonl:5");
            if chunk > 1000 {
                // The complete lines at once; the unterminated last one at the end of input.
                assert_eq!(origins, vec!["in.jsonl:1-5".to_string(), "in.jsonl:6-6".to_string()]);
            }
        }
    }

    #[test]
    fn a_line_longer_than_a_chunk_grows_the_buffer() {
        let long = format!("{{\"id\":7,\"s\":\"{}\"}}\n{{\"id\":8}}\n", "y".repeat(10_000));
        let (ids, _, bad) = read(long.as_bytes(), 100, 2);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(ids, vec![7, 8]);
    }
}
