//! End-to-end tests of the log's CLI contract, driving the real `flowc` binary:
//! `flowc topic create|list|describe|delete`, `flowc produce`, `flowc consume`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn flowc(data: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowc"));
    cmd.args(args).arg("--data-dir").arg(data).env_remove("FLOW_DATA_DIR");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn flowc");
    let mut pipe = child.stdin.take().unwrap();
    if let Some(input) = stdin {
        // flowc may exit (with an error) before reading its input.
        let _ = pipe.write_all(input.as_bytes());
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "flowc failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn fails(o: &Output) -> String {
    assert!(!o.status.success(), "flowc should have failed; stdout: {}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
fn topic_lifecycle() {
    let d = tempfile::tempdir().unwrap();
    let dd = d.path();
    assert_eq!(ok(&flowc(dd, &["topic", "list"], None)), "");
    ok(&flowc(
        dd,
        &["topic", "create", "orders", "--partitions", "3", "--retention", "2d", "--retention-bytes", "1000000"],
        None,
    ));
    ok(&flowc(dd, &["topic", "create", "audit"], None));
    assert_eq!(lines(&ok(&flowc(dd, &["topic", "list"], None))), vec!["audit", "orders"]);
    let err = fails(&flowc(dd, &["topic", "create", "orders"], None));
    assert!(err.contains("already exists"), "{err}");
    let err = fails(&flowc(dd, &["topic", "create", "bad/name"], None));
    assert!(err.contains("invalid topic name"), "{err}");
    let err = fails(&flowc(dd, &["topic", "create", "x", "--retention", "soon"], None));
    assert!(err.contains("invalid retention"), "{err}");
    let err = fails(&flowc(dd, &["topic", "create", "x", "--partitions", "0"], None));
    assert!(err.contains("partitions"), "{err}");

    let desc = ok(&flowc(dd, &["topic", "describe", "orders"], None));
    assert!(
        desc.contains("partitions 3") && desc.contains("retention 2days") && desc.contains("retention bytes 1000000"),
        "{desc}"
    );
    let rows: Vec<Vec<&str>> = desc.lines().skip(2).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows, vec![vec!["0", "0", "0", "0", "1"], vec!["1", "0", "0", "0", "1"], vec!["2", "0", "0", "0", "1"]]);

    ok(&flowc(dd, &["topic", "delete", "orders"], None));
    assert_eq!(lines(&ok(&flowc(dd, &["topic", "list"], None))), vec!["audit"]);
    let err = fails(&flowc(dd, &["topic", "describe", "orders"], None));
    assert!(err.contains("unknown topic `orders`"), "{err}");
    let err = fails(&flowc(dd, &["topic", "delete", "orders"], None));
    assert!(err.contains("unknown topic"), "{err}");
}

#[test]
fn produce_and_consume_round_trip_with_keys_on_kafka_partitions() {
    let d = tempfile::tempdir().unwrap();
    let dd = d.path();
    ok(&flowc(dd, &["topic", "create", "ev", "--partitions", "3"], None));
    let mut input = String::new();
    for i in 0..30 {
        input.push_str(&format!("{{\"user\":\"u{}\",\"n\":{i}}}\n", i % 7));
    }
    let out = ok(&flowc(dd, &["produce", "ev", "--key-field", "user"], Some(&input)));
    assert_eq!(out.trim(), "30 records acknowledged");
    let out = ok(&flowc(dd, &["consume", "ev", "--from-beginning", "--format", "json"], None));
    let recs: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs.len(), 30);
    let mut seen_n = Vec::new();
    let mut last_offset = std::collections::HashMap::new();
    for r in &recs {
        let key = r["key"].as_str().unwrap();
        let p = r["partition"].as_u64().unwrap() as u32;
        // Kafka's default partitioner: toPositive(murmur2(key)) % 3
        assert_eq!(p, flow_runtime::log::partitioner::partition_for_key(key.as_bytes(), 3), "key {key}");
        let value: serde_json::Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
        assert_eq!(value["user"], key);
        let off = r["offset"].as_u64().unwrap();
        let prev = last_offset.insert(p, off);
        assert_eq!(prev.map_or(0, |o| o + 1), off, "dense offsets per partition");
        assert!(r["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
        seen_n.push(value["n"].as_u64().unwrap());
    }
    seen_n.sort();
    assert_eq!(seen_n, (0..30).collect::<Vec<_>>());
    // The line starts with the documented field order.
    assert!(out.starts_with("{\"partition\":"), "{out}");

    // value format, one partition, --offset and --max
    let p0 = flow_runtime::log::partitioner::partition_for_key(b"u0", 3).to_string();
    let out = ok(&flowc(dd, &["consume", "ev", "--partition", &p0, "--offset", "1", "--max", "2"], None));
    let vals: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(vals.len(), 2);
    // Default start is the end (as Kafka's console consumer): nothing new to print.
    assert_eq!(ok(&flowc(dd, &["consume", "ev"], None)), "");
}

#[test]
fn raw_lines_and_os_acks() {
    let d = tempfile::tempdir().unwrap();
    let dd = d.path();
    ok(&flowc(dd, &["topic", "create", "raw"], None));
    let out = ok(&flowc(dd, &["produce", "raw", "--raw", "--acks", "os"], Some("plain text\n{not json\n\nlast")));
    assert_eq!(out.trim(), "4 records acknowledged");
    let out = ok(&flowc(dd, &["consume", "raw", "--from-beginning"], None));
    assert_eq!(out, "plain text\n{not json\n\nlast\n");
    let err = fails(&flowc(dd, &["produce", "raw", "--acks", "sometimes"], Some("")));
    assert!(err.contains("sometimes"), "{err}");
}

#[test]
fn malformed_lines_are_reported_and_skipped_unless_strict() {
    let d = tempfile::tempdir().unwrap();
    let dd = d.path();
    ok(&flowc(dd, &["topic", "create", "m"], None));
    let input = "{\"a\":1}\n{broken\n{\"a\":3}\n[1,2\n{\"a\":5}\n";
    let o = flowc(dd, &["produce", "m"], Some(input));
    let out = ok(&o);
    assert_eq!(out.trim(), "3 records acknowledged");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 2") && err.contains("line 4"), "{err}");
    let o = flowc(dd, &["produce", "m", "--strict"], Some(input));
    let err = fails(&o);
    assert!(err.contains("line 2"), "{err}");
    assert!(!err.contains("line 4"), "strict stops at the first bad line: {err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "1 records acknowledged");
    let out = ok(&flowc(dd, &["consume", "m", "--from-beginning"], None));
    assert_eq!(lines(&out), vec!["{\"a\":1}", "{\"a\":3}", "{\"a\":5}", "{\"a\":1}"]);
}

#[test]
fn consumer_group_resumes_where_it_left_off() {
    let d = tempfile::tempdir().unwrap();
    let dd = d.path();
    ok(&flowc(dd, &["topic", "create", "g"], None));
    let input: String = (0..10).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    ok(&flowc(dd, &["produce", "g"], Some(&input)));
    let a = ok(&flowc(dd, &["consume", "g", "--group", "grp", "--from-beginning", "--max", "4"], None));
    assert_eq!(lines(&a).len(), 4);
    assert_eq!(lines(&a)[0], "{\"i\":0}");
    let b = ok(&flowc(dd, &["consume", "g", "--group", "grp", "--from-beginning", "--max", "4"], None));
    assert_eq!(lines(&b), vec!["{\"i\":4}", "{\"i\":5}", "{\"i\":6}", "{\"i\":7}"]);
    let c = ok(&flowc(dd, &["consume", "g", "--group", "grp"], None));
    assert_eq!(lines(&c), vec!["{\"i\":8}", "{\"i\":9}"]);
    assert_eq!(ok(&flowc(dd, &["consume", "g", "--group", "grp"], None)), "");
    // Another group starts over.
    assert_eq!(lines(&ok(&flowc(dd, &["consume", "g", "--group", "other", "--from-beginning"], None))).len(), 10);
}

#[test]
fn consume_from_time() {
    let d = tempfile::tempdir().unwrap();
    let dd = d.path();
    ok(&flowc(dd, &["topic", "create", "t"], None));
    ok(&flowc(dd, &["produce", "t"], Some("{\"x\":1}\n")));
    std::thread::sleep(Duration::from_millis(30));
    let mid = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    std::thread::sleep(Duration::from_millis(30));
    ok(&flowc(dd, &["produce", "t"], Some("{\"x\":2}\n")));
    let out = ok(&flowc(dd, &["consume", "t", "--from-time", &mid.to_string()], None));
    assert_eq!(out, "{\"x\":2}\n");
    let out = ok(&flowc(dd, &["consume", "t", "--from-time", "2000-01-01T00:00:00Z"], None));
    assert_eq!(lines(&out).len(), 2);
    let out = ok(&flowc(dd, &["consume", "t", "--from-time", "2999-01-01T00:00:00+02:00"], None));
    assert_eq!(out, "");
    let err = fails(&flowc(dd, &["consume", "t", "--from-time", "noon"], None));
    assert!(err.contains("invalid time"), "{err}");
}

#[test]
fn errors_are_diagnostics_with_non_zero_exit() {
    let d = tempfile::tempdir().unwrap();
    let dd = d.path();
    let err = fails(&flowc(dd, &["consume", "missing"], None));
    assert!(err.contains("unknown topic `missing`") && err.contains("flow::log::unknown_topic"), "{err}");
    let err = fails(&flowc(dd, &["produce", "missing"], Some("{}\n")));
    assert!(err.contains("unknown topic"), "{err}");
    ok(&flowc(dd, &["topic", "create", "t"], None));
    ok(&flowc(dd, &["produce", "t"], Some("{}\n{}\n")));
    let err = fails(&flowc(dd, &["consume", "t", "--offset", "5"], None));
    assert!(err.contains("out of range"), "{err}");
    let err = fails(&flowc(dd, &["consume", "t", "--offset", "1", "--from-beginning"], None));
    assert!(err.contains("cannot be used with"), "{err}");
    let err = fails(&flowc(dd, &["consume", "t", "--partition", "4"], None));
    assert!(err.contains("partition 4"), "{err}");
}

#[test]
fn corrupt_data_is_an_error_naming_the_offset() {
    let d = tempfile::tempdir().unwrap();
    let dd = d.path();
    ok(&flowc(dd, &["topic", "create", "c"], None));
    for i in 0..3 {
        ok(&flowc(dd, &["produce", "c"], Some(&format!("{{\"i\":{i},\"pad\":\"xxxxxxxxxxxxxxxx\"}}\n"))));
    }
    let log = dd.join("c/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let batch = bytes.len() / 3;
    bytes[batch + 70] ^= 0x10; // inside the second batch (offset 1)
    std::fs::write(&log, &bytes).unwrap();
    let err = fails(&flowc(dd, &["consume", "c", "--from-beginning"], None));
    assert!(
        err.contains("offset 1") && err.contains("partition 0") && err.contains("00000000000000000000.log"),
        "{err}"
    );
    assert!(err.contains("flow::log::corrupt"), "{err}");
    let err = fails(&flowc(dd, &["produce", "c"], Some("{}\n")));
    assert!(err.contains("offset 1"), "{err}");
    assert_eq!(std::fs::read(&log).unwrap(), bytes, "nothing was truncated or rewritten");
}

#[test]
fn follow_sees_records_from_another_process() {
    let d = tempfile::tempdir().unwrap();
    let dd = d.path();
    ok(&flowc(dd, &["topic", "create", "f", "--partitions", "2"], None));
    let child = Command::new(env!("CARGO_BIN_EXE_flowc"))
        .args(["consume", "f", "--follow", "--max", "5", "--data-dir"])
        .arg(dd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    ok(&flowc(dd, &["produce", "f"], Some("{\"n\":1}\n{\"n\":2}\n")));
    std::thread::sleep(Duration::from_millis(200));
    ok(&flowc(dd, &["produce", "f"], Some("{\"n\":3}\n{\"n\":4}\n{\"n\":5}\n{\"n\":6}\n")));
    let start = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(start.elapsed() < Duration::from_secs(20));
    let text = ok(&out);
    let mut got: Vec<&str> = lines(&text);
    assert_eq!(got.len(), 5, "{text}");
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 5, "no duplicates: {text}");
}

#[test]
fn data_dir_comes_from_the_environment() {
    let d = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_flowc"))
        .args(["topic", "create", "envtopic"])
        .env("FLOW_DATA_DIR", d.path())
        .output()
        .unwrap();
    ok(&o);
    assert!(d.path().join("envtopic/meta.json").is_file());
}

#[test]
fn a_reader_that_goes_away_ends_consume_quietly() {
    use std::io::BufRead;
    let d = tempfile::tempdir().unwrap();
    let dd = d.path();
    ok(&flowc(dd, &["topic", "create", "big"], None));
    let input: String = (0..20_000).map(|i| format!("{{\"i\":{i},\"pad\":\"{}\"}}\n", "p".repeat(40))).collect();
    assert_eq!(ok(&flowc(dd, &["produce", "big", "--acks", "os"], Some(&input))).trim(), "20000 records acknowledged");
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowc"))
        .args(["consume", "big", "--from-beginning", "--group", "h", "--data-dir"])
        .arg(dd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("{\"i\":0,"), "{first}");
    // The reader is gone (like `| head -1`).
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Only what was flushed before the pipe broke may be committed: the group resumes
    // at or before the first record that could not be delivered.
    let rest = ok(&flowc(dd, &["consume", "big", "--group", "h"], None));
    assert!(!rest.is_empty(), "records not delivered are read again");
}
