//! kiln's storage layer: content-addressed blobs, the cache index and the image store.
//!
//! Today it holds the [`Digest`] type every other crate uses to name content; the stores
//! themselves arrive with the local build engine.

mod digest;

pub use digest::{Digest, DigestError};
