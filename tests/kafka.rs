//! End-to-end tests of `flowc serve` with real Kafka clients: kcat (librdkafka),
//! confluent-kafka-python (librdkafka) and, where present, the shared conformance
//! probe. Each test starts the real `flowc` binary on a free port.
//!
//! Clients are found on the machine: `kcat` on PATH; Python interpreters that can
//! import `confluent_kafka` among `$FLOW_KAFKA_PYTHON`, the peers' venv
//! (`~/.cache/flow-peers/kafka/venv`) and Debian's `/usr/bin/python3`. A test whose
//! client is missing prints why and passes without checking; `.ci/run` installs them
//! all (scripts/test), so in CI they run.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A running `flowc serve`, killed (by its own pid) when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(data: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flowc"))
            .args(["serve", "--listen", "127.0.0.1:0", "--log-level", "warn", "--data-dir"])
            .arg(data)
            .args(extra)
            .env_remove("FLOW_DATA_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn flowc serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("flowc serve: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .parse()
            .unwrap();
        Server { child, addr }
    }

    fn bootstrap(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> Output {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut pipe = child.stdin.take().unwrap();
    if let Some(input) = stdin {
        let _ = pipe.write_all(input.as_bytes());
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn flowc(data: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowc"));
    cmd.args(args).arg("--data-dir").arg(data).env_remove("FLOW_DATA_DIR");
    ok(run(&mut cmd, stdin), &format!("flowc {args:?}"))
}

fn kcat() -> Option<PathBuf> {
    let found = Command::new("kcat").arg("-V").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIP: kcat is not installed (apt-get install kcat)");
    }
    found.then(|| PathBuf::from("kcat"))
}

/// Python interpreters with confluent_kafka, each once.
fn pythons() -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("FLOW_KAFKA_PYTHON") {
        candidates.push(p.into());
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cache/flow-peers/kafka/venv/bin/python"));
    }
    candidates.push("/usr/bin/python3".into());
    let mut out: Vec<(PathBuf, String)> = Vec::new();
    for c in candidates {
        let Ok(o) = Command::new(&c).args(["-c", "import confluent_kafka as c; print(c.libversion()[0])"]).output()
        else {
            continue;
        };
        let lib = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if o.status.success() && !out.iter().any(|(_, l)| *l == lib) {
            eprintln!("using {} (librdkafka {lib})", c.display());
            out.push((c, lib));
        }
    }
    if out.is_empty() {
        eprintln!("SKIP: no python with confluent_kafka (apt-get install python3-confluent-kafka, or pip install confluent-kafka)");
    }
    out.into_iter().map(|(p, _)| p).collect()
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/kafka/clients.py")
}

fn python(py: &Path, args: &[&str]) -> String {
    let out =
        ok(run(Command::new(py).arg(script()).args(args), None), &format!("{} clients.py {args:?}", py.display()));
    eprint!("{out}");
    out
}

#[test]
fn kcat_produces_and_consumes_with_keys_headers_and_timestamps() {
    let Some(kcat) = kcat() else { return };
    let d = tempfile::tempdir().unwrap();
    flowc(d.path(), &["topic", "create", "kc", "--partitions", "3"], None);
    let s = Server::start(d.path(), &[]);
    let input: String = (0..60).map(|i| format!("key{}:value {i}\n", i % 6)).collect();
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    ok(
        run(
            Command::new(&kcat)
                .args(["-b", &s.bootstrap(), "-P", "-t", "kc", "-K:", "-H", "source=kcat", "-H", "n=1"])
                .args(["-X", "acks=all", "-X", "partitioner=murmur2_random"]),
            Some(&input),
        ),
        "kcat -P",
    );
    let out = ok(
        run(
            Command::new(&kcat).args(["-b", &s.bootstrap(), "-C", "-t", "kc", "-e", "-q", "-f", "%p|%o|%k|%s|%h|%T\n"]),
            None,
        ),
        "kcat -C",
    );
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), 60, "{out}");
    for r in &rows {
        let i: usize = r[3].strip_prefix("value ").unwrap().parse().unwrap();
        assert_eq!(r[2], format!("key{}", i % 6));
        assert_eq!(r[4], "source=kcat,n=1", "headers in order");
        let ts: i64 = r[5].parse().unwrap();
        assert!(ts >= before - 1000 && ts < before + 60_000, "timestamp {ts} not near {before}");
    }
    // Kafka's murmur2 partitioner puts each key where flowc's own partitioner does:
    // flowc consume (reading the log directly) agrees with kcat on partitions and offsets.
    drop(s);
    let json = flowc(d.path(), &["consume", "kc", "--from-beginning", "--format", "json"], None);
    let mut direct: Vec<String> = json
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{}|{}|{}", v["partition"], v["offset"], v["key"].as_str().unwrap())
        })
        .collect();
    let mut via_kafka: Vec<String> = rows.iter().map(|r| format!("{}|{}|{}", r[0], r[1], r[2])).collect();
    direct.sort();
    via_kafka.sort();
    assert_eq!(direct, via_kafka);
    // The same keys produced by flowc land in the same partitions.
    flowc(d.path(), &["topic", "create", "fc", "--partitions", "3"], None);
    let lines: String = (0..6).map(|i| format!("{{\"k\":\"key{i}\"}}\n")).collect();
    flowc(d.path(), &["produce", "fc", "--key-field", "k"], Some(&lines));
    let flow_parts: std::collections::BTreeMap<String, String> =
        flowc(d.path(), &["consume", "fc", "--from-beginning", "--format", "json"], None)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["key"].as_str().unwrap().to_string(), v["partition"].to_string())
            })
            .collect();
    for r in &rows {
        assert_eq!(flow_parts[r[2]], r[0], "key {} went to partition {} via Kafka", r[2], r[0]);
    }
}

#[test]
fn flowc_produce_is_read_by_kcat_byte_for_byte() {
    let Some(kcat) = kcat() else { return };
    let d = tempfile::tempdir().unwrap();
    flowc(d.path(), &["topic", "create", "orders", "--partitions", "4"], None);
    let lines: String = (0..40).map(|i| format!("{{\"account\":\"acct-{}\",\"amount\":{i}}}\n", i % 9)).collect();
    flowc(d.path(), &["produce", "orders", "--key-field", "account"], Some(&lines));
    let direct = flowc(d.path(), &["consume", "orders", "--from-beginning", "--format", "json"], None);
    let s = Server::start(d.path(), &[]);
    let out = ok(
        run(
            Command::new(&kcat).args(["-b", &s.bootstrap(), "-C", "-t", "orders", "-e", "-q", "-f", "%p|%o|%k|%s\n"]),
            None,
        ),
        "kcat -C",
    );
    let mut a: Vec<String> = direct
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!(
                "{}|{}|{}|{}",
                v["partition"],
                v["offset"],
                v["key"].as_str().unwrap(),
                v["value"].as_str().unwrap()
            )
        })
        .collect();
    let mut b: Vec<String> = out.lines().map(str::to_string).collect();
    a.sort();
    b.sort();
    assert_eq!(a.len(), 40);
    assert_eq!(a, b);
}

#[test]
fn confluent_kafka_produces_with_every_codec_idempotence_and_limits() {
    let pys = pythons();
    for py in &pys {
        let d = tempfile::tempdir().unwrap();
        let s = Server::start(d.path(), &["--max-message-bytes", "200000"]);
        let out = python(py, &[&s.bootstrap(), "produce"]);
        for check in ["none", "gzip", "snappy", "lz4", "zstd"] {
            assert!(out.contains(&format!("ok produce_consume_{check}")), "{out}");
        }
        assert!(out.contains("ok message_too_large"), "{out}");
        // What the clients produced compressed is readable by flow itself.
        let topics = flowc(d.path(), &["topic", "list"], None);
        let zstd = topics.lines().find(|t| t.starts_with("py-zstd-")).unwrap();
        drop(s);
        let json = flowc(d.path(), &["consume", zstd, "--from-beginning", "--format", "json"], None);
        assert_eq!(json.lines().count(), 300);
        assert!(json.contains("value-299-value-299-"), "{json}");
    }
}

#[test]
fn a_consumer_group_rebalances_commits_and_resumes_after_a_restart() {
    let pys = pythons();
    for (i, py) in pys.iter().enumerate() {
        let d = tempfile::tempdir().unwrap();
        let topic = format!("grp{i}");
        let s = Server::start(d.path(), &[]);
        let out = python(py, &[&s.bootstrap(), "group1", &topic]);
        assert!(out.contains("ok group_two_members") && out.contains("ok group_rebalance_on_leave"), "{out}");
        let committed = out.lines().find_map(|l| l.strip_prefix("committed ")).expect("committed offsets").to_string();
        // The commits are in the log's group store, visible to flowc itself.
        let stored =
            std::fs::read_to_string(d.path().join("__consumer_offsets").join(format!("g-{topic}.json"))).unwrap();
        for pair in committed.split(',') {
            let (p, o) = pair.split_once(':').unwrap();
            if !o.starts_with('-') {
                assert!(stored.contains(&format!("\"{p}\": {o}")), "{pair} not in {stored}");
            }
        }
        drop(s);
        std::thread::sleep(Duration::from_millis(200));
        let s = Server::start(d.path(), &[]);
        let out = python(py, &[&s.bootstrap(), "group2", &topic, &committed]);
        assert!(out.contains("ok group_resume_after_restart"), "{out}");
    }
}

/// The shared conformance probe (one PASS/FAIL line per check), when it is beside the
/// repository (`../shared/peers/kafka`), with every python that has confluent_kafka.
#[test]
fn conformance_probe_passes() {
    let probe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/peers/kafka/kafka_conformance.py");
    if !probe.exists() {
        eprintln!("SKIP: {} is not here", probe.display());
        return;
    }
    let Some(kcat) = kcat() else { return };
    for py in pythons() {
        let d = tempfile::tempdir().unwrap();
        let s = Server::start(d.path(), &[]);
        let o = run(
            Command::new(&py)
                .arg(&probe)
                .args(["--bootstrap", &s.bootstrap(), "--kcat"])
                .arg(&kcat)
                .args(["--timeout", "20"]),
            None,
        );
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        eprintln!("{} ({}):\n{out}", probe.display(), py.display());
        let last = out.lines().last().unwrap_or_default();
        assert!(o.status.success() && last.contains(" 0 failed"), "the probe failed with {}: {last}", py.display());
    }
}

/// `flowc run` with the records of a `kafka(...)` source as JSON values, sorted.
/// Consumes `topic` with kcat until it holds `at_least` records or `patience` passed;
/// its records, sorted.
fn consume_until(kcat: &Path, s: &Server, topic: &str, at_least: usize, patience: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        let o = run(Command::new(kcat).args(["-b", &s.bootstrap(), "-C", "-t", topic, "-e", "-q"]), None);
        let got = sorted_lines(&String::from_utf8_lossy(&o.stdout));
        if got.len() >= at_least || std::time::Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
    v.sort();
    v
}

/// Runs `p.flow` in `dir` with the Kafka sources' idle timeout, so the run ends by itself.
fn flowc_run_kafka(dir: &Path) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowc"));
    cmd.args(["run", "p.flow", "--data-dir", "run-data"])
        .current_dir(dir)
        .env_remove("FLOW_DATA_DIR")
        .env("FLOW_KAFKA_IDLE_MS", "1500");
    ok(run(&mut cmd, None), "flowc run (kafka source and sink)")
}

/// The `kafka(...)` connector round-trips through `flowc serve`: a pipeline consumes a
/// topic in a consumer group (bad records to its dead-letter topic), filters, and
/// produces to another topic and a file; run again, it resumes after the offsets the
/// first run committed.
#[test]
fn the_kafka_connector_round_trips_through_flowc_serve_and_resumes_its_group() {
    let Some(kcat) = kcat() else { return };
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("serve-data");
    flowc(&data, &["topic", "create", "in", "--partitions", "2"], None);
    flowc(&data, &["topic", "create", "out"], None);
    let first: String = (1..=6).map(|i| format!("{{\"id\":{i},\"name\":\"n{i}\"}}\n")).collect();
    flowc(&data, &["produce", "in", "--key-field", "name"], Some(&first));
    let s = Server::start(&data, &[]);
    let produce = |lines: &str| {
        ok(run(Command::new(&kcat).args(["-b", &s.bootstrap(), "-P", "-t", "in"]), Some(lines)), "kcat -P");
    };
    produce("not json\n");
    std::fs::write(
        d.path().join("p.flow"),
        format!(
            r#"schema R {{ id: int, name: string }}
source s: R = kafka("{b}", topic: "in", group: "g1", format: json)
sink k: R = kafka("{b}", topic: "out")
sink f: R = file("out.jsonl", format: json)
pipeline p = from s | where id % 2 == 0 -> k, f
"#,
            b = s.bootstrap()
        ),
    )
    .unwrap();
    let consume_out = || {
        let o =
            ok(run(Command::new(&kcat).args(["-b", &s.bootstrap(), "-C", "-t", "out", "-e", "-q"]), None), "kcat -C");
        sorted_lines(&o)
    };

    let summary = flowc_run_kafka(d.path());
    let want = ["{\"id\":2,\"name\":\"n2\"}", "{\"id\":4,\"name\":\"n4\"}", "{\"id\":6,\"name\":\"n6\"}"];
    assert_eq!(sorted_lines(&std::fs::read_to_string(d.path().join("out.jsonl")).unwrap()), want, "{summary}");
    assert_eq!(consume_out(), want);
    let dlq = flowc(&d.path().join("run-data"), &["consume", "s.dlq", "--from-beginning"], None);
    assert!(dlq.contains("topic in partition") && dlq.contains("not json"), "{dlq}");

    // The run resumes (from its last checkpoint's offsets): only the records produced
    // since are read, and the file goes on from what the first run committed.
    produce("{\"id\":8,\"name\":\"n8\"}\n{\"id\":9,\"name\":\"n9\"}\n{\"id\":10,\"name\":\"n10\"}\n");
    let summary = flowc_run_kafka(d.path());
    let second = ["{\"id\":10,\"name\":\"n10\"}", "{\"id\":8,\"name\":\"n8\"}"];
    let mut all: Vec<String> = want.iter().chain(&second).map(|s| s.to_string()).collect();
    all.sort();
    assert_eq!(sorted_lines(&std::fs::read_to_string(d.path().join("out.jsonl")).unwrap()), all, "{summary}");
    assert_eq!(consume_out(), all);

    // The group's offsets were committed to the cluster as checkpoints completed: a
    // `--fresh` run (no checkpoints) starts from them and reads only what is new.
    produce("{\"id\":12,\"name\":\"n12\"}\n");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowc"));
    cmd.args(["run", "p.flow", "--data-dir", "run-data", "--fresh"])
        .current_dir(d.path())
        .env_remove("FLOW_DATA_DIR")
        .env("FLOW_KAFKA_IDLE_MS", "1500");
    let summary = ok(run(&mut cmd, None), "flowc run --fresh");
    let third = ["{\"id\":12,\"name\":\"n12\"}"];
    assert_eq!(sorted_lines(&std::fs::read_to_string(d.path().join("out.jsonl")).unwrap()), third, "{summary}");
}

/// `flowc serve --pipelines`: a Kafka client produces into a topic, a pipeline running in
/// the server's process filters it into another topic, a Kafka client consumes that.
#[test]
fn serve_runs_pipelines_beside_the_broker_on_the_same_topics() {
    let Some(kcat) = kcat() else { return };
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    flowc(&data, &["topic", "create", "orders", "--partitions", "2"], None);
    let flow = d.path().join("p.flow");
    std::fs::write(
        &flow,
        "schema Order { id: int, amount: int }\n\
         topic orders: Order { partitions: 2 }\n\
         topic big: Order { partitions: 1 }\n\
         pipeline p = from orders | where amount >= 100 -> big\n",
    )
    .unwrap();
    let s = Server::start(&data, &["--pipelines", flow.to_str().unwrap()]);
    let lines: String = (1..=8).map(|i| format!("{{\"id\":{i},\"amount\":{}}}\n", i * 30)).collect();
    ok(
        run(Command::new(&kcat).args(["-b", &s.bootstrap(), "-P", "-t", "orders", "-X", "acks=all"]), Some(&lines)),
        "kcat -P",
    );
    let want: Vec<String> = (4..=8).map(|i| format!("{{\"id\":{i},\"amount\":{}}}", i * 30)).collect();
    let got = consume_until(&kcat, &s, "big", want.len(), Duration::from_secs(30));
    let mut want = want;
    want.sort();
    assert_eq!(got, want);
}

/// A topic's `idle_timeout`: in `flowc serve --pipelines` the topic input never ends, so
/// a window over a 2-partition topic whose second partition gets no records fires only
/// because that partition is declared idle after 1 s. (Without the option it would hold
/// the watermark back forever, and nothing would come out.) The records are produced
/// as soon as the server listens, so both partitions time out by the same check.
#[test]
fn an_idle_topic_partition_stops_holding_windows_back() {
    let Some(kcat) = kcat() else { return };
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    flowc(&data, &["topic", "create", "events", "--partitions", "2"], None);
    let flow = d.path().join("p.flow");
    std::fs::write(
        &flow,
        "schema E { id: int, ts: timestamp }\n\
         topic events: E { partitions: 2, event_time: ts, watermark: 0s, idle_timeout: 1s }\n\
         topic counts: E { partitions: 1 }\n\
         pipeline p = from events | window tumbling(10s) | aggregate { n: count() }\n    \
         | select { id: n, ts: window_start } -> counts\n",
    )
    .unwrap();
    let s = Server::start(&data, &["--pipelines", flow.to_str().unwrap()]);
    // Partition 0 only: two records in [0 s, 10 s), then one at 12 s that moves its
    // watermark past the first window's end.
    let lines = "{\"id\":1,\"ts\":1000}\n{\"id\":2,\"ts\":2000}\n{\"id\":3,\"ts\":12000}\n";
    ok(
        run(
            Command::new(&kcat).args(["-b", &s.bootstrap(), "-P", "-t", "events", "-p", "0", "-X", "acks=all"]),
            Some(lines),
        ),
        "kcat -P",
    );
    // Topic outputs are visible once a checkpoint commits them (every 10 s).
    let got = consume_until(&kcat, &s, "counts", 1, Duration::from_secs(60));
    assert_eq!(got, [r#"{"id":2,"ts":0}"#], "the first window, and only it (the second is still open)");
}

/// `--sasl-users`: kcat with a listed user and password produces and consumes; a wrong
/// password and a client without SASL are refused.
#[test]
fn sasl_plain_lets_listed_users_in_and_keeps_others_out() {
    let Some(kcat) = kcat() else { return };
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    flowc(&data, &["topic", "create", "t"], None);
    let users = d.path().join("users");
    std::fs::write(&users, "# user:password\nalice:s3cret\n").unwrap();
    let s = Server::start(&data, &["--sasl-users", users.to_str().unwrap()]);
    let sasl = |password: &str| -> Vec<String> {
        ["security.protocol=SASL_PLAINTEXT", "sasl.mechanisms=PLAIN", "sasl.username=alice"]
            .iter()
            .map(|x| x.to_string())
            .chain([format!("sasl.password={password}")])
            .flat_map(|x| ["-X".to_string(), x])
            .collect()
    };
    let b = s.bootstrap();
    ok(run(Command::new(&kcat).args(["-b", &b, "-P", "-t", "t"]).args(sasl("s3cret")), Some("hello\n")), "kcat -P");
    let got = ok(
        run(Command::new(&kcat).args(["-b", &b, "-C", "-t", "t", "-e", "-q"]).args(sasl("s3cret")), None),
        "kcat -C",
    );
    assert_eq!(got, "hello\n");
    let wrong = run(Command::new(&kcat).args(["-b", &b, "-L", "-m", "3"]).args(sasl("wrong")), None);
    assert!(!wrong.status.success(), "a wrong password was let in");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("invalid user name or password"));
    let anonymous = run(Command::new(&kcat).args(["-b", &b, "-L", "-m", "3"]), None);
    assert!(!anonymous.status.success(), "a client without SASL was let in");
}

/// A `kafka(...)` source takes part in checkpoints: runs killed with SIGKILL resume from
/// the checkpoint's offsets (not the group's, which may be ahead), and the file output
/// holds every selected record exactly once.
#[test]
fn a_kafka_source_resumes_from_checkpoints_after_kill_9() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("serve-data");
    flowc(&data, &["topic", "create", "in", "--partitions", "2"], None);
    let lines: String = (0..200_000).map(|i| format!("{{\"id\":{i},\"name\":\"n{}\"}}\n", i % 97)).collect();
    flowc(&data, &["produce", "in", "--key-field", "name"], Some(&lines));
    let s = Server::start(&data, &[]);
    std::fs::write(
        d.path().join("p.flow"),
        format!(
            r#"schema R {{ id: int, name: string }}
source s: R = kafka("{b}", topic: "in", group: "g1", format: json)
sink f: R = file("out.jsonl", format: json)
pipeline p = from s | where id % 3 == 0 -> f
"#,
            b = s.bootstrap()
        ),
    )
    .unwrap();
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_flowc"))
            .args(["run", "p.flow", "--data-dir", "run-data", "--checkpoint-interval", "30ms", "--no-progress"])
            .current_dir(d.path())
            .env_remove("FLOW_DATA_DIR")
            .env("FLOW_KAFKA_IDLE_MS", "1500")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // Each run is killed a while after its output has grown (it is reading then).
    let out = d.path().join("out.jsonl");
    let mut kills = 0;
    for extra in [150u64, 400, 250] {
        let before = std::fs::metadata(&out).map_or(0, |m| m.len());
        let mut child = start();
        let started = std::time::Instant::now();
        while std::fs::metadata(&out).map_or(0, |m| m.len()) <= before && started.elapsed() < Duration::from_secs(30) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(extra));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    let o = run(
        Command::new(env!("CARGO_BIN_EXE_flowc"))
            .args(["run", "p.flow", "--data-dir", "run-data", "--checkpoint-interval", "30ms", "--no-progress"])
            .current_dir(d.path())
            .env_remove("FLOW_DATA_DIR")
            .env("FLOW_KAFKA_IDLE_MS", "1500"),
        None,
    );
    let summary = ok(o, "flowc run after kills");
    let got = sorted_lines(&std::fs::read_to_string(d.path().join("out.jsonl")).unwrap());
    let mut want: Vec<String> =
        (0..200_000).filter(|i| i % 3 == 0).map(|i| format!("{{\"id\":{i},\"name\":\"n{}\"}}", i % 97)).collect();
    want.sort();
    assert!(kills > 0, "no kill hit a running process: {summary}");
    assert_eq!(got.len(), want.len(), "after {kills} kills: {summary}");
    assert!(got == want, "records differ after {kills} kills");
}

/// A test CA, a server certificate for 127.0.0.1 and localhost, and a client
/// certificate, all signed by the CA, as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "flow test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<String>, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()], "localhost");
    let (client_cert, client_key) = leaf(vec!["client.test".into()], "client.test");
    Pki {
        ca: write("ca.pem", ca.pem()),
        server_cert: write("server.pem", server_cert),
        server_key: write("server.key", server_key),
        client_cert: write("client.pem", client_cert),
        client_key: write("client.key", client_key),
    }
}

fn x(settings: &[String]) -> Vec<String> {
    settings.iter().flat_map(|s| ["-X".to_string(), s.clone()]).collect()
}

/// `--tls-cert/--tls-key`: kcat over TLS (verifying the server against the CA, host name
/// included) produces and consumes; a plaintext client is refused, and while it hangs
/// on, TLS clients keep being served. With `--sasl-users` as well, SASL_SSL works and a
/// wrong password is still refused.
#[test]
fn tls_listener_serves_tls_clients_and_refuses_plaintext_ones() {
    let Some(kcat) = kcat() else { return };
    let d = tempfile::tempdir().unwrap();
    let pki = pki(d.path());
    let data = d.path().join("data");
    flowc(&data, &["topic", "create", "t", "--partitions", "2"], None);
    let users = d.path().join("users");
    std::fs::write(&users, "alice:s3cret\n").unwrap();
    let tls_args = ["--tls-cert", pki.server_cert.to_str().unwrap(), "--tls-key", pki.server_key.to_str().unwrap()];
    let s = Server::start(&data, &tls_args);
    let b = s.bootstrap();
    let ssl = x(&["security.protocol=SSL".into(), format!("ssl.ca.location={}", pki.ca.display())]);
    // A plaintext client that connects and stays: it must hold nothing up.
    let mut idle = std::net::TcpStream::connect(s.addr).unwrap();
    idle.write_all(b"\x00\x00\x00\x0a").unwrap();
    ok(
        run(Command::new(&kcat).args(["-b", &b, "-P", "-t", "t", "-K", ":"]).args(&ssl), Some("k1:hello\nk2:world\n")),
        "kcat -P over TLS",
    );
    let got = ok(
        run(Command::new(&kcat).args(["-b", &b, "-C", "-t", "t", "-e", "-q", "-f", "%k=%s\n"]).args(&ssl), None),
        "kcat -C over TLS",
    );
    assert_eq!(sorted_lines(&got), ["k1=hello", "k2=world"]);
    // Plaintext against the TLS listener: refused (the handshake fails), not served.
    let plain = run(Command::new(&kcat).args(["-b", &b, "-L", "-m", "3"]), None);
    assert!(!plain.status.success(), "a plaintext client was served by a TLS listener");
    // A client that does not trust the server's CA refuses it.
    let untrusted = run(Command::new(&kcat).args(["-b", &b, "-L", "-m", "3", "-X", "security.protocol=SSL"]), None);
    assert!(!untrusted.status.success(), "a client without the CA accepted the server");
    drop(s);

    // SASL_SSL: TLS and SASL/PLAIN together.
    let mut args = tls_args.to_vec();
    args.extend(["--sasl-users", users.to_str().unwrap()]);
    let s = Server::start(&data, &args);
    let b = s.bootstrap();
    let sasl_ssl = |password: &str| {
        x(&[
            "security.protocol=SASL_SSL".into(),
            format!("ssl.ca.location={}", pki.ca.display()),
            "sasl.mechanisms=PLAIN".into(),
            "sasl.username=alice".into(),
            format!("sasl.password={password}"),
        ])
    };
    let got = ok(
        run(
            Command::new(&kcat).args(["-b", &b, "-C", "-t", "t", "-e", "-q", "-f", "%k=%s\n"]).args(sasl_ssl("s3cret")),
            None,
        ),
        "kcat -C over SASL_SSL",
    );
    assert_eq!(sorted_lines(&got), ["k1=hello", "k2=world"]);
    let wrong = run(Command::new(&kcat).args(["-b", &b, "-L", "-m", "3"]).args(sasl_ssl("wrong")), None);
    assert!(!wrong.status.success(), "a wrong password was let in over TLS");
}

/// `--tls-client-ca`: a client with a certificate the CA signed is served; one without a
/// certificate is refused during the handshake.
#[test]
fn tls_client_certificates_are_required_with_a_client_ca() {
    let Some(kcat) = kcat() else { return };
    let d = tempfile::tempdir().unwrap();
    let pki = pki(d.path());
    let data = d.path().join("data");
    flowc(&data, &["topic", "create", "t"], None);
    let s = Server::start(
        &data,
        &[
            "--tls-cert",
            pki.server_cert.to_str().unwrap(),
            "--tls-key",
            pki.server_key.to_str().unwrap(),
            "--tls-client-ca",
            pki.ca.to_str().unwrap(),
        ],
    );
    let b = s.bootstrap();
    let ssl = x(&["security.protocol=SSL".into(), format!("ssl.ca.location={}", pki.ca.display())]);
    let with_cert: Vec<String> = ssl
        .iter()
        .cloned()
        .chain(x(&[
            format!("ssl.certificate.location={}", pki.client_cert.display()),
            format!("ssl.key.location={}", pki.client_key.display()),
        ]))
        .collect();
    ok(
        run(Command::new(&kcat).args(["-b", &b, "-P", "-t", "t"]).args(&with_cert), Some("signed\n")),
        "kcat -P with a client certificate",
    );
    let got =
        ok(run(Command::new(&kcat).args(["-b", &b, "-C", "-t", "t", "-e", "-q"]).args(&with_cert), None), "kcat -C");
    assert_eq!(got, "signed\n");
    let without = run(Command::new(&kcat).args(["-b", &b, "-L", "-m", "3"]).args(&ssl), None);
    assert!(!without.status.success(), "a client without a certificate was served");
}

/// Bad TLS files stop `flowc serve` before it listens, with a message naming the file.
#[test]
fn serve_names_a_bad_tls_file() {
    let d = tempfile::tempdir().unwrap();
    let pki = pki(d.path());
    let out = Command::new(env!("CARGO_BIN_EXE_flowc"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(d.path().join("data"))
        .args(["--tls-cert", pki.server_cert.to_str().unwrap(), "--tls-key", pki.client_key.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("client.key") && err.contains("does not fit"), "{err}");
}

/// Kafka's `Utils.murmur2` (seed 0x9747b28c), written out again here so the test does
/// not trust the code under test: the partition a Java producer picks for a key is
/// `toPositive(murmur2(key)) % partitions`.
fn java_partition(key: &[u8], partitions: u32) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ key.len() as u32;
    let chunks = key.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]).wrapping_mul(M);
        k ^= k >> 24;
        h = h.wrapping_mul(M) ^ k.wrapping_mul(M);
    }
    match tail.len() {
        3 => h = (h ^ (u32::from(tail[2]) << 16) ^ (u32::from(tail[1]) << 8) ^ u32::from(tail[0])).wrapping_mul(M),
        2 => h = (h ^ (u32::from(tail[1]) << 8) ^ u32::from(tail[0])).wrapping_mul(M),
        1 => h = (h ^ u32::from(tail[0])).wrapping_mul(M),
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    (h & 0x7fff_ffff) % partitions
}

#[test]
fn java_partition_matches_kafkas_own_test_vectors() {
    // From Kafka's UtilsTest.testMurmur2 (signed results, before toPositive and %).
    for (key, want) in [("21", -973932308i32), ("foobar", -790332482), ("a-little-bit-long-string", -985981536)] {
        assert_eq!(java_partition(key.as_bytes(), i32::MAX as u32), (want & 0x7fff_ffff) as u32 % i32::MAX as u32);
    }
}

/// `key:` on a `kafka(...)` sink: each record's key is the field's value, and the records
/// of a key are on the partition Kafka's Java producer (murmur2) would choose; a null
/// value gives a record without a key.
#[test]
fn a_kafka_sink_keys_records_by_a_field_and_partitions_them_as_java_does() {
    let Some(kcat) = kcat() else { return };
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("serve-data");
    flowc(&data, &["topic", "create", "alerts", "--partitions", "4"], None);
    let mut lines: String = (0..60).map(|i| format!("{{\"account\":\"acct-{}\",\"n\":{i}}}\n", i % 11)).collect();
    lines.push_str("{\"account\":null,\"n\":60}\n{\"account\":null,\"n\":61}\n");
    std::fs::write(d.path().join("in.jsonl"), lines).unwrap();
    let s = Server::start(&data, &[]);
    std::fs::write(
        d.path().join("p.flow"),
        format!(
            r#"schema Alert {{ account: string?, n: int }}
source s: Alert = file("in.jsonl", format: json)
sink k = kafka("{b}", topic: "alerts", key: account)
pipeline p = from s | select {{ n, account }} -> k
"#,
            b = s.bootstrap()
        ),
    )
    .unwrap();
    flowc_run_kafka(d.path());
    let out = ok(
        run(
            Command::new(&kcat).args(["-b", &s.bootstrap(), "-C", "-t", "alerts", "-e", "-q", "-f", "%k|%K|%p|%s\n"]),
            None,
        ),
        "kcat -C",
    );
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.splitn(4, '|').collect()).collect();
    assert_eq!(rows.len(), 62, "{out}");
    let mut partitions = std::collections::BTreeSet::new();
    for r in &rows {
        let v: serde_json::Value = serde_json::from_str(r[3]).unwrap();
        let p: u32 = r[2].parse().unwrap();
        match v["account"].as_str() {
            Some(account) => {
                assert_eq!(r[0], account, "the key is the account: {r:?}");
                assert_eq!(p, java_partition(account.as_bytes(), 4), "key {account} is not where murmur2 puts it");
                partitions.insert(p);
            }
            // kcat's %K is the key's length, -1 for a record without a key.
            None => assert_eq!((r[0], r[1]), ("", "-1"), "a null account gives no key: {r:?}"),
        }
    }
    assert!(partitions.len() >= 3, "11 keys on only {partitions:?}");
}

/// Runs `flowc run p.flow` in `dir` (Kafka sources end when idle) with `env` set.
fn flowc_run_env(dir: &Path, env: &[(&str, &str)]) -> (Output, Duration) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowc"));
    cmd.args(["run", "p.flow", "--data-dir", "run-data", "--no-progress"])
        .current_dir(dir)
        .env_remove("FLOW_DATA_DIR")
        .env_remove("FLOW_TEST_KAFKA_PASSWORD")
        .env("FLOW_KAFKA_IDLE_MS", "1500")
        .envs(env.iter().copied());
    let started = std::time::Instant::now();
    let o = run(&mut cmd, None);
    (o, started.elapsed())
}

/// The connector logs in to a `flowc serve --sasl-users` with SASL/PLAIN, the password
/// read from the variable `password_env` names: a source and a sink round-trip. A
/// wrong password fails the run at once with a message naming the source (or sink);
/// a variable that is not set fails it before it connects.
#[test]
fn the_kafka_connector_logs_in_with_sasl_and_a_password_from_the_environment() {
    let Some(kcat) = kcat() else { return };
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("serve-data");
    flowc(&data, &["topic", "create", "in", "--partitions", "2"], None);
    flowc(&data, &["topic", "create", "out"], None);
    let lines: String = (1..=6).map(|i| format!("{{\"id\":{i},\"name\":\"n{i}\"}}\n")).collect();
    flowc(&data, &["produce", "in", "--key-field", "name"], Some(&lines));
    let users = d.path().join("users");
    std::fs::write(&users, "alice:s3cret\n").unwrap();
    let s = Server::start(&data, &["--sasl-users", users.to_str().unwrap()]);
    let login = r#"security: sasl_plaintext, user: "alice", password_env: "FLOW_TEST_KAFKA_PASSWORD""#;
    std::fs::write(
        d.path().join("p.flow"),
        format!(
            r#"schema R {{ id: int, name: string }}
source s: R = kafka("{b}", topic: "in", group: "g1", {login})
sink k: R = kafka("{b}", topic: "out", key: name, {login})
pipeline p = from s | where id % 2 == 0 -> k
"#,
            b = s.bootstrap()
        ),
    )
    .unwrap();

    let (o, _) = flowc_run_env(d.path(), &[("FLOW_TEST_KAFKA_PASSWORD", "s3cret")]);
    let summary = ok(o, "flowc run with SASL");
    let got = ok(
        run(
            Command::new(&kcat)
                .args(["-b", &s.bootstrap(), "-C", "-t", "out", "-e", "-q", "-f", "%k %s\n"])
                .args(["-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanisms=PLAIN"])
                .args(["-X", "sasl.username=alice", "-X", "sasl.password=s3cret"]),
            None,
        ),
        "kcat -C with SASL",
    );
    assert_eq!(
        sorted_lines(&got),
        ["n2 {\"id\":2,\"name\":\"n2\"}", "n4 {\"id\":4,\"name\":\"n4\"}", "n6 {\"id\":6,\"name\":\"n6\"}"],
        "{summary}"
    );

    // A wrong password: the source's login is refused and the run fails at once (not
    // after the 30 s a source may wait for partitions).
    let (o, took) = flowc_run_env(d.path(), &[("FLOW_TEST_KAFKA_PASSWORD", "wrong")]);
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("{err}");
    assert!(!o.status.success(), "a wrong password was let in: {err}");
    assert!(err.contains("kafka source `s`") && err.contains("authentication failed"), "{err}");
    assert!(err.contains("user \"alice\", password from $FLOW_TEST_KAFKA_PASSWORD"), "{err}");
    assert!(took < Duration::from_secs(20), "took {took:?} to fail: {err}");

    // A sink's refused login fails the run too.
    std::fs::write(d.path().join("in.jsonl"), "{\"id\":8,\"name\":\"n8\"}\n").unwrap();
    std::fs::write(
        d.path().join("p.flow"),
        format!(
            r#"schema R {{ id: int, name: string }}
source f: R = file("in.jsonl", format: json)
sink k: R = kafka("{b}", topic: "out", {login})
pipeline p = from f -> k
"#,
            b = s.bootstrap()
        ),
    )
    .unwrap();
    let (o, took) = flowc_run_env(d.path(), &[("FLOW_TEST_KAFKA_PASSWORD", "wrong")]);
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("{err}");
    assert!(!o.status.success(), "a wrong password was let in: {err}");
    assert!(err.contains("kafka sink `k`") && err.contains("authentication failed"), "{err}");
    assert!(took < Duration::from_secs(20), "took {took:?} to fail: {err}");

    // No variable: the run fails before connecting, naming the sink and the variable.
    let (o, _) = flowc_run_env(d.path(), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("{err}");
    assert!(!o.status.success());
    assert!(
        err.contains("kafka sink `k`") && err.contains("FLOW_TEST_KAFKA_PASSWORD") && err.contains("not set"),
        "{err}"
    );
}

/// The connector over TLS: a source and a sink with `security: sasl_ssl` and `ca:` round
/// trip through a TLS `flowc serve` with SASL; a CA that did not sign the server's
/// certificate fails the run quickly, naming the source.
#[test]
fn the_kafka_connector_speaks_tls_to_a_tls_listener() {
    let Some(kcat) = kcat() else { return };
    let d = tempfile::tempdir().unwrap();
    let pki = pki(d.path());
    let other = d.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let other_ca = self::pki(&other).ca;
    let data = d.path().join("serve-data");
    flowc(&data, &["topic", "create", "in", "--partitions", "2"], None);
    flowc(&data, &["topic", "create", "out"], None);
    let lines: String = (1..=4).map(|i| format!("{{\"id\":{i},\"name\":\"n{i}\"}}\n")).collect();
    flowc(&data, &["produce", "in", "--key-field", "name"], Some(&lines));
    let users = d.path().join("users");
    std::fs::write(&users, "alice:s3cret\n").unwrap();
    let s = Server::start(
        &data,
        &[
            "--tls-cert",
            pki.server_cert.to_str().unwrap(),
            "--tls-key",
            pki.server_key.to_str().unwrap(),
            "--sasl-users",
            users.to_str().unwrap(),
        ],
    );
    let program = |ca: &Path| {
        let login = format!(
            r#"security: sasl_ssl, user: "alice", password_env: "FLOW_TEST_KAFKA_PASSWORD", ca: "{}""#,
            ca.display()
        );
        format!(
            r#"schema R {{ id: int, name: string }}
source s: R = kafka("{b}", topic: "in", group: "g1", {login})
sink k: R = kafka("{b}", topic: "out", key: name, {login})
pipeline p = from s | where id > 2 -> k
"#,
            b = s.bootstrap()
        )
    };
    std::fs::write(d.path().join("p.flow"), program(&pki.ca)).unwrap();
    let (o, _) = flowc_run_env(d.path(), &[("FLOW_TEST_KAFKA_PASSWORD", "s3cret")]);
    let summary = ok(o, "flowc run over SASL_SSL");
    let got = ok(
        run(
            Command::new(&kcat)
                .args(["-b", &s.bootstrap(), "-C", "-t", "out", "-e", "-q", "-f", "%k %s\n"])
                .args(["-X", "security.protocol=SASL_SSL", "-X", &format!("ssl.ca.location={}", pki.ca.display())])
                .args(["-X", "sasl.mechanisms=PLAIN", "-X", "sasl.username=alice", "-X", "sasl.password=s3cret"]),
            None,
        ),
        "kcat -C over SASL_SSL",
    );
    assert_eq!(sorted_lines(&got), ["n3 {\"id\":3,\"name\":\"n3\"}", "n4 {\"id\":4,\"name\":\"n4\"}"], "{summary}");

    std::fs::write(d.path().join("p.flow"), program(&other_ca)).unwrap();
    let (o, took) = flowc_run_env(d.path(), &[("FLOW_TEST_KAFKA_PASSWORD", "s3cret")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a server signed by another CA was trusted: {err}");
    assert!(err.contains("kafka source `s`") || err.contains("kafka sink `k`"), "{err}");
    assert!(took < Duration::from_secs(20), "took {took:?} to fail: {err}");
}
