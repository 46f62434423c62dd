//! Checkpoints on disk: where a run's completed snapshots live, how their metadata is
//! written atomically, listed, verified and pruned.
//!
//! A run's checkpoints live in `<data dir>/checkpoints/`:
//!
//! ```text
//! checkpoints/
//!   chk-0000000007/          one checkpoint: complete once `_metadata` exists
//!     _metadata              JSON, then a line with its CRC32C
//!     p.fraud-s2-i0.state    an operator instance's state (its CRC is in _metadata)
//!   parts/                   sink output staged until the checkpoint covering it completes
//! ```
//!
//! `_metadata` is written last, to a temporary file that is fsynced and renamed into
//! place (and the directory fsynced): a checkpoint either has all of it or is incomplete
//! and ignored. State files are fsynced before the metadata that names them. Reading a
//! checkpoint checks the metadata's CRC and every state file's size and CRC; one that
//! fails is skipped with a warning naming it, and recovery falls back to the one before.
//! The protocol around these files (barriers, acknowledgements, sink commits) is in
//! `run/checkpoint.rs` and docs/checkpoints.md.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The metadata format's version.
pub const FORMAT_VERSION: u32 = 1;
const METADATA: &str = "_metadata";

/// One completed checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub version: u32,
    pub id: u64,
    /// Wall-clock time the checkpoint was triggered (epoch ms).
    pub triggered_ms: i64,
    /// From trigger to the last acknowledgement.
    pub duration_ms: u64,
    /// A fingerprint of the program's pipelines: state is restored only into the same.
    pub program: String,
    /// Per pipeline, where its input stood at the barrier.
    pub positions: BTreeMap<String, Position>,
    /// Every operator instance's state.
    pub operators: Vec<OperatorState>,
    /// Per pipeline with event time, where its source's watermarks stood.
    #[serde(default)]
    pub watermarks: BTreeMap<String, Watermarks>,
    /// Sink output this checkpoint commits.
    pub sinks: Vec<SinkCommit>,
    /// The last checkpoint of a run that ended (every input ended or was read to its
    /// end): a later run of another program starts over instead of refusing it.
    #[serde(default)]
    pub last: bool,
}

/// Where a pipeline's input stood when its reader sent the barrier on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// JSON-lines files: the next file (index into the sorted expansion of the path),
    /// its next byte, and that byte's line number.
    File { file: usize, byte: u64, line: u64 },
    /// A topic of the log: the next offset per partition.
    Topic { next: BTreeMap<u32, u64> },
    /// A generator: records generated so far.
    Generator { records: u64 },
    /// The input had ended: nothing is left to read.
    Ended,
}

/// A source's watermark state at a barrier (see `run/stamp.rs`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Watermarks {
    pub wm: i64,
    /// The largest event time seen per partition.
    pub max_ts: BTreeMap<u32, i64>,
}

/// One operator instance's state file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperatorState {
    pub pipeline: String,
    /// The operator's stable id within the pipeline.
    pub operator: String,
    pub instance: usize,
    /// What this checkpoint wrote for it: a full snapshot or a delta.
    pub file: StateFile,
    /// The files its state is restored from, in order: a full snapshot, then the deltas
    /// taken after it (the last is `file`). Earlier checkpoints' files are shared, not
    /// copied; pruning keeps the checkpoints they are in.
    #[serde(default)]
    pub chain: Vec<StateFile>,
}

impl OperatorState {
    /// The files to restore from, in order.
    pub fn files(&self) -> Vec<&StateFile> {
        if self.chain.is_empty() {
            vec![&self.file]
        } else {
            self.chain.iter().collect()
        }
    }
}

/// A state file, with what it must hold. Its name is relative to the checkpoints'
/// directory (`chk-0000000007/p-op-0-7.full`), or to a savepoint's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub name: String,
    pub bytes: u64,
    pub crc32c: u32,
}

/// A file sink's commit: its staged parts appended, in order, to `path`, which held
/// `len_before` committed bytes and holds `len_after` once this commit is applied.
/// Applying it again is harmless: the file is first cut back to `len_before`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SinkCommit {
    pub sink: String,
    pub path: PathBuf,
    pub len_before: u64,
    pub len_after: u64,
    /// Part files (in `parts/`), in the order they are appended.
    pub parts: Vec<StateFile>,
    /// A header line written first when the file is empty (CSV).
    pub header: Option<String>,
    /// For a topic of the log: its name, and per partition the end offset before the
    /// commit and after it (`path` and the lengths are unused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub before: BTreeMap<u32, u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub after: BTreeMap<u32, u64>,
}

/// A checkpoint as listed: complete, or why it cannot be used.
#[derive(Clone, Debug)]
pub struct Listed {
    pub id: u64,
    pub dir: PathBuf,
    pub meta: Result<Metadata, String>,
    /// Bytes of its state files.
    pub bytes: u64,
}

/// A run's checkpoint directory.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    root: PathBuf,
}

impl CheckpointStore {
    pub fn new(data_dir: &Path) -> CheckpointStore {
        CheckpointStore { root: data_dir.join("checkpoints") }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where staged sink output goes.
    pub fn parts_dir(&self) -> PathBuf {
        self.root.join("parts")
    }

    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.join(format!("chk-{id:010}"))
    }

    /// Writes state file `name` of checkpoint `id` (created if needed) and fsyncs it.
    pub fn write_state(&self, id: u64, name: &str, bytes: &[u8]) -> Result<StateFile, String> {
        let dir = self.dir(id);
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let path = dir.join(name);
        write_synced(&path, bytes)?;
        Ok(StateFile { name: format!("chk-{id:010}/{name}"), bytes: bytes.len() as u64, crc32c: crc32c::crc32c(bytes) })
    }

    /// Reads state file `f`, checking its size and CRC.
    pub fn read_state(&self, f: &StateFile) -> Result<Vec<u8>, String> {
        read_checked(&self.root.join(&f.name), f)
    }

    /// Makes checkpoint `meta.id` complete: its metadata, written atomically.
    pub fn complete(&self, meta: &Metadata) -> Result<(), String> {
        write_metadata(&self.dir(meta.id), meta)?;
        sync_dir(&self.root)
    }

    /// Copies checkpoint `id` (its state files, then its metadata) to `to`: a savepoint,
    /// which outlives the checkpoints it was made from.
    pub fn copy_to(&self, id: u64, to: &Path) -> Result<Metadata, String> {
        let mut meta = self.load(id)?;
        fs::create_dir_all(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
        // The savepoint holds every file of every chain, flat.
        let flat =
            |f: &StateFile| StateFile { name: f.name.rsplit('/').next().unwrap_or(&f.name).to_string(), ..f.clone() };
        for op in &mut meta.operators {
            for f in op.files() {
                let bytes = self.read_state(f)?;
                write_synced(&to.join(&flat(f).name), &bytes)?;
            }
            op.chain = op.files().into_iter().map(flat).collect();
            op.file = flat(&op.file);
        }
        write_metadata(to, &meta)?;
        Ok(meta)
    }

    /// Reads and checks checkpoint `id`'s metadata and state files.
    pub fn load(&self, id: u64) -> Result<Metadata, String> {
        let dir = self.dir(id);
        let meta = read_metadata(&dir.join(METADATA))?;
        if meta.id != id {
            return Err(format!("its metadata names checkpoint {}", meta.id));
        }
        for op in &meta.operators {
            for f in op.files() {
                read_checked(&self.root.join(&f.name), f)?;
            }
        }
        for s in &meta.sinks {
            for p in &s.parts {
                let path = self.parts_dir().join(&p.name);
                // A part is deleted once appended: then the sink file must hold it.
                if path.exists() {
                    read_checked(&path, p)?;
                } else if s.topic.is_none() {
                    let len = fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0);
                    if len < s.len_after {
                        return Err(format!(
                            "sink part {} is missing and {} holds {len} of the {} committed bytes",
                            p.name,
                            s.path.display(),
                            s.len_after
                        ));
                    }
                }
            }
        }
        Ok(meta)
    }

    /// Every checkpoint directory, oldest first: complete ones with their metadata,
    /// others with why they cannot be used.
    pub fn list(&self) -> Vec<Listed> {
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&self.root) else { return out };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix("chk-").and_then(|n| n.parse::<u64>().ok()) else { continue };
            let dir = e.path();
            let bytes = fs::read_dir(&dir)
                .map(|d| d.flatten().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum())
                .unwrap_or(0);
            let meta = if dir.join(METADATA).exists() {
                self.load(id)
            } else {
                Err("incomplete (no metadata: the run stopped before every operator acknowledged it)".into())
            };
            out.push(Listed { id, dir, meta, bytes });
        }
        out.sort_by_key(|l| l.id);
        out
    }

    /// The newest usable checkpoint, with a warning for every newer one skipped.
    pub fn latest(&self) -> (Option<Metadata>, Vec<String>) {
        let mut warnings = Vec::new();
        for l in self.list().into_iter().rev() {
            match l.meta {
                Ok(m) => return (Some(m), warnings),
                Err(e) if l.dir.join(METADATA).exists() => {
                    warnings.push(format!("checkpoint {} ({}) is unusable: {e}", l.id, l.dir.display()))
                }
                Err(_) => {}
            }
        }
        (None, warnings)
    }

    /// The highest checkpoint id on disk, complete or not (new ids go above it).
    pub fn highest_id(&self) -> u64 {
        self.list().last().map_or(0, |l| l.id)
    }

    /// Keeps the newest `keep` complete checkpoints (at least one); deletes older ones
    /// and incomplete ones older than the newest complete one.
    pub fn prune(&self, keep: usize) -> Result<(), String> {
        let all = self.list();
        let complete: Vec<u64> = all.iter().filter(|l| l.meta.is_ok()).map(|l| l.id).collect();
        let Some(&newest) = complete.last() else { return Ok(()) };
        let mut kept: Vec<u64> = complete.iter().rev().take(keep.max(1)).copied().collect();
        // And the checkpoints whose files the kept ones' chains share.
        for l in &all {
            if let (true, Ok(m)) = (kept.contains(&l.id), &l.meta) {
                for op in &m.operators {
                    for f in op.files() {
                        let dir = f.name.split('/').next().unwrap_or("");
                        if let Some(id) = dir.strip_prefix("chk-").and_then(|n| n.parse::<u64>().ok()) {
                            kept.push(id);
                        }
                    }
                }
            }
        }
        for l in all {
            if l.id < newest && !kept.contains(&l.id) {
                fs::remove_dir_all(&l.dir).map_err(|e| format!("deleting {}: {e}", l.dir.display()))?;
            }
        }
        Ok(())
    }

    /// Deletes every checkpoint and staged part (`flowc run --fresh`).
    pub fn clear(&self) -> Result<(), String> {
        match fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("deleting {}: {e}", self.root.display())),
        }
    }
}

/// Writes `meta` as `dir`'s `_metadata`, atomically (temporary file, fsync, rename,
/// directory fsync).
fn write_metadata(dir: &Path, meta: &Metadata) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut text = serde_json::to_string_pretty(meta).map_err(|e| e.to_string())?;
    let crc = crc32c::crc32c(text.as_bytes());
    text.push_str(&format!("\ncrc32c {crc:08x}\n"));
    let tmp = dir.join(format!("{METADATA}.tmp"));
    write_synced(&tmp, text.as_bytes())?;
    fs::rename(&tmp, dir.join(METADATA)).map_err(|e| format!("renaming {}: {e}", tmp.display()))?;
    sync_dir(dir)
}

/// Reads and checks a savepoint (or any checkpoint directory): its metadata and every
/// state file it names.
pub fn load_dir(dir: &Path) -> Result<Metadata, String> {
    let meta = read_metadata(&dir.join(METADATA))?;
    for op in &meta.operators {
        for f in op.files() {
            read_checked(&dir.join(&f.name), f)?;
        }
    }
    Ok(meta)
}

/// Where `flowc savepoint create` leaves its request for the run on a data directory.
pub fn savepoint_request(data_dir: &Path) -> PathBuf {
    data_dir.join("checkpoints").join("savepoint-request")
}

fn read_metadata(path: &Path) -> Result<Metadata, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let body = text.trim_end_matches('\n');
    let (json, last) = body.rsplit_once('\n').ok_or("the metadata has no CRC line")?;
    let want = last
        .strip_prefix("crc32c ")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or("the metadata's last line is not its CRC")?;
    let got = crc32c::crc32c(json.as_bytes());
    if got != want {
        return Err(format!("the metadata's CRC is {got:08x}, not the {want:08x} it records"));
    }
    let meta: Metadata = serde_json::from_str(json).map_err(|e| format!("the metadata does not parse: {e}"))?;
    if meta.version != FORMAT_VERSION {
        return Err(format!("metadata version {} (this flowc reads {FORMAT_VERSION})", meta.version));
    }
    Ok(meta)
}

/// Reads `path`, checking it holds what `f` says.
pub fn read_checked(path: &Path, f: &StateFile) -> Result<Vec<u8>, String> {
    let bytes = fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    if bytes.len() as u64 != f.bytes {
        return Err(format!("{} holds {} bytes, not {}", path.display(), bytes.len(), f.bytes));
    }
    let crc = crc32c::crc32c(&bytes);
    if crc != f.crc32c {
        return Err(format!("{} has CRC {crc:08x}, not {:08x}", path.display(), f.crc32c));
    }
    Ok(bytes)
}

/// Writes `bytes` to `path` and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut f = fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    f.write_all(bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
    f.sync_all().map_err(|e| format!("syncing {}: {e}", path.display()))
}

/// Fsyncs a directory (so a rename or a new file in it survives a crash).
pub fn sync_dir(dir: &Path) -> Result<(), String> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| format!("syncing {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: u64, store: &CheckpointStore) -> Metadata {
        let f = store.write_state(id, "op.state", format!("state of {id}").as_bytes()).unwrap();
        Metadata {
            version: FORMAT_VERSION,
            id,
            triggered_ms: 1_700_000_000_000,
            duration_ms: 3,
            program: "p".into(),
            positions: [("p".to_string(), Position::File { file: 0, byte: 10 * id, line: id })].into(),
            watermarks: BTreeMap::new(),
            last: false,
            operators: vec![OperatorState {
                pipeline: "p".into(),
                operator: "op1".into(),
                instance: 0,
                file: f.clone(),
                chain: vec![f],
            }],
            sinks: Vec::new(),
        }
    }

    #[test]
    fn metadata_round_trips_and_the_newest_complete_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        for id in 1..=3 {
            store.complete(&meta(id, &store)).unwrap();
        }
        // An incomplete one (state written, no metadata) is newer but not usable.
        store.write_state(4, "op.state", b"half").unwrap();
        let (latest, warnings) = store.latest();
        assert_eq!(latest, Some(meta(3, &store)));
        assert!(warnings.is_empty());
        assert_eq!(store.highest_id(), 4);
        assert!(!store.dir(3).join("_metadata.tmp").exists());
    }

    #[test]
    fn a_damaged_checkpoint_is_skipped_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        store.complete(&meta(1, &store)).unwrap();
        store.complete(&meta(2, &store)).unwrap();
        // A flipped byte in a state file.
        let p = store.dir(2).join("op.state");
        let mut b = fs::read(&p).unwrap();
        b[0] ^= 1;
        fs::write(&p, b).unwrap();
        let (latest, warnings) = store.latest();
        assert_eq!(latest.map(|m| m.id), Some(1));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("checkpoint 2") && warnings[0].contains("CRC"), "{warnings:?}");
        // Damaged metadata.
        let m = store.dir(1).join("_metadata");
        let text = fs::read_to_string(&m).unwrap().replace("\"id\": 1", "\"id\": 7");
        fs::write(&m, text).unwrap();
        let (latest, warnings) = store.latest();
        assert_eq!(latest, None);
        assert_eq!(warnings.len(), 2);
        assert!(warnings[1].contains("CRC"), "{warnings:?}");
    }

    #[test]
    fn metadata_is_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        let m = meta(5, &store);
        // A crash after the temporary file was written but before the rename leaves
        // the checkpoint incomplete.
        fs::write(store.dir(5).join("_metadata.tmp"), "{\"partial\": ").unwrap();
        assert_eq!(store.latest().0, None);
        assert!(store.list()[0].meta.is_err());
        store.complete(&m).unwrap();
        assert_eq!(store.latest().0, Some(m));
        // A truncated metadata file (a torn write) fails its check.
        let p = store.dir(5).join("_metadata");
        let text = fs::read_to_string(&p).unwrap();
        fs::write(&p, &text[..text.len() / 2]).unwrap();
        assert!(store.load(5).is_err());
    }

    #[test]
    fn pruning_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        store.write_state(1, "op.state", b"never completed").unwrap();
        for id in 2..=6 {
            store.complete(&meta(id, &store)).unwrap();
        }
        store.write_state(7, "op.state", b"in flight").unwrap();
        store.prune(3).unwrap();
        let ids: Vec<u64> = store.list().iter().map(|l| l.id).collect();
        assert_eq!(ids, vec![4, 5, 6, 7]);
    }
}
