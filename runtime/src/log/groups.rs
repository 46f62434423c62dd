//! Consumer-group offsets: the next offset to read per (group, topic, partition),
//! stored durably in `<data-dir>/__consumer_offsets/<group>.json` (written to a temp
//! file, fsynced, renamed), so they survive restarts.
//!
//! Knows nothing of partitions' contents; callers decide what to commit.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::{LogError, Result};
use super::io::{try_lock_file, Io};
use super::topic::validate_name;

/// Name of the directory, under the data dir, that holds the groups' files.
pub const GROUPS_DIR: &str = "__consumer_offsets";

#[derive(Debug, Default, Serialize, Deserialize)]
struct GroupFile {
    version: u32,
    /// topic -> partition -> next offset to read
    offsets: BTreeMap<String, BTreeMap<u32, u64>>,
}

/// Committed offsets of consumer groups.
#[derive(Debug, Clone)]
pub struct GroupStore {
    dir: PathBuf,
    io: Arc<dyn Io>,
}

impl GroupStore {
    pub fn new(data_dir: PathBuf, io: Arc<dyn Io>) -> GroupStore {
        GroupStore { dir: data_dir.join(GROUPS_DIR), io }
    }

    fn path(&self, group: &str) -> PathBuf {
        self.dir.join(format!("{group}.json"))
    }

    fn load(&self, group: &str) -> Result<GroupFile> {
        let path = self.path(group);
        match self.io.read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| LogError::CorruptFile {
                what: "consumer group offsets",
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(GroupFile { version: 1, ..GroupFile::default() }),
            Err(e) => Err(LogError::io(format!("reading {}", path.display()), e)),
        }
    }

    /// The committed offsets of `group` for `topic` (partition -> next offset to read).
    pub fn committed(&self, group: &str, topic: &str) -> Result<BTreeMap<u32, u64>> {
        validate_group(group)?;
        Ok(self.load(group)?.offsets.remove(topic).unwrap_or_default())
    }

    /// Durably record `offsets` (partition -> next offset to read) for `group` on `topic`,
    /// merging with the partitions already committed.
    pub fn commit(&self, group: &str, topic: &str, offsets: &BTreeMap<u32, u64>) -> Result<()> {
        validate_group(group)?;
        self.io.create_dir_all(&self.dir).map_err(|e| LogError::io(format!("creating {}", self.dir.display()), e))?;
        let lock_path = self.dir.join(format!("{group}.lock"));
        // Serialise read-modify-write across processes; commits are short.
        let deadline = Instant::now() + Duration::from_secs(10);
        let _lock = loop {
            match try_lock_file(&lock_path).map_err(|e| LogError::io(format!("locking {}", lock_path.display()), e))? {
                Some(f) => break f,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                None => {
                    return Err(LogError::io(
                        format!("locking {}", lock_path.display()),
                        std::io::ErrorKind::TimedOut.into(),
                    ))
                }
            }
        };
        let mut file = self.load(group)?;
        file.version = 1;
        let entry = file.offsets.entry(topic.to_string()).or_default();
        for (&p, &o) in offsets {
            entry.insert(p, o);
        }
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| LogError::InvalidConfig(e.to_string()))?;
        let path = self.path(group);
        self.io.write_atomic(&path, &bytes).map_err(|e| LogError::io(format!("writing {}", path.display()), e))
    }

    /// Forget a topic's offsets in every group (when the topic is deleted).
    pub fn forget_topic(&self, topic: &str) -> Result<()> {
        let Ok(entries) = self.io.list_dir(&self.dir) else {
            return Ok(());
        };
        for p in entries {
            if p.extension().is_some_and(|e| e == "json") {
                let Some(group) = p.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
                    continue;
                };
                let mut file = self.load(&group)?;
                if file.offsets.remove(topic).is_some() {
                    let bytes = serde_json::to_vec_pretty(&file).map_err(|e| LogError::InvalidConfig(e.to_string()))?;
                    self.io
                        .write_atomic(&p, &bytes)
                        .map_err(|e| LogError::io(format!("writing {}", p.display()), e))?;
                }
            }
        }
        Ok(())
    }
}

fn validate_group(group: &str) -> Result<()> {
    validate_name(group).map_err(|reason| LogError::InvalidGroupName { name: group.to_string(), reason })
}
