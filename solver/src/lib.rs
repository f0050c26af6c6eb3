//! kiln's solver: the op DAG that frontends produce and workers execute.
//!
//! A build is a [`Definition`]: a set of [`Vertex`]es, each an [`Op`] plus the digests of the
//! vertices it reads. A vertex's digest is the sha256 of a canonical encoding of its op and its
//! inputs' digests, so identical work is one vertex wherever it appears.

mod dag;
mod op;
mod platform;
mod scheduler;
mod strconv;

pub use dag::{DagError, Definition, DefinitionBuilder, Vertex, VertexMeta};
pub use op::{
    ChownOpt, CopyAction, ExecOp, ExtraHost, FileAction, FileOp, MergeOp, MkdirAction,
    MkfileAction, Mount, MountKind, NetworkMode, Op, SecurityMode, Sharing, SourceOp,
    SymlinkAction, ULIMIT_NAMES, Ulimit,
};
pub use platform::{Platform, PlatformError};
pub use scheduler::{
    CacheIndex, Executor, LogStream, ProgressEvent, ProgressKind, SolveError, SolveOptions, Solved,
    StepContext, solve, solve_all,
};
pub use strconv::{go_quote, parse_go_bool};
