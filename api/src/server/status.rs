//! Build progress as BuildKit's `StatusResponse` messages: each build's messages are kept
//! until its `Status` stream has read them all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use kiln_engine::BuildEvent;
use kiln_solver::{LogStream, ProgressKind};
use tokio::sync::Notify;

use crate::control::{StatusResponse, Vertex, VertexLog};

/// The status messages of one build.
#[derive(Debug, Default)]
pub struct StatusLog {
    messages: Mutex<Vec<StatusResponse>>,
    /// Vertices as last sent, so that each update repeats their name and start.
    vertices: Mutex<HashMap<String, Vertex>>,
    started: AtomicBool,
    done: AtomicBool,
    changed: Notify,
}

impl StatusLog {
    /// Records `event` as status messages.
    pub fn record(&self, event: &BuildEvent) {
        let now = Some(prost_types::Timestamp::from(SystemTime::now()));
        let message = match event {
            BuildEvent::Solving { .. } => return,
            BuildEvent::Notice(text) => {
                // Messages that belong to no step become a step of their own, as BuildKit
                // shows pulls and pushes.
                let digest = format!("notice:{}", self.messages.lock().unwrap().len());
                StatusResponse {
                    vertexes: vec![Vertex {
                        digest,
                        name: text.clone(),
                        started: now,
                        completed: now,
                        ..Vertex::default()
                    }],
                    ..StatusResponse::default()
                }
            }
            BuildEvent::Step { vertex, name, kind } => {
                let digest = vertex.to_string();
                let mut vertices = self.vertices.lock().unwrap();
                let state = vertices.entry(digest.clone()).or_insert_with(|| Vertex {
                    digest: digest.clone(),
                    name: name.clone(),
                    started: now,
                    ..Vertex::default()
                });
                match kind {
                    ProgressKind::Started => {}
                    ProgressKind::Cached => state.cached = true,
                    ProgressKind::Log(stream, data) => {
                        let log = VertexLog {
                            vertex: digest,
                            timestamp: now,
                            stream: match stream {
                                LogStream::Stdout => 1,
                                LogStream::Stderr => 2,
                            },
                            msg: data.clone(),
                        };
                        drop(vertices);
                        return self.push(StatusResponse {
                            logs: vec![log],
                            ..StatusResponse::default()
                        });
                    }
                    ProgressKind::Completed(_) => state.completed = now,
                    ProgressKind::Failed(error, _) => {
                        state.completed = now;
                        state.error = error.clone();
                    }
                    ProgressKind::Cancelled => {
                        state.completed = now;
                        state.error = "context canceled".to_string();
                    }
                }
                StatusResponse {
                    vertexes: vec![state.clone()],
                    ..StatusResponse::default()
                }
            }
        };
        self.push(message);
    }

    fn push(&self, message: StatusResponse) {
        self.messages.lock().unwrap().push(message);
        self.changed.notify_waiters();
    }

    /// Marks the build started: its `Solve` arrived.
    pub fn start(&self) {
        self.started.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Waits up to `patience` for the build's `Solve` (a client asks for the status and
    /// solves at the same time); whether it came.
    pub async fn wait_started(&self, patience: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let changed = self.changed.notified();
            if self.started.load(Ordering::SeqCst) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.started.load(Ordering::SeqCst);
            }
        }
    }

    /// Marks the build finished: its status stream ends once read.
    pub fn finish(&self) {
        self.done.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// The messages from `from` on; waits for new ones while the build runs. `None` once
    /// the build is finished and everything was read.
    pub async fn next_from(&self, from: usize) -> Option<Vec<StatusResponse>> {
        loop {
            let changed = self.changed.notified();
            {
                let messages = self.messages.lock().unwrap();
                if messages.len() > from {
                    return Some(messages[from..].to_vec());
                }
            }
            if self.done.load(Ordering::SeqCst) {
                return None;
            }
            changed.await;
        }
    }
}

/// The status logs of recent builds, by their `Ref`.
#[derive(Debug, Default)]
pub struct Statuses {
    logs: Mutex<HashMap<String, Arc<StatusLog>>>,
}

impl Statuses {
    /// The log of build `reference`, made if needed (the `Status` call may come first).
    pub fn log(&self, reference: &str) -> Arc<StatusLog> {
        Arc::clone(
            self.logs
                .lock()
                .unwrap()
                .entry(reference.to_string())
                .or_default(),
        )
    }

    /// Forgets build `reference`'s log.
    pub fn forget(&self, reference: &str) {
        self.logs.lock().unwrap().remove(reference);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::StatusLog;

    #[tokio::test]
    async fn a_status_call_waits_for_its_solve_but_not_forever() {
        let log = Arc::new(StatusLog::default());
        assert!(!log.wait_started(Duration::from_millis(20)).await);
        let starter = Arc::clone(&log);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            starter.start();
        });
        assert!(log.wait_started(Duration::from_secs(10)).await);
    }
}
