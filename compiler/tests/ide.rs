//! Editor queries on whole programs: what a name refers to, through pipelines,
//! joins and patterns; completions in context; types on hover.

use flow_compiler::ide::{Analysis, CompletionKind};
use flow_compiler::DiskLoader;
use std::path::Path;

fn analyze(text: &str) -> Analysis {
    Analysis::new(Path::new("test.flow"), text.to_string(), &DiskLoader)
}

/// The byte offset of the `nth` occurrence of `needle`, plus `skip`.
fn at(text: &str, needle: &str, nth: usize, skip: usize) -> usize {
    text.match_indices(needle).nth(nth).unwrap_or_else(|| panic!("{needle:?} #{nth} not found")).0 + skip
}

/// The line of text where the name at (`needle`, `nth`) is declared, trimmed.
fn def_line(a: &Analysis, text: &str, needle: &str, nth: usize) -> Option<String> {
    let span = a.definition(a.root(), at(text, needle, nth, 0))?;
    let line_start = text[..span.start as usize].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[span.start as usize..].find('\n').map_or(text.len(), |i| span.start as usize + i);
    Some(format!("{} @ {}", &text[span.range()], text[line_start..line_end].trim()))
}

const JOINS: &str = r#"schema Order { order_id: string, total: int, ts: timestamp }
schema Payment { order_id: string, amount: int, ts: timestamp }
schema Out { order_id: string, paid: int, gap: duration, ts: timestamp }
topic orders: Order { partitions: 1, key: order_id }
topic payments: Payment { partitions: 1, key: order_id }
sink out: Out = stdout()
source o: Order = file("o.jsonl") event_time ts watermark 1s
source p: Payment = file("p.jsonl") event_time ts watermark 1s
pipeline lo = from o -> orders
pipeline lp = from p -> payments
pipeline paid =
    from orders
    | join payments as pay on order_id == pay.order_id within 30m
    | select { order_id, paid: pay.amount, gap: pay.ts - ts, ts }
    | where paid > 0
    -> out
"#;

#[test]
fn definitions_through_joins_and_selects() {
    let a = analyze(JOINS);
    assert!(a.comp.diagnostics.is_empty(), "{:?}", a.comp.diagnostics);
    // `pay` is the join alias; `pay.amount` is Payment's field.
    assert_eq!(
        def_line(&a, JOINS, "pay.order_id", 0).unwrap(),
        "pay @ | join payments as pay on order_id == pay.order_id within 30m"
    );
    assert_eq!(
        def_line(&a, JOINS, "order_id ==", 0).unwrap(),
        "order_id @ schema Order { order_id: string, total: int, ts: timestamp }"
    );
    let amount = at(JOINS, "pay.amount", 0, 4);
    let span = a.definition(a.root(), amount).unwrap();
    assert_eq!(&JOINS[span.range()], "amount");
    assert!(JOINS[..span.start as usize].ends_with("schema Payment { order_id: string, "));
    // `paid` after the select is the select's field.
    assert_eq!(
        def_line(&a, JOINS, "paid > 0", 0).unwrap(),
        "paid @ | select { order_id, paid: pay.amount, gap: pay.ts - ts, ts }"
    );
    // A stream and a schema.
    assert_eq!(
        def_line(&a, JOINS, "payments as", 0).unwrap(),
        "payments @ topic payments: Payment { partitions: 1, key: order_id }"
    );
    assert_eq!(
        def_line(&a, JOINS, "Out =", 0).unwrap(),
        "Out @ schema Out { order_id: string, paid: int, gap: duration, ts: timestamp }"
    );
    // Option values name fields of the topic's schema.
    let key = at(JOINS, "key: order_id", 0, 5);
    assert!(a.definition(a.root(), key).is_some());
    // References of Payment.ts: its declaration, the source's event time, `pay.ts`.
    let ts = at(JOINS, "ts: timestamp", 1, 0);
    assert_eq!(a.references(a.root(), ts).len(), 3, "{:?}", a.references(a.root(), ts));
}

#[test]
fn hover_types() {
    let a = analyze(JOINS);
    let h = a.hover(a.root(), at(JOINS, "pay.ts - ts", 0, 0)).unwrap();
    assert!(h.markdown.contains("field pay: Payment"), "{}", h.markdown);
    let h = a.hover(a.root(), at(JOINS, "- ts", 0, 0)).unwrap();
    assert!(h.markdown.contains(": duration"), "{}", h.markdown);
}

#[test]
fn pattern_steps_and_fn_params() {
    let text = r#"schema T { k: string, s: string, ts: timestamp }
source src: T = file("t.jsonl") event_time ts watermark 1s
sink out = stdout()
fn twice(x: int) -> int = x * 2
pipeline p = from src | key_by k
    | pattern { d: s == "no" times 2.., a: s == "yes" } within 5m measures { n: count(d), last_s: a.s }
    | where twice(n) > 1 -> out
"#;
    let a = analyze(text);
    assert!(a.comp.diagnostics.is_empty(), "{:?}", a.comp.diagnostics);
    assert_eq!(def_line(&a, text, "x * 2", 0).unwrap(), "x @ fn twice(x: int) -> int = x * 2");
    assert!(def_line(&a, text, "d)", 0).unwrap().starts_with("d @ | pattern"));
    assert!(def_line(&a, text, "a.s", 0).unwrap().starts_with("a @ | pattern"));
    assert!(def_line(&a, text, "n) > 1", 0).unwrap().starts_with("n @ | pattern"));
    assert_eq!(def_line(&a, text, "twice(n)", 0).unwrap(), "twice @ fn twice(x: int) -> int = x * 2");
    let h = a.hover(a.root(), at(text, "count(d)", 0, 1)).unwrap();
    assert!(h.markdown.contains("aggregate"), "{}", h.markdown);
}

#[test]
fn completions_in_context() {
    let head = "schema Order { id: string, total: int, ts: timestamp }\nschema Pay { id: string, amount: int, ts: timestamp }\ntopic orders: Order { partitions: 1 }\ntopic pays: Pay { partitions: 1, key: id }\nsink out = stdout()\n";
    let labels = |text: &str| -> Vec<(String, CompletionKind)> {
        let a = analyze(text);
        a.completions(text.len(), &DiskLoader).into_iter().map(|c| (c.label, c.kind)).collect()
    };
    let has = |v: &[(String, CompletionKind)], l: &str| v.iter().any(|(x, _)| x == l);
    // The fields of a join alias after `alias.`, in a pipeline still being typed.
    let v = labels(&format!("{head}pipeline p = from orders | lookup pays as q on id | where q."));
    assert!(has(&v, "amount") && has(&v, "id") && !has(&v, "total"), "{v:?}");
    // `lookup` takes topics.
    let v = labels(&format!("{head}pipeline p = from orders | lookup "));
    assert_eq!(v.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), vec!["orders", "pays"]);
    // Types in a schema.
    let v = labels(&format!("{head}schema S {{ a: "));
    assert!(has(&v, "int") && has(&v, "Order") && !has(&v, "orders"), "{v:?}");
    // A topic's schema.
    let v = labels(&format!("{head}topic t: "));
    assert!(has(&v, "Order") && has(&v, "Pay") && !has(&v, "int"), "{v:?}");
    // Window kinds.
    let v = labels(&format!("{head}pipeline p = from orders | window "));
    assert!(has(&v, "tumbling") && has(&v, "session"), "{v:?}");
    // Params in a fn body.
    let v = labels(&format!("{head}fn f(amount_cents: int) -> int = amo"));
    assert!(v.iter().any(|(l, k)| l == "amount_cents" && *k == CompletionKind::Param), "{v:?}");
}

#[test]
fn did_you_mean_quick_fixes() {
    let text = "schema T { amount: int }\ntopic t: Tt { partitions: 1 }\n";
    let a = analyze(text);
    let fixes: Vec<_> = a.comp.diagnostics.iter().filter_map(|d| a.quick_fix(d)).collect();
    assert_eq!(fixes.len(), 1, "{:?}", a.comp.diagnostics);
    assert_eq!(&text[fixes[0].0.range()], "Tt");
    assert_eq!(fixes[0].1, "T");
}

/// Every query at every position of every example and diagnostics case answers
/// without panicking (broken files included).
#[test]
fn queries_never_panic() {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let mut files = Vec::new();
            for dir in ["examples", "tests/diagnostics"] {
                for e in std::fs::read_dir(root.join(dir)).unwrap() {
                    let p = e.unwrap().path();
                    if p.extension().is_some_and(|x| x == "flow") && !p.ends_with("nesting_too_deep.flow") {
                        files.push(p);
                    }
                }
            }
            files.sort();
            for p in files {
                let text = std::fs::read_to_string(&p).unwrap();
                let a = Analysis::new(&p, text.clone(), &DiskLoader);
                let f = a.root();
                let mut answered = 0;
                for off in (0..=text.len()).filter(|o| text.is_char_boundary(*o)) {
                    answered += usize::from(a.hover(f, off).is_some());
                    let _ = a.definition(f, off);
                    if off % 3 == 0 {
                        let _ = a.references(f, off);
                    }
                    if off % 97 == 0 {
                        let _ = a.completions(off, &DiskLoader);
                    }
                }
                let _ = a.symbols(f);
                for d in &a.comp.diagnostics {
                    let _ = a.quick_fix(d);
                }
                assert!(answered > 0 || text.len() < 200, "no hover anywhere in {}", p.display());
            }
        })
        .unwrap()
        .join()
        .unwrap();
}
