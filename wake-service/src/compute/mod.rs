//! Compute drivers: how an endpoint's Postgres (and the PgBouncer in front of it) is created,
//! started, stopped and destroyed. The lifecycle code (`crate::lifecycle`) owns the state
//! machine and the store; a driver only does what it is told, idempotently, so that a
//! restarted wake service can repeat any step it was in the middle of.

pub mod local;

use async_trait::async_trait;
use wake_api::admin::Addresses;

/// What a driver needs to know about one endpoint's compute. Ports are allocated by the
/// store (unique across endpoints), never invented by a driver.
#[derive(Clone, Debug, PartialEq)]
pub struct ComputeSpec {
    pub endpoint: String,
    /// Postgres listens here on the driver's host.
    pub port: u16,
    /// PgBouncer (transaction mode) listens here.
    pub pooler_port: u16,
    /// Compute units the compute should get (1 CU = 1 vCPU + 4 GiB in Neon's terms).
    pub cu: f64,
}

/// What a health check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Postgres and PgBouncer both accept connections.
    Running,
    /// Neither process is running.
    Stopped,
    /// Something runs but not everything answers (e.g. Postgres up, PgBouncer gone).
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

    /// Starts Postgres, then PgBouncer, and returns once both accept connections. Processes
    /// already running for this compute (a wake-service restart) are adopted, never
    /// duplicated; a process of this compute on the wrong port is restarted.
    async fn start(&self, spec: &ComputeSpec) -> Result<Addresses, ComputeError>;

    /// Stops PgBouncer and Postgres (fast shutdown: sessions are cut). Idempotent.
    async fn stop(&self, spec: &ComputeSpec) -> Result<(), ComputeError>;

    /// Stops whatever runs for `endpoint` and deletes its data. Idempotent.
    async fn destroy(&self, endpoint: &str) -> Result<(), ComputeError>;

    /// Whether the compute runs and answers.
    async fn health(&self, spec: &ComputeSpec) -> Result<Health, ComputeError>;

    /// A superuser connection to the compute's Postgres (database `postgres`), for creating
    /// roles and databases. The compute must be running.
    async fn admin(&self, spec: &ComputeSpec) -> Result<tokio_postgres::Client, ComputeError>;

    /// The endpoints this driver holds storage or processes for, to find orphans (left by a
    /// crash between a driver step and the store) at startup.
    async fn list(&self) -> Result<Vec<String>, ComputeError>;
}
