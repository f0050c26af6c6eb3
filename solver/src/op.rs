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
        /// The commit (or a prefix of it) the checkout must be (ADD --checksum).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        checksum: String,
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
    /// Resource limits of the process (`--ulimit`); empty inherits the builder's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
    /// Lines added to the sandbox's `/etc/hosts` (`--add-host`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<ExtraHost>,
    /// The sandbox's hostname (`BUILDKIT_SANDBOX_HOSTNAME`); `None` is the default,
    /// `buildkitsandbox`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// Docker's `--ulimit` names (docker/go-units), each `RLIMIT_` + its upper case.
pub const ULIMIT_NAMES: [&str; 15] = [
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// A resource limit of an exec's process (BuildKit's `pb.Ulimit`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// One of [`ULIMIT_NAMES`].
    pub name: String,
    /// Soft limit; -1 for unlimited.
    pub soft: i64,
    /// Hard limit; -1 for unlimited.
    pub hard: i64,
}

impl std::str::FromStr for Ulimit {
    type Err = String;

    /// Docker's `NAME=SOFT[:HARD]` (go-units `ParseUlimit`): the hard limit defaults to the
    /// soft one, -1 is unlimited, and the soft limit may not exceed the hard one.
    fn from_str(value: &str) -> Result<Self, String> {
        let (name, limits) = value
            .split_once('=')
            .ok_or_else(|| format!("invalid ulimit argument: {value}"))?;
        if !ULIMIT_NAMES.contains(&name) {
            return Err(format!(
                "invalid ulimit type: {name} (one of {})",
                ULIMIT_NAMES.join(", ")
            ));
        }
        let limit = |text: &str| match text.parse::<i64>() {
            Ok(n) if n >= -1 => Ok(n),
            _ => Err(format!("invalid ulimit value {text:?} in {value}")),
        };
        let (soft, hard) = match limits.split(':').collect::<Vec<_>>()[..] {
            [soft] => (limit(soft)?, limit(soft)?),
            [soft, hard] => (limit(soft)?, limit(hard)?),
            _ => {
                return Err(format!(
                    "too many limit value arguments - {limits}, can only have up to two, `soft[:hard]`"
                ));
            }
        };
        // -1 is unlimited: above every other limit.
        if hard != -1 && (soft == -1 || soft > hard) {
            return Err(format!(
                "ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
            ));
        }
        Ok(Ulimit {
            name: name.to_string(),
            soft,
            hard,
        })
    }
}

impl std::fmt::Display for Ulimit {
    /// Docker's `name=soft:hard`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}:{}", self.name, self.soft, self.hard)
    }
}

/// An `/etc/hosts` entry of an exec (BuildKit's `pb.HostIP`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraHost {
    /// The host name, lower case.
    pub host: String,
    /// Its address.
    pub ip: std::net::IpAddr,
}

impl std::str::FromStr for ExtraHost {
    type Err = String;

    /// buildx's `--add-host`: `NAME=IP` or `NAME:IP`, the address optionally in brackets
    /// (`NAME:[::1]`); the name is lower-cased as BuildKit's Dockerfile frontend does.
    fn from_str(value: &str) -> Result<Self, String> {
        let (host, ip) = value
            .split_once('=')
            .or_else(|| value.split_once(':'))
            .filter(|(host, ip)| !host.is_empty() && !ip.is_empty())
            .ok_or_else(|| format!("invalid host {value}: expected NAME=IP or NAME:IP"))?;
        if ip == "host-gateway" {
            return Err(format!(
                "invalid host {value}: kiln has no host-gateway address, give the IP"
            ));
        }
        let bare = ip
            .strip_prefix('[')
            .and_then(|ip| ip.strip_suffix(']'))
            .unwrap_or(ip);
        let ip = bare
            .parse::<std::net::IpAddr>()
            .map_err(|_| format!("invalid host {value}: {ip:?} is not an IP address"))?;
        Ok(ExtraHost {
            host: host.to_ascii_lowercase(),
            ip: ip.to_canonical(),
        })
    }
}

impl std::fmt::Display for ExtraHost {
    /// BuildKit's `add-hosts` form, `name=ip`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.host, self.ip)
    }
}

/// Network modes of `RUN --network`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The sandbox's own network namespace with outbound access (the default).
    #[default]
    Default,
    /// No network at all, only loopback.
    None,
    /// The host's network namespace.
    Host,
}

impl std::str::FromStr for NetworkMode {
    type Err = String;

    /// `default` (or `sandbox`), `none` or `host`, in any case.
    fn from_str(mode: &str) -> Result<Self, String> {
        match mode.to_ascii_lowercase().as_str() {
            "default" | "sandbox" => Ok(NetworkMode::Default),
            "none" => Ok(NetworkMode::None),
            "host" => Ok(NetworkMode::Host),
            other => Err(format!("unsupported network mode {other:?}")),
        }
    }
}

impl NetworkMode {
    /// Its name, as `--network` takes it.
    pub fn name(self) -> &'static str {
        match self {
            NetworkMode::Default => "default",
            NetworkMode::None => "none",
            NetworkMode::Host => "host",
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ulimit(value: &str) -> Result<Ulimit, String> {
        value.parse()
    }

    fn host(value: &str) -> Result<ExtraHost, String> {
        value.parse()
    }

    #[test]
    fn ulimits_parse_as_docker_does() {
        let nofile = ulimit("nofile=1024:2048").unwrap();
        assert_eq!(
            (nofile.name.as_str(), nofile.soft, nofile.hard),
            ("nofile", 1024, 2048)
        );
        assert_eq!(nofile.to_string(), "nofile=1024:2048");
        // The hard limit defaults to the soft one; -1 is unlimited.
        assert_eq!(ulimit("core=0").unwrap().hard, 0);
        assert_eq!(ulimit("memlock=-1:-1").unwrap().soft, -1);
        assert_eq!(ulimit("stack=8192:-1").unwrap().hard, -1);
    }

    #[test]
    fn bad_ulimits_are_named() {
        let unknown = ulimit("files=10").unwrap_err();
        assert!(unknown.contains("invalid ulimit type: files"), "{unknown}");
        let inverted = ulimit("nofile=2048:1024").unwrap_err();
        assert!(inverted.contains("2048 > 1024"), "{inverted}");
        assert!(ulimit("nofile=-1:1024").is_err());
        assert!(ulimit("nofile").is_err());
        assert!(ulimit("nofile=lots").is_err());
        assert!(ulimit("nofile=-2").is_err());
        assert!(ulimit("nofile=1:2:3").is_err());
    }

    #[test]
    fn hosts_parse_as_buildx_does() {
        let equals = host("Db.Local=10.0.0.5").unwrap();
        assert_eq!(equals.to_string(), "db.local=10.0.0.5");
        assert_eq!(host("db.local:10.0.0.5").unwrap(), equals);
        assert_eq!(host("v6:::1").unwrap().to_string(), "v6=::1");
        assert_eq!(host("v6=[fe80::1]").unwrap().to_string(), "v6=fe80::1");
        assert_eq!(
            host("v6=2001:db8::0001").unwrap().to_string(),
            "v6=2001:db8::1"
        );
        // Go prints an IPv4-mapped address as IPv4.
        assert_eq!(host("m=::ffff:1.2.3.4").unwrap().to_string(), "m=1.2.3.4");
    }

    #[test]
    fn bad_hosts_are_errors() {
        for bad in [
            "db",
            "=10.0.0.5",
            "db=",
            "db=10.0.0",
            "db=300.1.1.1",
            "db=host-gateway",
            "db=example.com",
        ] {
            assert!(host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn execs_without_the_new_fields_encode_as_before() {
        let op = ExecOp {
            args: vec!["true".into()],
            env: Vec::new(),
            cwd: "/".into(),
            user: String::new(),
            network: NetworkMode::Default,
            security: SecurityMode::Sandbox,
            mounts: Vec::new(),
            platform: Platform::host(),
            ulimits: Vec::new(),
            extra_hosts: Vec::new(),
            hostname: None,
        };
        let json = serde_json::to_value(&op).unwrap();
        assert!(json.get("ulimits").is_none() && json.get("extra_hosts").is_none());
        assert_eq!(serde_json::from_value::<ExecOp>(json).unwrap(), op);
    }
}
