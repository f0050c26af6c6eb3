//! Pushing an image from the local store: every blob the registry lacks (each checked
//! first, so unchanged layers are never sent twice), then the manifests, and the tag last,
//! so that a tag never points at a partial image.

use std::fs::File;

use anyhow::{Context, Result, bail};
use kiln_cache::{ContentStore, Digest, ImageStore};
use kiln_image::{ImageContent, Reference, is_index};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};

use crate::client::{Access, RegistryClient, check};

/// How often a blob upload that broke off is tried again.
const UPLOAD_ATTEMPTS: usize = 3;

/// What a push sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Digest of what the tag points at.
    pub digest: Option<Digest>,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs mounted from another repository of the registry.
    pub mounted: usize,
    /// Blobs the registry had already.
    pub skipped: usize,
}

/// Pushes the manifest or index `digest` (of `media_type`) from the store to `remote`
/// (tag or digest), with every blob it needs; `progress` hears a line per blob.
pub fn push(
    client: &RegistryClient,
    content: &ContentStore,
    images: &ImageStore,
    digest: &Digest,
    media_type: &str,
    remote: &Reference,
    progress: &dyn Fn(&str),
) -> Result<PushReport> {
    let local = remote.to_string();
    let top = content
        .read(digest)
        .with_context(|| format!("{local}: manifest {digest} is not in the local store"))?;
    let mut manifests = Vec::new();
    if is_index(media_type) {
        let index: serde_json::Value = serde_json::from_slice(&top)?;
        for entry in index["manifests"].as_array().into_iter().flatten() {
            let digest: Digest = entry["digest"]
                .as_str()
                .context("index entry without digest")?
                .parse()?;
            let media_type = entry["mediaType"].as_str().unwrap_or_default().to_string();
            if !content.contains(&digest) {
                bail!(
                    "{local}: the manifest {digest} of its index is not in the local store (pull that platform first)"
                );
            }
            manifests.push((digest, media_type));
        }
    }
    let mut report = PushReport::default();
    let sources = mount_sources(content, images, remote);
    for (digest, media_type) in &manifests {
        let manifest = content.read(digest)?;
        push_manifest_blobs(
            client,
            content,
            remote,
            &manifest,
            &sources,
            progress,
            &mut report,
        )?;
        put_manifest(
            client,
            remote,
            &digest.to_string(),
            &content.read(digest)?,
            media_type,
        )?;
    }
    if manifests.is_empty() {
        push_manifest_blobs(
            client,
            content,
            remote,
            &top,
            &sources,
            progress,
            &mut report,
        )?;
    }
    let target = remote
        .tag
        .clone()
        .or_else(|| remote.digest.clone())
        .unwrap_or_else(|| "latest".into());
    put_manifest(client, remote, &target, &top, media_type)?;
    report.digest = Some(*digest);
    Ok(report)
}

/// Other repositories of `remote`'s registry that local images came from, with the blobs
/// each holds: a blob found there is mounted instead of uploaded.
fn mount_sources(
    content: &ContentStore,
    images: &ImageStore,
    remote: &Reference,
) -> Vec<(Reference, ImageContent)> {
    let mut sources: Vec<(Reference, ImageContent)> = Vec::new();
    for record in images.list().unwrap_or_default() {
        let Ok(name) = Reference::parse_normalized(&record.name) else {
            continue;
        };
        if name.domain != remote.domain || name.path == remote.path {
            continue;
        }
        match sources
            .iter_mut()
            .find(|(source, _)| source.path == name.path)
        {
            Some((_, blobs)) => blobs.add(content, &record.digest),
            None => {
                let mut blobs = ImageContent::default();
                blobs.add(content, &record.digest);
                sources.push((name, blobs));
            }
        }
    }
    sources
}

/// Uploads the config and layers of one manifest (mounting what `sources` hold).
fn push_manifest_blobs(
    client: &RegistryClient,
    content: &ContentStore,
    remote: &Reference,
    manifest: &[u8],
    sources: &[(Reference, ImageContent)],
    progress: &dyn Fn(&str),
    report: &mut PushReport,
) -> Result<()> {
    let document: serde_json::Value = serde_json::from_slice(manifest)?;
    let mut descriptors = vec![&document["config"]];
    descriptors.extend(document["layers"].as_array().into_iter().flatten());
    for descriptor in descriptors {
        let digest: Digest = descriptor["digest"]
            .as_str()
            .context("manifest descriptor without digest")?
            .parse()?;
        // A blob only an imported cache of this registry has is mounted from there,
        // never downloaded to be uploaded again.
        let cached = content
            .remote_repository(&digest)
            .and_then(|r| Reference::parse_normalized(&r).ok())
            .filter(|r| r.domain == remote.domain);
        let source = sources
            .iter()
            .find(|(_, blobs)| blobs.blobs.contains(&digest))
            .map(|(source, _)| source)
            .or(cached.as_ref());
        match upload_blob(client, content, remote, &digest, source, progress)? {
            Sent::Uploaded => {
                progress(&format!("pushed {}", digest.short(12)));
                report.uploaded += 1;
            }
            Sent::Mounted => {
                progress(&format!("mounted {}", digest.short(12)));
                report.mounted += 1;
            }
            Sent::Present => report.skipped += 1,
        }
    }
    Ok(())
}

/// How a blob reached the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// It was there already.
    Present,
    /// Mounted from another repository of the registry.
    Mounted,
    /// Uploaded.
    Uploaded,
}

/// Makes blob `digest` present in `remote`'s repository: nothing when it is there, a
/// cross-repository mount from `source` when that works, else an upload.
pub fn upload_blob(
    client: &RegistryClient,
    content: &ContentStore,
    remote: &Reference,
    digest: &Digest,
    source: Option<&Reference>,
    progress: &dyn Fn(&str),
) -> Result<Sent> {
    let name = remote.repository();
    let blob_url = client.url(remote, &format!("blobs/{digest}"));
    let head = client.send(remote, Access::Push, |http| http.head(&blob_url))?;
    if head.status().is_success() {
        return Ok(Sent::Present);
    }
    if let Some(source) = source {
        let mount_url = client.url(remote, "blobs/uploads/");
        let mounted = client.send(remote, Access::Push, |http| {
            http.post(&mount_url)
                .query(&[("mount", digest.to_string()), ("from", source.path.clone())])
                .header(CONTENT_LENGTH, 0)
        })?;
        if mounted.status() == StatusCode::CREATED {
            return Ok(Sent::Mounted);
        }
    }
    let path = content.blob_path(digest);
    let size = content
        .size(digest)
        .with_context(|| format!("{name}: blob {digest} is not in the local store"))?;
    // Never send a blob whose bytes changed on disk under its name.
    content
        .verify(digest)
        .with_context(|| format!("{name}: cannot push"))?;
    progress(&format!("pushing {} ({size} bytes)", digest.short(12)));
    let mut last_error = None;
    for _ in 0..UPLOAD_ATTEMPTS {
        match upload_once(client, remote, digest, &path, size) {
            Ok(()) => return Ok(Sent::Uploaded),
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.expect("at least one attempt")).with_context(|| {
        format!("{name}: cannot upload blob {digest} ({UPLOAD_ATTEMPTS} attempts)")
    })
}

/// One monolithic upload: start a session, then PUT the whole blob with its digest.
fn upload_once(
    client: &RegistryClient,
    remote: &Reference,
    digest: &Digest,
    path: &std::path::Path,
    size: u64,
) -> Result<()> {
    let name = remote.repository();
    let start_url = client.url(remote, "blobs/uploads/");
    let started = client.send(remote, Access::Push, |http| {
        http.post(&start_url).header(CONTENT_LENGTH, 0)
    })?;
    let started = check(started, &format!("{name}: starting an upload"))?;
    if started.status() != StatusCode::ACCEPTED {
        bail!(
            "{name}: the registry answered {} to an upload",
            started.status()
        );
    }
    let location = started
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .context("the registry gave no upload location")?;
    let mut url = reqwest::Url::parse(&start_url)?
        .join(location)
        .context("the registry gave a bad upload location")?;
    url.query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    let put = client.send(remote, Access::Push, |http| {
        let body = File::open(path).map(reqwest::blocking::Body::from);
        let request = http
            .put(url.clone())
            .timeout(crate::client::UPLOAD_TIMEOUT)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size);
        match body {
            Ok(body) => request.body(body),
            Err(_) => request,
        }
    })?;
    check(put, &format!("{name}: uploading blob {digest}"))?;
    Ok(())
}

/// PUTs a manifest or index under `target` (a tag or its digest).
pub fn put_manifest(
    client: &RegistryClient,
    remote: &Reference,
    target: &str,
    bytes: &[u8],
    media_type: &str,
) -> Result<()> {
    let url = client.url(remote, &format!("manifests/{target}"));
    let response = client.send(remote, Access::Push, |http| {
        http.put(&url)
            .header(CONTENT_TYPE, media_type)
            .body(bytes.to_vec())
    })?;
    check(response, &format!("{}:{target}", remote.repository()))?;
    Ok(())
}
