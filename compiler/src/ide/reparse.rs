//! Re-parsing only what changed: an editor's file is parsed declaration by
//! declaration, and the declarations whose text did not change since the last parse
//! are taken from a cache instead of being parsed again.
//!
//! The result is [`syntax::parse`]'s (a test compares them: the same AST, the same
//! diagnostics, possibly listed in another order, which the driver sorts by
//! position anyway): the parser itself
//! parses each declaration alone. The text is cut only where the parser certainly
//! starts a declaration (a declaration keyword with its shape at column 0, outside
//! comments and strings), and each piece is parsed with the header of the next
//! declaration appended, because a syntax error at a piece's end names the next
//! declaration's first token. What the appended header yields is dropped. A piece
//! with an unterminated block comment (which runs into the following pieces) makes
//! the whole file parse at once.

use super::item_span;
use crate::diag::Diagnostic;
use crate::source::{FileId, Span};
use crate::syntax::{self, ast::*};
use std::collections::HashMap;
use std::sync::Arc;

/// What parsing one piece gave, with spans relative to the piece's start.
struct Piece {
    file: File,
    diags: Vec<Diagnostic>,
}

/// Parse results of the pieces of one file, by the text parsed.
#[derive(Default)]
pub struct ParseCache {
    pieces: HashMap<String, Arc<Piece>>,
    /// Pieces parsed (cache misses) by the last [`ParseCache::parse`], for tests.
    pub last_misses: usize,
}

impl std::fmt::Debug for ParseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParseCache({} pieces)", self.pieces.len())
    }
}

impl ParseCache {
    pub fn new() -> ParseCache {
        ParseCache::default()
    }

    /// Parses `text` as [`syntax::parse`] does, reusing the pieces parsed before.
    pub fn parse(&mut self, file: FileId, text: &str) -> (File, Vec<Diagnostic>) {
        let cuts = cuts(text);
        let mut next = HashMap::with_capacity(cuts.len());
        let mut out = File::default();
        let mut diags = Vec::new();
        self.last_misses = 0;
        for (k, &(start, _)) in cuts.iter().enumerate() {
            let end = cuts.get(k + 1).map_or(text.len(), |c| c.0);
            // The next declaration's header, up to the character that gives its shape.
            let lookahead_end = cuts.get(k + 1).map_or(end, |c| c.1);
            let key = &text[start..lookahead_end];
            let piece = match self.pieces.get(key) {
                Some(p) => p.clone(),
                None => {
                    self.last_misses += 1;
                    let (mut f, mut d) = syntax::parse(file, key);
                    if d.iter().any(|x| x.code == "E0007") {
                        // An unterminated comment runs on past this piece.
                        self.pieces.clear();
                        return syntax::parse(file, text);
                    }
                    let len = (end - start) as u32;
                    f.items.retain(|i| item_span(i).start < len);
                    f.broken.retain(|b| b.span.start < len);
                    // An error at the piece's very end names the next declaration: keep
                    // it; the header's own errors lie beyond.
                    d.retain(|x| x.primary.span.start <= len);
                    Arc::new(Piece { file: f, diags: d })
                }
            };
            let by = start as u32;
            for item in &piece.file.items {
                let mut item = item.clone();
                Shift { by, file }.item(&mut item);
                out.items.push(item);
            }
            for b in &piece.file.broken {
                let mut b = b.clone();
                b.span = Shift { by, file }.span(b.span);
                out.broken.push(b);
            }
            for d in &piece.diags {
                let mut d = d.clone();
                let s = Shift { by, file };
                d.primary.span = s.span(d.primary.span);
                for l in &mut d.secondary {
                    l.span = s.span(l.span);
                }
                diags.push(d);
            }
            next.insert(key.to_string(), piece);
        }
        self.pieces = next;
        (out, diags)
    }
}

/// Where the parser certainly starts a declaration: (start, end of its header).
/// The first piece starts at 0.
fn cuts(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut out = vec![(0, 0)];
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut nest = 0usize;
                while i < bytes.len() {
                    if bytes[i..].starts_with(b"/*") {
                        nest += 1;
                        i += 2;
                    } else if bytes[i..].starts_with(b"*/") {
                        nest -= 1;
                        i += 2;
                        if nest == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'\n' {
                    match bytes[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
            }
            b if (i == 0 || bytes[i - 1] == b'\n') && (b.is_ascii_alphabetic() || b == b'_') => {
                if let Some(header_end) = header_at(bytes, i) {
                    if i > 0 {
                        out.push((i, header_end));
                    }
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// If a declaration starts at `i` (the parser's own rule), the end of its header.
fn header_at(bytes: &[u8], i: usize) -> Option<usize> {
    crate::syntax::parse::decl_header(bytes, i).map(|h| h.end)
}

/// Moves every span of an AST by `by` bytes into `file`.
#[derive(Clone, Copy)]
struct Shift {
    by: u32,
    file: FileId,
}

impl Shift {
    fn span(self, s: Span) -> Span {
        Span { file: self.file, start: s.start + self.by, end: s.end + self.by }
    }

    fn s(self, s: &mut Span) {
        *s = self.span(*s);
    }

    fn id(self, i: &mut Ident) {
        self.s(&mut i.span);
    }

    fn item(self, item: &mut Item) {
        match item {
            Item::Import(d) => {
                self.s(&mut d.path_span);
                self.s(&mut d.span);
            }
            Item::Schema(d) => {
                self.id(&mut d.name);
                for f in &mut d.fields {
                    self.id(&mut f.name);
                    self.ty(&mut f.ty);
                    self.s(&mut f.span);
                }
                self.s(&mut d.span);
            }
            Item::Topic(d) => {
                self.id(&mut d.name);
                self.id(&mut d.schema);
                self.opts(&mut d.options);
                self.s(&mut d.span);
            }
            Item::Source(d) => {
                self.id(&mut d.name);
                self.id(&mut d.schema);
                self.connector(&mut d.connector);
                if let Some(et) = &mut d.event_time {
                    self.id(&mut et.field);
                    if let Some(w) = &mut et.watermark {
                        self.expr(w);
                    }
                    self.s(&mut et.span);
                }
                if let Some(e) = &mut d.idle_timeout {
                    self.expr(e);
                }
                if let Some(i) = &mut d.dead_letter {
                    self.id(i);
                }
                self.s(&mut d.span);
            }
            Item::Sink(d) => {
                self.id(&mut d.name);
                if let Some(s) = &mut d.schema {
                    self.id(s);
                }
                self.connector(&mut d.connector);
                self.s(&mut d.span);
            }
            Item::Pipeline(d) => {
                self.id(&mut d.name);
                self.id(&mut d.input);
                for op in &mut d.ops {
                    self.op(&mut op.kind);
                    self.s(&mut op.span);
                }
                d.targets.iter_mut().for_each(|t| self.id(t));
                self.s(&mut d.span);
            }
            Item::Const(d) => {
                self.id(&mut d.name);
                if let Some(t) = &mut d.ty {
                    self.ty(t);
                }
                self.expr(&mut d.value);
                self.s(&mut d.span);
            }
            Item::Fn(d) => {
                self.id(&mut d.name);
                for p in &mut d.params {
                    self.id(&mut p.name);
                    self.ty(&mut p.ty);
                }
                self.ty(&mut d.ret);
                self.expr(&mut d.body);
                self.s(&mut d.span);
            }
            Item::Config(d) => {
                self.opts(&mut d.options);
                self.s(&mut d.span);
            }
        }
    }

    fn ty(self, t: &mut TypeExpr) {
        match &mut t.kind {
            TypeExprKind::Named(i) => self.id(i),
            TypeExprKind::Decimal { precision_span, scale_span, .. } => {
                self.s(precision_span);
                self.s(scale_span);
            }
            TypeExprKind::List(inner) => self.ty(inner),
        }
        self.s(&mut t.span);
    }

    fn opts(self, opts: &mut [Opt]) {
        for o in opts {
            self.id(&mut o.name);
            self.expr(&mut o.value);
            self.s(&mut o.span);
        }
    }

    fn connector(self, c: &mut Connector) {
        self.id(&mut c.kind);
        for a in &mut c.args {
            if let Some(n) = &mut a.name {
                self.id(n);
            }
            self.expr(&mut a.value);
            self.s(&mut a.span);
        }
        self.s(&mut c.span);
    }

    fn named(self, n: &mut NamedExpr) {
        self.id(&mut n.name);
        self.expr(&mut n.value);
    }

    fn op(self, k: &mut OpKind) {
        match k {
            OpKind::Where(e) => self.expr(e),
            OpKind::Select(items) => {
                for it in items {
                    match it {
                        SelectItem::All(s) => self.s(s),
                        SelectItem::Named(n) => self.named(n),
                        SelectItem::Expr(e) => self.expr(e),
                    }
                }
            }
            OpKind::KeyBy(es) => es.iter_mut().for_each(|e| self.expr(e)),
            OpKind::Window { spec, lateness, late, emit_every } => {
                self.connector(spec);
                if let Some(e) = lateness {
                    self.expr(e);
                }
                if let Some(i) = late {
                    self.id(i);
                }
                if let Some(e) = emit_every {
                    self.expr(e);
                }
            }
            OpKind::Aggregate { items, ttl } => {
                items.iter_mut().for_each(|n| self.named(n));
                if let Some(e) = ttl {
                    self.expr(e);
                }
            }
            OpKind::Dedup { by, within } => {
                if let Some(e) = by {
                    self.expr(e);
                }
                self.expr(within);
            }
            OpKind::Top { n_span, by, .. } => {
                self.s(n_span);
                self.expr(by);
            }
            OpKind::Join { other, alias, on, bound, .. } => {
                self.id(other);
                if let Some(a) = alias {
                    self.id(a);
                }
                self.expr(on);
                match bound {
                    JoinBound::None => {}
                    JoinBound::Within(e) => self.expr(e),
                    JoinBound::Window(c) => self.connector(c),
                }
            }
            OpKind::Lookup { table, alias, on, .. } => {
                self.id(table);
                if let Some(a) = alias {
                    self.id(a);
                }
                self.expr(on);
            }
            OpKind::Union(ids) => ids.iter_mut().for_each(|i| self.id(i)),
            OpKind::Route(arms) => {
                for a in arms {
                    if let Some(c) = &mut a.cond {
                        self.expr(c);
                    }
                    self.id(&mut a.target);
                    self.s(&mut a.span);
                }
            }
            OpKind::Unnest { field, alias } => {
                self.expr(field);
                if let Some(a) = alias {
                    self.id(a);
                }
            }
            OpKind::Pattern { steps, within, measures } => {
                for st in steps {
                    self.id(&mut st.name);
                    self.expr(&mut st.cond);
                    if let Some(q) = &mut st.quantifier {
                        self.s(&mut q.span);
                    }
                    self.s(&mut st.span);
                }
                self.expr(within);
                measures.iter_mut().for_each(|n| self.named(n));
            }
        }
    }

    fn expr(self, e: &mut Expr) {
        match &mut e.kind {
            ExprKind::Name(i) => self.id(i),
            ExprKind::Field(b, f) | ExprKind::SafeField(b, f) => {
                self.expr(b);
                self.id(f);
            }
            ExprKind::Index(a, b) | ExprKind::Binary(_, a, b) => {
                self.expr(a);
                self.expr(b);
            }
            ExprKind::Call(name, args) => {
                self.id(name);
                args.iter_mut().for_each(|a| self.expr(a));
            }
            ExprKind::Unary(_, a) => self.expr(a),
            ExprKind::If(a, b, c) => {
                self.expr(a);
                self.expr(b);
                self.expr(c);
            }
            ExprKind::Case { subject, arms, otherwise } => {
                if let Some(s) = subject {
                    self.expr(s);
                }
                for (a, b) in arms {
                    self.expr(a);
                    self.expr(b);
                }
                if let Some(o) = otherwise {
                    self.expr(o);
                }
            }
            ExprKind::Cast(a, t) => {
                self.expr(a);
                self.ty(t);
            }
            ExprKind::In { expr, list, .. } => {
                self.expr(expr);
                list.iter_mut().for_each(|x| self.expr(x));
            }
            ExprKind::IsNull { expr, .. } => self.expr(expr),
            ExprKind::List(xs) => xs.iter_mut().for_each(|x| self.expr(x)),
            ExprKind::Record(items) => items.iter_mut().for_each(|n| self.named(n)),
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
        self.s(&mut e.span);
    }
}
