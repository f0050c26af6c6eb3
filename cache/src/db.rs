//! Opening kiln's redb databases, which one process holds at a time.

use std::path::Path;
use std::time::{Duration, Instant};

use redb::{Database, DatabaseError};

/// How long to wait for another kiln process to let go of a database.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// Opens (creating) the database at `path`, waiting while another process
/// holds it; kiln holds its databases only for single transactions.
pub(crate) fn open_waiting(path: &Path) -> Result<Database, DatabaseError> {
    let start = Instant::now();
    loop {
        match Database::create(path) {
            Err(DatabaseError::DatabaseAlreadyOpen) if start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}
