//! `flowc run`: check a file, then run its pipelines on the embedded runtime.

use crate::front::run_front_end;
use flow_runtime::run::{self, RunError, RunOptions};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub struct RunArgs {
    pub file: PathBuf,
    pub pipelines: Vec<String>,
    pub data_dir: PathBuf,
    pub strict: bool,
    pub no_jit: bool,
    pub parallelism: u32,
    pub start_from: run::StartFrom,
    pub no_progress: bool,
    pub state_backend: Option<flow_compiler::ir::StateBackend>,
    pub state_memory: u64,
    pub checkpoint_interval: Option<i64>,
    pub fresh: bool,
    pub from_checkpoint: Option<u64>,
    pub from_savepoint: Option<PathBuf>,
    pub width: usize,
}

fn location(c: &flow_compiler::Compilation, span: flow_compiler::source::Span) -> String {
    let (line, col) = c.sources.line_col(span);
    format!("{}:{line}:{col}", c.sources.get(span.file).name)
}

pub fn run(args: RunArgs) -> ExitCode {
    let c = run_front_end(&args.file);
    for d in &c.diagnostics {
        eprint!("{}", d.render(&c.sources, args.width));
        eprintln!();
    }
    let Some(program) = &c.program else {
        eprintln!("error: {} has errors; nothing was run", args.file.display());
        return ExitCode::from(1);
    };
    for name in &args.pipelines {
        if !program.pipelines.iter().any(|p| p.name == *name) {
            let names: Vec<&str> = program.pipelines.iter().map(|p| p.name.as_str()).collect();
            eprintln!("error: no pipeline `{name}` in {}; it has {}", args.file.display(), names.join(", "));
            return ExitCode::from(2);
        }
    }
    let base_dir = args.file.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut opts = RunOptions::new(args.data_dir, base_dir);
    opts.pipelines = args.pipelines;
    opts.strict = args.strict;
    opts.jit = !args.no_jit;
    opts.parallelism = args.parallelism;
    opts.start_from = args.start_from;
    opts.state_backend = args.state_backend;
    opts.state_memory = args.state_memory;
    opts.checkpoint_interval_ms = args.checkpoint_interval;
    opts.fresh = args.fresh;
    opts.from_checkpoint = args.from_checkpoint;
    opts.from_savepoint = args.from_savepoint;
    opts.handle_ctrl_c = true;
    let progress = (!args.no_progress && std::io::stderr().is_terminal()).then(|| Progress::start(opts.live.clone()));
    let result = run::run(program, &opts);
    if let Some(p) = progress {
        p.finish();
    }
    match result {
        Ok(summary) => {
            for w in &summary.warnings {
                eprintln!("warning: {w}");
            }
            if let Some(id) = summary.restored_from {
                if summary.restored_last {
                    eprintln!(
                        "resumed from checkpoint {id}, the end of the last run: its files are not read again and topics go on from where they were read to (--fresh starts over)"
                    );
                } else {
                    eprintln!("resumed from checkpoint {id}");
                }
            }
            for s in &summary.skipped {
                eprintln!("note: pipeline `{}` was not run: {} ({})", s.pipeline, s.message, location(&c, s.span));
            }
            let secs = summary.elapsed.as_secs_f64().max(1e-9);
            eprintln!("{:<32} {:>12} {:>12} {:>14}", "pipeline / stage", "records in", "records out", "dead-lettered");
            let mut total = 0;
            for p in &summary.pipelines {
                eprintln!("{:<32} {:>12} {:>12} {:>14}", p.name, p.records_in, p.records_out, p.dead_lettered);
                if p.late > 0 {
                    let routed = if p.late_routed == p.late {
                        "all written to the late output".to_string()
                    } else if p.late_routed == 0 {
                        "counted only: the window names no `late ->` output".to_string()
                    } else {
                        format!("{} written to the late output", p.late_routed)
                    };
                    eprintln!("  {} late record{} ({routed})", p.late, if p.late == 1 { "" } else { "s" });
                }
                if p.open_windows > 0 {
                    eprintln!(
                        "  {} window{} still open were not emitted (stopped before the end of input; their records' offsets were not committed)",
                        p.open_windows,
                        if p.open_windows == 1 { "" } else { "s" }
                    );
                }
                for s in &p.stages {
                    let label = format!("  {} x{}", s.label, s.parallelism);
                    eprintln!("{label:<32} {:>12} {:>12}", s.records_in, s.records_out);
                }
                total += p.records_in;
            }
            eprintln!(
                "ran {} pipeline{} in {:.3} s ({:.0} records/s in){}",
                summary.pipelines.len(),
                if summary.pipelines.len() == 1 { "" } else { "s" },
                secs,
                total as f64 / secs,
                if summary.skipped.is_empty() {
                    String::new()
                } else {
                    format!("; {} not run (see notes)", summary.skipped.len())
                }
            );
            if summary.stopped {
                eprintln!(
                    "stopped by Ctrl-C: the records read so far were processed, and a last checkpoint keeps where the run stood (the next `flowc run` resumes there; --fresh starts over)"
                );
                return ExitCode::from(130);
            }
            ExitCode::SUCCESS
        }
        Err(RunError::Eval { span, message }) => {
            eprintln!("error: {message} at {} (--strict)", location(&c, span));
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The progress line: records in and out with their rates, and, for bounded inputs
/// of known size, how far the run is and how long it has left.
struct Progress {
    bar: indicatif::ProgressBar,
    done: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Progress {
    fn start(live: Arc<run::Live>) -> Progress {
        let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr_with_hz(4));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (bar, done) = (bar.clone(), done.clone());
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                let mut styled = false;
                while !done.load(Ordering::Relaxed) {
                    let (bytes, bytes_total) =
                        (live.bytes_read.load(Ordering::Relaxed), live.bytes_total.load(Ordering::Relaxed));
                    let (n_in, n_total) =
                        (live.records_in.load(Ordering::Relaxed), live.records_total.load(Ordering::Relaxed));
                    let n_out = live.records_out.load(Ordering::Relaxed);
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    let (pos, len) = if bytes_total > 0 { (bytes, bytes_total) } else { (n_in, n_total) };
                    if !styled {
                        let style = if len > 0 {
                            "{spinner} [{bar:30}] {percent:>3}% {msg} eta {eta}"
                        } else {
                            "{spinner} {msg} {elapsed}"
                        };
                        bar.set_style(
                            indicatif::ProgressStyle::with_template(style)
                                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                                .progress_chars("=> "),
                        );
                        styled = true;
                    }
                    if len > 0 {
                        bar.set_length(len);
                        bar.set_position(pos.min(len));
                    }
                    bar.set_message(format!("{n_in} in ({:.0}/s), {n_out} out", n_in as f64 / secs));
                    bar.tick();
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
        };
        Progress { bar, done, thread }
    }

    fn finish(self) {
        self.done.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.bar.finish_and_clear();
    }
}
