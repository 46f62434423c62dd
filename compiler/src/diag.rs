//! Diagnostics: the one type every user-facing error and warning of the compiler is.
//!
//! A [`Diagnostic`] has a stable code (`E0xxx` errors, `W0xxx` warnings), a message
//! saying what is wrong (lowercase, no final period), a primary label on the exact
//! span, optional secondary labels, and a `help` line saying how to fix it. This module
//! owns rendering for tests and the CLI (through miette, deterministic: no colour,
//! fixed width) and the long explanations (`flowc explain`), which are the sections
//! of `docs/errors.md`. It knows nothing of terminals or JSON; the CLI does.

use crate::source::{SourceMap, Span};
use std::fmt;

/// Error or warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// A span with a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

/// A user-facing error or warning.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Diagnostic {
    pub code: &'static str,
    pub severity: Severity,
    pub message: String,
    pub primary: Label,
    pub secondary: Vec<Label>,
    pub help: Option<String>,
}

impl Diagnostic {
    /// An error with code `code` (`E....`), pointing at `span`.
    pub fn error(code: &'static str, span: Span, message: impl Into<String>) -> Self {
        debug_assert!(code.starts_with('E') && code.len() == 5, "bad error code {code}");
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            primary: Label { span, message: String::new() },
            secondary: Vec::new(),
            help: None,
        }
    }

    /// A warning with code `code` (`W....`), pointing at `span`.
    pub fn warning(code: &'static str, span: Span, message: impl Into<String>) -> Self {
        debug_assert!(code.starts_with('W') && code.len() == 5, "bad warning code {code}");
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error("E0000", span, message) }.with_code(code)
    }

    fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    /// The text under the primary span.
    pub fn label(mut self, message: impl Into<String>) -> Self {
        self.primary.message = message.into();
        self
    }

    /// A secondary label, e.g. "field declared here".
    pub fn with_secondary(mut self, span: Span, message: impl Into<String>) -> Self {
        self.secondary.push(Label { span, message: message.into() });
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn help_opt(mut self, help: Option<String>) -> Self {
        if help.is_some() {
            self.help = help;
        }
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Renders the diagnostic as text: miette's graphical report without colour at the
    /// given width, so output is the same on every machine.
    pub fn render(&self, sources: &SourceMap, width: usize) -> String {
        let report = Report::new(self, sources);
        let handler = miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(width)
            .with_links(false);
        let mut out = String::new();
        if handler.render_report(&mut out, &report).is_err() {
            // Rendering only fails on a formatter error; fall back to the plain form.
            out = self.to_string();
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]: {}", self.severity, self.code, self.message)
    }
}

/// Secondary labels further than this many lines from the primary one are shown as
/// notes (`file:line:col`) instead of in the excerpt.
const SECONDARY_LINES_MAX: usize = 6;

/// A diagnostic bound to its source text, in the shape miette renders.
struct Report<'a> {
    diag: &'a Diagnostic,
    source: miette::NamedSource<String>,
    labels: Vec<miette::LabeledSpan>,
    help: Option<String>,
}

impl<'a> Report<'a> {
    fn new(diag: &'a Diagnostic, sources: &SourceMap) -> Self {
        let file = sources.get(diag.primary.span.file);
        let source = miette::NamedSource::new(file.name.clone(), file.text.to_string());
        let mut labels = vec![miette::LabeledSpan::new_primary_with_span(
            Some(diag.primary.message.clone()).filter(|m| !m.is_empty()),
            diag.primary.span.range(),
        )];
        // miette draws labels of one source; labels in other files become notes.
        let mut notes = Vec::new();
        let primary_line = sources.line_col(diag.primary.span).0;
        for l in &diag.secondary {
            // Far-away labels would drag every line between into the excerpt: note them.
            let near = sources.line_col(l.span).0.abs_diff(primary_line) <= SECONDARY_LINES_MAX;
            if l.span.file == diag.primary.span.file && near {
                labels.push(miette::LabeledSpan::new_with_span(Some(l.message.clone()), l.span.range()));
            } else {
                let (line, col) = sources.line_col(l.span);
                notes.push(format!("{}: {}:{}:{}", l.message, sources.get(l.span.file).name, line, col));
            }
        }
        let mut help = diag.help.clone();
        if !notes.is_empty() {
            let n = notes.join("\n");
            help = Some(match help {
                Some(h) => format!("{h}\n{n}"),
                None => n,
            });
        }
        Report { diag, source, labels, help }
    }
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.diag, f)
    }
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diag.message)
    }
}

impl std::error::Error for Report<'_> {}

impl miette::Diagnostic for Report<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(format!("{}[{}]", self.diag.severity, self.diag.code)))
    }
    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diag.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }
    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.source)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        Some(Box::new(self.labels.iter().cloned()))
    }
}

/// The error index, `docs/errors.md`, compiled in: `flowc explain` prints from it and
/// a test checks every code the compiler emits has a section.
pub const ERROR_INDEX: &str = include_str!("../../docs/errors.md");

/// The long explanation of `code` (its section of docs/errors.md), if there is one.
pub fn explain(code: &str) -> Option<&'static str> {
    let code = code.trim().to_ascii_uppercase();
    let header = format!("## {code}");
    let start = ERROR_INDEX.lines().scan(0usize, |pos, line| {
        let here = *pos;
        *pos += line.len() + 1;
        Some((here, line))
    });
    let mut begin = None;
    for (pos, line) in start {
        if let Some(b) = begin {
            if line.starts_with("## ") {
                return Some(ERROR_INDEX[b..pos].trim_end());
            }
        } else if line.split(':').next().map(str::trim) == Some(header.as_str()) {
            begin = Some(pos);
        }
    }
    begin.map(|b| ERROR_INDEX[b..].trim_end())
}

/// Every code with a section in docs/errors.md, in order.
pub fn documented_codes() -> Vec<&'static str> {
    ERROR_INDEX
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .filter(|c| c.len() == 5 && (c.starts_with('E') || c.starts_with('W')))
        .collect()
}

/// Names close to `name` among `candidates`, best first, for did-you-mean help.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        if c == name {
            continue;
        }
        let score = strsim::jaro_winkler(&name.to_lowercase(), &c.to_lowercase());
        let close = score > 0.82 || strsim::damerau_levenshtein(name, c) <= (name.len().max(3) / 3);
        if close && best.is_none_or(|(s, b)| score > s || (score == s && c < b)) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_finds_close_names() {
        assert_eq!(did_you_mean("ammount", ["amount", "account", "ts"]), Some("amount".into()));
        assert_eq!(did_you_mean("acount", ["amount", "account", "ts"]), Some("account".into()));
        assert_eq!(did_you_mean("zzz", ["amount", "account"]), None);
        assert_eq!(did_you_mean("tumbel", ["tumbling", "sliding", "session"]), Some("tumbling".into()));
    }

    #[test]
    fn explain_finds_sections() {
        let e = explain("e0001").expect("E0001 is documented");
        assert!(e.starts_with("## E0001"));
        assert!(!e[3..].contains("\n## "));
        assert!(explain("E9999").is_none());
    }
}
