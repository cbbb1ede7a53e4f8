//! Compute drivers: how an endpoint's Postgres (and the PgBouncer in front of it) is created,
//! started, stopped and destroyed. The lifecycle code (`crate::lifecycle`) owns the state
//! machine and the store; a driver only does what it is told, idempotently, so that a
//! restarted wake service can repeat any step it was in the middle of.

pub mod drivers;
pub mod local;
pub mod railway;

use std::time::Duration;

use async_trait::async_trait;
use wake_api::admin::{Addresses, ComputeSize};

use crate::autoscale::sizing::Cu;

/// What a driver needs to know about one endpoint's compute. Ports are allocated by the
/// store (unique across endpoints), never invented by a driver.
#[derive(Clone, Debug, PartialEq)]
pub struct ComputeSpec {
    pub endpoint: String,
    /// Postgres listens here on the driver's host.
    pub port: u16,
    /// PgBouncer (transaction mode) listens here.
    pub pooler_port: u16,
    /// The size the compute should have (1 CU = 1 vCPU + 4 GiB in Neon's terms): its CPU and
    /// memory limits, Postgres settings and pool sizes follow it.
    pub cu: Cu,
    /// Which driver runs it, and where.
    pub target: Target,
}

/// Where an endpoint's compute runs: the driver named in the store, with what that driver
/// needs to find it.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Processes on this host ([`local::LocalDriver`]); `port` and `pooler_port` are theirs.
    Local,
    /// A Railway Postgres service (and its PgBouncer service) this endpoint is bound to.
    Railway(railway::Binding),
}

impl Target {
    /// The driver's name, as stored and shown in the API.
    pub fn driver(&self) -> &'static str {
        match self {
            Target::Local => local::NAME,
            Target::Railway(_) => railway::NAME,
        }
    }
}

/// A login role as the compute's pooler must know it: its name and SCRAM-SHA-256 verifier
/// (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, the same one Postgres holds).
#[derive(Clone, PartialEq, Eq)]
pub struct PoolerRole {
    pub name: String,
    pub secret: String,
}

impl std::fmt::Debug for PoolerRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolerRole")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// How Postgres is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Postgres' "smart" shutdown: new connections are refused at once (`57P03`), open
    /// sessions go on until their clients end them. After `patience` the shutdown becomes
    /// fast (sessions still open are cut).
    Smart { patience: Duration },
    /// Sessions are cut at once (their transactions roll back).
    Fast,
}

/// PgBouncer's view of its clients, summed over its databases (the admin console excluded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolerStats {
    /// Clients waiting for a server connection (or, while paused, for the pause to end;
    /// this includes clients still logging in).
    pub clients_waiting: u64,
    /// Clients connected and not waiting (idle or linked to a server).
    pub clients_active: u64,
    /// Server connections in use by a client (a transaction in progress).
    pub servers_active: u64,
    /// Transactions since PgBouncer started (`total_xact_count`): a change means activity.
    pub transactions: u64,
    /// Whether PgBouncer is paused.
    pub paused: bool,
}

/// What a compute uses, for the autoscaler; any figure may be missing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ComputeLoad {
    /// CPU time of the compute's processes since some fixed moment (a rate needs two).
    pub cpu_seconds: Option<f64>,
    /// Memory reclaim cannot take back (anonymous and shared memory, no page cache).
    pub memory_bytes: Option<u64>,
    /// PgBouncer's clients (None when it does not run).
    pub pooler: Option<PoolerStats>,
}

/// What a health check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Postgres and PgBouncer both accept connections.
    Running,
    /// Postgres does not run (PgBouncer may, paused: a suspended compute).
    Stopped,
    /// Postgres runs but not everything answers (e.g. PgBouncer gone).
    Degraded,
}

#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// A process could not be started, stopped or reached in time. The message is for
    /// operators (it may name paths); it never reaches database clients.
    #[error("{0}")]
    Process(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

impl ComputeError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ComputeError::Io {
            context: context.into(),
            source,
        }
    }
}

#[async_trait]
pub trait ComputeDriver: Send + Sync + 'static {
    /// `local`, `railway`, … (shown in the API).
    fn name(&self) -> &'static str;

    /// Creates the compute's storage and configuration: for `local`, initdb with SCRAM and the
    /// PgBouncer files. Idempotent: a finished create is left alone, a half-finished one (the
    /// wake service died in the middle) is wiped and redone. Leaves the compute stopped.
    async fn create(&self, spec: &ComputeSpec) -> Result<(), ComputeError>;

    /// Starts Postgres with the settings of `spec.cu` (its processes limited to that size),
    /// then makes sure PgBouncer runs and is not paused (RESUME), and
    /// returns once both accept connections. Processes already running for this compute (a
    /// wake-service restart) are adopted, never duplicated; a process of this compute on the
    /// wrong port is restarted. This is the resume path: every millisecond here is a
    /// millisecond of the first query after a suspend.
    async fn start(&self, spec: &ComputeSpec) -> Result<Addresses, ComputeError>;

    /// Stops Postgres only; PgBouncer keeps running (paused, when [`Self::pause_pooler`] ran
    /// first, so its clients wait for the next start instead of failing). Idempotent.
    async fn stop_postgres(&self, spec: &ComputeSpec, mode: StopMode) -> Result<(), ComputeError>;

    /// Stops PgBouncer and Postgres (fast shutdown: sessions are cut): nothing of the compute
    /// runs afterwards (the wake service exiting). Idempotent.
    async fn stop(&self, spec: &ComputeSpec) -> Result<(), ComputeError>;

    /// PgBouncer `PAUSE`: waits until every server connection is released and closed; from
    /// then on clients (new and connected) wait instead of reaching Postgres. Starts PgBouncer
    /// (then pauses it) when it does not run. `Ok(false)` when the pause did not complete
    /// within `timeout` (a transaction kept a server connection busy): PgBouncer is then
    /// resumed again, as if nothing happened.
    async fn pause_pooler(
        &self,
        spec: &ComputeSpec,
        timeout: Duration,
    ) -> Result<bool, ComputeError>;

    /// PgBouncer `RESUME`: waiting clients go on. Nothing to do when it is not paused.
    async fn resume_pooler(&self, spec: &ComputeSpec) -> Result<(), ComputeError>;

    /// What PgBouncer's clients are doing (`SHOW POOLS`, `SHOW STATS`, `SHOW DATABASES`,
    /// without the admin console itself). `None` when PgBouncer does not run.
    async fn pooler_stats(&self, spec: &ComputeSpec) -> Result<Option<PoolerStats>, ComputeError>;

    /// Applies `spec.cu` to the running compute without interrupting anything: CPU and memory
    /// limits, the reloadable Postgres settings (those that need a restart wait for the next
    /// start and show as pending) and PgBouncer's pool sizes (RELOAD). An error when the
    /// compute does not run.
    async fn resize(&self, spec: &ComputeSpec) -> Result<ComputeSize, ComputeError>;

    /// How the size is in effect, as far as this driver applied it (no I/O): None for a
    /// compute it has not started or adopted.
    fn size(&self, spec: &ComputeSpec) -> Option<ComputeSize>;

    /// What the compute uses now, without waking anything.
    async fn load(&self, spec: &ComputeSpec) -> Result<ComputeLoad, ComputeError>;

    /// Removes what this driver created for the compute: for `local`, whatever runs for it
    /// and its data. Idempotent.
    async fn destroy(&self, spec: &ComputeSpec) -> Result<(), ComputeError>;

    /// Whether the compute stops when the wake service does (`local`: its processes are the
    /// wake service's children in all but name), rather than running on without it.
    fn stops_with_service(&self, _spec: &ComputeSpec) -> bool {
        true
    }

    /// Whether the compute runs and answers.
    async fn health(&self, spec: &ComputeSpec) -> Result<Health, ComputeError>;

    /// A superuser connection to the compute's Postgres (database `postgres`), for creating
    /// roles and databases. The compute must be running. Its `search_path` is `pg_catalog`
    /// whatever the database or role settings say, so no object a tenant created is ever
    /// resolved by it.
    async fn admin(&self, spec: &ComputeSpec) -> Result<tokio_postgres::Client, ComputeError> {
        self.admin_database(spec, "postgres").await
    }

    /// [`Self::admin`] in another database (dropping a role reassigns what it owns in each).
    async fn admin_database(
        &self,
        spec: &ComputeSpec,
        database: &str,
    ) -> Result<tokio_postgres::Client, ComputeError>;

    /// Makes the compute's pooler authenticate exactly `roles`, with their SCRAM verifiers
    /// (PgBouncer: its auth file, then `RELOAD` when it runs; a stopped one reads the file at
    /// its next start). No SQL runs for it. Idempotent: the store is the source, and
    /// reconcile repeats it for every endpoint.
    async fn set_pooler_roles(
        &self,
        spec: &ComputeSpec,
        roles: &[PoolerRole],
    ) -> Result<(), ComputeError>;

    /// Stops whatever runs for `endpoint` and moves its storage aside, where nothing lists,
    /// starts or deletes it, for an operator to look at (a compute the store does not know).
    /// Returns where it went.
    async fn quarantine(&self, endpoint: &str) -> Result<String, ComputeError>;

    /// The endpoints this driver holds storage or processes for, to find orphans (left by a
    /// crash between a driver step and the store) at startup.
    async fn list(&self) -> Result<Vec<String>, ComputeError>;
}
