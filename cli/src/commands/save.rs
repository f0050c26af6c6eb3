//! `kiln save`: images of the local store as a `docker save` archive.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use kiln_cache::StateDir;
use kiln_engine::{ImageBlobs, PlatformBlobs, write_docker_archive};
use kiln_image::Reference;

use super::Failure;
use super::lookup::{LocalImages, StoredImage};

/// Arguments of `kiln save`.
#[derive(Args)]
pub struct SaveArgs {
    /// Write to this file instead of standard output.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// The images: names (a repository without a tag saves all its tags) or image IDs.
    #[arg(required = true, value_name = "IMAGE")]
    names: Vec<String>,
}

/// One image of the archive with the names it goes under.
struct Saved {
    image: StoredImage,
    tags: Vec<String>,
}

/// `kiln save [-o FILE] IMAGE…`: writes a tar that `docker load` and `kiln load` read.
/// Each image goes in once, under every name it was asked for by; an image asked for by ID
/// goes in without a name.
pub fn run(state: &StateDir, args: SaveArgs) -> Result<(), Failure> {
    if args.output.is_none() && std::io::stdout().is_terminal() {
        return Err(Failure::msg(
            "cowardly refusing to save to a terminal. Use the -o flag or redirect",
        ));
    }
    let _lock = state.lock(false).map_err(Failure::msg)?;
    let local = LocalImages::open(state)?;
    let mut saved: Vec<Saved> = Vec::new();
    for name in &args.names {
        for image in find_all(&local, name)? {
            add(&mut saved, image);
        }
    }
    let blobs: Vec<ImageBlobs<'_>> = saved
        .iter()
        .map(|s| ImageBlobs {
            manifest: s.image.manifest,
            media_type: &s.image.manifest_media_type,
            platforms: vec![PlatformBlobs {
                manifest: s.image.manifest.0,
                config: s.image.config_digest,
                layers: s.image.layers.iter().map(|(digest, _)| *digest).collect(),
            }],
            tags: &s.tags,
            platform: None,
            created: None,
        })
        .collect();
    let write = |out: &mut dyn Write| write_docker_archive(out, local.content(), &blobs);
    match &args.output {
        Some(path) => write_file(path, write),
        None => {
            let mut out = BufWriter::new(std::io::stdout().lock());
            write(&mut out)
                .and_then(|()| Ok(out.flush()?))
                .map_err(|e| Failure::msg(format!("cannot write the archive: {e:#}")))
        }
    }
}

/// What `name` asks for: with neither tag nor digest, every tag of that repository (as
/// `docker save`), else the one image it names.
fn find_all(local: &LocalImages, name: &str) -> Result<Vec<StoredImage>, Failure> {
    let last = name.rsplit('/').next().unwrap_or(name);
    if !name.contains('@')
        && !last.contains(':')
        && let Ok(reference) = Reference::parse_normalized(name)
    {
        let tags = local.tags_of(&reference.repository());
        if !tags.is_empty() {
            return tags
                .into_iter()
                .map(|(tag, record)| local.read(record, Some(tag)))
                .collect();
        }
    }
    Ok(vec![local.find(name)?])
}

/// Adds `image` to `saved`, or its name to the same image already there.
fn add(saved: &mut Vec<Saved>, image: StoredImage) {
    let tag = image
        .found_as
        .as_ref()
        .filter(|r| r.tag.is_some() && r.digest.is_none())
        .map(Reference::to_string);
    let same = |s: &&mut Saved| s.image.manifest.0 == image.manifest.0;
    match saved.iter_mut().find(same) {
        Some(existing) => existing
            .tags
            .extend(tag.filter(|t| !existing.tags.contains(t))),
        None => saved.push(Saved {
            tags: tag.into_iter().collect(),
            image,
        }),
    }
}

/// Writes the archive to a temporary file beside `path`, then renames it to `path`, so
/// that a failed save leaves no partial archive (as docker does).
fn write_file(
    path: &Path,
    write: impl Fn(&mut dyn Write) -> anyhow::Result<()>,
) -> Result<(), Failure> {
    let failed =
        |e: &dyn std::fmt::Display| Failure::msg(format!("cannot write {}: {e:#}", path.display()));
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let file = tempfile::Builder::new()
        .prefix(".kiln_temp_")
        .tempfile_in(dir)
        .map_err(|e| failed(&e))?;
    let mut out = BufWriter::new(file);
    write(&mut out).map_err(|e| failed(&format!("{e:#}")))?;
    let file = out.into_inner().map_err(|e| failed(&e.into_error()))?;
    file.persist(path).map_err(|e| failed(&e.error))?;
    Ok(())
}
