//! The physical plan: what runs, fused into stages, with how many instances.
//!
//! [`physical`] cuts each pipeline of a checked program into **stages**. A stage is
//! one task per instance: an optional stateful *head* operator (a window, an
//! aggregate, a join, ...) followed by the longest run of stateless operators after it
//! (`where`, `select`), fused into one function by the JIT; the pipeline's last stage
//! also does its routing (`to ... when ...`). Stage 0 reads the pipeline's input.
//!
//! Between stages records move through an [`Exchange`]: `key_by` becomes a hash
//! exchange whose key expressions the upstream instance evaluates per row (plain
//! fields are hashed straight from their row slots); operators that see the whole
//! stream (an unkeyed window or aggregate, a top-N per window) gather into one
//! instance; otherwise records are spread round-robin or forwarded instance to
//! instance. Its `Display` is `flowc compile --emit physical`, [`PhysicalPlan::dot`]
//! is `--emit dot` (Graphviz).

use crate::ir::{self, OpKind};
use flow_types::RecordType;
use std::fmt::{self, Write as _};
use std::sync::Arc;

/// How records reach a stage's instances from the stage before it.
#[derive(Clone, Debug)]
pub enum Exchange {
    /// Instance i sends to instance i (equal parallelism).
    Forward,
    /// Spread over all instances, batch by batch.
    Rebalance,
    /// By a hash of these key expressions over the upstream stage's output.
    Hash(Vec<(String, ir::Expr)>),
    /// Everything to one instance.
    Gather,
}

/// What a stage does.
#[derive(Clone, Debug)]
pub enum StageKind {
    /// Reads the pipeline's input (a source or a topic).
    Read(ir::Input),
    /// Operators of the pipeline, by index into `Pipeline::ops`: an optional stateful
    /// head, then fused stateless operators.
    Ops { head: Option<usize>, fused: Vec<usize> },
}

#[derive(Clone, Debug)]
pub struct Stage {
    /// Index in [`PhysicalPipeline::stages`].
    pub id: usize,
    pub kind: StageKind,
    /// How records arrive (none for the read stage).
    pub exchange: Option<Exchange>,
    pub parallelism: u32,
    /// The record type the stage's instances receive.
    pub input: Arc<RecordType>,
    /// The record type they emit.
    pub output: Arc<RecordType>,
    /// Second inputs of a join or union head, read beside the main input.
    pub side_inputs: Vec<ir::Input>,
}

#[derive(Clone, Debug)]
pub struct PhysicalPipeline {
    /// Index into `Program::pipelines`.
    pub pipeline: usize,
    pub name: String,
    /// In order; the last one writes the pipeline's outputs.
    pub stages: Vec<Stage>,
}

#[derive(Clone, Debug)]
pub struct PhysicalPlan<'p> {
    pub program: &'p ir::Program,
    pub pipelines: Vec<PhysicalPipeline>,
}

/// Whether an operator fuses into the stage before it (stateless, row by row).
pub fn is_fusable(kind: &OpKind) -> bool {
    matches!(kind, OpKind::Filter(_) | OpKind::Project(_))
}

/// Whether a stateful operator needs every record in one instance.
fn needs_gather(kind: &OpKind, keyed: bool) -> bool {
    match kind {
        OpKind::WindowAggregate { keys, .. } | OpKind::Aggregate { keys, .. } => keys.is_empty(),
        // A join's both sides must meet by key: without a key_by they meet in one instance.
        OpKind::TopN { .. } | OpKind::Pattern { .. } | OpKind::Dedup { .. } | OpKind::Join { .. } => !keyed,
        _ => false,
    }
}

/// The physical plan of `program` with `parallelism` instances per parallel stage.
pub fn physical(program: &ir::Program, parallelism: u32) -> PhysicalPlan<'_> {
    let n = parallelism.max(1);
    let pipelines = program
        .pipelines
        .iter()
        .enumerate()
        .map(|(pi, p)| PhysicalPipeline { pipeline: pi, name: p.name.clone(), stages: pipeline_stages(p, n) })
        .collect();
    PhysicalPlan { program, pipelines }
}

fn pipeline_stages(p: &ir::Pipeline, n: u32) -> Vec<Stage> {
    let mut stages = vec![Stage {
        id: 0,
        kind: StageKind::Read(p.input.clone()),
        exchange: None,
        parallelism: 1,
        input: p.input_schema.clone(),
        output: p.input_schema.clone(),
        side_inputs: Vec::new(),
    }];
    // The stage being filled, its exchange, and whether the stream is keyed there.
    let mut open: Option<Stage> = None;
    let mut keyed = false;
    // Windows and running aggregates need each key's records in source order: until the first
    // key_by, stages run as one instance (a round-robin spread would reorder them).
    let ordered = p.ops.iter().any(|o| matches!(o.kind, OpKind::WindowAggregate { .. } | OpKind::Aggregate { .. }));
    let mut input = p.input_schema.clone();
    let new_stage = |stages: &[Stage], exchange: Exchange, parallelism: u32, input: &Arc<RecordType>| Stage {
        id: stages.len(),
        kind: StageKind::Ops { head: None, fused: Vec::new() },
        exchange: Some(exchange),
        parallelism,
        input: input.clone(),
        output: input.clone(),
        side_inputs: Vec::new(),
    };
    for (oi, op) in p.ops.iter().enumerate() {
        match &op.kind {
            OpKind::KeyBy(keys) => {
                if let Some(s) = open.take() {
                    stages.push(s);
                }
                keyed = true;
                open = Some(new_stage(&stages, Exchange::Hash(keys.clone()), n, &input));
            }
            k if is_fusable(k) => {
                let s = open.get_or_insert_with(|| {
                    let prev = stages.last().map_or(1, |s| s.parallelism);
                    let par = if ordered && !keyed { prev } else { n };
                    let ex = if prev == par { Exchange::Forward } else { Exchange::Rebalance };
                    new_stage(&stages, ex, par, &input)
                });
                if let StageKind::Ops { fused, .. } = &mut s.kind {
                    fused.push(oi);
                }
                s.output = op.output.clone();
            }
            k => {
                // A stateful head starts a stage, unless the open one is empty (just
                // after a key_by's exchange) and can take it.
                let gather = needs_gather(k, keyed);
                let reuse = matches!(&open, Some(Stage { kind: StageKind::Ops { head: None, fused }, .. }) if fused.is_empty())
                    && !gather;
                let mut s = if reuse {
                    open.take().expect("open stage")
                } else {
                    if let Some(s) = open.take() {
                        stages.push(s);
                    }
                    let prev = stages.last().map_or(1, |s| s.parallelism);
                    let (ex, par) = if gather {
                        (Exchange::Gather, 1)
                    } else if prev == n {
                        (Exchange::Forward, n)
                    } else {
                        (Exchange::Rebalance, n)
                    };
                    new_stage(&stages, ex, par, &input)
                };
                s.kind = StageKind::Ops { head: Some(oi), fused: Vec::new() };
                s.output = op.output.clone();
                match k {
                    OpKind::Join { other, .. } => s.side_inputs.push(other.clone()),
                    OpKind::Union(others) => s.side_inputs.extend(others.iter().cloned()),
                    _ => {}
                }
                if matches!(k, OpKind::WindowAggregate { .. } | OpKind::Aggregate { .. }) {
                    // Results of a keyed aggregate stay with their key's instance;
                    // an unkeyed one has a single instance anyway.
                    keyed = keyed && !gather;
                }
                open = Some(s);
            }
        }
        input = op.output.clone();
    }
    if let Some(s) = open.take() {
        stages.push(s);
    }
    if stages.len() == 1 {
        // A pass-through pipeline still has a stage that writes (read stays I/O only).
        let ex = if n == 1 { Exchange::Forward } else { Exchange::Rebalance };
        stages.push(new_stage(&stages, ex, n, &input));
    }
    for (i, s) in stages.iter_mut().enumerate() {
        s.id = i;
    }
    stages
}

impl PhysicalPlan<'_> {
    fn stage_ops(&self, p: &PhysicalPipeline, s: &Stage) -> Vec<String> {
        let pipeline = &self.program.pipelines[p.pipeline];
        let text = |oi: usize| {
            let input = if oi == 0 { pipeline.input_schema.clone() } else { pipeline.ops[oi - 1].output.clone() };
            self.program.op_text(&pipeline.ops[oi], &input)
        };
        match &s.kind {
            StageKind::Read(ir::Input::Source(n)) => vec![format!("read source {n}")],
            StageKind::Read(ir::Input::Topic(t)) => vec![format!("read topic {t}")],
            StageKind::Ops { head, fused } => head.iter().chain(fused).map(|&oi| text(oi)).collect(),
        }
    }

    fn exchange_text(&self, p: &PhysicalPipeline, s: &Stage) -> String {
        match &s.exchange {
            None => String::new(),
            Some(Exchange::Forward) => "forward".into(),
            Some(Exchange::Rebalance) => "rebalance".into(),
            Some(Exchange::Gather) => "gather".into(),
            Some(Exchange::Hash(keys)) => {
                let prev = &p.stages[s.id - 1].output;
                let keys: Vec<String> = keys
                    .iter()
                    .map(|(n, e)| {
                        let shown = ir::ExprDisplay { expr: e, input: Some(prev), program: self.program }.to_string();
                        if shown == *n {
                            shown
                        } else {
                            format!("{n}: {shown}")
                        }
                    })
                    .collect();
                format!("hash({})", keys.join(", "))
            }
        }
    }

    fn writes(&self, p: &PhysicalPipeline) -> Vec<String> {
        let pipeline = &self.program.pipelines[p.pipeline];
        let last = &p.stages[p.stages.len() - 1].output;
        pipeline
            .outputs
            .iter()
            .map(|o| match &o.when {
                None => format!("write {}", o.target),
                Some(w) => format!(
                    "write {} when {}",
                    o.target,
                    ir::ExprDisplay { expr: w, input: Some(last), program: self.program }
                ),
            })
            .collect()
    }

    /// The plan as a Graphviz digraph: a cluster per pipeline, a node per stage
    /// (its fused operators and instance count), topics and sinks as shared nodes.
    pub fn dot(&self) -> String {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut d = String::from("digraph flow {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n");
        let mut externals: Vec<String> = Vec::new();
        let mut external = |d: &mut String, name: String, shape: &str| {
            if !externals.contains(&name) {
                let _ = writeln!(d, "  \"{}\" [shape={shape}];", esc(&name));
                externals.push(name);
            }
        };
        for p in &self.pipelines {
            let _ = writeln!(d, "  subgraph \"cluster_{}\" {{\n    label=\"pipeline {}\";", esc(&p.name), esc(&p.name));
            for s in &p.stages {
                let mut label = format!("stage {} (x{})\\l", s.id, s.parallelism);
                for line in self.stage_ops(p, s) {
                    let _ = write!(label, "{}\\l", esc(&line));
                }
                let _ = writeln!(d, "    \"{}#{}\" [label=\"{label}\"];", esc(&p.name), s.id);
            }
            d.push_str("  }\n");
            for s in &p.stages {
                if s.id > 0 {
                    let _ = writeln!(
                        d,
                        "  \"{0}#{1}\" -> \"{0}#{2}\" [label=\"{3}\"];",
                        esc(&p.name),
                        s.id - 1,
                        s.id,
                        esc(&self.exchange_text(p, s))
                    );
                }
                let mut inputs: Vec<&ir::Input> = s.side_inputs.iter().collect();
                if let StageKind::Read(i) = &s.kind {
                    inputs.push(i);
                }
                for i in inputs {
                    let (name, shape) = match i {
                        ir::Input::Source(n) => (format!("source {n}"), "cds"),
                        ir::Input::Topic(t) => (format!("topic {t}"), "cylinder"),
                    };
                    external(&mut d, name.clone(), shape);
                    let _ = writeln!(d, "  \"{}\" -> \"{}#{}\";", esc(&name), esc(&p.name), s.id);
                }
            }
            let pipeline = &self.program.pipelines[p.pipeline];
            let last = p.stages.len() - 1;
            for o in &pipeline.outputs {
                let (name, shape) = match &o.target {
                    ir::Target::Topic(t) => (format!("topic {t}"), "cylinder"),
                    ir::Target::Sink(s) => (format!("sink {s}"), "cds"),
                };
                external(&mut d, name.clone(), shape);
                let label = if o.when.is_some() { " [label=\"when\"]" } else { "" };
                let _ = writeln!(d, "  \"{}#{last}\" -> \"{}\"{label};", esc(&p.name), esc(&name));
            }
        }
        d.push_str("}\n");
        d
    }
}

impl fmt::Display for PhysicalPlan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.pipelines {
            writeln!(f, "pipeline {}", p.name)?;
            for s in &p.stages {
                let from = match &s.exchange {
                    None => String::new(),
                    Some(_) => format!(" <- {}", self.exchange_text(p, s)),
                };
                writeln!(f, "  stage {} x{}{from}", s.id, s.parallelism)?;
                if let StageKind::Ops { head: Some(_), .. } = &s.kind {
                    let ops = self.stage_ops(p, s);
                    writeln!(f, "    head  {}", ops[0])?;
                    for op in &ops[1..] {
                        writeln!(f, "    fused {op}")?;
                    }
                } else {
                    for op in self.stage_ops(p, s) {
                        let tag = if matches!(s.kind, StageKind::Read(_)) { "" } else { "fused " };
                        writeln!(f, "    {tag}{op}")?;
                    }
                }
                for i in &s.side_inputs {
                    match i {
                        ir::Input::Source(n) => writeln!(f, "    side  source {n}")?,
                        ir::Input::Topic(t) => writeln!(f, "    side  topic {t}")?,
                    }
                }
                if s.id == p.stages.len() - 1 {
                    for w in self.writes(p) {
                        writeln!(f, "    {w}")?;
                    }
                }
                writeln!(f, "    emits {}", ir::record_fields(&s.output))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(src: &str, n: u32) -> String {
        let c = crate::compile_str("t.flow", src);
        assert!(c.diagnostics.iter().all(|d| !d.is_error()), "{:?}", c.diagnostics);
        let program = c.program.expect("program");
        physical(&program, n).to_string()
    }

    const SRC: &str = r#"
schema T { id: string, amount: int, at: timestamp }
source s: T = file("in.jsonl", format: json)
sink o: T = stdout(format: json)
pipeline p = from s | where amount > 1 | select { id, amount: amount * 2, at } -> o
pipeline k = from s | where amount > 0 | key_by id | where amount < 100 -> o
"#;

    #[test]
    fn stateless_chain_fuses_into_one_stage() {
        let text = plan_of(SRC, 1);
        let p = text.split("pipeline k").next().expect("p");
        assert_eq!(p.matches("stage ").count(), 2, "{text}");
        assert!(p.contains("stage 1 x1 <- forward"), "{text}");
        assert_eq!(p.matches("fused").count(), 2, "{text}");
    }

    #[test]
    fn key_by_becomes_a_hash_exchange() {
        let text = plan_of(SRC, 4);
        let k = text.split("pipeline k").nth(1).expect("k");
        assert!(k.contains("stage 1 x4 <- rebalance"), "{text}");
        assert!(k.contains("stage 2 x4 <- hash(id)"), "{text}");
    }

    #[test]
    fn records_keep_source_order_until_the_key_by_of_a_window() {
        let src = r#"
schema T { id: string, amount: int, at: timestamp }
source s: T = file("in.jsonl", format: json) event_time at watermark 1s
sink o = stdout(format: json)
pipeline w = from s | where amount > 1 | key_by id | window tumbling(1m) | aggregate { n: count() } | where n > 1 -> o
"#;
        let text = plan_of(src, 4);
        assert!(text.contains("stage 1 x1 <- forward"), "the filter before key_by is one instance: {text}");
        assert!(text.contains("stage 2 x4 <- hash(id)"), "{text}");
    }

    #[test]
    fn dot_has_a_node_per_stage_and_edges_to_outputs() {
        let c = crate::compile_str("t.flow", SRC);
        let program = c.program.expect("program");
        let dot = physical(&program, 2).dot();
        assert!(dot.starts_with("digraph flow {"));
        assert!(dot.contains("\"p#1\""));
        assert!(dot.contains("\"k#2\" -> \"sink o\""));
        assert!(dot.contains("\"source s\" -> \"p#0\""));
        assert_eq!(dot.matches("\"source s\" [shape=cds]").count(), 1);
    }
}
