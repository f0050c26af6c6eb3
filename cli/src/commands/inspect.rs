//! `kiln inspect`: what `docker image inspect` shows of images of the local store.

use clap::Args;
use kiln_cache::StateDir;
use kiln_image::{ContainerConfig, Reference};
use serde::Serialize;

use super::Failure;
use super::lookup::{LocalImages, StoredImage};

/// Arguments of `kiln inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// The images: names or image IDs.
    #[arg(required = true, value_name = "IMAGE")]
    names: Vec<String>,
}

/// One image as `docker image inspect` shows it (API 1.44 and later).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ImageInspect {
    id: String,
    repo_tags: Vec<String>,
    repo_digests: Vec<String>,
    parent: String,
    comment: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<String>,
    docker_version: String,
    author: String,
    config: ContainerConfig,
    architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
    os: String,
    size: u64,
    #[serde(rename = "RootFS")]
    root_fs: RootFs,
}

/// The layers of [`ImageInspect`].
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RootFs {
    #[serde(rename = "Type")]
    kind: String,
    layers: Vec<String>,
}

/// `kiln inspect IMAGE…`: prints a JSON array with the images found; then, when some were
/// not, fails naming each (as docker).
pub fn run(state: &StateDir, args: InspectArgs) -> Result<(), Failure> {
    let _lock = state.lock(false).map_err(Failure::msg)?;
    let local = LocalImages::open(state)?;
    let mut found = Vec::new();
    let mut errors = String::new();
    for name in &args.names {
        match local.find(name) {
            Ok(image) => found.push(describe(&local, image)),
            Err(err) => errors.push_str(&err.to_string()),
        }
    }
    let mut text = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut text, formatter);
    found
        .serialize(&mut serializer)
        .map_err(|e| Failure::msg(format!("cannot print the images: {e}")))?;
    println!("{}", String::from_utf8_lossy(&text));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Failure::raw(errors))
    }
}

/// What docker shows of `image`: its tags are every name of the same image ID, its
/// digests the repositories of those names with the manifest (or index) they point at.
fn describe(local: &LocalImages, image: StoredImage) -> ImageInspect {
    let names = local.names_of(&image.config_digest);
    let repo_tags = names.iter().map(|(name, _)| name.familiar()).collect();
    let mut repo_digests: Vec<String> = names
        .iter()
        .map(|(name, record)| {
            let repository = Reference {
                tag: None,
                digest: Some(record.digest.to_string()),
                ..name.clone()
            };
            repository.familiar()
        })
        .collect();
    repo_digests.sort();
    repo_digests.dedup();
    let size = image.size();
    let config = image.config;
    ImageInspect {
        id: image.config_digest.to_string(),
        repo_tags,
        repo_digests,
        parent: String::new(),
        comment: String::new(),
        created: config.created,
        docker_version: String::new(),
        author: config.author.unwrap_or_default(),
        config: config.config,
        architecture: config.architecture,
        variant: config.variant,
        os: config.os,
        size,
        root_fs: RootFs {
            kind: config.rootfs.kind,
            layers: config.rootfs.diff_ids,
        },
    }
}
