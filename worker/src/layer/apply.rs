//! Unpacking an OCI layer tar into a directory in overlayfs format, safely:
//! no entry can write outside the directory, whatever its name, link target
//! or the symlinks that earlier entries created.

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use filetime::FileTime;
use flate2::read::MultiGzDecoder;
use rustix::fs::{CWD, FileType, Mode, makedev, mknodat};
use tar::EntryType;

use kiln_cache::DigestingReader;

use super::{
    LayerBlob, OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, OVERLAY_XATTR_PREFIX, PAX_XATTR_PREFIX,
    WHITEOUT_PREFIX,
};
use crate::rootfs::resolve_in_root;

/// What [`apply_layer`] unpacked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Entries in the tar (PAX headers not counted).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Unpacks a layer (a plain, gzip or zstd tar) into `dest`, which should
/// be a fresh directory. OCI whiteouts become overlay whiteouts; owners,
/// modes (including setuid/setgid), xattrs and mtimes are kept. Entries
/// whose names contain `..`, or that would be written through a symlink, are
/// refused.
///
/// The blob must have the digest `layer.digest` and its tar the digest `layer.diff_id`
/// (what an image's config claims): both are checked as the layer streams, and a layer
/// whose content is not what it claims is an error, so an unpacked layer can be trusted
/// to be the one its diff_id names.
pub fn apply_layer(reader: impl Read, dest: &Path, layer: &LayerBlob) -> Result<ApplyStats> {
    let mut blob = DigestingReader::new(reader);
    let mut tar = DigestingReader::new(decompressed(&mut blob)?);
    let stats = unpack(&mut tar, dest, Whiteouts::Convert).context("cannot read the layer")?;
    let diff_id = tar.finish().context("cannot read the layer")?;
    let digest = blob.finish().context("cannot read the layer")?;
    if digest != layer.digest {
        bail!(
            "the blob is corrupt: its content has the digest {digest}, not {}",
            layer.digest
        );
    }
    if diff_id != layer.diff_id {
        bail!(
            "the layer is not what the image claims: its content has the diff_id {diff_id}, \
             the image's config says {}",
            layer.diff_id
        );
    }
    Ok(stats)
}

/// Extracts a tar archive (plain, gzip, bzip2, xz or zstd) into the fresh directory `dest`,
/// as ADD does: like [`apply_layer`], but `.wh.` names are ordinary files.
pub fn extract_archive(reader: impl Read, dest: &Path) -> Result<ApplyStats> {
    unpack(decompressed(reader)?, dest, Whiteouts::Keep)
}

/// Whether `path` holds a tar archive, possibly compressed: the first header of the
/// decompressed stream has a valid checksum (how Docker decides what ADD extracts).
pub fn is_tar_archive(path: &Path) -> bool {
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    let Ok(mut stream) = decompressed(file) else {
        return false;
    };
    let mut header = [0u8; 512];
    if stream.read_exact(&mut header).is_err() {
        return false;
    }
    let recorded = std::str::from_utf8(&header[148..156])
        .ok()
        .map(|field| field.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|octal| u32::from_str_radix(octal, 8).ok());
    let computed: u32 = header
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    recorded == Some(computed)
}

/// `reader`'s content, decompressed according to its magic bytes.
pub(super) fn decompressed<'a>(reader: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    let mut reader = BufReader::new(reader);
    let magic = reader.fill_buf().context("cannot read the archive")?;
    Ok(match magic {
        [0x1f, 0x8b, ..] => Box::new(MultiGzDecoder::new(reader)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(zstd::Decoder::with_buffer(reader)?),
        [b'B', b'Z', b'h', ..] => Box::new(bzip2::read::BzDecoder::new(reader)),
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Box::new(xz2::read::XzDecoder::new(reader)),
        _ => Box::new(reader),
    })
}

/// What `.wh.` entries mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whiteouts {
    /// OCI whiteouts, to become overlay whiteouts (layers).
    Convert,
    /// Ordinary names (archives that ADD extracts).
    Keep,
}

fn unpack(stream: impl Read, dest: &Path, whiteouts: Whiteouts) -> Result<ApplyStats> {
    let mut archive = tar::Archive::new(stream);
    let mut stats = ApplyStats::default();
    let mut dir_times = Vec::new();
    let mut parents = Parents::default();
    for entry in archive.entries().context("cannot read the tar")? {
        let mut entry = entry.context("corrupt tar")?;
        if entry.header().entry_type() == EntryType::XGlobalHeader {
            // PAX global headers carry defaults nothing here uses; Docker ignores them too.
            continue;
        }
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let applied = apply_entry(
            &mut entry,
            &raw_path,
            dest,
            whiteouts,
            &mut parents,
            &mut dir_times,
        )
        .with_context(|| format!("tar entry {shown:?}"))?;
        stats.entries += 1;
        stats.bytes += applied;
    }
    // Directory mtimes last: creating their children changed them.
    for (path, mtime) in dir_times.into_iter().rev() {
        filetime::set_symlink_file_times(&path, mtime, mtime)
            .with_context(|| format!("cannot set the mtime of {}", path.display()))?;
    }
    Ok(stats)
}

/// Applies one entry; returns the bytes of content written.
fn apply_entry<R: Read>(
    entry: &mut tar::Entry<R>,
    raw_path: &[u8],
    dest: &Path,
    whiteouts: Whiteouts,
    known_parents: &mut Parents,
    dir_times: &mut Vec<(PathBuf, FileTime)>,
) -> Result<u64> {
    let components = sanitize(raw_path)?;
    let Some((base, parents)) = components.split_last() else {
        // The root itself ("./"): nothing to create.
        return Ok(0);
    };
    let parent = known_parents.enter(dest, parents, whiteouts)?;
    // Whatever this entry replaces or removes is no longer a known parent.
    match base.strip_prefix(WHITEOUT_PREFIX) {
        Some(hidden) if whiteouts == Whiteouts::Convert => {
            let mut removed = parents.to_vec();
            removed.push(hidden.to_string());
            known_parents.invalidate(&removed);
        }
        _ => known_parents.invalidate(&components),
    }
    if whiteouts == Whiteouts::Convert && base.as_str() == OPAQUE_MARKER {
        xattr::set(&parent, OVERLAY_OPAQUE_XATTR, b"y")
            .context("cannot mark the directory opaque")?;
        return Ok(0);
    }
    if whiteouts == Whiteouts::Convert
        && let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX)
    {
        if matches!(hidden, "" | "." | "..") {
            // `.wh..` would remove the directory itself, `.wh...` the one above.
            bail!("invalid whiteout name {base:?}");
        }
        let target = parent.join(hidden);
        remove_existing(&target)?;
        mknodat(
            CWD,
            &target,
            FileType::CharacterDevice,
            Mode::empty(),
            makedev(0, 0),
        )
        .context("cannot create the whiteout")?;
        // The entry's time, so that a layer unpacked and written again is the same.
        if let Ok(mtime) = entry.header().mtime() {
            let mtime = FileTime::from_unix_time(i64::try_from(mtime).unwrap_or(0), 0);
            filetime::set_symlink_file_times(&target, mtime, mtime)
                .context("cannot set the whiteout's mtime")?;
        }
        return Ok(0);
    }
    let target = parent.join(base);
    let header = entry.header().clone();
    let entry_type = header.entry_type();
    if entry_type.is_dir() {
        match fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                remove_existing(&target)?;
                fs::create_dir(&target)?;
            }
            Err(_) => fs::create_dir(&target)?,
        }
    } else {
        remove_existing(&target)?;
    }
    let mut written = 0;
    match entry_type {
        EntryType::Directory => {}
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&target)
                .context("cannot create the file")?;
            written = io::copy(entry, &mut file).context("cannot write the file")?;
        }
        EntryType::Symlink => {
            let link = entry
                .link_name_bytes()
                .context("symlink without a target")?;
            let link = std::str::from_utf8(&link).context("symlink target is not UTF-8")?;
            symlink(link, &target).context("cannot create the symlink")?;
        }
        EntryType::Link => {
            let link = entry
                .link_name_bytes()
                .context("hard link without a target")?;
            let source_components = sanitize(&link)?;
            let (source_base, source_parents) = source_components
                .split_last()
                .context("hard link to the root")?;
            let source = ensure_existing_dir(dest, source_parents)?.join(source_base);
            let meta = fs::symlink_metadata(&source).with_context(|| {
                format!(
                    "hard link target {:?} is not in this layer",
                    String::from_utf8_lossy(&link)
                )
            })?;
            if meta.is_dir() {
                bail!("hard link to a directory");
            }
            fs::hard_link(&source, &target).context("cannot create the hard link")?;
            // A hard link shares its target's metadata; nothing more to set.
            return Ok(0);
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            let kind = match entry_type {
                EntryType::Char => FileType::CharacterDevice,
                EntryType::Block => FileType::BlockDevice,
                _ => FileType::Fifo,
            };
            let major = header.device_major()?.unwrap_or(0);
            let minor = header.device_minor()?.unwrap_or(0);
            mknodat(CWD, &target, kind, Mode::empty(), makedev(major, minor))
                .context("cannot create the device node")?;
        }
        other => bail!("unsupported tar entry type {other:?}"),
    }
    let old = header.as_old();
    let uid = numeric(&old.uid, || header.uid())? as u32;
    let gid = numeric(&old.gid, || header.gid())? as u32;
    lchown(&target, Some(uid), Some(gid)).context("cannot set the owner")?;
    if entry_type != EntryType::Symlink {
        // After chown, which clears setuid/setgid.
        let mode = numeric(&old.mode, || header.mode().map(u64::from))? as u32 & 0o7777;
        fs::set_permissions(&target, fs::Permissions::from_mode(mode))
            .context("cannot set the mode")?;
    }
    if let Some(extensions) = entry.pax_extensions()? {
        for record in extensions {
            let record = record?;
            if let Some(name) = record
                .key()
                .ok()
                .and_then(|k| k.strip_prefix(PAX_XATTR_PREFIX))
                .filter(|name| !name.starts_with(OVERLAY_XATTR_PREFIX))
            {
                xattr::set(&target, name, record.value_bytes())
                    .with_context(|| format!("cannot set xattr {name}"))?;
            }
        }
    }
    let mtime = FileTime::from_unix_time(numeric(&old.mtime, || header.mtime())? as i64, 0);
    if entry_type.is_dir() {
        dir_times.push((target, mtime));
    } else {
        filetime::set_symlink_file_times(&target, mtime, mtime).context("cannot set the mtime")?;
    }
    Ok(written)
}

/// A numeric header field; an empty one (all NULs or spaces) is 0, as Go's tar reader,
/// which Docker and BuildKit use, reads it.
fn numeric(raw: &[u8], parse: impl FnOnce() -> io::Result<u64>) -> io::Result<u64> {
    if raw.iter().all(|&b| b == 0 || b == b' ') {
        Ok(0)
    } else {
        parse()
    }
}

/// Splits an entry name into components, refusing `..` anywhere: a layer
/// never needs it, and it is how hostile tars escape.
fn sanitize(raw: &[u8]) -> Result<Vec<String>> {
    let text = std::str::from_utf8(raw).context("entry name is not UTF-8")?;
    let mut components = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => bail!("entry name contains \"..\""),
            other => components.push(other.to_string()),
        }
    }
    Ok(components)
}

/// The parent directories of the entries unpacked so far, with their host paths: tars
/// list parents before children, so an entry's parents are mostly the previous entry's,
/// and are not walked again (a tree a thousand directories deep would otherwise cost a
/// thousand path walks per entry).
#[derive(Default)]
struct Parents {
    /// Components of the last parent directory entered, relative to the destination.
    components: Vec<String>,
    /// The host path of each prefix of `components`.
    hosts: Vec<PathBuf>,
}

impl Parents {
    /// Makes sure every parent directory exists as a directory and returns the innermost
    /// one; missing parents are created 0755. With `Whiteouts::Convert` (layers) a
    /// symlink parent is refused; with `Keep` (archives ADD extracts), a symlink the
    /// archive made (`dir -> x` then `dir/file`) is followed as a chroot into `dest`
    /// would follow it (never out of `dest`), as Docker's extraction does.
    fn enter(&mut self, dest: &Path, parents: &[String], whiteouts: Whiteouts) -> Result<PathBuf> {
        let known = self
            .components
            .iter()
            .zip(parents)
            .take_while(|(a, b)| a == b)
            .count();
        self.components.truncate(known);
        self.hosts.truncate(known);
        for part in &parents[known..] {
            let dir = self.hosts.last().map_or(dest, PathBuf::as_path);
            let entered = enter_parent(dest, dir, part, whiteouts)?;
            self.components.push(part.clone());
            self.hosts.push(entered);
        }
        Ok(self
            .hosts
            .last()
            .cloned()
            .unwrap_or_else(|| dest.to_path_buf()))
    }

    /// Forgets what an entry at `components` may have replaced or removed.
    fn invalidate(&mut self, components: &[String]) {
        if self.components.starts_with(components) {
            let keep = components.len().saturating_sub(1);
            self.components.truncate(keep);
            self.hosts.truncate(keep);
        }
    }
}

/// Enters `part` of the directory `dir` (see [`Parents::enter`]).
fn enter_parent(dest: &Path, dir: &Path, part: &str, whiteouts: Whiteouts) -> Result<PathBuf> {
    let candidate = dir.join(part);
    match fs::symlink_metadata(&candidate) {
        Ok(meta) if meta.is_dir() => Ok(candidate),
        Ok(meta) if meta.file_type().is_symlink() && whiteouts == Whiteouts::Keep => {
            let inside = candidate.strip_prefix(dest).unwrap_or(&candidate);
            let resolved = resolve_in_root(dest, &inside.to_string_lossy(), true)?;
            if !resolved.is_dir() {
                fs::create_dir_all(&resolved)?;
            }
            Ok(resolved)
        }
        Ok(meta) if meta.file_type().is_symlink() => bail!(
            "parent {} is a symlink; refusing to write through it",
            display_in(dest, &candidate)
        ),
        Ok(_) => bail!("parent {} is not a directory", display_in(dest, &candidate)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(&candidate)?;
            fs::set_permissions(&candidate, fs::Permissions::from_mode(0o755))?;
            Ok(candidate)
        }
        Err(e) => Err(e).with_context(|| format!("cannot stat {}", candidate.display())),
    }
}

/// Like [`Parents::enter`] for layers, but creates nothing: every component must be an
/// existing real directory.
fn ensure_existing_dir(dest: &Path, parents: &[String]) -> Result<PathBuf> {
    let mut dir = dest.to_path_buf();
    for part in parents {
        dir.push(part);
        let meta = fs::symlink_metadata(&dir)
            .with_context(|| format!("{} does not exist in this layer", display_in(dest, &dir)))?;
        if !meta.is_dir() {
            bail!("{} is not a directory", display_in(dest, &dir));
        }
    }
    Ok(dir)
}

/// Removes whatever is at `path` (a directory with all its contents).
fn remove_existing(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path)?,
        Ok(_) => fs::remove_file(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

fn display_in(dest: &Path, path: &Path) -> String {
    format!("/{}", path.strip_prefix(dest).unwrap_or(path).display())
}
