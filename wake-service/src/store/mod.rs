//! The durable state: endpoints, roles, databases and compute events, in Postgres.
//!
//! Every change of an endpoint's state is one transaction that also appends the matching
//! `compute_events` row, so the event log and the state can never disagree. Schema changes
//! are numbered migrations (`migrations/NNNN_name.sql`), applied once, in order, under an
//! advisory lock so that two replicas starting together do not race.

use std::ops::RangeInclusive;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};
use wake_api::admin::{ComputeEvent, Database, EndpointState};
use wake_api::proxy::JwksSettings;

use crate::compute::railway::Binding;
use crate::jwt::RoleLogin;

mod branches;
mod gateways;
mod operations;
mod usage;
pub use branches::{BranchRow, BranchState, NewBranch};
pub use operations::OperationRow;
pub use usage::{AppliedUsage, Checkpoint, UsageRow};

/// The migrations, in order. A version is never edited once released; add a new one.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/0001_initial.sql"),
    ),
    (
        2,
        "activity",
        include_str!("../../migrations/0002_activity.sql"),
    ),
    (
        3,
        "isolation",
        include_str!("../../migrations/0003_isolation.sql"),
    ),
    (4, "jwt", include_str!("../../migrations/0004_jwt.sql")),
    (5, "usage", include_str!("../../migrations/0005_usage.sql")),
    (
        6,
        "railway",
        include_str!("../../migrations/0006_railway.sql"),
    ),
    (
        7,
        "gateways",
        include_str!("../../migrations/0007_gateways.sql"),
    ),
    (
        8,
        "branches",
        include_str!("../../migrations/0008_branches.sql"),
    ),
    (
        9,
        "neon_api",
        include_str!("../../migrations/0009_neon_api.sql"),
    ),
];

/// How long the ports of a deleted endpoint are not given to another one: longer than a
/// gateway keeps an unused route (4 minutes by default), so no cached route of the old
/// endpoint can reach the next tenant's compute.
pub const PORT_COOLDOWN: Duration = Duration::from_secs(15 * 60);

/// The most role changes one activity reply carries; a gateway further behind drops every
/// role secret it holds instead.
const MAX_ROLE_CHANGES: i64 = 1000;

/// Gateways that have not reported for this long are forgotten.
const GATEWAY_FORGET: Duration = Duration::from_secs(3600);

/// Advisory-lock keys (arbitrary constants, unique to this schema).
const MIGRATION_LOCK: i64 = 0x7761_6b65_0001;
const LEADER_LOCK: i64 = 0x7761_6b65_0002;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("state store connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("state store: {0}")]
    Build(String),
    /// A unique key is taken (the caller knows which).
    #[error("already exists")]
    Conflict,
    #[error("no free port pair in {0:?}")]
    NoFreePort(RangeInclusive<u16>),
}

impl StoreError {
    fn from_db(e: tokio_postgres::Error) -> StoreError {
        if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            StoreError::Conflict
        } else {
            StoreError::Postgres(e)
        }
    }
}

/// An operation in progress on an endpoint, recorded before it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Wake,
    Suspend,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Wake => "wake",
            Operation::Suspend => "suspend",
            Operation::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Option<Operation> {
        match s {
            "create" => Some(Operation::Create),
            "wake" => Some(Operation::Wake),
            "suspend" => Some(Operation::Suspend),
            "delete" => Some(Operation::Delete),
            _ => None,
        }
    }
}

/// One endpoint's entry in a gateway's activity report.
#[derive(Clone, Debug)]
pub struct GatewayActivity {
    pub endpoint: String,
    /// Milliseconds since the gateway last saw activity.
    pub idle_ms: i64,
    /// Sessions open or queries in flight right now.
    pub busy: bool,
}

/// One row of `endpoints`.
#[derive(Clone, Debug)]
pub struct EndpointRow {
    pub id: String,
    pub state: EndpointState,
    pub operation: Option<Operation>,
    pub driver: String,
    pub port: u16,
    pub pooler_port: u16,
    pub suspend_timeout_seconds: i64,
    pub min_cu: f64,
    pub max_cu: f64,
    pub current_cu: f64,
    pub failure: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub last_active: Option<OffsetDateTime>,
    pub suspended_at: Option<OffsetDateTime>,
    /// Gateways hold the endpoint awake until then (open sessions, queries in flight).
    pub held_until: Option<OffsetDateTime>,
    /// The compute's roles and security baseline must be applied again the next time it
    /// runs (endpoints made by earlier versions).
    pub sync_needed: bool,
    /// The Railway services of a `railway` endpoint.
    pub railway: Option<Binding>,
}

impl EndpointRow {
    fn from_row(row: &Row) -> Result<EndpointRow, StoreError> {
        let port = |name: &str| -> Result<u16, StoreError> {
            let value: i32 = row.try_get(name)?;
            u16::try_from(value)
                .map_err(|_| StoreError::Build(format!("{name} {value} out of range")))
        };
        let state: String = row.try_get("state")?;
        let operation: Option<String> = row.try_get("operation")?;
        Ok(EndpointRow {
            id: row.try_get("id")?,
            state: EndpointState::parse(&state),
            operation: operation.as_deref().and_then(Operation::parse),
            driver: row.try_get("driver")?,
            port: port("port")?,
            pooler_port: port("pooler_port")?,
            suspend_timeout_seconds: row.try_get("suspend_timeout_seconds")?,
            min_cu: row.try_get("min_cu")?,
            max_cu: row.try_get("max_cu")?,
            current_cu: row.try_get("current_cu")?,
            failure: row.try_get("failure")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            last_active: row.try_get("last_active")?,
            suspended_at: row.try_get("suspended_at")?,
            held_until: row.try_get("held_until")?,
            sync_needed: row.try_get("sync_needed")?,
            railway: row
                .try_get::<_, Option<serde_json::Value>>("railway")?
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| StoreError::Build(format!("railway binding: {e}")))?,
        })
    }
}

/// One row of `roles`.
#[derive(Clone)]
pub struct RoleRow {
    pub name: String,
    /// The SCRAM-SHA-256 verifier clients log in with.
    pub secret: String,
    /// `create`, `update` or `delete` while an operation is unfinished.
    pub pending: Option<String>,
    /// The new verifier of an unfinished `update`.
    pub pending_secret: Option<String>,
    pub created_at: OffsetDateTime,
}

impl std::fmt::Debug for RoleRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleRow")
            .field("name", &self.name)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl RoleRow {
    fn from_row(row: &Row) -> Result<RoleRow, StoreError> {
        Ok(RoleRow {
            name: row.try_get(0)?,
            secret: row.try_get(1)?,
            pending: row.try_get(2)?,
            pending_secret: row.try_get(3)?,
            created_at: row.try_get(4)?,
        })
    }
}

/// One row of `databases`.
#[derive(Clone, Debug, PartialEq)]
pub struct DatabaseRow {
    pub name: String,
    pub owner: String,
    pub created_at: OffsetDateTime,
    /// Made as a branch (see `branches`).
    pub branch: bool,
}

/// What a gateway must apply after a report (see [`Store::gateway_report`]).
#[derive(Clone, Debug, Default)]
pub struct RoleChanges {
    pub changes: Vec<wake_api::proxy::RoleChange>,
    pub cursor: i64,
    pub truncated: bool,
}

/// What `insert_endpoint` needs; ports are chosen by the store.
#[derive(Clone, Debug)]
pub struct NewEndpoint {
    pub id: String,
    pub driver: String,
    /// For `railway`, the services it is bound to.
    pub railway: Option<Binding>,
    pub suspend_timeout_seconds: i64,
    pub min_cu: f64,
    pub max_cu: f64,
}

/// A state change and the event that records it.
#[derive(Clone, Debug)]
pub struct Transition<'a> {
    pub to: EndpointState,
    pub operation: Option<Operation>,
    /// `created`, `started`, `stopped`, `failed`, … (what metering reads).
    pub event: &'a str,
    pub detail: Option<&'a str>,
    /// Reconcile found the compute not running after a crash: the run it was metered under
    /// ends at its last checkpoint, not now.
    pub compute_lost: bool,
}

/// The state of the endpoints a gateway reported or holds routes to.
#[derive(Debug, Default)]
pub struct ActivityStatus {
    /// Not active (or gone).
    pub inactive: Vec<String>,
    /// Active, with their size and whether they are bound to Railway.
    pub active: Vec<(String, f64, bool)>,
}

/// Settings a PATCH may change; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct EndpointChanges {
    pub suspend_timeout_seconds: Option<i64>,
    pub min_cu: Option<f64>,
    pub max_cu: Option<f64>,
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Connections that hold endpoint operation locks ([`Store::lock_endpoint_operation`]),
    /// apart from `pool` so that long operations never starve the store's queries.
    locks: Pool,
}

/// The first key of every endpoint operation lock (the advisory locks with two 32-bit keys
/// are a key space of their own, apart from the 64-bit leader and migration locks).
const ENDPOINT_LOCK_CLASS: i32 = 0x7761_6b65;
/// The most endpoint operations that may hold their lock at once, across the replica.
const ENDPOINT_LOCKS: usize = 64;
/// How long getting a connection for an endpoint lock may take beyond its deadline.
const ENDPOINT_LOCK_CONNECT: Duration = Duration::from_secs(5);
/// How often a taken endpoint lock is tried again.
const ENDPOINT_LOCK_RETRY: Duration = Duration::from_millis(20);

/// An endpoint's operation lock in the store, held while it lives: every replica of the
/// wake service takes it around an operation on the endpoint's compute, so two replicas
/// never start, stop or resize one compute at once. A session advisory lock: released by
/// `pg_advisory_unlock` when dropped, or with its connection if the replica dies.
pub struct EndpointLock {
    client: Option<deadpool_postgres::Object>,
    key: i32,
}

impl Drop for EndpointLock {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let key = self.key;
        let unlock = async move {
            let unlocked = client
                .query_one(
                    "SELECT pg_advisory_unlock($1, $2)",
                    &[&ENDPOINT_LOCK_CLASS, &key],
                )
                .await
                .and_then(|row| row.try_get::<_, bool>(0));
            if !matches!(unlocked, Ok(true)) {
                // Closing the session releases whatever it holds.
                drop(deadpool_postgres::Object::take(client));
            }
        };
        // Without a runtime left, the connection closes with it, and the lock with it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(runtime.spawn(unlock));
        }
    }
}

/// Holds the leader lock for as long as it lives (one replica runs reconciliation and the
/// schedulers at a time). The lock is a session advisory lock: it goes away with the
/// connection, so a crashed leader releases it by dying.
pub struct Leadership {
    client: deadpool_postgres::ClientWrapper,
}

impl Leadership {
    /// Whether the lock is still held: its connection is open and answers within `timeout`.
    /// A connection that closed took the lock with it (another replica may hold it now); one
    /// that does not answer may be gone too, and a leader must not go on as if it led.
    pub async fn held(&self, timeout: Duration) -> bool {
        if self.client.is_closed() {
            return false;
        }
        matches!(
            tokio::time::timeout(timeout, self.client.simple_query("SELECT 1")).await,
            Ok(Ok(_))
        )
    }

    /// Whether the lock's connection closed (no round trip: cheap enough to ask often).
    pub fn connection_closed(&self) -> bool {
        self.client.is_closed()
    }
}

impl Store {
    /// Connects and applies pending migrations.
    pub async fn open(config: tokio_postgres::Config) -> Result<Store, StoreError> {
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let locks = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let locks = Pool::builder(locks)
            .max_size(ENDPOINT_LOCKS)
            .build()
            .map_err(|e| StoreError::Build(e.to_string()))?;
        let pool = Pool::builder(manager)
            .max_size(16)
            .build()
            .map_err(|e| StoreError::Build(e.to_string()))?;
        let store = Store { pool, locks };
        store.migrate().await?;
        Ok(store)
    }

    /// The endpoint bound to Railway service `service_id` in `environment_id`, if any.
    pub async fn railway_binding_owner(
        &self,
        environment_id: &str,
        service_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT id FROM endpoints
                 WHERE railway ->> 'environment_id' = $1 AND railway ->> 'service_id' = $2",
                &[&environment_id, &service_id],
            )
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Takes endpoint `id`'s operation lock (see [`EndpointLock`]), waiting for it until
    /// `deadline` (None: one try): `Ok(None)` when another operation (on any replica) still
    /// holds it then.
    pub async fn lock_endpoint_operation(
        &self,
        id: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Option<EndpointLock>, StoreError> {
        let now = tokio::time::Instant::now();
        // A connection may have to be made first, even for a single try.
        let connected_by = deadline.map_or(now, |d| d.max(now)) + ENDPOINT_LOCK_CONNECT;
        let client = match tokio::time::timeout_at(connected_by, self.locks.get()).await {
            Ok(client) => client?,
            Err(_) => return Ok(None),
        };
        let key: i32 = client
            .query_one("SELECT hashtext($1)", &[&id])
            .await?
            .try_get(0)?;
        let mut lock = EndpointLock {
            client: Some(client),
            key,
        };
        loop {
            let Some(client) = &lock.client else {
                return Ok(None);
            };
            let taken: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock($1, $2)",
                    &[&ENDPOINT_LOCK_CLASS, &key],
                )
                .await?
                .try_get(0)?;
            if taken {
                return Ok(Some(lock));
            }
            let again =
                deadline.is_some_and(|d| tokio::time::Instant::now() + ENDPOINT_LOCK_RETRY <= d);
            if !again {
                // Not taken: nothing to unlock, the connection goes back as it is.
                lock.client = None;
                return Ok(None);
            }
            tokio::time::sleep(ENDPOINT_LOCK_RETRY).await;
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let result = async {
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (
                        version integer PRIMARY KEY,
                        name text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now())",
                )
                .await?;
            for (version, name, sql) in MIGRATIONS {
                let done = client
                    .query_opt(
                        "SELECT 1 FROM schema_migrations WHERE version = $1",
                        &[version],
                    )
                    .await?
                    .is_some();
                if done {
                    continue;
                }
                tracing::info!(version, name, "applying state-store migration");
                let tx = client.transaction().await?;
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    &[version, name],
                )
                .await?;
                tx.commit().await?;
            }
            Ok::<(), StoreError>(())
        }
        .await;
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await?;
        result
    }

    /// Tries to become the leader; `None` while another replica is.
    pub async fn try_lead(&self) -> Result<Option<Leadership>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
            .await?;
        if row.try_get::<_, bool>(0)? {
            // This connection must never go back to the pool while it holds the lock.
            let client = deadpool_postgres::Object::take(client);
            // The store notices a leader that vanished without closing its connection (its
            // machine or network gone) within about 25 s instead of the OS default of hours,
            // and releases the lock; without keepalives no other replica could take over.
            client
                .batch_execute(
                    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5;
                     SET tcp_keepalives_count = 3",
                )
                .await?;
            Ok(Some(Leadership { client }))
        } else {
            Ok(None)
        }
    }

    /// Inserts an endpoint in state `resuming` with operation `create`, on the lowest free
    /// pair of ports in `ports` for which `bindable` holds.
    pub async fn insert_endpoint(
        &self,
        new: &NewEndpoint,
        ports: RangeInclusive<u16>,
        bindable: impl Fn(u16) -> bool,
    ) -> Result<EndpointRow, StoreError> {
        for _ in 0..5 {
            let mut client = self.pool.get().await?;
            let cooldown = PORT_COOLDOWN.as_secs_f64();
            let used: Vec<i32> = client
                .query(
                    "SELECT port FROM endpoints UNION SELECT pooler_port FROM endpoints
                     UNION SELECT port FROM released_ports
                           WHERE released_at > now() - make_interval(secs => $1)",
                    &[&cooldown],
                )
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            let mut free = ports
                .clone()
                .filter(|p| !used.contains(&i32::from(*p)) && bindable(*p));
            let (Some(port), Some(pooler_port)) = (free.next(), free.next()) else {
                return Err(StoreError::NoFreePort(ports));
            };
            let tx = client.transaction().await?;
            let railway = new
                .railway
                .as_ref()
                .map(serde_json::to_value)
                .transpose()
                .map_err(|e| StoreError::Build(format!("railway binding: {e}")))?;
            let inserted = tx
                .query_one(
                    "INSERT INTO endpoints (id, state, operation, operation_started_at, driver,
                        port, pooler_port, suspend_timeout_seconds, min_cu, max_cu, current_cu,
                        railway)
                     VALUES ($1, 'resuming', 'create', now(), $2, $3, $4, $5, $6, $7, $6, $8)
                     RETURNING *",
                    &[
                        &new.id,
                        &new.driver,
                        &i32::from(port),
                        &i32::from(pooler_port),
                        &new.suspend_timeout_seconds,
                        &new.min_cu,
                        &new.max_cu,
                        &railway,
                    ],
                )
                .await;
            match inserted {
                Ok(row) => {
                    insert_event(
                        &tx,
                        &new.id,
                        "created",
                        None,
                        Some("resuming"),
                        Some(new.min_cu),
                        None,
                    )
                    .await?;
                    tx.commit().await?;
                    return EndpointRow::from_row(&row);
                }
                Err(e) => {
                    let id_taken = e
                        .as_db_error()
                        .is_some_and(|d| d.constraint() == Some("endpoints_pkey"));
                    match StoreError::from_db(e) {
                        StoreError::Conflict if id_taken => return Err(StoreError::Conflict),
                        // Another replica took one of the ports first: choose again.
                        StoreError::Conflict => continue,
                        other => return Err(other),
                    }
                }
            }
        }
        Err(StoreError::NoFreePort(ports))
    }

    pub async fn endpoint(&self, id: &str) -> Result<Option<EndpointRow>, StoreError> {
        let client = self.pool.get().await?;
        client
            .query_opt("SELECT * FROM endpoints WHERE id = $1", &[&id])
            .await?
            .as_ref()
            .map(EndpointRow::from_row)
            .transpose()
    }

    pub async fn endpoints(&self) -> Result<Vec<EndpointRow>, StoreError> {
        let client = self.pool.get().await?;
        client
            .query("SELECT * FROM endpoints ORDER BY id", &[])
            .await?
            .iter()
            .map(EndpointRow::from_row)
            .collect()
    }

    /// Moves `id` to a new state and records the event, in one transaction. Returns `None`
    /// when the endpoint no longer exists.
    pub async fn transition(
        &self,
        id: &str,
        change: &Transition<'_>,
    ) -> Result<Option<EndpointRow>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let Some((from, cu)) = lock_endpoint(&tx, id).await? else {
            return Ok(None);
        };
        let to = change.to.as_str();
        let operation = change.operation.map(Operation::as_str);
        let row = tx
            .query_one(
                "UPDATE endpoints SET
                    state = $2,
                    operation = $3,
                    operation_started_at = CASE WHEN $3::text IS NULL THEN NULL ELSE now() END,
                    failure = CASE WHEN $2 = 'failed' THEN $4 ELSE NULL END,
                    suspended_at = CASE WHEN $2 = 'suspended' AND state <> 'suspended' THEN now()
                                        WHEN $2 = 'active' THEN NULL
                                        ELSE suspended_at END,
                    last_active = CASE WHEN $2 = 'active' AND state <> 'active' THEN now()
                                       ELSE last_active END,
                    updated_at = now()
                 WHERE id = $1 RETURNING *",
                &[&id, &to, &operation, &change.detail],
            )
            .await?;
        if from != to || change.event != "state" {
            usage::lock_open_run(&tx, id).await?;
            let at = insert_event(
                &tx,
                id,
                change.event,
                Some(&from),
                Some(to),
                Some(cu),
                change.detail,
            )
            .await?;
            usage::meter_transition(&tx, id, change.to, cu, at, change.compute_lost).await?;
        }
        tx.commit().await?;
        EndpointRow::from_row(&row).map(Some)
    }

    /// Records a gateway's activity report: `last_active` moves forward to what each entry
    /// says, and endpoints with open sessions are held awake for `lease`. Returns which of
    /// `ids` are not active (or do not exist).
    pub async fn record_activity(
        &self,
        reports: &[GatewayActivity],
        lease: Duration,
        ids: &[String],
    ) -> Result<ActivityStatus, StoreError> {
        let client = self.pool.get().await?;
        if !reports.is_empty() {
            let ids: Vec<&str> = reports.iter().map(|r| r.endpoint.as_str()).collect();
            let idle_ms: Vec<i64> = reports.iter().map(|r| r.idle_ms).collect();
            let busy: Vec<bool> = reports.iter().map(|r| r.busy).collect();
            let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
            client
                .execute(
                    "UPDATE endpoints e SET
                        last_active = GREATEST(e.last_active,
                            now() - make_interval(secs => r.idle_ms / 1000.0)),
                        held_until = CASE WHEN r.busy
                            THEN GREATEST(e.held_until, now() + make_interval(secs => $4::int8 / 1000.0))
                            ELSE e.held_until END
                     FROM unnest($1::text[], $2::int8[], $3::bool[]) AS r(id, idle_ms, busy)
                     WHERE e.id = r.id",
                    &[&ids, &idle_ms, &busy, &lease_ms],
                )
                .await?;
        }
        let rows = client
            .query(
                "SELECT q.id, e.state IS NOT DISTINCT FROM 'active', e.current_cu,
                        e.railway IS NOT NULL
                 FROM unnest($1::text[]) AS q(id)
                 LEFT JOIN endpoints e ON e.id = q.id",
                &[&ids],
            )
            .await?;
        let mut status = ActivityStatus::default();
        for row in &rows {
            let id: String = row.try_get(0)?;
            if row.try_get(1)? {
                status.active.push((id, row.try_get(2)?, row.try_get(3)?));
            } else {
                status.inactive.push(id);
            }
        }
        Ok(status)
    }

    /// Moves `last_active` forward to `at` (activity the wake service saw itself).
    pub async fn touch(&self, id: &str, at: OffsetDateTime) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE endpoints SET last_active = GREATEST(last_active, $2) WHERE id = $1",
                &[&id, &at],
            )
            .await?;
        Ok(())
    }

    pub async fn update_settings(
        &self,
        id: &str,
        changes: &EndpointChanges,
    ) -> Result<Option<EndpointRow>, StoreError> {
        let client = self.pool.get().await?;
        client
            .query_opt(
                "UPDATE endpoints SET
                    suspend_timeout_seconds = COALESCE($2, suspend_timeout_seconds),
                    min_cu = COALESCE($3, min_cu),
                    max_cu = COALESCE($4, max_cu),
                    updated_at = now()
                 WHERE id = $1 RETURNING *",
                &[
                    &id,
                    &changes.suspend_timeout_seconds,
                    &changes.min_cu,
                    &changes.max_cu,
                ],
            )
            .await?
            .as_ref()
            .map(EndpointRow::from_row)
            .transpose()
    }

    /// Sets the endpoint's size (and, for a fixed size, its range) and records a `resized`
    /// event with `detail`, in one transaction; an active endpoint's metered run ends and a
    /// new one at the new size starts at the event's time. Nothing is recorded when the size
    /// and range are unchanged. `None` when the endpoint no longer exists.
    pub async fn set_size(
        &self,
        id: &str,
        cu: f64,
        range: Option<(f64, f64)>,
        detail: &str,
    ) -> Result<Option<EndpointRow>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let Some((state, from)) = lock_endpoint(&tx, id).await? else {
            return Ok(None);
        };
        let (min, max) = range.unzip();
        let row = tx
            .query_one(
                "UPDATE endpoints SET current_cu = $2, min_cu = COALESCE($3, min_cu),
                        max_cu = COALESCE($4, max_cu), updated_at = now()
                 WHERE id = $1 RETURNING *",
                &[&id, &cu, &min, &max],
            )
            .await?;
        if from != cu {
            usage::lock_open_run(&tx, id).await?;
            let at = insert_event(
                &tx,
                id,
                "resized",
                Some(&state),
                Some(&state),
                Some(cu),
                Some(detail),
            )
            .await?;
            if state == EndpointState::Active.as_str() {
                usage::meter_resize(&tx, id, cu, at).await?;
            }
        }
        tx.commit().await?;
        EndpointRow::from_row(&row).map(Some)
    }

    /// Deletes the endpoint (its roles and databases go with it) and records the event.
    pub async fn delete_endpoint(&self, id: &str) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let deleted = tx
            .query_opt(
                "DELETE FROM endpoints WHERE id = $1
                 RETURNING state, current_cu, port, pooler_port",
                &[&id],
            )
            .await?;
        if let Some(row) = &deleted {
            usage::lock_open_run(&tx, id).await?;
            let from: String = row.try_get(0)?;
            let cu: f64 = row.try_get(1)?;
            let ports = [row.try_get::<_, i32>(2)?, row.try_get::<_, i32>(3)?];
            tx.execute(
                "INSERT INTO released_ports (port, released_at)
                 SELECT unnest($1::int4[]), now()
                 ON CONFLICT (port) DO UPDATE SET released_at = excluded.released_at",
                &[&&ports[..]],
            )
            .await?;
            let at = insert_event(&tx, id, "deleted", Some(&from), None, Some(cu), None).await?;
            usage::close_run(&tx, id, at, false).await?;
        }
        tx.commit().await?;
        Ok(deleted.is_some())
    }

    /// The names of the endpoint's roles (those being created or dropped left out).
    pub async fn roles(&self, endpoint: &str) -> Result<Vec<String>, StoreError> {
        let client = self.pool.get().await?;
        client
            .query(
                "SELECT name FROM roles
                 WHERE endpoint_id = $1 AND pending IS DISTINCT FROM 'create'
                   AND pending IS DISTINCT FROM 'delete'
                 ORDER BY name",
                &[&endpoint],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }

    /// The SCRAM verifier clients log in with (none for a role being created or dropped).
    pub async fn role_secret(
        &self,
        endpoint: &str,
        role: &str,
    ) -> Result<Option<String>, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(
                "SELECT secret FROM roles
                 WHERE endpoint_id = $1 AND name = $2
                   AND pending IS DISTINCT FROM 'create' AND pending IS DISTINCT FROM 'delete'",
                &[&endpoint, &role],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?)
    }

    /// The role's password as sealed (see `password_vault`): `None` when the role is not
    /// settled, `Some(None)` when it was made before passwords were kept.
    pub async fn role_sealed_password(
        &self,
        endpoint: &str,
        role: &str,
    ) -> Result<Option<Option<String>>, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(
                "SELECT sealed_password FROM roles
                 WHERE endpoint_id = $1 AND name = $2 AND pending IS NULL",
                &[&endpoint, &role],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?)
    }

    /// Records `value` for `name` unless one is recorded, and returns the recorded one.
    pub async fn claim_setting(&self, name: &str, value: &str) -> Result<String, StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&name, &value],
            )
            .await?;
        Ok(client
            .query_one("SELECT value FROM settings WHERE name = $1", &[&name])
            .await?
            .try_get(0)?)
    }

    /// Every role of the endpoint as recorded, pending operations included, by name.
    pub async fn role_rows(&self, endpoint: &str) -> Result<Vec<RoleRow>, StoreError> {
        let client = self.pool.get().await?;
        client
            .query(
                "SELECT name, secret, pending, pending_secret, created_at FROM roles
                 WHERE endpoint_id = $1 ORDER BY name",
                &[&endpoint],
            )
            .await?
            .iter()
            .map(RoleRow::from_row)
            .collect()
    }

    /// One role as recorded.
    pub async fn role_row(
        &self,
        endpoint: &str,
        name: &str,
    ) -> Result<Option<RoleRow>, StoreError> {
        let client = self.pool.get().await?;
        client
            .query_opt(
                "SELECT name, secret, pending, pending_secret, created_at FROM roles
                 WHERE endpoint_id = $1 AND name = $2",
                &[&endpoint, &name],
            )
            .await?
            .as_ref()
            .map(RoleRow::from_row)
            .transpose()
    }

    /// Records a role about to be created in Postgres (`pending = 'create'`); `Conflict` when
    /// one of that name is recorded.
    pub async fn insert_role_pending(
        &self,
        endpoint: &str,
        name: &str,
        secret: &str,
        sealed_password: &str,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO roles (endpoint_id, name, secret, sealed_password, pending)
                 VALUES ($1, $2, $3, $4, 'create')",
                &[&endpoint, &name, &secret, &sealed_password],
            )
            .await
            .map_err(StoreError::from_db)?;
        Ok(())
    }

    /// Forgets a role whose create was refused (it existed in Postgres already).
    pub async fn delete_role_pending_create(
        &self,
        endpoint: &str,
        name: &str,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "DELETE FROM roles WHERE endpoint_id = $1 AND name = $2 AND pending = 'create'",
                &[&endpoint, &name],
            )
            .await?;
        Ok(())
    }

    /// Marks a recorded role as being changed: `Some((secret, sealed password))` a new
    /// verifier (`update`), `None` a drop (`delete`). False when the role is not recorded.
    pub async fn mark_role_pending(
        &self,
        endpoint: &str,
        name: &str,
        new_secret: Option<(&str, &str)>,
    ) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let pending = if new_secret.is_some() {
            "update"
        } else {
            "delete"
        };
        let (secret, sealed) = new_secret.unzip();
        let changed = client
            .execute(
                "UPDATE roles SET pending = $3, pending_secret = $4, pending_sealed_password = $5
                 WHERE endpoint_id = $1 AND name = $2",
                &[&endpoint, &name, &pending, &secret, &sealed],
            )
            .await?;
        Ok(changed == 1)
    }

    /// Finishes a role operation once Postgres has it: a create or an update becomes the
    /// role's current verifier; a delete removes the row. An update or a delete is recorded
    /// as a role change, whose id is returned (gateways must drop what they hold for it).
    pub async fn finish_role(&self, endpoint: &str, name: &str) -> Result<Option<i64>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "SELECT pending FROM roles WHERE endpoint_id = $1 AND name = $2 FOR UPDATE",
                &[&endpoint, &name],
            )
            .await?
        else {
            return Ok(None);
        };
        let pending: Option<String> = row.try_get(0)?;
        let change = match pending.as_deref() {
            Some("update") => {
                tx.execute(
                    "UPDATE roles SET secret = pending_secret, pending = NULL,
                         pending_secret = NULL, sealed_password = pending_sealed_password,
                         pending_sealed_password = NULL
                     WHERE endpoint_id = $1 AND name = $2",
                    &[&endpoint, &name],
                )
                .await?;
                Some("password")
            }
            Some("delete") => {
                tx.execute(
                    "DELETE FROM roles WHERE endpoint_id = $1 AND name = $2",
                    &[&endpoint, &name],
                )
                .await?;
                Some("drop")
            }
            _ => {
                tx.execute(
                    "UPDATE roles SET pending = NULL, pending_secret = NULL,
                         pending_sealed_password = NULL
                     WHERE endpoint_id = $1 AND name = $2",
                    &[&endpoint, &name],
                )
                .await?;
                None
            }
        };
        let id = match change {
            Some(kind) => Some(
                tx.query_one(
                    "INSERT INTO role_changes (endpoint_id, role, kind) VALUES ($1, $2, $3)
                     RETURNING id",
                    &[&endpoint, &name, &kind],
                )
                .await?
                .try_get(0)?,
            ),
            None => None,
        };
        tx.commit().await?;
        Ok(id)
    }

    /// The endpoints with a role operation a crash left unfinished.
    pub async fn endpoints_with_pending_roles(&self) -> Result<Vec<String>, StoreError> {
        let client = self.pool.get().await?;
        client
            .query(
                "SELECT DISTINCT endpoint_id FROM roles WHERE pending IS NOT NULL ORDER BY 1",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }

    /// Sets or clears [`EndpointRow::sync_needed`].
    pub async fn set_sync_needed(&self, id: &str, needed: bool) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE endpoints SET sync_needed = $2 WHERE id = $1",
                &[&id, &needed],
            )
            .await?;
        Ok(())
    }

    /// Records a gateway's report (`id`, its interval, the newest role change it applied) and
    /// returns what it must apply next: the role changes after `applied` (none when it has
    /// applied nothing yet: it then drops everything it holds), the newest id, and whether
    /// there were more than one reply carries.
    pub async fn gateway_report(
        &self,
        id: &str,
        interval: Duration,
        applied: Option<i64>,
    ) -> Result<RoleChanges, StoreError> {
        let client = self.pool.get().await?;
        let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        let forget = GATEWAY_FORGET.as_secs_f64();
        client
            .execute(
                "WITH forgotten AS (
                    DELETE FROM gateways WHERE seen_at < now() - make_interval(secs => $4))
                 INSERT INTO gateways (id, seen_at, interval_ms, role_changes_applied)
                 VALUES ($1, now(), $2, $3)
                 ON CONFLICT (id) DO UPDATE SET seen_at = now(), interval_ms = excluded.interval_ms,
                     role_changes_applied = excluded.role_changes_applied",
                &[&id, &interval_ms, &applied, &forget],
            )
            .await?;
        let cursor: i64 = client
            .query_one("SELECT COALESCE(max(id), 0) FROM role_changes", &[])
            .await?
            .try_get(0)?;
        let Some(applied) = applied else {
            return Ok(RoleChanges {
                changes: Vec::new(),
                cursor,
                truncated: false,
            });
        };
        let rows = client
            .query(
                "SELECT id, endpoint_id, role FROM role_changes
                 WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3",
                &[&applied, &cursor, &(MAX_ROLE_CHANGES + 1)],
            )
            .await?;
        let truncated = rows.len() as i64 > MAX_ROLE_CHANGES;
        let changes = if truncated {
            Vec::new()
        } else {
            rows.iter()
                .map(|r| {
                    Ok(wake_api::proxy::RoleChange {
                        id: r.try_get(0)?,
                        endpoint_id: r.try_get(1)?,
                        role: r.try_get(2)?,
                    })
                })
                .collect::<Result<_, StoreError>>()?
        };
        Ok(RoleChanges {
            changes,
            cursor,
            truncated,
        })
    }

    /// The longest report interval of the gateways that reported within three of their
    /// intervals (they are live); `None` when none did.
    pub async fn longest_live_report_interval(&self) -> Result<Option<Duration>, StoreError> {
        let client = self.pool.get().await?;
        let longest: Option<i64> = client
            .query_one(
                "SELECT max(interval_ms) FROM gateways
                 WHERE seen_at > now() - make_interval(secs => 3 * interval_ms / 1000.0)",
                &[],
            )
            .await?
            .try_get(0)?;
        Ok(longest.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
    }

    /// How many gateways reported within three of their intervals (they are live) and have
    /// not yet applied role change `id`.
    pub async fn gateways_behind(&self, id: i64) -> Result<i64, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_one(
                "SELECT count(*) FROM gateways
                 WHERE seen_at > now() - make_interval(secs => 3 * interval_ms / 1000.0)
                   AND COALESCE(role_changes_applied, -1) < $1",
                &[&id],
            )
            .await?
            .try_get(0)?)
    }

    pub async fn databases(&self, endpoint: &str) -> Result<Vec<Database>, StoreError> {
        let client = self.pool.get().await?;
        client
            .query(
                "SELECT name, owner FROM databases WHERE endpoint_id = $1 ORDER BY name",
                &[&endpoint],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(Database {
                    name: r.try_get(0)?,
                    owner: r.try_get(1)?,
                })
            })
            .collect()
    }

    /// The endpoint's databases, oldest first, with when each was made and whether it is a
    /// branch.
    pub async fn database_rows(&self, endpoint: &str) -> Result<Vec<DatabaseRow>, StoreError> {
        let client = self.pool.get().await?;
        client
            .query(
                "SELECT d.name, d.owner, d.created_at, b.name IS NOT NULL
                 FROM databases d LEFT JOIN branches b USING (endpoint_id, name)
                 WHERE d.endpoint_id = $1 ORDER BY d.created_at, d.name",
                &[&endpoint],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(DatabaseRow {
                    name: r.try_get(0)?,
                    owner: r.try_get(1)?,
                    created_at: r.try_get(2)?,
                    branch: r.try_get(3)?,
                })
            })
            .collect()
    }

    pub async fn insert_database(
        &self,
        endpoint: &str,
        name: &str,
        owner: &str,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO databases (endpoint_id, name, owner) VALUES ($1, $2, $3)",
                &[&endpoint, &name, &owner],
            )
            .await
            .map_err(StoreError::from_db)?;
        Ok(())
    }

    /// The newest `limit` lifecycle events of one endpoint, oldest first.
    pub async fn events(
        &self,
        endpoint: &str,
        limit: i64,
    ) -> Result<Vec<ComputeEvent>, StoreError> {
        let client = self.pool.get().await?;
        client
            .query(
                "SELECT at, kind, from_state, to_state, cu, detail FROM (
                    SELECT * FROM compute_events WHERE endpoint_id = $1
                    ORDER BY id DESC LIMIT $2) newest
                 ORDER BY id",
                &[&endpoint, &limit],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(ComputeEvent {
                    at: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    from_state: r.try_get(2)?,
                    to_state: r.try_get(3)?,
                    cu: r.try_get(4)?,
                    detail: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Marks a one-time action done; false when it already was.
    pub async fn bootstrap_once(&self, name: &str) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let inserted = client
            .execute(
                "INSERT INTO bootstrap (name) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&name],
            )
            .await?;
        Ok(inserted == 1)
    }

    /// Whether a one-time action was done.
    pub async fn bootstrapped(&self, name: &str) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt("SELECT 1 FROM bootstrap WHERE name = $1", &[&name])
            .await?
            .is_some())
    }

    /// Closes every pooled connection (before the embedded store is stopped).
    pub fn close(&self) {
        self.pool.close();
        self.locks.close();
    }

    /// A cheap round trip, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.execute("SELECT 1", &[]).await?;
        Ok(())
    }
}

/// An endpoint's JWT login material as recorded (see [`crate::jwt`]).
#[derive(Clone)]
pub struct JwtMaterial {
    pub kid: i32,
    /// The claims key (32 bytes).
    pub key: Vec<u8>,
    pub roles: Vec<RoleLogin>,
}

impl std::fmt::Debug for JwtMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtMaterial")
            .field("kid", &self.kid)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// A rule to record with the material it needs (made by the caller, kept only where the
/// endpoint has none yet).
pub struct NewJwksRule<'a> {
    pub rule: &'a JwksSettings,
    /// The endpoint's claims key, if it has none.
    pub key: Vec<u8>,
    /// Logins for the rule's roles; those the endpoint has already are kept as they are.
    pub roles: Vec<RoleLogin>,
}

/// JWKS rules and JWT login material.
impl Store {
    /// The endpoint's rules, oldest first.
    pub async fn jwks_rules(&self, endpoint: &str) -> Result<Vec<JwksSettings>, StoreError> {
        let client = self.pool.get().await?;
        client
            .query(
                "SELECT settings FROM jwks_rules WHERE endpoint_id = $1 ORDER BY position",
                &[&endpoint],
            )
            .await?
            .iter()
            .map(|r| {
                let value: serde_json::Value = r.try_get(0)?;
                serde_json::from_value(value).map_err(|e| StoreError::Build(e.to_string()))
            })
            .collect()
    }

    /// Records a rule, and the material the endpoint does not have yet, and marks the
    /// endpoint for a sync (which prepares its compute), in one transaction, with a role change
    /// (kind `jwks`) for each role the rule names; returns the newest change's id.
    pub async fn insert_jwks_rule(
        &self,
        endpoint: &str,
        new: &NewJwksRule<'_>,
    ) -> Result<i64, StoreError> {
        let settings =
            serde_json::to_value(new.rule).map_err(|e| StoreError::Build(e.to_string()))?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO jwt_keys (endpoint_id, kid, key) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&endpoint, &crate::jwt::FIRST_KID, &new.key],
        )
        .await?;
        for role in &new.roles {
            tx.execute(
                "INSERT INTO jwt_roles (endpoint_id, name, secret, client_key)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&endpoint, &role.name, &role.secret, &role.client_key],
            )
            .await?;
        }
        tx.execute(
            "INSERT INTO jwks_rules (endpoint_id, id, settings) VALUES ($1, $2, $3)",
            &[&endpoint, &new.rule.id, &settings],
        )
        .await
        .map_err(StoreError::from_db)?;
        tx.execute(
            "UPDATE endpoints SET sync_needed = true, updated_at = now() WHERE id = $1",
            &[&endpoint],
        )
        .await?;
        let change = jwks_changes(&tx, endpoint, &new.rule.role_names).await?;
        tx.commit().await?;
        Ok(change)
    }

    /// Forgets a rule, recording a role change for each role it named (see
    /// [`Self::insert_jwks_rule`]); `None` when the endpoint has no rule of that id. The
    /// material stays.
    pub async fn delete_jwks_rule(
        &self,
        endpoint: &str,
        id: &str,
    ) -> Result<Option<i64>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "DELETE FROM jwks_rules WHERE endpoint_id = $1 AND id = $2 RETURNING settings",
                &[&endpoint, &id],
            )
            .await?
        else {
            return Ok(None);
        };
        let settings: serde_json::Value = row.try_get(0)?;
        let roles: Vec<String> = settings["role_names"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let change = jwks_changes(&tx, endpoint, &roles).await?;
        tx.commit().await?;
        Ok(Some(change))
    }

    /// The names of the endpoint's JWT roles (also those no rule names any more).
    pub async fn jwt_role_names(&self, endpoint: &str) -> Result<Vec<String>, StoreError> {
        let client = self.pool.get().await?;
        client
            .query(
                "SELECT name FROM jwt_roles WHERE endpoint_id = $1 ORDER BY name",
                &[&endpoint],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }

    /// The endpoint's claims key and JWT role logins; `None` before its first rule.
    pub async fn jwt_material(&self, endpoint: &str) -> Result<Option<JwtMaterial>, StoreError> {
        let client = self.pool.get().await?;
        let Some(key) = client
            .query_opt(
                "SELECT kid, key FROM jwt_keys WHERE endpoint_id = $1 ORDER BY kid DESC LIMIT 1",
                &[&endpoint],
            )
            .await?
        else {
            return Ok(None);
        };
        let roles = client
            .query(
                "SELECT name, secret, client_key FROM jwt_roles WHERE endpoint_id = $1
                 ORDER BY name",
                &[&endpoint],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(RoleLogin {
                    name: r.try_get(0)?,
                    secret: r.try_get(1)?,
                    client_key: r.try_get(2)?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(JwtMaterial {
            kid: key.try_get(0)?,
            key: key.try_get(1)?,
            roles,
        }))
    }
}

/// Locks the endpoint's row for the transaction: its state and size, or None when it is gone.
async fn lock_endpoint(
    tx: &tokio_postgres::Transaction<'_>,
    id: &str,
) -> Result<Option<(String, f64)>, StoreError> {
    let Some(row) = tx
        .query_opt(
            "SELECT state, current_cu FROM endpoints WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some((row.try_get(0)?, row.try_get(1)?)))
}

async fn insert_event(
    tx: &tokio_postgres::Transaction<'_>,
    endpoint: &str,
    kind: &str,
    from: Option<&str>,
    to: Option<&str>,
    cu: Option<f64>,
    detail: Option<&str>,
) -> Result<OffsetDateTime, StoreError> {
    Ok(tx
        .query_one(
            "INSERT INTO compute_events (endpoint_id, kind, from_state, to_state, cu, detail)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING at",
            &[&endpoint, &kind, &from, &to, &cu, &detail],
        )
        .await?
        .try_get(0)?)
}

/// Records a `jwks` role change for each of `roles` (a rule naming them came or went), so
/// gateways drop the endpoint's cached rules; returns the newest change's id.
async fn jwks_changes(
    tx: &tokio_postgres::Transaction<'_>,
    endpoint: &str,
    roles: &[String],
) -> Result<i64, StoreError> {
    let mut newest = 0;
    for role in roles {
        newest = tx
            .query_one(
                "INSERT INTO role_changes (endpoint_id, role, kind) VALUES ($1, $2, 'jwks')
                 RETURNING id",
                &[&endpoint, role],
            )
            .await?
            .try_get(0)?;
    }
    Ok(newest)
}
