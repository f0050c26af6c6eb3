//! `kiln build --builder`: the same command line, run by a remote builder through
//! BuildKit's API ([`kiln_api::client`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use clap::Args;
use kiln_api::client::{self, ClientTls, OutputTarget, RemoteBuild};
use kiln_api::control::Exporter;
use kiln_api::tls::TlsFiles;
use kiln_cache::Digest;
use kiln_engine::{BuildEvent, BuildResult, Destination, ManifestFormat, Output, OutputKind};
use kiln_frontend::lower::{BuildOptions, NamedContext};
use kiln_image::Reference;
use kiln_registry::{RegistryClient, RegistryOptions};
use kiln_solver::Platform;
use kiln_worker::layer::LayerCompression;

use super::build::BuildArgs;
use crate::progress::Progress;

/// Mutual TLS files, as BuildKit's daemon and clients take them.
#[derive(Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// The CA that signs the other side's certificates (mutual TLS over TCP).
    #[arg(long, value_name = "FILE", requires_all = ["tlscert", "tlskey"])]
    tlscacert: Option<PathBuf>,
    /// This side's certificate.
    #[arg(long, value_name = "FILE", requires = "tlscacert")]
    tlscert: Option<PathBuf>,
    /// This side's private key.
    #[arg(long, value_name = "FILE", requires = "tlscacert")]
    tlskey: Option<PathBuf>,
}

impl TlsArgs {
    /// The files, when given.
    pub fn files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            ca: self.tlscacert.clone()?,
            cert: self.tlscert.clone()?,
            key: self.tlskey.clone()?,
        })
    }
}

/// Which remote builder to use, and how to authenticate to it over TCP.
#[derive(Args, Clone, Debug, Default)]
pub struct BuilderArgs {
    /// Use the remote builder (`kiln serve`, or buildkitd) at `unix:///PATH` or
    /// `tcp://HOST:PORT` [default: $BUILDKIT_HOST].
    #[arg(long, env = "BUILDKIT_HOST", value_name = "ADDR")]
    pub builder: Option<String>,
    /// The client's side of mutual TLS.
    #[command(flatten)]
    tls: TlsArgs,
    /// The name the builder's certificate carries, if not the address's host.
    #[arg(long, value_name = "NAME")]
    tlsservername: Option<String>,
}

impl BuilderArgs {
    /// Whether a remote builder does the work (this machine's state directory is not used).
    pub fn is_remote(&self) -> bool {
        self.builder.is_some()
    }
}

impl BuilderArgs {
    /// The client's TLS settings, when certificates are given.
    pub fn tls(&self) -> Option<ClientTls> {
        Some(ClientTls {
            files: self.tls.files()?,
            server_name: self.tlsservername.clone(),
        })
    }
}

/// What a remote build needs besides the builder: the context and the command line.
pub struct Job<'a> {
    /// The command line.
    pub args: &'a BuildArgs,
    /// The frontend options it makes.
    pub options: &'a BuildOptions,
    /// The build context directory.
    pub context: &'a Path,
    /// The `--build-context` directories.
    pub named_directories: &'a [(String, PathBuf)],
    /// The Dockerfile.
    pub dockerfile: &'a Path,
    /// Where progress goes.
    pub printer: &'a Progress,
    /// The `--ssh` agents, lent to the builder through the session.
    pub ssh: std::sync::Arc<kiln_engine::LocalSshAgents>,
}

/// Runs the build of the context directory `context` on `builder`; the error is the
/// builder's message. `None` when the builder made no image (only `local` or `tar`
/// outputs: buildkitd and kiln serve then answer no digest).
pub fn build(builder: &str, job: &Job<'_>) -> Result<Option<BuildResult>, String> {
    let platforms = job.args.platforms()?;
    let mut exporters: Vec<(Exporter, Option<OutputTarget>)> =
        job.args.outputs.iter().map(exporter_of).collect();
    if !job.args.tags.is_empty() {
        let mut attrs = HashMap::from([("name".to_string(), job.args.tags.join(","))]);
        if job.args.push {
            attrs.insert("push".into(), "true".into());
        }
        exporters.push((
            Exporter {
                r#type: "image".into(),
                attrs,
            },
            None,
        ));
    }
    let response = run_on(builder, job, &platforms, false, exporters)?;
    if !response.contains_key("containerimage.digest") {
        return Ok(None);
    }
    let digest = |key: &str| {
        response
            .get(key)
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| format!("the builder's answer has no {key}"))
    };
    Ok(Some(BuildResult {
        // A multi-platform build's result is an index, without a config.
        config_digest: digest("containerimage.config.digest").ok(),
        manifest_digest: digest("containerimage.digest")?,
        // The descriptor comes as base64 JSON (BuildKit's and kiln serve's answer).
        manifest_size: response
            .get("containerimage.descriptor")
            .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
            .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
            .and_then(|descriptor| descriptor["size"].as_u64())
            .unwrap_or(0),
        platforms: if platforms.is_empty() {
            vec![job.options.target_platform.clone()]
        } else {
            platforms
        },
        warnings: Vec::new(),
    }))
}

/// Runs `job` for `platforms` on `builder` with `exporters` (`multi_platform`: one
/// builder's part of a build of several platforms); returns the builder's answer.
fn run_on(
    builder: &str,
    job: &Job<'_>,
    platforms: &[Platform],
    multi_platform: bool,
    exporters: Vec<(Exporter, Option<OutputTarget>)>,
) -> Result<HashMap<String, String>, String> {
    let Job {
        args,
        options,
        context,
        named_directories,
        dockerfile,
        printer,
        ..
    } = *job;
    if dockerfile == Path::new("-") {
        return Err("a remote build reads the Dockerfile from a file, not standard input".into());
    }
    let mut attrs = client::frontend_attrs(&options.build_args, &options.labels);
    if let Some(target) = &options.target {
        attrs.insert("target".into(), target.clone());
    }
    if !platforms.is_empty() {
        let list: Vec<String> = platforms.iter().map(ToString::to_string).collect();
        attrs.insert("platform".into(), list.join(","));
    }
    if multi_platform {
        attrs.insert("multi-platform".into(), "true".into());
    }
    if options.no_cache {
        attrs.insert("no-cache".into(), String::new());
    } else if !options.no_cache_stages.is_empty() {
        attrs.insert("no-cache".into(), options.no_cache_stages.join(","));
    }
    if args.pull {
        attrs.insert("image-resolve-mode".into(), "pull".into());
    }
    attrs.extend(options.run.to_attrs());
    for (name, context) in &options.named_contexts {
        let value = match context {
            NamedContext::Local { source, .. } => format!("local:{source}"),
            NamedContext::Image(reference) => format!("docker-image://{reference}"),
            NamedContext::Stage(stage) => format!("target:{stage}"),
            // `kiln build` refuses these before a remote build starts.
            NamedContext::OciLayout { layout, .. } => {
                return Err(format!(
                    "build context {name}: oci-layout://{layout} works for local builds only"
                ));
            }
        };
        attrs.insert(format!("context:{name}"), value);
    }
    let request = RemoteBuild {
        context: context.to_path_buf(),
        named_directories: named_directories.to_vec(),
        dockerfile: dockerfile.to_path_buf(),
        frontend_attrs: attrs,
        exporters,
        entitlements: args.allow.iter().map(ToString::to_string).collect(),
        secrets: args.secrets(),
        ssh: std::sync::Arc::clone(&job.ssh),
        cache: args.cache_options(),
    };
    let done = super::runtime()?
        .block_on(client::build(
            builder,
            args.remote.tls().as_ref(),
            request,
            &|event| printer.event(event),
        ))
        .map_err(|e| format!("{e:#}"))?;
    Ok(done.exporter_response)
}

/// `--node PLATFORMS=ADDR`: a builder node for some platforms of a multi-platform build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The platforms it builds.
    pub platforms: Vec<Platform>,
    /// Its address (`unix:///PATH`, `tcp://HOST:PORT`).
    pub address: String,
}

impl std::str::FromStr for Node {
    type Err = String;

    /// `linux/arm64[,linux/arm/v7]=tcp://arm-host:1234`.
    fn from_str(spec: &str) -> Result<Self, String> {
        let (platforms, address) = spec
            .split_once('=')
            .ok_or_else(|| format!("--node {spec:?}: want PLATFORMS=ADDR"))?;
        let platforms = Platform::parse_list(platforms).map_err(|e| e.to_string())?;
        if platforms.is_empty() || address.is_empty() {
            return Err(format!("--node {spec:?}: want PLATFORMS=ADDR"));
        }
        Ok(Node {
            platforms,
            address: address.to_string(),
        })
    }
}

/// Which builder builds which platforms: each on the first node that names it, the rest
/// on `default`.
fn route(
    platforms: &[Platform],
    default: Option<&str>,
    nodes: &[Node],
) -> Result<Vec<(String, Vec<Platform>)>, String> {
    let mut groups: Vec<(String, Vec<Platform>)> = Vec::new();
    for platform in platforms {
        let address = match nodes.iter().find(|n| n.platforms.contains(platform)) {
            Some(node) => node.address.clone(),
            None => default
                .ok_or_else(|| {
                    format!("no builder for {platform}: add --node {platform}=ADDR or --builder")
                })?
                .to_string(),
        };
        match groups.iter_mut().find(|(a, _)| *a == address) {
            Some((_, group)) => group.push(platform.clone()),
            None => groups.push((address, vec![platform.clone()])),
        }
    }
    Ok(groups)
}

/// Builds each platform on its builder (`--node`, else `--builder`) and assembles one
/// image index in the registry under every tag, as buildx does for a builder of several
/// nodes: each builder pushes its part by digest, then the index is pushed.
pub fn build_on_nodes(
    default: Option<&str>,
    nodes: &[Node],
    job: &Job<'_>,
    registry: &RegistryOptions,
) -> Result<BuildResult, String> {
    let args = job.args;
    let platforms = args.platforms()?;
    if platforms.is_empty() {
        return Err("--node needs --platform: it says which platforms it builds".into());
    }
    if !args.push || args.tags.is_empty() || !args.outputs.is_empty() {
        return Err(
            "a build on several builder nodes is assembled in a registry: use -t NAME --push (and no -o)"
                .into(),
        );
    }
    let groups = route(&platforms, default, nodes)?;
    let repository = Reference::parse_normalized(&args.tags[0]).map_err(|e| e.to_string())?;
    let parts: Vec<Result<(Vec<Platform>, Digest), String>> = std::thread::scope(|scope| {
        let running: Vec<_> = groups
            .iter()
            .map(|(address, group)| {
                scope.spawn(move || {
                    let exporter = Exporter {
                        r#type: "image".into(),
                        attrs: HashMap::from([
                            ("name".to_string(), args.tags[0].clone()),
                            ("push".to_string(), "true".to_string()),
                            ("push-by-digest".to_string(), "true".to_string()),
                        ]),
                    };
                    let response = run_on(address, job, group, true, vec![(exporter, None)])?;
                    let digest: Digest = response
                        .get("containerimage.digest")
                        .and_then(|d| d.parse().ok())
                        .ok_or_else(|| format!("{address} answered without a digest"))?;
                    let names: Vec<String> = group.iter().map(ToString::to_string).collect();
                    job.printer.event(BuildEvent::Notice(format!(
                        "{} built on {address}: {digest}",
                        names.join(",")
                    )));
                    Ok((group.clone(), digest))
                })
            })
            .collect();
        running
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("a builder thread panicked".into()))
            })
            .collect()
    });
    let parts = parts.into_iter().collect::<Result<Vec<_>, _>>()?;
    let client = RegistryClient::new(registry.clone()).map_err(|e| format!("{e:#}"))?;
    let mut entries: Vec<serde_json::Value> = Vec::new();
    for (group, digest) in &parts {
        let fetched =
            kiln_registry::pull::fetch_manifest(&client, &repository, &digest.to_string())
                .map_err(|e| format!("{e:#}"))?;
        if kiln_image::is_index(&fetched.media_type) {
            let index: serde_json::Value =
                serde_json::from_slice(&fetched.bytes).map_err(|e| e.to_string())?;
            entries.extend(index["manifests"].as_array().cloned().unwrap_or_default());
        } else {
            entries.push(serde_json::json!({
                "mediaType": fetched.media_type,
                "digest": digest.to_string(),
                "size": fetched.bytes.len(),
                "platform": &group[0],
            }));
        }
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": ManifestFormat::Oci.index(),
        "manifests": entries,
    }))
    .map_err(|e| e.to_string())?;
    for tag in &args.tags {
        let remote = Reference::parse_normalized(tag).map_err(|e| e.to_string())?;
        let target = remote.tag.clone().unwrap_or_else(|| "latest".into());
        kiln_registry::push::put_manifest(
            &client,
            &remote,
            &target,
            &index,
            ManifestFormat::Oci.index(),
        )
        .map_err(|e| format!("{e:#}"))?;
    }
    Ok(BuildResult {
        config_digest: None,
        manifest_digest: Digest::of(&index),
        manifest_size: index.len() as u64,
        platforms,
        warnings: Vec::new(),
    })
}

/// An `--output` as BuildKit's exporter, and where its result lands here.
fn exporter_of(output: &Output) -> (Exporter, Option<OutputTarget>) {
    let kind = match output.kind {
        OutputKind::Oci => "oci",
        OutputKind::Docker => "docker",
        OutputKind::Tar => "tar",
        OutputKind::Local => "local",
        OutputKind::Image => "image",
    };
    let mut attrs = HashMap::new();
    if !output.names.is_empty() {
        attrs.insert("name".to_string(), output.names.join(","));
    }
    if output.push {
        attrs.insert("push".into(), "true".into());
    }
    if let Some(compression) = output.compression {
        let name = match compression {
            LayerCompression::Gzip => "gzip",
            LayerCompression::Zstd => "zstd",
        };
        attrs.insert("compression".into(), name.into());
    }
    if output.is_image() {
        let oci = output.format == ManifestFormat::Oci;
        attrs.insert("oci-mediatypes".into(), oci.to_string());
    }
    let target = match &output.dest {
        Some(Destination::Path(path)) if output.kind == OutputKind::Local => {
            Some(OutputTarget::Directory(path.clone()))
        }
        Some(Destination::Path(path)) => Some(OutputTarget::File(path.clone())),
        // The session writes what it receives to this file: our standard output.
        Some(Destination::Stdout) => Some(OutputTarget::File("/dev/stdout".into())),
        _ => None,
    };
    (
        Exporter {
            r#type: kind.into(),
            attrs,
        },
        target,
    )
}
