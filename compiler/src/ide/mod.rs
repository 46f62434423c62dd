//! Editor queries: what is at a position, its type, its definition, its references,
//! completions, the outline of a file and quick fixes.
//!
//! An [`Analysis`] is one traced compilation ([`crate::compile_traced`]) plus an index
//! of every name in the program and what it refers to, built from the AST and the
//! checker's [`Trace`]. It works on broken programs: whatever parsed and checked is
//! indexed. Positions are byte offsets in a file of the compilation; results are spans
//! and plain text (markdown). This module knows nothing of LSP, JSON or UTF-16; the
//! LSP layer converts.

use crate::check::{DeclKind, Global, Trace};
use crate::diag::Diagnostic;
use crate::source::{FileId, Span};
use crate::syntax::ast::{self, Expr, ExprKind, Ident, Item, OpKind, PipelineDecl, SelectItem};
use crate::{compile_traced, compile_traced_with, Compilation, FileLoader};

mod reparse;
use flow_types::{Kind, RecordType, Type};
pub use reparse::ParseCache;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What a name in the program is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    Decl(DeclKind),
    /// A field of a schema or of a record a pipeline builds.
    Field,
    /// A fn parameter.
    Param,
    /// A pattern step.
    Step,
    /// A built-in function.
    Builtin,
    /// The path of an `import`: its definition is the start of the imported file.
    File,
}

/// One occurrence of a name: where it is, what it is, and where that is declared.
#[derive(Clone, Debug)]
pub struct Occurrence {
    pub span: Span,
    pub name: String,
    pub kind: NameKind,
    /// The span of the declaring name; equal to `span` for a declaration. `None` for
    /// built-ins and names that resolve to nothing.
    pub def: Option<Span>,
}

/// An item of a file's outline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    /// `schema`, `topic`, `source`, `sink`, `pipeline`, `const`, `fn`, `field`, `config`.
    pub kind: &'static str,
    /// The whole declaration.
    pub span: Span,
    /// The name.
    pub name_span: Span,
    pub detail: String,
    pub children: Vec<Symbol>,
}

/// What a completion inserts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompletionKind {
    Keyword,
    Field,
    Function,
    Decl(DeclKind),
    Type,
    Param,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub label: String,
    pub kind: CompletionKind,
    pub detail: String,
}

/// A hover: the span it is about and markdown text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hover {
    pub span: Span,
    pub markdown: String,
}

/// Words that start a declaration (the parser's list).
pub use crate::syntax::parse::DECL_KEYWORDS;
/// Words that start a pipeline operator (after `|`).
pub const OP_KEYWORDS: &[&str] = &[
    "where",
    "select",
    "key_by",
    "window",
    "aggregate",
    "dedup",
    "top",
    "join",
    "left",
    "lookup",
    "union",
    "route",
    "unnest",
    "pattern",
];
/// Words that may appear inside expressions.
pub const EXPR_KEYWORDS: &[&str] =
    &["and", "or", "not", "in", "is", "null", "true", "false", "if", "then", "else", "case", "when", "end", "as"];
/// The primitive types.
pub const PRIMITIVE_TYPES: &[&str] = &["bool", "int", "float", "string", "timestamp", "duration", "decimal", "list"];
/// Window kinds.
pub const WINDOW_KINDS: &[&str] = &["tumbling", "sliding", "session"];

/// A traced compilation and its index of names.
pub struct Analysis {
    pub comp: Compilation,
    pub trace: Trace,
    /// The root file's path (as given) and text, to re-check variants for completion.
    pub path: PathBuf,
    /// Every name occurrence of every file, sorted by span: built on first use, so
    /// a check that only publishes diagnostics does not pay for it.
    occurrences: std::cell::OnceCell<Vec<Occurrence>>,
}

impl Analysis {
    /// Compiles `path` (whose text is `text`) with its imports from `loader`, and
    /// indexes it.
    pub fn new(path: &Path, text: String, loader: &dyn FileLoader) -> Analysis {
        let (comp, trace) = compile_traced(path, Some(text), loader);
        Analysis::index(path, comp, trace)
    }

    /// [`Analysis::new`], parsing the root file through `cache`: only the
    /// declarations that changed since the cache last saw the file are parsed.
    pub fn with_cache(path: &Path, text: String, loader: &dyn FileLoader, cache: &mut ParseCache) -> Analysis {
        let mut root = true;
        let mut parse = |id: FileId, t: &str| {
            if std::mem::take(&mut root) {
                cache.parse(id, t)
            } else {
                crate::syntax::parse(id, t)
            }
        };
        let (comp, trace) = compile_traced_with(path, Some(text), loader, &mut parse);
        Analysis::index(path, comp, trace)
    }

    fn index(path: &Path, comp: Compilation, trace: Trace) -> Analysis {
        // The index itself is built lazily.
        Analysis { comp, trace, path: path.to_path_buf(), occurrences: std::cell::OnceCell::new() }
    }

    /// Every name occurrence of every file, sorted by span.
    pub fn occurrences(&self) -> &[Occurrence] {
        self.occurrences.get_or_init(|| Indexer::run(&self.comp, &self.trace))
    }

    /// The root file.
    pub fn root(&self) -> FileId {
        self.comp.files.first().map_or(FileId(0), |(id, _)| *id)
    }

    /// The text of the root file.
    pub fn root_text(&self) -> &str {
        &self.comp.sources.get(self.root()).text
    }

    /// The name at `offset` (the innermost; a name touching the offset on either side
    /// counts, so a cursor right after a word finds it).
    pub fn occurrence_at(&self, file: FileId, offset: usize) -> Option<&Occurrence> {
        let o = offset as u32;
        self.occurrences()
            .iter()
            .filter(|x| x.span.file == file && x.span.start <= o && o <= x.span.end)
            .min_by_key(|x| (x.span.end - x.span.start, u32::from(x.span.start == o)))
    }

    /// Where the name at `offset` is declared.
    pub fn definition(&self, file: FileId, offset: usize) -> Option<Span> {
        self.occurrence_at(file, offset)?.def
    }

    /// Every occurrence of what the name at `offset` refers to, its declaration first.
    pub fn references(&self, file: FileId, offset: usize) -> Vec<Span> {
        let Some(def) = self.definition(file, offset) else {
            return Vec::new();
        };
        let mut out: Vec<Span> = vec![def];
        out.extend(self.occurrences().iter().filter(|o| o.def == Some(def) && o.span != def).map(|o| o.span));
        out
    }

    /// The type of the innermost checked expression around `offset`.
    pub fn type_at(&self, file: FileId, offset: usize) -> Option<(Span, &Type)> {
        let o = offset as u32;
        self.trace
            .exprs
            .iter()
            .filter(|(s, _, _)| s.file == file && s.start <= o && o <= s.end)
            .min_by_key(|(s, _, _)| s.end - s.start)
            .map(|(s, t, _)| (*s, t))
    }

    /// What to show when hovering `offset`.
    pub fn hover(&self, file: FileId, offset: usize) -> Option<Hover> {
        if let Some(occ) = self.occurrence_at(file, offset) {
            if let Some(md) = self.describe(occ) {
                return Some(Hover { span: occ.span, markdown: md });
            }
        }
        if let Some(h) = self.window_hover(file, offset) {
            return Some(h);
        }
        let (span, ty) = self.type_at(file, offset)?;
        if ty.is_error() {
            return None;
        }
        let text = self.comp.sources.text(span);
        Some(Hover { span, markdown: format!("```flow\n{}: {ty}\n```", one_line(text, 60)) })
    }

    /// The outline of `file`.
    pub fn symbols(&self, file: FileId) -> Vec<Symbol> {
        let Some((_, f)) = self.comp.files.iter().find(|(id, _)| *id == file) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in &f.items {
            let (kind, name, span, detail, children) = match item {
                Item::Schema(d) => {
                    let children = d
                        .fields
                        .iter()
                        .map(|fd| Symbol {
                            name: fd.name.name.clone(),
                            kind: "field",
                            span: fd.span,
                            name_span: fd.name.span,
                            detail: self.comp.sources.text(fd.ty.span).to_string(),
                            children: Vec::new(),
                        })
                        .collect();
                    ("schema", &d.name, d.span, format!("{} fields", d.fields.len()), children)
                }
                Item::Topic(d) => ("topic", &d.name, d.span, d.schema.name.clone(), Vec::new()),
                Item::Source(d) => ("source", &d.name, d.span, d.schema.name.clone(), Vec::new()),
                Item::Sink(d) => {
                    ("sink", &d.name, d.span, d.schema.as_ref().map(|s| s.name.clone()).unwrap_or_default(), Vec::new())
                }
                Item::Pipeline(d) => {
                    let targets: Vec<&str> = d.targets.iter().map(|t| t.name.as_str()).collect();
                    ("pipeline", &d.name, d.span, format!("{} -> {}", d.input.name, targets.join(", ")), Vec::new())
                }
                Item::Const(d) => ("const", &d.name, d.span, String::new(), Vec::new()),
                Item::Fn(d) => ("fn", &d.name, d.span, self.comp.sources.text(d.ret.span).to_string(), Vec::new()),
                Item::Config(d) => {
                    out.push(Symbol {
                        name: "config".into(),
                        kind: "config",
                        span: d.span,
                        name_span: Span { end: d.span.start + 6, ..d.span },
                        detail: String::new(),
                        children: Vec::new(),
                    });
                    continue;
                }
                Item::Import(_) => continue,
            };
            out.push(Symbol { name: name.name.clone(), kind, span, name_span: name.span, detail, children });
        }
        out
    }

    /// Completions at `offset` in the root file. Field completions in a pipeline come
    /// from the record the operator at the cursor receives; when the pipeline does
    /// not parse yet, a variant of the text cut at the cursor's `|` is checked with
    /// `loader`.
    pub fn completions(&self, offset: usize, loader: &dyn FileLoader) -> Vec<Completion> {
        let text = self.root_text();
        let offset = floor_char(text, offset.min(text.len()));
        let before = &text[..offset];
        let word_start =
            before.len() - before.chars().rev().take_while(|c| is_ident_char(*c)).map(char::len_utf8).sum::<usize>();
        let head = &before[..word_start];
        let trimmed = head.trim_end();
        let prev_word: &str = {
            let w = trimmed.len()
                - trimmed.chars().rev().take_while(|c| is_ident_char(*c)).map(char::len_utf8).sum::<usize>();
            &trimmed[w..]
        };
        let decl = self.decl_at(offset);
        let decl_kw = decl.map(|(s, _)| first_word(&text[s..]));
        let mut out = Vec::new();
        if head.ends_with('.') {
            // `base.`: the fields of the record `base` is.
            let base_end = word_start - 1;
            let bs = base_end
                - head[..base_end].chars().rev().take_while(|c| is_ident_char(*c)).map(char::len_utf8).sum::<usize>();
            let base = &text[bs..base_end];
            if let Some(rec) = self.scope_at(offset, loader) {
                if let Some(f) = rec.field(base) {
                    if let Kind::Record(r) = &f.ty.kind {
                        push_fields(&mut out, r);
                    }
                }
            }
            return out;
        }
        if trimmed.ends_with("->") || matches!(prev_word, "late" | "dead_letter") {
            self.push_globals(&mut out, &[DeclKind::Topic, DeclKind::Sink]);
            return out;
        }
        if trimmed.ends_with(',') && decl_kw == Some("pipeline") && arrow_before_on_line(trimmed) {
            self.push_globals(&mut out, &[DeclKind::Topic, DeclKind::Sink]);
            return out;
        }
        if matches!(prev_word, "from" | "join" | "union") || (decl_kw == Some("pipeline") && trimmed.ends_with('=')) {
            self.push_globals(&mut out, &[DeclKind::Source, DeclKind::Topic]);
            return out;
        }
        if prev_word == "lookup" {
            self.push_globals(&mut out, &[DeclKind::Topic]);
            return out;
        }
        if prev_word == "window" {
            out.extend(WINDOW_KINDS.iter().map(|k| keyword(k, "window kind")));
            return out;
        }
        if trimmed.ends_with('|') {
            out.extend(OP_KEYWORDS.iter().map(|k| keyword(k, "operator")));
            return out;
        }
        match decl_kw {
            None => {
                out.extend(DECL_KEYWORDS.iter().map(|k| keyword(k, "declaration")));
            }
            Some("schema") | Some("fn") if trimmed.ends_with(':') || trimmed.ends_with("->") || prev_word == "list" => {
                self.push_types(&mut out);
            }
            Some("topic" | "source" | "sink")
                if trimmed.ends_with(':') && !head[decl.map_or(0, |d| d.0)..].contains('{') =>
            {
                self.push_globals(&mut out, &[DeclKind::Schema]);
            }
            Some("schema") => {}
            Some("pipeline") => {
                if let Some(rec) = self.scope_at(offset, loader) {
                    push_fields(&mut out, &rec);
                }
                self.push_expr_items(&mut out);
                out.extend(
                    OP_KEYWORDS.iter().filter(|k| **k == "join" || **k == "left").map(|k| keyword(k, "operator")),
                );
            }
            Some("fn") => {
                if let Some(f) = self.fn_at(offset) {
                    for p in &f.params {
                        out.push(Completion {
                            label: p.name.name.clone(),
                            kind: CompletionKind::Param,
                            detail: self.comp.sources.text(p.ty.span).to_string(),
                        });
                    }
                }
                self.push_expr_items(&mut out);
            }
            Some(_) => self.push_expr_items(&mut out),
        }
        out
    }

    /// A quick fix for a did-you-mean diagnostic: the span to replace and the name
    /// to put there.
    pub fn quick_fix(&self, d: &Diagnostic) -> Option<(Span, String)> {
        let help = d.help.as_deref()?;
        let name = help.strip_prefix("did you mean `")?.strip_suffix("`?")?;
        let old = self.comp.sources.text(d.primary.span);
        if old.is_empty() || !old.chars().all(is_ident_char) || !name.chars().all(is_ident_char) {
            return None;
        }
        Some((d.primary.span, name.to_string()))
    }

    // ---- helpers ----

    /// The declaration (item or broken chunk) of the root file around `offset`:
    /// (start, end) byte offsets.
    fn decl_at(&self, offset: usize) -> Option<(usize, usize)> {
        let (_, f) = self.comp.files.first()?;
        let o = offset as u32;
        let spans = f.items.iter().map(item_span).chain(f.broken.iter().map(|b| b.span));
        let mut best: Option<Span> = None;
        for s in spans {
            // A declaration owns the text up to the next one; take the last starting
            // before the cursor, if the cursor is within it or in its trailing space.
            if s.start < o && best.is_none_or(|b| s.start > b.start) {
                best = Some(s);
            }
        }
        let s = best?;
        let text = self.root_text();
        if o > s.end {
            // After the declaration's end: still in it only if no new line starts a
            // declaration in between (the user is typing at its tail).
            let gap = &text[s.end as usize..offset];
            if gap.lines().skip(1).any(|l| !l.trim().is_empty()) || gap.contains("\n\n") {
                return None;
            }
        }
        Some((s.start as usize, (s.end as usize).max(offset)))
    }

    fn fn_at(&self, offset: usize) -> Option<&ast::FnDecl> {
        let (_, f) = self.comp.files.first()?;
        f.items.iter().find_map(|i| match i {
            Item::Fn(d) if d.span.start as usize <= offset && offset <= d.span.end as usize => Some(d),
            _ => None,
        })
    }

    /// The record in scope at `offset` in a pipeline of the root file: what the
    /// operator after the last `|` before the cursor receives.
    fn scope_at(&self, offset: usize, loader: &dyn FileLoader) -> Option<std::sync::Arc<RecordType>> {
        let (start, end) = self.decl_at(offset)?;
        let text = self.root_text();
        let pipe = start + text[start..offset].rfind('|')?;
        let root = self.root();
        // The operator after that `|` was checked: use what it received.
        let op_start = pipe + 1 + (text[pipe + 1..].len() - text[pipe + 1..].trim_start().len());
        if let Some((_, r)) = self.trace.ops.iter().find(|(s, _)| s.file == root && s.start as usize == op_start) {
            return Some(r.clone());
        }
        // Otherwise check a variant where the pipeline ends with `| where true`.
        let probe = "| where true\n";
        let mut variant = String::with_capacity(text.len() + probe.len());
        variant.push_str(&text[..pipe]);
        variant.push_str(probe);
        variant.push_str(&text[end.min(text.len())..]);
        let (_, trace) = compile_traced(&self.path, Some(variant), loader);
        let at = (pipe + 2) as u32;
        trace.ops.into_iter().find(|(s, _)| s.file == root && s.start == at).map(|(_, r)| r)
    }

    fn push_globals(&self, out: &mut Vec<Completion>, kinds: &[DeclKind]) {
        let mut names: Vec<(&String, &Global)> =
            self.comp.globals.iter().filter(|(_, g)| kinds.contains(&g.kind)).collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        for (n, g) in names {
            out.push(Completion { label: n.clone(), kind: CompletionKind::Decl(g.kind), detail: g.kind.noun().into() });
        }
    }

    fn push_types(&self, out: &mut Vec<Completion>) {
        out.extend(PRIMITIVE_TYPES.iter().map(|t| Completion {
            label: t.to_string(),
            kind: CompletionKind::Type,
            detail: "type".into(),
        }));
        self.push_globals(out, &[DeclKind::Schema]);
    }

    /// Functions, consts and expression keywords.
    fn push_expr_items(&self, out: &mut Vec<Completion>) {
        for f in flow_stdlib::SCALARS {
            out.push(Completion { label: f.name.into(), kind: CompletionKind::Function, detail: f.signature() });
        }
        for f in flow_stdlib::AGGREGATES {
            out.push(Completion {
                label: f.name.into(),
                kind: CompletionKind::Function,
                detail: format!("aggregate: {}", f.doc),
            });
        }
        for (_, f) in &self.comp.files {
            for item in &f.items {
                if let Item::Fn(d) = item {
                    out.push(Completion {
                        label: d.name.name.clone(),
                        kind: CompletionKind::Decl(DeclKind::Fn),
                        detail: self.fn_signature(d),
                    });
                }
            }
        }
        self.push_globals(out, &[DeclKind::Const]);
        out.extend(EXPR_KEYWORDS.iter().map(|k| keyword(k, "keyword")));
    }

    fn fn_signature(&self, d: &ast::FnDecl) -> String {
        let params: Vec<String> =
            d.params.iter().map(|p| format!("{}: {}", p.name.name, self.comp.sources.text(p.ty.span))).collect();
        format!("fn {}({}) -> {}", d.name.name, params.join(", "), self.comp.sources.text(d.ret.span))
    }

    /// The declaration whose name is at `span`.
    fn decl_item(&self, span: Span) -> Option<&Item> {
        let (_, f) = self.comp.files.iter().find(|(id, _)| *id == span.file)?;
        f.items.iter().find(|i| item_name(i).is_some_and(|n| n.span == span))
    }

    fn schema_decl(&self, name: &str) -> Option<&ast::SchemaDecl> {
        let g = self.comp.globals.get(name)?;
        match self.decl_item(g.span)? {
            Item::Schema(s) => Some(s),
            _ => None,
        }
    }

    fn schema_text(&self, s: &ast::SchemaDecl) -> String {
        let mut out = format!("schema {} {{\n", s.name.name);
        for f in &s.fields {
            out.push_str(&format!("    {}: {},\n", f.name.name, self.comp.sources.text(f.ty.span)));
        }
        out.push('}');
        out
    }

    fn describe(&self, occ: &Occurrence) -> Option<String> {
        match occ.kind {
            NameKind::Builtin => {
                if let Some(f) = flow_stdlib::scalar(&occ.name) {
                    return Some(format!("```flow\n{}\n```\n{}", f.signature(), f.doc));
                }
                let a = flow_stdlib::aggregate(&occ.name)?;
                let arg = match (a.param, a.arg_optional) {
                    (None, _) => String::new(),
                    (Some(p), false) => p.describe().to_string(),
                    (Some(p), true) => format!("[{}]", p.describe()),
                };
                Some(format!("```flow\n{}({arg})\n```\naggregate: {}", a.name, a.doc))
            }
            NameKind::Decl(_) => {
                let def = occ.def?;
                let item = self.decl_item(def)?;
                let text = match item {
                    Item::Schema(s) => self.schema_text(s),
                    Item::Topic(t) => {
                        let schema = self.schema_decl(&t.schema.name).map(|s| self.schema_text(s)).unwrap_or_default();
                        format!("topic {}: {}\n\n{schema}", t.name.name, t.schema.name)
                    }
                    Item::Source(s) => {
                        let schema = self.schema_decl(&s.schema.name).map(|x| self.schema_text(x)).unwrap_or_default();
                        let time =
                            s.event_time.as_ref().map(|e| format!(" event_time {}", e.field.name)).unwrap_or_default();
                        format!(
                            "source {}: {} from {}{time}\n\n{schema}",
                            s.name.name, s.schema.name, s.connector.kind.name
                        )
                    }
                    Item::Sink(s) => {
                        let name = s.schema.as_ref().map_or("(inferred)".to_string(), |x| x.name.clone());
                        let schema = s
                            .schema
                            .as_ref()
                            .and_then(|x| self.schema_decl(&x.name))
                            .map(|x| self.schema_text(x))
                            .unwrap_or_default();
                        format!("sink {}: {name} to {}\n\n{schema}", s.name.name, s.connector.kind.name)
                    }
                    Item::Pipeline(p) => {
                        let targets: Vec<&str> = p.targets.iter().map(|t| t.name.as_str()).collect();
                        let ops: Vec<&str> = p.ops.iter().map(|o| o.kind.keyword()).collect();
                        format!(
                            "pipeline {} = from {} | {} -> {}",
                            p.name.name,
                            p.input.name,
                            ops.join(" | "),
                            targets.join(", ")
                        )
                    }
                    Item::Const(c) => {
                        let ty =
                            self.trace.exprs.iter().find(|(s, _, _)| *s == c.value.span).map(|(_, t, _)| t.to_string());
                        format!(
                            "const {}: {} = {}",
                            c.name.name,
                            ty.unwrap_or_else(|| "?".into()),
                            one_line(self.comp.sources.text(c.value.span), 60)
                        )
                    }
                    Item::Fn(f) => self.fn_signature(f),
                    Item::Config(_) | Item::Import(_) => return None,
                };
                Some(format!("```flow\n{text}\n```"))
            }
            NameKind::File => {
                let def = occ.def?;
                let f = self.comp.sources.get(def.file);
                Some(format!("file `{}` ({} lines)", f.name, f.text.lines().count()))
            }
            NameKind::Field | NameKind::Param | NameKind::Step => {
                let noun = match occ.kind {
                    NameKind::Field => "field",
                    NameKind::Param => "parameter",
                    _ => "pattern step",
                };
                // The type where it is used (the checker's), else where it is declared.
                let ty = self
                    .trace
                    .exprs
                    .iter()
                    .find(|(s, _, _)| *s == occ.span)
                    .map(|(_, t, _)| t.to_string())
                    .or_else(|| self.declared_type(occ.def?));
                let ty = ty.map(|t| format!(": {t}")).unwrap_or_default();
                Some(format!("```flow\n{noun} {}{ty}\n```", occ.name))
            }
        }
    }

    /// The type written or inferred where a field or parameter is declared.
    fn declared_type(&self, def: Span) -> Option<String> {
        let (_, f) = self.comp.files.iter().find(|(id, _)| *id == def.file)?;
        for item in &f.items {
            match item {
                Item::Schema(s) => {
                    if let Some(fd) = s.fields.iter().find(|fd| fd.name.span == def) {
                        return Some(self.comp.sources.text(fd.ty.span).to_string());
                    }
                }
                Item::Fn(d) => {
                    if let Some(p) = d.params.iter().find(|p| p.name.span == def) {
                        return Some(self.comp.sources.text(p.ty.span).to_string());
                    }
                }
                Item::Pipeline(p) => {
                    for op in &p.ops {
                        let named: Vec<&ast::NamedExpr> = match &op.kind {
                            OpKind::Select(items) => items
                                .iter()
                                .filter_map(|i| match i {
                                    SelectItem::Named(n) => Some(n),
                                    _ => None,
                                })
                                .collect(),
                            OpKind::Aggregate { items, .. } => items.iter().collect(),
                            OpKind::Pattern { measures, .. } => measures.iter().collect(),
                            _ => Vec::new(),
                        };
                        if let Some(n) = named.iter().find(|n| n.name.span == def) {
                            let ty = self.trace.exprs.iter().find(|(s, _, _)| *s == n.value.span)?;
                            return Some(ty.1.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        None
    }

    fn window_hover(&self, file: FileId, offset: usize) -> Option<Hover> {
        let (_, f) = self.comp.files.iter().find(|(id, _)| *id == file)?;
        let o = offset as u32;
        for item in &f.items {
            let Item::Pipeline(p) = item else { continue };
            for op in &p.ops {
                let OpKind::Window { spec, lateness, .. } = &op.kind else { continue };
                if !(op.span.start <= o && o <= spec.span.end) {
                    continue;
                }
                let args: Vec<&str> = spec.args.iter().map(|a| self.comp.sources.text(a.value.span)).collect();
                let what = match (spec.kind.name.as_str(), args.as_slice()) {
                    ("tumbling", [size, ..]) => format!("tumbling window of {size}: each record belongs to one window"),
                    ("sliding", [size, slide, ..]) => {
                        format!("sliding window of {size}, every {slide}: a record belongs to several windows")
                    }
                    ("session", [gap, ..]) => {
                        format!("session window with a gap of {gap}: closes after {gap} without records")
                    }
                    (k, _) => format!("{k} window"),
                };
                let late = lateness
                    .as_ref()
                    .map(|l| format!("\n\nallowed lateness {}", self.comp.sources.text(l.span)))
                    .unwrap_or_default();
                return Some(Hover { span: spec.span, markdown: format!("{what}{late}") });
            }
        }
        None
    }
}

fn keyword(k: &str, detail: &str) -> Completion {
    Completion { label: k.to_string(), kind: CompletionKind::Keyword, detail: detail.to_string() }
}

fn push_fields(out: &mut Vec<Completion>, rec: &RecordType) {
    for f in &rec.fields {
        out.push(Completion { label: f.name.clone(), kind: CompletionKind::Field, detail: f.ty.to_string() });
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn first_word(s: &str) -> &str {
    let s = s.trim_start();
    let end = s.find(|c: char| !is_ident_char(c)).unwrap_or(s.len());
    &s[..end]
}

fn arrow_before_on_line(s: &str) -> bool {
    let line = s.rsplit('\n').next().unwrap_or(s);
    line.contains("->")
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

pub(crate) fn item_span(i: &Item) -> Span {
    match i {
        Item::Import(d) => d.span,
        Item::Schema(d) => d.span,
        Item::Topic(d) => d.span,
        Item::Source(d) => d.span,
        Item::Sink(d) => d.span,
        Item::Pipeline(d) => d.span,
        Item::Const(d) => d.span,
        Item::Fn(d) => d.span,
        Item::Config(d) => d.span,
    }
}

fn item_name(i: &Item) -> Option<&Ident> {
    match i {
        Item::Schema(d) => Some(&d.name),
        Item::Topic(d) => Some(&d.name),
        Item::Source(d) => Some(&d.name),
        Item::Sink(d) => Some(&d.name),
        Item::Pipeline(d) => Some(&d.name),
        Item::Const(d) => Some(&d.name),
        Item::Fn(d) => Some(&d.name),
        Item::Config(_) | Item::Import(_) => None,
    }
}

/// The name a bare select item gets: the field it ends in.
fn implied_name(e: &Expr) -> Option<&str> {
    match &e.kind {
        ExprKind::Name(id) => Some(&id.name),
        ExprKind::Field(_, f) | ExprKind::SafeField(_, f) => Some(&f.name),
        _ => None,
    }
}

/// Where a name in an expression looks for its meaning.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// Operator `op` of pipeline `p` (fields of the record it receives).
    Pipeline(&'a PipelineDecl, usize),
    /// A fn body: parameters.
    Fn(&'a ast::FnDecl),
    /// Options of a declaration whose records are of this schema.
    Schema(Option<&'a str>),
    /// Consts only.
    Global,
}

/// Builds the index of occurrences.
struct Indexer<'a> {
    comp: &'a Compilation,
    trace_types: HashMap<Span, &'a Type>,
    /// Schema field declarations: (schema, field) -> span of the field's name.
    schema_fields: HashMap<(&'a str, &'a str), Span>,
    /// Declared schema of each topic, source and sink.
    stream_schema: HashMap<&'a str, &'a str>,
    out: Vec<Occurrence>,
}

impl<'a> Indexer<'a> {
    fn run(comp: &'a Compilation, trace: &'a Trace) -> Vec<Occurrence> {
        let mut ix = Indexer {
            comp,
            trace_types: trace.exprs.iter().map(|(s, t, _)| (*s, t)).collect(),
            schema_fields: HashMap::new(),
            stream_schema: HashMap::new(),
            out: Vec::new(),
        };
        for (_, f) in &comp.files {
            for item in &f.items {
                match item {
                    Item::Schema(s) => {
                        for fd in &s.fields {
                            ix.schema_fields.entry((&s.name.name, &fd.name.name)).or_insert(fd.name.span);
                        }
                    }
                    Item::Topic(t) => {
                        ix.stream_schema.insert(&t.name.name, &t.schema.name);
                    }
                    Item::Source(t) => {
                        ix.stream_schema.insert(&t.name.name, &t.schema.name);
                    }
                    Item::Sink(t) => {
                        if let Some(s) = &t.schema {
                            ix.stream_schema.insert(&t.name.name, &s.name);
                        }
                    }
                    _ => {}
                }
            }
        }
        for (_, f) in &comp.files {
            for item in &f.items {
                ix.item(item);
            }
        }
        ix.out.sort_by_key(|o| o.span);
        ix.out
    }

    fn push(&mut self, id: &Ident, kind: NameKind, def: Option<Span>) {
        if id.name.is_empty() {
            return;
        }
        self.out.push(Occurrence { span: id.span, name: id.name.clone(), kind, def });
    }

    /// A use of a global name.
    fn global(&mut self, id: &Ident) {
        if let Some(g) = self.comp.globals.get(&id.name) {
            if g.index != usize::MAX {
                self.push(id, NameKind::Decl(g.kind), Some(g.span));
            }
        }
    }

    fn decl(&mut self, id: &Ident, kind: DeclKind) {
        self.push(id, NameKind::Decl(kind), Some(id.span));
    }

    fn type_expr(&mut self, t: &ast::TypeExpr) {
        match &t.kind {
            ast::TypeExprKind::Named(id) => {
                if !PRIMITIVE_TYPES.contains(&id.name.as_str()) {
                    self.global(id);
                }
            }
            ast::TypeExprKind::List(inner) => self.type_expr(inner),
            ast::TypeExprKind::Decimal { .. } => {}
        }
    }

    fn schema_field(&mut self, schema: Option<&str>, id: &Ident) -> bool {
        let def = schema.and_then(|s| self.schema_fields.get(&(s, id.name.as_str())).copied());
        if def.is_some() {
            self.push(id, NameKind::Field, def);
        }
        def.is_some()
    }

    fn stream_field_def(&self, stream: &str, field: &str) -> Option<Span> {
        let schema = self.stream_schema.get(stream)?;
        self.schema_fields.get(&(*schema, field)).copied()
    }

    fn item(&mut self, item: &'a Item) {
        match item {
            Item::Import(imp) => {
                let importer = &self.comp.sources.get(imp.path_span.file).name;
                let dir = Path::new(importer).parent().unwrap_or(Path::new(""));
                let target = crate::normalize(&dir.join(&imp.path)).display().to_string();
                let def = self.comp.sources.find(&target).map(|f| Span::new(f, 0, 0));
                self.out.push(Occurrence { span: imp.path_span, name: imp.path.clone(), kind: NameKind::File, def });
            }
            Item::Config(c) => {
                for o in &c.options {
                    self.expr(&o.value, Scope::Global);
                }
            }
            Item::Schema(s) => {
                self.decl(&s.name, DeclKind::Schema);
                for fd in &s.fields {
                    self.push(&fd.name, NameKind::Field, Some(fd.name.span));
                    self.type_expr(&fd.ty);
                }
            }
            Item::Topic(t) => {
                self.decl(&t.name, DeclKind::Topic);
                self.global(&t.schema);
                for o in &t.options {
                    self.expr(&o.value, Scope::Schema(Some(&t.schema.name)));
                }
            }
            Item::Source(s) => {
                self.decl(&s.name, DeclKind::Source);
                self.global(&s.schema);
                for a in &s.connector.args {
                    self.expr(&a.value, Scope::Global);
                }
                if let Some(et) = &s.event_time {
                    self.schema_field(Some(&s.schema.name), &et.field);
                    if let Some(w) = &et.watermark {
                        self.expr(w, Scope::Global);
                    }
                }
                if let Some(e) = &s.idle_timeout {
                    self.expr(e, Scope::Global);
                }
                if let Some(d) = &s.dead_letter {
                    self.global(d);
                }
            }
            Item::Sink(s) => {
                self.decl(&s.name, DeclKind::Sink);
                if let Some(sc) = &s.schema {
                    self.global(sc);
                }
                for a in &s.connector.args {
                    self.expr(&a.value, Scope::Global);
                }
            }
            Item::Const(c) => {
                self.decl(&c.name, DeclKind::Const);
                if let Some(t) = &c.ty {
                    self.type_expr(t);
                }
                self.expr(&c.value, Scope::Global);
            }
            Item::Fn(f) => {
                self.decl(&f.name, DeclKind::Fn);
                for p in &f.params {
                    self.push(&p.name, NameKind::Param, Some(p.name.span));
                    self.type_expr(&p.ty);
                }
                self.type_expr(&f.ret);
                self.expr(&f.body, Scope::Fn(f));
            }
            Item::Pipeline(p) => self.pipeline(p),
        }
    }

    fn pipeline(&mut self, p: &'a PipelineDecl) {
        self.decl(&p.name, DeclKind::Pipeline);
        self.global(&p.input);
        for (i, op) in p.ops.iter().enumerate() {
            let sc = Scope::Pipeline(p, i);
            match &op.kind {
                OpKind::Where(e) => self.expr(e, sc),
                OpKind::Select(items) => {
                    for it in items {
                        match it {
                            SelectItem::All(_) => {}
                            SelectItem::Named(n) => {
                                self.push(&n.name, NameKind::Field, Some(n.name.span));
                                self.expr(&n.value, sc);
                            }
                            SelectItem::Expr(e) => self.expr(e, sc),
                        }
                    }
                }
                OpKind::KeyBy(es) => es.iter().for_each(|e| self.expr(e, sc)),
                OpKind::Window { spec, lateness, late, emit_every } => {
                    for a in &spec.args {
                        self.expr(&a.value, Scope::Global);
                    }
                    for e in lateness.iter().chain(emit_every.iter()) {
                        self.expr(e, Scope::Global);
                    }
                    if let Some(l) = late {
                        self.global(l);
                    }
                }
                OpKind::Aggregate { items, ttl } => {
                    for n in items {
                        self.push(&n.name, NameKind::Field, Some(n.name.span));
                        self.expr(&n.value, sc);
                    }
                    if let Some(t) = ttl {
                        self.expr(t, Scope::Global);
                    }
                }
                OpKind::Dedup { by, within } => {
                    if let Some(b) = by {
                        self.expr(b, sc);
                    }
                    self.expr(within, Scope::Global);
                }
                OpKind::Top { by, .. } => self.expr(by, sc),
                OpKind::Join { other, alias, on, bound, .. } => {
                    self.global(other);
                    if let Some(a) = alias {
                        self.push(a, NameKind::Field, Some(a.span));
                    }
                    // The condition sees the joined side too: one operator later.
                    self.expr(on, Scope::Pipeline(p, i + 1));
                    match bound {
                        ast::JoinBound::None => {}
                        ast::JoinBound::Within(e) => self.expr(e, Scope::Global),
                        ast::JoinBound::Window(c) => c.args.iter().for_each(|a| self.expr(&a.value, Scope::Global)),
                    }
                }
                OpKind::Lookup { table, alias, on, .. } => {
                    self.global(table);
                    if let Some(a) = alias {
                        self.push(a, NameKind::Field, Some(a.span));
                    }
                    self.expr(on, Scope::Pipeline(p, i + 1));
                }
                OpKind::Union(others) => others.iter().for_each(|o| self.global(o)),
                OpKind::Route(arms) => {
                    for a in arms {
                        if let Some(c) = &a.cond {
                            self.expr(c, sc);
                        }
                        self.global(&a.target);
                    }
                }
                OpKind::Unnest { field, alias } => {
                    self.expr(field, sc);
                    if let Some(a) = alias {
                        self.push(a, NameKind::Field, Some(a.span));
                    }
                }
                OpKind::Pattern { steps, within, measures } => {
                    for s in steps {
                        self.push(&s.name, NameKind::Step, Some(s.name.span));
                        self.expr(&s.cond, sc);
                    }
                    self.expr(within, Scope::Global);
                    for m in measures {
                        self.push(&m.name, NameKind::Field, Some(m.name.span));
                        self.expr(&m.value, Scope::Pipeline(p, i + 1));
                    }
                }
            }
        }
        for t in &p.targets {
            self.global(t);
        }
    }

    /// Where field `name` of the record operator `op` of `p` receives is declared.
    fn pipeline_field_def(&self, p: &PipelineDecl, op: usize, name: &str) -> Option<Span> {
        for j in (0..op.min(p.ops.len())).rev() {
            match &p.ops[j].kind {
                OpKind::Select(items) => {
                    let mut passes = false;
                    for it in items {
                        match it {
                            SelectItem::Named(n) if n.name.name == name => return Some(n.name.span),
                            SelectItem::All(_) => passes = true,
                            SelectItem::Expr(e) if implied_name(e) == Some(name) => passes = true,
                            _ => {}
                        }
                    }
                    if !passes {
                        return None;
                    }
                }
                OpKind::Aggregate { items, .. } => {
                    if let Some(n) = items.iter().find(|n| n.name.name == name) {
                        return Some(n.name.span);
                    }
                }
                OpKind::Pattern { measures, .. } => {
                    if let Some(n) = measures.iter().find(|n| n.name.name == name) {
                        return Some(n.name.span);
                    }
                }
                OpKind::Join { other, alias, .. } => match alias {
                    Some(a) if a.name == name => return Some(a.span),
                    None if other.name == name => return self.comp.globals.get(name).map(|g| g.span),
                    _ => {}
                },
                OpKind::Lookup { table, alias, .. } => match alias {
                    Some(a) if a.name == name => return Some(a.span),
                    None if table.name == name => return self.comp.globals.get(name).map(|g| g.span),
                    _ => {}
                },
                OpKind::Unnest { alias: Some(a), .. } if a.name == name => return Some(a.span),
                _ => {}
            }
        }
        self.stream_field_def(&p.input.name, name)
    }

    fn expr(&mut self, e: &'a Expr, sc: Scope<'a>) {
        match &e.kind {
            ExprKind::Name(id) => self.name(id, sc),
            ExprKind::Field(base, f) | ExprKind::SafeField(base, f) => {
                self.expr(base, sc);
                // The base's type (from the checker) names the schema of its record.
                let schema = self.trace_types.get(&base.span).and_then(|t| match &t.kind {
                    Kind::Record(r) => r.name.clone(),
                    _ => None,
                });
                let def = schema.and_then(|s| self.schema_fields.get(&(s.as_str(), f.name.as_str())).copied());
                self.push(f, NameKind::Field, def);
            }
            ExprKind::Call(name, args) => {
                if flow_stdlib::scalar(&name.name).is_some() || flow_stdlib::aggregate(&name.name).is_some() {
                    self.push(name, NameKind::Builtin, None);
                } else {
                    self.global(name);
                }
                args.iter().for_each(|a| self.expr(a, sc));
            }
            ExprKind::Index(a, b) => {
                self.expr(a, sc);
                self.expr(b, sc);
            }
            ExprKind::Unary(_, a) => self.expr(a, sc),
            ExprKind::Binary(_, a, b) => {
                self.expr(a, sc);
                self.expr(b, sc);
            }
            ExprKind::If(a, b, c) => {
                self.expr(a, sc);
                self.expr(b, sc);
                self.expr(c, sc);
            }
            ExprKind::Case { subject, arms, otherwise } => {
                if let Some(s) = subject {
                    self.expr(s, sc);
                }
                for (a, b) in arms {
                    self.expr(a, sc);
                    self.expr(b, sc);
                }
                if let Some(o) = otherwise {
                    self.expr(o, sc);
                }
            }
            ExprKind::Cast(a, t) => {
                self.expr(a, sc);
                self.type_expr(t);
            }
            ExprKind::In { expr, list, .. } => {
                self.expr(expr, sc);
                list.iter().for_each(|x| self.expr(x, sc));
            }
            ExprKind::IsNull { expr, .. } => self.expr(expr, sc),
            ExprKind::List(xs) => xs.iter().for_each(|x| self.expr(x, sc)),
            ExprKind::Record(items) => items.iter().for_each(|n| self.expr(&n.value, sc)),
            ExprKind::Int(_)
            | ExprKind::Decimal { .. }
            | ExprKind::Float(_)
            | ExprKind::Str(_)
            | ExprKind::Bool(_)
            | ExprKind::Null
            | ExprKind::Duration(_)
            | ExprKind::Size(_)
            | ExprKind::Timestamp(_)
            | ExprKind::Error => {}
        }
    }

    fn name(&mut self, id: &Ident, sc: Scope<'a>) {
        match sc {
            Scope::Pipeline(p, op) => {
                // A pattern step (conditions see this operator, measures the next).
                for j in [Some(op), op.checked_sub(1)].into_iter().flatten() {
                    if let Some(OpKind::Pattern { steps, .. }) = p.ops.get(j).map(|o| &o.kind) {
                        if let Some(s) = steps.iter().find(|s| s.name.name == id.name) {
                            self.push(id, NameKind::Step, Some(s.name.span));
                            return;
                        }
                    }
                }
                if let Some(def) = self.pipeline_field_def(p, op, &id.name) {
                    self.push(id, NameKind::Field, Some(def));
                    return;
                }
            }
            Scope::Fn(f) => {
                if let Some(p) = f.params.iter().find(|p| p.name.name == id.name) {
                    self.push(id, NameKind::Param, Some(p.name.span));
                    return;
                }
            }
            Scope::Schema(schema) => {
                if self.schema_field(schema, id) {
                    return;
                }
            }
            Scope::Global => {}
        }
        match self.comp.globals.get(&id.name) {
            Some(g) if g.kind == DeclKind::Const => self.global(id),
            // Typed by the checker as a field we have no declaration for (window
            // bounds, `match_end`): still a field, for hover.
            _ if matches!(sc, Scope::Pipeline(..)) && self.trace_types.get(&id.span).is_some_and(|t| !t.is_error()) => {
                self.push(id, NameKind::Field, None)
            }
            _ => {}
        }
    }
}
