//! Crash test with real processes. A child process (this test binary re-executed in
//! child mode) appends from four threads with `fsync` acks and prints every
//! acknowledged append on its stdout pipe; the parent SIGKILLs it at a random instant,
//! reopens the log (running recovery) and checks that every acknowledged record is
//! present, intact, at its offset, that offsets are dense and that nothing else
//! (garbage, half-written records) is there. Then the next trial continues the same
//! log. `FLOW_CRASH_TRIALS` sets the number of trials (default 20), `FLOW_CRASH_SEED`
//! replays a run.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flow_runtime::log::{Access, Acks, LogDir, NewRecord, TopicConfig};

const CHILD_ENV: &str = "FLOW_LOG_CRASH_CHILD_DIR";
const THREADS: usize = 4;

/// A small deterministic generator (splitmix64), so a failing run can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The value of record `seq` written by (`run`, `thread`): self-describing, with a
/// length that varies, so a torn or misplaced record cannot pass for a good one.
fn value(run: u64, thread: usize, seq: u64) -> Vec<u8> {
    let mut v = format!("r{run}-t{thread}-s{seq}|").into_bytes();
    let pad = (seq.wrapping_mul(2_654_435_761) % 600) as usize;
    v.extend((0..pad).map(|i| b'a' + ((i as u64 + seq) % 26) as u8));
    v
}

fn parse_value(v: &[u8]) -> Option<(u64, usize, u64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (head, _) = s.split_once('|')?;
    let mut it = head.split('-');
    let run = it.next()?.strip_prefix('r')?.parse().ok()?;
    let thread = it.next()?.strip_prefix('t')?.parse().ok()?;
    let seq = it.next()?.strip_prefix('s')?.parse().ok()?;
    (value(run, thread, seq) == v).then_some((run, thread, seq))
}

/// Child mode: append forever, reporting `ack <run> <thread> <seq0> <base> <last>`.
#[test]
#[ignore = "helper: runs only as the crash test's child process"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let run: u64 = std::env::var("FLOW_LOG_CRASH_RUN").unwrap().parse().unwrap();
    let dir = LogDir::new(dir);
    let topic = Arc::new(dir.open_topic("crash", Access::ReadWrite).unwrap());
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    {
        let mut o = out.lock().unwrap();
        writeln!(o, "ready").unwrap();
        o.flush().unwrap();
    }
    std::thread::scope(|s| {
        for thread in 0..THREADS {
            let topic = topic.clone();
            let out = out.clone();
            s.spawn(move || {
                let mut rng = Rng(run * 1000 + thread as u64);
                let mut seq = 0u64;
                loop {
                    // Mostly small appends; now and then a ~1 MB one, which a kill can
                    // interrupt halfway through its write (a torn tail for recovery).
                    let n = if rng.below(10) == 0 { 2000 + rng.below(2000) } else { 1 + rng.below(40) };
                    let recs: Vec<NewRecord> = (0..n)
                        .map(|k| NewRecord::new(1_700_000_000_000, None, Bytes::from(value(run, thread, seq + k))))
                        .collect();
                    let a = topic.partition(0).unwrap().append(&recs, Acks::Fsync).unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ack {run} {thread} {seq} {} {}", a.base_offset, a.last_offset).unwrap();
                    o.flush().unwrap();
                    seq += n;
                }
            });
        }
    });
}

#[test]
fn sigkill_at_random_instants_loses_no_acknowledged_record() {
    let trials: u64 = std::env::var("FLOW_CRASH_TRIALS").ok().and_then(|t| t.parse().ok()).unwrap_or(20);
    let seed: u64 = std::env::var("FLOW_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("crash test: {trials} trials, FLOW_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = LogDir::new(tmp.path());
    // Small segments, so kills also land around rolls and index writes.
    let cfg = TopicConfig { segment_bytes: 64 * 1024, retention_ms: None, ..TopicConfig::default() };
    dir.create_topic("crash", &cfg).unwrap();
    // offset -> (run, thread, seq) of every acknowledged record, over all trials
    let mut acked: BTreeMap<u64, (u64, usize, u64)> = BTreeMap::new();
    let mut truncations = 0;
    for run in 0..trials {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, tmp.path())
            .env("FLOW_LOG_CRASH_RUN", run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            lines
        });
        // Kill between 5 and 300 ms after start (the child needs a few ms to open).
        let delay = Duration::from_millis(5 + rng.below(296));
        let start = Instant::now();
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let mut acks = 0;
        for l in &lines {
            let f: Vec<&str> = l.split(' ').collect();
            if f.len() != 6 || f[0] != "ack" {
                continue; // "ready", or a line cut by the kill
            }
            let p = |i: usize| f[i].parse::<u64>().unwrap();
            let (r, thread, seq0, base, last) = (p(1), p(2) as usize, p(3), p(4), p(5));
            for (k, off) in (base..=last).enumerate() {
                acked.insert(off, (r, thread, seq0 + k as u64));
            }
            acks += 1;
        }

        // Reopen (recovery) and check.
        let t = dir.open_topic("crash", Access::ReadWrite).unwrap();
        truncations += t.recovery_events().len();
        let p = t.partition(0).unwrap();
        assert_eq!(p.start_offset(), 0);
        let end = p.end_offset();
        let mut off = 0u64;
        while off < end {
            let recs = p.read_records(off, 1 << 20).unwrap();
            assert!(!recs.is_empty(), "trial {run}: nothing readable at {off} < end {end}");
            for r in recs {
                assert_eq!(r.offset, off, "trial {run}: offsets are dense");
                let v = r.value.as_ref().unwrap();
                let parsed = parse_value(v);
                assert!(parsed.is_some(), "trial {run}: garbage at offset {off}: {:?}", String::from_utf8_lossy(v));
                if let Some(want) = acked.get(&off) {
                    assert_eq!(parsed.unwrap(), *want, "trial {run}: acknowledged record at offset {off} is intact");
                }
                off += 1;
            }
        }
        if let Some((&last_acked, _)) = acked.iter().next_back() {
            assert!(last_acked < end, "trial {run}: acknowledged offset {last_acked} lost (end {end}, seed {seed})");
        }
        eprintln!("trial {run}: killed after {:?}, {acks} acks seen, end offset {end}", start.elapsed());
    }
    assert!(!acked.is_empty(), "the children acknowledged something");
    eprintln!("crash test: {} acknowledged records checked, {truncations} recovery events", acked.len());
}
