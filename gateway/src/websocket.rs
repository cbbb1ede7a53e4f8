//! The WebSocket tunnel: an upgrade on any path (`/v1`, `/v2`, with or without `?address=`)
//! turns the connection into a byte stream of the Postgres protocol, which [`crate::session`]
//! serves like any other. Binary frames carry the bytes (many messages per frame, or one
//! message across frames); a text frame ends the session with an error; pings are answered;
//! a close frame is the end of the stream.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::server::ConnectionInfo;
use crate::session::{self, Transport};
use crate::state::AppState;

/// Whether `headers` ask to upgrade to a WebSocket.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

/// Answers an upgrade request with 101 and starts the session once the switch happens.
pub async fn upgrade(state: Arc<AppState>, mut request: Request) -> Response {
    let headers = request.headers();
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        let mut response = refuse(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket version 13 is required",
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return refuse(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let accept = derive_accept_key(key.as_bytes());
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().host().map(str::to_owned));
    let address = request.uri().query().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "address")
            .map(|(_, value)| value.into_owned())
    });
    let info = request.extensions().get::<Arc<ConnectionInfo>>().cloned();
    // The connection's place under the connection limits goes with the session.
    let slot = info.as_ref().and_then(|i| i.slot.clone());
    let Some(on_upgrade) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "this connection cannot be upgraded to a WebSocket (use HTTP/1.1)",
        );
    };
    let budget = state.handshake_pool.budget();
    let transport = Transport::WebSocket {
        tls: info.as_ref().is_some_and(|i| i.tls),
        address,
        host,
        sni: info.and_then(|i| i.sni.clone()),
        handshake: budget.clone(),
    };
    let config = ws_config(state.sessions.max_message_bytes);
    let tasks = state.tasks.clone();
    tasks.spawn(async move {
        let _slot = slot;
        match on_upgrade.await {
            Ok(upgraded) => {
                let raw = Budgeted::new(TokioIo::new(upgraded), budget);
                let ws = WebSocketStream::from_raw_socket(raw, Role::Server, config).await;
                session::serve_stream(WsStream::new(ws), &[], transport, state).await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade did not complete"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

fn refuse(status: StatusCode, message: &'static str) -> Response {
    (status, axum::Json(message)).into_response()
}

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

/// Bytes a WebSocket client may send before its session is ready without drawing on the
/// shared handshake pool: a startup packet is at most 10 000 bytes and an authentication
/// message 8 KiB, so a handshake alone never needs more.
pub const HANDSHAKE_BYTES: usize = 64 * 1024;

/// What WebSocket clients still in their handshake may make the gateway hold. The driver
/// pipelines its first query with the startup packet and password (`coalesceWrites` puts all
/// three in one WebSocket message, which tungstenite must read whole before the session sees
/// the startup), so a client may legitimately send a large message before it is
/// authenticated. Each connection's first [`HANDSHAKE_BYTES`] are free; beyond them, bytes come
/// out of one pool shared by all handshaking clients (`--max-handshake-bytes`), given back
/// when the session is ready or ends. A client that finds the pool empty is refused: nobody
/// authenticated can make the gateway hold more than the pool and the free allowances.
pub struct HandshakePool(Arc<Semaphore>);

impl HandshakePool {
    pub fn new(bytes: usize) -> Self {
        HandshakePool(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }

    /// A new connection's budget.
    pub fn budget(&self) -> HandshakeBudget {
        HandshakeBudget(Arc::new(Mutex::new(Budget {
            free: HANDSHAKE_BYTES,
            pool: self.0.clone(),
            held: None,
            lifted: false,
        })))
    }
}

/// What one WebSocket client may still send before its session is ready; lifted by the
/// session once it is. Shared between the session and the reader under tungstenite.
#[derive(Clone)]
pub struct HandshakeBudget(Arc<Mutex<Budget>>);

impl std::fmt::Debug for HandshakeBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandshakeBudget")
    }
}

struct Budget {
    /// What is left of the connection's own allowance.
    free: usize,
    pool: Arc<Semaphore>,
    /// What this connection drew from the pool.
    held: Option<OwnedSemaphorePermit>,
    lifted: bool,
}

impl HandshakeBudget {
    /// The handshake is over: no more budget, and what was drawn from the pool goes back.
    pub fn lift(&self) {
        let mut budget = lock(&self.0);
        budget.lifted = true;
        budget.held = None;
    }

    /// Spends `n` bytes; false when neither the allowance nor the pool has them.
    fn spend(&self, n: usize) -> bool {
        let mut budget = lock(&self.0);
        if budget.lifted {
            return true;
        }
        let from_free = n.min(budget.free);
        budget.free -= from_free;
        let rest = n - from_free;
        if rest == 0 {
            return true;
        }
        let Ok(drawn) = u32::try_from(rest).ok().map_or(Err(()), |rest| {
            budget
                .pool
                .clone()
                .try_acquire_many_owned(rest)
                .map_err(|_| ())
        }) else {
            return false;
        };
        match &mut budget.held {
            Some(held) => held.merge(drawn),
            None => budget.held = Some(drawn),
        }
        true
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The raw upgraded connection under tungstenite, failing a read once the client sent more
/// than its [`HandshakeBudget`] allows before the session was ready (the read that overruns
/// it, at most 4 KiB, is dropped).
struct Budgeted<S> {
    inner: S,
    budget: HandshakeBudget,
}

impl<S> Budgeted<S> {
    fn new(inner: S, budget: HandshakeBudget) -> Self {
        Budgeted { inner, budget }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Budgeted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.budget.spend(buf.filled().len() - before) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                HandshakeTooLarge,
            )))
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Budgeted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The error a client's bytes beyond its [`HandshakeBudget`] turn into.
#[derive(Debug, thiserror::Error)]
#[error("too much data is waiting for authentication on this gateway")]
struct HandshakeTooLarge;

/// Whether an I/O error from a [`WsStream`] means the client overran its handshake budget.
pub fn is_handshake_overrun(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<HandshakeTooLarge>())
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

    #[test]
    fn handshake_budgets_draw_on_one_pool_and_give_it_back() {
        let pool = HandshakePool::new(100_000);
        let a = pool.budget();
        let b = pool.budget();
        // The first 64 KiB are each connection's own.
        assert!(a.spend(HANDSHAKE_BYTES));
        assert!(b.spend(HANDSHAKE_BYTES));
        assert_eq!(pool.0.available_permits(), 100_000);
        // Beyond them, the pool.
        assert!(a.spend(60_000));
        assert!(!b.spend(50_000), "the pool has 40 000 left");
        assert!(b.spend(40_000));
        assert!(!a.spend(1));
        // A ready session gives its share back and spends nothing more.
        a.lift();
        assert_eq!(pool.0.available_permits(), 60_000);
        assert!(a.spend(10_000_000));
        // So does one that ends.
        drop(b);
        assert_eq!(pool.0.available_permits(), 100_000);
    }

    #[test]
    fn upgrade_headers() {
        let mut headers = HeaderMap::new();
        assert!(!is_upgrade(&headers));
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(is_upgrade(&headers));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_upgrade(&headers));
    }

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
