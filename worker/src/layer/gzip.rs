//! Parallel gzip: the stream is cut into fixed-size chunks that are deflated on every core
//! at once, each as its own gzip member, and written in order. Concatenated members are
//! one valid gzip file (RFC 1952; Go's, zlib's and flate2's multi-member readers read
//! them), and fixed chunking keeps the output, and so the blob digest, deterministic.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use flate2::Compression;
use flate2::write::GzEncoder;

/// Uncompressed bytes per gzip member.
const CHUNK: usize = 1 << 20;

/// A `Write` that gzips what it is given on worker threads and writes the members, in
/// order, to `out`. Call [`finish`](Self::finish) to flush the last chunk and get `out`
/// back.
pub struct ParallelGzip<W: Write> {
    /// Taken by `finish`.
    out: Option<W>,
    level: u32,
    chunk: Vec<u8>,
    next_sequence: u64,
    next_written: u64,
    in_flight: usize,
    max_in_flight: usize,
    jobs: Option<SyncSender<(u64, Vec<u8>)>>,
    done: Receiver<(u64, io::Result<Vec<u8>>)>,
    /// Members that finished before an earlier one.
    waiting: BTreeMap<u64, Vec<u8>>,
    workers: Vec<JoinHandle<()>>,
}

impl<W: Write> ParallelGzip<W> {
    /// Compresses at `level` (0–9) with one worker per core.
    pub fn new(out: W, level: u32) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let (jobs, queue) = sync_channel::<(u64, Vec<u8>)>(threads);
        let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
        let (results, done) = std::sync::mpsc::channel();
        let workers = (0..threads)
            .map(|_| {
                let queue = std::sync::Arc::clone(&queue);
                let results = results.clone();
                std::thread::spawn(move || {
                    loop {
                        let job = queue.lock().map(|q| q.recv());
                        let Ok(Ok((sequence, data))) = job else {
                            return;
                        };
                        let member = deflate_member(&data, level);
                        if results.send((sequence, member)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        Self {
            out: Some(out),
            level,
            chunk: Vec::with_capacity(CHUNK),
            next_sequence: 0,
            next_written: 0,
            in_flight: 0,
            max_in_flight: threads * 2,
            jobs: Some(jobs),
            done,
            waiting: BTreeMap::new(),
            workers,
        }
    }

    /// Hands the current chunk to the workers, first waiting while too many are pending.
    fn dispatch(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        while self.in_flight >= self.max_in_flight {
            self.collect_one()?;
        }
        let data = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        let jobs = self.jobs.as_ref().expect("not finished");
        if jobs.send((self.next_sequence, data)).is_err() {
            return Err(io::Error::other("gzip workers stopped"));
        }
        self.next_sequence += 1;
        self.in_flight += 1;
        Ok(())
    }

    /// Waits for one member and writes every member that is now next in order.
    fn collect_one(&mut self) -> io::Result<()> {
        let (sequence, member) = self
            .done
            .recv()
            .map_err(|_| io::Error::other("gzip workers stopped"))?;
        self.in_flight -= 1;
        self.waiting.insert(sequence, member?);
        while let Some(member) = self.waiting.remove(&self.next_written) {
            self.output().write_all(&member)?;
            self.next_written += 1;
        }
        Ok(())
    }

    /// Compresses what is left, writes every member and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        if self.next_sequence == 0 && self.chunk.is_empty() {
            // An empty stream is still one (empty) gzip member.
            let member = deflate_member(&[], self.level)?;
            self.output().write_all(&member)?;
        }
        self.dispatch()?;
        while self.in_flight > 0 {
            self.collect_one()?;
        }
        self.jobs.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        let mut out = self.out.take().expect("finish runs once");
        out.flush()?;
        Ok(out)
    }

    fn output(&mut self) -> &mut W {
        self.out.as_mut().expect("not finished")
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.chunk.len();
        let taken = room.min(buf.len());
        self.chunk.extend_from_slice(&buf[..taken]);
        if self.chunk.len() == CHUNK {
            self.dispatch()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for ParallelGzip<W> {
    fn drop(&mut self) {
        // Unblock and stop the workers if `finish` was not reached (an error).
        self.jobs.take();
        while self.in_flight > 0 && self.done.recv().is_ok() {
            self.in_flight -= 1;
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// One gzip member holding `data` (header mtime 0, so the bytes depend on `data` only).
fn deflate_member(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(data.len() / 2), Compression::new(level));
    encoder.write_all(data)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn round_trip(data: &[u8]) -> Vec<u8> {
        let mut gzip = ParallelGzip::new(Vec::new(), 6);
        // Odd-sized writes across chunk boundaries.
        for piece in data.chunks(77_777) {
            gzip.write_all(piece).unwrap();
        }
        let compressed = gzip.finish().unwrap();
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(compressed.as_slice())
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        compressed
    }

    #[test]
    fn members_decompress_to_the_input_and_are_deterministic() {
        let data: Vec<u8> = (0..(3 * CHUNK + 12_345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let first = round_trip(&data);
        assert_eq!(first, round_trip(&data), "same bytes every time");
        assert!(first.len() < data.len());
        assert!(
            !round_trip(&[]).is_empty(),
            "an empty stream is a gzip member"
        );
        round_trip(b"small");
    }
}
