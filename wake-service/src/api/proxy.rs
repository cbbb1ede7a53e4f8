//! `/proxy/api/v1`: the Neon-compatible API the gateway (or Neon's own proxy) calls.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use wake_api::proxy::{
    AccessControl, ActivityReply, ActivityReport, Jwks, MetricsAuxInfo, WakeCompute,
};
use wake_api::split_pooler;

use super::{ProxyError, Service};
use crate::lifecycle::{stored_cu, WakeTrigger};

pub fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/proxy/api/v1/wake_compute", get(wake_compute))
        .route(
            "/proxy/api/v1/get_endpoint_access_control",
            get(access_control),
        )
        .route("/proxy/api/v1/endpoints/{id}/jwks", get(jwks))
        .route(
            "/proxy/api/v1/activity",
            post(activity).layer(DefaultBodyLimit::max(MAX_ACTIVITY_REPORT_BYTES)),
        )
}

/// The largest activity report accepted: what a gateway sends at the limits (10 000 endpoints
/// in each list, 10 000 usage entries of 63-character ids and counters of 16 digits) is about
/// 4.4 MB; axum's default, 2 MiB, would refuse it, and with it every later report of that
/// gateway (its usage batch is resent as it was).
const MAX_ACTIVITY_REPORT_BYTES: usize = 8 << 20;

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
    let (row, cold_start_info) = match service.computes.wake_detached(id, WakeTrigger::Proxy).await
    {
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
        pool_max_conns: Some(stored_cu(row.current_cu).size().gateway_pool_max_conns),
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
    let role_secret = service.computes.access_secret(id, &params.role).await?;
    Ok(Json(AccessControl {
        role_secret,
        project_id: Some(id.to_owned()),
        allowed_ips: None,
        allowed_vpc_endpoint_ids: None,
        block_public_connections: None,
        block_vpc_connections: None,
    }))
}

/// The endpoint's JWKS rules in Neon's shape, with `jwt_login` when it has any.
async fn jwks(
    State(service): State<Arc<Service>>,
    Path(endpointish): Path<String>,
) -> Result<Json<Jwks>, ProxyError> {
    let (id, _) = split_pooler(&endpointish);
    Ok(Json(service.computes.proxy_jwks(id).await?))
}

/// `POST /proxy/api/v1/activity`: a gateway's activity report (see [`ActivityReport`] and
/// [`crate::lifecycle::Computes::record_activity`]).
async fn activity(
    State(service): State<Arc<Service>>,
    report: Result<Json<ActivityReport>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ActivityReply>, ProxyError> {
    let Json(report) = report.map_err(|e| ProxyError::BadRequest(e.body_text()))?;
    // A malformed usage report refuses the whole report: nothing of it is stored.
    if let Some(usage) = &report.usage {
        service.metering.check(usage)?;
    }
    let mut reply = service.computes.record_activity(&report).await?;
    if let Some(usage) = &report.usage {
        let applied = service.metering.apply(usage).await?;
        reply.usage_applied = Some(usage.report_id.clone());
        reply.usage_unknown = applied.unknown;
    }
    Ok(Json(reply))
}
