//! The compute lifecycle: the state machine every endpoint follows, and the only code that
//! calls a compute driver.
//!
//! ```text
//!   create ──▶ resuming ──▶ active ──▶ suspending ──▶ suspended
//!                 ▲  │         ▲                          │
//!                 │  ▼         └──────── resuming ◀────────┘  (wake)
//!                 failed ───────────────▶ (wake retries the start)
//! ```
//!
//! Each step is written to the store (state, operation, event) *before* the driver acts, and
//! every driver call is idempotent, so after a crash [`Computes::reconcile`] can look at what
//! the store says was in progress and finish it (create, wake, suspend, delete) without
//! duplicating processes. One operation runs per endpoint at a time (a per-endpoint lock),
//! which also makes concurrent wakes single-flight.
//!
//! The policy the HTTP API and the scheduler apply lives here too: a wake runs in a task of
//! its own and its caller waits at most `wake_timeout` ([`Computes::wake_detached`]); a
//! gateway's activity report moves `last_active` and renews its lease on the endpoints it
//! holds sessions on ([`Computes::record_activity`]).

use std::collections::HashMap;
use std::net::TcpListener;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;
use wake_api::admin::{
    Addresses, ComputeSize, CreateEndpoint, CreateJwks, EndpointState, PatchEndpoint,
};
use wake_api::names;
use wake_api::proxy::{
    ActivityReply, ActivityReport, ClaimsKey, ColdStartInfo, Jwks, JwksSettings, JwtLogin,
    PoolLimit, MAX_REPORTED_ENDPOINTS, REPORT_INTERVAL_MS,
};
use wake_api::split_pooler;

mod branches;
mod resize;

pub use self::branches::{connection_uri, BranchSettings, PublicAddress, DEFAULT_BRANCH_ID};
pub use self::resize::{stored_cu, stored_range, ResizeCause};

use crate::autoscale::sizing::Cu;
use crate::compute::drivers::Drivers;
use crate::compute::{
    local, railway, ComputeDriver, ComputeError, ComputeSpec, Health, PoolerRole, StopMode, Target,
};
use crate::jwt;
use crate::metrics::{self, Metrics};
use crate::password_vault::PasswordVault;
use crate::roles;
use crate::store::{
    EndpointChanges, EndpointLock, EndpointRow, GatewayActivity, NewEndpoint, NewJwksRule,
    Operation, RoleRow, Store, StoreError, Transition,
};

/// Largest suspend timeout (Neon's: one week). -1 means never; 0 means the default.
const MAX_SUSPEND_TIMEOUT_SECONDS: i64 = 604_800;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("endpoint '{0}' does not exist")]
    NotFound(String),
    #[error("role '{role}' does not exist on endpoint '{endpoint}'")]
    RoleNotFound { endpoint: String, role: String },
    #[error("JWKS rule '{rule}' does not exist on endpoint '{endpoint}'")]
    RuleNotFound { endpoint: String, rule: String },
    #[error("branch '{branch}' does not exist on endpoint '{endpoint}'")]
    BranchNotFound { endpoint: String, branch: String },
    #[error("database '{database}' does not exist on endpoint '{endpoint}'")]
    DatabaseNotFound { endpoint: String, database: String },
    #[error("{0}")]
    Conflict(String),
    /// The role's password cannot be revealed (kept by no earlier version, or sealed under
    /// another key): resetting it makes a new one that can.
    #[error("the password of role '{role}' on endpoint '{endpoint}' cannot be revealed: {reason}; reset it to get one that can")]
    PasswordUnavailable {
        endpoint: String,
        role: String,
        reason: String,
    },
    /// The request is well-formed JSON but its values are not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// A JWKS rule that breaks the rules for rules (400, with what to fix).
    #[error("{0}")]
    BadRule(String),
    /// Another operation on the endpoint did not finish in time.
    #[error("endpoint '{0}' is busy with another operation; try again")]
    Busy(String),
    #[error("compute of endpoint '{endpoint}' failed: {source}")]
    Compute {
        endpoint: String,
        #[source]
        source: ComputeError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Settings for [`Computes`].
#[derive(Clone, Debug)]
pub struct LifecycleConfig {
    /// Host the computes listen on, as clients reach it.
    pub host: String,
    pub ports: RangeInclusive<u16>,
    pub default_suspend_timeout_seconds: i64,
    /// How long an operation may wait for the previous one on the same endpoint.
    pub operation_timeout: Duration,
    /// How long [`Computes::wake_detached`] lets its caller wait.
    pub wake_timeout: Duration,
    /// Start even when the store lists no endpoint but the driver holds computes (a new or
    /// wrong store): they are quarantined. Without it such a start is refused.
    pub quarantine_unknown: bool,
    /// The largest `min_cu`/`max_cu`/resize the API accepts.
    pub ceiling: Cu,
    pub branches: BranchSettings,
    /// Seals the role passwords Neon's API reveals.
    pub passwords: Arc<PasswordVault>,
}

/// An open session holds its endpoint for this many of its gateway's report intervals, so
/// one lost report never lets it suspend.
const LEASE_INTERVALS: u32 = 3;
/// The longest gateway id accepted in an activity report.
const MAX_GATEWAY_ID: usize = 128;

/// How long a password change or a drop waits for every live gateway to apply it before the
/// API answers anyway (gateways report every second by default, at most every minute).
const ROLE_CHANGE_WAIT: Duration = Duration::from_secs(10);
/// How often that wait looks at the store.
const ROLE_CHANGE_POLL: Duration = Duration::from_millis(20);

/// How late a gateway's report may reach the store after the interval it covers.
const REPORT_SLACK: Duration = Duration::from_secs(1);
/// The report interval assumed when no live gateway has said its own (the gateway's default).
const ASSUMED_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// The longest a storage sample may take (metering; it also runs inside a suspend's last look,
/// with PgBouncer paused).
const STORAGE_SAMPLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a gentle suspend waits for PgBouncer's transactions to finish.
const POOLER_PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a forced suspend lets PgBouncer's transactions finish before Postgres goes.
const FORCED_PAUSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a smart shutdown waits for a session that connected during the suspend's last
/// look before cutting it.
const SMART_SHUTDOWN_PATIENCE: Duration = Duration::from_secs(30);

/// What kind of suspend, and so what it may interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuspendRequest {
    /// The scheduler found the endpoint idle for this long: a session active more recently
    /// counts as busy; idle sessions older than that are closed.
    Idle(Duration),
    /// `POST /suspend`: refused while any client is busy or holds a gateway session; idle
    /// connections are closed.
    Api,
    /// `POST /suspend?force=true`: sessions are cut.
    Forced,
    /// The wake service is exiting: everything stops, PgBouncer too.
    Shutdown,
}

impl SuspendRequest {
    fn reason(self) -> &'static str {
        match self {
            SuspendRequest::Idle(_) => metrics::SUSPEND_IDLE,
            SuspendRequest::Api => metrics::SUSPEND_API,
            SuspendRequest::Forced => metrics::SUSPEND_FORCED,
            SuspendRequest::Shutdown => metrics::SUSPEND_SHUTDOWN,
        }
    }
}

/// Who asked for a wake (the `trigger` label of `wake_resumes_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeTrigger {
    /// The gateway's `wake_compute`.
    Proxy,
    /// `POST /v1/endpoints/{id}/wake`, or an API call that needs the compute.
    Api,
    /// A client waiting in a suspended endpoint's PgBouncer.
    Pooler,
    /// Startup finishing a resume a crash cut short.
    Reconcile,
}

impl WakeTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            WakeTrigger::Proxy => "proxy",
            WakeTrigger::Api => "api",
            WakeTrigger::Pooler => "pooler",
            WakeTrigger::Reconcile => "reconcile",
        }
    }
}

/// Whether a gateway's lease holds the endpoint awake at `now`.
pub fn held_at(row: &EndpointRow, now: time::OffsetDateTime) -> bool {
    row.held_until.is_some_and(|until| until > now)
}

fn held(row: &EndpointRow) -> bool {
    held_at(row, time::OffsetDateTime::now_utc())
}

/// An endpoint's operation lock, in this process and in the store (dropped in that order:
/// the store's is released first).
pub struct EndpointGuard {
    _store: EndpointLock,
    _local: OwnedMutexGuard<()>,
}

/// What [`Computes::wake_for_gateway`] came to.
pub enum Waited {
    Done(Box<Result<(EndpointRow, ColdStartInfo), LifecycleError>>),
    /// Still waking (it goes on in its task); `budget`: how long a caller should keep
    /// retrying, for a driver that resumes in seconds.
    Pending {
        budget: Option<Duration>,
    },
}

/// The longest a gateway's `wake_compute` is held for a driver that resumes in seconds:
/// below gateways' request timeout (5 s by default), so the answer carries the budget.
pub const SLOW_WAKE_HOLD: Duration = Duration::from_secs(3);

pub struct Computes {
    store: Store,
    driver: Arc<Drivers>,
    config: LifecycleConfig,
    metrics: Arc<Metrics>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When an API operation last found each endpoint's compute running (see
    /// [`RUNNING_TRUST`]); a state change here forgets it.
    running_seen: Mutex<HashMap<String, Instant>>,
}

/// How long a compute an API operation found running is trusted by the next ones without
/// asking the driver again: the local driver's health check reads `/proc/net/tcp`, whose cost
/// grows with every socket on the machine (about 20 ms on a busy one), and branches for a test
/// suite come many a second. A compute that died within it fails the operation with a compute
/// error (the operation connects to it), and the next one asks the driver. The gateway's wakes
/// always ask.
const RUNNING_TRUST: Duration = Duration::from_secs(1);

impl Computes {
    pub fn new(
        store: Store,
        driver: Arc<Drivers>,
        config: LifecycleConfig,
        metrics: Arc<Metrics>,
    ) -> Computes {
        Computes {
            store,
            driver,
            config,
            metrics,
            locks: Mutex::new(HashMap::new()),
            running_seen: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn driver(&self) -> &dyn ComputeDriver {
        self.driver.as_ref()
    }

    pub fn spec(row: &EndpointRow) -> ComputeSpec {
        ComputeSpec {
            endpoint: row.id.clone(),
            port: row.port,
            pooler_port: row.pooler_port,
            cu: stored_cu(row.current_cu),
            target: match &row.railway {
                Some(binding) => Target::Railway(binding.clone()),
                None => Target::Local,
            },
        }
    }

    /// How an active endpoint's size is in effect (what its driver applied).
    pub fn size_of(&self, row: &EndpointRow) -> Option<ComputeSize> {
        (row.state == EndpointState::Active)
            .then(|| self.driver.size(&Self::spec(row)))
            .flatten()
    }

    /// How clients reach the gateway (for connection strings).
    pub fn public_address(&self) -> &PublicAddress {
        &self.config.branches.public
    }

    pub fn addresses(&self, row: &EndpointRow) -> Addresses {
        if let Some(binding) = &row.railway {
            return Addresses {
                direct: binding.direct.clone(),
                pooler: binding.pooler.clone(),
            };
        }
        let host = &self.config.host;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        Addresses {
            direct: format!("{host}:{}", row.port),
            pooler: format!("{host}:{}", row.pooler_port),
        }
    }

    /// Waits (bounded) for the endpoint's operation lock.
    /// Waits (bounded) for the endpoint's operation lock: this process's, then the store's,
    /// which every replica of the wake service takes too.
    async fn lock(&self, id: &str) -> Result<EndpointGuard, LifecycleError> {
        let deadline = tokio::time::Instant::now() + self.config.operation_timeout;
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(id.to_owned()).or_default().clone()
        };
        let local = tokio::time::timeout_at(deadline, lock.lock_owned())
            .await
            .map_err(|_| LifecycleError::Busy(id.to_owned()))?;
        match self
            .store
            .lock_endpoint_operation(id, Some(deadline))
            .await?
        {
            Some(store) => Ok(EndpointGuard {
                _store: store,
                _local: local,
            }),
            None => Err(LifecycleError::Busy(id.to_owned())),
        }
    }

    /// The endpoint's lock if nothing (on any replica) holds it now.
    async fn try_lock(&self, id: &str) -> Option<EndpointGuard> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(id.to_owned()).or_default().clone()
        };
        let local = lock.try_lock_owned().ok()?;
        match self.store.lock_endpoint_operation(id, None).await {
            Ok(Some(store)) => Some(EndpointGuard {
                _store: store,
                _local: local,
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(endpoint = id, error = %e, "could not take the endpoint's lock in the store");
                None
            }
        }
    }

    /// Samples the logical size of an active endpoint's databases (metering). Never wakes a
    /// compute and never waits for one: `Ok(None)` when the endpoint is not active or another
    /// operation holds it.
    pub async fn sample_storage(&self, id: &str) -> Result<Option<i64>, LifecycleError> {
        let Some(_guard) = self.try_lock(id).await else {
            return Ok(None);
        };
        let Some(row) = self.store.endpoint(id).await? else {
            return Ok(None);
        };
        if row.state != EndpointState::Active || row.operation.is_some() {
            return Ok(None);
        }
        let client = self
            .driver
            .admin(&Self::spec(&row))
            .await
            .map_err(compute_error(id))?;
        self.record_storage(&client, id).await.map(Some)
    }

    /// Measures and stores the size of the endpoint's databases through `client` (a superuser
    /// session on its compute).
    async fn record_storage(
        &self,
        client: &tokio_postgres::Client,
        id: &str,
    ) -> Result<i64, LifecycleError> {
        // Bounded: a tenant's compute (a huge number of files, a stuck backend) must not hold
        // a suspend or the sampling of every other endpoint.
        let size = client.query_one(
            "SELECT COALESCE(sum(pg_database_size(oid)), 0)::int8 FROM pg_database
             WHERE NOT datistemplate",
            &[],
        );
        let bytes: i64 = tokio::time::timeout(STORAGE_SAMPLE_TIMEOUT, size)
            .await
            .map_err(|_| {
                compute_error(id)(ComputeError::Process(format!(
                    "the storage sample took longer than {STORAGE_SAMPLE_TIMEOUT:?}"
                )))
            })?
            .and_then(|row| row.try_get(0))
            .map_err(|e| compute_error(id)(e.into()))?;
        self.store.record_storage(id, bytes).await?;
        self.metrics
            .usage
            .storage_samples
            .with_label_values(&["ok"])
            .inc();
        Ok(bytes)
    }

    async fn row(&self, id: &str) -> Result<EndpointRow, LifecycleError> {
        self.store
            .endpoint(id)
            .await?
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))
    }

    async fn record(
        &self,
        id: &str,
        to: EndpointState,
        operation: Option<Operation>,
        event: &str,
        detail: Option<&str>,
    ) -> Result<EndpointRow, LifecycleError> {
        let change = Transition {
            to,
            operation,
            event,
            detail,
            compute_lost: false,
        };
        self.transition(id, &change).await
    }

    /// [`Self::record`] with every field of the change given (reconcile: whether the compute
    /// was found dead after a crash, which ends its metered run at the last checkpoint).
    async fn transition(
        &self,
        id: &str,
        change: &Transition<'_>,
    ) -> Result<EndpointRow, LifecycleError> {
        self.running_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.metrics.record_transition(change.to);
        let row = self
            .store
            .transition(id, change)
            .await?
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))?;
        // The gauges need every row: refresh them off the resume path.
        let (store, metrics) = (self.store.clone(), self.metrics.clone());
        tokio::spawn(async move {
            if let Ok(rows) = store.endpoints().await {
                metrics.set_endpoint_states(&rows);
            }
        });
        Ok(row)
    }

    /// Records a failed driver step: the endpoint goes `failed` with the reason.
    async fn fail(&self, id: &str, source: ComputeError) -> LifecycleError {
        let detail = source.to_string();
        tracing::error!(endpoint = id, error = %detail, "compute operation failed");
        if let Err(e) = self
            .record(id, EndpointState::Failed, None, "failed", Some(&detail))
            .await
        {
            tracing::error!(endpoint = id, error = %e, "could not record the failure");
        }
        LifecycleError::Compute {
            endpoint: id.to_owned(),
            source,
        }
    }

    /// A failed sync: a compute error marks the endpoint `failed` like a failed start; other
    /// errors (the store) are returned as they are.
    async fn fail_sync(&self, id: &str, error: LifecycleError) -> LifecycleError {
        match error {
            LifecycleError::Compute { source, .. } => self.fail(id, source).await,
            other => other,
        }
    }

    /// Creates an endpoint and starts its compute; returns once it is active.
    pub async fn create(&self, request: &CreateEndpoint) -> Result<EndpointRow, LifecycleError> {
        if !names::valid_new_endpoint_id(&request.id) {
            return Err(LifecycleError::Invalid(format!(
                "invalid endpoint id '{}': use 1-63 lower-case letters, digits and '-', starting with a letter, without '--', not ending with '-' or '-pooler'",
                request.id
            )));
        }
        let suspend = self.suspend_timeout(request.suspend_timeout_seconds)?;
        let min_cu = request.min_cu.unwrap_or(Cu::MIN.as_f64());
        let range = self.parse_range(min_cu, request.max_cu.unwrap_or(min_cu))?;
        let (min_cu, max_cu) = (range.min().as_f64(), range.max().as_f64());
        let _guard = self.lock(&request.id).await?;
        let railway = self.railway_binding(request).await?;
        let new = NewEndpoint {
            id: request.id.clone(),
            driver: if railway.is_some() {
                railway::NAME
            } else {
                local::NAME
            }
            .to_owned(),
            railway,
            suspend_timeout_seconds: suspend,
            min_cu,
            max_cu,
        };
        let host = self.config.host.clone();
        let row = match self
            .store
            .insert_endpoint(&new, self.config.ports.clone(), |port| {
                TcpListener::bind((host.as_str(), port)).is_ok()
            })
            .await
        {
            Err(StoreError::Conflict) => {
                return Err(LifecycleError::Conflict(format!(
                    "endpoint '{}' already exists",
                    request.id
                )))
            }
            Err(e) => {
                self.forget_lock(&request.id);
                return Err(e.into());
            }
            Ok(row) => row,
        };
        self.finish_create(row).await
    }

    /// For `driver: "railway"`, the binding to the named services (checked and resolved
    /// through Railway's API, before anything is stored); None for `local`.
    async fn railway_binding(
        &self,
        request: &CreateEndpoint,
    ) -> Result<Option<railway::Binding>, LifecycleError> {
        match (request.driver.as_deref(), &request.railway) {
            (None | Some(local::NAME), None) => Ok(None),
            (Some(railway::NAME), Some(service)) => {
                let owner = self
                    .store
                    .railway_binding_owner(&service.environment_id, &service.service_id)
                    .await?;
                if let Some(owner) = owner {
                    return Err(LifecycleError::Conflict(format!(
                        "Railway service '{}' is already bound to endpoint '{owner}'",
                        service.service_id
                    )));
                }
                let driver = self
                    .driver
                    .railway()
                    .map_err(|e| LifecycleError::Invalid(e.to_string()))?;
                let binding = driver.resolve(&request.id, service).await;
                binding.map(Some).map_err(|e| {
                    LifecycleError::Invalid(format!("cannot bind to the Railway service: {e}"))
                })
            }
            (Some(railway::NAME), None) => Err(LifecycleError::Invalid(
                "driver \"railway\" needs \"railway\": {project_id, environment_id, service_id}"
                    .to_owned(),
            )),
            (None | Some(local::NAME), Some(_)) => Err(LifecycleError::Invalid(
                "\"railway\" is only for driver \"railway\"".to_owned(),
            )),
            (Some(other), _) => Err(LifecycleError::Invalid(format!(
                "unknown driver '{other}': use \"local\" or \"railway\""
            ))),
        }
    }

    /// The driver half of create, also run by reconcile for a create cut short by a crash.
    /// A create that fails is rolled back: the compute's files and the store row go.
    async fn finish_create(&self, row: EndpointRow) -> Result<EndpointRow, LifecycleError> {
        let spec = Self::spec(&row);
        let started = Instant::now();
        let result = async {
            self.driver.create(&spec).await?;
            self.driver.start(&spec).await
        }
        .await;
        match result {
            Ok(_) => {
                self.metrics
                    .start_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.record(&row.id, EndpointState::Active, None, "started", None)
                    .await
            }
            Err(source) => {
                tracing::error!(endpoint = %row.id, error = %source, "create failed; rolling back");
                if let Err(e) = self.driver.destroy(&spec).await {
                    tracing::error!(endpoint = %row.id, error = %e, "rollback could not remove the compute");
                    return Err(self.fail(&row.id, source).await);
                }
                self.store.delete_endpoint(&row.id).await?;
                self.forget_lock(&row.id);
                Err(LifecycleError::Compute {
                    endpoint: row.id,
                    source,
                })
            }
        }
    }

    pub async fn update(
        &self,
        id: &str,
        patch: &PatchEndpoint,
    ) -> Result<EndpointRow, LifecycleError> {
        let row = self.row(id).await?;
        let suspend = patch
            .suspend_timeout_seconds
            .map(|s| self.suspend_timeout(Some(s)))
            .transpose()?;
        let range = self.parse_range(
            patch.min_cu.unwrap_or(row.min_cu),
            patch.max_cu.unwrap_or(row.max_cu),
        )?;
        let changes = EndpointChanges {
            suspend_timeout_seconds: suspend,
            min_cu: Some(range.min().as_f64()),
            max_cu: Some(range.max().as_f64()),
        };
        let row = self
            .store
            .update_settings(id, &changes)
            .await?
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))?;
        let current = stored_cu(row.current_cu);
        if range.clamp(current) == current {
            return Ok(row);
        }
        self.fit_range(id).await
    }

    fn suspend_timeout(&self, value: Option<i64>) -> Result<i64, LifecycleError> {
        match value {
            None | Some(0) => Ok(self.config.default_suspend_timeout_seconds),
            Some(-1) => Ok(-1),
            Some(s) if (1..=MAX_SUSPEND_TIMEOUT_SECONDS).contains(&s) => Ok(s),
            Some(s) => Err(LifecycleError::Invalid(format!(
                "suspend_timeout_seconds {s} is out of range: use -1 (never), 0 (default) or 1..={MAX_SUSPEND_TIMEOUT_SECONDS}"
            ))),
        }
    }

    /// How long [`Self::wake_detached`] lets its caller wait.
    pub fn wake_timeout(&self) -> Duration {
        self.config.wake_timeout
    }

    /// [`Self::wake`] in a task of its own, so that a caller giving up (the timeout, a client
    /// gone) never cuts a start in half. `None` when it took longer than `wake_timeout` (it
    /// goes on in its task).
    pub async fn wake_detached(
        self: &Arc<Self>,
        id: &str,
        trigger: WakeTrigger,
    ) -> Option<Result<(EndpointRow, ColdStartInfo), LifecycleError>> {
        self.wake_within(id, trigger, self.config.wake_timeout)
            .await
    }

    /// [`Self::wake_detached`] for a gateway's `wake_compute`. When the endpoint's driver
    /// resumes in seconds (Railway), the answer comes within [`SLOW_WAKE_HOLD`], before a
    /// gateway's request times out, and a wake still in progress says how long the gateway
    /// should keep retrying: the driver's resume budget.
    pub async fn wake_for_gateway(self: &Arc<Self>, id: &str, trigger: WakeTrigger) -> Waited {
        let budget = match self.store.endpoint(id).await {
            Ok(Some(row)) => self.driver.wake_budget(&Self::spec(&row)),
            _ => None,
        };
        let hold = match budget {
            Some(_) => SLOW_WAKE_HOLD.min(self.config.wake_timeout),
            None => self.config.wake_timeout,
        };
        match self.wake_within(id, trigger, hold).await {
            Some(result) => Waited::Done(Box::new(result)),
            None => Waited::Pending { budget },
        }
    }

    /// The cap on each gateway's own pool of direct connections to the endpoint's compute.
    pub fn pool_max_conns(&self, row: &EndpointRow) -> u32 {
        self.driver.pool_max_conns(&Self::spec(row))
    }

    async fn wake_within(
        self: &Arc<Self>,
        id: &str,
        trigger: WakeTrigger,
        hold: Duration,
    ) -> Option<Result<(EndpointRow, ColdStartInfo), LifecycleError>> {
        let computes = self.clone();
        let owned = id.to_owned();
        let task = tokio::spawn(async move { computes.wake(&owned, trigger).await });
        match tokio::time::timeout(hold, task).await {
            Ok(Ok(result)) => Some(result),
            Ok(Err(e)) => {
                tracing::error!(endpoint = id, error = %e, "wake task failed");
                None
            }
            Err(_) => None,
        }
    }

    /// Makes the endpoint active (starting its compute if needed) and returns it, with
    /// whether it was already running. `trigger` names who asked (a metrics label).
    ///
    /// This is the resume path of every cold query: one store read and a health probe when
    /// the compute runs; otherwise the endpoint lock, two state transitions and the driver's
    /// start, nothing else (no polling here, no fixed sleeps).
    pub async fn wake(
        &self,
        id: &str,
        trigger: WakeTrigger,
    ) -> Result<(EndpointRow, ColdStartInfo), LifecycleError> {
        // Fast path, no lock: active and answering.
        let row = self.row(id).await?;
        if self.is_running(&row).await {
            return Ok((row, ColdStartInfo::Warm));
        }
        let _guard = self.lock(id).await?;
        let row = self.row(id).await?;
        // Someone else may have resumed it while this call waited for the lock.
        if self.is_running(&row).await {
            return Ok((row, ColdStartInfo::Warm));
        }
        let row = self.resume_locked(row, trigger).await?;
        Ok((row, ColdStartInfo::PoolMiss))
    }

    /// The endpoint's lock, with its compute running (started now if it was not): what every
    /// operation that changes something inside Postgres needs.
    async fn lock_running(&self, id: &str) -> Result<(EndpointGuard, EndpointRow), LifecycleError> {
        // Unknown ids never get a lock entry (the map only holds real endpoints).
        self.row(id).await?;
        let guard = self.lock(id).await?;
        let row = self.row(id).await?;
        if self.seen_running(&row) {
            return Ok((guard, row));
        }
        if self.is_running(&row).await {
            self.running_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.to_owned(), Instant::now());
            return Ok((guard, row));
        }
        let row = self.resume_locked(row, WakeTrigger::Api).await?;
        Ok((guard, row))
    }

    /// The cold half of a wake, with the endpoint lock held: `resuming`, the driver's start,
    /// the sync an earlier version left to do, `active`.
    async fn resume_locked(
        &self,
        row: EndpointRow,
        trigger: WakeTrigger,
    ) -> Result<EndpointRow, LifecycleError> {
        let id = row.id.as_str();
        let spec = Self::spec(&row);
        let started = Instant::now();
        self.record(
            id,
            EndpointState::Resuming,
            Some(Operation::Wake),
            "resume_started",
            Some(trigger.as_str()),
        )
        .await?;
        if let Err(source) = self.driver.start(&spec).await {
            return Err(self.fail(id, source).await);
        }
        let elapsed = started.elapsed().as_secs_f64();
        self.metrics.start_seconds.observe(elapsed);
        self.metrics.resume_seconds.observe(elapsed);
        self.metrics
            .resumes
            .with_label_values(&[trigger.as_str()])
            .inc();
        if row.sync_needed {
            // Fail closed: a compute whose roles may still be privileged serves nobody.
            if let Err(e) = self.sync(&row).await {
                return Err(self.fail_sync(id, e).await);
            }
        }
        let row = self
            .record(id, EndpointState::Active, None, "started", None)
            .await?;
        tracing::info!(
            endpoint = id,
            trigger = trigger.as_str(),
            ms = elapsed * 1000.0,
            "compute resumed"
        );
        Ok(row)
    }

    /// Whether the store says active and an API operation found the compute running less than
    /// [`RUNNING_TRUST`] ago.
    fn seen_running(&self, row: &EndpointRow) -> bool {
        row.state == EndpointState::Active
            && row.operation.is_none()
            && self
                .running_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&row.id)
                .is_some_and(|at| at.elapsed() < RUNNING_TRUST)
    }

    /// Whether the store says active and the compute answers (the driver is only asked when
    /// the store says active).
    async fn is_running(&self, row: &EndpointRow) -> bool {
        row.state == EndpointState::Active
            && row.operation.is_none()
            && self.driver.health(&Self::spec(row)).await.ok() == Some(Health::Running)
    }

    /// Suspends the endpoint's compute (see [`SuspendRequest`] for what each kind may
    /// interrupt). A suspend that finds a client busy at the last moment is given up: the
    /// endpoint stays active and the answer is `Conflict`.
    ///
    /// The gentle kinds (`Idle`, `Api`) never cut a session that could be in use:
    ///
    /// 1. the store says `suspending` (a crash from here on is finished by reconcile);
    /// 2. PgBouncer `PAUSE`: its clients, connected or new, wait from now on; a transaction
    ///    that keeps a server connection past the bound cancels the suspend;
    /// 3. in Postgres: any client backend that is not idle (a query running, idle in
    ///    transaction, logging in) or was active more recently than the idle threshold
    ///    cancels the suspend, as does a gateway lease renewed meanwhile. The threshold is
    ///    never shorter than a gateway may take to report a session it just opened (its
    ///    report interval and a second): a WebSocket client between its login and its first
    ///    query is idle in Postgres and not yet in any lease;
    /// 4. idle sessions older than the threshold are closed (the gateway's idle pooled
    ///    connections, a forgotten psql), then Postgres gets a *smart* shutdown: it refuses
    ///    new connections at once (`57P03`, which the gateway answers by waking the endpoint
    ///    again, waiting for this suspend to finish) and lets any session that slipped in
    ///    between steps 3 and 4 finish;
    /// 5. the store says `suspended`. PgBouncer stays up, paused, holding its clients until
    ///    the next start.
    pub async fn suspend(
        &self,
        id: &str,
        request: SuspendRequest,
    ) -> Result<EndpointRow, LifecycleError> {
        // Unknown ids never get a lock entry (the map only holds real endpoints).
        self.row(id).await?;
        let _guard = self.lock(id).await?;
        let row = self.row(id).await?;
        let spec = Self::spec(&row);
        if row.state == EndpointState::Suspended && row.operation.is_none() {
            if request == SuspendRequest::Shutdown {
                // The paused PgBouncer goes too; the next start's reconcile brings it back.
                self.driver
                    .stop(&spec)
                    .await
                    .map_err(|source| LifecycleError::Compute {
                        endpoint: id.to_owned(),
                        source,
                    })?;
            }
            return Ok(row);
        }
        let request = Self::suspend_kind(&row, request)?;
        let gentle = matches!(request, SuspendRequest::Idle(_) | SuspendRequest::Api);
        let reason = request.reason();
        self.record(
            id,
            EndpointState::Suspending,
            Some(Operation::Suspend),
            "suspend_started",
            Some(reason),
        )
        .await?;
        let outcome = match request {
            SuspendRequest::Idle(idle) => self.stop_gently(&spec, idle).await,
            SuspendRequest::Api => self.stop_gently(&spec, Duration::ZERO).await,
            SuspendRequest::Forced => self.stop_forced(&spec).await.map(|()| None),
            SuspendRequest::Shutdown => self.driver.stop(&spec).await.map(|()| None),
        };
        self.finish_suspend(id, reason, gentle, outcome).await
    }

    /// What suspend `request` becomes for the endpoint as it is: an idle suspend only of an
    /// active endpoint; an API suspend of a failed or half-started one is forced (it has no
    /// clients to protect); a gentle one is refused while a gateway's lease holds it.
    fn suspend_kind(
        row: &EndpointRow,
        request: SuspendRequest,
    ) -> Result<SuspendRequest, LifecycleError> {
        let id = &row.id;
        let active = row.state == EndpointState::Active;
        let request = match request {
            SuspendRequest::Idle(_) if !active => {
                return Err(LifecycleError::Conflict(format!(
                    "endpoint '{id}' is {}, not active",
                    row.state.as_str()
                )))
            }
            SuspendRequest::Api if !active => SuspendRequest::Forced,
            other => other,
        };
        let gentle = matches!(request, SuspendRequest::Idle(_) | SuspendRequest::Api);
        if gentle && held(row) {
            return Err(LifecycleError::Conflict(format!(
                "endpoint '{id}' has sessions open through the gateway; use force=true to suspend anyway"
            )));
        }
        Ok(request)
    }

    /// Records how a suspend ended: `suspended`, back to `active` when a client turned out
    /// to be busy (`Some(why)`, a conflict), or `failed`.
    async fn finish_suspend(
        &self,
        id: &str,
        reason: &'static str,
        gentle: bool,
        outcome: Result<Option<String>, ComputeError>,
    ) -> Result<EndpointRow, LifecycleError> {
        match outcome {
            Ok(None) => {
                self.metrics.suspends.with_label_values(&[reason]).inc();
                let row = self
                    .record(id, EndpointState::Suspended, None, "stopped", Some(reason))
                    .await?;
                tracing::info!(endpoint = id, reason, "compute suspended");
                Ok(row)
            }
            Ok(Some(busy)) => {
                self.metrics.suspends_cancelled.inc();
                self.record(
                    id,
                    EndpointState::Active,
                    None,
                    "suspend_cancelled",
                    Some(&busy),
                )
                .await?;
                tracing::info!(endpoint = id, reason, busy = %busy, "suspend cancelled");
                let hint = if gentle {
                    "; use force=true to suspend anyway"
                } else {
                    ""
                };
                Err(LifecycleError::Conflict(format!(
                    "endpoint '{id}' is in use: {busy}{hint}"
                )))
            }
            Err(source) => Err(self.fail(id, source).await),
        }
    }

    /// Steps 2-4 of a gentle suspend. `Ok(Some(why))` when a client turned out to be busy
    /// (PgBouncer is resumed again and Postgres left running).
    async fn stop_gently(
        &self,
        spec: &ComputeSpec,
        idle: Duration,
    ) -> Result<Option<String>, ComputeError> {
        if !self.driver.pause_pooler(spec, POOLER_PAUSE_TIMEOUT).await? {
            return Ok(Some(
                "a transaction through PgBouncer did not finish in time".into(),
            ));
        }
        // A session a gateway opened since its last report holds no lease yet: until a
        // report could have covered it, its login or last query counts as activity.
        let idle = idle.max(self.unreported_window().await);
        let busy = match self.last_look(spec, idle).await {
            Ok(busy) => busy,
            Err(e) => {
                self.driver.resume_pooler(spec).await?;
                return Err(e);
            }
        };
        if busy.is_some() {
            self.driver.resume_pooler(spec).await?;
            return Ok(busy);
        }
        self.driver
            .stop_postgres(
                spec,
                StopMode::Smart {
                    patience: SMART_SHUTDOWN_PATIENCE,
                },
            )
            .await?;
        Ok(None)
    }

    /// How long a session opened through a gateway may go without a lease: the longest
    /// report interval of the live gateways, plus [`REPORT_SLACK`]. When the store cannot
    /// say, the longest interval a gateway may report at.
    async fn unreported_window(&self) -> Duration {
        let interval = match self.store.longest_live_report_interval().await {
            Ok(interval) => interval.unwrap_or(ASSUMED_REPORT_INTERVAL),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the gateways' report intervals");
                Duration::from_millis(*REPORT_INTERVAL_MS.end())
            }
        };
        interval + REPORT_SLACK
    }

    /// Step 3 and the first half of step 4: `Some(why)` when something is busy, else the
    /// idle sessions are closed.
    async fn last_look(
        &self,
        spec: &ComputeSpec,
        idle: Duration,
    ) -> Result<Option<String>, ComputeError> {
        let client = self.driver.admin(spec).await?;
        let idle_seconds = idle.as_secs_f64();
        // The superuser's own sessions (the wake service's, PgBouncer's auth lookups) are not
        // clients; everything else is.
        let busy: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                   AND usename IS DISTINCT FROM current_user
                   AND (state IS DISTINCT FROM 'idle'
                        OR state_change > now() - make_interval(secs => $1))",
                &[&idle_seconds],
            )
            .await?
            .try_get(0)?;
        if busy > 0 {
            return Ok(Some(format!("{busy} session(s) active")));
        }
        if let Ok(Some(row)) = self.store.endpoint(&spec.endpoint).await {
            if held(&row) {
                return Ok(Some("sessions are open through the gateway".into()));
            }
        }
        let closed: i64 = client
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                   AND state = 'idle'
                   AND (usename = current_user
                        OR state_change <= now() - make_interval(secs => $1))",
                &[&idle_seconds],
            )
            .await?
            .try_get(0)?;
        if closed > 0 {
            tracing::debug!(endpoint = %spec.endpoint, closed, "closed idle sessions before suspending");
        }
        // Metering: the size the endpoint keeps while it sleeps (best effort).
        if let Err(e) = self.record_storage(&client, &spec.endpoint).await {
            self.metrics
                .usage
                .storage_samples
                .with_label_values(&["error"])
                .inc();
            tracing::warn!(endpoint = %spec.endpoint, error = %e, "could not sample storage before suspending");
        }
        self.reset_drifted_passwords(&client, &spec.endpoint).await;
        Ok(None)
    }

    /// Best effort, before a compute stops: a role whose password was changed in SQL
    /// (`ALTER ROLE … PASSWORD`, which a role may do to itself) gets the API's verifier back,
    /// so the next start serves the verifier the gateways and PgBouncer check. Failures are
    /// only logged: the suspend goes on.
    async fn reset_drifted_passwords(&self, client: &tokio_postgres::Client, id: &str) {
        let outcome = async {
            // API roles and JWT roles alike (a JWT role may change its own password too).
            let mut roles: Vec<(String, String)> = self
                .store
                .role_rows(id)
                .await?
                .into_iter()
                .filter(|r| r.pending.is_none())
                .map(|r| (r.name, r.secret))
                .collect();
            if let Some(material) = self.store.jwt_material(id).await? {
                roles.extend(material.roles.into_iter().map(|r| (r.name, r.secret)));
            }
            if roles.is_empty() {
                return Ok::<_, LifecycleError>(());
            }
            let names: Vec<&str> = roles.iter().map(|r| r.0.as_str()).collect();
            let rows = client
                .query(
                    "SELECT rolname::text, rolpassword FROM pg_catalog.pg_authid
                     WHERE rolname = ANY($1)",
                    &[&names],
                )
                .await
                .map_err(|e| compute_error(id)(e.into()))?;
            for row in rows {
                let name: String = row.try_get(0).map_err(|e| compute_error(id)(e.into()))?;
                let current: Option<String> =
                    row.try_get(1).map_err(|e| compute_error(id)(e.into()))?;
                let Some((_, secret)) = roles.iter().find(|r| r.0 == name) else {
                    continue;
                };
                if current.as_deref() != Some(secret.as_str()) {
                    client
                        .batch_execute(&roles::set_password(&name, secret))
                        .await
                        .map_err(|e| compute_error(id)(e.into()))?;
                    tracing::info!(endpoint = id, role = %name, "a password set in SQL was reset to the API's");
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            tracing::warn!(endpoint = id, error = %e, "could not check roles' passwords before suspending");
        }
    }

    /// Cuts everything: PgBouncer paused (its clients wait for the next start), Postgres
    /// stopped fast.
    async fn stop_forced(&self, spec: &ComputeSpec) -> Result<(), ComputeError> {
        let paused = self.driver.pause_pooler(spec, FORCED_PAUSE_TIMEOUT).await?;
        self.driver.stop_postgres(spec, StopMode::Fast).await?;
        if !paused {
            // Its server connections died with Postgres, so this pause completes at once.
            self.driver.pause_pooler(spec, POOLER_PAUSE_TIMEOUT).await?;
        }
        Ok(())
    }

    /// Deletes the endpoint, its compute and its data.
    pub async fn delete(&self, id: &str) -> Result<(), LifecycleError> {
        self.row(id).await?;
        let _guard = self.lock(id).await?;
        let row = self.row(id).await?;
        self.record(
            id,
            row.state,
            Some(Operation::Delete),
            "delete_started",
            None,
        )
        .await?;
        self.finish_delete(&row).await?;
        self.forget_lock(id);
        Ok(())
    }

    /// Drops the lock entry of an endpoint that no longer exists. Holders of the lock keep
    /// their `Arc`, so nothing waiting on it is disturbed.
    fn forget_lock(&self, id: &str) {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    async fn finish_delete(&self, row: &EndpointRow) -> Result<(), LifecycleError> {
        let id = row.id.as_str();
        if let Err(source) = self.driver.destroy(&Self::spec(row)).await {
            return Err(self.fail(id, source).await);
        }
        self.store.delete_endpoint(id).await?;
        Ok(())
    }

    /// Creates a login role in the endpoint's Postgres (waking it) and records its SCRAM
    /// secret and its password sealed (`password_vault`; never in the clear), then gives
    /// PgBouncer the new list. Under
    /// the endpoint lock, recorded before Postgres is touched (`pending = 'create'`), so a
    /// crash in between is finished by the next start. A role that already exists in
    /// Postgres without having been created through the API (by an earlier version's tenant
    /// with `CREATEROLE`, or by an operator in SQL) is not taken over: `Conflict`.
    pub async fn create_role(
        &self,
        id: &str,
        name: &str,
        password: &str,
    ) -> Result<time::OffsetDateTime, LifecycleError> {
        if !names::valid_object_name(name) || name == jwt::OWNER {
            return Err(invalid_name("role", name));
        }
        let secret = scram_secret(password)?;
        let sealed = self.seal_password(id, name, password)?;
        let (_guard, row) = self.lock_running(id).await?;
        if self
            .store
            .jwt_role_names(id)
            .await?
            .iter()
            .any(|r| r == name)
        {
            return Err(LifecycleError::Conflict(format!(
                "'{name}' is a JWT role of endpoint '{id}' (named by its JWKS rules); it cannot be an API role"
            )));
        }
        let ours = match self.store.role_row(id, name).await? {
            // A create of ours that failed or was cut short: finish it with this password.
            Some(existing) if existing.pending.as_deref() == Some("create") => true,
            Some(_) => return Err(role_exists(id, name)),
            None => false,
        };
        if ours {
            self.store.delete_role_pending_create(id, name).await?;
        }
        match self
            .store
            .insert_role_pending(id, name, &secret, &sealed)
            .await
        {
            Err(StoreError::Conflict) => return Err(role_exists(id, name)),
            other => other?,
        }
        let spec = Self::spec(&row);
        let compute = compute_error(id);
        let client = self.driver.admin(&spec).await.map_err(compute)?;
        match client.batch_execute(&roles::create(name, &secret)).await {
            Ok(()) => {}
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {
                if ours {
                    client
                        .batch_execute(&roles::ensure(name, &secret))
                        .await
                        .map_err(|e| compute(e.into()))?;
                } else {
                    self.store.delete_role_pending_create(id, name).await?;
                    self.count_role("create", "conflict");
                    return Err(LifecycleError::Conflict(format!(
                        "a role '{name}' exists in the Postgres of endpoint '{id}' but was not created through this API; it is not taken over: choose another name"
                    )));
                }
            }
            // The pending row stays: a retry of this create, or the next start, finishes it.
            Err(e) => return Err(compute(e.into())),
        }
        self.store.finish_role(id, name).await?;
        self.sync_pooler(&spec).await?;
        self.count_role("create", "ok");
        let role = self
            .store
            .role_row(id, name)
            .await?
            .ok_or_else(|| role_not_found(id, name))?;
        tracing::info!(endpoint = id, role = name, "role created");
        Ok(role.created_at)
    }

    /// Sets a new password: Postgres, the store and PgBouncer under the endpoint lock, then
    /// waits (bounded) until every gateway that reports has dropped what it held for the
    /// role, so the old password stops working everywhere before this returns.
    pub async fn update_role(
        &self,
        id: &str,
        name: &str,
        password: &str,
    ) -> Result<time::OffsetDateTime, LifecycleError> {
        let secret = scram_secret(password)?;
        let sealed = self.seal_password(id, name, password)?;
        let change = {
            let (_guard, row) = self.lock_running(id).await?;
            let role = self.settled_role(id, name).await?;
            if !self
                .store
                .mark_role_pending(id, name, Some((&secret, &sealed)))
                .await?
            {
                return Err(role_not_found(id, name));
            }
            let spec = Self::spec(&row);
            let compute = compute_error(id);
            let client = self.driver.admin(&spec).await.map_err(compute)?;
            client
                .batch_execute(&roles::ensure(name, &secret))
                .await
                .map_err(|e| compute(e.into()))?;
            let change = self.store.finish_role(id, name).await?;
            self.sync_pooler(&spec).await?;
            tracing::info!(endpoint = id, role = name, "role password changed");
            change.map(|change| (change, role.created_at))
        };
        self.count_role("password", "ok");
        let (change, created_at) = change.ok_or_else(|| role_not_found(id, name))?;
        // Outside the lock: waking this endpoint must not wait for the gateways.
        self.await_gateways(change).await;
        Ok(created_at)
    }

    /// Drops a role: refused while it owns a database. PgBouncer stops accepting it first,
    /// then its sessions are ended, what it owns in each database goes to that database's
    /// owner (or is dropped, where the owner is the superuser), and the role is dropped; then
    /// the gateways drop what they held for it, as for [`Self::update_role`].
    pub async fn delete_role(&self, id: &str, name: &str) -> Result<(), LifecycleError> {
        let change = {
            let (_guard, row) = self.lock_running(id).await?;
            self.settled_role(id, name).await?;
            let spec = Self::spec(&row);
            let owned: Vec<String> = self
                .store
                .databases(id)
                .await?
                .into_iter()
                .filter(|d| d.owner == name)
                .map(|d| d.name)
                .collect();
            let compute = compute_error(id);
            let client = self.driver.admin(&spec).await.map_err(compute)?;
            let mut owned_in_postgres: Vec<String> = client
                .query(roles::OWNED_DATABASES, &[&name])
                .await
                .map_err(|e| compute(e.into()))?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()
                .map_err(|e| compute(e.into()))?;
            owned_in_postgres.extend(owned);
            owned_in_postgres.sort();
            owned_in_postgres.dedup();
            if !owned_in_postgres.is_empty() {
                self.count_role("drop", "conflict");
                return Err(LifecycleError::Conflict(format!(
                    "role '{name}' owns database(s) {}; it cannot be dropped",
                    owned_in_postgres.join(", ")
                )));
            }
            if !self.store.mark_role_pending(id, name, None).await? {
                return Err(role_not_found(id, name));
            }
            self.sync_pooler(&spec).await?;
            self.drop_in_postgres(&spec, name).await?;
            let change = self.store.finish_role(id, name).await?;
            tracing::info!(endpoint = id, role = name, "role dropped");
            change
        };
        self.count_role("drop", "ok");
        if let Some(change) = change {
            self.await_gateways(change).await;
        }
        Ok(())
    }

    /// A recorded role with no operation in progress, else `RoleNotFound`.
    async fn settled_role(&self, id: &str, name: &str) -> Result<RoleRow, LifecycleError> {
        match self.store.role_row(id, name).await? {
            Some(role) if role.pending.is_none() || role.pending.as_deref() == Some("update") => {
                Ok(role)
            }
            _ => Err(role_not_found(id, name)),
        }
    }

    fn count_role(&self, kind: &str, outcome: &str) {
        self.metrics
            .role_operations
            .with_label_values(&[kind, outcome])
            .inc();
    }

    /// Ends the role's sessions, releases what it owns in every database (see
    /// [`roles::release_owned`]) and drops it. Nothing to do when it no longer exists.
    async fn drop_in_postgres(&self, spec: &ComputeSpec, name: &str) -> Result<(), LifecycleError> {
        let compute = compute_error(&spec.endpoint);
        let pg = |e: tokio_postgres::Error| compute(e.into());
        let client = self.driver.admin(spec).await.map_err(compute)?;
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
                &[&name],
            )
            .await
            .map_err(pg)?
            .is_some();
        if !exists {
            return Ok(());
        }
        client
            .query_one(roles::TERMINATE_SESSIONS, &[&name])
            .await
            .map_err(pg)?;
        let databases = client.query(roles::DATABASES, &[]).await.map_err(pg)?;
        for database in databases {
            let (db, owner, superuser): (String, String, bool) = (
                database.try_get(0).map_err(pg)?,
                database.try_get(1).map_err(pg)?,
                database.try_get(2).map_err(pg)?,
            );
            let there = self
                .driver
                .admin_database(spec, &db)
                .await
                .map_err(compute)?;
            there
                .batch_execute(&roles::release_owned(name, &owner, superuser))
                .await
                .map_err(pg)?;
        }
        match client.batch_execute(&roles::drop(name)).await {
            Ok(()) => Ok(()),
            Err(e)
                if e.code()
                    == Some(&tokio_postgres::error::SqlState::DEPENDENT_OBJECTS_STILL_EXIST) =>
            {
                Err(LifecycleError::Conflict(format!(
                    "role '{name}' cannot be dropped: {}",
                    e.as_db_error()
                        .map_or("objects depend on it", |d| d.message())
                )))
            }
            Err(e) => Err(pg(e)),
        }
    }

    /// Gives the compute's pooler the store's current list of roles.
    async fn sync_pooler(&self, spec: &ComputeSpec) -> Result<(), LifecycleError> {
        let roles: Vec<PoolerRole> = self
            .store
            .role_rows(&spec.endpoint)
            .await?
            .into_iter()
            .filter(|r| !matches!(r.pending.as_deref(), Some("create" | "delete")))
            .map(|r| PoolerRole {
                name: r.name,
                secret: r.secret,
            })
            .collect();
        self.driver
            .set_pooler_roles(spec, &roles)
            .await
            .map_err(compute_error(&spec.endpoint))
    }

    /// Applies the store's view of the endpoint to its running compute (endpoint lock held):
    /// the security baseline ([`roles::BASELINE`]), every API role as recorded (attributes,
    /// verifier — a password changed in SQL is reset to the API's —, memberships), role
    /// operations a crash left unfinished, and PgBouncer's list. Then `sync_needed` is
    /// cleared.
    async fn sync(&self, row: &EndpointRow) -> Result<(), LifecycleError> {
        let id = row.id.as_str();
        let spec = Self::spec(row);
        let compute = compute_error(id);
        let client = self.driver.admin(&spec).await.map_err(compute)?;
        client
            .batch_execute(roles::BASELINE)
            .await
            .map_err(|e| compute(e.into()))?;
        for role in self.store.role_rows(id).await? {
            match role.pending.as_deref() {
                Some("delete") => self.drop_in_postgres(&spec, &role.name).await?,
                pending => {
                    let secret = match pending {
                        Some("update") => role.pending_secret.as_deref().unwrap_or(&role.secret),
                        _ => &role.secret,
                    };
                    client
                        .batch_execute(&roles::ensure(&role.name, secret))
                        .await
                        .map_err(|e| compute(e.into()))?;
                }
            }
            if role.pending.is_some() {
                tracing::info!(endpoint = id, role = %role.name, pending = ?role.pending, "finishing a role operation cut short");
                self.store.finish_role(id, &role.name).await?;
            }
        }
        self.prepare_jwt(&spec).await?;
        self.sync_pooler(&spec).await?;
        self.store.set_sync_needed(id, false).await?;
        tracing::info!(
            endpoint = id,
            "compute synced with the store (roles, security baseline, JWT logins)"
        );
        Ok(())
    }

    /// Waits until every gateway that reports has applied role change `change` (it then
    /// holds nothing of the old credentials), at most [`ROLE_CHANGE_WAIT`].
    async fn await_gateways(&self, change: i64) {
        let deadline = Instant::now() + ROLE_CHANGE_WAIT;
        loop {
            match self.store.gateways_behind(change).await {
                Ok(0) => return,
                Ok(behind) if Instant::now() >= deadline => {
                    self.metrics.role_changes_unacknowledged.inc();
                    tracing::warn!(change, behind, "not every gateway applied a role change in time; they apply it with their next report");
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    self.metrics.role_changes_unacknowledged.inc();
                    tracing::warn!(change, error = %e, "could not check whether the gateways applied a role change");
                    return;
                }
            }
            tokio::time::sleep(ROLE_CHANGE_POLL).await;
        }
    }

    /// Adds a JWKS rule (`POST /v1/endpoints/{id}/jwks`): checked, recorded with the login
    /// material the endpoint does not have yet (its claims key, a login per new JWT role) and
    /// `sync_needed`, then the compute is woken and prepared (see [`jwt`]) before this
    /// returns. A preparation that fails forgets the rule again (the answer is an error); a
    /// crash before the answer leaves the rule, and its preparation to the next sync (until
    /// then logins as its roles fail: closed).
    pub async fn create_jwks(
        &self,
        id: &str,
        request: &CreateJwks,
    ) -> Result<JwksSettings, LifecycleError> {
        let rule = jwt::rule(request, jwt::new_rule_id()).map_err(LifecycleError::BadRule)?;
        let (_guard, row) = self.lock_running(id).await?;
        if self.store.jwks_rules(id).await?.len() >= jwt::MAX_RULES {
            return Err(LifecycleError::Conflict(format!(
                "endpoint '{id}' has {} JWKS rules already, the most it may have",
                jwt::MAX_RULES
            )));
        }
        let api_roles = self.store.role_rows(id).await?;
        if let Some(taken) = rule
            .role_names
            .iter()
            .find(|n| api_roles.iter().any(|r| &r.name == *n))
        {
            return Err(LifecycleError::Conflict(format!(
                "'{taken}' is an API role of endpoint '{id}'; a JWT role must be another role (JWT roles have no password login)"
            )));
        }
        let have = self.store.jwt_role_names(id).await?;
        let roles = rule
            .role_names
            .iter()
            .filter(|n| !have.contains(n))
            .map(|n| jwt::RoleLogin::generate(n))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LifecycleError::Invalid(e.to_string()))?;
        let new = NewJwksRule {
            rule: &rule,
            key: jwt::generate_key(),
            roles,
        };
        let change = self.store.insert_jwks_rule(id, &new).await?;
        if let Err(e) = self.sync(&row).await {
            // Not acknowledged, so not kept: a retry must not leave two rules. The material
            // and `sync_needed` stay (preparing the compute with them again is harmless).
            if let Err(undo) = self.store.delete_jwks_rule(id, &rule.id).await {
                tracing::warn!(endpoint = id, rule = %rule.id, error = %undo, "could not forget a rule whose preparation failed");
            }
            return Err(e);
        }
        tracing::info!(endpoint = id, rule = %rule.id, roles = ?rule.role_names, "JWKS rule added");
        self.await_gateways(change).await;
        Ok(rule)
    }

    /// The endpoint's JWKS rules, oldest first.
    pub async fn jwks_rules(&self, id: &str) -> Result<Vec<JwksSettings>, LifecycleError> {
        self.row(id).await?;
        Ok(self.store.jwks_rules(id).await?)
    }

    /// Removes a rule. Its roles and the endpoint's key stay (in the store and in Postgres):
    /// a role no rule names is not served to gateways, and its name stays reserved. Like an
    /// addition, returns once every reporting gateway dropped the endpoint's cached rules
    /// (at most the role-change wait).
    pub async fn delete_jwks(&self, id: &str, rule: &str) -> Result<(), LifecycleError> {
        self.row(id).await?;
        let _guard = self.lock(id).await?;
        let Some(change) = self.store.delete_jwks_rule(id, rule).await? else {
            return Err(LifecycleError::RuleNotFound {
                endpoint: id.to_owned(),
                rule: rule.to_owned(),
            });
        };
        tracing::info!(endpoint = id, rule, "JWKS rule deleted");
        self.await_gateways(change).await;
        Ok(())
    }

    /// What the proxy API serves at `.../jwks`: the rules and, when there are any, the login
    /// material of the roles they name.
    pub async fn proxy_jwks(&self, id: &str) -> Result<Jwks, LifecycleError> {
        self.row(id).await?;
        let rules = self.store.jwks_rules(id).await?;
        if rules.is_empty() {
            return Ok(Jwks::default());
        }
        let jwt_login = self.store.jwt_material(id).await?.map(|m| JwtLogin {
            claims_key: ClaimsKey {
                kid: m.kid,
                key: jwt::hex(&m.key),
            },
            roles: m
                .roles
                .iter()
                .filter(|r| rules.iter().any(|rule| rule.role_names.contains(&r.name)))
                .map(jwt::RoleLogin::to_wire)
                .collect(),
        });
        Ok(Jwks {
            jwks: rules,
            jwt_login,
        })
    }

    /// Prepares the running compute for JWT logins when the endpoint has login material: the
    /// roles once ([`jwt::cluster_sql`]), then every database that allows connections.
    async fn prepare_jwt(&self, spec: &ComputeSpec) -> Result<(), LifecycleError> {
        let Some(material) = self.store.jwt_material(&spec.endpoint).await? else {
            return Ok(());
        };
        let compute = compute_error(&spec.endpoint);
        let pg = |e: tokio_postgres::Error| compute(e.into());
        let client = self.driver.admin(spec).await.map_err(compute)?;
        client
            .batch_execute(&jwt::cluster_sql(&material.roles))
            .await
            .map_err(pg)?;
        let (ipad, opad) = jwt::pads(&material.key);
        let grants = jwt::database_grants(&material.roles);
        for database in client.query(roles::DATABASES, &[]).await.map_err(pg)? {
            let name: String = database.try_get(0).map_err(pg)?;
            let there = self
                .driver
                .admin_database(spec, &name)
                .await
                .map_err(compute)?;
            there.batch_execute(jwt::DATABASE_SQL).await.map_err(pg)?;
            there.batch_execute(&grants).await.map_err(pg)?;
            there
                .execute(jwt::UPSERT_KEY, &[&material.kid, &ipad, &opad])
                .await
                .map_err(pg)?;
        }
        Ok(())
    }

    /// Creates a database owned by one of the endpoint's roles.
    pub async fn create_database(
        &self,
        id: &str,
        name: &str,
        owner: &str,
    ) -> Result<(), LifecycleError> {
        if !names::valid_object_name(name) || name == "postgres" {
            return Err(invalid_name("database", name));
        }
        let (_guard, row) = self.lock_running(id).await?;
        if self.store.role_secret(id, owner).await?.is_none() {
            return Err(LifecycleError::Invalid(format!(
                "owner '{owner}' is not a role of endpoint '{id}'"
            )));
        }
        if self
            .store
            .databases(id)
            .await?
            .iter()
            .any(|d| d.name == name)
        {
            return Err(LifecycleError::Conflict(format!(
                "database '{name}' already exists on endpoint '{id}'"
            )));
        }
        // A crash after the CREATE leaves the sync to prepare the database for JWT logins.
        let jwt = self.store.jwt_material(id).await?.is_some();
        if jwt {
            self.store.set_sync_needed(id, true).await?;
        }
        let compute = compute_error(id);
        let client = self
            .driver
            .admin(&Self::spec(&row))
            .await
            .map_err(compute)?;
        let create = format!(
            "CREATE DATABASE {} OWNER {}",
            roles::quote_ident(name),
            roles::quote_ident(owner)
        );
        if let Err(e) = client.batch_execute(&create).await {
            if e.code() != Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) {
                return Err(compute(e.into()));
            }
        }
        match self.store.insert_database(id, name, owner).await {
            Err(StoreError::Conflict) => {
                return Err(LifecycleError::Conflict(format!(
                    "database '{name}' already exists on endpoint '{id}'"
                )))
            }
            other => other?,
        }
        if jwt {
            self.sync(&row).await?;
        }
        Ok(())
    }

    /// After a start (or a crash): finishes or rolls back what the store says was in
    /// progress, brings every compute to the state the store records (adopting running
    /// processes, never duplicating them), and removes computes the store does not know.
    pub async fn reconcile(&self) -> Result<(), LifecycleError> {
        let unknown = self.unknown_computes().await?;
        // Role operations a crash cut short are finished by a sync, once the compute runs.
        for id in self.store.endpoints_with_pending_roles().await? {
            self.store.set_sync_needed(&id, true).await?;
        }
        for row in &self.store.endpoints().await? {
            let id = row.id.as_str();
            let _guard = self.lock(id).await?;
            let outcome = match self.reconcile_one(row).await {
                Ok(()) => self.sync_after_reconcile(id).await,
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                tracing::error!(endpoint = id, error = %e, "reconcile could not restore the endpoint");
            }
        }
        for orphan in unknown {
            match self.driver.quarantine(&orphan).await {
                Ok(moved) => {
                    self.metrics.computes_quarantined.inc();
                    tracing::warn!(endpoint = %orphan, moved_to = %moved, "the store does not know this compute: moved it aside (nothing deleted)");
                }
                Err(e) => {
                    tracing::error!(endpoint = %orphan, error = %e, "could not move aside a compute the store does not know");
                }
            }
        }
        self.metrics
            .set_endpoint_states(&self.store.endpoints().await?);
        Ok(())
    }

    /// The computes the driver holds that the store does not know (to be quarantined).
    /// Refuses when the store knows no endpoint at all but the driver holds computes, unless
    /// told to quarantine them anyway: a wrong store must not look like "delete everything".
    async fn unknown_computes(&self) -> Result<Vec<String>, LifecycleError> {
        let rows = self.store.endpoints().await?;
        let on_disk = self.driver.list().await.map_err(compute_error("*"))?;
        let unknown: Vec<String> = on_disk
            .into_iter()
            .filter(|id| !rows.iter().any(|r| &r.id == id))
            .collect();
        if rows.is_empty() && !unknown.is_empty() && !self.config.quarantine_unknown {
            return Err(LifecycleError::Invalid(format!(
                "the state store lists no endpoint, but the compute driver holds {} compute(s) ({}): \
                 this store is new, or not the one these computes belong to (check WAKE_DATABASE_URL \
                 and DATA_DIR). Refusing to start, so that nothing is lost. To start anyway with \
                 those computes moved aside (quarantined, not deleted), pass \
                 --quarantine-unknown-computes",
                unknown.len(),
                unknown.join(", ")
            )));
        }
        Ok(unknown)
    }

    /// Brings one endpoint where the store says it is, finishing what a crash cut short
    /// (lock held).
    async fn reconcile_one(&self, row: &EndpointRow) -> Result<(), LifecycleError> {
        let id = row.id.as_str();
        let spec = Self::spec(row);
        if row.operation.is_none()
            || row.operation == Some(Operation::Suspend)
            || row.operation == Some(Operation::Wake)
        {
            // PgBouncer (re)starts with the store's roles, whatever an earlier version or a
            // crash left in its file.
            if let Err(e) = self.sync_pooler(&spec).await {
                tracing::error!(endpoint = id, error = %e, "could not write PgBouncer's roles");
            }
        }
        match (row.operation, row.state) {
            (Some(Operation::Create), _) => {
                tracing::info!(endpoint = id, "finishing a create cut short");
                self.finish_create(row.clone()).await.map(drop)
            }
            (Some(Operation::Delete), _) => {
                tracing::info!(endpoint = id, "finishing a delete cut short");
                self.finish_delete(row).await
            }
            (Some(Operation::Suspend), _)
            | (None, EndpointState::Suspending | EndpointState::Suspended) => {
                // Postgres down, PgBouncer up and paused (holding its clients). A compute
                // that had already stopped is metered until its last checkpoint.
                let was_running = self.driver.health(&spec).await.ok() == Some(Health::Running);
                let stopped = async {
                    self.driver.stop_postgres(&spec, StopMode::Fast).await?;
                    self.driver.pause_pooler(&spec, POOLER_PAUSE_TIMEOUT).await
                }
                .await;
                let change = Transition {
                    to: EndpointState::Suspended,
                    operation: None,
                    event: "stopped",
                    detail: None,
                    compute_lost: !was_running,
                };
                match stopped {
                    Ok(_) => self.transition(id, &change).await.map(drop),
                    Err(source) => Err(self.fail(id, source).await),
                }
            }
            (Some(Operation::Wake), _)
            | (None, EndpointState::Active | EndpointState::Resuming) => {
                self.reconcile_running(row, &spec).await
            }
            (None, EndpointState::Failed | EndpointState::Unknown) => Ok(()),
        }
    }

    /// Starts (or adopts) the compute of an endpoint the store says runs or was waking.
    async fn reconcile_running(
        &self,
        row: &EndpointRow,
        spec: &ComputeSpec,
    ) -> Result<(), LifecycleError> {
        let id = row.id.as_str();
        let was_running = self.driver.health(spec).await.ok() == Some(Health::Running);
        match self.driver.start(spec).await {
            Ok(_) => {
                let event = if was_running && row.state == EndpointState::Active {
                    "adopted"
                } else {
                    self.metrics
                        .resumes
                        .with_label_values(&[WakeTrigger::Reconcile.as_str()])
                        .inc();
                    "started"
                };
                // An adopted compute ran all along: its metered run goes on. One that had died
                // ran until its last checkpoint; a new run starts now.
                let change = Transition {
                    to: EndpointState::Active,
                    operation: None,
                    event,
                    detail: None,
                    compute_lost: !was_running,
                };
                self.transition(id, &change).await.map(drop)
            }
            Err(source) => Err(self.fail(id, source).await),
        }
    }

    /// After reconcile restored an endpoint (lock held): a running compute that needs a sync
    /// gets it now; a suspended one with a role operation cut short is started for it (it
    /// suspends again when idle); otherwise the sync waits for the next wake.
    async fn sync_after_reconcile(&self, id: &str) -> Result<(), LifecycleError> {
        let Some(row) = self.store.endpoint(id).await? else {
            return Ok(());
        };
        if !row.sync_needed {
            return Ok(());
        }
        match row.state {
            EndpointState::Active => match self.sync(&row).await {
                Ok(()) => Ok(()),
                Err(e) => Err(self.fail_sync(id, e).await),
            },
            EndpointState::Suspended
                if !self
                    .store
                    .role_rows(id)
                    .await?
                    .iter()
                    .all(|r| r.pending.is_none()) =>
            {
                self.resume_locked(row, WakeTrigger::Reconcile)
                    .await
                    .map(drop)
            }
            _ => Ok(()),
        }
    }

    /// Stops every compute, PgBouncers of suspended endpoints included (the wake service
    /// exiting). Active endpoints are recorded `suspended`; reconcile brings the PgBouncers
    /// back (paused) on the next start.
    /// A gateway's activity report (see [`ActivityReport`]): busy endpoints get a lease of
    /// [`LEASE_INTERVALS`] report intervals, every reported endpoint's `last_active` moves,
    /// and the reply names the reported and cached endpoints that are not active (their
    /// routes are stale) and, for a gateway that says who it is, the role changes it has not
    /// applied yet. At most [`MAX_REPORTED_ENDPOINTS`] of each list are looked at.
    pub async fn record_activity(
        &self,
        report: &ActivityReport,
    ) -> Result<ActivityReply, LifecycleError> {
        if !REPORT_INTERVAL_MS.contains(&report.interval_ms) {
            return Err(LifecycleError::Invalid(format!(
                "interval_ms must be between {} and {}",
                REPORT_INTERVAL_MS.start(),
                REPORT_INTERVAL_MS.end()
            )));
        }
        // Checked before anything is stored: a refused report changes nothing.
        if report
            .gateway_id
            .as_deref()
            .is_some_and(|g| g.is_empty() || g.len() > MAX_GATEWAY_ID)
        {
            return Err(LifecycleError::Invalid(format!(
                "gateway_id must be 1-{MAX_GATEWAY_ID} characters"
            )));
        }
        self.metrics.activity_reports.inc();
        let entries: Vec<GatewayActivity> = report
            .endpoints
            .iter()
            .take(MAX_REPORTED_ENDPOINTS)
            .map(|e| GatewayActivity {
                endpoint: split_pooler(&e.endpoint_id).0.to_owned(),
                idle_ms: i64::try_from(e.idle_ms).unwrap_or(i64::MAX),
                busy: e.sessions > 0 || e.in_flight > 0,
            })
            .collect();
        let mut ids: Vec<String> = entries
            .iter()
            .map(|e| e.endpoint.clone())
            .chain(
                report
                    .cached
                    .iter()
                    .take(MAX_REPORTED_ENDPOINTS)
                    .map(|id| split_pooler(id).0.to_owned()),
            )
            .collect();
        ids.sort();
        ids.dedup();
        let interval = Duration::from_millis(report.interval_ms);
        let status = self
            .store
            .record_activity(&entries, interval * LEASE_INTERVALS, &ids)
            .await?;
        let pool_limits = status
            .active
            .into_iter()
            .map(|(endpoint_id, cu, railway)| PoolLimit {
                endpoint_id,
                pool_max_conns: self.driver.pool_cap(stored_cu(cu), railway),
            })
            .collect();
        let mut reply = ActivityReply {
            inactive: status.inactive,
            pool_limits,
            ..ActivityReply::default()
        };
        if let Some(gateway) = report.gateway_id.as_deref() {
            let changes = self
                .store
                .gateway_report(gateway, interval, report.role_changes_applied)
                .await?;
            reply.role_changes = changes.changes;
            reply.role_changes_cursor = Some(changes.cursor);
            reply.role_changes_truncated = changes.truncated;
        }
        Ok(reply)
    }

    /// The role's password, as it was last set (Neon's API reveals it).
    pub async fn role_password(&self, id: &str, role: &str) -> Result<String, LifecycleError> {
        let unavailable = |reason: &str| LifecycleError::PasswordUnavailable {
            endpoint: id.to_owned(),
            role: role.to_owned(),
            reason: reason.to_owned(),
        };
        match self.store.role_sealed_password(id, role).await? {
            None => Err(role_not_found(id, role)),
            Some(None) => Err(unavailable("it was set before passwords were kept")),
            Some(Some(sealed)) => self
                .config
                .passwords
                .open(id, role, &sealed)
                .map_err(|e| unavailable(&e.to_string())),
        }
    }

    /// Gives the role a new generated password and returns it (Neon's `reset_password`).
    pub async fn reset_role_password(
        &self,
        id: &str,
        role: &str,
    ) -> Result<String, LifecycleError> {
        let password = crate::password_vault::generate_password();
        self.update_role(id, role, &password).await?;
        Ok(password)
    }

    fn seal_password(
        &self,
        id: &str,
        role: &str,
        password: &str,
    ) -> Result<String, LifecycleError> {
        self.config
            .passwords
            .seal(id, role, password)
            .map_err(|e| LifecycleError::Invalid(e.to_string()))
    }

    /// The SCRAM secret a gateway checks `role`'s password against: empty for a role the
    /// endpoint does not have (or has not finished creating). `NotFound` for an unknown
    /// endpoint.
    pub async fn access_secret(&self, id: &str, role: &str) -> Result<String, LifecycleError> {
        if self.store.endpoint(id).await?.is_none() {
            return Err(LifecycleError::NotFound(id.to_owned()));
        }
        Ok(self.store.role_secret(id, role).await?.unwrap_or_default())
    }

    pub async fn suspend_all(&self) {
        let Ok(rows) = self.store.endpoints().await else {
            return;
        };
        for row in rows {
            if matches!(
                row.state,
                EndpointState::Active | EndpointState::Resuming | EndpointState::Suspended
            ) && self.driver.stops_with_service(&Self::spec(&row))
            {
                if let Err(e) = self.suspend(&row.id, SuspendRequest::Shutdown).await {
                    tracing::error!(endpoint = %row.id, error = %e, "could not stop compute on exit");
                }
            }
        }
    }

    /// Creates the default endpoint, its role and database, once (on first start).
    pub async fn bootstrap_default(
        &self,
        id: &str,
        role: &str,
        password: &str,
        database: &str,
    ) -> Result<(), LifecycleError> {
        const MARK: &str = "default_endpoint";
        if self.store.bootstrapped(MARK).await? {
            return Ok(());
        }
        if self.store.endpoint(id).await?.is_none() {
            tracing::info!(endpoint = id, "creating the default endpoint");
            let request = CreateEndpoint {
                id: id.to_owned(),
                ..CreateEndpoint::default()
            };
            self.create(&request).await?;
        }
        match self.create_role(id, role, password).await {
            Ok(_) | Err(LifecycleError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        match self.create_database(id, database, role).await {
            Ok(()) | Err(LifecycleError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        self.store.bootstrap_once(MARK).await?;
        Ok(())
    }
}

fn invalid_name(kind: &str, name: &str) -> LifecycleError {
    LifecycleError::Invalid(format!(
        "invalid {kind} name '{name}': use 1-63 letters, digits, '_' and '-', starting with a letter or '_'; 'pg_' names and reserved names are not allowed"
    ))
}

/// The SCRAM-SHA-256 verifier of a password the API was given.
fn scram_secret(password: &str) -> Result<String, LifecycleError> {
    if password.is_empty() || password.len() > 1024 || password.contains('\0') {
        return Err(LifecycleError::Invalid(
            "password must be 1-1024 bytes without NUL".into(),
        ));
    }
    Ok(postgres_protocol::password::scram_sha_256(
        password.as_bytes(),
    ))
}

fn role_exists(id: &str, name: &str) -> LifecycleError {
    LifecycleError::Conflict(format!("role '{name}' already exists on endpoint '{id}'"))
}

fn role_not_found(id: &str, name: &str) -> LifecycleError {
    LifecycleError::RoleNotFound {
        endpoint: id.to_owned(),
        role: name.to_owned(),
    }
}

/// Wraps a driver error of endpoint `id`.
fn compute_error(id: &str) -> impl Fn(ComputeError) -> LifecycleError + Copy + '_ {
    move |source| LifecycleError::Compute {
        endpoint: id.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords() {
        assert!(scram_secret("").is_err());
        assert!(scram_secret("a\0b").is_err());
        assert!(scram_secret(&"x".repeat(1025)).is_err());
        let secret = scram_secret("pw").expect("valid");
        assert!(secret.starts_with("SCRAM-SHA-256$4096:"), "{secret}");
    }
}
