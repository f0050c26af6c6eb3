//! `kiln load`, `kiln images` and `kiln rmi`: the local image store.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use clap::Args;
use kiln_cache::{ContentStore, Digest, ImageRecord, StateDir};
use kiln_image::{Reference, import_archive, parse_rfc3339};

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

/// What `kiln images` shows of a stored image beyond its name.
struct Summary {
    /// The config digest's hex (the image ID); for an index, its own digest's.
    id: String,
    /// Config plus layers; for an index, its own size.
    size: u64,
    /// When the config says the image was created.
    created: Option<i64>,
}

/// The [`Summary`] of a record's manifest.
fn summary(content: &ContentStore, record: &ImageRecord) -> Summary {
    let fallback = Summary {
        id: record.digest.hex().to_string(),
        size: record.size,
        created: None,
    };
    let Ok(manifest) = content
        .read(&record.digest)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| e.to_string())
        })
    else {
        return fallback;
    };
    let size_of = |v: &serde_json::Value| v["size"].as_u64().unwrap_or(0);
    let Some(config) = manifest["config"]["digest"].as_str() else {
        return fallback;
    };
    let layers: u64 = manifest["layers"]
        .as_array()
        .map_or(0, |l| l.iter().map(size_of).sum());
    let created = config
        .parse::<Digest>()
        .ok()
        .and_then(|d| content.read(&d).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|c| c["created"].as_str().and_then(parse_rfc3339));
    Summary {
        id: config.strip_prefix("sha256:").unwrap_or(config).to_string(),
        size: layers + size_of(&manifest["config"]),
        created,
    }
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
}

/// `kiln images [--digests]`.
pub fn list(state: &StateDir, args: ImagesArgs) -> Result<(), Failure> {
    let records = state
        .images()
        .map_err(Failure::msg)?
        .list()
        .map_err(Failure::msg)?;
    let content = state.content().map_err(Failure::msg)?;
    let mut header = vec!["REPOSITORY".to_string(), "TAG".into()];
    if args.digests {
        header.push("DIGEST".into());
    }
    header.extend(["IMAGE ID".into(), "CREATED".into(), "SIZE".into()]);
    let mut rows = vec![header];
    for record in &records {
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
        let summary = summary(&content, record);
        let mut row = vec![repo, tag];
        if args.digests {
            row.push(record.digest.to_string());
        }
        row.extend([
            summary.id.chars().take(12).collect(),
            age(summary.created),
            human_size(summary.size),
        ]);
        rows.push(row);
    }
    print_table(&rows);
    Ok(())
}

/// `kiln rmi NAME|ID…`: removes names, or an image by its ID (with every name it has
/// under `--force`, as docker); blobs stay until `kiln prune`.
pub fn remove(state: &StateDir, args: RmiArgs) -> Result<(), Failure> {
    let images = state.images().map_err(Failure::msg)?;
    let content = state.content().map_err(Failure::msg)?;
    for name in &args.names {
        // A name first, as docker looks it up; then an image ID.
        let named = Reference::parse_normalized(name)
            .ok()
            .filter(|r| images.get(&r.to_string()).is_ok());
        if let Some(reference) = named {
            let record = images
                .remove(&reference.to_string())
                .map_err(Failure::msg)?;
            println!("Untagged: {}", reference.familiar());
            println!("Deleted: {}", record.digest);
            continue;
        }
        let by_id = by_image_id(&images, &content, name)?;
        if by_id.is_empty() {
            return Err(Failure::msg(format!("No such image: {name}")));
        }
        let named: Vec<&ImageRecord> = by_id.iter().filter(|r| !r.is_untagged()).collect();
        if named.len() > 1 && !args.force {
            return Err(Failure::msg(format!(
                "conflict: unable to delete {name} (must be forced) - image is referenced in multiple repositories"
            )));
        }
        for record in &by_id {
            images.remove(&record.name).map_err(Failure::msg)?;
            if let Ok(reference) = Reference::parse_normalized(&record.name)
                && !record.is_untagged()
            {
                println!("Untagged: {}", reference.familiar());
            }
        }
        println!("Deleted: sha256:{}", summary(&content, &by_id[0]).id);
    }
    Ok(())
}

/// The records of the image whose ID starts with `prefix` (`sha256:` optional); none when
/// `prefix` is not an ID; an error when it names more than one image.
fn by_image_id(
    images: &kiln_cache::ImageStore,
    content: &ContentStore,
    prefix: &str,
) -> Result<Vec<ImageRecord>, Failure> {
    let hex = prefix.strip_prefix("sha256:").unwrap_or(prefix);
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Vec::new());
    }
    let mut matches: Vec<(String, ImageRecord)> = images
        .list()
        .map_err(Failure::msg)?
        .into_iter()
        .map(|record| (summary(content, &record).id, record))
        .filter(|(id, _)| id.starts_with(hex))
        .collect();
    matches.sort_by(|a, b| a.0.cmp(&b.0));
    if matches.first().map(|m| &m.0) != matches.last().map(|m| &m.0) {
        return Err(Failure::msg(format!(
            "{prefix}: more than one image has an ID starting with it"
        )));
    }
    Ok(matches.into_iter().map(|(_, record)| record).collect())
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
