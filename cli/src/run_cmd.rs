//! `flowc run`: check a file, then run its pipelines on the embedded runtime.

use crate::front::run_front_end;
use flow_runtime::run::{self, RunError, RunOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub struct RunArgs {
    pub file: PathBuf,
    pub pipelines: Vec<String>,
    pub data_dir: PathBuf,
    pub strict: bool,
    pub no_jit: bool,
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
    let opts = RunOptions {
        data_dir: args.data_dir,
        base_dir,
        pipelines: args.pipelines,
        strict: args.strict,
        jit: !args.no_jit,
    };
    match run::run(program, &opts) {
        Ok(summary) => {
            for s in &summary.skipped {
                eprintln!("note: pipeline `{}` was not run: {} ({})", s.pipeline, s.message, location(&c, s.span));
            }
            let secs = summary.elapsed.as_secs_f64().max(1e-9);
            eprintln!("{:<24} {:>12} {:>12} {:>14}", "pipeline", "records in", "records out", "dead-lettered");
            let mut total = 0;
            for p in &summary.pipelines {
                eprintln!("{:<24} {:>12} {:>12} {:>14}", p.name, p.records_in, p.records_out, p.dead_lettered);
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
