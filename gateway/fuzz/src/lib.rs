//! What the fuzz targets share: a deterministic way to cut one input into the chunks a socket
//! would deliver (so every target sees its bytes split at arbitrary points), an in-memory
//! stream that hands an input out in such chunks, and one tokio runtime per process.

use std::io;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::runtime::Runtime;

/// A current-thread runtime, built once per fuzzing process.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime builds")
    });
    &RUNTIME
}

/// Chunk sizes from a one-byte seed: xorshift, so the same input always splits the same way
/// and the fuzzer can steer the split by mutating the seed.
pub struct Splitter {
    state: u64,
    max_chunk: usize,
}

impl Splitter {
    /// The seed's low bits pick the largest chunk (1 byte, a header's worth, a few messages,
    /// a relay buffer), the rest seed the sizes.
    pub fn new(seed: u8) -> Splitter {
        let max_chunk = [1, 3, 7, 16, 64, 300, 4096, 16 * 1024][usize::from(seed & 7)];
        Splitter {
            state: 0x9e37_79b9_7f4a_7c15 ^ u64::from(seed),
            max_chunk,
        }
    }

    /// The next chunk size, from 1 to the largest.
    pub fn next_size(&mut self) -> usize {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        1 + (self.state % self.max_chunk as u64) as usize
    }

    /// `data` cut into consecutive chunks (none empty) that together are `data`.
    pub fn split<'a>(&mut self, mut data: &'a [u8]) -> Vec<&'a [u8]> {
        let mut chunks = Vec::new();
        while !data.is_empty() {
            let (chunk, rest) = data.split_at(self.next_size().min(data.len()));
            chunks.push(chunk);
            data = rest;
        }
        chunks
    }
}

/// A client connection played from an input: reads return its bytes in [`Splitter`] chunks,
/// then end of stream; writes are accepted and dropped.
pub struct Playback<'a> {
    data: &'a [u8],
    read: usize,
    splitter: Splitter,
}

impl<'a> Playback<'a> {
    pub fn new(data: &'a [u8], seed: u8) -> Playback<'a> {
        Playback {
            data,
            read: 0,
            splitter: Splitter::new(seed),
        }
    }

    /// How many bytes have been read so far.
    pub fn read(&self) -> usize {
        self.read
    }
}

impl AsyncRead for Playback<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let left = &this.data[this.read..];
        let n = this
            .splitter
            .next_size()
            .min(left.len())
            .min(buf.remaining());
        buf.put_slice(&left[..n]);
        this.read += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Playback<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Whether `bytes` are exactly one JSON value (serde_json's own nesting limit is 128; the
/// gateway never writes deeper).
pub fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}
