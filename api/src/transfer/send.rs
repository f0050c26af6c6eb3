//! The sending side of DiffCopy: a directory's entries, then the files asked for.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kiln_patterns::PatternMatcher;
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt as _};

use super::mode::GO_TYPE_BITS;
use super::{error_packet, from_unix_mode, packet};
use crate::fsutil::packet::PacketType;
use crate::fsutil::{Packet, Stat};

/// Entries the walk hands over at a time.
const BATCH: usize = 256;

/// Bytes of file content per `DATA` packet.
const CHUNK: usize = 64 * 1024;

/// What of a directory is sent: `.dockerignore`-style excludes, and includes (when any,
/// only matching paths and the directories that lead to them).
#[derive(Debug, Default, Clone)]
pub struct Selection {
    /// Patterns of paths to leave out.
    pub excludes: Vec<String>,
    /// Patterns of paths to send; empty for all.
    pub includes: Vec<String>,
}

/// Sends `dir` (what `selection` selects) as the sender of DiffCopy: packets go out on
/// `outgoing`, requests come in on `incoming`. Returns once the receiver has finished.
pub async fn send(
    dir: &Path,
    selection: &Selection,
    incoming: impl Stream<Item = Result<Packet, tonic::Status>> + Unpin,
    outgoing: mpsc::Sender<Packet>,
) -> Result<()> {
    let result = send_inner(dir, selection, incoming, &outgoing).await;
    if let Err(err) = &result {
        // Tell the other side why, if it still listens.
        let _ = outgoing.send(error_packet(&format!("{err:#}"))).await;
    }
    result
}

async fn send_inner(
    dir: &Path,
    selection: &Selection,
    mut incoming: impl Stream<Item = Result<Packet, tonic::Status>> + Unpin,
    outgoing: &mpsc::Sender<Packet>,
) -> Result<()> {
    // The walk streams its entries, which go out while it goes on.
    let root = dir.to_path_buf();
    let selection = selection.clone();
    let (found, mut batches) = mpsc::channel::<Vec<(Stat, PathBuf)>>(16);
    let walking = tokio::task::spawn_blocking(move || {
        let stopped = || anyhow::anyhow!("the transfer stopped");
        let mut batch = Vec::with_capacity(BATCH);
        walk(&root, &selection, &mut |entry| {
            batch.push(entry);
            if batch.len() == BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                found.blocking_send(full).map_err(|_| stopped())?;
            }
            Ok(())
        })?;
        found.blocking_send(batch).map_err(|_| stopped())
    });
    let lost = || anyhow::anyhow!("the receiver hung up");
    let mut files: HashMap<u32, PathBuf> = HashMap::new();
    let mut id: u32 = 0;
    while let Some(batch) = batches.recv().await {
        for (stat, host) in batch {
            if stat.mode & GO_TYPE_BITS == 0 {
                files.insert(id, host);
            }
            id = id.checked_add(1).context("too many files")?;
            outgoing
                .send(packet(PacketType::PacketStat, 0, Vec::new(), Some(stat)))
                .await
                .map_err(|_| lost())?;
        }
    }
    walking.await.context("the directory walk stopped")??;
    outgoing
        .send(packet(PacketType::PacketStat, 0, Vec::new(), None))
        .await
        .map_err(|_| lost())?;
    while let Some(message) = incoming.next().await {
        let message = message.context("the receiver's stream broke")?;
        match PacketType::try_from(message.r#type) {
            Ok(PacketType::PacketReq) => {
                let host = files.remove(&message.id).with_context(|| {
                    format!("the receiver asked for an unknown file {}", message.id)
                })?;
                send_file(message.id, &host, outgoing).await?;
            }
            Ok(PacketType::PacketFin) => {
                outgoing
                    .send(packet(PacketType::PacketFin, 0, Vec::new(), None))
                    .await
                    .map_err(|_| lost())?;
                return Ok(());
            }
            Ok(PacketType::PacketErr) => {
                bail!(
                    "the receiver failed: {}",
                    String::from_utf8_lossy(&message.data)
                )
            }
            _ => {}
        }
    }
    bail!("the receiver hung up before the transfer finished")
}

async fn send_file(id: u32, host: &Path, outgoing: &mpsc::Sender<Packet>) -> Result<()> {
    let mut file = tokio::fs::File::open(host)
        .await
        .with_context(|| format!("cannot open {}", host.display()))?;
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let n = file
            .read(&mut chunk)
            .await
            .with_context(|| format!("cannot read {}", host.display()))?;
        chunk.truncate(n);
        let done = n == 0;
        outgoing
            .send(packet(PacketType::PacketData, id, chunk, None))
            .await
            .map_err(|_| anyhow::anyhow!("the receiver hung up"))?;
        if done {
            return Ok(());
        }
    }
}

/// Where the walk puts what it selects.
type Emit<'a> = dyn FnMut((Stat, PathBuf)) -> Result<()> + 'a;

/// Hands `emit` every selected entry below `root`, parents first and names in byte order,
/// with its stat as fsutil describes it and its path on this machine.
pub(crate) fn walk(root: &Path, selection: &Selection, emit: &mut Emit<'_>) -> Result<()> {
    let excludes = PatternMatcher::new(&selection.excludes).context("bad exclude pattern")?;
    let includes = PatternMatcher::new(&selection.includes).context("bad include pattern")?;
    let mut walker = Walker {
        excludes: &excludes,
        includes: &includes,
        inodes: HashMap::new(),
        pending: Vec::new(),
        emit,
    };
    walker.walk_dir(root, "")
}

/// The state of one walk.
struct Walker<'a, 'e> {
    excludes: &'a PatternMatcher,
    includes: &'a PatternMatcher,
    /// First names of multiply linked files, by (device, inode).
    inodes: HashMap<(u64, u64), String>,
    /// Directories that are themselves left out, held back until something inside them
    /// is selected (they are then the way to it), outermost first.
    pending: Vec<(Stat, PathBuf)>,
    emit: &'a mut Emit<'e>,
}

impl Walker<'_, '_> {
    /// Emits `entry`, after the held-back directories that lead to it.
    fn select(&mut self, entry: (Stat, PathBuf)) -> Result<()> {
        for parent in std::mem::take(&mut self.pending) {
            (self.emit)(parent)?;
        }
        (self.emit)(entry)
    }

    fn walk_dir(&mut self, host: &Path, below: &str) -> Result<()> {
        let mut dir_entries: Vec<std::fs::DirEntry> = std::fs::read_dir(host)
            .with_context(|| format!("cannot read {}", host.display()))?
            .collect::<Result<_, _>>()?;
        dir_entries.sort_by(|a, b| {
            a.file_name()
                .as_encoded_bytes()
                .cmp(b.file_name().as_encoded_bytes())
        });
        for dir_entry in dir_entries {
            let file_name = dir_entry.file_name();
            let Some(name) = file_name.to_str() else {
                bail!("{}: a file name that is not UTF-8", host.display());
            };
            let rel = if below.is_empty() {
                name.to_string()
            } else {
                format!("{below}/{name}")
            };
            let path = host.join(name);
            // The type comes with the directory entry: what is left out costs no stat.
            let is_dir = dir_entry
                .file_type()
                .with_context(|| format!("cannot read {}", path.display()))?
                .is_dir();
            let excluded = self.excludes.matches_or_parent_matches(&rel);
            if excluded && !(is_dir && self.excludes.exclusions()) {
                continue;
            }
            let included = self.includes.patterns().is_empty()
                || self.includes.matches_or_parent_matches(&rel);
            let leads_to_included = is_dir && may_include_below(self.includes, &rel);
            if !(included || leads_to_included) {
                continue;
            }
            // Relative to the directory's descriptor: no path walk per file.
            let meta = dir_entry
                .metadata()
                .with_context(|| format!("cannot read {}", path.display()))?;
            let stat = stat_of(&path, &rel, &meta, &mut self.inodes)?;
            if !meta.is_dir() {
                if included {
                    self.select((stat, path))?;
                }
                continue;
            }
            let held_back = excluded || !included;
            let depth = self.pending.len();
            if held_back {
                self.pending.push((stat, path.clone()));
            } else {
                self.select((stat, path.clone()))?;
            }
            self.walk_dir(&path, &rel)?;
            // Nothing inside was selected: the directory stays out.
            self.pending.truncate(depth);
        }
        Ok(())
    }
}

/// Whether an include pattern could match something below the directory `rel` (each of
/// its components either names the same as `rel`'s or holds a wildcard).
fn may_include_below(includes: &PatternMatcher, rel: &str) -> bool {
    let wild = |part: &str| part.contains(['*', '?', '[', '\\']);
    includes
        .patterns()
        .iter()
        .filter(|p| !p.is_exclusion())
        .any(|pattern| {
            let mut parts = pattern.as_str().split('/');
            for dir in rel.split('/') {
                match parts.next() {
                    Some(part) if wild(part) => return true,
                    Some(part) if part == dir => {}
                    _ => return false,
                }
            }
            parts.next().is_some()
        })
}

fn stat_of(
    path: &Path,
    rel: &str,
    meta: &std::fs::Metadata,
    inodes: &mut HashMap<(u64, u64), String>,
) -> Result<Stat> {
    let mut stat = Stat {
        path: rel.to_string(),
        mode: from_unix_mode(meta.mode()),
        uid: meta.uid(),
        gid: meta.gid(),
        size: 0,
        mod_time: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ..Stat::default()
    };
    let kind = meta.file_type();
    if kind.is_dir() {
        return Ok(stat);
    }
    stat.size = i64::try_from(meta.size()).unwrap_or(i64::MAX);
    if kind.is_symlink() {
        stat.linkname = std::fs::read_link(path)?
            .to_str()
            .context("a symlink target that is not UTF-8")?
            .to_string();
    } else if kind.is_file() && meta.nlink() > 1 {
        match inodes.get(&(meta.dev(), meta.ino())) {
            Some(first) => {
                stat.linkname = first.clone();
                stat.size = 0;
            }
            None => {
                inodes.insert((meta.dev(), meta.ino()), rel.to_string());
            }
        }
    } else if !kind.is_file() {
        let rdev = meta.rdev();
        stat.devmajor = i64::from(rustix::fs::major(rdev));
        stat.devminor = i64::from(rustix::fs::minor(rdev));
    }
    Ok(stat)
}
