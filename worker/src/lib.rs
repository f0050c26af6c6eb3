//! kiln's worker executes the solver's ops: sources (build context, images),
//! overlayfs snapshots, RUN in an OCI sandbox, COPY/ADD file ops and layer
//! diffs.

pub mod emulation;
pub mod exec;
mod executor;
pub mod fileop;
pub mod git;
pub mod http;
pub mod layer;
mod parallel;
pub mod rootfs;
pub mod secrets;
pub mod snapshot;
mod sources;
pub mod ssh;

pub use executor::{
    Worker, WorkerConfig, WorkerRef, cache_mount_name, platform_wanted, resolve_image,
};
pub use sources::{LocalDirectories, LocalSources};
