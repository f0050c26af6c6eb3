//! Finding images in the local store by name or image ID, as docker does: what `kiln tag`,
//! `kiln save` and `kiln inspect` share.

use kiln_cache::{ContentStore, Digest, ImageRecord, StateDir};
use kiln_image::{Image, Reference, is_index};
use kiln_solver::Platform;
use oci_spec::image::{ImageIndex, ImageManifest};

use super::Failure;

/// An image of the local store, read for this machine's platform.
pub struct StoredImage {
    /// The store record it was found through.
    pub record: ImageRecord,
    /// The name it was asked for by; `None` when asked for by image ID.
    pub found_as: Option<Reference>,
    /// The platform manifest's digest and size (the record's target unless that is an index).
    pub manifest: (Digest, u64),
    /// The platform manifest's media type.
    pub manifest_media_type: String,
    /// The config digest: the image ID.
    pub config_digest: Digest,
    /// The config.
    pub config: Image,
    /// The config blob's size.
    pub config_size: u64,
    /// The layer blobs (digest, size), base first.
    pub layers: Vec<(Digest, u64)>,
}

impl StoredImage {
    /// Docker's image size: the config and layer blobs (as `kiln images` counts it).
    pub fn size(&self) -> u64 {
        self.config_size + self.layers.iter().map(|(_, size)| size).sum::<u64>()
    }
}

/// The images of the local store, to look names and image IDs up in.
pub struct LocalImages {
    content: ContentStore,
    records: Vec<ImageRecord>,
}

impl LocalImages {
    /// Reads the image names of `state`.
    pub fn open(state: &StateDir) -> Result<Self, Failure> {
        Ok(LocalImages {
            content: state.content().map_err(Failure::msg)?,
            records: state
                .images()
                .map_err(Failure::msg)?
                .list()
                .map_err(Failure::msg)?,
        })
    }

    /// The content store the images' blobs are in.
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    /// The tagged names, with the record of each, whose repository is `repository`
    /// (`docker.io/library/busybox`).
    pub fn tags_of(&self, repository: &str) -> Vec<(Reference, &ImageRecord)> {
        self.named()
            .filter(|(name, _)| name.tag.is_some() && name.repository() == repository)
            .collect()
    }

    /// Every record with a name (untagged images have none), with that name parsed.
    fn named(&self) -> impl Iterator<Item = (Reference, &ImageRecord)> {
        self.records.iter().filter_map(|record| {
            Reference::parse_normalized(&record.name)
                .ok()
                .map(|name| (name, record))
        })
    }

    /// Reads the image that `record` names.
    pub fn read(
        &self,
        record: &ImageRecord,
        found_as: Option<Reference>,
    ) -> Result<StoredImage, Failure> {
        read_image(&self.content, record, found_as).map_err(|e| {
            let name = familiar_name(&record.name);
            Failure::msg(format!("image {name}: {e}"))
        })
    }

    /// What `name` names, as docker finds it: an image name (`busybox`, `app:1`,
    /// `app@sha256:…`), else an image ID (the config digest, `sha256:` optional, or an
    /// unambiguous prefix of its hex). Errors with docker's "No such image: NAME".
    pub fn find(&self, name: &str) -> Result<StoredImage, Failure> {
        let no_such_image = || Failure::msg(format!("No such image: {name}"));
        if let Some(hex) = name.strip_prefix("sha256:") {
            return self.find_id(name, hex)?.ok_or_else(no_such_image);
        }
        let reference = Reference::parse_normalized(name).map_err(Failure::msg)?;
        let full = reference.to_string();
        if let Some(record) = self.records.iter().find(|r| r.name == full) {
            return self.read(record, Some(reference));
        }
        self.find_id(name, name)?.ok_or_else(no_such_image)
    }

    /// The image whose ID starts with `hex`, if exactly one does.
    fn find_id(&self, name: &str, hex: &str) -> Result<Option<StoredImage>, Failure> {
        if hex.is_empty()
            || !hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Ok(None);
        }
        let mut found: Option<StoredImage> = None;
        for record in &self.records {
            // Images that cannot be read have no ID to match.
            let Ok(image) = read_image(&self.content, record, None) else {
                continue;
            };
            if !image.config_digest.hex().starts_with(hex) {
                continue;
            }
            match &found {
                Some(other) if other.config_digest != image.config_digest => {
                    return Err(Failure::msg(format!(
                        "{name}: more than one image ID starts with {hex}"
                    )));
                }
                Some(_) => {}
                None => found = Some(image),
            }
        }
        Ok(found)
    }

    /// The tagged names of the image whose ID is `config_digest`, sorted.
    pub fn names_of(&self, config_digest: &Digest) -> Vec<(Reference, &ImageRecord)> {
        let mut names: Vec<_> = self
            .named()
            .filter(|(name, record)| name.tag.is_some() && self.is_image(record, config_digest))
            .collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        names
    }

    /// Every record of the image whose ID is `config_digest`, untagged ones included.
    pub fn records_of(&self, config_digest: &Digest) -> Vec<&ImageRecord> {
        self.records
            .iter()
            .filter(|record| self.is_image(record, config_digest))
            .collect()
    }

    /// The records, in the store's order.
    pub fn records(&self) -> &[ImageRecord] {
        &self.records
    }

    fn is_image(&self, record: &ImageRecord, config_digest: &Digest) -> bool {
        read_image(&self.content, record, None)
            .is_ok_and(|image| image.config_digest == *config_digest)
    }
}

/// How messages name a record: its familiar name when it has one.
fn familiar_name(name: &str) -> String {
    Reference::parse_normalized(name).map_or_else(|_| name.to_string(), |r| r.familiar())
}

/// Reads the manifest `record` names (this machine's from an index), its config and its
/// layers. Errors are sentence fragments.
fn read_image(
    content: &ContentStore,
    record: &ImageRecord,
    found_as: Option<Reference>,
) -> Result<StoredImage, String> {
    let read = |digest: &Digest| {
        content
            .read(digest)
            .map_err(|e| format!("blob {digest} is unreadable: {e}"))
    };
    let parse_digest = |text: &str| text.parse::<Digest>().map_err(|e| e.to_string());
    let mut manifest = (record.digest, record.size);
    let mut media_type = record.media_type.clone();
    let mut bytes = read(&manifest.0)?;
    if is_index(&record.media_type) {
        let index: ImageIndex =
            serde_json::from_slice(&bytes).map_err(|e| format!("bad index: {e}"))?;
        let host = Platform::host();
        let wanted = kiln_worker::platform_wanted(&host);
        let chosen = index
            .manifests()
            .iter()
            .find(|m| {
                m.platform().as_ref().is_some_and(|p| {
                    wanted.matches(
                        &p.os().to_string(),
                        &p.architecture().to_string(),
                        p.variant().as_deref(),
                    )
                })
            })
            .ok_or_else(|| format!("no manifest for {wanted}"))?;
        manifest = (parse_digest(chosen.digest().as_ref())?, chosen.size());
        media_type = chosen.media_type().to_string();
        bytes = read(&manifest.0)?;
    }
    let parsed: ImageManifest =
        serde_json::from_slice(&bytes).map_err(|e| format!("bad manifest: {e}"))?;
    let config_digest = parse_digest(parsed.config().digest().as_ref())?;
    let config_bytes = read(&config_digest)?;
    let config: Image =
        serde_json::from_slice(&config_bytes).map_err(|e| format!("bad config: {e}"))?;
    let layers = parsed
        .layers()
        .iter()
        .map(|layer| Ok((parse_digest(layer.digest().as_ref())?, layer.size())))
        .collect::<Result<_, String>>()?;
    Ok(StoredImage {
        record: record.clone(),
        found_as,
        manifest,
        manifest_media_type: media_type,
        config_digest,
        config,
        config_size: config_bytes.len() as u64,
        layers,
    })
}
