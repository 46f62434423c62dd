//! Resolution and type checking: AST -> typed IR.
//!
//! [`check`] takes the parsed files of one program (a root file and its imports) and
//! returns the typed [`ir::Program`] when there are no errors, plus every diagnostic
//! found. All user errors of a program are found here. The checker never stops at the
//! first error: a mistake gives its expression the `Error` type, which unifies with
//! everything, and a declaration that failed to parse or check is remembered as
//! broken, so that one mistake yields one diagnostic, not a cascade.
//!
//! Submodules: `expr` types expressions, `pipeline` types operators, `decls` checks
//! schemas, consts, fns, topics, sources, sinks and config.

mod decls;

pub use decls::{dead_letter_record, generator_fields};
mod expr;
mod pipeline;

use crate::diag::{did_you_mean, Diagnostic};
use crate::ir;
use crate::source::Span;
use crate::syntax::ast;
use std::collections::{HashMap, HashSet};

/// What kind of thing a global name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclKind {
    Schema,
    Topic,
    Source,
    Sink,
    Pipeline,
    Const,
    Fn,
}

impl DeclKind {
    pub fn noun(self) -> &'static str {
        match self {
            DeclKind::Schema => "schema",
            DeclKind::Topic => "topic",
            DeclKind::Source => "source",
            DeclKind::Sink => "sink",
            DeclKind::Pipeline => "pipeline",
            DeclKind::Const => "const",
            DeclKind::Fn => "fn",
        }
    }

    fn from_keyword(k: &str) -> Option<DeclKind> {
        Some(match k {
            "schema" => DeclKind::Schema,
            "topic" => DeclKind::Topic,
            "source" => DeclKind::Source,
            "sink" => DeclKind::Sink,
            "pipeline" => DeclKind::Pipeline,
            "const" => DeclKind::Const,
            "fn" => DeclKind::Fn,
            _ => return None,
        })
    }
}

/// A declared global name.
#[derive(Clone, Copy, Debug)]
pub struct Global {
    pub kind: DeclKind,
    /// Index into the checker's list of declarations of that kind.
    pub index: usize,
    /// The span of the name in its declaration.
    pub span: Span,
}

/// The result of checking: the program, if there were no errors, and every diagnostic.
pub struct Checked {
    pub program: Option<ir::Program>,
    pub diagnostics: Vec<Diagnostic>,
    /// Every global name and where it is declared (for editors).
    pub globals: HashMap<String, Global>,
}

/// What the checker saw on the way, for editors: every expression it typed with the
/// record in scope, and the record each pipeline operator receives. Recorded only
/// when asked for ([`check_traced`]); it covers the parts of a broken program that
/// were checked.
#[derive(Debug, Default)]
pub struct Trace {
    /// (expression span, its type, the record whose fields were in scope).
    pub exprs: Vec<(Span, flow_types::Type, Option<ir::Record>)>,
    /// (operator span, the record the operator receives).
    pub ops: Vec<(Span, ir::Record)>,
}

/// Checks one program made of `files` (a root file first, then its imports).
/// `syntax_errors` says whether parsing reported errors (then no unused warnings).
pub fn check(files: &[&ast::File], syntax_errors: bool) -> Checked {
    check_impl(files, syntax_errors, None).0
}

/// [`check`], also recording a [`Trace`] for editor queries.
pub fn check_traced(files: &[&ast::File], syntax_errors: bool) -> (Checked, Trace) {
    let (checked, trace) = check_impl(files, syntax_errors, Some(Box::default()));
    (checked, trace.map(|t| *t).unwrap_or_default())
}

fn check_impl(files: &[&ast::File], syntax_errors: bool, trace: Option<Box<Trace>>) -> (Checked, Option<Box<Trace>>) {
    let mut c = Checker { trace, ..Checker::default() };
    c.collect(files);
    c.check_all();
    let errors =
        syntax_errors || c.diags.iter().any(Diagnostic::is_error) || files.iter().any(|f| !f.broken.is_empty());
    // With errors, "unused" is unreliable (the user may be broken): warn only when clean.
    if !errors {
        c.warn_unused();
    }
    let mut diagnostics = std::mem::take(&mut c.diags);
    sort_diagnostics(&mut diagnostics);
    let globals = c.globals.clone();
    let trace = c.trace.take();
    (Checked { program: if errors { None } else { Some(c.out) }, diagnostics, globals }, trace)
}

/// Orders diagnostics by file and position, keeping the order of equal ones.
pub fn sort_diagnostics(d: &mut [Diagnostic]) {
    d.sort_by_key(|d| (d.primary.span.file, d.primary.span.start));
}

/// Where a declaration came from, kept to check it after all names are known.
#[derive(Default)]
struct Decls<'a> {
    schemas: Vec<&'a ast::SchemaDecl>,
    topics: Vec<&'a ast::TopicDecl>,
    sources: Vec<&'a ast::SourceDecl>,
    sinks: Vec<&'a ast::SinkDecl>,
    pipelines: Vec<&'a ast::PipelineDecl>,
    consts: Vec<&'a ast::ConstDecl>,
    fns: Vec<&'a ast::FnDecl>,
    configs: Vec<&'a ast::ConfigDecl>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Progress {
    InProgress,
    Done,
}

#[derive(Default)]
struct Checker<'a> {
    diags: Vec<Diagnostic>,
    decls: Decls<'a>,
    globals: HashMap<String, Global>,
    /// Names of declarations that failed to parse or check: uses stay silent.
    broken: HashSet<String>,
    used: HashSet<String>,
    /// Resolved schemas by name (None: broken).
    schemas: HashMap<String, Option<ir::Record>>,
    schema_progress: HashMap<String, Progress>,
    consts: HashMap<String, Option<(flow_types::Type, flow_types::Value)>>,
    const_progress: HashMap<String, Progress>,
    /// Fn signatures by name: index into `out.fns`, or None if broken.
    fn_index: HashMap<String, Option<usize>>,
    /// Topic/source/sink schemas by name, None when broken.
    stream_schemas: HashMap<String, Option<ir::Record>>,
    /// Event time of sources and topics-as-inputs: field index, or why there is none.
    source_info: HashMap<String, ir::Source>,
    /// Sinks declared without a schema take the first writer's; where it came from.
    inferred_sinks: HashMap<String, (ir::Record, Span)>,
    /// `key:` of `kafka(...)` sinks without a schema: sink, field and where, checked
    /// against the records they receive once those are known.
    kafka_keys: Vec<(String, String, Span)>,
    /// Event time topics get from the pipelines writing them.
    topic_time: HashMap<String, pipeline::TopicTime>,
    /// Some pipeline failed to parse: what it writes is unknown.
    broken_pipelines: bool,
    out: ir::Program,
    /// Recorded for editors when set.
    trace: Option<Box<Trace>>,
}

impl<'a> Checker<'a> {
    fn error(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn collect(&mut self, files: &[&'a ast::File]) {
        for f in files {
            for b in &f.broken {
                if b.keyword == "pipeline" {
                    self.broken_pipelines = true;
                }
                if let Some(n) = &b.name {
                    self.broken.insert(n.clone());
                    if let Some(k) = DeclKind::from_keyword(&b.keyword) {
                        // Known name, unknown content: its uses stay silent.
                        self.globals.entry(n.clone()).or_insert(Global { kind: k, index: usize::MAX, span: b.span });
                    }
                }
            }
        }
        for f in files {
            for item in &f.items {
                let (kind, name, index) = match item {
                    ast::Item::Schema(d) => {
                        self.decls.schemas.push(d);
                        (DeclKind::Schema, &d.name, self.decls.schemas.len() - 1)
                    }
                    ast::Item::Topic(d) => {
                        self.decls.topics.push(d);
                        (DeclKind::Topic, &d.name, self.decls.topics.len() - 1)
                    }
                    ast::Item::Source(d) => {
                        self.decls.sources.push(d);
                        (DeclKind::Source, &d.name, self.decls.sources.len() - 1)
                    }
                    ast::Item::Sink(d) => {
                        self.decls.sinks.push(d);
                        (DeclKind::Sink, &d.name, self.decls.sinks.len() - 1)
                    }
                    ast::Item::Pipeline(d) => {
                        self.decls.pipelines.push(d);
                        (DeclKind::Pipeline, &d.name, self.decls.pipelines.len() - 1)
                    }
                    ast::Item::Const(d) => {
                        self.decls.consts.push(d);
                        (DeclKind::Const, &d.name, self.decls.consts.len() - 1)
                    }
                    ast::Item::Fn(d) => {
                        self.decls.fns.push(d);
                        (DeclKind::Fn, &d.name, self.decls.fns.len() - 1)
                    }
                    ast::Item::Config(d) => {
                        self.decls.configs.push(d);
                        continue;
                    }
                    ast::Item::Import(_) => continue,
                };
                self.declare(kind, name, index);
            }
        }
    }

    fn declare(&mut self, kind: DeclKind, name: &ast::Ident, index: usize) {
        if kind == DeclKind::Fn
            && (flow_stdlib::scalar(&name.name).is_some() || flow_stdlib::aggregate(&name.name).is_some())
        {
            self.error(
                Diagnostic::error("E0105", name.span, format!("`{}` is already a built-in function", name.name))
                    .label("this fn would hide the built-in")
                    .help("give the fn another name"),
            );
            self.broken.insert(name.name.clone());
            return;
        }
        if matches!(name.name.as_str(), "window_start" | "window_end") {
            self.error(
                Diagnostic::error("E0105", name.span, format!("`{}` is a reserved name", name.name))
                    .label("reserved for the bounds of a window")
                    .help("choose another name"),
            );
            return;
        }
        if let Some(prev) = self.globals.get(&name.name) {
            if prev.index == usize::MAX {
                return; // a broken declaration already owns the name; its error suffices
            }
            let d = Diagnostic::error("E0105", name.span, format!("`{}` is declared twice", name.name))
                .label(format!("second declaration, as a {}", kind.noun()))
                .with_secondary(prev.span, format!("first declared here, as a {}", prev.kind.noun()))
                .help("names of schemas, topics, sources, sinks, pipelines, consts and fns share one namespace; rename one of them");
            self.error(d);
            return;
        }
        self.globals.insert(name.name.clone(), Global { kind, index, span: name.span });
    }

    fn check_all(&mut self) {
        let names: Vec<String> = self.decls.schemas.iter().map(|s| s.name.name.clone()).collect();
        for n in names {
            self.resolve_schema_by_name(&n);
        }
        self.fn_signatures();
        let consts: Vec<&'a ast::ConstDecl> = self.decls.consts.clone();
        for c in consts {
            self.resolve_const(c);
        }
        self.fn_bodies();
        self.check_config();
        let topics = self.decls.topics.clone();
        for t in topics {
            self.check_topic(t);
        }
        let sources = self.decls.sources.clone();
        for s in sources {
            self.check_source(s);
        }
        let sinks = self.decls.sinks.clone();
        for s in sinks {
            self.check_sink(s);
        }
        // Dead-letter targets refer to topics and sinks: resolved once those exist.
        let sources = self.decls.sources.clone();
        for s in sources {
            self.check_dead_letter(s);
        }
        self.check_pipelines();
        self.finish_inferred_sinks();
    }

    /// Looks a name up for use as `expected` (e.g. "a topic or a sink"), reporting
    /// unknown names with a did-you-mean over the names of acceptable kinds.
    fn lookup(&mut self, name: &ast::Ident, kinds: &[DeclKind], expected: &str) -> Option<Global> {
        let found = self.globals.get(&name.name).copied();
        match found {
            Some(g) if g.index == usize::MAX => None,
            Some(g) if kinds.contains(&g.kind) => {
                self.used.insert(name.name.clone());
                Some(g)
            }
            Some(g) => {
                self.used.insert(name.name.clone());
                let candidates: Vec<String> = self.names_of(kinds);
                let help = did_you_mean(&name.name, candidates.iter().map(String::as_str))
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_else(|| kind_help(g.kind, expected));
                let d = Diagnostic::error(
                    "E0106",
                    name.span,
                    format!("`{}` is a {}, but {expected} is expected here", name.name, g.kind.noun()),
                )
                .label(format!("expected {expected}"))
                .with_secondary(g.span, format!("`{}` is declared here as a {}", name.name, g.kind.noun()))
                .help(help);
                self.error(d);
                None
            }
            None => {
                if self.broken.contains(&name.name) {
                    return None;
                }
                let candidates: Vec<String> = self.names_of(kinds);
                let mut d = Diagnostic::error("E0101", name.span, format!("unknown name `{}`", name.name))
                    .label(format!("no {expected} has this name"));
                d = match did_you_mean(&name.name, candidates.iter().map(String::as_str)) {
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None if candidates.is_empty() => d.help(format!("declare {expected} named `{}` first", name.name)),
                    None => d.help(format!("declared names of this kind: {}", list_names(&candidates))),
                };
                self.error(d);
                None
            }
        }
    }

    fn names_of(&self, kinds: &[DeclKind]) -> Vec<String> {
        let mut v: Vec<String> =
            self.globals.iter().filter(|(_, g)| kinds.contains(&g.kind)).map(|(n, _)| n.clone()).collect();
        v.sort();
        v
    }

    fn warn_unused(&mut self) {
        let mut unused: Vec<(String, Global)> = self
            .globals
            .iter()
            .filter(|(n, g)| {
                g.index != usize::MAX
                    && !self.used.contains(*n)
                    && !matches!(g.kind, DeclKind::Pipeline)
                    && !self.broken.contains(*n)
            })
            .map(|(n, g)| (n.clone(), *g))
            .collect();
        unused.sort_by_key(|(_, g)| (g.span.file, g.span.start));
        for (name, g) in unused {
            let (what, help) = match g.kind {
                DeclKind::Source => {
                    ("is never read", "read it in a pipeline (`pipeline p = from NAME -> ...`) or remove it")
                }
                DeclKind::Sink => ("is never written", "send a pipeline to it (`... -> NAME`) or remove it"),
                DeclKind::Topic => {
                    ("is never read or written", "write to it or read from it in a pipeline, or remove it")
                }
                _ => ("is never used", "use it or remove it"),
            };
            self.diags.push(
                Diagnostic::warning("W0001", g.span, format!("{} `{name}` {what}", g.kind.noun()))
                    .label("declared here")
                    .help(help),
            );
        }
    }
}

fn kind_help(found: DeclKind, expected: &str) -> String {
    match found {
        DeclKind::Sink => "sinks are write-only: read from a topic or source instead".into(),
        DeclKind::Source => "sources are read-only: write to a topic or sink instead".into(),
        DeclKind::Schema => format!("a schema is a type; name {expected} declared with it instead"),
        _ => format!("use {expected} here"),
    }
}

fn list_names(names: &[String]) -> String {
    let shown: Vec<String> = names.iter().take(8).map(|n| format!("`{n}`")).collect();
    let more = if names.len() > 8 { format!(" and {} more", names.len() - 8) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}
