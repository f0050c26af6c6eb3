//! `--cache-to` / `--cache-from`: a build cache that CI runners share. Its records map
//! kiln's cache keys (command strings, content checksums, parent chain; never a secret or
//! a build-arg value, which only enter keys hashed) to the layers a step made. It is an
//! OCI image manifest whose config holds the records and whose layers are the layer
//! blobs: pushed to a registry (`type=registry,ref=R`), or as an OCI layout in a
//! directory (`type=local,dest=DIR`).
//!
//! Importing reads the records only. A layer is fetched when the build needs its bytes
//! (a step on top of it must run, or an output must contain it), through the content
//! store's [`BlobSource`]s.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use kiln_cache::{BlobSource, CacheIndexStore, ContentStore, Digest, ImageStore};
use kiln_image::{Image, Reference};
use kiln_registry::{RegistryClient, RegistryOptions};
use kiln_solver::{Definition, Executor, MountKind, Op};
use kiln_worker::layer::{LayerBlob, LayerCompression, WriteOptions, recompress_all, store_layer};
use kiln_worker::snapshot::Snapshot;
use kiln_worker::{Worker, WorkerRef, cache_mount_name};
use serde::{Deserialize, Serialize};

/// The media type of the config blob that holds the records.
pub const CACHE_CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.cache.config.v1+json";

/// The version of the records' format; a cache of another version is not read.
const FORMAT_VERSION: u32 = 1;

/// The media type of the cache's manifest.
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Which steps a cache export records (`mode=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// The steps whose layers are in the final image (buildx's default).
    #[default]
    Min,
    /// Every step of every stage built.
    Max,
}

/// Where a build cache lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLocation {
    /// An OCI layout in a directory (`type=local`).
    Local(PathBuf),
    /// A registry repository and tag (`type=registry,ref=R`); for `--cache-from`, an
    /// image with an inline cache too.
    Registry(String),
    /// In the image's own config (`--cache-to type=inline`), read back with
    /// `--cache-from IMAGE`.
    Inline,
}

impl CacheLocation {
    fn describe(&self) -> String {
        match self {
            CacheLocation::Local(dir) => dir.display().to_string(),
            CacheLocation::Registry(reference) => reference.clone(),
            CacheLocation::Inline => "the image (inline)".into(),
        }
    }
}

/// A `--cache-to`: where to export the cache, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheTo {
    /// Where it goes.
    pub location: CacheLocation,
    /// Which steps it records.
    pub mode: CacheMode,
    /// How its layers are compressed (gzip unless `compression=zstd`).
    pub compression: LayerCompression,
    /// A failed export is a warning instead of a failed build (`ignore-error=true`).
    pub ignore_error: bool,
    /// Also export the contents of the build's `RUN --mount=type=cache` directories
    /// (`cache-mounts=true`), which seed them on a runner that lacks them.
    pub cache_mounts: bool,
}

/// A `--cache-from`: a cache to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheFrom {
    /// Where it is.
    pub location: CacheLocation,
}

/// `key=value` fields of a buildx cache spec, with its `type`.
fn fields(spec: &str) -> Result<(String, BTreeMap<String, String>), String> {
    let mut kind = None;
    let mut fields = BTreeMap::new();
    for field in spec.split(',').filter(|f| !f.is_empty()) {
        let Some((key, value)) = field.split_once('=') else {
            return Err(format!(
                "invalid cache field {field:?} in {spec:?} (want key=value)"
            ));
        };
        if key == "type" {
            kind = Some(value.to_string());
        } else {
            fields.insert(key.to_string(), value.to_string());
        }
    }
    Ok((kind.unwrap_or_else(|| "registry".into()), fields))
}

/// The location of a cache spec's `type` and fields.
fn location(
    spec: &str,
    kind: &str,
    fields: &mut BTreeMap<String, String>,
    dir_field: &str,
) -> Result<CacheLocation, String> {
    match kind {
        "local" => fields
            .remove(dir_field)
            .map(|dir| CacheLocation::Local(PathBuf::from(dir)))
            .ok_or_else(|| format!("cache {spec:?} needs {dir_field}=DIR")),
        "registry" => {
            let reference = fields
                .remove("ref")
                .ok_or_else(|| format!("cache {spec:?} needs ref=REPOSITORY:TAG"))?;
            Reference::parse_normalized(&reference)
                .map_err(|e| format!("cache {spec:?}: invalid ref {reference:?}: {e}"))?;
            Ok(CacheLocation::Registry(reference))
        }
        "inline" if dir_field == "dest" => Ok(CacheLocation::Inline),
        "inline" => Err(format!(
            "cache {spec:?}: an inline cache is read with --cache-from IMAGE (type=registry,ref=IMAGE)"
        )),
        "gha" | "s3" | "azblob" => Err(format!(
            "cache type {kind:?} is not supported by kiln yet (local, registry)"
        )),
        other => Err(format!("unknown cache type {other:?} (local, registry)")),
    }
}

fn parse_bool(spec: &str, key: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("cache {spec:?}: {key} takes true or false")),
    }
}

impl FromStr for CacheTo {
    type Err = String;

    /// buildx's syntax: `type=registry,ref=R[,mode=min|max][,compression=gzip|zstd]
    /// [,oci-mediatypes=true][,image-manifest=true][,ignore-error=true]` or
    /// `type=local,dest=DIR[,mode=…]`.
    fn from_str(spec: &str) -> Result<Self, String> {
        let (kind, mut fields) = fields(spec)?;
        let location = location(spec, &kind, &mut fields, "dest")?;
        let mut to = CacheTo {
            location,
            mode: CacheMode::Min,
            compression: LayerCompression::Gzip,
            ignore_error: false,
            cache_mounts: false,
        };
        for (key, value) in &fields {
            match (key.as_str(), value.as_str()) {
                ("mode", "min") => to.mode = CacheMode::Min,
                ("mode", "max") => to.mode = CacheMode::Max,
                ("compression", "gzip") => to.compression = LayerCompression::Gzip,
                ("compression", "zstd") => to.compression = LayerCompression::Zstd,
                ("ignore-error", value) => to.ignore_error = parse_bool(spec, key, value)?,
                ("cache-mounts", value) => to.cache_mounts = parse_bool(spec, key, value)?,
                // kiln's cache is always an OCI image manifest with OCI media types.
                ("oci-mediatypes" | "image-manifest", value) => {
                    parse_bool(spec, key, value)?;
                }
                _ => return Err(format!("cache {spec:?}: unsupported field {key}={value}")),
            }
        }
        Ok(to)
    }
}

impl FromStr for CacheFrom {
    type Err = String;

    /// buildx's syntax: `type=registry,ref=R`, `type=local,src=DIR`, or a bare `REF`.
    fn from_str(spec: &str) -> Result<Self, String> {
        let spec_fields = if spec.contains('=') {
            spec.to_string()
        } else {
            format!("type=registry,ref={spec}")
        };
        let (kind, mut fields) = fields(&spec_fields)?;
        let location = location(spec, &kind, &mut fields, "src")?;
        if let Some((key, _)) = fields.iter().find(|(k, _)| k.as_str() != "digest") {
            return Err(format!("cache {spec:?}: unsupported field {key}"));
        }
        Ok(CacheFrom { location })
    }
}

impl CacheTo {
    /// The spec of BuildKit's wire form (`CacheOptionsEntry`): a type and attributes.
    pub fn from_parts(kind: &str, attrs: &BTreeMap<String, String>) -> Result<Self, String> {
        spec_of(kind, attrs).parse()
    }

    /// Its type and attributes, as BuildKit's `CacheOptionsEntry` carries them.
    pub fn parts(&self) -> (String, BTreeMap<String, String>) {
        let (kind, mut attrs) = self.location.parts("dest");
        let mode = match self.mode {
            CacheMode::Min => "min",
            CacheMode::Max => "max",
        };
        attrs.insert("mode".into(), mode.into());
        let compression = match self.compression {
            LayerCompression::Gzip => "gzip",
            LayerCompression::Zstd => "zstd",
        };
        attrs.insert("compression".into(), compression.into());
        if self.ignore_error {
            attrs.insert("ignore-error".into(), "true".into());
        }
        if self.cache_mounts {
            attrs.insert("cache-mounts".into(), "true".into());
        }
        (kind, attrs)
    }
}

impl CacheFrom {
    /// The spec of BuildKit's wire form (`CacheOptionsEntry`): a type and attributes.
    pub fn from_parts(kind: &str, attrs: &BTreeMap<String, String>) -> Result<Self, String> {
        spec_of(kind, attrs).parse()
    }

    /// Its type and attributes, as BuildKit's `CacheOptionsEntry` carries them.
    pub fn parts(&self) -> (String, BTreeMap<String, String>) {
        self.location.parts("src")
    }
}

impl CacheLocation {
    /// Its type and the attribute that names it (`dir_field` for a directory).
    fn parts(&self, dir_field: &str) -> (String, BTreeMap<String, String>) {
        match self {
            CacheLocation::Local(dir) => (
                "local".into(),
                BTreeMap::from([(dir_field.to_string(), dir.display().to_string())]),
            ),
            CacheLocation::Registry(reference) => (
                "registry".into(),
                BTreeMap::from([("ref".to_string(), reference.clone())]),
            ),
            CacheLocation::Inline => ("inline".into(), BTreeMap::new()),
        }
    }
}

/// A buildx spec string of a type and attributes.
fn spec_of(kind: &str, attrs: &BTreeMap<String, String>) -> String {
    std::iter::once(format!("type={kind}"))
        .chain(attrs.iter().map(|(k, v)| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(",")
}

/// The records' config blob.
#[derive(Serialize, Deserialize)]
struct CacheConfig {
    /// [`FORMAT_VERSION`].
    version: u32,
    /// Each step's cache key and result.
    records: Vec<CacheRecord>,
    /// The contents of cache mounts (`cache-mounts=true`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    mounts: Vec<MountRecord>,
}

/// A cache mount's contents: its directory name (see [`cache_mount_name`]) and a layer
/// holding its files.
#[derive(Serialize, Deserialize)]
struct MountRecord {
    name: String,
    layer: LayerBlob,
}

/// One step: its cache key and the layers it made.
#[derive(Serialize, Deserialize)]
struct CacheRecord {
    key: String,
    result: WorkerRef,
}

/// Records imported with `--cache-from`, looked up after the local cache index, and the
/// cache mount contents they carry.
#[derive(Default)]
pub struct ImportedRecords {
    results: HashMap<String, Vec<u8>>,
    /// Cache mount contents by directory name, for the worker.
    pub mount_seeds: HashMap<String, LayerBlob>,
}

impl ImportedRecords {
    /// The imported result of `key`, as the cache index stores results.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.results.get(key).cloned()
    }

    fn add(&mut self, config: CacheConfig) -> Result<usize> {
        let count = config.records.len();
        for record in config.records {
            self.results
                .insert(record.key, serde_json::to_vec(&record.result)?);
        }
        for mount in config.mounts {
            self.mount_seeds.entry(mount.name).or_insert(mount.layer);
        }
        Ok(count)
    }
}

/// Reads every cache of `from` (a warning, not a failure, for one that cannot be read,
/// as buildx) and lets `content` fetch their layers when they are needed.
pub fn import_all(
    content: &ContentStore,
    registry: &RegistryOptions,
    from: &[CacheFrom],
    notice: &(dyn Fn(&str) + Sync),
) -> ImportedRecords {
    let mut imported = ImportedRecords::default();
    for cache in from {
        let described = cache.location.describe();
        match import(content, registry, &cache.location) {
            Ok(config) => match imported.add(config) {
                Ok(count) => notice(&format!("importing cache from {described}: {count} steps")),
                Err(e) => notice(&format!("WARNING: cache from {described}: {e:#}")),
            },
            Err(e) => notice(&format!(
                "WARNING: importing cache manifest from {described}: {e:#}"
            )),
        }
    }
    imported
}

/// Reads the records of the cache at `location` and adds it to `content`'s sources.
fn import(
    content: &ContentStore,
    registry: &RegistryOptions,
    location: &CacheLocation,
) -> Result<CacheConfig> {
    let (manifest, source): (Vec<u8>, Arc<dyn CacheBlobs>) = match location {
        CacheLocation::Inline => {
            bail!("an inline cache is read from its image: --cache-from IMAGE")
        }
        CacheLocation::Local(dir) => {
            let index: serde_json::Value =
                serde_json::from_slice(&fs::read(dir.join("index.json")).with_context(|| {
                    format!("{} holds no cache (no index.json)", dir.display())
                })?)
                .context("index.json is not JSON")?;
            let digest: Digest = index["manifests"][0]["digest"]
                .as_str()
                .context("index.json names no manifest")?
                .parse()?;
            let source = Arc::new(LayoutBlobs {
                dir: dir.clone(),
                blobs: HashSet::new(),
            });
            let size = index["manifests"][0]["size"].as_u64().unwrap_or(u64::MAX);
            (source.read(&digest, size)?, source)
        }
        CacheLocation::Registry(reference) => {
            let parsed = Reference::parse_normalized(reference).map_err(|e| anyhow::anyhow!(e))?;
            let client = RegistryClient::new(registry.clone())?;
            let tag = parsed.tag.clone().unwrap_or_else(|| "latest".into());
            let target = parsed.digest.clone().unwrap_or(tag);
            let mut fetched = kiln_registry::pull::fetch_manifest(&client, &parsed, &target)?;
            if kiln_image::is_index(&fetched.media_type) {
                // An image with an inline cache for several platforms: this machine's.
                let digest = host_manifest(&fetched.bytes)?;
                fetched = kiln_registry::pull::fetch_manifest(&client, &parsed, &digest)?;
            }
            let source = Arc::new(RegistryBlobs {
                options: registry.clone(),
                client,
                reference: parsed,
                blobs: HashMap::new(),
            });
            (fetched.bytes, source)
        }
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&manifest).context("the cache manifest is not JSON")?;
    let config_digest: Digest = manifest["config"]["digest"]
        .as_str()
        .context("the cache manifest has no config")?
        .parse()?;
    let config_size = manifest["config"]["size"].as_u64().unwrap_or(u64::MAX);
    let config_bytes = source.read(&config_digest, config_size)?;
    let config: CacheConfig = if manifest["config"]["mediaType"] == CACHE_CONFIG_MEDIA_TYPE {
        serde_json::from_slice(&config_bytes).context("the cache's records are not readable")?
    } else {
        records_of_image(&manifest, &config_bytes)?
    };
    if config.version != FORMAT_VERSION {
        bail!(
            "its records are of version {}, this kiln reads {FORMAT_VERSION}",
            config.version
        );
    }
    let layers: Vec<(Digest, u64)> = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let digest = l["digest"]
                .as_str()
                .context("layer without digest")?
                .parse()?;
            Ok((digest, l["size"].as_u64().unwrap_or(0)))
        })
        .collect::<Result<_>>()?;
    content.add_source(source.with_blobs(layers)?);
    Ok(config)
}

/// The digest of this machine's manifest in an index (else its first).
fn host_manifest(index: &[u8]) -> Result<String> {
    let index: serde_json::Value = serde_json::from_slice(index).context("bad index")?;
    let entries = index["manifests"]
        .as_array()
        .context("an index without manifests")?;
    let host = kiln_solver::Platform::host();
    let chosen = entries
        .iter()
        .find(|m| {
            m["platform"]["os"] == host.os.as_str()
                && m["platform"]["architecture"] == host.architecture.as_str()
        })
        .or(entries.first())
        .context("an empty index")?;
    Ok(chosen["digest"]
        .as_str()
        .context("an entry without digest")?
        .to_string())
}

/// An image's inline cache (`--cache-to type=inline`): in its config, which cache keys
/// its first layers answer.
#[derive(Serialize, Deserialize)]
struct InlineCache {
    /// [`FORMAT_VERSION`].
    version: u32,
    /// Each step's key and how many of the image's layers its result is.
    records: Vec<InlineRecord>,
    /// When each layer's step ran (history times a cached rebuild keeps).
    created: Vec<Option<u64>>,
}

/// One step of an inline cache.
#[derive(Serialize, Deserialize)]
struct InlineRecord {
    key: String,
    layers: usize,
}

/// The records of an image's inline cache, whose results are its first layers.
fn records_of_image(manifest: &serde_json::Value, config: &[u8]) -> Result<CacheConfig> {
    let image: Image = serde_json::from_slice(config).context("its config is not an image's")?;
    let inline: InlineCache = serde_json::from_value(
        image
            .inline_cache
            .context("it is neither a kiln build cache nor an image with an inline cache")?,
    )
    .context("its inline cache is not readable")?;
    let descriptors = manifest["layers"].as_array().cloned().unwrap_or_default();
    let layers = descriptors
        .iter()
        .zip(&image.rootfs.diff_ids)
        .enumerate()
        .map(|(n, (descriptor, diff_id))| {
            crate::exporter::layer_of(
                descriptor,
                diff_id,
                inline.created.get(n).copied().flatten(),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let records = inline
        .records
        .into_iter()
        .filter(|r| r.layers <= layers.len())
        .map(|r| CacheRecord {
            key: r.key,
            result: WorkerRef::Snapshot(Snapshot {
                layers: layers[..r.layers].to_vec(),
            }),
        })
        .collect();
    Ok(CacheConfig {
        version: inline.version,
        records,
        mounts: Vec::new(),
    })
}

/// The inline cache of the image whose filesystem is `root` (`--cache-to type=inline`):
/// the steps whose layers start it, by cache key.
pub fn inline_cache(input: &ExportInput<'_>, root: &Snapshot) -> serde_json::Value {
    let records = input
        .definition
        .topological_order()
        .iter()
        .filter_map(|digest| {
            let vertex = input.definition.vertex(digest)?;
            let (WorkerRef::Snapshot(snapshot), key) = input.steps.get(digest)? else {
                return None;
            };
            (input.worker.cacheable(vertex) && in_final_image(&snapshot.layers, &[root])).then(
                || InlineRecord {
                    key: key.clone(),
                    layers: snapshot.layers.len(),
                },
            )
        })
        .collect();
    serde_json::to_value(InlineCache {
        version: FORMAT_VERSION,
        records,
        created: root.layers.iter().map(|l| l.created).collect(),
    })
    .expect("an inline cache serialises")
}

/// A cache's blobs, read directly (its manifest and config) or as a [`BlobSource`].
trait CacheBlobs: Send + Sync {
    /// A small blob's bytes (of at most `size`), checked against its digest.
    fn read(&self, digest: &Digest, size: u64) -> Result<Vec<u8>>;
    /// The source for `content`, knowing the cache's layers and their sizes.
    fn with_blobs(&self, layers: Vec<(Digest, u64)>) -> Result<Arc<dyn BlobSource>>;
}

/// The blobs of an OCI layout directory.
struct LayoutBlobs {
    dir: PathBuf,
    blobs: HashSet<Digest>,
}

impl LayoutBlobs {
    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }
}

impl CacheBlobs for LayoutBlobs {
    fn read(&self, digest: &Digest, _size: u64) -> Result<Vec<u8>> {
        let path = self.path(digest);
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if Digest::of(&bytes) != *digest {
            bail!("{} does not have its digest", path.display());
        }
        Ok(bytes)
    }

    fn with_blobs(&self, layers: Vec<(Digest, u64)>) -> Result<Arc<dyn BlobSource>> {
        Ok(Arc::new(LayoutBlobs {
            dir: self.dir.clone(),
            blobs: layers.into_iter().map(|(d, _)| d).collect(),
        }))
    }
}

impl BlobSource for LayoutBlobs {
    fn name(&self) -> String {
        format!("the cache in {}", self.dir.display())
    }

    fn has(&self, digest: &Digest) -> bool {
        self.blobs.contains(digest)
    }

    fn fetch(&self, digest: &Digest, store: &ContentStore) -> Result<(), String> {
        let copy = || -> Result<()> {
            let mut file = fs::File::open(self.path(digest))?;
            let mut writer = store.writer()?;
            std::io::copy(&mut file, &mut writer)?;
            writer.commit(Some(*digest))?;
            Ok(())
        };
        copy().map_err(|e| format!("{e:#}"))
    }
}

/// The layers `layers` (digest and size) of the registry image `reference`, as a source
/// the content store fetches them from when a build needs their bytes.
pub fn registry_layers(
    options: &RegistryOptions,
    reference: Reference,
    layers: Vec<(Digest, u64)>,
) -> Result<Arc<dyn BlobSource>> {
    Ok(Arc::new(RegistryBlobs {
        options: options.clone(),
        client: RegistryClient::new(options.clone())?,
        reference,
        blobs: layers.into_iter().collect(),
    }))
}

/// The blobs of a registry repository.
struct RegistryBlobs {
    options: RegistryOptions,
    client: RegistryClient,
    reference: Reference,
    /// Layer digests and sizes.
    blobs: HashMap<Digest, u64>,
}

impl CacheBlobs for RegistryBlobs {
    fn read(&self, digest: &Digest, size: u64) -> Result<Vec<u8>> {
        // Small blobs (the records) through a scratch store, which checks the digest.
        let scratch = tempfile::tempdir()?;
        let store = ContentStore::open(scratch.path())?;
        kiln_registry::pull::fetch_blob(
            &self.client,
            &store,
            &self.reference,
            digest,
            size,
            &|_| {},
        )?;
        Ok(store.read(digest)?)
    }

    fn with_blobs(&self, layers: Vec<(Digest, u64)>) -> Result<Arc<dyn BlobSource>> {
        registry_layers(&self.options, self.reference.clone(), layers)
    }
}

impl BlobSource for RegistryBlobs {
    fn name(&self) -> String {
        self.reference.to_string()
    }

    fn has(&self, digest: &Digest) -> bool {
        self.blobs.contains_key(digest)
    }

    fn repository(&self) -> Option<String> {
        Some(format!("{}/{}", self.reference.domain, self.reference.path))
    }

    fn fetch(&self, digest: &Digest, store: &ContentStore) -> Result<(), String> {
        let size = self.blobs.get(digest).copied().unwrap_or(u64::MAX);
        kiln_registry::pull::fetch_blob(&self.client, store, &self.reference, digest, size, &|_| {})
            .map_err(|e| format!("{e:#}"))
    }
}

/// What a cache export needs from the build.
pub struct ExportInput<'a> {
    /// The build's steps.
    pub definition: &'a Definition,
    /// Every step solved, with its result and cache key.
    pub steps: &'a HashMap<Digest, (WorkerRef, String)>,
    /// The final images' filesystems (one per platform).
    pub roots: Vec<&'a Snapshot>,
    /// The worker, which says which steps are cacheable.
    pub worker: &'a Worker,
    /// The state directory's cache mounts.
    pub cache_mounts: &'a Path,
}

/// Exports the cache to every `--cache-to`; a failure fails the build unless that export
/// says `ignore-error=true`.
pub fn export_all(
    content: &ContentStore,
    images: &ImageStore,
    memo: &CacheIndexStore,
    registry: &RegistryClient,
    to: &[CacheTo],
    input: &ExportInput<'_>,
    notice: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    // An inline cache went into the image's config as it was exported.
    for cache in to.iter().filter(|c| c.location != CacheLocation::Inline) {
        let described = cache.location.describe();
        notice(&format!("exporting cache to {described}"));
        let exported = export(content, images, memo, registry, cache, input, notice);
        match exported {
            Ok(count) => notice(&format!("exported {count} steps to {described}")),
            Err(e) if cache.ignore_error => {
                notice(&format!(
                    "WARNING: cannot export cache to {described}: {e:#}"
                ));
            }
            Err(e) => return Err(e.context(format!("cannot export cache to {described}"))),
        }
    }
    Ok(())
}

/// Whether `layers` are the first layers of one of `roots` (a step of the final image).
fn in_final_image(layers: &[LayerBlob], roots: &[&Snapshot]) -> bool {
    roots.iter().any(|root| {
        layers.len() <= root.layers.len()
            && layers
                .iter()
                .zip(&root.layers)
                .all(|(a, b)| a.diff_id == b.diff_id)
    })
}

/// Exports one cache; returns how many steps it records.
fn export(
    content: &ContentStore,
    images: &ImageStore,
    memo: &CacheIndexStore,
    registry: &RegistryClient,
    to: &CacheTo,
    input: &ExportInput<'_>,
    notice: &(dyn Fn(&str) + Sync),
) -> Result<usize> {
    let mut records = Vec::new();
    let mut layers: Vec<LayerBlob> = Vec::new();
    // In dependency order, so that the records (and the manifest) come out the same.
    for digest in input.definition.topological_order() {
        let (Some(vertex), Some((WorkerRef::Snapshot(snapshot), key))) =
            (input.definition.vertex(digest), input.steps.get(digest))
        else {
            continue;
        };
        if !input.worker.cacheable(vertex)
            || (to.mode == CacheMode::Min && !in_final_image(&snapshot.layers, &input.roots))
        {
            continue;
        }
        let compressed = recompress_all(content, &snapshot.layers, to.compression, memo)?;
        for layer in &compressed {
            if !layers.iter().any(|l| l.digest == layer.digest) {
                layers.push(layer.clone());
            }
        }
        records.push(CacheRecord {
            key: key.clone(),
            result: WorkerRef::Snapshot(Snapshot { layers: compressed }),
        });
    }
    let count = records.len();
    let mounts = if to.cache_mounts {
        export_mounts(content, memo, to.compression, input)?
    } else {
        Vec::new()
    };
    for mount in &mounts {
        if !layers.iter().any(|l| l.digest == mount.layer.digest) {
            layers.push(mount.layer.clone());
        }
    }
    let config = serde_json::to_vec(&CacheConfig {
        version: FORMAT_VERSION,
        records,
        mounts,
    })?;
    let config_digest = content.put(&config)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CACHE_CONFIG_MEDIA_TYPE,
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type,
            "digest": l.digest.to_string(),
            "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = content.put(&manifest)?;
    match &to.location {
        CacheLocation::Local(dir) => {
            let blobs: Vec<Digest> = std::iter::once(config_digest)
                .chain(layers.iter().map(|l| l.digest))
                .chain(std::iter::once(manifest_digest))
                .collect();
            write_layout(content, dir, &blobs, manifest_digest, manifest.len() as u64)?;
        }
        CacheLocation::Inline => {}
        CacheLocation::Registry(reference) => {
            let remote = Reference::parse_normalized(reference).map_err(|e| anyhow::anyhow!(e))?;
            kiln_registry::push::push(
                registry,
                content,
                images,
                &manifest_digest,
                MANIFEST_MEDIA_TYPE,
                &remote,
                notice,
            )?;
        }
    }
    Ok(count)
}

/// The contents of the cache mounts the build's steps use, each as a compressed layer.
fn export_mounts(
    content: &ContentStore,
    memo: &CacheIndexStore,
    compression: LayerCompression,
    input: &ExportInput<'_>,
) -> Result<Vec<MountRecord>> {
    let mut names: Vec<String> = Vec::new();
    for digest in input.definition.topological_order() {
        let Some(Op::Exec(exec)) = input.definition.vertex(digest).map(|v| &v.op) else {
            continue;
        };
        for mount in &exec.mounts {
            if let MountKind::Cache {
                id, uid, gid, mode, ..
            } = &mount.kind
            {
                let name = cache_mount_name(id, *uid, *gid, *mode);
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    let mut mounts = Vec::new();
    for name in names {
        let dir = input.cache_mounts.join(&name);
        if !dir.is_dir() {
            continue;
        }
        let layer = store_layer(&dir, &[], content, WriteOptions::default())
            .with_context(|| format!("cannot pack the cache mount {name}"))?;
        let layer = recompress_all(content, &[layer], compression, memo)?.remove(0);
        mounts.push(MountRecord { name, layer });
    }
    Ok(mounts)
}

/// Writes `blobs` and an `index.json` naming `manifest` into the OCI layout `dir`; the
/// index last, so that a layout is never read half-written.
fn write_layout(
    content: &ContentStore,
    dir: &Path,
    blobs: &[Digest],
    manifest: Digest,
    manifest_size: u64,
) -> Result<()> {
    let blob_dir = dir.join("blobs/sha256");
    fs::create_dir_all(&blob_dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for digest in blobs {
        let path = blob_dir.join(digest.hex());
        if path.is_file() {
            continue;
        }
        let partial = blob_dir.join(format!(".{}.partial", digest.hex()));
        let mut from = content.open_verified(digest)?;
        let mut to = fs::File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        std::io::copy(&mut from, &mut to)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        fs::rename(&partial, &path)?;
    }
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": manifest.to_string(),
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    let partial = dir.join(".index.json.partial");
    fs::write(&partial, serde_json::to_vec(&index)?)?;
    fs::rename(&partial, dir.join("index.json"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_specs_parse_like_buildx() {
        let to: CacheTo = "type=registry,ref=r.io/app:cache,mode=max,compression=zstd,ignore-error=true,oci-mediatypes=true,cache-mounts=true"
            .parse()
            .unwrap();
        assert_eq!(
            to.location,
            CacheLocation::Registry("r.io/app:cache".into())
        );
        assert_eq!(to.mode, CacheMode::Max);
        assert_eq!(to.compression, LayerCompression::Zstd);
        assert!(to.ignore_error);
        assert!(to.cache_mounts);
        let local: CacheTo = "type=local,dest=/c".parse().unwrap();
        assert_eq!(local.location, CacheLocation::Local("/c".into()));
        assert_eq!(local.mode, CacheMode::Min);
        let bare: CacheFrom = "r.io/app:cache".parse().unwrap();
        assert_eq!(
            bare.location,
            CacheLocation::Registry("r.io/app:cache".into())
        );
        let from: CacheFrom = "type=local,src=/c".parse().unwrap();
        assert_eq!(from.location, CacheLocation::Local("/c".into()));
        for (bad, why) in [
            ("type=local", "dest=DIR"),
            ("type=registry", "ref="),
            ("type=registry,ref=r/a,mode=all", "unsupported field"),
            ("type=gha", "not supported by kiln yet"),
            ("type=floppy,ref=x", "unknown cache type"),
        ] {
            let err = bad.parse::<CacheTo>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert_eq!(
            "type=inline".parse::<CacheTo>().unwrap().location,
            CacheLocation::Inline
        );
        assert!(
            "type=inline"
                .parse::<CacheFrom>()
                .unwrap_err()
                .contains("--cache-from IMAGE")
        );
        assert!(
            "type=local,dest=/c"
                .parse::<CacheFrom>()
                .unwrap_err()
                .contains("src=DIR")
        );
    }

    #[test]
    fn min_mode_keeps_the_steps_whose_layers_start_the_final_image() {
        let layer = |n: u8| LayerBlob {
            diff_id: Digest::of(&[n]),
            digest: Digest::of(&[n, n]),
            size: 1,
            media_type: String::new(),
            created: None,
        };
        let root = Snapshot {
            layers: vec![layer(1), layer(2), layer(3)],
        };
        assert!(in_final_image(&[layer(1), layer(2)], &[&root]));
        assert!(in_final_image(&root.layers, &[&root]));
        assert!(!in_final_image(&[layer(1), layer(4)], &[&root]));
        assert!(!in_final_image(
            &[layer(1), layer(2), layer(3), layer(4)],
            &[&root]
        ));
    }
}
