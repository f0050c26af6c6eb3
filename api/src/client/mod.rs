//! The client of a remote builder (`kiln build --builder`): it opens a session that
//! serves its files, starts a build and, as buildx and `buildctl build` do, drives it with
//! a build function (BuildKit's gateway API) that asks for the Dockerfile frontend and
//! returns its result; it turns the status stream back into the engine's progress events,
//! so that a remote build shows and fails as a local one does. It speaks to `kiln serve`
//! and to buildkitd alike.

mod attachables;
mod status;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use hyper_util::rt::TokioIo;
use kiln_engine::{BuildEvent, LocalSecrets, LocalSshAgents};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

pub use attachables::OutputTarget;

use crate::control::control_client::ControlClient;
pub use crate::control::{CacheOptions, CacheOptionsEntry};
use crate::control::{
    DiskUsageRequest, Exporter, PruneRequest, SolveRequest, StatusRequest, UsageRecord,
};
use crate::gateway::llb_bridge_client::LlbBridgeClient;
use crate::gateway::{
    CacheOptionsEntry as GatewayCacheEntry, PingRequest, ReturnRequest,
    SolveRequest as GatewaySolveRequest, Status as GatewayStatus,
};
use crate::session::{self, SessionHeaders, bridge};
use crate::{BUILD_ID_METADATA, DOCKERFILE_FRONTEND};

/// How the client proves itself to a builder over TCP, and checks the builder.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// The CA, the client's certificate and key.
    pub files: crate::tls::TlsFiles,
    /// The name the builder's certificate must carry (default: the address's host).
    pub server_name: Option<String>,
}

/// Connects to a builder at `unix:///PATH` or `tcp://HOST:PORT`, over mutual TLS when
/// `tls` is given.
pub async fn connect(address: &str, tls: Option<&ClientTls>) -> Result<Channel> {
    if let Some(path) = address.strip_prefix("unix://") {
        let path = PathBuf::from(path);
        let shown = address.to_string();
        return session::endpoint("http://kiln".into())?
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(TokioIo::new)
                }
            }))
            .await
            .with_context(|| format!("cannot reach the builder at {shown}"));
    }
    if let Some(host) = address.strip_prefix("tcp://") {
        let endpoint = match tls {
            Some(tls) => {
                let name = match &tls.server_name {
                    Some(name) => name.clone(),
                    None => host
                        .rsplit_once(':')
                        .map_or(host, |(name, _)| name)
                        .trim_matches(['[', ']'])
                        .to_string(),
                };
                session::endpoint(format!("https://{host}"))?
                    .tls_config(tls.files.client(&name)?)?
            }
            None => session::endpoint(format!("http://{host}"))?,
        };
        return endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach the builder at {address}"));
    }
    bail!("unsupported builder address {address:?} (unix:///PATH or tcp://HOST:PORT)")
}

/// A remote build, as the command line asks for it.
#[derive(Debug, Clone, Default)]
pub struct RemoteBuild {
    /// The build context directory.
    pub context: PathBuf,
    /// The directories of `--build-context`s, by name.
    pub named_directories: Vec<(String, PathBuf)>,
    /// The Dockerfile.
    pub dockerfile: PathBuf,
    /// BuildKit's frontend attributes (`build-arg:K`, `target`, `label:K`, …).
    pub frontend_attrs: HashMap<String, String>,
    /// Exporters, each with where its result lands on this machine, if anywhere.
    pub exporters: Vec<(Exporter, Option<OutputTarget>)>,
    /// Entitlements asked for (`--allow`).
    pub entitlements: Vec<String>,
    /// The `--secret`s, handed to the daemon one by one as steps mount them.
    pub secrets: LocalSecrets,
    /// The `--ssh` agents, relayed to the daemon's steps that mount them.
    pub ssh: Arc<LocalSshAgents>,
    /// `--cache-to` and `--cache-from`, as BuildKit's cache options.
    pub cache: CacheOptions,
}

/// A finished remote build.
#[derive(Debug, Clone)]
pub struct RemoteResult {
    /// The daemon's answer: the image's digests and names.
    pub exporter_response: HashMap<String, String>,
}

/// A failed call as an error: the builder's own message, or, when the connection itself
/// failed, what is likely wrong with it.
fn failure(address: &str, status: &tonic::Status) -> anyhow::Error {
    let message = status.message();
    let transport = status.code() == tonic::Code::Unavailable
        || [
            "transport error",
            "h2 protocol error",
            "operation was canceled",
        ]
        .iter()
        .any(|sign| message.contains(sign));
    if transport && address.starts_with("tcp://") {
        anyhow!(
            "the builder at {address} broke off the connection ({message}): a builder that \
             listens on TCP beyond loopback wants mutual TLS (--tlscacert, --tlscert, \
             --tlskey with a certificate its CA signed)"
        )
    } else if transport {
        anyhow!("lost the connection to the builder at {address} ({message})")
    } else {
        anyhow!("{message}")
    }
}

/// Random hex of `n` bytes, for session and build IDs.
fn random_id(bytes: usize) -> Result<String> {
    let mut data = vec![0u8; bytes];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut data)?;
    Ok(data.iter().map(|b| format!("{b:02x}")).collect())
}

/// The key under which the daemon keeps this client's copy of its directories: the same
/// for the same machine and context, so that a rebuild transfers only what changed.
fn shared_key(context: &Path) -> String {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let canonical = std::fs::canonicalize(context).unwrap_or_else(|_| context.to_path_buf());
    let key = format!("{}:{}", hostname.trim(), canonical.display());
    kiln_cache::Digest::of(key.as_bytes()).hex()[..32].to_string()
}

/// Runs `build` on the builder at `address`, reporting progress to `events`.
pub async fn build(
    address: &str,
    tls: Option<&ClientTls>,
    build: RemoteBuild,
    events: &(dyn Fn(BuildEvent) + Sync),
) -> Result<RemoteResult> {
    let channel = connect(address, tls).await?;
    let mut control = ControlClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let session_id = random_id(16)?;
    let reference = random_id(16)?;
    let dockerfile_dir = build
        .dockerfile
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut directories = HashMap::from([
        ("context".to_string(), build.context.clone()),
        ("dockerfile".to_string(), dockerfile_dir),
    ]);
    directories.extend(build.named_directories.iter().cloned());
    let outputs: HashMap<usize, OutputTarget> = build
        .exporters
        .iter()
        .enumerate()
        .filter_map(|(i, (_, target))| target.clone().map(|t| (i, t)))
        .collect();
    let headers = SessionHeaders {
        id: session_id.clone(),
        name: build.context.display().to_string(),
        shared_key: shared_key(&build.context),
        methods: attachables::METHODS.iter().map(|m| m.to_string()).collect(),
    };
    let attached = attachables::router(
        directories,
        Arc::new(outputs),
        build.secrets.clone(),
        Arc::clone(&build.ssh),
    );
    let session = open_session(address, &mut control, &headers, attached).await?;

    let mut attrs = build.frontend_attrs.clone();
    let filename = build
        .dockerfile
        .file_name()
        .context("the Dockerfile path names no file")?
        .to_string_lossy()
        .into_owned();
    attrs.insert("filename".into(), filename);
    let exporters: Vec<Exporter> = build.exporters.iter().map(|(e, _)| e.clone()).collect();
    let frontend_request = GatewaySolveRequest {
        frontend: DOCKERFILE_FRONTEND.into(),
        frontend_opt: attrs.clone(),
        allow_result_return: true,
        allow_result_array_ref: true,
        cache_imports: build
            .cache
            .imports
            .iter()
            .map(|entry| GatewayCacheEntry {
                r#type: entry.r#type.clone(),
                attrs: entry.attrs.clone(),
            })
            .collect(),
        ..GatewaySolveRequest::default()
    };
    // No frontend: the build function below asks for it.
    let request = SolveRequest {
        r#ref: reference.clone(),
        session: session_id,
        frontend_attrs: attrs,
        exporter_deprecated: exporters
            .first()
            .map(|e| e.r#type.clone())
            .unwrap_or_default(),
        exporter_attrs_deprecated: exporters
            .first()
            .map(|e| e.attrs.clone())
            .unwrap_or_default(),
        exporters,
        entitlements: build.entitlements.clone(),
        cache: Some(build.cache.clone()),
        ..SolveRequest::default()
    };
    let mut status_control = control.clone();
    let status_reference = reference.clone();
    let statuses = async move {
        let mut stream = status_control
            .status(StatusRequest {
                r#ref: status_reference,
            })
            .await?
            .into_inner();
        let mut translator = status::Translator::default();
        while let Some(message) = stream.next().await {
            for event in translator.events(message?) {
                events(event);
            }
        }
        anyhow::Ok(())
    };
    let solve = control.solve(request);
    let build_function = run_build_function(
        LlbBridgeClient::new(channel).max_decoding_message_size(64 << 20),
        &reference,
        frontend_request,
    );
    let (solved, shown, function) = tokio::join!(solve, statuses, build_function);
    session.abort();
    let response = solved.map_err(|status| failure(address, &status))?;
    // The build's own error (above) says more than the build function's report of it.
    function.map_err(|status| failure(address, &status))?;
    // A status stream that broke does not fail a build that succeeded.
    let _ = shown;
    Ok(RemoteResult {
        exporter_response: response.into_inner().exporter_response,
    })
}

/// The build function of build `id`, as buildx's: asks the builder for the Dockerfile
/// frontend with `frontend_request` and returns its result, or its error, with `Return`.
async fn run_build_function(
    mut bridge: LlbBridgeClient<Channel>,
    id: &str,
    frontend_request: GatewaySolveRequest,
) -> Result<(), tonic::Status> {
    bridge.ping(with_build_id(PingRequest {}, id)).await?;
    let returned = match bridge.solve(with_build_id(frontend_request, id)).await {
        Ok(solved) => ReturnRequest {
            result: solved.into_inner().result,
            error: None,
        },
        Err(status) => ReturnRequest {
            result: None,
            error: Some(GatewayStatus {
                code: status.code() as i32,
                message: status.message().to_string(),
            }),
        },
    };
    bridge.r#return(with_build_id(returned, id)).await?;
    Ok(())
}

/// A gateway call of build `id`.
fn with_build_id<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = AsciiMetadataValue::try_from(id) {
        request.metadata_mut().insert(BUILD_ID_METADATA, value);
    }
    request
}

/// Opens the session: the tunnel call, and the services served through it, on a task
/// that runs until the daemon closes the session or the task is aborted.
async fn open_session(
    address: &str,
    control: &mut ControlClient<Channel>,
    headers: &SessionHeaders,
    attached: tonic::transport::server::Router,
) -> Result<tokio::task::JoinHandle<()>> {
    let (from_daemon, incoming) = mpsc::channel(64);
    let (io, outgoing) = bridge(ReceiverStream::new(incoming));
    let mut request = tonic::Request::new(outgoing.filter_map(Result::ok));
    for (key, values) in headers.to_metadata() {
        for value in values {
            request
                .metadata_mut()
                .append(key, AsciiMetadataValue::try_from(value)?);
        }
    }
    let mut responses = control
        .session(request)
        .await
        .map_err(|status| failure(address, &status))?
        .into_inner();
    let served = tokio::spawn(async move {
        let forward = async {
            while let Some(message) = responses.next().await {
                if from_daemon.send(message).await.is_err() {
                    break;
                }
            }
        };
        // One connection, and no end to the "listener": the server would stop, and take
        // the connection with it, once its incoming stream ended.
        let connections =
            tokio_stream::once(Ok::<_, std::io::Error>(Tunnel(io))).chain(tokio_stream::pending());
        let serve = attached.serve_with_incoming(connections);
        tokio::select! {
            _ = forward => {}
            _ = serve => {}
        }
    });
    Ok(served)
}

/// The tunnel's byte connection as a connection tonic's server accepts.
struct Tunnel(tokio::io::DuplexStream);

impl tonic::transport::server::Connected for Tunnel {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for Tunnel {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Tunnel {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The disk use of the builder at `address`, as its usage records.
pub async fn disk_usage(address: String, tls: Option<ClientTls>) -> Result<Vec<UsageRecord>> {
    let response = ControlClient::new(connect(&address, tls.as_ref()).await?)
        .disk_usage(DiskUsageRequest::default())
        .await
        .map_err(|status| failure(&address, &status))?;
    Ok(response.into_inner().record)
}

/// Prunes the cache of the builder at `address` (all of it with `all`); returns what was
/// freed.
pub async fn prune(address: String, tls: Option<ClientTls>, all: bool) -> Result<Vec<UsageRecord>> {
    let mut stream = ControlClient::new(connect(&address, tls.as_ref()).await?)
        .prune(PruneRequest {
            all,
            ..PruneRequest::default()
        })
        .await
        .map_err(|status| failure(&address, &status))?
        .into_inner();
    let mut freed = Vec::new();
    while let Some(record) = stream.next().await {
        freed.push(record.map_err(|status| failure(&address, &status))?);
    }
    Ok(freed)
}

/// Frontend attributes for build arguments and labels.
pub fn frontend_attrs(
    build_args: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> HashMap<String, String> {
    build_args
        .iter()
        .map(|(k, v)| (format!("build-arg:{k}"), v.clone()))
        .chain(
            labels
                .iter()
                .map(|(k, v)| (format!("label:{k}"), v.clone())),
        )
        .collect()
}
