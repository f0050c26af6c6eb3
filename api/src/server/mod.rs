//! `kiln serve`: the engine behind BuildKit's Control service, on unix sockets and
//! loopback TCP.

mod files;
mod gateway;
mod sessions;
mod solve;
mod ssh;
mod status;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use kiln_cache::StateDir;
use kiln_engine::Entitlement;
use kiln_registry::RegistryOptions;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::control::control_server::{Control, ControlServer};
use crate::control::{
    BytesMessage, DiskUsageRequest, DiskUsageResponse, InfoRequest, InfoResponse,
    ListWorkersRequest, ListWorkersResponse, PruneRequest, SolveRequest, SolveResponse,
    StatusRequest, StatusResponse, UsageRecord,
};
use crate::gateway::llb_bridge_server::LlbBridgeServer;
use crate::pb::Platform as PbPlatform;
use crate::session::{SessionHeaders, bridge};
use crate::types::{BuildkitVersion, WorkerRecord};
use sessions::Sessions;
use solve::SolveError;
use status::Statuses;

/// How the daemon runs builds.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Entitlements builds may be granted (`--allow-insecure-entitlement`).
    pub allowed: BTreeSet<Entitlement>,
    /// The OCI runtime binary for RUN; `None` for the embedded runtime.
    pub oci_runtime: Option<PathBuf>,
    /// How to reach registries.
    pub registry: RegistryOptions,
}

/// The daemon's state: the engine's state directory, open sessions, running builds.
pub struct Daemon {
    state: StateDir,
    options: DaemonOptions,
    sessions: Arc<Sessions>,
    statuses: Statuses,
    sync_locks: Arc<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>>,
    /// Cancel flags of running builds, by their `Ref`.
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Builds a client's build function drives through the gateway API.
    gateways: gateway::GatewayBuilds,
}

impl Daemon {
    /// A daemon over the state directory `state`.
    pub fn new(state: StateDir, options: DaemonOptions) -> Self {
        Daemon {
            state,
            options,
            sessions: Arc::default(),
            statuses: Statuses::default(),
            sync_locks: Arc::default(),
            running: Mutex::default(),
            gateways: gateway::GatewayBuilds::default(),
        }
    }

    /// Cancels every running build (at shutdown).
    pub fn cancel_all(&self) {
        for cancel in self.running.lock().unwrap().values() {
            cancel.store(true, Ordering::SeqCst);
        }
    }
}

/// Sets a build's cancel flag when its `Solve` call goes away: the client hung up or was
/// interrupted.
struct CancelOnDrop {
    daemon: Arc<Daemon>,
    reference: String,
    cancel: Arc<AtomicBool>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        self.daemon.running.lock().unwrap().remove(&self.reference);
    }
}

/// The service as tonic calls it: the daemon behind an `Arc`.
#[derive(Clone)]
pub struct Service(pub Arc<Daemon>);

type BoxStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Control for Service {
    async fn disk_usage(
        &self,
        _request: Request<DiskUsageRequest>,
    ) -> Result<Response<DiskUsageResponse>, Status> {
        let state = self.0.state.clone();
        let record = tokio::task::spawn_blocking(move || usage_records(&state))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        Ok(Response::new(DiskUsageResponse { record }))
    }

    type PruneStream = BoxStream<UsageRecord>;

    async fn prune(
        &self,
        request: Request<PruneRequest>,
    ) -> Result<Response<Self::PruneStream>, Status> {
        let all = request.into_inner().all;
        let state = self.0.state.clone();
        let freed = tokio::task::spawn_blocking(move || {
            let before = usage_records(&state)?;
            kiln_engine::store::prune(&state, all)?;
            let after = usage_records(&state)?;
            // One record per kind of data that shrank, with what it freed.
            anyhow::Ok(
                before
                    .into_iter()
                    .zip(after)
                    .filter(|(before, after)| after.size < before.size)
                    .map(|(before, after)| UsageRecord {
                        size: before.size - after.size,
                        ..before
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(format!("{e:#}")))?;
        Ok(Response::new(Box::pin(tokio_stream::iter(
            freed.into_iter().map(Ok),
        ))))
    }

    async fn solve(
        &self,
        request: Request<SolveRequest>,
    ) -> Result<Response<SolveResponse>, Status> {
        let request = request.into_inner();
        let reference = request.r#ref.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        {
            let mut running = self.0.running.lock().unwrap();
            if running.contains_key(&reference) {
                return Err(Status::already_exists(format!(
                    "a build {reference:?} is already running"
                )));
            }
            running.insert(reference.clone(), Arc::clone(&cancel));
        }
        let _cancel_on_drop = CancelOnDrop {
            daemon: Arc::clone(&self.0),
            reference: reference.clone(),
            cancel: Arc::clone(&cancel),
        };
        let log = self.0.statuses.log(&reference);
        log.start();
        // Without a frontend or a definition, the client's build function drives the
        // build through the gateway API.
        let result = if request.frontend.is_empty() && request.definition.is_none() {
            self.0.gateways.run(request, cancel).await
        } else {
            solve::solve(Arc::clone(&self.0), request, cancel).await
        };
        log.finish();
        let daemon = Arc::clone(&self.0);
        tokio::spawn(async move {
            // A client that never asks for the status leaves nothing behind for long.
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            daemon.statuses.forget(&reference);
        });
        match result {
            Ok(exporter_response) => Ok(Response::new(SolveResponse { exporter_response })),
            Err(SolveError::Request(message)) => Err(Status::invalid_argument(message)),
            Err(SolveError::Build(message)) => Err(Status::unknown(message)),
        }
    }

    type StatusStream = BoxStream<StatusResponse>;

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<Self::StatusStream>, Status> {
        let reference = request.into_inner().r#ref;
        let log = self.0.statuses.log(&reference);
        let (send, receive) = tokio::sync::mpsc::channel(64);
        let daemon = Arc::clone(&self.0);
        tokio::spawn(async move {
            if !log.wait_started(std::time::Duration::from_secs(60)).await {
                daemon.statuses.forget(&reference);
                let missing = Status::not_found(format!("no build {reference:?} started"));
                let _ = send.send(Err(missing)).await;
                return;
            }
            let mut next = 0;
            while let Some(batch) = log.next_from(next).await {
                next += batch.len();
                for message in batch {
                    if send.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receive))))
    }

    type SessionStream = BoxStream<BytesMessage>;

    async fn session(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let headers = SessionHeaders::from_metadata(request.metadata());
        if headers.id.is_empty() {
            return Err(Status::invalid_argument("a session needs an ID header"));
        }
        // The sender is dropped with the incoming stream: that is when the session closes.
        let (closed_send, closed) = tokio::sync::oneshot::channel::<()>();
        let mut closed_send = Some(closed_send);
        let on_end = tokio_stream::iter(std::iter::from_fn(move || {
            closed_send.take();
            None::<Result<BytesMessage, Status>>
        }));
        let incoming = request.into_inner().chain(on_end);
        let (io, outgoing) = bridge(incoming);
        let sessions = Arc::clone(&self.0.sessions);
        tokio::spawn(async move {
            let closed = async move {
                let _ = closed.await;
            };
            if let Err(err) = sessions.open(headers, io, closed).await {
                eprintln!("kiln serve: a session failed to open: {err:#}");
            }
        });
        Ok(Response::new(Box::pin(outgoing)))
    }

    async fn list_workers(
        &self,
        _request: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        Ok(Response::new(ListWorkersResponse {
            record: vec![worker_record()],
        }))
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            buildkit_version: Some(version()),
        }))
    }
}

/// What `Info` and `ListWorkers` say kiln is.
fn version() -> BuildkitVersion {
    BuildkitVersion {
        package: "kiln".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        revision: String::new(),
        dockerfile_version: String::new(),
    }
}

/// The one worker: this machine, the platforms it runs, its executor.
fn worker_record() -> WorkerRecord {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    WorkerRecord {
        id: format!("kiln-{hostname}"),
        labels: HashMap::from([
            (
                "org.mobyproject.buildkit.worker.executor".into(),
                "oci".into(),
            ),
            ("org.mobyproject.buildkit.worker.hostname".into(), hostname),
            (
                "org.mobyproject.buildkit.worker.snapshotter".into(),
                "overlayfs".into(),
            ),
        ]),
        // Its own platform first, then those it runs natively or under QEMU.
        platforms: kiln_worker::emulation::runnable_platforms()
            .into_iter()
            .map(|p| PbPlatform {
                architecture: p.architecture,
                os: p.os,
                variant: p.variant,
                ..PbPlatform::default()
            })
            .collect(),
        gc_policy: Vec::new(),
        buildkit_version: Some(version()),
    }
}

/// What the state directory holds, as BuildKit's usage records: one per kind of data,
/// shared when named images need it.
fn usage_records(state: &StateDir) -> Result<Vec<UsageRecord>> {
    Ok(kiln_engine::store::usage(state)?
        .into_iter()
        .map(|row| UsageRecord {
            id: row.kind.replace(' ', "-"),
            size: i64::try_from(row.size).unwrap_or(i64::MAX),
            description: format!("{} {}", row.count, row.kind),
            record_type: "regular".to_string(),
            shared: row.reclaim == kiln_engine::store::Reclaim::Never,
            ..UsageRecord::default()
        })
        .collect())
}

/// Where the daemon listens: `unix:///path` or `tcp://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A unix socket, root-owned, mode 0660.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl std::str::FromStr for Address {
    type Err = String;

    fn from_str(address: &str) -> Result<Self, String> {
        if let Some(path) = address.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(format!("{address:?} names no socket path"));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if let Some(host) = address.strip_prefix("tcp://") {
            let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
                .map_err(|e| format!("bad address {address:?}: {e}"))?
                .next()
                .ok_or_else(|| format!("{address:?} resolves to nothing"))?;
            return Ok(Address::Tcp(addr));
        }
        Err(format!(
            "unsupported address {address:?} (unix:///PATH or tcp://HOST:PORT)"
        ))
    }
}

/// How `kiln serve` listens.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// Addresses to listen on.
    pub addresses: Vec<Address>,
    /// The group that may use unix sockets (mode 0660), besides root.
    pub group: Option<u32>,
    /// Listen on TCP without authentication even on a non-loopback address.
    pub insecure_tcp: bool,
    /// Mutual TLS for the TCP listeners.
    pub tls: Option<crate::tls::TlsFiles>,
}

/// Refuses a configuration that would let anyone who reaches the port run builds.
fn check_exposure(options: &ListenOptions) -> Result<()> {
    for address in &options.addresses {
        if let Address::Tcp(addr) = address
            && !addr.ip().is_loopback()
            && options.tls.is_none()
            && !options.insecure_tcp
        {
            bail!(
                "refusing to listen on tcp://{addr} without authentication: whoever reaches \
                 it could run any build as root on this machine. Give the daemon \
                 --tlscacert, --tlscert and --tlskey (clients then need certificates from \
                 that CA), listen on a unix socket or a loopback address, or accept the \
                 risk with --insecure-tcp-without-auth"
            );
        }
    }
    Ok(())
}

/// Serves `daemon` on every address until SIGTERM or SIGINT, which cancel running builds.
pub async fn serve(daemon: Arc<Daemon>, options: ListenOptions) -> Result<()> {
    check_exposure(&options)?;
    // Builds follow each other closely: the databases stay open between them.
    kiln_cache::keep_databases_open_for(std::time::Duration::from_secs(2));
    // What a killed daemon left (its containers among them) goes now, not at the next
    // build.
    let state = daemon.state.clone();
    let oci_runtime = daemon.options.oci_runtime.clone();
    let recovered =
        tokio::task::spawn_blocking(move || kiln_engine::recover(&state, oci_runtime.as_deref()))
            .await??;
    if recovered {
        eprintln!("kiln serve: state directory checked, leftovers of killed builds removed");
    }
    if options.addresses.is_empty() {
        bail!("no address to listen on");
    }
    let (stop_send, stop) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    for address in &options.addresses {
        let service = ControlServer::from_arc(Arc::new(Service(Arc::clone(&daemon))))
            .max_decoding_message_size(64 << 20);
        let bridge = LlbBridgeServer::new(gateway::GatewayService(Arc::clone(&daemon)))
            .max_decoding_message_size(64 << 20);
        let mut stop = stop.clone();
        let shutdown = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        let router = crate::session::server()
            .add_service(service.clone())
            .add_service(bridge.clone());
        let server = match address {
            Address::Unix(path) => {
                let listener = bind_unix(path, options.group)?;
                eprintln!("kiln serve: listening on unix://{}", path.display());
                tokio::spawn(
                    router
                        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown),
                )
            }
            Address::Tcp(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on tcp://{addr}"))?;
                let router = match &options.tls {
                    Some(tls) => crate::session::server()
                        .tls_config(tls.server()?)
                        .context("bad TLS configuration")?
                        .add_service(service.clone())
                        .add_service(bridge.clone()),
                    None => router,
                };
                eprintln!(
                    "kiln serve: listening on tcp://{}{}",
                    listener.local_addr()?,
                    if options.tls.is_some() {
                        " (mutual TLS)"
                    } else {
                        ""
                    }
                );
                tokio::spawn(
                    router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown),
                )
            }
        };
        servers.push(server);
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("kiln serve: stopping; running builds are cancelled");
    daemon.cancel_all();
    let _ = stop_send.send(true);
    for server in servers {
        server.await??;
    }
    for address in &options.addresses {
        if let Address::Unix(path) = address {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

/// Binds a unix socket at `path` (replacing a stale one), root-owned, mode 0660, group
/// `group` when given.
fn bind_unix(path: &std::path::Path, group: Option<u32>) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("{} is in use by another server", path.display());
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on unix://{}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    std::os::unix::fs::chown(path, Some(0), group)
        .with_context(|| format!("cannot give {} to root", path.display()))?;
    Ok(listener)
}
