//! The checksum cache: a file's identity (path, size, mtime, ctime, inode, device) → the
//! sha256 of its content, in `checksums.redb`, so that an unchanged context file is never
//! hashed twice, not even across builds.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{ReadableTable, TableDefinition};
use sha2::{Digest as _, Sha256};

const DIGESTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("file-digests");

/// A file changed less than this long before it was hashed may change again within the
/// same timestamp tick without its stamp changing, so its digest is not remembered. Linux
/// filesystems keep timestamps at one-second granularity or finer.
const RACY_NANOS: i128 = 1_000_000_000;

/// What must be unchanged for a remembered digest to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime: i128,
    ctime: i128,
    inode: u64,
    device: u64,
}

impl Stamp {
    const LEN: usize = 8 * 3 + 16 * 2;

    fn of(meta: &Metadata) -> Self {
        Self {
            size: meta.size(),
            mtime: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            inode: meta.ino(),
            device: meta.dev(),
        }
    }

    /// Whether the file changed so recently that another change could go unnoticed.
    fn is_racy(&self, now: i128) -> bool {
        now - self.mtime.max(self.ctime) < RACY_NANOS
    }

    fn encode(&self, digest: &[u8; 32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN + 32);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mtime.to_le_bytes());
        out.extend_from_slice(&self.ctime.to_le_bytes());
        out.extend_from_slice(&self.inode.to_le_bytes());
        out.extend_from_slice(&self.device.to_le_bytes());
        out.extend_from_slice(digest);
        out
    }

    fn decode(bytes: &[u8]) -> Option<(Self, [u8; 32])> {
        if bytes.len() != Self::LEN + 32 {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let i128_at = |at: usize| i128::from_le_bytes(bytes[at..at + 16].try_into().unwrap());
        let stamp = Self {
            size: u64_at(0),
            mtime: i128_at(8),
            ctime: i128_at(24),
            inode: u64_at(40),
            device: u64_at(48),
        };
        Some((stamp, bytes[Self::LEN..].try_into().ok()?))
    }
}

/// Host path → the stamp it had when hashed, and its digest.
type Known = HashMap<PathBuf, (Stamp, [u8; 32])>;

/// Remembered file digests, loaded once and written back with [`persist`](Self::persist).
/// A broken or missing database only costs re-hashing, never a failed build.
#[derive(Debug)]
pub struct ChecksumCache {
    path: PathBuf,
    known: Mutex<Known>,
    learned: Mutex<Vec<(PathBuf, Vec<u8>)>>,
    hashed: AtomicU64,
}

impl ChecksumCache {
    /// The cache in the database file `path` (created by the first `persist`).
    pub fn open(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let known = load(&path).unwrap_or_default();
        Self {
            path,
            known: Mutex::new(known),
            learned: Mutex::default(),
            hashed: AtomicU64::new(0),
        }
    }

    /// The sha256 of the regular file at `path`, whose metadata is `meta`: remembered when
    /// nothing about the file changed, else read and hashed.
    pub fn file_digest(&self, path: &Path, meta: &Metadata) -> io::Result<[u8; 32]> {
        let stamp = Stamp::of(meta);
        if let Some((known, digest)) = self.known.lock().unwrap().get(path)
            && *known == stamp
        {
            return Ok(*digest);
        }
        let mut hasher = Sha256::new();
        io::copy(&mut File::open(path)?, &mut hasher)?;
        let digest: [u8; 32] = hasher.finalize().into();
        self.hashed.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        if !stamp.is_racy(now) {
            self.known
                .lock()
                .unwrap()
                .insert(path.to_path_buf(), (stamp, digest));
            self.learned
                .lock()
                .unwrap()
                .push((path.to_path_buf(), stamp.encode(&digest)));
        }
        Ok(digest)
    }

    /// How many files this cache has read and hashed since it was opened.
    pub fn files_hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    /// Writes the digests learned since opening; returns whether that worked.
    pub fn persist(&self) -> bool {
        let learned = std::mem::take(&mut *self.learned.lock().unwrap());
        if learned.is_empty() {
            return true;
        }
        let write = || -> Result<(), Box<dyn std::error::Error>> {
            let db = crate::db::open_waiting(&self.path, crate::db::IfDamaged::StartAfresh)?;
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(DIGESTS)?;
                for (path, value) in &learned {
                    table.insert(path.as_os_str().as_bytes(), value.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        };
        write().is_ok()
    }
}

fn load(path: &Path) -> Result<Known, Box<dyn std::error::Error>> {
    let mut known = HashMap::new();
    if !path.exists() {
        return Ok(known);
    }
    let db = crate::db::open_waiting(path, crate::db::IfDamaged::StartAfresh)?;
    let txn = db.begin_read()?;
    let table = match txn.open_table(DIGESTS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(known),
        Err(err) => return Err(err.into()),
    };
    for entry in table.iter()? {
        let (key, value) = entry?;
        if let Some(decoded) = Stamp::decode(value.value()) {
            let key = PathBuf::from(std::ffi::OsStr::from_bytes(key.value()));
            known.insert(key, decoded);
        }
    }
    Ok(known)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// Sets a file's mtime well in the past and waits until its ctime (which that sets to
    /// now) is no longer racy, so its digest may be remembered.
    fn age(path: &Path) {
        let old = filetime::FileTime::from_unix_time(1_000_000_000, 0);
        filetime::set_file_mtime(path, old).unwrap();
        std::thread::sleep(std::time::Duration::from_nanos(
            RACY_NANOS as u64 + 50_000_000,
        ));
    }

    #[test]
    fn unchanged_files_are_hashed_once_across_processes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("checksums.redb");
        let file = dir.path().join("a");
        fs::write(&file, "alpha").unwrap();
        age(&file);
        let first = ChecksumCache::open(&db);
        let digest = first
            .file_digest(&file, &fs::metadata(&file).unwrap())
            .unwrap();
        assert_eq!(hex::encode(digest), hex::encode(Sha256::digest(b"alpha")));
        assert!(first.persist());

        let second = ChecksumCache::open(&db);
        let again = second
            .file_digest(&file, &fs::metadata(&file).unwrap())
            .unwrap();
        assert_eq!(again, digest);
        assert_eq!(second.files_hashed(), 0);
    }

    #[test]
    fn any_change_to_the_stamp_rehashes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChecksumCache::open(dir.path().join("checksums.redb"));
        let file = dir.path().join("a");
        fs::write(&file, "alpha").unwrap();
        age(&file);
        cache
            .file_digest(&file, &fs::metadata(&file).unwrap())
            .unwrap();
        // Same size, same (old) mtime: only ctime tells the content changed.
        fs::write(&file, "gamma").unwrap();
        age(&file);
        let digest = cache
            .file_digest(&file, &fs::metadata(&file).unwrap())
            .unwrap();
        assert_eq!(hex::encode(digest), hex::encode(Sha256::digest(b"gamma")));
        assert_eq!(cache.files_hashed(), 2);
    }

    #[test]
    fn recently_changed_files_are_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChecksumCache::open(dir.path().join("checksums.redb"));
        let file = dir.path().join("fresh");
        fs::write(&file, "new").unwrap();
        for _ in 0..2 {
            cache
                .file_digest(&file, &fs::metadata(&file).unwrap())
                .unwrap();
        }
        assert_eq!(cache.files_hashed(), 2);
    }

    #[test]
    fn a_corrupt_database_costs_only_rehashing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("checksums.redb");
        fs::write(&db, "not a database").unwrap();
        let cache = ChecksumCache::open(&db);
        let file = dir.path().join("a");
        fs::write(&file, "alpha").unwrap();
        assert!(
            cache
                .file_digest(&file, &fs::metadata(&file).unwrap())
                .is_ok()
        );
    }
}
