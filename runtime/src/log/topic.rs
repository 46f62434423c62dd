//! Topics and the data directory: `<data-dir>/<topic>/meta.json` holds the topic's
//! configuration and `<data-dir>/<topic>/<partition>/` its segments. Creating,
//! listing, opening (with an exclusive writer lock per topic) and deleting topics,
//! and routing records to partitions.
//!
//! Knows nothing of the batch format or of how a partition stores its bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::batch::NewRecord;
use super::error::{LogError, Result};
use super::groups::{GroupStore, GROUPS_DIR};
use super::io::{try_lock_file, Clock, Io, StdIo, SystemClock};
use super::partition::{
    Access, Acks, Appended, Partition, PartitionConfig, PartitionInfo, RecoveryEvent, RetentionOutcome,
};
use super::partitioner::Partitioner;
use super::retention::RetentionPolicy;

/// Kafka's default retention: 7 days.
pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// Default segment size. Smaller than Kafka's 1 GiB because recovery re-validates the
/// whole active segment on every open.
pub const DEFAULT_SEGMENT_BYTES: u64 = 128 * 1024 * 1024;
/// Largest segment: index positions are 32-bit.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 31;
/// Roll the active segment after this age (Kafka's `segment.ms` default, 7 days).
pub const DEFAULT_SEGMENT_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// Bytes of log between sparse index entries (Kafka's `index.interval.bytes`).
pub const DEFAULT_INDEX_INTERVAL_BYTES: u64 = 4096;
/// Most partitions a topic may have.
pub const PARTITIONS_MAX: u32 = 10_000;
/// Longest topic or group name (Kafka's limit).
pub const NAME_BYTES_MAX: usize = 249;

const META_FILE: &str = "meta.json";
const LOCK_FILE: &str = ".lock";

/// A topic's configuration, stored in `meta.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub partitions: u32,
    /// `None`: keep forever.
    pub retention_ms: Option<i64>,
    /// `None`: no size limit.
    pub retention_bytes: Option<u64>,
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub index_interval_bytes: u64,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            partitions: 1,
            retention_ms: Some(DEFAULT_RETENTION_MS),
            retention_bytes: None,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            segment_ms: DEFAULT_SEGMENT_MS,
            index_interval_bytes: DEFAULT_INDEX_INTERVAL_BYTES,
        }
    }
}

impl TopicConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(LogError::InvalidConfig(m));
        if self.partitions == 0 || self.partitions > PARTITIONS_MAX {
            return bad(format!("partitions must be between 1 and {PARTITIONS_MAX}, not {}", self.partitions));
        }
        if self.segment_bytes < 1024 || self.segment_bytes > SEGMENT_BYTES_MAX {
            return bad(format!(
                "segment bytes must be between 1024 and {SEGMENT_BYTES_MAX}, not {}",
                self.segment_bytes
            ));
        }
        if self.segment_ms <= 0 {
            return bad("segment age must be positive".into());
        }
        if self.retention_ms.is_some_and(|r| r < 0) {
            return bad("retention must not be negative".into());
        }
        if self.index_interval_bytes == 0 {
            return bad("index interval must be positive".into());
        }
        Ok(())
    }

    fn partition_config(&self) -> PartitionConfig {
        PartitionConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
            index_interval_bytes: self.index_interval_bytes,
            retention: RetentionPolicy { retention_ms: self.retention_ms, retention_bytes: self.retention_bytes },
        }
    }
}

#[derive(Serialize, Deserialize)]
struct MetaFile {
    version: u32,
    name: String,
    config: TopicConfig,
}

/// Check a topic or group name: 1..=249 bytes of `[A-Za-z0-9._-]`, not `.` or `..`,
/// not starting with `__` (reserved, as in Kafka) or `.` (our temporary names).
pub fn validate_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > NAME_BYTES_MAX {
        return Err("it is longer than 249 bytes");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return Err("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    if name.starts_with('.') {
        return Err("it must not start with '.'");
    }
    if name.starts_with("__") {
        return Err("names starting with '__' are reserved");
    }
    Ok(())
}

/// The data directory: the root of all topics and consumer groups.
#[derive(Debug, Clone)]
pub struct LogDir {
    root: PathBuf,
    io: Arc<dyn Io>,
    clock: Arc<dyn Clock>,
}

impl LogDir {
    /// A data directory on the real file system with the system clock.
    pub fn new(root: impl Into<PathBuf>) -> LogDir {
        LogDir::with_io(root, Arc::new(StdIo), Arc::new(SystemClock))
    }

    /// A data directory with injected I/O and clock (tests).
    pub fn with_io(root: impl Into<PathBuf>, io: Arc<dyn Io>, clock: Arc<dyn Clock>) -> LogDir {
        LogDir { root: root.into(), io, clock }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn topic_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn check_name(name: &str) -> Result<()> {
        validate_name(name).map_err(|reason| LogError::InvalidTopicName { name: name.to_string(), reason })
    }

    /// Create a topic with its partitions' directories and first segments, atomically
    /// (built under a temporary name, then renamed).
    pub fn create_topic(&self, name: &str, config: &TopicConfig) -> Result<()> {
        Self::check_name(name)?;
        config.validate()?;
        let dir = self.topic_dir(name);
        if dir.exists() {
            return Err(LogError::TopicExists(name.to_string()));
        }
        self.io.create_dir_all(&self.root).map_err(|e| LogError::io(format!("creating {}", self.root.display()), e))?;
        // Unique per creation, so threads of one process creating the same topic at
        // once do not share a scratch directory (the rename decides who wins).
        static CREATING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = CREATING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.root.join(format!(".{name}.creating-{}-{n}", std::process::id()));
        if tmp.exists() {
            self.io.remove_dir_all(&tmp).map_err(|e| LogError::io(format!("removing {}", tmp.display()), e))?;
        }
        self.io.create_dir_all(&tmp).map_err(|e| LogError::io(format!("creating {}", tmp.display()), e))?;
        for p in 0..config.partitions {
            Partition::create(&tmp.join(p.to_string()), self.io.as_ref())?;
        }
        let meta = MetaFile { version: 1, name: name.to_string(), config: config.clone() };
        let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| LogError::InvalidConfig(e.to_string()))?;
        let meta_path = tmp.join(META_FILE);
        self.io
            .write_atomic(&meta_path, &bytes)
            .map_err(|e| LogError::io(format!("writing {}", meta_path.display()), e))?;
        std::fs::rename(&tmp, &dir).map_err(|e| {
            if dir.exists() {
                LogError::TopicExists(name.to_string())
            } else {
                LogError::io(format!("renaming {} to {}", tmp.display(), dir.display()), e)
            }
        })?;
        self.io.sync_dir(&self.root).map_err(|e| LogError::io(format!("syncing {}", self.root.display()), e))?;
        Ok(())
    }

    /// Names of all topics, sorted.
    pub fn list_topics(&self) -> Result<Vec<String>> {
        let entries = match self.io.list_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(LogError::io(format!("listing {}", self.root.display()), e)),
        };
        let mut out: Vec<String> = entries
            .iter()
            .filter(|p| p.join(META_FILE).is_file())
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .filter(|n| validate_name(n).is_ok() && n != GROUPS_DIR)
            .collect();
        out.sort();
        Ok(out)
    }

    /// Read a topic's configuration without opening its partitions.
    pub fn topic_config(&self, name: &str) -> Result<TopicConfig> {
        Self::check_name(name)?;
        let path = self.topic_dir(name).join(META_FILE);
        let bytes = match self.io.read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LogError::UnknownTopic(name.to_string())),
            Err(e) => return Err(LogError::io(format!("reading {}", path.display()), e)),
        };
        let meta: MetaFile = serde_json::from_slice(&bytes).map_err(|e| LogError::CorruptFile {
            what: "topic metadata",
            path: path.clone(),
            reason: e.to_string(),
        })?;
        meta.config.validate().map_err(|e| LogError::CorruptFile {
            what: "topic metadata",
            path,
            reason: e.to_string(),
        })?;
        Ok(meta.config)
    }

    /// Open a topic. `ReadWrite` takes the topic's exclusive lock (one writer process)
    /// and recovers each partition; `ReadOnly` takes no lock and changes nothing.
    pub fn open_topic(&self, name: &str, access: Access) -> Result<Topic> {
        let config = self.topic_config(name)?;
        let dir = self.topic_dir(name);
        let lock = match access {
            Access::ReadOnly => None,
            Access::ReadWrite => {
                let p = dir.join(LOCK_FILE);
                match try_lock_file(&p).map_err(|e| LogError::io(format!("locking {}", p.display()), e))? {
                    Some(f) => Some(f),
                    None => return Err(LogError::Locked(name.to_string())),
                }
            }
        };
        let mut partitions = Vec::with_capacity(config.partitions as usize);
        let mut recovery = Vec::new();
        for p in 0..config.partitions {
            let (part, events) = Partition::open(
                name,
                p,
                &dir.join(p.to_string()),
                self.io.clone(),
                self.clock.clone(),
                config.partition_config(),
                access,
            )?;
            partitions.push(part);
            recovery.extend(events);
        }
        Ok(Topic {
            name: name.to_string(),
            config,
            partitions,
            partitioner: Partitioner::default(),
            recovery,
            _lock: lock,
        })
    }

    /// Delete a topic and its groups' offsets. Fails if a writer holds it open.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        self.topic_config(name)?;
        let dir = self.topic_dir(name);
        let lock_path = dir.join(LOCK_FILE);
        let lock =
            try_lock_file(&lock_path).map_err(|e| LogError::io(format!("locking {}", lock_path.display()), e))?;
        if lock.is_none() {
            return Err(LogError::Locked(name.to_string()));
        }
        let tmp = self.root.join(format!(".{name}.deleting-{}", std::process::id()));
        std::fs::rename(&dir, &tmp).map_err(|e| LogError::io(format!("renaming {}", dir.display()), e))?;
        self.io.sync_dir(&self.root).map_err(|e| LogError::io(format!("syncing {}", self.root.display()), e))?;
        drop(lock);
        self.io.remove_dir_all(&tmp).map_err(|e| LogError::io(format!("removing {}", tmp.display()), e))?;
        self.groups().forget_topic(name)
    }

    /// The consumer groups' committed offsets.
    pub fn groups(&self) -> GroupStore {
        GroupStore::new(self.root.clone(), self.io.clone())
    }
}

/// An open topic.
#[derive(Debug)]
pub struct Topic {
    name: String,
    config: TopicConfig,
    partitions: Vec<Partition>,
    partitioner: Partitioner,
    recovery: Vec<RecoveryEvent>,
    _lock: Option<File>,
}

impl Topic {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn config(&self) -> &TopicConfig {
        &self.config
    }
    pub fn partitions(&self) -> &[Partition] {
        &self.partitions
    }
    pub fn partition(&self, id: u32) -> Result<&Partition> {
        self.partitions.get(id as usize).ok_or(LogError::UnknownPartition {
            topic: self.name.clone(),
            partition: id,
            partitions: self.config.partitions,
        })
    }
    /// What recovery did when this topic was opened.
    pub fn recovery_events(&self) -> &[RecoveryEvent] {
        &self.recovery
    }
    pub fn describe(&self) -> Vec<PartitionInfo> {
        self.partitions.iter().map(Partition::info).collect()
    }

    /// Run a retention pass on every partition (a long-running process calls this
    /// periodically; rolls and opens run one anyway).
    pub fn enforce_retention(&self) -> Result<RetentionOutcome> {
        let mut total = RetentionOutcome::default();
        for p in &self.partitions {
            let o = p.enforce_retention()?;
            total.segments_deleted += o.segments_deleted;
            total.bytes_deleted += o.bytes_deleted;
        }
        Ok(total)
    }

    /// The partition for a record: murmur2 of the key, or round-robin when unkeyed.
    pub fn partition_for(&self, key: Option<&[u8]>) -> u32 {
        self.partitioner.partition(key, self.config.partitions)
    }

    /// Route `records` to partitions and append each partition's share as one batch.
    /// Returns one [`Appended`] per partition written, in partition order.
    pub fn append(&self, records: Vec<NewRecord>, acks: Acks) -> Result<Vec<Appended>> {
        let mut by_partition: BTreeMap<u32, Vec<NewRecord>> = BTreeMap::new();
        for r in records {
            let p = self.partition_for(r.key.as_deref());
            by_partition.entry(p).or_default().push(r);
        }
        // Write every partition's batch first, then wait for durability, so the
        // partitions' fsyncs overlap instead of running one after another.
        let mut out = Vec::with_capacity(by_partition.len());
        for (p, recs) in by_partition {
            out.push(self.partition(p)?.append(&recs, Acks::Os)?);
        }
        if acks == Acks::Fsync {
            for a in &out {
                self.partition(a.partition)?.sync_through(a.last_offset)?;
            }
        }
        Ok(out)
    }
}
