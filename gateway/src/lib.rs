//! The data plane: SQL over HTTP in front of plain Postgres, compatible with the
//! `@neondatabase/serverless` driver. See ARCHITECTURE.md for the map.

pub mod auth;
pub mod backend;
pub mod config;
pub mod conn_info;
pub mod error;
pub mod http;
pub mod metrics;
pub mod pool;
pub mod query;
pub mod routes;
pub mod server;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::http::AppState;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::routes::Routes;

/// Builds the shared state for a configuration.
pub fn state(config: &Config) -> Arc<AppState> {
    let metrics = Arc::new(Metrics::new());
    Arc::new(AppState {
        routes: Routes::from_static(config.routes.iter().cloned()),
        default_endpoint: config.default_endpoint.clone(),
        max_request_bytes: config.max_request_bytes,
        max_response_bytes: config.max_response_bytes,
        pool: Pool::new(config.pool.clone(), metrics.clone()),
        types: Default::default(),
        metrics,
        draining: AtomicBool::new(false),
    })
}

/// Binds both listeners and serves until `shutdown` is cancelled and the drain is over.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let public = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.admin_listen))?;
    serve(config, public, admin, shutdown).await;
    Ok(())
}

/// Serves on already-bound listeners (tests bind port 0) until `shutdown` and the drain end.
pub async fn serve(
    config: Config,
    public: TcpListener,
    admin: TcpListener,
    shutdown: CancellationToken,
) {
    let state = state(&config);
    let addr = |l: &TcpListener| {
        l.local_addr()
            .map_or_else(|_| "?".to_owned(), |a: SocketAddr| a.to_string())
    };
    tracing::info!(
        listen = %addr(&public),
        admin = %addr(&admin),
        routes = ?config.routes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        default_endpoint = %config.default_endpoint,
        "gateway started"
    );
    let tasks = TaskTracker::new();
    let admin_stop = CancellationToken::new();
    tasks.spawn(server::serve_admin(
        admin,
        state.clone(),
        admin_stop.clone(),
    ));
    tasks.spawn(state.pool.clone().run_reaper(admin_stop.clone()));
    server::serve_public(public, state, shutdown, config.shutdown_timeout).await;
    admin_stop.cancel();
    tasks.close();
    tasks.wait().await;
    tracing::info!("gateway stopped");
}
