//! BuildKit's status messages back into the engine's progress events, so that the same
//! displays draw local and remote builds.

use std::collections::HashMap;
use std::time::Duration;

use kiln_cache::Digest;
use kiln_engine::BuildEvent;
use kiln_solver::{LogStream, ProgressKind};

use crate::control::{StatusResponse, Vertex};

/// What has been reported of each vertex so far.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    started: bool,
    cached: bool,
    finished: bool,
}

/// Turns status messages into events, each state change once.
#[derive(Debug, Default)]
pub struct Translator {
    seen: HashMap<String, Seen>,
    names: HashMap<String, String>,
}

/// How long a vertex took, from its timestamps.
fn took(vertex: &Vertex) -> Duration {
    match (&vertex.started, &vertex.completed) {
        (Some(start), Some(end)) => {
            let nanos =
                (end.seconds - start.seconds) * 1_000_000_000 + i64::from(end.nanos - start.nanos);
            Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
        }
        _ => Duration::ZERO,
    }
}

/// A vertex digest as kiln's digest type; BuildKit's are `sha256:…` too, anything else
/// (such as kiln's notices) gets a digest of its own.
fn digest_of(vertex: &str) -> Digest {
    vertex
        .parse()
        .unwrap_or_else(|_| Digest::of(vertex.as_bytes()))
}

impl Translator {
    /// The events that `message` adds.
    pub fn events(&mut self, message: StatusResponse) -> Vec<BuildEvent> {
        let mut events = Vec::new();
        for vertex in message.vertexes {
            if vertex.digest.starts_with("notice:") {
                if !self.seen.contains_key(&vertex.digest) {
                    self.seen.insert(vertex.digest.clone(), Seen::default());
                    events.push(BuildEvent::Notice(vertex.name.clone()));
                }
                continue;
            }
            self.names
                .insert(vertex.digest.clone(), vertex.name.clone());
            let seen = self.seen.entry(vertex.digest.clone()).or_default();
            let step = |kind| BuildEvent::Step {
                vertex: digest_of(&vertex.digest),
                name: vertex.name.clone(),
                kind,
            };
            if vertex.started.is_some() && !seen.started {
                seen.started = true;
                events.push(step(ProgressKind::Started));
            }
            if vertex.cached && !seen.cached {
                seen.cached = true;
                if !seen.started {
                    seen.started = true;
                    events.push(step(ProgressKind::Started));
                }
                events.push(step(ProgressKind::Cached));
            }
            if vertex.completed.is_some() && !seen.finished {
                seen.finished = true;
                events.push(step(match vertex.error.as_str() {
                    "" => ProgressKind::Completed(took(&vertex)),
                    "context canceled" => ProgressKind::Cancelled,
                    error => ProgressKind::Failed(error.to_string(), took(&vertex)),
                }));
            }
        }
        for log in message.logs {
            let name = self.names.get(&log.vertex).cloned().unwrap_or_default();
            events.push(BuildEvent::Step {
                vertex: digest_of(&log.vertex),
                name,
                kind: ProgressKind::Log(
                    if log.stream == 2 {
                        LogStream::Stderr
                    } else {
                        LogStream::Stdout
                    },
                    log.msg,
                ),
            });
        }
        events
    }
}
