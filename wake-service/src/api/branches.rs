//! `/v1/endpoints/{id}/branches`: throwaway copies of a database (admin token). Handlers
//! parse, call `lifecycle::Computes` and map errors; the operations that touch a compute run
//! in tasks of their own, so a client that goes away never cuts one in half.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use wake_api::admin::{Branch, BranchList, CreateBranch, DeletedBranches};

use super::admin::detached;
use super::{ApiError, ApiJson, Service};

pub fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route(
            "/v1/endpoints/{id}/branches",
            get(list).post(create).delete(delete_labelled),
        )
        .route(
            "/v1/endpoints/{id}/branches/{name}",
            get(one).delete(remove),
        )
        .route("/v1/endpoints/{id}/branches/{name}/reset", post(reset))
}

/// `?label=key=value`.
#[derive(Deserialize)]
struct LabelQuery {
    label: Option<String>,
}

/// The `key=value` of a label filter.
fn label(
    query: Result<Query<LabelQuery>, QueryRejection>,
) -> Result<Option<(String, String)>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    query
        .label
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| ApiError::BadRequest(format!("label filter '{l}' is not key=value")))
        })
        .transpose()
}

async fn create(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<CreateBranch>,
) -> Result<Response, ApiError> {
    let branch = detached(&service, move |service| async move {
        service.computes.create_branch(&id, &request).await
    })
    .await??;
    Ok((StatusCode::CREATED, Json(branch)).into_response())
}

async fn list(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    query: Result<Query<LabelQuery>, QueryRejection>,
) -> Result<Json<BranchList>, ApiError> {
    let label = label(query)?;
    let filter = label.as_ref().map(|(k, v)| (k.as_str(), v.as_str()));
    let branches = service.computes.branches(&id, filter).await?;
    Ok(Json(BranchList { branches }))
}

async fn one(
    State(service): State<Arc<Service>>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<Branch>, ApiError> {
    Ok(Json(service.computes.branch(&id, &name).await?))
}

async fn remove(
    State(service): State<Arc<Service>>,
    Path((id, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    detached(&service, move |service| async move {
        service.computes.delete_branch(&id, &name).await
    })
    .await??;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE …/branches?label=key=value`: every branch with the label. A label is required,
/// so that no request deletes every branch by accident.
async fn delete_labelled(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    query: Result<Query<LabelQuery>, QueryRejection>,
) -> Result<Json<DeletedBranches>, ApiError> {
    let (key, value) = label(query)?.ok_or_else(|| {
        ApiError::BadRequest(
            "DELETE …/branches needs ?label=key=value (or DELETE …/branches/{name})".into(),
        )
    })?;
    let deleted = detached(&service, move |service| async move {
        service
            .computes
            .delete_branches_labelled(&id, (&key, &value))
            .await
    })
    .await??;
    Ok(Json(DeletedBranches { deleted }))
}

async fn reset(
    State(service): State<Arc<Service>>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<Branch>, ApiError> {
    let branch = detached(&service, move |service| async move {
        service.computes.reset_branch(&id, &name).await
    })
    .await??;
    Ok(Json(branch))
}
