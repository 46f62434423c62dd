//! `flowc`: the command-line front door to the compiler and runtime.
//!
//! This crate owns argument parsing (clap), rendering diagnostics for terminals and
//! as JSON, and exit codes. It holds no compiler or runtime logic of its own.

mod checkpoints_cmd;
mod front;
mod log_cmd;
mod lsp;
mod run_cmd;
mod serve_cmd;

// Keeps hostile array lengths in Kafka requests from aborting `flowc serve` (see flow_broker::alloc).
#[global_allocator]
static ALLOC: flow_broker::alloc::GuardedAlloc = flow_broker::alloc::GuardedAlloc;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "flowc", version, about = "Check, compile and run .flow stream-processing pipelines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DiagFormat {
    /// Rendered for people: source excerpts, labels and help.
    Human,
    /// One JSON object per diagnostic and line, for editors and CI.
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Emit {
    /// The syntax tree, with byte spans.
    Ast,
    /// The typed IR: every name resolved, every expression typed.
    Ir,
    /// The logical plan: the dataflow graph with schemas and partitioning.
    Plan,
    /// The physical plan: stages of fused operators, exchanges, parallelism.
    Physical,
    /// The physical plan as a Graphviz digraph (`| dot -Tsvg > plan.svg`).
    Dot,
    /// The Cranelift IR of each fused stateless stage (filters and projections).
    Clif,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check .flow files for errors without running them.
    Check {
        /// The files to check (each with its imports).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// How to print diagnostics.
        #[arg(long, value_enum, default_value = "human")]
        format: DiagFormat,
        /// Fail (exit 1) on warnings too.
        #[arg(long)]
        deny_warnings: bool,
        /// Width of rendered diagnostics.
        #[arg(long, default_value_t = 100)]
        width: usize,
        /// Also say, operator by operator, which state of this savepoint `flowc run
        /// --from-savepoint` would restore, drop, or refuse (one file only).
        #[arg(long, value_name = "PATH")]
        savepoint: Option<PathBuf>,
    },
    /// Compile a .flow file and print one of its stages.
    Compile {
        file: PathBuf,
        /// The stage to print.
        #[arg(long, value_enum, default_value = "plan")]
        emit: Emit,
        /// Instances per parallel stage, for `--emit physical|dot`.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
        parallelism: u32,
        #[arg(long, default_value_t = 100)]
        width: usize,
    },
    /// Check a .flow file and run its pipelines on the embedded runtime.
    Run {
        file: PathBuf,
        /// Run only this pipeline (repeatable); all of them by default.
        #[arg(long = "pipeline")]
        pipelines: Vec<String>,
        /// The log's data directory.
        #[arg(long, env = "FLOW_DATA_DIR", default_value = "./.flow/data")]
        data_dir: PathBuf,
        /// Stop at the first bad record instead of dead-lettering it.
        #[arg(long)]
        strict: bool,
        /// Run stages on the reference interpreter instead of compiled code.
        #[arg(long)]
        no_jit: bool,
        /// Instances of each parallel stage (`key_by` hash-partitions between them).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
        parallelism: u32,
        /// Where topic inputs start: committed (the consumer group's offsets), earliest,
        /// latest, or a time (RFC 3339 or epoch milliseconds)
        #[arg(long = "from", default_value = "committed", value_name = "POSITION")]
        start_from: flow_runtime::run::StartFrom,
        /// Never draw the progress line (it is drawn only when stderr is a terminal).
        #[arg(long)]
        no_progress: bool,
        /// Where window state beyond memory goes: memory (nowhere: all of it stays in
        /// memory) or rocksdb (spilled per stage instance under <data-dir>/state).
        /// Default: the file's `config { state_backend }`, else memory.
        #[arg(long, value_enum)]
        state_backend: Option<BackendArg>,
        /// With rocksdb: window state each stage instance keeps in memory, in bytes
        /// (suffixes k, m, g: binary units); 0 keeps none.
        #[arg(long, default_value = "256m", value_parser = parse_size)]
        state_memory: u64,
        /// Time between checkpoints, e.g. 500ms, 10s, 1m (default: the file's
        /// `config { checkpoint_interval }`, else 10s). Output to files is committed at
        /// each checkpoint.
        #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
        checkpoint_interval: Option<i64>,
        /// Ignore and delete the checkpoints of earlier runs: start from nothing.
        #[arg(long, conflicts_with = "from_checkpoint")]
        fresh: bool,
        /// Resume from this checkpoint (see `flowc checkpoints list`) instead of the
        /// newest one.
        #[arg(long, value_name = "ID", conflicts_with = "from_savepoint")]
        from_checkpoint: Option<u64>,
        /// Resume from a savepoint (`flowc savepoint create`): operators whose definition
        /// did not change get their state back (see `flowc check --savepoint`).
        #[arg(long, value_name = "PATH", conflicts_with = "fresh")]
        from_savepoint: Option<PathBuf>,
        #[arg(long, default_value_t = 100)]
        width: usize,
    },
    /// Explain an error or warning code, e.g. `flowc explain E0201`.
    Explain {
        /// The code (`E0201`, `w0001`...); without one, list every code.
        code: Option<String>,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run the language server (LSP over stdio) for editors.
    Lsp,
    /// Serve the data directory's topics over the Kafka wire protocol (see docs/kafka.md).
    Serve(serve_cmd::ServeArgs),
    /// The checkpoints a data directory holds (see docs/checkpoints.md).
    Checkpoints(checkpoints_cmd::CheckpointsArgs),
    /// Savepoints: a checkpoint of a running `flowc run`, kept until you delete it.
    Savepoint(checkpoints_cmd::SavepointArgs),
    #[command(flatten)]
    Log(log_cmd::LogCommand),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BackendArg {
    Memory,
    Rocksdb,
}

/// A byte count: digits with an optional k, m or g (binary units).
/// `500ms`, `10s`, `2m`, `1h` as milliseconds (more than zero).
fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: i64 = n.parse().map_err(|_| format!("`{s}` is not a duration like 500ms, 10s or 1m"))?;
    let ms = match unit {
        "ms" => n,
        "s" | "" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(format!("`{s}`: the unit must be ms, s, m or h")),
    };
    if ms <= 0 {
        return Err("the interval must be more than zero".into());
    }
    Ok(ms)
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("ib").trim_end_matches('b');
    let (digits, shift) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 10),
        Some('m') => (&t[..t.len() - 1], 20),
        Some('g') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| format!("`{s}` is not a size like 0, 4096, 64m or 1g"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("`{s}` is too large"))
}

/// glibc's allocator hands batch-sized blocks (128 KiB and up) back to the kernel when
/// they are freed and maps them afresh on the next batch, so a pipeline that allocates a
/// batch after a batch pays page faults and page clearing on every one (a tenth of
/// Nexmark q1's time in `perf`). Keep them: blocks up to 64 MiB come from the heap, and
/// the heap's free top is returned only past 256 MiB.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called once, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { files, format, deny_warnings, width, savepoint } => {
            let code = front::check(&files, format == DiagFormat::Json, deny_warnings, width);
            match (&savepoint, files.as_slice()) {
                (Some(sp), [file]) if code == ExitCode::SUCCESS => checkpoints_cmd::check_savepoint(file, sp),
                (Some(_), [_]) => code,
                (Some(_), _) => {
                    eprintln!("error: --savepoint checks one file");
                    ExitCode::from(2)
                }
                (None, _) => code,
            }
        }
        Command::Compile { file, emit, parallelism, width } => front::compile(&file, emit, parallelism, width),
        Command::Explain { code } => front::explain(code.as_deref()),
        Command::Run {
            file,
            pipelines,
            data_dir,
            strict,
            no_jit,
            parallelism,
            start_from,
            no_progress,
            state_backend,
            state_memory,
            checkpoint_interval,
            fresh,
            from_checkpoint,
            from_savepoint,
            width,
        } => run_cmd::run(run_cmd::RunArgs {
            file,
            pipelines,
            data_dir,
            strict,
            no_jit,
            parallelism,
            start_from,
            no_progress,
            state_backend: state_backend.map(|b| match b {
                BackendArg::Memory => flow_compiler::ir::StateBackend::Memory,
                BackendArg::Rocksdb => flow_compiler::ir::StateBackend::RocksDb,
            }),
            state_memory,
            checkpoint_interval,
            fresh,
            from_checkpoint,
            from_savepoint,
            width,
        }),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "flowc", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Lsp => lsp::run(),
        Command::Serve(args) => serve_cmd::run(args),
        Command::Checkpoints(a) => checkpoints_cmd::run(a),
        Command::Savepoint(a) => checkpoints_cmd::savepoint(a),
        Command::Log(cmd) => match log_cmd::run(cmd) {
            Ok(code) => code,
            Err(report) => {
                eprintln!("{report:?}");
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
