//! A blocking byte stream over a gRPC stream of `BytesMessage`s, for the build threads
//! that relay an SSH agent's messages (BuildKit's `ForwardAgent` carries them so).

use std::io::{Read, Write};
use std::sync::mpsc;

use tokio_stream::{Stream, StreamExt as _};

/// One end of a byte stream whose other end is served by async tasks: reads take the
/// chunks a task receives, writes hand chunks to a task that sends them.
pub struct BlockingPipe {
    incoming: mpsc::Receiver<Vec<u8>>,
    /// What is left of the last chunk read.
    pending: Vec<u8>,
    consumed: usize,
    outgoing: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl BlockingPipe {
    /// A pipe reading what `incoming` yields (until it ends or fails) and writing into
    /// `outgoing`; the reading task runs on `handle`.
    pub fn new<S, E>(
        handle: &tokio::runtime::Handle,
        incoming: S,
        outgoing: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> Self
    where
        S: Stream<Item = Result<Vec<u8>, E>> + Send + Unpin + 'static,
        E: Send + 'static,
    {
        let (chunks, received) = mpsc::channel();
        handle.spawn(async move {
            let mut incoming = incoming;
            while let Some(Ok(chunk)) = incoming.next().await {
                if chunks.send(chunk).is_err() {
                    break;
                }
            }
        });
        Self {
            incoming: received,
            pending: Vec::new(),
            consumed: 0,
            outgoing,
        }
    }
}

impl Read for BlockingPipe {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.consumed == self.pending.len() {
            match self.incoming.recv() {
                Ok(chunk) => {
                    self.pending = chunk;
                    self.consumed = 0;
                }
                // The stream ended.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len() - self.consumed);
        buf[..n].copy_from_slice(&self.pending[self.consumed..self.consumed + n]);
        self.consumed += n;
        Ok(n)
    }
}

impl Write for BlockingPipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.outgoing
            .blocking_send(buf.to_vec())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
