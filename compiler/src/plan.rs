//! The logical plan: the program as a dataflow graph.
//!
//! [`plan`] turns a typed [`ir::Program`] into [`Plan`] nodes: reads of sources and
//! topics, the operators of each pipeline, hash exchanges where `key_by` (or a join)
//! repartitions, and writes to topics and sinks. Each node knows its output schema
//! and partitioning. Its `Display` is `flowc compile --emit plan`. It knows nothing of
//! physical execution (parallelism, fusion): that is the physical plan's job.

use crate::ir::{self, Record};
use std::fmt::{self, Write as _};

pub type NodeId = usize;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Partitioning {
    /// Whatever the input has (round-robin from an unkeyed source).
    Any,
    /// By a hash of these key names.
    Hash(Vec<String>),
    /// One instance sees everything (an unkeyed window).
    Single,
}

#[derive(Clone, Debug)]
pub enum NodeOp {
    ReadSource(String),
    ReadTopic(String),
    /// Repartition by a hash of the keys; no keys: gather into one instance.
    Exchange(Vec<String>),
    /// Operator `op` of pipeline `pipeline` (indexes into the program).
    Op {
        pipeline: usize,
        op: usize,
    },
    Write {
        target: ir::Target,
        when: Option<ir::Expr>,
    },
}

#[derive(Clone, Debug)]
pub struct Node {
    pub id: NodeId,
    pub op: NodeOp,
    pub inputs: Vec<NodeId>,
    pub schema: Record,
    pub partitioning: Partitioning,
    pub pipeline: String,
}

#[derive(Clone, Debug)]
pub struct Plan<'p> {
    pub program: &'p ir::Program,
    pub nodes: Vec<Node>,
}

/// Builds the logical plan of a checked program.
pub fn plan(program: &ir::Program) -> Plan<'_> {
    let mut nodes: Vec<Node> = Vec::new();
    let add = |nodes: &mut Vec<Node>,
               op: NodeOp,
               inputs: Vec<NodeId>,
               schema: Record,
               partitioning: Partitioning,
               pipeline: &str| {
        let id = nodes.len();
        nodes.push(Node { id, op, inputs, schema, partitioning, pipeline: pipeline.to_string() });
        id
    };
    for (pi, p) in program.pipelines.iter().enumerate() {
        let read = |i: &ir::Input| match i {
            ir::Input::Source(n) => NodeOp::ReadSource(n.clone()),
            ir::Input::Topic(n) => NodeOp::ReadTopic(n.clone()),
        };
        let input_part = |i: &ir::Input| match i {
            ir::Input::Topic(n) => program
                .topics
                .iter()
                .find(|t| t.name == *n)
                .and_then(|t| t.key.map(|k| Partitioning::Hash(vec![t.schema.fields[k].name.clone()])))
                .unwrap_or(Partitioning::Any),
            ir::Input::Source(_) => Partitioning::Any,
        };
        let mut part = input_part(&p.input);
        // A key_by after the last window keys `top` per key; otherwise it ranks per window.
        let mut keyed_after_window = false;
        let mut cur = add(&mut nodes, read(&p.input), vec![], p.input_schema.clone(), part.clone(), &p.name);
        for (oi, op) in p.ops.iter().enumerate() {
            let mut inputs = vec![cur];
            match &op.kind {
                ir::OpKind::KeyBy(keys) => {
                    let names: Vec<String> = keys.iter().map(|(n, _)| n.clone()).collect();
                    part = Partitioning::Hash(names.clone());
                    keyed_after_window = true;
                    let schema = nodes[cur].schema.clone();
                    cur = add(&mut nodes, NodeOp::Exchange(names), vec![cur], schema, part.clone(), &p.name);
                    continue;
                }
                ir::OpKind::WindowAggregate { keys, .. } => {
                    keyed_after_window = false;
                    if keys.is_empty() {
                        part = Partitioning::Single;
                    }
                }
                ir::OpKind::Aggregate { keys, .. } if keys.is_empty() => part = Partitioning::Single,
                ir::OpKind::TopN { .. } if !keyed_after_window => {
                    // Top per window: all of a window's results meet in one instance.
                    part = Partitioning::Single;
                    let schema = nodes[cur].schema.clone();
                    cur = add(&mut nodes, NodeOp::Exchange(Vec::new()), vec![cur], schema, part.clone(), &p.name);
                    inputs = vec![cur];
                }
                ir::OpKind::Join { other, .. } => {
                    let o_schema = program
                        .sources
                        .iter()
                        .find(|s| matches!(other, ir::Input::Source(n) if *n == s.name))
                        .map(|s| s.schema.clone())
                        .or_else(|| {
                            program
                                .topics
                                .iter()
                                .find(|t| matches!(other, ir::Input::Topic(n) if *n == t.name))
                                .map(|t| t.schema.clone())
                        });
                    if let Some(s) = o_schema {
                        let r = add(&mut nodes, read(other), vec![], s, input_part(other), &p.name);
                        inputs.push(r);
                    }
                    part = Partitioning::Any;
                }
                ir::OpKind::Union(others) => {
                    for o in others {
                        let s = program
                            .sources
                            .iter()
                            .find(|s| matches!(o, ir::Input::Source(n) if *n == s.name))
                            .map(|s| s.schema.clone())
                            .or_else(|| {
                                program
                                    .topics
                                    .iter()
                                    .find(|t| matches!(o, ir::Input::Topic(n) if *n == t.name))
                                    .map(|t| t.schema.clone())
                            });
                        if let Some(s) = s {
                            let r = add(&mut nodes, read(o), vec![], s, input_part(o), &p.name);
                            inputs.push(r);
                        }
                    }
                    part = Partitioning::Any;
                }
                _ => {}
            }
            cur =
                add(&mut nodes, NodeOp::Op { pipeline: pi, op: oi }, inputs, op.output.clone(), part.clone(), &p.name);
        }
        let last_schema = nodes[cur].schema.clone();
        for o in &p.outputs {
            add(
                &mut nodes,
                NodeOp::Write { target: o.target.clone(), when: o.when.clone() },
                vec![cur],
                last_schema.clone(),
                part.clone(),
                &p.name,
            );
        }
    }
    Plan { program, nodes }
}

impl fmt::Display for Partitioning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partitioning::Any => f.write_str("any"),
            Partitioning::Hash(k) => write!(f, "hash({})", k.join(", ")),
            Partitioning::Single => f.write_str("single"),
        }
    }
}

impl fmt::Display for Plan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut current = None;
        for n in &self.nodes {
            if current != Some(&n.pipeline) {
                writeln!(f, "pipeline {}", n.pipeline)?;
                current = Some(&n.pipeline);
            }
            let mut line = String::new();
            match &n.op {
                NodeOp::ReadSource(s) => {
                    let _ = write!(line, "read source {s}");
                }
                NodeOp::ReadTopic(t) => {
                    let _ = write!(line, "read topic {t}");
                }
                NodeOp::Exchange(k) if k.is_empty() => line.push_str("exchange single"),
                NodeOp::Exchange(k) => {
                    let _ = write!(line, "exchange hash({})", k.join(", "));
                }
                NodeOp::Op { pipeline, op } => {
                    let p = &self.program.pipelines[*pipeline];
                    let input = if *op == 0 { p.input_schema.clone() } else { p.ops[op - 1].output.clone() };
                    line.push_str(&self.program.op_text(&p.ops[*op], &input));
                }
                NodeOp::Write { target, when } => {
                    let _ = write!(line, "write {target}");
                    if let Some(w) = when {
                        let _ = write!(
                            line,
                            " when {}",
                            ir::ExprDisplay { expr: w, input: Some(&n.schema), program: self.program }
                        );
                    }
                }
            }
            let inputs: Vec<String> = n.inputs.iter().map(|i| format!("#{i}")).collect();
            let from = if inputs.is_empty() { String::new() } else { format!(" <- {}", inputs.join(", ")) };
            writeln!(f, "  #{} {line}{from}", n.id)?;
            writeln!(f, "      schema {} partitioning {}", ir::record_fields(&n.schema), n.partitioning)?;
        }
        Ok(())
    }
}
