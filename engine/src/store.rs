//! What the state directory holds, getting space back, and checking it: the logic of
//! `kiln du`, `kiln prune` (locally and through a remote builder) and `kiln check`.
//!
//! Named images are never touched. [`prune`] removes the build cache that no named image
//! uses (cache entries whose layers no image holds, their blobs and unpacked layers, cache
//! mounts); with `all`, all build cache, including the unpacked layers of named images
//! (they are unpacked again when needed) and the checksum cache.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Result;
use kiln_cache::{ContentStore, Digest, StateDir};
use kiln_image::ImageContent;
use kiln_worker::WorkerRef;

/// Which prune frees a kind of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    /// Named images need it.
    Never,
    /// `kiln prune`.
    Prune,
    /// `kiln prune --all`.
    All,
}

/// One kind of data in the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// What it is (`image blobs`, `cache mounts`, …).
    pub kind: &'static str,
    /// How many there are.
    pub count: usize,
    /// Bytes on disk.
    pub size: u64,
    /// Which prune frees it.
    pub reclaim: Reclaim,
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneReport {
    /// Cache entries removed, and those kept because named images use them; `None` when
    /// all build cache went.
    pub entries: Option<(usize, usize)>,
    /// Bytes freed.
    pub reclaimed: u64,
}

/// Unpacked layers (`snapshots/layers/<diff_id hex>`): name, size.
fn unpacked_layers(state: &StateDir) -> Vec<(String, u64)> {
    let Ok(entries) = fs::read_dir(state.snapshots().join("layers")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, disk_usage(&e.path()))
        })
        .collect()
}

/// Bytes on disk under `path` (allocated blocks; hard links counted once per walk).
fn disk_usage(path: &Path) -> u64 {
    fn walk(path: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return 0;
        };
        let mut total = 0;
        if seen.insert((meta.dev(), meta.ino())) {
            total += meta.blocks() * 512;
        }
        if meta.is_dir()
            && let Ok(entries) = fs::read_dir(path)
        {
            for entry in entries.filter_map(Result::ok) {
                total += walk(&entry.path(), seen);
            }
        }
        total
    }
    walk(path, &mut HashSet::new())
}

/// What named images need.
fn image_content(state: &StateDir, content: &ContentStore) -> Result<ImageContent> {
    let mut keep = ImageContent::default();
    for record in state.images()?.list()? {
        keep.add(content, &record.digest);
    }
    Ok(keep)
}

/// Whether a cache entry's result consists only of layers in `blobs`.
fn only_uses(entry: &[u8], blobs: &HashSet<Digest>) -> bool {
    match serde_json::from_slice::<WorkerRef>(entry) {
        Ok(WorkerRef::Snapshot(snapshot)) => {
            snapshot.layers.iter().all(|l| blobs.contains(&l.digest))
        }
        _ => false,
    }
}

/// What the state directory holds, by kind.
pub fn usage(state: &StateDir) -> Result<Vec<UsageRow>> {
    let _lock = state.lock(false)?;
    let content = state.content()?;
    let keep = image_content(state, &content)?;
    let blobs = content.list()?;
    let (image_blobs, cache_blobs): (Vec<_>, Vec<_>) =
        blobs.iter().partition(|(d, _)| keep.blobs.contains(d));
    let layers = unpacked_layers(state);
    let (image_layers, cache_layers): (Vec<_>, Vec<_>) = layers
        .iter()
        .partition(|(name, _)| keep.diff_ids.iter().any(|d| d.hex() == name.as_str()));
    // What the cache mounts hold: the (always present) directory itself is no cache.
    let mounts: u64 = fs::read_dir(state.cache_mounts())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| disk_usage(&entry.path()))
        .sum();
    let databases = [state.cache_index_path(), state.checksums()];
    use Reclaim::{All, Never, Prune};
    let row = |kind, count, size, reclaim| UsageRow {
        kind,
        count,
        size,
        reclaim,
    };
    Ok(vec![
        row("image blobs", image_blobs.len(), sum(&image_blobs), Never),
        row(
            "build cache blobs",
            cache_blobs.len(),
            sum(&cache_blobs),
            Prune,
        ),
        row(
            "unpacked image layers",
            image_layers.len(),
            sum(&image_layers),
            All,
        ),
        row(
            "unpacked cache layers",
            cache_layers.len(),
            sum(&cache_layers),
            Prune,
        ),
        row(
            "cache mounts",
            count_entries(&state.cache_mounts()),
            mounts,
            Prune,
        ),
        row(
            "cache databases",
            databases.iter().filter(|p| p.exists()).count(),
            databases.iter().map(|p| disk_usage(p)).sum(),
            All,
        ),
    ])
}

/// The total size of `(item, size)` pairs.
fn sum<T>(items: &[&(T, u64)]) -> u64 {
    items.iter().map(|(_, size)| size).sum()
}

fn count_entries(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |e| e.count())
}

/// Removes the build cache that no named image uses; with `all`, all build cache.
pub fn prune(state: &StateDir, all: bool) -> Result<PruneReport> {
    let _lock = state.lock(true)?;
    let content = state.content()?;
    let keep = image_content(state, &content)?;
    let mut reclaimed = 0u64;
    let mut remove_tree = |path: &Path| -> io::Result<()> {
        let size = disk_usage(path);
        let removed = match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
            Ok(_) => fs::remove_file(path),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) => Err(err),
        };
        removed.map(|()| reclaimed += size)
    };
    let failed = |what: &str, err: io::Error| anyhow::anyhow!("cannot remove {what}: {err}");

    let (kept_entries, removed_entries) = if all {
        remove_tree(&state.cache_index_path()).map_err(|e| failed("the cache index", e))?;
        remove_tree(&state.checksums()).map_err(|e| failed("the checksum cache", e))?;
        (0, None)
    } else {
        let (kept, removed) = state
            .cache_index()
            .retain(|entry| only_uses(entry, &keep.blobs))
            .map_err(|e| anyhow::anyhow!("cannot prune the cache index: {e}"))?;
        (kept, Some(removed))
    };
    remove_tree(&state.cache_mounts()).map_err(|e| failed("cache mounts", e))?;
    for (name, _) in unpacked_layers(state) {
        if all || !keep.diff_ids.iter().any(|d| d.hex() == name.as_str()) {
            let path = state.snapshots().join("layers").join(&name);
            remove_tree(&path).map_err(|e| failed(&name, e))?;
        }
    }
    for (digest, size) in content.list()? {
        if !keep.blobs.contains(&digest) {
            content.remove(&digest)?;
            reclaimed += size;
        }
    }
    content.clean_ingest()?;
    Ok(PruneReport {
        entries: removed_entries.map(|removed| (removed, kept_entries)),
        reclaimed,
    })
}

/// What `kiln check` found, and with `repair`, removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Blobs read.
    pub blobs: usize,
    /// Blobs whose bytes are not their digest's.
    pub damaged: Vec<Digest>,
    /// Image names that reach a damaged or missing blob.
    pub broken_images: Vec<String>,
}

/// Re-reads every stored blob against its digest, and checks that each image name reaches
/// only blobs the store holds intact. With `repair`, removes the damaged blobs and the
/// names of images that lost blobs (build or pull them again); build cache entries whose
/// layers are gone are not used again, so the steps rerun.
pub fn check(state: &StateDir, repair: bool) -> Result<CheckReport> {
    let _lock = state.lock(repair)?;
    let content = state.content()?;
    let mut report = CheckReport::default();
    for (digest, _) in content.list()? {
        report.blobs += 1;
        match content.verify(&digest) {
            Ok(()) => {}
            Err(kiln_cache::ContentError::Damaged(_)) => report.damaged.push(digest),
            Err(e) => return Err(e.into()),
        }
    }
    let damaged: HashSet<Digest> = report.damaged.iter().copied().collect();
    let images = state.images()?;
    for record in images.list()? {
        if !image_intact(&content, &record.digest, &damaged, 0) {
            report.broken_images.push(record.name.clone());
        }
    }
    if repair {
        for digest in &report.damaged {
            content.remove(digest)?;
        }
        for name in &report.broken_images {
            images.remove(name)?;
        }
    }
    Ok(report)
}

/// Whether the manifest or index `digest` and what it reaches are stored intact; an
/// index's manifests that are not stored are platforms never pulled, not damage.
fn image_intact(
    content: &ContentStore,
    digest: &Digest,
    damaged: &HashSet<Digest>,
    depth: usize,
) -> bool {
    let intact = |d: &Digest| content.contains(d) && !damaged.contains(d);
    if !intact(digest) || depth > 8 {
        return false;
    }
    let Some(document) = content
        .read(digest)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return false;
    };
    let digest_of = |v: &serde_json::Value| v["digest"].as_str()?.parse::<Digest>().ok();
    if let Some(manifests) = document["manifests"].as_array() {
        return manifests
            .iter()
            .filter_map(digest_of)
            .filter(|child| content.contains(child))
            .all(|child| image_intact(content, &child, damaged, depth + 1));
    }
    // A layer may be absent: a build that pulled the image left the layers it did not
    // need in the registry, and the next build that needs them pulls them. Present, it
    // must be whole.
    let layers = document["layers"].as_array().cloned().unwrap_or_default();
    digest_of(&document["config"]).is_some_and(|d| intact(&d))
        && layers
            .iter()
            .all(|descriptor| digest_of(descriptor).is_some_and(|d| !damaged.contains(&d)))
}
