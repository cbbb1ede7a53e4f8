//! Metering: what each endpoint used, durably, and how it is read and exported.
//!
//! - **Compute**: a run per stretch of time a compute ran at one size, opened and closed by
//!   the state changes that start and stop it (see `store::usage`). The leader's checkpoint
//!   (every `--usage-checkpoint-seconds`) turns the time since the previous one into
//!   `active_time_seconds` and `compute_unit_seconds` events. After a `kill -9`, a compute
//!   reconcile adopts alive ran all along (its run goes on); one found dead ran until the last
//!   checkpoint: at most one checkpoint interval is lost, none is counted twice.
//! - **Traffic**: gateways send their counts with the activity report; [`Metering::apply`]
//!   stores a report id once (a resent report is acknowledged, not counted), per endpoint and
//!   hour; egress becomes `public_network_transfer_bytes` events at the next checkpoint.
//! - **Storage**: the logical size of an endpoint's databases (`pg_database_size`), sampled
//!   every `--storage-sample-seconds` while it is active and once before each gentle suspend;
//!   never by waking a compute. Exported as absolute `storage_bytes` events: this is a
//!   logical size, not Neon's `synthetic_storage_size` (which adds retained history), so it
//!   keeps a name that says what it is.
//! - **Reading**: per endpoint in hour or day buckets, per range for every endpoint, and the
//!   event log by cursor ([`sink`] pushes the same log to `--usage-sink-url`).

pub mod sink;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use wake_api::proxy::{
    UsageReport, MAX_REPORTED_ENDPOINTS, MAX_USAGE_COUNTER, MAX_USAGE_REPORT_ID,
};
use wake_api::usage::{
    EndpointTotal, EndpointUsage, Granularity, Prices, UsageBucket, UsageEvents, UsageSummary,
    MAX_EVENTS_PER_BATCH,
};

use crate::lifecycle::{Computes, LifecycleError};
use crate::metrics::Metrics;
use crate::store::{AppliedUsage, Store, UsageRow};

/// The widest range one usage read covers, per granularity: 31 days of hours (744 buckets),
/// 400 days of days.
const MAX_HOUR_BUCKETS: i64 = 31 * 24;
const MAX_DAY_BUCKETS: i64 = 400;
/// Applied report ids are kept this long (a gateway resends for as long as the wake service
/// is down; a week covers any outage worth surviving).
const REPORT_IDS_KEPT_DAYS: i32 = 7;

#[derive(Clone, Debug)]
pub struct MeteringConfig {
    pub checkpoint_interval: Duration,
    pub storage_interval: Duration,
    /// With prices, usage answers carry `cost`.
    pub prices: Option<Prices>,
    pub sink: Option<sink::SinkConfig>,
}

pub struct Metering {
    computes: Arc<Computes>,
    metrics: Arc<Metrics>,
    config: MeteringConfig,
}

impl Metering {
    pub fn new(computes: Arc<Computes>, metrics: Arc<Metrics>, config: MeteringConfig) -> Self {
        Metering {
            computes,
            metrics,
            config,
        }
    }

    fn store(&self) -> &Store {
        self.computes.store()
    }

    /// Refuses a malformed usage report before anything of its activity report is applied:
    /// an id of the wrong length, too many entries, a repeated endpoint id, a counter above
    /// [`MAX_USAGE_COUNTER`]. An id that names no endpoint (whatever it looks like) is not
    /// malformed: it is answered in `usage_unknown`, so that one odd entry never stops a
    /// gateway's reports.
    pub fn check(&self, report: &UsageReport) -> Result<(), LifecycleError> {
        let outcome = check(report);
        if outcome.is_err() {
            self.metrics
                .usage
                .reports
                .with_label_values(&["invalid"])
                .inc();
        }
        outcome
    }

    /// Stores a (checked) usage report once per id.
    pub async fn apply(&self, report: &UsageReport) -> Result<AppliedUsage, LifecycleError> {
        let applied = self.store().apply_usage(report).await?;
        let m = &self.metrics.usage;
        let outcome = if applied.fresh {
            "applied"
        } else {
            "duplicate"
        };
        m.reports.with_label_values(&[outcome]).inc();
        m.unknown_endpoints.inc_by(applied.unknown.len() as u64);
        m.ingress_bytes.inc_by(applied.stored.ingress_bytes);
        m.egress_bytes.inc_by(applied.stored.egress_bytes);
        m.queries.inc_by(applied.stored.queries);
        m.sessions.inc_by(applied.stored.sessions);
        m.connections.inc_by(applied.stored.connections);
        Ok(applied)
    }

    /// `GET /v1/endpoints/{id}/usage`. Reads the store only: never wakes the compute.
    pub async fn endpoint_usage(
        &self,
        id: &str,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
        granularity: Granularity,
    ) -> Result<EndpointUsage, LifecycleError> {
        if self.store().endpoint(id).await?.is_none() {
            return Err(LifecycleError::NotFound(id.to_owned()));
        }
        let step = granularity.seconds();
        let default_span = match granularity {
            Granularity::Hour => 24,
            Granularity::Day => 30,
        };
        let (from, to) = range(from, to, step, default_span)?;
        let max = match granularity {
            Granularity::Hour => MAX_HOUR_BUCKETS,
            Granularity::Day => MAX_DAY_BUCKETS,
        };
        if (to - from).whole_seconds() / step > max {
            return Err(LifecycleError::Invalid(format!(
                "at most {max} buckets of a {} per request",
                granularity.as_str()
            )));
        }
        let ids = [id.to_owned()];
        let rows = self.store().usage(Some(&ids), from, to, step).await?;
        let mut total = wake_api::usage::Usage::default();
        let buckets = rows
            .into_iter()
            .map(|row| {
                add(&mut total, &row.usage);
                UsageBucket {
                    start: row.start,
                    end: row.end,
                    usage: self.priced(row.usage, step as f64 / 3600.0),
                }
            })
            .collect::<Vec<_>>();
        let hours = (to - from).as_seconds_f64() / 3600.0;
        let total = self.total_storage(total, &buckets);
        Ok(EndpointUsage {
            endpoint_id: id.to_owned(),
            from,
            to,
            granularity,
            buckets,
            total: self.priced(total, hours),
        })
    }

    /// `GET /v1/usage`: every endpoint with usage in the range (whole hours), and every
    /// existing one.
    pub async fn summary(
        &self,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> Result<UsageSummary, LifecycleError> {
        let (from, to) = range(from, to, 3600, 24 * 30)?;
        if (to - from).whole_days() > MAX_DAY_BUCKETS {
            return Err(LifecycleError::Invalid(format!(
                "a range of at most {MAX_DAY_BUCKETS} days"
            )));
        }
        let step = (to - from).whole_seconds();
        let existing: HashSet<String> = self
            .store()
            .endpoints()
            .await?
            .into_iter()
            .map(|row| row.id)
            .collect();
        let hours = step as f64 / 3600.0;
        let endpoints = self
            .store()
            .usage(None, from, to, step)
            .await?
            .into_iter()
            .map(
                |UsageRow {
                     endpoint_id,
                     peak_cu,
                     usage,
                     ..
                 }| EndpointTotal {
                    exists: existing.contains(&endpoint_id),
                    endpoint_id,
                    peak_cu,
                    usage: self.priced(usage, hours),
                },
            )
            .collect();
        Ok(UsageSummary {
            from,
            to,
            endpoints,
        })
    }

    /// `GET /v1/usage/events?after=&limit=`.
    pub async fn events(
        &self,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<UsageEvents, LifecycleError> {
        let after = match after {
            None | Some("") => 0,
            Some(cursor) => cursor
                .parse::<i64>()
                .ok()
                .filter(|seq| *seq >= 0)
                .ok_or_else(|| {
                    LifecycleError::Invalid(format!("after: '{cursor}' is not a cursor"))
                })?,
        };
        let limit = limit.unwrap_or(100);
        if limit == 0 || limit > MAX_EVENTS_PER_BATCH {
            return Err(LifecycleError::Invalid(format!(
                "limit must be between 1 and {MAX_EVENTS_PER_BATCH}"
            )));
        }
        let rows = self.store().usage_events(after, limit as i64).await?;
        // A cursor beyond the log is not this log's (another store, a typo): saying so beats
        // answering "nothing new" forever.
        if rows.is_empty() && after > self.store().last_event_seq().await? {
            return Err(LifecycleError::Invalid(format!(
                "after: cursor {after} is beyond the newest event"
            )));
        }
        let next = rows.last().map_or(after, |(seq, _)| *seq);
        Ok(UsageEvents {
            events: rows.into_iter().map(|(_, event)| event).collect(),
            next_cursor: next.to_string(),
        })
    }

    fn priced(&self, mut usage: wake_api::usage::Usage, hours: f64) -> wake_api::usage::Usage {
        usage.cost = self.config.prices.map(|p| p.cost(&usage, hours));
        usage
    }

    /// A range's storage: the largest bucket maximum, and the mean of the buckets' means.
    fn total_storage(
        &self,
        mut total: wake_api::usage::Usage,
        buckets: &[UsageBucket],
    ) -> wake_api::usage::Usage {
        total.storage_bytes_max = buckets
            .iter()
            .filter_map(|b| b.usage.storage_bytes_max)
            .max();
        let means: Vec<u64> = buckets
            .iter()
            .filter_map(|b| b.usage.storage_bytes_avg)
            .collect();
        total.storage_bytes_avg =
            (!means.is_empty()).then(|| means.iter().sum::<u64>() / means.len() as u64);
        total
    }

    /// The leader's metering loop until `stop`: a checkpoint every interval and forgetting old
    /// report ids; storage samples and the push sink in tasks of their own.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        if let Some(config) = self.config.sink.clone() {
            tokio::spawn(sink::run(
                self.store().clone(),
                self.metrics.clone(),
                config,
                stop.clone(),
            ));
        }
        // Sampling connects to tenants' computes: its own task, so a slow one never delays
        // a checkpoint.
        tokio::spawn(self.clone().sample_storage_until(stop.clone()));
        let mut checkpoint = tokio::time::interval(self.config.checkpoint_interval);
        let mut forget = tokio::time::interval(Duration::from_secs(3600));
        for timer in [&mut checkpoint, &mut forget] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = checkpoint.tick() => self.checkpoint().await,
                _ = forget.tick() => {
                    if let Err(e) = self.store().forget_usage_reports(REPORT_IDS_KEPT_DAYS).await {
                        tracing::warn!(error = %e, "could not forget old usage report ids");
                    }
                }
                () = stop.cancelled() => break,
            }
        }
    }

    /// One checkpoint: what was metered since the last becomes consumption events.
    pub async fn checkpoint(&self) {
        let m = &self.metrics.usage;
        match self.store().checkpoint().await {
            Ok(done) => {
                m.checkpoints.with_label_values(&["ok"]).inc();
                m.events.inc_by(done.events);
                m.active_seconds.inc_by(done.active_seconds);
                m.compute_unit_seconds.inc_by(done.compute_unit_seconds);
            }
            Err(e) => {
                m.checkpoints.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "metering checkpoint failed; the next one covers it");
            }
        }
    }

    async fn sample_storage_until(self: Arc<Self>, stop: CancellationToken) {
        let mut storage = tokio::time::interval(self.config.storage_interval);
        storage.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = storage.tick() => self.sample_storage().await,
                () = stop.cancelled() => break,
            }
        }
    }

    async fn sample_storage(&self) {
        let rows = match self.store().endpoints().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "storage sampling: could not list endpoints");
                return;
            }
        };
        for row in rows {
            if let Err(e) = self.computes.sample_storage(&row.id).await {
                self.metrics
                    .usage
                    .storage_samples
                    .with_label_values(&["error"])
                    .inc();
                tracing::warn!(endpoint = %row.id, error = %e, "could not sample storage");
            }
        }
    }
}

fn check(report: &UsageReport) -> Result<(), LifecycleError> {
    let invalid = |why: String| Err(LifecycleError::Invalid(format!("usage: {why}")));
    if report.report_id.is_empty() || report.report_id.len() > MAX_USAGE_REPORT_ID {
        return invalid(format!(
            "report_id must be 1-{MAX_USAGE_REPORT_ID} characters"
        ));
    }
    if report.endpoints.len() > MAX_REPORTED_ENDPOINTS {
        return invalid(format!(
            "at most {MAX_REPORTED_ENDPOINTS} endpoints per report"
        ));
    }
    let mut seen = HashSet::new();
    for entry in &report.endpoints {
        let id = entry.endpoint_id.as_str();
        if !seen.insert(id) {
            return invalid(format!("endpoint '{id}' is listed twice"));
        }
        let counters = [
            entry.ingress_bytes,
            entry.egress_bytes,
            entry.queries,
            entry.sessions,
            entry.connections,
        ];
        if counters.iter().any(|c| *c > MAX_USAGE_COUNTER) {
            return invalid(format!(
                "a counter of endpoint '{id}' is above {MAX_USAGE_COUNTER}"
            ));
        }
    }
    Ok(())
}

/// `from`/`to` rounded out to whole buckets of `step` seconds (UTC); `from` must come before
/// `to`. Defaults: `to` now, `from` `default_steps` buckets before the end.
fn range(
    from: Option<OffsetDateTime>,
    to: Option<OffsetDateTime>,
    step: i64,
    default_steps: i64,
) -> Result<(OffsetDateTime, OffsetDateTime), LifecycleError> {
    let to = to.unwrap_or_else(OffsetDateTime::now_utc);
    let to_seconds = to.unix_timestamp() + i64::from(to.nanosecond() > 0);
    let end = (to_seconds + step - 1).div_euclid(step) * step;
    let start = match from {
        Some(from) if from >= to => {
            return Err(LifecycleError::Invalid("from must be before to".into()))
        }
        Some(from) => from.unix_timestamp().div_euclid(step) * step,
        None => end - step * default_steps,
    };
    let at = |secs: i64| {
        OffsetDateTime::from_unix_timestamp(secs)
            .map_err(|_| LifecycleError::Invalid("from or to is out of range".into()))
    };
    Ok((at(start)?, at(end)?))
}

fn add(total: &mut wake_api::usage::Usage, usage: &wake_api::usage::Usage) {
    total.active_seconds += usage.active_seconds;
    total.compute_unit_seconds += usage.compute_unit_seconds;
    total.ingress_bytes += usage.ingress_bytes;
    total.egress_bytes += usage.egress_bytes;
    total.queries += usage.queries;
    total.sessions += usage.sessions;
    total.connections += usage.connections;
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use wake_api::proxy::EndpointTraffic;

    #[test]
    fn ranges_round_out_to_buckets() {
        let (from, to) = range(
            Some(datetime!(2026-12-06 10:20 UTC)),
            Some(datetime!(2026-12-06 12:00 UTC)),
            3600,
            24,
        )
        .expect("valid");
        assert_eq!(
            (from, to),
            (
                datetime!(2026-12-06 10:00 UTC),
                datetime!(2026-12-06 12:00 UTC)
            )
        );
        let (from, to) = range(
            Some(datetime!(2026-12-06 10:20 UTC)),
            Some(datetime!(2026-12-07 00:00:01 UTC)),
            86_400,
            30,
        )
        .expect("valid");
        assert_eq!(
            (from, to),
            (
                datetime!(2026-12-06 00:00 UTC),
                datetime!(2026-12-08 00:00 UTC)
            )
        );
        assert!(range(
            Some(datetime!(2026-12-06 10:00 UTC)),
            Some(datetime!(2026-12-06 10:00 UTC)),
            3600,
            24
        )
        .is_err());
    }

    #[test]
    fn malformed_reports_are_refused() {
        let entry = |id: &str, bytes: u64| EndpointTraffic {
            endpoint_id: id.into(),
            ingress_bytes: bytes,
            ..EndpointTraffic::default()
        };
        let report = |id: &str, entries: Vec<EndpointTraffic>| UsageReport {
            report_id: id.into(),
            endpoints: entries,
        };
        assert!(check(&report("g-1", vec![entry("db", 10), entry("other", 0)])).is_ok());
        for bad in [
            report("", vec![]),
            report(&"x".repeat(MAX_USAGE_REPORT_ID + 1), vec![]),
            report("g-1", vec![entry("db", 1), entry("db", 2)]),
            report("g-1", vec![entry("db", MAX_USAGE_COUNTER + 1)]),
            report(
                "g-1",
                (0..=MAX_REPORTED_ENDPOINTS)
                    .map(|i| entry(&format!("e{i}"), 1))
                    .collect(),
            ),
        ] {
            assert!(check(&bad).is_err(), "{:?}", bad.report_id.len());
        }
    }
}
