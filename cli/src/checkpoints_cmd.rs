//! `flowc checkpoints list|describe`: the checkpoints a data directory holds.

use clap::{Args, Subcommand};
use flow_runtime::checkpoint::{CheckpointStore, Metadata, Position};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct CheckpointsArgs {
    #[command(subcommand)]
    pub command: CheckpointsCommand,
}

#[derive(Subcommand, Debug)]
pub enum CheckpointsCommand {
    /// Every checkpoint: id, when, how long it took, its size; damaged or incomplete
    /// ones with why.
    List {
        /// The data directory.
        #[arg(long, env = "FLOW_DATA_DIR", default_value = "./.flow/data")]
        data_dir: PathBuf,
    },
    /// One checkpoint (the newest usable one by default): input positions, every
    /// operator instance's state size, the sink output it commits.
    Describe {
        /// The checkpoint's id.
        id: Option<u64>,
        #[arg(long, env = "FLOW_DATA_DIR", default_value = "./.flow/data")]
        data_dir: PathBuf,
    },
}

fn when(ms: i64) -> String {
    flow_types::time::format_timestamp(ms)
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn position(p: &Position) -> String {
    match p {
        Position::File { file, byte, line } if *line > 0 => format!("file #{file}, byte {byte} (line {line})"),
        Position::File { file, byte, .. } => format!("file #{file}, byte {byte} (its end)"),
        Position::Topic { next } => {
            let parts: Vec<String> = next.iter().map(|(p, o)| format!("{p}:{o}")).collect();
            format!("next offsets {}", if parts.is_empty() { "(none read)".into() } else { parts.join(" ") })
        }
        Position::Generator { records } => format!("{records} records generated"),
        Position::Ended => "ended".into(),
    }
}

pub fn run(a: CheckpointsArgs) -> ExitCode {
    match a.command {
        CheckpointsCommand::List { data_dir } => {
            let store = CheckpointStore::new(&data_dir);
            let all = store.list();
            if all.is_empty() {
                println!("no checkpoints in {}", store.root().display());
                return ExitCode::SUCCESS;
            }
            println!("{:>6}  {:<24} {:>9} {:>10}  state", "id", "taken", "duration", "size");
            for l in &all {
                match &l.meta {
                    Ok(m) => println!(
                        "{:>6}  {:<24} {:>7}ms {:>10}  {} operator instance{}",
                        l.id,
                        when(m.triggered_ms),
                        m.duration_ms,
                        size(l.bytes),
                        m.operators.len(),
                        if m.operators.len() == 1 { "" } else { "s" }
                    ),
                    Err(e) => println!("{:>6}  unusable: {e}", l.id),
                }
            }
            ExitCode::SUCCESS
        }
        CheckpointsCommand::Describe { id, data_dir } => {
            let store = CheckpointStore::new(&data_dir);
            let meta: Result<Metadata, String> = match id {
                Some(id) => store.load(id),
                None => store.latest().0.ok_or_else(|| format!("no usable checkpoint in {}", store.root().display())),
            };
            let m = match meta {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            };
            println!("checkpoint {} in {}", m.id, store.dir(m.id).display());
            println!("  taken {} in {} ms; program {}", when(m.triggered_ms), m.duration_ms, m.program);
            println!("  inputs:");
            for (p, pos) in &m.positions {
                println!("    {p:<20} {}", position(pos));
            }
            println!("  operator state:");
            if m.operators.is_empty() {
                println!("    (none)");
            }
            for o in &m.operators {
                println!(
                    "    {:<20} {:<8} instance {:<3} {:>10}  {}",
                    o.pipeline,
                    o.operator,
                    o.instance,
                    size(o.file.bytes),
                    o.file.name
                );
            }
            println!("  sink output committed:");
            for s in &m.sinks {
                let parts: u64 = s.parts.iter().map(|p| p.bytes).sum();
                match &s.topic {
                    Some(t) => {
                        let n: u64 = s.after.iter().map(|(p, a)| a - s.before.get(p).copied().unwrap_or(0)).sum();
                        println!("    {:<20} topic {t}: {n} records in {} part(s)", s.sink, s.parts.len());
                    }
                    None => println!(
                        "    {:<20} {}: {} in {} part(s), {} -> {} bytes",
                        s.sink,
                        s.path.display(),
                        size(parts),
                        s.parts.len(),
                        s.len_before,
                        s.len_after
                    ),
                }
            }
            ExitCode::SUCCESS
        }
    }
}

#[derive(Args, Debug)]
pub struct SavepointArgs {
    #[command(subcommand)]
    pub command: SavepointCommand,
}

#[derive(Subcommand, Debug)]
pub enum SavepointCommand {
    /// Asks the `flowc run` on a data directory for a savepoint now and waits for it:
    /// a checkpoint copied to PATH (state and input positions), to resume from with
    /// `flowc run --from-savepoint PATH`, even after changing the .flow file.
    Create {
        /// Where the savepoint goes (a new directory).
        path: PathBuf,
        #[arg(long, env = "FLOW_DATA_DIR", default_value = "./.flow/data")]
        data_dir: PathBuf,
        /// Seconds to wait for the run to take it.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

pub fn savepoint(a: SavepointArgs) -> ExitCode {
    let SavepointCommand::Create { path, data_dir, timeout } = a.command;
    let path = match std::path::absolute(&path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    if path.join("_metadata").exists() {
        eprintln!("error: {} already holds a savepoint", path.display());
        return ExitCode::from(2);
    }
    let request = flow_runtime::checkpoint::savepoint_request(&data_dir);
    let failed = path.with_extension("failed");
    let _ = std::fs::remove_file(&failed);
    if let Some(dir) = request.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&request, path.to_string_lossy().as_bytes()) {
        eprintln!("error: writing {}: {e}", request.display());
        return ExitCode::from(1);
    }
    let started = std::time::Instant::now();
    loop {
        if let Ok(m) = flow_runtime::checkpoint::load_dir(&path) {
            println!(
                "savepoint {} from checkpoint {}: {} operator instance{}, inputs at {}",
                path.display(),
                m.id,
                m.operators.len(),
                if m.operators.len() == 1 { "" } else { "s" },
                m.positions.iter().map(|(p, pos)| format!("{p}: {}", position(pos))).collect::<Vec<_>>().join("; ")
            );
            return ExitCode::SUCCESS;
        }
        if let Ok(why) = std::fs::read_to_string(&failed) {
            eprintln!("error: the savepoint failed: {why}");
            return ExitCode::from(1);
        }
        if started.elapsed().as_secs() >= timeout {
            let _ = std::fs::remove_file(&request);
            eprintln!(
                "error: no run took the savepoint within {timeout} s (is `flowc run` running on {}?)",
                data_dir.display()
            );
            return ExitCode::from(1);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `flowc check --savepoint PATH FILE`: which operators of FILE get their state back.
pub fn check_savepoint(file: &std::path::Path, sp: &std::path::Path) -> ExitCode {
    let c = crate::front::run_front_end(file);
    let Some(program) = &c.program else { return ExitCode::from(1) };
    let m = match flow_runtime::checkpoint::load_dir(sp) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: savepoint {}: {e}", sp.display());
            return ExitCode::from(1);
        }
    };
    let ops = flow_runtime::run::stateful_ops(program);
    let mut incompatible = 0;
    println!("savepoint {} (checkpoint {}) against {}:", sp.display(), m.id, file.display());
    for op in &ops {
        let states: Vec<_> = m.operators.iter().filter(|o| o.pipeline == op.pipeline && o.operator == op.id).collect();
        if !states.is_empty() {
            let bytes: u64 = states.iter().flat_map(|s| s.files()).map(|f| f.bytes).sum();
            println!(
                "  restored      {} ({}): {} instance{}, {}",
                op.id,
                op.text,
                states.len(),
                if states.len() == 1 { "" } else { "s" },
                size(bytes)
            );
            continue;
        }
        let same_pipeline: Vec<&str> = m
            .operators
            .iter()
            .filter(|o| o.pipeline == op.pipeline && !ops.iter().any(|x| x.id == o.operator))
            .map(|o| o.operator.as_str())
            .collect();
        match same_pipeline.first() {
            Some(old) => {
                incompatible += 1;
                println!(
                    "  incompatible  {} ({}): the savepoint's state {old} is of this pipeline's operator as it was; its definition or input changed, so it starts empty",
                    op.id, op.text
                );
            }
            None => println!("  starts empty  {} ({}): the savepoint has no state for it", op.id, op.text),
        }
    }
    let mut dropped: Vec<&str> = m
        .operators
        .iter()
        .filter(|o| !ops.iter().any(|x| x.pipeline == o.pipeline && x.id == o.operator))
        .map(|o| o.operator.as_str())
        .collect();
    dropped.dedup();
    for d in dropped {
        println!("  dropped       {d}: no operator of {} has this definition", file.display());
    }
    if incompatible > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
