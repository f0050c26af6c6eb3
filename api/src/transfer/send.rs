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
    let root = dir.to_path_buf();
    let selection = selection.clone();
    let entries = tokio::task::spawn_blocking(move || walk(&root, &selection))
        .await
        .context("the directory walk stopped")??;
    let lost = || anyhow::anyhow!("the receiver hung up");
    let mut files: HashMap<u32, PathBuf> = HashMap::new();
    for (id, (stat, host)) in entries.into_iter().enumerate() {
        let id = u32::try_from(id).context("too many files")?;
        if stat.mode & GO_TYPE_BITS == 0 {
            files.insert(id, host);
        }
        outgoing
            .send(packet(PacketType::PacketStat, 0, Vec::new(), Some(stat)))
            .await
            .map_err(|_| lost())?;
    }
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

/// Every selected entry below `root`, parents first and names in byte order, with its
/// stat as fsutil describes it and its path on this machine.
pub(crate) fn walk(root: &Path, selection: &Selection) -> Result<Vec<(Stat, PathBuf)>> {
    let excludes = PatternMatcher::new(&selection.excludes).context("bad exclude pattern")?;
    let includes = PatternMatcher::new(&selection.includes).context("bad include pattern")?;
    let mut out = Vec::new();
    let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
    walk_dir(root, "", &excludes, &includes, &mut inodes, &mut out)?;
    Ok(out)
}

fn walk_dir(
    host: &Path,
    below: &str,
    excludes: &PatternMatcher,
    includes: &PatternMatcher,
    inodes: &mut HashMap<(u64, u64), String>,
    out: &mut Vec<(Stat, PathBuf)>,
) -> Result<bool> {
    let mut names: Vec<_> = std::fs::read_dir(host)
        .with_context(|| format!("cannot read {}", host.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    let mut any = false;
    for name in names {
        let Some(name) = name.to_str() else {
            bail!("{}: a file name that is not UTF-8", host.display());
        };
        let rel = if below.is_empty() {
            name.to_string()
        } else {
            format!("{below}/{name}")
        };
        let path = host.join(name);
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let excluded = excludes.matches_or_parent_matches(&rel);
        if excluded && !(meta.is_dir() && excludes.exclusions()) {
            continue;
        }
        let included = includes.patterns().is_empty() || includes.matches_or_parent_matches(&rel);
        let stat = stat_of(&path, &rel, &meta, inodes)?;
        if meta.is_dir() {
            let at = out.len();
            out.push((stat, path.clone()));
            let inside = walk_dir(&path, &rel, excludes, includes, inodes, out)?;
            // A directory that is itself left out stays only as the way to what is not.
            if (excluded || !included) && !inside {
                out.truncate(at);
                continue;
            }
            any = true;
        } else if included {
            out.push((stat, path));
            any = true;
        }
    }
    Ok(any)
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
