//! The state directory (`kiln --root DIR`, `KILN_ROOT`): where the content store and the
//! metadata database live.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::{CacheIndexStore, ContentError, ContentStore, ImageStore};

/// A held lock on the state directory (see [`StateDir::lock`]); released on drop.
#[derive(Debug)]
pub struct StateLock {
    file: File,
}

impl StateLock {
    /// Makes the lock shared (from exclusive, or takes it shared), waiting if needed.
    pub fn share(&self) -> io::Result<()> {
        self.file.lock_shared()
    }
}

/// kiln's state directory and the stores inside it.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory at `root` (nothing is created until a store is opened).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    /// The default: `$KILN_ROOT`, else `/var/lib/kiln` for root, else
    /// `$XDG_DATA_HOME/kiln` (`~/.local/share/kiln`).
    pub fn default_root() -> PathBuf {
        if let Some(root) = std::env::var_os("KILN_ROOT").filter(|r| !r.is_empty()) {
            return PathBuf::from(root);
        }
        if running_as_root() {
            return PathBuf::from("/var/lib/kiln");
        }
        match std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            Some(data) => PathBuf::from(data).join("kiln"),
            None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".local/share/kiln"),
        }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens the content store (`content/`).
    pub fn content(&self) -> Result<ContentStore, ContentError> {
        self.create_root().map_err(|source| ContentError::Io {
            action: "cannot create",
            path: self.root.clone(),
            source,
        })?;
        ContentStore::open(self.root.join("content"))
    }

    /// The image store (`kiln.redb`); the directory is created when needed.
    pub fn images(&self) -> Result<ImageStore, ContentError> {
        self.create_root().map_err(|source| ContentError::Io {
            action: "cannot create",
            path: self.root.clone(),
            source,
        })?;
        Ok(ImageStore::new(self.root.join("kiln.redb")))
    }

    /// Locks the state directory until the guard drops: shared for builds, which may run
    /// side by side, exclusive for garbage collection, which must run alone. Waits for the
    /// lock.
    pub fn lock(&self, exclusive: bool) -> io::Result<StateLock> {
        let lock = self.open_lock()?;
        if exclusive {
            lock.file.lock()?;
        } else {
            lock.share()?;
        }
        Ok(lock)
    }

    /// Locks the state directory for a build: exclusively when no other kiln process holds
    /// it, so that the build may first clear what killed processes left behind, and then
    /// [`share`](StateLock::share) it; else shared. Returns the lock and whether it is
    /// exclusive.
    pub fn lock_for_build(&self) -> io::Result<(StateLock, bool)> {
        let lock = self.open_lock()?;
        match lock.file.try_lock() {
            Ok(()) => Ok((lock, true)),
            Err(std::fs::TryLockError::WouldBlock) => {
                lock.share()?;
                Ok((lock, false))
            }
            Err(std::fs::TryLockError::Error(err)) => Err(err),
        }
    }

    fn open_lock(&self) -> io::Result<StateLock> {
        self.create_private()?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("lock"))?;
        Ok(StateLock { file })
    }

    /// Creates the state directory, mode 0700, and makes the directories that hold what
    /// builds produce private (0700) even in an existing one: unpacked layers, step
    /// filesystems, cache mounts and container state hold other people's setuid binaries
    /// and device nodes, which no other user of the host may reach.
    fn create_private(&self) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        self.create_root()?;
        for dir in [
            self.snapshots(),
            self.cache_mounts(),
            self.embedded_runtime_state(),
            self.runtime_state(),
        ] {
            private_dir_builder().create(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    /// Creates the state directory (and missing parents) with mode 0700.
    fn create_root(&self) -> io::Result<()> {
        private_dir_builder().create(&self.root)
    }

    /// Directories of `RUN --mount=type=cache` (`cache-mounts/`).
    pub fn cache_mounts(&self) -> PathBuf {
        self.root.join("cache-mounts")
    }

    /// The cache index (`cache.redb`).
    pub fn cache_index(&self) -> CacheIndexStore {
        CacheIndexStore::new(self.cache_index_path())
    }

    /// The cache index's database file.
    pub fn cache_index_path(&self) -> PathBuf {
        self.root.join("cache.redb")
    }

    /// Where unpacked layers and step scratch space live (`snapshots/`).
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// State of the external OCI runtime (`runc/`).
    pub fn runtime_state(&self) -> PathBuf {
        self.root.join("runc")
    }

    /// The checksum cache of context files (`checksums.redb`).
    pub fn checksums(&self) -> PathBuf {
        self.root.join("checksums.redb")
    }

    /// State of the embedded libcontainer runtime (`containers/`).
    pub fn embedded_runtime_state(&self) -> PathBuf {
        self.root.join("containers")
    }
}

/// Creates directories, missing parents included, with mode 0700.
fn private_dir_builder() -> std::fs::DirBuilder {
    use std::os::unix::fs::DirBuilderExt as _;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    builder
}

/// Whether the effective user is root, read from `/proc/self/status`.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
