//! kiln's build engine: one build end to end, Dockerfile → op DAG → solved snapshot →
//! image and outputs.
//!
//! The `kiln` command drives it in-process through [`build`]; the remote builder
//! (`kiln serve`) is a thin adapter over the same request, progress and result types.

mod build_cache;
mod entitlements;
mod events;
mod exporter;
mod output;
pub mod store;

pub use build_cache::{CacheFrom, CacheLocation, CacheMode, CacheTo};
pub use entitlements::Entitlement;
pub use events::BuildEvent;
pub use exporter::ManifestFormat;
pub use output::{
    ClientTarget, Destination, ImageBlobs, Output, OutputKind, PlatformBlobs, write_docker_archive,
};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use kiln_cache::{CacheIndexStore, ChecksumCache, ContentStore, Digest, ImageStore, StateDir};
use kiln_frontend::lower::{BuildOptions, ImageResolver, lower_platforms};
use kiln_image::{Image, Reference};
use kiln_registry::{RegistryClient, RegistryOptions};
use kiln_solver::{CacheIndex, Definition, Op, Platform, SolveOptions, solve_all};
use kiln_worker::exec::ExternalRuntime;
use kiln_worker::layer::{LayerCompression, WriteOptions, recompress_all};
pub use kiln_worker::secrets::{LocalSecrets, MAX_SECRET_SIZE, SecretSource, SecretStore};
use kiln_worker::snapshot::{Snapshot, Snapshotter};
pub use kiln_worker::ssh::{
    AgentStream, DEFAULT_ID as SSH_DEFAULT_ID, LocalSshAgents, SshAgents, SshSpec, relay,
};
pub use kiln_worker::{LocalDirectories, LocalSources};
use kiln_worker::{Worker, WorkerConfig, WorkerRef, platform_wanted, resolve_image};

/// Everything a build needs from its client.
pub struct BuildRequest {
    /// The Dockerfile's bytes.
    pub dockerfile: Vec<u8>,
    /// The local sources: the build context (named `context`) and any named contexts.
    pub sources: Box<dyn LocalSources>,
    /// The secrets `RUN --mount=type=secret` may use (`--secret`).
    pub secrets: Box<dyn SecretStore>,
    /// The SSH agents `RUN --mount=type=ssh` may use (`--ssh`).
    pub ssh: Box<dyn SshAgents>,
    /// `.dockerignore` text, if there is one.
    pub dockerignore: Option<Vec<u8>>,
    /// Frontend options (target, args, platforms, cache filters, labels).
    pub options: BuildOptions,
    /// Names to tag the result with.
    pub tags: Vec<String>,
    /// Extra places to write the result.
    pub outputs: Vec<Output>,
    /// How many steps may run at once.
    pub max_parallelism: usize,
    /// The OCI runtime binary for RUN; `None` for the embedded runtime.
    pub oci_runtime: Option<PathBuf>,
    /// `SOURCE_DATE_EPOCH`: clamps layer mtimes and the image's timestamps.
    pub source_date_epoch: Option<u64>,
    /// Ask the registry for every base image even when the store has it (`--pull`).
    pub pull: bool,
    /// Push the result under every tag (`--push`).
    pub push: bool,
    /// How to reach registries.
    pub registry: RegistryOptions,
    /// Privileges steps may use (`--allow`); a step that needs another fails the build
    /// before anything runs.
    pub entitlements: BTreeSet<Entitlement>,
    /// The platforms to build (`--platform a,b`): an image each, in one index; empty
    /// builds `options.target_platform` alone.
    pub platforms: Vec<Platform>,
    /// Where to export the build cache (`--cache-to`).
    pub cache_to: Vec<CacheTo>,
    /// Build caches to import (`--cache-from`).
    pub cache_from: Vec<CacheFrom>,
}

/// What a finished build produced.
#[derive(Debug, Clone)]
pub struct BuildResult {
    /// Digest of the image config (the image ID); `None` for a multi-platform build,
    /// whose result is an index.
    pub config_digest: Option<Digest>,
    /// Digest of the image manifest (or index): the one pushed, or written to an OCI or
    /// Docker archive, when there is one (what the registry serves), else the stored one.
    pub manifest_digest: Digest,
    /// Size of that manifest in bytes.
    pub manifest_size: u64,
    /// The platforms built, in order: one, or an index's.
    pub platforms: Vec<Platform>,
    /// Frontend warnings.
    pub warnings: Vec<String>,
}

impl BuildResult {
    /// What `--iidfile` and `-q` give, as buildx: the image ID, or the index digest of a
    /// multi-platform build.
    pub fn id(&self) -> Digest {
        self.config_digest.unwrap_or(self.manifest_digest)
    }

    /// The descriptor of what [`manifest_digest`](Self::manifest_digest) names, as
    /// BuildKit reports it (`containerimage.descriptor`): with the platform of a
    /// single-platform image.
    pub fn descriptor(&self) -> serde_json::Value {
        let mut descriptor = serde_json::json!({
            "mediaType": self.media_type(),
            "digest": self.manifest_digest.to_string(),
            "size": self.manifest_size,
        });
        if let (Some(_), [platform]) = (self.config_digest, self.platforms.as_slice()) {
            descriptor["platform"] = serde_json::json!(platform);
        }
        descriptor
    }

    /// The media type of what [`manifest_digest`](Self::manifest_digest) names.
    pub fn media_type(&self) -> &'static str {
        if self.config_digest.is_some() {
            ManifestFormat::Oci.manifest()
        } else {
            ManifestFormat::Oci.index()
        }
    }
}

/// Why a build failed.
#[derive(Debug)]
pub enum BuildError {
    /// The Dockerfile is wrong (parse or lowering).
    Frontend(kiln_frontend::Error),
    /// A step failed; `location` is its Dockerfile lines.
    Step {
        /// The step's description (`[2/3] RUN make`).
        description: String,
        /// Its Dockerfile lines.
        location: Option<(usize, usize)>,
        /// The cause.
        error: anyhow::Error,
    },
    /// Anything else (stores, export).
    Other(anyhow::Error),
}

impl From<anyhow::Error> for BuildError {
    fn from(error: anyhow::Error) -> Self {
        BuildError::Other(error)
    }
}

/// Base images from the local store, pulled into it first when missing (or always, with
/// `--pull`; never again for a pinned digest that is there).
struct StoreImages<'a> {
    content: &'a ContentStore,
    images: &'a ImageStore,
    registry: &'a RegistryClient,
    /// How the layers left in the registry are fetched when the build needs them.
    registry_options: &'a RegistryOptions,
    always_pull: bool,
    notice: &'a (dyn Fn(&str) + Sync),
    /// References already pulled in this build (each is asked for once).
    pulled: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl ImageResolver for StoreImages<'_> {
    fn resolve_config(&self, reference: &str, platform: &Platform) -> Result<Image, String> {
        let parsed = Reference::parse_normalized(reference).map_err(|e| e.to_string())?;
        let local = resolve_image(self.content, self.images, reference, platform);
        let pull = match &local {
            // An image whose layers an earlier build left in the registry is pulled
            // again (its manifest), so that this build can fetch them.
            Ok(image)
                if image
                    .layers
                    .iter()
                    .any(|l| !self.content.available(&l.digest)) =>
            {
                true
            }
            Ok(_) => self.always_pull && parsed.digest.is_none(),
            // An image pinned by a digest whose every blob the store holds (one imported
            // from an OCI layout) is not pulled: a registry has no other bytes for it.
            Err(_) => parsed
                .digest
                .as_deref()
                .and_then(|d| d.parse().ok())
                .is_none_or(|d| kiln_image::check_complete(self.content, &d).is_err()),
        } && self
            .pulled
            .lock()
            .unwrap()
            .insert(format!("{parsed} {platform}"));
        if pull {
            (self.notice)(&format!("pulling {parsed}"));
            // The manifest and config now; each layer when the build needs its bytes.
            let pulled = kiln_registry::pull::pull_with(
                self.registry,
                self.content,
                self.images,
                &parsed,
                &platform_wanted(platform),
                kiln_registry::pull::Layers::Later,
                self.notice,
            )
            .map_err(|e| format!("{e:#}"))?;
            if !pulled.missing.is_empty() {
                let source =
                    build_cache::registry_layers(self.registry_options, parsed, pulled.missing)
                        .map_err(|e| format!("{e:#}"))?;
                self.content.add_source(source);
            }
            return resolve_image(self.content, self.images, reference, platform)
                .map(|image| image.config);
        }
        local.map(|image| image.config)
    }
}

/// The cache index as the solver sees it: the state directory's, then the records of
/// imported caches (`--cache-from`).
struct PersistentCache {
    local: CacheIndexStore,
    imported: build_cache::ImportedRecords,
}

impl CacheIndex for PersistentCache {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.local.get(key).or_else(|| self.imported.get(key))
    }
    fn put(&self, key: &str, value: &[u8]) {
        self.local.put(key, value);
    }
}

/// Clears what a kiln killed mid-build left: its containers, mounted step directories
/// and half-written blobs. Only when no other kiln holds the state directory.
fn remove_leftovers(
    content: &ContentStore,
    snapshots: &Snapshotter,
    runtimes: &[&ExternalRuntime],
) -> Result<()> {
    for runtime in runtimes {
        runtime.remove_orphans();
    }
    snapshots
        .remove_stale()
        .context("cannot clear what an interrupted build left")?;
    content
        .clean_ingest()
        .context("cannot clear half-written blobs")?;
    Ok(())
}

/// The state directory as a build holds it.
struct Opened {
    /// Held shared while the build runs: garbage collection (`kiln prune`) waits.
    _lock: kiln_cache::StateLock,
    content: ContentStore,
    snapshots: Snapshotter,
    embedded: ExternalRuntime,
    external: ExternalRuntime,
    /// Whether this process held the state directory alone and cleared what killed
    /// processes left.
    recovered: bool,
}

/// Locks and opens the state directory for a build; when no other kiln holds it, first
/// clears what killed processes left.
fn open_for_build(state: &StateDir, oci_runtime: Option<&Path>) -> Result<Opened> {
    let (lock, alone) = state
        .lock_for_build()
        .context("cannot lock the state directory")?;
    let content = state.content().context("cannot open the content store")?;
    let snapshots = Snapshotter::open(state.snapshots())?;
    let embedded = ExternalRuntime::embedded(
        // The running binary itself, even when an upgrade replaced its file under a
        // long-running daemon.
        PathBuf::from("/proc/self/exe"),
        state.embedded_runtime_state(),
    );
    let external = ExternalRuntime::new(
        oci_runtime.unwrap_or(Path::new("runc")),
        state.runtime_state(),
    );
    if alone {
        remove_leftovers(&content, &snapshots, &[&embedded, &external])?;
        lock.share().context("cannot lock the state directory")?;
    }
    Ok(Opened {
        _lock: lock,
        content,
        snapshots,
        embedded,
        external,
        recovered: alone,
    })
}

/// Clears what killed kiln processes left in `state` (their containers, step
/// directories, half-written blobs) if no other kiln holds it; returns whether it did. A
/// daemon calls this as it starts, so that a container a SIGKILLed daemon left does not
/// run until the next build.
pub fn recover(state: &StateDir, oci_runtime: Option<&Path>) -> Result<bool> {
    Ok(open_for_build(state, oci_runtime)?.recovered)
}

/// How an output's layers are compressed: as it says, else gzip for archives and pushed
/// images, and as stored (uncompressed) for local names.
fn compression_for(output: &Output) -> Option<LayerCompression> {
    output.compression.or(match output.kind {
        output::OutputKind::Oci | output::OutputKind::Docker => Some(LayerCompression::Gzip),
        output::OutputKind::Image if output.push => Some(LayerCompression::Gzip),
        _ => None,
    })
}

/// One platform's exported image as `output` wants it: layers compressed and a
/// manifest of its own when it needs a compression or Docker media types, else as
/// exported; returns the manifest's digest and size, and its blobs.
fn platform_image_for(
    content: &ContentStore,
    memo: &CacheIndexStore,
    exported: &exporter::Exported,
    snapshot: &Snapshot,
    output: &Output,
) -> Result<((Digest, u64), PlatformBlobs)> {
    let compression = compression_for(output);
    let layers = match compression {
        Some(compression) => recompress_all(content, &snapshot.layers, compression, memo)?,
        None => snapshot.layers.clone(),
    };
    let manifest = if layers == snapshot.layers && output.format == ManifestFormat::Oci {
        (exported.manifest_digest, exported.manifest_size)
    } else {
        exporter::store_manifest(content, exported.config, &layers, output.format)?
    };
    let blobs = PlatformBlobs {
        manifest: manifest.0,
        config: exported.config.0,
        layers: layers.iter().map(|l| l.digest).collect(),
    };
    Ok((manifest, blobs))
}

/// The build's image as `output` wants it (see [`platform_image_for`]): one manifest,
/// or an index of every platform's in this output's format.
fn image_for<'a>(
    content: &ContentStore,
    memo: &CacheIndexStore,
    built: &[Built],
    output: &Output,
    tags: &'a [String],
    created: &str,
    multi_platform: bool,
) -> Result<output::ImageBlobs<'a>> {
    let images = built
        .iter()
        .map(|b| platform_image_for(content, memo, &b.exported, &b.snapshot, output))
        .collect::<Result<Vec<_>>>()?;
    let entries: Vec<_> = images
        .iter()
        .zip(built)
        .map(|((manifest, _), b)| (*manifest, &b.platform))
        .collect();
    let (manifest, media_type) =
        exporter::store_top(content, &entries, output.format, multi_platform)?;
    Ok(output::ImageBlobs {
        manifest,
        media_type,
        platforms: images.into_iter().map(|(_, blobs)| blobs).collect(),
        tags,
        platform: match built {
            [single] if !multi_platform => Some(single.platform.clone()),
            _ => None,
        },
        created: Some(created.to_string()),
    })
}

/// One platform's result: its filesystem and the image exported from it.
struct Built {
    platform: Platform,
    snapshot: Snapshot,
    exported: exporter::Exported,
}

/// The directory a platform's filesystem goes in when a build made several
/// (`linux_arm_v7`, as BuildKit).
fn platform_dir(platform: &Platform) -> String {
    platform.to_string().replace('/', "_")
}

/// Names the image of a `type=image` output in the store (its blobs all local), or
/// with `push=true` (`type=registry`) pushes it under every name instead, as buildx's
/// registry exporter: a blob only an imported cache has is then never downloaded.
fn store_or_push(
    state: &StateDir,
    content: &ContentStore,
    images: &ImageStore,
    registry: &RegistryClient,
    output: &Output,
    image: &output::ImageBlobs<'_>,
    notice: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    for name in &output.names {
        let reference = Reference::parse_normalized(name)
            .map_err(|e| anyhow::anyhow!("invalid image name {name:?}: {e}"))?;
        if output.push {
            let target = Push {
                reference: &reference,
                by_digest: output.push_by_digest,
            };
            push_from(
                state,
                content,
                registry,
                &target,
                image.manifest.0,
                image.media_type,
                notice,
            )?;
        } else {
            exporter::fetch_missing_blobs(content, image.manifest.0, image.media_type)?;
            images.put(&kiln_cache::ImageRecord::named_now(
                reference.to_string(),
                image.media_type.to_string(),
                image.manifest.0,
                image.manifest.1,
            ))?;
        }
    }
    Ok(())
}

/// Pushes the stored image `reference` to its registry, its uncompressed layers gzipped
/// on the way (see [`exporter::distributable`]).
pub fn push_stored(
    state: &StateDir,
    registry: &RegistryClient,
    reference: &Reference,
    notice: &(dyn Fn(&str) + Sync),
) -> Result<kiln_registry::push::PushReport> {
    let record = state
        .images()?
        .get(&reference.to_string())
        .with_context(|| format!("no image {reference} in the local store"))?;
    let content = state.content()?;
    let target = Push {
        reference,
        by_digest: false,
    };
    push_from(
        state,
        &content,
        registry,
        &target,
        record.digest,
        &record.media_type,
        notice,
    )
}

/// Where [`push_from`] pushes.
struct Push<'a> {
    /// The repository and tag.
    reference: &'a Reference,
    /// Only by digest, leaving the tag alone (`push-by-digest=true`).
    by_digest: bool,
}

/// Pushes the manifest or index `digest` of `media_type` as `target` says, reading blobs
/// through `content`, whose sources (an imported cache) give what the store lacks.
fn push_from(
    state: &StateDir,
    content: &ContentStore,
    registry: &RegistryClient,
    target: &Push<'_>,
    digest: Digest,
    media_type: &str,
    notice: &(dyn Fn(&str) + Sync),
) -> Result<kiln_registry::push::PushReport> {
    let (digest, media_type) =
        exporter::distributable(content, &state.cache_index(), digest, media_type)?;
    let reference = if target.by_digest {
        Reference {
            tag: None,
            digest: Some(digest.to_string()),
            ..target.reference.clone()
        }
    } else {
        target.reference.clone()
    };
    notice(&format!("pushing {reference}"));
    kiln_registry::push::push(
        registry,
        content,
        &state.images()?,
        &digest,
        &media_type,
        &reference,
        notice,
    )
    .with_context(|| format!("cannot push {reference}"))
}

/// Runs a build: lowers the Dockerfile, solves it with a local worker and
/// writes the image into the store under `request.tags`, reporting progress to `events`;
/// setting `cancel` stops it.
pub fn build(
    state: &StateDir,
    mut request: BuildRequest,
    events: &(dyn Fn(BuildEvent) + Sync),
    cancel: &AtomicBool,
) -> Result<BuildResult, BuildError> {
    let notice = &|message: &str| events(BuildEvent::Notice(message.to_string()));
    if request.push && request.tags.is_empty() {
        return Err(anyhow::anyhow!("--push needs a name to push to: add -t NAME").into());
    }
    for tag in &request.tags {
        Reference::parse_normalized(tag)
            .map_err(|e| anyhow::anyhow!("invalid tag {tag:?}: {e}"))?;
    }
    let registry = RegistryClient::new(request.registry.clone())?;
    let Opened {
        _lock,
        content,
        snapshots,
        embedded,
        external,
        ..
    } = open_for_build(state, request.oci_runtime.as_deref())?;
    let runtime = if request.oci_runtime.is_some() {
        external
    } else {
        embedded
    };
    let images = state.images().context("cannot open the image store")?;
    if let Some(text) = &request.dockerignore {
        request.options.context_excludes = kiln_patterns::read_ignore_file(text)
            .map_err(|e| BuildError::Other(anyhow::anyhow!(e)))?;
    }
    let platforms = if request.platforms.is_empty() {
        vec![request.options.target_platform.clone()]
    } else {
        request.platforms.clone()
    };
    let multi_platform = platforms.len() > 1
        || request
            .options
            .multi_platform_requested()
            .map_err(BuildError::Frontend)?;
    if multi_platform
        && request
            .outputs
            .iter()
            .any(|o| o.kind == output::OutputKind::Docker)
    {
        return Err(anyhow::anyhow!(
            "{}; use -o type=oci, --push, or build one --platform at a time",
            output::DOCKER_ARCHIVE_OF_INDEX
        )
        .into());
    }
    let lowered = kiln_frontend::parser::parse(&request.dockerfile)
        .and_then(|doc| kiln_frontend::instructions::Dockerfile::from_document(&doc))
        .and_then(|stages| {
            lower_platforms(
                &stages,
                &request.options,
                &platforms,
                &StoreImages {
                    content: &content,
                    images: &images,
                    registry: &registry,
                    registry_options: &request.registry,
                    always_pull: request.pull,
                    notice,
                    pulled: Default::default(),
                },
            )
        })
        .map_err(BuildError::Frontend)?;
    let definition = &lowered.definition;
    entitlements::check(definition, &request.entitlements)?;
    check_emulation(definition)?;

    let imported =
        build_cache::import_all(&content, &request.registry, &request.cache_from, notice);
    let outputs_view = snapshots.clone();
    let layer_options = WriteOptions {
        source_date_epoch: request.source_date_epoch,
    };
    let worker = Worker::new(WorkerConfig {
        content: content.clone(),
        images: images.clone(),
        snapshots,
        runtime: Box::new(runtime),
        sources: request.sources,
        secrets: request.secrets,
        ssh: request.ssh,
        cache_mounts: state.cache_mounts(),
        cache_mount_seeds: imported.mount_seeds.clone(),
        checksums: ChecksumCache::open(state.checksums()),
        layer_options,
    });
    let cache = PersistentCache {
        local: state.cache_index(),
        imported,
    };
    let options = SolveOptions {
        max_parallelism: request.max_parallelism,
    };
    events(BuildEvent::Solving {
        vertices: definition.len(),
    });
    let forward = |event| events(BuildEvent::step(definition, event));
    let solved = solve_all(definition, &worker, &cache, options, &forward, cancel);
    worker.checksums().persist();
    let solved = solved.map_err(|failure| {
        let Some(vertex) = failure.vertex else {
            return BuildError::Other(failure.error);
        };
        let meta = definition.meta(&vertex);
        BuildError::Step {
            description: meta.map(|m| m.description.clone()).unwrap_or_default(),
            location: meta.and_then(|m| m.location),
            error: failure.error,
        }
    })?;
    let mut built = Vec::with_capacity(platforms.len());
    let kiln_solver::Solved { roots, steps } = solved;
    let cache_mounts = state.cache_mounts();
    let cache_input = build_cache::ExportInput {
        definition,
        steps: &steps,
        roots: Vec::new(),
        worker: &worker,
        cache_mounts: &cache_mounts,
    };
    for ((platform, image), result) in lowered.images.into_iter().zip(roots) {
        let snapshot = match result {
            Some(WorkerRef::Snapshot(snapshot)) => snapshot,
            Some(WorkerRef::Local { .. }) => {
                return Err(anyhow::anyhow!("the build result is a local directory").into());
            }
            None => Default::default(),
        };
        let inline_cache = request
            .cache_to
            .iter()
            .any(|c| c.location == CacheLocation::Inline)
            .then(|| build_cache::inline_cache(&cache_input, &snapshot));
        let exported = exporter::export_image(
            &content,
            image,
            &snapshot,
            &exporter::ExportOptions {
                platform: &platform,
                source_date_epoch: request.source_date_epoch,
                inline_cache,
            },
        )?;
        built.push(Built {
            platform,
            snapshot,
            exported,
        });
    }
    let entries: Vec<_> = built
        .iter()
        .map(|b| {
            let manifest = (b.exported.manifest_digest, b.exported.manifest_size);
            (manifest, &b.platform)
        })
        .collect();
    let (stored, stored_type) =
        exporter::store_top(&content, &entries, ManifestFormat::Oci, multi_platform)?;
    build_cache::export_all(
        &content,
        &images,
        &state.cache_index(),
        &registry,
        &request.cache_to,
        &build_cache::ExportInput {
            roots: built.iter().map(|b| &b.snapshot).collect(),
            ..cache_input
        },
        notice,
    )?;
    // As docker build: an image that goes nowhere else stays in the store, untagged; a
    // named image has every blob (an imported cache's layers are fetched now).
    let keep_untagged = request.outputs.is_empty();
    if keep_untagged || !request.tags.is_empty() {
        exporter::fetch_missing_blobs(&content, stored.0, stored_type)?;
    }
    exporter::name_result(&images, stored, stored_type, &request.tags, keep_untagged)?;
    let memo = state.cache_index();
    let roots: Vec<output::RootFs<'_>> = built
        .iter()
        .map(|b| output::RootFs {
            dir: multi_platform.then(|| platform_dir(&b.platform)),
            snapshot: &b.snapshot,
        })
        .collect();
    // The manifest users see the digest of: the one pushed or written to an archive when
    // there is one (what `skopeo inspect` shows), else the stored one.
    let mut manifest = stored;
    let exported_at = kiln_image::format_rfc3339(
        request
            .source_date_epoch
            .unwrap_or_else(kiln_cache::unix_seconds_now),
    );
    for out in &request.outputs {
        // An archive is named by `-t`, else by its own `name=` (buildx puts `-t` there).
        let tags = if request.tags.is_empty() && out.kind != output::OutputKind::Image {
            &out.names
        } else {
            &request.tags
        };
        let written = image_for(
            &content,
            &memo,
            &built,
            out,
            tags,
            &exported_at,
            multi_platform,
        )
        .and_then(|image| {
            output::write_output(out, &content, &outputs_view, &roots, &image)?;
            if out.kind == output::OutputKind::Image {
                store_or_push(state, &content, &images, &registry, out, &image, notice)?;
            }
            if out.push
                || matches!(
                    out.kind,
                    output::OutputKind::Oci | output::OutputKind::Docker
                )
            {
                manifest = image.manifest;
            }
            Ok(())
        });
        written.with_context(|| format!("cannot write output {}", out.describe()))?;
    }
    if request.push {
        for tag in &request.tags {
            let remote = Reference::parse_normalized(tag)
                .map_err(|e| anyhow::anyhow!("invalid tag {tag:?}: {e}"))?;
            let target = Push {
                reference: &remote,
                by_digest: false,
            };
            let report = push_from(
                state,
                &content,
                &registry,
                &target,
                stored.0,
                stored_type,
                notice,
            )?;
            if let Some(digest) = report.digest {
                manifest = (digest, content.size(&digest).map_err(anyhow::Error::from)?);
            }
        }
    }
    Ok(BuildResult {
        config_digest: (!multi_platform).then(|| built[0].exported.config.0),
        manifest_digest: manifest.0,
        manifest_size: manifest.1,
        platforms,
        warnings: lowered.warnings,
    })
}

/// Fails before anything runs when a RUN step is for a platform this machine can
/// neither run natively nor emulate, saying how to enable it.
fn check_emulation(definition: &Definition) -> Result<(), BuildError> {
    let mut platforms: Vec<Platform> = Vec::new();
    for digest in definition.topological_order() {
        if let Some(Op::Exec(exec)) = definition.vertex(digest).map(|v| &v.op)
            && !platforms.contains(&exec.platform)
        {
            platforms.push(exec.platform.clone());
        }
    }
    kiln_worker::emulation::check_platforms(&platforms)
        .map_err(|e| BuildError::Other(anyhow::Error::from(e)))
}
