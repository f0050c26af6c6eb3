//! Reading images back out of the local store: name → manifest (choosing a
//! platform from an index) → config and layers.

use kiln_cache::{ContentStore, Digest, ImageStore};
use oci_spec::image::{ImageIndex, ImageManifest};

use crate::{Image, Reference};

/// Whether a manifest media type names an index (OCI) or manifest list (Docker).
pub fn is_index(media_type: &str) -> bool {
    media_type.contains("index") || media_type.contains("manifest.list")
}

/// The platform wanted from a multi-platform image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformWanted<'a> {
    /// `linux`.
    pub os: &'a str,
    /// `amd64`, `arm64`, …
    pub architecture: &'a str,
    /// `v8`, `v7`, … when it matters.
    pub variant: Option<&'a str>,
}

impl PlatformWanted<'_> {
    /// Whether an index entry for `os`/`architecture`/`variant` is this platform: the
    /// variant counts only when one is wanted, and an `arm64` entry without one counts as
    /// `v8` (as containerd's matcher has it).
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        os == self.os
            && architecture == self.architecture
            && match self.variant {
                None => true,
                Some(wanted) => {
                    variant == Some(wanted)
                        || (variant.is_none() && architecture == "arm64" && wanted == "v8")
                }
            }
    }
}

impl std::fmt::Display for PlatformWanted<'_> {
    /// `os/architecture[/variant]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match self.variant {
            Some(variant) => write!(f, "/{variant}"),
            None => Ok(()),
        }
    }
}

/// One layer of a resolved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLayer {
    /// Digest of the (compressed) blob.
    pub digest: Digest,
    /// Size of the blob.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
    /// Digest of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
}

/// An image found in the local store, for one platform.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The normalised name it was found under.
    pub name: String,
    /// Digest of the platform's manifest.
    pub manifest_digest: Digest,
    /// The image config.
    pub config: Image,
    /// Layers, base first.
    pub layers: Vec<ImageLayer>,
}

/// Looks `reference` up in the local store and reads its manifest for
/// `platform`. Errors are user-facing sentences.
pub fn resolve_local(
    content: &ContentStore,
    images: &ImageStore,
    reference: &str,
    platform: &PlatformWanted<'_>,
) -> Result<ResolvedImage, String> {
    let name = Reference::parse_normalized(reference)
        .map_err(|e| e.to_string())?
        .to_string();
    let record = images.get(&name).map_err(|_| {
        format!("image {reference} is not in the local store (pull it, or import it with `kiln load -i FILE`)")
    })?;
    let read = |digest: &Digest| {
        content
            .read(digest)
            .map_err(|e| format!("image {reference}: blob {digest} is unreadable: {e}"))
    };
    let mut manifest_digest = record.digest;
    let mut bytes = read(&manifest_digest)?;
    if is_index(&record.media_type) {
        let index: ImageIndex = serde_json::from_slice(&bytes)
            .map_err(|e| format!("image {reference}: bad index: {e}"))?;
        let chosen = index
            .manifests()
            .iter()
            .find(|m| {
                m.platform().as_ref().is_some_and(|p| {
                    platform.matches(
                        &p.os().to_string(),
                        &p.architecture().to_string(),
                        p.variant().as_deref(),
                    )
                })
            })
            .ok_or_else(|| format!("image {reference} has no manifest for {platform}"))?;
        manifest_digest = chosen
            .digest()
            .to_string()
            .parse()
            .map_err(|e| format!("image {reference}: {e}"))?;
        bytes = read(&manifest_digest)?;
    }
    let manifest: ImageManifest = serde_json::from_slice(&bytes)
        .map_err(|e| format!("image {reference}: bad manifest: {e}"))?;
    let config_digest: Digest = manifest
        .config()
        .digest()
        .to_string()
        .parse()
        .map_err(|e| format!("image {reference}: {e}"))?;
    let config: Image = serde_json::from_slice(&read(&config_digest)?)
        .map_err(|e| format!("image {reference}: bad config: {e}"))?;
    if config.rootfs.diff_ids.len() != manifest.layers().len() {
        return Err(format!(
            "image {reference}: {} layers but {} diff_ids in its config",
            manifest.layers().len(),
            config.rootfs.diff_ids.len()
        ));
    }
    let layers = manifest
        .layers()
        .iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(layer, diff_id)| {
            Ok(ImageLayer {
                digest: layer
                    .digest()
                    .to_string()
                    .parse()
                    .map_err(|e| format!("image {reference}: {e}"))?,
                size: layer.size(),
                media_type: layer.media_type().to_string(),
                diff_id: diff_id
                    .parse()
                    .map_err(|e| format!("image {reference}: {e}"))?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ResolvedImage {
        name,
        manifest_digest,
        config,
        layers,
    })
}

/// Everything in the content store that some images need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageContent {
    /// Indexes, manifests, configs and layer blobs.
    pub blobs: std::collections::HashSet<Digest>,
    /// The uncompressed digests of their layers (names of unpacked layers).
    pub diff_ids: std::collections::HashSet<Digest>,
}

impl ImageContent {
    /// Adds what the index or manifest `root` needs, following an index to every manifest.
    /// Blobs that are missing or unreadable are skipped: they cannot be kept anyway.
    pub fn add(&mut self, content: &ContentStore, root: &Digest) {
        if !self.blobs.insert(*root) {
            return;
        }
        let Some(document) = content
            .read(root)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        else {
            return;
        };
        let digest_of = |v: &serde_json::Value| v["digest"].as_str()?.parse::<Digest>().ok();
        for manifest in document["manifests"].as_array().into_iter().flatten() {
            if let Some(child) = digest_of(manifest) {
                self.add(content, &child);
            }
        }
        if let Some(config) = digest_of(&document["config"]) {
            self.blobs.insert(config);
            if let Some(image) = content
                .read(&config)
                .ok()
                .and_then(|b| serde_json::from_slice::<Image>(&b).ok())
            {
                self.diff_ids.extend(
                    image
                        .rootfs
                        .diff_ids
                        .iter()
                        .filter_map(|d| d.parse::<Digest>().ok()),
                );
            }
        }
        for layer in document["layers"].as_array().into_iter().flatten() {
            self.blobs.extend(digest_of(layer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_match_on_os_architecture_and_a_wanted_variant() {
        let wanted = |variant| PlatformWanted {
            os: "linux",
            architecture: "arm64",
            variant,
        };
        assert!(wanted(None).matches("linux", "arm64", Some("v8")));
        assert!(wanted(Some("v8")).matches("linux", "arm64", Some("v8")));
        assert!(
            wanted(Some("v8")).matches("linux", "arm64", None),
            "arm64 means v8"
        );
        assert!(!wanted(Some("v7")).matches("linux", "arm64", None));
        assert!(!wanted(Some("v8")).matches("linux", "arm64", Some("v9")));
        assert!(!wanted(None).matches("linux", "amd64", None));
        assert!(!wanted(None).matches("windows", "arm64", None));
        let arm = PlatformWanted {
            os: "linux",
            architecture: "arm",
            variant: Some("v8"),
        };
        assert!(
            !arm.matches("linux", "arm", None),
            "only arm64 defaults to v8"
        );
    }
}
