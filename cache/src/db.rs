//! Opening kiln's redb databases, which one process holds at a time.
//!
//! redb locks a database file for the process that opens it, and each open and close
//! costs three fsyncs. So a process keeps a database open while it uses it in bursts: an
//! open handle is shared by every caller in the process, and closed once nobody has used
//! it for [`idle`] (20 ms unless [`keep_databases_open_for`] says otherwise), which lets
//! other kiln processes (waiting for the lock) in. A no-op
//! build opened its three databases 11 times, and those fsyncs took 12 of its 50 ms.

use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redb::{Database, DatabaseError};

/// How long to wait for another kiln process to let go of a database.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// How long an unused database stays open for the next caller, in milliseconds.
static IDLE_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(20);

/// How long an unused database stays open for the next caller.
fn idle() -> Duration {
    Duration::from_millis(IDLE_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// Keeps unused databases open for `idle` (instead of 20 ms) before closing them: for a
/// long-running daemon, whose builds follow each other closely, so that they do not pay
/// an open and a close each; another kiln process on the same state directory waits up to
/// that long for a database.
pub fn keep_databases_open_for(idle: Duration) {
    let millis = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    IDLE_MS.store(millis, std::sync::atomic::Ordering::Relaxed);
}

/// An open database, by path.
struct Held {
    db: Arc<Database>,
    last_used: Instant,
}

/// The databases this process holds open.
static HELD: Mutex<Option<HashMap<PathBuf, Held>>> = Mutex::new(None);

fn held() -> MutexGuard<'static, Option<HashMap<PathBuf, Held>>> {
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The database at `path`, open (created if missing) for as long as the handle lives.
pub(crate) struct DbHandle {
    db: Arc<Database>,
}

impl Deref for DbHandle {
    type Target = Database;

    fn deref(&self) -> &Database {
        &self.db
    }
}

impl Drop for DbHandle {
    fn drop(&mut self) {
        if let Some(held) = held().as_mut() {
            for entry in held.values_mut() {
                if Arc::ptr_eq(&entry.db, &self.db) {
                    entry.last_used = Instant::now();
                }
            }
        }
    }
}

/// What to do with a database file that is damaged (truncated, overwritten).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfDamaged {
    /// A cache: set the damaged file aside (`NAME.damaged`) and start an empty one.
    StartAfresh,
    /// Data kiln cannot rebuild (image names): refuse, saying so. An empty file counts
    /// as damaged too, since kiln never leaves one.
    Refuse,
}

thread_local! {
    /// Set while this thread opens a database, whose damage redb reports by panicking.
    static OPENING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Opens the database at `path` with redb, turning the panics with which redb meets some
/// damaged files into an error (and keeping their message off the terminal).
fn create(path: &Path) -> Result<Database, DatabaseError> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !OPENING.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    OPENING.with(|opening| opening.set(true));
    let opened = std::panic::catch_unwind(|| Database::create(path));
    OPENING.with(|opening| opening.set(false));
    opened.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(DatabaseError::Storage(redb::StorageError::Corrupted(why)))
    })
}

/// [`create`]s the database at `path`, dealing with damage as `if_damaged` says.
fn create_checked(path: &Path, if_damaged: IfDamaged) -> Result<Database, DatabaseError> {
    let damaged = |why: String| DatabaseError::Storage(redb::StorageError::Corrupted(why));
    if if_damaged == IfDamaged::Refuse && std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        return Err(damaged(format!("{} is empty", path.display())));
    }
    match create(path) {
        Err(DatabaseError::Storage(redb::StorageError::Corrupted(why)))
            if if_damaged == IfDamaged::StartAfresh =>
        {
            let aside = path.with_extension("redb.damaged");
            eprintln!(
                "warning: {} is damaged ({why}); it is set aside as {} and the cache starts \
                 empty",
                path.display(),
                aside.display()
            );
            std::fs::rename(path, &aside)
                .map_err(|e| DatabaseError::Storage(redb::StorageError::Io(e)))?;
            create(path)
        }
        other => other,
    }
}

/// Opens (creating) the database at `path`, or shares this process's open handle,
/// waiting while another process holds it.
///
/// Never sleeps holding this process's list of open databases: two processes each waiting
/// for a database the other holds open must still be able to close theirs when idle.
pub(crate) fn open_waiting(path: &Path, if_damaged: IfDamaged) -> Result<DbHandle, DatabaseError> {
    let start = Instant::now();
    loop {
        {
            let mut guard = held();
            let map = guard.get_or_insert_with(HashMap::new);
            if let Some(entry) = map.get_mut(path) {
                entry.last_used = Instant::now();
                return Ok(DbHandle {
                    db: entry.db.clone(),
                });
            }
            match create_checked(path, if_damaged) {
                Ok(db) => {
                    let db = Arc::new(db);
                    let start_closer = map.is_empty();
                    map.insert(
                        path.to_path_buf(),
                        Held {
                            db: db.clone(),
                            last_used: Instant::now(),
                        },
                    );
                    if start_closer {
                        std::thread::spawn(close_idle);
                    }
                    return Ok(DbHandle { db });
                }
                Err(DatabaseError::DatabaseAlreadyOpen) if start.elapsed() < LOCK_WAIT => {}
                Err(err) => return Err(err),
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Closes every database this process holds. For the end of a command: a database still
/// open when the process exits costs its next user a repair.
pub fn close_databases() {
    let taken = held().take();
    drop(taken);
}

/// Closes databases that nobody uses and nobody used for [`idle`]; ends when none is
/// left open.
fn close_idle() {
    loop {
        std::thread::sleep(idle());
        let mut guard = held();
        let Some(map) = guard.as_mut() else { return };
        map.retain(|_, entry| {
            Arc::strong_count(&entry.db) > 1 || entry.last_used.elapsed() < idle()
        });
        if map.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_is_shared_while_used_and_closed_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.redb");
        let first = open_waiting(&path, IfDamaged::Refuse).unwrap();
        let second = open_waiting(&path, IfDamaged::Refuse).unwrap();
        assert!(Arc::ptr_eq(&first.db, &second.db));
        drop(first);
        std::thread::sleep(idle() * 3);
        assert!(
            held().as_ref().is_some_and(|m| m.contains_key(&path)),
            "closed while in use"
        );
        drop(second);
        std::thread::sleep(idle() * 4);
        assert!(!held().as_ref().is_some_and(|m| m.contains_key(&path)));
        // Closed: another opener (another process, say) gets the file.
        Database::create(&path).unwrap();
    }
}
