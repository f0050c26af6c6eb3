//! `kiln build --builder`: the same command line, run by a remote builder through
//! BuildKit's API ([`kiln_api::client`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::Args;
use kiln_api::client::{self, ClientTls, OutputTarget, RemoteBuild};
use kiln_api::control::Exporter;
use kiln_api::tls::TlsFiles;
use kiln_engine::{BuildResult, Destination, ManifestFormat, Output, OutputKind};
use kiln_frontend::lower::{BuildOptions, NamedContext};
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

/// Runs the build of the context directory `context` on `builder`; the error is the
/// builder's message.
pub fn build(
    builder: &str,
    args: &BuildArgs,
    options: &BuildOptions,
    context: &Path,
    named_directories: &[(String, PathBuf)],
    dockerfile: &Path,
    printer: &Progress,
) -> Result<BuildResult, String> {
    if dockerfile == Path::new("-") {
        return Err("a remote build reads the Dockerfile from a file, not standard input".into());
    }
    let mut attrs = client::frontend_attrs(&options.build_args, &options.labels);
    if let Some(target) = &options.target {
        attrs.insert("target".into(), target.clone());
    }
    let platforms = args.platforms()?;
    if !platforms.is_empty() {
        let list: Vec<String> = platforms.iter().map(ToString::to_string).collect();
        attrs.insert("platform".into(), list.join(","));
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
    let mut exporters: Vec<(Exporter, Option<OutputTarget>)> =
        args.outputs.iter().map(exporter_of).collect();
    if !args.tags.is_empty() {
        let mut attrs = HashMap::from([("name".to_string(), args.tags.join(","))]);
        if args.push {
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
    for (name, context) in &options.named_contexts {
        let value = match context {
            NamedContext::Local { source, .. } => format!("local:{source}"),
            NamedContext::Image(reference) => format!("docker-image://{reference}"),
            NamedContext::Stage(stage) => format!("target:{stage}"),
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
    let digest = |key: &str| {
        done.exporter_response
            .get(key)
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| format!("the builder's answer has no {key}"))
    };
    Ok(BuildResult {
        // A multi-platform build's result is an index, without a config.
        config_digest: digest("containerimage.config.digest").ok(),
        manifest_digest: digest("containerimage.digest")?,
        manifest_size: done
            .exporter_response
            .get("containerimage.descriptor.size")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        platforms: if platforms.is_empty() {
            vec![options.target_platform.clone()]
        } else {
            platforms
        },
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
