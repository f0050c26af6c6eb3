//! The sessions clients have opened, by ID: a gRPC channel to each client through its
//! tunnel, for the daemon's calls back (file sync, file send).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::DuplexStream;
use tokio::sync::Notify;
use tonic::transport::Channel;

use crate::session::SessionHeaders;

/// An open session.
#[derive(Debug)]
pub struct Session {
    /// What the client said about it.
    pub headers: SessionHeaders,
    /// Calls to the client.
    pub channel: Channel,
}

impl Session {
    /// Whether the client serves `method` (`/package.Service/Method`, compared without
    /// regard to case, as BuildKit lowers the method names it lists).
    pub fn serves(&self, method: &str) -> bool {
        self.headers
            .methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method))
    }
}

/// Open sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Arc<Session>>>,
    changed: Notify,
}

impl Sessions {
    /// Connects to the client through `io` (the tunnel) and registers the session until
    /// `closed` resolves.
    pub async fn open(
        self: Arc<Self>,
        headers: SessionHeaders,
        io: DuplexStream,
        closed: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let channel = connect(io).await?;
        let id = headers.id.clone();
        let session = Arc::new(Session { headers, channel });
        self.open.lock().unwrap().insert(id.clone(), session);
        self.changed.notify_waiters();
        tokio::spawn(async move {
            closed.await;
            self.open.lock().unwrap().remove(&id);
        });
        Ok(())
    }

    /// The session `id`, waiting up to `patience` for it to open (a client starts its
    /// session and its solve at the same time).
    pub async fn get(&self, id: &str, patience: Duration) -> Option<Arc<Session>> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let changed = self.changed.notified();
            if let Some(session) = self.open.lock().unwrap().get(id) {
                return Some(Arc::clone(session));
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }
}

/// A gRPC channel over the tunnel's byte connection (HTTP/2 with prior knowledge).
async fn connect(io: DuplexStream) -> anyhow::Result<Channel> {
    let slot = Arc::new(Mutex::new(Some(io)));
    let channel = crate::session::endpoint("http://session".into())?
        .connect_with_connector(tower::service_fn(move |_| {
            let io = slot.lock().unwrap().take();
            async move {
                io.map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the session's connection is taken"))
            }
        }))
        .await?;
    Ok(channel)
}
