//! The client side of a session during the handshake: whole packets read through a bounded
//! buffer, replies gathered and flushed together. Bytes the client sent ahead (a pipelined
//! first query) stay in the buffer until the relay takes them.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frame::{self, FrameError};
use super::startup::{self, StartupError, StartupPacket};

/// Why a client's packet could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the client closed the connection")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// How long a closing session waits for the client to take its last bytes.
pub const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub struct ClientStream<S> {
    io: S,
    read_buf: BytesMut,
    write_buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientStream<S> {
    pub fn new(io: S) -> Self {
        ClientStream {
            io,
            read_buf: BytesMut::with_capacity(1024),
            write_buf: BytesMut::with_capacity(1024),
        }
    }

    /// Bytes already read from the stream (while telling protocols apart) that come first.
    pub fn push_ahead(&mut self, bytes: &[u8]) {
        self.read_buf.extend_from_slice(bytes);
    }

    /// Reads until at least `n` bytes are buffered. Never buffers more than `n` plus one read.
    async fn fill(&mut self, n: usize) -> Result<(), ClientError> {
        while self.read_buf.len() < n {
            self.read_buf.reserve(n - self.read_buf.len());
            if self.io.read_buf(&mut self.read_buf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
        Ok(())
    }

    /// Reads one startup packet (StartupMessage, SSLRequest, GSSENCRequest or CancelRequest).
    pub async fn read_startup(&mut self) -> Result<StartupPacket, ClientError> {
        self.fill(4).await?;
        let length = startup::startup_length([
            self.read_buf[0],
            self.read_buf[1],
            self.read_buf[2],
            self.read_buf[3],
        ])?;
        self.fill(length).await?;
        let packet = self.read_buf.split_to(length);
        Ok(startup::parse_startup(&packet)?)
    }

    /// Reads one tagged message no larger than `max` bytes; returns its tag and body.
    pub async fn read_message(&mut self, max: usize) -> Result<(u8, BytesMut), ClientError> {
        self.fill(frame::HEADER_LEN).await?;
        let total = frame::frame_length(&self.read_buf, max)?.expect("a whole header is buffered");
        self.fill(total).await?;
        let mut message = self.read_buf.split_to(total);
        let tag = message[0];
        message.advance(5);
        Ok((tag, message))
    }

    /// How many bytes the client has sent beyond what was read as packets.
    pub fn buffered(&self) -> usize {
        self.read_buf.len()
    }

    /// Replies are appended here and sent by [`ClientStream::flush`].
    pub fn write_buf(&mut self) -> &mut BytesMut {
        &mut self.write_buf
    }

    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.io.write_all(&self.write_buf).await?;
        self.io.flush().await?;
        self.write_buf.clear();
        Ok(())
    }

    /// Best-effort: sends what is pending, then closes the client's side, within
    /// [`CLOSE_TIMEOUT`]: a client that stopped reading cannot hold the session's task (and
    /// its connection slot) by never taking the goodbye.
    pub async fn close(mut self) {
        let goodbye = async {
            if !self.write_buf.is_empty() {
                let _ = self.io.write_all(&self.write_buf).await;
            }
            let _ = self.io.shutdown().await;
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await;
    }

    /// The stream and the bytes read ahead, for the relay.
    pub fn into_parts(self) -> (S, BytesMut) {
        (self.io, self.read_buf)
    }
}
