//! Typing pipelines: the stream's record type, event time and keys flow from the
//! input through each operator; each operator checks its preconditions (a window
//! needs event time, an aggregate needs a key or a window, ...) and the output must
//! match every target's schema.

use super::decls::{mismatches, Want};
use super::expr::{record, Ctx};
use super::{Checker, DeclKind};
use crate::diag::Diagnostic;
use crate::ir::{self, Record};
use crate::source::Span;
use crate::syntax::ast;
use flow_types::{Field, Kind, Type};
use std::collections::HashMap;
use std::sync::Arc;

/// What is known about the stream between two operators.
#[derive(Clone)]
struct Stream {
    record: Record,
    event_time: Option<ir::EventTime>,
    watermark_ms: i64,
    /// Why the stream has no event time, for a secondary label.
    no_time: Option<(Span, String)>,
    keys: Option<Vec<(String, ir::Expr)>>,
    /// The stream is a window's results (for `top`).
    windowed: bool,
    /// Whether the stream has event time is unknown (a writer of its topic is
    /// broken): checks that need it stay silent.
    time_unknown: bool,
}

struct PendingWindow {
    window: ir::Window,
    lateness_ms: i64,
    late: Option<ir::Target>,
    emit_every_ms: Option<i64>,
    span: Span,
}

/// Event time a topic gets from the pipelines that write it.
#[derive(Clone)]
pub(super) enum TopicTime {
    Known {
        field: String,
        offset_ms: i64,
        watermark_ms: i64,
    },
    Conflict,
    /// A writer failed to check: say nothing about the topic's event time.
    Unknown,
}

impl<'a> Checker<'a> {
    /// Checks pipelines so that writers of a topic come before its readers, so a
    /// topic's event time is known when it is read.
    pub(super) fn check_pipelines(&mut self) {
        let ps = self.decls.pipelines.clone();
        let writes: Vec<Vec<&str>> = ps.iter().map(|p| pipeline_writes(p)).collect();
        let reads: Vec<Vec<&str>> = ps.iter().map(|p| pipeline_reads(p)).collect();
        let n = ps.len();
        let mut indegree = vec![0usize; n];
        let mut edges: Vec<Vec<usize>> = vec![Vec::new(); n];
        for w in 0..n {
            for r in 0..n {
                if w != r && writes[w].iter().any(|t| reads[r].contains(t)) {
                    edges[w].push(r);
                    indegree[r] += 1;
                }
            }
        }
        let mut done = vec![false; n];
        let mut order = Vec::with_capacity(n);
        while order.len() < n {
            // The first ready pipeline in declaration order; on a cycle, the first left.
            let next = (0..n).find(|&i| !done[i] && indegree[i] == 0).or_else(|| (0..n).find(|&i| !done[i]));
            let Some(i) = next else { break };
            done[i] = true;
            order.push(i);
            for &r in &edges[i] {
                indegree[r] = indegree[r].saturating_sub(1);
            }
        }
        for i in order {
            self.check_pipeline(ps[i]);
        }
        // Topics take the event time of their writers.
        for t in &mut self.out.topics {
            if t.event_time.is_some() {
                continue;
            }
            if let Some(TopicTime::Known { field, offset_ms, watermark_ms }) = self.topic_time.get(&t.name) {
                if let Some(i) = t.schema.index_of(field) {
                    t.event_time = Some(ir::EventTime { field: i, offset_ms: *offset_ms });
                    t.watermark_ms = *watermark_ms;
                }
            }
        }
        // Keep the program's pipelines in declaration order.
        let order: HashMap<&str, usize> = ps.iter().enumerate().map(|(i, p)| (p.name.name.as_str(), i)).collect();
        self.out.pipelines.sort_by_key(|p| order.get(p.name.as_str()).copied().unwrap_or(usize::MAX));
    }

    /// The stream read from source or topic `id`.
    fn input_stream(&mut self, id: &ast::Ident) -> Option<(ir::Input, Stream)> {
        let g = self.lookup(id, &[DeclKind::Source, DeclKind::Topic], "a source or a topic")?;
        if self.broken.contains(&id.name) {
            return None;
        }
        let record = self.stream_schemas.get(&id.name).cloned().flatten()?;
        let mut s = Stream {
            record,
            event_time: None,
            watermark_ms: 0,
            no_time: None,
            keys: None,
            windowed: false,
            time_unknown: false,
        };
        match g.kind {
            DeclKind::Source => {
                let src = self.source_info.get(&id.name)?;
                s.event_time = src.event_time.clone();
                s.watermark_ms = src.watermark_ms;
                if s.event_time.is_none() {
                    s.no_time = Some((g.span, format!("source `{}` is declared without `event_time`", id.name)));
                }
                Some((ir::Input::Source(id.name.clone()), s))
            }
            _ => {
                let topic = self.out.topics.iter().find(|t| t.name == id.name)?;
                if let Some(et) = &topic.event_time {
                    s.event_time = Some(et.clone());
                    s.watermark_ms = topic.watermark_ms;
                } else if let Some(TopicTime::Known { field, offset_ms, watermark_ms }) = self.topic_time.get(&id.name)
                {
                    if let Some(i) = s.record.index_of(field) {
                        s.event_time = Some(ir::EventTime { field: i, offset_ms: *offset_ms });
                        s.watermark_ms = *watermark_ms;
                    }
                }
                let writer_broken =
                    matches!(self.topic_time.get(&id.name), Some(TopicTime::Unknown)) || self.broken_pipelines;
                if s.event_time.is_none() && writer_broken {
                    s.time_unknown = true;
                } else if s.event_time.is_none() {
                    s.no_time = Some((
                        g.span,
                        format!("topic `{}` has no event time: no pipeline with event time writes it, and it declares no `event_time`", id.name),
                    ));
                }
                Some((ir::Input::Topic(id.name.clone()), s))
            }
        }
    }

    fn require_time(&mut self, s: &Stream, span: Span, what: &str) -> bool {
        if s.event_time.is_some() {
            return true;
        }
        if s.time_unknown {
            return false;
        }
        let mut d = Diagnostic::error("E0401", span, format!("{what} needs event time, but this stream has none"))
            .label("no event time here");
        let help = match &s.no_time {
            Some((at, why)) => {
                d = d.with_secondary(*at, why.clone());
                if why.contains("select") {
                    "keep the event-time field in the `select`".to_string()
                } else if why.starts_with("source") {
                    "add `event_time <timestamp field> watermark <delay>` to the source, e.g. `event_time ts watermark 5s`".to_string()
                } else if why.starts_with("topic") {
                    "add `event_time: <timestamp field>` to the topic's options".to_string()
                } else {
                    "window before the aggregate, or read a stream with event time".to_string()
                }
            }
            None => "declare `event_time` on the source".to_string(),
        };
        self.error(d.help(help));
        false
    }

    pub(super) fn check_pipeline(&mut self, p: &'a ast::PipelineDecl) {
        if self.globals.get(&p.name.name).is_none_or(|g| g.kind != DeclKind::Pipeline) {
            return;
        }
        let Some((input, mut s)) = self.input_stream(&p.input) else {
            // Still resolve targets so their names count as used and typos are found.
            for t in &p.targets {
                self.target(t);
            }
            for t in pipeline_writes(p) {
                self.topic_time.insert(t.to_string(), TopicTime::Unknown);
            }
            return;
        };
        let input_schema = s.record.clone();
        let mut ops: Vec<ir::Op> = Vec::new();
        let mut ok = true;
        let mut pending: Option<PendingWindow> = None;
        let mut outputs: Vec<ir::Output> = Vec::new();
        let mut routed = false;
        let n_ops = p.ops.len();
        // Once an operator that shapes the record fails, what follows cannot be
        // checked reliably: stop there rather than report a cascade.
        let mut poisoned = false;
        for (i, op) in p.ops.iter().enumerate() {
            if poisoned {
                break;
            }
            let ok_before = ok;
            if let Some(w) = &pending {
                if !matches!(op.kind, ast::OpKind::Aggregate { .. }) {
                    self.error(
                        Diagnostic::error(
                            "E0408",
                            op.span,
                            format!("`window` must be followed by `aggregate`, found `{}`", op.kind.keyword()),
                        )
                        .label("expected `aggregate { ... }` here")
                        .with_secondary(w.span, "window opened here")
                        .help("a window groups records; say what to compute per window with `| aggregate { ... }`"),
                    );
                    pending = None;
                    ok = false;
                }
            }
            let before = s.record.clone();
            if let Some(t) = &mut self.trace {
                t.ops.push((op.span, before.clone()));
            }
            match &op.kind {
                ast::OpKind::Where(e) => {
                    let mut cx = Ctx::row(s.record.clone());
                    let c = self.expr(&mut cx, e);
                    let c = self.expect_bool(c, e.span, "a `where` condition");
                    ok &= !c.ty.is_error();
                    ops.push(self.op(ir::OpKind::Filter(c), &s, op.span));
                }
                ast::OpKind::Select(items) => match self.select(&mut s, items, op.span) {
                    Some(fields) => ops.push(self.op(ir::OpKind::Project(fields), &s, op.span)),
                    None => ok = false,
                },
                ast::OpKind::KeyBy(exprs) => {
                    let mut keys = Vec::new();
                    let mut cx = Ctx::row(s.record.clone());
                    for (k, e) in exprs.iter().enumerate() {
                        let v = self.expr(&mut cx, e);
                        if v.ty.is_error() {
                            ok = false;
                            continue;
                        }
                        if !v.ty.is_equatable() || matches!(v.ty.kind, Kind::Float) {
                            self.error(
                                Diagnostic::error("E0220", e.span, format!("a key cannot be `{}`", v.ty))
                                    .label("not usable as a key")
                                    .help("keys are hashed and compared exactly: use strings, ints, decimals, bools or timestamps"),
                            );
                            ok = false;
                            continue;
                        }
                        let name = match &e.kind {
                            ast::ExprKind::Name(id) => id.name.clone(),
                            ast::ExprKind::Field(_, f) | ast::ExprKind::SafeField(_, f) => f.name.clone(),
                            _ if exprs.len() == 1 => "key".to_string(),
                            _ => format!("key{}", k + 1),
                        };
                        if let Some(prev) = keys.iter().position(|(n, _): &(String, ir::Expr)| *n == name) {
                            self.error(
                                Diagnostic::error("E0009", e.span, format!("key `{name}` is given twice"))
                                    .label("second time")
                                    .with_secondary(exprs[prev].span, "first time")
                                    .help("remove the repeated key"),
                            );
                            ok = false;
                            continue;
                        }
                        keys.push((name, v));
                    }
                    s.keys = Some(keys.clone());
                    s.windowed = false;
                    ops.push(self.op(ir::OpKind::KeyBy(keys), &s, op.span));
                }
                ast::OpKind::Window { spec, lateness, late, emit_every } => {
                    let has_time = self.require_time(&s, spec.kind.span, "`window`");
                    let w = self.window_spec(spec);
                    let lateness_ms =
                        lateness.as_ref().map_or(Some(0), |e| self.duration_arg(e, "allowed_lateness", true));
                    let emit_every_ms = emit_every.as_ref().and_then(|e| self.duration_arg(e, "emit every", false));
                    let late_target = late.as_ref().and_then(|t| {
                        let target = self.target(t)?;
                        self.check_write(&target, &s.record, t.span, "late records");
                        Some(target)
                    });
                    match (has_time, w, lateness_ms) {
                        (true, Some(window), Some(lateness_ms)) => {
                            pending = Some(PendingWindow {
                                window,
                                lateness_ms,
                                late: late_target,
                                emit_every_ms,
                                span: op.span,
                            });
                        }
                        _ => ok = false,
                    }
                    if i + 1 == n_ops {
                        self.error(
                            Diagnostic::error("E0408", op.span, "`window` must be followed by `aggregate`")
                                .label("nothing is computed per window")
                                .help("add `| aggregate { name: count(), ... }` after the window"),
                        );
                        ok = false;
                    }
                }
                ast::OpKind::Aggregate { items, ttl } => {
                    let window = pending.take();
                    match self.aggregate(&mut s, items, ttl.as_ref(), window, op.span) {
                        Some(kind) => ops.push(self.op(kind, &s, op.span)),
                        None => ok = false,
                    }
                }
                ast::OpKind::Dedup { by, within } => {
                    let has_time = self.require_time(&s, op.span, "`dedup`");
                    let mut cx = Ctx::row(s.record.clone());
                    let by_ir = by.as_ref().map(|b| self.expr(&mut cx, b));
                    let within_ms = self.duration_arg(within, "dedup `within`", false);
                    let keys: Vec<ir::Expr> = match (&by_ir, &s.keys) {
                        (Some(b), _) => vec![b.clone()],
                        (None, Some(k)) => k.iter().map(|(_, e)| e.clone()).collect(),
                        (None, None) => {
                            self.error(
                                Diagnostic::error(
                                    "E0411",
                                    op.span,
                                    "`dedup` needs to know what makes records duplicates",
                                )
                                .label("no key and no `by`")
                                .help("write `dedup by <field> within <duration>`, or `key_by` before it"),
                            );
                            ok = false;
                            Vec::new()
                        }
                    };
                    if by_ir.as_ref().is_some_and(|b| b.ty.is_error()) {
                        ok = false;
                    }
                    match (has_time, within_ms) {
                        (true, Some(within_ms)) => {
                            ops.push(self.op(ir::OpKind::Dedup { by: keys, within_ms }, &s, op.span))
                        }
                        _ => ok = false,
                    }
                }
                ast::OpKind::Top { n, n_span, by, descending } => {
                    let mut cx = Ctx::row(s.record.clone());
                    let by_ir = self.expr(&mut cx, by);
                    if *n == 0 || *n > 10_000 {
                        self.error(
                            Diagnostic::error("E0417", *n_span, format!("`top {n}` is out of range"))
                                .label("must be between 1 and 10000")
                                .help("top-N keeps N records per group in state"),
                        );
                        ok = false;
                    }
                    if !by_ir.ty.is_error() && !by_ir.ty.is_orderable() {
                        self.error(
                            Diagnostic::error("E0417", by.span, format!("cannot rank by `{}`", by_ir.ty))
                                .label("not orderable")
                                .help("rank by a number, string or time"),
                        );
                        ok = false;
                    }
                    if !s.windowed && s.keys.is_none() {
                        self.error(
                            Diagnostic::error("E0417", op.span, "`top` needs groups: a window's results or a key")
                                .label("top of what?")
                                .help("place `top` after `window ... | aggregate { ... }` (top per window) or after `key_by` (top per key)"),
                        );
                        ok = false;
                    } else if !s.windowed {
                        self.error(
                            Diagnostic::warning("W0002", op.span, "`top` per key without a window keeps state for every key forever")
                                .label("unbounded state")
                                .help("rank a window's results instead: `window tumbling(1m) | aggregate { ... } | top N by ...`"),
                        );
                    }
                    ok &= !by_ir.ty.is_error();
                    ops.push(self.op(ir::OpKind::TopN { n: *n, by: by_ir, descending: *descending }, &s, op.span));
                }
                ast::OpKind::Join { left_outer, other, alias, on, bound } => {
                    match self.join(&mut s, *left_outer, other, alias.as_ref(), on, bound, op.span) {
                        Some(kind) => ops.push(self.op(kind, &s, op.span)),
                        None => ok = false,
                    }
                }
                ast::OpKind::Lookup { left_outer, table, alias, on } => {
                    match self.lookup_join(&mut s, *left_outer, table, alias.as_ref(), on) {
                        Some(kind) => ops.push(self.op(kind, &s, op.span)),
                        None => ok = false,
                    }
                }
                ast::OpKind::Union(others) => {
                    let mut inputs = Vec::new();
                    for o in others {
                        let Some((inp, os)) = self.input_stream(o) else {
                            ok = false;
                            continue;
                        };
                        let mut problems = mismatches(&os.record, &s.record);
                        problems.extend(
                            mismatches(&s.record, &os.record)
                                .into_iter()
                                .filter(|p| p.starts_with("field"))
                                .map(|p| format!("{p} (on the other side)")),
                        );
                        problems.dedup();
                        if !problems.is_empty() {
                            self.error(
                                Diagnostic::error(
                                    "E0302",
                                    o.span,
                                    format!("`{}` does not have the fields of the stream it joins in `union`", o.name),
                                )
                                .label(format!(
                                    "{} mismatch{}",
                                    problems.len(),
                                    if problems.len() == 1 { "" } else { "es" }
                                ))
                                .help(format!(
                                    "union needs identical fields; `select` them into the same shape first:\n{}",
                                    problems.join("\n")
                                )),
                            );
                            ok = false;
                        }
                        let same_time = match (&s.event_time, &os.event_time) {
                            (Some(a), Some(b)) => {
                                s.record.fields[a.field].name == os.record.fields[b.field].name
                                    && a.offset_ms == b.offset_ms
                            }
                            _ => false,
                        };
                        if !same_time && s.event_time.is_some() {
                            s.event_time = None;
                            s.no_time = Some((
                                o.span,
                                format!("`{}` has no event time on the same field, so the union has none", o.name),
                            ));
                        }
                        s.watermark_ms = s.watermark_ms.max(os.watermark_ms);
                        inputs.push(inp);
                    }
                    s.keys = None;
                    s.windowed = false;
                    ops.push(self.op(ir::OpKind::Union(inputs), &s, op.span));
                }
                ast::OpKind::Unnest { field, alias } => {
                    let mut cx = Ctx::row(s.record.clone());
                    let v = self.expr(&mut cx, field);
                    match (&v.kind, &v.ty.kind) {
                        (ir::ExprKind::Field(idx), Kind::List(elem)) => {
                            let idx = *idx;
                            let mut fields = s.record.fields.clone();
                            let name = alias.as_ref().map_or(fields[idx].name.clone(), |a| a.name.clone());
                            if let Some(a) = alias {
                                if fields.iter().enumerate().any(|(j, f)| j != idx && f.name == a.name) {
                                    self.error(
                                        Diagnostic::error(
                                            "E0009",
                                            a.span,
                                            format!("the record already has a field `{}`", a.name),
                                        )
                                        .label("name taken")
                                        .help("choose another name for the element"),
                                    );
                                    ok = false;
                                }
                            }
                            fields[idx] = Field { name, ty: (**elem).clone() };
                            s.record = record(fields);
                            ops.push(self.op(ir::OpKind::Unnest { field: idx }, &s, op.span));
                        }
                        _ if v.ty.is_error() => ok = false,
                        _ => {
                            self.error(
                                Diagnostic::error("E0218", field.span, format!("cannot unnest `{}`", v.ty))
                                    .label("not a list field")
                                    .help("`unnest` takes a field of type `list<T>` and emits one record per element"),
                            );
                            ok = false;
                        }
                    }
                }
                ast::OpKind::Pattern { steps, within, measures } => {
                    match self.pattern(&mut s, steps, within, measures, op.span) {
                        Some(kind) => ops.push(self.op(kind, &s, op.span)),
                        None => ok = false,
                    }
                }
                ast::OpKind::Route(arms) => {
                    routed = true;
                    if i + 1 != n_ops {
                        self.error(
                            Diagnostic::error("E0310", op.span, "`route` must be the last operator")
                                .label("operators follow it")
                                .with_secondary(p.ops[i + 1].span, "this operator would never see a record")
                                .help("move the operators before `route`"),
                        );
                        ok = false;
                    }
                    if let Some(t) = p.targets.first() {
                        self.error(
                            Diagnostic::error("E0307", t.span, "a pipeline ending in `route` has no `->` output")
                                .label("route already sends every record somewhere")
                                .help("add this target as a route arm: `else -> target`"),
                        );
                        ok = false;
                    }
                    let mut cx = Ctx::row(s.record.clone());
                    for (j, arm) in arms.iter().enumerate() {
                        if arm.cond.is_none() && j + 1 != arms.len() {
                            self.error(
                                Diagnostic::error("E0310", arm.span, "`else` must be the last arm of `route`")
                                    .label("arms after it are never taken")
                                    .help("move `else -> ...` to the end"),
                            );
                            ok = false;
                        }
                        let when = arm.cond.as_ref().map(|c| {
                            let v = self.expr(&mut cx, c);
                            self.expect_bool(v, c.span, "a route condition")
                        });
                        if when.as_ref().is_some_and(|w| w.ty.is_error()) {
                            ok = false;
                        }
                        if let Some(target) = self.target(&arm.target) {
                            self.check_write(&target, &s.record, arm.target.span, "the routed records");
                            self.note_topic_time(&target, &s);
                            outputs.push(ir::Output { when, target });
                        } else {
                            ok = false;
                        }
                    }
                }
            }
            let shapes = !matches!(
                op.kind,
                ast::OpKind::Where(_) | ast::OpKind::Dedup { .. } | ast::OpKind::Top { .. } | ast::OpKind::KeyBy(_)
            );
            if ok_before && !ok && (shapes || !Arc::ptr_eq(&before, &s.record)) {
                poisoned = true;
            }
        }
        if let Some(w) = pending {
            // Reported above when the window is last; nothing more to add.
            let _ = w;
        }
        if !routed {
            if p.targets.is_empty() {
                self.error(
                    Diagnostic::error("E0307", p.name.span, format!("pipeline `{}` has no output", p.name.name))
                        .label("its records go nowhere")
                        .help("end it with `-> <topic or sink>` or a `route { ... }`"),
                );
                ok = false;
            }
            let at = p.ops.last().map_or(p.input.span, |o| o.span);
            for t in &p.targets {
                match self.target(t) {
                    Some(_) if poisoned => ok = false,
                    Some(target) => {
                        self.check_write(&target, &s.record, t.span, &format!("records of pipeline `{}`", p.name.name));
                        self.note_topic_time(&target, &s);
                        outputs.push(ir::Output { when: None, target });
                    }
                    None => ok = false,
                }
            }
            let _ = at;
        }
        if !ok {
            // Readers of what this pipeline writes cannot know its event time.
            for t in pipeline_writes(p) {
                self.topic_time.insert(t.to_string(), TopicTime::Unknown);
            }
        }
        if ok {
            self.out.pipelines.push(ir::Pipeline {
                name: p.name.name.clone(),
                input,
                input_schema,
                ops,
                outputs,
                span: p.name.span,
            });
        }
    }

    fn note_topic_time(&mut self, target: &ir::Target, s: &Stream) {
        let ir::Target::Topic(name) = target else {
            return;
        };
        let now = match &s.event_time {
            Some(et) => TopicTime::Known {
                field: s.record.fields[et.field].name.clone(),
                offset_ms: et.offset_ms,
                watermark_ms: s.watermark_ms,
            },
            None => TopicTime::Conflict,
        };
        let merged = match (self.topic_time.get(name), now) {
            (Some(TopicTime::Unknown), _) => TopicTime::Unknown,
            (None, n) => n,
            (
                Some(TopicTime::Known { field: f1, offset_ms: o1, watermark_ms: w1 }),
                TopicTime::Known { field: f2, offset_ms: o2, watermark_ms: w2 },
            ) if *f1 == f2 && *o1 == o2 => TopicTime::Known { field: f2, offset_ms: o2, watermark_ms: (*w1).max(w2) },
            _ => TopicTime::Conflict,
        };
        self.topic_time.insert(name.clone(), merged);
    }

    fn op(&self, kind: ir::OpKind, s: &Stream, span: Span) -> ir::Op {
        ir::Op { kind, output: s.record.clone(), event_time: s.event_time.clone(), span }
    }

    fn duration_arg(&mut self, e: &ast::Expr, what: &str, allow_zero: bool) -> Option<i64> {
        let o = self.options(&[(None, e, e.span)], &[("value", Want::Duration)], &[], &format!("`{what}`"), None);
        self.positive_ms(o.int("value"), what, allow_zero)
    }

    fn window_spec(&mut self, spec: &ast::Connector) -> Option<ir::Window> {
        let kinds = ["tumbling", "sliding", "session"];
        let kind = match spec.kind.name.as_str() {
            "hopping" | "hop" => "sliding",
            k => k,
        };
        if !kinds.contains(&kind) {
            let help = crate::diag::did_you_mean(&spec.kind.name, kinds.iter().copied())
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_else(|| {
                    "windows are `tumbling(size)`, `sliding(size, every: slide)` and `session(gap: g)`".into()
                });
            self.error(
                Diagnostic::error("E0406", spec.kind.span, format!("unknown window `{}`", spec.kind.name))
                    .label("not a kind of window")
                    .help(help),
            );
            return None;
        }
        let args: Vec<_> = spec.args.iter().map(|a| (a.name.as_ref(), &a.value, a.span)).collect();
        let positional: &[(&str, Want)] = match kind {
            "tumbling" => &[("size", Want::Duration)],
            "sliding" => &[("size", Want::Duration), ("every", Want::Duration)],
            _ => &[("gap", Want::Duration)],
        };
        let o = self.options(&args, positional, &[], &format!("`{kind}` window"), None);
        let need = |c: &mut Self, k: &str, example: &str| -> Option<i64> {
            if o.int(k).is_none()
                && !spec.args.iter().any(|a| a.name.as_ref().is_some_and(|n| n.name == k))
                && o.vals.len() < positional.len()
            {
                c.error(
                    Diagnostic::error("E0406", spec.span, format!("`{kind}` window needs `{k}`"))
                        .label(format!("`{k}` is missing"))
                        .help(format!("write `{example}`")),
                );
                return None;
            }
            c.positive_ms(o.int(k), &format!("window {k}"), false)
        };
        match kind {
            "tumbling" => Some(ir::Window::Tumbling { size_ms: need(self, "size", "tumbling(1m)")? }),
            "sliding" => {
                let size = need(self, "size", "sliding(5m, every: 1m)");
                let slide = need(self, "every", "sliding(5m, every: 1m)");
                let (size_ms, slide_ms) = (size?, slide?);
                if slide_ms > size_ms {
                    self.error(
                        Diagnostic::error("E0406", spec.span, "a sliding window cannot slide further than its size")
                            .label(format!("size {}, every {}", ir::fmt_ms(size_ms), ir::fmt_ms(slide_ms)))
                            .help("records between windows would be lost: make `every` at most the size, or use `tumbling`"),
                    );
                    return None;
                }
                if size_ms % slide_ms != 0 {
                    self.error(
                        Diagnostic::warning("W0004", spec.span, "the window size is not a multiple of the slide")
                            .label(format!("size {}, every {}", ir::fmt_ms(size_ms), ir::fmt_ms(slide_ms)))
                            .help("records then fall into different numbers of windows; choose a size that `every` divides"),
                    );
                }
                Some(ir::Window::Sliding { size_ms, slide_ms })
            }
            _ => Some(ir::Window::Session { gap_ms: need(self, "gap", "session(gap: 30s)")? }),
        }
    }

    fn select(&mut self, s: &mut Stream, items: &[ast::SelectItem], span: Span) -> Option<Vec<(String, ir::Expr)>> {
        let mut cx = Ctx::row(s.record.clone());
        let mut out: Vec<(String, ir::Expr)> = Vec::new();
        let mut spans: Vec<Span> = Vec::new();
        let mut ok = true;
        let mut push =
            |c: &mut Self, name: String, e: ir::Expr, at: Span, out: &mut Vec<(String, ir::Expr)>, ok: &mut bool| {
                if let Some(prev) = out.iter().position(|(n, _)| *n == name) {
                    c.error(
                        Diagnostic::error("E0009", at, format!("field `{name}` appears twice in the output"))
                            .label("second time")
                            .with_secondary(spans[prev], "first time")
                            .help("rename one of them: `new_name: expression`"),
                    );
                    *ok = false;
                    return;
                }
                spans.push(at);
                out.push((name, e));
            };
        for item in items {
            match item {
                ast::SelectItem::All(at) => {
                    for (i, f) in s.record.fields.iter().enumerate() {
                        let e = ir::Expr { kind: ir::ExprKind::Field(i), ty: f.ty.clone(), span: *at };
                        push(self, f.name.clone(), e, *at, &mut out, &mut ok);
                    }
                }
                ast::SelectItem::Named(n) => {
                    let e = self.expr(&mut cx, &n.value);
                    ok &= !e.ty.is_error();
                    push(self, n.name.name.clone(), e, n.name.span, &mut out, &mut ok);
                }
                ast::SelectItem::Expr(x) => {
                    let name = match &x.kind {
                        ast::ExprKind::Name(id) => Some(id.name.clone()),
                        ast::ExprKind::Field(_, f) | ast::ExprKind::SafeField(_, f) => Some(f.name.clone()),
                        _ => None,
                    };
                    let e = self.expr(&mut cx, x);
                    ok &= !e.ty.is_error();
                    match name {
                        Some(n) => push(self, n, e, x.span, &mut out, &mut ok),
                        None => {
                            self.error(
                                Diagnostic::error("E0310", x.span, "a computed field needs a name")
                                    .label("what is this field called?")
                                    .help("write `name: expression`"),
                            );
                            ok = false;
                        }
                    }
                }
            }
        }
        if !ok {
            return None;
        }
        // Event time follows its field if it is kept as a plain field reference.
        if let Some(et) = &s.event_time {
            let kept = out.iter().position(|(_, e)| matches!(e.kind, ir::ExprKind::Field(i) if i == et.field));
            match kept {
                Some(j) => s.event_time = Some(ir::EventTime { field: j, offset_ms: et.offset_ms }),
                None => {
                    let name = s.record.fields[et.field].name.clone();
                    s.event_time = None;
                    s.no_time = Some((span, format!("this `select` drops the event-time field `{name}`")));
                }
            }
        }
        s.record = record(out.iter().map(|(n, e)| Field { name: n.clone(), ty: e.ty.clone() }).collect());
        s.windowed = false;
        Some(out)
    }

    fn aggregate(
        &mut self,
        s: &mut Stream,
        items: &[ast::NamedExpr],
        ttl: Option<&ast::Expr>,
        window: Option<PendingWindow>,
        span: Span,
    ) -> Option<ir::OpKind> {
        let keys: Vec<(String, ir::Expr)> = s.keys.clone().unwrap_or_default();
        if window.is_none() && s.keys.is_none() {
            self.error(
                Diagnostic::error("E0403", span, "`aggregate` needs a key or a window")
                    .label("an aggregate over the whole, endless stream never finishes")
                    .help("group first: `key_by <field>` and/or `window tumbling(1m)` before `aggregate`"),
            );
            return None;
        }
        let mut cx = Ctx::row(s.record.clone());
        cx.fields_only_in_agg = true;
        cx.aggs_allowed = true;
        cx.keys = keys.iter().map(|(n, _)| n.clone()).collect();
        cx.after_window = window.is_some();
        let mut fields: Vec<Field> = keys.iter().map(|(n, e)| Field { name: n.clone(), ty: e.ty.clone() }).collect();
        if window.is_some() {
            fields.push(Field { name: "window_start".into(), ty: Type::timestamp() });
            fields.push(Field { name: "window_end".into(), ty: Type::timestamp() });
        }
        let mut outputs = Vec::new();
        let mut ok = true;
        for item in items {
            let e = self.expr(&mut cx, &item.value);
            ok &= !e.ty.is_error();
            if fields.iter().any(|f| f.name == item.name.name) {
                let why = if keys.iter().any(|(n, _)| *n == item.name.name) {
                    "a key of the same name is already in the output"
                } else if outputs.iter().any(|(n, _): &(String, ir::Expr)| *n == item.name.name) {
                    "an aggregate of the same name comes earlier"
                } else {
                    "the window's bounds are already in the output"
                };
                self.error(
                    Diagnostic::error(
                        "E0009",
                        item.name.span,
                        format!("field `{}` appears twice in the output", item.name.name),
                    )
                    .label(why)
                    .help("give this aggregate another name"),
                );
                ok = false;
                continue;
            }
            fields.push(Field { name: item.name.name.clone(), ty: e.ty.clone() });
            outputs.push((item.name.name.clone(), e));
        }
        // A window that can emit a result more than once (late updates, early results)
        // numbers them: `revision` 0 is the first result of a window, 1 the next, ...
        if let Some(w) = window.as_ref().filter(|w| w.lateness_ms > 0 || w.emit_every_ms.is_some()) {
            if let Some(item) = items.iter().find(|i| i.name.name == "revision") {
                self.error(
                    Diagnostic::error("E0009", item.name.span, "field `revision` appears twice in the output")
                        .label("the window already adds `revision`")
                        .with_secondary(w.span, "this window can update its results, so they carry `revision`")
                        .help("give this aggregate another name"),
                );
                ok = false;
            } else {
                fields.push(Field { name: "revision".into(), ty: Type::int() });
            }
        }
        if items.is_empty() {
            self.error(
                Diagnostic::error("E0403", span, "`aggregate` computes nothing")
                    .label("no aggregates")
                    .help("name at least one: `aggregate { n: count() }`"),
            );
            ok = false;
        }
        let ttl_ms = match ttl {
            Some(t) if window.is_some() => {
                self.error(
                    Diagnostic::error("E0409", t.span, "`ttl` on a windowed aggregate")
                        .label("window state is freed when the window closes")
                        .help("remove `ttl`; it bounds the state of aggregates without a window"),
                );
                ok = false;
                None
            }
            Some(t) => self.duration_arg(t, "ttl", false),
            None => None,
        };
        if !ok {
            return None;
        }
        let key_names: Vec<String> = keys.iter().map(|(n, _)| n.clone()).collect();
        s.record = record(fields);
        Some(match window {
            Some(w) => {
                // Results carry window_end - 1 as their event time, as Flink's window_time.
                let end = s.record.index_of("window_end").unwrap_or(0);
                s.event_time = Some(ir::EventTime { field: end, offset_ms: -1 });
                s.windowed = true;
                ir::OpKind::WindowAggregate {
                    window: w.window,
                    keys: key_names,
                    allowed_lateness_ms: w.lateness_ms,
                    late: w.late,
                    emit_every_ms: w.emit_every_ms,
                    aggs: cx.aggs,
                    outputs,
                }
            }
            None => {
                if ttl_ms.is_none() {
                    self.error(
                        Diagnostic::warning(
                            "W0002",
                            span,
                            "aggregate without a window keeps state for every key forever",
                        )
                        .label("unbounded state")
                        .help("add `ttl <duration>` to forget keys idle that long, or window the stream first"),
                    );
                }
                s.event_time = None;
                s.no_time =
                    Some((span, "an aggregate without a window emits updates, which have no event time".into()));
                s.windowed = false;
                ir::OpKind::Aggregate { keys: key_names, aggs: cx.aggs, outputs, ttl_ms }
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        s: &mut Stream,
        left_outer: bool,
        other: &ast::Ident,
        alias: Option<&ast::Ident>,
        on: &ast::Expr,
        bound: &ast::JoinBound,
        span: Span,
    ) -> Option<ir::OpKind> {
        let (input, os) = self.input_stream(other)?;
        let alias_name = alias.map_or(other.name.clone(), |a| a.name.clone());
        let alias_span = alias.map_or(other.span, |a| a.span);
        if s.record.field(&alias_name).is_some() {
            self.error(
                Diagnostic::error("E0009", alias_span, format!("the record already has a field `{alias_name}`"))
                    .label("the joined record would be stored under this name")
                    .help(format!("name the other side: `join {} as <alias> on ...`", other.name)),
            );
            return None;
        }
        let mut ok = self.require_time(s, span, "an interval or window join");
        if os.event_time.is_none() {
            let mut d = Diagnostic::error(
                "E0401",
                other.span,
                format!("`{}` has no event time, so it cannot be joined in time", other.name),
            )
            .label("no event time on this side");
            if let Some((at, why)) = &os.no_time {
                d = d.with_secondary(*at, why.clone());
            }
            self.error(
                d.help("declare `event_time` on it, or use `lookup` to join with the latest value per key of a topic"),
            );
            ok = false;
        }
        // In the condition both sides exist; after a left join the right one may not.
        let mut fields = s.record.fields.clone();
        fields.push(Field { name: alias_name.clone(), ty: Type::new(Kind::Record(os.record.clone())) });
        let in_condition = record(fields.clone());
        if let Some(last) = fields.last_mut() {
            last.ty.nullable = left_outer;
        }
        let joined = record(fields);
        let mut cx = Ctx::row(in_condition);
        let on_ir = self.expr(&mut cx, on);
        let on_ir = self.expect_bool(on_ir, on.span, "a join condition");
        if on_ir.ty.is_error() {
            s.record = joined;
            return None;
        }
        let right_idx = joined.fields.len() - 1;
        if !has_equi_condition(&on_ir, right_idx) {
            self.error(
                Diagnostic::error("E0412", on.span, "a join needs an equality between the two sides")
                    .label("no `left_field == alias.field` here")
                    .help(format!("join on a shared key, e.g. `on order_id == {alias_name}.order_id`")),
            );
            ok = false;
        }
        let bound = match bound {
            ast::JoinBound::Within(e) => self.duration_arg(e, "join `within`", false).map(ir::JoinBound::Within),
            ast::JoinBound::Window(w) => self.window_spec(w).map(ir::JoinBound::Window),
            ast::JoinBound::None => {
                self.error(
                    Diagnostic::error("E0412", span, "a join of two streams needs a time bound")
                        .label("both sides would be kept forever")
                        .help(format!("bound it: `within 10m` (records at most 10m apart) or `window tumbling(1m)`; to join with the latest value per key, use `lookup {}`", other.name)),
                );
                None
            }
        };
        s.record = joined;
        s.keys = None;
        let bound = bound?;
        if !ok {
            return None;
        }
        s.windowed = false;
        Some(ir::OpKind::Join {
            kind: if left_outer { ir::JoinKind::LeftOuter } else { ir::JoinKind::Inner },
            other: input,
            alias: alias_name,
            on: on_ir,
            bound,
        })
    }

    fn lookup_join(
        &mut self,
        s: &mut Stream,
        left_outer: bool,
        table: &ast::Ident,
        alias: Option<&ast::Ident>,
        on: &ast::Expr,
    ) -> Option<ir::OpKind> {
        let g = self.lookup(table, &[DeclKind::Topic], "a topic")?;
        let _ = g;
        let topic = self.out.topics.iter().find(|t| t.name == table.name)?.clone();
        let Some(key) = topic.key else {
            self.error(
                Diagnostic::error("E0413", table.span, format!("topic `{}` has no key to look up by", table.name))
                    .label("lookup needs a keyed topic")
                    .with_secondary(topic.span, "topic declared here")
                    .help(format!("add `key: <field>` to the options of topic `{}`", table.name)),
            );
            return None;
        };
        let alias_name = alias.map_or(table.name.clone(), |a| a.name.clone());
        let alias_span = alias.map_or(table.span, |a| a.span);
        if s.record.field(&alias_name).is_some() {
            self.error(
                Diagnostic::error("E0009", alias_span, format!("the record already has a field `{alias_name}`"))
                    .label("the looked-up record would be stored under this name")
                    .help(format!("name it: `lookup {} as <alias> on ...`", table.name)),
            );
            return None;
        }
        let mut cx = Ctx::row(s.record.clone());
        let k = self.expr(&mut cx, on);
        if k.ty.is_error() {
            return None;
        }
        let key_field = &topic.schema.fields[key];
        if !k.ty.clone().non_null().assignable_to(&key_field.ty) {
            self.error(
                Diagnostic::error(
                    "E0201",
                    on.span,
                    format!(
                        "the lookup key is `{}`, but topic `{}` is keyed by `{}: {}`",
                        k.ty, table.name, key_field.name, key_field.ty
                    ),
                )
                .label(format!("this is `{}`", k.ty))
                .help(format!(
                    "look up by a `{}` value, converting with `as {}` if needed",
                    key_field.ty, key_field.ty
                )),
            );
            return None;
        }
        let mut fields = s.record.fields.clone();
        fields.push(Field {
            name: alias_name.clone(),
            ty: Type::new(Kind::Record(topic.schema.clone())).with_nullable(left_outer),
        });
        s.record = record(fields);
        Some(ir::OpKind::Lookup {
            kind: if left_outer { ir::JoinKind::LeftOuter } else { ir::JoinKind::Inner },
            topic: table.name.clone(),
            alias: alias_name,
            key: k,
        })
    }

    fn pattern(
        &mut self,
        s: &mut Stream,
        steps: &[ast::PatternStep],
        within: &ast::Expr,
        measures: &[ast::NamedExpr],
        span: Span,
    ) -> Option<ir::OpKind> {
        let mut ok = self.require_time(s, span, "`pattern`");
        let Some(keys) = s.keys.clone() else {
            self.error(
                Diagnostic::error("E0410", span, "`pattern` needs a key")
                    .label("a pattern is matched per key")
                    .help("add `key_by <field>` before it, e.g. `key_by account`"),
            );
            return None;
        };
        let mut ir_steps = Vec::new();
        let mut cx = Ctx::row(s.record.clone());
        let mut seen: Vec<(&str, Span)> = Vec::new();
        for st in steps {
            if let Some((_, prev)) = seen.iter().find(|(n, _)| *n == st.name.name) {
                self.error(
                    Diagnostic::error("E0009", st.name.span, format!("step `{}` is declared twice", st.name.name))
                        .label("second declaration")
                        .with_secondary(*prev, "first declared here")
                        .help("give each step its own name"),
                );
                ok = false;
            }
            seen.push((&st.name.name, st.name.span));
            let c = self.expr(&mut cx, &st.cond);
            let c = self.expect_bool(c, st.cond.span, "a pattern step");
            ok &= !c.ty.is_error();
            let (min, max) = st.quantifier.as_ref().map_or((1, Some(1)), |q| (q.min, q.max));
            if let Some(q) = &st.quantifier {
                if min == 0 || max.is_some_and(|m| m < min) || min > 1000 || max.is_some_and(|m| m > 1000) {
                    self.error(
                        Diagnostic::error("E0419", q.span, "invalid repetition")
                            .label(match max {
                                Some(m) if m < min => format!("{min}..{m} is an empty range"),
                                _ if min == 0 => "a step matches at least once".into(),
                                _ => "at most 1000 repetitions".into(),
                            })
                            .help("write `times n`, `times n..` or `times n..m` with 1 <= n <= m <= 1000"),
                    );
                    ok = false;
                }
            }
            ir_steps.push(ir::PatternStep { name: st.name.name.clone(), cond: c, min, max });
        }
        let within_ms = self.duration_arg(within, "pattern `within`", false);
        let mut mcx = Ctx::default();
        mcx.aggs_allowed = true;
        mcx.keys = keys.iter().map(|(n, _)| n.clone()).collect();
        mcx.steps = ir_steps.iter().map(|st| (st.name.clone(), s.record.clone(), st.max != Some(1))).collect();
        let mut fields: Vec<Field> = keys.iter().map(|(n, e)| Field { name: n.clone(), ty: e.ty.clone() }).collect();
        fields.push(Field { name: "match_start".into(), ty: Type::timestamp() });
        fields.push(Field { name: "match_end".into(), ty: Type::timestamp() });
        let mut out = Vec::new();
        for m in measures {
            let e = self.expr(&mut mcx, &m.value);
            ok &= !e.ty.is_error();
            if fields.iter().any(|f| f.name == m.name.name) {
                self.error(
                    Diagnostic::error(
                        "E0009",
                        m.name.span,
                        format!("field `{}` appears twice in the output", m.name.name),
                    )
                    .label("name taken by a key, a match bound or an earlier measure")
                    .help("give this measure another name"),
                );
                ok = false;
                continue;
            }
            fields.push(Field { name: m.name.name.clone(), ty: e.ty.clone() });
            out.push((m.name.name.clone(), e));
        }
        let within_ms = within_ms?;
        if !ok {
            return None;
        }
        s.record = record(fields);
        let end = s.record.index_of("match_end").unwrap_or(0);
        s.event_time = Some(ir::EventTime { field: end, offset_ms: 0 });
        s.windowed = false;
        Some(ir::OpKind::Pattern {
            keys: keys.into_iter().map(|(n, _)| n).collect(),
            steps: ir_steps,
            within_ms,
            aggs: mcx.aggs,
            measures: out,
        })
    }
}

/// Whether a join condition has, in its top-level conjunction, an `==` between an
/// expression of the left fields only and one of the right record (field `right`).
fn has_equi_condition(e: &ir::Expr, right: usize) -> bool {
    match &e.kind {
        ir::ExprKind::Binary(ir::BinOp::And, a, b) => has_equi_condition(a, right) || has_equi_condition(b, right),
        ir::ExprKind::Binary(ir::BinOp::Eq, a, b) => {
            let (la, ra) = sides(a, right);
            let (lb, rb) = sides(b, right);
            (la && !ra && rb && !lb) || (lb && !rb && ra && !la)
        }
        _ => false,
    }
}

/// (uses left fields, uses the right record)
fn sides(e: &ir::Expr, right: usize) -> (bool, bool) {
    let mut l = false;
    let mut r = false;
    visit(e, &mut |x| {
        if let ir::ExprKind::Field(i) = x.kind {
            if i == right {
                r = true;
            } else {
                l = true;
            }
        }
    });
    (l, r)
}

fn visit(e: &ir::Expr, f: &mut impl FnMut(&ir::Expr)) {
    use ir::ExprKind as K;
    f(e);
    match &e.kind {
        K::GetField(x, _) | K::SafeGetField(x, _) | K::Unary(_, x) | K::Cast(x) | K::IsNull { expr: x, .. } => {
            visit(x, f)
        }
        K::Index(a, b) | K::Binary(_, a, b) => {
            visit(a, f);
            visit(b, f);
        }
        K::Call(_, args) | K::CallFn(_, args) | K::List(args) | K::Record(args) => {
            args.iter().for_each(|a| visit(a, f))
        }
        K::If(a, b, c) => {
            visit(a, f);
            visit(b, f);
            visit(c, f);
        }
        K::Case { arms, otherwise } => {
            for (w, t) in arms {
                visit(w, f);
                visit(t, f);
            }
            if let Some(o) = otherwise {
                visit(o, f);
            }
        }
        K::In { expr, list, .. } => {
            visit(expr, f);
            list.iter().for_each(|a| visit(a, f));
        }
        K::Literal(_) | K::Field(_) | K::Param(_) | K::Step(_) | K::Agg(_) => {}
    }
}

fn pipeline_writes(p: &ast::PipelineDecl) -> Vec<&str> {
    let mut v: Vec<&str> = p.targets.iter().map(|t| t.name.as_str()).collect();
    for op in &p.ops {
        if let ast::OpKind::Route(arms) = &op.kind {
            v.extend(arms.iter().map(|a| a.target.name.as_str()));
        }
    }
    v
}

fn pipeline_reads(p: &ast::PipelineDecl) -> Vec<&str> {
    let mut v = vec![p.input.name.as_str()];
    for op in &p.ops {
        match &op.kind {
            ast::OpKind::Join { other, .. } => v.push(&other.name),
            ast::OpKind::Lookup { table, .. } => v.push(&table.name),
            ast::OpKind::Union(others) => v.extend(others.iter().map(|o| o.name.as_str())),
            _ => {}
        }
    }
    v
}
