//! No input makes the front end panic: random text, and the examples truncated and
//! mutated byte by byte, go through parse and check. Runs a fixed number of cases in
//! CI; set PROPTEST_CASES for deeper runs (`cargo fuzz` targets live in `fuzz/`).

use proptest::prelude::*;
use std::path::Path;

fn examples() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .expect("examples/")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "flow"))
        .map(|p| std::fs::read_to_string(p).expect("readable example"))
        .collect();
    v.sort();
    v
}

/// Compiles `text` as a file in a directory without imports; must not panic. Runs
/// on a thread with the stack `flowc` gives its front end.
fn front_end(text: &str) {
    let text = text.to_string();
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || check_one(&text))
        .expect("spawn")
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

fn check_one(text: &str) {
    let c = flow_compiler::compile_str("/nonexistent/fuzz.flow", text);
    // Every diagnostic's spans lie inside its file, on char boundaries.
    for d in &c.diagnostics {
        for span in std::iter::once(&d.primary.span).chain(d.secondary.iter().map(|l| &l.span)) {
            let f = c.sources.get(span.file);
            assert!(span.end as usize <= f.text.len(), "span {span:?} past the end: {d:?}");
            assert!(
                f.text.is_char_boundary(span.start as usize) && f.text.is_char_boundary(span.end as usize),
                "{d:?}"
            );
        }
        let _ = d.render(&c.sources, 80);
    }
    if let Some(p) = &c.program {
        let _ = p.to_string();
        let _ = flow_compiler::plan::plan(p).to_string();
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    }
}

/// Tokens that make random text look like .flow, so the fuzzer reaches the checker.
const TOKENS: &[&str] = &[
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
    "is",
    "null",
    "true",
    "event_time",
    "watermark",
    "late",
    "emit",
    "every",
    "ttl",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    ":",
    "=",
    "==",
    "->",
    "|",
    "?",
    "??",
    "?.",
    ".",
    "..",
    "+",
    "-",
    "*",
    "/",
    "%",
    "<",
    ">=",
    "\"s\"",
    "\"\\u{41}\"",
    "1",
    "1.5",
    "1e3",
    "5s",
    "1m",
    "7d",
    "1GiB",
    "@2024-01-01T00:00:00Z",
    "x",
    "ts",
    "amount",
    "Txn",
    "int",
    "string",
    "decimal(12, 2)",
    "timestamp",
    "tumbling(1m)",
    "sliding(5m, every: 1m)",
    "session(gap: 30s)",
    "count()",
    "sum(amount)",
    "file(\"a.jsonl\")",
    "stdout()",
    "\n",
    " ",
    "// c\n",
    "/*",
    "*/",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        front_end(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn random_token_soup(toks in proptest::collection::vec(proptest::sample::select(TOKENS), 0..120)) {
        front_end(&toks.join(" "));
    }

    #[test]
    fn truncated_examples(which in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>()) {
        let ex = examples();
        let text = which.get(&ex);
        let mut at = cut.index(text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        front_end(&text[..at]);
    }

    #[test]
    fn mutated_examples(
        which in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let ex = examples();
        let mut bytes = which.get(&ex).as_bytes().to_vec();
        for (pos, byte, kind) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = pos.index(bytes.len());
            match kind {
                0 => bytes[i] = byte,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, byte),
            }
        }
        front_end(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn spliced_examples(a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>(), x in any::<prop::sample::Index>(), y in any::<prop::sample::Index>()) {
        // Lines of one example spliced into another: plausible programs with wrong names.
        let ex = examples();
        let la: Vec<&str> = a.get(&ex).lines().collect();
        let lb: Vec<&str> = b.get(&ex).lines().collect();
        let i = x.index(la.len() + 1);
        let j = y.index(lb.len() + 1);
        let text = la[..i].iter().chain(&lb[j..]).copied().collect::<Vec<_>>().join("\n");
        front_end(&text);
    }
}

#[test]
fn pathological_inputs() {
    for text in [
        "(".repeat(100_000),
        "{".repeat(100_000),
        format!("const X = {}1", "-".repeat(100_000)),
        format!("const X = {}true", "not ".repeat(50_000)),
        format!("const X = 1{}", " + 1".repeat(50_000)),
        format!("const X = {}", "if true then 1 else ".repeat(300) + "1"),
        "\"".repeat(10_001),
        "/*".repeat(10_000),
        "schema".repeat(10_000),
        "\u{feff}schema T { x: int }".to_string(),
        "schema T { x: int }\r\nconst Y = 1\r\n".to_string(),
    ] {
        front_end(&text);
    }
}
