//! `/v1`: endpoints, roles, databases, wake and suspend, usage (admin token).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use wake_api::admin::{
    ComputeEvent, CreateDatabase, CreateEndpoint, CreateJwks, CreateRole, Database, Endpoint,
    JwksList, PatchEndpoint, PatchRole, Resize, Role,
};

use time::OffsetDateTime;
use wake_api::usage::{EndpointUsage, Granularity, UsageEvents, UsageSummary};

use super::{ApiError, ApiJson, Service};
use crate::lifecycle::{LifecycleError, SuspendRequest, WakeTrigger};
use crate::store::EndpointRow;

pub fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/v1/endpoints", get(list).post(create))
        .route("/v1/endpoints/{id}", get(one).patch(update).delete(remove))
        .route("/v1/endpoints/{id}/roles", post(create_role))
        .route(
            "/v1/endpoints/{id}/roles/{name}",
            patch(update_role).delete(delete_role),
        )
        .route("/v1/endpoints/{id}/databases", post(create_database))
        .route("/v1/endpoints/{id}/jwks", get(list_jwks).post(create_jwks))
        .route("/v1/endpoints/{id}/jwks/{jwks_id}", delete(delete_jwks))
        .route("/v1/endpoints/{id}/wake", post(wake))
        .route("/v1/endpoints/{id}/suspend", post(suspend))
        .route("/v1/endpoints/{id}/resize", post(resize))
        .route("/v1/endpoints/{id}/events", get(events))
        .route("/v1/endpoints/{id}/usage", get(endpoint_usage))
        .route("/v1/usage", get(usage_summary))
        .route("/v1/usage/events", get(usage_events))
}

async fn render(service: &Service, row: EndpointRow) -> Result<Endpoint, ApiError> {
    let store = service.computes.store();
    let roles = store
        .roles(&row.id)
        .await
        .map_err(crate::lifecycle::LifecycleError::from)?;
    let databases = store
        .databases(&row.id)
        .await
        .map_err(crate::lifecycle::LifecycleError::from)?;
    Ok(Endpoint {
        addresses: service.computes.addresses(&row),
        size: service.computes.size_of(&row),
        id: row.id,
        state: row.state,
        operation: row.operation.map(|o| o.as_str().to_owned()),
        suspend_timeout_seconds: row.suspend_timeout_seconds,
        min_cu: row.min_cu,
        max_cu: row.max_cu,
        current_cu: row.current_cu,
        driver: row.driver,
        roles,
        databases,
        created_at: row.created_at,
        updated_at: row.updated_at,
        last_active: row.last_active,
        suspended_at: row.suspended_at,
        railway: row.railway.map(|binding| binding.service),
    })
}

async fn row(service: &Service, id: &str) -> Result<EndpointRow, ApiError> {
    service
        .computes
        .store()
        .endpoint(id)
        .await
        .map_err(crate::lifecycle::LifecycleError::from)?
        .ok_or_else(|| ApiError::NotFound(format!("endpoint '{id}' does not exist")))
}

async fn list(State(service): State<Arc<Service>>) -> Result<Json<Vec<Endpoint>>, ApiError> {
    let rows = service
        .computes
        .store()
        .endpoints()
        .await
        .map_err(crate::lifecycle::LifecycleError::from)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(render(&service, row).await?);
    }
    Ok(Json(out))
}

async fn one(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    let row = row(&service, &id).await?;
    Ok(Json(render(&service, row).await?))
}

async fn create(
    State(service): State<Arc<Service>>,
    ApiJson(request): ApiJson<CreateEndpoint>,
) -> Result<Response, ApiError> {
    let row = service.computes.create(&request).await?;
    Ok((StatusCode::CREATED, Json(render(&service, row).await?)).into_response())
}

async fn update(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<PatchEndpoint>,
) -> Result<Json<Endpoint>, ApiError> {
    let row = service.computes.update(&id, &patch).await?;
    Ok(Json(render(&service, row).await?))
}

async fn remove(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    service.computes.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs an operation on the endpoint's Postgres in a task of its own: a client that goes
/// away never cuts it in half (what was recorded as pending would wait for the next start).
/// The outer error is a lost task; the operation's own is left to the caller's API to
/// classify (`/v1`'s or Neon's), hence `.await??`.
pub(super) async fn detached<T, F>(
    service: &Arc<Service>,
    operation: impl FnOnce(Arc<Service>) -> F,
) -> Result<Result<T, crate::lifecycle::LifecycleError>, ApiError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, crate::lifecycle::LifecycleError>> + Send + 'static,
{
    tokio::spawn(operation(service.clone())).await.map_err(|e| {
        tracing::error!(error = %e, "operation task failed");
        ApiError::Unavailable("the operation failed; try again".into())
    })
}

async fn create_role(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<CreateRole>,
) -> Result<Response, ApiError> {
    let name = request.name.clone();
    let created_at = detached(&service, move |service| async move {
        service
            .computes
            .create_role(&id, &request.name, &request.password)
            .await
    })
    .await??;
    let role = Role { name, created_at };
    Ok((StatusCode::CREATED, Json(role)).into_response())
}

/// `PATCH /v1/endpoints/{id}/roles/{name}`: a new password. Answers once Postgres, PgBouncer
/// and every gateway that reports have dropped the old one.
async fn update_role(
    State(service): State<Arc<Service>>,
    Path((id, name)): Path<(String, String)>,
    ApiJson(request): ApiJson<PatchRole>,
) -> Result<Json<Role>, ApiError> {
    let role = name.clone();
    let created_at = detached(&service, move |service| async move {
        service
            .computes
            .update_role(&id, &role, &request.password)
            .await
    })
    .await??;
    Ok(Json(Role { name, created_at }))
}

/// `DELETE /v1/endpoints/{id}/roles/{name}`: drops the role (409 while it owns a database).
async fn delete_role(
    State(service): State<Arc<Service>>,
    Path((id, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    detached(&service, move |service| async move {
        service.computes.delete_role(&id, &name).await
    })
    .await??;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_database(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<CreateDatabase>,
) -> Result<Response, ApiError> {
    let (name, owner) = (request.name.clone(), request.owner.clone());
    detached(&service, move |service| async move {
        service.computes.create_database(&id, &name, &owner).await
    })
    .await??;
    let database = Database {
        name: request.name,
        owner: request.owner,
    };
    Ok((StatusCode::CREATED, Json(database)).into_response())
}

/// `POST /v1/endpoints/{id}/jwks`: 201 with the rule once the compute is prepared for it.
async fn create_jwks(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<CreateJwks>,
) -> Result<Response, ApiError> {
    let rule = detached(&service, move |service| async move {
        service.computes.create_jwks(&id, &request).await
    })
    .await??;
    Ok((StatusCode::CREATED, Json(rule)).into_response())
}

async fn list_jwks(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Result<Json<JwksList>, ApiError> {
    let jwks = service.computes.jwks_rules(&id).await?;
    Ok(Json(JwksList { jwks }))
}

async fn delete_jwks(
    State(service): State<Arc<Service>>,
    Path((id, rule)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    service.computes.delete_jwks(&id, &rule).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn wake(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    let (row, _) = service
        .computes
        .wake_detached(&id, WakeTrigger::Api)
        .await
        .ok_or_else(|| {
            ApiError::Unavailable(format!(
                "endpoint '{id}' did not become active within {} s; try again",
                service.computes.wake_timeout().as_secs()
            ))
        })??;
    Ok(Json(render(&service, row).await?))
}

async fn resize(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<Resize>,
) -> Result<Json<Endpoint>, ApiError> {
    let row = service.computes.resize(&id, request.cu).await?;
    Ok(Json(render(&service, row).await?))
}

#[derive(Deserialize)]
struct SuspendQuery {
    #[serde(default)]
    force: bool,
}

async fn suspend(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    query: Result<Query<SuspendQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Endpoint>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let request = if query.force {
        SuspendRequest::Forced
    } else {
        SuspendRequest::Api
    };
    let row = service.computes.suspend(&id, request).await?;
    Ok(Json(render(&service, row).await?))
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default = "default_event_limit")]
    limit: i64,
}

fn default_event_limit() -> i64 {
    1000
}

/// The newest `limit` (1-10000, default 1000) lifecycle events, oldest first.
async fn events(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<ComputeEvent>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if !(1..=10_000).contains(&query.limit) {
        return Err(ApiError::Invalid(
            "limit must be between 1 and 10000".into(),
        ));
    }
    row(&service, &id).await?;
    let events = service
        .computes
        .store()
        .events(&id, query.limit)
        .await
        .map_err(crate::lifecycle::LifecycleError::from)?;
    Ok(Json(events))
}

#[derive(Deserialize)]
struct UsageQuery {
    #[serde(default, with = "time::serde::rfc3339::option")]
    from: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    to: Option<OffsetDateTime>,
    granularity: Option<Granularity>,
}

/// A usage request's checks are the caller's mistakes: 400.
fn usage_error(e: LifecycleError) -> ApiError {
    match e {
        LifecycleError::Invalid(m) => ApiError::BadRequest(m),
        other => other.into(),
    }
}

/// `GET /v1/endpoints/{id}/usage?from=&to=&granularity=hour|day` (RFC 3339 times; default
/// the last 24 hours by hour, or 30 days by day). Never wakes the compute.
async fn endpoint_usage(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EndpointUsage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let granularity = query.granularity.unwrap_or(Granularity::Hour);
    let usage = service
        .metering
        .endpoint_usage(&id, query.from, query.to, granularity)
        .await
        .map_err(usage_error)?;
    Ok(Json(usage))
}

/// `GET /v1/usage?from=&to=` (default the last 30 days): totals per endpoint.
async fn usage_summary(
    State(service): State<Arc<Service>>,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<UsageSummary>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if query.granularity.is_some() {
        return Err(ApiError::BadRequest(
            "granularity applies to /v1/endpoints/{id}/usage only".into(),
        ));
    }
    let summary = service
        .metering
        .summary(query.from, query.to)
        .await
        .map_err(usage_error)?;
    Ok(Json(summary))
}

#[derive(Deserialize)]
struct UsageEventsQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/usage/events?after=<cursor>&limit=` (1-1000, default 100): consumption events in
/// Neon's format, oldest first.
async fn usage_events(
    State(service): State<Arc<Service>>,
    query: Result<Query<UsageEventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<UsageEvents>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let events = service
        .metering
        .events(query.after.as_deref(), query.limit)
        .await
        .map_err(usage_error)?;
    Ok(Json(events))
}
