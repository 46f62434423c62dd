//! The syntax layer: source text -> AST with spans, never failing.
//!
//! It owns the AST ([`ast`]) and the parser ([`parse`]), built on the pest grammar of
//! `grammar/flow.pest`. It knows nothing of types, names or the other files of a
//! program.

pub mod ast;
pub mod parse;

pub use parse::parse;

/// Words reserved by the grammar: they cannot name declarations.
pub const KEYWORDS: &[&str] = &[
    "schema",
    "topic",
    "source",
    "sink",
    "pipeline",
    "const",
    "fn",
    "import",
    "config",
    "from",
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
    "measures",
    "within",
    "times",
    "on",
    "as",
    "by",
    "asc",
    "desc",
    "else",
    "when",
    "then",
    "if",
    "case",
    "end",
    "and",
    "or",
    "not",
    "in",
    "true",
    "false",
    "null",
    "event_time",
    "watermark",
    "idle_timeout",
    "dead_letter",
    "allowed_lateness",
    "late",
    "emit",
    "every",
    "ttl",
    "is",
];

pub fn is_keyword(word: &str) -> bool {
    KEYWORDS.contains(&word)
}

#[cfg(test)]
mod tests {
    use crate::source::FileId;

    /// Every reserved word is rejected as a declaration name, and accepted as a field.
    #[test]
    fn reserved_words_cannot_name_declarations() {
        for kw in super::KEYWORDS {
            let (_, d) = super::parse(FileId(0), &format!("schema {kw} {{ {kw}: int }}\n"));
            assert_eq!(d.len(), 1, "`{kw}`: {d:?}");
            assert_eq!(d[0].code, "E0001");
            assert!(d[0].message.contains(kw), "{d:?}");
        }
    }
}
