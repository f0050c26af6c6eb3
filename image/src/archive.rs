//! Importing image archives (`kiln load`): OCI image layouts in a tar (`oci-archive`, what
//! `skopeo copy … oci-archive:` and `docker buildx --output type=oci` write) and
//! `docker save` archives. Blobs are streamed into the content store and verified on the way.

use std::collections::BTreeMap;
use std::io::{self, Read};

use kiln_cache::{ContentError, ContentStore, Digest};
use oci_spec::image::{Descriptor, DescriptorBuilder, ImageIndex, ImageManifestBuilder, MediaType};

use crate::{Image, Reference, ReferenceError};

/// Files other than blobs are read into memory up to this size (indexes, manifests, configs).
const MAX_METADATA: u64 = 16 << 20;

/// Why an archive could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading the tar failed.
    #[error("cannot read the archive: {0}")]
    Read(#[from] io::Error),
    /// Storing a blob failed, or a blob does not match its name.
    #[error("{0}")]
    Content(#[from] ContentError),
    /// The archive is neither an OCI layout nor a `docker save` archive, or is inconsistent.
    #[error("not a valid image archive: {0}")]
    Format(String),
    /// A name in the archive is not a valid reference.
    #[error("{0}")]
    Reference(#[from] ReferenceError),
}

/// One image found in an archive.
#[derive(Clone, Debug)]
pub struct ImportedImage {
    /// The name the archive gives it, if it gives a full one.
    pub name: Option<Reference>,
    /// A bare tag the archive gives it (OCI `ref.name` annotations often hold only a tag).
    pub tag: Option<String>,
    /// Descriptor of its manifest (or index) in the content store.
    pub target: Descriptor,
}

/// Imports every image of the archive read from `reader` into `store`.
pub fn import_archive(
    reader: impl Read,
    store: &ContentStore,
) -> Result<Vec<ImportedImage>, ArchiveError> {
    let mut archive = tar::Archive::new(reader);
    let mut metadata: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut files: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let expected: Digest = format!("sha256:{hex}")
                .parse()
                .map_err(|_| ArchiveError::Format(format!("blob with a malformed name: {path}")))?;
            files.insert(path, store_blob(&mut entry, Some(expected), store)?);
        } else if path.ends_with(".tar") || path.ends_with(".tar.gz") {
            files.insert(path, store_blob(&mut entry, None, store)?);
        } else if entry.header().size()? <= MAX_METADATA {
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            metadata.insert(path, data);
        }
    }
    if let Some(index) = metadata.get("index.json") {
        let images = import_oci(index)?;
        for image in &images {
            let digest: Digest = image.target.digest().to_string().parse().map_err(|_| {
                ArchiveError::Format(format!("index.json: bad digest {}", image.target.digest()))
            })?;
            check_complete(store, &digest)?;
        }
        Ok(images)
    } else if let Some(manifest) = metadata.get("manifest.json") {
        import_docker(manifest, &metadata, &files, store)
    } else {
        Err(ArchiveError::Format(
            "it has neither index.json (OCI layout) nor manifest.json (docker save)".into(),
        ))
    }
}

/// The images an OCI layout's `index.json` names.
fn import_oci(index: &[u8]) -> Result<Vec<ImportedImage>, ArchiveError> {
    let index = ImageIndex::from_reader(index)
        .map_err(|e| ArchiveError::Format(format!("index.json: {e}")))?;
    let mut out = Vec::new();
    for manifest in index.manifests() {
        let annotations = manifest.annotations().clone().unwrap_or_default();
        let full = annotations.get("io.containerd.image.name");
        let ref_name = annotations.get("org.opencontainers.image.ref.name");
        let (name, tag) = match (full, ref_name) {
            (Some(n), _) => (Some(Reference::parse_normalized(n)?), None),
            (None, Some(r)) if r.contains([':', '/']) => {
                (Some(Reference::parse_normalized(r)?), None)
            }
            (None, Some(t)) => (None, Some(t.clone())),
            (None, None) => (None, None),
        };
        out.push(ImportedImage {
            name,
            tag,
            target: manifest.clone(),
        });
    }
    Ok(out)
}

/// Streams a blob from `reader` into `store`; with `expected`, fails, storing nothing,
/// when the bytes are not that digest's.
pub(crate) fn store_blob(
    reader: &mut impl Read,
    expected: Option<Digest>,
    store: &ContentStore,
) -> Result<(Digest, u64), ArchiveError> {
    let mut w = store.writer()?;
    io::copy(reader, &mut w)?;
    Ok(w.commit(expected)?)
}

/// The error for an image that names the blob `digest` without holding it.
pub(crate) fn missing_blob(digest: &Digest) -> ArchiveError {
    ArchiveError::Format(format!(
        "it names the blob {digest}, which it does not hold"
    ))
}

/// Fails unless the store holds the manifest or index `digest` and every blob it reaches,
/// layers included: an archive that names what it lacks is not an image, and an image
/// the store holds whole needs no registry.
pub fn check_complete(store: &ContentStore, digest: &Digest) -> Result<(), ArchiveError> {
    walk_image(store, digest, 0, &mut |blob| {
        if store.contains(blob) {
            Ok(())
        } else {
            Err(missing_blob(blob))
        }
    })
}

/// Walks the manifest or index `digest` and every blob it reaches (an index's manifests,
/// a manifest's config and layers), calling `fetch` on each blob before it is read from
/// `store`: `fetch` brings the blob into the store, or fails.
pub(crate) fn walk_image(
    store: &ContentStore,
    digest: &Digest,
    depth: usize,
    fetch: &mut dyn FnMut(&Digest) -> Result<(), ArchiveError>,
) -> Result<(), ArchiveError> {
    if depth > 8 {
        return Err(ArchiveError::Format("indexes nested too deep".into()));
    }
    fetch(digest)?;
    let bytes = store.read(digest)?;
    let document: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ArchiveError::Format(format!("blob {digest}: {e}")))?;
    let digest_of = |descriptor: &serde_json::Value| -> Result<Digest, ArchiveError> {
        descriptor["digest"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| {
                ArchiveError::Format(format!("blob {digest}: a descriptor without a digest"))
            })
    };
    if let Some(manifests) = document["manifests"].as_array() {
        for manifest in manifests {
            walk_image(store, &digest_of(manifest)?, depth + 1, fetch)?;
        }
        return Ok(());
    }
    let layers = document["layers"].as_array().cloned().unwrap_or_default();
    for descriptor in std::iter::once(&document["config"]).chain(&layers) {
        fetch(&digest_of(descriptor)?)?;
    }
    Ok(())
}

/// One entry of a `docker save` `manifest.json`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Builds an OCI manifest for each image of a `docker save` archive.
fn import_docker(
    manifest: &[u8],
    metadata: &BTreeMap<String, Vec<u8>>,
    files: &BTreeMap<String, (Digest, u64)>,
    store: &ContentStore,
) -> Result<Vec<ImportedImage>, ArchiveError> {
    let entries: Vec<DockerSaveEntry> = serde_json::from_slice(manifest)
        .map_err(|e| ArchiveError::Format(format!("manifest.json: {e}")))?;
    let mut out = Vec::new();
    for entry in entries {
        let config = match (metadata.get(&entry.config), files.get(&entry.config)) {
            (Some(bytes), _) => bytes.clone(),
            (None, Some((digest, _))) => store.read(digest)?,
            (None, None) => {
                return Err(ArchiveError::Format(format!(
                    "config {} is missing",
                    entry.config
                )));
            }
        };
        let image: Image = serde_json::from_slice(&config)
            .map_err(|e| ArchiveError::Format(format!("config {}: {e}", entry.config)))?;
        if image.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(ArchiveError::Format(format!(
                "config lists {} layers but the archive has {}",
                image.rootfs.diff_ids.len(),
                entry.layers.len()
            )));
        }
        let config_digest = store.put(&config)?;
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let (digest, size) = files
                .get(layer)
                .ok_or_else(|| ArchiveError::Format(format!("layer {layer} is missing")))?;
            let mut magic = [0u8; 2];
            let gzip =
                store.open_blob(digest)?.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
            let media_type = if gzip {
                MediaType::ImageLayerGzip
            } else {
                MediaType::ImageLayer
            };
            layers.push(descriptor(media_type, digest, *size)?);
        }
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(
                MediaType::ImageConfig,
                &config_digest,
                config.len() as u64,
            )?)
            .layers(layers)
            .build()
            .map_err(|e| ArchiveError::Format(e.to_string()))?;
        let bytes = manifest
            .to_string()
            .map_err(|e| ArchiveError::Format(e.to_string()))?;
        let manifest_digest = store.put(bytes.as_bytes())?;
        let target = descriptor(
            MediaType::ImageManifest,
            &manifest_digest,
            bytes.len() as u64,
        )?;
        let tags = entry.repo_tags.unwrap_or_default();
        if tags.is_empty() {
            out.push(ImportedImage {
                name: None,
                tag: None,
                target: target.clone(),
            });
        }
        for tag in tags {
            out.push(ImportedImage {
                name: Some(Reference::parse_normalized(&tag)?),
                tag: None,
                target: target.clone(),
            });
        }
    }
    Ok(out)
}

fn descriptor(
    media_type: MediaType,
    digest: &Digest,
    size: u64,
) -> Result<Descriptor, ArchiveError> {
    let digest: oci_spec::image::Digest = digest
        .to_string()
        .parse()
        .map_err(|e: oci_spec::OciSpecError| ArchiveError::Format(e.to_string()))?;
    DescriptorBuilder::default()
        .media_type(media_type)
        .digest(digest)
        .size(size)
        .build()
        .map_err(|e| ArchiveError::Format(e.to_string()))
}
