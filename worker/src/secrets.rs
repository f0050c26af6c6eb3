//! Build secrets (`--secret`, `RUN --mount=type=secret`): where their bytes come from, and
//! the memory-only directory a step's secrets (and its runtime spec, which may hold them
//! as environment variables) are written to. Secret bytes never reach the state
//! directory's disk, a cache key, a layer or the progress output.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::mount::{MountFlags, UnmountFlags, mount, unmount};

/// The largest secret a step may mount (BuildKit's limit).
pub const MAX_SECRET_SIZE: usize = 500 * 1024;

/// Where secrets come from: the command line's `--secret`s, or a remote client's session.
pub trait SecretStore: Send + Sync {
    /// The bytes of the secret `id`, or `None` when the build was not given it.
    fn secret(&self, id: &str) -> Result<Option<Vec<u8>>>;
}

/// Where one `--secret` is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file, read when a step needs it.
    File(PathBuf),
    /// An environment variable of kiln's own process.
    Env(String),
}

/// The secrets of the command line, by id.
#[derive(Debug, Clone, Default)]
pub struct LocalSecrets(pub BTreeMap<String, SecretSource>);

impl SecretStore for LocalSecrets {
    fn secret(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let Some(source) = self.0.get(id) else {
            return Ok(None);
        };
        let bytes = match source {
            SecretSource::File(path) => fs::read(path)
                .with_context(|| format!("secret {id}: cannot read {}", path.display()))?,
            SecretSource::Env(name) => std::env::var_os(name)
                .with_context(|| format!("secret {id}: the variable {name} is not set"))?
                .into_encoded_bytes(),
        };
        if bytes.len() > MAX_SECRET_SIZE {
            bail!("secret {id} is too big: the limit is {MAX_SECRET_SIZE} bytes");
        }
        Ok(Some(bytes))
    }
}

/// A secret a step uses.
#[derive(Clone)]
pub enum StepSecret {
    /// A read-only file at `target`.
    File {
        /// Absolute path in the sandbox.
        target: String,
        /// The content.
        data: Vec<u8>,
        /// File mode.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// An environment variable of the step's process.
    Env {
        /// The variable's name.
        name: String,
        /// Its value.
        value: String,
    },
}

impl std::fmt::Debug for StepSecret {
    /// Names where a secret goes, never its bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepSecret::File { target, .. } => write!(f, "secret file {target}"),
            StepSecret::Env { name, .. } => write!(f, "secret variable {name}"),
        }
    }
}

/// A tmpfs mounted over a directory for as long as a step runs: what is written there
/// lives in memory only, and is gone when it is unmounted (also after a kill: the next
/// kiln unmounts what it finds in its scratch space).
pub struct MemoryDir {
    path: PathBuf,
}

impl MemoryDir {
    /// Mounts a private tmpfs (mode 0700) over the existing directory `path`.
    pub fn mount(path: &Path) -> Result<Self> {
        mount(
            "tmpfs",
            path,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            c"mode=0700,size=64m",
        )
        .with_context(|| format!("cannot mount a tmpfs on {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for MemoryDir {
    fn drop(&mut self) {
        let _ = unmount(&self.path, UnmountFlags::DETACH);
    }
}
