//! The cache index: cache keys → serialised step results, in `cache.redb`,
//! kept across processes.

use std::path::PathBuf;

use redb::{ReadableTable, TableDefinition};

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
        let db = crate::db::open_waiting(&self.path, crate::db::IfDamaged::StartAfresh).ok()?;
        let txn = db.begin_read().ok()?;
        let table = txn.open_table(RESULTS).ok()?;
        let value = table.get(key).ok()??;
        Some(value.value().to_vec())
    }

    /// Keeps the entries whose value `keep` accepts and deletes the rest; returns how many
    /// were kept and how many deleted.
    pub fn retain(
        &self,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<(usize, usize), Box<dyn std::error::Error>> {
        if !self.path.exists() {
            return Ok((0, 0));
        }
        let db = crate::db::open_waiting(&self.path, crate::db::IfDamaged::StartAfresh)?;
        let txn = db.begin_write()?;
        let mut kept = 0;
        let mut doomed = Vec::new();
        {
            let mut table = txn.open_table(RESULTS)?;
            for entry in table.iter()? {
                let (key, value) = entry?;
                if keep(value.value()) {
                    kept += 1;
                } else {
                    doomed.push(key.value().to_string());
                }
            }
            for key in &doomed {
                table.remove(key.as_str())?;
            }
        }
        txn.commit()?;
        Ok((kept, doomed.len()))
    }

    /// Stores `value` under `key`; returns whether it was written.
    pub fn put(&self, key: &str, value: &[u8]) -> bool {
        let write = || -> Result<(), Box<dyn std::error::Error>> {
            let db = crate::db::open_waiting(&self.path, crate::db::IfDamaged::StartAfresh)?;
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

    #[test]
    fn retain_deletes_what_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let index = CacheIndexStore::new(dir.path().join("cache.redb"));
        assert!(index.put("a", b"keep"));
        assert!(index.put("b", b"drop"));
        assert_eq!(index.retain(|v| v == b"keep").unwrap(), (1, 1));
        assert_eq!(index.get("a"), Some(b"keep".to_vec()));
        assert_eq!(index.get("b"), None);
    }
}
