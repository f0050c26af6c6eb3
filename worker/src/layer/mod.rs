//! Layers: turning a snapshot's upper directory into an OCI layer tar and
//! unpacking layer tars into directories that overlayfs can stack.
//!
//! On disk, kiln keeps every layer unpacked in overlayfs's own format: a
//! deleted path is a `0:0` character device and a directory that hides what
//! lies below it carries the `trusted.overlay.opaque=y` xattr. In a layer tar
//! the same facts are OCI whiteouts: an empty `.wh.NAME` entry, and a
//! `.wh..wh..opq` entry inside the directory.

mod apply;
mod compress;
mod gzip;
mod write;

pub use apply::{ApplyStats, apply_layer, extract_archive, is_tar_archive};
pub use compress::{LayerCompression, ZSTD_LAYER_MEDIA_TYPE, recompress_all};
pub use write::{
    LayerBlob, TAR_LAYER_MEDIA_TYPE, WriteOptions, prune_copy_ups, store_layer, write_layer,
    write_trees,
};

/// Prefix of an OCI whiteout entry's file name.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the OCI entry that makes its directory opaque.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The xattr overlayfs uses to mark an opaque directory.
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Prefix of xattrs that belong to overlayfs: a layer that carries them is not believed,
/// or an overlay mount would honour them (hide files, redirect directories).
const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";
/// The one xattr layers kiln writes carry.
const LAYER_XATTR: &str = "security.capability";
/// PAX record prefix for extended attributes (as written by GNU tar/Go).
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// The paths in the stored layer blob `layer`, in archive order (for tests).
#[cfg(test)]
pub(crate) fn layer_paths(content: &kiln_cache::ContentStore, layer: &LayerBlob) -> Vec<String> {
    let blob = content.open_blob(&layer.digest).unwrap();
    tar::Archive::new(blob)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

#[cfg(test)]
mod tests;
