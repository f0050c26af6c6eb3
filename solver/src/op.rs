//! The ops a vertex can hold: sources, exec (RUN), file operations and merges.
//!
//! Field order is part of the canonical encoding that vertex digests are computed over; keep
//! it stable. Input references are indexes into the owning [`crate::Vertex`]'s input list.

use serde::{Deserialize, Serialize};

use crate::Platform;

/// One unit of work in the DAG.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Op {
    /// Produces a filesystem from outside the DAG (an image, the build context, a URL).
    Source(SourceOp),
    /// Runs a process in a sandbox over a root filesystem (RUN).
    Exec(ExecOp),
    /// Applies file actions (copy, mkdir, mkfile, symlink) to a base filesystem.
    File(FileOp),
    /// Stacks its inputs' filesystems in order, later ones on top (COPY --link).
    Merge(MergeOp),
}

/// Where a source vertex's filesystem comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum SourceOp {
    /// An image reference, resolved to a manifest for `platform` when solved.
    Image {
        /// The reference as written after ARG expansion (normalised by the resolver).
        reference: String,
        /// The platform whose manifest is selected from an index.
        platform: Platform,
    },
    /// A named local directory sent by the client: `context` or a `--build-context` name.
    Local {
        /// The context's name.
        name: String,
        /// `.dockerignore` patterns, in file order.
        exclude_patterns: Vec<String>,
    },
    /// A file downloaded over HTTP(S) (ADD of a URL).
    Http {
        /// The URL.
        url: String,
        /// The expected `sha256:…` digest of the content (ADD --checksum), if given.
        checksum: Option<String>,
        /// The file name to store the download under.
        filename: String,
    },
    /// A git repository checkout (ADD of a git URL).
    Git {
        /// The remote URL without the fragment.
        remote: String,
        /// The ref (branch, tag or commit) from the URL fragment; empty for the default branch.
        reference: String,
        /// Keep the `.git` directory (ADD --keep-git-dir).
        keep_git_dir: bool,
    },
}

/// A process run in a sandbox (RUN).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOp {
    /// argv; shell form is already wrapped in the stage's SHELL.
    pub args: Vec<String>,
    /// Environment as `KEY=VALUE`, in definition order.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// `user[:group]`; empty for root.
    pub user: String,
    /// Network access.
    pub network: NetworkMode,
    /// Privilege level.
    pub security: SecurityMode,
    /// Mounts; the one with target `/` and kind [`MountKind::Layer`] is the root filesystem.
    pub mounts: Vec<Mount>,
    /// The platform the process runs as.
    pub platform: Platform,
}

/// Network modes of `RUN --network`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The sandbox's own network namespace with outbound access (the default).
    Default,
    /// No network at all, only loopback.
    None,
    /// The host's network namespace.
    Host,
}

/// Security modes of `RUN --security`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityMode {
    /// Docker's default capabilities and confinement.
    Sandbox,
    /// All capabilities and devices.
    Insecure,
}

/// A filesystem mounted into an exec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path inside the sandbox.
    pub target: String,
    /// Input index providing the content; `None` is an empty filesystem.
    pub input: Option<usize>,
    /// Path inside the input to mount (`/` for all of it).
    pub source: String,
    /// Mounted read-only.
    pub readonly: bool,
    /// What kind of mount this is.
    pub kind: MountKind,
}

/// The kinds of mount an exec can have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MountKind {
    /// The root filesystem, whose changes become the vertex's output layer.
    Layer,
    /// A bind of another input (`--mount=type=bind`); writes are discarded.
    Bind,
    /// A persistent cache directory shared across builds (`--mount=type=cache`).
    Cache {
        /// Cache identity (defaults to the target path).
        id: String,
        /// How concurrent builds share it.
        sharing: Sharing,
        /// Owner uid of the directory when created.
        uid: u32,
        /// Owner gid of the directory when created.
        gid: u32,
        /// Mode of the directory when created.
        mode: u32,
    },
    /// An empty in-memory filesystem.
    Tmpfs {
        /// Size limit in bytes; 0 for the default.
        size: u64,
    },
    /// A secret file provided by the client (`--mount=type=secret`).
    Secret {
        /// Secret id.
        id: String,
        /// Fail when the client did not provide it.
        required: bool,
        /// Also expose it in this environment variable (empty for none).
        env: String,
        /// File mode.
        mode: u32,
        /// Owner uid.
        uid: u32,
        /// Owner gid.
        gid: u32,
    },
    /// An SSH agent socket forwarded from the client (`--mount=type=ssh`).
    Ssh {
        /// Agent id.
        id: String,
        /// Fail when the client did not provide it.
        required: bool,
        /// Socket mode.
        mode: u32,
        /// Owner uid.
        uid: u32,
        /// Owner gid.
        gid: u32,
    },
}

/// Sharing modes of cache mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    /// Concurrent writers share one directory.
    Shared,
    /// Each concurrent writer gets its own copy.
    Private,
    /// Writers wait for each other.
    Locked,
}

/// File actions applied in order on top of `base`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOp {
    /// Input index of the starting filesystem; `None` starts from scratch.
    pub base: Option<usize>,
    /// The actions, applied in order.
    pub actions: Vec<FileAction>,
}

/// One file operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum FileAction {
    /// Copy from an input.
    Copy(CopyAction),
    /// Create a directory.
    Mkdir(MkdirAction),
    /// Create a file with given content.
    Mkfile(MkfileAction),
    /// Create a symbolic link.
    Symlink(SymlinkAction),
}

/// Ownership to apply, as written (`user[:group]`); names are resolved in the target rootfs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChownOpt {
    /// User name or numeric uid.
    pub user: String,
    /// Group name or numeric gid; `None` uses the user's primary group.
    pub group: Option<String>,
}

/// COPY/ADD of one source path (or wildcard) to a destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyAction {
    /// Input index to copy from.
    pub input: usize,
    /// Source path (may contain wildcards), relative to the input's root.
    pub src: String,
    /// Absolute destination path; a trailing `/` means "into this directory".
    pub dest: String,
    /// Ownership of the copied files (`--chown`).
    pub chown: Option<ChownOpt>,
    /// Mode of the copied files (`--chmod`), octal or symbolic as written.
    pub chmod: Option<String>,
    /// Follow a symlink named by `src` itself.
    pub follow_symlinks: bool,
    /// Copy a directory's contents rather than the directory.
    pub dir_contents_only: bool,
    /// Treat `src` as a pattern.
    pub allow_wildcard: bool,
    /// A pattern that matches nothing is not an error.
    pub allow_empty_wildcard: bool,
    /// Create missing parents of `dest`.
    pub create_dest_path: bool,
    /// Extract local tar archives (ADD).
    pub unpack_archives: bool,
    /// Keep the source's parent directories (`--parents`): with patterns, only paths below
    /// `src` matching them are copied, keeping their path relative to `src`.
    pub parents: bool,
    /// Patterns relative to `src` that select what is copied (`--parents`); empty: all.
    pub include_patterns: Vec<String>,
    /// Patterns excluded from the copy (`--exclude`).
    pub exclude_patterns: Vec<String>,
}

impl CopyAction {
    /// A plain copy of `src` from input `input` to `dest`: no wildcards,
    /// owners and modes kept, a directory's contents copied, missing
    /// destination parents created. Set the other fields as needed.
    pub fn new(input: usize, src: impl Into<String>, dest: impl Into<String>) -> Self {
        CopyAction {
            input,
            src: src.into(),
            dest: dest.into(),
            chown: None,
            chmod: None,
            follow_symlinks: false,
            dir_contents_only: true,
            allow_wildcard: false,
            allow_empty_wildcard: false,
            create_dest_path: true,
            unpack_archives: false,
            parents: false,
            include_patterns: Vec::new(),
            exclude_patterns: Vec::new(),
        }
    }
}

/// mkdir.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkdirAction {
    /// Absolute path.
    pub path: String,
    /// Mode bits.
    pub mode: u32,
    /// Create missing parents (`mkdir -p`).
    pub make_parents: bool,
    /// Owner.
    pub chown: Option<ChownOpt>,
}

/// Create a file with literal content (heredocs in COPY).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkfileAction {
    /// Absolute path.
    pub path: String,
    /// Mode bits.
    pub mode: u32,
    /// The content.
    pub data: String,
    /// Owner.
    pub chown: Option<ChownOpt>,
}

/// Create a symlink at `path` pointing at `target`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymlinkAction {
    /// The link's content.
    pub target: String,
    /// Absolute path of the link.
    pub path: String,
}

/// Stack the inputs in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeOp {
    /// Input indexes, bottom first.
    pub inputs: Vec<usize>,
}

impl Op {
    /// A short label for displays: the op kind and its main argument.
    pub fn label(&self) -> String {
        match self {
            Op::Source(SourceOp::Image { reference, .. }) => format!("image {reference}"),
            Op::Source(SourceOp::Local { name, .. }) => format!("local {name}"),
            Op::Source(SourceOp::Http { url, .. }) => format!("http {url}"),
            Op::Source(SourceOp::Git { remote, .. }) => format!("git {remote}"),
            Op::Exec(e) => format!("exec {}", e.args.join(" ")),
            Op::File(f) => {
                let parts: Vec<String> = f
                    .actions
                    .iter()
                    .map(|a| match a {
                        FileAction::Copy(c) => format!("copy {} {}", c.src, c.dest),
                        FileAction::Mkdir(m) => format!("mkdir {}", m.path),
                        FileAction::Mkfile(m) => format!("mkfile {}", m.path),
                        FileAction::Symlink(s) => format!("symlink {} -> {}", s.path, s.target),
                    })
                    .collect();
                format!("file {}", parts.join("; "))
            }
            Op::Merge(m) => format!("merge of {} inputs", m.inputs.len()),
        }
    }
}
