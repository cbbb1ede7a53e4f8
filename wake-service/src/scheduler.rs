//! The suspend scheduler: scale-to-zero. Runs on the leader only.
//!
//! Two loops:
//!
//! * **Idle check** (every `check_interval`, 500 ms by default, as Neon's compute_ctl polls):
//!   for each active endpoint, the time of its last activity is the latest of
//!   - what gateways reported (`last_active`, and a lease while they hold sessions open:
//!     `held_until`, see `POST /proxy/api/v1/activity`);
//!   - what Postgres shows: a client backend that is not idle (running a query, idle in
//!     transaction, logging in) or an autovacuum worker means *now*, else the latest
//!     `state_change` of the idle ones; a change of `sessions` or `active_time` in
//!     `pg_stat_database` (databases other than `postgres` and the templates, as compute_ctl
//!     counts) means now;
//!   - what PgBouncer shows: a client waiting, a server connection in a transaction, or a
//!     change of its transaction count means now.
//!
//!   The superuser's own sessions (this service's, PgBouncer's auth lookups) never count.
//!   An endpoint idle for its `suspend_timeout_seconds` (-1: never) and not held by a
//!   gateway is suspended ([`SuspendRequest::Idle`], which looks once more under PgBouncer's
//!   `PAUSE` and gives up if anything moved).
//! * **Pooler watch** (every `pooler_interval`, 100 ms by default): a suspended endpoint
//!   whose PgBouncer has a client waiting (a client that connected to the pooler directly;
//!   `PAUSE` holds it) is woken, and `RESUME` releases the client.
//!
//! Every suspend and wake runs in a task of its own (so a slow one never stalls the loops),
//! at most one per endpoint at a time, tracked so that shutdown waits for them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wake_api::admin::EndpointState;

use crate::lifecycle::{held_at, Computes, LifecycleError, SuspendRequest, WakeTrigger};
use crate::store::EndpointRow;

/// How often the scheduler looks.
#[derive(Clone, Copy, Debug)]
pub struct SchedulerConfig {
    pub check_interval: Duration,
    pub pooler_interval: Duration,
}

/// `last_active` is written back to the store when it moved by at least this much.
const PERSIST_STEP: time::Duration = time::Duration::seconds(1);

/// What the idle check remembers about one active endpoint between rounds.
struct Watch {
    /// A superuser connection, kept between rounds (a suspend closes it).
    admin: Option<tokio_postgres::Client>,
    /// `pg_stat_database` sums: sessions, active_time.
    counters: Option<(i64, f64)>,
    /// PgBouncer's transaction count.
    transactions: Option<u64>,
    last_active: OffsetDateTime,
    persisted: Option<OffsetDateTime>,
}

/// Runs both loops until `shutdown`, then waits for the suspends and wakes they started.
pub async fn run(computes: Arc<Computes>, config: SchedulerConfig, shutdown: CancellationToken) {
    let tasks = TaskTracker::new();
    let busy = Arc::new(Mutex::new(HashSet::new()));
    tracing::info!(
        check_ms = config.check_interval.as_millis(),
        pooler_ms = config.pooler_interval.as_millis(),
        "suspend scheduler running"
    );
    tokio::join!(
        idle_loop(&computes, config, &shutdown, &tasks, &busy),
        pooler_loop(&computes, config, &shutdown, &tasks, &busy),
    );
    tasks.close();
    tasks.wait().await;
    tracing::info!("suspend scheduler stopped");
}

/// Endpoints with a suspend or wake of the scheduler's in progress.
type Busy = Arc<Mutex<HashSet<String>>>;

/// Runs `work` for `id` in a tracked task unless one runs already.
fn spawn_for<F>(tasks: &TaskTracker, busy: &Busy, id: &str, work: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    {
        let mut set = busy.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(id.to_owned()) {
            return;
        }
    }
    let busy = busy.clone();
    let id = id.to_owned();
    tasks.spawn(async move {
        work.await;
        busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    });
}

fn in_progress(busy: &Busy, id: &str) -> bool {
    busy.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
}

async fn idle_loop(
    computes: &Arc<Computes>,
    config: SchedulerConfig,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
    busy: &Busy,
) {
    let mut watches: HashMap<String, Watch> = HashMap::new();
    let mut ticker = tokio::time::interval(config.check_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let rows = match computes.store().endpoints().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "scheduler cannot read endpoints");
                continue;
            }
        };
        let watched =
            |row: &EndpointRow| row.state == EndpointState::Active && row.operation.is_none();
        watches.retain(|id, _| rows.iter().any(|r| &r.id == id && watched(r)));
        for row in rows.iter().filter(|r| watched(r)) {
            if in_progress(busy, &row.id) {
                continue;
            }
            let now = OffsetDateTime::now_utc();
            let watch = watches.entry(row.id.clone()).or_insert_with(|| Watch {
                admin: None,
                counters: None,
                transactions: None,
                last_active: row.last_active.unwrap_or(now),
                persisted: row.last_active,
            });
            let Some(timeout) = idle_for_suspend(computes, row, watch, now).await else {
                continue;
            };
            let computes = computes.clone();
            let id = row.id.clone();
            spawn_for(tasks, busy, &row.id, async move {
                match computes.suspend(&id, SuspendRequest::Idle(timeout)).await {
                    Ok(_) => {}
                    Err(LifecycleError::Conflict(why)) => {
                        tracing::debug!(endpoint = %id, why = %why, "idle suspend not done");
                    }
                    Err(e) => tracing::warn!(endpoint = %id, error = %e, "idle suspend failed"),
                }
            });
        }
    }
}

/// One look at an active endpoint: its latest activity (what the compute shows, what
/// gateways reported) is recorded, and `Some(timeout)` when it has been idle for its suspend
/// timeout and no gateway lease holds it.
async fn idle_for_suspend(
    computes: &Computes,
    row: &EndpointRow,
    watch: &mut Watch,
    now: OffsetDateTime,
) -> Option<Duration> {
    if let Some(seen) = observe(computes, row, watch).await {
        watch.last_active = watch.last_active.max(seen);
    }
    if let Some(reported) = row.last_active {
        watch.last_active = watch.last_active.max(reported);
    }
    let last_active = watch.last_active.min(now);
    if watch
        .persisted
        .is_none_or(|p| last_active - p >= PERSIST_STEP)
    {
        match computes.store().touch(&row.id, last_active).await {
            Ok(()) => watch.persisted = Some(last_active),
            Err(e) => {
                tracing::warn!(endpoint = %row.id, error = %e, "cannot record activity")
            }
        }
    }
    // -1: never.
    let timeout = Duration::from_secs(u64::try_from(row.suspend_timeout_seconds).ok()?);
    let idle_for = Duration::try_from(now - last_active).unwrap_or_default();
    if idle_for < timeout || held_at(row, now) {
        return None;
    }
    // The suspend looks at Postgres again itself; this connection would only be one more
    // session for its shutdown to close.
    watch.admin = None;
    watch.counters = None;
    tracing::info!(endpoint = %row.id, idle_s = idle_for.as_secs_f64(), "endpoint idle; suspending");
    Some(timeout)
}

/// Whether PgBouncer shows activity: waiting clients, busy servers, or transactions since
/// the last look.
async fn pooler_busy(computes: &Computes, row: &EndpointRow, watch: &mut Watch) -> bool {
    match computes.driver().pooler_stats(&Computes::spec(row)).await {
        Ok(Some(stats)) => {
            let busy = stats.clients_waiting > 0
                || stats.servers_active > 0
                || watch
                    .transactions
                    .is_some_and(|before| before != stats.transactions);
            watch.transactions = Some(stats.transactions);
            busy
        }
        Ok(None) => false,
        Err(e) => {
            tracing::debug!(endpoint = %row.id, error = %e, "cannot read PgBouncer stats");
            false
        }
    }
}

/// What the compute itself shows: `Some(time)` of the latest activity it reveals.
async fn observe(
    computes: &Computes,
    row: &EndpointRow,
    watch: &mut Watch,
) -> Option<OffsetDateTime> {
    let spec = Computes::spec(row);
    let now = OffsetDateTime::now_utc();
    let mut seen: Option<OffsetDateTime> = None;
    let mut saw = |at: OffsetDateTime| seen = Some(seen.map_or(at, |s| s.max(at)));

    if pooler_busy(computes, row, watch).await {
        saw(now);
    }

    if watch.admin.as_ref().is_none_or(|c| c.is_closed()) {
        watch.admin = match computes.driver().admin(&spec).await {
            Ok(client) => Some(client),
            Err(e) => {
                tracing::debug!(endpoint = %row.id, error = %e, "cannot reach Postgres to watch it");
                return seen;
            }
        };
    }
    let client = watch.admin.as_ref()?;
    let result = client
        .query_one(
            "SELECT
               (SELECT count(*) FROM pg_stat_activity
                 WHERE pid <> pg_backend_pid()
                   AND (backend_type = 'autovacuum worker'
                        OR (backend_type = 'client backend'
                            AND usename IS DISTINCT FROM current_user
                            AND state IS DISTINCT FROM 'idle'))),
               (SELECT extract(epoch FROM now() - max(state_change))::float8
                  FROM pg_stat_activity
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                   AND usename IS DISTINCT FROM current_user),
               (SELECT coalesce(sum(sessions), 0)::int8 FROM pg_stat_database
                 WHERE datname NOT IN ('postgres', 'template0', 'template1')),
               (SELECT coalesce(sum(active_time), 0)::float8 FROM pg_stat_database
                 WHERE datname NOT IN ('postgres', 'template0', 'template1'))",
            &[],
        )
        .await;
    let row_values = match result {
        Ok(values) => values,
        Err(e) => {
            tracing::debug!(endpoint = %row.id, error = %e, "activity query failed");
            watch.admin = None;
            return seen;
        }
    };
    let busy: i64 = row_values.try_get(0).unwrap_or(0);
    let idle_seconds: Option<f64> = row_values.try_get(1).unwrap_or(None);
    let counters: (i64, f64) = (
        row_values.try_get(2).unwrap_or(0),
        row_values.try_get(3).unwrap_or(0.0),
    );
    if busy > 0 {
        saw(now);
    }
    if let Some(age) = idle_seconds.filter(|a| a.is_finite() && *a >= 0.0) {
        saw(now - time::Duration::seconds_f64(age));
    }
    if watch.counters.is_some_and(|before| before != counters) {
        saw(now);
    }
    watch.counters = Some(counters);
    seen
}

async fn pooler_loop(
    computes: &Arc<Computes>,
    config: SchedulerConfig,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
    busy: &Busy,
) {
    let mut ticker = tokio::time::interval(config.pooler_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Ok(rows) = computes.store().endpoints().await else {
            continue;
        };
        for row in rows
            .iter()
            .filter(|r| r.state == EndpointState::Suspended && r.operation.is_none())
        {
            if in_progress(busy, &row.id) {
                continue;
            }
            let stats = computes.driver().pooler_stats(&Computes::spec(row)).await;
            let waiting = match stats {
                Ok(Some(stats)) => stats.clients_waiting,
                Ok(None) => 0,
                Err(e) => {
                    tracing::debug!(endpoint = %row.id, error = %e, "cannot read PgBouncer stats");
                    0
                }
            };
            if waiting == 0 {
                continue;
            }
            tracing::info!(endpoint = %row.id, waiting, "clients wait in PgBouncer; resuming");
            let computes = computes.clone();
            let id = row.id.clone();
            spawn_for(tasks, busy, &row.id, async move {
                match computes.wake_detached(&id, WakeTrigger::Pooler).await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(endpoint = %id, error = %e, "pooler wake failed")
                    }
                    None => tracing::warn!(endpoint = %id, "pooler wake timed out"),
                }
            });
        }
    }
}
