//! The client for the control plane's Neon-compatible proxy API (`wake_compute`,
//! `get_endpoint_access_control`, and the wake service's own `activity` report; message types
//! from `wake-api`), and the error every call fails with, which knows whether it is worth
//! retrying and whether it means "no such endpoint".
//!
//! One call is one HTTP request: retries, caching and single-flight belong to
//! [`crate::control_plane::routes::RouteTable`], which talks to the control plane through the
//! [`ControlPlaneApi`] trait so that tests can count calls with an in-memory fake.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use wake_api::proxy::{
    AccessControl, ActivityReply, ActivityReport, ControlPlaneError as ErrorBody, WakeCompute,
};

use crate::base::conn_info::EndpointId;
use crate::base::error::{ErrorKind, ReportableError};
use crate::base::retry::Retryable;
use crate::obs::labels::{Call, CallOutcome};
use crate::obs::metrics::Metrics;

/// The proxy-API calls the gateway makes.
#[async_trait]
pub trait ControlPlaneApi: Send + Sync + 'static {
    /// `wake_compute`: where `endpointish` (`ep` or `ep-pooler`) accepts connections now,
    /// starting its compute if needed. One request, no retries.
    async fn wake_compute(
        &self,
        endpointish: &EndpointId,
    ) -> Result<WakeCompute, ControlPlaneError>;

    /// `get_endpoint_access_control`: the role's SCRAM secret ("" for an unknown role).
    async fn access_control(
        &self,
        endpoint: &EndpointId,
        role: &str,
    ) -> Result<AccessControl, ControlPlaneError>;

    /// `POST activity`: what this gateway's clients are doing; the reply names the reported
    /// and cached endpoints that are not active. One request, no retries.
    async fn report_activity(
        &self,
        report: &ActivityReport,
    ) -> Result<ActivityReply, ControlPlaneError>;
}

/// The path of a call under the proxy API.
fn path(call: Call) -> &'static str {
    match call {
        Call::WakeCompute => "wake_compute",
        Call::AccessControl => "get_endpoint_access_control",
        Call::Activity => "activity",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// No answer: connection refused, timeout, connection reset. Always worth retrying.
    #[error("control plane unreachable: {0}")]
    Transport(String),
    /// An error answer in the proxy API's error shape.
    #[error("control plane answered {status}: {}", .body.error)]
    Api { status: u16, body: ErrorBody },
    /// An error answer without a readable body: retried when it is a 5xx.
    #[error("control plane answered {status}")]
    Status { status: u16 },
    /// A success answer that does not make sense.
    #[error("invalid control-plane answer: {0}")]
    Invalid(String),
}

impl ControlPlaneError {
    /// The control plane said the endpoint (or its project) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ControlPlaneError::Api { body, .. } if body.reason().is_not_found())
    }

    /// The outcome label for metrics.
    fn outcome(&self) -> CallOutcome {
        match self {
            _ if self.is_not_found() => CallOutcome::NotFound,
            ControlPlaneError::Transport(_) => CallOutcome::Unreachable,
            _ if self.is_retryable() => CallOutcome::Retryable,
            _ => CallOutcome::Error,
        }
    }

    /// A message meant for the end user when the control plane refused deliberately (quota,
    /// disabled endpoint): its own `user_facing_message`. Never for transport failures, 5xx,
    /// or refusals of the gateway's own credentials.
    pub fn user_facing_message(&self) -> Option<&str> {
        match self {
            ControlPlaneError::Api { status, body }
                if !body.is_retryable() && !matches!(status, 401 | 403) && *status < 500 =>
            {
                body.status
                    .as_ref()
                    .and_then(|s| s.details.user_facing_message.as_ref())
                    .map(|m| m.message.as_str())
            }
            _ => None,
        }
    }
}

impl Retryable for ControlPlaneError {
    fn is_retryable(&self) -> bool {
        match self {
            ControlPlaneError::Transport(_) => true,
            ControlPlaneError::Api { body, .. } => body.is_retryable(),
            ControlPlaneError::Status { status } => *status >= 500,
            ControlPlaneError::Invalid(_) => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ControlPlaneError::Api { body, .. } => body.retry_delay_ms().map(Duration::from_millis),
            _ => None,
        }
    }
}

impl ReportableError for ControlPlaneError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::ControlPlane
    }
}

/// The bearer token for the control plane: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Token {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(Token(s.trim().to_owned()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Where the control plane is and how to talk to it.
#[derive(Clone, Debug)]
pub struct ControlPlaneConfig {
    /// The proxy API's base, e.g. `http://127.0.0.1:4400/proxy/api/v1` (no trailing `/`).
    pub url: String,
    pub token: Option<Token>,
    /// Per request, including a `wake_compute` the control plane holds while a compute starts.
    pub request_timeout: Duration,
}

/// The HTTP client for the proxy API.
pub struct ControlPlaneClient {
    http: reqwest::Client,
    config: ControlPlaneConfig,
    metrics: Arc<Metrics>,
}

impl ControlPlaneClient {
    pub fn new(
        config: ControlPlaneConfig,
        metrics: Arc<Metrics>,
    ) -> Result<ControlPlaneClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(2)))
            .user_agent(concat!("gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(ControlPlaneClient {
            http,
            config,
            metrics,
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        call: Call,
        query: &[(&str, &str)],
    ) -> Result<T, ControlPlaneError> {
        let request = self.http.get(self.url(call)).query(query);
        self.call(call, request).await
    }

    async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        call: Call,
        body: &B,
    ) -> Result<T, ControlPlaneError> {
        let request = self.http.post(self.url(call)).json(body);
        self.call(call, request).await
    }

    fn url(&self, call: Call) -> String {
        format!("{}/{}", self.config.url, path(call))
    }

    /// Sends `request` (with the token and a request id) and counts it in the metrics.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        call: Call,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ControlPlaneError> {
        let started = Instant::now();
        let result = self.send(call, request).await;
        let outcome = match &result {
            Ok(_) => CallOutcome::Ok,
            Err(e) => e.outcome(),
        };
        self.metrics.control_plane_requests.inc(call, outcome);
        self.metrics
            .control_plane_request_seconds
            .observe(call, started.elapsed().as_secs_f64());
        result
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        call: Call,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ControlPlaneError> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut request = request.header("X-Request-ID", &request_id);
        if let Some(token) = &self.config.token {
            request = request.bearer_auth(token.expose());
        }
        let response = request
            .send()
            .await
            .map_err(|e| ControlPlaneError::Transport(transport_error(&e)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| ControlPlaneError::Transport(transport_error(&e)))?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| ControlPlaneError::Invalid(format!("{}: {e}", path(call))));
        }
        let status = status.as_u16();
        Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(body) => ControlPlaneError::Api { status, body },
            Err(_) => ControlPlaneError::Status { status },
        })
    }
}

/// A transport error's description without the URL (which carries endpoint and role names).
fn transport_error(error: &reqwest::Error) -> String {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut cause = std::error::Error::source(error);
    let mut text = what.to_owned();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

#[async_trait]
impl ControlPlaneApi for ControlPlaneClient {
    async fn wake_compute(
        &self,
        endpointish: &EndpointId,
    ) -> Result<WakeCompute, ControlPlaneError> {
        let session_id = uuid::Uuid::new_v4().to_string();
        self.get(
            Call::WakeCompute,
            &[
                ("endpointish", endpointish.as_str()),
                ("session_id", &session_id),
                ("application_name", "gateway"),
            ],
        )
        .await
    }

    async fn access_control(
        &self,
        endpoint: &EndpointId,
        role: &str,
    ) -> Result<AccessControl, ControlPlaneError> {
        self.get(
            Call::AccessControl,
            &[("endpointish", endpoint.as_str()), ("role", role)],
        )
        .await
    }

    async fn report_activity(
        &self,
        report: &ActivityReport,
    ) -> Result<ActivityReply, ControlPlaneError> {
        self.post(Call::Activity, report).await
    }
}

/// What clients are told when the control plane cannot provide their endpoint (HTTP 503 body,
/// session FATAL): the control plane's own message when it refused on purpose (a quota, a
/// disabled endpoint), otherwise a fixed text. Never addresses or transport details.
pub fn unavailable(error: &ControlPlaneError) -> String {
    match error.user_facing_message() {
        Some(message) => format!("endpoint is unavailable: {message}"),
        None => "endpoint is temporarily unavailable; please try again later".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::labels::Label;
    use wake_api::proxy::Reason;

    fn api(status: u16, reason: Reason) -> ControlPlaneError {
        ControlPlaneError::Api {
            status,
            body: ErrorBody::new("CODE", "refused", reason),
        }
    }

    #[test]
    fn classification() {
        // (error, retryable, not found, metric outcome)
        let cases = [
            (
                ControlPlaneError::Transport("refused".into()),
                true,
                false,
                "unreachable",
            ),
            (api(404, Reason::EndpointNotFound), false, true, "not_found"),
            (api(404, Reason::ProjectNotFound), false, true, "not_found"),
            (
                api(503, Reason::RunningOperations),
                true,
                false,
                "retryable",
            ),
            (api(429, Reason::RateLimitExceeded), false, false, "error"),
            (api(500, Reason::Unknown), false, false, "error"),
            (
                ControlPlaneError::Api {
                    status: 500,
                    body: ErrorBody::new("CODE", "x", Reason::Unknown).with_retry_delay_ms(50),
                },
                true,
                false,
                "retryable",
            ),
            (
                ControlPlaneError::Status { status: 502 },
                true,
                false,
                "retryable",
            ),
            (
                ControlPlaneError::Status { status: 404 },
                false,
                false,
                "error",
            ),
            (
                ControlPlaneError::Invalid("x".into()),
                false,
                false,
                "error",
            ),
        ];
        for (error, retryable, not_found, outcome) in cases {
            assert_eq!(error.is_retryable(), retryable, "{error}");
            assert_eq!(error.is_not_found(), not_found, "{error}");
            assert_eq!(error.outcome().label(), outcome, "{error}");
        }
        let hinted = ControlPlaneError::Api {
            status: 503,
            body: ErrorBody::new("C", "busy", Reason::RunningOperations).with_retry_delay_ms(250),
        };
        assert_eq!(hinted.retry_after(), Some(Duration::from_millis(250)));
    }

    #[test]
    fn user_facing_messages_only_for_deliberate_refusals() {
        assert_eq!(
            api(423, Reason::ComputeTimeQuotaExceeded).user_facing_message(),
            Some("refused")
        );
        assert_eq!(
            api(401, Reason::Unknown).user_facing_message(),
            None,
            "the gateway's own credentials are not the user's business"
        );
        assert_eq!(
            api(503, Reason::RunningOperations).user_facing_message(),
            None
        );
        assert_eq!(
            ControlPlaneError::Transport("x".into()).user_facing_message(),
            None
        );
    }

    #[test]
    fn token_is_redacted() {
        let token: Token = "s3cret".parse().expect("token");
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        assert_eq!(token.expose(), "s3cret");
    }

    type Seen = Arc<std::sync::Mutex<Vec<String>>>;
    type Params = axum::extract::Query<std::collections::HashMap<String, String>>;

    /// Records one request as `call sorted-query auth=… request_id=…` (the session id, a fresh
    /// uuid, only checked).
    fn record(seen: &Seen, call: &str, query: &Params, headers: &axum::http::HeaderMap) {
        let mut pairs: Vec<String> = query
            .iter()
            .filter(|(k, v)| {
                k.as_str() != "session_id" || uuid::Uuid::parse_str(v.as_str()).is_err()
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        pairs.sort();
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let request_id = headers.contains_key("x-request-id");
        seen.lock().expect("lock").push(format!(
            "{call} {} auth={auth} request_id={request_id}",
            pairs.join("&")
        ));
    }

    async fn mock_wake(
        axum::extract::State(seen): axum::extract::State<Seen>,
        query: Params,
        headers: axum::http::HeaderMap,
    ) -> axum::response::Response {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        record(&seen, "wake", &query, &headers);
        let endpoint = query.get("endpointish").cloned().unwrap_or_default();
        let error =
            |status: StatusCode, body: ErrorBody| (status, axum::Json(body)).into_response();
        let found = |address: &str| {
            axum::Json(serde_json::json!({
                "address": address,
                "server_name": null,
                "aux": {
                    "endpoint_id": "db",
                    "project_id": "p",
                    "branch_id": "b",
                    "compute_id": "c",
                    "cold_start_info": "pool_miss"
                }
            }))
            .into_response()
        };
        match endpoint.as_str() {
            "db" => found("127.0.0.1:5432"),
            "db-pooler" => found("127.0.0.1:6432"),
            "busy" => error(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody::new("UNAVAILABLE", "starting", Reason::RunningOperations)
                    .with_retry_delay_ms(100),
            ),
            "broken" => (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
            "garbage" => "not json".into_response(),
            _ => error(
                StatusCode::NOT_FOUND,
                ErrorBody::new("NOT_FOUND", "no such endpoint", Reason::EndpointNotFound),
            ),
        }
    }

    async fn mock_access(
        axum::extract::State(seen): axum::extract::State<Seen>,
        query: Params,
        headers: axum::http::HeaderMap,
    ) -> axum::Json<serde_json::Value> {
        record(&seen, "access", &query, &headers);
        axum::Json(serde_json::json!({
            "role_secret": "SCRAM-SHA-256$4096:c2FsdA==$a:b",
            "project_id": "p",
            "allowed_ips": null
        }))
    }

    async fn mock_activity(
        axum::extract::State(seen): axum::extract::State<Seen>,
        headers: axum::http::HeaderMap,
        axum::Json(report): axum::Json<ActivityReport>,
    ) -> axum::Json<ActivityReply> {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let body = serde_json::to_string(&report).expect("serialize");
        seen.lock()
            .expect("lock")
            .push(format!("activity {body} auth={auth}"));
        axum::Json(ActivityReply {
            inactive: report.cached.into_iter().filter(|id| id != "db").collect(),
            ..ActivityReply::default()
        })
    }

    /// A stand-in control plane on a real socket: answers by endpoint name and records what
    /// it was asked.
    async fn mock_control_plane() -> (String, Seen) {
        let seen = Seen::default();
        let app = axum::Router::new()
            .route("/proxy/api/v1/wake_compute", axum::routing::get(mock_wake))
            .route(
                "/proxy/api/v1/get_endpoint_access_control",
                axum::routing::get(mock_access),
            )
            .route("/proxy/api/v1/activity", axum::routing::post(mock_activity))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/proxy/api/v1"), seen)
    }

    fn client(url: String, token: Option<&str>) -> (ControlPlaneClient, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let config = ControlPlaneConfig {
            url,
            token: token.map(|t| t.parse().expect("token")),
            request_timeout: Duration::from_secs(5),
        };
        (
            ControlPlaneClient::new(config, metrics.clone()).expect("client"),
            metrics,
        )
    }

    #[tokio::test]
    async fn the_http_client_speaks_the_proxy_api() {
        let (url, seen) = mock_control_plane().await;
        let (cp, metrics) = client(url, Some("t0ken"));
        let id = |s: &str| EndpointId::parse(s).expect("id");

        let woken = cp.wake_compute(&id("db")).await.expect("woken");
        assert_eq!(woken.address, "127.0.0.1:5432");
        let pooler = cp.wake_compute(&id("db-pooler")).await.expect("woken");
        assert_eq!(pooler.address, "127.0.0.1:6432");
        let access = cp.access_control(&id("db"), "alice").await.expect("ok");
        assert!(access.role_secret.starts_with("SCRAM-SHA-256$"));

        let ghost = cp.wake_compute(&id("ghost")).await.expect_err("404");
        assert!(ghost.is_not_found() && !ghost.is_retryable(), "{ghost}");
        let busy = cp.wake_compute(&id("busy")).await.expect_err("503");
        assert!(busy.is_retryable() && !busy.is_not_found(), "{busy}");
        assert_eq!(busy.retry_after(), Some(Duration::from_millis(100)));
        let broken = cp.wake_compute(&id("broken")).await.expect_err("500");
        assert!(matches!(broken, ControlPlaneError::Status { status: 500 }));
        assert!(broken.is_retryable());
        let garbage = cp.wake_compute(&id("garbage")).await.expect_err("bad JSON");
        assert!(matches!(garbage, ControlPlaneError::Invalid(_)));
        assert!(!garbage.is_retryable());

        let seen = seen.lock().expect("lock").clone();
        assert_eq!(
            seen[..3],
            [
                "wake application_name=gateway&endpointish=db auth=Bearer t0ken request_id=true",
                "wake application_name=gateway&endpointish=db-pooler auth=Bearer t0ken request_id=true",
                "access endpointish=db&role=alice auth=Bearer t0ken request_id=true",
            ]
        );
        let count = |call, outcome| metrics.control_plane_requests.get(call, outcome);
        assert_eq!(count(Call::WakeCompute, CallOutcome::Ok), 2);
        assert_eq!(count(Call::AccessControl, CallOutcome::Ok), 1);
        assert_eq!(count(Call::WakeCompute, CallOutcome::NotFound), 1);
        assert_eq!(count(Call::WakeCompute, CallOutcome::Retryable), 2);
        assert_eq!(count(Call::WakeCompute, CallOutcome::Error), 1);
        assert_eq!(
            metrics
                .control_plane_request_seconds
                .with(Call::WakeCompute)
                .get_sample_count(),
            6
        );
    }

    #[tokio::test]
    async fn activity_reports_are_posted_with_the_token() {
        let (url, seen) = mock_control_plane().await;
        let (cp, metrics) = client(url, Some("t0ken"));
        let report = ActivityReport {
            interval_ms: 1000,
            endpoints: vec![wake_api::proxy::EndpointActivity {
                endpoint_id: "db".into(),
                sessions: 1,
                in_flight: 0,
                idle_ms: 0,
            }],
            cached: vec!["db".into(), "old".into()],
            ..ActivityReport::default()
        };
        let reply = cp.report_activity(&report).await.expect("reply");
        assert_eq!(reply.inactive, ["old"]);
        assert_eq!(
            *seen.lock().expect("lock"),
            [
                r#"activity {"interval_ms":1000,"endpoints":[{"endpoint_id":"db","sessions":1,"in_flight":0,"idle_ms":0}],"cached":["db","old"]} auth=Bearer t0ken"#
            ]
        );
        assert_eq!(
            metrics
                .control_plane_requests
                .get(Call::Activity, CallOutcome::Ok),
            1
        );
    }

    #[tokio::test]
    async fn an_unreachable_control_plane_is_a_retryable_transport_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let (cp, metrics) = client(format!("http://127.0.0.1:{port}/proxy/api/v1"), None);
        let error = cp
            .wake_compute(&EndpointId::parse("db").expect("id"))
            .await
            .expect_err("refused");
        assert!(matches!(error, ControlPlaneError::Transport(_)), "{error}");
        assert!(error.is_retryable());
        assert!(
            !error.to_string().contains("endpointish"),
            "no URL in the text: {error}"
        );
        assert_eq!(
            metrics
                .control_plane_requests
                .get(Call::WakeCompute, CallOutcome::Unreachable),
            1
        );
    }
}
