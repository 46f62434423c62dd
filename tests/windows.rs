//! End-to-end tests of event-time windows through the real `flowc` binary.
//!
//! - Golden comparisons with Apache Flink 2.3: `tests/golden/windows/` holds the inputs
//!   and Flink's own outputs from `../shared/golden/windows` (medium gzipped; its README
//!   says how they were made and what each rule is). Every case runs the matching .flow
//!   and must give Flink's rows byte for byte once sorted the golden way; the records
//!   flow routes to the late output must be exactly the ones Flink dropped.
//! - Hand-computed cases: allowed lateness with revisions, early results, unkeyed
//!   windows, every aggregate, disorder.
//! - Determinism: five runs give identical bytes; parallelism 1 and 2 give the same rows.
//!
//! Every case runs with both state backends and with the JIT and the interpreter.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn flowc(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowc")).current_dir(dir).args(args).output().expect("flowc runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/windows")
}

/// A golden file's bytes (gzipped ones decompressed).
fn golden(name: &str) -> Vec<u8> {
    let dir = golden_dir();
    let plain = dir.join(name);
    if plain.exists() {
        return std::fs::read(plain).expect("golden file");
    }
    let gz = std::fs::File::open(dir.join(format!("{name}.gz"))).unwrap_or_else(|e| panic!("{name}(.gz): {e}"));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut out).expect("gunzip");
    out
}

const SCHEMA: &str =
    "schema Event { id: string, account: string, merchant: string, amount: decimal(12, 2), ts: timestamp }";

fn window_spec(variant: &str) -> &'static str {
    match variant {
        "tumble" => "tumbling(60s)",
        "hop" => "sliding(60s, every: 10s)",
        "session" => "session(gap: 30s)",
        v => panic!("variant {v}"),
    }
}

/// The .flow of one golden variant: Flink's job, in flow.
fn golden_flow(variant: &str) -> String {
    let head = format!(
        "{SCHEMA}\nsource events: Event = file(\"input.jsonl\", format: json) event_time ts watermark 5s\n\
         sink out = file(\"out.csv\", format: csv)\nsink late_out = file(\"late.jsonl\", format: json)\n"
    );
    if variant == "filter" {
        return format!(
            "{head}pipeline p = from events | where amount > 900.00 \
             | select {{ id, account, merchant, amount, ts: ts as int }} -> out\n"
        );
    }
    format!(
        "{head}pipeline p = from events\n    | key_by account\n    | window {} late -> late_out\n    \
         | aggregate {{ cnt: count(), total: sum(amount), max: max(amount) }}\n    \
         | select {{ window_start: window_start as int, window_end: window_end as int, account, cnt, total, max }}\n    \
         -> out\n",
        window_spec(variant)
    )
}

/// Sorts CSV rows (after the header) the golden way.
fn sort_golden(csv: &str, variant: &str) -> String {
    let mut lines = csv.lines();
    let header = lines.next().unwrap_or_default().to_string();
    let mut rows: Vec<Vec<String>> = lines.map(|l| l.split(',').map(str::to_string).collect()).collect();
    let num = |s: &str| s.parse::<i64>().expect("number");
    if variant == "filter" {
        rows.sort_by(|a, b| (num(&a[4]), &a[0]).cmp(&(num(&b[4]), &b[0])));
    } else {
        rows.sort_by(|a, b| (num(&a[0]), num(&a[1]), a[2].as_bytes()).cmp(&(num(&b[0]), num(&b[1]), b[2].as_bytes())));
    }
    let mut out = header + "\n";
    for r in rows {
        out.push_str(&r.join(","));
        out.push('\n');
    }
    out
}

/// Engine and state backend combinations every case runs with.
fn configs() -> Vec<Vec<&'static str>> {
    // RocksDB with no memory budget: every window is spilled after every batch and read
    // back when a record or the watermark needs it, so the spill path runs everywhere.
    vec![vec![], vec!["--no-jit"], vec!["--state-backend", "rocksdb", "--state-memory", "0"]]
}

struct Run {
    dir: tempfile::TempDir,
    stderr: String,
}

fn run_flow(flow: &str, input: &[u8], extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("input.jsonl"), input).expect("input");
    std::fs::write(dir.path().join("p.flow"), flow).expect("flow");
    let mut args = vec!["run", "p.flow", "--data-dir", "data"];
    args.extend_from_slice(extra);
    let o = flowc(dir.path(), &args);
    assert!(o.status.success(), "flowc {args:?} failed: {}", text(&o.stderr));
    Run { stderr: text(&o.stderr), dir }
}

impl Run {
    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn late_ids(&self) -> BTreeSet<String> {
        self.read("late.jsonl")
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("late record is JSON");
                v["id"].as_str().expect("id").to_string()
            })
            .collect()
    }
}

/// Flink's late counts from the golden README: (case, tumble, hop, session).
const LATE: [(&str, usize, usize, usize); 3] = [("edge", 3, 1, 3), ("small", 22, 8, 11), ("medium", 93, 70, 76)];

fn check_golden(case: &str, variant: &str, extra: &[&str]) {
    let input = golden(&format!("{case}.input.jsonl"));
    let want = String::from_utf8(golden(&format!("{case}.{variant}.csv"))).expect("utf-8");
    let run = run_flow(&golden_flow(variant), &input, extra);
    let got = sort_golden(&run.read("out.csv"), variant);
    if got != want {
        let diff: Vec<String> = got
            .lines()
            .zip(want.lines())
            .enumerate()
            .filter(|(_, (g, w))| g != w)
            .take(5)
            .map(|(i, (g, w))| format!("line {}: flow {g:?}\n         flink {w:?}", i + 1))
            .collect();
        panic!(
            "{case}.{variant} {extra:?}: {} rows from flow, {} from Flink; first differences:\n{}",
            got.lines().count(),
            want.lines().count(),
            diff.join("\n")
        );
    }
    if variant == "filter" {
        return;
    }
    // Late records: exactly the ones Flink dropped.
    let late = run.late_ids();
    let (_, t, h, s) = LATE.iter().find(|l| l.0 == case).copied().expect("case");
    let expected = match variant {
        "tumble" => t,
        "hop" => h,
        _ => s,
    };
    assert_eq!(late.len(), expected, "{case}.{variant}: late records {late:?}");
    assert!(run.stderr.contains(&format!("{expected} late record")), "the summary reports them: {}", run.stderr);
    if variant != "hop" {
        // Every record is either counted in Flink's output or late, never both.
        let events = input.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
        let counted: usize =
            want.lines().skip(1).map(|l| l.split(',').nth(3).expect("cnt").parse::<usize>().expect("n")).sum();
        assert_eq!(counted + late.len(), events, "{case}.{variant}");
    }
    if case == "edge" {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let want = match variant {
            "tumble" => ids(&["e0000000006", "e0000000021", "e0000000034"]),
            "hop" => ids(&["e0000000034"]),
            _ => ids(&["e0000000021", "e0000000026", "e0000000034"]),
        };
        assert_eq!(late, want, "edge.{variant}: the README's dropped lines");
    }
}

#[test]
fn golden_edge_matches_flink() {
    for cfg in configs() {
        for v in ["tumble", "hop", "session", "filter"] {
            check_golden("edge", v, &cfg);
        }
    }
}

#[test]
fn golden_small_matches_flink() {
    for cfg in configs() {
        for v in ["tumble", "hop", "session", "filter"] {
            check_golden("small", v, &cfg);
        }
    }
}

#[test]
fn golden_medium_matches_flink() {
    for cfg in configs() {
        for v in ["tumble", "hop", "session", "filter"] {
            check_golden("medium", v, &cfg);
        }
    }
}

#[test]
fn single_partition_runs_are_deterministic_across_runs_and_parallelism() {
    let input = golden("small.input.jsonl");
    for v in ["tumble", "hop", "session"] {
        let flow = golden_flow(v);
        let first = run_flow(&flow, &input, &[]).read("out.csv");
        for _ in 0..4 {
            assert_eq!(run_flow(&flow, &input, &[]).read("out.csv"), first, "{v}: byte-identical runs");
        }
        for p in ["2", "3"] {
            let other = run_flow(&flow, &input, &["--parallelism", p]);
            assert_eq!(sort_golden(&other.read("out.csv"), v), sort_golden(&first, v), "{v}: parallelism {p}");
            assert_eq!(other.late_ids().len(), run_flow(&flow, &input, &[]).late_ids().len());
        }
    }
}

fn events(rows: &[(&str, &str, &str, i64)]) -> Vec<u8> {
    let mut s = String::new();
    for (i, (account, merchant, amount, ts)) in rows.iter().enumerate() {
        s.push_str(&format!(
            "{{\"id\":\"e{i}\",\"account\":\"{account}\",\"merchant\":\"{merchant}\",\"amount\":{amount},\"ts\":{ts}}}\n"
        ));
    }
    s.into_bytes()
}

/// Runs `pipeline` (over source `events`, into sinks `out` (JSON) and `late_out`) with
/// every configuration; all must agree. Returns the output lines sorted, and the run.
fn hand(pipeline: &str, input: &[u8], watermark: &str) -> (Vec<String>, Run) {
    let flow = format!(
        "{SCHEMA}\nsource events: Event = file(\"input.jsonl\", format: json) event_time ts watermark {watermark}\n\
         sink out = file(\"out.jsonl\", format: json)\nsink late_out = file(\"late.jsonl\", format: json)\n{pipeline}\n"
    );
    let mut first: Option<(Vec<String>, Run)> = None;
    for cfg in configs() {
        let run = run_flow(&flow, input, &cfg);
        let mut lines: Vec<String> = run.read("out.jsonl").lines().map(str::to_string).collect();
        lines.sort();
        match &first {
            None => first = Some((lines, run)),
            Some((f, _)) => assert_eq!(&lines, f, "{cfg:?} disagrees"),
        }
    }
    first.expect("a run")
}

const B: i64 = 1_700_000_040_000; // a whole minute

#[test]
fn allowed_lateness_fires_again_with_the_next_revision() {
    let input = events(&[
        ("a", "m1", "1.00", B + 1_000),
        ("a", "m1", "2.00", B + 30_000),
        ("w", "m1", "0.01", B + 61_000), // W = B + 60_999 - 1s: [B, B+60s) fires (rev 0)
        ("a", "m1", "4.00", B + 59_000), // within 30 s of lateness: rev 1 at once
        ("w", "m1", "0.01", B + 95_000), // W = B + 94_999 >= end - 1 + 30 s: [B, B+60s) is gone
        ("a", "m1", "8.00", B + 59_500), // late: routed
    ]);
    let (out, run) = hand(
        "pipeline p = from events | key_by account | window tumbling(1m) allowed_lateness 30s late -> late_out \
         | aggregate { n: count(), total: sum(amount) } | select { account, start: window_start as int, n, total, revision } -> out",
        &input,
        "1s",
    );
    let a: Vec<&String> = out.iter().filter(|l| l.contains("\"a\"")).collect();
    assert_eq!(
        a,
        vec![
            &format!("{{\"account\":\"a\",\"start\":{B},\"n\":2,\"total\":3.00,\"revision\":0}}"),
            &format!("{{\"account\":\"a\",\"start\":{B},\"n\":3,\"total\":7.00,\"revision\":1}}"),
        ]
    );
    assert_eq!(run.late_ids(), BTreeSet::from(["e5".to_string()]));
}

#[test]
fn emit_every_gives_early_results_then_the_final_one() {
    // Watermark delay 0: each record is judged by the largest time before it.
    let input = events(&[
        ("a", "m1", "1.00", B + 1_000),
        ("a", "m1", "2.00", B + 12_000),
        ("a", "m1", "3.00", B + 15_000), // W = B + 12s passes B + 10s: early result, n 2
        ("a", "m1", "4.00", B + 25_000),
        ("a", "m1", "5.00", B + 61_000), // W = B + 25s passes B + 20s: early result, n 4
    ]); // end of input: the final result (n 4 again, revision 2); B + 60s holds one record
    let (out, _) = hand(
        "pipeline p = from events | key_by account | window tumbling(1m) emit every 10s \
         | aggregate { n: count() } | select { account, start: window_start as int, n, revision } -> out",
        &input,
        "0s",
    );
    let a: Vec<String> = out.iter().filter(|l| l.contains(&format!("\"start\":{B}"))).cloned().collect();
    let want: Vec<String> = [(2, 0), (4, 1), (4, 2)]
        .iter()
        .map(|(n, r)| format!("{{\"account\":\"a\",\"start\":{B},\"n\":{n},\"revision\":{r}}}"))
        .collect();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(a, want_sorted);
}

#[test]
fn an_unkeyed_window_with_every_aggregate_over_disordered_input() {
    let input = events(&[
        ("b", "m2", "5.00", B + 20_000),
        ("a", "m1", "1.50", B + 10_000), // 10 s out of order: within the 15 s delay
        ("c", "m1", "7.25", B + 50_000),
        ("a", "m3", "0.25", B + 5_000),
        ("z", "m9", "99.00", B + 70_000), // next window
    ]);
    let (out, run) = hand(
        "pipeline p = from events | window tumbling(1m) \
         | aggregate { n: count(), total: sum(amount), lo: min(amount), hi: max(account), mean: avg(amount), \
                       shops: count_distinct(merchant), first_acct: first(account), last_acct: last(account), \
                       busy: count() > 3 and max(amount) > 7.00 } \
         | select { start: window_start as int, n, total, lo, hi, mean, shops, first_acct, last_acct, busy } -> out",
        &input,
        "15s",
    );
    assert_eq!(out.len(), 2, "{out:?}");
    let first = format!(
        "{{\"start\":{B},\"n\":4,\"total\":14.00,\"lo\":0.25,\"hi\":\"c\",\"mean\":3.500000,\"shops\":3,\
         \"first_acct\":\"a\",\"last_acct\":\"c\",\"busy\":true}}"
    );
    assert!(out.contains(&first), "{out:?}");
    assert!(run.late_ids().is_empty());
}

#[test]
fn sessions_merge_when_a_record_bridges_them() {
    let input = events(&[
        ("a", "m1", "1.00", B),
        ("a", "m1", "2.00", B + 40_000),  // gap 30 s: a second session
        ("a", "m1", "4.00", B + 20_000),  // touches both (B+20s <= B+30s, B+50s >= B+40s): one session
        ("a", "m1", "8.00", B + 200_000), // closes it
    ]);
    let (out, _) = hand(
        "pipeline p = from events | key_by account | window session(gap: 30s) \
         | aggregate { n: count(), total: sum(amount) } \
         | select { account, start: window_start as int, end: window_end as int, n, total } -> out",
        &input,
        "30s",
    );
    assert!(
        out.contains(&format!("{{\"account\":\"a\",\"start\":{B},\"end\":{},\"n\":3,\"total\":7.00}}", B + 70_000)),
        "{out:?}"
    );
    assert_eq!(out.len(), 2);
}

#[test]
fn a_window_over_a_topic_written_in_the_same_run() {
    // The flagship's shape: a file into a keyed topic with 4 partitions, windows over it.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("input.jsonl"), golden("small.input.jsonl")).expect("input");
    let flow = format!(
        "{SCHEMA}\nsource events: Event = file(\"input.jsonl\", format: json) event_time ts watermark 5s\n\
         topic all_events: Event {{ partitions: 4, key: account }}\nsink out = file(\"out.csv\", format: csv)\n\
         pipeline ingest = from events -> all_events\n\
         pipeline w = from all_events | key_by account | window tumbling(60s) \
         | aggregate {{ cnt: count(), total: sum(amount), max: max(amount) }} \
         | select {{ window_start: window_start as int, window_end: window_end as int, account, cnt, total, max }} -> out\n"
    );
    std::fs::write(dir.path().join("p.flow"), flow).expect("flow");
    let o = flowc(dir.path(), &["run", "p.flow", "--data-dir", "data"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let got = std::fs::read_to_string(dir.path().join("out.csv")).expect("out");
    // Every record is counted once (per-partition watermarks make none late here: the
    // input's disorder is within the delay except the very late ones).
    let counted: usize =
        got.lines().skip(1).map(|l| l.split(',').nth(3).expect("cnt").parse::<usize>().expect("n")).sum();
    let late = text(&o.stderr);
    assert!(counted > 1900 && counted <= 2000, "{counted} {late}");
}

#[test]
fn the_flagship_flags_amount_and_velocity_spikes() {
    // The real examples/fraud_detection.flow over its data, in a scratch copy.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().expect("tempdir");
    let ex = dir.path().join("examples");
    std::fs::create_dir_all(ex.join("data")).expect("dirs");
    std::fs::copy(root.join("examples/fraud_detection.flow"), ex.join("fraud_detection.flow")).expect("flow");
    std::fs::copy(root.join("examples/data/txns.jsonl"), ex.join("data/txns.jsonl")).expect("data");
    let o = flowc(dir.path(), &["run", "examples/fraud_detection.flow", "--data-dir", "data"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("pipeline `card_testing` was not run"), "{err}");
    let mut alerts: Vec<String> = std::fs::read_to_string(dir.path().join("out/alerts.jsonl"))
        .expect("alerts")
        .lines()
        .map(str::to_string)
        .collect();
    alerts.sort();
    assert_eq!(
        alerts,
        vec![
            r#"{"account":"acc-1007","window_end":1709284860000,"total":12200.24,"n":5,"reason":"amount"}"#,
            r#"{"account":"acc-1011","window_end":1709285160000,"total":219.78,"n":22,"reason":"velocity"}"#,
        ]
    );
    // Same alerts in the topic, which the notify pipeline copied to the file.
    let o = flowc(dir.path(), &["consume", "alerts", "--data-dir", "data", "--from-beginning"]);
    assert_eq!(text(&o.stdout).lines().count(), 2, "{}", text(&o.stderr));
}

#[test]
fn an_unwindowed_aggregate_updates_per_record_and_forgets_idle_keys_in_event_time() {
    let input = events(&[
        ("a", "m1", "1.00", B),
        ("a", "m1", "2.00", B + 10_000),
        ("b", "m1", "4.00", B + 20_000),
        ("a", "m1", "8.00", B + 80_000), // W = B + 20s before it: `a` is still held (10s + 60s > 20s)
        ("b", "m1", "16.00", B + 200_000), // W = B + 80s >= 20s + 60s: `b` was forgotten
    ]);
    let (out, _) = hand(
        "pipeline p = from events | key_by account | aggregate { n: count(), total: sum(amount) } ttl 60s -> out",
        &input,
        "0s",
    );
    assert_eq!(
        out,
        vec![
            r#"{"account":"a","n":1,"total":1.00}"#,
            r#"{"account":"a","n":2,"total":3.00}"#,
            r#"{"account":"a","n":3,"total":11.00}"#,
            r#"{"account":"b","n":1,"total":16.00}"#,
            r#"{"account":"b","n":1,"total":4.00}"#,
        ]
    );
}
