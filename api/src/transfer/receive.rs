//! The receiving side of DiffCopy: makes a directory match the sender's, asking only for
//! the files whose metadata differs from what the directory already holds.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, lchown, symlink};
use std::path::Path;

use anyhow::{Context, Result, bail};
use filetime::FileTime;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt as _};

use super::mode::GO_TYPE_BITS;
use super::{error_packet, packet, to_unix_mode};
use crate::fsutil::packet::PacketType;
use crate::fsutil::{Packet, Stat};

/// What a transfer moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiveStats {
    /// Entries the sender listed.
    pub entries: u64,
    /// Files whose data was asked for (the others were already there, unchanged).
    pub files_requested: u64,
    /// Bytes of file data received.
    pub bytes: u64,
}

/// One listed entry.
struct Entry {
    id: u32,
    rel: String,
    stat: Stat,
}

/// Receives a directory into `dest` (created if missing) as the receiver of DiffCopy:
/// requests go out on `outgoing`, packets come in on `incoming`. What `dest` held before
/// is kept where the sender's metadata (type, size, mtime, mode, owner) matches, and
/// deleted where the sender has nothing. Paths that would leave `dest` are refused.
pub async fn receive(
    dest: &Path,
    incoming: impl Stream<Item = Result<Packet, tonic::Status>> + Unpin,
    outgoing: mpsc::Sender<Packet>,
) -> Result<ReceiveStats> {
    let result = receive_inner(dest, incoming, &outgoing).await;
    if let Err(err) = &result {
        // Tell the other side why, if it still listens.
        let _ = outgoing.send(error_packet(&format!("{err:#}"))).await;
    }
    result
}

async fn receive_inner(
    dest: &Path,
    mut incoming: impl Stream<Item = Result<Packet, tonic::Status>> + Unpin,
    outgoing: &mpsc::Sender<Packet>,
) -> Result<ReceiveStats> {
    let mut stats = ReceiveStats::default();
    // What the directory holds is read while the sender lists its files.
    let root = dest.to_path_buf();
    let scanning = tokio::task::spawn_blocking(move || scan(&root));
    let mut entries = Vec::new();
    let mut kinds: HashMap<String, u32> = HashMap::new();
    loop {
        let message = next(&mut incoming).await?;
        match PacketType::try_from(message.r#type) {
            Ok(PacketType::PacketStat) => {
                let Some(stat) = message.stat else { break };
                let id = u32::try_from(entries.len()).context("too many files")?;
                let rel = check_path(&stat.path, &kinds)?;
                kinds.insert(rel.clone(), stat.mode);
                entries.push(Entry { id, rel, stat });
            }
            Ok(PacketType::PacketErr) => {
                bail!(
                    "the sender failed: {}",
                    String::from_utf8_lossy(&message.data)
                )
            }
            _ => bail!("the sender broke the protocol: expected file metadata"),
        }
    }
    stats.entries = entries.len() as u64;
    let existing = scanning.await.context("the transfer stopped")??;
    let root = dest.to_path_buf();
    let (entries, wanted) = tokio::task::spawn_blocking(move || {
        let wanted = apply_metadata(&root, &entries, &existing)?;
        anyhow::Ok((entries, wanted))
    })
    .await
    .context("the transfer stopped")??;
    let mut pending: HashMap<u32, (&Entry, Option<tokio::fs::File>)> = HashMap::new();
    for entry in entries.iter().filter(|e| wanted.contains(&e.id)) {
        outgoing
            .send(packet(PacketType::PacketReq, entry.id, Vec::new(), None))
            .await
            .map_err(|_| anyhow::anyhow!("the sender hung up"))?;
        pending.insert(entry.id, (entry, None));
        stats.files_requested += 1;
    }
    while !pending.is_empty() {
        let message = next(&mut incoming).await?;
        match PacketType::try_from(message.r#type) {
            Ok(PacketType::PacketData) => {
                let Some((entry, file)) = pending.get_mut(&message.id) else {
                    bail!(
                        "the sender sent data for file {} that was not asked for",
                        message.id
                    );
                };
                let target = dest.join(&entry.rel);
                if file.is_none() {
                    *file = Some(
                        tokio::fs::File::create(&target)
                            .await
                            .with_context(|| format!("cannot create {}", entry.rel))?,
                    );
                }
                if message.data.is_empty() {
                    let (entry, file) = pending.remove(&message.id).expect("pending");
                    let mut file = file.expect("opened above");
                    file.flush().await?;
                    drop(file);
                    finish(&target, &entry.stat)?;
                } else {
                    stats.bytes += message.data.len() as u64;
                    file.as_mut()
                        .expect("opened above")
                        .write_all(&message.data)
                        .await
                        .with_context(|| format!("cannot write {}", entry.rel))?;
                }
            }
            Ok(PacketType::PacketErr) => {
                bail!(
                    "the sender failed: {}",
                    String::from_utf8_lossy(&message.data)
                )
            }
            _ => bail!("the sender broke the protocol: expected file data"),
        }
    }
    let root = dest.to_path_buf();
    tokio::task::spawn_blocking(move || link_and_date(&root, &entries))
        .await
        .context("the transfer stopped")??;
    outgoing
        .send(packet(PacketType::PacketFin, 0, Vec::new(), None))
        .await
        .map_err(|_| anyhow::anyhow!("the sender hung up"))?;
    // The sender answers FIN with FIN, then ends its stream.
    while let Some(message) = incoming.next().await {
        if message.is_err() {
            break;
        }
    }
    Ok(stats)
}

async fn next(
    incoming: &mut (impl Stream<Item = Result<Packet, tonic::Status>> + Unpin),
) -> Result<Packet> {
    match incoming.next().await {
        Some(message) => message.context("the sender's stream broke"),
        None => bail!("the sender hung up before the transfer finished"),
    }
}

/// `path` as a safe relative path: no empty, `.` or `..` components, and its parent
/// listed before it as a directory (so that nothing is written through a symlink).
fn check_path(path: &str, kinds: &HashMap<String, u32>) -> Result<String> {
    let bad = || anyhow::anyhow!("the sender listed an unsafe path {path:?}");
    if path.is_empty() || path.starts_with('/') || path.contains('\0') {
        return Err(bad());
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(bad());
    }
    if let Some((parent, _)) = path.rsplit_once('/') {
        let parent_is_dir = kinds
            .get(parent)
            .is_some_and(|mode| to_unix_mode(*mode) & 0o170_000 == 0o040_000);
        if !parent_is_dir {
            bail!("the sender listed {path:?} before its directory");
        }
    }
    if kinds.contains_key(path) {
        bail!("the sender listed {path:?} twice");
    }
    Ok(path.to_string())
}

/// Deletes what the sender does not have, makes directories and symlinks, and returns
/// the IDs of the regular files whose data must be asked for.
fn apply_metadata(
    root: &Path,
    entries: &[Entry],
    existing: &HashMap<String, fs::Metadata>,
) -> Result<HashSet<u32>> {
    let listed: HashSet<&str> = entries.iter().map(|e| e.rel.as_str()).collect();
    let mut unlisted: Vec<&String> = existing
        .keys()
        .filter(|rel| !listed.contains(rel.as_str()))
        .collect();
    // Parents first: removing a directory takes what it holds.
    unlisted.sort();
    for rel in unlisted {
        remove(&root.join(rel))?;
    }
    let mut wanted = HashSet::new();
    for entry in entries {
        let target = root.join(&entry.rel);
        let mode = to_unix_mode(entry.stat.mode);
        let existing = existing.get(&entry.rel);
        let same_kind = existing
            .as_ref()
            .is_some_and(|m| m.mode() & 0o170_000 == mode & 0o170_000);
        match mode & 0o170_000 {
            0o040_000 => {
                if !same_kind {
                    remove(&target)?;
                    fs::create_dir(&target)
                        .with_context(|| format!("cannot create {}", entry.rel))?;
                }
                set_owner_and_mode(&target, &entry.stat, mode)?;
            }
            0o120_000 => {
                let same = same_kind
                    && fs::read_link(&target).is_ok_and(|t| t == Path::new(&entry.stat.linkname));
                if !same {
                    remove(&target)?;
                    symlink(&entry.stat.linkname, &target)
                        .with_context(|| format!("cannot create {}", entry.rel))?;
                }
                lchown(&target, Some(entry.stat.uid), Some(entry.stat.gid))?;
                let mtime = mtime_of(&entry.stat);
                filetime::set_symlink_file_times(&target, mtime, mtime)?;
            }
            0o100_000 if entry.stat.mode & GO_TYPE_BITS == 0 && entry.stat.linkname.is_empty() => {
                let unchanged = existing.as_ref().is_some_and(|m| {
                    same_kind
                        && i64::try_from(m.size()).ok() == Some(entry.stat.size)
                        && m.mtime() * 1_000_000_000 + m.mtime_nsec() == entry.stat.mod_time
                        && m.mode() == mode
                        && m.uid() == entry.stat.uid
                        && m.gid() == entry.stat.gid
                });
                if !unchanged {
                    remove(&target)?;
                    wanted.insert(entry.id);
                }
            }
            // Hard links are made once their first name has its data.
            0o100_000 => remove(&target)?,
            // Devices, fifos and sockets: a build's context never needs them, and COPY
            // leaves them out.
            _ => remove(&target)?,
        }
    }
    Ok(wanted)
}

/// Everything under `root` (created if missing), by relative path, as `lstat` sees it;
/// names that are not UTF-8 (which no sender lists) are deleted on the way.
fn scan(root: &Path) -> Result<HashMap<String, fs::Metadata>> {
    fn walk(dir: &Path, below: &str, found: &mut HashMap<String, fs::Metadata>) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                remove(&entry.path())?;
                continue;
            };
            let rel = if below.is_empty() {
                name
            } else {
                format!("{below}/{name}")
            };
            // Relative to the directory's descriptor: no path walk per file.
            let meta = entry.metadata()?;
            if meta.is_dir() {
                walk(&entry.path(), &rel, found)?;
            }
            found.insert(rel, meta);
        }
        Ok(())
    }
    fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    let mut found = HashMap::new();
    walk(root, "", &mut found)?;
    Ok(found)
}

fn remove(path: &Path) -> Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => return Ok(()),
    };
    removed.with_context(|| format!("cannot remove {}", path.display()))
}

fn set_owner_and_mode(target: &Path, stat: &Stat, mode: u32) -> Result<()> {
    lchown(target, Some(stat.uid), Some(stat.gid))?;
    fs::set_permissions(target, fs::Permissions::from_mode(mode & 0o7777))?;
    Ok(())
}

fn mtime_of(stat: &Stat) -> FileTime {
    FileTime::from_unix_time(
        stat.mod_time.div_euclid(1_000_000_000),
        u32::try_from(stat.mod_time.rem_euclid(1_000_000_000)).unwrap_or(0),
    )
}

/// A received file gets its owner, mode and mtime.
fn finish(target: &Path, stat: &Stat) -> Result<()> {
    set_owner_and_mode(target, stat, to_unix_mode(stat.mode))?;
    filetime::set_file_mtime(target, mtime_of(stat))?;
    Ok(())
}

/// Makes the hard links, then gives directories their mtimes (deepest first, since
/// making their contents changed them).
fn link_and_date(root: &Path, entries: &[Entry]) -> Result<()> {
    let regular: HashSet<&str> = entries
        .iter()
        .filter(|e| e.stat.mode & GO_TYPE_BITS == 0 && e.stat.linkname.is_empty())
        .map(|e| e.rel.as_str())
        .collect();
    for entry in entries {
        if entry.stat.mode & GO_TYPE_BITS == 0 && !entry.stat.linkname.is_empty() {
            if !regular.contains(entry.stat.linkname.as_str()) {
                bail!(
                    "the sender linked {:?} to {:?}, which it did not send",
                    entry.rel,
                    entry.stat.linkname
                );
            }
            fs::hard_link(root.join(&entry.stat.linkname), root.join(&entry.rel))
                .with_context(|| format!("cannot link {}", entry.rel))?;
        }
    }
    for entry in entries.iter().rev() {
        if entry.stat.mode & (1 << 31) != 0 {
            filetime::set_file_mtime(root.join(&entry.rel), mtime_of(&entry.stat))?;
        }
    }
    Ok(())
}
