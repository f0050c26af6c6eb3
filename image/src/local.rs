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
    let parsed = Reference::parse_normalized(reference).map_err(|e| e.to_string())?;
    let name = parsed.to_string();
    let read = |digest: &Digest| {
        content
            .read(digest)
            .map_err(|e| format!("image {reference}: blob {digest} is unreadable: {e}"))
    };
    let (mut manifest_digest, media_type) = match images.get(&name) {
        Ok(record) => (record.digest, Some(record.media_type)),
        // Pinned by a digest that the store holds, the image needs no name (an image
        // imported from an OCI layout has none).
        Err(_) => match parsed.digest.as_deref().and_then(|d| d.parse().ok()) {
            Some(digest) if content.contains(&digest) => (digest, None),
            _ => {
                return Err(format!(
                    "image {reference} is not in the local store (pull it, or import it with `kiln load -i FILE`)"
                ));
            }
        },
    };
    let mut bytes = read(&manifest_digest)?;
    let index = match media_type {
        Some(media_type) => is_index(&media_type),
        None => serde_json::from_slice::<serde_json::Value>(&bytes)
            .is_ok_and(|document| document.get("manifests").is_some()),
    };
    if index {
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
            .ok_or_else(|| {
                format!(
                    "image {reference} has no manifest for {platform} (it has {})",
                    platforms_of(&index)
                )
            })?;
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

/// The platforms of an index's entries, for messages (`linux/amd64, linux/arm/v7`).
fn platforms_of(index: &ImageIndex) -> String {
    let platforms: Vec<String> = index
        .manifests()
        .iter()
        .filter_map(|entry| entry.platform().as_ref())
        .map(|p| {
            let mut platform = format!("{}/{}", p.os(), p.architecture());
            if let Some(variant) = p.variant().as_deref().filter(|v| !v.is_empty()) {
                platform = format!("{platform}/{variant}");
            }
            platform
        })
        .collect();
    if platforms.is_empty() {
        "no platform".into()
    } else {
        platforms.join(", ")
    }
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
    fn an_image_pinned_by_a_stored_digest_needs_no_name() {
        let dir = tempfile::tempdir().unwrap();
        let content = ContentStore::open(dir.path().join("content")).unwrap();
        let images = ImageStore::new(dir.path().join("kiln.redb"));
        let config = content
            .put(br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"]},"rootfs":{"type":"layers","diff_ids":[]}}"#)
            .unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 1},
            "layers": [],
        });
        let manifest = content.put(manifest.to_string().as_bytes()).unwrap();
        let entry = |architecture: &str| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest.to_string(),
                "size": 1,
                "platform": {"os": "linux", "architecture": architecture},
            })
        };
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [entry("amd64"), entry("s390x")],
        });
        let index = content.put(index.to_string().as_bytes()).unwrap();
        let platform = |architecture| PlatformWanted {
            os: "linux",
            architecture,
            variant: None,
        };
        let resolve = |reference: &str, architecture| {
            resolve_local(&content, &images, reference, &platform(architecture))
        };
        let by_manifest = resolve(&format!("base@{manifest}"), "arm64").unwrap();
        assert_eq!(by_manifest.manifest_digest, manifest);
        assert_eq!(by_manifest.config.config.env, ["A=1"]);
        let by_index = resolve(&format!("base@{index}"), "s390x").unwrap();
        assert_eq!(by_index.manifest_digest, manifest);
        let error = resolve(&format!("base@{index}"), "arm64").unwrap_err();
        assert_eq!(
            error,
            format!(
                "image base@{index} has no manifest for linux/arm64 (it has linux/amd64, linux/s390x)"
            )
        );
        let absent = Digest::of(b"absent");
        let error = resolve(&format!("base@{absent}"), "amd64").unwrap_err();
        assert!(error.contains("is not in the local store"), "{error}");
        assert!(resolve("base", "amd64").is_err(), "a name needs a record");
    }

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
