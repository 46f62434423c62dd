//! The durable log's commands: `flowc topic`, `flowc produce`, `flowc consume` and
//! `flowc bench log`. Parses arguments, drives `flow_runtime::log`, and turns its
//! errors into miette diagnostics. Knows nothing of the compiler.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use flow_runtime::log::{Access, Acks, LogDir, LogError, NewRecord, Record, TopicConfig};
use miette::{miette, MietteDiagnostic, Report};

/// Records per append when producing from stdin.
const PRODUCE_BATCH_RECORDS_MAX: usize = 1000;
/// Bytes per append when producing from stdin.
const PRODUCE_BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Bytes read per partition per fetch when consuming.
const CONSUME_FETCH_BYTES_MAX: usize = 1024 * 1024;
/// How often `consume --follow` looks for data written by another process.
const FOLLOW_POLL_MS: u64 = 100;

/// The log's top-level commands, to be flattened into `flowc`'s command enum.
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Create, list, describe or delete topics of the durable log
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Append JSON lines (or raw lines) from stdin to a topic
    Produce(ProduceArgs),
    /// Print a topic's records
    Consume(ConsumeArgs),
    /// Benchmarks
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// Where the log keeps its data.
#[derive(Debug, Clone, Args)]
pub struct DataDir {
    /// Data directory of the durable log
    #[arg(long, env = "FLOW_DATA_DIR", default_value = "./.flow/data", value_name = "DIR")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic
    Create(TopicCreateArgs),
    /// List topics
    List {
        #[command(flatten)]
        data: DataDir,
    },
    /// Show each partition's offsets, size and segments
    Describe {
        /// Topic name
        name: String,
        #[command(flatten)]
        data: DataDir,
    },
    /// Delete a topic and its consumer groups' offsets
    Delete {
        /// Topic name
        name: String,
        #[command(flatten)]
        data: DataDir,
    },
}

#[derive(Debug, Args)]
pub struct TopicCreateArgs {
    /// Topic name
    pub name: String,
    /// Number of partitions
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Delete segments older than this (e.g. 7d, 12h, 30min), or `forever`
    #[arg(long, default_value = "7d")]
    pub retention: String,
    /// Delete old segments while the partition is larger than this many bytes
    #[arg(long, value_name = "B")]
    pub retention_bytes: Option<u64>,
    /// Roll to a new segment after this many bytes
    #[arg(long, value_name = "B", default_value_t = flow_runtime::log::topic::DEFAULT_SEGMENT_BYTES)]
    pub segment_bytes: u64,
    #[command(flatten)]
    pub data: DataDir,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    /// Acknowledge after fdatasync: survives power loss
    Fsync,
    /// Acknowledge once written to the OS: survives a crash of flowc, not of the machine
    Os,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic name
    pub name: String,
    /// Use this JSON field as the record key (records with the same key go to the same partition)
    #[arg(long, value_name = "FIELD", conflicts_with = "raw")]
    pub key_field: Option<String>,
    /// When an append counts as acknowledged
    #[arg(long, value_enum, default_value = "fsync")]
    pub acks: AcksArg,
    /// Treat each line as an opaque value instead of JSON
    #[arg(long)]
    pub raw: bool,
    /// Stop at the first malformed line
    #[arg(long)]
    pub strict: bool,
    #[command(flatten)]
    pub data: DataDir,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// The value alone, one per line
    Value,
    /// {"partition","offset","timestamp","key","value"} per line
    Json,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic name
    pub name: String,
    /// Start at each partition's first retained offset
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    pub from_beginning: bool,
    /// Start at this offset (in every partition, or in --partition)
    #[arg(long, value_name = "N", conflicts_with = "from_time")]
    pub offset: Option<u64>,
    /// Start at the first record with a timestamp at or after T (RFC 3339, or ms since the epoch)
    #[arg(long, value_name = "T")]
    pub from_time: Option<String>,
    /// Only this partition
    #[arg(long, value_name = "P")]
    pub partition: Option<u32>,
    /// Consumer group: resume from its committed offsets, and commit what was printed
    #[arg(long, value_name = "G")]
    pub group: Option<String>,
    /// Stop after N records
    #[arg(long, value_name = "N")]
    pub max: Option<u64>,
    /// Keep waiting for new records
    #[arg(long)]
    pub follow: bool,
    #[arg(long, value_enum, default_value = "value")]
    pub format: FormatArg,
    #[command(flatten)]
    pub data: DataDir,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Measure append and read throughput of the durable log against the file system's own limits
    Log(BenchLogArgs),
    /// Nexmark q0, q1, q2, q14 and the windowed q5, q11, q12 from the built-in generator through the compiled query, on one core
    Nexmark(BenchNexmarkArgs),
    /// Tumbling and session windows by key over many keys from in-memory batches, with both state backends, on one core
    Windows(BenchWindowsArgs),
    /// JSON-lines decoding into rows (the file source's work), on one core
    Ingest(BenchIngestArgs),
    /// Checkpoint costs: the windowed benchmark with and without a snapshot every
    /// interval, and the time and size of a full snapshot of many keys and its restore
    Checkpoints(BenchCheckpointsArgs),
    /// The Kafka protocol's cost: produce (acks=all) and fetch through the broker of
    /// `flowc serve` over loopback, beside the log's own fsync-acked append, in one run
    Kafka(BenchKafkaArgs),
}

#[derive(Debug, Args)]
pub struct BenchKafkaArgs {
    /// Scratch directory for the broker's and the log's files (removed afterwards)
    #[arg(long, default_value = "./.flow/bench-kafka")]
    pub dir: PathBuf,
    /// Records produced per run (100 bytes each, no key)
    #[arg(long, default_value_t = 4_000_000)]
    pub records: u64,
    /// Records per batch (one batch per Produce request)
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,
    /// Producer connections, each an idempotent producer
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Produce requests outstanding per connection (librdkafka's max.in.flight)
    #[arg(long, default_value_t = 5)]
    pub in_flight: usize,
    /// Appending threads of the log's own fsync-acked run
    #[arg(long, default_value_t = 16)]
    pub producers: usize,
    /// Runs (the median is reported)
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

#[derive(Debug, Args)]
pub struct BenchCheckpointsArgs {
    /// Keys of the windowed throughput case
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Events of the windowed throughput case
    #[arg(long, default_value_t = 8_000_000)]
    pub events: u64,
    /// Milliseconds between snapshots in the throughput case
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Keys of the state-size case (each with one open window)
    #[arg(long, default_value_t = 1_000_000)]
    pub state_keys: u64,
    /// Runs per case (the median is reported)
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Scratch directory for the snapshots (removed afterwards)
    #[arg(long, default_value = "./.flow/bench-checkpoints")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct BenchNexmarkArgs {
    /// Queries to run (repeatable): q0, q1, q2, q14, q5, q11, q12; all by default
    #[arg(long = "query")]
    pub queries: Vec<String>,
    /// Bid events per run
    #[arg(long, default_value_t = 10_000_000)]
    pub events: u64,
    /// Runs per query (the median is reported)
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Run the queries on the reference interpreter instead of compiled code
    #[arg(long)]
    pub no_jit: bool,
}

#[derive(Debug, Args)]
pub struct BenchWindowsArgs {
    /// Distinct keys
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Events per run (prepared in memory first, about 50 bytes each)
    #[arg(long, default_value_t = 4_000_000)]
    pub events: u64,
    /// Runs per case (the median is reported)
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Scratch directory for the RocksDB cases (removed afterwards)
    #[arg(long, default_value = "./.flow/bench-state")]
    pub dir: PathBuf,
    /// Only the case named exactly this (e.g. `tumbling(60s) memory`), or else every case
    /// whose name contains it (e.g. `session`)
    #[arg(long)]
    pub case: Option<String>,
}

#[derive(Debug, Args)]
pub struct BenchIngestArgs {
    /// Generated transactions to decode per run
    #[arg(long, default_value_t = 1_000_000)]
    pub lines: u64,
    /// Runs (the median is reported)
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

#[derive(Debug, Args)]
pub struct BenchLogArgs {
    /// Scratch directory for the benchmark's files (removed afterwards)
    #[arg(long, env = "FLOW_DATA_DIR", default_value = "./.flow/data", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Bytes to write and read in each throughput test
    #[arg(long, default_value_t = 1 << 30)]
    pub bytes: u64,
    /// Concurrent producers for the fsync test
    #[arg(long, default_value_t = 16)]
    pub producers: usize,
}

/// Run a log command.
pub fn run(cmd: LogCommand) -> miette::Result<ExitCode> {
    match cmd {
        LogCommand::Topic(t) => topic(t),
        LogCommand::Produce(a) => produce(a),
        LogCommand::Consume(a) => consume(a),
        LogCommand::Bench(BenchCommand::Log(a)) => bench_log(a),
        LogCommand::Bench(BenchCommand::Nexmark(a)) => bench_nexmark(a),
        LogCommand::Bench(BenchCommand::Windows(a)) => bench_windows(a),
        LogCommand::Bench(BenchCommand::Ingest(a)) => bench_ingest(a),
        LogCommand::Bench(BenchCommand::Checkpoints(a)) => bench_checkpoints(a),
        LogCommand::Bench(BenchCommand::Kafka(a)) => bench_kafka(a),
    }
}

/// A log error as a diagnostic with a stable code and, where we can, a hint.
pub fn diagnostic(e: LogError) -> Report {
    let (code, help): (&str, Option<String>) = match &e {
        LogError::UnknownTopic(_) => ("flow::log::unknown_topic", Some("list topics with `flowc topic list`, or create it with `flowc topic create`".into())),
        LogError::TopicExists(_) => ("flow::log::topic_exists", Some("pick another name, or delete the topic first".into())),
        LogError::InvalidTopicName { .. } | LogError::InvalidGroupName { .. } => ("flow::log::invalid_name", None),
        LogError::InvalidConfig(_) => ("flow::log::invalid_config", None),
        LogError::UnknownPartition { .. } => ("flow::log::unknown_partition", None),
        LogError::OffsetOutOfRange { .. } => ("flow::log::offset_out_of_range", Some("use --from-beginning, or an offset between start and end".into())),
        LogError::Corrupt { .. } | LogError::CorruptFile { .. } => (
            "flow::log::corrupt",
            Some("the stored data failed its checks; the log does not skip it. Restore the segment from a copy, or move it away to drop the data it holds".into()),
        ),
        LogError::Locked(_) => ("flow::log::locked", Some("another flowc process is writing to this topic; wait for it to finish".into())),
        LogError::Failed { .. } | LogError::Io { .. } => ("flow::log::io", None),
        LogError::ReadOnly(_) | LogError::EmptyAppend | LogError::BatchTooLarge { .. } | LogError::InvalidBatch(_) => {
            ("flow::log::usage", None)
        }
    };
    let mut d = MietteDiagnostic::new(e.to_string()).with_code(code);
    if let Some(h) = help {
        d = d.with_help(h);
    }
    Report::new(d)
}

fn usage(message: String, help: &str) -> Report {
    Report::new(MietteDiagnostic::new(message).with_code("flow::log::usage").with_help(help.to_string()))
}

fn topic(cmd: TopicCommand) -> miette::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cmd {
        TopicCommand::Create(a) => {
            let retention_ms = parse_retention(&a.retention)?;
            let config = TopicConfig {
                partitions: a.partitions,
                retention_ms,
                retention_bytes: a.retention_bytes,
                segment_bytes: a.segment_bytes,
                ..TopicConfig::default()
            };
            LogDir::new(&a.data.data_dir).create_topic(&a.name, &config).map_err(diagnostic)?;
            writeln!(
                out,
                "created topic {} with {} partition{}",
                a.name,
                a.partitions,
                if a.partitions == 1 { "" } else { "s" }
            )
            .map_err(io_err)?;
        }
        TopicCommand::List { data } => {
            for name in LogDir::new(&data.data_dir).list_topics().map_err(diagnostic)? {
                writeln!(out, "{name}").map_err(io_err)?;
            }
        }
        TopicCommand::Describe { name, data } => {
            let dir = LogDir::new(&data.data_dir);
            let t = dir.open_topic(&name, Access::ReadOnly).map_err(diagnostic)?;
            let c = t.config();
            let retention = match c.retention_ms {
                Some(ms) => humantime::format_duration(Duration::from_millis(ms as u64)).to_string(),
                None => "forever".into(),
            };
            let retention_bytes = c.retention_bytes.map_or("unlimited".to_string(), |b| b.to_string());
            writeln!(
                out,
                "topic {name}: partitions {}, retention {retention}, retention bytes {retention_bytes}, segment bytes {}",
                c.partitions, c.segment_bytes
            )
            .map_err(io_err)?;
            writeln!(out, "{:>9} {:>12} {:>12} {:>14} {:>8}", "partition", "start", "end", "bytes", "segments")
                .map_err(io_err)?;
            for p in t.describe() {
                writeln!(
                    out,
                    "{:>9} {:>12} {:>12} {:>14} {:>8}",
                    p.partition, p.start_offset, p.end_offset, p.size_bytes, p.segments
                )
                .map_err(io_err)?;
            }
        }
        TopicCommand::Delete { name, data } => {
            LogDir::new(&data.data_dir).delete_topic(&name).map_err(diagnostic)?;
            writeln!(out, "deleted topic {name}").map_err(io_err)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn io_err(e: std::io::Error) -> Report {
    miette!(code = "flow::log::io", "{e}")
}

fn parse_retention(s: &str) -> miette::Result<Option<i64>> {
    match s {
        "forever" | "-1" | "none" => Ok(None),
        _ => {
            let d = humantime::parse_duration(s).map_err(|e| {
                usage(
                    format!("invalid retention `{s}`: {e}"),
                    "write a duration such as 7d, 12h or 30min, or `forever`",
                )
            })?;
            Ok(Some(d.as_millis().min(i64::MAX as u128) as i64))
        }
    }
}

/// Parse `--from-time`: milliseconds since the epoch, or RFC 3339 (`Z` or `±HH:MM`).
pub fn parse_time_ms(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    let (base, offset_s): (String, i64) = if let Some(b) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        (b.to_string(), 0)
    } else if s.len() > 6 && matches!(s.as_bytes()[s.len() - 6], b'+' | b'-') && s.as_bytes()[s.len() - 3] == b':' {
        let (b, off) = s.split_at(s.len() - 6);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let h: i64 = off.get(1..3)?.parse().ok()?;
        let m: i64 = off.get(4..6)?.parse().ok()?;
        (b.to_string(), sign * (h * 3600 + m * 60))
    } else {
        return None;
    };
    let t = humantime::parse_rfc3339(&format!("{}Z", base.replace(' ', "T"))).ok()?;
    let ms = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    };
    Some(ms - offset_s * 1000)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn produce(a: ProduceArgs) -> miette::Result<ExitCode> {
    let dir = LogDir::new(&a.data.data_dir);
    let t = dir.open_topic(&a.name, Access::ReadWrite).map_err(diagnostic)?;
    for ev in t.recovery_events() {
        eprintln!("warning: {ev}");
    }
    let acks = match a.acks {
        AcksArg::Fsync => Acks::Fsync,
        AcksArg::Os => Acks::Os,
    };
    let stdin = std::io::stdin();
    let mut input = std::io::BufReader::with_capacity(1 << 20, stdin.lock());
    let mut batch: Vec<NewRecord> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut acked = 0u64;
    let mut malformed = 0u64;
    let mut line_no = 0u64;
    let mut line = String::new();
    let flush = |batch: &mut Vec<NewRecord>, batch_bytes: &mut usize, acked: &mut u64| -> miette::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len() as u64;
        t.append(std::mem::take(batch), acks).map_err(diagnostic)?;
        *batch_bytes = 0;
        *acked += n;
        Ok(())
    };
    loop {
        line.clear();
        let n = input
            .read_line(&mut line)
            .map_err(|e| miette!(code = "flow::log::io", "reading stdin at line {}: {e}", line_no + 1))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let text = line.strip_suffix('\n').unwrap_or(&line);
        let text = text.strip_suffix('\r').unwrap_or(text);
        match parse_line(text, a.raw, a.key_field.as_deref()) {
            Ok(Some((key, value))) => {
                batch_bytes += value.len() + key.as_ref().map_or(0, |k| k.len());
                batch.push(NewRecord::new(now_ms(), key, value));
            }
            Ok(None) => {}
            Err(reason) => {
                malformed += 1;
                let report = Report::new(
                    MietteDiagnostic::new(format!("line {line_no}: {reason}"))
                        .with_code("flow::log::malformed_line")
                        .with_help(if a.strict {
                            "fix the line, or drop --strict to skip malformed lines"
                        } else {
                            "the line was skipped"
                        }),
                );
                if a.strict {
                    flush(&mut batch, &mut batch_bytes, &mut acked)?;
                    println!("{acked} records acknowledged");
                    return Err(report);
                }
                eprintln!("{report:?}");
            }
        }
        // Append when the batch is full, or when no more input is waiting, so an
        // interactive producer is not held back.
        if batch.len() >= PRODUCE_BATCH_RECORDS_MAX
            || batch_bytes >= PRODUCE_BATCH_BYTES_MAX
            || input.buffer().is_empty()
        {
            flush(&mut batch, &mut batch_bytes, &mut acked)?;
        }
    }
    flush(&mut batch, &mut batch_bytes, &mut acked)?;
    if malformed > 0 {
        eprintln!("skipped {malformed} malformed line{}", if malformed == 1 { "" } else { "s" });
    }
    println!("{acked} records acknowledged");
    Ok(ExitCode::SUCCESS)
}

type KeyValue = (Option<Bytes>, Bytes);

/// One input line as (key, value); `None` for a blank line in JSON mode.
fn parse_line(text: &str, raw: bool, key_field: Option<&str>) -> Result<Option<KeyValue>, String> {
    if raw {
        return Ok(Some((None, Bytes::copy_from_slice(text.as_bytes()))));
    }
    if text.trim().is_empty() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let key = match key_field {
        None => None,
        Some(f) => {
            let obj = v.as_object().ok_or_else(|| format!("expected a JSON object with field `{f}`"))?;
            match obj.get(f) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(Bytes::copy_from_slice(s.as_bytes())),
                Some(other) => Some(Bytes::from(other.to_string())),
            }
        }
    };
    Ok(Some((key, Bytes::copy_from_slice(text.as_bytes()))))
}

fn consume(a: ConsumeArgs) -> miette::Result<ExitCode> {
    let dir = LogDir::new(&a.data.data_dir);
    let t = dir.open_topic(&a.name, Access::ReadOnly).map_err(diagnostic)?;
    let from_time = match &a.from_time {
        None => None,
        Some(s) => Some(parse_time_ms(s).ok_or_else(|| {
            usage(
                format!("invalid time `{s}`"),
                "write RFC 3339 (2025-01-31T12:00:00Z) or milliseconds since the epoch",
            )
        })?),
    };
    let partitions: Vec<u32> = match a.partition {
        Some(p) => {
            t.partition(p).map_err(diagnostic)?;
            vec![p]
        }
        None => (0..t.config().partitions).collect(),
    };
    let committed = match &a.group {
        Some(g) => dir.groups().committed(g, &a.name).map_err(diagnostic)?,
        None => BTreeMap::new(),
    };
    // Starting positions: explicit offset/time win; then the group's commit; then
    // --from-beginning; else the end (Kafka's console consumer defaults).
    let mut positions: BTreeMap<u32, u64> = BTreeMap::new();
    for &p in &partitions {
        let part = t.partition(p).map_err(diagnostic)?;
        let pos = if let Some(o) = a.offset {
            let (start, end) = (part.start_offset(), part.end_offset());
            if o < start || o > end {
                return Err(diagnostic(LogError::OffsetOutOfRange {
                    topic: a.name.clone(),
                    partition: p,
                    offset: o,
                    start,
                    end,
                }));
            }
            o
        } else if let Some(ts) = from_time {
            part.offset_for_time(ts).map_err(diagnostic)?.unwrap_or_else(|| part.end_offset())
        } else if let Some(&c) = committed.get(&p) {
            c.clamp(part.start_offset(), part.end_offset().max(part.start_offset()))
        } else if a.from_beginning {
            part.start_offset()
        } else {
            part.end_offset()
        };
        positions.insert(p, pos);
    }
    let stop_at: BTreeMap<u32, u64> =
        partitions.iter().map(|&p| (p, t.partitions()[p as usize].end_offset())).collect();
    let mut printed = 0u64;
    let max = a.max.unwrap_or(u64::MAX);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    // Positions whose records have all been flushed to stdout: only these are
    // committed for a group, so a consumer killed or cut off (`| head`) re-reads what
    // it may not have delivered (at least once).
    let mut flushed = positions.clone();
    let commit = |positions: &BTreeMap<u32, u64>| -> miette::Result<()> {
        if let Some(g) = &a.group {
            dir.groups().commit(g, &a.name, positions).map_err(diagnostic)?;
        }
        Ok(())
    };
    // A reader that went away (EPIPE) ends the run normally.
    let broken_pipe = |e: &std::io::Error| e.kind() == std::io::ErrorKind::BrokenPipe;
    'outer: loop {
        let mut progressed = false;
        for &p in &partitions {
            if printed >= max {
                break 'outer;
            }
            let pos = positions[&p];
            if !a.follow && pos >= stop_at[&p] {
                continue;
            }
            let part = &t.partitions()[p as usize];
            let records = part.read_records(pos, CONSUME_FETCH_BYTES_MAX).map_err(diagnostic)?;
            for r in records {
                if printed >= max || (!a.follow && r.offset >= stop_at[&p]) {
                    break;
                }
                match print_record(&mut out, p, &r, a.format) {
                    Ok(()) => {}
                    Err(e) if broken_pipe(&e) => return commit(&flushed).map(|()| ExitCode::SUCCESS),
                    Err(e) => return Err(io_err(e)),
                }
                positions.insert(p, r.offset + 1);
                printed += 1;
                progressed = true;
            }
        }
        if printed >= max {
            break;
        }
        if !progressed {
            if !a.follow {
                break;
            }
            match out.flush() {
                Ok(()) => {}
                Err(e) if broken_pipe(&e) => return commit(&flushed).map(|()| ExitCode::SUCCESS),
                Err(e) => return Err(io_err(e)),
            }
            if flushed != positions {
                flushed = positions.clone();
                commit(&flushed)?;
            }
            std::thread::sleep(Duration::from_millis(FOLLOW_POLL_MS));
            for &p in &partitions {
                t.partitions()[p as usize].refresh().map_err(diagnostic)?;
            }
        }
    }
    match out.flush() {
        Ok(()) => flushed = positions,
        Err(e) if broken_pipe(&e) => {}
        Err(e) => return Err(io_err(e)),
    }
    commit(&flushed)?;
    Ok(ExitCode::SUCCESS)
}

fn print_record(out: &mut impl Write, partition: u32, r: &Record, format: FormatArg) -> std::io::Result<()> {
    let text = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    match format {
        FormatArg::Value => {
            match &r.value {
                Some(v) => out.write_all(v)?,
                None => out.write_all(b"null")?,
            }
            out.write_all(b"\n")
        }
        FormatArg::Json => {
            // Fields in the documented order: partition, offset, timestamp, key, value.
            let json = |b: &Option<Bytes>| serde_json::to_string(&text(b)).unwrap_or_else(|_| "null".into());
            writeln!(
                out,
                r#"{{"partition":{partition},"offset":{},"timestamp":{},"key":{},"value":{}}}"#,
                r.offset,
                r.timestamp_ms,
                json(&r.key),
                json(&r.value)
            )
        }
    }
}

fn bench_log(a: BenchLogArgs) -> miette::Result<ExitCode> {
    let report = flow_runtime::log::bench::run(&a.data_dir, a.bytes, a.producers)
        .map_err(|e| miette!(code = "flow::log::bench", "{e}"))?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

/// CPU seconds (user + system) this process has used, and those of its threads whose
/// name starts with `prefix` (Linux /proc; 0 elsewhere).
fn cpu_seconds(prefix: &str) -> (f64, f64) {
    let tick = 100.0; // USER_HZ, fixed at 100 on Linux
    let stat = |path: &std::path::Path| -> Option<(String, f64)> {
        let text = std::fs::read_to_string(path).ok()?;
        let (open, close) = (text.find('(')?, text.rfind(')')?);
        let name = text[open + 1..close].to_string();
        let fields: Vec<&str> = text.get(close + 2..)?.split(' ').collect();
        let (u, s): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
        Some((name, (u + s) / tick))
    };
    let all = stat(std::path::Path::new("/proc/self/stat")).map_or(0.0, |(_, c)| c);
    let mut threads = 0.0;
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for t in rd.flatten() {
            if let Some((name, c)) = stat(&t.path().join("stat")) {
                if name.starts_with(prefix) {
                    threads += c;
                }
            }
        }
    }
    (all, threads)
}

fn bench_kafka(a: BenchKafkaArgs) -> miette::Result<ExitCode> {
    use flow_broker::bench::{create_topic, fetch, produce, ProduceLoad};
    let err = |e: String| miette!(code = "flow::bench", "{e}");
    std::fs::create_dir_all(&a.dir).map_err(|e| miette!("cannot create {}: {e}", a.dir.display()))?;
    let scratch = a.dir.join(format!("run-{}", std::process::id()));
    let result = (|| -> miette::Result<()> {
        let load = ProduceLoad {
            records: a.records,
            record_bytes: flow_runtime::log::bench::RECORD_BYTES,
            batch_records: a.batch_records.max(1),
            connections: a.connections.max(1),
            in_flight: a.in_flight.max(1),
        };
        // The broker as `flowc serve` runs it: a multi-threaded tokio runtime, whose
        // threads are named so their CPU time can be told from the drivers'.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("flowc-broker")
            .build()
            .map_err(|e| miette!("cannot start the async runtime: {e}"))?;
        let config = flow_broker::Config::new(scratch.join("broker"), "127.0.0.1:0".parse().expect("an address"));
        let handle = rt.block_on(flow_broker::start(config)).map_err(|e| miette!("{e}"))?;
        let addr = handle.local_addr();
        println!(
            "flow broker at {addr}; {} records of {} B per run in batches of {}, {} connection(s) x {} in flight, acks=all, idempotent; {} run(s), medians",
            load.records, load.record_bytes, load.batch_records, load.connections, load.in_flight, a.runs.max(1)
        );
        let (mut log, mut prod, mut cons, mut cpu, mut broker_cpu) = (vec![], vec![], vec![], vec![], vec![]);
        for run in 0..a.runs.max(1) {
            let l = flow_runtime::log::bench::fsync_acked_append(&scratch, load.records, a.producers).map_err(err)?;
            let topic = format!("bench-{run}");
            create_topic(addr, &topic, 1, &[]).map_err(err)?;
            let (c0, b0) = cpu_seconds("flowc-broker");
            let p = produce(addr, &topic, &load).map_err(err)?;
            let (c1, b1) = cpu_seconds("flowc-broker");
            let f = fetch(addr, &topic, p.records, 1 << 20).map_err(err)?;
            println!(
                "run {}: log {:.0} records/s; produce {:.0} records/s ({:.1} MB/s) = {:.2}x the log; fetch {:.0} records/s ({:.1} MB/s); CPU per million produced: {:.2} s in all, {:.2} s in the broker",
                run + 1,
                l.records_per_s,
                p.records_per_s(),
                p.mb_per_s(),
                p.records_per_s() / l.records_per_s,
                f.records_per_s(),
                f.mb_per_s(),
                (c1 - c0) * 1e6 / p.records as f64,
                (b1 - b0) * 1e6 / p.records as f64,
            );
            log.push(l.records_per_s);
            prod.push(p.records_per_s());
            cons.push(f.records_per_s());
            cpu.push((c1 - c0) * 1e6 / p.records as f64);
            broker_cpu.push((b1 - b0) * 1e6 / p.records as f64);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|x, y| x.total_cmp(y));
            v[v.len() / 2]
        };
        let (l, p) = (median(&mut log), median(&mut prod));
        println!("log: append fsync acks, {} producers, batches of 1000 : {l:>12.0} records/s", a.producers);
        println!("kafka protocol: produce, acks=all                   : {p:>12.0} records/s = {:.2}x the log's (target 0.50x)", p / l);
        println!("kafka protocol: fetch, 1 MiB per request            : {:>12.0} records/s", median(&mut cons));
        println!(
            "CPU per million records produced: {:.2} s in all, {:.2} s on the broker's threads",
            median(&mut cpu),
            median(&mut broker_cpu)
        );
        rt.block_on(handle.shutdown());
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result.map(|()| ExitCode::SUCCESS)
}

/// The median of `runs` measurements of `f` (at least one).
fn median_run(
    runs: usize,
    mut f: impl FnMut() -> Result<flow_runtime::bench::Measured, String>,
) -> miette::Result<flow_runtime::bench::Measured> {
    let mut all = Vec::new();
    for _ in 0..runs.max(1) {
        all.push(f().map_err(|e| miette!(code = "flow::bench", "{e}"))?);
    }
    all.sort_by_key(|m| m.elapsed);
    Ok(all.swap_remove(all.len() / 2))
}

fn bench_checkpoints(a: BenchCheckpointsArgs) -> miette::Result<ExitCode> {
    use flow_runtime::bench::WindowBench;
    let err = |e: String| miette!(code = "flow::bench", "{e}");
    let b = WindowBench::new("tumbling(60s)", a.keys, a.events, true).map_err(err)?;
    println!(
        "tumbling(60s) by key over {} keys, {} events, in memory, one core, median of {}",
        a.keys,
        a.events,
        a.runs.max(1)
    );
    let plain = median_run(a.runs, || b.run(None))?;
    let mut taken = Vec::new();
    let with = median_run(a.runs, || {
        let (m, n) = b.run_checkpointed(std::time::Duration::from_millis(a.interval_ms), &a.dir)?;
        taken.push(n);
        Ok(m)
    })?;
    let _ = std::fs::remove_dir_all(&a.dir);
    let rate = |m: &flow_runtime::bench::Measured| m.events as f64 / m.elapsed.as_secs_f64().max(1e-9);
    println!("{:<40} {:>14.0} events/s", "no checkpoints", rate(&plain));
    println!(
        "{:<40} {:>14.0} events/s ({:.1}% of the above; {} snapshots per run)",
        format!("a snapshot every {} ms", a.interval_ms),
        rate(&with),
        100.0 * rate(&with) / rate(&plain),
        taken.iter().max().copied().unwrap_or(0)
    );
    // One open window per key: a tumbling hour over 4 events per key.
    let big = WindowBench::new("tumbling(1h)", a.state_keys, a.state_keys * 4, true).map_err(err)?;
    let mut runs = Vec::new();
    for _ in 0..a.runs.max(1) {
        runs.push(big.snapshot_cost().map_err(err)?);
    }
    runs.sort_by_key(|r| r.1);
    let (windows, snap, bytes, _) = runs[runs.len() / 2];
    runs.sort_by_key(|r| r.3);
    let restore = runs[runs.len() / 2].3;
    println!(
        "state of {windows} windows: full snapshot {:.1} ms, {:.1} MiB ({:.0} bytes per window); restore {:.1} ms",
        snap.as_secs_f64() * 1e3,
        bytes as f64 / (1u64 << 20) as f64,
        bytes as f64 / windows.max(1) as f64,
        restore.as_secs_f64() * 1e3
    );
    let mut deltas = Vec::new();
    for _ in 0..a.runs.max(1) {
        deltas.push(big.delta_cost(0.01).map_err(err)?);
    }
    deltas.sort_by_key(|d| d.1);
    let (full, delta, full_bytes, delta_bytes) = deltas[deltas.len() / 2];
    println!(
        "after changing 1% of the keys: delta {:.2} ms, {:.2} MiB = {:.1}% of a full snapshot's time ({:.1} ms, {:.1} MiB)",
        delta.as_secs_f64() * 1e3,
        delta_bytes as f64 / (1u64 << 20) as f64,
        100.0 * delta.as_secs_f64() / full.as_secs_f64().max(1e-9),
        full.as_secs_f64() * 1e3,
        full_bytes as f64 / (1u64 << 20) as f64
    );
    Ok(ExitCode::SUCCESS)
}

fn bench_nexmark(a: BenchNexmarkArgs) -> miette::Result<ExitCode> {
    use flow_runtime::bench::{Nexmark, NEXMARK_QUERIES};
    let names: Vec<String> =
        if a.queries.is_empty() { NEXMARK_QUERIES.iter().map(|(n, _)| n.to_string()).collect() } else { a.queries };
    println!(
        "Nexmark over the built-in bid generator, {} events, {} on one core, median of {}",
        a.events,
        if a.no_jit { "interpreted" } else { "compiled" },
        a.runs.max(1)
    );
    println!("{:<6} {:>14} {:>12} {:>12}", "query", "events/s", "rows out", "seconds");
    for name in names {
        let q = Nexmark::new(&name, !a.no_jit).map_err(|e| miette!(code = "flow::bench", "{e}"))?;
        let m = median_run(a.runs, || q.run(a.events))?;
        let secs = m.elapsed.as_secs_f64().max(1e-9);
        println!("{name:<6} {:>14.0} {:>12} {:>12.3}", m.events as f64 / secs, m.rows_out, secs);
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_windows(a: BenchWindowsArgs) -> miette::Result<ExitCode> {
    use flow_runtime::bench::WindowBench;
    let err = |e: String| miette!(code = "flow::bench", "{e}");
    println!(
        "Windows by key over {} keys, {} events (16 per ms of event time) from in-memory batches, count + sum + max, one core, median of {}",
        a.keys,
        a.events,
        a.runs.max(1)
    );
    println!("{:<34} {:>14} {:>12} {:>10}", "case", "events/s", "results", "seconds");
    const WINDOWS: [&str; 2] = ["tumbling(60s)", "session(gap: 5s)"];
    const BACKENDS: [&str; 4] = ["memory", "memory --no-jit", "rocksdb", "rocksdb 1/4 in memory"];
    // A case named exactly runs alone; otherwise every case containing the text runs.
    let exact =
        a.case.as_deref().is_some_and(|c| WINDOWS.iter().any(|w| BACKENDS.iter().any(|b| format!("{w} {b}") == c)));
    let wanted = |name: &str| a.case.as_deref().is_none_or(|c| if exact { name == c } else { name.contains(c) });
    for window in WINDOWS {
        let label = window;
        if !BACKENDS.iter().any(|c| wanted(&format!("{label} {c}"))) {
            continue;
        }
        // The same on the interpreter and the Rust accumulator updater: what the JIT
        // (finishing stage, accumulator updates) buys at the operator.
        let name = format!("{label} memory --no-jit");
        if wanted(&name) {
            let b = WindowBench::new(window, a.keys, a.events, false).map_err(err)?;
            let m = median_run(a.runs, || b.run(None))?;
            let secs = m.elapsed.as_secs_f64().max(1e-9);
            println!("{name:<34} {:>14.0} {:>12} {:>10.3}", m.events as f64 / secs, m.rows_out, secs);
        }
        let b = WindowBench::new(window, a.keys, a.events, true).map_err(err)?;
        let state = b.state().map_err(err)?;
        let per = state.bytes as f64 / state.windows_in_memory.max(1) as f64;
        let quarter = (state.windows_in_memory / 4).max(1);
        let cases: [(String, Option<usize>); 3] = [
            (format!("{label} memory"), None),
            (format!("{label} rocksdb"), Some(usize::MAX)),
            (format!("{label} rocksdb 1/4 in memory"), Some(quarter)),
        ];
        for (name, spill) in cases {
            if !wanted(&name) {
                continue;
            }
            let dir = a.dir.join("db");
            let m = median_run(a.runs, || b.run(spill.map(|budget| (dir.as_path(), budget))))?;
            let secs = m.elapsed.as_secs_f64().max(1e-9);
            println!("{name:<34} {:>14.0} {:>12} {:>10.3}", m.events as f64 / secs, m.rows_out, secs);
        }
        let _ = std::fs::remove_dir_all(&a.dir);
        println!(
            "  state: {} windows in memory at most, {:.0} bytes each ({:.2}x the {} raw bytes of key and accumulator)",
            state.windows_in_memory,
            per,
            per / state.raw_bytes_per_window as f64,
            state.raw_bytes_per_window
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_ingest(a: BenchIngestArgs) -> miette::Result<ExitCode> {
    let (layout, text) =
        flow_runtime::bench::transactions_json(a.lines).map_err(|e| miette!(code = "flow::bench", "{e}"))?;
    let m = median_run(a.runs, || flow_runtime::bench::ingest(&layout, &text))?;
    let secs = m.elapsed.as_secs_f64().max(1e-9);
    println!(
        "JSON-lines ingest, {} lines ({} bytes) on one core, median of {}: {:.0} MB/s, {:.0} lines/s",
        m.events,
        m.bytes,
        a.runs.max(1),
        m.bytes as f64 / secs / 1e6,
        m.events as f64 / secs
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_parsing() {
        assert_eq!(parse_time_ms("1700000000000"), Some(1_700_000_000_000));
        assert_eq!(parse_time_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_time_ms("1970-01-01T01:00:01+01:00"), Some(1000));
        assert_eq!(parse_time_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(parse_time_ms("yesterday"), None);
    }

    #[test]
    fn lines() {
        let (k, v) = parse_line(r#"{"user":"ann","n":1}"#, false, Some("user")).unwrap().unwrap();
        assert_eq!(k.as_deref(), Some(&b"ann"[..]));
        assert_eq!(&v[..], br#"{"user":"ann","n":1}"#);
        let (k, _) = parse_line(r#"{"user":7}"#, false, Some("user")).unwrap().unwrap();
        assert_eq!(k.as_deref(), Some(&b"7"[..]));
        assert!(parse_line("{oops", false, None).is_err());
        assert!(parse_line("[1]", false, Some("user")).is_err());
        assert_eq!(parse_line("", false, None), Ok(None));
        assert_eq!(parse_line("{oops", true, None).unwrap().unwrap().1, Bytes::from_static(b"{oops"));
    }
}
