//! kiln's storage layer: content-addressed blobs, the cache index and the image store.
//!
//! It holds the [`Digest`] type every other crate uses to name content, the
//! [`ContentStore`] of blobs and the [`ImageStore`] of names.

mod checksums;
mod content;
mod db;
mod digest;
mod images;
mod index;
mod state;

pub use checksums::ChecksumCache;
pub use content::{BlobSource, BlobWriter, ContentError, ContentStore, VerifiedBlob};
pub use db::{close_databases, keep_databases_open_for};
pub use digest::{Digest, DigestError, DigestingReader};
pub use images::{ImageRecord, ImageStore, ImageStoreError};
pub use index::CacheIndexStore;
pub use state::{StateDir, StateLock};

/// Seconds since the Unix epoch, now (0 for a clock set before it).
pub fn unix_seconds_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
