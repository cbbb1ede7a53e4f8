//! The HTTP API: `fn app(service) -> Router` is the whole surface, and the test seam.
//!
//! Layers, outermost first: request metrics (by route template) → bearer-token check per
//! route group → handlers. Handlers parse the request, call [`Computes`] (which owns the
//! lifecycle and its policy) or read the store, and map the outcome; errors become responses
//! in one place per API shape:
//! [`ApiError`] for `/v1` (`{"error":{"code","message"}}`) and [`ProxyError`] for the
//! Neon-compatible `/proxy/api/v1` (Neon's `{"error", "status": {...}}`).

mod admin;
mod branches;
mod neon;
mod openapi;
mod proxy;

use std::sync::Arc;

use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;
use wake_api::admin::{ErrorBody, ErrorDetail};
use wake_api::proxy::{ControlPlaneError, Reason};

use crate::lifecycle::{Computes, LifecycleError};
use crate::metrics::Metrics;
use crate::usage::Metering;

/// What every handler shares.
pub struct Service {
    pub computes: Arc<Computes>,
    pub metering: Arc<Metering>,
    pub metrics: Arc<Metrics>,
    /// Grants `/v1` and `/proxy/api/v1`.
    pub admin_token: String,
    /// Grants only `/proxy/api/v1` (what the gateway holds).
    pub proxy_token: Option<String>,
}

pub fn app(service: Arc<Service>) -> Router {
    let admin =
        admin::routes()
            .merge(branches::routes())
            .route_layer(middleware::from_fn_with_state(
                service.clone(),
                require_admin,
            ));
    let proxy = proxy::routes().route_layer(middleware::from_fn_with_state(
        service.clone(),
        require_proxy,
    ));
    let neon = neon::routes().route_layer(middleware::from_fn_with_state(
        service.clone(),
        require_neon_key,
    ));
    Router::new()
        .merge(admin)
        .merge(proxy)
        .nest("/api/v2", neon)
        .route("/openapi.json", get(openapi::document))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(service.clone(), count))
        .with_state(service)
}

/// How long `/readyz` waits for the state store: a store that hangs makes the replica not
/// ready in bounded time (a load balancer's probe gets an answer).
const READY_STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn readyz(State(service): State<Arc<Service>>) -> Response {
    let ping = tokio::time::timeout(READY_STORE_TIMEOUT, service.computes.store().ping()).await;
    match ping {
        Ok(Ok(())) => "ready".into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: state store unreachable");
            ApiError::Unavailable("state store unreachable".into()).into_response()
        }
        Err(_) => {
            tracing::warn!("not ready: the state store did not answer in time");
            ApiError::Unavailable("state store unreachable".into()).into_response()
        }
    }
}

async fn metrics(State(service): State<Arc<Service>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        service.metrics.encode(),
    )
        .into_response()
}

/// Counts every request by route template and status.
async fn count(State(service): State<Arc<Service>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    service
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Constant time in the content and the length of both: the digests are compared, so a
/// wrong guess tells nothing about the token's length either.
fn token_matches(given: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    !expected.is_empty()
        && bool::from(
            Sha256::digest(given.as_bytes())
                .as_slice()
                .ct_eq(Sha256::digest(expected.as_bytes()).as_slice()),
        )
}

fn is_admin(service: &Service, request: &Request) -> bool {
    bearer(request.headers()).is_some_and(|token| token_matches(token, &service.admin_token))
}

async fn require_admin(
    State(service): State<Arc<Service>>,
    request: Request,
    next: Next,
) -> Response {
    if is_admin(&service, &request) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// Neon's API key is the admin token.
async fn require_neon_key(
    State(service): State<Arc<Service>>,
    request: Request,
    next: Next,
) -> Response {
    if is_admin(&service, &request) {
        next.run(request).await
    } else {
        neon::NeonError::Unauthorized.into_response()
    }
}

async fn require_proxy(
    State(service): State<Arc<Service>>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = bearer(request.headers()).is_some_and(|token| {
        token_matches(token, &service.admin_token)
            || service
                .proxy_token
                .as_deref()
                .is_some_and(|expected| token_matches(token, expected))
    });
    if allowed {
        next.run(request).await
    } else {
        ProxyError::Unauthorized.into_response()
    }
}

/// `/v1` errors: `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized,
    NotFound(String),
    MethodNotAllowed,
    Conflict(String),
    Invalid(String),
    Unavailable(String),
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::NotFound(_)
            | LifecycleError::RoleNotFound { .. }
            | LifecycleError::RuleNotFound { .. }
            | LifecycleError::BranchNotFound { .. }
            | LifecycleError::DatabaseNotFound { .. } => ApiError::NotFound(e.to_string()),
            LifecycleError::Conflict(m) => ApiError::Conflict(m),
            LifecycleError::PasswordUnavailable { .. } => ApiError::Conflict(e.to_string()),
            LifecycleError::BadRule(m) => ApiError::BadRequest(m),
            LifecycleError::Invalid(m) => ApiError::Invalid(m),
            LifecycleError::Busy(_) => ApiError::Unavailable(e.to_string()),
            LifecycleError::Compute { endpoint, source } => {
                tracing::error!(endpoint, error = %source, "compute error");
                // The admin API is the operator's: the driver's reason (a Railway
                // deployment's status, a GraphQL error) is what they need. It names no secret.
                ApiError::Unavailable(format!(
                    "the compute of endpoint '{endpoint}' failed: {source}"
                ))
            }
            LifecycleError::Store(source) => {
                tracing::error!(error = %source, "state store error");
                ApiError::Unavailable("the state store is unavailable; try again".into())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid bearer token (Authorization: Bearer <admin token>)".into(),
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route".into(),
            ),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            ApiError::Invalid(m) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid", m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// `/proxy/api/v1` errors, in Neon's shape.
#[derive(Debug)]
pub enum ProxyError {
    Unauthorized,
    BadRequest(String),
    EndpointNotFound,
    /// Worth retrying after the delay.
    Busy(u64),
    /// A wake still in progress on a slow driver: retry after the delay, and keep retrying
    /// for the budget (milliseconds from the first try).
    Starting {
        retry_ms: u64,
        budget_ms: u64,
    },
    /// The compute could not be started.
    ComputeFailed,
}

impl From<LifecycleError> for ProxyError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::NotFound(_) => ProxyError::EndpointNotFound,
            LifecycleError::RoleNotFound { .. }
            | LifecycleError::RuleNotFound { .. }
            | LifecycleError::BranchNotFound { .. }
            | LifecycleError::DatabaseNotFound { .. }
            | LifecycleError::PasswordUnavailable { .. } => ProxyError::BadRequest(e.to_string()),
            LifecycleError::Busy(_) => ProxyError::Busy(200),
            LifecycleError::Store(source) => {
                tracing::error!(error = %source, "state store error");
                ProxyError::Busy(500)
            }
            LifecycleError::Compute { endpoint, source } => {
                tracing::error!(endpoint, error = %source, "compute error");
                ProxyError::ComputeFailed
            }
            LifecycleError::Conflict(m)
            | LifecycleError::Invalid(m)
            | LifecycleError::BadRule(m) => ProxyError::BadRequest(m),
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ProxyError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                ControlPlaneError::new(
                    "UNAUTHENTICATED",
                    "missing or invalid bearer token",
                    Reason::Unknown,
                ),
            ),
            ProxyError::BadRequest(m) => (
                StatusCode::BAD_REQUEST,
                ControlPlaneError::new("INVALID_ARGUMENT", m, Reason::Unknown),
            ),
            ProxyError::EndpointNotFound => (
                StatusCode::NOT_FOUND,
                ControlPlaneError::new("NOT_FOUND", "Endpoint not found", Reason::EndpointNotFound),
            ),
            ProxyError::Busy(delay) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ControlPlaneError::new(
                    "UNAVAILABLE",
                    "the endpoint is busy with another operation",
                    Reason::RunningOperations,
                )
                .with_retry_delay_ms(delay),
            ),
            ProxyError::Starting {
                retry_ms,
                budget_ms,
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                ControlPlaneError::new(
                    "UNAVAILABLE",
                    "the endpoint's compute is starting",
                    Reason::RunningOperations,
                )
                .with_retry_delay_ms(retry_ms)
                .with_wake_budget_ms(budget_ms),
            ),
            ProxyError::ComputeFailed => (
                StatusCode::SERVICE_UNAVAILABLE,
                ControlPlaneError::new(
                    "UNAVAILABLE",
                    "the endpoint's compute could not be started",
                    Reason::Unknown,
                ),
            ),
        };
        (status, axum::Json(body)).into_response()
    }
}

/// `axum::Json` whose rejections are [`ApiError::BadRequest`] with serde's message.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let token = "0123456789abcdef0123456789abcdef";
        assert!(token_matches(token, token));
        for wrong in [
            "",
            "0123456789abcdef",
            &token[..31],
            &format!("{token}0"),
            "x",
        ] {
            assert!(!token_matches(wrong, token), "{wrong}");
        }
        assert!(!token_matches("", ""));
    }
}
