//! Listeners. The public one serves every protocol on one port, told apart by the first byte a
//! client sends: `0x16` opens a TLS handshake, `0x00` begins a Postgres startup packet (whose
//! length prefix is at most 10 000), anything else is HTTP (`POST /sql` or a WebSocket
//! upgrade). Inside TLS, ALPN decides (`postgresql` → Postgres, `h2`/`http/1.1` → HTTP), and
//! without ALPN the first decrypted byte does. The admin listener serves `/metrics` & co.
//! Both take already-bound listeners and a shutdown token, so tests can bind port 0.
//!
//! Before any of that, a connection is admitted under the connection limits (in all and per
//! client address, [`crate::base::limits::ConnectionSlots`]); one over them is told so in its own
//! protocol and closed. Every connection must show its first request within the handshake
//! timeout, and an HTTP connection with nothing in flight is closed after the idle timeout
//! (see `Connection::serve_http`).
//!
//! Shutdown: when the token is cancelled the public listener stops accepting, `/readyz` turns
//! 503, HTTP/1 keep-alive connections are closed after their current request and HTTP/2 ones
//! get GOAWAY. In-flight requests and open sessions get `shutdown_timeout` to finish; then
//! sessions are told `57P01 terminating connection due to administrator command` and the
//! rest are dropped, which cancels their queries.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::base::limits::{ConnectionSlot, Limit, Refused};
use crate::frontend::connection::ConnectionInfo;
use crate::frontend::http;
use crate::frontend::http::error::SqlError;
use crate::frontend::session::{self, Transport};
use crate::frontend::state::AppState;
use crate::frontend::tls::ALPN_POSTGRESQL;
use crate::obs::labels::Protocol;

/// How long sessions get to say goodbye once a drain has timed out, and an idle HTTP
/// connection after its GOAWAY.
const GOODBYE: Duration = Duration::from_secs(2);
/// How much longer than the handshake timeout hyper waits for an HTTP/1 request head.
const HEAD_GRACE: Duration = Duration::from_secs(1);
/// How often a draining connection's loop wakes (it has nothing to do but wait).
const DRAIN_CHECK: Duration = Duration::from_secs(3600);
/// Connections refused over a limit that are told why at once (the rest are just closed).
const REFUSALS_AT_ONCE: usize = 256;
/// How long a refused connection is given to show its protocol (to be told in its terms).
const REFUSAL_TIME: Duration = Duration::from_secs(1);
/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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
        // A second later than the first-request deadline `serve_http` keeps itself (which is
        // counted), so that one closes a first request head that is too slow; this one then
        // bounds each later head.
        .header_read_timeout(state.sessions.handshake_timeout + HEAD_GRACE);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(state.http.max_concurrent_streams);
    // Shared: every connection's task would otherwise carry its own copy of both protocols'
    // settings for as long as it lives.
    let builder = Arc::new(builder);
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
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
        let slot = match state.connections.admit(peer.ip()) {
            Ok(slot) => Arc::new(slot),
            Err(limit) => {
                state.metrics.client_connections.inc(Protocol::Rejected);
                state.metrics.limit_hit(limit);
                tracing::debug!(%peer, limit = limit.label(), "connection limit reached; refusing a new connection");
                if let Ok(permit) = refusals.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        refuse(stream, limit).await;
                        drop(permit);
                    });
                }
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "set_nodelay failed");
        }
        let connection = Connection {
            state: state.clone(),
            router: router.clone(),
            builder: builder.clone(),
            slot,
            drain: shutdown.clone(),
        };
        state.tasks.spawn(connection.serve(stream));
    }
    state.draining.store(true, Ordering::Relaxed);
    drop(listener);
    tracing::info!("draining in-flight requests and sessions");
    let tasks = state.tasks.clone();
    tasks.close();
    if tokio::time::timeout(drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining sessions and connections");
        state.stop_sessions.cancel();
        let _ = tokio::time::timeout(GOODBYE, tasks.wait()).await;
    }
}

/// Tells a connection refused over a connection limit why, in its own protocol when it shows
/// it within [`REFUSAL_TIME`]: a FATAL `53300` to a Postgres client (as Postgres's "sorry, too
/// many clients already"), a 429 with the driver's JSON error to an HTTP one. A TLS client is
/// just closed: answering would cost a handshake.
async fn refuse(mut stream: TcpStream, limit: Limit) {
    let message = match limit {
        Limit::ConnectionsPerIp => {
            "too many connections from this IP address; please try again later"
        }
        _ => "too many connections to the gateway; please try again later",
    };
    let refused = Refused::new(limit, message);
    let mut first = [0u8; 1];
    let answer = match tokio::time::timeout(REFUSAL_TIME, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0 => {
            let mut buf = bytes::BytesMut::new();
            crate::pgwire::startup::fatal(&mut buf, refused.sqlstate(), message, None);
            buf.to_vec()
        }
        Ok(Ok(1)) if first[0] != 0x16 => {
            let body = SqlError::Limited(refused.clone()).json_body();
            let status = refused.status();
            let mut head = format!(
                "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n{}connection: close\r\ncontent-length: {}\r\n\r\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                crate::frontend::http::cors::ALLOW_ANY_ORIGIN_LINE,
                body.len()
            )
            .into_bytes();
            head.extend_from_slice(&body);
            head
        }
        _ => return,
    };
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    })
    .await;
}

/// Everything one accepted connection needs.
struct Connection {
    state: Arc<AppState>,
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    slot: Arc<ConnectionSlot>,
    /// Cancelled when the gateway starts draining.
    drain: CancellationToken,
}

impl Connection {
    async fn serve(self, stream: TcpStream) {
        let deadline = self.state.sessions.handshake_timeout;
        let mut first = [0u8; 1];
        // A client that connects and says nothing is closed at the handshake timeout.
        match tokio::time::timeout(deadline, stream.peek(&mut first)).await {
            Ok(Ok(1)) => {}
            Ok(_) => return,
            Err(_) => return self.state.metrics.limit_hit(Limit::FirstRequestTimeout),
        }
        // Each protocol's future is boxed: the task would otherwise be as large as the largest
        // of them (a whole session, ~20 KiB) for every connection, idle HTTP ones included.
        match first[0] {
            0x16 => Box::pin(self.serve_tls(stream)).await,
            0x00 => {
                self.count(Protocol::Postgres);
                let _slot = self.slot;
                Box::pin(session::serve_tcp(stream, self.state)).await;
            }
            _ => {
                self.count(Protocol::Http);
                Box::pin(self.serve_http(stream, Link::Plain)).await;
            }
        }
    }

    fn count(&self, protocol: Protocol) {
        self.state.metrics.client_connections.inc(protocol);
    }

    async fn serve_tls(self, stream: TcpStream) {
        self.count(Protocol::Tls);
        let Some(tls) = self.state.tls.as_ref() else {
            tracing::debug!("TLS ClientHello but no certificate is configured; closing");
            return;
        };
        let deadline = self.state.sessions.handshake_timeout;
        let mut stream = match tokio::time::timeout(deadline, tls.acceptor().accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => {
                self.state.metrics.limit_hit(Limit::FirstRequestTimeout);
                return tracing::debug!("TLS handshake timed out");
            }
        };
        let connection = stream.get_ref().1;
        let sni = connection.server_name().map(str::to_owned);
        match connection.alpn_protocol() {
            Some(ALPN_POSTGRESQL) => {
                let transport = Transport::Tls { sni };
                let peer = self.slot.ip();
                let _slot = self.slot;
                session::serve_stream(stream, &[], transport, peer, self.state).await;
            }
            Some(_) => self.serve_http(stream, Link::Tls { sni }).await,
            None => {
                // No ALPN (Node's https and ws modules send none): look at the first byte.
                let mut first = [0u8; 1];
                match tokio::time::timeout(deadline, stream.read(&mut first)).await {
                    Ok(Ok(1)) => {}
                    Ok(_) => return,
                    Err(_) => return self.state.metrics.limit_hit(Limit::FirstRequestTimeout),
                }
                if first[0] == 0 {
                    let transport = Transport::Tls { sni };
                    let peer = self.slot.ip();
                    let _slot = self.slot;
                    session::serve_stream(stream, &first, transport, peer, self.state).await;
                } else {
                    self.serve_http(Prefixed::new(first.to_vec(), stream), Link::Tls { sni })
                        .await;
                }
            }
        }
    }

    /// Serves HTTP/1.1 or HTTP/2 on `io`. The HTTP/2 preface is read here, within the
    /// handshake timeout (hyper's own detection would wait for it forever); an HTTP/1.1
    /// request head must then arrive within the same timeout (hyper's header read timeout),
    /// and an HTTP/2 connection must start its first request within it. Afterwards a
    /// connection with no request in flight for the HTTP idle timeout is closed (GOAWAY for
    /// HTTP/2), and a drain closes every connection once its requests are answered.
    async fn serve_http<I>(self, mut io: I, link: Link)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handshake = self.state.sessions.handshake_timeout;
        let head = match read_preface(&mut io, Instant::now() + handshake).await {
            Ok(head) => head,
            Err(PrefaceEnd::Closed) => return,
            Err(PrefaceEnd::TimedOut) => {
                return self.state.metrics.limit_hit(Limit::FirstRequestTimeout)
            }
        };
        let (tls, sni) = match link {
            Link::Plain => (false, None),
            Link::Tls { sni } => (true, sni),
        };
        let info = Arc::new(ConnectionInfo {
            tls,
            sni,
            slot: Some(self.slot.clone()),
        });
        let busy = Arc::new(Busy::new());
        let router = self.router;
        let requests = busy.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(info.clone());
            let in_flight = requests.start();
            let response = router.clone().oneshot(request.map(axum::body::Body::new));
            async move {
                let response = response.await;
                drop(in_flight);
                response
            }
        });
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(Prefixed::new(head, io)), service)
            .into_owned();
        let mut connection = std::pin::pin!(connection);
        let idle = self.state.http.idle_timeout;
        // An idle close gives the client [`GOODBYE`] to go; a drain waits for the answers.
        let mut closing: Option<Instant> = None;
        let mut draining = false;
        loop {
            let timeout = if busy.served() == 0 { handshake } else { idle };
            let wake = match closing {
                Some(at) => at + GOODBYE,
                // A drain is bounded by the drain timeout, not here.
                None if draining => Instant::now() + DRAIN_CHECK,
                None => busy.idle_deadline(timeout),
            };
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = self.drain.cancelled(), if !draining => {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = tokio::time::sleep_until(wake) => {
                    if closing.is_some() {
                        return;
                    }
                    if !draining && busy.idle_for(timeout) {
                        let limit = if busy.served() == 0 {
                            Limit::FirstRequestTimeout
                        } else {
                            Limit::HttpIdleTimeout
                        };
                        self.state.metrics.limit_hit(limit);
                        connection.as_mut().graceful_shutdown();
                        closing = Some(Instant::now());
                    }
                }
            }
        }
    }
}

/// What an HTTP connection runs over.
enum Link {
    Plain,
    /// TLS, with the server name the client asked for.
    Tls {
        sni: Option<String>,
    },
}

/// Why no request head could be read.
enum PrefaceEnd {
    Closed,
    TimedOut,
}

/// Reads until the bytes stop matching the HTTP/2 preface (HTTP/1.1), or it is complete
/// (HTTP/2), by `deadline`; returns what was read.
async fn read_preface<I>(io: &mut I, deadline: Instant) -> Result<Vec<u8>, PrefaceEnd>
where
    I: AsyncRead + Unpin,
{
    let mut head = Vec::with_capacity(H2_PREFACE.len());
    let mut buf = [0u8; 24];
    while head.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&head) {
        let want = H2_PREFACE.len() - head.len();
        match tokio::time::timeout_at(deadline, io.read(&mut buf[..want])).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(PrefaceEnd::Closed),
            Ok(Ok(n)) => head.extend_from_slice(&buf[..n]),
            Err(_) => return Err(PrefaceEnd::TimedOut),
        }
    }
    Ok(head)
}

/// Requests in flight on one HTTP connection, and since when it has had none.
struct Busy {
    in_flight: AtomicUsize,
    served: AtomicUsize,
    /// When the last request ended (or the connection opened).
    since: std::sync::Mutex<Instant>,
}

/// One request in flight; dropped when its response is ready (or the request is dropped).
struct InFlight(Arc<Busy>);

impl Busy {
    fn new() -> Self {
        Busy {
            in_flight: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            since: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    fn since(&self) -> Instant {
        *self.since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the connection will have been idle for `timeout`, if nothing starts meanwhile.
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Instant::now() + timeout;
        }
        self.since() + timeout
    }

    fn idle_for(&self, timeout: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && self.since().elapsed() >= timeout
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream with bytes already read from it put back in front.
struct Prefixed<S> {
    ahead: Vec<u8>,
    read: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(ahead: Vec<u8>, inner: S) -> Self {
        Prefixed {
            ahead,
            read: 0,
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
        if this.read < this.ahead.len() {
            let n = (this.ahead.len() - this.read).min(buf.remaining());
            buf.put_slice(&this.ahead[this.read..this.read + n]);
            this.read += n;
            if this.read == this.ahead.len() {
                this.ahead = Vec::new();
                this.read = 0;
            }
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
