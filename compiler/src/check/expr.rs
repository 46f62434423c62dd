//! Typing expressions: names, fields, operators, calls, casts, aggregates, and
//! folding of constant expressions.

use super::Checker;
use crate::diag::{did_you_mean, Diagnostic};
use crate::ir::{self, Record};
use crate::source::Span;
use crate::syntax::ast;
use flow_stdlib::CallError;
use flow_types::{arith_result, common_type, ArithOp, Field, Kind, RecordType, Type, Value};
use std::sync::Arc;

/// What an expression can see.
#[derive(Default)]
pub(super) struct Ctx {
    /// The record whose fields are in scope.
    pub record: Option<Record>,
    /// In `aggregate { }`: fields are visible only inside aggregate calls.
    pub fields_only_in_agg: bool,
    pub params: Vec<(String, Type)>,
    /// Pattern steps, in measures: (name, record, may match several records).
    pub steps: Vec<(String, Record, bool)>,
    /// Aggregate calls are allowed (aggregate items, measures).
    pub aggs_allowed: bool,
    pub aggs: Vec<ir::AggCall>,
    in_agg_arg: bool,
    /// The key names of the stream (for help texts).
    pub keys: Vec<String>,
    /// A window is pending (for help texts about `window_start`/`window_end`).
    pub after_window: bool,
}

impl Ctx {
    pub fn constant() -> Ctx {
        Ctx::default()
    }
    pub fn function(params: Vec<(String, Type)>) -> Ctx {
        Ctx { params, ..Ctx::default() }
    }
    pub fn row(record: Record) -> Ctx {
        Ctx { record: Some(record), ..Ctx::default() }
    }
}

/// The result of folding a constant expression.
pub(super) enum Folded {
    Value(Value),
    /// Not a constant; the span of the first non-constant part.
    NotConst(Span),
    /// Folding hit an error that is already reported.
    Failed,
}

fn err_expr(span: Span) -> ir::Expr {
    ir::Expr { kind: ir::ExprKind::Literal(Value::Null), ty: Type::error(), span }
}

fn mk(kind: ir::ExprKind, ty: Type, span: Span) -> ir::Expr {
    ir::Expr { kind, ty, span }
}

/// Wraps `e` in a cast to `to` unless it already has that kind.
pub(super) fn cast_to(e: ir::Expr, to: &Type) -> ir::Expr {
    if e.ty.kind == to.kind || e.ty.is_error() || to.is_error() || matches!(e.ty.kind, Kind::Null) {
        return e;
    }
    let span = e.span;
    let ty = to.clone().with_nullable(e.ty.nullable || to.nullable);
    mk(ir::ExprKind::Cast(Box::new(e)), ty, span)
}

/// Whether a cast from `from` to `to` is allowed, and whether it can fail (and so
/// yield null) at run time.
pub fn cast_rule(from: &Kind, to: &Kind) -> Option<bool> {
    use Kind::*;
    Some(match (from, to) {
        (a, b) if a == b => false,
        (Error, _) | (_, Error) | (Null, _) => false,
        (Int, Float) | (Decimal { .. }, Float) => false,
        // Fallible when the target has fewer integer digits (overflow gives null).
        (Int, Decimal { precision, scale }) => precision - scale < 19,
        (Decimal { precision, scale }, Int) => precision - scale > 18,
        (Decimal { precision: p1, scale: s1 }, Decimal { precision: p2, scale: s2 }) => p2 - s2 < p1 - s1,
        (Float, Int) | (Float, Decimal { .. }) => true,
        (Int | Float | Decimal { .. } | Bool | Timestamp | Duration, String) => false,
        (String, Int | Float | Decimal { .. } | Bool | Timestamp | Duration) => true,
        (Timestamp, Int) | (Int, Timestamp) | (Duration, Int) | (Int, Duration) => false,
        (Bool, Int) => false,
        _ => return None,
    })
}

impl Checker<'_> {
    pub(super) fn expr(&mut self, cx: &mut Ctx, e: &ast::Expr) -> ir::Expr {
        let out = self.expr_untraced(cx, e);
        if let Some(t) = &mut self.trace {
            t.exprs.push((e.span, out.ty.clone(), cx.record.clone()));
        }
        out
    }

    fn expr_untraced(&mut self, cx: &mut Ctx, e: &ast::Expr) -> ir::Expr {
        use ast::ExprKind as A;
        use ir::ExprKind as K;
        let span = e.span;
        match &e.kind {
            A::Int(v) => mk(K::Literal(Value::Int(*v)), Type::int(), span),
            A::Decimal { units, precision, scale } => {
                mk(K::Literal(Value::Decimal { units: *units, scale: *scale }), Type::decimal(*precision, *scale), span)
            }
            A::Float(v) => mk(K::Literal(Value::Float(*v)), Type::float(), span),
            A::Str(s) => mk(K::Literal(Value::String(s.as_str().into())), Type::string(), span),
            A::Bool(b) => mk(K::Literal(Value::Bool(*b)), Type::bool(), span),
            A::Null => mk(K::Literal(Value::Null), Type::null(), span),
            A::Duration(ms) => mk(K::Literal(Value::Duration(*ms)), Type::duration(), span),
            A::Size(b) => mk(K::Literal(Value::Int(*b)), Type::int(), span),
            A::Timestamp(ms) => mk(K::Literal(Value::Timestamp(*ms)), Type::timestamp(), span),
            A::Error => err_expr(span),
            A::Name(id) => self.name(cx, id),
            A::Field(base, f) => {
                let b = self.expr(cx, base);
                self.field_access(b, f, false, span)
            }
            A::SafeField(base, f) => {
                let b = self.expr(cx, base);
                self.field_access(b, f, true, span)
            }
            A::Index(base, idx) => {
                let b = self.expr(cx, base);
                let i = self.expr(cx, idx);
                if b.ty.is_error() || i.ty.is_error() {
                    return err_expr(span);
                }
                let Kind::List(elem) = &b.ty.kind else {
                    self.error(
                        Diagnostic::error("E0217", base.span, format!("cannot index into `{}`", b.ty))
                            .label("not a list")
                            .help("only lists can be indexed with `[i]`"),
                    );
                    return err_expr(span);
                };
                if !matches!(i.ty.kind, Kind::Int) {
                    self.error(
                        Diagnostic::error("E0217", idx.span, format!("a list index must be `int`, found `{}`", i.ty))
                            .label("not an int")
                            .help("index with a 0-based int position"),
                    );
                    return err_expr(span);
                }
                let ty = (**elem).clone().nullable();
                mk(K::Index(Box::new(b), Box::new(i)), ty, span)
            }
            A::Call(name, args) => self.call(cx, name, args, span),
            A::Unary(op, x) => {
                let v = self.expr(cx, x);
                if v.ty.is_error() {
                    return err_expr(span);
                }
                match op {
                    ast::UnOp::Neg => {
                        if !(v.ty.is_numeric() || matches!(v.ty.kind, Kind::Duration)) {
                            self.error(
                                Diagnostic::error("E0214", x.span, format!("cannot negate `{}`", v.ty))
                                    .label(format!("this is `{}`", v.ty))
                                    .help("`-` applies to numbers and durations"),
                            );
                            return err_expr(span);
                        }
                        let ty = v.ty.clone();
                        mk(K::Unary(ir::UnOp::Neg, Box::new(v)), ty, span)
                    }
                    ast::UnOp::Not => {
                        let v = self.expect_bool(v, x.span, "`not`");
                        let ty = Type::bool().with_nullable(v.ty.nullable);
                        mk(K::Unary(ir::UnOp::Not, Box::new(v)), ty, span)
                    }
                }
            }
            A::Binary(op, a, b) => self.binary(cx, *op, a, b, span),
            A::If(c, t, x) => {
                let c_ir = self.expr(cx, c);
                let c_ir = self.expect_bool(c_ir, c.span, "an `if` condition");
                let t_ir = self.expr(cx, t);
                let x_ir = self.expr(cx, x);
                let Some(ty) = self.branches(&[(&t_ir, t.span), (&x_ir, x.span)], span, "`if` branches") else {
                    return err_expr(span);
                };
                let (t_ir, x_ir) = (cast_to(t_ir, &ty), cast_to(x_ir, &ty));
                mk(K::If(Box::new(c_ir), Box::new(t_ir), Box::new(x_ir)), ty, span)
            }
            A::Case { subject, arms, otherwise } => {
                let subj = subject.as_ref().map(|s| (self.expr(cx, s), s.span));
                let mut ir_arms = Vec::new();
                let mut results = Vec::new();
                for (w, t) in arms {
                    let w_ir = self.expr(cx, w);
                    let cond = match &subj {
                        Some((s, s_span)) => {
                            let l = s.clone();
                            self.equality(ir::BinOp::Eq, l, w_ir, *s_span, w.span, w.span)
                        }
                        None => self.expect_bool(w_ir, w.span, "a `when` condition"),
                    };
                    let t_ir = self.expr(cx, t);
                    results.push((t_ir, t.span));
                    ir_arms.push(cond);
                }
                let other = otherwise.as_ref().map(|o| (self.expr(cx, o), o.span));
                let mut all: Vec<(&ir::Expr, Span)> = results.iter().map(|(e, s)| (e, *s)).collect();
                if let Some((o, s)) = &other {
                    all.push((o, *s));
                }
                let Some(mut ty) = self.branches(&all, span, "`case` branches") else {
                    return err_expr(span);
                };
                if other.is_none() {
                    ty = ty.nullable();
                }
                let arms = ir_arms.into_iter().zip(results).map(|(c, (r, _))| (c, cast_to(r, &ty))).collect();
                let otherwise = other.map(|(o, _)| Box::new(cast_to(o, &ty)));
                mk(K::Case { arms, otherwise }, ty, span)
            }
            A::Cast(x, t) => {
                let v = self.expr(cx, x);
                let to = self.resolve_type(t);
                if v.ty.is_error() || to.is_error() {
                    return err_expr(span);
                }
                match cast_rule(&v.ty.kind, &to.kind) {
                    Some(fallible) => {
                        let ty = to.clone().with_nullable(to.nullable || v.ty.nullable || fallible);
                        if v.ty.kind == to.kind {
                            let mut v = v;
                            v.ty = ty;
                            return v;
                        }
                        mk(K::Cast(Box::new(v)), ty, span)
                    }
                    None => {
                        self.error(
                            Diagnostic::error("E0206", span, format!("cannot cast `{}` to `{}`", v.ty, to))
                                .label("no conversion between these types")
                                .help(cast_help(&v.ty.kind, &to.kind)),
                        );
                        err_expr(span)
                    }
                }
            }
            A::In { expr, list, negated } => {
                let mut l = self.expr(cx, expr);
                let mut items = Vec::new();
                let mut ty = l.ty.clone();
                let mut ok = !l.ty.is_error();
                for item in list {
                    let it = self.expr(cx, item);
                    if it.ty.is_error() {
                        ok = false;
                    } else if let Some(t) = common_type(&ty, &it.ty).filter(|t| t.is_equatable()) {
                        ty = t;
                    } else if ok {
                        self.error(
                            Diagnostic::error(
                                "E0201",
                                item.span,
                                format!("`{}` cannot be compared with `{}`", it.ty, l.ty),
                            )
                            .label(format!("this is `{}`", it.ty))
                            .with_secondary(expr.span, format!("this is `{}`", l.ty))
                            .help("every value in the list must have the type of the left side"),
                        );
                        ok = false;
                    }
                    items.push(it);
                }
                if !ok {
                    return err_expr(span);
                }
                l = cast_to(l, &ty);
                let items = items.into_iter().map(|i| cast_to(i, &ty)).collect();
                // Null when the value is, or when it is not found and an item is null (SQL).
                let nullable = ty.nullable;
                mk(
                    K::In { expr: Box::new(l), list: items, negated: *negated },
                    Type::bool().with_nullable(nullable),
                    span,
                )
            }
            A::IsNull { expr, negated } => {
                let v = self.expr(cx, expr);
                if !v.ty.nullable && !v.ty.is_error() {
                    self.error(
                        Diagnostic::warning("W0003", span, format!("`{}` is never null", self.snippet_name(expr)))
                            .label(format!("`is{} null` is always {}", if *negated { " not" } else { "" }, *negated))
                            .help(format!("its type `{}` is not nullable: remove the test", v.ty)),
                    );
                }
                mk(K::IsNull { expr: Box::new(v), negated: *negated }, Type::bool(), span)
            }
            A::List(items) => {
                let mut irs = Vec::new();
                let mut ty: Option<Type> = None;
                let mut ok = true;
                for it in items {
                    let v = self.expr(cx, it);
                    if v.ty.is_error() {
                        ok = false;
                    } else if let Some(t) = ty.as_ref().map_or(Some(v.ty.clone()), |t| common_type(t, &v.ty)) {
                        ty = Some(t);
                    } else if ok {
                        self.error(
                            Diagnostic::error(
                                "E0201",
                                it.span,
                                format!(
                                    "list elements of different types: `{}` and `{}`",
                                    ty.clone().unwrap_or_else(Type::null),
                                    v.ty
                                ),
                            )
                            .label(format!("this is `{}`", v.ty))
                            .help("every element of a list has the same type"),
                        );
                        ok = false;
                    }
                    irs.push(v);
                }
                if !ok {
                    return err_expr(span);
                }
                let ty = ty.unwrap_or_else(Type::null);
                let irs = irs.into_iter().map(|i| cast_to(i, &ty)).collect();
                mk(K::List(irs), Type::list(ty), span)
            }
            A::Record(items) => {
                let mut fields = Vec::new();
                let mut irs = Vec::new();
                let mut seen: Vec<(&str, Span)> = Vec::new();
                for it in items {
                    if let Some((_, prev)) = seen.iter().find(|(n, _)| *n == it.name.name) {
                        self.error(
                            Diagnostic::error(
                                "E0009",
                                it.name.span,
                                format!("field `{}` is given twice", it.name.name),
                            )
                            .label("second value")
                            .with_secondary(*prev, "first value")
                            .help("remove or rename one of them"),
                        );
                        continue;
                    }
                    seen.push((&it.name.name, it.name.span));
                    let v = self.expr(cx, &it.value);
                    fields.push(Field { name: it.name.name.clone(), ty: v.ty.clone() });
                    irs.push(v);
                }
                if irs.iter().any(|i| i.ty.is_error()) {
                    return err_expr(span);
                }
                mk(K::Record(irs), Type::record(RecordType::new(None, fields)), span)
            }
        }
    }

    fn snippet_name(&self, e: &ast::Expr) -> String {
        match &e.kind {
            ast::ExprKind::Name(id) => id.name.clone(),
            ast::ExprKind::Field(_, f) | ast::ExprKind::SafeField(_, f) => f.name.clone(),
            _ => "this value".into(),
        }
    }

    fn name(&mut self, cx: &mut Ctx, id: &ast::Ident) -> ir::Expr {
        use ir::ExprKind as K;
        let span = id.span;
        if let Some(i) = cx.params.iter().position(|(n, _)| *n == id.name) {
            return mk(K::Param(i), cx.params[i].1.clone(), span);
        }
        if let Some(i) = cx.steps.iter().position(|(n, _, _)| *n == id.name) {
            let (_, rec, multi) = &cx.steps[i];
            if *multi && !cx.in_agg_arg {
                self.error(
                    Diagnostic::error("E0418", span, format!("step `{}` can match several records", id.name))
                        .label("which one?")
                        .help(format!(
                            "aggregate over them, e.g. `count({0})`, `last({0}.field)` or `sum({0}.field)`",
                            id.name
                        )),
                );
                return err_expr(span);
            }
            return mk(K::Step(i), Type::new(Kind::Record(rec.clone())), span);
        }
        if let Some(rec) = cx.record.clone() {
            if let Some(i) = rec.index_of(&id.name) {
                if cx.fields_only_in_agg && !cx.in_agg_arg {
                    let help = if cx.keys.contains(&id.name) {
                        format!("`{}` is a key: it is in the output already, next to the aggregates", id.name)
                    } else {
                        format!("wrap it in an aggregate, e.g. `last({0})`, or add it to `key_by`", id.name)
                    };
                    self.error(
                        Diagnostic::error(
                            "E0405",
                            span,
                            format!("field `{}` is used outside an aggregate function", id.name),
                        )
                        .label("one value per group is needed here, but the group has many records")
                        .help(help),
                    );
                    return err_expr(span);
                }
                return mk(K::Field(i), rec.fields[i].ty.clone(), span);
            }
        }
        // Consts.
        if let Some(g) = self.globals.get(&id.name).copied() {
            if g.kind == super::DeclKind::Const {
                self.used.insert(id.name.clone());
                if g.index == usize::MAX {
                    return err_expr(span);
                }
                let decl = self.decls.consts[g.index];
                return match self.resolve_const(decl) {
                    Some((ty, v)) => mk(K::Literal(v), ty, span),
                    None => err_expr(span),
                };
            }
        }
        if self.broken.contains(&id.name) {
            return err_expr(span);
        }
        if matches!(id.name.as_str(), "window_start" | "window_end") {
            let help = if cx.after_window {
                "the window's bounds are added to the aggregate's output: use them in a `select` or `where` after `aggregate`"
            } else {
                "`window_start` and `window_end` exist only after `window ... | aggregate { ... }`"
            };
            self.error(
                Diagnostic::error("E0407", span, format!("`{}` is not available here", id.name))
                    .label("no window bounds here")
                    .help(help),
            );
            return err_expr(span);
        }
        if let Some(g) = self.globals.get(&id.name).copied() {
            self.used.insert(id.name.clone());
            self.error(
                Diagnostic::error("E0106", span, format!("`{}` is a {}, not a value", id.name, g.kind.noun()))
                    .label("expected a field, parameter or const")
                    .with_secondary(g.span, "declared here")
                    .help(match g.kind {
                        super::DeclKind::Fn => format!("call it: `{}(...)`", id.name),
                        _ => "only fields of the current record, fn parameters and consts are values".into(),
                    }),
            );
            return err_expr(span);
        }
        // Unknown: suggest from everything in scope.
        let mut cands: Vec<String> = cx.params.iter().map(|(n, _)| n.clone()).collect();
        cands.extend(cx.steps.iter().map(|(n, _, _)| n.clone()));
        if let Some(r) = &cx.record {
            cands.extend(r.fields.iter().map(|f| f.name.clone()));
        }
        cands.extend(self.names_of(&[super::DeclKind::Const]));
        let mut d = Diagnostic::error("E0103", span, format!("unknown field `{}`", id.name));
        d = match (&cx.record, did_you_mean(&id.name, cands.iter().map(String::as_str))) {
            (_, Some(s)) => d.label("not a field of the record here").help(format!("did you mean `{s}`?")),
            (Some(r), None) => {
                d.label("not a field of the record here").help(format!("the record here has {}", ir::record_fields(r)))
            }
            (None, None) => {
                d.label("no field, parameter or const has this name").help("declare a `const` or use a parameter")
            }
        };
        self.error(d);
        err_expr(span)
    }

    fn field_access(&mut self, base: ir::Expr, f: &ast::Ident, safe: bool, span: Span) -> ir::Expr {
        if base.ty.is_error() {
            return err_expr(span);
        }
        let Kind::Record(rec) = &base.ty.kind else {
            self.error(
                Diagnostic::error("E0213", f.span, format!("`{}` has no fields", base.ty))
                    .label(format!("`.{}` on a value of type `{}`", f.name, base.ty))
                    .with_secondary(base.span, format!("this is `{}`", base.ty))
                    .help("only records (schemas, join results) have fields"),
            );
            return err_expr(span);
        };
        let rec = rec.clone();
        let Some(i) = rec.index_of(&f.name) else {
            let help = did_you_mean(&f.name, rec.fields.iter().map(|x| x.name.as_str()))
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_else(|| format!("it has {}", ir::record_fields(&rec)));
            self.error(
                Diagnostic::error("E0103", f.span, format!("unknown field `{}`", f.name))
                    .label(format!("`{}` has no such field", base.ty.clone().non_null()))
                    .help(help),
            );
            return err_expr(span);
        };
        if base.ty.nullable && !safe {
            self.error(
                Diagnostic::error("E0207", f.span, format!("`.{}` on a value that may be null", f.name))
                    .label(format!("the record is `{}`", base.ty))
                    .help(format!("use `?.{}` (null when the record is) or give a default with `??`", f.name)),
            );
            return err_expr(span);
        }
        if safe && !base.ty.nullable {
            self.error(
                Diagnostic::warning("W0003", span, "`?.` on a value that is never null")
                    .label(format!("the record is `{}`", base.ty))
                    .help(format!("write `.{}`", f.name)),
            );
        }
        let fty = rec.fields[i].ty.clone();
        if base.ty.nullable {
            mk(ir::ExprKind::SafeGetField(Box::new(base), i), fty.nullable(), span)
        } else {
            mk(ir::ExprKind::GetField(Box::new(base), i), fty, span)
        }
    }

    pub(super) fn expect_bool(&mut self, e: ir::Expr, span: Span, what: &str) -> ir::Expr {
        if e.ty.is_error() || matches!(e.ty.kind, Kind::Bool) {
            return e;
        }
        let help = if matches!(e.ty.kind, Kind::Null) {
            "write `true` or `false`".to_string()
        } else if e.ty.is_numeric() {
            "compare it, e.g. `x > 0` or `x != 0`".to_string()
        } else {
            "write a condition such as `a == b`".to_string()
        };
        self.error(
            Diagnostic::error("E0202", span, format!("{what} must be `bool`, found `{}`", e.ty))
                .label(format!("this is `{}`", e.ty))
                .help(help),
        );
        err_expr(span)
    }

    fn branches(&mut self, items: &[(&ir::Expr, Span)], span: Span, what: &str) -> Option<Type> {
        let mut ty = items.first().map_or(Type::null(), |(e, _)| e.ty.clone());
        let mut first: Option<(Type, Span)> = None;
        for (e, s) in items {
            if e.ty.is_error() {
                return None;
            }
            match common_type(&ty, &e.ty) {
                Some(t) => ty = t,
                None => {
                    let (ft, fs) = first.clone().unwrap_or((ty.clone(), span));
                    self.error(
                        Diagnostic::error("E0205", *s, format!("{what} have different types: `{ft}` and `{}`", e.ty))
                            .label(format!("this is `{}`", e.ty))
                            .with_secondary(fs, format!("this is `{ft}`"))
                            .help("make every branch the same type, converting one with `as`"),
                    );
                    return None;
                }
            }
            if first.is_none() {
                first = Some((e.ty.clone(), *s));
            }
        }
        Some(ty)
    }

    fn equality(
        &mut self,
        op: ir::BinOp,
        l: ir::Expr,
        r: ir::Expr,
        l_span: Span,
        r_span: Span,
        span: Span,
    ) -> ir::Expr {
        if l.ty.is_error() || r.ty.is_error() {
            return err_expr(span);
        }
        if matches!(l.ty.kind, Kind::Null) || matches!(r.ty.kind, Kind::Null) {
            let neg = op == ir::BinOp::Ne;
            self.error(
                Diagnostic::error("E0216", span, "comparing with `null` is never true")
                    .label("`null` is not equal (or unequal) to anything, even `null`")
                    .help(format!("write `is{} null`", if neg { " not" } else { "" })),
            );
            return err_expr(span);
        }
        let ordering = !matches!(op, ir::BinOp::Eq | ir::BinOp::Ne);
        match common_type(&l.ty, &r.ty).filter(|t| if ordering { t.is_orderable() } else { t.is_equatable() }) {
            Some(t) => {
                let nullable = t.nullable;
                let (l, r) = (cast_to(l, &t), cast_to(r, &t));
                mk(ir::ExprKind::Binary(op, Box::new(l), Box::new(r)), Type::bool().with_nullable(nullable), span)
            }
            None => {
                let help = compare_help(&l.ty, &r.ty);
                self.error(
                    Diagnostic::error("E0201", span, format!("cannot compare `{}` with `{}`", l.ty, r.ty))
                        .label(format!("`{}` {} `{}`", l.ty, op.symbol(), r.ty))
                        .with_secondary(l_span, format!("this is `{}`", l.ty))
                        .with_secondary(r_span, format!("this is `{}`", r.ty))
                        .help(help),
                );
                err_expr(span)
            }
        }
    }

    fn binary(&mut self, cx: &mut Ctx, op: ast::BinOp, a: &ast::Expr, b: &ast::Expr, span: Span) -> ir::Expr {
        use ast::BinOp as B;
        let l = self.expr(cx, a);
        let r = self.expr(cx, b);
        let iop = op;
        match op {
            B::Or | B::And => {
                let l = self.expect_bool(l, a.span, &format!("the left side of `{}`", op.symbol()));
                let r = self.expect_bool(r, b.span, &format!("the right side of `{}`", op.symbol()));
                if l.ty.is_error() || r.ty.is_error() {
                    return err_expr(span);
                }
                let nullable = l.ty.nullable || r.ty.nullable;
                mk(ir::ExprKind::Binary(iop, Box::new(l), Box::new(r)), Type::bool().with_nullable(nullable), span)
            }
            B::Eq | B::Ne | B::Lt | B::Le | B::Gt | B::Ge => self.equality(iop, l, r, a.span, b.span, span),
            B::Coalesce => {
                if l.ty.is_error() || r.ty.is_error() {
                    return err_expr(span);
                }
                if !l.ty.nullable {
                    self.error(
                        Diagnostic::warning("W0003", a.span, format!("`{}` is never null", self.snippet_name(a)))
                            .label(format!("its type `{}` is not nullable", l.ty))
                            .help("the default after `??` is never used: remove it"),
                    );
                }
                match common_type(&l.ty, &r.ty) {
                    Some(t) => {
                        let t = t.with_nullable(r.ty.nullable);
                        let (l, r) = (cast_to(l, &t), cast_to(r, &t));
                        mk(ir::ExprKind::Binary(iop, Box::new(l), Box::new(r)), t, span)
                    }
                    None => {
                        self.error(
                            Diagnostic::error(
                                "E0201",
                                b.span,
                                format!("the default is `{}`, but the value is `{}`", r.ty, l.ty),
                            )
                            .label(format!("this is `{}`", r.ty))
                            .with_secondary(a.span, format!("this is `{}`", l.ty))
                            .help("give a default of the value's type"),
                        );
                        err_expr(span)
                    }
                }
            }
            B::Add | B::Sub | B::Mul | B::Div | B::Rem => {
                if l.ty.is_error() || r.ty.is_error() {
                    return err_expr(span);
                }
                let nullable = l.ty.nullable || r.ty.nullable;
                let aop = match op {
                    B::Add => ArithOp::Add,
                    B::Sub => ArithOp::Sub,
                    B::Mul => ArithOp::Mul,
                    B::Div => ArithOp::Div,
                    _ => ArithOp::Rem,
                };
                if matches!(op, B::Div | B::Rem)
                    && is_zero_literal(&r)
                    && matches!(l.ty.kind, Kind::Int | Kind::Decimal { .. } | Kind::Duration)
                {
                    self.error(
                        Diagnostic::error("E0215", b.span, "division by zero")
                            .label("this is zero")
                            .help("integer and decimal division by zero fails at run time; divide by a non-zero value"),
                    );
                    return err_expr(span);
                }
                let (lk, rk) = (&l.ty.kind, &r.ty.kind);
                use Kind::*;
                let time = match (lk, rk, op) {
                    (Timestamp, Duration, B::Add | B::Sub) | (Duration, Timestamp, B::Add) => Some(Type::timestamp()),
                    (Timestamp, Timestamp, B::Sub) => Some(Type::duration()),
                    (Duration, Duration, B::Add | B::Sub | B::Rem) => Some(Type::duration()),
                    (Duration, Int, B::Mul | B::Div) | (Int, Duration, B::Mul) => Some(Type::duration()),
                    _ => None,
                };
                if let Some(t) = time {
                    return mk(ir::ExprKind::Binary(iop, Box::new(l), Box::new(r)), t.with_nullable(nullable), span);
                }
                match arith_result(aop, lk, rk) {
                    Some(k) => {
                        // Make mixed-class operands explicit: int -> float/decimal, decimal -> float.
                        let operand = |e: ir::Expr| -> ir::Expr {
                            let target = match (&e.ty.kind, &k) {
                                (Int, Float) | (Decimal { .. }, Float) => Some(Type::float()),
                                (Int, Decimal { .. }) => Some(Type::decimal(19, 0)),
                                _ => None,
                            };
                            match target {
                                Some(t) => cast_to(e, &t),
                                None => e,
                            }
                        };
                        let (l, r) = (operand(l), operand(r));
                        mk(
                            ir::ExprKind::Binary(iop, Box::new(l), Box::new(r)),
                            Type::new(k).with_nullable(nullable),
                            span,
                        )
                    }
                    None => {
                        let help = if matches!((lk, rk), (String, _) | (_, String)) && op == B::Add {
                            "join strings with `concat(a, b)`".to_string()
                        } else if matches!((lk, rk), (Timestamp, Timestamp)) {
                            "only `-` applies to two timestamps (giving a duration); add a duration to a timestamp"
                                .to_string()
                        } else {
                            "arithmetic applies to numbers; durations add to timestamps".to_string()
                        };
                        self.error(
                            Diagnostic::error(
                                "E0214",
                                span,
                                format!("cannot apply `{}` to `{}` and `{}`", op.symbol(), l.ty, r.ty),
                            )
                            .label(format!("`{}` {} `{}`", l.ty, op.symbol(), r.ty))
                            .help(help),
                        );
                        err_expr(span)
                    }
                }
            }
        }
    }

    fn call(&mut self, cx: &mut Ctx, name: &ast::Ident, args: &[ast::Expr], span: Span) -> ir::Expr {
        use ir::ExprKind as K;
        // User fns.
        if let Some(entry) = self.fn_index.get(&name.name).copied() {
            self.used.insert(name.name.clone());
            let irs: Vec<ir::Expr> = args.iter().map(|a| self.expr(cx, a)).collect();
            let Some(idx) = entry else {
                return err_expr(span);
            };
            let f = &self.out.fns[idx];
            let (params, ret) = (f.params.clone(), f.ret.clone());
            if irs.len() != params.len() {
                let sig: Vec<String> = params.iter().map(|(n, t)| format!("{n}: {t}")).collect();
                let decl = self.out.fns[idx].span;
                self.error(
                    Diagnostic::error(
                        "E0203",
                        span,
                        format!(
                            "`{}` takes {} argument{}, but {} {} given",
                            name.name,
                            params.len(),
                            plural(params.len()),
                            irs.len(),
                            if irs.len() == 1 { "was" } else { "were" }
                        ),
                    )
                    .label(format!("{} argument{}", irs.len(), plural(irs.len())))
                    .with_secondary(decl, format!("`{}({})` declared here", name.name, sig.join(", ")))
                    .help(format!("call it as `{}({})`", name.name, sig.join(", "))),
                );
                return err_expr(span);
            }
            let mut out_args = Vec::new();
            let mut ok = true;
            for ((a, arg), (pname, pty)) in irs.into_iter().zip(args).zip(&params) {
                if a.ty.is_error() {
                    ok = false;
                } else if !a.ty.assignable_to(pty) {
                    ok = false;
                    self.error(
                        Diagnostic::error(
                            "E0204",
                            arg.span,
                            format!("argument `{pname}` of `{}` must be `{pty}`, found `{}`", name.name, a.ty),
                        )
                        .label(format!("this is `{}`", a.ty))
                        .help(if a.ty.nullable && a.ty.clone().non_null().assignable_to(pty) {
                            "it may be null: give a default with `?? value`".to_string()
                        } else {
                            format!("convert it with `as {pty}`")
                        }),
                    );
                }
                out_args.push(cast_to(a, pty));
            }
            if !ok {
                return err_expr(span);
            }
            return mk(K::CallFn(idx, out_args), ret, span);
        }
        // Aggregates.
        if let Some(agg) = flow_stdlib::aggregate(&name.name) {
            if !cx.aggs_allowed {
                for a in args {
                    let _ = self.expr(cx, a);
                }
                self.error(
                    Diagnostic::error("E0402", name.span, format!("aggregate function `{}` used outside `aggregate`", name.name))
                        .label("aggregates combine many records into one value")
                        .help("use it inside `aggregate { name: ... }` after `key_by` and/or `window`, or in pattern `measures { }`"),
                );
                return err_expr(span);
            }
            if cx.in_agg_arg {
                self.error(
                    Diagnostic::error(
                        "E0404",
                        name.span,
                        format!("aggregate `{}` inside another aggregate", name.name),
                    )
                    .label("nested aggregate")
                    .help("aggregate once per group; aggregate again with a second `key_by ... | aggregate` stage"),
                );
                return err_expr(span);
            }
            if args.len() > 1 || (args.is_empty() && !agg.arg_optional) {
                for a in args {
                    cx.in_agg_arg = true;
                    let _ = self.expr(cx, a);
                    cx.in_agg_arg = false;
                }
                let usage = if agg.arg_optional {
                    format!("`{0}()` or `{0}(value)`", agg.name)
                } else {
                    format!("`{}(value)`", agg.name)
                };
                self.error(
                    Diagnostic::error(
                        "E0203",
                        span,
                        format!(
                            "`{}` takes {}, but {} argument{} {} given",
                            agg.name,
                            if agg.arg_optional { "at most one argument" } else { "one argument" },
                            args.len(),
                            plural(args.len()),
                            if args.len() == 1 { "was" } else { "were" }
                        ),
                    )
                    .label("wrong number of arguments")
                    .help(format!("write {usage}")),
                );
                return err_expr(span);
            }
            let arg = args.first().map(|a| {
                cx.in_agg_arg = true;
                let v = self.expr(cx, a);
                cx.in_agg_arg = false;
                v
            });
            if arg.as_ref().is_some_and(|a| a.ty.is_error()) {
                return err_expr(span);
            }
            return match flow_stdlib::aggregate_result(agg, arg.as_ref().map(|a| &a.ty)) {
                Ok(ty) => {
                    let idx = cx.aggs.len();
                    cx.aggs.push(ir::AggCall { func: agg.name, arg, ty: ty.clone() });
                    mk(K::Agg(idx), ty, span)
                }
                Err(CallError::Arg { expected, got, .. }) => {
                    let a_span = args.first().map_or(span, |a| a.span);
                    let help = if matches!(got.kind, Kind::String) && agg.name == "sum" {
                        "to count records use `count()`; to add numbers kept as text, cast them: `sum(x as decimal(18, 2))`".to_string()
                    } else {
                        format!("`{}` takes {expected}", agg.name)
                    };
                    self.error(
                        Diagnostic::error("E0204", a_span, format!("cannot `{}` values of type `{got}`", agg.name))
                            .label(format!("this is `{got}`"))
                            .help(help),
                    );
                    err_expr(span)
                }
                Err(_) => err_expr(span),
            };
        }
        // Built-in scalars.
        let irs: Vec<ir::Expr> = args.iter().map(|a| self.expr(cx, a)).collect();
        let Some(f) = flow_stdlib::scalar(&name.name) else {
            if self.broken.contains(&name.name) {
                return err_expr(span);
            }
            let mut cands: Vec<String> = flow_stdlib::all_names().map(String::from).collect();
            cands.extend(self.fn_index.keys().cloned());
            let help = did_you_mean(&name.name, cands.iter().map(String::as_str))
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_else(|| {
                    "declare it with `fn name(param: type) -> type = ...`; `flowc explain E0104` lists the built-ins"
                        .into()
                });
            self.error(
                Diagnostic::error("E0104", name.span, format!("unknown function `{}`", name.name))
                    .label("no built-in or declared fn has this name")
                    .help(help),
            );
            return err_expr(span);
        };
        if irs.iter().any(|a| a.ty.is_error()) {
            return err_expr(span);
        }
        let tys: Vec<Type> = irs.iter().map(|a| a.ty.clone()).collect();
        match flow_stdlib::check_call(f, &tys) {
            Ok(ty) => {
                // Bring the arguments of common-type functions to that type.
                let irs = if matches!(f.ret, flow_stdlib::Ret::Common) {
                    irs.into_iter().map(|a| cast_to(a, &ty.clone().with_nullable(true))).collect()
                } else {
                    irs
                };
                mk(K::Call(f.name, irs), ty, span)
            }
            Err(CallError::Arity { min, max, got }) => {
                let expected = match max {
                    Some(m) if m == min => format!("{min} argument{}", plural(min)),
                    Some(m) => format!("{min} to {m} arguments"),
                    None => format!("at least {min} argument{}", plural(min)),
                };
                self.error(
                    Diagnostic::error(
                        "E0203",
                        span,
                        format!(
                            "`{}` takes {expected}, but {got} {} given",
                            f.name,
                            if got == 1 { "was" } else { "were" }
                        ),
                    )
                    .label(format!("{got} argument{}", plural(got)))
                    .help(format!("{}: {}", f.signature(), f.doc)),
                );
                err_expr(span)
            }
            Err(CallError::Arg { index, expected, got }) => {
                self.error(
                    Diagnostic::error(
                        "E0204",
                        args[index].span,
                        format!("argument {} of `{}` must be {expected}, found `{got}`", index + 1, f.name),
                    )
                    .label(format!("this is `{got}`"))
                    .help(format!("{}: {}", f.signature(), f.doc)),
                );
                err_expr(span)
            }
            Err(CallError::NoCommonType { index, got, so_far }) => {
                self.error(
                    Diagnostic::error(
                        "E0204",
                        args[index].span,
                        format!("arguments of `{}` must share a type: `{so_far}` and `{got}`", f.name),
                    )
                    .label(format!("this is `{got}`"))
                    .help("convert the arguments to one type with `as`"),
                );
                err_expr(span)
            }
        }
    }

    // ------------------------------------------------------------ constant folding

    pub(super) fn fold(&mut self, e: &ir::Expr) -> Folded {
        use ir::ExprKind as K;
        match &e.kind {
            K::Literal(v) => Folded::Value(v.clone()),
            K::Unary(ir::UnOp::Neg, x) => match self.fold(x) {
                Folded::Value(v) => match v {
                    Value::Int(i) => self.checked(i.checked_neg().map(Value::Int), e.span),
                    Value::Float(f) => Folded::Value(Value::Float(-f)),
                    Value::Duration(d) => self.checked(d.checked_neg().map(Value::Duration), e.span),
                    Value::Decimal { units, scale } => Folded::Value(Value::Decimal { units: -units, scale }),
                    _ => Folded::NotConst(e.span),
                },
                other => other,
            },
            K::Unary(ir::UnOp::Not, x) => match self.fold(x) {
                Folded::Value(Value::Bool(b)) => Folded::Value(Value::Bool(!b)),
                Folded::Value(_) => Folded::NotConst(e.span),
                other => other,
            },
            K::Cast(x) => match self.fold(x) {
                Folded::Value(v) => match convert(&v, &e.ty.kind) {
                    Some(v) => Folded::Value(v),
                    None => Folded::NotConst(e.span),
                },
                other => other,
            },
            K::Binary(op, a, b) => {
                let (va, vb) = match (self.fold(a), self.fold(b)) {
                    (Folded::Value(x), Folded::Value(y)) => (x, y),
                    (Folded::Value(_), other) | (other, _) => return other,
                };
                match arith(*op, &va, &vb, &e.ty.kind) {
                    Ok(Some(v)) => Folded::Value(v),
                    Ok(None) => Folded::NotConst(e.span),
                    Err(why) => {
                        self.error(
                            Diagnostic::error("E0215", e.span, format!("constant arithmetic {why}"))
                                .label(why)
                                .help("change the constants so the result fits"),
                        );
                        Folded::Failed
                    }
                }
            }
            _ => Folded::NotConst(e.span),
        }
    }

    fn checked(&mut self, v: Option<Value>, span: Span) -> Folded {
        match v {
            Some(v) => Folded::Value(v),
            None => {
                self.error(
                    Diagnostic::error("E0215", span, "constant arithmetic overflows")
                        .label("the result does not fit in 64 bits")
                        .help("use smaller values"),
                );
                Folded::Failed
            }
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn is_zero_literal(e: &ir::Expr) -> bool {
    match &e.kind {
        ir::ExprKind::Literal(Value::Int(0)) | ir::ExprKind::Literal(Value::Duration(0)) => true,
        ir::ExprKind::Literal(Value::Decimal { units: 0, .. }) => true,
        ir::ExprKind::Cast(x) => is_zero_literal(x),
        _ => false,
    }
}

fn compare_help(a: &Type, b: &Type) -> String {
    use Kind::*;
    match (&a.kind, &b.kind) {
        (String, Int | Float | Decimal { .. }) | (Int | Float | Decimal { .. }, String) => {
            "convert one side: `x as int`, or compare with a string literal".into()
        }
        (Timestamp, Int) | (Int, Timestamp) => {
            "compare timestamps with timestamps: write `@2024-01-01T00:00:00Z` or `from_epoch_ms(n)`".into()
        }
        (Duration, Int) | (Int, Duration) => "add a unit to the number, e.g. `30s`".into(),
        (Record(_), _) | (_, Record(_)) => "compare fields of the records, not the records".into(),
        _ => "both sides of a comparison must have compatible types".into(),
    }
}

fn cast_help(from: &Kind, to: &Kind) -> String {
    match (from, to) {
        (Kind::Timestamp, Kind::Duration) | (Kind::Duration, Kind::Timestamp) => {
            "subtract two timestamps to get a duration; add a duration to a timestamp".into()
        }
        (Kind::Bool, _) => "compare instead, e.g. `if flag then 1 else 0`".into(),
        _ => "casts convert between numbers, strings, bools, timestamps and durations (as int milliseconds)".into(),
    }
}

fn pow10(n: u8) -> i128 {
    10i128.pow(n as u32)
}

/// Converts a constant to `to` (the cast rules of docs/language.md).
fn convert(v: &Value, to: &Kind) -> Option<Value> {
    Some(match (v, to) {
        (Value::Null, _) => Value::Null,
        (Value::Int(i), Kind::Int) => Value::Int(*i),
        (Value::Int(i), Kind::Float) => Value::Float(*i as f64),
        (Value::Int(i), Kind::Decimal { scale, .. }) => {
            Value::Decimal { units: (*i as i128).checked_mul(pow10(*scale))?, scale: *scale }
        }
        (Value::Decimal { units, scale }, Kind::Float) => Value::Float(*units as f64 / 10f64.powi(*scale as i32)),
        (Value::Decimal { units, scale: s1 }, Kind::Decimal { scale: s2, .. }) => {
            if s2 >= s1 {
                Value::Decimal { units: units.checked_mul(pow10(s2 - s1))?, scale: *s2 }
            } else {
                Value::Decimal { units: round_div(*units, pow10(s1 - s2)), scale: *s2 }
            }
        }
        (Value::Duration(d), Kind::Int) | (Value::Timestamp(d), Kind::Int) => Value::Int(*d),
        (Value::Int(i), Kind::Duration) => Value::Duration(*i),
        (Value::Int(i), Kind::Timestamp) => Value::Timestamp(*i),
        (Value::Float(f), Kind::Float) => Value::Float(*f),
        _ => return None,
    })
}

/// Integer division rounding half away from zero.
fn round_div(a: i128, b: i128) -> i128 {
    let q = a / b;
    let r = a % b;
    if r.abs() * 2 >= b.abs() {
        q + a.signum() * b.signum()
    } else {
        q
    }
}

/// Folds one arithmetic operation; `Ok(None)` when it is not foldable here.
fn arith(op: ir::BinOp, a: &Value, b: &Value, result: &Kind) -> Result<Option<Value>, &'static str> {
    use ir::BinOp as O;
    const OVERFLOW: &str = "overflows";
    const DIV0: &str = "divides by zero";
    Ok(Some(match (a, b) {
        (Value::Int(x), Value::Int(y)) => Value::Int(match op {
            O::Add => x.checked_add(*y).ok_or(OVERFLOW)?,
            O::Sub => x.checked_sub(*y).ok_or(OVERFLOW)?,
            O::Mul => x.checked_mul(*y).ok_or(OVERFLOW)?,
            O::Div if *y == 0 => return Err(DIV0),
            O::Div => x.checked_div(*y).ok_or(OVERFLOW)?,
            O::Rem if *y == 0 => return Err(DIV0),
            O::Rem => x.checked_rem(*y).ok_or(OVERFLOW)?,
            _ => return Ok(None),
        }),
        (Value::Float(x), Value::Float(y)) => Value::Float(match op {
            O::Add => x + y,
            O::Sub => x - y,
            O::Mul => x * y,
            O::Div => x / y,
            O::Rem => x % y,
            _ => return Ok(None),
        }),
        (Value::Decimal { units: x, scale: sx }, Value::Decimal { units: y, scale: sy }) => {
            let Kind::Decimal { scale: rs, .. } = result else {
                return Ok(None);
            };
            let units = match op {
                O::Add | O::Sub | O::Rem => {
                    let s = (*sx).max(*sy);
                    let xa = x.checked_mul(pow10(s - sx)).ok_or(OVERFLOW)?;
                    let ya = y.checked_mul(pow10(s - sy)).ok_or(OVERFLOW)?;
                    let r = match op {
                        O::Add => xa.checked_add(ya).ok_or(OVERFLOW)?,
                        O::Sub => xa.checked_sub(ya).ok_or(OVERFLOW)?,
                        _ if ya == 0 => return Err(DIV0),
                        _ => xa % ya,
                    };
                    rescale(r, s, *rs).ok_or(OVERFLOW)?
                }
                O::Mul => rescale(x.checked_mul(*y).ok_or(OVERFLOW)?, sx + sy, *rs).ok_or(OVERFLOW)?,
                O::Div => {
                    if *y == 0 {
                        return Err(DIV0);
                    }
                    // x/10^sx / (y/10^sy) = x * 10^(rs - sx + sy) / y
                    let shift = *rs as i32 - *sx as i32 + *sy as i32;
                    let num = if shift >= 0 {
                        x.checked_mul(10i128.checked_pow(shift as u32).ok_or(OVERFLOW)?).ok_or(OVERFLOW)?
                    } else {
                        x / 10i128.pow((-shift) as u32)
                    };
                    round_div(num, *y)
                }
                _ => return Ok(None),
            };
            if units.unsigned_abs() >= 10u128.pow(38) {
                return Err(OVERFLOW);
            }
            Value::Decimal { units, scale: *rs }
        }
        (Value::Duration(x), Value::Duration(y)) => Value::Duration(match op {
            O::Add => x.checked_add(*y).ok_or(OVERFLOW)?,
            O::Sub => x.checked_sub(*y).ok_or(OVERFLOW)?,
            O::Rem if *y == 0 => return Err(DIV0),
            O::Rem => x % y,
            _ => return Ok(None),
        }),
        (Value::Duration(x), Value::Int(y)) | (Value::Int(y), Value::Duration(x)) => Value::Duration(match op {
            O::Mul => x.checked_mul(*y).ok_or(OVERFLOW)?,
            O::Div if *y == 0 => return Err(DIV0),
            O::Div => x.checked_div(*y).ok_or(OVERFLOW)?,
            _ => return Ok(None),
        }),
        (Value::Timestamp(t), Value::Duration(d)) | (Value::Duration(d), Value::Timestamp(t)) => {
            Value::Timestamp(match op {
                O::Add => t.checked_add(*d).ok_or(OVERFLOW)?,
                O::Sub => t.checked_sub(*d).ok_or(OVERFLOW)?,
                _ => return Ok(None),
            })
        }
        (Value::Timestamp(x), Value::Timestamp(y)) if op == O::Sub => {
            Value::Duration(x.checked_sub(*y).ok_or(OVERFLOW)?)
        }
        _ => return Ok(None),
    }))
}

fn rescale(units: i128, from: u8, to: u8) -> Option<i128> {
    if to >= from {
        units.checked_mul(pow10(to - from))
    } else {
        Some(round_div(units, pow10(from - to)))
    }
}

/// A record type made of `fields`, unnamed.
pub(super) fn record(fields: Vec<Field>) -> Record {
    Arc::new(RecordType::new(None, fields))
}
