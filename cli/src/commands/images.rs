//! `kiln load`, `kiln images` and `kiln rmi`: the local image store.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use clap::Args;
use kiln_cache::{Digest, ImageRecord, StateDir};
use kiln_image::{Reference, import_archive, parse_rfc3339};

use super::lookup::LocalImages;
use super::{Failure, human_size, print_table};

/// Arguments of `kiln load`.
#[derive(Args)]
pub struct LoadArgs {
    /// The archive: an OCI image layout in a tar, or a `docker save` tar.
    #[arg(short = 'i', long = "input")]
    input: PathBuf,
    /// Name the loaded image (repeatable); needed when the archive names it only by tag.
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
}

/// Arguments of `kiln rmi`.
#[derive(Args)]
pub struct RmiArgs {
    /// Image names or IDs (a prefix of the config digest, as `kiln images` shows it).
    #[arg(required = true)]
    names: Vec<String>,
    /// Remove an image ID's every name.
    #[arg(short, long)]
    force: bool,
}

fn parse_name(name: &str) -> Result<Reference, Failure> {
    Reference::parse_normalized(name).map_err(Failure::msg)
}

/// `kiln load -i FILE`.
pub fn load(state: &StateDir, args: LoadArgs) -> Result<(), Failure> {
    let file = File::open(&args.input)
        .map_err(|e| Failure::msg(format!("cannot open {}: {e}", args.input.display())))?;
    let _lock = state.lock(false).map_err(Failure::msg)?;
    let content = state.content().map_err(Failure::msg)?;
    let images = state.images().map_err(Failure::msg)?;
    let imported = import_archive(BufReader::new(file), &content)
        .map_err(|e| Failure::msg(format!("{}: {e}", args.input.display())))?;
    if imported.is_empty() {
        return Err(Failure::msg(format!(
            "{}: the archive holds no image",
            args.input.display()
        )));
    }
    let extra: Vec<Reference> = args
        .tags
        .iter()
        .map(|t| parse_name(t))
        .collect::<Result<_, _>>()?;
    if !extra.is_empty() && imported.len() > 1 {
        return Err(Failure::msg(format!(
            "{}: the archive holds {} images; --tag can name only one",
            args.input.display(),
            imported.len()
        )));
    }
    for image in &imported {
        let mut names: Vec<Reference> = image.name.iter().cloned().collect();
        names.extend(extra.iter().cloned());
        if names.is_empty() {
            let hint = image
                .tag
                .as_deref()
                .map_or(String::new(), |t| format!(" (only the tag {t:?})"));
            return Err(Failure::msg(format!(
                "{}: the archive does not name its image{hint}; name it with kiln load -t NAME",
                args.input.display()
            )));
        }
        let digest: Digest = image
            .target
            .digest()
            .to_string()
            .parse()
            .map_err(Failure::msg)?;
        for name in names {
            let record = ImageRecord::named_now(
                name.to_string(),
                image.target.media_type().to_string(),
                digest,
                image.target.size(),
            );
            images.put(&record).map_err(Failure::msg)?;
            println!("Loaded image: {}", name.familiar());
        }
    }
    Ok(())
}

/// What `kiln images` shows of a stored image beyond its name: the image ID's hex, the
/// size, and when its config says it was created (the record's own digest and size when
/// the image cannot be read).
fn summary(images: &LocalImages, record: &ImageRecord) -> (String, u64, Option<i64>) {
    match images.read(record, None) {
        Ok(image) => (
            image.config_digest.hex().to_string(),
            image.size(),
            image.config.created.as_deref().and_then(parse_rfc3339),
        ),
        Err(_) => (record.digest.hex().to_string(), record.size, None),
    }
}

/// `kiln images --tree`: each name with its ID and content size, and an index's
/// platforms under it with their manifest's.
fn tree_rows(images: &LocalImages) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "IMAGE".to_string(),
        "ID".into(),
        "CONTENT SIZE".into(),
    ]];
    for record in images.records() {
        let name = match Reference::parse_normalized(&record.name) {
            Ok(r) if !record.is_untagged() => r.familiar(),
            _ => "<none>:<none>".into(),
        };
        let platforms = platforms_of(images, record);
        let size = match &platforms {
            Some(platforms) => platforms.iter().map(|(_, _, size)| size).sum(),
            None => summary(images, record).1,
        };
        let short = |digest: &Digest| digest.hex().chars().take(12).collect::<String>();
        rows.push(vec![name, short(&record.digest), human_size(size)]);
        let platforms = platforms.unwrap_or_default();
        for (n, (platform, digest, size)) in platforms.iter().enumerate() {
            let branch = if n + 1 == platforms.len() {
                "└─"
            } else {
                "├─"
            };
            rows.push(vec![
                format!("{branch} {platform}"),
                short(digest),
                human_size(*size),
            ]);
        }
    }
    rows
}

/// An index record's platforms: each entry's `os/arch[/variant]`, manifest digest, and
/// the size of its config and layers (0 when the store lacks that platform); `None` for a
/// single image.
fn platforms_of(images: &LocalImages, record: &ImageRecord) -> Option<Vec<(String, Digest, u64)>> {
    if !kiln_image::is_index(&record.media_type) {
        return None;
    }
    let content = images.content();
    let index: serde_json::Value =
        serde_json::from_slice(&content.read(&record.digest).ok()?).ok()?;
    let entries = index["manifests"].as_array()?;
    let platforms = entries
        .iter()
        .filter_map(|entry| {
            let digest: Digest = entry["digest"].as_str()?.parse().ok()?;
            let p = &entry["platform"];
            let mut platform = format!("{}/{}", p["os"].as_str()?, p["architecture"].as_str()?);
            if let Some(variant) = p["variant"].as_str().filter(|v| !v.is_empty()) {
                platform = format!("{platform}/{variant}");
            }
            let manifest: Option<serde_json::Value> = content
                .read(&digest)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            let size = manifest.map_or(0, |m| {
                let layers = m["layers"].as_array().map_or(0, |layers| {
                    layers
                        .iter()
                        .filter_map(|l| l["size"].as_u64())
                        .sum::<u64>()
                });
                layers + m["config"]["size"].as_u64().unwrap_or(0)
            });
            Some((platform, digest, size))
        })
        .collect();
    Some(platforms)
}

/// Docker's "N units ago" (go-units' `HumanDuration`), or `N/A` without a time.
fn age(created: Option<i64>) -> String {
    let Some(created) = created else {
        return "N/A".into();
    };
    let secs = (kiln_cache::unix_seconds_now() as i64 - created).max(0);
    let hours = (secs as f64 / 3600.0 + 0.5) as i64;
    let text = match secs {
        0 => return "Less than a second ago".into(),
        1 => "1 second".into(),
        2..=59 => format!("{secs} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", secs / 60),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", secs / 3600 / 24 / 365),
    };
    format!("{text} ago")
}

/// Arguments of `kiln images`.
#[derive(Args)]
pub struct ImagesArgs {
    /// Show each image's manifest digest.
    #[arg(long)]
    digests: bool,
    /// Show each multi-platform image's platforms under it, as `docker images --tree`
    /// (a platform the store lacks counts 0B).
    #[arg(long)]
    tree: bool,
}

/// `kiln images [--digests] [--tree]`.
pub fn list(state: &StateDir, args: ImagesArgs) -> Result<(), Failure> {
    let images = LocalImages::open(state)?;
    if args.tree {
        print_table(&tree_rows(&images));
        return Ok(());
    }
    let mut header = vec!["REPOSITORY".to_string(), "TAG".into()];
    if args.digests {
        header.push("DIGEST".into());
    }
    header.extend(["IMAGE ID".into(), "CREATED".into(), "SIZE".into()]);
    let mut rows = vec![header];
    for record in images.records() {
        let (repo, tag) = match Reference::parse_normalized(&record.name) {
            Ok(r) if !record.is_untagged() => {
                let tag = r.tag.clone().unwrap_or_else(|| "<none>".into());
                let familiar = Reference {
                    tag: None,
                    digest: None,
                    ..r
                }
                .familiar();
                (familiar, tag)
            }
            _ => ("<none>".into(), "<none>".into()),
        };
        let (id, size, created) = summary(&images, record);
        let mut row = vec![repo, tag];
        if args.digests {
            row.push(record.digest.to_string());
        }
        row.extend([
            id.chars().take(12).collect(),
            age(created),
            human_size(size),
        ]);
        rows.push(row);
    }
    print_table(&rows);
    Ok(())
}

/// `kiln rmi NAME|ID…`: removes names, or an image by its ID (with every name it has
/// under `--force`, as docker); blobs stay until `kiln prune`.
pub fn remove(state: &StateDir, args: RmiArgs) -> Result<(), Failure> {
    let store = state.images().map_err(Failure::msg)?;
    for name in &args.names {
        let images = LocalImages::open(state)?;
        let image = images.find(name)?;
        if let Some(reference) = &image.found_as {
            store.remove(&reference.to_string()).map_err(Failure::msg)?;
            println!("Untagged: {}", reference.familiar());
            println!("Deleted: {}", image.record.digest);
            continue;
        }
        let records = images.records_of(&image.config_digest);
        if records.iter().filter(|r| !r.is_untagged()).count() > 1 && !args.force {
            return Err(Failure::msg(format!(
                "conflict: unable to delete {name} (must be forced) - image is referenced in multiple repositories"
            )));
        }
        for record in records {
            store.remove(&record.name).map_err(Failure::msg)?;
            if let Ok(reference) = Reference::parse_normalized(&record.name)
                && !record.is_untagged()
            {
                println!("Untagged: {}", reference.familiar());
            }
        }
        println!("Deleted: {}", image.config_digest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_docker() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_091_072), "1.09MB");
        assert_eq!(human_size(723_000), "723kB");
        assert_eq!(human_size(12_345_678), "12.3MB");
        assert_eq!(human_size(1_000_000), "1MB");
        assert_eq!(human_size(999_999), "1e+03kB");
        assert_eq!(age(None), "N/A");
        let now = kiln_cache::unix_seconds_now() as i64;
        assert_eq!(age(Some(now - 90)), "About a minute ago");
        assert_eq!(age(Some(now - 3 * 86_400)), "3 days ago");
        assert_eq!(age(Some(now - 800 * 86_400)), "2 years ago");
    }
}
