//! The worker as the solver's [`Executor`]: each op kind mapped onto
//! snapshots, file ops and the sandbox.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use kiln_cache::{ChecksumCache, ContentStore, Digest, ImageStore};
use kiln_image::{PlatformWanted, ResolvedImage, resolve_local};
use kiln_patterns::PatternMatcher;
use kiln_solver::{
    CopyAction, ExecOp, Executor, FileAction, FileOp, MountKind, Op, Platform, SourceOp,
    StepContext, Vertex,
};
use serde::{Deserialize, Serialize};

use crate::emulation;
use crate::exec::{self, ExecRequest, NetworkPool, OciRuntime, SandboxMount};
use crate::fileop::{self, SourceTree, UpperWriter};
use crate::http::{self, Download};
use crate::layer::{LayerBlob, WriteOptions};
use crate::rootfs::resolve_in_root;
use crate::secrets::{SecretStore, StepSecret};
use crate::snapshot::{ActiveSnapshot, Snapshot, Snapshotter};
use crate::sources::LocalSources;
use crate::ssh::{SshAgents, StepSocket};

/// Looks `reference` up in the local store for `platform`; errors are
/// user-facing sentences. The frontend (base configs) and the worker (base
/// layers) both resolve through here.
pub fn resolve_image(
    content: &ContentStore,
    images: &ImageStore,
    reference: &str,
    platform: &Platform,
) -> Result<ResolvedImage, String> {
    resolve_local(content, images, reference, &platform_wanted(platform))
}

/// `platform` as the image store and registries match it against index entries (a variant
/// only when the platform names one).
pub fn platform_wanted(platform: &Platform) -> PlatformWanted<'_> {
    PlatformWanted {
        os: &platform.os,
        architecture: &platform.architecture,
        variant: (!platform.variant.is_empty()).then_some(platform.variant.as_str()),
    }
}

/// A vertex's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum WorkerRef {
    /// A filesystem made of layers.
    Snapshot(Snapshot),
    /// A local directory sent by the client (the build context), by name.
    Local {
        /// The context's name.
        name: String,
        /// Its `.dockerignore` patterns.
        exclude_patterns: Vec<String>,
    },
}

/// What a [`Worker`] works with.
pub struct WorkerConfig {
    /// Blobs: layers, configs, manifests.
    pub content: ContentStore,
    /// Image names, for FROM.
    pub images: ImageStore,
    /// Unpacked layers and step filesystems.
    pub snapshots: Snapshotter,
    /// What runs RUN steps.
    pub runtime: Box<dyn OciRuntime>,
    /// Local sources (`context`, `--build-context` names).
    pub sources: Box<dyn LocalSources>,
    /// Where `RUN --mount=type=cache` directories live.
    pub cache_mounts: PathBuf,
    /// Contents an imported build cache holds for cache mounts that do not exist yet,
    /// by [`cache_mount_name`]: unpacked into the mount the first time a step uses it.
    pub cache_mount_seeds: HashMap<String, LayerBlob>,
    /// Remembered digests of context files.
    pub checksums: ChecksumCache,
    /// How layers are written.
    pub layer_options: WriteOptions,
    /// The build's secrets, for `RUN --mount=type=secret`.
    pub secrets: Box<dyn SecretStore>,
    /// The build's SSH agents, for `RUN --mount=type=ssh`.
    pub ssh: Box<dyn SshAgents>,
}

/// Executes vertices on this machine.
pub struct Worker {
    config: WorkerConfig,
    /// The default networks of RUN steps, made ahead.
    networks: NetworkPool,
    /// URL → its download, made when the cache key needed the content and used by the step.
    downloads: Mutex<HashMap<String, Download>>,
    /// Vertex → the checksum of the context files it copies, as its cache key took it: the
    /// files are checked again once copied.
    context_sums: Mutex<HashMap<Digest, String>>,
}

/// The directory name of a cache mount under the state's cache mounts. As in BuildKit,
/// an owner or mode given for the cache makes it another cache than the same id's with
/// the defaults.
pub fn cache_mount_name(id: &str, uid: u32, gid: u32, mode: u32) -> String {
    let key = if (uid, gid, mode) == (0, 0, 0o755) {
        id.to_string()
    } else {
        format!("{id}:{uid}:{gid}:{mode:o}")
    };
    kiln_cache::Digest::of(key.as_bytes()).hex().to_string()
}

impl Worker {
    /// Creates the cache mount `dir` (named `name`) owned and moded as asked, holding
    /// what an imported cache has for it; made aside and renamed into place, so that a
    /// concurrent step never sees it half-filled.
    fn make_cache_mount(
        &self,
        dir: &Path,
        name: &str,
        (uid, gid, mode): (u32, u32, u32),
    ) -> Result<()> {
        std::fs::create_dir_all(&self.config.cache_mounts)?;
        let fresh = tempfile::Builder::new()
            .prefix(".new-")
            .tempdir_in(&self.config.cache_mounts)?;
        if let Some(seed) = self.config.cache_mount_seeds.get(name) {
            let blob = self.config.content.open_blob(&seed.digest)?;
            crate::layer::apply_layer(blob, fresh.path(), seed)
                .with_context(|| format!("cannot unpack the imported cache mount {name}"))?;
        }
        std::os::unix::fs::chown(fresh.path(), Some(uid), Some(gid))?;
        std::fs::set_permissions(
            fresh.path(),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )?;
        let made = fresh.keep();
        if std::fs::rename(&made, dir).is_err() {
            // Another step made it first.
            std::fs::remove_dir_all(&made)?;
        }
        Ok(())
    }

    /// A worker over the given stores.
    pub fn new(config: WorkerConfig) -> Self {
        Self {
            networks: NetworkPool::new(config.snapshots.scratch_root()),
            config,
            downloads: Mutex::default(),
            context_sums: Mutex::default(),
        }
    }

    /// Remembered digests of context files; persist them after a build.
    pub fn checksums(&self) -> &ChecksumCache {
        &self.config.checksums
    }

    fn resolve_image(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage> {
        resolve_image(
            &self.config.content,
            &self.config.images,
            reference,
            platform,
        )
        .map_err(|e| anyhow!(e))
    }

    fn context_dir(&self, name: &str, excludes: &[String]) -> Result<PathBuf> {
        self.config.sources.directory(name, excludes)
    }

    /// Calls `f` with the context `name` as a COPY source, `.dockerignore`
    /// patterns applied.
    fn with_context_tree<T>(
        &self,
        name: &str,
        exclude_patterns: &[String],
        f: impl FnOnce(&SourceTree<'_>) -> Result<T>,
    ) -> Result<T> {
        let ignore = PatternMatcher::new(exclude_patterns).context("bad .dockerignore pattern")?;
        f(&SourceTree {
            root: &self.context_dir(name, exclude_patterns)?,
            ignore: Some(&ignore),
            is_context: true,
            layers: &[],
        })
    }

    fn snapshot<'a>(&self, input: &'a WorkerRef) -> Result<&'a Snapshot> {
        match input {
            WorkerRef::Snapshot(snapshot) => Ok(snapshot),
            WorkerRef::Local { name, .. } => {
                bail!("the local context {name:?} cannot be used as a filesystem here")
            }
        }
    }

    /// Mounts `input` for reading (a context directory is overlaid so that
    /// writes never reach the host).
    fn mount_view(&self, input: &WorkerRef) -> Result<ActiveSnapshot> {
        match input {
            WorkerRef::Snapshot(snapshot) => self
                .config
                .snapshots
                .prepare(snapshot, &self.config.content),
            WorkerRef::Local {
                name,
                exclude_patterns,
            } => {
                let dir = self.context_dir(name, exclude_patterns)?;
                let hidden = if exclude_patterns.is_empty() {
                    Vec::new()
                } else {
                    let ignore = PatternMatcher::new(exclude_patterns)
                        .context("bad .dockerignore pattern")?;
                    fileop::ignored_paths(&dir, &ignore)?
                };
                self.config.snapshots.prepare_hiding(&[dir], &hidden)
            }
        }
    }

    fn run_exec(
        &self,
        op: &ExecOp,
        inputs: &[WorkerRef],
        step: &StepContext<'_>,
    ) -> Result<WorkerRef> {
        // A foreign platform's binaries run under QEMU: without a usable emulator the step
        // fails before anything is prepared, saying what to install.
        let emulator = if emulation::runs_natively(&op.platform) {
            None
        } else {
            Some(emulation::emulator_for(&op.platform)?)
        };
        let root_mount = op
            .mounts
            .iter()
            .find(|m| m.target == "/" && m.kind == MountKind::Layer)
            .context("RUN has no root filesystem")?;
        let base = match root_mount.input {
            Some(i) => self.snapshot(&inputs[i])?.clone(),
            None => Snapshot::default(),
        };
        let root = self.config.snapshots.prepare(&base, &self.config.content)?;
        let mut views = Vec::new();
        let mut mounts = Vec::new();
        let mut secrets = Vec::new();
        let mut ssh_sockets = Vec::new();
        // In the state directory, not /tmp: a killed kiln's leftovers are found there.
        let scratch = self.config.snapshots.scratch("exec-")?;
        for mount in op.mounts.iter().filter(|m| !std::ptr::eq(*m, root_mount)) {
            match &mount.kind {
                MountKind::Layer | MountKind::Bind => {
                    let view = match mount.input {
                        Some(i) => self.mount_view(&inputs[i])?,
                        None => self
                            .config
                            .snapshots
                            .prepare(&Snapshot::default(), &self.config.content)?,
                    };
                    let source = resolve_in_root(view.rootfs(), &mount.source, true)?;
                    mounts.push(SandboxMount::Bind {
                        target: mount.target.clone(),
                        source,
                        readonly: mount.readonly,
                    });
                    views.push(view);
                }
                MountKind::Cache {
                    id, uid, gid, mode, ..
                } => {
                    // As in BuildKit, an owner or mode given for the cache makes it another
                    // cache than the same id's with the defaults.
                    let name = cache_mount_name(id, *uid, *gid, *mode);
                    let dir = self.config.cache_mounts.join(&name);
                    if !dir.exists() {
                        self.make_cache_mount(&dir, &name, (*uid, *gid, *mode))?;
                    }
                    mounts.push(SandboxMount::Bind {
                        target: mount.target.clone(),
                        source: dir,
                        readonly: mount.readonly,
                    });
                }
                MountKind::Tmpfs { size } => mounts.push(SandboxMount::Tmpfs {
                    target: mount.target.clone(),
                    size: *size,
                }),
                MountKind::Secret {
                    id,
                    required,
                    env,
                    mode,
                    uid,
                    gid,
                } => {
                    match self.config.secrets.secret(id)? {
                        Some(data) => {
                            if !env.is_empty() {
                                let value = String::from_utf8(data.clone()).map_err(|_| {
                                anyhow!("secret {id} is not UTF-8 text: it cannot be the variable {env}")
                            })?;
                                secrets.push(StepSecret::Env {
                                    name: env.clone(),
                                    value,
                                });
                            }
                            if !mount.target.is_empty() {
                                secrets.push(StepSecret::File {
                                    target: mount.target.clone(),
                                    data,
                                    mode: *mode,
                                    uid: *uid,
                                    gid: *gid,
                                });
                            }
                        }
                        None if *required => bail!("secret {id}: not found"),
                        None => {}
                    }
                }
                MountKind::Ssh {
                    id,
                    required,
                    mode,
                    uid,
                    gid,
                } => match self.config.ssh.check(id) {
                    Ok(()) => {
                        let socket = StepSocket::bind(
                            &scratch
                                .path()
                                .join(format!("ssh-{}.sock", ssh_sockets.len())),
                            id,
                            *mode,
                            *uid,
                            *gid,
                        )?;
                        mounts.push(SandboxMount::Socket {
                            target: mount.target.clone(),
                            source: socket.path().to_path_buf(),
                        });
                        ssh_sockets.push(socket);
                    }
                    // An optional agent the build was not given is left out, as BuildKit.
                    Err(_) if !*required => {}
                    Err(err) => return Err(err),
                },
            }
        }
        // A handler registered without the `F` flag needs its interpreter in the sandbox
        // (its mount stub is kept out of the layer as the others are).
        mounts.extend(emulator.as_ref().and_then(emulation::Emulator::mount));
        let extra_env = step.meta.map(|m| m.proxy_env.clone()).unwrap_or_default();
        let request = ExecRequest {
            op,
            extra_env: &extra_env,
            rootfs: root.rootfs(),
            mounts,
            secrets: &secrets,
            scratch: scratch.path(),
            networks: &self.networks,
        };
        // Each agent socket is served while the step runs.
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for socket in &ssh_sockets {
                scope.spawn(|| socket.serve(scope, self.config.ssh.as_ref(), &stop));
            }
            let ran = exec::run(
                self.config.runtime.as_ref(),
                &request,
                step.log,
                step.cancel,
            );
            stop.store(true, Ordering::SeqCst);
            ssh_sockets.iter().for_each(StepSocket::wake);
            ran
        })?;
        drop(views);
        Ok(WorkerRef::Snapshot(root.commit(
            &base,
            &self.config.content,
            self.config.layer_options,
        )?))
    }

    /// Runs a file op; also returns the checksum of the context files each of its copies
    /// wrote, as [`Executor::cache_extra`] joins them.
    fn run_file(
        &self,
        op: &FileOp,
        inputs: &[WorkerRef],
        cancel: &AtomicBool,
    ) -> Result<(WorkerRef, Vec<String>)> {
        let base = match op.base {
            Some(i) => self.snapshot(&inputs[i])?.clone(),
            None => Snapshot::default(),
        };
        let mut active = self.config.snapshots.prepare(&base, &self.config.content)?;
        let mut sums = Vec::new();
        for (n, action) in op.actions.iter().enumerate() {
            let root = active.rootfs();
            match action {
                FileAction::Copy(copy) => {
                    let more_follow = n + 1 < op.actions.len();
                    sums.extend(self.copy(copy, inputs, &mut active, more_follow, cancel)?);
                }
                FileAction::Mkdir(mkdir) => fileop::mkdir(root, mkdir)?,
                FileAction::Mkfile(mkfile) => fileop::mkfile(root, mkfile)?,
                FileAction::Symlink(link) => fileop::make_symlink(root, link)?,
            }
        }
        let made = active.commit(&base, &self.config.content, self.config.layer_options)?;
        Ok((WorkerRef::Snapshot(made), sums))
    }

    /// ADD of a URL: a snapshot holding just `/filename`, mode 0600 as in Docker, its mtime
    /// the server's `Last-Modified`.
    fn fetch(&self, url: &str, checksum: Option<&str>, filename: &str) -> Result<WorkerRef> {
        if filename.is_empty() || filename == "." || filename == ".." || filename.contains('/') {
            bail!("invalid file name {filename:?} for {url}");
        }
        let known = self.downloads.lock().unwrap().remove(url);
        let download = match known {
            Some(download) => download,
            None => http::download(url, checksum, self.config.snapshots.scratch_root())?,
        };
        let active = self
            .config
            .snapshots
            .prepare(&Snapshot::default(), &self.config.content)?;
        let target = active.rootfs().join(filename);
        fs::copy(download.file.path(), &target)?;
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600))?;
        if let Some(modified) = download.last_modified {
            let mtime = filetime::FileTime::from_system_time(modified);
            filetime::set_file_times(&target, mtime, mtime)?;
        }
        Ok(WorkerRef::Snapshot(active.commit(
            &Snapshot::default(),
            &self.config.content,
            self.config.layer_options,
        )?))
    }

    /// `ADD <git URL>`: the repository checked out at `reference` as a snapshot (with its
    /// `.git` only with `keep_git_dir`; its commit must start with a non-empty
    /// `checksum`), as BuildKit's git source.
    fn clone_git(
        &self,
        remote: &str,
        reference: &str,
        keep_git_dir: bool,
        checksum: &str,
    ) -> Result<WorkerRef> {
        let active = self
            .config
            .snapshots
            .prepare(&Snapshot::default(), &self.config.content)?;
        crate::git::checkout_verified(remote, reference, active.rootfs(), keep_git_dir, checksum)
            .map_err(|e| anyhow!(e))?;
        Ok(WorkerRef::Snapshot(active.commit(
            &Snapshot::default(),
            &self.config.content,
            self.config.layer_options,
        )?))
    }

    /// Runs one COPY into `dest`, writing files straight into its upper directory where it
    /// may (and linking unchanged files of a snapshot source); then `dest` is remounted if
    /// `more_follow`, so later actions see them. For a copy from a local context, returns
    /// the checksum of what it wrote.
    fn copy(
        &self,
        copy: &CopyAction,
        inputs: &[WorkerRef],
        dest: &mut ActiveSnapshot,
        more_follow: bool,
        cancel: &AtomicBool,
    ) -> Result<Option<String>> {
        let scratch = self.config.snapshots.scratch_root();
        let (wrote, sum) = match &inputs[copy.input] {
            WorkerRef::Local {
                name,
                exclude_patterns,
            } => {
                let upper = UpperWriter::new(dest.rootfs(), dest.upper());
                let sum = self.with_context_tree(name, exclude_patterns, |tree| {
                    let copied =
                        fileop::copy(tree, copy, dest.rootfs(), Some(&upper), scratch, cancel)?;
                    fileop::checksum_of_copy(tree, copy, &copied, &self.config.checksums)
                })?;
                (upper.wrote_any(), Some(sum))
            }
            input @ WorkerRef::Snapshot(_) => {
                let view = self.mount_view(input)?;
                let tree = SourceTree {
                    root: view.rootfs(),
                    ignore: None,
                    is_context: false,
                    layers: view.lowers(),
                };
                let upper = UpperWriter::new(dest.rootfs(), dest.upper())
                    .linking_from(view.lowers(), view.rootfs());
                fileop::copy(&tree, copy, dest.rootfs(), Some(&upper), scratch, cancel)?;
                (upper.wrote_any(), None)
            }
        };
        if wrote && more_follow {
            dest.remount()?;
        }
        Ok(sum)
    }

    /// What of a vertex's inputs' content enters its cache key: the manifest an image
    /// resolves to, a download's digest, the checksum of the local files a step copies or
    /// mounts.
    fn content_extra(&self, vertex: &Vertex, inputs: &[WorkerRef]) -> Result<Option<String>> {
        match &vertex.op {
            Op::Source(SourceOp::Image {
                reference,
                platform,
            }) => Ok(Some(
                self.resolve_image(reference, platform)?
                    .manifest_digest
                    .to_string(),
            )),
            // A git source is the commit its reference names now.
            Op::Source(SourceOp::Git {
                remote, reference, ..
            }) => Ok(Some(
                crate::git::resolve(remote, reference).map_err(|e| anyhow!(e))?,
            )),
            // With --checksum the content is known without asking the server.
            Op::Source(SourceOp::Http {
                checksum: Some(sum),
                ..
            }) => Ok(Some(sum.clone())),
            Op::Source(SourceOp::Http { url, .. }) => {
                let download = http::download(url, None, self.config.snapshots.scratch_root())?;
                let digest = download.digest.clone();
                self.downloads.lock().unwrap().insert(url.clone(), download);
                Ok(Some(digest))
            }
            // A mounted local source counts by the content of what is mounted.
            Op::Exec(exec) => {
                let mut sums = Vec::new();
                for mount in &exec.mounts {
                    if let Some(input) = mount.input
                        && let WorkerRef::Local {
                            name,
                            exclude_patterns,
                        } = &inputs[input]
                    {
                        let mounted = CopyAction::new(input, mount.source.clone(), "/");
                        sums.push(self.with_context_tree(name, exclude_patterns, |tree| {
                            fileop::checksum(tree, &mounted, &self.config.checksums)
                        })?);
                    }
                }
                Ok((!sums.is_empty()).then(|| sums.join(",")))
            }
            Op::File(file) => {
                let mut sums = Vec::new();
                for action in &file.actions {
                    if let FileAction::Copy(copy) = action
                        && let WorkerRef::Local {
                            name,
                            exclude_patterns,
                        } = &inputs[copy.input]
                    {
                        sums.push(self.with_context_tree(name, exclude_patterns, |tree| {
                            fileop::checksum(tree, copy, &self.config.checksums)
                        })?);
                    }
                }
                Ok((!sums.is_empty()).then(|| sums.join(",")))
            }
            _ => Ok(None),
        }
    }
}

impl Executor for Worker {
    type Output = WorkerRef;

    fn cache_extra(&self, vertex: &Vertex, inputs: &[WorkerRef]) -> Result<Option<String>> {
        let content = self.content_extra(vertex, inputs)?;
        if let (Op::File(_), Some(sums)) = (&vertex.op, &content) {
            self.context_sums
                .lock()
                .unwrap()
                .insert(vertex.digest(), sums.clone());
        }
        // SOURCE_DATE_EPOCH clamps the times in the layers steps write: it is part of what
        // they make, so a layer made without it is not one made with it.
        let epoch = match (&vertex.op, self.config.layer_options.source_date_epoch) {
            (Op::Exec(_) | Op::File(_), Some(epoch)) => Some(format!("source-date-epoch={epoch}")),
            _ => None,
        };
        Ok(match (content, epoch) {
            (Some(content), Some(epoch)) => Some(format!("{content};{epoch}")),
            (content, epoch) => content.or(epoch),
        })
    }

    fn cacheable(&self, vertex: &Vertex) -> bool {
        !matches!(vertex.op, Op::Source(SourceOp::Local { .. }))
    }

    fn usable(&self, output: &WorkerRef) -> bool {
        match output {
            WorkerRef::Snapshot(snapshot) => snapshot
                .layers
                .iter()
                .all(|l: &LayerBlob| self.config.content.available(&l.digest)),
            WorkerRef::Local { .. } => false,
        }
    }

    fn execute(
        &self,
        vertex: &Vertex,
        inputs: &[WorkerRef],
        step: &StepContext<'_>,
    ) -> Result<WorkerRef> {
        match &vertex.op {
            Op::Source(SourceOp::Image {
                reference,
                platform,
            }) => {
                let image = self.resolve_image(reference, platform)?;
                let layers = image
                    .layers
                    .into_iter()
                    .map(|l| LayerBlob {
                        diff_id: l.diff_id,
                        digest: l.digest,
                        size: l.size,
                        media_type: l.media_type,
                        created: None,
                    })
                    .collect();
                Ok(WorkerRef::Snapshot(Snapshot { layers }))
            }
            Op::Source(SourceOp::Local {
                name,
                exclude_patterns,
            }) => {
                self.context_dir(name, exclude_patterns)?;
                Ok(WorkerRef::Local {
                    name: name.clone(),
                    exclude_patterns: exclude_patterns.clone(),
                })
            }
            Op::Source(SourceOp::Http {
                url,
                checksum,
                filename,
            }) => self.fetch(url, checksum.as_deref(), filename),
            Op::Source(SourceOp::Git {
                remote,
                reference,
                keep_git_dir,
                checksum,
            }) => self.clone_git(remote, reference, *keep_git_dir, checksum),
            Op::Exec(op) => self.run_exec(op, inputs, step),
            Op::File(op) => {
                let (made, sums) = self.run_file(op, inputs, step.cancel)?;
                // What was copied must be what the cache key says: a context file that
                // changed while it was copied would be cached under another content's key.
                let keyed = self.context_sums.lock().unwrap().remove(&vertex.digest());
                if let Some(keyed) = keyed
                    && sums.join(",") != keyed
                {
                    bail!(
                        "the build context changed while it was copied (a file is not what it was when the step's cache key was taken): build again"
                    );
                }
                Ok(made)
            }
            Op::Merge(merge) => {
                let mut layers = Vec::new();
                for &i in &merge.inputs {
                    layers.extend(self.snapshot(&inputs[i])?.layers.iter().cloned());
                }
                Ok(WorkerRef::Snapshot(Snapshot { layers }))
            }
        }
    }
}
