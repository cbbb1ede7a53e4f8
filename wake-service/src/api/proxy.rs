//! `/proxy/api/v1`: the Neon-compatible API the gateway (or Neon's own proxy) calls.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use wake_api::proxy::{
    AccessControl, ActivityReply, ActivityReport, Jwks, JwksSettings, MetricsAuxInfo, WakeCompute,
};
use wake_api::split_pooler;

use super::{ProxyError, Service};
use crate::lifecycle::{LifecycleError, WakeTrigger};
use crate::store::GatewayActivity;

pub fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/proxy/api/v1/wake_compute", get(wake_compute))
        .route(
            "/proxy/api/v1/get_endpoint_access_control",
            get(access_control),
        )
        .route("/proxy/api/v1/endpoints/{id}/jwks", get(jwks))
        .route("/proxy/api/v1/activity", post(activity))
}

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

fn query<T>(query: QueryResult<T>) -> Result<T, ProxyError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ProxyError::BadRequest(e.body_text()))
}

#[derive(Deserialize)]
struct WakeQuery {
    endpointish: String,
    // Accepted for compatibility with Neon's proxy; used only for tracing.
    #[serde(default)]
    session_id: Option<String>,
}

async fn wake_compute(
    State(service): State<Arc<Service>>,
    params: QueryResult<WakeQuery>,
) -> Result<Json<WakeCompute>, ProxyError> {
    let params = query(params)?;
    let (id, pooler) = split_pooler(&params.endpointish);
    tracing::debug!(endpoint = id, pooler, session_id = ?params.session_id, "wake_compute");
    let (row, cold_start_info) = match service.wake(id, WakeTrigger::Proxy).await {
        Some(result) => result?,
        None => return Err(ProxyError::Busy(1000)),
    };
    let addresses = service.computes.addresses(&row);
    Ok(Json(WakeCompute {
        address: if pooler {
            addresses.pooler
        } else {
            addresses.direct
        },
        server_name: None,
        aux: MetricsAuxInfo {
            endpoint_id: row.id.clone(),
            project_id: row.id.clone(),
            branch_id: "main".into(),
            compute_id: format!("{}-compute", row.id),
            cold_start_info,
        },
    }))
}

#[derive(Deserialize)]
struct AccessQuery {
    endpointish: String,
    role: String,
}

async fn access_control(
    State(service): State<Arc<Service>>,
    params: QueryResult<AccessQuery>,
) -> Result<Json<AccessControl>, ProxyError> {
    let params = query(params)?;
    let (id, _) = split_pooler(&params.endpointish);
    let store = service.computes.store();
    if store
        .endpoint(id)
        .await
        .map_err(LifecycleError::from)?
        .is_none()
    {
        return Err(ProxyError::EndpointNotFound);
    }
    let secret = store
        .role_secret(id, &params.role)
        .await
        .map_err(LifecycleError::from)?;
    Ok(Json(AccessControl {
        role_secret: secret.unwrap_or_default(),
        project_id: Some(id.to_owned()),
        allowed_ips: None,
        allowed_vpc_endpoint_ids: None,
        block_public_connections: None,
        block_vpc_connections: None,
    }))
}

async fn jwks(
    State(service): State<Arc<Service>>,
    Path(endpointish): Path<String>,
) -> Result<Json<Jwks>, ProxyError> {
    let (id, _) = split_pooler(&endpointish);
    let row = service
        .computes
        .store()
        .endpoint(id)
        .await
        .map_err(LifecycleError::from)?
        .ok_or(ProxyError::EndpointNotFound)?;
    let jwks: Vec<JwksSettings> = serde_json::from_value(row.jwks).unwrap_or_default();
    Ok(Json(Jwks { jwks }))
}

/// Gateways report at most this many endpoints per report (the rest are ignored).
const MAX_REPORTED: usize = 10_000;
/// An open session holds its endpoint for this many report intervals.
const LEASE_INTERVALS: u32 = 3;
/// The longest gateway id accepted.
const MAX_GATEWAY_ID: usize = 128;
/// Bounds on the interval a gateway says it reports at.
const REPORT_INTERVAL_MS: std::ops::RangeInclusive<u64> = 50..=60_000;

/// `POST /proxy/api/v1/activity`: a gateway's activity report (see [`ActivityReport`]).
async fn activity(
    State(service): State<Arc<Service>>,
    report: Result<Json<ActivityReport>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ActivityReply>, ProxyError> {
    let Json(report) = report.map_err(|e| ProxyError::BadRequest(e.body_text()))?;
    if !REPORT_INTERVAL_MS.contains(&report.interval_ms) {
        return Err(ProxyError::BadRequest(format!(
            "interval_ms must be between {} and {}",
            REPORT_INTERVAL_MS.start(),
            REPORT_INTERVAL_MS.end()
        )));
    }
    service.metrics.activity_reports.inc();
    let entries: Vec<GatewayActivity> = report
        .endpoints
        .iter()
        .take(MAX_REPORTED)
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
                .take(MAX_REPORTED)
                .map(|id| split_pooler(id).0.to_owned()),
        )
        .collect();
    ids.sort();
    ids.dedup();
    let interval = std::time::Duration::from_millis(report.interval_ms);
    let store = service.computes.store();
    let inactive = store
        .record_activity(&entries, interval * LEASE_INTERVALS, &ids)
        .await
        .map_err(LifecycleError::from)?;
    let mut reply = ActivityReply {
        inactive,
        ..ActivityReply::default()
    };
    if let Some(gateway) = report.gateway_id.as_deref() {
        if gateway.is_empty() || gateway.len() > MAX_GATEWAY_ID {
            return Err(ProxyError::BadRequest(format!(
                "gateway_id must be 1-{MAX_GATEWAY_ID} characters"
            )));
        }
        let changes = store
            .gateway_report(gateway, interval, report.role_changes_applied)
            .await
            .map_err(LifecycleError::from)?;
        reply.role_changes = changes.changes;
        reply.role_changes_cursor = Some(changes.cursor);
        reply.role_changes_truncated = changes.truncated;
    }
    Ok(Json(reply))
}
