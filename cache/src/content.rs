//! The content store: blobs (layers, configs, manifests) as files named by their sha256
//! under `blobs/sha256/`, written through a temporary file and renamed into place only once
//! their digest checks out, so a crash never leaves a partial blob under a real name.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use rustix::fs::OFlags;
use sha2::{Digest as _, Sha256};

use crate::Digest;

/// [`ContentError::Damaged`] for the error a [`VerifiedBlob`] gives, else an I/O error.
fn damaged_or(digest: &Digest, err: io::Error, path: &Path) -> ContentError {
    if err.kind() == io::ErrorKind::InvalidData {
        ContentError::Damaged(*digest)
    } else {
        io_err("cannot read", path)(err)
    }
}

/// A blob being read from the store, hashed as it goes: at its end, a blob whose bytes
/// are not its digest's gives an `InvalidData` error instead of the end of the content.
pub struct VerifiedBlob {
    file: File,
    hasher: Sha256,
    expected: Digest,
}

impl Read for VerifiedBlob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let actual = Digest::from_bytes(self.hasher.clone().finalize().into());
            if actual != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    ContentError::Damaged(self.expected).to_string(),
                ));
            }
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Errors of the content store.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// A filesystem operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Written content does not have the digest it was announced with.
    #[error("content digest mismatch: expected {expected}, got {actual}")]
    Mismatch {
        /// The announced digest.
        expected: Digest,
        /// The digest of what was written.
        actual: Digest,
    },
    /// The store holds no blob with this digest.
    #[error("blob {0} is not in the content store")]
    NotFound(Digest),
    /// A blob the store lacked could not be fetched from the source that has it (an
    /// imported build cache).
    #[error("blob {digest} could not be fetched from {source_name}: {message}")]
    Fetch {
        /// The blob.
        digest: Digest,
        /// Where it was fetched from.
        source_name: String,
        /// Why it failed.
        message: String,
    },
    /// A stored blob's bytes no longer have its digest (disk damage, or an edit).
    #[error(
        "blob {0} is damaged: its content no longer has its digest (`kiln check --repair` removes it)"
    )]
    Damaged(Digest),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ContentError + 'a {
    move |source| ContentError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Where blobs the store lacks are fetched from when first read: an imported build
/// cache, whose layers are only downloaded when a build needs their bytes.
pub trait BlobSource: Send + Sync {
    /// How errors name it (`cache registry.example/app:cache`).
    fn name(&self) -> String;
    /// Whether it has `digest`.
    fn has(&self, digest: &Digest) -> bool;
    /// Copies `digest` into `store` (verified against its digest, e.g. with
    /// [`ContentStore::writer`]).
    fn fetch(&self, digest: &Digest, store: &ContentStore) -> Result<(), String>;
    /// The registry repository (`host/path`) it reads from, whose blobs a push to that
    /// registry mounts instead of fetching them; `None` for other sources.
    fn repository(&self) -> Option<String> {
        None
    }
}

/// Blobs by digest, in a directory; blobs it lacks may come from [`BlobSource`]s.
#[derive(Clone)]
pub struct ContentStore {
    root: PathBuf,
    /// Sources added with [`add_source`](Self::add_source), shared by clones.
    sources: Arc<RwLock<Vec<Arc<dyn BlobSource>>>>,
}

impl std::fmt::Debug for ContentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentStore")
            .field("root", &self.root)
            .finish()
    }
}

/// Distinguishes concurrent ingests of one process.
static INGEST_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ContentStore {
    /// Opens (creating if needed) the store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ContentError> {
        let root = root.into();
        for dir in [root.join("blobs/sha256"), root.join("ingest")] {
            fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        }
        Ok(ContentStore {
            root,
            sources: Arc::default(),
        })
    }

    /// Lets this store (and its clones) read blobs it lacks from `source`, fetched into
    /// it when first read.
    pub fn add_source(&self, source: Arc<dyn BlobSource>) {
        self.sources
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(source);
    }

    /// Whether the blob is present, or a source has it to fetch when it is read.
    pub fn available(&self, digest: &Digest) -> bool {
        self.contains(digest) || self.source_of(digest).is_some()
    }

    /// The registry repository a blob the store lacks can be mounted from (see
    /// [`BlobSource::repository`]).
    pub fn remote_repository(&self, digest: &Digest) -> Option<String> {
        if self.contains(digest) {
            return None;
        }
        self.source_of(digest)
            .and_then(|source| source.repository())
    }

    fn source_of(&self, digest: &Digest) -> Option<Arc<dyn BlobSource>> {
        self.sources
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|source| source.has(digest))
            .cloned()
    }

    /// Fetches a missing blob from the source that has it; nothing when it is present or
    /// no source has it.
    fn fetch_missing(&self, digest: &Digest) -> Result<(), ContentError> {
        if self.contains(digest) {
            return Ok(());
        }
        let Some(source) = self.source_of(digest) else {
            return Ok(());
        };
        source
            .fetch(digest, self)
            .map_err(|message| ContentError::Fetch {
                digest: *digest,
                source_name: source.name(),
                message,
            })
    }

    /// Where the blob `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Whether the blob is present.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// The blob's size in bytes.
    pub fn size(&self, digest: &Digest) -> Result<u64, ContentError> {
        self.fetch_missing(digest)?;
        match fs::metadata(self.blob_path(digest)) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ContentError::NotFound(*digest)),
            Err(e) => Err(io_err("cannot stat", &self.blob_path(digest))(e)),
        }
    }

    /// Opens the blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, ContentError> {
        self.fetch_missing(digest)?;
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ContentError::NotFound(*digest),
            _ => io_err("cannot open", &path)(e),
        })
    }

    /// Opens the blob for reading, checked against its digest as it is read: reading a
    /// damaged blob to its end is an error instead of content.
    pub fn open_verified(&self, digest: &Digest) -> Result<VerifiedBlob, ContentError> {
        Ok(VerifiedBlob {
            file: self.open_blob(digest)?,
            hasher: Sha256::new(),
            expected: *digest,
        })
    }

    /// Reads a whole blob (for small ones: configs, manifests), checked against its digest.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, ContentError> {
        let mut data = Vec::new();
        let path = self.blob_path(digest);
        self.open_verified(digest)?
            .read_to_end(&mut data)
            .map_err(|e| damaged_or(digest, e, &path))?;
        Ok(data)
    }

    /// Reads the blob through and fails unless it still has its digest.
    pub fn verify(&self, digest: &Digest) -> Result<(), ContentError> {
        let path = self.blob_path(digest);
        io::copy(&mut self.open_verified(digest)?, &mut io::sink())
            .map(|_| ())
            .map_err(|e| damaged_or(digest, e, &path))
    }

    /// Stores `data` and returns its digest.
    pub fn put(&self, data: &[u8]) -> Result<Digest, ContentError> {
        let digest = Digest::of(data);
        if self.contains(&digest) {
            return Ok(digest);
        }
        let mut w = self.writer()?;
        w.write_all(data).map_err(io_err("cannot write", &w.temp))?;
        Ok(w.commit(Some(digest))?.0)
    }

    /// A writer for a new blob; [`BlobWriter::commit`] moves it into place.
    pub fn writer(&self) -> Result<BlobWriter, ContentError> {
        let n = INGEST_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = self
            .root
            .join("ingest")
            .join(format!("{}-{n}", std::process::id()));
        let file = File::create(&temp).map_err(io_err("cannot create", &temp))?;
        Ok(BlobWriter {
            store: self.clone(),
            file: Some(file),
            temp,
            hasher: Sha256::new(),
            size: 0,
            chunk: ChunkBuffer::new(),
            written: 0,
            direct: DirectIo::Untried,
        })
    }

    /// Removes a blob (a missing blob is not an error).
    pub fn remove(&self, digest: &Digest) -> Result<(), ContentError> {
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("cannot remove", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Every blob with its size.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>, ContentError> {
        let dir = self.root.join("blobs/sha256");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("cannot list", &dir))? {
            let entry = entry.map_err(io_err("cannot list", &dir))?;
            let name = entry.file_name();
            let Ok(digest) = format!("sha256:{}", name.to_string_lossy()).parse::<Digest>() else {
                continue;
            };
            let len = entry
                .metadata()
                .map_err(io_err("cannot stat", &entry.path()))?
                .len();
            out.push((digest, len));
        }
        out.sort();
        Ok(out)
    }

    /// Deletes leftovers of interrupted writes by processes that are gone.
    pub fn clean_ingest(&self) -> Result<usize, ContentError> {
        let dir = self.root.join("ingest");
        let mut removed = 0;
        for entry in fs::read_dir(&dir)
            .map_err(io_err("cannot list", &dir))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// How much a [`BlobWriter`] gathers before writing. Whole, block-aligned chunks spare the
/// kernel from zeroing the partial blocks that small unaligned writes (tar headers, file
/// tails) would leave, and can bypass the page cache.
const WRITE_CHUNK: usize = 1 << 20;

/// The memory alignment direct I/O asks of a buffer (the largest logical block size).
const DIRECT_ALIGN: usize = 4096;

/// One chunk being gathered, at an address aligned for direct I/O.
struct ChunkBuffer {
    bytes: Vec<u8>,
    /// Where the aligned chunk starts in `bytes`.
    start: usize,
    /// How many bytes of the chunk are filled.
    filled: usize,
}

impl ChunkBuffer {
    fn new() -> Self {
        let bytes = vec![0; WRITE_CHUNK + DIRECT_ALIGN];
        let start = bytes.as_ptr().align_offset(DIRECT_ALIGN);
        Self {
            bytes,
            start,
            filled: 0,
        }
    }

    /// Copies as much of `buf` as fits; returns how much that was.
    fn fill(&mut self, buf: &[u8]) -> usize {
        let n = buf.len().min(WRITE_CHUNK - self.filled);
        let at = self.start + self.filled;
        self.bytes[at..at + n].copy_from_slice(&buf[..n]);
        self.filled += n;
        n
    }

    fn filled(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.filled]
    }
}

/// Whether a [`BlobWriter`] writes around the page cache.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DirectIo {
    /// Not yet: nothing but whole chunks has been written.
    Untried,
    /// Whole chunks go straight to the disk.
    On,
    /// Through the page cache: the filesystem refused, or a partial chunk was written.
    Off,
}

/// A blob being written: hashes what passes through, and lands atomically on commit. Dropped
/// without commit, it deletes its temporary file.
///
/// Whole chunks are written with `O_DIRECT` where the filesystem allows it: a layer is
/// written once and read rarely, and on this project's 2-core VMs filling fresh page-cache
/// pages ran at 360 MB/s against 1.5 GB/s for direct writes.
pub struct BlobWriter {
    store: ContentStore,
    file: Option<File>,
    temp: PathBuf,
    hasher: Sha256,
    /// Bytes hashed (written or gathered).
    size: u64,
    chunk: ChunkBuffer,
    /// Bytes in the file.
    written: u64,
    direct: DirectIo,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.chunk.fill(buf);
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        if self.chunk.filled == WRITE_CHUNK {
            self.write_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_chunk()
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes out the gathered chunk; a whole one directly if the filesystem allows.
    fn write_chunk(&mut self) -> io::Result<()> {
        if self.chunk.filled == 0 {
            return Ok(());
        }
        let file = self.file.as_ref().expect("file is present until commit");
        let whole = self.chunk.filled == WRITE_CHUNK;
        self.direct = match (self.direct, whole) {
            (DirectIo::Untried, true) => match set_direct(file, true) {
                Ok(()) => DirectIo::On,
                Err(_) => DirectIo::Off,
            },
            (DirectIo::On, false) => {
                set_direct(file, false)?;
                DirectIo::Off
            }
            (_, false) => DirectIo::Off,
            (state, true) => state,
        };
        let written = file.write_all_at(self.chunk.filled(), self.written);
        if written.is_err() && self.direct == DirectIo::On {
            // Some filesystems accept the flag but not the write: go the usual way.
            set_direct(file, false)?;
            self.direct = DirectIo::Off;
            file.write_all_at(self.chunk.filled(), self.written)?;
        } else {
            written?;
        }
        self.written += self.chunk.filled as u64;
        self.chunk.filled = 0;
        Ok(())
    }

    /// Finishes the blob: checks it against `expected` (if given), syncs it and renames it into
    /// place. Returns its digest and size.
    pub fn commit(mut self, expected: Option<Digest>) -> Result<(Digest, u64), ContentError> {
        self.write_chunk()
            .map_err(io_err("cannot write", &self.temp))?;
        let file = self.file.take().expect("commit runs once");
        let actual = Digest::from_bytes(std::mem::take(&mut self.hasher).finalize().into());
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(ContentError::Mismatch { expected, actual });
        }
        file.sync_all().map_err(io_err("cannot sync", &self.temp))?;
        drop(file);
        let dest = self.store.blob_path(&actual);
        fs::rename(&self.temp, &dest).map_err(io_err("cannot store", &dest))?;
        Ok((actual, self.size))
    }
}

/// Turns `O_DIRECT` on or off for `file`.
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    let flags = if on {
        flags | OFlags::DIRECT
    } else {
        flags - OFlags::DIRECT
    };
    Ok(rustix::fs::fcntl_setfl(file, flags)?)
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.is_some() || self.temp.exists() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = store.put(b"hello").unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert_eq!(store.read(&d).unwrap(), b"hello");
        assert_eq!(store.size(&d).unwrap(), 5);
        assert_eq!(store.list().unwrap(), vec![(d, 5)]);
        store.remove(&d).unwrap();
        assert!(matches!(store.read(&d), Err(ContentError::NotFound(_))));
    }

    #[test]
    fn writes_of_any_size_land_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..3 * WRITE_CHUNK + 1234)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut w = store.writer().unwrap();
        for piece in data.chunks(4093) {
            w.write_all(piece).unwrap();
        }
        w.flush().unwrap();
        w.write_all(b"tail").unwrap();
        assert_eq!(w.size(), data.len() as u64 + 4);
        let (digest, size) = w.commit(None).unwrap();
        let mut expected = data.clone();
        expected.extend_from_slice(b"tail");
        assert_eq!(
            (digest, size),
            (Digest::of(&expected), expected.len() as u64)
        );
        assert_eq!(store.read(&digest).unwrap(), expected);
    }

    #[test]
    fn mismatched_content_never_lands() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let mut w = store.writer().unwrap();
        w.write_all(b"truncated").unwrap();
        let expected = Digest::of(b"truncated blob");
        let err = w.commit(Some(expected)).unwrap_err();
        assert!(matches!(err, ContentError::Mismatch { .. }), "{err}");
        assert!(!store.contains(&expected));
        assert!(!store.contains(&Digest::of(b"truncated")));
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let mut w = store.writer().unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
        assert!(store.list().unwrap().is_empty());
    }
}
