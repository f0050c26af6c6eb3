//! `kiln build`: build an image from a Dockerfile and a context.

use std::collections::BTreeMap;
use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;
use kiln_cache::StateDir;
use kiln_frontend::lower::{BuildOptions, NamedContext, RunOptions, parse_size};
use kiln_image::{LayoutSource, Reference};
use kiln_registry::RegistryOptions;
use kiln_solver::{ExtraHost, NetworkMode, Platform, Ulimit, parse_go_bool};

use super::context::BuildContext;
use super::docker_load::DockerLoad;
use super::{Dockerfile, Failure, parse_build_args};
use crate::progress::{Progress, ProgressMode};
use kiln_api::client::{CacheOptions, CacheOptionsEntry};
use kiln_engine::{
    BuildError, BuildRequest, BuildResult, CacheFrom, CacheLocation, CacheTo, Destination,
    Entitlement, LocalDirectories, LocalSecrets, LocalSshAgents, Output, SecretSource, SshSpec,
    build,
};

/// Arguments of `kiln build`.
#[derive(Args)]
pub struct BuildArgs {
    /// The build context: a directory, `-` (standard input: a Dockerfile, or a tar archive
    /// that is the context), a tarball URL, or a git URL (`URL#REF:SUBDIR`).
    pub(super) context: PathBuf,
    /// The Dockerfile (default: CONTEXT/Dockerfile; `-` reads standard input).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Name the image (repeatable), e.g. `app:1`.
    #[arg(short = 't', long = "tag")]
    pub(super) tags: Vec<String>,
    /// Set a build-time variable (`KEY=VALUE`, or `KEY` to take it from the environment).
    #[arg(long = "build-arg")]
    build_args: Vec<String>,
    /// Build this stage instead of the last one.
    #[arg(long)]
    target: Option<String>,
    /// The platforms to build for (`linux/amd64,linux/arm64`, repeatable): several make
    /// one image index. RUN steps of another architecture run under QEMU.
    #[arg(long)]
    platform: Vec<String>,
    /// Do not use the cache for any step.
    #[arg(long)]
    no_cache: bool,
    /// Do not use the cache for the steps of these stages.
    #[arg(long = "no-cache-filter", value_delimiter = ',')]
    no_cache_filter: Vec<String>,
    /// Add a label to the image (`KEY=VALUE`).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Another build context (repeatable): `NAME=DIR`, `NAME=docker-image://REF`,
    /// `NAME=oci-layout://PATH[:TAG][@sha256:DIGEST]` (local builds) or
    /// `NAME=target:STAGE`; `FROM NAME` and `COPY --from=NAME` read it.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    build_contexts: Vec<String>,
    /// A secret RUN steps may mount: `id=ID[,src=FILE|,env=VAR][,type=file|env]`
    /// (repeatable). With only an id, the variable ID if it is set, else the file ID.
    #[arg(long = "secret", value_parser = parse_secret, value_name = "SPEC")]
    secrets: Vec<(String, SecretSource)>,
    /// An SSH agent RUN steps may mount (`--mount=type=ssh`), repeatable: `default` (the
    /// agent of `$SSH_AUTH_SOCK`) or `ID=SOCKET|KEY[,KEY…]` (keys are served by an
    /// `ssh-agent` kiln runs for the build).
    #[arg(long = "ssh", value_name = "ID[=SOCKET|KEY,…]")]
    ssh: Vec<SshSpec>,
    /// Export the build cache (repeatable): `type=registry,ref=R[,mode=min|max]`
    /// or `type=local,dest=DIR[,mode=…]`, with `compression=gzip|zstd`, `ignore-error=true`.
    #[arg(long = "cache-to", value_parser = parse_cache::<CacheTo>, value_name = "SPEC")]
    cache_to: Vec<CacheTo>,
    /// Import a build cache (repeatable): `type=registry,ref=R`, `type=local,src=DIR`, or
    /// `REF`; one that cannot be read is a warning.
    #[arg(long = "cache-from", value_parser = parse_cache::<CacheFrom>, value_name = "SPEC")]
    cache_from: Vec<CacheFrom>,
    /// How to show progress (`none` shows nothing; `quiet` also prints the image ID).
    #[arg(long, value_enum, default_value = "auto", env = "BUILDKIT_PROGRESS")]
    progress: ProgressMode,
    /// Show nothing but errors, and print the image ID on success (`--progress=quiet`).
    #[arg(short = 'q', long)]
    quiet: bool,
    /// How many steps may run at once (default: the number of CPUs).
    #[arg(long)]
    max_parallelism: Option<usize>,
    /// An OCI runtime binary with runc's command line (e.g. `runc`) to run RUN steps
    /// instead of the embedded runtime.
    #[arg(long, value_name = "PATH")]
    oci_runtime: Option<PathBuf>,
    /// Also write the result elsewhere: `type=oci|docker|tar,dest=FILE`,
    /// `type=local,dest=DIR`, or a directory (repeatable); `dest=-` is standard output,
    /// and `-` alone the root filesystem tar there.
    #[arg(short = 'o', long = "output")]
    pub(super) outputs: Vec<Output>,
    /// Write the image ID to this file.
    #[arg(long)]
    iidfile: Option<PathBuf>,
    /// Ask the registry for newer base images even when the local store has them.
    #[arg(long)]
    pub(super) pull: bool,
    /// Push the image to its registry under every -t name.
    #[arg(long)]
    pub(super) push: bool,
    /// Grant steps a privilege they need: `network.host` (RUN --network=host) or
    /// `security.insecure` (RUN --security=insecure).
    #[arg(long = "allow", value_delimiter = ',')]
    pub(super) allow: Vec<Entitlement>,
    /// Size of RUN steps' /dev/shm, e.g. `128m`, `1g` or bytes [default: 64m].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    shm_size: Option<u64>,
    /// A resource limit of RUN steps' processes (repeatable): `NAME=SOFT[:HARD]` with
    /// docker's names (nofile, nproc, core, memlock, stack, …); -1 is unlimited.
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    ulimits: Vec<Ulimit>,
    /// The network of RUN steps that do not choose one: `default`, `none`, or `host`
    /// (which needs `--allow network.host`).
    #[arg(long, value_name = "MODE")]
    network: Option<NetworkMode>,
    /// A line in RUN steps' /etc/hosts (repeatable): `NAME:IP` or `NAME=IP`.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    add_hosts: Vec<ExtraHost>,
    /// Build on a remote builder instead of in this process.
    #[command(flatten)]
    pub(super) remote: super::remote::BuilderArgs,
    /// A builder node for some platforms (repeatable): `linux/arm64[,…]=ADDR`. Each
    /// platform builds on its node (the others on --builder) and the image index is
    /// assembled in the registry, as buildx does for a builder of several nodes.
    #[arg(long = "node", value_name = "PLATFORMS=ADDR")]
    nodes: Vec<super::remote::Node>,
    /// Write the build result (digests, descriptor, names) to this file as JSON, as buildx.
    #[arg(long)]
    metadata_file: Option<PathBuf>,
    /// Also load the image into the docker daemon at $DOCKER_HOST or /var/run/docker.sock.
    #[arg(long)]
    load: bool,
    /// Provenance attestation (`false`, `true`, `mode=min|max,…`); kiln makes none yet.
    #[arg(long, value_name = "VALUE")]
    provenance: Option<String>,
    /// SBOM attestation (`false`, `true`, `generator=…`); kiln makes none yet.
    #[arg(long, value_name = "VALUE")]
    sbom: Option<String>,
    /// Flags of the legacy builder that buildx accepts and ignores.
    #[command(flatten)]
    legacy: LegacyFlags,
}

/// `docker build` flags of the legacy builder that buildx accepts, hidden, and ignores. Like
/// pflag's booleans, the boolean ones take an optional `=true|false`.
#[derive(Args)]
struct LegacyFlags {
    /// Remove intermediate containers (kiln always does).
    #[arg(long = "rm", hide = true, overrides_with = "_rm")]
    #[arg(num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    _rm: Option<bool>,
    /// Always remove intermediate containers (kiln always does).
    #[arg(long = "force-rm", hide = true, overrides_with = "_force_rm")]
    #[arg(num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    _force_rm: Option<bool>,
    /// Compress the build context (a local build sends it nowhere).
    #[arg(long = "compress", hide = true, overrides_with = "_compress")]
    #[arg(num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    _compress: Option<bool>,
    /// Squash the new layers into one (removed with BuildKit).
    #[arg(long, hide = true, overrides_with = "squash")]
    #[arg(num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    squash: Option<bool>,
    /// Container isolation technology (deprecated with BuildKit).
    #[arg(long, hide = true, value_name = "VALUE", overrides_with = "isolation")]
    isolation: Option<String>,
    /// Security options (deprecated with BuildKit).
    #[arg(long = "security-opt", hide = true, value_delimiter = ',')]
    security_opt: Vec<String>,
}

impl LegacyFlags {
    /// The warnings buildx prints for the legacy flags that were given.
    fn warnings(&self) -> Vec<&'static str> {
        [
            (self.isolation.is_some(), "isolation flag is deprecated with BuildKit."),
            (
                !self.security_opt.is_empty(),
                "security-opt flag is deprecated. \"RUN --security=insecure\" should be used with BuildKit.",
            ),
            (
                self.squash.is_some(),
                "experimental flag squash is removed with BuildKit. You should squash inside build using a multi-stage Dockerfile for efficiency.",
            ),
        ]
        .into_iter()
        .filter_map(|(given, warning)| given.then_some(warning))
        .collect()
    }
}

impl BuildArgs {
    /// Whether the build runs on remote builders (`--builder`, `--node`).
    pub fn is_remote(&self) -> bool {
        self.remote.is_remote() || !self.nodes.is_empty()
    }

    /// `--shm-size`, `--ulimit` and `--add-host`.
    fn run_options(&self) -> RunOptions {
        let mut options = RunOptions {
            shm_size: self.shm_size.unwrap_or(0),
            extra_hosts: self.add_hosts.clone(),
            network: self.network.unwrap_or_default(),
            ..RunOptions::default()
        };
        for ulimit in &self.ulimits {
            options.set_ulimit(ulimit.clone());
        }
        options
    }

    /// The `--build-context`s: what each name stands for, and the local directories among
    /// them (named as the contexts). The images of `oci-layout://` contexts are brought
    /// into `state`'s content store.
    pub(super) fn build_contexts(&self, state: &StateDir) -> Result<NamedContexts, Failure> {
        let mut named = NamedContexts::default();
        for raw in &self.build_contexts {
            let (name, value) = raw.split_once('=').ok_or_else(|| {
                Failure::msg(format!(
                    "invalid build context {raw:?}: expected NAME=VALUE"
                ))
            })?;
            let context = if let Some(reference) = value.strip_prefix("docker-image://") {
                NamedContext::Image(reference.to_string())
            } else if let Some(stage) = value.strip_prefix("target:") {
                NamedContext::Stage(stage.to_string())
            } else if let Some(layout) = value.strip_prefix("oci-layout://") {
                self.oci_layout_context(state, name, layout)?
            } else if value.contains("://") || value.starts_with("git@") {
                return Err(Failure::msg(format!(
                    "build context {name}={value}: kiln does not read this kind of build context yet (directories, docker-image://, oci-layout:// and target: work)"
                )));
            } else {
                let dir = PathBuf::from(value);
                if !dir.is_dir() {
                    return Err(Failure::msg(format!(
                        "build context {name}: {value} is not a directory"
                    )));
                }
                let excludes = match fs::read(dir.join(".dockerignore")) {
                    Ok(text) => kiln_patterns::read_ignore_file(&text)
                        .map_err(|e| Failure::msg(format!("{value}/.dockerignore: {e}")))?,
                    Err(_) => Vec::new(),
                };
                named.directories.push((name.to_string(), dir));
                NamedContext::Local {
                    source: name.to_string(),
                    excludes,
                }
            };
            named.contexts.insert(name.to_string(), context);
        }
        Ok(named)
    }

    /// The `oci-layout://PATH[:TAG][@sha256:DIGEST]` context `name`: the image the layout
    /// names, brought into `state`'s content store without an image name and pinned by its
    /// digest. Local builds only: a remote builder would read the layout through the
    /// session's content store, which kiln does not offer.
    fn oci_layout_context(
        &self,
        state: &StateDir,
        name: &str,
        layout: &str,
    ) -> Result<NamedContext, Failure> {
        let failed = |e: &dyn std::fmt::Display| Failure::msg(format!("build context {name}: {e}"));
        if self.is_remote() {
            return Err(failed(&format!(
                "oci-layout://{layout}: OCI layout contexts work for local builds only, not on a remote builder"
            )));
        }
        let named = Reference::parse_normalized(name).map_err(|e| {
            failed(&format!(
                "an oci-layout context needs a name that is a valid image name: {e}"
            ))
        })?;
        let source = LayoutSource::parse(layout).map_err(|e| failed(&e))?;
        let digest = {
            let _lock = state.lock(false).map_err(|e| failed(&e))?;
            let content = state.content().map_err(|e| failed(&e))?;
            source.import(&content).map_err(|e| failed(&e))?
        };
        let reference = Reference {
            tag: None,
            digest: Some(digest.to_string()),
            ..named
        };
        Ok(NamedContext::OciLayout {
            layout: source.path.display().to_string(),
            reference: reference.to_string(),
        })
    }

    /// The `--secret`s by id.
    pub(super) fn secrets(&self) -> LocalSecrets {
        LocalSecrets(self.secrets.iter().cloned().collect())
    }

    /// The `--ssh` agents, and the private directory where the agents kiln starts for key
    /// files keep their sockets (dropped after the agents, which remove their own).
    pub(super) fn ssh_agents(
        &self,
    ) -> Result<(LocalSshAgents, Option<tempfile::TempDir>), Failure> {
        if self.ssh.is_empty() {
            return Ok((LocalSshAgents::default(), None));
        }
        let dir = tempfile::Builder::new()
            .prefix("kiln-ssh-")
            .tempdir()
            .map_err(|e| Failure::msg(format!("cannot make a directory for SSH agents: {e}")))?;
        let agents = LocalSshAgents::new(&self.ssh, dir.path())
            .map_err(|e| Failure::msg(format!("{e:#}")))?;
        Ok((agents, Some(dir)))
    }

    /// How to show progress: `-q` is `--progress=quiet`.
    fn progress_mode(&self) -> ProgressMode {
        if self.quiet {
            ProgressMode::Quiet
        } else {
            self.progress
        }
    }

    /// The `--cache-to`s, with `type=inline` when `--build-arg BUILDKIT_INLINE_CACHE=1`
    /// asks for it as buildx reads it (Go's boolean words).
    fn cache_to(&self) -> Vec<CacheTo> {
        let mut cache_to = self.cache_to.clone();
        let inline_asked = self.build_args.iter().any(|arg| {
            arg.split_once('=').is_some_and(|(key, value)| {
                key == "BUILDKIT_INLINE_CACHE" && parse_go_bool(value) == Some(true)
            })
        });
        if inline_asked && !cache_to.iter().any(|c| c.location == CacheLocation::Inline) {
            cache_to.extend(CacheTo::from_parts("inline", &Default::default()));
        }
        cache_to
    }

    /// `--cache-to` and `--cache-from` as BuildKit's cache options, for a remote build.
    pub(super) fn cache_options(&self) -> CacheOptions {
        let entry = |(kind, attrs): (String, std::collections::BTreeMap<String, String>)| {
            CacheOptionsEntry {
                r#type: kind,
                attrs: attrs.into_iter().collect(),
            }
        };
        CacheOptions {
            exports: self.cache_to().iter().map(|c| entry(c.parts())).collect(),
            imports: self.cache_from.iter().map(|c| entry(c.parts())).collect(),
        }
    }

    /// The `--platform` values with each list split, each platform once; empty when
    /// none was given.
    pub(super) fn platforms(&self) -> Result<Vec<Platform>, String> {
        Platform::parse_list(&self.platform.join(",")).map_err(|e| e.to_string())
    }

    fn streams_to_stdout(&self) -> bool {
        self.outputs
            .iter()
            .any(|output| output.dest == Some(Destination::Stdout))
    }

    /// What the command line asks for that kiln ignores, as buildx warns about it.
    fn ignored_flag_warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> = self
            .legacy
            .warnings()
            .into_iter()
            .map(String::from)
            .collect();
        let attestations: Vec<String> = [("provenance", &self.provenance), ("sbom", &self.sbom)]
            .into_iter()
            .filter_map(|(flag, value)| Some((flag, value.as_deref()?)))
            .filter(|(_, value)| !disables_attestation(value))
            .map(|(flag, value)| format!("--{flag}={value}"))
            .collect();
        if !attestations.is_empty() {
            warnings.push(format!(
                "kiln does not produce attestations yet; ignoring {}",
                attestations.join(" ")
            ));
        }
        warnings
    }
}

/// Whether a `--provenance`/`--sbom` value turns the attestation off: a false boolean as Go
/// reads it, or `disabled=true`.
fn disables_attestation(value: &str) -> bool {
    parse_go_bool(value) == Some(false) || value.split(',').any(|field| field == "disabled=true")
}

/// The `--build-context`s of a build.
#[derive(Default)]
pub(super) struct NamedContexts {
    /// What each name stands for.
    pub contexts: BTreeMap<String, NamedContext>,
    /// The local directories among them, by source name.
    pub directories: Vec<(String, PathBuf)>,
}

/// A `--cache-to` or `--cache-from` value.
fn parse_cache<T: std::str::FromStr<Err = String>>(value: &str) -> Result<T, String> {
    value.parse()
}

/// A `--secret` value as buildx reads it: `id=ID[,src=FILE|,env=VAR][,type=file|env]`.
fn parse_secret(value: &str) -> Result<(String, SecretSource), String> {
    let (mut id, mut kind, mut src, mut env) = (None, None, None, None);
    for field in value.split(',') {
        let (key, val) = field
            .split_once('=')
            .ok_or_else(|| format!("invalid field '{field}': expected key=value"))?;
        match key.to_ascii_lowercase().as_str() {
            "type" if val == "file" || val == "env" => kind = Some(val.to_string()),
            "type" => return Err(format!("unsupported secret type {val:?}")),
            "id" => id = Some(val.to_string()),
            "source" | "src" => src = Some(val.to_string()),
            "env" => env = Some(val.to_string()),
            _ => return Err(format!("unexpected key '{key}' in '{field}'")),
        }
    }
    let id = id.filter(|id| !id.is_empty()).ok_or("secret missing ID")?;
    if kind.as_deref() == Some("env") && env.is_none() {
        env = src.take();
    }
    let source = match (src, env) {
        (Some(path), _) => SecretSource::File(path.into()),
        (None, Some(var)) => SecretSource::Env(var),
        (None, None) if std::env::var_os(&id).is_some() => SecretSource::Env(id.clone()),
        (None, None) => SecretSource::File(id.clone().into()),
    };
    Ok((id, source))
}

/// `kiln build`.
pub fn run(
    state: &StateDir,
    registry: &RegistryOptions,
    mut args: BuildArgs,
) -> Result<(), Failure> {
    // Names first: a typo in -t fails now, not after the build.
    for tag in &args.tags {
        Reference::parse_normalized(tag)
            .map_err(|e| Failure::msg(format!("invalid tag {tag:?}: {e}")))?;
    }
    check_stdout_outputs(&args.outputs)?;
    for warning in args.ignored_flag_warnings() {
        eprintln!("WARNING: {warning}");
    }
    let docker = args.load.then(DockerLoad::connect).transpose()?;
    if let Some(docker) = &docker {
        args.outputs.push(docker.output(&args.tags));
    }
    // Kept until the build ends: a fetched context is removed when it is dropped.
    let context = BuildContext::resolve(&args.context, args.file.as_deref())?;
    let dockerfile_path = context.dockerfile.clone();
    let dockerfile = Dockerfile::read(&dockerfile_path)?;
    let mut options = BuildOptions {
        target: args.target.clone(),
        build_args: parse_build_args(&args.build_args)?,
        no_cache: args.no_cache,
        no_cache_stages: args.no_cache_filter.clone(),
        run: args.run_options(),
        ..BuildOptions::default()
    };
    let platforms = args.platforms().map_err(Failure::msg)?;
    if let [one] = platforms.as_slice() {
        options.target_platform = one.clone();
    }
    let named = args.build_contexts(state)?;
    options.named_contexts = named.contexts.clone();
    for label in &args.labels {
        let (key, value) = label.split_once('=').unwrap_or((label, ""));
        options.labels.insert(key.to_string(), value.to_string());
    }
    let source_date_epoch = options
        .build_args
        .get("SOURCE_DATE_EPOCH")
        .cloned()
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok())
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| Failure::msg(format!("invalid SOURCE_DATE_EPOCH {v:?}")))
        })
        .transpose()?;
    let (ssh_agents, _ssh_dir) = args.ssh_agents()?;
    if args.is_remote() {
        let printer = Progress::stderr(args.progress_mode());
        let job = super::remote::Job {
            ssh: std::sync::Arc::new(ssh_agents),
            args: &args,
            options: &options,
            context: &context.dir,
            named_directories: &named.directories,
            dockerfile: &dockerfile_path,
            printer: &printer,
        };
        let builder = args.remote.builder.as_deref();
        let result = printer.show_while(|| match builder {
            Some(builder) if args.nodes.is_empty() => super::remote::build(builder, &job),
            _ => super::remote::build_on_nodes(builder, &args.nodes, &job, registry).map(Some),
        });
        return match result {
            Ok(Some(done)) => finish(&args, &done, docker.as_ref()),
            // Only files came back (local or tar outputs): there is no image to name.
            Ok(None) => match &args.metadata_file {
                Some(path) => write_file(path, b"{}"),
                None => Ok(()),
            },
            Err(message) => Err(Failure::raw(format!("ERROR: failed to solve: {message}\n"))),
        };
    }
    let request = BuildRequest {
        dockerignore: read_dockerignore(&dockerfile_path, &context.dir),
        dockerfile: dockerfile.bytes.clone(),
        // Canonical, so that the checksum cache (keyed by path) is shared by `kiln build .`
        // and `kiln build /abs/path` of the same context.
        secrets: Box::new(args.secrets()),
        ssh: Box::new(ssh_agents),
        sources: Box::new(LocalDirectories(
            std::iter::once(("context".to_string(), context.dir.clone()))
                .chain(named.directories)
                .map(|(name, dir)| (name, fs::canonicalize(&dir).unwrap_or(dir)))
                .collect(),
        )),
        options,
        tags: args.tags.clone(),
        outputs: args.outputs.clone(),
        max_parallelism: args.max_parallelism.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        }),
        oci_runtime: args.oci_runtime.clone(),
        source_date_epoch,
        pull: args.pull,
        push: args.push,
        registry: registry.clone(),
        entitlements: args.allow.iter().copied().collect(),
        platforms,
        cache_to: args.cache_to(),
        cache_from: args.cache_from.clone(),
    };
    let printer = Progress::stderr(args.progress_mode());
    // Ctrl-C (and SIGTERM) cancel the build: running steps are killed, their mounts and
    // scratch space removed, and nothing half-written is named.
    let cancel = Arc::new(AtomicBool::new(false));
    let on_signal = Arc::clone(&cancel);
    ctrlc::set_handler(move || on_signal.store(true, Ordering::Relaxed))
        .map_err(|e| Failure::msg(format!("cannot install the Ctrl-C handler: {e}")))?;
    let result =
        printer.show_while(|| build(state, request, &|event| printer.event(event), &cancel));
    match result {
        Ok(done) => finish(&args, &done, docker.as_ref()),
        Err(BuildError::Frontend(err)) => Err(Failure::frontend(&err, &dockerfile)),
        Err(BuildError::Step {
            description,
            location,
            error,
        }) => {
            let mut report = String::from("------\n");
            report.push_str(&format!(" > {description}:\n"));
            for line in printer.tail(&description) {
                report.push_str(&format!("{line}\n"));
            }
            report.push_str("------\n");
            if let Some((start, end)) = location {
                report.push_str(
                    &kiln_frontend::Location::lines(start, end)
                        .snippet(&dockerfile.display_name, &dockerfile.bytes),
                );
            }
            report.push_str(&format!("ERROR: failed to solve: {error:#}\n"));
            report.push_str(&disk_full_hint(&error, state));
            Err(Failure::raw(report))
        }
        Err(BuildError::Other(error)) => Err(Failure::raw(format!(
            "error: {error:#}\n{}",
            disk_full_hint(&error, state)
        ))),
    }
}

/// When `error` comes from a full disk (ENOSPC), a line that says where and what to do,
/// rather than a bare "os error 28".
fn disk_full_hint(error: &anyhow::Error, state: &StateDir) -> String {
    let full = error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.raw_os_error() == Some(28))
    });
    if full {
        format!(
            "hint: the disk is full; kiln keeps its data in {}: free space there, or remove build cache with `kiln prune`\n",
            state.root().display()
        )
    } else {
        String::new()
    }
}

/// Refuses what buildx refuses of archives to standard output: two of them, or one to a
/// terminal.
fn check_stdout_outputs(outputs: &[Output]) -> Result<(), Failure> {
    let mut to_stdout = outputs
        .iter()
        .filter(|output| output.dest == Some(Destination::Stdout));
    let Some(first) = to_stdout.next() else {
        return Ok(());
    };
    if to_stdout.next().is_some() {
        return Err(Failure::msg(
            "multiple outputs configured to write to stdout",
        ));
    }
    if std::io::stdout().is_terminal() {
        return Err(Failure::msg(format!(
            "dest file is required for {} exporter. refusing to write to console",
            format!("{:?}", first.kind).to_lowercase()
        )));
    }
    Ok(())
}

/// What a successful build prints and writes, local or remote; with `--load`, the image
/// then goes to `docker`.
fn finish(
    args: &BuildArgs,
    done: &BuildResult,
    docker: Option<&DockerLoad>,
) -> Result<(), Failure> {
    let mode = args.progress_mode();
    // As buildx, the quiet modes and raw JSON leave the warnings out.
    if !matches!(
        mode,
        ProgressMode::Quiet | ProgressMode::None | ProgressMode::Rawjson
    ) {
        for warning in &done.warnings {
            eprintln!("WARNING: {warning}");
        }
    }
    match mode {
        // The ID would land in the archive on standard output.
        ProgressMode::Quiet if args.streams_to_stdout() => {}
        ProgressMode::Quiet => println!("{}", done.id()),
        ProgressMode::None | ProgressMode::Rawjson => {}
        ProgressMode::Json => eprintln!(
            "{}",
            serde_json::json!({
                "event": "exported",
                "manifest": done.manifest_digest.to_string(),
                "config": done.config_digest.map(|d| d.to_string()),
                "names": args.tags,
            })
        ),
        _ => {
            match done.config_digest {
                Some(config) => {
                    eprintln!("exporting manifest {}", done.manifest_digest);
                    eprintln!("writing image {config}");
                }
                None => eprintln!("exporting manifest list {}", done.manifest_digest),
            }
            for tag in &args.tags {
                eprintln!("naming to {tag}");
            }
        }
    }
    if let Some(path) = &args.iidfile {
        write_file(path, done.id().to_string().as_bytes())?;
    }
    if let Some(path) = &args.metadata_file {
        let metadata = metadata(done, &args.tags)?;
        write_file(path, &serde_json::to_vec_pretty(&metadata).expect("JSON"))?;
    }
    if let Some(docker) = docker {
        let loaded = docker.load()?;
        if matches!(
            mode,
            ProgressMode::Plain | ProgressMode::Tty | ProgressMode::Auto
        ) {
            eprintln!("{loaded}");
        }
    }
    Ok(())
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), Failure> {
    std::fs::write(path, data)
        .map_err(|e| Failure::msg(format!("cannot write {}: {e}", path.display())))
}

/// `--metadata-file` content, with buildx's keys.
fn metadata(done: &BuildResult, tags: &[String]) -> Result<serde_json::Value, Failure> {
    let names = tags
        .iter()
        .map(|t| {
            Reference::parse_normalized(t)
                .map(|r| r.to_string())
                .map_err(|e| Failure::msg(format!("invalid tag {t:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut metadata = serde_json::json!({
        "containerimage.digest": done.manifest_digest.to_string(),
        "containerimage.descriptor": done.descriptor(),
    });
    // One image: its config; an index has none (as buildx writes it).
    if let Some(config) = done.config_digest {
        metadata["containerimage.config.digest"] = config.to_string().into();
    }
    if !names.is_empty() {
        metadata["image.name"] = names.join(",").into();
    }
    Ok(metadata)
}

/// `<Dockerfile>.dockerignore` beside the Dockerfile wins over
/// `CONTEXT/.dockerignore`, as in BuildKit.
fn read_dockerignore(dockerfile: &Path, context: &Path) -> Option<Vec<u8>> {
    let mut specific = dockerfile.as_os_str().to_owned();
    specific.push(".dockerignore");
    std::fs::read(PathBuf::from(specific))
        .or_else(|_| std::fs::read(context.join(".dockerignore")))
        .ok()
}
