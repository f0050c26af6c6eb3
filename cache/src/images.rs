//! The image store: names (`docker.io/library/busybox:latest`) pointing at manifest or index
//! blobs in the content store, kept in `kiln.redb` so updates are transactional.

use std::path::{Path, PathBuf};

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::Digest;

/// name → JSON-encoded [`ImageRecord`].
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    /// The database could not be opened or used.
    #[error("image store {}: {message}", path.display())]
    Database {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// No image has this name.
    #[error("no such image: {0}")]
    NotFound(String),
}

/// What a name points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The full, normalised name.
    pub name: String,
    /// Media type of the target (an OCI/Docker manifest or index).
    pub media_type: String,
    /// Digest of the target blob.
    pub digest: Digest,
    /// Size of the target blob.
    pub size: u64,
    /// When the name was set, seconds since the Unix epoch.
    pub created: i64,
}

/// What names of untagged images start with: `<none>@` and the manifest digest.
const UNTAGGED_PREFIX: &str = "<none>@";

impl ImageRecord {
    /// The record name of the untagged image with the manifest `digest` (what `kiln build`
    /// without `-t` leaves, listed as `<none>` as docker lists it).
    pub fn untagged_name(digest: &Digest) -> String {
        format!("{UNTAGGED_PREFIX}{digest}")
    }

    /// Whether this record keeps an untagged image rather than naming one.
    pub fn is_untagged(&self) -> bool {
        self.name.starts_with(UNTAGGED_PREFIX)
    }

    /// A record naming `digest` (a manifest or index of `media_type`, `size` bytes) as
    /// `name`, set now.
    pub fn named_now(name: String, media_type: String, digest: Digest, size: u64) -> Self {
        ImageRecord {
            name,
            media_type,
            digest,
            size,
            created: crate::unix_seconds_now() as i64,
        }
    }
}

/// Names → manifests, in a redb database.
#[derive(Clone, Debug)]
pub struct ImageStore {
    path: PathBuf,
}

impl ImageStore {
    /// The store in the database file `path` (created on first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ImageStore { path: path.into() }
    }

    fn error(&self, message: impl ToString) -> ImageStoreError {
        ImageStoreError::Database {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    fn open(&self) -> Result<crate::db::DbHandle, ImageStoreError> {
        crate::db::open_waiting(&self.path, crate::db::IfDamaged::Refuse).map_err(|err| match err {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(why)) => {
                self.error(format!(
                    "the file is damaged ({why}), so kiln cannot read the image names in it; move \
                 it away to start with no names (the images' blobs stay in content/)"
                ))
            }
            other => self.error(other),
        })
    }

    /// Points `record.name` at `record`'s target, replacing what it pointed at.
    pub fn put(&self, record: &ImageRecord) -> Result<(), ImageStoreError> {
        let db = self.open()?;
        let value = serde_json::to_vec(record).map_err(|e| self.error(e))?;
        let txn = db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut table = txn.open_table(IMAGES).map_err(|e| self.error(e))?;
            table
                .insert(record.name.as_str(), value.as_slice())
                .map_err(|e| self.error(e))?;
        }
        txn.commit().map_err(|e| self.error(e))
    }

    /// The record for `name`.
    pub fn get(&self, name: &str) -> Result<ImageRecord, ImageStoreError> {
        self.list()?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| ImageStoreError::NotFound(name.to_string()))
    }

    /// Every record, sorted by name.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageStoreError> {
        if !Path::new(&self.path).exists() {
            return Ok(Vec::new());
        }
        let db = self.open()?;
        let txn = db.begin_read().map_err(|e| self.error(e))?;
        let table = match txn.open_table(IMAGES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.error(e)),
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.error(e))? {
            let (_, value) = entry.map_err(|e| self.error(e))?;
            out.push(serde_json::from_slice(value.value()).map_err(|e| self.error(e))?);
        }
        Ok(out)
    }

    /// Removes `name`; returns the record it had.
    pub fn remove(&self, name: &str) -> Result<ImageRecord, ImageStoreError> {
        let db = self.open()?;
        let txn = db.begin_write().map_err(|e| self.error(e))?;
        let removed = {
            let mut table = txn.open_table(IMAGES).map_err(|e| self.error(e))?;
            let old = table.remove(name).map_err(|e| self.error(e))?;
            old.map(|v| serde_json::from_slice::<ImageRecord>(v.value()))
        };
        txn.commit().map_err(|e| self.error(e))?;
        match removed {
            Some(r) => r.map_err(|e| self.error(e)),
            None => Err(ImageStoreError::NotFound(name.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, data: &[u8]) -> ImageRecord {
        ImageRecord {
            name: name.into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: Digest::of(data),
            size: data.len() as u64,
            created: 1,
        }
    }

    #[test]
    fn put_get_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path().join("kiln.redb"));
        assert!(store.list().unwrap().is_empty());
        store.put(&record("docker.io/library/b:1", b"x")).unwrap();
        store.put(&record("docker.io/library/a:1", b"y")).unwrap();
        store.put(&record("docker.io/library/b:1", b"z")).unwrap();
        let names: Vec<String> = store.list().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["docker.io/library/a:1", "docker.io/library/b:1"]);
        assert_eq!(
            store.get("docker.io/library/b:1").unwrap().digest,
            Digest::of(b"z")
        );
        store.remove("docker.io/library/a:1").unwrap();
        assert!(matches!(
            store.get("docker.io/library/a:1"),
            Err(ImageStoreError::NotFound(_))
        ));
        assert!(matches!(
            store.remove("nope"),
            Err(ImageStoreError::NotFound(_))
        ));
    }
}
