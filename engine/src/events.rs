//! The progress of a build as a stream of typed events: what the terminal displays render
//! locally, and what a remote builder turns into BuildKit's status messages.

use kiln_cache::Digest;
use kiln_solver::{Definition, ProgressEvent, ProgressKind};

/// One thing that happened during a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// The Dockerfile is lowered: the build has this many steps (vertices).
    Solving {
        /// How many vertices the build's graph has.
        vertices: usize,
    },
    /// A step changed state or printed output.
    Step {
        /// The vertex digest, which names the step across events.
        vertex: Digest,
        /// Its display name, BuildKit-style (`[2/3] RUN make`).
        name: String,
        /// What happened.
        kind: ProgressKind,
    },
    /// A message that belongs to no step (pulls and pushes).
    Notice(String),
}

impl BuildEvent {
    /// The solver's `event`, named from `definition`.
    pub(crate) fn step(definition: &Definition, event: ProgressEvent) -> Self {
        BuildEvent::Step {
            vertex: event.vertex,
            name: definition
                .meta(&event.vertex)
                .map(|m| m.description.clone())
                .unwrap_or_default(),
            kind: event.kind,
        }
    }
}
