//! The wake service: the control plane. It owns endpoints, their roles and databases, and the
//! lifecycle of their computes, and answers the gateway's "where is endpoint X" questions.
//!
//! `main` parses the command line and calls [`run`] (the service) or one of the [`cli`]
//! subcommands; tests start the service in-process through [`run`] or [`api::app`].
//!
//! [`run`] reads in three steps: bootstrap (config → state store → compute driver →
//! [`lifecycle::Computes`]), leadership ([`leadership::Election`]: reconcile and the
//! scheduler on the leader only) and serving (the router on the bound listener until the
//! shutdown signal, then the leader's suspends).

pub mod api;
pub mod autoscale;
pub mod autoscaler;
pub mod branch_expiry;
pub mod cli;
pub mod compute;
pub mod config;
pub mod jwt;
pub mod leadership;
pub mod lifecycle;
pub mod metrics;
pub mod password_vault;
pub mod roles;
pub mod scheduler;
pub mod state_cluster;
pub mod store;
pub mod usage;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::Service;
use crate::compute::drivers::Drivers;
use crate::compute::local::LocalDriver;
use crate::compute::railway::RailwayDriver;
use crate::config::{PasswordKey, ServeConfig};
use crate::leadership::Election;
use crate::lifecycle::{Computes, LifecycleConfig};
use crate::metrics::Metrics;
use crate::password_vault::PasswordVault;
use crate::state_cluster::StateCluster;
use crate::store::Store;
use crate::usage::Metering;

/// Runs the service on `listener` until `shutdown` fires.
///
/// Startup: open the state store (the embedded cluster unless a URL is given), apply
/// migrations, become the leader if no other replica is, reconcile computes with the store
/// (finishing or rolling back operations a crash cut short, adopting running processes),
/// create the default endpoint on first start, then serve. On shutdown, unless told to leave
/// them running, the leader suspends the computes it runs and stops the embedded store.
pub async fn run(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (store_config, embedded) = state_store(&config).await?;
    // Whatever happens from here on (a refused start included), the embedded store stops.
    let served = run_on(config, store_config, listener, shutdown).await;
    if let Some(cluster) = embedded {
        if let Err(e) = cluster.stop().await {
            tracing::warn!(error = %e, "could not stop the embedded state store");
        }
    }
    served
}

/// Where the state store is: `--database-url`, or the embedded cluster under
/// `DATA_DIR/state`, started now (and returned, to be stopped at the end).
async fn state_store(
    config: &ServeConfig,
) -> anyhow::Result<(tokio_postgres::Config, Option<StateCluster>)> {
    match &config.database_url {
        Some(url) => {
            let store = external_store(&url.0)?;
            answers(&store).await.context("opening the state store")?;
            Ok((store, None))
        }
        None => {
            let dir = config.data_dir.join("state");
            let cluster = StateCluster::start(&config.local, &dir)
                .await
                .context("starting the embedded state store")?;
            Ok((cluster.connection_config(), Some(cluster)))
        }
    }
}

/// How long a connection to an external state store may take unless its URL says
/// (`connect_timeout`): an unreachable store fails the start, or an operation, in bounded time.
const STORE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long an external state store may take to let the service in (connect, log in) at
/// startup: one that accepts connections and never answers (a hung server, a broken proxy)
/// fails the start instead of holding it forever. Migrations are not bounded.
const STORE_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The external store's connection settings from `--database-url` (never echoed: it holds a
/// password), with a connect timeout and the application name (what `pg_stat_activity`
/// shows) unless the URL sets them.
fn external_store(url: &str) -> anyhow::Result<tokio_postgres::Config> {
    let mut store = url.parse::<tokio_postgres::Config>().context(
        "the state store's WAKE_DATABASE_URL (--database-url) is not a valid Postgres \
         connection string (postgres://user:password@host:port/database)",
    )?;
    if store.get_connect_timeout().is_none() {
        store.connect_timeout(STORE_CONNECT_TIMEOUT);
    }
    if store.get_application_name().is_none() {
        store.application_name("wake-service");
    }
    Ok(store)
}

/// Logs in to the external store once, bounded by [`STORE_ANSWER_TIMEOUT`].
async fn answers(store: &tokio_postgres::Config) -> anyhow::Result<()> {
    let (client, connection) =
        tokio::time::timeout(STORE_ANSWER_TIMEOUT, store.connect(tokio_postgres::NoTls))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the state store did not answer within {} s",
                    STORE_ANSWER_TIMEOUT.as_secs()
                )
            })??;
    drop(client);
    // With its client gone the connection says goodbye and ends.
    tokio::spawn(connection);
    Ok(())
}

/// [`run`] once the state store runs: bootstrap, leadership, serving, then the leader's
/// suspends.
async fn run_on(
    config: ServeConfig,
    store_config: tokio_postgres::Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let service = bootstrap(&config, store_config).await?;
    let store = service.computes.store().clone();
    let election =
        match Election::start(&service.computes, &service.metering, &config, &shutdown).await {
            Ok(election) => election,
            Err(e) => {
                store.close();
                return Err(e);
            }
        };
    let served = serve(listener, service.clone(), shutdown).await;
    let leadership = election.finish().await;
    if leadership.is_some() && !config.leave_computes_running {
        tracing::info!("suspending computes before exit");
        service.computes.suspend_all().await;
    }
    drop(leadership);
    store.close();
    served
}

/// Config → state store (migrations applied) → compute driver → the lifecycle, and what
/// the API's handlers share.
async fn bootstrap(
    config: &ServeConfig,
    store_config: tokio_postgres::Config,
) -> anyhow::Result<Arc<Service>> {
    let store = Store::open(store_config)
        .await
        .context("opening the state store")?;
    let passwords = Arc::new(match &config.password_key {
        PasswordKey::Value(key) => PasswordVault::from_hex(&key.0)
            .context("WAKE_PASSWORD_KEY (--password-key) must be 64 hex digits")?,
        PasswordKey::File(path) => PasswordVault::load_or_create(path)?,
    });
    let recorded = store
        .claim_setting("password_key_fingerprint", passwords.fingerprint())
        .await
        .context("recording the password key's fingerprint")?;
    anyhow::ensure!(
        recorded == passwords.fingerprint(),
        "this password key (fingerprint {}) is not the one the state store's role passwords \
         are sealed with (fingerprint {recorded}): give every replica the same \
         --password-key or --password-key-file",
        passwords.fingerprint()
    );
    let metrics = Arc::new(Metrics::new()?);
    let local = LocalDriver::new(config.local.clone()).context("local compute driver")?;
    let railway = match &config.railway {
        Some(railway) => {
            Some(RailwayDriver::new(railway.clone()).context("railway compute driver")?)
        }
        None => None,
    };
    let driver = Arc::new(Drivers::new(local, railway));
    let computes = Arc::new(Computes::new(
        store,
        driver,
        LifecycleConfig {
            host: config.local.host.clone(),
            ports: config.compute_ports.clone(),
            default_suspend_timeout_seconds: config.default_suspend_timeout_seconds,
            operation_timeout: config.wake_timeout,
            wake_timeout: config.wake_timeout,
            quarantine_unknown: config.quarantine_unknown_computes,
            ceiling: config.max_cu,
            branches: config.branches.clone(),
            passwords,
        },
        metrics.clone(),
    ));
    let metering = Arc::new(Metering::new(
        computes.clone(),
        metrics.clone(),
        config.metering.clone(),
    ));
    Ok(Arc::new(Service {
        computes,
        metering,
        metrics,
        admin_token: config.admin_token.0.clone(),
        proxy_token: config.proxy_token.as_ref().map(|t| t.0.clone()),
    }))
}

/// Serves [`api::app`] on `listener` until `shutdown` fires (requests in flight finish).
async fn serve(
    listener: TcpListener,
    service: Arc<Service>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(listen = %listener.local_addr()?, "wake service ready");
    axum::serve(listener, api::app(service))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving the API")
}
