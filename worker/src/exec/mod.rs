//! RUN: a process in an OCI runtime bundle over a mounted snapshot.

mod cgroup;
pub mod embedded;
mod network;
mod runtime;
mod seccomp;
mod spec;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use filetime::FileTime;
use kiln_solver::{ExecOp, go_quote};

use crate::rootfs::{exec_user, resolve_in_root};
use crate::secrets::{MemoryDir, StepSecret};
pub use kiln_solver::LogStream;
pub use network::NetworkPool;
pub use runtime::{EMBEDDED_RUNTIME_COMMAND, ExternalRuntime, OciRuntime};
use std::os::unix::fs::PermissionsExt as _;

/// The hostname RUN steps see unless the build names another (BuildKit's, which scripts
/// sometimes expect).
pub const SANDBOX_HOSTNAME: &str = "buildkitsandbox";

/// A filesystem mounted into the sandbox besides the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxMount {
    /// A host directory or file bound at `target`.
    Bind {
        /// Absolute path in the sandbox.
        target: String,
        /// Host path.
        source: PathBuf,
        /// Mounted read-only.
        readonly: bool,
    },
    /// A unix socket (an SSH agent's) bound at `target`. kiln binds it into the root
    /// filesystem itself before the runtime starts: runtimes bind files and directories
    /// (libcontainer makes a directory for anything else).
    Socket {
        /// Absolute path in the sandbox.
        target: String,
        /// The socket on the host.
        source: PathBuf,
    },
    /// An empty tmpfs at `target`.
    Tmpfs {
        /// Absolute path in the sandbox.
        target: String,
        /// Size limit in bytes; 0 for the kernel default.
        size: u64,
    },
}

/// Everything needed to run one RUN process.
pub struct ExecRequest<'a> {
    /// The op: argv, env, cwd, user, network.
    pub op: &'a ExecOp,
    /// Extra environment that is not part of the cache key (proxy variables).
    pub extra_env: &'a [String],
    /// The mounted root filesystem.
    pub rootfs: &'a Path,
    /// Other mounts, already prepared on the host.
    pub mounts: Vec<SandboxMount>,
    /// Secrets the step mounts or sees as variables.
    pub secrets: &'a [StepSecret],
    /// Scratch space for the bundle; deleted by the caller.
    pub scratch: &'a Path,
    /// Where the step's network comes from.
    pub networks: &'a NetworkPool,
}

/// Runs `request` with `runtime`, streaming output to `log`. A non-zero
/// exit is an error in BuildKit's words; paths created only as mount points
/// are removed afterwards so they do not end up in the layer.
pub fn run(
    runtime: &dyn OciRuntime,
    request: &ExecRequest<'_>,
    log: &(dyn Fn(LogStream, &[u8]) + Sync),
    cancel: &AtomicBool,
) -> Result<()> {
    let op = request.op;
    // As BuildKit reports it: the process that could not start, then why.
    let user = exec_user(request.rootfs, &op.user).map_err(|err| {
        anyhow::anyhow!(
            "process {} did not complete successfully: {err:#}",
            go_quote(&op.args.join(" "))
        )
    })?;
    let cwd = if op.cwd.is_empty() {
        "/"
    } else {
        op.cwd.as_str()
    };
    let cwd_host = resolve_in_root(request.rootfs, cwd, true)?;
    if !cwd_host.exists() {
        fs::create_dir_all(&cwd_host)
            .with_context(|| format!("cannot create working directory {cwd}"))?;
        std::os::unix::fs::chown(&cwd_host, Some(user.ids.uid), Some(user.ids.gid))?;
    }

    let bundle = request.scratch.join("bundle");
    fs::create_dir_all(&bundle)?;
    // Secrets, and the spec that may hold them as variables, are written to memory only.
    let _in_memory = if request.secrets.is_empty() {
        None
    } else {
        Some(MemoryDir::mount(&bundle)?)
    };
    let hosts = bundle.join("hosts");
    let hostname = op.hostname.as_deref().unwrap_or(SANDBOX_HOSTNAME);
    let mut hosts_text =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    // `--add-host` entries after the defaults, as BuildKit writes them.
    for extra in &op.extra_hosts {
        hosts_text.push_str(&format!("{}\t{}\n", extra.ip, extra.host));
    }
    fs::write(&hosts, hosts_text)?;
    let resolv = bundle.join("resolv.conf");
    fs::write(&resolv, network::resolv_conf(op.network))?;
    let mut mounts = vec![
        SandboxMount::Bind {
            target: "/etc/hosts".into(),
            source: hosts,
            readonly: true,
        },
        SandboxMount::Bind {
            target: "/etc/resolv.conf".into(),
            source: resolv,
            readonly: true,
        },
    ];
    mounts.extend(request.mounts.iter().cloned());
    mounts.extend(secret_files(&bundle, request.secrets)?);

    let network = request.networks.take(op.network)?;
    let spec = spec::build(request, &user, cwd, &mounts, network.namespace())?;
    let sockets = mounts
        .iter()
        .filter_map(|mount| match mount {
            SandboxMount::Socket { target, source } => Some((target.as_str(), source.as_path())),
            _ => None,
        })
        .collect::<Vec<_>>();
    make_runtime_mount_points(request.rootfs)?;
    let created = MountPoints::create(request.rootfs, &mounts)?;
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec)?,
    )?;
    let bound = SocketBinds::mount(request.rootfs, &sockets)?;
    let status = runtime.run(&bundle, log, cancel);
    drop(bound);
    created.remove()?;
    let code = status?;
    if code != 0 {
        bail!(
            "process {} did not complete successfully: exit code: {code}",
            go_quote(&op.args.join(" "))
        );
    }
    Ok(())
}

/// Writes the file secrets into `bundle/secrets` (a memory-only directory) and returns
/// their read-only mounts.
fn secret_files(bundle: &Path, secrets: &[StepSecret]) -> Result<Vec<SandboxMount>> {
    let dir = bundle.join("secrets");
    let mut mounts = Vec::new();
    for (n, secret) in secrets.iter().enumerate() {
        let StepSecret::File {
            target,
            data,
            mode,
            uid,
            gid,
        } = secret
        else {
            continue;
        };
        fs::create_dir_all(&dir)?;
        let path = dir.join(n.to_string());
        fs::write(&path, data)?;
        std::os::unix::fs::chown(&path, Some(*uid), Some(*gid))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode))?;
        mounts.push(SandboxMount::Bind {
            target: target.clone(),
            source: path,
            readonly: true,
        });
    }
    Ok(mounts)
}

/// Sockets bound onto their stubs in the root filesystem (whose recursive bind carries
/// them into the sandbox); unbound on drop, before the stubs are removed.
struct SocketBinds(Vec<PathBuf>);

impl SocketBinds {
    fn mount(rootfs: &Path, sockets: &[(&str, &Path)]) -> Result<Self> {
        let mut bound = Self(Vec::new());
        for (target, source) in sockets {
            let stub = resolve_in_root(rootfs, target, true)?;
            rustix::mount::mount_bind(*source, &stub)
                .with_context(|| format!("cannot bind the socket at {target}"))?;
            bound.0.push(stub);
        }
        Ok(bound)
    }
}

impl Drop for SocketBinds {
    fn drop(&mut self) {
        for stub in &self.0 {
            let _ = rustix::mount::unmount(stub, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// The mount points of the runtime's own filesystems (`/proc`, `/dev`, `/sys`), made as
/// runc makes them (root's, 0755) where the image lacks them. They stay in the step's
/// layer, as in BuildKit, whose stub clean-up only covers the step's own mounts.
fn make_runtime_mount_points(rootfs: &Path) -> Result<()> {
    for dir in ["/proc", "/dev", "/sys"] {
        let host = resolve_in_root(rootfs, dir, true)?;
        if fs::symlink_metadata(&host).is_err() {
            fs::create_dir(&host)?;
            fs::set_permissions(&host, fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(())
}

/// Mount points of the step's own mounts (`/etc/hosts`, `/etc/resolv.conf` and the
/// step's bind, cache, tmpfs, secret and SSH mounts) that did not exist in the root
/// filesystem and were created for this run, deepest last (BuildKit calls them mount
/// stubs), and the times of the existing directories they were created in.
struct MountPoints {
    created: Vec<PathBuf>,
    parents: Vec<(PathBuf, FileTime, FileTime)>,
}

impl MountPoints {
    /// Creates each mount target (a file for file binds, else a directory)
    /// inside the root filesystem, recording what was new.
    fn create(rootfs: &Path, mounts: &[SandboxMount]) -> Result<Self> {
        let mut created = Vec::new();
        let mut parents = Vec::new();
        for mount in mounts {
            // Files and sockets (SSH agents) are bound onto a file.
            let (target, is_file) = match mount {
                SandboxMount::Bind { target, source, .. } => {
                    (target, source.exists() && !source.is_dir())
                }
                SandboxMount::Socket { target, .. } => (target, true),
                SandboxMount::Tmpfs { target, .. } => (target, false),
            };
            let host = resolve_in_root(rootfs, target, true)?;
            let mut missing = Vec::new();
            let mut cursor = host.as_path();
            while !cursor.exists() && cursor != rootfs {
                missing.push(cursor.to_path_buf());
                cursor = cursor.parent().unwrap_or(rootfs);
            }
            if !missing.is_empty() && !parents.iter().any(|(p, _, _)| p == cursor) {
                let meta = fs::metadata(cursor)?;
                parents.push((
                    cursor.to_path_buf(),
                    FileTime::from_last_access_time(&meta),
                    FileTime::from_last_modification_time(&meta),
                ));
            }
            for (i, path) in missing.iter().rev().enumerate() {
                if is_file && i == missing.len() - 1 {
                    fs::write(path, b"")?;
                } else {
                    fs::create_dir(path)?;
                }
                created.push(path.clone());
            }
        }
        Ok(Self { created, parents })
    }

    /// Removes what [`create`](Self::create) made, if it is still an empty
    /// file or directory (the process may have written there on purpose), and gives
    /// the directories they were made in their times back, so that a directory the step
    /// did not otherwise touch stays out of the layer.
    fn remove(self) -> Result<()> {
        for path in self.created.iter().rev() {
            match fs::symlink_metadata(path) {
                Ok(meta) if meta.is_dir() => {
                    let _ = fs::remove_dir(path);
                }
                Ok(meta) if meta.is_file() && meta.len() == 0 => fs::remove_file(path)?,
                _ => {}
            }
        }
        for (dir, atime, mtime) in self.parents.iter().rev() {
            // A parent that was itself a stub is gone.
            if dir.exists() {
                filetime::set_file_times(dir, *atime, *mtime)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
