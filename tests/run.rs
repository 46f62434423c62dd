//! End-to-end tests of `flowc run`: real .flow files, real input files, the real log,
//! driven through the `flowc` binary.

use std::path::Path;
use std::process::{Command, Output};

fn flowc(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowc")).current_dir(dir).args(args).output().expect("flowc runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const SCHEMA: &str = r#"
schema Txn { id: string, account: string, amount: decimal(12, 2), ts: timestamp, status: string }
schema Out { id: string, account: string, amount: decimal(12, 2), big: bool }
"#;

const INPUT: &str = r#"{"id":"t1","account":"a1","amount":12.50,"ts":1700000000000,"status":"approved"}
{"id":"t2","account":"a2","amount":2000.00,"ts":1700000000100,"status":"approved"}
this is not json
{"id":"t3","account":"a1","amount":"abc","ts":1700000000200,"status":"approved"}
{"id":"t4","account":"a3","amount":0.99,"ts":"2023-11-14T22:13:20.300Z","status":"declined"}
{"id":"t5","account":"a3","amount":5000.00,"ts":1700000000400,"status":"approved"}
"#;

fn setup(flow: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("txns.jsonl"), INPUT).expect("write input");
    std::fs::write(dir.path().join("p.flow"), format!("{SCHEMA}\n{flow}")).expect("write flow");
    dir
}

/// Runs `flow` with the JIT and with the interpreter; both must write the same output.
fn run_both_engines(flow: &str, out_file: &str) -> (String, String) {
    let mut outs = Vec::new();
    for jit in [true, false] {
        let dir = setup(flow);
        let mut args = vec!["run", "p.flow", "--data-dir", "data"];
        if !jit {
            args.push("--no-jit");
        }
        let o = flowc(dir.path(), &args);
        assert!(o.status.success(), "run failed: {}", text(&o.stderr));
        outs.push((std::fs::read_to_string(dir.path().join(out_file)).expect("output written"), text(&o.stderr)));
    }
    assert_eq!(outs[0].0, outs[1].0, "JIT and interpreter disagree");
    outs.remove(0)
}

#[test]
fn file_to_file_filter_and_projection() {
    let (out, summary) = run_both_engines(
        r#"
source bank: Txn = file("txns.jsonl") event_time ts watermark 5s dead_letter -> bad
sink bad = file("bad.jsonl")
sink out: Out = file("out.jsonl", format: json)
pipeline p = from bank
    | where status == "approved" and amount > 10.00
    | select { id, account, amount, big: amount >= 1000.00 }
    -> out
"#,
        "out.jsonl",
    );
    assert_eq!(
        out,
        concat!(
            r#"{"id":"t1","account":"a1","amount":12.50,"big":false}"#,
            "\n",
            r#"{"id":"t2","account":"a2","amount":2000.00,"big":true}"#,
            "\n",
            r#"{"id":"t5","account":"a3","amount":5000.00,"big":true}"#,
            "\n"
        )
    );
    assert!(summary.contains("ran 1 pipeline"), "{summary}");
}

#[test]
fn bad_records_are_dead_lettered_with_reasons() {
    let dir = setup(
        r#"
source bank: Txn = file("txns.jsonl") dead_letter -> bad
sink bad = file("bad.jsonl")
sink out = file("out.csv", format: csv)
pipeline p = from bank | select { id, amount } -> out
"#,
    );
    let o = flowc(dir.path(), &["run", "p.flow", "--data-dir", "data"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let bad = std::fs::read_to_string(dir.path().join("bad.jsonl")).expect("dead letters");
    let lines: Vec<&str> = bad.lines().collect();
    assert_eq!(lines.len(), 2, "{bad}");
    assert!(
        lines[0].contains(r#""source":"bank""#)
            && lines[0].contains("txns.jsonl:3")
            && lines[0].contains("not a JSON object"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("txns.jsonl:4") && lines[1].contains("field `amount`"), "{}", lines[1]);
    let csv = std::fs::read_to_string(dir.path().join("out.csv")).expect("csv");
    assert_eq!(csv, "id,amount\nt1,12.50\nt2,2000.00\nt4,0.99\nt5,5000.00\n");
    assert!(text(&o.stderr).contains("dead-lettered"), "{}", text(&o.stderr));
}

#[test]
fn strict_stops_at_the_first_bad_record() {
    let dir = setup(
        r#"
source bank: Txn = file("txns.jsonl")
sink out = stdout()
pipeline p = from bank -> out
"#,
    );
    let o = flowc(dir.path(), &["run", "p.flow", "--data-dir", "data", "--strict"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("txns.jsonl:3"), "{}", text(&o.stderr));
}

#[test]
fn default_dead_letter_topic_and_topic_to_topic() {
    let dir = setup(
        r#"
topic transactions: Txn { partitions: 2, key: account }
topic approved: Txn
source bank: Txn = file("txns.jsonl") event_time ts watermark 5s
sink out = file("approved.jsonl")
pipeline ingest = from bank -> transactions
pipeline keep = from transactions | where status == "approved" -> approved
pipeline show = from approved | select { id } -> out
"#,
    );
    let o = flowc(dir.path(), &["run", "p.flow", "--data-dir", "data"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut ids: Vec<String> =
        std::fs::read_to_string(dir.path().join("approved.jsonl")).expect("out").lines().map(String::from).collect();
    ids.sort();
    assert_eq!(ids, vec![r#"{"id":"t1"}"#, r#"{"id":"t2"}"#, r#"{"id":"t5"}"#]);
    // The source declares no dead-letter output: bad lines went to `bank.dlq`.
    let c = flowc(dir.path(), &["consume", "bank.dlq", "--data-dir", "data", "--from-beginning", "--max", "10"]);
    assert!(c.status.success(), "{}", text(&c.stderr));
    let dlq = text(&c.stdout);
    assert_eq!(dlq.lines().count(), 2, "{dlq}");
    assert!(dlq.contains("not a JSON object"), "{dlq}");
    // The topic keeps every good transaction, keyed by account.
    let c = flowc(
        dir.path(),
        &["consume", "transactions", "--data-dir", "data", "--from-beginning", "--format", "json", "--max", "10"],
    );
    let recs = text(&c.stdout);
    assert_eq!(recs.lines().count(), 4, "{recs}");
    assert!(recs.contains(r#""key":"a1""#), "{recs}");
    // A second run resumes where the pipelines' groups left off: nothing twice.
    let o = flowc(dir.path(), &["run", "p.flow", "--data-dir", "data", "--pipeline", "show"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(std::fs::read_to_string(dir.path().join("approved.jsonl")).expect("out"), "");
}

#[test]
fn runtime_expression_errors_name_the_span() {
    let dir = setup(
        r#"
source bank: Txn = file("txns.jsonl") dead_letter -> bad
sink bad = file("bad.jsonl")
sink out = file("out.jsonl")
pipeline p = from bank | where amount > 1000.00 | select { id, per: (amount as int) / (if id == "t5" then 0 else 1) } -> out
"#,
    );
    let o = flowc(dir.path(), &["run", "p.flow", "--data-dir", "data"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("out");
    assert_eq!(out, "{\"id\":\"t2\",\"per\":2000}\n");
    let bad = std::fs::read_to_string(dir.path().join("bad.jsonl")).expect("bad");
    assert!(bad.contains("division by zero"), "{bad}");
    // With --strict (and only well-formed lines) the failing expression stops the run.
    let good: String =
        INPUT.lines().filter(|l| l.contains("\"amount\":") && !l.contains("abc")).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.path().join("txns.jsonl"), good).expect("write");
    let o = flowc(dir.path(), &["run", "p.flow", "--data-dir", "data2", "--strict"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("division by zero") && err.contains("p.flow:9:"), "{err}");
}

#[test]
fn files_with_errors_never_run() {
    let dir = setup("sink out = stdout()\npipeline p = from nowhere -> out\n");
    let o = flowc(dir.path(), &["run", "p.flow", "--data-dir", "data"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("E0101"), "{}", text(&o.stderr));
    assert!(!dir.path().join("data").exists(), "nothing may run");
}

#[test]
fn stateful_pipelines_are_reported_not_silently_skipped() {
    let dir = setup(
        r#"
source bank: Txn = file("txns.jsonl") event_time ts watermark 5s
sink out = stdout()
sink counts = stdout()
pipeline copy = from bank | select { id } -> out
pipeline per_minute = from bank | dedup by id within 1m -> counts
"#,
    );
    let o = flowc(dir.path(), &["run", "p.flow", "--data-dir", "data"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("pipeline `per_minute` was not run") && err.contains("p.flow:10:"), "{err}");
    assert_eq!(text(&o.stdout).lines().count(), 4);
}

#[test]
fn generator_source_is_deterministic() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("g.flow"),
        r#"
schema T { id: string, account: string, amount: decimal(12, 2), ts: timestamp }
source gen: T = generator(transactions, count: 5000, seed: 7, keys: 100)
sink out = file("out.jsonl")
pipeline p = from gen | where amount > 500.00 -> out
"#,
    )
    .expect("write");
    let o = flowc(dir.path(), &["run", "g.flow", "--data-dir", "data"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let a = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("out");
    let o = flowc(dir.path(), &["run", "g.flow", "--data-dir", "data2", "--no-jit"]);
    assert!(o.status.success());
    let b = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("out");
    assert_eq!(a, b);
    let n = a.lines().count();
    assert!((2000..3500).contains(&n), "{n} of 5000 above 500.00");
}

/// Runs `pipeline` (its text after `pipeline p = from bids`) over 20,000 generated
/// Nexmark bids; the sorted lines it wrote to the sink `out` (a sink `l` exists too).
fn run_over_bids(pipeline: &str) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = format!(
        r#"
schema Bid {{ auction: int, bidder: int, price: int, channel: string, url: string, date_time: timestamp, extra: string }}
source bids: Bid = generator(nexmark, stream: bids, count: 20000, seed: 3) event_time date_time watermark 4s
sink out = file("out.jsonl")
sink l = file("late.jsonl")
pipeline p = from bids {pipeline}
"#
    );
    std::fs::write(dir.path().join("g.flow"), flow).expect("write");
    let o = flowc(dir.path(), &["run", "g.flow", "--data-dir", "data"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    sorted_lines(&dir.path().join("out.jsonl"))
}

#[test]
fn a_projection_pushed_into_a_generator_changes_no_result() {
    // `where | select` reads few of the bid's fields, so the generator fills only those
    // (and the event time); behind `key_by` the whole record is generated. Same output.
    let query = |head: &str| {
        run_over_bids(&format!(
            r#"{head}
    | where price > 10000 and not starts_with(extra, "f")
    | select {{ auction, c: length(extra) - length(replace(extra, "c", "")), hour: hour(date_time) }}
    -> out"#
        ))
    };
    let pushed = query("");
    assert!(pushed.len() > 1000, "{}", pushed.len());
    assert_eq!(pushed, query("| key_by bidder"));
}

#[test]
fn a_projection_pushed_into_a_generator_under_a_window_changes_no_result() {
    // The window reads its key, its aggregates' arguments and the event time; with a
    // late output the whole record may leave, so every field is generated. Same results.
    let query = |late: &str| {
        run_over_bids(&format!(
            "| key_by auction | window sliding(10s, every: 2s){late}
    | aggregate {{ n: count(), top: max(price), e: max(extra) }} -> out"
        ))
    };
    let pushed = query("");
    assert!(pushed.len() > 1000, "{}", pushed.len());
    assert_eq!(pushed, query(" late -> l"));
}

/// Sorted lines of a file (parallel runs write in any order).
fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> =
        std::fs::read_to_string(path).expect("output written").lines().map(str::to_string).collect();
    lines.sort();
    lines
}

#[test]
fn parallel_runs_with_a_hash_shuffle_give_the_same_records() {
    // 20,000 generated transactions through key_by (a hash exchange) and a fused stage.
    let flow = r#"
source gen: Txn = generator(transactions, seed: 7, count: 20000)
sink out: Out = file("out.jsonl", format: json)
pipeline p = from gen
    | where amount > 50.00
    | key_by account
    | where status == "approved"
    | select { id, account, amount, big: amount >= 1000.00 }
    -> out
"#;
    let mut outputs = Vec::new();
    for (parallelism, jit) in [("1", true), ("2", true), ("4", true), ("3", false)] {
        let dir = setup(flow);
        let mut args = vec!["run", "p.flow", "--data-dir", "data", "--parallelism", parallelism];
        if !jit {
            args.push("--no-jit");
        }
        let o = flowc(dir.path(), &args);
        assert!(o.status.success(), "--parallelism {parallelism}: {}", text(&o.stderr));
        let err = text(&o.stderr);
        assert!(err.contains(&format!("where | select x{parallelism}")), "per-stage summary: {err}");
        outputs.push(sorted_lines(&dir.path().join("out.jsonl")));
    }
    assert!(outputs[0].len() > 1000, "the filter keeps a good share: {}", outputs[0].len());
    for o in &outputs[1..] {
        assert_eq!(o, &outputs[0], "parallel runs disagree");
    }
}

#[test]
fn plan_shows_fusion_and_the_hash_exchange() {
    let dir = setup(
        r#"
source bank: Txn = file("txns.jsonl")
sink out: Out = file("out.jsonl", format: json)
pipeline p = from bank | where amount > 1.00 | key_by account | select { id, account, amount, big: false } -> out
"#,
    );
    let o = flowc(dir.path(), &["compile", "p.flow", "--emit", "physical", "--parallelism", "3"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let plan = text(&o.stdout);
    assert!(plan.contains("stage 1 x3 <- rebalance\n    fused filter"), "{plan}");
    assert!(plan.contains("stage 2 x3 <- hash(account)\n    fused project"), "{plan}");
    let o = flowc(dir.path(), &["compile", "p.flow", "--emit", "dot"]);
    assert!(text(&o.stdout).contains("\"p#1\" -> \"p#2\" [label=\"hash(account)\"]"), "{}", text(&o.stdout));
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_an_unbounded_run_and_flushes_its_sink() {
    // An endless generator (no count), rate-limited so the test stays small.
    let dir = setup(
        r#"
source gen: Txn = generator(transactions, seed: 1, rate: 20000)
sink out: Out = file("out.jsonl", format: json)
pipeline p = from gen | select { id, account, amount, big: amount >= 1000.00 } -> out
"#,
    );
    let child = Command::new(env!("CARGO_BIN_EXE_flowc"))
        .current_dir(dir.path())
        .args(["run", "p.flow", "--data-dir", "data"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("flowc starts");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill runs");
    assert!(killed.success());
    let o = child.wait_with_output().expect("flowc ends");
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("stopped by Ctrl-C"), "{err}");
    // The summary's count of records out is exactly what the file holds, each line whole.
    let written: u64 = err
        .lines()
        .find(|l| l.starts_with("p "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .expect("summary line for p");
    let lines = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("out");
    assert!(written > 0, "{err}");
    assert_eq!(lines.lines().count() as u64, written, "{err}");
    for l in lines.lines() {
        assert!(l.starts_with("{\"id\":") && l.ends_with('}'), "a torn line: {l}");
    }
}

#[test]
fn bench_commands_run_the_real_queries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o =
        flowc(dir.path(), &["bench", "nexmark", "--query", "q2", "--query", "q14", "--events", "20000", "--runs", "1"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let rows = |q: &str| -> u64 {
        let line = out.lines().find(|l| l.starts_with(q)).unwrap_or_else(|| panic!("{q} in {out}"));
        line.split_whitespace().nth(2).and_then(|n| n.parse().ok()).expect("rows out")
    };
    assert!(rows("q2 ") > 0 && rows("q2 ") < 1000, "{out}");
    assert!(rows("q14") > 1000, "{out}");
    let o = flowc(dir.path(), &["bench", "nexmark", "--query", "q9"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("no Nexmark query `q9`"), "{}", text(&o.stderr));
    let o = flowc(dir.path(), &["bench", "ingest", "--lines", "2000", "--runs", "1"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("2000 lines"), "{}", text(&o.stdout));
}

#[test]
fn topic_inputs_start_where_asked() {
    let dir = setup(
        r#"
topic transactions: Txn { partitions: 2, key: account }
source bank: Txn = file("txns.jsonl") event_time ts watermark 5s dead_letter -> bad
sink bad = file("bad.jsonl")
sink out = file("out.jsonl")
pipeline ingest = from bank -> transactions
pipeline show = from transactions | select { id } -> out
"#,
    );
    let ids = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_to_string(dir.join("out.jsonl")).expect("out").lines().map(String::from).collect();
        v.sort();
        v
    };
    let all = vec![r#"{"id":"t1"}"#, r#"{"id":"t2"}"#, r#"{"id":"t4"}"#, r#"{"id":"t5"}"#];
    let o = flowc(dir.path(), &["run", "p.flow", "--data-dir", "data"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(ids(dir.path()), all);
    // The group has read everything: committed gives nothing, earliest everything again.
    for (from, want) in [
        ("committed", vec![]),
        ("earliest", all.clone()),
        ("latest", vec![]),
        // Event time is the topic's record timestamp: t4 at ...300, t5 at ...400.
        ("2023-11-14T22:13:20.300Z", vec![r#"{"id":"t4"}"#, r#"{"id":"t5"}"#]),
        ("1700000000400", vec![r#"{"id":"t5"}"#]),
    ] {
        let o = flowc(dir.path(), &["run", "p.flow", "--data-dir", "data", "--pipeline", "show", "--from", from]);
        assert!(o.status.success(), "--from {from}: {}", text(&o.stderr));
        assert_eq!(ids(dir.path()), want, "--from {from}");
    }
    let o = flowc(dir.path(), &["run", "p.flow", "--data-dir", "data", "--from", "yesterday"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("is not committed, earliest, latest"), "{}", text(&o.stderr));
}

#[test]
fn bad_records_in_a_topic_go_to_its_dead_letter_topic() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("p.flow"),
        r#"
schema N { id: int }
topic numbers: N { partitions: 1 }
sink out: N = file("out.jsonl")
pipeline a = from numbers -> out
pipeline b = from numbers | where id > 1 -> out
"#,
    )
    .expect("flow");
    let o = flowc(dir.path(), &["topic", "create", "numbers", "--partitions", "1", "--data-dir", "data"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut p = Command::new(env!("CARGO_BIN_EXE_flowc"))
        .current_dir(dir.path())
        .args(["produce", "numbers", "--raw", "--data-dir", "data"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("produce");
    use std::io::Write as _;
    p.stdin.take().expect("stdin").write_all(b"{\"id\":1}\n{\"id\":\"oops\"}\nnot json\n{\"id\":3}\n").expect("write");
    assert!(p.wait().expect("produce ends").success());
    // Two pipelines read the topic: both dead-letter into the one `numbers.dlq`.
    let o = flowc(dir.path(), &["run", "p.flow", "--data-dir", "data"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut out: Vec<String> =
        std::fs::read_to_string(dir.path().join("out.jsonl")).expect("out").lines().map(String::from).collect();
    out.sort();
    assert_eq!(out, vec![r#"{"id":1}"#, r#"{"id":3}"#, r#"{"id":3}"#]);
    let c = flowc(dir.path(), &["consume", "numbers.dlq", "--data-dir", "data", "--from-beginning", "--max", "10"]);
    assert!(c.status.success(), "{}", text(&c.stderr));
    let dlq = text(&c.stdout);
    assert_eq!(dlq.lines().count(), 4, "{dlq}");
    assert_eq!(dlq.matches("topic numbers partition 0 offset 1").count(), 2, "{dlq}");
    assert_eq!(dlq.matches("topic numbers partition 0 offset 2").count(), 2, "{dlq}");
}
