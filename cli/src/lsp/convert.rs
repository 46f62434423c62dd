//! Conversions between the compiler's values (byte spans, diagnostics, symbols,
//! completions) and LSP's types (0-based lines, UTF-16 columns).

use super::file_url;
use flow_compiler::check::DeclKind;
use flow_compiler::diag::Severity;
use flow_compiler::ide::{Analysis, Completion, CompletionKind, Symbol};
use flow_compiler::source::{FileId, Span};
use lsp_types as lt;
use std::collections::HashMap;

/// A span as an LSP range, in its own file of the analysis.
pub trait ToLsp {
    fn to_lsp(&self, a: &Analysis) -> lt::Range;
}

impl ToLsp for Span {
    fn to_lsp(&self, a: &Analysis) -> lt::Range {
        let f = a.comp.sources.get(self.file);
        let (l1, c1) = f.line_col_utf16(self.start as usize);
        let (l2, c2) = f.line_col_utf16(self.end as usize);
        lt::Range { start: lt::Position::new(l1 as u32, c1 as u32), end: lt::Position::new(l2 as u32, c2 as u32) }
    }
}

/// The root file and byte offset of an LSP position.
pub fn offset(a: &Analysis, pos: lt::Position) -> (FileId, usize) {
    let root = a.root();
    (root, a.comp.sources.get(root).offset_utf16(pos.line as usize, pos.character as usize))
}

/// Line starts of a text being edited (before it is analysed).
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    /// Byte offset of a position, clamped to its line and to the text.
    pub fn offset(&self, text: &str, pos: lt::Position) -> usize {
        let Some(&start) = self.starts.get(pos.line as usize) else {
            return text.len();
        };
        let mut units = 0u32;
        for (i, c) in text[start..].char_indices() {
            if units >= pos.character || c == '\n' {
                return start + i;
            }
            units += c.len_utf16() as u32;
        }
        text.len()
    }
}

/// The diagnostics of the root file of `a`, as `flowc check` reports them: code,
/// severity, message (with the help line), primary range, secondary labels as
/// related information.
pub fn diagnostics(url: &lt::Url, a: &Analysis) -> Vec<lt::Diagnostic> {
    let root = a.root();
    a.comp
        .diagnostics
        .iter()
        .filter(|d| d.primary.span.file == root)
        .map(|d| {
            let related: Vec<lt::DiagnosticRelatedInformation> = d
                .secondary
                .iter()
                .filter_map(|l| {
                    Some(lt::DiagnosticRelatedInformation {
                        location: lt::Location { uri: file_url(url, a, l.span.file)?, range: l.span.to_lsp(a) },
                        message: l.message.clone(),
                    })
                })
                .collect();
            let mut message = d.message.clone();
            if let Some(h) = &d.help {
                message.push_str("\nhelp: ");
                message.push_str(h);
            }
            lt::Diagnostic {
                range: d.primary.span.to_lsp(a),
                severity: Some(match d.severity {
                    Severity::Error => lt::DiagnosticSeverity::ERROR,
                    Severity::Warning => lt::DiagnosticSeverity::WARNING,
                }),
                code: Some(lt::NumberOrString::String(d.code.to_string())),
                source: Some("flowc".into()),
                message,
                related_information: (!related.is_empty()).then_some(related),
                data: Some(serde_json::json!({ "label": d.primary.message, "help": d.help })),
                ..Default::default()
            }
        })
        .collect()
}

/// Quick fixes for the did-you-mean diagnostics of the root file that touch `range`.
pub fn quick_fixes(url: &lt::Url, a: &Analysis, range: lt::Range) -> Vec<lt::CodeActionOrCommand> {
    let root = a.root();
    let mut out = Vec::new();
    for d in a.comp.diagnostics.iter().filter(|d| d.primary.span.file == root) {
        let r = d.primary.span.to_lsp(a);
        if r.end < range.start || range.end < r.start {
            continue;
        }
        let Some((span, name)) = a.quick_fix(d) else { continue };
        let edit = lt::TextEdit { range: span.to_lsp(a), new_text: name.clone() };
        let diag = diagnostics(url, a)
            .into_iter()
            .find(|x| x.range == r && x.code.as_ref().is_some_and(|c| *c == lt::NumberOrString::String(d.code.into())));
        out.push(lt::CodeActionOrCommand::CodeAction(lt::CodeAction {
            title: format!("replace `{}` with `{name}`", a.comp.sources.text(span)),
            kind: Some(lt::CodeActionKind::QUICKFIX),
            diagnostics: diag.map(|x| vec![x]),
            edit: Some(lt::WorkspaceEdit {
                changes: Some(HashMap::from([(url.clone(), vec![edit])])),
                ..Default::default()
            }),
            is_preferred: Some(true),
            ..Default::default()
        }));
    }
    out
}

#[allow(deprecated)] // DocumentSymbol::deprecated is a required field
pub fn symbol(a: &Analysis, s: &Symbol) -> lt::DocumentSymbol {
    lt::DocumentSymbol {
        name: s.name.clone(),
        detail: (!s.detail.is_empty()).then(|| s.detail.clone()),
        kind: match s.kind {
            "schema" => lt::SymbolKind::STRUCT,
            "field" => lt::SymbolKind::FIELD,
            "topic" => lt::SymbolKind::EVENT,
            "source" | "sink" => lt::SymbolKind::INTERFACE,
            "pipeline" | "fn" => lt::SymbolKind::FUNCTION,
            "const" => lt::SymbolKind::CONSTANT,
            _ => lt::SymbolKind::OBJECT,
        },
        tags: None,
        deprecated: None,
        range: s.span.to_lsp(a),
        selection_range: s.name_span.to_lsp(a),
        children: (!s.children.is_empty()).then(|| s.children.iter().map(|c| symbol(a, c)).collect()),
    }
}

pub fn completion(c: Completion) -> lt::CompletionItem {
    lt::CompletionItem {
        kind: Some(match c.kind {
            CompletionKind::Keyword => lt::CompletionItemKind::KEYWORD,
            CompletionKind::Field => lt::CompletionItemKind::FIELD,
            CompletionKind::Function => lt::CompletionItemKind::FUNCTION,
            CompletionKind::Type => lt::CompletionItemKind::TYPE_PARAMETER,
            CompletionKind::Param => lt::CompletionItemKind::VARIABLE,
            CompletionKind::Decl(k) => match k {
                DeclKind::Schema => lt::CompletionItemKind::STRUCT,
                DeclKind::Const => lt::CompletionItemKind::CONSTANT,
                DeclKind::Fn | DeclKind::Pipeline => lt::CompletionItemKind::FUNCTION,
                DeclKind::Topic => lt::CompletionItemKind::EVENT,
                DeclKind::Source | DeclKind::Sink => lt::CompletionItemKind::INTERFACE,
            },
        }),
        detail: Some(c.detail),
        label: c.label,
        ..Default::default()
    }
}
