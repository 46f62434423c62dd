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
    /// The keyword list here and the `keyword` rule of the grammar must agree.
    #[test]
    fn keywords_match_the_grammar() {
        let g = flow_grammar::GRAMMAR;
        let start = g.find("keyword = @{").expect("keyword rule");
        let end = start + g[start..].find("~ !ident_char").expect("end of keyword rule");
        let mut words: Vec<&str> = g[start..end].split('"').skip(1).step_by(2).collect();
        let mut ours = super::KEYWORDS.to_vec();
        words.sort();
        ours.sort();
        assert_eq!(words, ours);
    }
}
