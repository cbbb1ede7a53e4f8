//! Listeners: the public one (today HTTP/1.1 and HTTP/2 cleartext; the WebSocket tunnel and
//! Postgres TCP will be told apart here by their first bytes) and the admin one. Both take
//! already-bound listeners and a shutdown token, so tests can bind port 0.
//!
//! Shutdown: when the token is cancelled the public listener stops accepting, `/readyz` turns
//! 503, in-flight requests get `shutdown_timeout` to finish (HTTP/1 keep-alive connections are
//! closed after their current request, HTTP/2 ones get GOAWAY), then the rest are dropped,
//! which cancels their queries.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::{self, AppState};

/// Serves the public router on `listener` until `shutdown`, then drains.
pub async fn serve_public(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) {
    let service = TowerToHyperService::new(http::app(state.clone()));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without half-close a client's EOF mid-request drops the handler, which cancels the query.
    builder.http1().half_close(false);
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
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "set_nodelay failed");
        }
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service.clone())
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    state.draining.store(true, Ordering::Relaxed);
    drop(listener);
    tracing::info!("draining in-flight requests");
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
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
