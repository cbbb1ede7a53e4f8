//! The wake service: the control plane. It owns endpoints, their roles and databases, and the
//! lifecycle of their computes, and answers the gateway's "where is endpoint X" questions.
//!
//! `main` parses the command line and calls [`run`] (the service) or one of the [`cli`]
//! subcommands; tests start the service in-process through [`run`] or [`api::app`].

pub mod api;
pub mod cli;
pub mod compute;
pub mod config;
pub mod lifecycle;
pub mod metrics;
pub mod roles;
pub mod scheduler;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::Service;
use crate::compute::local::{LocalDriver, StateCluster};
use crate::config::ServeConfig;
use crate::lifecycle::{Computes, LifecycleConfig};
use crate::metrics::Metrics;
use crate::store::Store;

/// How often a replica that is not the leader tries to become it.
const LEADER_RETRY: Duration = Duration::from_secs(2);

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
    let (store_config, embedded) = match &config.database_url {
        Some(url) => (
            url.0
                .parse::<tokio_postgres::Config>()
                .context("WAKE_DATABASE_URL is not a valid Postgres connection string")?,
            None,
        ),
        None => {
            let dir = config.data_dir.join("state");
            let cluster = StateCluster::start(&config.local, &dir)
                .await
                .context("starting the embedded state store")?;
            (cluster.connection_config(), Some(cluster))
        }
    };
    // Whatever happens from here on (a refused start included), the embedded store stops.
    let served = serve(config, store_config, listener, shutdown).await;
    if let Some(cluster) = embedded {
        if let Err(e) = cluster.stop().await {
            tracing::warn!(error = %e, "could not stop the embedded state store");
        }
    }
    served
}

/// [`run`] once the state store runs.
async fn serve(
    config: ServeConfig,
    store_config: tokio_postgres::Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = Store::open(store_config)
        .await
        .context("opening the state store")?;
    let metrics = Arc::new(Metrics::new()?);
    let driver = Arc::new(LocalDriver::new(config.local.clone()).context("local compute driver")?);
    let computes = Computes::new(
        store.clone(),
        driver,
        LifecycleConfig {
            host: config.local.host.clone(),
            ports: config.compute_ports.clone(),
            default_suspend_timeout_seconds: config.default_suspend_timeout_seconds,
            operation_timeout: config.wake_timeout,
            quarantine_unknown: config.quarantine_unknown_computes,
        },
        metrics.clone(),
    );
    let service = Arc::new(Service {
        computes,
        metrics,
        admin_token: config.admin_token.0.clone(),
        proxy_token: config.proxy_token.as_ref().map(|t| t.0.clone()),
        wake_timeout: config.wake_timeout,
    });

    // The suspend scheduler runs on the leader only; it stops before computes are stopped.
    let scheduling = CancellationToken::new();
    let scheduler_tasks = TaskTracker::new();
    let start_scheduler = {
        let service = service.clone();
        let scheduling = scheduling.clone();
        let tracker = scheduler_tasks.clone();
        let config = config.scheduler;
        move || {
            tracker.spawn(scheduler::run(service.clone(), config, scheduling.clone()));
        }
    };
    let leadership = match store.try_lead().await? {
        Some(lead) => {
            if let Err(e) = lead_startup(&service, &config).await {
                store.close();
                return Err(e);
            }
            start_scheduler();
            Some(lead)
        }
        None => {
            tracing::info!("another replica leads; serving the API and waiting to take over");
            None
        }
    };
    let follower = if leadership.is_none() {
        let service = service.clone();
        let start_scheduler = start_scheduler.clone();
        let config = config.clone();
        let shutdown = shutdown.clone();
        Some(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(LEADER_RETRY) => {}
                }
                if let Ok(Some(lead)) = service.computes.store().try_lead().await {
                    tracing::info!("became the leader");
                    if let Err(e) = lead_startup(&service, &config).await {
                        tracing::error!(error = %e, "leader startup failed");
                    }
                    start_scheduler();
                    return Some(lead);
                }
            }
        }))
    } else {
        None
    };

    tracing::info!(listen = %listener.local_addr()?, "wake service ready");
    let app = api::app(service.clone());
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .context("serving the API")?;

    let leadership = match follower {
        Some(task) => task.await.ok().flatten(),
        None => leadership,
    };
    scheduling.cancel();
    scheduler_tasks.close();
    scheduler_tasks.wait().await;
    if leadership.is_some() && !config.leave_computes_running {
        tracing::info!("suspending computes before exit");
        service.computes.suspend_all().await;
    }
    drop(leadership);
    store.close();
    Ok(())
}

async fn lead_startup(service: &Service, config: &ServeConfig) -> anyhow::Result<()> {
    service
        .computes
        .reconcile()
        .await
        .context("reconciling computes with the state store")?;
    if let Some(default) = &config.default_endpoint {
        service
            .computes
            .bootstrap_default(
                &default.id,
                &default.role,
                &default.password.0,
                &default.database,
            )
            .await
            .context("creating the default endpoint")?;
    }
    Ok(())
}
