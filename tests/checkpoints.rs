//! Crash tests of checkpoints and exactly-once file output: `flowc run` is killed with
//! SIGKILL at random instants (and aborted at each fault-injection point of a
//! checkpoint's commit), restarted each time, and once its input is exhausted its
//! committed output must be the same multiset of records as an uninterrupted run's:
//! nothing lost, nothing twice.
//!
//! `FLOW_CRASH_KILLS` sets the kills per run (default 10); `FLOW_CRASH_SEED` replays a
//! failing run's instants.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn flowc(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flowc"));
    // 64 KiB chunks: a file can resume every ~700 lines, so runs take many checkpoints
    // (full snapshots and deltas) between kills.
    c.current_dir(dir).env("FLOW_READ_CHUNK_BYTES", "65536").env("FLOW_DEBUG_RESTORE", "1");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// JSON lines of `n` transactions over 500 accounts, one per 10 ms of event time.
fn input(n: usize) -> String {
    let mut s = String::with_capacity(n * 90);
    for i in 0..n {
        s.push_str(&format!(
            "{{\"id\":\"t{i}\",\"account\":\"acct-{:03}\",\"amount\":{}.{:02},\"ts\":{},\"status\":\"{}\"}}\n",
            (i * 7919) % 500,
            (i * 31) % 2000,
            i % 100,
            1_700_000_000_000u64 + i as u64 * 10,
            if i % 13 == 0 { "declined" } else { "approved" }
        ));
    }
    s
}

const SCHEMA: &str = r#"
schema Txn { id: string, account: string, amount: decimal(12, 2), ts: timestamp, status: string }
source bank: Txn = file("txns.jsonl") event_time ts watermark 2s
"#;

fn setup(flow: &str, lines: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("txns.jsonl"), input(lines)).expect("input");
    std::fs::write(dir.path().join("p.flow"), format!("{SCHEMA}\n{flow}")).expect("flow");
    dir
}

fn run_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["run", "p.flow", "--data-dir", "data", "--no-progress", "--checkpoint-interval", "30ms"];
    a.extend_from_slice(extra);
    a
}

/// Runs to the end; panics on failure.
fn run_to_end(dir: &Path, extra: &[&str]) -> Output {
    let o = flowc(dir).args(run_args(extra)).output().expect("flowc runs");
    assert!(o.status.success(), "run failed: {}", text(&o.stderr));
    o
}

/// The file's lines, sorted (a multiset: duplicates stay).
fn lines(path: &Path) -> Vec<String> {
    let mut l: Vec<String> = std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect();
    l.sort();
    l
}

struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// [`run_to_end`], and how long the run took.
fn timed_run_to_end(dir: &Path, extra: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let o = run_to_end(dir, extra);
    (o, started.elapsed())
}

/// Starts the run up to `kills` times, SIGKILLing it after a random delay each time,
/// then lets it finish; a start that finishes before its kill ends the test's input
/// (a later start would be a new run). Returns how many kills hit a running process.
/// `span`: how long an uninterrupted run took; the delays fall within it (a tenth to
/// all of it), so that kills land mid-run however fast the machine is.
fn crash_and_finish(dir: &Path, extra: &[&str], kills: usize, rng: &mut Rng, span: Duration) -> usize {
    let mut hit = 0;
    let span = span.as_millis().max(20) as u64;
    for _ in 0..kills {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("runs.log")).expect("log");
        let mut child = flowc(dir).args(run_args(extra)).stdout(Stdio::null()).stderr(log).spawn().expect("spawn");
        let delay = Duration::from_millis(span / 10 + rng.next(span * 9 / 10));
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(status.success(), "a run failed on its own: {status}");
                return hit;
            }
            if started.elapsed() >= delay {
                child.kill().expect("SIGKILL");
                child.wait().expect("reaped");
                hit += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    run_to_end(dir, extra);
    hit
}

fn seed() -> u64 {
    std::env::var("FLOW_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    })
}

/// A fresh directory from `fresh` run with [`crash_and_finish`] (up to `kills` kills);
/// when no kill hit a running process (a run finished before its kill, as under a load
/// that made the reference run slow), again in a fresh directory with delays half as
/// long, up to five times. Returns the directory and the kills that hit.
fn crash_until_hit(
    fresh: &dyn Fn() -> tempfile::TempDir,
    extra: &[&str],
    kills: usize,
    rng: &mut Rng,
    span: Duration,
) -> (tempfile::TempDir, usize) {
    let mut span = span;
    for attempt in 0..5 {
        let dir = fresh();
        let hit = crash_and_finish(dir.path(), extra, kills, rng, span);
        if hit > 0 {
            return (dir, hit);
        }
        if attempt < 4 {
            span /= 2;
        }
    }
    panic!("no kill hit a running process, even with delays down to {span:?}");
}

fn kills() -> usize {
    std::env::var("FLOW_CRASH_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(10)
}

/// The crash test for one pipeline: the reference output from an uninterrupted run,
/// then a run killed `kills()` times, then one aborted at each fault point.
fn crash_test(flow: &str, lines_in: usize, extra: &[&str]) {
    let reference = setup(flow, lines_in);
    let (_, span) = timed_run_to_end(reference.path(), extra);
    let want = lines(&reference.path().join("out.jsonl"));
    assert!(!want.is_empty(), "the reference run wrote nothing");

    let seed = seed();
    let mut rng = Rng(seed);
    let (dir, hit) = crash_until_hit(&|| setup(flow, lines_in), extra, kills(), &mut rng, span);
    let got = lines(&dir.path().join("out.jsonl"));
    assert_eq!(got.len(), want.len(), "record count differs after {hit} kills (FLOW_CRASH_SEED={seed})");
    if got != want {
        let missing: Vec<&String> = want.iter().filter(|l| got.binary_search(l).is_err()).take(5).collect();
        let extra: Vec<&String> = got.iter().filter(|l| want.binary_search(l).is_err()).take(5).collect();
        let kept = dir.keep();
        panic!(
            "records differ after {hit} kills (FLOW_CRASH_SEED={seed}) in {}: missing {missing:?}, unexpected {extra:?}",
            kept.display()
        );
    }

    for point in ["before-metadata", "after-metadata", "mid-commit", "after-commit"] {
        let dir = setup(flow, lines_in);
        let o = flowc(dir.path()).args(run_args(extra)).env("FLOW_FAULT", point).output().expect("runs");
        assert!(!o.status.success(), "the fault at {point} did not stop the run");
        run_to_end(dir.path(), extra);
        let got = lines(&dir.path().join("out.jsonl"));
        assert!(got == want, "records differ after a crash at {point} ({} vs {})", got.len(), want.len());
    }
}

#[test]
fn stateless_file_to_file_survives_kill_9() {
    crash_test(
        r#"
sink out = file("out.jsonl")
pipeline p = from bank | where status == "approved" | select { id, account, amount } -> out
"#,
        150_000,
        &[],
    );
}

#[test]
fn windowed_state_survives_kill_9_with_two_instances() {
    // 100,000 records 10 ms apart: 1,000 s of event time, 200 windows of 5 s, each
    // over the 500 accounts; two instances after the key_by align their barriers.
    crash_test(
        r#"
sink out = file("out.jsonl")
pipeline w = from bank | where status == "approved" | key_by account | window tumbling(5s)
    | aggregate { n: count(), total: sum(amount), top: max(amount) } -> out
"#,
        100_000,
        &["--parallelism", "2"],
    );
}

/// The records of topic `t`, sorted.
fn topic_records(dir: &Path, t: &str) -> Vec<String> {
    let o = flowc(dir)
        .args(["consume", t, "--data-dir", "data", "--from-beginning", "--max", "10000000", "--format", "json"])
        .output()
        .expect("consume runs");
    assert!(o.status.success(), "consume failed: {}", text(&o.stderr));
    // Offsets differ between runs (partition interleaving); the records must not.
    let mut v: Vec<String> = text(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            format!("{} {}", v["key"], v["value"])
        })
        .collect();
    v.sort();
    v
}

#[test]
fn file_to_topic_to_windows_to_file_survives_kill_9() {
    // A file into a topic of two partitions (committed with checkpoints: its reader in
    // the same run sees committed records only), and windows over that topic into a file.
    let flow = r#"
topic txns: Txn { partitions: 2, key: account }
sink out = file("out.jsonl")
pipeline ingest = from bank | where status == "approved" -> txns
pipeline w = from txns | key_by account | window tumbling(5s)
    | aggregate { n: count(), total: sum(amount), top: max(amount) } -> out
"#;
    crash_test(flow, 60_000, &[]);
    // The topic holds every approved record once, after kills too.
    let reference = setup(flow, 20_000);
    let (_, span) = timed_run_to_end(reference.path(), &[]);
    let want = topic_records(reference.path(), "txns");
    assert_eq!(want.len(), 20_000 - 20_000 / 13 - 1);
    let mut rng = Rng(seed());
    let (dir, _) = crash_until_hit(&|| setup(flow, 20_000), &[], 5, &mut rng, span);
    assert!(topic_records(dir.path(), "txns") == want, "the topic's records differ after kills");
}

#[test]
fn ctrl_c_keeps_open_windows_and_damaged_checkpoints_are_skipped() {
    let flow = r#"
sink out = file("out.jsonl")
pipeline w = from bank | key_by account | window tumbling(5s)
    | aggregate { n: count(), total: sum(amount) } -> out
"#;
    let reference = setup(flow, 100_000);
    run_to_end(reference.path(), &[]);
    let want = lines(&reference.path().join("out.jsonl"));

    let dir = setup(flow, 100_000);
    // Ctrl-C mid-run: the run stops where it could resume from and keeps its open
    // windows in a last checkpoint.
    let child = flowc(dir.path()).args(run_args(&[])).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(900));
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let o = child.wait_with_output().unwrap();
    let stopped = o.status.code() == Some(130);
    let list = flowc(dir.path()).args(["checkpoints", "list", "--data-dir", "data"]).output().unwrap();
    assert!(list.status.success());
    let listed = text(&list.stdout);
    let ids: Vec<u64> = listed.lines().skip(1).filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    assert!(!ids.is_empty(), "{listed}");
    let d = flowc(dir.path()).args(["checkpoints", "describe", "--data-dir", "data"]).output().unwrap();
    let described = text(&d.stdout);
    assert!(d.status.success() && described.contains("inputs:"), "{described}");
    if stopped {
        assert!(described.contains("w.window-"), "the stopped run's windows are in its last checkpoint:\n{described}");
    }
    // Damage the newest checkpoint: the next run names it, falls back, and still writes
    // every record once.
    let newest = *ids.iter().max().unwrap();
    let chk = dir.path().join(format!("data/checkpoints/chk-{newest:010}"));
    let state = std::fs::read_dir(&chk)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "state"));
    if let Some(state) = state {
        let mut b = std::fs::read(&state).unwrap();
        let last = b.len() - 1;
        b[last] ^= 0x55;
        std::fs::write(&state, b).unwrap();
        let o = run_to_end(dir.path(), &[]);
        let err = text(&o.stderr);
        assert!(err.contains(&format!("warning: checkpoint {newest}")) && err.contains("unusable"), "{err}");
    } else {
        run_to_end(dir.path(), &[]);
    }
    assert!(lines(&dir.path().join("out.jsonl")) == want, "records differ after Ctrl-C and a damaged checkpoint");
}

#[test]
fn a_savepoint_carries_state_over_an_unrelated_change() {
    let flow = r#"
sink out = file("out.jsonl")
sink other = file("other.jsonl")
pipeline w = from bank | key_by account | window tumbling(5s)
    | aggregate { n: count(), total: sum(amount) } -> out
pipeline big = from bank | where amount > 1000.00 | select { id } -> other
"#;
    let reference = setup(flow, 100_000);
    run_to_end(reference.path(), &[]);
    let want = lines(&reference.path().join("out.jsonl"));

    let dir = setup(flow, 100_000);
    let args = ["run", "p.flow", "--data-dir", "data", "--no-progress", "--checkpoint-interval", "30ms"];
    let mut child = flowc(dir.path()).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Ask once the run has taken its first checkpoint: it is live and has read little (a
    // fixed sleep let a loaded machine's run end first, and nothing took the request).
    let checkpoints = dir.path().join("data").join("checkpoints");
    for _ in 0..1000 {
        let started = std::fs::read_dir(&checkpoints)
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("chk-")))
            .unwrap_or(false);
        if started {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Paused while the request is made, so that on a loaded machine the run cannot
    // reach its end before it looks for the request (it looks every 10 ms).
    let signal = |sig: &str| {
        let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().is_ok_and(|s| s.success());
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    let sp = flowc(dir.path())
        .args(["savepoint", "create", "sp", "--data-dir", "data", "--timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let request = checkpoints.join("savepoint-request");
    for _ in 0..3000 {
        if request.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    signal("-CONT");
    let sp = sp.wait_with_output().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(sp.status.success(), "savepoint create: {}", text(&sp.stderr));
    assert!(text(&sp.stdout).contains("savepoint"), "{}", text(&sp.stdout));

    // An unrelated pipeline changes: the window's state is restored.
    let changed = flow.replace("amount > 1000.00", "amount > 1500.00");
    std::fs::write(dir.path().join("p.flow"), format!("{SCHEMA}\n{changed}")).unwrap();
    let c = flowc(dir.path()).args(["check", "p.flow", "--savepoint", "sp"]).output().unwrap();
    let report = text(&c.stdout);
    assert!(c.status.success(), "{report}{}", text(&c.stderr));
    assert!(report.contains("restored      w.window-"), "{report}");
    assert!(report.contains("starts empty") || !report.contains("big."), "{report}");
    let o = flowc(dir.path()).args(["run", "p.flow", "--data-dir", "data", "--from-savepoint", "sp"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(lines(&dir.path().join("out.jsonl")) == want, "the windows' output differs after the savepoint");

    // A changed window cannot take the old state: `check --savepoint` says so.
    let incompatible = flow.replace("tumbling(5s)", "tumbling(10s)");
    std::fs::write(dir.path().join("p.flow"), format!("{SCHEMA}\n{incompatible}")).unwrap();
    let c = flowc(dir.path()).args(["check", "p.flow", "--savepoint", "sp"]).output().unwrap();
    let report = text(&c.stdout);
    assert_eq!(c.status.code(), Some(1), "{report}");
    assert!(report.contains("incompatible  w.window-"), "{report}");
}

#[test]
fn spilled_rocksdb_state_survives_kill_9() {
    // Every window spills to RocksDB after every batch: snapshots and deltas must take
    // the spilled windows too, and a restart must not trust the spill area.
    crash_test(
        r#"
sink out = file("out.jsonl")
pipeline w = from bank | key_by account | window session(gap: 30s)
    | aggregate { n: count(), total: sum(amount) } -> out
"#,
        60_000,
        &["--state-backend", "rocksdb", "--state-memory", "0"],
    );
}

#[test]
fn late_records_are_judged_the_same_after_kill_9() {
    // Every 1000th record is 10 s ahead: the watermark jumps past it, and most of the
    // next 800 records come late (counted only). A restored run must judge each record
    // against the watermark the uninterrupted run had — the sources' watermarks are in
    // the checkpoint — or it would take late records into windows.
    let flow = r#"
sink out = file("out.jsonl")
pipeline w = from bank | key_by account | window tumbling(5s)
    | aggregate { n: count(), total: sum(amount) } -> out
"#;
    let disorder = |dir: &Path| {
        let text: String = input(150_000)
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i % 1000 == 500 {
                    let ts = 1_700_000_000_000u64 + i as u64 * 10;
                    l.replace(&format!("\"ts\":{ts}"), &format!("\"ts\":{}", ts + 10_000)) + "\n"
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(dir.join("txns.jsonl"), text).unwrap();
    };
    let reference = setup(flow, 1);
    disorder(reference.path());
    let (o, span) = timed_run_to_end(reference.path(), &[]);
    assert!(text(&o.stderr).contains("late record"), "the input has no late records: {}", text(&o.stderr));
    let want = lines(&reference.path().join("out.jsonl"));
    let fresh = || {
        let dir = setup(flow, 1);
        disorder(dir.path());
        dir
    };
    let mut rng = Rng(seed());
    let (dir, hit) = crash_until_hit(&fresh, &[], kills(), &mut rng, span);
    assert!(lines(&dir.path().join("out.jsonl")) == want, "window results differ after {hit} kills");
}
