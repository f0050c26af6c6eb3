//! Image formats kiln reads and writes.
//!
//! [`Image`] is the image configuration JSON (the blob a manifest's `config` points at), in the
//! Docker flavour that OCI tools also read: kiln keeps Docker's `Healthcheck`, `OnBuild`,
//! `Shell` and `ArgsEscaped`, which `oci-spec`'s type drops.

mod archive;
mod config;
mod layout;
mod local;
mod reference;
mod time;

pub use archive::{ArchiveError, ImportedImage, check_complete, import_archive};
pub use config::{ContainerConfig, Empty, HealthConfig, History, Image, RootFs};
pub use layout::{LayoutError, LayoutSource};
pub use local::{ImageContent, ImageLayer, PlatformWanted, ResolvedImage, is_index, resolve_local};
pub use reference::{DOCKER_HUB, Reference, ReferenceError};
pub use time::{format_rfc3339, parse_rfc3339};
