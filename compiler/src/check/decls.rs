//! Checking declarations other than pipelines: schemas and types, consts, fns,
//! `config`, topics, sources (connectors, event time), sinks, dead-letter targets.

use super::expr::{Ctx, Folded};
use super::{Checker, DeclKind, Progress};
use crate::diag::{did_you_mean, Diagnostic};
use crate::ir::{self, Connector, Format, GeneratorKind, Record};
use crate::source::Span;
use crate::syntax::ast;
use flow_types::{Field, Kind, RecordType, Type, Value};
use std::collections::HashMap;
use std::sync::Arc;

const PRIMITIVES: &[&str] = &["bool", "int", "float", "string", "timestamp", "duration", "decimal", "list"];

/// The name of the built-in schema of dead-letter records.
pub const DEAD_LETTER_SCHEMA: &str = "DeadLetter";

/// The record a dead-letter output receives: which source, where in it, why, and the
/// raw bytes of the record as text.
pub fn dead_letter_record() -> Record {
    Arc::new(RecordType::new(
        Some(DEAD_LETTER_SCHEMA.into()),
        vec![
            Field { name: "source".into(), ty: Type::string() },
            Field { name: "position".into(), ty: Type::string() },
            Field { name: "reason".into(), ty: Type::string() },
            Field { name: "raw".into(), ty: Type::string() },
        ],
    ))
}

/// What an option or connector argument must be.
#[derive(Clone, Copy, Debug)]
pub(super) enum Want {
    Int,
    Duration,
    Size,
    Bool,
    Str,
    /// One of these words, written bare (`format: json`) or as a string.
    Choice(&'static [&'static str]),
    /// A field name of the declaration's schema.
    Field,
}

impl Want {
    fn describe(self) -> String {
        match self {
            Want::Int => "an int".into(),
            Want::Duration => "a duration such as `30s`".into(),
            Want::Size => "a size such as `1GiB`".into(),
            Want::Bool => "`true` or `false`".into(),
            Want::Str => "a string".into(),
            Want::Choice(c) => format!("one of {}", c.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")),
            Want::Field => "a field name".into(),
        }
    }
}

/// A checked option value.
#[derive(Clone, Debug)]
pub(super) enum OptVal {
    Value(Value),
    Word(String),
}

#[derive(Clone, Debug)]
pub(super) struct Opts {
    pub vals: HashMap<&'static str, (OptVal, Span)>,
}

impl Opts {
    pub fn int(&self, k: &str) -> Option<(i64, Span)> {
        match self.vals.get(k) {
            Some((OptVal::Value(Value::Int(v) | Value::Duration(v)), s)) => Some((*v, *s)),
            _ => None,
        }
    }
    pub fn bool(&self, k: &str) -> Option<bool> {
        match self.vals.get(k) {
            Some((OptVal::Value(Value::Bool(b)), _)) => Some(*b),
            _ => None,
        }
    }
    pub fn word(&self, k: &str) -> Option<(&str, Span)> {
        match self.vals.get(k) {
            Some((OptVal::Word(w), s)) => Some((w.as_str(), *s)),
            Some((OptVal::Value(Value::String(w)), s)) => Some((w, *s)),
            _ => None,
        }
    }
}

struct ConnSpec {
    name: &'static str,
    source: bool,
    sink: bool,
    positional: &'static [(&'static str, Want)],
    named: &'static [(&'static str, Want)],
    required: &'static [&'static str],
}

const FORMATS: &[&str] = &["json", "csv"];
const OUT_FORMATS: &[&str] = &["json", "csv", "text"];
const KAFKA_SECURITY: &[&str] = &["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
const SASL_MECHANISMS: &[&str] = &["plain", "scram_sha_256", "scram_sha_512"];

static CONNECTORS: &[ConnSpec] = &[
    ConnSpec {
        name: "file",
        source: true,
        sink: true,
        positional: &[("path", Want::Str)],
        named: &[("format", Want::Choice(FORMATS)), ("header", Want::Bool), ("delimiter", Want::Str)],
        required: &["path"],
    },
    ConnSpec {
        name: "stdin",
        source: true,
        sink: false,
        positional: &[],
        named: &[("format", Want::Choice(FORMATS))],
        required: &[],
    },
    ConnSpec {
        name: "stdout",
        source: false,
        sink: true,
        positional: &[],
        named: &[("format", Want::Choice(OUT_FORMATS))],
        required: &[],
    },
    ConnSpec {
        name: "generator",
        source: true,
        sink: false,
        positional: &[("kind", Want::Choice(&["transactions", "nexmark"]))],
        named: &[
            ("stream", Want::Choice(&["persons", "auctions", "bids"])),
            ("rate", Want::Int),
            ("seed", Want::Int),
            ("count", Want::Int),
            ("keys", Want::Int),
        ],
        required: &["kind"],
    },
    ConnSpec {
        name: "kafka",
        source: true,
        sink: true,
        positional: &[("brokers", Want::Str)],
        named: &[
            ("topic", Want::Str),
            ("group", Want::Str),
            ("format", Want::Choice(FORMATS)),
            ("key", Want::Field),
            ("security", Want::Choice(KAFKA_SECURITY)),
            ("sasl_mechanism", Want::Choice(SASL_MECHANISMS)),
            ("user", Want::Str),
            ("password_env", Want::Str),
            ("ca", Want::Str),
        ],
        required: &["brokers", "topic"],
    },
];

/// The fields a generator produces, with their types.
pub fn generator_fields(kind: GeneratorKind) -> Vec<(&'static str, Type)> {
    let s = Type::string;
    let i = Type::int;
    let ts = Type::timestamp;
    match kind {
        GeneratorKind::Transactions => vec![
            ("id", s()),
            ("account", s()),
            ("merchant", s()),
            ("amount", Type::decimal(12, 2)),
            ("ts", ts()),
            ("country", s()),
            ("channel", s()),
            ("status", s()),
        ],
        GeneratorKind::NexmarkPersons => vec![
            ("id", i()),
            ("name", s()),
            ("email_address", s()),
            ("credit_card", s()),
            ("city", s()),
            ("state", s()),
            ("date_time", ts()),
            ("extra", s()),
        ],
        GeneratorKind::NexmarkAuctions => vec![
            ("id", i()),
            ("item_name", s()),
            ("description", s()),
            ("initial_bid", i()),
            ("reserve", i()),
            ("date_time", ts()),
            ("expires", ts()),
            ("seller", i()),
            ("category", i()),
            ("extra", s()),
        ],
        GeneratorKind::NexmarkBids => vec![
            ("auction", i()),
            ("bidder", i()),
            ("price", i()),
            ("channel", s()),
            ("url", s()),
            ("date_time", ts()),
            ("extra", s()),
        ],
    }
}

impl<'a> Checker<'a> {
    // ------------------------------------------------------------ types and schemas

    pub(super) fn resolve_type(&mut self, t: &ast::TypeExpr) -> Type {
        let base = match &t.kind {
            ast::TypeExprKind::Named(id) => match id.name.as_str() {
                "bool" => Type::bool(),
                "int" => Type::int(),
                "float" => Type::float(),
                "string" => Type::string(),
                "timestamp" => Type::timestamp(),
                "duration" => Type::duration(),
                "decimal" => {
                    self.error(
                        Diagnostic::error("E0008", id.span, "`decimal` needs a precision and a scale")
                            .label("missing `(precision, scale)`")
                            .help("write e.g. `decimal(12, 2)`: 12 digits in all, 2 after the point"),
                    );
                    Type::error()
                }
                name => match self.schema_type(id) {
                    Some(r) => Type::new(Kind::Record(r)),
                    None if self.broken.contains(name)
                        || self.schema_progress.get(name) == Some(&Progress::InProgress) =>
                    {
                        Type::error()
                    }
                    None if self.globals.contains_key(name) => Type::error(),
                    None => {
                        let mut cands: Vec<String> = PRIMITIVES.iter().map(|s| s.to_string()).collect();
                        cands.extend(self.names_of(&[DeclKind::Schema]));
                        let help = did_you_mean(name, cands.iter().map(String::as_str))
                            .map(|s| format!("did you mean `{s}`?"))
                            .unwrap_or_else(|| {
                                "the types are bool, int, float, decimal(p, s), string, timestamp, duration, list<T> and declared schemas".into()
                            });
                        self.error(
                            Diagnostic::error("E0102", id.span, format!("unknown type `{name}`"))
                                .label("not a type or a schema")
                                .help(help),
                        );
                        Type::error()
                    }
                },
            },
            ast::TypeExprKind::Decimal { precision, scale, precision_span, scale_span } => {
                if *precision == 0 || *precision > flow_types::DECIMAL_PRECISION_MAX as u64 {
                    self.error(
                        Diagnostic::error(
                            "E0008",
                            *precision_span,
                            format!("decimal precision {precision} is out of range"),
                        )
                        .label("must be between 1 and 38")
                        .help("decimal(p, s) holds p digits in all; at most 38, as in Flink SQL"),
                    );
                    Type::error()
                } else if scale > precision {
                    self.error(
                        Diagnostic::error(
                            "E0008",
                            *scale_span,
                            format!("decimal scale {scale} is larger than its precision {precision}"),
                        )
                        .label("the scale counts digits after the point, part of the precision")
                        .help(format!("write `decimal({}, {scale})` or a smaller scale", (*scale).max(1))),
                    );
                    Type::error()
                } else {
                    Type::decimal(*precision as u8, *scale as u8)
                }
            }
            ast::TypeExprKind::List(inner) => Type::list(self.resolve_type(inner)),
        };
        base.with_nullable(t.nullable)
    }

    /// The record type of schema `id`, reporting nothing (callers report).
    fn schema_type(&mut self, id: &ast::Ident) -> Option<Record> {
        match self.globals.get(&id.name) {
            Some(g) if g.kind == DeclKind::Schema && g.index != usize::MAX => {
                self.used.insert(id.name.clone());
                self.resolve_schema_by_name(&id.name)
            }
            Some(_) => None,
            None if id.name == DEAD_LETTER_SCHEMA => Some(dead_letter_record()),
            None => None,
        }
    }

    /// Resolves a schema name used where a schema is expected, reporting problems.
    pub(super) fn lookup_schema(&mut self, id: &ast::Ident) -> Option<Record> {
        if let Some(r) = self.schema_type(id) {
            return Some(r);
        }
        match self.globals.get(&id.name).copied() {
            _ if self.broken.contains(&id.name) => None,
            Some(g) if g.kind == DeclKind::Schema => None,
            Some(g) => {
                let cands = self.names_of(&[DeclKind::Schema]);
                let help = did_you_mean(&id.name, cands.iter().map(String::as_str))
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_else(|| "name a schema declared with `schema Name { ... }`".into());
                self.error(
                    Diagnostic::error(
                        "E0106",
                        id.span,
                        format!("`{}` is a {}, but a schema is expected here", id.name, g.kind.noun()),
                    )
                    .label("expected a schema")
                    .with_secondary(g.span, format!("`{}` is declared here", id.name))
                    .help(help),
                );
                self.used.insert(id.name.clone());
                None
            }
            None => {
                let cands = self.names_of(&[DeclKind::Schema]);
                let help = did_you_mean(&id.name, cands.iter().map(String::as_str))
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_else(|| format!("declare it: `schema {} {{ field: type, ... }}`", id.name));
                self.error(
                    Diagnostic::error("E0102", id.span, format!("unknown schema `{}`", id.name))
                        .label("no schema has this name")
                        .help(help),
                );
                None
            }
        }
    }

    pub(super) fn resolve_schema_by_name(&mut self, name: &str) -> Option<Record> {
        if let Some(r) = self.schemas.get(name) {
            return r.clone();
        }
        let g = *self.globals.get(name)?;
        if g.kind != DeclKind::Schema || g.index == usize::MAX {
            return None;
        }
        let decl = self.decls.schemas[g.index];
        if self.schema_progress.get(name) == Some(&Progress::InProgress) {
            return None;
        }
        self.schema_progress.insert(name.to_string(), Progress::InProgress);
        let mut fields: Vec<Field> = Vec::new();
        let mut seen: HashMap<&str, Span> = HashMap::new();
        let mut ok = true;
        for f in &decl.fields {
            if let ast::TypeExprKind::Named(id) = &f.ty.kind {
                if id.name == name || self.schema_progress.get(&id.name) == Some(&Progress::InProgress) {
                    self.error(
                        Diagnostic::error("E0109", id.span, format!("schema `{name}` contains itself"))
                            .label(format!("`{}` refers back to `{name}`", id.name))
                            .with_secondary(decl.name.span, "schema declared here")
                            .help("records cannot nest themselves; store the related record's key instead"),
                    );
                    ok = false;
                    continue;
                }
            }
            if let Some(prev) = seen.get(f.name.name.as_str()) {
                self.error(
                    Diagnostic::error("E0009", f.name.span, format!("field `{}` is declared twice", f.name.name))
                        .label("second declaration")
                        .with_secondary(*prev, "first declared here")
                        .help("rename or remove one of them"),
                );
                continue;
            }
            seen.insert(&f.name.name, f.name.span);
            let ty = self.resolve_type(&f.ty);
            if ty.is_error() {
                ok = false;
            }
            fields.push(Field { name: f.name.name.clone(), ty });
        }
        self.schema_progress.insert(name.to_string(), Progress::Done);
        let rec = ok.then(|| Arc::new(RecordType::new(Some(name.to_string()), fields)));
        if rec.is_none() {
            self.broken.insert(name.to_string());
        }
        self.schemas.insert(name.to_string(), rec.clone());
        if let Some(r) = &rec {
            if !self.out.schemas.iter().any(|s| s.name == name) {
                self.out.schemas.push(ir::Schema { name: name.to_string(), record: r.clone(), span: decl.name.span });
            }
        }
        rec
    }

    // ------------------------------------------------------------ consts

    pub(super) fn resolve_const(&mut self, c: &ast::ConstDecl) -> Option<(Type, Value)> {
        let name = c.name.name.as_str();
        if let Some(v) = self.consts.get(name) {
            return v.clone();
        }
        if self.const_progress.get(name) == Some(&Progress::InProgress) {
            self.error(
                Diagnostic::error("E0109", c.name.span, format!("const `{name}` is defined in terms of itself"))
                    .label("this const's value depends on itself")
                    .help("give one of the consts in the cycle a literal value"),
            );
            self.consts.insert(name.to_string(), None);
            return None;
        }
        self.const_progress.insert(name.to_string(), Progress::InProgress);
        let declared = c.ty.as_ref().map(|t| self.resolve_type(t));
        let mut cx = Ctx::constant();
        let e = self.expr(&mut cx, &c.value);
        let mut result = None;
        if !e.ty.is_error() {
            let target = declared.clone().unwrap_or_else(|| e.ty.clone());
            let folded = self.fold(&e);
            match folded {
                Folded::Value(v) => {
                    // A literal that fits the declared type is accepted even when its
                    // type alone is wider (`const LIMIT: decimal(12, 2) = 500`).
                    if e.ty.assignable_to(&target) || (!e.ty.nullable && value_fits(&v, &target)) {
                        result = Some((target.clone(), convert_const(v, &target)));
                    } else {
                        let t_span = c.ty.as_ref().map_or(c.name.span, |t| t.span);
                        self.error(
                            Diagnostic::error("E0211", c.value.span, format!("expected `{target}`, found `{}`", e.ty))
                                .label(format!("this is `{}`", e.ty))
                                .with_secondary(t_span, "declared type")
                                .help(format!("write a value of type `{target}`, or change the declared type")),
                        );
                    }
                }
                Folded::NotConst(span) => self.error(
                    Diagnostic::error(
                        "E0210",
                        span,
                        format!("the value of const `{name}` is not known before the pipeline runs"),
                    )
                    .label("not a constant")
                    .help("a const is made of literals, other consts and arithmetic; use a `fn` for anything else"),
                ),
                Folded::Failed => {}
            }
        }
        if result.is_none() {
            self.broken.insert(name.to_string());
        }
        self.const_progress.insert(name.to_string(), Progress::Done);
        self.consts.insert(name.to_string(), result.clone());
        if let Some((ty, value)) = &result {
            self.out.consts.push(ir::Const {
                name: name.to_string(),
                ty: ty.clone(),
                value: value.clone(),
                span: c.name.span,
            });
        }
        result
    }

    // ------------------------------------------------------------ fns

    /// Fn signatures, before consts and bodies, so any of them can call any fn.
    pub(super) fn fn_signatures(&mut self) {
        let fns = self.decls.fns.clone();
        for f in &fns {
            if self.globals.get(&f.name.name).is_none_or(|g| g.kind != DeclKind::Fn) {
                continue;
            }
            let mut params = Vec::new();
            let mut ok = true;
            let mut seen: HashMap<&str, Span> = HashMap::new();
            for p in &f.params {
                if let Some(prev) = seen.get(p.name.name.as_str()) {
                    self.error(
                        Diagnostic::error(
                            "E0009",
                            p.name.span,
                            format!("parameter `{}` is declared twice", p.name.name),
                        )
                        .label("second declaration")
                        .with_secondary(*prev, "first declared here")
                        .help("rename one of them"),
                    );
                    ok = false;
                }
                seen.insert(&p.name.name, p.name.span);
                let t = self.resolve_type(&p.ty);
                ok &= !t.is_error();
                params.push((p.name.name.clone(), t));
            }
            let ret = self.resolve_type(&f.ret);
            ok &= !ret.is_error();
            if ok {
                let idx = self.out.fns.len();
                self.out.fns.push(ir::Function {
                    name: f.name.name.clone(),
                    params,
                    ret,
                    body: ir::Expr { kind: ir::ExprKind::Literal(Value::Null), ty: Type::null(), span: f.span },
                    span: f.name.span,
                });
                self.fn_index.insert(f.name.name.clone(), Some(idx));
            } else {
                self.fn_index.insert(f.name.name.clone(), None);
                self.broken.insert(f.name.name.clone());
            }
        }
    }

    pub(super) fn fn_bodies(&mut self) {
        let fns = self.decls.fns.clone();
        for f in &fns {
            let Some(Some(idx)) = self.fn_index.get(&f.name.name).copied() else {
                continue;
            };
            let params = self.out.fns[idx].params.clone();
            let ret = self.out.fns[idx].ret.clone();
            let mut cx = Ctx::function(params);
            let body = self.expr(&mut cx, &f.body);
            if !body.ty.is_error() && !body.ty.assignable_to(&ret) {
                self.error(
                    Diagnostic::error("E0211", f.body.span, format!("fn `{}` returns `{}`, but its body is `{}`", f.name.name, ret, body.ty))
                        .label(format!("this is `{}`", body.ty))
                        .with_secondary(f.ret.span, "declared return type")
                        .help(if body.ty.nullable && !ret.nullable {
                            "the body may be null: give a default with `?? value` or declare the return type nullable with `?`".to_string()
                        } else if super::expr::cast_rule(&body.ty.kind, &ret.kind) == Some(true) {
                            format!("convert the body with `(... as {ret}) ?? default`: that conversion can fail, giving null")
                        } else {
                            format!("convert the body with `as {ret}` or change the return type")
                        }),
                );
            }
            let body = if body.ty != ret && !body.ty.is_error() { super::expr::cast_to(body, &ret) } else { body };
            self.out.fns[idx].body = body;
        }
        // Recursion: fns are pure and total, so calls must not form a cycle.
        let n = self.out.fns.len();
        let mut calls: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, f) in self.out.fns.iter().enumerate() {
            collect_calls(&f.body, &mut calls[i]);
        }
        let mut state = vec![0u8; n];
        for start in 0..n {
            if let Some(cycle) = find_cycle(start, &calls, &mut state, &mut Vec::new()) {
                let names: Vec<String> = cycle.iter().map(|&i| format!("`{}`", self.out.fns[i].name)).collect();
                let first = cycle[0];
                let span = self.out.fns[first].span;
                self.error(
                    Diagnostic::error("E0109", span, format!("fn `{}` calls itself", self.out.fns[first].name))
                        .label(format!("call cycle: {} -> `{}`", names.join(" -> "), self.out.fns[first].name))
                        .help(
                            "fns are pure and must terminate: recursion is not allowed; rewrite it without the cycle",
                        ),
                );
            }
        }
    }

    // ------------------------------------------------------------ options

    /// Checks `name: value` options against `allowed`, reporting unknown, duplicate
    /// and ill-typed ones. `fields` is the schema a `Want::Field` names a field of.
    pub(super) fn options(
        &mut self,
        opts: &[(Option<&ast::Ident>, &ast::Expr, Span)],
        positional: &[(&'static str, Want)],
        allowed: &[(&'static str, Want)],
        what: &str,
        fields: Option<&RecordType>,
    ) -> Opts {
        let mut vals: HashMap<&'static str, (OptVal, Span)> = HashMap::new();
        let mut pos = 0usize;
        for (name, value, span) in opts {
            let spec = match name {
                None => {
                    let Some(p) = positional.get(pos) else {
                        self.error(
                            Diagnostic::error("E0111", *span, format!("{what} takes no more arguments"))
                                .label("unexpected argument")
                                .help(format!(
                                    "name the argument: {}",
                                    allowed.iter().map(|(n, _)| format!("`{n}:`")).collect::<Vec<_>>().join(", ")
                                )),
                        );
                        continue;
                    };
                    pos += 1;
                    *p
                }
                Some(id) => {
                    let all = positional.iter().chain(allowed);
                    match all.clone().find(|(n, _)| *n == id.name) {
                        Some(p) => *p,
                        None => {
                            let names: Vec<&str> = all.map(|(n, _)| *n).collect();
                            let help = did_you_mean(&id.name, names.iter().copied())
                                .map(|s| format!("did you mean `{s}`?"))
                                .unwrap_or_else(|| {
                                    if names.is_empty() {
                                        format!("{what} takes no options")
                                    } else {
                                        format!(
                                            "{what} takes {}",
                                            names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                                        )
                                    }
                                });
                            self.error(
                                Diagnostic::error("E0111", id.span, format!("unknown option `{}` for {what}", id.name))
                                    .label("not an option here")
                                    .help(help),
                            );
                            continue;
                        }
                    }
                }
            };
            let (key, want) = spec;
            if let Some((_, prev)) = vals.get(key) {
                let prev = *prev;
                self.error(
                    Diagnostic::error("E0010", *span, format!("option `{key}` is given twice"))
                        .label("second value")
                        .with_secondary(prev, "first value")
                        .help("remove one of them"),
                );
                continue;
            }
            if let Some(v) = self.option_value(key, want, value, what, fields) {
                vals.insert(key, (v, value.span));
            }
        }
        Opts { vals }
    }

    fn option_value(
        &mut self,
        key: &str,
        want: Want,
        value: &ast::Expr,
        what: &str,
        fields: Option<&RecordType>,
    ) -> Option<OptVal> {
        let wrong = |found: &str| {
            Diagnostic::error(
                "E0209",
                value.span,
                format!("option `{key}` of {what} expects {}, found {found}", want.describe()),
            )
            .label(format!("this is {found}"))
        };
        match want {
            Want::Choice(_) | Want::Field if !matches!(value.kind, ast::ExprKind::Name(_) | ast::ExprKind::Str(_)) => {
                let d = wrong("an expression");
                self.error(d.help(format!("write {}", want.describe())));
                None
            }
            Want::Choice(choices) => {
                let (word, span) = match &value.kind {
                    ast::ExprKind::Name(id) => (id.name.clone(), id.span),
                    ast::ExprKind::Str(s) => (s.clone(), value.span),
                    _ => return None,
                };
                if choices.contains(&word.as_str()) {
                    Some(OptVal::Word(word))
                } else {
                    let help = did_you_mean(&word, choices.iter().copied())
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| format!("write {}", want.describe()));
                    self.error(
                        Diagnostic::error("E0209", span, format!("`{word}` is not a valid `{key}` for {what}"))
                            .label(format!("expected {}", want.describe()))
                            .help(help),
                    );
                    None
                }
            }
            Want::Field => {
                let (word, span) = match &value.kind {
                    ast::ExprKind::Name(id) => (id.name.clone(), id.span),
                    ast::ExprKind::Str(s) => (s.clone(), value.span),
                    _ => return None,
                };
                let Some(rec) = fields else {
                    return Some(OptVal::Word(word));
                };
                if rec.field(&word).is_some() {
                    Some(OptVal::Word(word))
                } else {
                    let help = did_you_mean(&word, rec.fields.iter().map(|f| f.name.as_str()))
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| format!("the fields of the schema are {}", field_list(rec)));
                    self.error(
                        Diagnostic::error(
                            "E0303",
                            span,
                            format!("`{word}` is not a field of `{}`", rec.name.as_deref().unwrap_or("the record")),
                        )
                        .label("no such field")
                        .help(help),
                    );
                    None
                }
            }
            _ => {
                let mut cx = Ctx::constant();
                let e = self.expr(&mut cx, value);
                if e.ty.is_error() {
                    return None;
                }
                let ok = match want {
                    Want::Int => matches!(e.ty.kind, Kind::Int),
                    Want::Duration => matches!(e.ty.kind, Kind::Duration),
                    Want::Size => matches!(e.ty.kind, Kind::Int),
                    Want::Bool => matches!(e.ty.kind, Kind::Bool),
                    Want::Str => matches!(e.ty.kind, Kind::String),
                    Want::Choice(_) | Want::Field => false,
                };
                if !ok || e.ty.nullable {
                    let mut d = wrong(&format!("`{}`", e.ty));
                    if matches!(want, Want::Duration) && matches!(e.ty.kind, Kind::Int) {
                        d = d.help("add a unit: `ms`, `s`, `m`, `h`, `d` or `w`, e.g. `30s`");
                    } else {
                        d = d.help(format!("write {}", want.describe()));
                    }
                    self.error(d);
                    return None;
                }
                match self.fold(&e) {
                    Folded::Value(v) => Some(OptVal::Value(v)),
                    Folded::NotConst(span) => {
                        self.error(
                            Diagnostic::error(
                                "E0210",
                                span,
                                format!("option `{key}` must be known before the pipeline runs"),
                            )
                            .label("not a constant")
                            .help("use literals, consts and arithmetic"),
                        );
                        None
                    }
                    Folded::Failed => None,
                }
            }
        }
    }

    pub(super) fn positive_ms(&mut self, v: Option<(i64, Span)>, what: &str, allow_zero: bool) -> Option<i64> {
        let (ms, span) = v?;
        if ms < 0 || (!allow_zero && ms == 0) {
            self.error(
                Diagnostic::error(
                    "E0414",
                    span,
                    format!("{what} must be {}", if allow_zero { "zero or more" } else { "positive" }),
                )
                .label(format!("this is {}", ir::fmt_ms(ms)))
                .help(format!("use a {}duration such as `5s`", if allow_zero { "non-negative " } else { "positive " })),
            );
            return None;
        }
        Some(ms)
    }

    // ------------------------------------------------------------ config

    pub(super) fn check_config(&mut self) {
        let configs = self.decls.configs.clone();
        if configs.len() > 1 {
            self.error(
                Diagnostic::error("E0105", configs[1].span, "`config` is declared twice")
                    .label("second config")
                    .with_secondary(configs[0].span, "first config")
                    .help("merge the options into one `config { }`"),
            );
        }
        let Some(c) = configs.first() else { return };
        let opts: Vec<_> = c.options.iter().map(|o| (Some(&o.name), &o.value, o.span)).collect();
        let o = self.options(
            &opts,
            &[],
            &[
                ("checkpoint_interval", Want::Duration),
                ("parallelism", Want::Int),
                ("state_backend", Want::Choice(&["memory", "rocksdb"])),
            ],
            "config",
            None,
        );
        if let Some(ms) = self.positive_ms(o.int("checkpoint_interval"), "checkpoint_interval", false) {
            self.out.config.checkpoint_interval_ms = ms;
        }
        if let Some((p, span)) = o.int("parallelism") {
            if (1..=1024).contains(&p) {
                self.out.config.parallelism = p as u32;
            } else {
                self.error(
                    Diagnostic::error("E0209", span, format!("parallelism {p} is out of range"))
                        .label("must be between 1 and 1024")
                        .help(
                            "parallelism is the number of instances of each operator; start with the number of cores",
                        ),
                );
            }
        }
        if let Some((w, _)) = o.word("state_backend") {
            self.out.config.state_backend =
                if w == "rocksdb" { ir::StateBackend::RocksDb } else { ir::StateBackend::Memory };
        }
    }

    // ------------------------------------------------------------ topics

    pub(super) fn check_topic(&mut self, t: &ast::TopicDecl) {
        if self.globals.get(&t.name.name).is_none_or(|g| g.kind != DeclKind::Topic) {
            return;
        }
        let schema = self.lookup_schema(&t.schema);
        let opts: Vec<_> = t.options.iter().map(|o| (Some(&o.name), &o.value, o.span)).collect();
        let o = self.options(
            &opts,
            &[],
            &[
                ("partitions", Want::Int),
                ("key", Want::Field),
                ("retention", Want::Duration),
                ("retention_bytes", Want::Size),
                ("segment_bytes", Want::Size),
                ("compaction", Want::Bool),
                ("event_time", Want::Field),
                ("watermark", Want::Duration),
                ("idle_timeout", Want::Duration),
            ],
            &format!("topic `{}`", t.name.name),
            schema.as_deref(),
        );
        let Some(schema) = schema else {
            self.stream_schemas.insert(t.name.name.clone(), None);
            self.broken.insert(t.name.name.clone());
            return;
        };
        let mut partitions = 1u32;
        if let Some((p, span)) = o.int("partitions") {
            if (1..=10_000).contains(&p) {
                partitions = p as u32;
            } else {
                self.error(
                    Diagnostic::error("E0209", span, format!("a topic cannot have {p} partitions"))
                        .label("must be between 1 and 10000")
                        .help("partitions are the unit of parallelism and ordering; a few per core is typical"),
                );
            }
        }
        let key = o.word("key").and_then(|(k, _)| schema.index_of(k));
        if let Some(k) = key {
            let kt = &schema.fields[k].ty;
            if !kt.is_equatable() || matches!(kt.kind, Kind::Float) {
                let span = o.word("key").map_or(t.name.span, |(_, s)| s);
                self.error(
                    Diagnostic::error(
                        "E0220",
                        span,
                        format!("field `{}` of type `{kt}` cannot be a key", schema.fields[k].name),
                    )
                    .label("not usable as a key")
                    .help("keys are hashed and compared exactly: use a string, int, decimal, bool or timestamp field"),
                );
            }
        }
        let retention_ms = self.positive_ms(o.int("retention"), "retention", false).unwrap_or(ir::RETENTION_MS_DEFAULT);
        let retention_bytes = o.int("retention_bytes").map(|(b, _)| b);
        let segment_bytes = o.int("segment_bytes").map(|(b, _)| b);
        for (name, v) in [("retention_bytes", retention_bytes), ("segment_bytes", segment_bytes)] {
            if let (Some(b), Some((_, span))) = (v, o.int(name)) {
                if b <= 0 {
                    self.error(
                        Diagnostic::error("E0209", span, format!("{name} must be positive"))
                            .label(format!("this is {b}"))
                            .help("write a size such as `1GiB`"),
                    );
                }
            }
        }
        let compaction = o.bool("compaction").unwrap_or(false);
        if compaction && key.is_none() {
            self.error(
                Diagnostic::error("E0303", t.name.span, format!("topic `{}` has compaction but no key", t.name.name))
                    .label("compaction keeps the last record per key")
                    .help("add `key: <field>` to the topic's options"),
            );
        }
        let mut event_time = None;
        if let Some((f, span)) = o.word("event_time") {
            if let Some(i) = schema.index_of(f) {
                let ft = &schema.fields[i].ty;
                if matches!(ft.kind, Kind::Timestamp) && !ft.nullable {
                    event_time = Some(ir::EventTime { field: i, offset_ms: 0 });
                } else {
                    self.error(
                        Diagnostic::error("E0304", span, format!("event time field `{f}` is `{ft}`, not `timestamp`"))
                            .label("event time must be a non-null timestamp")
                            .help(format!("declare it `{f}: timestamp` in the schema")),
                    );
                }
            }
        }
        let watermark_ms = self.positive_ms(o.int("watermark"), "the watermark delay", true).unwrap_or(0);
        if o.int("watermark").is_some() && o.word("event_time").is_none() {
            let span = o.int("watermark").map_or(t.name.span, |w| w.1);
            self.error(
                Diagnostic::error("E0409", span, "`watermark` without `event_time`")
                    .label("a watermark needs an event-time field")
                    .help("add `event_time: <timestamp field>` to the topic's options"),
            );
        }
        // Also for topics whose event time comes from their writers (no `event_time`
        // option): the readers' watermark is per partition all the same.
        let idle_timeout_ms = self.positive_ms(o.int("idle_timeout"), "idle_timeout", false);
        self.stream_schemas.insert(t.name.name.clone(), Some(schema.clone()));
        self.out.topics.push(ir::Topic {
            event_time,
            watermark_ms,
            idle_timeout_ms,
            name: t.name.name.clone(),
            schema,
            partitions,
            key,
            retention_ms,
            retention_bytes,
            compaction,
            segment_bytes,
            span: t.name.span,
        });
    }

    // ------------------------------------------------------------ connectors

    fn connector(&mut self, c: &ast::Connector, for_source: bool, schema: Option<&RecordType>) -> Option<Connector> {
        let role = if for_source { "source" } else { "sink" };
        let Some(spec) = CONNECTORS.iter().find(|s| s.name == c.kind.name) else {
            let names: Vec<&str> =
                CONNECTORS.iter().filter(|s| if for_source { s.source } else { s.sink }).map(|s| s.name).collect();
            let help = did_you_mean(&c.kind.name, names.iter().copied())
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_else(|| {
                    format!(
                        "{role} connectors: {}",
                        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                    )
                });
            self.error(
                Diagnostic::error("E0110", c.kind.span, format!("unknown connector `{}`", c.kind.name))
                    .label(format!("not a {role} connector"))
                    .help(help),
            );
            return None;
        };
        if (for_source && !spec.source) || (!for_source && !spec.sink) {
            let names: Vec<&str> =
                CONNECTORS.iter().filter(|s| if for_source { s.source } else { s.sink }).map(|s| s.name).collect();
            self.error(
                Diagnostic::error("E0110", c.kind.span, format!("`{}` cannot be used as a {role}", spec.name))
                    .label(format!("not a {role} connector"))
                    .help(format!(
                        "{role} connectors: {}",
                        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                    )),
            );
            return None;
        }
        let mut args: Vec<_> = c.args.iter().map(|a| (a.name.as_ref(), &a.value, a.span)).collect();
        if spec.name == "kafka" {
            // A password in the program would end up in version control and in logs.
            args.retain(|(name, _, _)| {
                let Some(id) = name.filter(|id| id.name == "password") else { return true };
                self.error(
                    Diagnostic::error("E0111", id.span, "the `kafka` connector takes no `password`")
                        .label("a password does not belong in a .flow file")
                        .help("put it in an environment variable and name that: `password_env: \"KAFKA_PASSWORD\"`"),
                );
                false
            });
        }
        let what = format!("connector `{}`", spec.name);
        let o = self.options(&args, spec.positional, spec.named, &what, None);
        let mut missing = false;
        for r in spec.required {
            if !o.vals.contains_key(r)
                && !self.diags.iter().any(|d| d.primary.span.start >= c.span.start && d.primary.span.end <= c.span.end)
            {
                let how = if spec.positional.iter().any(|(n, _)| n == r) {
                    format!("pass it first: `{}(<{r}>, ...)`", spec.name)
                } else {
                    format!("add `{r}: ...`")
                };
                self.error(
                    Diagnostic::error("E0112", c.span, format!("{what} needs `{r}`"))
                        .label(format!("`{r}` is missing"))
                        .help(how),
                );
                missing = true;
            }
        }
        if missing || !spec.required.iter().all(|r| o.vals.contains_key(r)) {
            return None;
        }
        let format_of = |o: &Opts, path: Option<&str>| match o.word("format").map(|w| w.0) {
            Some("csv") => Format::Csv,
            Some("text") => Format::Text,
            Some(_) => Format::Json,
            None if path.is_some_and(|p| p.ends_with(".csv")) => Format::Csv,
            None => Format::Json,
        };
        Some(match spec.name {
            "file" => {
                let path = o.word("path").map(|w| w.0.to_string()).unwrap_or_default();
                let delimiter = match o.word("delimiter") {
                    Some((d, span)) => {
                        if d.len() != 1 {
                            self.error(
                                Diagnostic::error("E0209", span, "a CSV delimiter is one ASCII character")
                                    .label(format!("this is {} bytes", d.len()))
                                    .help("write e.g. `delimiter: \";\"`"),
                            );
                        }
                        d.bytes().next().unwrap_or(b',')
                    }
                    None => b',',
                };
                let format = format_of(&o, Some(&path));
                Connector::File { format, header: o.bool("header").unwrap_or(format == Format::Csv), delimiter, path }
            }
            "stdin" => Connector::Stdin { format: format_of(&o, None) },
            "stdout" => Connector::Stdout { format: format_of(&o, None) },
            "generator" => {
                let kind = match (o.word("kind").map(|w| w.0), o.word("stream").map(|w| w.0)) {
                    (Some("transactions"), None) => GeneratorKind::Transactions,
                    (Some("transactions"), Some(_)) => {
                        let span = o.word("stream").map_or(c.span, |w| w.1);
                        self.error(
                            Diagnostic::error("E0111", span, "the `transactions` generator has one stream")
                                .label("`stream` is for `nexmark`")
                                .help("remove `stream: ...`"),
                        );
                        return None;
                    }
                    (_, Some("persons")) => GeneratorKind::NexmarkPersons,
                    (_, Some("auctions")) => GeneratorKind::NexmarkAuctions,
                    (_, Some(_)) => GeneratorKind::NexmarkBids,
                    (_, None) => {
                        self.error(
                            Diagnostic::error("E0112", c.span, "the `nexmark` generator needs `stream`")
                                .label("which Nexmark stream?")
                                .help("add `stream: persons`, `stream: auctions` or `stream: bids`"),
                        );
                        return None;
                    }
                };
                if let Some(schema) = schema {
                    self.check_generator_schema(kind, schema, c);
                }
                let positive = |o: &Opts, k: &str| o.int(k).map(|v| v.0);
                for k in ["rate", "count", "keys"] {
                    if let Some((v, span)) = o.int(k) {
                        if v <= 0 {
                            self.error(
                                Diagnostic::error("E0209", span, format!("`{k}` must be positive"))
                                    .label(format!("this is {v}"))
                                    .help(format!("leave `{k}` out for the default")),
                            );
                        }
                    }
                }
                Connector::Generator {
                    kind,
                    rate_per_s: positive(&o, "rate"),
                    seed: positive(&o, "seed").unwrap_or(42),
                    count: positive(&o, "count"),
                    keys: positive(&o, "keys"),
                }
            }
            _ => {
                let key = o.word("key").map(|(k, span)| (k.to_string(), span));
                if let (true, Some((_, span))) = (for_source, &key) {
                    self.error(
                        Diagnostic::error("E0113", *span, "`key` is an option of `kafka` sinks, not sources")
                            .label("a source reads record values only")
                            .help("remove `key: ...`; to key the stream, use `key_by` in the pipeline"),
                    );
                }
                Connector::Kafka {
                    brokers: o.word("brokers").map(|w| w.0.to_string()).unwrap_or_default(),
                    topic: o.word("topic").map(|w| w.0.to_string()).unwrap_or_default(),
                    group: o.word("group").map(|w| w.0.to_string()),
                    format: format_of(&o, None),
                    key: key.filter(|_| !for_source).map(|k| k.0),
                    security: self.kafka_security(&o),
                }
            }
        })
    }

    /// The `security:`, `sasl_mechanism:`, `user:`, `password_env:` and `ca:` options of
    /// a `kafka(...)` connector, and whether they go together.
    fn kafka_security(&mut self, o: &Opts) -> ir::KafkaSecurity {
        use ir::{KafkaProtocol as P, SaslMechanism as M};
        let security = o.word("security");
        let protocol = match security.map(|w| w.0) {
            Some("ssl") => P::Ssl,
            Some("sasl_plaintext") => P::SaslPlaintext,
            Some("sasl_ssl") => P::SaslSsl,
            _ => P::Plaintext,
        };
        let mechanism = match o.word("sasl_mechanism").map(|w| w.0) {
            Some("scram_sha_256") => M::ScramSha256,
            Some("scram_sha_512") => M::ScramSha512,
            _ => M::Plain,
        };
        let (user, password_env) = (o.word("user"), o.word("password_env"));
        // What `security` is, pointed at, for options that do not fit it.
        let with_security = |d: Diagnostic| match security {
            Some((w, span)) => d.with_secondary(span, format!("`security` is `{w}` here")),
            None => d,
        };
        if let Some((name, span)) = password_env {
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.error(
                    Diagnostic::error("E0209", span, format!("`{name}` is not the name of an environment variable"))
                        .label("`password_env` names the variable that holds the password")
                        .help("write a variable name such as `password_env: \"KAFKA_PASSWORD\"` (letters, digits and `_`), and set that variable where the pipeline runs"),
                );
            }
        }
        if let Some(("", span)) = o.word("ca") {
            self.error(
                Diagnostic::error("E0209", span, "`ca` is empty")
                    .label("no file named")
                    .help("write the path of the CA certificates (PEM), e.g. `ca: \"certs/ca.pem\"`, or remove `ca:` to use the system's"),
            );
        }
        let sasl = if protocol.sasl() {
            let missing: Vec<&str> = [("user", user.is_none()), ("password_env", password_env.is_none())]
                .iter()
                .filter(|(_, m)| *m)
                .map(|(n, _)| *n)
                .collect();
            if let (false, Some((w, span))) = (missing.is_empty(), security) {
                self.error(
                    Diagnostic::error(
                        "E0112",
                        span,
                        format!(
                            "`security: {w}` needs {}",
                            missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(" and ")
                        ),
                    )
                    .label("SASL logs in with a user and a password")
                    .help(match missing[..] {
                        ["user"] => "add `user: \"...\"`, the user to log in as".to_string(),
                        _ => format!(
                            "add {}`password_env: \"NAME\"`: the password is read from the environment variable NAME when the pipeline runs, never written in the .flow file",
                            if missing.len() == 2 { "`user: \"...\"` and " } else { "" }
                        ),
                    }),
                );
            }
            Some(ir::KafkaSasl {
                mechanism,
                user: user.map(|u| u.0.to_string()).unwrap_or_default(),
                password_env: password_env.map(|p| p.0.to_string()).unwrap_or_default(),
            })
        } else {
            let stray: Vec<(&str, Span)> =
                [("sasl_mechanism", o.word("sasl_mechanism")), ("user", user), ("password_env", password_env)]
                    .into_iter()
                    .filter_map(|(n, v)| v.map(|(_, span)| (n, span)))
                    .collect();
            if let Some(&(_, span)) = stray.first() {
                let names = stray.iter().map(|(n, _)| format!("`{n}`")).collect::<Vec<_>>().join(" and ");
                let d = Diagnostic::error(
                    "E0113",
                    span,
                    format!("{names} need{} a SASL `security`", if stray.len() == 1 { "s" } else { "" }),
                )
                .label("only SASL logs in with a user")
                .help(format!(
                    "add `security: sasl_ssl` (or `sasl_plaintext` on a trusted network), or remove {names}"
                ));
                self.error(with_security(d));
            }
            None
        };
        let ca = o.word("ca").map(|(path, span)| {
            if !protocol.tls() {
                let d = Diagnostic::error("E0113", span, "`ca` needs a TLS `security`")
                    .label("CA certificates verify TLS connections")
                    .help("add `security: ssl` (or `sasl_ssl` with SASL), or remove `ca:`");
                self.error(with_security(d));
            }
            path.to_string()
        });
        ir::KafkaSecurity { protocol, sasl, ca }
    }

    /// Checks the `key:` of a `kafka(...)` sink against the records it receives: a field
    /// of theirs whose value has an exact text form.
    pub(super) fn check_kafka_key(&mut self, sink: &str, key: &str, span: Span, rec: &RecordType, declared: bool) {
        let Some(field) = rec.field(key) else {
            let help = did_you_mean(key, rec.fields.iter().map(|f| f.name.as_str()))
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_else(|| format!("the fields are {}", field_list(rec)));
            let of = match (&rec.name, declared) {
                (Some(n), true) => format!("`{n}`"),
                _ => format!("the records sink `{sink}` receives"),
            };
            self.error(
                Diagnostic::error("E0303", span, format!("`{key}` is not a field of {of}"))
                    .label("no such field")
                    .help(help),
            );
            return;
        };
        let t = &field.ty;
        if !matches!(
            t.kind,
            Kind::String | Kind::Int | Kind::Decimal { .. } | Kind::Bool | Kind::Timestamp | Kind::Duration
        ) {
            self.error(
                Diagnostic::error("E0220", span, format!("field `{key}` of type `{t}` cannot be a record key"))
                    .label("no exact text form")
                    .help("a Kafka record key is the field's value as text: use a string, int, decimal, bool or timestamp field"),
            );
        }
    }

    fn check_generator_schema(&mut self, kind: GeneratorKind, schema: &RecordType, c: &ast::Connector) {
        let produced = generator_fields(kind);
        for f in &schema.fields {
            match produced.iter().find(|(n, _)| *n == f.name) {
                Some((_, t)) if t.assignable_to(&f.ty) => {}
                Some((_, t)) => self.error(
                    Diagnostic::error(
                        "E0305",
                        c.span,
                        format!("the generator produces `{}` as `{t}`, but the schema declares `{}`", f.name, f.ty),
                    )
                    .label("generated records would not match the schema")
                    .help(format!("declare `{}: {t}` in the schema", f.name)),
                ),
                None => {
                    let names: Vec<&str> = produced.iter().map(|(n, _)| *n).collect();
                    let help = did_you_mean(&f.name, names.iter().copied())
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| {
                            format!(
                                "it produces {}",
                                names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                            )
                        });
                    self.error(
                        Diagnostic::error(
                            "E0305",
                            c.span,
                            format!("the generator does not produce a field `{}`", f.name),
                        )
                        .label("generated records would lack that field")
                        .help(help),
                    );
                }
            }
        }
    }

    // ------------------------------------------------------------ sources and sinks

    pub(super) fn check_source(&mut self, s: &ast::SourceDecl) {
        if self.globals.get(&s.name.name).is_none_or(|g| g.kind != DeclKind::Source) {
            return;
        }
        let schema = self.lookup_schema(&s.schema);
        let connector = self.connector(&s.connector, true, schema.as_deref());
        let mut event_time = None;
        let mut watermark_ms = 0;
        let mut ok = schema.is_some() && connector.is_some();
        if let (Some(Connector::File { format: Format::Csv, .. }), Some(rec)) = (&connector, &schema) {
            ok &= self.csv_flat(rec, s.connector.span);
        }
        if let (Some(et), Some(rec)) = (&s.event_time, &schema) {
            match rec.index_of(&et.field.name) {
                None => {
                    let help = did_you_mean(&et.field.name, rec.fields.iter().map(|f| f.name.as_str()))
                        .map(|x| format!("did you mean `{x}`?"))
                        .unwrap_or_else(|| {
                            format!("the timestamp fields of `{}` are {}", s.schema.name, ts_fields(rec))
                        });
                    self.error(
                        Diagnostic::error("E0103", et.field.span, format!("unknown field `{}`", et.field.name))
                            .label(format!("`{}` has no such field", s.schema.name))
                            .help(help),
                    );
                    ok = false;
                }
                Some(i) => {
                    let t = &rec.fields[i].ty;
                    if !matches!(t.kind, Kind::Timestamp) || t.nullable {
                        self.error(
                            Diagnostic::error("E0304", et.field.span, format!("event time field `{}` is `{t}`, not `timestamp`", et.field.name))
                                .label("event time must be a non-null timestamp")
                                .help(format!(
                                    "declare it `{}: timestamp` in the schema: JSON epoch milliseconds and RFC 3339 strings both read as timestamps",
                                    et.field.name
                                )),
                        );
                        ok = false;
                    } else {
                        event_time = Some(ir::EventTime { field: i, offset_ms: 0 });
                    }
                }
            }
            if let Some(w) = &et.watermark {
                let o = self.options(&[(None, w, w.span)], &[("watermark", Want::Duration)], &[], "`watermark`", None);
                watermark_ms = self.positive_ms(o.int("watermark"), "the watermark delay", true).unwrap_or(0);
            }
        }
        let idle_timeout_ms = s.idle_timeout.as_ref().and_then(|e| {
            let o =
                self.options(&[(None, e, e.span)], &[("idle_timeout", Want::Duration)], &[], "`idle_timeout`", None);
            self.positive_ms(o.int("idle_timeout"), "idle_timeout", false)
        });
        if s.idle_timeout.is_some() && s.event_time.is_none() {
            if let Some(e) = &s.idle_timeout {
                self.error(
                    Diagnostic::error("E0409", e.span, "`idle_timeout` without `event_time`")
                        .label("idleness only matters for watermarks")
                        .help("add `event_time <field> watermark <delay>` before it, or remove it"),
                );
            }
        }
        self.stream_schemas.insert(s.name.name.clone(), schema.clone());
        match (ok, schema, connector) {
            (true, Some(schema), Some(connector)) => {
                let src = ir::Source {
                    name: s.name.name.clone(),
                    schema,
                    connector,
                    event_time,
                    watermark_ms,
                    idle_timeout_ms,
                    dead_letter: None,
                    span: s.name.span,
                };
                self.source_info.insert(s.name.name.clone(), src.clone());
                self.out.sources.push(src);
            }
            _ => {
                self.broken.insert(s.name.name.clone());
            }
        }
    }

    pub(super) fn check_dead_letter(&mut self, s: &ast::SourceDecl) {
        let Some(dl) = &s.dead_letter else { return };
        let Some(target) = self.target(dl) else {
            return;
        };
        self.check_write(&target, &dead_letter_record(), dl.span, "dead-letter records");
        if let Some(src) = self.out.sources.iter_mut().find(|x| x.name == s.name.name) {
            src.dead_letter = Some(target.clone());
        }
        if let Some(src) = self.source_info.get_mut(&s.name.name) {
            src.dead_letter = Some(target);
        }
    }

    pub(super) fn check_sink(&mut self, s: &ast::SinkDecl) {
        if self.globals.get(&s.name.name).is_none_or(|g| g.kind != DeclKind::Sink) {
            return;
        }
        let schema = match &s.schema {
            Some(id) => match self.lookup_schema(id) {
                Some(r) => Some(r),
                None => {
                    self.broken.insert(s.name.name.clone());
                    return;
                }
            },
            None => None,
        };
        let Some(connector) = self.connector(&s.connector, false, schema.as_deref()) else {
            self.broken.insert(s.name.name.clone());
            return;
        };
        if let Connector::Kafka { key: Some(key), .. } = &connector {
            let span = s
                .connector
                .args
                .iter()
                .find(|a| a.name.as_ref().is_some_and(|n| n.name == "key"))
                .map_or(s.connector.span, |a| a.value.span);
            match &schema {
                Some(rec) => self.check_kafka_key(&s.name.name, key, span, rec, true),
                // Checked once the first writer gives the sink its schema.
                None => self.kafka_keys.push((s.name.name.clone(), key.clone(), span)),
            }
        }
        if let (Connector::Stdout { format: Format::Text }, Some(r)) = (&connector, &schema) {
            if r.fields.len() != 1 {
                self.error(
                    Diagnostic::error(
                        "E0209",
                        s.connector.span,
                        "`format: text` writes one field per line, but the schema has several",
                    )
                    .label("text output needs a one-field schema")
                    .help("use `format: json` or `format: csv`"),
                );
            }
        }
        self.stream_schemas.insert(s.name.name.clone(), schema.clone());
        self.out.sinks.push(ir::Sink {
            name: s.name.name.clone(),
            schema: schema.unwrap_or_else(|| Arc::new(RecordType::new(None, Vec::new()))),
            connector,
            span: s.name.span,
        });
    }

    /// CSV holds one scalar per column: nested records and lists do not fit.
    pub(super) fn csv_flat(&mut self, rec: &RecordType, span: Span) -> bool {
        let nested: Vec<String> = rec
            .fields
            .iter()
            .filter(|f| matches!(f.ty.kind, Kind::Record(_) | Kind::List(_)))
            .map(|f| format!("`{}: {}`", f.name, f.ty))
            .collect();
        if nested.is_empty() {
            return true;
        }
        self.error(
            Diagnostic::error("E0209", span, "CSV cannot hold nested records or lists")
                .label(format!("{} has no CSV column form", nested.join(", ")))
                .help("use `format: json`, or `select` the nested values into scalar fields first"),
        );
        false
    }

    /// Resolves `-> name` to a topic or sink.
    pub(super) fn target(&mut self, id: &ast::Ident) -> Option<ir::Target> {
        let g = self.lookup(id, &[DeclKind::Topic, DeclKind::Sink], "a topic or a sink")?;
        if self.broken.contains(&id.name) {
            return None;
        }
        Some(match g.kind {
            DeclKind::Topic => ir::Target::Topic(id.name.clone()),
            _ => ir::Target::Sink(id.name.clone()),
        })
    }

    /// Checks that records of type `rec` may be written to `target`.
    pub(super) fn check_write(&mut self, target: &ir::Target, rec: &Record, at: Span, what: &str) {
        if let ir::Target::Sink(n) = target {
            let csv = self.out.sinks.iter().any(|s| {
                s.name == *n
                    && matches!(
                        s.connector,
                        Connector::File { format: Format::Csv, .. } | Connector::Stdout { format: Format::Csv }
                    )
            });
            if csv && !self.csv_flat(rec, at) {
                return;
            }
        }
        let (name, noun) = match target {
            ir::Target::Topic(n) => (n.clone(), "topic"),
            ir::Target::Sink(n) => (n.clone(), "sink"),
        };
        let declared = match self.stream_schemas.get(&name) {
            Some(Some(r)) => r.clone(),
            Some(None) if noun == "sink" => {
                // A sink without a schema takes the first writer's record type.
                match self.inferred_sinks.get(&name) {
                    None => {
                        self.inferred_sinks.insert(name, (rec.clone(), at));
                        return;
                    }
                    Some((r, first)) => {
                        let (r, first) = (r.clone(), *first);
                        let problems = mismatches(rec, &r);
                        if !problems.is_empty() {
                            self.error(
                                Diagnostic::error("E0308", at, format!("sink `{name}` receives records of two different shapes"))
                                    .label(format!("{what} are {}", ir::record_fields(rec)))
                                    .with_secondary(first, format!("the first writer sends {}", ir::record_fields(&r)))
                                    .help(format!("declare the sink's schema (`sink {name}: Schema = ...`) or make the writers agree: {}", problems.join("; "))),
                            );
                        }
                        return;
                    }
                }
            }
            _ => return,
        };
        let problems = mismatches(rec, &declared);
        if problems.is_empty() {
            return;
        }
        let decl_span = self.globals.get(&name).map(|g| g.span);
        let schema_name = declared.name.clone().unwrap_or_else(|| "its schema".into());
        let mut d =
            Diagnostic::error("E0301", at, format!("{what} do not match schema `{schema_name}` of {noun} `{name}`"))
                .label(format!("{} mismatch{}", problems.len(), if problems.len() == 1 { "" } else { "es" }))
                .help(problems.join("\n"));
        if let Some(s) = decl_span {
            d = d.with_secondary(s, format!("{noun} declared here"));
        }
        self.error(d);
    }

    pub(super) fn finish_inferred_sinks(&mut self) {
        let inferred = std::mem::take(&mut self.inferred_sinks);
        // A sink no pipeline writes gets no records, so no key to check.
        for (sink, key, span) in std::mem::take(&mut self.kafka_keys) {
            if let Some((rec, _)) = inferred.get(&sink) {
                self.check_kafka_key(&sink, &key, span, rec, false);
            }
        }
        for sink in &mut self.out.sinks {
            if let Some((r, _)) = inferred.get(&sink.name) {
                sink.schema = Arc::new(RecordType::new(None, r.fields.clone()));
            }
        }
    }
}

/// Lists how `got` differs from `want`, field by field, in `want`'s order.
pub fn mismatches(got: &RecordType, want: &RecordType) -> Vec<String> {
    let mut out = Vec::new();
    for w in &want.fields {
        match got.field(&w.name) {
            None => out.push(format!("missing field `{}: {}`", w.name, w.ty)),
            Some(g) if !g.ty.assignable_to(&w.ty) => {
                let fix = if g.ty.nullable && !w.ty.nullable && g.ty.clone().non_null().assignable_to(&w.ty) {
                    format!(" (give a default: `{}: {} ?? ...`)", w.name, w.name)
                } else {
                    format!(" (convert with `{}: {} as {}`)", w.name, w.name, w.ty)
                };
                out.push(format!("field `{}` is `{}`, but the schema declares `{}`{fix}", w.name, g.ty, w.ty));
            }
            Some(_) => {}
        }
    }
    for g in &got.fields {
        if want.field(&g.name).is_none() {
            out.push(format!("extra field `{}: {}` (drop it with a `select`)", g.name, g.ty));
        }
    }
    out
}

fn field_list(rec: &RecordType) -> String {
    rec.fields.iter().map(|f| format!("`{}`", f.name)).collect::<Vec<_>>().join(", ")
}

fn ts_fields(rec: &RecordType) -> String {
    let v: Vec<String> =
        rec.fields.iter().filter(|f| matches!(f.ty.kind, Kind::Timestamp)).map(|f| format!("`{}`", f.name)).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Whether constant `v` can be stored exactly in `to`.
fn value_fits(v: &Value, to: &Type) -> bool {
    let Kind::Decimal { precision, scale } = to.kind else { return false };
    let limit = 10i128.pow(precision as u32);
    match v {
        Value::Int(i) => (*i as i128).checked_mul(10i128.pow(scale as u32)).is_some_and(|u| u.abs() < limit),
        Value::Decimal { units, scale: s } if *s <= scale => {
            units.checked_mul(10i128.pow((scale - s) as u32)).is_some_and(|u| u.abs() < limit)
        }
        _ => false,
    }
}

/// A const's value converted to its declared type (e.g. int literal to float const).
fn convert_const(v: Value, to: &Type) -> Value {
    match (&v, &to.kind) {
        (Value::Int(i), Kind::Float) => Value::Float(*i as f64),
        (Value::Int(i), Kind::Decimal { scale, .. }) => {
            Value::Decimal { units: *i as i128 * 10i128.pow(*scale as u32), scale: *scale }
        }
        (Value::Decimal { units, scale: s1 }, Kind::Decimal { scale: s2, .. }) if s2 > s1 => {
            Value::Decimal { units: units * 10i128.pow((*s2 - *s1) as u32), scale: *s2 }
        }
        (Value::Decimal { units, scale }, Kind::Float) => Value::Float(*units as f64 / 10f64.powi(*scale as i32)),
        _ => v,
    }
}

fn collect_calls(e: &ir::Expr, out: &mut Vec<usize>) {
    use ir::ExprKind as K;
    match &e.kind {
        K::CallFn(i, args) => {
            out.push(*i);
            args.iter().for_each(|a| collect_calls(a, out));
        }
        K::Call(_, args) | K::List(args) | K::Record(args) => args.iter().for_each(|a| collect_calls(a, out)),
        K::GetField(x, _) | K::SafeGetField(x, _) | K::Unary(_, x) | K::Cast(x) | K::IsNull { expr: x, .. } => {
            collect_calls(x, out)
        }
        K::Index(a, b) | K::Binary(_, a, b) => {
            collect_calls(a, out);
            collect_calls(b, out);
        }
        K::If(a, b, c) => {
            collect_calls(a, out);
            collect_calls(b, out);
            collect_calls(c, out);
        }
        K::Case { arms, otherwise } => {
            for (w, t) in arms {
                collect_calls(w, out);
                collect_calls(t, out);
            }
            if let Some(o) = otherwise {
                collect_calls(o, out);
            }
        }
        K::In { expr, list, .. } => {
            collect_calls(expr, out);
            list.iter().for_each(|a| collect_calls(a, out));
        }
        K::Literal(_) | K::Field(_) | K::Param(_) | K::Step(_) | K::Agg(_) => {}
    }
}

/// Depth-first search for a call cycle through `start`; `state`: 0 new, 1 on stack, 2 done.
fn find_cycle(start: usize, calls: &[Vec<usize>], state: &mut [u8], stack: &mut Vec<usize>) -> Option<Vec<usize>> {
    if state[start] == 2 {
        return None;
    }
    if state[start] == 1 {
        let pos = stack.iter().position(|&x| x == start)?;
        return Some(stack[pos..].to_vec());
    }
    state[start] = 1;
    stack.push(start);
    for &next in &calls[start] {
        if let Some(c) = find_cycle(next, calls, state, stack) {
            // Mark the rest done so each cycle is reported once.
            for &s in stack.iter() {
                state[s] = 2;
            }
            return Some(c);
        }
    }
    stack.pop();
    state[start] = 2;
    None
}

#[cfg(test)]
mod tests {
    use crate::ir::{Connector, KafkaProtocol, KafkaSasl, KafkaSecurity, SaslMechanism};

    fn connectors(src: &str) -> Vec<Connector> {
        let r = crate::compile_str("t.flow", src);
        let p = r.program.unwrap_or_else(|| panic!("{:?}", r.diagnostics));
        p.sources.iter().map(|s| s.connector.clone()).chain(p.sinks.iter().map(|s| s.connector.clone())).collect()
    }

    /// A topic's `idle_timeout` reaches the program (the readers' stampers take it from
    /// there, runtime/src/run/source.rs), also for a topic whose event time comes from its
    /// writers; a non-positive one is E0414.
    #[test]
    fn a_topics_idle_timeout_reaches_the_program() {
        let src = |opt: &str| {
            format!(
                "schema E {{ id: int, ts: timestamp }}\n\
                 topic a: E {{ partitions: 2, event_time: ts, watermark: 1s{opt} }}\n\
                 topic b: E {{ partitions: 2, idle_timeout: 30s }}\n\
                 sink out = stdout()\n\
                 pipeline p = from a | select {{ id, ts }} -> out\n"
            )
        };
        let r = crate::compile_str("t.flow", &src(", idle_timeout: 1m"));
        let p = r.program.unwrap_or_else(|| panic!("{:?}", r.diagnostics));
        let idle: Vec<_> = p.topics.iter().map(|t| (t.name.as_str(), t.idle_timeout_ms)).collect();
        assert_eq!(idle, [("a", Some(60_000)), ("b", Some(30_000))]);
        assert!(p.to_string().contains("idle_timeout 1m"), "{p}");
        let r = crate::compile_str("t.flow", &src(""));
        assert_eq!(r.program.unwrap().topics[0].idle_timeout_ms, None);
        let r = crate::compile_str("t.flow", &src(", idle_timeout: 0s"));
        assert!(r.diagnostics.iter().any(|d| d.code == "E0414"), "{:?}", r.diagnostics);
    }

    #[test]
    fn kafka_security_and_key_options_reach_the_program() {
        let c = connectors(
            r#"schema T { account: string, n: int }
source s: T = kafka("b:9093", topic: "in", security: sasl_ssl, user: "svc", password_env: "KAFKA_PW", ca: "ca.pem")
sink k = kafka("b:9092", topic: "out", key: "account", security: sasl_plaintext, sasl_mechanism: scram_sha_256, user: "svc", password_env: "PW")
sink t: T = kafka("b:9093", topic: "out", security: ssl)
pipeline p = from s | select { account, n } -> k, t
"#,
        );
        let sec = |c: &Connector| match c {
            Connector::Kafka { security, key, .. } => (security.clone(), key.clone()),
            _ => panic!("not kafka"),
        };
        let sasl = |mechanism, user: &str, env: &str| {
            Some(KafkaSasl { mechanism, user: user.into(), password_env: env.into() })
        };
        assert_eq!(
            sec(&c[0]),
            (
                KafkaSecurity {
                    protocol: KafkaProtocol::SaslSsl,
                    sasl: sasl(SaslMechanism::Plain, "svc", "KAFKA_PW"),
                    ca: Some("ca.pem".into())
                },
                None
            )
        );
        assert_eq!(
            sec(&c[1]),
            (
                KafkaSecurity {
                    protocol: KafkaProtocol::SaslPlaintext,
                    sasl: sasl(SaslMechanism::ScramSha256, "svc", "PW"),
                    ca: None
                },
                Some("account".into())
            )
        );
        assert_eq!(sec(&c[2]), (KafkaSecurity { protocol: KafkaProtocol::Ssl, sasl: None, ca: None }, None));
    }

    #[test]
    fn a_kafka_key_of_an_inferred_sink_is_checked_against_what_it_receives() {
        let r = crate::compile_str(
            "t.flow",
            r#"schema T { account: string, temp: float }
source s: T = stdin()
sink k = kafka("b:9092", topic: "out", key: temp)
sink unused = kafka("b:9092", topic: "out", key: anything)
pipeline p = from s -> k
"#,
        );
        let codes: Vec<&str> = r.diagnostics.iter().map(|d| d.code).collect();
        assert!(codes.contains(&"E0220"), "{codes:?}");
        // A sink nothing writes receives no records: its key is not judged.
        assert!(!codes.contains(&"E0303"), "{codes:?}");
    }
}
