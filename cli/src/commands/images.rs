//! `kiln load`, `kiln images` and `kiln rmi`: the local image store.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use clap::Args;
use kiln_cache::{ContentStore, Digest, ImageRecord, StateDir};
use kiln_image::{Reference, import_archive};

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
    /// Image names to remove.
    #[arg(required = true)]
    names: Vec<String>,
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

/// The image ID (config digest) and total size (config plus layers) of a manifest; for an
/// index, its own digest and size.
fn id_and_size(content: &ContentStore, record: &ImageRecord) -> (String, u64) {
    let fallback = (record.digest.short(12), record.size);
    let Ok(bytes) = content.read(&record.digest) else {
        return fallback;
    };
    let Ok(manifest) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return fallback;
    };
    let size_of = |v: &serde_json::Value| v["size"].as_u64().unwrap_or(0);
    match manifest["config"]["digest"].as_str() {
        Some(config) => {
            let layers: u64 = manifest["layers"]
                .as_array()
                .map_or(0, |l| l.iter().map(size_of).sum());
            let id = config.strip_prefix("sha256:").unwrap_or(config);
            (
                id.chars().take(12).collect(),
                layers + size_of(&manifest["config"]),
            )
        }
        None => fallback,
    }
}

/// Docker's "N units ago".
fn age(created: i64) -> String {
    let secs = (kiln_cache::unix_seconds_now() as i64 - created).max(0);
    let (n, unit) = match secs {
        0..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    if secs < 1 {
        "Less than a second ago".into()
    } else {
        format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
    }
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
            Ok(r) => {
                let tag = r.tag.clone().unwrap_or_else(|| "<none>".into());
                let familiar = Reference {
                    tag: None,
                    digest: None,
                    ..r
                }
                .familiar();
                (familiar, tag)
            }
            Err(_) => (record.name.clone(), "<none>".into()),
        };
        let (id, size) = id_and_size(&content, record);
        let mut row = vec![repo, tag];
        if args.digests {
            row.push(record.digest.to_string());
        }
        row.extend([id, age(record.created), human_size(size)]);
        rows.push(row);
    }
    print_table(&rows);
    Ok(())
}

/// `kiln rmi NAME…`: removes names; blobs stay until `kiln prune`.
pub fn remove(state: &StateDir, args: RmiArgs) -> Result<(), Failure> {
    let images = state.images().map_err(Failure::msg)?;
    for name in &args.names {
        let reference = parse_name(name)?;
        let record = images
            .remove(&reference.to_string())
            .map_err(Failure::msg)?;
        println!("Untagged: {}", reference.familiar());
        println!("Deleted: {}", record.digest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_docker() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_091_072), "1.091MB");
        assert_eq!(human_size(723_000), "723kB");
    }
}
