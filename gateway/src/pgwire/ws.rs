//! A WebSocket as a byte stream of the Postgres protocol: binary frames carry the bytes (many
//! messages per frame, or one message across frames); a text frame is an error; pings are
//! answered; a close frame is the end of the stream.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
#[cfg(test)]
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Frames up to the message limit; writes go out at once (the relay flushes every chunk), and
/// at most a few MiB wait for a slow reader before writes block.
///
/// Reads take at most 4 KiB at a time: tungstenite zero-fills its read buffer up to this size
/// on every read attempt, including the ones that find nothing (each wake of the relay tries
/// one), so the size is paid per poll. At 16 KiB it was two thirds of the gateway's work per
/// tunnelled `SELECT 1` (26K of 39K instructions) and 16 KiB touched per idle session. Larger
/// frames still arrive whole; they take more reads.
pub fn ws_config(max_message_bytes: usize) -> Option<WebSocketConfig> {
    Some(
        WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_write_buffer_size(4 * 1024 * 1024)
            .max_message_size(Some(max_message_bytes))
            .max_frame_size(Some(max_message_bytes)),
    )
}

/// The error a text frame turns into; see [`is_text_frame`].
#[derive(Debug, thiserror::Error)]
#[error("WebSocket text frames are not supported")]
struct TextFrame;

/// Whether an I/O error from a [`WsStream`] means the client sent a text frame.
pub fn is_text_frame(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|inner| inner.is::<TextFrame>())
}

/// A WebSocket as a byte stream: binary frames in, one binary frame per write out.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// The unread rest of the last binary frame.
    chunk: Bytes,
    /// The close frame to send when the stream is shut down.
    close: Option<CloseFrame>,
}

impl<S> WsStream<S> {
    pub fn new(inner: WebSocketStream<S>) -> Self {
        WsStream {
            inner,
            chunk: Bytes::new(),
            close: Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }),
        }
    }

    fn close_with(&mut self, code: CloseCode, reason: &'static str) {
        self.close = Some(CloseFrame {
            code,
            reason: reason.into(),
        });
    }
}

fn to_io(error: WsError) -> io::Error {
    match error {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "the WebSocket is closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S> AsyncRead for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.chunk.is_empty() {
                let n = this.chunk.len().min(buf.remaining());
                buf.put_slice(&this.chunk[..n]);
                this.chunk.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.chunk = data,
                Some(Ok(Message::Text(_))) => {
                    this.close_with(CloseCode::Unsupported, "text frames are not supported");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, TextFrame)));
                }
                // Pings are answered by tungstenite itself; pongs need nothing.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Poll::Ready(Ok(()))
                }
                Some(Err(WsError::Capacity(e))) => {
                    this.close_with(CloseCode::Size, "message too large");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
                Some(Err(WsError::Protocol(e))) => {
                    this.close_with(CloseCode::Protocol, "WebSocket protocol error");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S> AsyncWrite for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(to_io)?;
        Pin::new(&mut this.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner)
            .poll_flush(cx)
            .map_err(to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.close.is_some() {
            match ready!(Pin::new(&mut this.inner).poll_ready(cx)) {
                Ok(()) => {
                    let frame = this.close.take();
                    // Fails only when the peer already closed, which is as good.
                    let _ = Pin::new(&mut this.inner).start_send(Message::Close(frame));
                }
                Err(_) => this.close = None,
            }
        }
        match ready!(Pin::new(&mut this.inner).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (
        WsStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, ws_config(1024)).await;
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        (WsStream::new(server), client)
    }

    #[tokio::test]
    async fn frames_are_one_byte_stream() {
        use futures_util::{SinkExt, StreamExt};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut server, mut client) = pair().await;
        client
            .send(Message::Binary(Bytes::from_static(b"hel")))
            .await
            .expect("send");
        client
            .send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .expect("ping");
        client
            .send(Message::Binary(Bytes::from_static(b"lo")))
            .await
            .expect("send");
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello");
        server.write_all(b"reply").await.expect("write");
        server.flush().await.expect("flush");
        // The pong comes back before the reply.
        assert_eq!(
            client.next().await.expect("frame").expect("ok"),
            Message::Pong(Bytes::from_static(b"p"))
        );
        assert_eq!(
            client.next().await.expect("frame").expect("ok"),
            Message::Binary(Bytes::from_static(b"reply"))
        );
        client.send(Message::Close(None)).await.expect("close");
        assert_eq!(server.read(&mut got).await.expect("eof"), 0);
    }

    #[tokio::test]
    async fn text_and_oversized_frames_are_errors_with_close_codes() {
        use futures_util::{SinkExt, StreamExt};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut server, mut client) = pair().await;
        client.send(Message::text("SELECT 1")).await.expect("send");
        let mut buf = [0u8; 8];
        let error = server.read(&mut buf).await.expect_err("text frame");
        assert!(is_text_frame(&error));
        server.shutdown().await.expect("shutdown");
        match client.next().await.expect("frame").expect("ok") {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Unsupported),
            other => panic!("expected a close frame, got {other:?}"),
        }

        let (mut server, mut client) = pair().await;
        client
            .send(Message::Binary(Bytes::from(vec![0u8; 2048])))
            .await
            .expect("send");
        let error = server.read(&mut buf).await.expect_err("too large");
        assert!(!is_text_frame(&error));
        server.shutdown().await.expect("shutdown");
        match client.next().await.expect("frame").expect("ok") {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Size),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}
