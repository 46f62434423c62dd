//! State backends: where window state goes that is not kept in memory.
//!
//! Every window operator keeps its *active* state in memory (`window.rs`: interned keys,
//! accumulator slabs), so no record costs a store read-modify-write. What a backend
//! decides is where state goes beyond the operator's memory budget:
//!
//! - `memory`: nowhere. The budget is unlimited and everything stays in the hot maps.
//! - `rocksdb`: a RocksDB database per stage instance (under `<data-dir>/state/`), one
//!   column family per operator. When an instance holds more windows than its budget,
//!   it moves the least recently updated ones out ([`SpillStore::put`]); a record for a
//!   moved window brings it back ([`SpillStore::take`]), and firing a window reads its
//!   moved keys back in one range scan ([`SpillStore::take_prefix`]). A checkpoint
//!   snapshot reads them without taking them ([`SpillStore::scan_prefix`]).
//!
//! The store is a plain ordered byte map behind [`SpillStore`], so the window operator
//! is tested against [`MemoryStore`] and RocksDB alike.

#[cfg(test)]
use std::collections::BTreeMap;
use std::path::Path;

/// Key-value pairs as a range scan returns them.
pub(crate) type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// An ordered byte map that window state spills into.
pub(crate) trait SpillStore: Send {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String>;
    /// Removes and returns the value of `key`.
    fn take(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, String>;
    /// Removes and returns every entry whose key starts with `prefix`, in key order.
    fn take_prefix(&mut self, prefix: &[u8]) -> Result<Entries, String>;
    /// Returns every entry whose key starts with `prefix`, in key order, leaving them
    /// in place (a checkpoint snapshot reads the spilled state this way).
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, String>;
}

/// A [`SpillStore`] in a `BTreeMap`: the reference the window operator's spilling is
/// tested against.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct MemoryStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[cfg(test)]
impl SpillStore for MemoryStore {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        self.map.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn take(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        Ok(self.map.remove(key))
    }

    fn take_prefix(&mut self, prefix: &[u8]) -> Result<Entries, String> {
        let keys: Vec<Vec<u8>> = self
            .map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        Ok(keys.into_iter().map(|k| (k.clone(), self.map.remove(&k).unwrap_or_default())).collect())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, String> {
        Ok(self
            .map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// A [`SpillStore`] in one column family of a RocksDB database.
pub(crate) struct RocksStore {
    db: rocksdb::DB,
    cf: String,
    write: rocksdb::WriteOptions,
}

impl RocksStore {
    /// Opens (creating, emptied) the database at `dir` with column family `cf`.
    pub fn open(dir: &Path, cf: &str) -> Result<RocksStore, String> {
        // No state survives a run yet (checkpoints will restore it): start empty.
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| format!("clearing {}: {e}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(1);
        let db =
            rocksdb::DB::open_cf(&opts, dir, [cf]).map_err(|e| format!("opening RocksDB at {}: {e}", dir.display()))?;
        let mut write = rocksdb::WriteOptions::default();
        // Spilled state is a cache of the operator's memory, rebuilt from the input
        // (and, with checkpoints, from their snapshots): no write-ahead log.
        write.disable_wal(true);
        Ok(RocksStore { db, cf: cf.to_string(), write })
    }

    fn handle(&self) -> Result<&rocksdb::ColumnFamily, String> {
        self.db.cf_handle(&self.cf).ok_or_else(|| format!("no column family {}", self.cf))
    }
}

impl SpillStore for RocksStore {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let cf = self.handle()?;
        self.db.put_cf_opt(cf, key, value, &self.write).map_err(|e| e.to_string())
    }

    fn take(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let cf = self.handle()?;
        let v = self.db.get_cf(cf, key).map_err(|e| e.to_string())?;
        if v.is_some() {
            self.db.delete_cf_opt(cf, key, &self.write).map_err(|e| e.to_string())?;
        }
        Ok(v)
    }

    fn take_prefix(&mut self, prefix: &[u8]) -> Result<Entries, String> {
        let out = self.scan_prefix(prefix)?;
        let cf = self.handle()?;
        if let (Some((first, _)), Some((last, _))) = (out.first(), out.last()) {
            let mut end = last.clone();
            end.push(0);
            self.db
                .delete_range_cf_opt(cf, first.as_slice(), end.as_slice(), &self.write)
                .map_err(|e| e.to_string())?;
        }
        Ok(out)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, String> {
        let cf = self.handle()?;
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(cf, rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(|e| e.to_string())?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(s: &mut dyn SpillStore) {
        s.put(b"\x01a", b"1").expect("put");
        s.put(b"\x01b", b"2").expect("put");
        s.put(b"\x02a", b"3").expect("put");
        assert_eq!(s.take(b"\x01a").expect("take"), Some(b"1".to_vec()));
        assert_eq!(s.take(b"\x01a").expect("take"), None, "taken once");
        s.put(b"\x01c", b"4").expect("put");
        let seen = s.scan_prefix(b"\x01").expect("scan");
        assert_eq!(seen, vec![(b"\x01b".to_vec(), b"2".to_vec()), (b"\x01c".to_vec(), b"4".to_vec())]);
        assert_eq!(s.scan_prefix(b"\x01").expect("scan"), seen, "a scan leaves the entries");
        let got = s.take_prefix(b"\x01").expect("scan");
        assert_eq!(got, vec![(b"\x01b".to_vec(), b"2".to_vec()), (b"\x01c".to_vec(), b"4".to_vec())]);
        assert!(s.take_prefix(b"\x01").expect("scan").is_empty());
        assert_eq!(s.take(b"\x02a").expect("take"), Some(b"3".to_vec()));
    }

    #[test]
    fn memory_and_rocksdb_stores_agree() {
        exercise(&mut MemoryStore::default());
        let dir = tempfile::tempdir().expect("dir");
        exercise(&mut RocksStore::open(&dir.path().join("db"), "window-0").expect("open"));
    }
}
