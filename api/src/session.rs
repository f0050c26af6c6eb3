//! BuildKit's session tunnel: `Control.Session` is a stream of byte messages in each
//! direction, over which the client serves gRPC (file sync, file send, auth) to the
//! daemon, as if over a connection of its own ("grpchijack").

use std::collections::HashMap;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio_stream::{Stream, StreamExt as _};

use crate::control::BytesMessage;

/// The metadata header with the session's ID.
pub const HEADER_ID: &str = "x-docker-expose-session-uuid";
/// The metadata header with the session's name.
pub const HEADER_NAME: &str = "x-docker-expose-session-name";
/// The metadata header with the key that identifies the client's files across sessions.
pub const HEADER_SHARED_KEY: &str = "x-docker-expose-session-sharedkey";
/// The metadata header listing the gRPC methods the client serves (one value each).
pub const HEADER_METHOD: &str = "x-docker-expose-session-grpc-method";

/// HTTP/2 flow-control windows of every builder connection, the tunnel's included: a
/// context transfer streams thousands of small messages, which the default 64 KiB
/// windows would hold up on round trips through the tunnel.
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// A gRPC server with kiln's flow-control windows.
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
}

/// A gRPC endpoint at `uri` with kiln's flow-control windows.
pub fn endpoint(uri: String) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(uri)?
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW))
}

/// Bytes buffered between the stream and the connection in each direction.
const BUFFER: usize = 256 * 1024;

/// Turns the tunnel's incoming messages into one end of a byte connection; the bytes
/// written to that end come back as the returned stream of messages to send.
pub fn bridge(
    incoming: impl Stream<Item = Result<BytesMessage, tonic::Status>> + Send + Unpin + 'static,
) -> (
    DuplexStream,
    impl Stream<Item = Result<BytesMessage, tonic::Status>> + Send + 'static,
) {
    let (ours, theirs) = tokio::io::duplex(BUFFER);
    let (mut read, mut write) = tokio::io::split(ours);
    tokio::spawn(async move {
        let mut incoming = incoming;
        while let Some(Ok(message)) = incoming.next().await {
            if write.write_all(&message.data).await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    });
    let (send, outgoing) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let mut data = vec![0u8; 32 * 1024];
            match read.read(&mut data).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    data.truncate(n);
                    if send.send(Ok(BytesMessage { data })).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    (
        theirs,
        tokio_stream::wrappers::ReceiverStream::new(outgoing),
    )
}

/// What a session's metadata says about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionHeaders {
    /// The session ID, which a `Solve` names.
    pub id: String,
    /// Its name (e.g. the client's directory).
    pub name: String,
    /// The key under which the client's synced files are kept across sessions.
    pub shared_key: String,
    /// Methods the client serves, as `/package.Service/Method`.
    pub methods: Vec<String>,
}

impl SessionHeaders {
    /// Reads the headers of a `Control.Session` call.
    pub fn from_metadata(metadata: &tonic::metadata::MetadataMap) -> Self {
        let one = |key: &str| {
            metadata
                .get(key)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        SessionHeaders {
            id: one(HEADER_ID),
            name: one(HEADER_NAME),
            shared_key: one(HEADER_SHARED_KEY),
            methods: metadata
                .get_all(HEADER_METHOD)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string)
                .collect(),
        }
    }

    /// The headers as request metadata, for a client opening a session.
    pub fn to_metadata(&self) -> HashMap<&'static str, Vec<String>> {
        HashMap::from([
            (HEADER_ID, vec![self.id.clone()]),
            (HEADER_NAME, vec![self.name.clone()]),
            (HEADER_SHARED_KEY, vec![self.shared_key.clone()]),
            (HEADER_METHOD, self.methods.clone()),
        ])
    }
}
