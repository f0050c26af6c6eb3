//! `--output`: writing the result as an OCI or Docker archive, a root
//! filesystem tar, or a directory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_cache::{ContentStore, Digest};
use kiln_image::Reference;
use kiln_patterns::PatternMatcher;
use kiln_solver::CopyAction;
use kiln_worker::fileop::{self, SourceTree};
use kiln_worker::layer::{LayerCompression, WriteOptions, write_layer};
use kiln_worker::snapshot::{Snapshot, Snapshotter};

/// Where a build result goes besides the image store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// What is written.
    pub kind: OutputKind,
    /// The file or directory written.
    pub dest: PathBuf,
    /// Layer compression for image archives (`compression=gzip|zstd`); `None` keeps the
    /// layers as built.
    pub compression: Option<LayerCompression>,
}

/// The kinds of `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// An OCI image layout in a tar (`type=oci`).
    Oci,
    /// A `docker load`-able tar (`type=docker`).
    Docker,
    /// The root filesystem as a tar (`type=tar`).
    Tar,
    /// The root filesystem copied into a directory (`type=local`).
    Local,
}

impl std::str::FromStr for Output {
    type Err = String;

    /// Parses buildx's syntax: `type=oci,dest=out.tar[,compression=zstd]`, or a bare path
    /// for `type=local`.
    fn from_str(spec: &str) -> Result<Self, String> {
        if !spec.contains('=') {
            return Ok(Output {
                kind: OutputKind::Local,
                dest: PathBuf::from(spec),
                compression: None,
            });
        }
        let mut kind = None;
        let mut dest = None;
        let mut compression = None;
        for field in spec.split(',') {
            match field.split_once('=') {
                Some(("type", value)) => kind = Some(value.to_string()),
                Some(("dest", value)) => dest = Some(PathBuf::from(value)),
                Some(("compression", "gzip")) => compression = Some(LayerCompression::Gzip),
                Some(("compression", "zstd")) => compression = Some(LayerCompression::Zstd),
                Some(("compression", other)) => {
                    return Err(format!("unsupported compression {other:?} (gzip, zstd)"));
                }
                _ => return Err(format!("unsupported output field {field:?} in {spec:?}")),
            }
        }
        let dest = dest.ok_or_else(|| format!("output {spec:?} needs dest=PATH"))?;
        let kind = match kind.as_deref() {
            Some("oci") => OutputKind::Oci,
            Some("docker") => OutputKind::Docker,
            Some("tar") => OutputKind::Tar,
            Some("local") => OutputKind::Local,
            Some(other) => {
                return Err(format!(
                    "unsupported output type {other:?} (oci, docker, tar, local)"
                ));
            }
            None => return Err(format!("output {spec:?} needs type=…")),
        };
        if compression.is_some() && !matches!(kind, OutputKind::Oci | OutputKind::Docker) {
            return Err(format!(
                "compression applies to image outputs (type=oci, type=docker), not {spec:?}"
            ));
        }
        Ok(Output {
            kind,
            dest,
            compression,
        })
    }
}

/// What an image export wrote, for the archive outputs.
pub struct ImageBlobs<'a> {
    /// The manifest digest and size.
    pub manifest: (Digest, u64),
    /// The config digest.
    pub config: Digest,
    /// The layer blob digests, base first.
    pub layers: Vec<Digest>,
    /// Names to record in the archive.
    pub tags: &'a [String],
}

/// Writes `output`.
pub fn write_output(
    output: &Output,
    content: &ContentStore,
    snapshots: &Snapshotter,
    snapshot: &Snapshot,
    image: &ImageBlobs<'_>,
) -> Result<()> {
    let dest = &output.dest;
    match output.kind {
        OutputKind::Oci => write_archive(dest, content, image, false),
        OutputKind::Docker => write_archive(dest, content, image, true),
        OutputKind::Tar => {
            let view = snapshots.prepare(snapshot, content)?;
            let file =
                File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
            write_layer(
                view.rootfs(),
                &[],
                BufWriter::new(file),
                WriteOptions::default(),
            )
        }
        OutputKind::Local => {
            std::fs::create_dir_all(dest)
                .with_context(|| format!("cannot create {}", dest.display()))?;
            let view = snapshots.prepare(snapshot, content)?;
            let nothing_ignored = PatternMatcher::new(Vec::<String>::new())?;
            let tree = SourceTree {
                root: view.rootfs(),
                ignore: Some(&nothing_ignored),
                is_context: false,
            };
            fileop::copy(&tree, &CopyAction::new(0, "/", "/"), dest)
        }
    }
}

/// An OCI image layout in a tar; with `docker`, also Docker's
/// `manifest.json` so that `docker load` reads it.
fn write_archive(
    dest: &Path,
    content: &ContentStore,
    image: &ImageBlobs<'_>,
    docker: bool,
) -> Result<()> {
    let file = File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    let names: Vec<Reference> = image
        .tags
        .iter()
        .map(|t| {
            Reference::parse_normalized(t).map_err(|e| anyhow::anyhow!("invalid tag {t:?}: {e}"))
        })
        .collect::<Result<_>>()?;
    let mut blobs = vec![image.manifest.0, image.config];
    blobs.extend(&image.layers);
    blobs.dedup();
    append_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let descriptor = |name: Option<&Reference>| {
        let mut value = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": image.manifest.0.to_string(),
            "size": image.manifest.1,
        });
        if let Some(name) = name {
            value["annotations"] = serde_json::json!({
                "io.containerd.image.name": name.to_string(),
                "org.opencontainers.image.ref.name": name.tag.as_deref().unwrap_or("latest"),
            });
        }
        value
    };
    let manifests: Vec<_> = if names.is_empty() {
        vec![descriptor(None)]
    } else {
        names.iter().map(|n| descriptor(Some(n))).collect()
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    append_bytes(&mut tar, "index.json", &serde_json::to_vec(&index)?)?;
    if docker {
        let blob_path = |d: &Digest| format!("blobs/sha256/{}", d.hex());
        let manifest = serde_json::json!([{
            "Config": blob_path(&image.config),
            "RepoTags": names.iter().map(Reference::familiar).collect::<Vec<_>>(),
            "Layers": image.layers.iter().map(blob_path).collect::<Vec<_>>(),
        }]);
        append_bytes(&mut tar, "manifest.json", &serde_json::to_vec(&manifest)?)?;
    }
    for digest in blobs {
        let mut blob = content.open_blob(&digest)?;
        let size = content.size(&digest)?;
        let mut header = tar::Header::new_ustar();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(
            &mut header,
            format!("blobs/sha256/{}", digest.hex()),
            &mut blob,
        )?;
    }
    tar.into_inner()?.flush()?;
    Ok(())
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, data)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_specs_parse_like_buildx() {
        let output = |kind, dest: &str, compression| Output {
            kind,
            dest: dest.into(),
            compression,
        };
        assert_eq!(
            "type=oci,dest=a.tar".parse::<Output>(),
            Ok(output(OutputKind::Oci, "a.tar", None))
        );
        assert_eq!(
            "type=docker,dest=b.tar,compression=zstd".parse::<Output>(),
            Ok(output(
                OutputKind::Docker,
                "b.tar",
                Some(LayerCompression::Zstd)
            ))
        );
        assert_eq!(
            "out".parse::<Output>(),
            Ok(output(OutputKind::Local, "out", None))
        );
        assert!(
            "type=local,dest=d,compression=zstd"
                .parse::<Output>()
                .unwrap_err()
                .contains("image outputs")
        );
        assert!(
            "type=registry,dest=x"
                .parse::<Output>()
                .unwrap_err()
                .contains("unsupported output type")
        );
        assert!("type=oci".parse::<Output>().unwrap_err().contains("dest"));
    }
}
