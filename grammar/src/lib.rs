//! The .flow grammar, compiled by pest from `grammar/flow.pest`.
//!
//! This crate owns the syntax and nothing else: it knows no types, no spans beyond
//! pest's, and no diagnostics. The compiler's `syntax` module turns its parse tree
//! into the AST and its errors into coded diagnostics.

use pest_derive::Parser;

/// The pest parser generated from `flow.pest`.
#[derive(Parser)]
#[grammar = "flow.pest"]
pub struct FlowParser;

/// The grammar's source text, for tools that want to show or hash it.
pub const GRAMMAR: &str = include_str!("../flow.pest");

#[cfg(test)]
mod tests {
    use super::*;
    use pest::Parser;

    fn parses(rule: Rule, src: &str) -> bool {
        FlowParser::parse(rule, src).is_ok()
    }

    #[test]
    fn keywords_need_a_word_boundary() {
        assert!(parses(Rule::expr, "not_deleted"));
        assert!(parses(Rule::expr, "not deleted"));
        assert!(parses(Rule::expr, "a or order_id"));
        assert!(parses(Rule::expr, "nullable ?? 1"));
    }

    #[test]
    fn literals() {
        for src in [
            "10_000",
            "10_000.0",
            "1.5e3",
            "250ms",
            "5s",
            "1m",
            "7d",
            "1GiB",
            "\"a\\n\"",
            "@2024-01-01T00:00:00Z",
            "@2024-01-01",
            "true",
            "null",
        ] {
            assert!(parses(Rule::expr, src), "{src}");
        }
    }

    #[test]
    fn whole_declarations() {
        let src = r#"
            schema Txn { id: string, amount: decimal(12, 2), ts: timestamp, tags: list<string>?, }
            topic transactions: Txn { partitions: 4, key: account, retention: 7d }
            source bank: Txn = file("data/txns.jsonl", format: json) event_time ts watermark 5s
            sink out = stdout()
            pipeline p = from bank | where amount > 0.0 and not flagged
                | key_by account
                | window tumbling(1m) allowed_lateness 30s late -> late_txns
                | aggregate { total: sum(amount), n: count() }
                | select { *, reason: if n > 20 then "velocity" else "amount" }
                -> out
        "#;
        let r = FlowParser::parse(Rule::file, src);
        assert!(r.is_ok(), "{r:?}");
    }
}
