//! What a client serves the daemon through its session: its local directories (FileSync),
//! a place for outputs (FileSend), registry credentials (Auth), secrets (Secrets), SSH
//! agents (SSH) and a health check.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use prost::Message as _;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::filesync::auth_server::{Auth, AuthServer};
use crate::filesync::file_sync_server::{FileSync, FileSyncServer};
use crate::filesync::{BytesMessage, CredentialsRequest, CredentialsResponse};
use crate::fsutil::Packet;
use crate::health::health_check_response::ServingStatus;
use crate::health::health_server::{Health, HealthServer};
use crate::health::{HealthCheckRequest, HealthCheckResponse};
use crate::raw::RawMessage;
use crate::raw::file_send::file_send_server::{FileSend, FileSendServer};
use crate::secrets::secrets_server::{Secrets, SecretsServer};
use crate::secrets::{GetSecretRequest, GetSecretResponse};
use crate::sshforward::ssh_server::{Ssh, SshServer};
use crate::sshforward::{BytesMessage as AgentBytes, CheckAgentRequest, CheckAgentResponse};
use crate::transfer::{self, Selection};
use kiln_engine::{LocalSecrets, LocalSshAgents, SecretStore as _, SshAgents as _};
use kiln_registry::credentials::Credential;

/// The methods a client's session serves, as its headers list them.
pub const METHODS: [&str; 7] = [
    "/moby.filesync.v1.FileSync/DiffCopy",
    "/moby.filesync.v1.FileSend/DiffCopy",
    "/moby.filesync.v1.Auth/Credentials",
    "/moby.buildkit.secrets.v1.Secrets/GetSecret",
    "/moby.sshforward.v1.SSH/CheckAgent",
    "/moby.sshforward.v1.SSH/ForwardAgent",
    "/grpc.health.v1.Health/Check",
];

/// Where an output that comes back to the client goes.
#[derive(Debug, Clone)]
pub enum OutputTarget {
    /// An archive written to this file.
    File(PathBuf),
    /// A directory tree received into this directory.
    Directory(PathBuf),
}

type PacketStream = Pin<Box<dyn Stream<Item = Result<Packet, Status>> + Send>>;
type RawStream = Pin<Box<dyn Stream<Item = Result<RawMessage, Status>> + Send>>;

/// The values of metadata `key`, percent-decoded when BuildKit's `KEY-encoded` marker
/// says so.
fn values(metadata: &MetadataMap, key: &str) -> Vec<String> {
    let encoded = metadata
        .get(format!("{key}-encoded").as_str())
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "1" || v == "true");
    metadata
        .get_all(key)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            if encoded {
                percent_decode(v)
            } else {
                v.to_string()
            }
        })
        .collect()
}

/// Go's `url.QueryUnescape`.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&value[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The client's local directories, by the names the daemon asks for.
pub struct Directories(pub HashMap<String, PathBuf>);

#[tonic::async_trait]
impl FileSync for Directories {
    type DiffCopyStream = PacketStream;

    async fn diff_copy(
        &self,
        request: Request<Streaming<Packet>>,
    ) -> Result<Response<PacketStream>, Status> {
        let metadata = request.metadata();
        let name = values(metadata, "dir-name")
            .into_iter()
            .next()
            .unwrap_or_default();
        let dir = self
            .0
            .get(&name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no access allowed to dir {name:?}")))?;
        let selection = Selection {
            excludes: values(metadata, "exclude-patterns"),
            includes: values(metadata, "include-patterns"),
        };
        let incoming = request.into_inner();
        let (outgoing, packets) = mpsc::channel(1024);
        tokio::spawn(async move {
            // A failure reaches the daemon as an ERR packet.
            let _ = transfer::send(&dir, &selection, incoming, outgoing).await;
        });
        Ok(Response::new(Box::pin(
            ReceiverStream::new(packets).map(Ok),
        )))
    }
}

/// Where outputs go, by the index of their exporter in the solve request.
pub struct Outputs(pub Arc<HashMap<usize, OutputTarget>>);

#[tonic::async_trait]
impl FileSend for Outputs {
    type DiffCopyStream = RawStream;

    async fn diff_copy(
        &self,
        request: Request<Streaming<RawMessage>>,
    ) -> Result<Response<RawStream>, Status> {
        let id: usize = values(request.metadata(), "buildkit-attachable-exporter-id")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let target = self
            .0
            .get(&id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("exporter {id} not found")))?;
        let incoming = request.into_inner();
        let (answers, answered) = mpsc::channel::<Result<RawMessage, Status>>(64);
        match target {
            OutputTarget::File(path) => {
                tokio::spawn(async move {
                    if let Err(err) = write_archive(&path, incoming).await {
                        let _ = answers
                            .send(Err(Status::internal(format!("{err:#}"))))
                            .await;
                    }
                });
            }
            OutputTarget::Directory(dir) => {
                let packets = incoming.map(|message| {
                    message.and_then(|raw| {
                        Packet::decode(raw.data.as_slice())
                            .map_err(|e| Status::invalid_argument(e.to_string()))
                    })
                });
                let (requests, mut to_send) = mpsc::channel::<Packet>(64);
                tokio::spawn(async move {
                    while let Some(packet) = to_send.recv().await {
                        let raw = RawMessage {
                            data: packet.encode_to_vec(),
                        };
                        if answers.send(Ok(raw)).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let _ = transfer::receive(&dir, packets, requests).await;
                });
            }
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(answered))))
    }
}

/// Writes an archive's byte messages into `path`.
async fn write_archive(
    path: &std::path::Path,
    mut incoming: Streaming<RawMessage>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut file = tokio::fs::File::create(path)
        .await
        .with_context(|| format!("cannot create {}", path.display()))?;
    while let Some(message) = incoming.next().await {
        let message = BytesMessage::decode(message?.data.as_slice())?;
        file.write_all(&message.data)
            .await
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    file.flush().await?;
    Ok(())
}

/// Registry credentials from this machine's docker configuration.
pub struct Credentials;

#[tonic::async_trait]
impl Auth for Credentials {
    async fn credentials(
        &self,
        request: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        let host = request.into_inner().host;
        // An identity token goes as a secret without a user name, as BuildKit's client
        // sends it.
        let (username, secret) =
            tokio::task::spawn_blocking(
                move || match kiln_registry::credentials::stored_credential(&host) {
                    Some(Credential::Password { user, password }) => (user, password),
                    Some(Credential::IdentityToken(token)) => (String::new(), token),
                    None => Default::default(),
                },
            )
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(CredentialsResponse { username, secret }))
    }
}

/// The build's `--secret`s, read on this machine when the daemon asks for one.
pub struct ClientSecrets(pub LocalSecrets);

#[tonic::async_trait]
impl Secrets for ClientSecrets {
    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<GetSecretResponse>, Status> {
        let id = request.into_inner().id;
        match self.0.secret(&id) {
            Ok(Some(data)) => Ok(Response::new(GetSecretResponse { data })),
            Ok(None) => Err(Status::not_found(format!("secret {id} not found"))),
            Err(e) => Err(Status::internal(format!("{e:#}"))),
        }
    }
}

/// The build's `--ssh` agents, lent to the daemon's steps through a read-only relay (as
/// BuildKit's client lends them).
pub struct ClientSsh(pub Arc<LocalSshAgents>);

type AgentByteStream = Pin<Box<dyn Stream<Item = Result<AgentBytes, Status>> + Send>>;

/// An empty agent id means `default`, as in BuildKit.
fn agent_id(id: Option<String>) -> String {
    id.filter(|id| !id.is_empty())
        .unwrap_or_else(|| kiln_engine::SSH_DEFAULT_ID.to_string())
}

#[tonic::async_trait]
impl Ssh for ClientSsh {
    async fn check_agent(
        &self,
        request: Request<CheckAgentRequest>,
    ) -> Result<Response<CheckAgentResponse>, Status> {
        let id = agent_id(Some(request.into_inner().id));
        self.0
            .check(&id)
            .map_err(|e| Status::not_found(format!("{e:#}")))?;
        Ok(Response::new(CheckAgentResponse {}))
    }

    type ForwardAgentStream = AgentByteStream;

    async fn forward_agent(
        &self,
        request: Request<Streaming<AgentBytes>>,
    ) -> Result<Response<Self::ForwardAgentStream>, Status> {
        let id = agent_id(
            values(request.metadata(), crate::SSH_ID_METADATA)
                .into_iter()
                .next(),
        );
        let agents = Arc::clone(&self.0);
        let mut agent = tokio::task::spawn_blocking(move || agents.connect(&id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::not_found(format!("{e:#}")))?;
        let incoming = request.into_inner().map(|m| m.map(|m| m.data));
        let (answers, outgoing) = mpsc::channel(16);
        let mut daemon =
            crate::pipe::BlockingPipe::new(&tokio::runtime::Handle::current(), incoming, answers);
        tokio::task::spawn_blocking(move || {
            let _ = kiln_engine::relay(&mut daemon, agent.as_mut());
        });
        let answers = ReceiverStream::new(outgoing).map(|data| Ok(AgentBytes { data }));
        Ok(Response::new(Box::pin(answers)))
    }
}

/// Always serving: the daemon checks that the session is alive.
pub struct Alive;

#[tonic::async_trait]
impl Health for Alive {
    async fn check(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }
}

/// The router of everything a session serves.
pub fn router(
    directories: HashMap<String, PathBuf>,
    outputs: Arc<HashMap<usize, OutputTarget>>,
    secrets: LocalSecrets,
    ssh: Arc<LocalSshAgents>,
) -> tonic::transport::server::Router {
    crate::session::server()
        .add_service(FileSyncServer::new(Directories(directories)))
        .add_service(FileSendServer::new(Outputs(outputs)))
        .add_service(AuthServer::new(Credentials))
        .add_service(SecretsServer::new(ClientSecrets(secrets)))
        .add_service(SshServer::new(ClientSsh(ssh)))
        .add_service(HealthServer::new(Alive))
}
