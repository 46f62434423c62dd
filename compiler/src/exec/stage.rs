//! Fused stateless stages: a chain of filters and projections run over whole batches.
//!
//! [`StageSpec`] names the chain; [`interpreted`] and [`jit`] build a [`Stage`] from
//! it. Both take the output builder from [`output_builder`], whose arena starts with
//! the input's arena: strings a projection moves unchanged keep their offsets and are
//! not copied (see `flow_types::row`).
//!
//! Errors: [`Stage::run`] stops at the first row whose expressions fail. Rows before it
//! are in `out`; the error carries the failing row's index, so the runtime can send
//! that record to the dead-letter output and resume with `input.slice_from(row + 1)`.

use super::interp::{eval_in, EvalCtx, Fields};
use super::{CompileError, EvalError};
use crate::ir::{self, Expr, ExprKind, OpKind};
use flow_types::row::{Batch, BatchBuilder, Layout, RowError, SlotKind};
use flow_types::{RecordType, Value};
use std::sync::Arc;

/// A chain of consecutive stateless operators (`Filter`, `Project`) over `input`.
#[derive(Clone, Debug)]
pub struct StageSpec {
    pub input: Arc<RecordType>,
    pub ops: Vec<ir::Op>,
}

impl StageSpec {
    /// The record type the stage emits.
    pub fn output(&self) -> Arc<RecordType> {
        self.ops.last().map_or_else(|| self.input.clone(), |op| op.output.clone())
    }
}

/// The maximal runs of consecutive filters and projections of a pipeline, in order,
/// each with its input record (what a physical plan fuses into one stage).
pub fn fused_stages(p: &ir::Pipeline) -> Vec<StageSpec> {
    let mut out = Vec::new();
    let mut input = p.input_schema.clone();
    let mut run: Option<StageSpec> = None;
    for op in &p.ops {
        if matches!(op.kind, OpKind::Filter(_) | OpKind::Project(_)) {
            run.get_or_insert_with(|| StageSpec { input: input.clone(), ops: Vec::new() }).ops.push(op.clone());
        } else if let Some(r) = run.take() {
            out.push(r);
        }
        input = op.output.clone();
    }
    out.extend(run);
    out
}

/// The fields of its input a pipeline reads, when that is known to be fewer than all:
/// those its leading filters and `key_by`s use, and then its first projection, or its
/// first aggregate (windowed or not: its keys and arguments) when that routes no late
/// records anywhere. `None` when the record can leave the pipeline whole (no such
/// operator comes first, so a sink, a window's late output or another operator may
/// take all of it). A source may leave the other fields unfilled (projection
/// push-down); the event time is the caller's to add.
pub fn input_fields_read(p: &ir::Pipeline) -> Option<Vec<bool>> {
    let n = p.input_schema.fields.len();
    let mut used = vec![false; n];
    for op in &p.ops {
        match &op.kind {
            OpKind::Filter(c) => mark_fields(c, &mut used),
            OpKind::Project(items) => {
                items.iter().for_each(|(_, e)| mark_fields(e, &mut used));
                return Some(used);
            }
            // key_by passes its input on as it is (its names label the keys).
            OpKind::KeyBy(keys) if op.output.fields == p.input_schema.fields => {
                keys.iter().for_each(|(_, e)| mark_fields(e, &mut used));
                if let Some(et) = &op.event_time {
                    *used.get_mut(et.field)? = true;
                }
            }
            OpKind::WindowAggregate { late: None, aggs, .. } | OpKind::Aggregate { aggs, .. } => {
                aggs.iter().filter_map(|a| a.arg.as_ref()).for_each(|e| mark_fields(e, &mut used));
                return Some(used);
            }
            _ => return None,
        }
    }
    None
}

/// Marks in `used` the input fields `e` reads.
pub(crate) fn mark_fields(e: &Expr, used: &mut [bool]) {
    if let ExprKind::Field(i) = e.kind {
        if let Some(u) = used.get_mut(i) {
            *u = true;
        }
    }
    for c in children(e) {
        mark_fields(c, used);
    }
}

/// A compiled or interpreted stage.
pub trait Stage: Send + Sync {
    /// Runs every row of `input`, appending the rows that pass to `out` (made by
    /// [`output_builder`]; any builder of [`Stage::output_layout`] works, at the cost
    /// of copying strings).
    fn run(&self, input: &Batch, out: &mut BatchBuilder) -> Result<(), EvalError>;
    fn output_layout(&self) -> Arc<Layout>;
}

/// The builder a stage's output for `input` should go to: its arena starts with the
/// input's arena, shared.
pub fn output_builder(stage: &dyn Stage, input: &Batch) -> BatchBuilder {
    BatchBuilder::with_base(stage.output_layout(), input.arena_bytes())
}

/// Whether `out` shares `input`'s arena (so input offsets are valid in it).
pub(crate) fn shares_arena(input: &Batch, out: &mut BatchBuilder) -> bool {
    let arena_len = input.base.len() + input.extra.len();
    let base = out.base();
    if base.len() != arena_len {
        return false;
    }
    if arena_len == 0 {
        return true;
    }
    let p = base.as_ptr();
    (input.extra.is_empty() && p == input.base.as_ptr()) || (input.base.is_empty() && p == input.extra.as_ptr())
}

/// Checks that the chain is stateless and its expressions stay within one record.
pub(crate) fn validate(spec: &StageSpec) -> Result<(), CompileError> {
    for op in &spec.ops {
        let exprs: Vec<&Expr> = match &op.kind {
            OpKind::Filter(e) => vec![e],
            OpKind::Project(items) => items.iter().map(|(_, e)| e).collect(),
            _ => {
                return Err(CompileError {
                    span: op.span,
                    message: "only filters and projections can be fused into a stateless stage".into(),
                })
            }
        };
        for e in exprs {
            check_expr(e)?;
        }
    }
    Ok(())
}

fn check_expr(e: &Expr) -> Result<(), CompileError> {
    let bad = |what: &str| Err(CompileError { span: e.span, message: format!("{what} in a stateless stage") });
    match &e.kind {
        ExprKind::Step(_) => return bad("a pattern step"),
        ExprKind::Agg(_) => return bad("an aggregate"),
        _ => {}
    }
    for c in children(e) {
        check_expr(c)?;
    }
    Ok(())
}

/// The direct subexpressions of `e`.
pub(crate) fn children(e: &Expr) -> Vec<&Expr> {
    match &e.kind {
        ExprKind::Literal(_) | ExprKind::Field(_) | ExprKind::Param(_) | ExprKind::Step(_) | ExprKind::Agg(_) => {
            vec![]
        }
        ExprKind::GetField(x, _) | ExprKind::SafeGetField(x, _) | ExprKind::Unary(_, x) | ExprKind::Cast(x) => {
            vec![x]
        }
        ExprKind::IsNull { expr, .. } => vec![expr],
        ExprKind::Index(a, b) | ExprKind::Binary(_, a, b) => vec![a, b],
        ExprKind::Call(_, args) | ExprKind::CallFn(_, args) | ExprKind::List(args) | ExprKind::Record(args) => {
            args.iter().collect()
        }
        ExprKind::If(a, b, c) => vec![a, b, c],
        ExprKind::Case { arms, otherwise } => {
            arms.iter().flat_map(|(w, t)| [w, t]).chain(otherwise.as_deref()).collect()
        }
        ExprKind::In { expr, list, .. } => std::iter::once(&**expr).chain(list).collect(),
    }
}

/// The stage run by the reference interpreter.
pub fn interpreted(spec: &StageSpec, program: &ir::Program) -> Result<Box<dyn Stage>, CompileError> {
    validate(spec)?;
    let out_layout = Arc::new(Layout::new(spec.output()));
    let in_layout = Layout::new(spec.input.clone());
    // Output fields that are input fields unchanged (no projection before the last
    // one): their string slots are copied as spans.
    let mut raw: Vec<Option<usize>> = (0..in_layout.len()).map(Some).collect();
    let mut projects = 0;
    for op in &spec.ops {
        if let OpKind::Project(items) = &op.kind {
            projects += 1;
            raw = items
                .iter()
                .map(|(_, e)| match e.kind {
                    ExprKind::Field(i) if projects == 1 => Some(i),
                    _ => None,
                })
                .collect();
        }
    }
    Ok(Box::new(Interpreted {
        ops: spec.ops.clone(),
        fns: ir::Program { fns: program.fns.clone(), ..ir::Program::default() },
        out_layout,
        raw,
    }))
}

struct Interpreted {
    ops: Vec<ir::Op>,
    /// Only the fns of the program.
    fns: ir::Program,
    out_layout: Arc<Layout>,
    raw: Vec<Option<usize>>,
}

impl Interpreted {
    /// Runs the chain on one row: `None` when a filter drops it.
    fn row_values(&self, row: &flow_types::row::RowRef) -> Result<Option<Vec<Value>>, EvalError> {
        let ctx = EvalCtx::new(&self.fns);
        let mut cur: Option<Vec<Value>> = None;
        for op in &self.ops {
            let fields: &dyn Fields = match &cur {
                Some(v) => v,
                None => row,
            };
            match &op.kind {
                OpKind::Filter(c) => {
                    if eval_in(c, fields, &ctx)? != Value::Bool(true) {
                        return Ok(None);
                    }
                }
                OpKind::Project(items) => {
                    let vals = items.iter().map(|(_, e)| eval_in(e, fields, &ctx)).collect::<Result<Vec<_>, _>>()?;
                    cur = Some(vals);
                }
                _ => unreachable!("validated"),
            }
        }
        Ok(Some(cur.unwrap_or_else(|| row.values())))
    }
}

impl Stage for Interpreted {
    fn run(&self, input: &Batch, out: &mut BatchBuilder) -> Result<(), EvalError> {
        let zero_copy = shares_arena(input, out);
        for i in 0..input.len {
            let row = input.row(i);
            let vals = match self.row_values(&row) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(mut e) => {
                    e.row = i;
                    return Err(e);
                }
            };
            let r = out.push_row();
            for (f, v) in vals.iter().enumerate() {
                let kind = self.out_layout.slot_kinds[f];
                let res = match self.raw[f] {
                    Some(j) if zero_copy && matches!(kind, SlotKind::Str | SlotKind::Encoded) && !row.is_null(j) => {
                        let o = row.batch.layout.offsets[j] as usize;
                        let s = &row.bytes[o..o + 8];
                        let off = u32::from_le_bytes(s[0..4].try_into().expect("4 bytes"));
                        let len = u32::from_le_bytes(s[4..8].try_into().expect("4 bytes"));
                        out.set_span(r, f, off, len);
                        Ok(())
                    }
                    _ => out.set_value(r, f, v),
                };
                if let Err(e) = res {
                    out.pop_row();
                    let span = self.ops.last().map(|o| o.span).unwrap_or_default();
                    let message = match e {
                        RowError::ArenaFull => "batch arena full".to_string(),
                        RowError::Type { field } => format!("value of field {field} does not fit its type"),
                    };
                    return Err(EvalError { span, message, row: i });
                }
            }
        }
        Ok(())
    }

    fn output_layout(&self) -> Arc<Layout> {
        self.out_layout.clone()
    }
}

/// The stage compiled to native code by cranelift (see [`super::codegen`]).
pub fn jit(spec: &StageSpec, program: &ir::Program) -> Result<Box<dyn Stage>, CompileError> {
    validate(spec)?;
    Ok(Box::new(super::codegen::compile(spec, program, super::codegen::Options::default())?))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flow_types::row::BatchBuilder;

    /// The stage of pipeline `p` in `src` (all its ops).
    pub(crate) fn spec_of(src: &str) -> (StageSpec, ir::Program) {
        let c = crate::compile_str("t.flow", src);
        assert!(!c.has_errors(), "{:?}", c.diagnostics.iter().map(|d| d.message.clone()).collect::<Vec<_>>());
        let p = c.program.expect("program");
        let pl = &p.pipelines[0];
        (StageSpec { input: pl.input_schema.clone(), ops: pl.ops.clone() }, p)
    }

    pub(crate) const TXN: &str =
        "schema T { id: string, amount: decimal(12, 2), n: int?, price: float, ts: timestamp }\n\
        source s: T = stdin(format: json)\nsink o = stdout(format: json)\n";

    pub(crate) fn txn_batch(rows: &[Vec<Value>], spec: &StageSpec) -> Batch {
        let mut b = BatchBuilder::new(Arc::new(Layout::new(spec.input.clone())));
        for r in rows {
            b.push_values(r).unwrap();
        }
        b.finish()
    }

    pub(crate) fn row(id: &str, amount: i128, n: Option<i64>, price: f64) -> Vec<Value> {
        vec![
            Value::String(id.into()),
            Value::Decimal { units: amount, scale: 2 },
            n.map_or(Value::Null, Value::Int),
            Value::Float(price),
            Value::Timestamp(1_700_000_000_000),
        ]
    }

    #[test]
    fn fields_read_stop_at_the_first_projection() {
        let read = |ops: &str| {
            let (_, p) = spec_of(&format!("{TXN}pipeline p = from s {ops} -> o"));
            input_fields_read(&p.pipelines[0])
        };
        // id, amount, n, price, ts: the filter reads n, the projection id and price.
        assert_eq!(
            read("| where n > 1 | select { id, p2: price * 2.0 } | where p2 > 1.0"),
            Some(vec![true, false, true, true, false])
        );
        // No projection, or another operator first: the record may leave whole.
        assert_eq!(read("| where n > 1"), None);
        assert_eq!(read(""), None);
        // An aggregate reads its keys and arguments (and, windowed, the event time,
        // which the caller adds), unless late records go somewhere whole.
        assert_eq!(
            read("| key_by id | aggregate { c: count(), m: max(price) }"),
            Some(vec![true, false, false, true, false])
        );
        assert_eq!(read("| key_by id | where n > 1"), None);
        let windowed = |late: &str| {
            let (_, p) = spec_of(&format!(
                "schema W {{ k: string, v: int, x: string, ts: timestamp }}\n\
                 source s: W = stdin() event_time ts watermark 1s\nsink o = stdout()\nsink l = stdout()\n\
                 pipeline p = from s | key_by k | window tumbling(1m){late} | aggregate {{ c: sum(v) }} -> o"
            ));
            input_fields_read(&p.pipelines[0])
        };
        assert_eq!(windowed(""), Some(vec![true, true, false, true]));
        assert_eq!(windowed(" allowed_lateness 5s late -> l"), None);
    }

    pub(crate) fn run_stage(stage: &dyn Stage, input: &Batch) -> (Vec<Vec<Value>>, Option<EvalError>) {
        let mut out = output_builder(stage, input);
        let r = stage.run(input, &mut out);
        (out.finish().to_values(), r.err())
    }

    #[test]
    fn filter_and_project() {
        let src = format!(
            "{TXN}pipeline p = from s | where amount > 0.0 and starts_with(id, \"a\") \
             | select {{ id, n2: n * 2, up: upper(id), total: amount * 2 }} | where n2 is not null -> o"
        );
        let (spec, prog) = spec_of(&src);
        for stage in [interpreted(&spec, &prog).unwrap(), jit(&spec, &prog).unwrap()] {
            let input = txn_batch(
                &[
                    row("ab", 100, Some(3), 1.0),
                    row("b", 100, Some(1), 1.0),
                    row("ac", -5, Some(1), 1.0),
                    row("ad", 7, None, 0.5),
                ],
                &spec,
            );
            let (rows, err) = run_stage(&*stage, &input);
            assert_eq!(err, None);
            assert_eq!(
                rows,
                vec![vec![
                    Value::String("ab".into()),
                    Value::Int(6),
                    Value::String("AB".into()),
                    Value::Decimal { units: 200, scale: 2 }
                ]]
            );
        }
    }

    #[test]
    fn errors_name_the_row_and_span() {
        let src = format!("{TXN}pipeline p = from s | select {{ q: 10 / n }} -> o");
        let (spec, prog) = spec_of(&src);
        for stage in [interpreted(&spec, &prog).unwrap(), jit(&spec, &prog).unwrap()] {
            let input =
                txn_batch(&[row("a", 1, Some(5), 1.0), row("b", 1, Some(0), 1.0), row("c", 1, Some(1), 1.0)], &spec);
            let (rows, err) = run_stage(&*stage, &input);
            let err = err.expect("division by zero");
            assert_eq!((err.message.as_str(), err.row), ("division by zero", 1));
            assert_eq!(&src[err.span.range()], "10 / n");
            assert_eq!(rows, vec![vec![Value::Int(2)]]);
        }
    }

    #[test]
    fn strings_are_shared_or_copied() {
        let src = format!("{TXN}pipeline p = from s | where price > 0.0 | select {{ id, l: lower(id) }} -> o");
        let (spec, prog) = spec_of(&src);
        let input = txn_batch(&[row("Ab", 1, None, 1.0), row("Cé", 1, None, 0.0), row("XY", 1, None, 2.0)], &spec);
        let want = vec![
            vec![Value::String("Ab".into()), Value::String("ab".into())],
            vec![Value::String("XY".into()), Value::String("xy".into())],
        ];
        for stage in [interpreted(&spec, &prog).unwrap(), jit(&spec, &prog).unwrap()] {
            // Shared arena: only the new strings are written.
            let mut out = output_builder(&*stage, &input);
            stage.run(&input, &mut out).unwrap();
            let (_, extra, _) = out.raw_parts();
            assert_eq!(extra.as_slice(), b"abxy");
            assert_eq!(out.finish().to_values(), want);
            // A builder with its own arena: every string is copied, twice into one builder.
            let mut out = BatchBuilder::new(stage.output_layout());
            stage.run(&input, &mut out).unwrap();
            stage.run(&input, &mut out).unwrap();
            let got = out.finish().to_values();
            assert_eq!(got.len(), 4);
            assert_eq!(got[2..], want[..]);
        }
    }

    #[test]
    fn stateful_ops_are_rejected() {
        let src = format!("{TXN}pipeline p = from s | where price > 1.0 | key_by id -> o");
        let (spec, prog) = spec_of(&src);
        let err = interpreted(&spec, &prog).err().expect("rejected");
        assert!(err.message.contains("only filters and projections"), "{err:?}");
    }
}
