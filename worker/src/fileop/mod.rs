//! File ops (COPY, ADD, heredoc files, WORKDIR's mkdir) applied to a
//! mounted root filesystem.

mod chmod;
mod direct;
mod select;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use filetime::FileTime;
use kiln_cache::ChecksumCache;
use kiln_patterns::has_wildcards;
use kiln_solver::{ChownOpt, CopyAction, MkdirAction, MkfileAction, SymlinkAction};
use rustix::fs::{CWD, FileType, Mode, mknodat};
use sha2::{Digest as _, Sha256};

use crate::layer::{extract_archive, is_tar_archive};
use crate::parallel::map_on_every_core;
use crate::rootfs::{Ids, chown_ids, resolve_in_root};
pub use chmod::apply_chmod;
pub use direct::UpperWriter;
pub use select::{Item, Selection, SourceTree, ignored_paths, select};

/// Copies what `action` selects from `tree` into the root filesystem at
/// `root`: contents, modes, mtimes, xattrs, symlinks and hard links, with
/// `--chown` names resolved in `root` and `--chmod` applied.
///
/// Directories, symlinks and archives are made in order first; then regular files are
/// copied on every core (with an `upper` writer, straight into the overlay's upper
/// directory where they may, and hard-linked where nothing about them changes); then the
/// further names of hard-linked files are linked. ADD unpacks archives in a scratch
/// directory made in `scratch`, which must be private to kiln (archives hold device nodes
/// and setuid files).
pub fn copy(
    tree: &SourceTree<'_>,
    action: &CopyAction,
    root: &Path,
    upper: Option<&UpperWriter<'_>>,
    scratch: &Path,
    cancel: &AtomicBool,
) -> Result<CopiedDigests> {
    copy_tree(tree, action, root, upper, scratch, cancel, Existing::Merge)
}

/// What a copy does with a path already at an entry's destination.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Existing {
    /// As fsutil's copy (COPY): a directory merges with a directory (the copy's own
    /// destination resolved through symlinks, what it holds not), anything else is an
    /// error; a file replaces a file or symlink but not a directory.
    Merge,
    /// As containerd's tar apply (ADD of an archive): an entry replaces what is there,
    /// except that a directory merges with a directory, through symlinks.
    Replace,
}

/// [`copy`], with `existing` saying how entries meet what is already there.
fn copy_tree(
    tree: &SourceTree<'_>,
    action: &CopyAction,
    root: &Path,
    upper: Option<&UpperWriter<'_>>,
    scratch: &Path,
    cancel: &AtomicBool,
    existing_paths: Existing,
) -> Result<CopiedDigests> {
    let Selection {
        items,
        content_dests,
    } = select(tree, action, Some(root))?;
    if items.is_empty()
        && content_dests.is_empty()
        && action.allow_wildcard
        && has_wildcards(&action.src)
    {
        // A wildcard that matches nothing copies nothing and makes no destination.
        return Ok(CopiedDigests::new());
    }
    let owner = owner(root, action.chown.as_ref());
    let parent_owner = owner.unwrap_or_default();
    let dir_mode = created_dir_mode(action.chmod.as_deref());
    if action.dest.ends_with('/') {
        mkdir_all(root, &action.dest, dir_mode, parent_owner)?;
    }
    for dest in &content_dests {
        mkdir_all(root, dest, dir_mode, parent_owner)?;
    }
    let ids_of = |item: &Item| {
        owner.unwrap_or(if tree.is_context {
            Ids::default()
        } else {
            Ids {
                uid: item.meta.uid(),
                gid: item.meta.gid(),
            }
        })
    };
    // Regular files to copy, by target (a later item for the same target wins).
    let mut files: HashMap<PathBuf, &Item> = HashMap::new();
    let mut first_links: HashMap<(usize, (u64, u64)), PathBuf> = HashMap::new();
    let mut further_links: Vec<(PathBuf, PathBuf, &Item)> = Vec::new();
    let mut dir_times = Vec::new();
    // Destination directories known to exist, with their host paths when this copy made
    // or entered them: items come parents first, so most parents were just copied and
    // need neither a `mkdir -p` walk nor a resolution from the root (which a tree a
    // thousand directories deep would pay a thousand times per entry).
    let mut present: HashMap<&str, Option<PathBuf>> = HashMap::new();
    for item in &items {
        check_cancelled(cancel)?;
        let (parent, name) = item
            .dest
            .rsplit_once('/')
            .map_or(("/", item.dest.as_str()), |(p, n)| {
                (if p.is_empty() { "/" } else { p }, n)
            });
        if !present.contains_key(parent) {
            mkdir_all(root, parent, dir_mode, parent_owner)?;
            present.insert(parent, None);
        }
        let kind = item.meta.file_type();
        if action.unpack_archives && item.is_source && kind.is_file() && is_tar_archive(&item.host)
        {
            extract_into(item, action, root, scratch, cancel)?;
            continue;
        }
        // As fsutil's copy: a copied directory's own destination is resolved through
        // symlinks, what it holds is not (a symlink there is not a directory).
        let follow = kind.is_dir() && (item.is_source || existing_paths == Existing::Replace);
        let known = present
            .get(parent)
            .and_then(Option::as_ref)
            .map(|host| host.join(name))
            .filter(|candidate| {
                !follow || !fs::symlink_metadata(candidate).is_ok_and(|m| m.is_symlink())
            });
        let target = match known {
            Some(target) => target,
            None => resolve_in_root(root, &item.dest, follow)?,
        };
        files.remove(&target);
        let context = || format!("cannot copy {} to {}", item.rel, item.dest);
        let existing = fs::symlink_metadata(&target).ok();
        if kind.is_dir() {
            present.insert(&item.dest, Some(target.clone()));
            match existing {
                Some(existing) if existing.is_dir() => {}
                Some(_) if existing_paths == Existing::Merge => {
                    bail!("cannot copy to non-directory: {}", item.dest)
                }
                Some(_) => {
                    remove(&target)?;
                    fs::create_dir(&target).with_context(context)?;
                }
                None => fs::create_dir(&target).with_context(context)?,
            }
            finish_entry(&target, item, ids_of(item), action)?;
            dir_times.push((target, FileTime::from_last_modification_time(&item.meta)));
            continue;
        }
        if existing_paths == Existing::Merge && existing.is_some_and(|m| m.is_dir()) {
            bail!("cannot replace to directory {} with file", item.dest);
        }
        present.remove(item.dest.as_str());
        remove(&target)?;
        if kind.is_symlink() {
            symlink(fs::read_link(&item.host)?, &target).with_context(context)?;
            finish_entry(&target, item, ids_of(item), action)?;
        } else if kind.is_file() {
            if item.meta.nlink() > 1 {
                let inode = (item.source, tree.link_key(item));
                if let Some(first) = first_links.get(&inode) {
                    further_links.push((first.clone(), target, item));
                    continue;
                }
                first_links.insert(inode, target.clone());
            }
            files.insert(target, item);
        } else {
            // FIFOs, sockets and device nodes are made anew, as fsutil's copy makes them.
            mknodat(
                CWD,
                &target,
                FileType::from_raw_mode(item.meta.mode()),
                Mode::empty(),
                item.meta.rdev(),
            )
            .with_context(context)?;
            finish_entry(&target, item, ids_of(item), action)?;
        }
    }
    let files: Vec<(PathBuf, &Item)> = files.into_iter().collect();
    let copied = Mutex::new(CopiedDigests::new());
    map_on_every_core(&files, |(target, item)| {
        check_cancelled(cancel)?;
        let ids = ids_of(item);
        let unchanged =
            ids.uid == item.meta.uid() && ids.gid == item.meta.gid() && action.chmod.is_none();
        let claimed = upper.and_then(|u| Some((u, u.claim(item, target)?)));
        if let Some((upper, path)) = &claimed
            && unchanged
            && upper.link(item, path)
        {
            return Ok(());
        }
        let target = claimed.as_ref().map_or(target, |(_, path)| path);
        let failed = || format!("cannot copy {} to {}", item.rel, item.dest);
        if tree.is_context {
            // The digest of the bytes written, for checking them against the cache key.
            let digest = copy_hashing(&item.host, target).with_context(failed)?;
            copied.lock().unwrap().insert(item.host.clone(), digest);
        } else {
            fs::copy(&item.host, target).with_context(failed)?;
        }
        finish_entry(target, item, ids, action)
    })?;
    for (first, target, item) in further_links {
        fs::hard_link(&first, &target)
            .with_context(|| format!("cannot copy {} to {}", item.rel, item.dest))?;
    }
    for (path, mtime) in dir_times.into_iter().rev() {
        filetime::set_symlink_file_times(&path, mtime, mtime)?;
    }
    Ok(copied.into_inner().unwrap())
}

/// The sha256 of each build-context file a copy wrote, by its host path, taken from the
/// bytes it wrote.
pub type CopiedDigests = HashMap<PathBuf, [u8; 32]>;

/// Copies the file `from` to `to`, hashing the bytes as they are written.
fn copy_hashing(from: &Path, to: &Path) -> Result<[u8; 32]> {
    let mut source = fs::File::open(from)?;
    let mut hasher = Sha256::new();
    let mut target = fs::File::create(to)?;
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = match std::io::Read::read(&mut source, &mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        hasher.update(&buffer[..n]);
        target.write_all(&buffer[..n])?;
    }
    Ok(hasher.finalize().into())
}

/// The mode of the directories a COPY creates on the way to its destination: an octal
/// `--chmod`'s permission bits, else 0755 (as BuildKit's copy makes them).
fn created_dir_mode(chmod: Option<&str>) -> u32 {
    chmod
        .filter(|spec| spec.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|spec| u32::from_str_radix(spec, 8).ok())
        .map_or(0o755, |mode| mode & 0o777)
}

/// Gives a copied entry its owner, mode (after `--chmod`), xattrs and mtime (a
/// directory's mtime is set at the end, once its contents are in).
fn finish_entry(target: &Path, item: &Item, ids: Ids, action: &CopyAction) -> Result<()> {
    let context = || format!("cannot copy {} to {}", item.rel, item.dest);
    let kind = item.meta.file_type();
    lchown(target, Some(ids.uid), Some(ids.gid)).with_context(context)?;
    if !kind.is_symlink() {
        let mode = item.meta.mode() & 0o7777;
        let mode = match &action.chmod {
            Some(spec) => apply_chmod(spec, mode, kind.is_dir())?,
            None => mode,
        };
        fs::set_permissions(target, fs::Permissions::from_mode(mode)).with_context(context)?;
        copy_xattrs(&item.host, target)?;
    }
    if !kind.is_dir() {
        let mtime = FileTime::from_last_modification_time(&item.meta);
        filetime::set_symlink_file_times(target, mtime, mtime).with_context(context)?;
    }
    Ok(())
}

/// ADD of a local archive: its contents go into the destination directory, owners and
/// modes as the archive says (owners as `--chown` says, if given). The archive is unpacked
/// into a fresh directory in `scratch` first.
fn extract_into(
    item: &Item,
    action: &CopyAction,
    root: &Path,
    scratch: &Path,
    cancel: &AtomicBool,
) -> Result<()> {
    let unpacked = tempfile::Builder::new()
        .prefix("add-")
        .tempdir_in(scratch)
        .with_context(|| format!("cannot create a directory in {}", scratch.display()))?;
    let archive = Cancellable {
        inner: fs::File::open(&item.host)?,
        cancel,
    };
    extract_archive(archive, unpacked.path())
        .with_context(|| format!("cannot extract {}", item.rel))?;
    let mut contents = CopyAction::new(0, "/", format!("{}/", action.dest.trim_end_matches('/')));
    contents.chown = action.chown.clone();
    let tree = SourceTree {
        root: unpacked.path(),
        ignore: None,
        is_context: false,
        layers: &[],
    };
    copy_tree(
        &tree,
        &contents,
        root,
        None,
        scratch,
        cancel,
        Existing::Replace,
    )
    .map(drop)
}

/// Fails once the build is cancelled.
fn check_cancelled(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        bail!("build cancelled");
    }
    Ok(())
}

/// A reader that fails once the build is cancelled: decompressing an archive (a gzip
/// bomb, say) stops with the build instead of running on.
struct Cancellable<'a, R> {
    inner: R,
    cancel: &'a AtomicBool,
}

impl<R: std::io::Read> std::io::Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("build cancelled"));
        }
        self.inner.read(buf)
    }
}

/// sha256 over what `action` selects from `tree`: each entry's path below
/// the source, type, mode, link target and content. Owners and mtimes are
/// left out, so a fresh checkout of the same files gives the same sum.
///
/// File contents enter as their sha256, taken from `digests` when the file is unchanged.
pub fn checksum(
    tree: &SourceTree<'_>,
    action: &CopyAction,
    digests: &ChecksumCache,
) -> Result<String> {
    checksum_of_copy(tree, action, &CopiedDigests::new(), digests)
}

/// [`checksum`] with the contents of the files in `copied` taken from there: the sum of
/// what a copy wrote, to hold against the sum its cache key was made of.
pub fn checksum_of_copy(
    tree: &SourceTree<'_>,
    action: &CopyAction,
    copied: &CopiedDigests,
    digests: &ChecksumCache,
) -> Result<String> {
    let mut hasher = Sha256::new();
    for item in select(tree, action, None)?.items {
        let kind = item.meta.file_type();
        hasher.update(item.rel.as_bytes());
        hasher.update([0]);
        hasher.update((item.meta.mode() & 0o177777).to_le_bytes());
        if kind.is_symlink() {
            hasher.update(fs::read_link(&item.host)?.as_os_str().as_encoded_bytes());
        } else if kind.is_file() {
            let digest = match copied.get(&item.host) {
                Some(digest) => *digest,
                None => digests
                    .file_digest(&item.host, &item.meta)
                    .with_context(|| format!("cannot read {}", item.rel))?,
            };
            hasher.update(digest);
        }
        hasher.update([0xff]);
    }
    Ok(hex_digest(hasher))
}

fn hex_digest(hasher: Sha256) -> String {
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// `mkdir` (WORKDIR and friends).
pub fn mkdir(root: &Path, action: &MkdirAction) -> Result<()> {
    let ids = owner(root, action.chown.as_ref()).unwrap_or_default();
    if action.make_parents {
        mkdir_all(root, &action.path, action.mode, ids)
    } else {
        let target = resolve_in_root(root, &action.path, true)?;
        if !target.is_dir() {
            fs::create_dir(&target).with_context(|| format!("cannot create {}", action.path))?;
            set_owner_mode(&target, ids, action.mode)?;
        }
        Ok(())
    }
}

/// A file with literal content (heredoc COPY sources).
pub fn mkfile(root: &Path, action: &MkfileAction) -> Result<()> {
    let ids = owner(root, action.chown.as_ref()).unwrap_or_default();
    let target = resolve_in_root(root, &action.path, false)?;
    remove(&target)?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(action.mode)
        .open(&target)
        .with_context(|| format!("cannot create {}", action.path))?;
    file.write_all(action.data.as_bytes())?;
    set_owner_mode(&target, ids, action.mode)
}

/// A symbolic link.
pub fn make_symlink(root: &Path, action: &SymlinkAction) -> Result<()> {
    let target = resolve_in_root(root, &action.path, false)?;
    remove(&target)?;
    symlink(&action.target, &target)
        .with_context(|| format!("cannot create symlink {}", action.path))
}

/// `mkdir -p` inside the root filesystem; created directories get `mode`
/// and `ids`, existing ones are left alone.
fn mkdir_all(root: &Path, path: &str, mode: u32, ids: Ids) -> Result<()> {
    let mut current = String::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        current.push('/');
        current.push_str(part);
        let host = resolve_in_root(root, &current, true)?;
        match fs::metadata(&host) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => bail!("cannot create directory {current}: a file is in the way"),
            Err(_) => {
                fs::create_dir(&host)
                    .with_context(|| format!("cannot create directory {current}"))?;
                set_owner_mode(&host, ids, mode)?;
            }
        }
    }
    Ok(())
}

fn set_owner_mode(path: &Path, ids: Ids, mode: u32) -> Result<()> {
    lchown(path, Some(ids.uid), Some(ids.gid))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The ids a `--chown` value names in the root filesystem, if one is given.
fn owner(root: &Path, chown: Option<&ChownOpt>) -> Option<Ids> {
    chown.map(|c| chown_ids(root, &c.user, c.group.as_deref()))
}

fn copy_xattrs(from: &Path, to: &Path) -> Result<()> {
    let Ok(names) = xattr::list(from) else {
        return Ok(());
    };
    for name in names {
        if name.to_string_lossy().starts_with("trusted.overlay.") {
            continue;
        }
        if let Some(value) = xattr::get(from, &name)? {
            xattr::set(to, &name, &value)?;
        }
    }
    Ok(())
}

/// Removes a non-directory, or a directory with its contents.
fn remove(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path)?,
        Ok(_) => fs::remove_file(path)?,
        Err(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests;
