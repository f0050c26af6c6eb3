//! A `Solve` request as an engine build: BuildKit's frontend attributes and exporters
//! translated, the Dockerfile and context read through the client's session.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, anyhow, bail};
use kiln_engine::{
    BuildError, BuildRequest, BuildResult, CacheFrom, CacheLocation, CacheTo, Destination,
    Entitlement, ManifestFormat, Output, OutputKind,
};
use kiln_frontend::lower::{BuildOptions, NamedContext, RunOptions};
use kiln_solver::Platform;
use kiln_worker::layer::LayerCompression;
use tokio::runtime::Handle;

use super::Daemon;
use super::files::{SessionCredentials, SessionSecrets, SessionSources, SessionTarget, sync_dir};
use super::sessions::Session;
use super::ssh::SessionSshAgents;
use crate::DOCKERFILE_FRONTEND;
use crate::control::{CacheOptionsEntry, Exporter, SolveRequest};

/// Why a solve failed, for the client.
pub enum SolveError {
    /// The request asks for something kiln does not do, or is malformed.
    Request(String),
    /// The build failed.
    Build(String),
}

impl From<anyhow::Error> for SolveError {
    fn from(err: anyhow::Error) -> Self {
        SolveError::Build(format!("{err:#}"))
    }
}

/// Reads the Dockerfile and its `.dockerignore` through the session, as BuildKit's
/// Dockerfile frontend does: the Dockerfile from the `dockerfile` directory, then
/// `<Dockerfile>.dockerignore` beside it or `.dockerignore` in the context.
async fn read_dockerfile(
    daemon: &Daemon,
    session: &Session,
    attrs: &HashMap<String, String>,
) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let filename = attrs
        .get("filename")
        .map(String::as_str)
        .filter(|f| !f.is_empty())
        .unwrap_or("Dockerfile");
    let dockerfile_dir = attrs
        .get("dockerfilekey")
        .map(String::as_str)
        .unwrap_or("dockerfile");
    let context_dir = attrs
        .get("contextkey")
        .map(String::as_str)
        .unwrap_or("context");
    let scratch = daemon.scratch()?;
    let ignore_name = format!("{filename}.dockerignore");
    let dockerfile_copy = scratch.path().join("dockerfile");
    let context_copy = scratch.path().join("context");
    // Both at once: the context's .dockerignore is wanted unless the Dockerfile has its own.
    let dockerfile_patterns = [filename.to_string(), ignore_name.clone()];
    let context_patterns = [".dockerignore".to_string()];
    let (from_dockerfile_dir, from_context) = tokio::join!(
        sync_dir(
            session,
            dockerfile_dir,
            &[],
            &dockerfile_patterns,
            &dockerfile_copy
        ),
        sync_dir(session, context_dir, &[], &context_patterns, &context_copy),
    );
    from_dockerfile_dir?;
    let dockerfile = tokio::fs::read(dockerfile_copy.join(filename))
        .await
        .map_err(|err| anyhow!("failed to read dockerfile: open {filename}: {err}"))?;
    if let Ok(ignore) = tokio::fs::read(dockerfile_copy.join(&ignore_name)).await {
        return Ok((dockerfile, Some(ignore)));
    }
    from_context?;
    Ok((
        dockerfile,
        tokio::fs::read(context_copy.join(".dockerignore"))
            .await
            .ok(),
    ))
}

/// The request's cache exports and imports (BuildKit's `CacheOptions`). The daemon
/// reaches registries only: a `type=local` cache would live on the client.
fn caches(request: &SolveRequest) -> Result<(Vec<CacheTo>, Vec<CacheFrom>)> {
    let Some(cache) = &request.cache else {
        return Ok((Vec::new(), Vec::new()));
    };
    let attrs = |entry: &CacheOptionsEntry| {
        entry
            .attrs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let on_daemon = |location: &CacheLocation| match location {
        CacheLocation::Registry(_) | CacheLocation::Inline => Ok(()),
        CacheLocation::Local(_) => Err(anyhow!(
            "a remote build cannot use a type=local cache (it would live on the client); use type=registry"
        )),
    };
    let mut to = Vec::new();
    for entry in &cache.exports {
        let parsed = CacheTo::from_parts(&entry.r#type, &attrs(entry)).map_err(|e| anyhow!(e))?;
        on_daemon(&parsed.location)?;
        to.push(parsed);
    }
    let mut from = Vec::new();
    for entry in &cache.imports {
        let parsed = CacheFrom::from_parts(&entry.r#type, &attrs(entry)).map_err(|e| anyhow!(e))?;
        on_daemon(&parsed.location)?;
        from.push(parsed);
    }
    Ok((to, from))
}

/// The platforms the `platform` attribute asks for (`linux/amd64,linux/arm64`); empty
/// for the builder's own.
fn platforms(attrs: &HashMap<String, String>) -> Result<Vec<Platform>> {
    let list = attrs
        .get("platform")
        .map(String::as_str)
        .unwrap_or_default();
    Platform::parse_list(list).map_err(|e| anyhow!(e))
}

/// The frontend attributes as build options: `target`, `build-arg:K`,
/// `label:K`, `no-cache` (empty: every step; else stage names), and `shm-size`, `ulimit`
/// and `add-hosts` for RUN steps.
fn build_options(attrs: &HashMap<String, String>) -> Result<BuildOptions> {
    let mut options = BuildOptions {
        target: attrs.get("target").filter(|t| !t.is_empty()).cloned(),
        // One builder's part of a build of several platforms (buildx's attribute).
        multi_platform: attrs.get("multi-platform").is_some_and(|v| v == "true"),
        run: RunOptions::from_attrs(attrs).map_err(|e| anyhow!(e))?,
        ..BuildOptions::default()
    };
    for (key, value) in attrs {
        if let Some(arg) = key.strip_prefix("build-arg:") {
            options.build_args.insert(arg.to_string(), value.clone());
        } else if let Some(label) = key.strip_prefix("label:") {
            options.labels.insert(label.to_string(), value.clone());
        } else if let Some(name) = key.strip_prefix("context:") {
            options
                .named_contexts
                .insert(name.to_string(), named_context(name, value)?);
        }
    }
    if let Some(filter) = attrs.get("no-cache") {
        if filter.is_empty() {
            options.no_cache = true;
        } else {
            options.no_cache_stages = filter.split(',').map(str::to_string).collect();
        }
    }
    Ok(options)
}

/// A `context:NAME` attribute's value as a build context: `local:SOURCE` (a directory of
/// the client's session), `docker-image://REF` or `target:STAGE`.
fn named_context(name: &str, value: &str) -> Result<NamedContext> {
    if let Some(source) = value.strip_prefix("local:") {
        Ok(NamedContext::Local {
            source: source.to_string(),
            excludes: Vec::new(),
        })
    } else if let Some(reference) = value.strip_prefix("docker-image://") {
        Ok(NamedContext::Image(reference.to_string()))
    } else if let Some(stage) = value.strip_prefix("target:") {
        Ok(NamedContext::Stage(stage.to_string()))
    } else if value.starts_with("oci-layout://") {
        // The layout is read through the session's content store, which kiln's builder
        // does not use; `kiln build` reads layouts for local builds.
        bail!(
            "build context {name}: kiln's builder does not read oci-layout:// contexts (use them in local builds)"
        )
    } else {
        bail!("build context {name}: kiln does not read {value:?} build contexts yet")
    }
}

/// The request's exporters: `Exporters`, or the deprecated single one.
fn exporters(request: &SolveRequest) -> Vec<Exporter> {
    if !request.exporters.is_empty() {
        return request.exporters.clone();
    }
    if request.exporter_deprecated.is_empty() {
        return Vec::new();
    }
    vec![Exporter {
        r#type: request.exporter_deprecated.clone(),
        attrs: request.exporter_attrs_deprecated.clone(),
    }]
}

fn attr_true(attrs: &HashMap<String, String>, key: &str) -> Result<bool> {
    match attrs.get(key).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("" | "true" | "1") => Ok(true),
        Some(other) => bail!("{key} takes true or false, not {other:?}"),
    }
}

/// An exporter as an engine output; `index` names the client's target of a file or
/// directory output.
fn output_of(
    exporter: &Exporter,
    index: usize,
    handle: &Handle,
    session: &Arc<Session>,
) -> Result<Output> {
    let attrs = &exporter.attrs;
    let kind = match exporter.r#type.as_str() {
        "image" => OutputKind::Image,
        "oci" => OutputKind::Oci,
        "docker" => OutputKind::Docker,
        "tar" => OutputKind::Tar,
        "local" => OutputKind::Local,
        other => bail!("kiln has no {other:?} exporter (image, oci, docker, tar, local)"),
    };
    let names: Vec<String> = attrs
        .get("name")
        .map(|n| {
            n.split(',')
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let dest = (kind != OutputKind::Image).then(|| {
        Destination::Client(Arc::new(SessionTarget {
            handle: handle.clone(),
            session: Arc::clone(session),
            exporter: index,
        }))
    });
    let compression = match attrs.get("compression").map(String::as_str) {
        None | Some("") => None,
        Some("gzip") => Some(LayerCompression::Gzip),
        Some("zstd") => Some(LayerCompression::Zstd),
        Some(other) => bail!("unsupported compression {other:?} (gzip, zstd)"),
    };
    let oci = match attrs.get("oci-mediatypes") {
        Some(_) => attr_true(attrs, "oci-mediatypes")?,
        // BuildKit's docker exporter writes Docker media types unless asked otherwise.
        None => kind != OutputKind::Docker,
    };
    Ok(Output {
        kind,
        dest,
        compression,
        format: if oci {
            ManifestFormat::Oci
        } else {
            ManifestFormat::Docker
        },
        push: kind == OutputKind::Image && attr_true(attrs, "push")?,
        push_by_digest: kind == OutputKind::Image && attr_true(attrs, "push-by-digest")?,
        names: if kind == OutputKind::Image {
            names
        } else {
            Vec::new()
        },
    })
}

/// The entitlements the request asks for that the daemon grants; asking for one it
/// does not is an error, as in BuildKit.
fn granted(daemon: &Daemon, asked: &[String]) -> Result<BTreeSet<Entitlement>> {
    let mut granted = BTreeSet::new();
    for name in asked {
        let entitlement: Entitlement = name.parse().map_err(|e: String| anyhow!(e))?;
        if !daemon.options.allowed.contains(&entitlement) {
            bail!(
                "granting entitlement {entitlement} is not allowed by build daemon \
                 configuration (start kiln serve with --allow-insecure-entitlement {entitlement})"
            );
        }
        granted.insert(entitlement);
    }
    Ok(granted)
}

/// Runs `request`, reporting to the build's status log; `cancel` stops it.
pub async fn solve(
    daemon: Arc<Daemon>,
    request: SolveRequest,
    cancel: Arc<AtomicBool>,
) -> Result<HashMap<String, String>, SolveError> {
    let frontend = request.frontend.as_str();
    if frontend != DOCKERFILE_FRONTEND {
        return Err(SolveError::Request(if frontend.is_empty() {
            "kiln builds Dockerfiles (frontend dockerfile.v0); it does not run LLB definitions"
                .to_string()
        } else {
            format!("kiln has no frontend {frontend:?}; it builds Dockerfiles (dockerfile.v0)")
        }));
    }
    let session = daemon
        .sessions
        .get(&request.session, std::time::Duration::from_secs(10))
        .await
        .ok_or_else(|| SolveError::Request(format!("no session {:?} is open", request.session)))?;
    let attrs = &request.frontend_attrs;
    let options = build_options(attrs).map_err(|e| SolveError::Request(format!("{e:#}")))?;
    let platforms = platforms(attrs).map_err(|e| SolveError::Request(format!("{e:#}")))?;
    let (cache_to, cache_from) =
        caches(&request).map_err(|e| SolveError::Request(format!("{e:#}")))?;
    let entitlements = granted(&daemon, &request.entitlements)
        .map_err(|e| SolveError::Request(format!("{e:#}")))?;
    let handle = Handle::current();
    let outputs = exporters(&request)
        .iter()
        .enumerate()
        .map(|(index, exporter)| output_of(exporter, index, &handle, &session))
        .collect::<Result<Vec<_>>>()
        .map_err(|e| SolveError::Request(format!("{e:#}")))?;
    let (dockerfile, dockerignore) = read_dockerfile(&daemon, &session, attrs).await?;
    let source_date_epoch = options
        .build_args
        .get("SOURCE_DATE_EPOCH")
        .map(|v| v.parse::<u64>())
        .transpose()
        .map_err(|_| SolveError::Request("invalid SOURCE_DATE_EPOCH".into()))?;
    let tags: Vec<String> = outputs
        .iter()
        .flat_map(|o| o.names.iter().cloned())
        .collect();
    let log = daemon.statuses.log(&request.r#ref);
    let build = BuildRequest {
        dockerfile: dockerfile.clone(),
        sources: Box::new(SessionSources {
            handle: handle.clone(),
            session: Arc::clone(&session),
            root: daemon.synced_dirs()?,
            locks: Arc::clone(&daemon.sync_locks),
            synced: Default::default(),
            log: Arc::clone(&log),
        }),
        secrets: Box::new(SessionSecrets {
            handle: handle.clone(),
            session: Arc::clone(&session),
        }),
        ssh: Box::new(SessionSshAgents {
            handle: handle.clone(),
            session: Arc::clone(&session),
        }),
        dockerignore,
        options,
        tags,
        outputs,
        max_parallelism: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        oci_runtime: daemon.options.oci_runtime.clone(),
        source_date_epoch,
        pull: attrs.get("image-resolve-mode").is_some_and(|m| m == "pull"),
        push: false,
        registry: kiln_registry::RegistryOptions {
            credentials: Some(Arc::new(SessionCredentials {
                handle: handle.clone(),
                session: Arc::clone(&session),
            })),
            ..daemon.options.registry.clone()
        },
        entitlements,
        platforms,
        cache_to,
        cache_from,
    };
    let state = daemon.state.clone();
    let result = tokio::task::spawn_blocking(move || {
        kiln_engine::build(&state, build, &|event| log.record(&event), &cancel)
    })
    .await
    .map_err(|e| SolveError::Build(format!("the build stopped: {e}")))?;
    match result {
        Ok(done) => Ok(exporter_response(&done, &exporters(&request))),
        Err(err) => Err(SolveError::Build(describe_failure(err, &dockerfile))),
    }
}

/// What BuildKit answers a solve with: the image's digests and names.
fn exporter_response(done: &BuildResult, exporters: &[Exporter]) -> HashMap<String, String> {
    let mut response = HashMap::from([
        (
            "containerimage.digest".to_string(),
            done.manifest_digest.to_string(),
        ),
        // Base64 JSON, as BuildKit sends it (clients decode it into their metadata file).
        (
            "containerimage.descriptor".to_string(),
            kiln_registry::client::base64_encode(done.descriptor().to_string().as_bytes()),
        ),
    ]);
    if let Some(config) = done.config_digest {
        response.insert(
            "containerimage.config.digest".to_string(),
            config.to_string(),
        );
    }
    let names: Vec<&str> = exporters
        .iter()
        .filter(|e| e.r#type == "image")
        .filter_map(|e| e.attrs.get("name"))
        .map(String::as_str)
        .collect();
    if !names.is_empty() {
        response.insert("image.name".to_string(), names.join(","));
    }
    response
}

/// A failed build as one message: the cause, then the Dockerfile lines it points at
/// (after the step's name, for a failed step).
fn describe_failure(err: BuildError, dockerfile: &[u8]) -> String {
    let snippet = |location: Option<kiln_frontend::Location>| {
        location.map_or(String::new(), |l| l.snippet("Dockerfile", dockerfile))
    };
    let text = match err {
        BuildError::Frontend(err) => format!("{err}\n\n{}", snippet(err.location)),
        BuildError::Step {
            description,
            location,
            error,
        } => {
            let location = location.map(|(start, end)| kiln_frontend::Location::lines(start, end));
            format!("{error:#}\n\n > {description}:\n{}", snippet(location))
        }
        BuildError::Other(err) => format!("{err:#}"),
    };
    text.trim_end().to_string()
}

impl Daemon {
    /// The directory that keeps clients' synced directories (`<state>/sessions`, 0700).
    pub(super) fn synced_dirs(&self) -> Result<PathBuf> {
        let dir = self.state.root().join("sessions");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(dir)
    }

    /// A scratch directory in the state directory, deleted when dropped.
    pub(super) fn scratch(&self) -> Result<tempfile::TempDir> {
        let dir = self.synced_dirs()?;
        tempfile::Builder::new()
            .prefix("scratch-")
            .tempdir_in(&dir)
            .context("cannot create a scratch directory")
    }
}
