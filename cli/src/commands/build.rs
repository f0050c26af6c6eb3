//! `kiln build`: build an image from a Dockerfile and a context.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;
use kiln_cache::StateDir;
use kiln_frontend::lower::BuildOptions;
use kiln_image::Reference;
use kiln_registry::RegistryOptions;
use kiln_solver::Platform;

use super::{Dockerfile, Failure, parse_build_args};
use crate::progress::{Progress, ProgressMode};
use kiln_engine::{
    BuildError, BuildRequest, BuildResult, Entitlement, LocalDirectories, LocalSecrets, Output,
    SecretSource, build,
};

/// Arguments of `kiln build`.
#[derive(Args)]
pub struct BuildArgs {
    /// The build context directory.
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
    /// The platform to build for (only the host's platform can RUN steps for now).
    #[arg(long)]
    pub(super) platform: Option<String>,
    /// Do not use the cache for any step.
    #[arg(long)]
    no_cache: bool,
    /// Do not use the cache for the steps of these stages.
    #[arg(long = "no-cache-filter", value_delimiter = ',')]
    no_cache_filter: Vec<String>,
    /// Add a label to the image (`KEY=VALUE`).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// A secret RUN steps may mount: `id=ID[,src=FILE|,env=VAR][,type=file|env]`
    /// (repeatable). With only an id, the variable ID if it is set, else the file ID.
    #[arg(long = "secret", value_parser = parse_secret, value_name = "SPEC")]
    secrets: Vec<(String, SecretSource)>,
    /// How to show progress.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
    /// How many steps may run at once (default: the number of CPUs).
    #[arg(long)]
    max_parallelism: Option<usize>,
    /// An OCI runtime binary with runc's command line (e.g. `runc`) to run RUN steps
    /// instead of the embedded runtime.
    #[arg(long, value_name = "PATH")]
    oci_runtime: Option<PathBuf>,
    /// Also write the result elsewhere: `type=oci|docker|tar,dest=FILE`,
    /// `type=local,dest=DIR`, or a directory (repeatable).
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
    /// Build on a remote builder instead of in this process.
    #[command(flatten)]
    pub(super) remote: super::remote::BuilderArgs,
    /// Write the build result (digests, descriptor, names) to this file as JSON, as buildx.
    #[arg(long)]
    metadata_file: Option<PathBuf>,
}

impl BuildArgs {
    /// Whether the build runs on a remote builder.
    pub fn is_remote(&self) -> bool {
        self.remote.is_remote()
    }

    /// The `--secret`s by id.
    pub(super) fn secrets(&self) -> LocalSecrets {
        LocalSecrets(self.secrets.iter().cloned().collect())
    }
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
pub fn run(state: &StateDir, registry: &RegistryOptions, args: BuildArgs) -> Result<(), Failure> {
    // Names first: a typo in -t fails now, not after the build.
    for tag in &args.tags {
        Reference::parse_normalized(tag)
            .map_err(|e| Failure::msg(format!("invalid tag {tag:?}: {e}")))?;
    }
    match fs::metadata(&args.context) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(Failure::msg(format!(
                "unable to prepare context: {} is not a directory",
                args.context.display()
            )));
        }
        Err(_) => {
            return Err(Failure::msg(format!(
                "unable to prepare context: path {:?} not found",
                args.context.display().to_string()
            )));
        }
    }
    let dockerfile_path = args
        .file
        .clone()
        .unwrap_or_else(|| args.context.join("Dockerfile"));
    let dockerfile = Dockerfile::read(&dockerfile_path)?;
    let mut options = BuildOptions {
        target: args.target.clone(),
        build_args: parse_build_args(&args.build_args)?,
        no_cache: args.no_cache,
        no_cache_stages: args.no_cache_filter.clone(),
        ..BuildOptions::default()
    };
    if let Some(platform) = &args.platform {
        options.target_platform = platform.parse::<Platform>().map_err(Failure::msg)?;
    }
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
    let platform = options.target_platform.clone();
    if let Some(builder) = &args.remote.builder {
        let printer = Progress::stderr(args.progress);
        let result = printer.show_while(|| {
            super::remote::build(builder, &args, &options, &dockerfile_path, &printer)
        });
        return match result {
            Ok(done) => finish(&args, &done, &platform),
            Err(message) => Err(Failure::raw(format!("ERROR: failed to solve: {message}\n"))),
        };
    }
    let request = BuildRequest {
        dockerignore: read_dockerignore(&dockerfile_path, &args.context),
        dockerfile: dockerfile.bytes.clone(),
        // Canonical, so that the checksum cache (keyed by path) is shared by `kiln build .`
        // and `kiln build /abs/path` of the same context.
        secrets: Box::new(args.secrets()),
        sources: Box::new(LocalDirectories(HashMap::from([(
            "context".to_string(),
            fs::canonicalize(&args.context).unwrap_or_else(|_| args.context.clone()),
        )]))),
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
    };
    let printer = Progress::stderr(args.progress);
    // Ctrl-C (and SIGTERM) cancel the build: running steps are killed, their mounts and
    // scratch space removed, and nothing half-written is named.
    let cancel = Arc::new(AtomicBool::new(false));
    let on_signal = Arc::clone(&cancel);
    ctrlc::set_handler(move || on_signal.store(true, Ordering::Relaxed))
        .map_err(|e| Failure::msg(format!("cannot install the Ctrl-C handler: {e}")))?;
    let result =
        printer.show_while(|| build(state, request, &|event| printer.event(event), &cancel));
    match result {
        Ok(done) => finish(&args, &done, &platform),
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
            Err(Failure::raw(report))
        }
        Err(BuildError::Other(error)) => Err(Failure::msg(format!("{error:#}"))),
    }
}

/// What a successful build prints and writes, local or remote.
fn finish(args: &BuildArgs, done: &BuildResult, platform: &Platform) -> Result<(), Failure> {
    for warning in &done.warnings {
        eprintln!("WARNING: {warning}");
    }
    match args.progress {
        ProgressMode::Quiet => println!("{}", done.config_digest),
        ProgressMode::Json => eprintln!(
            "{}",
            serde_json::json!({
                "event": "exported",
                "manifest": done.manifest_digest.to_string(),
                "config": done.config_digest.to_string(),
                "names": args.tags,
            })
        ),
        _ => {
            eprintln!("exporting manifest {}", done.manifest_digest);
            eprintln!("writing image {}", done.config_digest);
            for tag in &args.tags {
                eprintln!("naming to {tag}");
            }
        }
    }
    if let Some(path) = &args.iidfile {
        write_file(path, done.config_digest.to_string().as_bytes())?;
    }
    if let Some(path) = &args.metadata_file {
        let metadata = metadata(done, platform, &args.tags)?;
        write_file(path, &serde_json::to_vec_pretty(&metadata).expect("JSON"))?;
    }
    Ok(())
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), Failure> {
    std::fs::write(path, data)
        .map_err(|e| Failure::msg(format!("cannot write {}: {e}", path.display())))
}

/// `--metadata-file` content, with buildx's keys.
fn metadata(
    done: &BuildResult,
    platform: &Platform,
    tags: &[String],
) -> Result<serde_json::Value, Failure> {
    let names = tags
        .iter()
        .map(|t| {
            Reference::parse_normalized(t)
                .map(|r| r.to_string())
                .map_err(|e| Failure::msg(format!("invalid tag {t:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut platform_json = serde_json::json!({
        "architecture": platform.architecture,
        "os": platform.os,
    });
    if !platform.variant.is_empty() {
        platform_json["variant"] = platform.variant.clone().into();
    }
    let mut metadata = serde_json::json!({
        "containerimage.config.digest": done.config_digest.to_string(),
        "containerimage.digest": done.manifest_digest.to_string(),
        "containerimage.descriptor": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": done.manifest_digest.to_string(),
            "size": done.manifest_size,
            "platform": platform_json,
        },
    });
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
