//! Stateful stage heads: what a stage instance runs before its fused operators.
//!
//! [`HeadRt`] is built once per stage from the pipeline's `window ... | aggregate`
//! operator: the [`WindowSpec`] its instances share, an optional *pre-projection* (a
//! JIT-compiled `select` that computes key expressions and aggregate arguments that are
//! not plain fields, so the window operator reads only slots), the *finishing* stage
//! (a `select` from the raw results — keys, bounds, aggregate slots, revision — to the
//! operator's output, the expressions around aggregates, fused with the `where` and
//! `select` operators after it) and the late output.

use super::io::Output;
use super::stamp::{self, STAMP_FIELD};
use super::window::{result_record, WindowSpec};
use super::RunError;
use flow_compiler::exec::stage::{self, Stage, StageSpec};
use flow_compiler::ir::{self, Expr, ExprKind, OpKind};
use flow_compiler::source::Span;
use flow_types::row::{Batch, BatchBuilder, Layout};
use flow_types::{Field, RecordType, Type};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// A stage's stateful head, shared by its instances.
pub(crate) struct HeadRt {
    pub spec: Arc<WindowSpec>,
    /// A window (else an unwindowed keyed aggregate, `aggregate.rs`).
    pub windowed: bool,
    /// An unwindowed aggregate's `ttl`, and whether it runs in event time.
    pub ttl: Option<i64>,
    pub event_time: bool,
    /// Computes keys and arguments that are not plain fields (None: none are).
    pub pre: Option<Box<dyn Stage>>,
    /// The rows the window operator reads (the pre-projection's output, or the input).
    pub op_input: Arc<Layout>,
    /// Raw results -> the head's output -> the fused operators after it.
    pub finish: Box<dyn Stage>,
    /// Where late records go, and their shape there (the input without `$wm`).
    pub late: Option<Output>,
    pub late_layout: Arc<Layout>,
    /// The window operator's span, for errors in aggregates.
    pub span: Span,
    pub late_count: AtomicU64,
    pub late_routed: AtomicU64,
    pub open_windows: AtomicU64,
}

/// Rewrites `Agg(i)` into `Field(base + i)`.
fn aggs_to_fields(e: &mut Expr, base: usize) {
    if let ExprKind::Agg(i) = e.kind {
        e.kind = ExprKind::Field(base + i);
        return;
    }
    e.for_each_child_mut(&mut |c| aggs_to_fields(c, base));
}

fn field(i: usize, ty: Type, span: Span) -> Expr {
    Expr { kind: ExprKind::Field(i), ty, span }
}

fn compile(spec: &StageSpec, program: &ir::Program, jit: bool, what: &str) -> Result<Box<dyn Stage>, RunError> {
    let r = if jit { stage::jit(spec, program) } else { stage::interpreted(spec, program) };
    r.map_err(|e| RunError::Setup(format!("{what}: {e}")))
}

impl HeadRt {
    /// The head of a stage: operator `hi` of `p` (stamped program), whose stage runs
    /// operators `fused` after it and receives records of `input`.
    pub fn new(
        program: &ir::Program,
        p: &ir::Pipeline,
        hi: usize,
        fused: &[usize],
        input: &Arc<RecordType>,
        jit: bool,
        late: Option<Output>,
    ) -> Result<HeadRt, RunError> {
        let op = &p.ops[hi];
        let (window, keys, allowed_lateness_ms, emit_every_ms, aggs, outputs, ttl) = match &op.kind {
            OpKind::WindowAggregate { window, keys, allowed_lateness_ms, emit_every_ms, aggs, outputs, .. } => {
                (Some(*window), keys, *allowed_lateness_ms, *emit_every_ms, aggs, outputs, None)
            }
            OpKind::Aggregate { keys, aggs, outputs, ttl_ms } => (None, keys, 0, None, aggs, outputs, *ttl_ms),
            _ => {
                return Err(RunError::Setup(format!(
                    "pipeline `{}`: this stateful operator is not supported yet",
                    p.name
                )))
            }
        };
        let name = &p.name;
        let in_layout = Layout::new(input.clone());
        // Key expressions over this operator's input: the key_by's, when only filters
        // stand between (the record is the same); else the keys by name.
        let kb = p.ops[..hi].iter().rposition(|o| matches!(o.kind, OpKind::KeyBy(_)));
        let key_exprs: Vec<(String, Expr)> = match kb {
            None => Vec::new(),
            Some(k) if p.ops[k + 1..hi].iter().all(|o| matches!(o.kind, OpKind::Filter(_))) => match &p.ops[k].kind {
                OpKind::KeyBy(ks) => ks.clone(),
                _ => Vec::new(),
            },
            Some(_) => keys
                .iter()
                .map(|k| {
                    let i = input.index_of(k).ok_or_else(|| {
                        RunError::Setup(format!("pipeline `{name}`: key `{k}` is not a field where the window is"))
                    })?;
                    Ok((k.clone(), field(i, input.fields[i].ty.clone(), op.span)))
                })
                .collect::<Result<_, RunError>>()?,
        };
        // Event time at the window's input.
        let time = if hi == 0 {
            match &p.input {
                ir::Input::Source(s) => {
                    program.sources.iter().find(|x| x.name == *s).and_then(|x| x.event_time.clone())
                }
                ir::Input::Topic(t) => program.topics.iter().find(|x| x.name == *t).and_then(|x| x.event_time.clone()),
            }
        } else {
            p.ops[hi - 1].event_time.clone()
        };
        // An unwindowed aggregate needs event time only for an event-time ttl.
        let event_time = stamp::has_stamp(input);
        if window.is_some() && !event_time {
            return Err(RunError::Setup(format!("pipeline `{name}`: the window's input carries no watermarks")));
        }
        let time = match time {
            Some(t) => t,
            None if window.is_none() => ir::EventTime { field: 0, offset_ms: 0 },
            None => return Err(RunError::Setup(format!("pipeline `{name}`: the window's input has no event time"))),
        };
        // Without stamps, the stamp "field" is never read (processing-time ttl).
        let stamp_at = input.fields.len() - 1;
        let plain = key_exprs.iter().all(|(_, e)| matches!(e.kind, ExprKind::Field(_)))
            && aggs.iter().all(|a| a.arg.as_ref().is_none_or(|e| matches!(e.kind, ExprKind::Field(_))));
        let field_of = |e: &Expr| match e.kind {
            ExprKind::Field(i) => i,
            _ => usize::MAX,
        };
        let (pre, op_input, key_fields, args, ts_field, stamp_field) = if plain {
            let args: Vec<Option<usize>> = aggs.iter().map(|a| a.arg.as_ref().map(field_of)).collect();
            let kf = key_exprs.iter().map(|(_, e)| field_of(e)).collect();
            (None, Arc::new(in_layout.clone()), kf, args, time.field, stamp_at)
        } else {
            let mut items: Vec<(String, Expr)> = Vec::new();
            for (i, (_, e)) in key_exprs.iter().enumerate() {
                items.push((format!("$k{i}"), e.clone()));
            }
            let mut args = Vec::new();
            for (i, a) in aggs.iter().enumerate() {
                args.push(a.arg.as_ref().map(|e| {
                    items.push((format!("$a{i}"), e.clone()));
                    items.len() - 1
                }));
            }
            let tf = items.len();
            if event_time {
                items.push(("$ts".into(), field(time.field, input.fields[time.field].ty.clone(), op.span)));
                items.push((STAMP_FIELD.into(), field(stamp_at, Type::timestamp(), op.span)));
            }
            let rec = Arc::new(RecordType {
                name: None,
                fields: items.iter().map(|(n, e)| Field { name: n.clone(), ty: e.ty.clone() }).collect(),
            });
            let spec = StageSpec {
                input: input.clone(),
                ops: vec![ir::Op {
                    kind: OpKind::Project(items),
                    output: rec.clone(),
                    event_time: None,
                    span: op.span,
                }],
            };
            let pre = compile(&spec, program, jit, &format!("pipeline `{name}`: the window's keys and arguments"))?;
            let n = rec.fields.len();
            let (tf, sf) = if event_time { (tf, n - 1) } else { (0, 0) };
            (Some(pre), Arc::new(Layout::new(rec)), (0..key_exprs.len()).collect(), args, tf, sf)
        };
        let mut acc = super::agg::AccLayout::new(aggs, &args, &op_input)
            .map_err(|e| RunError::Setup(format!("pipeline `{name}`: {e}")))?;
        if jit {
            acc =
                acc.compiled(&op_input).map_err(|e| RunError::Setup(format!("pipeline `{name}`: aggregates: {e}")))?;
        }
        let key_fields_typed: Vec<Field> =
            key_exprs.iter().map(|(n, e)| Field { name: n.clone(), ty: e.ty.clone() }).collect();
        let raw = result_record(&key_fields_typed, aggs);
        let nk = key_exprs.len();
        let rev = nk + 2 + aggs.len();
        // The finishing select: the operator's declared output from the raw results.
        let mut items: Vec<(String, Expr)> = Vec::new();
        let bounds = if window.is_some() { 2 } else { 0 };
        for (i, f) in raw.fields[..nk + bounds].iter().enumerate() {
            items.push((f.name.clone(), field(i, f.ty.clone(), op.span)));
        }
        for (n, e) in outputs {
            let mut e = e.clone();
            aggs_to_fields(&mut e, nk + 2);
            items.push((n.clone(), e));
        }
        for f in &op.output.fields[items.len()..] {
            if f.name == "revision" {
                items.push((f.name.clone(), field(rev, Type::int(), op.span)));
            } else if f.name == STAMP_FIELD {
                items.push((f.name.clone(), field(rev + 1, Type::timestamp(), op.span)));
            }
        }
        if items.len() != op.output.fields.len() {
            return Err(RunError::Setup(format!("pipeline `{name}`: the window's output does not match its results")));
        }
        let mut ops =
            vec![ir::Op { kind: OpKind::Project(items), output: op.output.clone(), event_time: None, span: op.span }];
        ops.extend(fused.iter().map(|&i| p.ops[i].clone()));
        let finish = compile(&StageSpec { input: raw.clone(), ops }, program, jit, &format!("pipeline `{name}`"))?;
        let spec = WindowSpec {
            window: window.unwrap_or(ir::Window::Tumbling { size_ms: i64::MAX }),
            lateness: allowed_lateness_ms,
            emit_every: emit_every_ms,
            key_fields,
            ts_field,
            ts_offset: time.offset_ms,
            stamp_field,
            acc,
            result: Arc::new(Layout::new(raw)),
        };
        let mut unstamped = (**input).clone();
        unstamped.fields.pop();
        Ok(HeadRt {
            spec: Arc::new(spec),
            windowed: window.is_some(),
            ttl,
            event_time,
            pre,
            op_input,
            finish,
            late,
            late_layout: Arc::new(Layout::new(Arc::new(unstamped))),
            span: op.span,
            late_count: AtomicU64::new(0),
            late_routed: AtomicU64::new(0),
            open_windows: AtomicU64::new(0),
        })
    }

    /// `rows` of `batch` (stamped) in the late output's shape.
    pub fn late_rows(&self, batch: &Batch, rows: &[usize]) -> Result<Batch, RunError> {
        let mut b = BatchBuilder::new(self.late_layout.clone());
        for &r in rows {
            let mut v = batch.row(r).values();
            v.pop();
            b.push_values(&v).map_err(|e| RunError::Setup(format!("late record: {e:?}")))?;
        }
        Ok(b.finish())
    }
}
