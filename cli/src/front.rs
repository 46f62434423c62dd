//! The front-end commands: `check`, `compile --emit`, `explain`.

use crate::Emit;
use flow_compiler::diag::{self, Diagnostic, Severity};
use flow_compiler::{compile as compile_program, Compilation, DiskLoader};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Stack for the front end's thread: deeply nested input must never overflow it.
pub const FRONT_END_STACK_BYTES: usize = 256 << 20;

/// Runs the front end on its own thread with a large stack.
pub fn run_front_end(path: &Path) -> Compilation {
    let p = path.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("flowc-front-end".into())
        .stack_size(FRONT_END_STACK_BYTES)
        .spawn(move || compile_program(&p, None, &DiskLoader));
    match handle.map(|h| h.join()) {
        Ok(Ok(c)) => c,
        // A panic is a compiler bug; let it show as one.
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => {
            eprintln!("error: cannot start the compiler thread: {e}");
            std::process::exit(70);
        }
    }
}

/// One diagnostic as a JSON object (one line): what editors and CI consume.
pub fn diagnostic_json(c: &Compilation, d: &Diagnostic) -> serde_json::Value {
    let file = c.sources.get(d.primary.span.file);
    let (line, column) = file.line_col(d.primary.span.start as usize);
    let (end_line, end_column) = file.line_col(d.primary.span.end as usize);
    let labels: Vec<serde_json::Value> = d
        .secondary
        .iter()
        .map(|l| {
            let f = c.sources.get(l.span.file);
            let (line, column) = f.line_col(l.span.start as usize);
            let (end_line, end_column) = f.line_col(l.span.end as usize);
            serde_json::json!({
                "file": f.name, "line": line, "column": column,
                "end": { "line": end_line, "column": end_column },
                "message": l.message,
            })
        })
        .collect();
    serde_json::json!({
        "file": file.name,
        "line": line,
        "column": column,
        "end": { "line": end_line, "column": end_column },
        "code": d.code,
        "severity": d.severity.to_string(),
        "message": d.message,
        "label": d.primary.message,
        "help": d.help,
        "related": labels,
    })
}

pub fn check(files: &[PathBuf], json: bool, deny_warnings: bool, width: usize) -> ExitCode {
    let mut failed = false;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let (mut n_err, mut n_warn) = (0usize, 0usize);
    for f in files {
        let c = run_front_end(f);
        for d in &c.diagnostics {
            match d.severity {
                Severity::Error => n_err += 1,
                Severity::Warning => n_warn += 1,
            }
            if json {
                let _ = writeln!(out, "{}", diagnostic_json(&c, d));
            } else {
                eprint!("{}", d.render(&c.sources, width));
                eprintln!();
            }
        }
        let errors = c.has_errors();
        let warnings = c.diagnostics.iter().any(|d| d.severity == Severity::Warning);
        failed |= errors || (deny_warnings && warnings);
        if !json && !errors {
            eprintln!("checked {}: {}", f.display(), summary(&c));
        }
    }
    if !json && (n_err > 0 || n_warn > 0) {
        eprintln!(
            "{} error{}, {} warning{}",
            n_err,
            if n_err == 1 { "" } else { "s" },
            n_warn,
            if n_warn == 1 { "" } else { "s" }
        );
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn summary(c: &Compilation) -> String {
    match &c.program {
        Some(p) => format!(
            "ok ({} pipeline{}, {} topic{}, {} source{}, {} sink{})",
            p.pipelines.len(),
            if p.pipelines.len() == 1 { "" } else { "s" },
            p.topics.len(),
            if p.topics.len() == 1 { "" } else { "s" },
            p.sources.len(),
            if p.sources.len() == 1 { "" } else { "s" },
            p.sinks.len(),
            if p.sinks.len() == 1 { "" } else { "s" },
        ),
        None => "errors".into(),
    }
}

pub fn compile(file: &Path, emit: Emit, parallelism: u32, width: usize) -> ExitCode {
    let c = run_front_end(file);
    for d in &c.diagnostics {
        eprint!("{}", d.render(&c.sources, width));
        eprintln!();
    }
    if emit == Emit::Ast {
        for (_, f) in &c.files {
            println!("{f:#?}");
        }
        return if c.has_errors() { ExitCode::from(1) } else { ExitCode::SUCCESS };
    }
    let Some(program) = &c.program else {
        return ExitCode::from(1);
    };
    match emit {
        Emit::Ir => print!("{program}"),
        Emit::Plan => print!("{}", flow_compiler::plan::plan(program)),
        Emit::Physical => print!("{}", flow_compiler::physical::physical(program, parallelism)),
        Emit::Dot => print!("{}", flow_compiler::physical::physical(program, parallelism).dot()),
        Emit::Clif => match flow_compiler::exec::codegen::clif_program(program) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("error: cannot generate code: {}", e.message);
                return ExitCode::from(1);
            }
        },
        Emit::Ast => {}
    }
    ExitCode::SUCCESS
}

pub fn explain(code: Option<&str>) -> ExitCode {
    match code {
        None => {
            for c in diag::documented_codes() {
                let title = diag::explain(c)
                    .and_then(|e| e.lines().next())
                    .and_then(|l| l.split_once(':'))
                    .map_or("", |(_, t)| t.trim());
                println!("{c}  {title}");
            }
            ExitCode::SUCCESS
        }
        Some(code) => match diag::explain(code) {
            Some(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("error: no explanation for `{code}`: `flowc explain` lists every code");
                ExitCode::from(1)
            }
        },
    }
}
