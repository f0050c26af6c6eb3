//! Pulling an image into the local store: its manifest (the wanted platform's, from an
//! index or manifest list), config and layers, each checked against its digest while it
//! streams in. Blobs already in the store are not fetched again.

use std::io::{Read, Write};

use anyhow::{Context, Result, bail};
use kiln_cache::{ContentStore, Digest, ImageRecord, ImageStore};
use kiln_image::{PlatformWanted, Reference, is_index};
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use crate::client::{Access, RegistryClient, check};

/// The manifest media types kiln reads, indexes first.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A manifest or index as the registry serves it.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The exact bytes (their sha256 is the digest).
    pub bytes: Vec<u8>,
    /// Its media type.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
}

/// Fetches the manifest `reference` names (by tag or digest); a pinned digest must match
/// the bytes.
pub fn fetch_manifest(
    client: &RegistryClient,
    reference: &Reference,
    target: &str,
) -> Result<Fetched> {
    let name = reference.to_string();
    let url = client.url(reference, &format!("manifests/{target}"));
    let response = client.send(reference, Access::Pull, |http| {
        http.get(&url)
            .header(ACCEPT, MANIFEST_MEDIA_TYPES.join(", "))
    })?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        bail!("{name}: not found in the registry (no manifest {target})");
    }
    let response = check(response, &name)?;
    let media_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let bytes = read_limited(response, MAX_MANIFEST_BYTES)
        .with_context(|| format!("{name}: the manifest download broke off"))?
        .with_context(|| {
            format!("{name}: the registry sent a manifest larger than {MAX_MANIFEST_BYTES} bytes")
        })?;
    let digest = Digest::of(&bytes);
    if target.starts_with("sha256:") && target != digest.to_string() {
        bail!("{name}: the registry sent a manifest with digest {digest}, not {target}");
    }
    // Some registries omit or generalise the type; the document says what it is.
    let media_type = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(doc) => doc["mediaType"].as_str().map(str::to_string).unwrap_or(
            if doc.get("manifests").is_some() {
                MANIFEST_MEDIA_TYPES[0].to_string()
            } else if media_type.is_empty() {
                MANIFEST_MEDIA_TYPES[2].to_string()
            } else {
                media_type
            },
        ),
        Err(err) => bail!("{name}: the registry sent a manifest that is not JSON: {err}"),
    };
    Ok(Fetched {
        bytes,
        media_type,
        digest,
    })
}

/// The largest manifest or index kiln reads (as containerd, 4 MiB): a hostile registry
/// cannot make it buffer more.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Reads `reader` to its end, or `None` if it holds more than `limit` bytes.
pub(crate) fn read_limited(reader: impl Read, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    reader.take(limit + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// Downloads blob `digest` of `reference`'s repository into `content`, unless it is there;
/// `progress` hears how many bytes have arrived. A blob whose bytes do not hash to `digest`,
/// or that runs past the `size` its descriptor declares, is discarded and is an error.
pub fn fetch_blob(
    client: &RegistryClient,
    content: &ContentStore,
    reference: &Reference,
    digest: &Digest,
    size: u64,
    progress: &dyn Fn(u64),
) -> Result<()> {
    if content.contains(digest) {
        return Ok(());
    }
    let name = reference.repository();
    let url = client.url(reference, &format!("blobs/{digest}"));
    let response = client.send(reference, Access::Pull, |http| http.get(&url))?;
    let mut response = check(response, &format!("{name}: blob {digest}"))?;
    let mut blob = content.writer()?;
    let mut buffer = vec![0u8; 256 * 1024];
    let mut received = 0u64;
    loop {
        let n = match response.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                return Err(err).with_context(|| {
                    format!(
                        "{name}: the download of blob {digest} broke off after {received} bytes"
                    )
                });
            }
        };
        received += n as u64;
        if received > size {
            bail!(
                "{name}: the registry sent more than the {size} bytes its manifest declares for \
                 blob {digest}"
            );
        }
        blob.write_all(&buffer[..n])?;
        progress(received);
    }
    blob.commit(Some(*digest))
        .with_context(|| format!("{name}: blob {digest} arrived corrupt"))?;
    Ok(())
}

/// Pulls `reference` for `platform` into the store and names it there; returns the digest
/// of what the name now points at (the index or the manifest). `progress` hears a line per
/// blob fetched.
pub fn pull(
    client: &RegistryClient,
    content: &ContentStore,
    images: &ImageStore,
    reference: &Reference,
    platform: &PlatformWanted<'_>,
    progress: &dyn Fn(&str),
) -> Result<Digest> {
    let pulled = pull_with(
        client,
        content,
        images,
        reference,
        platform,
        Layers::Now,
        progress,
    )?;
    Ok(pulled.digest)
}

/// When [`pull_with`] downloads an image's layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layers {
    /// With the manifest and config.
    Now,
    /// Not at all: a build fetches them through a content store source when it needs
    /// their bytes (a step on top runs, or an output holds them).
    Later,
}

/// What [`pull_with`] did.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// What the name now points at (the index or the manifest).
    pub digest: Digest,
    /// The layers left for later (digest and size), with [`Layers::Later`].
    pub missing: Vec<(Digest, u64)>,
}

/// [`pull`], downloading the layers now or leaving them for later.
pub fn pull_with(
    client: &RegistryClient,
    content: &ContentStore,
    images: &ImageStore,
    reference: &Reference,
    platform: &PlatformWanted<'_>,
    layers: Layers,
    progress: &dyn Fn(&str),
) -> Result<Pulled> {
    let name = reference.to_string();
    let target = reference
        .digest
        .clone()
        .or_else(|| reference.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let top = fetch_manifest(client, reference, &target)?;
    let manifest = if is_index(&top.media_type) {
        let index: serde_json::Value = serde_json::from_slice(&top.bytes)?;
        let chosen = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| platform_matches(&m["platform"], platform))
            .with_context(|| {
                format!(
                    "{name} has no image for {platform} (it has {})",
                    platforms_of(&index)
                )
            })?;
        let digest = chosen["digest"]
            .as_str()
            .context("index entry without digest")?;
        fetch_manifest(client, reference, digest)?
    } else {
        top.clone()
    };
    let document: serde_json::Value = serde_json::from_slice(&manifest.bytes)?;
    let mut blobs = vec![document["config"].clone()];
    blobs.extend(document["layers"].as_array().cloned().unwrap_or_default());
    let mut missing = Vec::new();
    for (n, descriptor) in blobs.iter().enumerate() {
        let digest: Digest = descriptor["digest"]
            .as_str()
            .context("manifest descriptor without digest")?
            .parse()
            .with_context(|| format!("{name}: bad digest in its manifest"))?;
        if content.contains(&digest) {
            continue;
        }
        let size = descriptor["size"]
            .as_u64()
            .with_context(|| format!("{name}: a descriptor in its manifest has no size"))?;
        // The config (first) is read while lowering; layers may wait.
        if n > 0 && layers == Layers::Later {
            missing.push((digest, size));
            continue;
        }
        let short = digest.short(12);
        progress(&format!(
            "{short} {} / {}",
            human_bytes(0),
            human_bytes(size)
        ));
        // A line each quarter of the way, and one at the end.
        let next_quarter = std::cell::Cell::new(1u64);
        fetch_blob(client, content, reference, &digest, size, &|received| {
            let quarter = next_quarter.get();
            if size >= 1_000_000 && quarter < 4 && received * 4 >= size * quarter {
                next_quarter.set(quarter + 1);
                progress(&format!(
                    "{short} {} / {}",
                    human_bytes(received),
                    human_bytes(size)
                ));
            }
        })?;
        progress(&format!(
            "{short} {} / {} done",
            human_bytes(size),
            human_bytes(size)
        ));
    }
    if !is_index(&top.media_type) {
        check_config_platform(content, &name, &document["config"], platform)?;
    }
    // Blobs first, then manifests, then the name: a name never points at a partial image.
    content.put(&manifest.bytes)?;
    if top.digest != manifest.digest {
        content.put(&top.bytes)?;
    }
    images.put(&ImageRecord::named_now(
        name,
        top.media_type.clone(),
        top.digest,
        top.bytes.len() as u64,
    ))?;
    Ok(Pulled {
        digest: top.digest,
        missing,
    })
}

/// The platforms an index's entries are for, as a list for messages
/// (`linux/amd64, linux/arm/v7`); attestation entries (`unknown/unknown`) left out.
fn platforms_of(index: &serde_json::Value) -> String {
    let names: Vec<String> = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let p = &m["platform"];
            let (os, arch) = (p["os"].as_str()?, p["architecture"].as_str()?);
            if os == "unknown" {
                return None;
            }
            Some(match p["variant"].as_str() {
                Some(variant) if !variant.is_empty() => format!("{os}/{arch}/{variant}"),
                _ => format!("{os}/{arch}"),
            })
        })
        .collect();
    if names.is_empty() {
        "no platform".into()
    } else {
        names.join(", ")
    }
}

/// A registry image that is a single manifest must be for the wanted platform, as
/// containerd's resolver requires: never an amd64 image quietly labelled arm64.
fn check_config_platform(
    content: &ContentStore,
    name: &str,
    config: &serde_json::Value,
    wanted: &PlatformWanted<'_>,
) -> Result<()> {
    let digest: Digest = config["digest"]
        .as_str()
        .context("manifest without config")?
        .parse()?;
    let config: serde_json::Value = serde_json::from_slice(&content.read(&digest)?)
        .with_context(|| format!("{name}: its config is not JSON"))?;
    // A config that states no platform (some artifacts) is taken as it is.
    if config["os"].as_str().is_none_or(str::is_empty) {
        return Ok(());
    }
    if !platform_matches(&config, wanted) {
        let os = config["os"].as_str().unwrap_or_default();
        let arch = config["architecture"].as_str().unwrap_or_default();
        bail!("{name} has no image for {wanted} (it is a single {os}/{arch} image)");
    }
    Ok(())
}

/// Whether an index entry's `platform` is the one wanted.
fn platform_matches(entry: &serde_json::Value, wanted: &PlatformWanted<'_>) -> bool {
    let field = |name: &str| entry[name].as_str();
    field("os")
        .zip(field("architecture"))
        .is_some_and(|(os, architecture)| wanted.matches(os, architecture, field("variant")))
}

/// `1.2MB`, `723kB`, `12B`.
fn human_bytes(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes}B"),
        1_000..1_000_000 => format!("{:.1}kB", bytes as f64 / 1e3),
        _ => format!("{:.1}MB", bytes as f64 / 1e6),
    }
}
