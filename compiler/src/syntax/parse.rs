//! Parsing: source text -> AST, never failing.
//!
//! [`parse`] always returns a [`File`] plus every syntax diagnostic. It first splits
//! the text into declarations (at a declaration keyword that starts a line at bracket
//! depth 0, or at column 0 whatever the depth) and parses each one on its own with
//! pest, so one syntax error costs one declaration, not the rest of the file. The split
//! also finds the lexical errors pest cannot name well: unterminated strings and
//! comments, and nesting deeper than [`NESTING_DEPTH_MAX`].

use super::ast::*;
use crate::diag::Diagnostic;
use crate::source::{FileId, Span};
use flow_grammar::{FlowParser, Rule};
use pest::iterators::Pair;
use pest::Parser;

/// The deepest nesting of brackets the front end accepts.
pub const NESTING_DEPTH_MAX: usize = 128;

/// The deepest expression tree (nesting plus chains of operators) the front end
/// builds: it bounds the recursion of every later stage.
pub const EXPR_DEPTH_MAX: usize = 1000;

/// Words that start a declaration.
pub const DECL_KEYWORDS: &[&str] =
    &["schema", "topic", "source", "sink", "pipeline", "const", "fn", "import", "config"];

/// Parses a whole file. Never fails: syntax errors come back as diagnostics and the
/// declarations they hit are listed in [`File::broken`].
pub fn parse(file: FileId, text: &str) -> (File, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let chunks = split(file, text, &mut diags);
    let mut out = File::default();
    for chunk in chunks {
        if !chunk.has_code {
            continue;
        }
        let src = &text[chunk.start..chunk.end];
        if chunk.too_deep {
            out.broken.push(BrokenDecl {
                keyword: chunk.keyword.clone().unwrap_or_default(),
                name: chunk.name.clone(),
                span: Span::new(file, chunk.start, chunk.end),
            });
            continue;
        }
        match FlowParser::parse(Rule::item_only, src) {
            Ok(mut pairs) => {
                let Some(item_only) = pairs.next() else {
                    continue;
                };
                let mut b = Builder { file, offset: chunk.start, diags: &mut diags, depth: 0, deep_reported: false };
                for p in item_only.into_inner() {
                    if p.as_rule() != Rule::EOI {
                        if let Some(item) = b.item(p) {
                            out.items.push(item);
                        }
                    }
                }
            }
            Err(e) => {
                // Parse again with pest's error detail on, to learn the expected tokens.
                pest::set_error_detail(true);
                let e = FlowParser::parse(Rule::item_only, src).err().unwrap_or(e);
                if !chunk.lexical_error {
                    diags.push(syntax_error(file, text, chunk.start, chunk.end, src, e));
                }
                out.broken.push(BrokenDecl {
                    keyword: chunk.keyword.clone().unwrap_or_default(),
                    name: chunk.name.clone(),
                    span: Span::new(file, chunk.start, chunk.end),
                });
            }
        }
    }
    (out, diags)
}

struct Chunk {
    start: usize,
    end: usize,
    keyword: Option<String>,
    name: Option<String>,
    has_code: bool,
    lexical_error: bool,
    too_deep: bool,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}
fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// A declaration's header as the splitter recognises it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclHeader {
    pub keyword: &'static str,
    pub name: Option<String>,
    /// Just past the character that gives the declaration its shape (`{`, `:`, `=`, `(`, `"`).
    pub end: usize,
}

/// If a declaration starts at byte `i`, its header. The one rule for where declarations
/// start: the splitter here and the editor's incremental re-parse both use it.
pub fn decl_header(bytes: &[u8], i: usize) -> Option<DeclHeader> {
    let kw = DECL_KEYWORDS.iter().find(|k| bytes[i..].starts_with(k.as_bytes()))?;
    let mut j = i + kw.len();
    if j < bytes.len() && is_ident_char(bytes[j]) {
        return None;
    }
    let skip_ws = |mut j: usize| {
        while j < bytes.len() && matches!(bytes[j], b' ' | b'\t' | b'\r' | b'\n') {
            j += 1;
        }
        j
    };
    j = skip_ws(j);
    let next = bytes.get(j).copied();
    match *kw {
        "import" => return (next == Some(b'"')).then_some(DeclHeader { keyword: kw, name: None, end: j + 1 }),
        "config" => return (next == Some(b'{')).then_some(DeclHeader { keyword: kw, name: None, end: j + 1 }),
        _ => {}
    }
    if !next.is_some_and(is_ident_start) {
        return None;
    }
    let name_start = j;
    while j < bytes.len() && is_ident_char(bytes[j]) {
        j += 1;
    }
    let name = String::from_utf8_lossy(&bytes[name_start..j]).into_owned();
    j = skip_ws(j);
    let next = bytes.get(j).copied();
    let shaped = match *kw {
        "schema" => next == Some(b'{'),
        "topic" | "source" => next == Some(b':'),
        "sink" | "const" => matches!(next, Some(b':' | b'=')),
        "pipeline" => next == Some(b'='),
        "fn" => next == Some(b'('),
        _ => false,
    };
    shaped.then_some(DeclHeader { keyword: kw, name: Some(name), end: j + 1 })
}

fn split(file: FileId, text: &str, diags: &mut Vec<Diagnostic>) -> Vec<Chunk> {
    let bytes = text.as_bytes();
    let mut chunks = vec![Chunk {
        start: 0,
        end: 0,
        keyword: None,
        name: None,
        has_code: false,
        lexical_error: false,
        too_deep: false,
    }];
    let mut depth = 0usize;
    let mut deep_reported = false;
    let mut line_first = true;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\n' => {
                line_first = true;
                i += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' => {
                i += 1;
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let start = i;
                let mut nest = 0usize;
                let mut closed = false;
                while i < bytes.len() {
                    if bytes[i..].starts_with(b"/*") {
                        nest += 1;
                        i += 2;
                    } else if bytes[i..].starts_with(b"*/") {
                        nest -= 1;
                        i += 2;
                        if nest == 0 {
                            closed = true;
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                if !closed {
                    let c = chunks.last_mut().expect("there is always a chunk");
                    c.lexical_error = true;
                    c.has_code = true;
                    diags.push(
                        Diagnostic::error("E0007", Span::new(file, start, start + 2), "unterminated block comment")
                            .label("this comment is never closed")
                            .help("close the comment with `*/`"),
                    );
                }
                continue;
            }
            _ => {}
        }
        let col0 = i == 0 || bytes[i - 1] == b'\n';
        if (col0 || (line_first && depth == 0)) && is_ident_start(b) {
            if let Some(DeclHeader { keyword: kw, name, .. }) = decl_header(bytes, i) {
                chunks.last_mut().expect("there is always a chunk").end = i;
                chunks.push(Chunk {
                    start: i,
                    end: i,
                    keyword: Some(kw.to_string()),
                    name,
                    has_code: true,
                    lexical_error: false,
                    too_deep: false,
                });
                depth = 0;
                deep_reported = false;
            }
        }
        line_first = false;
        let chunk = chunks.last_mut().expect("there is always a chunk");
        chunk.has_code = true;
        match b {
            b'"' => {
                let start = i;
                i += 1;
                let mut closed = false;
                while i < bytes.len() && bytes[i] != b'\n' {
                    match bytes[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            closed = true;
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                if !closed {
                    chunk.lexical_error = true;
                    let end = i.min(bytes.len());
                    diags.push(
                        Diagnostic::error("E0002", Span::new(file, start, end), "unterminated string literal")
                            .label("this string has no closing quote")
                            .help("close the string with `\"` on the same line; write a line break as `\\n`"),
                    );
                }
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > NESTING_DEPTH_MAX && !deep_reported {
                    deep_reported = true;
                    chunk.lexical_error = true;
                    chunk.too_deep = true;
                    diags.push(
                        Diagnostic::error("E0011", Span::new(file, i, i + 1), "nesting is too deep")
                            .label(format!("more than {NESTING_DEPTH_MAX} levels of brackets"))
                            .help("split the expression into a `fn` or several steps"),
                    );
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        // Advance over one whole character (identifiers in one go).
        if is_ident_char(b) {
            while i < bytes.len() && is_ident_char(bytes[i]) {
                i += 1;
            }
        } else {
            i += text[i..].chars().next().map_or(1, char::len_utf8);
        }
    }
    chunks.last_mut().expect("there is always a chunk").end = bytes.len();
    chunks
}

// ------------------------------------------------------------------ syntax errors

fn rule_name(r: Rule) -> Option<&'static str> {
    Some(match r {
        Rule::ident => "a name",
        Rule::field_name | Rule::name_ref => "a field name",
        Rule::string => "a string",
        Rule::int_lit => "an integer",
        Rule::expr
        | Rule::call_args
        | Rule::paren
        | Rule::if_expr
        | Rule::case_expr
        | Rule::list_lit
        | Rule::record_lit
        | Rule::decimal_lit
        | Rule::float_lit
        | Rule::duration_lit
        | Rule::size_lit
        | Rule::timestamp_lit
        | Rule::bool_lit
        | Rule::null_lit => "an expression",
        Rule::type_expr | Rule::named_type | Rule::decimal_type | Rule::list_type => "a type",
        Rule::item
        | Rule::import_decl
        | Rule::schema_decl
        | Rule::topic_decl
        | Rule::source_decl
        | Rule::sink_decl
        | Rule::pipeline_decl
        | Rule::const_decl
        | Rule::fn_decl
        | Rule::config_decl => {
            "a declaration (`schema`, `topic`, `source`, `sink`, `pipeline`, `const`, `fn`, `import`, `config`)"
        }
        Rule::op
        | Rule::where_op
        | Rule::select_op
        | Rule::key_by_op
        | Rule::window_op
        | Rule::aggregate_op
        | Rule::dedup_op
        | Rule::top_op
        | Rule::join_op
        | Rule::lookup_op
        | Rule::union_op
        | Rule::route_op
        | Rule::unnest_op
        | Rule::pattern_op => "an operator",
        Rule::output => "`->`",
        Rule::cmp_op => "a comparison",
        Rule::or_op => "`or`",
        Rule::and_op => "`and`",
        Rule::not_op => "`not`",
        Rule::add_op | Rule::mul_op => "an operator",
        Rule::coalesce_op => "`??`",
        Rule::nullable_mark => "`?`",
        Rule::order => "`asc` or `desc`",
        Rule::left_kw => "`left`",
        Rule::from_kw => "`from`",
        Rule::route_else => "`else`",
        Rule::option => "an option",
        Rule::field_decl => "a field",
        Rule::select_all => "`*`",
        Rule::EOI => "end of the declaration",
        _ => return None,
    })
}

/// What the text at `pos` is, for "found ..." messages, and its extent.
fn token_at(text: &str, pos: usize) -> (String, usize) {
    let rest = &text[pos..];
    let Some(c) = rest.chars().next() else {
        return ("end of file".into(), 0);
    };
    if c.is_ascii_alphanumeric() || c == '_' {
        let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        return (format!("`{}`", &rest[..len]), len);
    }
    for two in ["->", "==", "!=", "<=", ">=", "&&", "||", "??", "?."] {
        if rest.starts_with(two) {
            return (format!("`{two}`"), 2);
        }
    }
    (format!("`{c}`"), c.len_utf8())
}

fn syntax_error(
    file: FileId,
    text: &str,
    chunk_start: usize,
    chunk_end: usize,
    src: &str,
    e: pest::error::Error<Rule>,
) -> Diagnostic {
    let mut rel = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    // The farthest position any attempt reached is where the text went wrong, unless
    // pest stopped at a reserved word used as a name.
    let original = rel;
    let (orig_token, _) = token_at(src, rel.min(src.len()));
    // Keep pest's own position on a reserved word or a known slip (`=` for `==`...).
    let slip = matches!(orig_token.as_str(), "`=`" | "`&&`" | "`||`" | "`!`" | "`'`" | "`;`");
    let reserved = slip || crate::syntax::is_keyword(orig_token.trim_matches('`'));
    if let Some(a) = e.parse_attempts() {
        if !reserved {
            rel = rel.max(a.max_position.min(src.len()));
        }
    }
    // Skip whitespace and comments up to the offending token.
    while rel < src.len() {
        let rest = &src[rel..];
        if rest.starts_with(char::is_whitespace) {
            rel += rest.chars().next().map_or(1, char::len_utf8);
        } else if rest.starts_with("//") {
            rel += rest.find('\n').unwrap_or(rest.len());
        } else {
            break;
        }
    }
    // Report at the first character that is not whitespace or a comment.
    let mut pos = chunk_start + rel;
    let at_chunk_end = pos >= chunk_end || src[rel..].trim().is_empty();
    let (found, len) = if at_chunk_end && chunk_end < text.len() {
        let (t, l) = token_at(text, chunk_end);
        pos = chunk_end;
        (format!("{t} (the next declaration)"), l)
    } else {
        token_at(text, pos)
    };

    // What was expected: rule names (valid at pest's own position only) and, with
    // error detail on, literal tokens.
    let mut expected: Vec<String> = Vec::new();
    let moved = rel > original;
    if let (false, pest::error::ErrorVariant::ParsingError { positives, .. }) = (moved, &e.variant) {
        for r in positives {
            if let Some(n) = rule_name(*r) {
                if !expected.iter().any(|x| x == n) {
                    expected.push(n.to_string());
                }
            }
        }
    }
    let mut literal = Vec::new();
    if let Some(attempts) = e.parse_attempts() {
        for t in attempts.expected_tokens() {
            let token = t.to_string();
            {
                let skip = token.trim().is_empty()
                    || token.starts_with("//")
                    || token.starts_with("/*")
                    || token == "BUILTIN_RULE"
                    || (token.len() > 2 && token.contains(".."));
                let wordy = token.chars().all(|c| c.is_ascii_alphabetic() || c == '_');
                if !skip && !wordy {
                    literal.push(format!("`{token}`"));
                }
            }
        }
    }
    literal.sort();
    literal.dedup();
    // Punctuation first: it is usually the fix.
    let mut all = literal.clone();
    for e in &expected {
        if !all.contains(e) {
            all.push(e.clone());
        }
    }
    let message = match all.len() {
        0 => format!("unexpected {found}"),
        1 => format!("expected {}, found {found}", all[0]),
        2..=6 => {
            let (last, first) = all.split_last().expect("non-empty");
            format!("expected {} or {last}, found {found}", first.join(", "))
        }
        _ => format!("unexpected {found}"),
    };

    let found_text = &text[pos..pos + len];
    let help = if at_chunk_end && literal.iter().any(|l| l == "`}`") {
        Some("a `{` of this declaration is never closed: add `}`".to_string())
    } else if at_chunk_end && literal.iter().any(|l| l == "`)`") {
        Some("a `(` of this declaration is never closed: add `)`".to_string())
    } else {
        syntax_help(found_text, &literal, &expected, text, pos)
    };
    let label = if found.starts_with("end of file") {
        "the declaration ends here".to_string()
    } else {
        "unexpected here".to_string()
    };
    let span = Span::new(file, pos, pos + len);
    Diagnostic::error("E0001", span, message).label(label).help_opt(help)
}

fn syntax_help(found: &str, literal: &[String], expected: &[String], text: &str, pos: usize) -> Option<String> {
    let has = |t: &str| literal.iter().any(|l| l == t);
    let first_word = found.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let op_kw = [
        "where",
        "select",
        "key_by",
        "window",
        "aggregate",
        "dedup",
        "top",
        "join",
        "lookup",
        "union",
        "route",
        "unnest",
        "pattern",
    ];
    match found {
        "=" if has("`==`") || expected.iter().any(|e| e == "a comparison") || text[pos..].starts_with("= ") => {
            return Some("use `==` to compare values; `=` only appears in declarations".into())
        }
        "&&" => return Some("write `and` instead of `&&`".into()),
        "||" => return Some("write `or` instead of `||`".into()),
        "!" => return Some("write `not` for negation, `!=` for inequality".into()),
        "'" => return Some("strings are written in double quotes: \"...\"".into()),
        ";" => return Some("declarations and fields need no `;`; remove it".into()),
        _ => {}
    }
    if op_kw.contains(&found) && (has("`|`") || has("`->`")) {
        return Some(format!("operators are chained with `|`: write `| {found} ...`"));
    }
    if first_word && has("`,`") {
        return Some("items in a list are separated by `,`: add one before this".into());
    }
    if first_word && expected.iter().any(|e| e == "a name" || e == "a field name") && crate::syntax::is_keyword(found) {
        return Some(format!("`{found}` is a reserved word and cannot name a declaration; choose another name"));
    }
    if has("`}`") && found.starts_with("end of file") {
        return Some("a `{` is never closed: add `}`".into());
    }
    if has("`)`") && !has("`}`") {
        return Some("a `(` is not closed: add `)`".into());
    }
    None
}

// ------------------------------------------------------------------ AST building

const PREC_OR: u8 = 1;
const PREC_AND: u8 = 2;
const PREC_NOT: u8 = 3;
const PREC_CMP: u8 = 4;
const PREC_COALESCE: u8 = 5;
const PREC_ADD: u8 = 6;
const PREC_MUL: u8 = 7;
const PREC_NEG: u8 = 8;

fn is_operand(r: Rule) -> bool {
    !matches!(
        r,
        Rule::not_op
            | Rule::neg_op
            | Rule::or_op
            | Rule::and_op
            | Rule::cmp_op
            | Rule::coalesce_op
            | Rule::add_op
            | Rule::mul_op
            | Rule::field_access
            | Rule::safe_access
            | Rule::index_access
            | Rule::cast_suffix
            | Rule::in_suffix
            | Rule::is_null_suffix
    )
}

/// The precedence and operator of an infix token.
fn infix(p: &P<'_>) -> Option<(u8, BinOp)> {
    Some(match (p.as_rule(), p.as_str()) {
        (Rule::or_op, _) => (PREC_OR, BinOp::Or),
        (Rule::and_op, _) => (PREC_AND, BinOp::And),
        (Rule::cmp_op, "==") => (PREC_CMP, BinOp::Eq),
        (Rule::cmp_op, "!=") => (PREC_CMP, BinOp::Ne),
        (Rule::cmp_op, "<=") => (PREC_CMP, BinOp::Le),
        (Rule::cmp_op, ">=") => (PREC_CMP, BinOp::Ge),
        (Rule::cmp_op, "<") => (PREC_CMP, BinOp::Lt),
        (Rule::cmp_op, _) => (PREC_CMP, BinOp::Gt),
        (Rule::coalesce_op, _) => (PREC_COALESCE, BinOp::Coalesce),
        (Rule::add_op, "+") => (PREC_ADD, BinOp::Add),
        (Rule::add_op, _) => (PREC_ADD, BinOp::Sub),
        (Rule::mul_op, "*") => (PREC_MUL, BinOp::Mul),
        (Rule::mul_op, "/") => (PREC_MUL, BinOp::Div),
        (Rule::mul_op, _) => (PREC_MUL, BinOp::Rem),
        _ => return None,
    })
}

struct Builder<'d> {
    file: FileId,
    offset: usize,
    diags: &'d mut Vec<Diagnostic>,
    depth: usize,
    deep_reported: bool,
}

type P<'i> = Pair<'i, Rule>;

impl Builder<'_> {
    fn span(&self, p: &P<'_>) -> Span {
        let s = p.as_span();
        Span::new(self.file, self.offset + s.start(), self.offset + s.end())
    }

    fn ident(&mut self, p: P<'_>) -> Ident {
        let id = Ident { name: p.as_str().to_string(), span: self.span(&p) };
        // Declaration names, aliases and targets cannot be reserved words (field names can).
        if p.as_rule() == Rule::ident && crate::syntax::is_keyword(&id.name) {
            self.diags.push(
                Diagnostic::error("E0001", id.span, format!("expected a name, found `{}`", id.name))
                    .label("unexpected here")
                    .help(format!(
                        "`{}` is a reserved word and cannot name a declaration; choose another name",
                        id.name
                    )),
            );
        }
        id
    }

    fn item(&mut self, p: P<'_>) -> Option<Item> {
        let span = self.span(&p);
        Some(match p.as_rule() {
            Rule::import_decl => {
                let s = p.into_inner().next()?;
                let path_span = self.span(&s);
                let path = self.string(&s);
                Item::Import(Import { path, path_span, span })
            }
            Rule::schema_decl => {
                let mut it = p.into_inner();
                let name = self.ident(it.next()?);
                let fields = it.filter_map(|f| self.field_decl(f)).collect();
                Item::Schema(SchemaDecl { name, fields, span })
            }
            Rule::topic_decl => {
                let mut it = p.into_inner();
                let name = self.ident(it.next()?);
                let schema = self.ident(it.next()?);
                let options = it.next().map(|o| self.options(o)).unwrap_or_default();
                Item::Topic(TopicDecl { name, schema, options, span })
            }
            Rule::source_decl => {
                let mut it = p.into_inner();
                let name = self.ident(it.next()?);
                let schema = self.ident(it.next()?);
                let connector = self.connector(it.next()?);
                let mut d = SourceDecl {
                    name,
                    schema,
                    connector,
                    event_time: None,
                    idle_timeout: None,
                    dead_letter: None,
                    span,
                };
                for c in it {
                    match c.as_rule() {
                        Rule::event_time_clause => {
                            let cspan = self.span(&c);
                            let mut ci = c.into_inner();
                            let field = self.ident(ci.next()?);
                            let watermark = ci.next().map(|e| self.expr(e));
                            d.event_time = Some(EventTime { field, watermark, span: cspan });
                        }
                        Rule::idle_clause => d.idle_timeout = c.into_inner().next().map(|e| self.expr(e)),
                        Rule::dead_letter_clause => d.dead_letter = c.into_inner().next().map(|i| self.ident(i)),
                        _ => {}
                    }
                }
                Item::Source(d)
            }
            Rule::sink_decl => {
                let mut name = None;
                let mut schema = None;
                let mut connector = None;
                for c in p.into_inner() {
                    match c.as_rule() {
                        Rule::ident if name.is_none() => name = Some(self.ident(c)),
                        Rule::ident => schema = Some(self.ident(c)),
                        Rule::connector => connector = Some(self.connector(c)),
                        _ => {}
                    }
                }
                Item::Sink(SinkDecl { name: name?, schema, connector: connector?, span })
            }
            Rule::const_decl => {
                let mut name = None;
                let mut ty = None;
                let mut value = None;
                for c in p.into_inner() {
                    match c.as_rule() {
                        Rule::ident => name = Some(self.ident(c)),
                        Rule::type_expr => ty = Some(self.type_expr(c)),
                        Rule::expr => value = Some(self.expr(c)),
                        _ => {}
                    }
                }
                Item::Const(ConstDecl { name: name?, ty, value: value?, span })
            }
            Rule::fn_decl => {
                let mut name = None;
                let mut params = Vec::new();
                let mut ret = None;
                let mut body = None;
                for c in p.into_inner() {
                    match c.as_rule() {
                        Rule::ident => name = Some(self.ident(c)),
                        Rule::param => {
                            let mut pi = c.into_inner();
                            let pname = self.ident(pi.next()?);
                            let pty = self.type_expr(pi.next()?);
                            params.push(Param { name: pname, ty: pty });
                        }
                        Rule::type_expr => ret = Some(self.type_expr(c)),
                        Rule::expr => body = Some(self.expr(c)),
                        _ => {}
                    }
                }
                Item::Fn(FnDecl { name: name?, params, ret: ret?, body: body?, span })
            }
            Rule::config_decl => {
                let options = p.into_inner().next().map(|o| self.options(o)).unwrap_or_default();
                Item::Config(ConfigDecl { options, span })
            }
            Rule::pipeline_decl => {
                let mut it = p.into_inner().filter(|c| c.as_rule() != Rule::from_kw);
                let name = self.ident(it.next()?);
                let input = self.ident(it.next()?);
                let mut ops = Vec::new();
                let mut targets = Vec::new();
                for c in it {
                    if c.as_rule() == Rule::output {
                        if let Some(list) = c.into_inner().next() {
                            targets = list.into_inner().map(|i| self.ident(i)).collect();
                        }
                    } else if let Some(op) = self.op(c) {
                        ops.push(op);
                    }
                }
                Item::Pipeline(PipelineDecl { name, input, ops, targets, span })
            }
            _ => return None,
        })
    }

    fn field_decl(&mut self, p: P<'_>) -> Option<FieldDecl> {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let name = self.ident(it.next()?);
        let ty = self.type_expr(it.next()?);
        Some(FieldDecl { name, ty, span })
    }

    fn type_expr(&mut self, p: P<'_>) -> TypeExpr {
        let span = self.span(&p);
        let mut nullable = false;
        let mut kind = TypeExprKind::Named(Ident { name: String::new(), span });
        for c in p.into_inner() {
            match c.as_rule() {
                Rule::nullable_mark => nullable = true,
                Rule::named_type => {
                    if let Some(i) = c.into_inner().next() {
                        kind = TypeExprKind::Named(self.ident(i));
                    }
                }
                Rule::list_type => {
                    if let Some(inner) = c.into_inner().next() {
                        kind = TypeExprKind::List(Box::new(self.type_expr(inner)));
                    }
                }
                Rule::decimal_type => {
                    let mut it = c.into_inner();
                    let (Some(pp), Some(sp)) = (it.next(), it.next()) else {
                        continue;
                    };
                    let (precision_span, scale_span) = (self.span(&pp), self.span(&sp));
                    let precision = pp.as_str().replace('_', "").parse().unwrap_or(u64::MAX);
                    let scale = sp.as_str().replace('_', "").parse().unwrap_or(u64::MAX);
                    kind = TypeExprKind::Decimal { precision, scale, precision_span, scale_span };
                }
                _ => {}
            }
        }
        TypeExpr { kind, nullable, span }
    }

    fn options(&mut self, p: P<'_>) -> Vec<Opt> {
        p.into_inner()
            .filter_map(|o| {
                let span = self.span(&o);
                let mut it = o.into_inner();
                let name = self.ident(it.next()?);
                let value = self.expr(it.next()?);
                Some(Opt { name, value, span })
            })
            .collect()
    }

    fn connector(&mut self, p: P<'_>) -> Connector {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let kind = it.next().map(|k| self.ident(k)).unwrap_or(Ident { name: String::new(), span });
        let args = it.map(|a| self.arg(a)).collect();
        Connector { kind, args, span }
    }

    fn arg(&mut self, p: P<'_>) -> Arg {
        let span = self.span(&p);
        let inner = p.into_inner().next();
        match inner {
            Some(n) if n.as_rule() == Rule::named_arg => {
                let mut it = n.into_inner();
                let name = it.next().map(|i| self.ident(i));
                let value = it.next().map(|e| self.expr(e)).unwrap_or(Expr { kind: ExprKind::Error, span });
                Arg { name, value, span }
            }
            Some(e) => Arg { name: None, value: self.expr(e), span },
            None => Arg { name: None, value: Expr { kind: ExprKind::Error, span }, span },
        }
    }

    fn named(&mut self, p: P<'_>) -> Option<NamedExpr> {
        let mut it = p.into_inner();
        let name = self.ident(it.next()?);
        let value = self.expr(it.next()?);
        Some(NamedExpr { name, value })
    }

    fn op(&mut self, p: P<'_>) -> Option<Op> {
        let span = self.span(&p);
        let kind = match p.as_rule() {
            Rule::where_op => OpKind::Where(self.expr(p.into_inner().next()?)),
            Rule::select_op => {
                let items = p
                    .into_inner()
                    .filter_map(|c| match c.as_rule() {
                        Rule::select_all => Some(SelectItem::All(self.span(&c))),
                        Rule::select_named => self.named(c).map(SelectItem::Named),
                        Rule::select_field => c.into_inner().next().map(|e| SelectItem::Expr(self.expr(e))),
                        _ => None,
                    })
                    .collect();
                OpKind::Select(items)
            }
            Rule::key_by_op => OpKind::KeyBy(p.into_inner().map(|e| self.expr(e)).collect()),
            Rule::window_op => {
                let mut it = p.into_inner();
                let spec = self.connector(it.next()?);
                let (mut lateness, mut late, mut emit_every) = (None, None, None);
                for c in it {
                    match c.as_rule() {
                        Rule::lateness_clause => lateness = c.into_inner().next().map(|e| self.expr(e)),
                        Rule::late_clause => late = c.into_inner().next().map(|i| self.ident(i)),
                        Rule::emit_clause => emit_every = c.into_inner().next().map(|e| self.expr(e)),
                        _ => {}
                    }
                }
                OpKind::Window { spec, lateness, late, emit_every }
            }
            Rule::aggregate_op => {
                let mut items = Vec::new();
                let mut ttl = None;
                for c in p.into_inner() {
                    match c.as_rule() {
                        Rule::agg_item => items.extend(self.named(c)),
                        Rule::ttl_clause => ttl = c.into_inner().next().map(|e| self.expr(e)),
                        _ => {}
                    }
                }
                OpKind::Aggregate { items, ttl }
            }
            Rule::dedup_op => {
                let mut by = None;
                let mut within = None;
                for c in p.into_inner() {
                    match c.as_rule() {
                        Rule::expr => by = Some(self.expr(c)),
                        Rule::within_clause => within = c.into_inner().next().map(|e| self.expr(e)),
                        _ => {}
                    }
                }
                OpKind::Dedup { by, within: within? }
            }
            Rule::top_op => {
                let mut it = p.into_inner();
                let np = it.next()?;
                let n_span = self.span(&np);
                let n = self.int_value(&np).map_or(u64::MAX, |v| v as u64);
                let by = self.expr(it.next()?);
                let descending = it.next().is_none_or(|o| o.as_str() == "desc");
                OpKind::Top { n, n_span, by, descending }
            }
            Rule::join_op | Rule::lookup_op => {
                let is_join = p.as_rule() == Rule::join_op;
                let mut left_outer = false;
                let mut names = Vec::new();
                let mut on = None;
                let mut bound = JoinBound::None;
                for c in p.into_inner() {
                    match c.as_rule() {
                        Rule::left_kw => left_outer = true,
                        Rule::ident => names.push(self.ident(c)),
                        Rule::expr => on = Some(self.expr(c)),
                        Rule::within_clause => {
                            bound = JoinBound::Within(self.expr(c.into_inner().next()?));
                        }
                        Rule::join_window => bound = JoinBound::Window(self.connector(c.into_inner().next()?)),
                        _ => {}
                    }
                }
                let mut names = names.into_iter();
                let other = names.next()?;
                let alias = names.next();
                if is_join {
                    OpKind::Join { left_outer, other, alias, on: on?, bound }
                } else {
                    OpKind::Lookup { left_outer, table: other, alias, on: on? }
                }
            }
            Rule::union_op => OpKind::Union(p.into_inner().map(|i| self.ident(i)).collect()),
            Rule::route_op => {
                let arms = p
                    .into_inner()
                    .filter_map(|arm| {
                        let aspan = self.span(&arm);
                        let mut it = arm.into_inner();
                        let first = it.next()?;
                        let cond = if first.as_rule() == Rule::route_else { None } else { Some(self.expr(first)) };
                        let target = self.ident(it.next()?);
                        Some(RouteArm { cond, target, span: aspan })
                    })
                    .collect();
                OpKind::Route(arms)
            }
            Rule::unnest_op => {
                let mut it = p.into_inner();
                let f = it.next()?;
                let field = self.primary(f);
                let alias = it.next().map(|a| self.ident(a));
                OpKind::Unnest { field, alias }
            }
            Rule::pattern_op => {
                let mut steps = Vec::new();
                let mut within = None;
                let mut measures = Vec::new();
                for c in p.into_inner() {
                    match c.as_rule() {
                        Rule::pattern_step => {
                            let sspan = self.span(&c);
                            let mut it = c.into_inner();
                            let name = self.ident(it.next()?);
                            let cond = self.expr(it.next()?);
                            let quantifier = it.next().map(|q| self.quantifier(q));
                            steps.push(PatternStep { name, cond, quantifier, span: sspan });
                        }
                        Rule::within_clause => within = c.into_inner().next().map(|e| self.expr(e)),
                        Rule::measures => measures = c.into_inner().filter_map(|m| self.named(m)).collect(),
                        _ => {}
                    }
                }
                OpKind::Pattern { steps, within: within?, measures }
            }
            _ => return None,
        };
        Some(Op { kind, span })
    }

    fn quantifier(&mut self, p: P<'_>) -> Quantifier {
        let span = self.span(&p);
        let mut min = 1;
        let mut max = Some(1);
        let mut ranged = false;
        let mut seen_min = false;
        for c in p.into_inner() {
            match c.as_rule() {
                Rule::int_lit if !seen_min => {
                    seen_min = true;
                    min = self.int_value(&c).unwrap_or(0) as u64;
                    max = Some(min);
                }
                Rule::range_dots => {
                    ranged = true;
                    max = None;
                }
                Rule::int_lit if ranged => max = Some(self.int_value(&c).unwrap_or(0) as u64),
                _ => {}
            }
        }
        Quantifier { min, max, span }
    }

    // -------------------------------------------------------------- expressions

    /// Builds an `expr` pair: a flat sequence of operands and operators, folded by
    /// precedence climbing. Depth (nesting plus operator chains) is bounded.
    fn expr(&mut self, p: P<'_>) -> Expr {
        let span = self.span(&p);
        if p.as_rule() != Rule::expr {
            return self.primary(p);
        }
        let toks: Vec<P<'_>> = p.into_inner().collect();
        // Every operator can deepen the tree by one; nesting adds one more.
        let weight = 1 + toks.iter().filter(|t| !is_operand(t.as_rule())).count();
        self.depth += weight;
        let e = if self.depth > EXPR_DEPTH_MAX {
            if !self.deep_reported {
                self.deep_reported = true;
                self.diags.push(
                    Diagnostic::error("E0011", span, "expression is too deep")
                        .label(format!("more than {EXPR_DEPTH_MAX} levels of operators and nesting"))
                        .help("split the expression into a `fn` or several steps"),
                );
            }
            Expr { kind: ExprKind::Error, span }
        } else {
            let mut it = toks.into_iter().peekable();
            let e = self.climb(&mut it, 0);
            debug_assert!(it.peek().is_none(), "the grammar guarantees a well-formed sequence");
            e
        };
        self.depth -= weight;
        e
    }

    /// Parses operands and operators binding at least as tightly as `min`.
    fn climb<'i>(&mut self, toks: &mut std::iter::Peekable<std::vec::IntoIter<P<'i>>>, min: u8) -> Expr {
        let Some(first) = toks.next() else {
            return Expr { kind: ExprKind::Error, span: Span::new(self.file, self.offset, self.offset) };
        };
        let first_span = self.span(&first);
        let mut lhs = match first.as_rule() {
            Rule::not_op => {
                let operand = self.climb(toks, PREC_NOT + 1);
                let span = first_span.to(operand.span);
                Expr { kind: ExprKind::Unary(UnOp::Not, Box::new(operand)), span }
            }
            Rule::neg_op => {
                // `-9223372036854775808` is a literal, not the negation of an overflowing one.
                let min_int = toks.peek().is_some_and(|t| {
                    t.as_rule() == Rule::int_lit && t.as_str().replace('_', "") == "9223372036854775808"
                });
                if min_int {
                    let lit = toks.next().map(|t| self.span(&t)).unwrap_or(first_span);
                    let e = Expr { kind: ExprKind::Int(i64::MIN), span: first_span.to(lit) };
                    self.postfixes(e, toks)
                } else {
                    let operand = self.climb(toks, PREC_NEG + 1);
                    let span = first_span.to(operand.span);
                    Expr { kind: ExprKind::Unary(UnOp::Neg, Box::new(operand)), span }
                }
            }
            _ => {
                let e = self.primary(first);
                self.postfixes(e, toks)
            }
        };
        while let Some(next) = toks.peek() {
            let rule = next.as_rule();
            if matches!(rule, Rule::in_suffix | Rule::is_null_suffix) {
                if PREC_CMP < min {
                    break;
                }
                let Some(op) = toks.next() else { break };
                lhs = self.suffix(lhs, op);
                continue;
            }
            let Some((prec, op)) = infix(next) else {
                // A high-precedence postfix after a suffix: apply it (a type error later).
                lhs = self.postfixes(lhs, toks);
                if toks.peek().is_some_and(|t| {
                    infix(t).is_none() && !matches!(t.as_rule(), Rule::in_suffix | Rule::is_null_suffix)
                }) {
                    toks.next();
                }
                continue;
            };
            if prec < min {
                break;
            }
            toks.next();
            let rhs = self.climb(toks, prec + 1);
            let span = lhs.span.to(rhs.span);
            lhs = Expr { kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)), span };
        }
        lhs
    }

    /// Applies the tight postfix operators (`.f`, `?.f`, `[i]`, `as T`) that follow.
    fn postfixes<'i>(&mut self, mut e: Expr, toks: &mut std::iter::Peekable<std::vec::IntoIter<P<'i>>>) -> Expr {
        while let Some(t) = toks.peek() {
            if !matches!(t.as_rule(), Rule::field_access | Rule::safe_access | Rule::index_access | Rule::cast_suffix) {
                break;
            }
            let Some(post) = toks.next() else { break };
            let s = e.span.to(self.span(&post));
            let rule = post.as_rule();
            let Some(inner) = post.into_inner().next() else { continue };
            e = match rule {
                Rule::field_access => Expr { kind: ExprKind::Field(Box::new(e), self.ident(inner)), span: s },
                Rule::safe_access => Expr { kind: ExprKind::SafeField(Box::new(e), self.ident(inner)), span: s },
                Rule::index_access => {
                    let idx = self.expr(inner);
                    Expr { kind: ExprKind::Index(Box::new(e), Box::new(idx)), span: s }
                }
                _ => {
                    let t = self.type_expr(inner);
                    Expr { kind: ExprKind::Cast(Box::new(e), t), span: s }
                }
            };
        }
        e
    }

    /// `x [not] in (...)` and `x is [not] null`.
    fn suffix(&mut self, lhs: Expr, op: P<'_>) -> Expr {
        let span = lhs.span.to(self.span(&op));
        if op.as_rule() == Rule::in_suffix {
            let mut negated = false;
            let mut list = Vec::new();
            for c in op.into_inner() {
                if c.as_rule() == Rule::not_op {
                    negated = true;
                } else {
                    list.push(self.expr(c));
                }
            }
            Expr { kind: ExprKind::In { expr: Box::new(lhs), list, negated }, span }
        } else {
            let negated = op.into_inner().any(|c| c.as_rule() == Rule::not_op);
            Expr { kind: ExprKind::IsNull { expr: Box::new(lhs), negated }, span }
        }
    }

    fn int_value(&mut self, p: &P<'_>) -> Option<i64> {
        let digits = p.as_str().replace('_', "");
        match digits.parse::<i64>() {
            Ok(v) => Some(v),
            Err(_) => {
                self.diags.push(
                    Diagnostic::error("E0004", self.span(p), "integer literal out of range")
                        .label("does not fit in a 64-bit signed integer")
                        .help(format!("the largest int is {}; use a float (`{}e0`) or a decimal", i64::MAX, digits)),
                );
                None
            }
        }
    }

    fn primary(&mut self, p: P<'_>) -> Expr {
        let span = self.span(&p);
        let err = Expr { kind: ExprKind::Error, span };
        let kind = match p.as_rule() {
            Rule::int_lit => self.int_value(&p).map_or(ExprKind::Error, ExprKind::Int),
            Rule::decimal_lit => {
                let text = p.as_str().replace('_', "");
                let (int_part, frac) = text.split_once('.').unwrap_or((&text, ""));
                let int_trim = int_part.trim_start_matches('0');
                let precision = (int_trim.len() + frac.len()).max(1);
                let all = format!("{int_part}{frac}");
                match (u8::try_from(precision), all.parse::<i128>()) {
                    (Ok(pr), Ok(units)) if precision <= flow_types::DECIMAL_PRECISION_MAX as usize => {
                        ExprKind::Decimal { units, precision: pr, scale: frac.len() as u8 }
                    }
                    _ => {
                        self.diags.push(
                            Diagnostic::error("E0004", span, "decimal literal has too many digits")
                                .label(format!("{precision} digits; a decimal holds at most 38"))
                                .help("write it as a float with an exponent, e.g. `1.5e40`"),
                        );
                        ExprKind::Error
                    }
                }
            }
            Rule::float_lit => {
                let text = p.as_str().replace('_', "");
                match text.parse::<f64>() {
                    Ok(v) if v.is_finite() => ExprKind::Float(v),
                    _ => {
                        self.diags.push(
                            Diagnostic::error("E0004", span, "float literal out of range")
                                .label("larger than the largest float (about 1.8e308)"),
                        );
                        ExprKind::Error
                    }
                }
            }
            Rule::duration_lit | Rule::size_lit => {
                let text = p.as_str();
                let unit_start = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
                let n: Option<i64> = text[..unit_start].replace('_', "").parse().ok();
                let unit = &text[unit_start..];
                let mult: i64 = match unit {
                    "ms" | "B" => 1,
                    "s" => 1_000,
                    "m" => 60_000,
                    "h" => 3_600_000,
                    "d" => 86_400_000,
                    "w" => 7 * 86_400_000,
                    "KB" => 1_000,
                    "MB" => 1_000_000,
                    "GB" => 1_000_000_000,
                    "TB" => 1_000_000_000_000,
                    "KiB" => 1 << 10,
                    "MiB" => 1 << 20,
                    "GiB" => 1 << 30,
                    _ => 1 << 40,
                };
                match n.and_then(|n| n.checked_mul(mult)) {
                    Some(v) if p.as_rule() == Rule::duration_lit => ExprKind::Duration(v),
                    Some(v) => ExprKind::Size(v),
                    None => {
                        self.diags.push(
                            Diagnostic::error("E0004", span, "literal out of range")
                                .label(format!("does not fit in 64 bits once converted from `{unit}`")),
                        );
                        ExprKind::Error
                    }
                }
            }
            Rule::timestamp_lit => match parse_timestamp(&p.as_str()[1..]) {
                Ok(ms) => ExprKind::Timestamp(ms),
                Err(why) => {
                    self.diags.push(
                        Diagnostic::error("E0006", span, "invalid timestamp literal")
                            .label(why)
                            .help("write an RFC 3339 instant, e.g. `@2024-03-01T12:00:00Z`, or a date `@2024-03-01`"),
                    );
                    ExprKind::Error
                }
            },
            Rule::string => ExprKind::Str(self.string(&p)),
            Rule::bool_lit => ExprKind::Bool(p.as_str().starts_with('t')),
            Rule::null_lit => ExprKind::Null,
            Rule::name_ref => {
                let mut it = p.into_inner();
                let Some(name) = it.next() else { return err };
                let name = self.ident(name);
                match it.next() {
                    Some(args) => ExprKind::Call(name, args.into_inner().map(|a| self.expr(a)).collect()),
                    // The pair's span may include whitespace before the absent arguments.
                    None => return Expr { span: name.span, kind: ExprKind::Name(name) },
                }
            }
            Rule::paren => return p.into_inner().next().map_or(err, |e| self.expr(e)),
            Rule::if_expr => {
                let mut it = p.into_inner().map(|e| self.expr(e));
                match (it.next(), it.next(), it.next()) {
                    (Some(c), Some(t), Some(e)) => ExprKind::If(Box::new(c), Box::new(t), Box::new(e)),
                    _ => ExprKind::Error,
                }
            }
            Rule::case_expr => {
                let mut subject = None;
                let mut arms = Vec::new();
                let mut otherwise = None;
                for c in p.into_inner() {
                    match c.as_rule() {
                        Rule::case_arm => {
                            let mut it = c.into_inner();
                            if let (Some(w), Some(t)) = (it.next(), it.next()) {
                                arms.push((self.expr(w), self.expr(t)));
                            }
                        }
                        Rule::expr if arms.is_empty() => subject = Some(Box::new(self.expr(c))),
                        Rule::expr => otherwise = Some(Box::new(self.expr(c))),
                        _ => {}
                    }
                }
                ExprKind::Case { subject, arms, otherwise }
            }
            Rule::list_lit => ExprKind::List(p.into_inner().map(|e| self.expr(e)).collect()),
            Rule::record_lit => ExprKind::Record(p.into_inner().filter_map(|n| self.named(n)).collect()),
            Rule::expr => return self.expr(p),
            _ => ExprKind::Error,
        };
        Expr { kind, span }
    }

    /// Decodes a string literal's escapes, reporting bad ones.
    fn string(&mut self, p: &P<'_>) -> String {
        let raw = p.as_str();
        let base = self.offset + p.as_span().start();
        let body = &raw[1..raw.len().saturating_sub(1).max(1)];
        let mut out = String::with_capacity(body.len());
        let mut chars = body.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some((_, e)) = chars.next() else { break };
            match e {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '0' => out.push('\0'),
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                'u' => {
                    // \u{XXXX}
                    let rest = &body[i + 2..];
                    let decoded = rest
                        .strip_prefix('{')
                        .and_then(|r| r.split_once('}'))
                        .filter(|(hex, _)| !hex.is_empty() && hex.len() <= 6)
                        .and_then(|(hex, _)| Some((u32::from_str_radix(hex, 16).ok()?, hex.len())))
                        .and_then(|(v, n)| Some((char::from_u32(v)?, n)));
                    match decoded {
                        Some((ch, n)) => {
                            out.push(ch);
                            for _ in 0..n + 2 {
                                chars.next();
                            }
                        }
                        None => {
                            let s = Span::new(self.file, base + 1 + i, base + 1 + i + 2);
                            self.diags.push(
                                Diagnostic::error("E0003", s, "invalid unicode escape")
                                    .label("expected `\\u{` then 1 to 6 hex digits of a Unicode scalar value, then `}`")
                                    .help("write e.g. `\\u{1F600}`"),
                            );
                        }
                    }
                }
                other => {
                    let s = Span::new(self.file, base + 1 + i, base + 1 + i + 1 + other.len_utf8());
                    self.diags.push(
                        Diagnostic::error("E0003", s, format!("unknown escape `\\{other}` in string"))
                            .label("not an escape")
                            .help(
                                "the escapes are \\n \\t \\r \\0 \\\\ \\\" and \\u{...}; write a backslash as `\\\\`",
                            ),
                    );
                }
            }
        }
        out
    }
}

pub use flow_types::time::{days_from_civil, parse_timestamp};

#[cfg(test)]
mod tests {
    use super::*;

    fn p(src: &str) -> (File, Vec<Diagnostic>) {
        parse(FileId(0), src)
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01"), Ok(0));
        assert_eq!(parse_timestamp("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(parse_timestamp("2023-11-14T23:13:20+01:00"), Ok(1_700_000_000_000));
        assert_eq!(parse_timestamp("2023-11-14T22:13:20.5Z"), Ok(1_700_000_000_500));
        assert!(parse_timestamp("2023-02-29").is_err());
        assert!(parse_timestamp("2024-02-29").is_ok());
        assert!(parse_timestamp("2023-13-01").is_err());
    }

    #[test]
    fn one_error_per_broken_declaration() {
        let (f, d) = p("schema A { x: int }\nschema B { y int }\nschema C { z: int }\n");
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(f.items.len(), 2);
        assert_eq!(f.broken.len(), 1);
        assert_eq!(f.broken[0].name.as_deref(), Some("B"));
    }

    #[test]
    fn recovers_at_column_zero_inside_unclosed_brace() {
        let (f, d) = p("schema A { x: int\nschema C { z: int }\n");
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(f.items.len(), 1);
    }

    #[test]
    fn keyword_named_fields_do_not_split() {
        let (f, d) = p("schema A {\nsource: string,\n  topic: string }\n");
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(f.items.len(), 1);
    }

    #[test]
    fn literals_decode() {
        let (f, d) =
            p("const a = -9223372036854775808\nconst b = 10_000.50\nconst c = \"x\\u{e9}\\n\"\nconst d = 2h\n");
        assert!(d.is_empty(), "{d:?}");
        let vals: Vec<_> = f
            .items
            .iter()
            .map(|i| match i {
                Item::Const(c) => c.value.kind.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(vals[0], ExprKind::Int(i64::MIN));
        assert_eq!(vals[1], ExprKind::Decimal { units: 1_000_050, precision: 7, scale: 2 });
        assert_eq!(vals[2], ExprKind::Str("xé\n".into()));
        assert_eq!(vals[3], ExprKind::Duration(7_200_000));
    }

    #[test]
    fn lexical_errors() {
        let (_, d) = p("const a = \"abc\nconst b = 99999999999999999999\nconst c = \"\\q\"\n");
        let codes: Vec<_> = d.iter().map(|d| d.code).collect();
        assert_eq!(codes, vec!["E0002", "E0004", "E0003"]);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let src = format!("const a = {}1{}", "(".repeat(5000), ")".repeat(5000));
        let (_, d) = p(&src);
        assert!(d.iter().any(|d| d.code == "E0011"));
    }
}
