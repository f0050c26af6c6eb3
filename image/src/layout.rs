//! OCI image layout directories as build contexts (`--build-context
//! NAME=oci-layout://PATH[:TAG][@sha256:DIGEST]`, as buildx reads them): which image of the
//! layout is meant, and bringing it into the content store, each blob verified against its
//! digest on the way, without giving it a name.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use kiln_cache::{ContentStore, Digest};
use oci_spec::image::{Descriptor, ImageIndex};

use crate::archive::{ArchiveError, missing_blob, store_blob, walk_image};
use crate::reference::valid_tag;

/// The index.json annotations that tag an entry, in the order buildx looks them up.
const TAG_ANNOTATIONS: [&str; 2] = [
    "io.containerd.image.name",
    "org.opencontainers.image.ref.name",
];

/// An `oci-layout://` build context's value, split as buildx splits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutSource {
    /// The layout directory.
    pub path: PathBuf,
    /// The tag asked for: `latest` when none is given.
    pub tag: String,
    /// The manifest or index asked for by digest; it wins over the tag.
    pub digest: Option<Digest>,
}

/// Why an image could not be taken from an OCI layout; each names the layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The value does not parse (a malformed `@sha256:` digest, no path).
    #[error("invalid oci-layout reference {value:?}: {why}")]
    Invalid {
        /// The value after `oci-layout://`.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The directory is not an OCI image layout.
    #[error("{layout} is not an OCI image layout: {why}")]
    NotALayout {
        /// The layout directory.
        layout: String,
        /// What it lacks.
        why: String,
    },
    /// No entry of index.json has the tag, and the layout holds more than one image.
    #[error("{layout}: no image in the OCI layout is tagged {tag:?} ({})", tag_list(.tags))]
    TagNotFound {
        /// The layout directory.
        layout: String,
        /// The tag asked for.
        tag: String,
        /// The tags it has.
        tags: Vec<String>,
    },
    /// The layout holds no blob with the digest asked for.
    #[error("{layout}: the OCI layout holds no manifest or index {digest}")]
    DigestNotFound {
        /// The layout directory.
        layout: String,
        /// The digest asked for.
        digest: Digest,
    },
    /// Reading or storing the image failed, or it is incomplete or damaged.
    #[error("{layout}: {source}")]
    Import {
        /// The layout directory.
        layout: String,
        /// The cause.
        source: ArchiveError,
    },
}

/// `its tags: a, b` for [`LayoutError::TagNotFound`].
fn tag_list(tags: &[String]) -> String {
    if tags.is_empty() {
        "it tags no image".into()
    } else {
        format!("its tags: {}", tags.join(", "))
    }
}

impl LayoutSource {
    /// Splits `PATH[:TAG][@sha256:DIGEST]` (the value after `oci-layout://`) as buildx does:
    /// the digest after the last `@`, then the tag after the last `:` when what follows is a
    /// valid tag (so a `:` or `@` elsewhere stays in the path).
    pub fn parse(value: &str) -> Result<Self, LayoutError> {
        let invalid = |why: String| LayoutError::Invalid {
            value: value.to_string(),
            why,
        };
        let mut path = value;
        let mut digest = None;
        if let Some((before, after)) = path.rsplit_once('@')
            && after.starts_with("sha256:")
        {
            digest = Some(after.parse().map_err(|e| invalid(format!("{e}")))?);
            path = before;
        }
        let mut tag = "latest";
        if let Some((before, after)) = path.rsplit_once(':')
            && valid_tag(after)
        {
            (path, tag) = (before, after);
        }
        if path.is_empty() {
            return Err(invalid("it names no directory".into()));
        }
        Ok(LayoutSource {
            path: PathBuf::from(path),
            tag: tag.to_string(),
            digest,
        })
    }

    /// The layout directory, for messages.
    fn layout(&self) -> String {
        self.path.display().to_string()
    }

    /// Brings the image this source names into `store` (its manifest or index and every
    /// blob it reaches: an index's manifests, configs, layers), verifying each blob
    /// against its digest as it is copied; blobs the store holds are not copied again.
    /// Returns the digest of the manifest or index. No image name is set.
    pub fn import(&self, store: &ContentStore) -> Result<Digest, LayoutError> {
        let root = self.root()?;
        walk_image(store, &root, 0, &mut |blob| {
            copy_blob(&self.path, blob, store)
        })
        .map_err(|source| LayoutError::Import {
            layout: self.layout(),
            source,
        })?;
        Ok(root)
    }

    /// The digest of the manifest or index this source names: the digest asked for, else
    /// the index.json entry with the tag, else its only entry.
    fn root(&self) -> Result<Digest, LayoutError> {
        let not_a_layout = |why: String| LayoutError::NotALayout {
            layout: self.layout(),
            why,
        };
        if !self.path.is_dir() {
            return Err(not_a_layout("no such directory".into()));
        }
        if !self.path.join("oci-layout").is_file() {
            return Err(not_a_layout("it has no oci-layout file".into()));
        }
        let index = match fs::read(self.path.join("index.json")) {
            Ok(bytes) => ImageIndex::from_reader(bytes.as_slice())
                .map_err(|e| not_a_layout(format!("index.json: {e}")))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(not_a_layout("it has no index.json".into()));
            }
            Err(e) => return Err(not_a_layout(format!("cannot read index.json: {e}"))),
        };
        if let Some(digest) = self.digest {
            if !blob_path(&self.path, &digest).is_file() {
                return Err(LayoutError::DigestNotFound {
                    layout: self.layout(),
                    digest,
                });
            }
            return Ok(digest);
        }
        let entry = select(&index, &self.tag).map_err(|tags| LayoutError::TagNotFound {
            layout: self.layout(),
            tag: self.tag.clone(),
            tags,
        })?;
        entry.digest().to_string().parse().map_err(|e| {
            not_a_layout(format!(
                "index.json: an entry with an unsupported digest: {e}"
            ))
        })
    }
}

/// The entry of a layout's `index` that `tag` names (its containerd image name, else its
/// `org.opencontainers.image.ref.name`, as buildx looks it up), else its only entry; else
/// the tags the index has.
fn select<'a>(index: &'a ImageIndex, tag: &str) -> Result<&'a Descriptor, Vec<String>> {
    let tag_of = |entry: &Descriptor, key: &str| {
        entry
            .annotations()
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
    };
    let manifests = index.manifests();
    let tagged = TAG_ANNOTATIONS.iter().find_map(|key| {
        manifests
            .iter()
            .find(|entry| tag_of(entry, key).as_deref() == Some(tag))
    });
    match (tagged, manifests.as_slice()) {
        (Some(entry), _) | (None, [entry]) => Ok(entry),
        (None, _) => Err(manifests
            .iter()
            .flat_map(|entry| TAG_ANNOTATIONS.iter().filter_map(|key| tag_of(entry, key)))
            .collect()),
    }
}

/// Where a layout keeps the blob `digest`.
fn blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    layout.join("blobs/sha256").join(digest.hex())
}

/// Copies the blob `digest` from the layout into `store` unless the store holds it,
/// verifying it on the way.
fn copy_blob(layout: &Path, digest: &Digest, store: &ContentStore) -> Result<(), ArchiveError> {
    if store.contains(digest) {
        return Ok(());
    }
    let mut file = File::open(blob_path(layout, digest)).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => missing_blob(digest),
        _ => ArchiveError::Read(e),
    })?;
    store_blob(&mut file, Some(*digest), store).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(value: &str) -> LayoutSource {
        LayoutSource::parse(value).unwrap()
    }

    #[test]
    fn values_split_into_path_tag_and_digest_as_buildx_splits_them() {
        let digest: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(
            parse("out/layout"),
            LayoutSource {
                path: "out/layout".into(),
                tag: "latest".into(),
                digest: None,
            }
        );
        assert_eq!(parse("out/layout:v1").tag, "v1");
        let both = parse(&format!("/l:v1@sha256:{HEX}"));
        assert_eq!(
            (both.path, both.tag, both.digest),
            ("/l".into(), "v1".into(), Some(digest))
        );
        // A `:` or `@` that does not start a tag or digest is part of the path.
        assert_eq!(parse("/a:b/c").path, PathBuf::from("/a:b/c"));
        assert_eq!(parse("/a:b/c").tag, "latest");
        assert_eq!(parse("me@host/l").path, PathBuf::from("me@host/l"));
        let bad = LayoutSource::parse("l@sha256:beef")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("invalid oci-layout reference"), "{bad}");
        assert!(LayoutSource::parse(":v1").is_err(), "no path");
    }

    /// An index.json entry for `digest`, with `annotations`.
    fn entry(digest: &Digest, annotations: &[(&str, &str)]) -> serde_json::Value {
        let annotations: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest.to_string(),
            "size": 2,
            "annotations": annotations,
        })
    }

    fn index(entries: Vec<serde_json::Value>) -> ImageIndex {
        let json = serde_json::json!({"schemaVersion": 2, "manifests": entries});
        ImageIndex::from_reader(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn an_entry_is_chosen_by_tag_else_as_the_only_one() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let chosen = |index: &ImageIndex, tag| select(index, tag).map(|e| e.digest().to_string());
        let two = index(vec![
            entry(&a, &[("org.opencontainers.image.ref.name", "v1")]),
            entry(
                &b,
                &[
                    ("org.opencontainers.image.ref.name", "v2"),
                    ("io.containerd.image.name", "v1"),
                ],
            ),
        ]);
        // The containerd name is looked up first, as buildx does.
        assert_eq!(chosen(&two, "v1"), Ok(b.to_string()));
        assert_eq!(chosen(&two, "v2"), Ok(b.to_string()));
        assert_eq!(
            chosen(&two, "latest"),
            Err(vec!["v1".to_string(), "v1".into(), "v2".into()])
        );
        let one = index(vec![entry(&a, &[])]);
        assert_eq!(chosen(&one, "latest"), Ok(a.to_string()));
        assert_eq!(chosen(&index(Vec::new()), "latest"), Err(Vec::new()));
    }

    /// A layout in a temporary directory holding a one-layer image tagged `v1`; returns it
    /// and the image's manifest, config and layer digests.
    fn layout() -> (tempfile::TempDir, [Digest; 3]) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let put = |bytes: &[u8]| {
            let digest = Digest::of(bytes);
            fs::write(blobs.join(digest.hex()), bytes).unwrap();
            digest
        };
        let layer = put(b"not really a tar");
        let config = put(br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 1},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": 1}],
        });
        let manifest = put(manifest.to_string().as_bytes());
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [entry(&manifest, &[("org.opencontainers.image.ref.name", "v1")])],
        });
        fs::write(dir.path().join("index.json"), index.to_string()).unwrap();
        fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        (dir, [manifest, config, layer])
    }

    fn source(dir: &Path, tag: &str, digest: Option<Digest>) -> LayoutSource {
        LayoutSource {
            path: dir.to_path_buf(),
            tag: tag.into(),
            digest,
        }
    }

    #[test]
    fn importing_copies_every_blob_the_image_reaches() {
        let (dir, blobs) = layout();
        let state = tempfile::tempdir().unwrap();
        let store = ContentStore::open(state.path()).unwrap();
        let imported = source(dir.path(), "v1", None).import(&store).unwrap();
        assert_eq!(imported, blobs[0]);
        assert!(blobs.iter().all(|blob| store.contains(blob)));
        // By digest, the tag does not matter.
        let by_digest = source(dir.path(), "gone", Some(blobs[0]));
        assert_eq!(by_digest.import(&store).unwrap(), blobs[0]);
    }

    #[test]
    fn what_is_wrong_with_a_layout_is_named() {
        let (dir, [manifest, _, layer]) = layout();
        let state = tempfile::tempdir().unwrap();
        let store = ContentStore::open(state.path()).unwrap();
        let error = |source: LayoutSource| source.import(&store).unwrap_err().to_string();
        let path = dir.path().display().to_string();

        let absent = Digest::of(b"absent");
        let message = error(source(dir.path(), "v1", Some(absent)));
        assert_eq!(
            message,
            format!("{path}: the OCI layout holds no manifest or index {absent}")
        );

        // One image: it is the one meant whatever the tag (as buildx has it); two
        // untagged ones are not.
        assert_eq!(
            source(dir.path(), "v2", None).import(&store).unwrap(),
            manifest
        );
        let mut index: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        let first = index["manifests"][0].clone();
        index["manifests"].as_array_mut().unwrap().push(first);
        fs::write(dir.path().join("index.json"), index.to_string()).unwrap();
        let message = error(source(dir.path(), "v2", None));
        assert_eq!(
            message,
            format!("{path}: no image in the OCI layout is tagged \"v2\" (its tags: v1, v1)")
        );

        // A damaged blob is refused, and not stored.
        let fresh = tempfile::tempdir().unwrap();
        let fresh = ContentStore::open(fresh.path()).unwrap();
        let layer_file = dir.path().join("blobs/sha256").join(layer.hex());
        fs::write(&layer_file, b"changed").unwrap();
        let message = source(dir.path(), "v1", None)
            .import(&fresh)
            .unwrap_err()
            .to_string();
        assert!(message.starts_with(&format!("{path}: ")), "{message}");
        assert!(message.contains("digest mismatch"), "{message}");
        assert!(!fresh.contains(&layer));
        fs::remove_file(&layer_file).unwrap();
        let message = source(dir.path(), "v1", None)
            .import(&fresh)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(&format!(
                "it names the blob {layer}, which it does not hold"
            )),
            "{message}"
        );

        fs::remove_file(dir.path().join("index.json")).unwrap();
        assert_eq!(
            error(source(dir.path(), "v1", None)),
            format!("{path} is not an OCI image layout: it has no index.json")
        );
        fs::remove_file(dir.path().join("oci-layout")).unwrap();
        assert_eq!(
            error(source(dir.path(), "v1", None)),
            format!("{path} is not an OCI image layout: it has no oci-layout file")
        );
        assert_eq!(
            error(source(&dir.path().join("nope"), "v1", None)),
            format!("{path}/nope is not an OCI image layout: no such directory")
        );
    }
}
