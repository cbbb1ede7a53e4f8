//! Metering: what the wake service's usage API answers (`/v1/endpoints/{id}/usage`,
//! `/v1/usage`, `/v1/usage/events`) and the prices that turn usage into cost, shared by the
//! service (which adds `cost` when it has prices) and the CLI's report.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Bytes in a gigabyte, as prices count them (decimal, as Neon bills).
pub const GB: f64 = 1e9;
/// Hours in a billing month (365 × 24 / 12).
pub const HOURS_PER_MONTH: f64 = 730.0;

/// `granularity` of `GET /v1/endpoints/{id}/usage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Hour,
    Day,
}

impl Granularity {
    pub fn seconds(self) -> i64 {
        match self {
            Granularity::Hour => 3600,
            Granularity::Day => 86_400,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }
}

/// What an endpoint used over a span of time (one bucket, or a whole range).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Seconds the compute ran.
    pub active_seconds: f64,
    /// Seconds × compute units.
    pub compute_unit_seconds: f64,
    pub ingress_bytes: u64,
    pub egress_bytes: u64,
    pub queries: u64,
    pub sessions: u64,
    pub connections: u64,
    /// Largest logical size of the endpoint's databases sampled in the span (or the last one
    /// before it, when it was not sampled in the span); `None` when never sampled.
    pub storage_bytes_max: Option<u64>,
    /// Mean of those samples.
    pub storage_bytes_avg: Option<u64>,
    /// With the service's prices (`--price-*`): what this usage costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

/// One bucket of `GET /v1/endpoints/{id}/usage`: `[start, end)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageBucket {
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
    #[serde(flatten)]
    pub usage: Usage,
}

/// `GET /v1/endpoints/{id}/usage`: `from` and `to` rounded out to whole buckets (UTC).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointUsage {
    pub endpoint_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    pub granularity: Granularity,
    pub buckets: Vec<UsageBucket>,
    pub total: Usage,
}

/// One endpoint's line of `GET /v1/usage`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointTotal {
    pub endpoint_id: String,
    /// The largest compute size it ran at in the range (0 when it did not run).
    pub peak_cu: f64,
    /// Whether the endpoint still exists (usage of a deleted one is still listed).
    pub exists: bool,
    #[serde(flatten)]
    pub usage: Usage,
}

/// `GET /v1/usage`: every endpoint with usage in `[from, to)` (hours, UTC).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageSummary {
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    pub endpoints: Vec<EndpointTotal>,
}

/// A consumption event in Neon's format (`libs/consumption_metrics`): `incremental` events
/// cover `[start_time, stop_time)`, `absolute` ones are a value at `time`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    #[serde(flatten)]
    pub kind: EventKind,
    pub metric: String,
    pub idempotency_key: String,
    pub value: u64,
    pub endpoint_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    Incremental {
        #[serde(with = "time::serde::rfc3339")]
        start_time: OffsetDateTime,
        #[serde(with = "time::serde::rfc3339")]
        stop_time: OffsetDateTime,
    },
    Absolute {
        #[serde(with = "time::serde::rfc3339")]
        time: OffsetDateTime,
    },
}

/// `GET /v1/usage/events?after=&limit=`: events after the cursor, oldest first; the next
/// page is `after=<next_cursor>` (the same cursor again when nothing new was there).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvents {
    pub events: Vec<UsageEvent>,
    pub next_cursor: String,
}

/// The most events one page of `/v1/usage/events` or one push to the sink carries (Neon's
/// `CHUNK_SIZE`).
pub const MAX_EVENTS_PER_BATCH: usize = 1000;

/// What usage costs. The defaults are Neon's Launch plan (2026): $0.106 per CU-hour, $0.35 per
/// GB-month of storage, $0.10 per GB of public network transfer (egress; Neon's included
/// allowance is not modelled).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    pub cu_hour: f64,
    pub gb_month: f64,
    pub transfer_gb: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Prices {
            cu_hour: 0.106,
            gb_month: 0.35,
            transfer_gb: 0.10,
        }
    }
}

impl Prices {
    /// What `usage` over `hours` of wall-clock time costs: compute, storage held for those
    /// hours at its mean sampled size, and egress.
    pub fn cost(&self, usage: &Usage, hours: f64) -> f64 {
        self.compute(usage.compute_unit_seconds / 3600.0) + self.rest(usage, hours)
    }

    /// What the same usage would cost with a compute of `cu` running all `hours`: the
    /// baseline scale-to-zero is measured against.
    pub fn always_on(&self, usage: &Usage, cu: f64, hours: f64) -> f64 {
        self.compute(cu * hours) + self.rest(usage, hours)
    }

    fn compute(&self, cu_hours: f64) -> f64 {
        cu_hours * self.cu_hour
    }

    fn rest(&self, usage: &Usage, hours: f64) -> f64 {
        let storage = usage.storage_bytes_avg.unwrap_or(0) as f64 / GB;
        storage * self.gb_month * hours / HOURS_PER_MONTH
            + usage.egress_bytes as f64 / GB * self.transfer_gb
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_counts_compute_storage_and_egress() {
        let prices = Prices {
            cu_hour: 0.1,
            gb_month: 0.73,
            transfer_gb: 0.5,
        };
        let usage = Usage {
            compute_unit_seconds: 7200.0,
            egress_bytes: 2_000_000_000,
            storage_bytes_avg: Some(1_000_000_000),
            ..Usage::default()
        };
        // 2 CU-hours, 1 GB for 10 of 730 hours, 2 GB out.
        let cost = prices.cost(&usage, 10.0);
        assert!((cost - (0.2 + 0.01 + 1.0)).abs() < 1e-9, "{cost}");
        let always_on = prices.always_on(&usage, 0.25, 10.0);
        assert!(
            (always_on - (0.25 + 0.01 + 1.0)).abs() < 1e-9,
            "{always_on}"
        );
    }

    #[test]
    fn events_have_neons_shape() {
        let event = UsageEvent {
            kind: EventKind::Incremental {
                start_time: time::macros::datetime!(2026-12-06 10:00 UTC),
                stop_time: time::macros::datetime!(2026-12-06 10:00:15 UTC),
            },
            metric: "compute_unit_seconds".into(),
            idempotency_key: "k".into(),
            value: 4,
            endpoint_id: "db".into(),
        };
        let json = serde_json::to_value(&event).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"type": "incremental", "start_time": "2026-12-06T10:00:00Z",
                "stop_time": "2026-12-06T10:00:15Z", "metric": "compute_unit_seconds",
                "idempotency_key": "k", "value": 4, "endpoint_id": "db"})
        );
        let back: UsageEvent = serde_json::from_value(json).expect("parses");
        assert_eq!(back, event);
    }
}
