//! kiln's worker executes the solver's ops: sources (build context, images), overlayfs
//! snapshots, RUN in an OCI sandbox, COPY/ADD file ops and layer diffs.
//!
//! The crate is part of the workspace layout from the start so that the dependency arrows
//! (`cli → worker → (solver, cache)`) are fixed before code lands; its executors arrive with
//! the local build engine (issue 3). It exports nothing yet.
