//! The daemon's calls back to a client for files: syncing its local directories in
//! (`FileSync.DiffCopy`), and sending outputs out (`FileSend.DiffCopy`).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use kiln_engine::{ClientTarget, LocalSources};
use kiln_registry::credentials::Credential;
use tokio::runtime::Handle;
use tokio::sync::{OwnedMutexGuard, mpsc};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

use super::sessions::Session;
use crate::filesync::BytesMessage;
use crate::filesync::file_sync_client::FileSyncClient;
use crate::fsutil::Packet;
use crate::transfer::{self, ReceiveStats};

const FILE_SYNC: &str = "/moby.filesync.v1.FileSync/DiffCopy";
const FILE_SEND: &str = "/moby.filesync.v1.FileSend/DiffCopy";

/// Metadata keys of file transfers, as BuildKit names them.
const KEY_DIR_NAME: &str = "dir-name";
const KEY_EXCLUDES: &str = "exclude-patterns";
const KEY_INCLUDES: &str = "include-patterns";
const KEY_EXPORTER_ID: &str = "buildkit-attachable-exporter-id";

/// Adds `values` under `key`, percent-encoded (with BuildKit's `KEY-encoded: 1` marker)
/// when one is not plain printable ASCII.
fn add_values(metadata: &mut MetadataMap, key: &'static str, values: &[String]) -> Result<()> {
    let plain = |v: &String| v.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'%');
    let encode = !values.iter().all(plain);
    for value in values {
        let value = if encode {
            percent_encode(value)
        } else {
            value.clone()
        };
        metadata.append(key, AsciiMetadataValue::try_from(value)?);
    }
    if encode {
        let marker: &'static str = match key {
            KEY_EXCLUDES => "exclude-patterns-encoded",
            KEY_INCLUDES => "include-patterns-encoded",
            _ => "dir-name-encoded",
        };
        metadata.insert(marker, AsciiMetadataValue::from_static("1"));
    }
    Ok(())
}

/// Go's `url.QueryEscape`.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Syncs the client's local directory `name` (what `excludes` and `includes` select)
/// into `dest`, transferring only what changed since `dest` was last synced.
pub async fn sync_dir(
    session: &Session,
    name: &str,
    excludes: &[String],
    includes: &[String],
    dest: &Path,
) -> Result<ReceiveStats> {
    if !session.serves(FILE_SYNC) {
        bail!("the client shares no local directories (its session does not serve FileSync)");
    }
    let (outgoing, requests) = mpsc::channel::<Packet>(1024);
    let mut request = tonic::Request::new(ReceiverStream::new(requests));
    let metadata = request.metadata_mut();
    add_values(metadata, KEY_DIR_NAME, &[name.to_string()])?;
    add_values(metadata, KEY_EXCLUDES, excludes)?;
    add_values(metadata, KEY_INCLUDES, includes)?;
    let response = FileSyncClient::new(session.channel.clone())
        .diff_copy(request)
        .await
        .with_context(|| format!("cannot read the client's directory {name:?}"))?;
    transfer::receive(dest, response.into_inner(), outgoing)
        .await
        .with_context(|| format!("cannot sync the client's directory {name:?}"))
}

/// The client's local directories as the engine's sources: each is synced once per build
/// into the daemon's copy for (client key, name), which the build holds alone.
pub struct SessionSources {
    /// The runtime that serves the session (sources are read from build threads).
    pub handle: Handle,
    /// The client.
    pub session: Arc<Session>,
    /// Where synced copies live (`<state>/sessions`).
    pub root: PathBuf,
    /// Locks of synced copies, by directory, shared by all builds.
    pub locks: Arc<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>>,
    /// This build's synced directories, and the locks it holds on them.
    pub synced: Mutex<HashMap<String, (PathBuf, OwnedMutexGuard<()>)>>,
    /// The build's status log, which hears what each transfer moved.
    pub log: Arc<super::status::StatusLog>,
}

impl SessionSources {
    /// The directory that keeps the client's `name` between builds.
    pub fn copy_of(&self, name: &str) -> PathBuf {
        let key = format!("{}\0{name}", self.session.headers.shared_key);
        self.root.join(kiln_cache::Digest::of(key.as_bytes()).hex())
    }
}

impl LocalSources for SessionSources {
    fn directory(&self, name: &str, excludes: &[String]) -> Result<PathBuf> {
        if let Some((dir, _)) = self.synced.lock().unwrap().get(name) {
            return Ok(dir.clone());
        }
        let dir = self.copy_of(name);
        let lock = Arc::clone(self.locks.lock().unwrap().entry(dir.clone()).or_default());
        let (guard, moved) = self.handle.block_on(async {
            let guard = lock.lock_owned().await;
            let moved = sync_dir(&self.session, name, excludes, &[], &dir).await?;
            anyhow::Ok((guard, moved))
        })?;
        self.log.record(&kiln_engine::BuildEvent::Notice(format!(
            "transferring {name}: {} of {} files changed, {} bytes",
            moved.files_requested, moved.entries, moved.bytes
        )));
        self.synced
            .lock()
            .unwrap()
            .insert(name.to_string(), (dir.clone(), guard));
        Ok(dir)
    }
}

const AUTH: &str = "/moby.filesync.v1.Auth/Credentials";

/// Registry credentials from the build's client (its docker configuration), asked for
/// through its session: a shared builder never lends its own to a client's build.
#[derive(Debug)]
pub struct SessionCredentials {
    /// The runtime that serves the session (registries are spoken to from build threads).
    pub handle: Handle,
    /// The client.
    pub session: Arc<Session>,
}

impl kiln_registry::credentials::CredentialSource for SessionCredentials {
    fn credential_for(&self, domain: &str) -> Option<(String, String)> {
        self.credential(domain)?.into_password()
    }

    /// The client's answer; a secret without a user name is an identity token, as
    /// BuildKit's client sends one (and containerd's resolver reads it).
    fn credential(&self, domain: &str) -> Option<Credential> {
        if !self.session.serves(AUTH) {
            return None;
        }
        // BuildKit's name for Docker Hub's registry, which clients know.
        let host = if domain == kiln_image::DOCKER_HUB {
            kiln_registry::credentials::DOCKER_HUB_REGISTRY
        } else {
            domain
        };
        let request = crate::filesync::CredentialsRequest {
            host: host.to_string(),
        };
        let answer = self.handle.block_on(
            crate::filesync::auth_client::AuthClient::new(self.session.channel.clone())
                .credentials(request),
        );
        let answer = answer.ok()?.into_inner();
        match (answer.username.is_empty(), answer.secret.is_empty()) {
            (true, true) => None,
            (true, false) => Some(Credential::IdentityToken(answer.secret)),
            _ => Some(Credential::Password {
                user: answer.username,
                password: answer.secret,
            }),
        }
    }
}

const GET_SECRET: &str = "/moby.buildkit.secrets.v1.Secrets/GetSecret";

/// A build's secrets, asked of the client's session when a step mounts one (never kept by
/// the daemon).
pub struct SessionSecrets {
    /// The runtime that serves the session.
    pub handle: Handle,
    /// The client.
    pub session: Arc<Session>,
}

impl kiln_engine::SecretStore for SessionSecrets {
    fn secret(&self, id: &str) -> Result<Option<Vec<u8>>> {
        if !self.session.serves(GET_SECRET) {
            return Ok(None);
        }
        let request = crate::secrets::GetSecretRequest {
            id: id.to_string(),
            annotations: HashMap::new(),
        };
        let answer = self.handle.block_on(
            crate::secrets::secrets_client::SecretsClient::new(self.session.channel.clone())
                .get_secret(request),
        );
        match answer {
            Ok(answer) => {
                let data = answer.into_inner().data;
                if data.len() > kiln_engine::MAX_SECRET_SIZE {
                    bail!("secret {id} is too big");
                }
                Ok(Some(data))
            }
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => bail!("secret {id}: the client failed: {}", status.message()),
        }
    }
}

/// An output that goes to the client: its exporter's index in the solve request names
/// the client's target.
pub struct SessionTarget {
    /// The runtime that serves the session.
    pub handle: Handle,
    /// The client.
    pub session: Arc<Session>,
    /// The exporter's index.
    pub exporter: usize,
}

impl SessionTarget {
    fn request<T>(&self, stream: T) -> Result<tonic::Request<T>> {
        if !self.session.serves(FILE_SEND) {
            bail!("the client takes no outputs (its session does not serve FileSend)");
        }
        let mut request = tonic::Request::new(stream);
        request.metadata_mut().insert(
            KEY_EXPORTER_ID,
            AsciiMetadataValue::try_from(self.exporter.to_string())?,
        );
        Ok(request)
    }

    /// Calls `FileSend.DiffCopy` with messages of type `M` (the method's declared
    /// `BytesMessage`, or fsutil packets for directories), sending what `outgoing` gets;
    /// returns the client's answers. The call runs on its own task: the client answers
    /// only once it has read, so nothing may wait for its answer before sending.
    fn call<M>(&self, outgoing: mpsc::Receiver<M>) -> Result<ReceiverStream<Result<M, Status>>>
    where
        M: prost::Message + Default + Send + 'static,
    {
        let request = self.request(ReceiverStream::new(outgoing))?;
        let channel = self.session.channel.clone();
        let (answers, incoming) = mpsc::channel(64);
        self.handle.spawn(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            if let Err(err) = grpc.ready().await {
                let gone = Status::unavailable(format!("the client's session is gone: {err}"));
                let _ = answers.send(Err(gone)).await;
                return;
            }
            let codec = tonic_prost::ProstCodec::<M, M>::default();
            match grpc
                .streaming(request, PathAndQuery::from_static(FILE_SEND), codec)
                .await
            {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    while let Some(message) = stream.next().await {
                        if answers.send(message).await.is_err() {
                            break;
                        }
                    }
                }
                Err(status) => {
                    let _ = answers.send(Err(status)).await;
                }
            }
        });
        Ok(ReceiverStream::new(incoming))
    }
}

impl ClientTarget for SessionTarget {
    fn send_archive(&self, write: &mut dyn FnMut(&mut dyn Write) -> Result<()>) -> Result<()> {
        let (outgoing, messages) = mpsc::channel::<BytesMessage>(16);
        let mut incoming = self.call(messages)?;
        let mut chunks = ChunkWriter {
            outgoing,
            buffer: Vec::with_capacity(CHUNK),
        };
        write(&mut chunks)?;
        chunks.flush()?;
        drop(chunks);
        // The client closes its side once it has written everything.
        self.handle.block_on(async {
            while let Some(message) = incoming.next().await {
                message.context("the client failed to take the output")?;
            }
            anyhow::Ok(())
        })
    }

    fn send_directory(&self, dir: &Path) -> Result<()> {
        let (outgoing, packets) = mpsc::channel::<Packet>(64);
        let incoming = self.call(packets)?;
        self.handle.block_on(transfer::send(
            dir,
            &transfer::Selection::default(),
            incoming,
            outgoing,
        ))
    }
}

/// Bytes per message of an archive sent to the client.
const CHUNK: usize = 256 * 1024;

/// Cuts what is written into messages for the client.
struct ChunkWriter {
    outgoing: mpsc::Sender<BytesMessage>,
    buffer: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buffer.len();
        let n = data.len().min(room);
        self.buffer.extend_from_slice(&data[..n]);
        if self.buffer.len() == CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        self.outgoing
            .blocking_send(BytesMessage { data })
            .map_err(|_| std::io::Error::other("the client stopped taking the output"))
    }
}
