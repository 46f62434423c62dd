//! Topics open for writing once per process, shared by everything in it.
//!
//! A topic's write lock (`.lock`, `flock`) belongs to one open file description, so
//! two `open_topic(ReadWrite)` of one topic in one process refuse each other, just as
//! two processes do. `flowc serve --pipelines` runs the broker and pipelines in one
//! process over one data directory: both open topics with
//! [`LogDir::open_topic_shared`], which hands out the handle already open in this
//! process (so their appends are ordered by the same partition locks, and a pipeline
//! waiting for records is woken by a Kafka client's produce) or opens it.

use super::{Access, LogDir, Result, Topic};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

/// Topics open for writing in this process, by directory.
static OPEN: Mutex<Option<HashMap<PathBuf, Weak<Topic>>>> = Mutex::new(None);

impl LogDir {
    /// The topic open for writing in this process, opened (and locked) if it is not.
    /// The lock is released when the last handle is dropped.
    pub fn open_topic_shared(&self, name: &str) -> Result<Arc<Topic>> {
        let dir = self.root().join(name);
        let key = std::fs::canonicalize(&dir).unwrap_or(dir);
        // Held while opening, so that two threads do not both try the lock.
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        let map = open.get_or_insert_with(HashMap::new);
        if let Some(t) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(t);
        }
        map.retain(|_, t| t.strong_count() > 0);
        let topic = Arc::new(self.open_topic(name, Access::ReadWrite)?);
        map.insert(key, Arc::downgrade(&topic));
        Ok(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogError, TopicConfig};

    #[test]
    fn one_process_shares_one_writer_handle_and_releases_the_lock_with_the_last() {
        let d = tempfile::tempdir().unwrap();
        let log = LogDir::new(d.path());
        log.create_topic("t", &TopicConfig::default()).unwrap();
        let a = log.open_topic_shared("t").unwrap();
        let b = LogDir::new(d.path()).open_topic_shared("t").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        // A plain open for writing still meets the lock the shared handle holds.
        assert!(matches!(log.open_topic("t", Access::ReadWrite), Err(LogError::Locked(_))));
        drop((a, b));
        drop(log.open_topic("t", Access::ReadWrite).unwrap());
    }
}
