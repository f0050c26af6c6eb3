//! Writing a directory in overlayfs format as an OCI layer tar.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_cache::{ContentStore, Digest};
use tar::{EntryType, Header};

use super::{LAYER_XATTR, OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, PAX_XATTR_PREFIX, WHITEOUT_PREFIX};

/// Media type of gzip-compressed layers (what kiln exports and pushes by default).
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Media type of the uncompressed layers kiln stores for its own images.
pub const TAR_LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// Choices that change the bytes of a layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// `SOURCE_DATE_EPOCH`: timestamps later than this are clamped to it,
    /// for reproducible layers.
    pub source_date_epoch: Option<u64>,
}

/// A layer stored in the content store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerBlob {
    /// sha256 of the uncompressed tar (the image config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// sha256 of the compressed blob.
    pub digest: Digest,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// The blob's media type.
    pub media_type: String,
    /// When the step that made this layer ran (seconds since the epoch; `None` for the
    /// layers of pulled or loaded images). Cache records keep it, so the history of a
    /// cached rebuild, and with it the image ID, stays the same, as in BuildKit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
}

/// Writes `upper` (a directory in overlayfs format over `lowers`, top first) as an
/// uncompressed OCI layer into `content`; its digest is its diff_id, hashed as it streams.
///
/// Compression waits until a layer leaves the machine (an archive or a push; see
/// [`recompress_all`](super::recompress_all)): local builds never pay for it.
pub fn store_layer(
    upper: &Path,
    lowers: &[PathBuf],
    content: &ContentStore,
    options: WriteOptions,
) -> Result<LayerBlob> {
    let mut blob = content.writer().context("cannot start a layer blob")?;
    write_layer(upper, lowers, &mut blob, options)?;
    let (digest, size) = blob.commit(None).context("cannot store the layer blob")?;
    Ok(LayerBlob {
        diff_id: digest,
        digest,
        size,
        media_type: TAR_LAYER_MEDIA_TYPE.to_string(),
        created: Some(kiln_cache::unix_seconds_now()),
    })
}

/// Writes `upper` as an uncompressed layer tar: entries in byte order of
/// their paths, parents before children, hard links as link entries, xattrs
/// as PAX records, overlay whiteouts and opaque directories as OCI
/// whiteouts. A directory that overlayfs only copied up from `lowers` (top first) and
/// that is unchanged (mode, owner, mtime, xattrs) is left out, as BuildKit's differ does;
/// what it holds is still written.
pub fn write_layer(
    upper: &Path,
    lowers: &[PathBuf],
    out: impl Write,
    options: WriteOptions,
) -> Result<()> {
    let mut writer = LayerTarWriter::new(out, options, lowers);
    writer.write_dir_contents(upper, "")?;
    writer
        .builder
        .finish()
        .context("cannot finish the layer tar")?;
    Ok(())
}

/// Writes whole root filesystems into one tar, each under its own directory: a
/// multi-platform `type=tar` output (`linux_amd64/…`, `linux_arm64/…`, as BuildKit).
pub fn write_trees(
    trees: &[(String, &Path)],
    out: impl Write,
    options: WriteOptions,
) -> Result<()> {
    let mut writer = LayerTarWriter::new(out, options, &[]);
    for (dir, root) in trees {
        let meta = fs::symlink_metadata(root)
            .with_context(|| format!("cannot stat {}", root.display()))?;
        writer
            .write_entry(root, dir, &meta)
            .with_context(|| format!("cannot add {dir} to the tar"))?;
    }
    writer.builder.finish().context("cannot finish the tar")?;
    Ok(())
}

struct LayerTarWriter<'a, W: Write> {
    builder: tar::Builder<W>,
    options: WriteOptions,
    /// (device, inode) of multiply-linked files → the first path written.
    links: HashMap<(u64, u64), String>,
    /// The layers below, top first.
    lowers: &'a [PathBuf],
}

impl<'a, W: Write> LayerTarWriter<'a, W> {
    fn new(out: W, options: WriteOptions, lowers: &'a [PathBuf]) -> Self {
        LayerTarWriter {
            builder: tar::Builder::new(out),
            options,
            links: HashMap::new(),
            lowers,
        }
    }

    fn write_dir_contents(&mut self, dir: &Path, prefix: &str) -> Result<()> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            let name = name
                .to_str()
                .with_context(|| {
                    format!("file name is not UTF-8: {:?} in {}", name, dir.display())
                })?
                .to_string();
            let path = dir.join(&name);
            let archive_path = format!("{prefix}{name}");
            let meta = fs::symlink_metadata(&path)
                .with_context(|| format!("cannot stat {}", path.display()))?;
            self.write_entry(&path, &archive_path, &meta)
                .with_context(|| format!("cannot add {archive_path} to the layer"))?;
        }
        Ok(())
    }

    fn write_entry(&mut self, path: &Path, archive_path: &str, meta: &Metadata) -> Result<()> {
        let kind = meta.file_type();
        if kind.is_char_device() && meta.rdev() == 0 {
            let (parent, base) = match archive_path.rsplit_once('/') {
                Some((parent, base)) => (format!("{parent}/"), base),
                None => (String::new(), archive_path),
            };
            let mut header = self.header(meta, EntryType::Regular);
            header.set_mode(0);
            header.set_size(0);
            return self.append(
                header,
                &format!("{parent}{WHITEOUT_PREFIX}{base}"),
                None,
                &[],
                io::empty(),
            );
        }
        let xattrs = read_xattrs(path)?;
        if kind.is_dir() {
            let dir_path = format!("{archive_path}/");
            let opaque = is_opaque(path)?;
            if opaque || !same_dir_below(self.lowers, archive_path, meta, &xattrs)? {
                self.append(
                    self.header(meta, EntryType::Directory),
                    &dir_path,
                    None,
                    &xattrs,
                    io::empty(),
                )?;
            }
            if opaque {
                let mut marker = self.header(meta, EntryType::Regular);
                marker.set_mode(0);
                self.append(
                    marker,
                    &format!("{dir_path}{OPAQUE_MARKER}"),
                    None,
                    &[],
                    io::empty(),
                )?;
            }
            return self.write_dir_contents(path, &dir_path);
        }
        if kind.is_symlink() {
            let target = fs::read_link(path)?;
            let target = target.to_str().context("symlink target is not UTF-8")?;
            let header = self.header(meta, EntryType::Symlink);
            return self.append(header, archive_path, Some(target), &xattrs, io::empty());
        }
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key).cloned() {
                let mut header = self.header(meta, EntryType::Link);
                header.set_size(0);
                return self.append(header, archive_path, Some(&first), &[], io::empty());
            }
            self.links.insert(key, archive_path.to_string());
        }
        if kind.is_file() {
            let file = File::open(path)?;
            let mut header = self.header(meta, EntryType::Regular);
            header.set_size(meta.len());
            return self.append(header, archive_path, None, &xattrs, file);
        }
        let entry_type = if kind.is_fifo() {
            EntryType::Fifo
        } else if kind.is_char_device() {
            EntryType::Char
        } else if kind.is_block_device() {
            EntryType::Block
        } else {
            // Sockets cannot be archived; Docker skips them too.
            return Ok(());
        };
        let mut header = self.header(meta, entry_type);
        header.set_device_major(rustix::fs::major(meta.rdev()))?;
        header.set_device_minor(rustix::fs::minor(meta.rdev()))?;
        self.append(header, archive_path, None, &xattrs, io::empty())
    }

    /// A header carrying `meta`'s mode, owner and (clamped) mtime.
    fn header(&self, meta: &Metadata, entry_type: EntryType) -> Header {
        let mut header = Header::new_ustar();
        header.set_entry_type(entry_type);
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(meta.uid().into());
        header.set_gid(meta.gid().into());
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
        let mtime = self
            .options
            .source_date_epoch
            .map_or(mtime, |epoch| mtime.min(epoch));
        header.set_mtime(mtime);
        header.set_size(0);
        header
    }

    /// Appends one entry; names and link targets that do not fit the ustar
    /// fields, and xattrs, go into a PAX header first.
    fn append(
        &mut self,
        mut header: Header,
        path: &str,
        link: Option<&str>,
        xattrs: &[(String, Vec<u8>)],
        data: impl io::Read,
    ) -> Result<()> {
        let mut records = Vec::new();
        if set_bytes(&mut header.as_old_mut().name, path.as_bytes()) {
            pax_record(&mut records, "path", path.as_bytes());
        }
        if let Some(link) = link
            && set_bytes(&mut header.as_old_mut().linkname, link.as_bytes())
        {
            pax_record(&mut records, "linkpath", link.as_bytes());
        }
        for (name, value) in xattrs {
            pax_record(&mut records, &format!("{PAX_XATTR_PREFIX}{name}"), value);
        }
        if !records.is_empty() {
            let mut pax = Header::new_ustar();
            pax.set_entry_type(EntryType::XHeader);
            pax.set_mode(0o644);
            pax.set_mtime(header.mtime()?);
            let pax_name = format!(
                "PaxHeaders.0/{}",
                path.rsplit('/').find(|s| !s.is_empty()).unwrap_or(path)
            );
            set_bytes(&mut pax.as_old_mut().name, pax_name.as_bytes());
            pax.set_size(records.len() as u64);
            pax.set_cksum();
            self.builder.append(&pax, records.as_slice())?;
        }
        header.set_cksum();
        self.builder.append(&header, data)?;
        Ok(())
    }
}

/// Whether the layers below (`lowers`, top first) show a directory at `rel` with exactly
/// `meta`'s mode, owner and mtime and these xattrs (so the upper one is a mere copy-up).
fn same_dir_below(
    lowers: &[PathBuf],
    rel: &str,
    meta: &Metadata,
    xattrs: &[(String, Vec<u8>)],
) -> Result<bool> {
    for lower in lowers {
        let path = lower.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(below) => {
                return Ok(below.is_dir()
                    && below.mode() == meta.mode()
                    && below.uid() == meta.uid()
                    && below.gid() == meta.gid()
                    && below.mtime() == meta.mtime()
                    && below.mtime_nsec() == meta.mtime_nsec()
                    && read_xattrs(&path)? == xattrs);
            }
            Err(_) if hides_below(lower, rel)? => return Ok(false),
            Err(_) => {}
        }
    }
    Ok(false)
}

/// Removes from `upper` each directory that overlayfs only copied up (see
/// [`same_dir_below`]) and that holds nothing once the same is done below it, e.g. `/etc`
/// after a step's `/etc/hosts` mount point is gone. [`write_layer`] leaves such directories
/// out of the tar; the upper directory becomes the layer's unpacked form, which other
/// images with the same layer share, so it must hold what the tar holds and no more.
pub fn prune_copy_ups(upper: &Path, lowers: &[PathBuf]) -> Result<()> {
    // Every directory below `upper` with how many entries it holds, parents first.
    let mut dirs: Vec<(String, usize)> = Vec::new();
    let mut pending = vec![String::new()];
    while let Some(rel) = pending.pop() {
        let dir = upper.join(&rel);
        let mut entries = 0;
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let entry = entry?;
            entries += 1;
            if entry.file_type()?.is_dir() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                pending.push(if rel.is_empty() {
                    name.into_owned()
                } else {
                    format!("{rel}/{name}")
                });
            }
        }
        dirs.push((rel, entries));
    }
    // Children before parents: a directory goes when it is a copy-up and all it held went.
    let mut removed: HashMap<String, usize> = HashMap::new();
    for (rel, entries) in dirs.iter().rev() {
        if rel.is_empty() || removed.get(rel).copied().unwrap_or(0) != *entries {
            continue;
        }
        let path = upper.join(rel);
        let meta = fs::symlink_metadata(&path)?;
        if is_opaque(&path)? || !same_dir_below(lowers, rel, &meta, &read_xattrs(&path)?)? {
            continue;
        }
        let parent = path.parent().unwrap_or(upper);
        let parent_meta = fs::symlink_metadata(parent)?;
        fs::remove_dir(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        // The parent keeps its times, as the layer shows them.
        filetime::set_file_times(
            parent,
            filetime::FileTime::from_last_access_time(&parent_meta),
            filetime::FileTime::from_last_modification_time(&parent_meta),
        )?;
        let parent_rel = rel.rsplit_once('/').map_or("", |(p, _)| p);
        *removed.entry(parent_rel.to_string()).or_default() += 1;
    }
    Ok(())
}

/// Copies `value` into a fixed-size header field, truncating; returns
/// whether it had to be truncated (so a PAX record must carry it).
fn set_bytes(field: &mut [u8], value: &[u8]) -> bool {
    field.fill(0);
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
    value.len() > field.len()
}

/// Appends a PAX record `"<len> key=value\n"`, whose length counts itself.
fn pax_record(records: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3; // space, '=', newline
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    records.extend_from_slice(format!("{len} {key}=").as_bytes());
    records.extend_from_slice(value);
    records.push(b'\n');
}

/// Whether `dir` is an opaque directory of an overlay upper layer.
fn is_opaque(dir: &Path) -> Result<bool> {
    Ok(xattr::get(dir, OVERLAY_OPAQUE_XATTR)?.is_some_and(|v| v == b"y"))
}

/// Whether, in the unpacked layer `lower`, an ancestor of `rel` is a whiteout or an opaque
/// directory, hiding `rel` in every layer further down.
fn hides_below(lower: &Path, rel: &str) -> Result<bool> {
    let mut path = lower.to_path_buf();
    for component in Path::new(rel)
        .parent()
        .into_iter()
        .flat_map(Path::components)
    {
        path.push(component);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_char_device() && meta.rdev() == 0 => return Ok(true),
            Ok(meta) if meta.is_dir() && is_opaque(&path)? => return Ok(true),
            Ok(_) => {}
            Err(_) => return Ok(false),
        }
    }
    Ok(false)
}

/// The xattrs of `path` that belong in a layer: only `security.capability` (file
/// capabilities), as containerd's tar writer, which BuildKit's differ uses, records them.
/// `user.*` attributes of context files or archive entries stay out of images.
fn read_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut xattrs = Vec::new();
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => {
            return Ok(xattrs);
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot list xattrs of {}", path.display()));
        }
    };
    for name in names {
        let Some(name) = name.to_str().map(str::to_string) else {
            continue;
        };
        if name != LAYER_XATTR {
            continue;
        }
        if let Some(value) = xattr::get(path, &name)? {
            xattrs.push((name, value));
        }
    }
    xattrs.sort();
    Ok(xattrs)
}
