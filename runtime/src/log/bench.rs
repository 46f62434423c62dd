//! The `flowc bench log` measurements: the log's append and read throughput, each
//! next to the file system's own limit measured in the same run, because on a shared
//! machine those limits move several-fold with the neighbours' load.
//!
//! Knows the log only through its public API; owns no format or policy.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::io::{FaultyIo, SystemClock};
use super::{Access, Acks, LogDir, NewRecord, TopicConfig};

/// Bytes of each record value in the throughput runs.
pub const RECORD_BYTES: usize = 100;
/// Records per append in the batched runs.
pub const BATCH_RECORDS: usize = 1000;
/// How long the fsync-latency probe and the one-record group-commit run last.
const PROBE_DURATION: Duration = Duration::from_secs(1);

/// One measured line: a rate and the limit it is compared with.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub name: String,
    pub records_per_s: f64,
    pub mb_per_s: f64,
    /// The limit's value and unit, and our result as a fraction of it.
    pub limit: Option<(String, f64)>,
    pub note: String,
}

/// Everything `flowc bench log` prints.
#[derive(Clone, Debug, Default)]
pub struct BenchReport {
    pub fs_write_mb_per_s: f64,
    pub fs_read_mb_per_s: f64,
    pub fsync_4k_median_ms: f64,
    pub fsync_4k_per_s: f64,
    pub results: Vec<Measurement>,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "file system limits (measured in this run):")?;
        writeln!(f, "  sequential buffered write + one fdatasync : {:>9.1} MB/s", self.fs_write_mb_per_s)?;
        writeln!(f, "  sequential read from the page cache       : {:>9.1} MB/s", self.fs_read_mb_per_s)?;
        writeln!(
            f,
            "  4 KiB append + fdatasync                  : {:>9.3} ms median, {:.0} per second",
            self.fsync_4k_median_ms, self.fsync_4k_per_s
        )?;
        writeln!(f, "log:")?;
        for m in &self.results {
            write!(f, "  {:<44}: {:>11.0} records/s {:>9.1} MB/s", m.name, m.records_per_s, m.mb_per_s)?;
            if let Some((limit, ratio)) = &m.limit {
                write!(f, "  = {ratio:.2}x {limit}")?;
            }
            if !m.note.is_empty() {
                write!(f, "  ({})", m.note)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

fn mb(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn e(context: &str, err: impl fmt::Display) -> String {
    format!("{context}: {err}")
}

/// Sequential write of `bytes` in 1 MiB buffered writes, then one fdatasync.
pub fn fs_sequential_write(path: &Path, bytes: u64) -> Result<f64, String> {
    let chunk = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut f = File::create(path).map_err(|x| e("creating the probe file", x))?;
    let mut written = 0u64;
    while written < bytes {
        let n = chunk.len().min((bytes - written) as usize);
        f.write_all(&chunk[..n]).map_err(|x| e("writing the probe file", x))?;
        written += n as u64;
    }
    f.sync_data().map_err(|x| e("syncing the probe file", x))?;
    Ok(mb(written, start.elapsed()))
}

/// Sequential read of a (cached) file in 1 MiB preads.
pub fn fs_sequential_read(path: &Path) -> Result<f64, String> {
    let f = File::open(path).map_err(|x| e("opening the probe file", x))?;
    let len = f.metadata().map_err(|x| e("probe file size", x))?.len();
    let mut buf = vec![0u8; 1 << 20];
    // Warm the cache, then measure.
    for round in 0..2 {
        let start = Instant::now();
        let mut pos = 0u64;
        let mut sum = 0u64;
        while pos < len {
            let n = f.read_at(&mut buf, pos).map_err(|x| e("reading the probe file", x))?;
            if n == 0 {
                break;
            }
            sum = sum.wrapping_add(u64::from(buf[n - 1]));
            pos += n as u64;
        }
        std::hint::black_box(sum);
        if round == 1 {
            return Ok(mb(pos, start.elapsed()));
        }
    }
    Ok(0.0)
}

/// Median fdatasync latency of 4 KiB appends, over about two seconds.
pub fn fs_fsync_latency(path: &Path) -> Result<(f64, f64), String> {
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|x| e("creating the fsync probe", x))?;
    let block = vec![0xa5u8; 4096];
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut pos = 0u64;
    while start.elapsed() < PROBE_DURATION && lat.len() < 100_000 {
        let t = Instant::now();
        f.write_all_at(&block, pos).map_err(|x| e("writing the fsync probe", x))?;
        f.sync_data().map_err(|x| e("syncing the fsync probe", x))?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        pos += 4096;
    }
    let per_s = lat.len() as f64 / start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Ok((lat.get(lat.len() / 2).copied().unwrap_or(f64::NAN), per_s))
}

fn batch_of(n: usize) -> Vec<NewRecord> {
    let value = Bytes::from(vec![b'x'; RECORD_BYTES]);
    (0..n).map(|_| NewRecord::new(1_700_000_000_000, None, value.clone())).collect()
}

fn fresh_topic(dir: &LogDir, name: &str) -> Result<(), String> {
    let cfg = TopicConfig { retention_ms: None, ..TopicConfig::default() };
    dir.create_topic(name, &cfg).map_err(|x| e("creating a bench topic", x))
}

/// Run every measurement in a scratch directory under `data_dir` (removed afterwards).
pub fn run(data_dir: &Path, bytes: u64, producers: usize) -> Result<BenchReport, String> {
    let scratch: PathBuf = data_dir.join(format!(".bench-{}", std::process::id()));
    fs::create_dir_all(&scratch).map_err(|x| e("creating the scratch directory", x))?;
    let result = run_in(&scratch, bytes, producers.max(1));
    let _ = fs::remove_dir_all(&scratch);
    result
}

fn run_in(scratch: &Path, bytes: u64, producers: usize) -> Result<BenchReport, String> {
    let mut r = BenchReport::default();
    let probe = scratch.join("probe.bin");
    r.fs_write_mb_per_s = fs_sequential_write(&probe, bytes)?;
    r.fs_read_mb_per_s = fs_sequential_read(&probe)?;
    let _ = fs::remove_file(&probe);
    let (median, per_s) = fs_fsync_latency(&scratch.join("fsync.bin"))?;
    let _ = fs::remove_file(scratch.join("fsync.bin"));
    r.fsync_4k_median_ms = median;
    r.fsync_4k_per_s = per_s;

    // FaultyIo with no faults armed is StdIo plus a count of fdatasyncs.
    let (io, faults) = FaultyIo::new();
    let dir = LogDir::with_io(scratch.join("log"), Arc::new(io), Arc::new(SystemClock));

    // 1. os acks, one producer, batches of 1000 x 100 B, ending with one fdatasync like the limit.
    fresh_topic(&dir, "os")?;
    let t = dir.open_topic("os", Access::ReadWrite).map_err(|x| e("opening", x))?;
    let p = t.partition(0).map_err(|x| e("partition", x))?;
    let batch = batch_of(BATCH_RECORDS);
    let batches = (bytes / (RECORD_BYTES * BATCH_RECORDS) as u64).max(1);
    let start = Instant::now();
    for _ in 0..batches {
        p.append(&batch, Acks::Os).map_err(|x| e("append", x))?;
    }
    p.flush().map_err(|x| e("flush", x))?;
    let d = start.elapsed();
    let records = batches * BATCH_RECORDS as u64;
    let disk_bytes = p.info().size_bytes;
    r.results.push(Measurement {
        name: "append os acks, 1 producer, batches of 1000".into(),
        records_per_s: records as f64 / d.as_secs_f64(),
        mb_per_s: mb(disk_bytes, d),
        limit: Some(("the sequential write limit".into(), mb(disk_bytes, d) / r.fs_write_mb_per_s)),
        note: format!("{:.1} MB/s of 100 B payload", mb(records * RECORD_BYTES as u64, d)),
    });

    // 2. Sequential read of what was just written (page cache), CRC-checked batches.
    let start = Instant::now();
    let mut offset = p.start_offset();
    let end = p.end_offset();
    let mut read_bytes = 0u64;
    let mut read_records = 0u64;
    while offset < end {
        let batches = p.read(offset, 1 << 20).map_err(|x| e("read", x))?;
        for b in &batches {
            read_bytes += b.bytes().len() as u64;
            read_records += b.last_offset() - offset.max(b.base_offset()) + 1;
            offset = b.last_offset() + 1;
        }
    }
    let d = start.elapsed();
    r.results.push(Measurement {
        name: "sequential read from the page cache".into(),
        records_per_s: read_records as f64 / d.as_secs_f64(),
        mb_per_s: mb(read_bytes, d),
        limit: Some(("the raw file read".into(), mb(read_bytes, d) / r.fs_read_mb_per_s)),
        note: format!("target 2000 MB/s: {:.2}x", mb(read_bytes, d) / 2000.0),
    });
    drop(t);
    dir.delete_topic("os").map_err(|x| e("delete", x))?;

    // 3. fsync acks, N producers, batches of 1000 (group commit).
    let probe_path = scratch.join("fsync.bin");
    let records = batches * BATCH_RECORDS as u64 / 4;
    r.results.push(fsync_acked_in(&dir, &faults, &probe_path, records, producers)?);

    // 4. fsync acks, N producers, one record per append: group commit alone.
    let (median, _) = fs_fsync_latency(&probe_path)?;
    let _ = fs::remove_file(&probe_path);
    let one_fsync_per_record = 1e3 / median;
    fresh_topic(&dir, "fsync1")?;
    let t = dir.open_topic("fsync1", Access::ReadWrite).map_err(|x| e("opening", x))?;
    let single = batch_of(1);
    let syncs_before = faults.syncs.load(Ordering::SeqCst);
    let start = Instant::now();
    let deadline = start + PROBE_DURATION;
    std::thread::scope(|s| -> Result<(), String> {
        let handles: Vec<_> = (0..producers)
            .map(|_| {
                let t = &t;
                let single = &single;
                s.spawn(move || -> Result<(), String> {
                    let p = t.partition(0).map_err(|x| e("partition", x))?;
                    while Instant::now() < deadline {
                        p.append(single, Acks::Fsync).map_err(|x| e("append", x))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "a producer thread panicked".to_string())??;
        }
        Ok(())
    })?;
    let d = start.elapsed();
    let syncs = faults.syncs.load(Ordering::SeqCst) - syncs_before;
    let p = t.partition(0).map_err(|x| e("partition", x))?;
    let records = p.end_offset();
    let rps = records as f64 / d.as_secs_f64();
    r.results.push(Measurement {
        name: format!("append fsync acks, {producers} producers, 1 record each"),
        records_per_s: rps,
        mb_per_s: mb(p.info().size_bytes, d),
        limit: Some((format!("one fsync per record ({median:.3} ms just before)"), rps / one_fsync_per_record)),
        note: format!(
            "{syncs} fdatasyncs for {records} appends, {:.1} per fdatasync",
            records as f64 / syncs.max(1) as f64
        ),
    });
    drop(t);
    dir.delete_topic("fsync1").map_err(|x| e("delete", x))?;
    Ok(r)
}

/// The log's direct fsync-acked append throughput: `producers` threads append batches of
/// [`BATCH_RECORDS`] records of [`RECORD_BYTES`] to one partition with [`Acks::Fsync`]
/// (group commit shares the fdatasyncs), about `records` records in all, in a scratch
/// directory under `scratch` (removed afterwards). `flowc bench kafka` sets the Kafka
/// protocol's produce beside this figure.
pub fn fsync_acked_append(scratch: &Path, records: u64, producers: usize) -> Result<Measurement, String> {
    let scratch = scratch.join(format!(".bench-fsync-{}", std::process::id()));
    fs::create_dir_all(&scratch).map_err(|x| e("creating the scratch directory", x))?;
    let (io, faults) = FaultyIo::new();
    let dir = LogDir::with_io(scratch.join("log"), Arc::new(io), Arc::new(SystemClock));
    let result = fsync_acked_in(&dir, &faults, &scratch.join("fsync.bin"), records, producers.max(1));
    let _ = fs::remove_dir_all(&scratch);
    result
}

fn fsync_acked_in(
    dir: &LogDir,
    faults: &super::io::Faults,
    probe_path: &Path,
    records: u64,
    producers: usize,
) -> Result<Measurement, String> {
    let batch = batch_of(BATCH_RECORDS);
    // fsync latency moves several-fold with the neighbours' load, so probe it right before.
    let (median, _) = fs_fsync_latency(probe_path)?;
    let _ = fs::remove_file(probe_path);
    let one_fsync_per_record = 1e3 / median;
    fresh_topic(dir, "fsync")?;
    let t = dir.open_topic("fsync", Access::ReadWrite).map_err(|x| e("opening", x))?;
    let per_producer = (records / BATCH_RECORDS as u64 / producers as u64).max(1);
    let syncs_before = faults.syncs.load(Ordering::SeqCst);
    let start = Instant::now();
    std::thread::scope(|s| -> Result<(), String> {
        let handles: Vec<_> = (0..producers)
            .map(|_| {
                let t = &t;
                let batch = &batch;
                s.spawn(move || -> Result<(), String> {
                    let p = t.partition(0).map_err(|x| e("partition", x))?;
                    for _ in 0..per_producer {
                        p.append(batch, Acks::Fsync).map_err(|x| e("append", x))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "a producer thread panicked".to_string())??;
        }
        Ok(())
    })?;
    let d = start.elapsed();
    let syncs = faults.syncs.load(Ordering::SeqCst) - syncs_before;
    let records = per_producer * producers as u64 * BATCH_RECORDS as u64;
    let rps = records as f64 / d.as_secs_f64();
    let p = t.partition(0).map_err(|x| e("partition", x))?;
    let m = Measurement {
        name: format!("append fsync acks, {producers} producers, batches of 1000"),
        records_per_s: rps,
        mb_per_s: mb(p.info().size_bytes, d),
        limit: Some((format!("one fsync per record ({median:.3} ms just before)"), rps / one_fsync_per_record)),
        note: format!("{syncs} fdatasyncs for {} appends", per_producer * producers as u64),
    };
    drop(t);
    dir.delete_topic("fsync").map_err(|x| e("delete", x))?;
    Ok(m)
}
