//! Writing a build result as an image: config, manifest, names.

use anyhow::{Context, Result};
use kiln_cache::{CacheIndexStore, ContentStore, Digest, ImageRecord, ImageStore};
use kiln_image::{History, Image, Reference, format_rfc3339, is_index};
use kiln_solver::Platform;
use kiln_worker::layer::{LayerBlob, LayerCompression, TAR_LAYER_MEDIA_TYPE, recompress_all};
use kiln_worker::snapshot::Snapshot;
use oci_spec::image::{DescriptorBuilder, ImageManifestBuilder, MediaType};

/// The media types a manifest is written with (`oci-mediatypes=true|false`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ManifestFormat {
    /// OCI image-spec types.
    #[default]
    Oci,
    /// Docker's v2 schema 2 types, for registries and tools that predate OCI.
    Docker,
}

impl ManifestFormat {
    /// The manifest's own media type.
    pub fn manifest(self) -> &'static str {
        match self {
            Self::Oci => "application/vnd.oci.image.manifest.v1+json",
            Self::Docker => "application/vnd.docker.distribution.manifest.v2+json",
        }
    }

    /// The type of an index of several platforms' manifests (Docker: a manifest list).
    pub fn index(self) -> &'static str {
        match self {
            Self::Oci => "application/vnd.oci.image.index.v1+json",
            Self::Docker => "application/vnd.docker.distribution.manifest.list.v2+json",
        }
    }

    fn config(self) -> &'static str {
        match self {
            Self::Oci => "application/vnd.oci.image.config.v1+json",
            Self::Docker => "application/vnd.docker.container.image.v1+json",
        }
    }

    /// The type of a layer whose blob has type `current` (same bytes, this format's name;
    /// zstd layers keep the OCI type, which Docker's format lacks).
    fn layer(self, current: &str) -> &'static str {
        let gzip = LayerCompression::Gzip.describes(current);
        match self {
            _ if LayerCompression::Zstd.describes(current) => LayerCompression::Zstd.media_type(),
            Self::Oci if gzip => LayerCompression::Gzip.media_type(),
            Self::Oci => TAR_LAYER_MEDIA_TYPE,
            Self::Docker if gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Self::Docker => "application/vnd.docker.image.rootfs.diff.tar",
        }
    }
}

/// Digests of an exported image.
pub struct Exported {
    /// The config blob's digest (the image ID) and size.
    pub config: (Digest, u64),
    /// The manifest blob.
    pub manifest_digest: Digest,
    /// The manifest's size in bytes.
    pub manifest_size: u64,
}

/// How an image is exported into the store.
pub struct ExportOptions<'a> {
    /// The platform the config states.
    pub platform: &'a Platform,
    /// `SOURCE_DATE_EPOCH`: the time new history entries and the config state.
    pub source_date_epoch: Option<u64>,
    /// The inline build cache the config carries (`--cache-to type=inline`).
    pub inline_cache: Option<serde_json::Value>,
}

/// Stores `image` (its rootfs and history completed from `snapshot`) and an OCI
/// manifest for it.
pub fn export_image(
    content: &ContentStore,
    mut image: Image,
    snapshot: &Snapshot,
    options: &ExportOptions<'_>,
) -> Result<Exported> {
    let ExportOptions {
        platform,
        source_date_epoch,
        ref inline_cache,
    } = *options;
    image.inline_cache = inline_cache.clone();
    let now = source_date_epoch.unwrap_or_else(kiln_cache::unix_seconds_now);
    image.architecture = platform.architecture.clone();
    image.os = platform.os.clone();
    image.variant = (!platform.variant.is_empty()).then(|| platform.variant.clone());
    image.rootfs.kind = "layers".into();
    image.rootfs.diff_ids = snapshot
        .layers
        .iter()
        .map(|l| l.diff_id.to_string())
        .collect();
    align_history(&mut image.history, snapshot.layers.len());
    // SOURCE_DATE_EPOCH stamps every new entry; otherwise a layer's entry takes the time
    // its step ran, which the cache kept.
    let layer_times = match source_date_epoch {
        Some(_) => vec![None; snapshot.layers.len()],
        None => snapshot.layers.iter().map(|l| l.created).collect(),
    };
    date_history(&mut image.history, &layer_times, now);
    image.created = image
        .history
        .last()
        .and_then(|h| h.created.clone())
        .or_else(|| Some(format_rfc3339(now)));

    let config_bytes = serde_json::to_vec(&image)?;
    let config_digest = content
        .put(&config_bytes)
        .context("cannot store the image config")?;
    let config = (config_digest, config_bytes.len() as u64);
    let (manifest_digest, manifest_size) =
        store_manifest(content, config, &snapshot.layers, ManifestFormat::Oci)?;
    Ok(Exported {
        config,
        manifest_digest,
        manifest_size,
    })
}

/// Names the stored manifest or index `(digest, size)` of `media_type` in the image
/// store: under every tag, or, without tags and with `keep_untagged`, as an untagged
/// image (`<none>` in `kiln images`).
pub fn name_result(
    images: &ImageStore,
    (digest, size): (Digest, u64),
    media_type: &str,
    tags: &[String],
    keep_untagged: bool,
) -> Result<()> {
    let record = |name: String| ImageRecord {
        name,
        media_type: media_type.to_string(),
        digest,
        size,
        created: kiln_cache::unix_seconds_now() as i64,
    };
    let untagged = ImageRecord::untagged_name(&digest);
    for tag in tags {
        let name = Reference::parse_normalized(tag)
            .map_err(|e| anyhow::anyhow!("invalid tag {tag:?}: {e}"))?;
        images
            .put(&record(name.to_string()))
            .with_context(|| format!("cannot name the image {tag}"))?;
    }
    if tags.is_empty() && keep_untagged {
        images
            .put(&record(untagged))
            .context("cannot keep the untagged image")?;
    } else if !tags.is_empty() {
        // Named now: no longer listed as <none>.
        match images.remove(&untagged) {
            Ok(_) | Err(kiln_cache::ImageStoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Makes every blob of the stored manifest or index `digest` local: a layer an imported
/// cache only promised is fetched now (the content store's sources do it on read).
pub fn fetch_missing_blobs(content: &ContentStore, digest: Digest, media_type: &str) -> Result<()> {
    let document: serde_json::Value = serde_json::from_slice(&content.read(&digest)?)?;
    let mut descriptors: Vec<&serde_json::Value> = Vec::new();
    if is_index(media_type) {
        for entry in document["manifests"].as_array().into_iter().flatten() {
            let child: Digest = entry["digest"]
                .as_str()
                .context("index entry without digest")?
                .parse()?;
            let child_type = entry["mediaType"].as_str().unwrap_or_default();
            fetch_missing_blobs(content, child, child_type)?;
        }
        return Ok(());
    }
    descriptors.push(&document["config"]);
    descriptors.extend(document["layers"].as_array().into_iter().flatten());
    for descriptor in descriptors {
        let blob: Digest = descriptor["digest"]
            .as_str()
            .context("descriptor without digest")?
            .parse()?;
        // Reading the size fetches a missing blob from the source that has it.
        content.size(&blob)?;
    }
    Ok(())
}

/// What a build's manifests make: the one manifest of a single platform, or an index
/// of all of them (of one, too, for a `multi_platform` result) stored with this format's
/// media types; returns its digest and size, and its media type.
pub fn store_top(
    content: &ContentStore,
    manifests: &[((Digest, u64), &Platform)],
    format: ManifestFormat,
    multi_platform: bool,
) -> Result<((Digest, u64), &'static str)> {
    match manifests {
        [(manifest, _)] if !multi_platform => Ok((*manifest, format.manifest())),
        several => Ok((store_index(content, several, format)?, format.index())),
    }
}

/// Stores an image index of `manifests` (digest, size, platform), with this format's
/// media types (an OCI index, or Docker's manifest list); returns its digest and size.
pub fn store_index(
    content: &ContentStore,
    manifests: &[((Digest, u64), &Platform)],
    format: ManifestFormat,
) -> Result<(Digest, u64)> {
    let entries: Vec<serde_json::Value> = manifests
        .iter()
        .map(|((digest, size), platform)| {
            serde_json::json!({
                "mediaType": format.manifest(),
                "digest": digest.to_string(),
                "size": size,
                "platform": platform,
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": format.index(),
        "manifests": entries,
    });
    let bytes = serde_json::to_vec(&index)?;
    let digest = content
        .put(&bytes)
        .context("cannot store the image index")?;
    Ok((digest, bytes.len() as u64))
}

/// Stores an OCI manifest for the config `(digest, size)` and `layers`; returns its digest
/// and size.
pub fn store_manifest(
    content: &ContentStore,
    config: (Digest, u64),
    layers: &[LayerBlob],
    format: ManifestFormat,
) -> Result<(Digest, u64)> {
    let layers = layers
        .iter()
        .map(|l| {
            DescriptorBuilder::default()
                .media_type(MediaType::from(format.layer(&l.media_type)))
                .digest(oci_digest(&l.digest)?)
                .size(l.size)
                .build()
                .map_err(anyhow::Error::from)
        })
        .collect::<Result<Vec<_>>>()?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::from(format.manifest()))
        .config(
            DescriptorBuilder::default()
                .media_type(MediaType::from(format.config()))
                .digest(oci_digest(&config.0)?)
                .size(config.1)
                .build()?,
        )
        .layers(layers)
        .build()?;
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let digest = content
        .put(&manifest_bytes)
        .context("cannot store the image manifest")?;
    Ok((digest, manifest_bytes.len() as u64))
}

/// What to send a registry for the stored manifest `digest`: itself when its layers are
/// all compressed (or it is an index), else a manifest of its own whose uncompressed
/// layers are gzipped (made once per layer and remembered in `memo`); returns the digest
/// and media type.
pub fn distributable(
    content: &ContentStore,
    memo: &CacheIndexStore,
    digest: Digest,
    media_type: &str,
) -> Result<(Digest, String)> {
    let unchanged = Ok((digest, media_type.to_string()));
    if is_index(media_type) {
        return distributable_index(content, memo, digest, media_type);
    }
    let manifest: serde_json::Value = serde_json::from_slice(&content.read(&digest)?)?;
    let descriptors = manifest["layers"].as_array().cloned().unwrap_or_default();
    let uncompressed =
        |d: &serde_json::Value| d["mediaType"].as_str().is_some_and(|t| t.ends_with(".tar"));
    if !descriptors.iter().any(uncompressed) {
        return unchanged;
    }
    let config_digest: Digest = manifest["config"]["digest"]
        .as_str()
        .context("manifest without config")?
        .parse()?;
    let config: Image = serde_json::from_slice(&content.read(&config_digest)?)?;
    let layers = descriptors
        .iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(descriptor, diff_id)| layer_of(descriptor, diff_id, None))
        .collect::<Result<Vec<_>>>()?;
    let layers = recompress_all(content, &layers, LayerCompression::Gzip, memo)?;
    let format = if media_type.contains("docker") {
        ManifestFormat::Docker
    } else {
        ManifestFormat::Oci
    };
    let config_size = manifest["config"]["size"].as_u64().unwrap_or(0);
    let (digest, _) = store_manifest(content, (config_digest, config_size), &layers, format)?;
    Ok((digest, format.manifest().to_string()))
}

/// The layer a manifest's layer `descriptor` names, with the config's `diff_id` for it
/// and the time its step ran, if known.
pub fn layer_of(
    descriptor: &serde_json::Value,
    diff_id: &str,
    created: Option<u64>,
) -> Result<LayerBlob> {
    Ok(LayerBlob {
        diff_id: diff_id.parse()?,
        digest: descriptor["digest"]
            .as_str()
            .context("layer without digest")?
            .parse()?,
        size: descriptor["size"].as_u64().unwrap_or(0),
        media_type: descriptor["mediaType"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        created,
    })
}

/// [`distributable`] for an index: each of its manifests in the store made
/// distributable, and an index of those stored when any changed.
fn distributable_index(
    content: &ContentStore,
    memo: &CacheIndexStore,
    digest: Digest,
    media_type: &str,
) -> Result<(Digest, String)> {
    let mut index: serde_json::Value = serde_json::from_slice(&content.read(&digest)?)?;
    let mut changed = false;
    for entry in index["manifests"].as_array_mut().into_iter().flatten() {
        let Some(child) = entry["digest"].as_str().and_then(|d| d.parse().ok()) else {
            continue;
        };
        // Platforms that were never pulled are pushed as they are (push reports them).
        if !content.contains(&child) {
            continue;
        }
        let child_type = entry["mediaType"].as_str().unwrap_or_default().to_string();
        let (pushed, pushed_type) = distributable(content, memo, child, &child_type)?;
        if pushed != child {
            entry["digest"] = pushed.to_string().into();
            entry["size"] = content.size(&pushed)?.into();
            entry["mediaType"] = pushed_type.into();
            changed = true;
        }
    }
    if !changed {
        return Ok((digest, media_type.to_string()));
    }
    let stored = content
        .put(&serde_json::to_vec(&index)?)
        .context("cannot store the image index")?;
    Ok((stored, media_type.to_string()))
}

/// Gives every history entry without a time one, as BuildKit does: an entry that made a
/// layer takes `layer_times` (one per layer, bottom first) where known; the others take the
/// first new layer's time, or the previous entry's, or `now` when nothing has one.
fn date_history(history: &mut [History], layer_times: &[Option<u64>], now: u64) {
    let mut layers = layer_times.iter();
    for entry in history.iter_mut().filter(|h| !h.empty_layer) {
        if let (None, Some(Some(time))) = (&entry.created, layers.next()) {
            entry.created = Some(format_rfc3339(*time));
        }
    }
    let first_new = history
        .iter()
        .skip_while(|h| h.created.is_some())
        .find_map(|h| h.created.clone());
    let last_dated = history.iter().rev().find_map(|h| h.created.clone());
    let mut created = first_new
        .or(last_dated)
        .unwrap_or_else(|| format_rfc3339(now));
    let mut seen_undated = false;
    for entry in history.iter_mut() {
        match &entry.created {
            Some(time) if seen_undated => created = time.clone(),
            Some(_) => {}
            None => {
                seen_undated = true;
                entry.created = Some(created.clone());
            }
        }
    }
}

/// Makes the history's non-empty entries match the layer count, as
/// BuildKit's exporter does: missing entries are added at the front for
/// base layers that had none, surplus ones become empty.
fn align_history(history: &mut Vec<History>, layers: usize) {
    let with_layer = history.iter().filter(|h| !h.empty_layer).count();
    if with_layer < layers {
        let missing = (0..layers - with_layer).map(|_| History::default());
        history.splice(0..0, missing);
    } else {
        let mut surplus = with_layer - layers;
        for entry in history.iter_mut().filter(|h| !h.empty_layer) {
            if surplus == 0 {
                break;
            }
            entry.empty_layer = true;
            surplus -= 1;
        }
    }
}

fn oci_digest(digest: &Digest) -> Result<oci_spec::image::Digest> {
    digest
        .to_string()
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_alignment() {
        let entry = |empty| History {
            empty_layer: empty,
            ..History::default()
        };
        let mut history = vec![entry(true), entry(false)];
        align_history(&mut history, 3);
        assert_eq!(history.iter().filter(|h| !h.empty_layer).count(), 3);
        let mut history = vec![entry(false), entry(false)];
        align_history(&mut history, 1);
        assert_eq!(history.iter().filter(|h| !h.empty_layer).count(), 1);
    }

    #[test]
    fn history_takes_layer_times_then_buildkits_fill_rule() {
        let entry = |empty: bool, created: Option<u64>| History {
            empty_layer: empty,
            created: created.map(format_rfc3339),
            ..History::default()
        };
        // Base image (dated), ENV (undated), RUN (its layer ran at 200), COPY (layer of
        // an older cache without a time), CMD (undated).
        let mut history = vec![
            entry(false, Some(100)),
            entry(true, None),
            entry(false, None),
            entry(false, None),
            entry(true, None),
        ];
        date_history(&mut history, &[None, Some(200), None], 999);
        let times: Vec<_> = history.iter().map(|h| h.created.clone().unwrap()).collect();
        assert_eq!(times, [100, 200, 200, 200, 200].map(format_rfc3339));

        let mut undated = vec![entry(true, None), entry(false, None)];
        date_history(&mut undated, &[None], 999);
        assert!(
            undated
                .iter()
                .all(|h| h.created == Some(format_rfc3339(999)))
        );
    }
}
