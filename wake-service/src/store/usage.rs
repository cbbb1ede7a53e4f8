//! Metering in the store: compute runs (opened and closed by the same transactions that move
//! an endpoint to and from `active`), gateway traffic (applied once per report id), storage
//! samples, and the consumption events a checkpoint writes from them.
//!
//! Events are written only by [`Store::checkpoint`], which locks `usage_events` first: one
//! writer at a time, so `seq` grows in commit order and paging by it is stable. Incremental
//! compute events telescope: each carries `round(endpoint's exported total after it) −
//! round(total before it)` (exact `numeric` totals in `compute_exported`), so an endpoint's
//! events add up to its rounded total, not to the sum of each slice's rounding: many short
//! runs are not under-counted.

use time::OffsetDateTime;
use tokio_postgres::Transaction;
use wake_api::admin::EndpointState;
use wake_api::proxy::UsageReport;
use wake_api::usage::{EventKind, Usage, UsageEvent};

use super::{Store, StoreError};

/// Locks the endpoint's open run, if any, before a state change takes its time: a checkpoint
/// then either finished before (its `metered_to` is earlier than the change) or waits and sees
/// the run as the change left it.
pub(super) async fn lock_open_run(tx: &Transaction<'_>, id: &str) -> Result<(), StoreError> {
    tx.execute(
        "SELECT 1 FROM compute_runs WHERE endpoint_id = $1 AND stopped_at IS NULL FOR UPDATE",
        &[&id],
    )
    .await?;
    Ok(())
}

/// Opens or closes the endpoint's compute run for a state change recorded at `at`.
pub(super) async fn meter_transition(
    tx: &Transaction<'_>,
    id: &str,
    to: EndpointState,
    cu: f64,
    at: OffsetDateTime,
    compute_lost: bool,
) -> Result<(), StoreError> {
    match to {
        EndpointState::Active => {
            if compute_lost {
                close_run(tx, id, at, true).await?;
            }
            open_run(tx, id, cu, at).await?;
        }
        EndpointState::Suspended | EndpointState::Failed => {
            close_run(tx, id, at, compute_lost).await?;
        }
        _ => {}
    }
    Ok(())
}

/// A resize of an active compute at `at`: its run ends and one at `cu` starts, so CU-seconds
/// change at the moment the size does.
pub(super) async fn meter_resize(
    tx: &Transaction<'_>,
    id: &str,
    cu: f64,
    at: OffsetDateTime,
) -> Result<(), StoreError> {
    close_run(tx, id, at, false).await?;
    open_run(tx, id, cu, at).await
}

/// Opens a run at `cu` from `at`, unless the endpoint has one open.
async fn open_run(
    tx: &Transaction<'_>,
    id: &str,
    cu: f64,
    at: OffsetDateTime,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO compute_runs (endpoint_id, cu, started_at, metered_to)
         VALUES ($1, $2, $3, $3)
         ON CONFLICT (endpoint_id) WHERE stopped_at IS NULL DO NOTHING",
        &[&id, &cu, &at],
    )
    .await?;
    Ok(())
}

/// Ends the endpoint's open run at `at`, or at its last checkpoint when the compute was found
/// dead (`lost`: nothing says it ran any longer).
pub(super) async fn close_run(
    tx: &Transaction<'_>,
    id: &str,
    at: OffsetDateTime,
    lost: bool,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE compute_runs SET stopped_at = CASE WHEN $3 THEN metered_to
                                                   ELSE GREATEST($2, metered_to) END
         WHERE endpoint_id = $1 AND stopped_at IS NULL",
        &[&id, &at, &lost],
    )
    .await?;
    Ok(())
}

/// What applying a usage report did.
#[derive(Debug, Default)]
pub struct AppliedUsage {
    /// False when the report id had been applied before (nothing counted now).
    pub fresh: bool,
    /// Endpoints of the report that do not exist: not stored.
    pub unknown: Vec<String>,
    /// What was stored now, summed over endpoints.
    pub stored: Usage,
}

/// What one checkpoint exported.
#[derive(Debug, Default)]
pub struct Checkpoint {
    pub events: u64,
    pub active_seconds: u64,
    pub compute_unit_seconds: u64,
    pub egress_bytes: u64,
}

/// One endpoint's usage over `[start, end)`.
#[derive(Debug)]
pub struct UsageRow {
    pub endpoint_id: String,
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    pub peak_cu: f64,
    pub usage: Usage,
}

impl Store {
    /// Stores a gateway's usage report once per report id, for the endpoints that exist.
    /// Entries must name distinct endpoints (the caller checks).
    pub async fn apply_usage(&self, report: &UsageReport) -> Result<AppliedUsage, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let ids: Vec<&str> = report
            .endpoints
            .iter()
            .map(|e| e.endpoint_id.as_str())
            .collect();
        let known: Vec<String> = tx
            .query("SELECT id FROM endpoints WHERE id = ANY($1)", &[&ids])
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let mut applied = AppliedUsage::default();
        let (entries, unknown): (Vec<_>, Vec<_>) = report
            .endpoints
            .iter()
            .partition(|e| known.contains(&e.endpoint_id));
        applied.unknown = unknown.iter().map(|e| e.endpoint_id.clone()).collect();
        applied.fresh = tx
            .execute(
                "INSERT INTO usage_reports (id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&report.report_id],
            )
            .await?
            == 1;
        if !applied.fresh || entries.is_empty() {
            tx.commit().await?;
            return Ok(applied);
        }
        let column = |f: fn(&wake_api::proxy::EndpointTraffic) -> u64| -> Vec<i64> {
            entries
                .iter()
                .map(|e| i64::try_from(f(e)).unwrap_or(i64::MAX))
                .collect()
        };
        let ids: Vec<&str> = entries.iter().map(|e| e.endpoint_id.as_str()).collect();
        let (ingress, egress) = (column(|e| e.ingress_bytes), column(|e| e.egress_bytes));
        let (queries, sessions) = (column(|e| e.queries), column(|e| e.sessions));
        let connections = column(|e| e.connections);
        tx.execute(
            "INSERT INTO traffic_hours AS t
                 (endpoint_id, hour, ingress_bytes, egress_bytes, queries, sessions, connections)
             SELECT r.id, date_trunc('hour', now(), 'UTC'), r.ingress, r.egress, r.queries,
                    r.sessions, r.connections
             FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[])
                 AS r(id, ingress, egress, queries, sessions, connections)
             ON CONFLICT (endpoint_id, hour) DO UPDATE SET
                 ingress_bytes = t.ingress_bytes + excluded.ingress_bytes,
                 egress_bytes = t.egress_bytes + excluded.egress_bytes,
                 queries = t.queries + excluded.queries,
                 sessions = t.sessions + excluded.sessions,
                 connections = t.connections + excluded.connections",
            &[&ids, &ingress, &egress, &queries, &sessions, &connections],
        )
        .await?;
        tx.execute(
            "INSERT INTO traffic_unexported AS t (endpoint_id, since, egress_bytes)
             SELECT r.id, now(), r.egress FROM unnest($1::text[], $2::int8[]) AS r(id, egress)
             WHERE r.egress > 0
             ON CONFLICT (endpoint_id) DO UPDATE SET
                 egress_bytes = t.egress_bytes + excluded.egress_bytes",
            &[&ids, &egress],
        )
        .await?;
        tx.commit().await?;
        for e in &entries {
            applied.stored.ingress_bytes += e.ingress_bytes;
            applied.stored.egress_bytes += e.egress_bytes;
            applied.stored.queries += e.queries;
            applied.stored.sessions += e.sessions;
            applied.stored.connections += e.connections;
        }
        Ok(applied)
    }

    /// Forgets applied report ids older than `days` (a gateway resends for minutes, not days).
    pub async fn forget_usage_reports(&self, days: i32) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                "DELETE FROM usage_reports WHERE applied_at < now() - make_interval(days => $1)",
                &[&days],
            )
            .await?)
    }

    /// Records a storage sample (bytes of the endpoint's databases, now).
    pub async fn record_storage(&self, endpoint: &str, bytes: i64) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO storage_samples (endpoint_id, bytes) VALUES ($1, $2)",
                &[&endpoint, &bytes],
            )
            .await?;
        Ok(())
    }

    /// Turns what was metered since the last checkpoint into consumption events, in one
    /// transaction: compute runs up to now (or their end), egress applied since, and storage
    /// samples not yet exported.
    pub async fn checkpoint(&self) -> Result<Checkpoint, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute("LOCK TABLE usage_events IN EXCLUSIVE MODE")
            .await?;
        let mut done = Checkpoint::default();
        for row in tx.query(CHECKPOINT_COMPUTE, &[]).await? {
            let metric: String = row.try_get(0)?;
            let value: i64 = row.try_get(1)?;
            let count: i64 = row.try_get(2)?;
            let value = u64::try_from(value).unwrap_or(0);
            done.events += u64::try_from(count).unwrap_or(0);
            match metric.as_str() {
                "active_time_seconds" => done.active_seconds += value,
                _ => done.compute_unit_seconds += value,
            }
        }
        let row = tx.query_one(CHECKPOINT_TRAFFIC, &[]).await?;
        done.events += u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0);
        done.egress_bytes = u64::try_from(row.try_get::<_, i64>(1)?).unwrap_or(0);
        let storage = tx.execute(CHECKPOINT_STORAGE, &[]).await?;
        done.events += storage;
        tx.commit().await?;
        Ok(done)
    }

    /// Consumption events after `after` (a `seq`), oldest first, at most `limit`, with the
    /// `seq` of each.
    pub async fn usage_events(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, UsageEvent)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT seq, idempotency_key, endpoint_id, metric, kind, start_time, stop_time,
                        at, value
                 FROM usage_events WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &limit],
            )
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// The `seq` of the newest event (0 when there is none).
    pub async fn last_event_seq(&self) -> Result<i64, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_one("SELECT COALESCE(max(seq), 0) FROM usage_events", &[])
            .await?
            .try_get(0)?)
    }

    /// The `seq` of the last event the push sink delivered.
    pub async fn sink_delivered(&self) -> Result<i64, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_one("SELECT delivered FROM usage_sink WHERE id = 1", &[])
            .await?
            .try_get(0)?)
    }

    /// Records that the push sink delivered everything up to `seq` (never moves back).
    pub async fn set_sink_delivered(&self, seq: i64) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE usage_sink SET delivered = GREATEST(delivered, $1) WHERE id = 1",
                &[&seq],
            )
            .await?;
        Ok(())
    }

    /// Usage of `endpoints` (all with usage in the range, when `None`) in buckets of `step`
    /// seconds from `from` to `to` (both on bucket boundaries). Storage between samples
    /// carries the last sample forward, for endpoints that still exist.
    pub async fn usage(
        &self,
        endpoints: Option<&[String]>,
        from: OffsetDateTime,
        to: OffsetDateTime,
        step: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let client = self.pool.get().await?;
        let step = step as f64;
        let rows = client
            .query(USAGE, &[&endpoints, &from, &to, &step])
            .await?;
        rows.iter().map(usage_from_row).collect()
    }
}

fn event_from_row(row: &tokio_postgres::Row) -> Result<(i64, UsageEvent), StoreError> {
    let kind: String = row.try_get(4)?;
    let kind = if kind == "absolute" {
        EventKind::Absolute {
            time: row.try_get(7)?,
        }
    } else {
        EventKind::Incremental {
            start_time: row.try_get(5)?,
            stop_time: row.try_get(6)?,
        }
    };
    let value: i64 = row.try_get(8)?;
    Ok((
        row.try_get(0)?,
        UsageEvent {
            kind,
            idempotency_key: row.try_get(1)?,
            endpoint_id: row.try_get(2)?,
            metric: row.try_get(3)?,
            value: u64::try_from(value).unwrap_or(0),
        },
    ))
}

fn usage_from_row(row: &tokio_postgres::Row) -> Result<UsageRow, StoreError> {
    let count = |i: usize| -> Result<u64, StoreError> {
        Ok(u64::try_from(row.try_get::<_, i64>(i)?).unwrap_or(0))
    };
    let storage = |i: usize| -> Result<Option<u64>, StoreError> {
        Ok(row
            .try_get::<_, Option<i64>>(i)?
            .map(|b| u64::try_from(b).unwrap_or(0)))
    };
    Ok(UsageRow {
        endpoint_id: row.try_get(0)?,
        start: row.try_get(1)?,
        end: row.try_get(2)?,
        peak_cu: row.try_get(3)?,
        usage: Usage {
            active_seconds: row.try_get(4)?,
            compute_unit_seconds: row.try_get(5)?,
            ingress_bytes: count(6)?,
            egress_bytes: count(7)?,
            queries: count(8)?,
            sessions: count(9)?,
            connections: count(10)?,
            storage_bytes_max: storage(11)?,
            storage_bytes_avg: storage(12)?,
            cost: None,
        },
    })
}

/// Compute events for every run with unmetered time (one per run and metric), the runs'
/// checkpoints moved, and each endpoint's exported totals advanced. Values are differences of
/// rounded running totals per endpoint (exact, in `numeric`), so they telescope across runs
/// and checkpoints. Returns per metric the total value and the number of events.
const CHECKPOINT_COMPUTE: &str = "
WITH due AS (
    SELECT id, endpoint_id, cu::numeric AS cu, metered_to AS from_t,
           COALESCE(stopped_at, clock_timestamp()) AS to_t
    FROM compute_runs WHERE stopped_at IS NULL OR metered_to < stopped_at
    FOR UPDATE),
slices AS (
    SELECT d.*, extract(epoch FROM d.to_t - d.from_t) AS secs,
           extract(epoch FROM d.to_t - d.from_t) * d.cu AS cus,
           COALESCE(x.active_seconds, 0) AS base_active,
           COALESCE(x.compute_unit_seconds, 0) AS base_cus
    FROM due d LEFT JOIN compute_exported x ON x.endpoint_id = d.endpoint_id),
running AS (
    SELECT s.*,
           s.base_active + COALESCE(sum(s.secs) OVER before, 0) AS active_from,
           s.base_active + sum(s.secs) OVER upto AS active_to,
           s.base_cus + COALESCE(sum(s.cus) OVER before, 0) AS cus_from,
           s.base_cus + sum(s.cus) OVER upto AS cus_to
    FROM slices s
    WINDOW upto AS (PARTITION BY s.endpoint_id ORDER BY s.from_t, s.id
                    ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
           before AS (PARTITION BY s.endpoint_id ORDER BY s.from_t, s.id
                      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)),
moved AS (
    UPDATE compute_runs r SET metered_to = x.to_t FROM running x WHERE r.id = x.id
    RETURNING r.id),
totals AS (
    INSERT INTO compute_exported AS t (endpoint_id, active_seconds, compute_unit_seconds)
    SELECT endpoint_id, max(active_to), max(cus_to) FROM running GROUP BY endpoint_id
    ON CONFLICT (endpoint_id) DO UPDATE SET active_seconds = excluded.active_seconds,
        compute_unit_seconds = excluded.compute_unit_seconds
    RETURNING endpoint_id),
written AS (
    INSERT INTO usage_events
        (idempotency_key, endpoint_id, metric, kind, start_time, stop_time, value)
    SELECT format('%s-%s-%s-%s', m.metric, r.endpoint_id, r.id,
                  to_char(r.from_t AT TIME ZONE 'UTC', 'YYYYMMDD\"T\"HH24MISS.US\"Z\"')),
           r.endpoint_id, m.metric, 'incremental', r.from_t, r.to_t, m.value
    FROM running r CROSS JOIN LATERAL (VALUES
        ('active_time_seconds', (round(r.active_to) - round(r.active_from))::int8),
        ('compute_unit_seconds', (round(r.cus_to) - round(r.cus_from))::int8)
    ) AS m(metric, value)
    WHERE m.value > 0
    RETURNING metric, value)
SELECT metric, sum(value)::int8, count(*) FROM written GROUP BY metric";

/// Egress applied since the last checkpoint, as `public_network_transfer_bytes` events.
const CHECKPOINT_TRAFFIC: &str = "
WITH taken AS (DELETE FROM traffic_unexported RETURNING *),
written AS (
    INSERT INTO usage_events
        (idempotency_key, endpoint_id, metric, kind, start_time, stop_time, value)
    SELECT format('public_network_transfer_bytes-%s-%s', endpoint_id,
                  to_char(since AT TIME ZONE 'UTC', 'YYYYMMDD\"T\"HH24MISS.US\"Z\"')),
           endpoint_id, 'public_network_transfer_bytes', 'incremental', since,
           GREATEST(clock_timestamp(), since), egress_bytes
    FROM taken WHERE egress_bytes > 0
    RETURNING value)
SELECT count(*), COALESCE(sum(value), 0)::int8 FROM written";

/// Storage samples not yet exported, as absolute `storage_bytes` events.
const CHECKPOINT_STORAGE: &str = "
WITH taken AS (UPDATE storage_samples SET exported = true WHERE NOT exported RETURNING *)
INSERT INTO usage_events (idempotency_key, endpoint_id, metric, kind, at, value)
SELECT format('storage_bytes-%s-%s', endpoint_id, id), endpoint_id, 'storage_bytes',
       'absolute', at, bytes
FROM taken";

/// Usage per endpoint and bucket. $1: endpoint ids (NULL: every endpoint with usage in the
/// range, and every existing one); $2, $3: the range; $4: the bucket length in seconds.
const USAGE: &str = "
WITH b AS (
    SELECT s AS start, s + make_interval(secs => $4) AS stop
    FROM generate_series($2::timestamptz, $3::timestamptz - make_interval(secs => $4),
                         make_interval(secs => $4)) AS s),
ids AS (
    SELECT unnest($1::text[]) AS id WHERE $1::text[] IS NOT NULL
    UNION
    SELECT id FROM (
        SELECT id FROM endpoints
        UNION SELECT endpoint_id FROM compute_runs
            WHERE started_at < $3 AND COALESCE(stopped_at, now()) > $2
        UNION SELECT endpoint_id FROM traffic_hours WHERE hour >= $2 AND hour < $3
        UNION SELECT endpoint_id FROM storage_samples WHERE at >= $2 AND at < $3) AS every
    WHERE $1::text[] IS NULL),
cells AS (SELECT ids.id, b.start, b.stop FROM ids CROSS JOIN b),
runs AS (
    SELECT c.id, c.start, max(r.cu) AS peak_cu,
           sum(extract(epoch FROM LEAST(c.stop, COALESCE(r.stopped_at, now()))
                                  - GREATEST(c.start, r.started_at)))::float8 AS active,
           sum(r.cu * extract(epoch FROM LEAST(c.stop, COALESCE(r.stopped_at, now()))
                                         - GREATEST(c.start, r.started_at)))::float8 AS cus
    FROM cells c JOIN compute_runs r ON r.endpoint_id = c.id AND r.started_at < c.stop
        AND COALESCE(r.stopped_at, now()) > c.start
    GROUP BY c.id, c.start),
traffic AS (
    SELECT c.id, c.start, sum(t.ingress_bytes)::int8 AS ingress, sum(t.egress_bytes)::int8 AS egress,
           sum(t.queries)::int8 AS queries, sum(t.sessions)::int8 AS sessions,
           sum(t.connections)::int8 AS connections
    FROM cells c JOIN traffic_hours t ON t.endpoint_id = c.id AND t.hour >= c.start
        AND t.hour < c.stop
    GROUP BY c.id, c.start),
storage AS (
    SELECT c.id, c.start, max(x.bytes)::int8 AS max_bytes, round(avg(x.bytes))::int8 AS avg_bytes
    FROM cells c CROSS JOIN LATERAL (
        SELECT bytes FROM storage_samples s
        WHERE s.endpoint_id = c.id AND s.at >= c.start AND s.at < c.stop
        UNION ALL
        (SELECT bytes FROM storage_samples s
         WHERE s.endpoint_id = c.id AND s.at < c.start
           AND EXISTS (SELECT 1 FROM endpoints e WHERE e.id = c.id)
         ORDER BY s.at DESC LIMIT 1)) AS x
    GROUP BY c.id, c.start)
SELECT c.id, c.start, c.stop, COALESCE(runs.peak_cu, 0), COALESCE(runs.active, 0),
       COALESCE(runs.cus, 0), COALESCE(traffic.ingress, 0), COALESCE(traffic.egress, 0),
       COALESCE(traffic.queries, 0), COALESCE(traffic.sessions, 0),
       COALESCE(traffic.connections, 0), storage.max_bytes, storage.avg_bytes
FROM cells c
LEFT JOIN runs ON runs.id = c.id AND runs.start = c.start
LEFT JOIN traffic ON traffic.id = c.id AND traffic.start = c.start
LEFT JOIN storage ON storage.id = c.id AND storage.start = c.start
ORDER BY c.id, c.start";
