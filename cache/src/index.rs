//! The cache index: cache keys → serialised step results, in `cache.redb`,
//! kept across processes.

use std::path::PathBuf;

use redb::TableDefinition;

const RESULTS: TableDefinition<&str, &[u8]> = TableDefinition::new("results");

/// Cache keys → results. Errors are swallowed: a broken index costs cache
/// misses, never a failed build.
#[derive(Clone, Debug)]
pub struct CacheIndexStore {
    path: PathBuf,
}

impl CacheIndexStore {
    /// The index in the database file `path` (created on first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The result stored under `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        if !self.path.exists() {
            return None;
        }
        let db = crate::db::open_waiting(&self.path).ok()?;
        let txn = db.begin_read().ok()?;
        let table = txn.open_table(RESULTS).ok()?;
        let value = table.get(key).ok()??;
        Some(value.value().to_vec())
    }

    /// Stores `value` under `key`; returns whether it was written.
    pub fn put(&self, key: &str, value: &[u8]) -> bool {
        let write = || -> Result<(), Box<dyn std::error::Error>> {
            let db = crate::db::open_waiting(&self.path)?;
            let txn = db.begin_write()?;
            txn.open_table(RESULTS)?.insert(key, value)?;
            txn.commit()?;
            Ok(())
        };
        write().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_persist_across_handles() {
        let dir = tempfile::tempdir().unwrap();
        let index = CacheIndexStore::new(dir.path().join("cache.redb"));
        assert_eq!(index.get("k"), None);
        assert!(index.put("k", b"v"));
        assert_eq!(
            CacheIndexStore::new(dir.path().join("cache.redb")).get("k"),
            Some(b"v".to_vec())
        );
    }
}
