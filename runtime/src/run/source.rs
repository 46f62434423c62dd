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
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where decoded batches and bad records go.
struct Feed<'a> {
    send: &'a dyn Fn(Batch, String) -> bool,
    bad: &'a dyn Fn(String, &str, DecodeError) -> Result<(), RunError>,
    live: &'a Live,
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
) -> Result<(), RunError> {
    let router = RefCell::new(router);
    let stopping = || failed.load(Ordering::SeqCst) || opts.stop.load(Ordering::SeqCst);
    let send_acked = |b: Batch, origin: String, ack: Option<Arc<super::exchange::Ack>>| -> bool {
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
        if stopping() {
            return false;
        }
        router.borrow_mut().blocking_send(InBatch { batch: b, origin: origin.into(), ack })
    };
    let send = |b: Batch, origin: String| -> bool { send_acked(b, origin, None) };
    let bad = |position: String, raw: &str, e: DecodeError| -> Result<(), RunError> {
        counters.records_in.fetch_add(1, Ordering::Relaxed);
        live.records_in.fetch_add(1, Ordering::Relaxed);
        match (&dead, opts.strict) {
            (Some(d), false) => d.send(&position, &e.0, raw),
            _ => Err(RunError::BadRecord { position, reason: e.0 }),
        }
    };
    let feed = Feed { send: &send, bad: &bad, live };
    let result = read(program, input, layout, shared, opts, group, &feed, &send_acked, &stopping, &failed);
    let flushed = dead.as_ref().map_or(Ok(()), |d| d.flush());
    if result.is_ok() && flushed.is_ok() {
        router.into_inner().blocking_end();
    }
    result.and(flushed)
}

#[allow(clippy::too_many_arguments)]
fn read(
    program: &ir::Program,
    input: &ir::Input,
    layout: Arc<Layout>,
    shared: &Shared,
    opts: &RunOptions,
    group: &str,
    feed: &Feed,
    send_acked: &dyn Fn(Batch, String, Option<Arc<super::exchange::Ack>>) -> bool,
    stopping: &dyn Fn() -> bool,
    failed: &Arc<AtomicBool>,
) -> Result<(), RunError> {
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
                    let total: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
                    feed.live.bytes_total.fetch_add(total, Ordering::Relaxed);
                    for file in files {
                        if stopping() {
                            break;
                        }
                        let f = std::fs::File::open(&file).map_err(io_err(format!("opening {}", file.display())))?;
                        let shown = file.display().to_string();
                        match format {
                            Format::Csv => read_csv(f, &shown, *header, *delimiter, &layout, feed)?,
                            _ => read_json_lines(std::io::BufReader::with_capacity(1 << 20, f), &shown, &layout, feed)?,
                        }
                    }
                }
                Connector::Stdin { format } => {
                    let stdin = std::io::stdin();
                    match format {
                        Format::Csv => read_csv(stdin.lock(), "stdin", true, b',', &layout, feed)?,
                        _ => read_json_lines(stdin.lock(), "stdin", &layout, feed)?,
                    }
                }
                Connector::Generator { kind, rate_per_s, seed, count, keys } => {
                    if let Some(c) = count {
                        feed.live.records_total.fetch_add((*c).max(0) as u64, Ordering::Relaxed);
                    }
                    crate::generate::generate(*kind, *seed, *count, *keys, *rate_per_s, &layout, &mut |b| {
                        send(b, format!("generator `{name}`"))
                    })
                    .map_err(RunError::Setup)?;
                }
                Connector::Kafka { brokers, topic, group: named, format } => {
                    let feed = super::kafka::SourceFeed { send_acked, bad, stopping, failed };
                    super::kafka::read(brokers, topic, named.as_deref().unwrap_or(group), *format, &layout, &feed)?;
                }
                Connector::Stdout { .. } => return Err(RunError::Setup("stdout is not a source".into())),
            }
        }
        ir::Input::Topic(t) => {
            let topic =
                shared.topics.get(t).cloned().ok_or_else(|| RunError::Setup(format!("topic `{t}` is not open")))?;
            let groups = crate::log::GroupStore::new(shared.log.root().to_path_buf(), Arc::new(crate::log::io::StdIo));
            let mut next: BTreeMap<u32, u64> = groups.committed(group, t)?;
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
                        let raw = r.value.as_ref().map_or("", |v| std::str::from_utf8(v).unwrap_or(""));
                        if let Err(e) = format::decode_json_row(raw, &mut b) {
                            bad(format!("topic {t} partition {pid} offset {}", r.offset), raw, e)?;
                        }
                    }
                    next.insert(pid, last + 1);
                    let origin = format!("topic {t} partition {pid} offsets {first}-{last}");
                    if !send_acked(b.finish(), origin, Some(tracker.ack(next.clone()))) {
                        return Ok(());
                    }
                }
                if !progressed {
                    // `writers_done` was read before this pass: a pass that found nothing
                    // after every writer had ended has read all they wrote.
                    if writers_done && !opts.follow_topics {
                        break;
                    }
                    if stopping() {
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

fn read_json_lines(mut r: impl BufRead, shown: &str, layout: &Arc<Layout>, feed: &Feed) -> Result<(), RunError> {
    let (send, bad) = (feed.send, feed.bad);
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
        feed.live.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
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
