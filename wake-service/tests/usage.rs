//! Metering (issue 16) against a real wake service (in-process, its embedded state store and
//! local computes: Postgres 15 + PgBouncer): compute time from the lifecycle, the checkpoint's
//! consumption events, gateway usage reports applied once, the usage API's answers and errors,
//! and all of it across a restart. The gateway's side and kill -9 are in the Node suite
//! (sdk-tests/test/metering.test.js).
//!
//! Compute ports 27000-27499.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use time::OffsetDateTime;
use wake_api::admin::ComputeEvent;
use wake_api::usage::{EndpointUsage, EventKind, UsageEvent, UsageEvents, UsageSummary};

mod common;
use common::service::{Wake, TOKEN};
use common::TempRoot;

const PORTS: &str = "27000-27499";
const FLAGS: &[&str] = &["--usage-checkpoint-seconds", "1", "--price-cu-hour", "2"];

impl Wake {
    async fn usage(&self, id: &str) -> EndpointUsage {
        let value = self
            .expect(Method::GET, &format!("/v1/endpoints/{id}/usage"), None, 200)
            .await;
        serde_json::from_value(value).expect("usage")
    }

    /// Every consumption event, paged `limit` at a time.
    async fn all_events(&self, limit: usize) -> Vec<UsageEvent> {
        let (mut cursor, mut all) = (String::new(), Vec::new());
        loop {
            let path = format!("/v1/usage/events?after={cursor}&limit={limit}");
            let page: UsageEvents =
                serde_json::from_value(self.expect(Method::GET, &path, None, 200).await)
                    .expect("events");
            if page.events.is_empty() {
                let same = if cursor.is_empty() { "0" } else { &cursor };
                assert_eq!(page.next_cursor, same, "an empty page keeps the cursor");
                return all;
            }
            assert!(page.events.len() <= limit);
            all.extend(page.events);
            cursor = page.next_cursor;
        }
    }

    async fn report(&self, report_id: &str, entries: Value) -> (u16, Value) {
        let body = json!({"interval_ms": 1000, "endpoints": [], "cached": [],
            "usage": {"report_id": report_id, "endpoints": entries}});
        self.call(Method::POST, "/proxy/api/v1/activity", Some(body))
            .await
    }
}

/// Seconds the compute ran according to the lifecycle events: from each arrival in `active`
/// until the compute stopped (`suspended`, `failed`, deleted), or now.
fn active_from_events(events: &[ComputeEvent]) -> f64 {
    let (mut total, mut since) = (0.0, None::<OffsetDateTime>);
    for e in events {
        match e.to_state.as_deref() {
            Some("active") if since.is_none() => since = Some(e.at),
            Some("suspended" | "failed") | None => {
                if let Some(start) = since.take() {
                    total += (e.at - start).as_seconds_f64();
                }
            }
            _ => {}
        }
    }
    if let Some(start) = since {
        total += (OffsetDateTime::now_utc() - start).as_seconds_f64();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_metered_exported_and_survives_a_restart() {
    let wake = Wake::run_with(TempRoot::new("usage"), PORTS, FLAGS).await;
    let id = "ep-usage";
    wake.expect(
        Method::POST,
        "/v1/endpoints",
        Some(json!({"id": id, "suspend_timeout_seconds": -1})),
        201,
    )
    .await;
    // Three runs: ~1.2 s, ~0.8 s, and the last one still running.
    for (ran, last) in [(1200, false), (800, false), (300, true)] {
        tokio::time::sleep(Duration::from_millis(ran)).await;
        if !last {
            let suspend = format!("/v1/endpoints/{id}/suspend?force=true");
            wake.expect(Method::POST, &suspend, None, 200).await;
            let wake_path = format!("/v1/endpoints/{id}/wake");
            wake.expect(Method::POST, &wake_path, None, 200).await;
        }
    }
    compute_matches_the_lifecycle(&wake, id).await;
    reports_apply_once(&wake, id).await;
    bad_input_is_refused(&wake, id).await;

    // Suspended, then checkpointed: the events cover every run, and stay the same.
    let suspend = format!("/v1/endpoints/{id}/suspend?force=true");
    wake.expect(Method::POST, &suspend, None, 200).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let closed = wake.usage(id).await.total;
    let events = wake.all_events(7).await;
    events_add_up(
        &events,
        id,
        closed.active_seconds,
        closed.compute_unit_seconds,
    );

    // A restart (the service suspends nothing new: the endpoint sleeps): nothing lost, nothing
    // counted twice, the export unchanged.
    let wake = Wake::run_with(wake.halt().await, PORTS, FLAGS).await;
    let after = wake.usage(id).await.total;
    assert!(
        (after.active_seconds - closed.active_seconds).abs() < 1e-6,
        "active seconds across the restart: {} then {}",
        closed.active_seconds,
        after.active_seconds
    );
    assert_eq!(after.egress_bytes, closed.egress_bytes);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = wake.all_events(1000).await;
    assert_eq!(again, events, "the export is the same after a restart");
    let entries = json!([{"endpoint_id": id, "ingress_bytes": 5, "egress_bytes": 5,
        "queries": 1, "sessions": 0, "connections": 0}]);
    let (status, reply) = wake.report("r-1", entries).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["usage_applied"], "r-1", "acknowledged again");
    assert_eq!(
        wake.usage(id).await.total.egress_bytes,
        closed.egress_bytes,
        "a report id applied before the restart is not applied again"
    );
    wake.stop().await;
}

/// The usage API's active seconds are the lifecycle's, CU-seconds are active × CU, and the
/// cost is the CU-hours at the configured price.
async fn compute_matches_the_lifecycle(wake: &Wake, id: &str) {
    let events: Vec<ComputeEvent> = serde_json::from_value(
        wake.expect(
            Method::GET,
            &format!("/v1/endpoints/{id}/events"),
            None,
            200,
        )
        .await,
    )
    .expect("events");
    let usage = wake.usage(id).await;
    let expected = active_from_events(&events);
    let total = &usage.total;
    assert!(
        (total.active_seconds - expected).abs() < 0.5,
        "active seconds: usage {} against lifecycle {expected} ({events:?})",
        total.active_seconds
    );
    assert!(total.active_seconds > 1.5, "{total:?}");
    assert!(
        (total.compute_unit_seconds - total.active_seconds * 0.25).abs() < 1e-6,
        "{total:?}"
    );
    let cost = total.cost.expect("prices are set");
    assert!(
        (cost - total.compute_unit_seconds / 3600.0 * 2.0).abs() < 1e-3,
        "{cost} for {total:?}"
    );
    let buckets: f64 = usage.buckets.iter().map(|b| b.usage.active_seconds).sum();
    assert!((buckets - total.active_seconds).abs() < 1e-6);
    assert_eq!(usage.buckets.len(), 24, "24 hours by default");
}

/// A report id counts once; an unknown endpoint is named, not stored.
async fn reports_apply_once(wake: &Wake, id: &str) {
    let before = wake.usage(id).await.total;
    let entries = json!([
        {"endpoint_id": id, "ingress_bytes": 100, "egress_bytes": 2000, "queries": 3,
         "sessions": 1, "connections": 1},
        {"endpoint_id": "no-such-endpoint", "ingress_bytes": 7, "egress_bytes": 7,
         "queries": 1, "sessions": 1, "connections": 1}
    ]);
    for _ in 0..3 {
        let (status, reply) = wake.report("r-1", entries.clone()).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["usage_applied"], "r-1");
        assert_eq!(reply["usage_unknown"], json!(["no-such-endpoint"]));
    }
    let after = wake.usage(id).await.total;
    assert_eq!(
        (
            after.ingress_bytes,
            after.egress_bytes,
            after.queries,
            after.sessions
        ),
        (
            before.ingress_bytes + 100,
            before.egress_bytes + 2000,
            before.queries + 3,
            before.sessions + 1
        ),
        "three deliveries of one report count once"
    );
    let summary: UsageSummary =
        serde_json::from_value(wake.expect(Method::GET, "/v1/usage", None, 200).await)
            .expect("summary");
    assert!(
        !summary
            .endpoints
            .iter()
            .any(|e| e.endpoint_id == "no-such-endpoint"),
        "nothing stored for an unknown endpoint: {summary:?}"
    );
    let line = summary.endpoints.iter().find(|e| e.endpoint_id == id);
    assert!(line.is_some_and(|l| l.exists
        && l.peak_cu == 0.25
        && l.usage.egress_bytes == after.egress_bytes));
}

/// Malformed reports and usage queries: 400 (404 for an unknown endpoint), nothing stored.
async fn bad_input_is_refused(wake: &Wake, id: &str) {
    let before = wake.usage(id).await.total;
    let huge: Vec<Value> = (0..10_001)
        .map(|i| {
            json!({"endpoint_id": format!("e{i}"), "ingress_bytes": 1, "egress_bytes": 1,
                        "queries": 0, "sessions": 0, "connections": 0})
        })
        .collect();
    let entry = |bytes: Value| {
        json!([{"endpoint_id": id, "ingress_bytes": bytes, "egress_bytes": 1, "queries": 0,
                "sessions": 0, "connections": 0}])
    };
    let twice = json!([
        {"endpoint_id": id, "ingress_bytes": 1, "egress_bytes": 1, "queries": 0, "sessions": 0, "connections": 0},
        {"endpoint_id": id, "ingress_bytes": 1, "egress_bytes": 1, "queries": 0, "sessions": 0, "connections": 0}
    ]);
    let cases = [
        ("", entry(json!(1))),
        ("r-neg", entry(json!(-5))),
        ("r-absurd", entry(json!(1u64 << 51))),
        ("r-twice", twice),
        ("r-huge", Value::Array(huge)),
    ];
    for (report_id, entries) in cases {
        let (status, reply) = wake.report(report_id, entries).await;
        assert_eq!(status, 400, "report {report_id:?}: {reply}");
    }
    let odd = json!([{"endpoint_id": "NOT valid", "ingress_bytes": 1, "egress_bytes": 1,
        "queries": 0, "sessions": 0, "connections": 0}]);
    let (status, reply) = wake.report("r-odd-id", odd).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["usage_unknown"],
        json!(["NOT valid"]),
        "named, not stored"
    );
    let long = "r".repeat(129);
    assert_eq!(wake.report(&long, entry(json!(1))).await.0, 400);
    let response = wake
        .http
        .post(format!("{}/proxy/api/v1/activity", wake.url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"interval_ms\": 1000, \"usage\": {")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 400, "malformed JSON");
    let after = wake.usage(id).await.total;
    assert_eq!(
        (after.ingress_bytes, after.egress_bytes),
        (before.ingress_bytes, before.egress_bytes),
        "nothing of a refused report is stored"
    );

    let usage = format!("/v1/endpoints/{id}/usage");
    for (path, want) in [
        (format!("{usage}?granularity=week"), 400),
        (format!("{usage}?from=yesterday"), 400),
        (
            format!("{usage}?from=2026-12-06T10:00:00Z&to=2026-12-06T09:00:00Z"),
            400,
        ),
        (
            format!("{usage}?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z"),
            400,
        ),
        ("/v1/endpoints/nope/usage".to_owned(), 404),
        ("/v1/usage?granularity=hour".to_owned(), 400),
        ("/v1/usage/events?after=x".to_owned(), 400),
        ("/v1/usage/events?after=999999999".to_owned(), 400),
        ("/v1/usage/events?limit=0".to_owned(), 400),
        ("/v1/usage/events?limit=1001".to_owned(), 400),
    ] {
        let (status, body) = wake.call(Method::GET, &path, None).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
    }
    let day = format!("{usage}?from=2026-12-01T05:00:00Z&to=2026-12-03T00:00:01Z&granularity=day");
    let by_day: EndpointUsage =
        serde_json::from_value(wake.expect(Method::GET, &day, None, 200).await).expect("usage");
    assert_eq!(by_day.buckets.len(), 3, "whole UTC days around the range");
    assert_eq!(by_day.from, time::macros::datetime!(2026-12-01 00:00 UTC));
}

/// Compute events add up to the usage (each run's rounding at most half a second), keys are
/// unique, and increments are contiguous per run.
fn events_add_up(events: &[UsageEvent], id: &str, active: f64, cu_seconds: f64) {
    let mut keys: Vec<&str> = events.iter().map(|e| e.idempotency_key.as_str()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), events.len(), "idempotency keys are unique");
    let sum = |metric: &str| -> u64 {
        events
            .iter()
            .filter(|e| e.endpoint_id == id && e.metric == metric)
            .map(|e| e.value)
            .sum()
    };
    // Rounded once per endpoint, not once per run or checkpoint.
    let runs = 1.0;
    let active_events = sum("active_time_seconds") as f64;
    assert!(
        (active_events - active).abs() <= runs * 0.5 + 1e-6,
        "active_time_seconds events {active_events} against {active}"
    );
    let cu_events = sum("compute_unit_seconds") as f64;
    assert!(
        (cu_events - cu_seconds).abs() <= runs * 0.5 + 1e-6,
        "compute_unit_seconds events {cu_events} against {cu_seconds}"
    );
    assert_eq!(
        sum("public_network_transfer_bytes"),
        2000,
        "the report's egress, once"
    );
    for e in events {
        if let EventKind::Incremental {
            start_time,
            stop_time,
        } = e.kind
        {
            assert!(start_time <= stop_time, "{e:?}");
        }
    }
}
