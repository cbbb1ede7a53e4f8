//! Listeners. The public one serves every protocol on one port, told apart by the first byte a
//! client sends: `0x16` opens a TLS handshake, `0x00` begins a Postgres startup packet (whose
//! length prefix is at most 10 000), anything else is HTTP (`POST /sql` or a WebSocket
//! upgrade). Inside TLS, ALPN decides (`postgresql` → Postgres, `h2`/`http/1.1` → HTTP), and
//! without ALPN the first decrypted byte does. The admin listener serves `/metrics` & co.
//! Both take already-bound listeners and a shutdown token, so tests can bind port 0.
//!
//! Shutdown: when the token is cancelled the public listener stops accepting, `/readyz` turns
//! 503, HTTP/1 keep-alive connections are closed after their current request and HTTP/2 ones
//! get GOAWAY. In-flight requests and open sessions get `shutdown_timeout` to finish; then
//! sessions are told `57P01 terminating connection due to administrator command` and the
//! rest are dropped, which cancels their queries.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::http;
use crate::session::{self, Transport};
use crate::state::AppState;
use crate::tls::ALPN_POSTGRESQL;

/// What an HTTP request's connection was: handlers that start sessions need it.
#[derive(Debug, Default)]
pub struct ConnectionInfo {
    pub tls: bool,
    pub sni: Option<String>,
}

/// How long sessions get to say goodbye once a drain has timed out.
const GOODBYE: Duration = Duration::from_secs(2);

/// Serves the public port on `listener` until `shutdown`, then drains.
pub async fn serve_public(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) {
    let router = http::app(state.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without half-close a client's EOF mid-request drops the handler, which cancels the query.
    builder
        .http1()
        .half_close(false)
        .timer(TokioTimer::new())
        .header_read_timeout(state.sessions.handshake_timeout);
    // Shared: every connection's task would otherwise carry its own copy of both protocols'
    // settings for as long as it lives.
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(permit) = state.connections.clone().try_acquire_owned() else {
            state
                .metrics
                .client_connections
                .with_label_values(&["rejected"])
                .inc();
            tracing::warn!(%peer, "connection limit reached; closing a new connection");
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "set_nodelay failed");
        }
        let connection = Connection {
            state: state.clone(),
            router: router.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
        };
        state.tasks.spawn(async move {
            connection.serve(stream).await;
            drop(permit);
        });
    }
    state.draining.store(true, Ordering::Relaxed);
    drop(listener);
    tracing::info!("draining in-flight requests and sessions");
    let tasks = state.tasks.clone();
    tasks.close();
    let drain = async {
        graceful.shutdown().await;
        tasks.wait().await;
    };
    if tokio::time::timeout(drain_timeout, drain).await.is_err() {
        tracing::warn!("drain timed out; closing remaining sessions and connections");
        state.stop_sessions.cancel();
        let _ = tokio::time::timeout(GOODBYE, tasks.wait()).await;
    }
}

/// Everything one accepted connection needs.
struct Connection {
    state: Arc<AppState>,
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
}

impl Connection {
    async fn serve(self, stream: TcpStream) {
        let deadline = self.state.sessions.handshake_timeout;
        let mut first = [0u8; 1];
        // A client that connects and says nothing is closed at the handshake timeout.
        match tokio::time::timeout(deadline, stream.peek(&mut first)).await {
            Ok(Ok(1)) => {}
            _ => return,
        }
        // Each protocol's future is boxed: the task would otherwise be as large as the largest
        // of them (a whole session, ~20 KiB) for every connection, idle HTTP ones included.
        match first[0] {
            0x16 => Box::pin(self.serve_tls(stream)).await,
            0x00 => {
                self.count("postgres");
                Box::pin(session::serve_tcp(stream, self.state)).await;
            }
            _ => {
                self.count("http");
                Box::pin(self.serve_http(stream, ConnectionInfo::default())).await;
            }
        }
    }

    fn count(&self, protocol: &str) {
        self.state.metrics.hot.client_connections.inc(protocol);
    }

    async fn serve_tls(self, stream: TcpStream) {
        self.count("tls");
        let Some(tls) = self.state.tls.as_ref() else {
            tracing::debug!("TLS ClientHello but no certificate is configured; closing");
            return;
        };
        let deadline = self.state.sessions.handshake_timeout;
        let mut stream = match tokio::time::timeout(deadline, tls.acceptor().accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => return tracing::debug!("TLS handshake timed out"),
        };
        let connection = stream.get_ref().1;
        let sni = connection.server_name().map(str::to_owned);
        match connection.alpn_protocol() {
            Some(ALPN_POSTGRESQL) => {
                let transport = Transport::Tls { sni };
                session::serve_stream(stream, &[], transport, self.state).await;
            }
            Some(_) => {
                let info = ConnectionInfo { tls: true, sni };
                self.serve_http(stream, info).await;
            }
            None => {
                // No ALPN (Node's https and ws modules send none): look at the first byte.
                let mut first = [0u8; 1];
                match tokio::time::timeout(deadline, stream.read(&mut first)).await {
                    Ok(Ok(1)) => {}
                    _ => return,
                }
                if first[0] == 0 {
                    let transport = Transport::Tls { sni };
                    session::serve_stream(stream, &first, transport, self.state).await;
                } else {
                    let info = ConnectionInfo { tls: true, sni };
                    self.serve_http(Prefixed::new(first[0], stream), info).await;
                }
            }
        }
    }

    async fn serve_http<I>(self, io: I, info: ConnectionInfo)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let info = Arc::new(info);
        let router = self.router;
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(info.clone());
            router.clone().oneshot(request.map(axum::body::Body::new))
        });
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        if let Err(e) = self.watcher.watch(connection).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// A stream with one byte already read from it put back in front.
struct Prefixed<S> {
    first: Option<u8>,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(first: u8, inner: S) -> Self {
        Prefixed {
            first: Some(first),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            buf.put_slice(&[first]);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
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

/// Serves the admin router on `listener` until `shutdown`.
pub async fn serve_admin(listener: TcpListener, state: Arc<AppState>, shutdown: CancellationToken) {
    let result = axum::serve(listener, http::admin(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "admin listener failed");
    }
}
