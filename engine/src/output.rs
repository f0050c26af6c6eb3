//! `--output`: writing the result as an OCI or Docker archive, a root
//! filesystem tar, or a directory.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use kiln_cache::{ContentStore, Digest};
use kiln_image::Reference;
use kiln_patterns::PatternMatcher;
use kiln_solver::{CopyAction, Platform};
use kiln_worker::fileop::{self, SourceTree};
use kiln_worker::layer::{LayerCompression, WriteOptions, write_layer, write_trees};
use kiln_worker::snapshot::{ActiveSnapshot, Snapshot, Snapshotter};

use super::exporter::ManifestFormat;

/// Where a build result goes besides the image store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// What is written.
    pub kind: OutputKind,
    /// Where the file or directory goes (`None` for `type=image`).
    pub dest: Option<Destination>,
    /// Layer compression for images (`compression=gzip|zstd`); `None` keeps the layers as
    /// built.
    pub compression: Option<LayerCompression>,
    /// OCI media types (`oci-mediatypes=true`, the default) or Docker's.
    pub format: ManifestFormat,
    /// For `type=image`: the names to give it (`name=a,b` or repeated `name=`).
    pub names: Vec<String>,
    /// For `type=image`: push the names to their registries (`push=true`; `type=registry`).
    pub push: bool,
    /// Push by digest only, without the names' tags (`push-by-digest=true`): a part of an
    /// index that a client assembles from several builders.
    pub push_by_digest: bool,
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
    /// An image named in the local store (`type=image`), or pushed without a local
    /// name (`push=true`, `type=registry`, as buildx's registry exporter).
    Image,
}

/// Where an output that is a file or a directory goes.
#[derive(Clone)]
pub enum Destination {
    /// A path on this machine: the archive's file, or the directory of `type=local`.
    Path(PathBuf),
    /// The client of a remote build, reached through its session.
    Client(Arc<dyn ClientTarget>),
    /// This process's standard output (`dest=-`), for archives only.
    Stdout,
}

/// An output's destination on a remote build's client.
pub trait ClientTarget: Send + Sync {
    /// Opens a stream to the client, lets `write` write the archive (oci, docker or tar)
    /// into it, and closes it; an error from either side fails the output.
    fn send_archive(&self, write: &mut dyn FnMut(&mut dyn Write) -> Result<()>) -> Result<()>;

    /// Sends the directory tree `dir` (a `type=local` output) to the client.
    fn send_directory(&self, dir: &Path) -> Result<()>;
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Path(path) => f.debug_tuple("Path").field(path).finish(),
            Destination::Client(_) => f.write_str("Client"),
            Destination::Stdout => f.write_str("Stdout"),
        }
    }
}

impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Destination::Path(a), Destination::Path(b)) => a == b,
            (Destination::Client(a), Destination::Client(b)) => Arc::ptr_eq(a, b),
            (Destination::Stdout, Destination::Stdout) => true,
            _ => false,
        }
    }
}

impl Eq for Destination {}

impl Output {
    /// Whether it is an image (has a manifest) rather than a root filesystem.
    pub fn is_image(&self) -> bool {
        matches!(
            self.kind,
            OutputKind::Oci | OutputKind::Docker | OutputKind::Image
        )
    }

    /// How messages name it: its names or its destination.
    pub fn describe(&self) -> String {
        match &self.dest {
            _ if self.kind == OutputKind::Image => format!("image {}", self.names.join(",")),
            Some(Destination::Path(path)) => path.display().to_string(),
            Some(Destination::Stdout) => "standard output".to_string(),
            Some(Destination::Client(_)) | None => format!("{:?} output", self.kind),
        }
    }
}

fn parse_bool(field: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("{field} takes true or false, not {value:?}")),
    }
}

impl std::str::FromStr for Output {
    type Err = String;

    /// Parses buildx's syntax: `type=oci,dest=out.tar[,compression=zstd]`,
    /// `type=image,name=REF[,push=true][,oci-mediatypes=false]`, `type=registry,name=REF`,
    /// or a bare path for `type=local`. `dest=-` is standard output, and a bare `-` is
    /// `type=tar,dest=-`.
    fn from_str(spec: &str) -> Result<Self, String> {
        let mut output = Output {
            kind: OutputKind::Local,
            dest: None,
            compression: None,
            format: ManifestFormat::Oci,
            names: Vec::new(),
            push: false,
            push_by_digest: false,
        };
        if spec == "-" {
            output.kind = OutputKind::Tar;
            output.dest = Some(Destination::Stdout);
            return Ok(output);
        }
        if !spec.contains('=') {
            output.dest = Some(Destination::Path(PathBuf::from(spec)));
            return Ok(output);
        }
        let mut kind = None;
        let mut dest = None;
        for field in spec.split(',') {
            match field.split_once('=') {
                Some(("type", value)) => kind = Some(value.to_string()),
                Some(("dest", value)) => dest = Some(PathBuf::from(value)),
                Some(("name", value)) => output.names.push(value.to_string()),
                Some(("push", value)) => output.push = parse_bool("push", value)?,
                Some(("push-by-digest", value)) => {
                    output.push_by_digest = parse_bool("push-by-digest", value)?;
                }
                Some(("oci-mediatypes", value)) => {
                    output.format = if parse_bool("oci-mediatypes", value)? {
                        ManifestFormat::Oci
                    } else {
                        ManifestFormat::Docker
                    };
                }
                Some(("compression", "gzip")) => output.compression = Some(LayerCompression::Gzip),
                Some(("compression", "zstd")) => output.compression = Some(LayerCompression::Zstd),
                Some(("compression", other)) => {
                    return Err(format!("unsupported compression {other:?} (gzip, zstd)"));
                }
                // `name=a,b`: a second name without its own `name=`.
                None if !output.names.is_empty() => output.names.push(field.to_string()),
                _ => return Err(format!("unsupported output field {field:?} in {spec:?}")),
            }
        }
        output.kind = match kind.as_deref() {
            Some("oci") => OutputKind::Oci,
            Some("docker") => OutputKind::Docker,
            Some("tar") => OutputKind::Tar,
            Some("local") => OutputKind::Local,
            Some("image") => OutputKind::Image,
            Some("registry") => {
                output.push = true;
                OutputKind::Image
            }
            Some(other) => {
                return Err(format!(
                    "unsupported output type {other:?} (oci, docker, tar, local, image, registry)"
                ));
            }
            None => return Err(format!("output {spec:?} needs type=…")),
        };
        if output.kind == OutputKind::Image {
            if output.names.is_empty() {
                return Err(format!("output {spec:?} needs name=REF"));
            }
        } else {
            let dest = dest.ok_or_else(|| format!("output {spec:?} needs dest=PATH"))?;
            output.dest = Some(if dest == Path::new("-") {
                if output.kind == OutputKind::Local {
                    return Err(format!(
                        "dest cannot be stdout for local exporter ({spec:?})"
                    ));
                }
                Destination::Stdout
            } else {
                Destination::Path(dest)
            });
        }
        if !output.is_image()
            && (output.compression.is_some() || output.format != ManifestFormat::Oci)
        {
            return Err(format!(
                "compression and oci-mediatypes apply to images (type=oci, docker, image), not {spec:?}"
            ));
        }
        Ok(output)
    }
}

/// Why a `docker save` archive cannot hold a multi-platform image (buildx's words).
pub(crate) const DOCKER_ARCHIVE_OF_INDEX: &str =
    "docker exporter does not currently support exporting manifest lists";

/// One image for the archive outputs: what an image export wrote, or what `kiln save`
/// found in the store; a single-platform image or an index of several.
pub struct ImageBlobs<'a> {
    /// The manifest's (or index's) digest and size.
    pub manifest: (Digest, u64),
    /// The manifest's (or index's) media type.
    pub media_type: &'a str,
    /// The images it holds: itself, or each platform's of an index, in its order.
    pub platforms: Vec<PlatformBlobs>,
    /// Names to record in the archive.
    pub tags: &'a [String],
    /// The platform of a single-platform image, recorded in the archive's index as
    /// BuildKit records it; `None` for an index.
    pub platform: Option<Platform>,
    /// When it was exported (RFC 3339), for the index's `org.opencontainers.image.created`
    /// annotation, as BuildKit's archive exporters write it.
    pub created: Option<String>,
}

/// The blobs of one platform's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformBlobs {
    /// Its manifest's digest.
    pub manifest: Digest,
    /// Its config's digest.
    pub config: Digest,
    /// Its layer blobs' digests, base first.
    pub layers: Vec<Digest>,
}

impl ImageBlobs<'_> {
    /// Whether it is an index of several platforms' images.
    pub fn is_index(&self) -> bool {
        kiln_image::is_index(self.media_type)
    }
}

/// A root filesystem a build made, and the directory it goes in when the build made
/// several platforms (`linux_arm64`, as BuildKit names them).
pub struct RootFs<'a> {
    /// The directory for this platform; `None` for a single-platform build.
    pub dir: Option<String>,
    /// Its filesystem.
    pub snapshot: &'a Snapshot,
}

/// Writes `output`.
pub fn write_output(
    output: &Output,
    content: &ContentStore,
    snapshots: &Snapshotter,
    roots: &[RootFs<'_>],
    image: &ImageBlobs<'_>,
) -> Result<()> {
    let Some(dest) = &output.dest else {
        return Ok(());
    };
    match output.kind {
        OutputKind::Oci => with_archive(dest, &mut |out| {
            write_archive(out, content, std::slice::from_ref(image), false)
        }),
        OutputKind::Docker => with_archive(dest, &mut |out| {
            write_archive(out, content, std::slice::from_ref(image), true)
        }),
        OutputKind::Tar => {
            let views = roots
                .iter()
                .map(|root| snapshots.prepare(root.snapshot, content))
                .collect::<Result<Vec<_>>>()?;
            with_archive(dest, &mut |out| match roots {
                [RootFs { dir: None, .. }] => {
                    write_layer(views[0].rootfs(), &[], out, WriteOptions::default())
                }
                _ => {
                    let trees: Vec<(String, &Path)> = roots
                        .iter()
                        .zip(&views)
                        .map(|(root, view)| (root.dir.clone().unwrap_or_default(), view.rootfs()))
                        .collect();
                    write_trees(&trees, out, WriteOptions::default())
                }
            })
        }
        OutputKind::Image => Ok(()),
        OutputKind::Local => {
            let copy_to = |dir: &Path| -> Result<()> {
                for root in roots {
                    let view = snapshots.prepare(root.snapshot, content)?;
                    let dest = match &root.dir {
                        Some(sub) => dir.join(sub),
                        None => dir.to_path_buf(),
                    };
                    copy_tree(&view, &dest, snapshots)?;
                }
                Ok(())
            };
            match (dest, roots) {
                (Destination::Path(dir), _) => copy_to(dir),
                (
                    Destination::Client(client),
                    [
                        RootFs {
                            dir: None,
                            snapshot,
                        },
                    ],
                ) => {
                    let view = snapshots.prepare(snapshot, content)?;
                    client.send_directory(view.rootfs())
                }
                (Destination::Client(client), _) => {
                    // Each platform in its own directory of one tree, sent at once.
                    let tree = tempfile::tempdir_in(snapshots.scratch_root())?;
                    copy_to(tree.path())?;
                    client.send_directory(tree.path())
                }
                (Destination::Stdout, _) => {
                    anyhow::bail!("a directory cannot go to standard output")
                }
            }
        }
    }
}

/// Runs `write` on the archive's file, on standard output, or on a stream to the client.
fn with_archive(
    dest: &Destination,
    write: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    match dest {
        Destination::Path(path) => {
            let file =
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            let mut out = BufWriter::new(file);
            write(&mut out)?;
            out.flush()
                .with_context(|| format!("cannot write {}", path.display()))
        }
        Destination::Client(client) => client.send_archive(write),
        Destination::Stdout => {
            let mut out = BufWriter::new(std::io::stdout().lock());
            write(&mut out)?;
            out.flush().context("cannot write to standard output")
        }
    }
}

/// Copies the root filesystem of `view` into the directory `dest` on this machine.
fn copy_tree(view: &ActiveSnapshot, dest: &Path, snapshots: &Snapshotter) -> Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let nothing_ignored = PatternMatcher::new(Vec::<String>::new())?;
    let tree = SourceTree {
        root: view.rootfs(),
        ignore: Some(&nothing_ignored),
        is_context: false,
        layers: view.lowers(),
    };
    let copy_all = CopyAction::new(0, "/", "/");
    // The build is done by now: nothing cancels an export.
    let never = std::sync::atomic::AtomicBool::new(false);
    fileop::copy(
        &tree,
        &copy_all,
        dest,
        None,
        snapshots.scratch_root(),
        &never,
    )
    .map(drop)
}

/// Writes `images` to `out` as `docker save` does: an OCI image layout in a tar, with
/// Docker's `manifest.json` beside it, which `docker load`, `kiln load` and skopeo's
/// `docker-archive:` read.
pub fn write_docker_archive(
    out: &mut dyn Write,
    content: &ContentStore,
    images: &[ImageBlobs<'_>],
) -> Result<()> {
    write_archive(out, content, images, true)
}

/// An OCI image layout in a tar holding `images`; with `docker`, also Docker's
/// `manifest.json` so that `docker load` reads it.
fn write_archive(
    out: &mut dyn Write,
    content: &ContentStore,
    images: &[ImageBlobs<'_>],
    docker: bool,
) -> Result<()> {
    let mut tar = tar::Builder::new(out);
    let names: Vec<Vec<Reference>> = images
        .iter()
        .map(|image| {
            image
                .tags
                .iter()
                .map(|t| {
                    Reference::parse_normalized(t)
                        .map_err(|e| anyhow::anyhow!("invalid tag {t:?}: {e}"))
                })
                .collect::<Result<_>>()
        })
        .collect::<Result<_>>()?;
    if docker && images.iter().any(ImageBlobs::is_index) {
        anyhow::bail!(DOCKER_ARCHIVE_OF_INDEX);
    }
    let mut seen = HashSet::new();
    let blobs: Vec<Digest> = images
        .iter()
        .flat_map(|image| {
            std::iter::once(image.manifest.0).chain(image.platforms.iter().flat_map(|p| {
                [p.manifest, p.config]
                    .into_iter()
                    .chain(p.layers.iter().copied())
            }))
        })
        .filter(|digest| seen.insert(*digest))
        .collect();
    append_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let descriptor = |image: &ImageBlobs<'_>, name: Option<&Reference>| {
        let mut value = serde_json::json!({
            "mediaType": image.media_type,
            "digest": image.manifest.0.to_string(),
            "size": image.manifest.1,
        });
        if let Some(platform) = &image.platform {
            value["platform"] = serde_json::json!(platform);
        }
        let mut annotations = serde_json::Map::new();
        if let Some(created) = &image.created {
            annotations.insert(
                "org.opencontainers.image.created".into(),
                created.clone().into(),
            );
        }
        if let Some(name) = name {
            annotations.insert("io.containerd.image.name".into(), name.to_string().into());
            let tag = name.tag.as_deref().unwrap_or("latest");
            annotations.insert("org.opencontainers.image.ref.name".into(), tag.into());
        }
        if !annotations.is_empty() {
            value["annotations"] = annotations.into();
        }
        value
    };
    let manifests: Vec<_> = images
        .iter()
        .zip(&names)
        .flat_map(|(image, names)| {
            if names.is_empty() {
                vec![descriptor(image, None)]
            } else {
                names.iter().map(|n| descriptor(image, Some(n))).collect()
            }
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    append_bytes(&mut tar, "index.json", &serde_json::to_vec(&index)?)?;
    if docker {
        let blob_path = |d: &Digest| format!("blobs/sha256/{}", d.hex());
        let manifest: Vec<_> = images
            .iter()
            .zip(&names)
            .flat_map(|(image, names)| {
                image.platforms.iter().map(move |p| {
                    serde_json::json!({
                        "Config": blob_path(&p.config),
                        "RepoTags": names.iter().map(Reference::familiar).collect::<Vec<_>>(),
                        "Layers": p.layers.iter().map(blob_path).collect::<Vec<_>>(),
                    })
                })
            })
            .collect();
        append_bytes(&mut tar, "manifest.json", &serde_json::to_vec(&manifest)?)?;
    }
    for digest in blobs {
        let mut blob = content.open_verified(&digest)?;
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
            dest: Some(Destination::Path(dest.into())),
            compression,
            format: ManifestFormat::Oci,
            names: Vec::new(),
            push: false,
            push_by_digest: false,
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
                .contains("apply to images")
        );
        let image = "type=image,name=a:1,b:2,push=true,oci-mediatypes=false"
            .parse::<Output>()
            .unwrap();
        assert_eq!(image.kind, OutputKind::Image);
        assert_eq!(image.names, ["a:1", "b:2"]);
        assert!(image.push);
        assert_eq!(image.format, ManifestFormat::Docker);
        let registry = "type=registry,name=r:1".parse::<Output>().unwrap();
        assert!(registry.push && registry.kind == OutputKind::Image);
        assert!(
            "type=image"
                .parse::<Output>()
                .unwrap_err()
                .contains("name=")
        );
        assert!(
            "type=cacheonly,dest=x"
                .parse::<Output>()
                .unwrap_err()
                .contains("unsupported output type")
        );
        assert!("type=oci".parse::<Output>().unwrap_err().contains("dest"));
        let stdout = |kind| Output {
            dest: Some(Destination::Stdout),
            ..output(kind, "", None)
        };
        assert_eq!("-".parse::<Output>(), Ok(stdout(OutputKind::Tar)));
        assert_eq!(
            "type=docker,dest=-".parse::<Output>(),
            Ok(stdout(OutputKind::Docker))
        );
        assert!(
            "type=local,dest=-"
                .parse::<Output>()
                .unwrap_err()
                .contains("stdout")
        );
    }
}
