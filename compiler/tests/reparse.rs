//! The editor's incremental parse (`ide::ParseCache`) gives exactly what
//! `syntax::parse` gives, on every example and diagnostics case and after thousands
//! of random edits, while re-parsing only the declarations an edit touched.

use flow_compiler::ide::ParseCache;
use flow_compiler::source::FileId;
use flow_compiler::syntax;
use std::path::Path;

fn corpus() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    for dir in ["examples", "tests/diagnostics", "tests/diagnostics/imports"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "flow") {
                out.push((p.display().to_string(), std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out.sort();
    assert!(out.len() > 50, "the corpus is missing");
    out
}

/// The same AST and the same diagnostics; their order may differ (the parser lists
/// lexical errors first, the cache piece by piece; the driver sorts them by position).
fn same(cache: &mut ParseCache, text: &str, what: &str) {
    let sorted = |(f, mut d): (syntax::ast::File, Vec<flow_compiler::diag::Diagnostic>)| {
        d.sort_by_key(|d| (d.primary.span, d.code, d.message.clone()));
        (f, d)
    };
    let want = sorted(syntax::parse(FileId(0), text));
    let got = sorted(cache.parse(FileId(0), text));
    assert!(
        got == want,
        "incremental parse differs from the parser: {what}\n--- text\n{text}\n--- got\n{got:#?}\n--- want\n{want:#?}"
    );
}

/// Runs `f` on a thread with the front end's stack (deep inputs are in the corpus).
fn big_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new().stack_size(256 << 20).spawn(f).unwrap().join().unwrap();
}

#[test]
fn same_as_the_parser_on_the_corpus() {
    big_stack(|| {
        for (name, text) in corpus() {
            let mut cache = ParseCache::new();
            same(&mut cache, &text, &name);
            // A second parse of the same text reuses every piece (unless a comment
            // is never closed: then the whole file is parsed at once).
            same(&mut cache, &text, &name);
            if !syntax::parse(FileId(0), &text).1.iter().any(|d| d.code == "E0007") {
                assert_eq!(cache.last_misses, 0, "{name}");
            }
        }
    });
}

#[test]
fn same_as_the_parser_after_random_edits() {
    big_stack(|| {
        // Edits a user makes while typing, including ones that cross declarations.
        const INSERTS: &[&str] = &[
            "x",
            " ",
            "\n",
            "{",
            "}",
            "(",
            ")",
            "\"",
            "/*",
            "*/",
            "//",
            "|",
            ",",
            ":",
            "=",
            "->",
            "\nschema S {",
            "\npipeline q = from ",
            "\ntopic t: ",
            "schema",
            "\n\n",
            "@2024-01-01",
            "1m",
            "\\",
        ];
        let mut seed: u64 = 0x5eed_f10c;
        let mut next = move |n: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as usize) % n.max(1)
        };
        for (name, original) in corpus().into_iter().filter(|(n, _)| !n.contains("nesting_too_deep")) {
            let mut cache = ParseCache::new();
            let mut text = original.clone();
            same(&mut cache, &text, &name);
            for step in 0..24 {
                let mut at = next(text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                if next(3) == 0 && at < text.len() {
                    let mut end = (at + 1 + next(8)).min(text.len());
                    while !text.is_char_boundary(end) {
                        end += 1;
                    }
                    text.replace_range(at..end, "");
                } else {
                    text.insert_str(at, INSERTS[next(INSERTS.len())]);
                }
                same(&mut cache, &text, &format!("{name}, edit {step}"));
                if step % 8 == 7 {
                    text = original.clone(); // back to a valid file now and then
                    same(&mut cache, &text, &format!("{name}, reset"));
                }
            }
        }
    });
}

#[test]
fn an_edit_reparses_only_its_declaration() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/orders_payments.flow"))
        .unwrap();
    let mut cache = ParseCache::new();
    cache.parse(FileId(0), &text);
    assert!(cache.last_misses > 10);
    let edited = text.replacen("| where p is null", "| where p is not null", 1);
    assert_ne!(edited, text);
    same(&mut cache, &edited, "edited");
    assert_eq!(cache.last_misses, 1);
}
