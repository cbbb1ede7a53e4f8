//! The `railway` compute driver: an endpoint bound to an existing Railway Postgres service
//! (and its PgBouncer service, if it has one), suspended, resumed, resized and measured
//! through Railway's public GraphQL API ([`client`], [`ops`]).
//!
//! - **Suspend** stops the service's deployment (`deploymentStop`). App Sleeping
//!   (`serviceInstanceUpdate{sleepApplication}`) is not used: Railway decides when a service
//!   sleeps (after 10 minutes without outbound packets, which Postgres' own housekeeping and
//!   any pooled connection prevent), so it cannot suspend on the platform's schedule, and a
//!   slept service may answer its first request with an error while it wakes.
//! - **Resume** redeploys the stopped deployment with its previous image tag
//!   (`deploymentRedeploy`), polls until the deployment is `SUCCESS` and Postgres accepts a
//!   login. Idempotent across a crash of the wake service: every step looks at the newest
//!   deployment first, so a deployment already on its way is waited for, never doubled, and
//!   at most one redeploy is sent per call.
//! - **Resize** sets the service's limits (`serviceInstanceLimitsUpdate`): 1 CU = 1 vCPU and
//!   4 GB, as for `local`.
//! - **Load** reads `metrics` (CPU and memory) for the autoscaler.
//! - **Delete** forgets the binding: the platform created nothing on Railway, so it removes
//!   nothing there (the service, its data and its deployment are the user's).
//!
//! Roles and databases are made over SQL as the service's own superuser (`PGUSER`/`PGPASSWORD`
//! from the service's variables, kept in memory only). The addresses given to gateways are the
//! service's private URLs (`DATABASE_URL`: the gateway runs in the same Railway project) or,
//! with `--railway-network public`, its TCP proxy (`DATABASE_PUBLIC_URL`).

pub mod client;
pub mod ops;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::time::Instant;
use wake_api::admin::{Addresses, ComputeSize, RailwayService};

use self::client::{Client, RailwayError};
use self::ops::{Deployment, Phase, ServiceRef};
use super::{
    ComputeDriver, ComputeError, ComputeLoad, ComputeSpec, Health, PoolerRole, PoolerStats,
    StopMode, Target,
};
use crate::autoscale::sizing::BYTES_PER_QUARTER;

/// The driver's name in the store and the API.
pub const NAME: &str = "railway";
/// Railway's public API.
pub const DEFAULT_API_URL: &str = "https://backboard.railway.com/graphql/v2";
/// How long a login to the service's Postgres may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How far back a load sample looks for Railway's newest metrics.
const METRICS_WINDOW: time::Duration = time::Duration::minutes(5);

/// Which of a service's addresses the platform uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// `DATABASE_URL`: Railway's private network (the gateway and the wake service run in the
    /// same Railway project).
    Private,
    /// `DATABASE_PUBLIC_URL`: the service's TCP proxy on the internet.
    Public,
}

impl Network {
    fn variable(self) -> &'static str {
        match self {
            Network::Private => "DATABASE_URL",
            Network::Public => "DATABASE_PUBLIC_URL",
        }
    }
}

/// The `railway` driver's settings (`wake-service serve --railway-*`).
#[derive(Clone)]
pub struct RailwayConfig {
    pub api_url: reqwest::Url,
    /// An account or workspace token (`RAILWAY_API_TOKEN`).
    pub token: String,
    pub budget: client::RateBudget,
    /// The longest one HTTP request to Railway may take.
    pub request_timeout: Duration,
    pub network: Network,
    /// The longest a resume may take, from the redeploy to a Postgres login.
    pub resume_timeout: Duration,
    /// The longest a stop may take to show.
    pub stop_timeout: Duration,
    /// How often a deployment's status is looked at while waiting.
    pub poll_interval: Duration,
    /// The cap on gateways' own pools of direct connections (Railway's Postgres keeps its
    /// image's `max_connections`, 100 by default, whatever the size).
    pub pool_max_conns: u32,
}

impl std::fmt::Debug for RailwayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RailwayConfig")
            .field("api_url", &self.api_url.as_str())
            .field("token", &"<redacted>")
            .field("budget", &self.budget)
            .field("network", &self.network)
            .field("resume_timeout", &self.resume_timeout)
            .finish_non_exhaustive()
    }
}

/// What an endpoint bound to Railway stores: the services, and their addresses as resolved
/// from the services' variables when the endpoint was created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    #[serde(flatten)]
    pub service: RailwayService,
    /// Postgres, `host:port`.
    pub direct: String,
    /// PgBouncer (Postgres again when the binding has no PgBouncer service).
    pub pooler: String,
}

impl Binding {
    fn postgres(&self) -> ServiceRef<'_> {
        ServiceRef {
            project: &self.service.project_id,
            environment: &self.service.environment_id,
            service: &self.service.service_id,
        }
    }
}

/// What the driver remembers of a compute (in memory: rebuilt after a restart).
#[derive(Default)]
struct Known {
    /// The superuser login, from the service's variables.
    admin: Option<tokio_postgres::Config>,
    size: Option<ComputeSize>,
    /// A CPU-seconds counter made from Railway's CPU samples (the autoscaler takes rates).
    cpu: Option<(Instant, f64)>,
}

pub struct RailwayDriver {
    client: Client,
    config: RailwayConfig,
    known: Mutex<HashMap<String, Known>>,
}

fn remote(e: RailwayError) -> ComputeError {
    ComputeError::Process(e.to_string())
}

fn binding(spec: &ComputeSpec) -> Result<&Binding, ComputeError> {
    match &spec.target {
        Target::Railway(binding) => Ok(binding),
        Target::Local => Err(ComputeError::Process(format!(
            "endpoint {} is not bound to a Railway service",
            spec.endpoint
        ))),
    }
}

/// The `host:port` and login of a Postgres URL from a service's variables.
fn parse_url(
    variables: &Map<String, Value>,
    name: &str,
    what: &str,
) -> Result<(String, tokio_postgres::Config), ComputeError> {
    let missing = || {
        ComputeError::Process(format!(
            "the Railway {what} service has no {name} variable (is it a Postgres or PgBouncer service?)"
        ))
    };
    let url = variables
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(missing)?;
    // The URL holds the password: its parse error is not repeated.
    let config: tokio_postgres::Config = url.parse().map_err(|_| {
        ComputeError::Process(format!(
            "the Railway {what} service's {name} is not a Postgres URL"
        ))
    })?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => return Err(missing()),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Ok((format!("{host}:{port}"), config))
}

impl RailwayDriver {
    pub fn new(config: RailwayConfig) -> Result<RailwayDriver, ComputeError> {
        let settings = client::ClientSettings {
            budget: config.budget,
            request_timeout: config.request_timeout,
        };
        let client = Client::new(config.api_url.clone(), config.token.clone(), settings)
            .map_err(ComputeError::Process)?;
        Ok(RailwayDriver {
            client,
            config,
            known: Mutex::new(HashMap::new()),
        })
    }

    /// How long a resume may take (`--railway-resume-timeout-seconds`).
    pub fn resume_budget(&self) -> Duration {
        self.config.resume_timeout
    }

    /// The cap on gateways' own pools (`--railway-pool-max-conns`).
    pub fn pool_max_conns(&self) -> u32 {
        self.config.pool_max_conns
    }

    fn known<R>(&self, endpoint: &str, f: impl FnOnce(&mut Known) -> R) -> R {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        f(known.entry(endpoint.to_owned()).or_default())
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.client.request_timeout() * 4
    }

    /// Checks that the services exist and reads their addresses (and the superuser login)
    /// from their variables: what an endpoint stores when it binds to them.
    pub async fn resolve(
        &self,
        endpoint: &str,
        service: &RailwayService,
    ) -> Result<Binding, ComputeError> {
        let name = self.config.network.variable();
        let at = ServiceRef {
            project: &service.project_id,
            environment: &service.environment_id,
            service: &service.service_id,
        };
        let variables = ops::variables(&self.client, at, self.deadline())
            .await
            .map_err(remote)?;
        let (direct, admin) = parse_url(&variables, name, "Postgres")?;
        let pooler = match &service.pooler_service_id {
            Some(pooler) => {
                let at = ServiceRef {
                    service: pooler,
                    ..at
                };
                let variables = ops::variables(&self.client, at, self.deadline())
                    .await
                    .map_err(remote)?;
                parse_url(&variables, name, "PgBouncer")?.0
            }
            None => direct.clone(),
        };
        self.known(endpoint, |k| k.admin = Some(admin));
        Ok(Binding {
            service: service.clone(),
            direct,
            pooler,
        })
    }

    /// The superuser login, read from the service's variables when not known yet.
    async fn admin_config(
        &self,
        spec: &ComputeSpec,
    ) -> Result<tokio_postgres::Config, ComputeError> {
        if let Some(config) = self.known(&spec.endpoint, |k| k.admin.clone()) {
            return Ok(config);
        }
        let binding = binding(spec)?;
        let variables = ops::variables(&self.client, binding.postgres(), self.deadline())
            .await
            .map_err(remote)?;
        let (_, config) = parse_url(&variables, self.config.network.variable(), "Postgres")?;
        self.known(&spec.endpoint, |k| k.admin = Some(config.clone()));
        Ok(config)
    }

    /// A superuser session in `database`. A login refused for its password reads the
    /// service's variables again once (the user may have rotated `PGPASSWORD` in Railway).
    async fn connect(
        &self,
        spec: &ComputeSpec,
        database: &str,
    ) -> Result<tokio_postgres::Client, ComputeError> {
        match self.connect_once(spec, database).await {
            Err(ComputeError::Postgres(e))
                if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD) =>
            {
                tracing::info!(endpoint = %spec.endpoint, "the Railway login was refused; reading the service's variables again");
                self.known(&spec.endpoint, |k| k.admin = None);
                self.connect_once(spec, database).await
            }
            other => other,
        }
    }

    async fn connect_once(
        &self,
        spec: &ComputeSpec,
        database: &str,
    ) -> Result<tokio_postgres::Client, ComputeError> {
        let mut config = self.admin_config(spec).await?;
        config
            .dbname(database)
            .options("-c search_path=pg_catalog")
            .application_name("wake-service")
            .connect_timeout(CONNECT_TIMEOUT);
        let connecting = config.connect(tokio_postgres::NoTls);
        let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                ComputeError::Process(format!(
                    "the Railway Postgres of {} did not answer within {CONNECT_TIMEOUT:?}",
                    spec.endpoint
                ))
            })??;
        let endpoint = spec.endpoint.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%endpoint, error = %e, "railway admin connection ended");
            }
        });
        Ok(client)
    }

    /// Whether Postgres accepts a login and a query now.
    async fn answers(&self, spec: &ComputeSpec) -> bool {
        match self.connect(spec, "postgres").await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }

    async fn latest(&self, spec: &ComputeSpec) -> Result<Option<Deployment>, ComputeError> {
        let binding = binding(spec)?;
        ops::latest_deployment(&self.client, binding.postgres(), self.deadline())
            .await
            .map_err(remote)
    }

    /// Waits, polling, until the newest deployment runs and Postgres answers; sends at most
    /// one redeploy (see the module documentation).
    async fn run(&self, spec: &ComputeSpec) -> Result<(), ComputeError> {
        let deadline = Instant::now() + self.config.resume_timeout;
        let mut redeployed: Option<String> = None;
        loop {
            let latest = self.latest(spec).await?;
            let phase = latest.as_ref().map(Deployment::phase);
            match (phase, &latest) {
                (Some(Phase::Running | Phase::Sleeping), _) if self.answers(spec).await => {
                    return Ok(())
                }
                (Some(Phase::Failed), Some(d)) if redeployed.as_deref() == Some(&d.id) => {
                    return Err(ComputeError::Process(format!(
                        "railway deployment {} of {} ended {}",
                        d.id, spec.endpoint, d.status
                    )))
                }
                (Some(Phase::Stopped | Phase::Failed), Some(d)) if redeployed.is_none() => {
                    tracing::info!(endpoint = %spec.endpoint, deployment = %d.id, status = %d.status, "redeploying");
                    let new = ops::redeploy(&self.client, &d.id, deadline)
                        .await
                        .map_err(remote)?;
                    redeployed = Some(new.id);
                }
                (None, _) => {
                    return Err(ComputeError::Process(format!(
                        "the Railway service of {} has no deployment to resume (deploy it once in Railway)",
                        spec.endpoint
                    )))
                }
                _ => {}
            }
            if Instant::now() + self.config.poll_interval > deadline {
                let status = latest.map_or_else(|| "none".to_owned(), |d| d.status);
                return Err(ComputeError::Process(format!(
                    "the Railway service of {} did not run within {:?} (deployment status {status})",
                    spec.endpoint, self.config.resume_timeout
                )));
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    fn size_for(&self, spec: &ComputeSpec) -> ComputeSize {
        let size = spec.cu.size();
        ComputeSize {
            limits: "railway service limits".to_owned(),
            cpu_max: format!("{} vCPU", spec.cu.as_f64()),
            memory_limit_bytes: u64::from(spec.cu.quarters()) * BYTES_PER_QUARTER,
            settings: Vec::new(),
            pooler_pool_size: 0,
            gateway_pool_max_conns: size.gateway_pool_max_conns.min(self.config.pool_max_conns),
        }
    }

    async fn apply_limits(&self, spec: &ComputeSpec) -> Result<ComputeSize, ComputeError> {
        let binding = binding(spec)?;
        let vcpus = spec.cu.as_f64();
        let memory_gb = vcpus * 4.0;
        ops::set_limits(
            &self.client,
            binding.postgres(),
            vcpus,
            memory_gb,
            self.deadline(),
        )
        .await
        .map_err(remote)?;
        let size = self.size_for(spec);
        self.known(&spec.endpoint, |k| k.size = Some(size.clone()));
        Ok(size)
    }
}

#[async_trait]
impl ComputeDriver for RailwayDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn create(&self, spec: &ComputeSpec) -> Result<(), ComputeError> {
        // The binding was resolved before the endpoint was stored; this checks the service
        // has a deployment to suspend and resume.
        match self.latest(spec).await? {
            Some(_) => Ok(()),
            None => Err(ComputeError::Process(format!(
                "the Railway service of {} has no deployment (deploy it once in Railway first)",
                spec.endpoint
            ))),
        }
    }

    async fn start(&self, spec: &ComputeSpec) -> Result<Addresses, ComputeError> {
        self.run(spec).await?;
        if self
            .size(spec)
            .is_none_or(|size| size != self.size_for(spec))
        {
            self.apply_limits(spec).await?;
        }
        let binding = binding(spec)?;
        Ok(Addresses {
            direct: binding.direct.clone(),
            pooler: binding.pooler.clone(),
        })
    }

    async fn stop_postgres(&self, spec: &ComputeSpec, _mode: StopMode) -> Result<(), ComputeError> {
        let deadline = Instant::now() + self.config.stop_timeout;
        let mut sent = false;
        loop {
            let latest = self.latest(spec).await?;
            let Some(deployment) = latest else {
                return Ok(());
            };
            match deployment.phase() {
                // Stopped as far as Railway is concerned: done once Postgres is gone too.
                Phase::Stopped | Phase::Failed if !self.answers(spec).await => return Ok(()),
                Phase::Stopped | Phase::Failed => {}
                _ if !sent => {
                    tracing::info!(endpoint = %spec.endpoint, deployment = %deployment.id, "stopping");
                    ops::stop(&self.client, &deployment.id, deadline)
                        .await
                        .map_err(remote)?;
                    sent = true;
                }
                _ => {}
            }
            if Instant::now() + self.config.poll_interval > deadline {
                return Err(ComputeError::Process(format!(
                    "the Railway deployment {} of {} did not stop within {:?} (status {})",
                    deployment.id, spec.endpoint, self.config.stop_timeout, deployment.status
                )));
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    async fn stop(&self, spec: &ComputeSpec) -> Result<(), ComputeError> {
        // A Railway service runs on without the wake service (see `stops_with_service`).
        tracing::debug!(endpoint = %spec.endpoint, "railway compute left running");
        Ok(())
    }

    fn stops_with_service(&self, _spec: &ComputeSpec) -> bool {
        false
    }

    /// No PgBouncer console is reachable on Railway: the check that nothing is in the middle of
    /// a transaction is made on Postgres itself (`pg_stat_activity`, other client backends
    /// that are not idle).
    async fn pause_pooler(
        &self,
        spec: &ComputeSpec,
        timeout: Duration,
    ) -> Result<bool, ComputeError> {
        let Ok(client) = self.connect(spec, "postgres").await else {
            return Ok(true);
        };
        let deadline = Instant::now() + timeout;
        loop {
            let busy: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                       AND state IS DISTINCT FROM 'idle'",
                    &[],
                )
                .await?
                .try_get(0)?;
            if busy == 0 {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn resume_pooler(&self, _spec: &ComputeSpec) -> Result<(), ComputeError> {
        Ok(())
    }

    async fn pooler_stats(&self, _spec: &ComputeSpec) -> Result<Option<PoolerStats>, ComputeError> {
        Ok(None)
    }

    async fn resize(&self, spec: &ComputeSpec) -> Result<ComputeSize, ComputeError> {
        self.apply_limits(spec).await
    }

    fn size(&self, spec: &ComputeSpec) -> Option<ComputeSize> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.get(&spec.endpoint).and_then(|k| k.size.clone())
    }

    async fn load(&self, spec: &ComputeSpec) -> Result<ComputeLoad, ComputeError> {
        let binding = binding(spec)?;
        let since = time::OffsetDateTime::now_utc() - METRICS_WINDOW;
        let usage = ops::usage(&self.client, binding.postgres(), since, self.deadline())
            .await
            .map_err(remote)?;
        let now = Instant::now();
        // Railway gives a rate; the autoscaler differentiates a counter: integrate.
        let cpu_seconds = usage.cpu.map(|cores| {
            self.known(&spec.endpoint, |k| {
                let total = match k.cpu {
                    Some((then, total)) => total + cores * now.duration_since(then).as_secs_f64(),
                    None => 0.0,
                };
                k.cpu = Some((now, total));
                total
            })
        });
        Ok(ComputeLoad {
            cpu_seconds,
            memory_bytes: usage.memory_gb.map(|gb| (gb * 1e9) as u64),
            pooler: None,
        })
    }

    async fn destroy(&self, spec: &ComputeSpec) -> Result<(), ComputeError> {
        tracing::info!(endpoint = %spec.endpoint, "unbinding from Railway; the service is left as it is");
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.remove(&spec.endpoint);
        Ok(())
    }

    async fn health(&self, spec: &ComputeSpec) -> Result<Health, ComputeError> {
        let latest = self.latest(spec).await?;
        Ok(match latest.map(|d| d.phase()) {
            Some(Phase::Running) if self.answers(spec).await => Health::Running,
            Some(Phase::Running | Phase::Starting | Phase::Sleeping) => Health::Degraded,
            _ => Health::Stopped,
        })
    }

    async fn admin_database(
        &self,
        spec: &ComputeSpec,
        database: &str,
    ) -> Result<tokio_postgres::Client, ComputeError> {
        self.connect(spec, database).await
    }

    /// The driver does not write a Railway PgBouncer's configuration: one that looks roles up
    /// in Postgres (`auth_query`, as the double's does) sees the roles made over SQL; one
    /// with a fixed user list needs them added there.
    async fn set_pooler_roles(
        &self,
        _spec: &ComputeSpec,
        _roles: &[PoolerRole],
    ) -> Result<(), ComputeError> {
        Ok(())
    }

    async fn quarantine(&self, endpoint: &str) -> Result<String, ComputeError> {
        Err(ComputeError::Process(format!(
            "{endpoint}: a Railway service is the user's and is never quarantined"
        )))
    }

    async fn list(&self) -> Result<Vec<String>, ComputeError> {
        Ok(Vec::new())
    }
}
