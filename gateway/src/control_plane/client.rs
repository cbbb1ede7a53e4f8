//! The client for the control plane's Neon-compatible proxy API (`wake_compute`,
//! `get_endpoint_access_control`, and the wake service's own `activity` report; message types
//! from `wake-api`), and the error every call fails with, which knows whether it is worth
//! retrying and whether it means "no such endpoint".
//!
//! One call is one HTTP request: retries, caching and single-flight belong to
//! [`crate::control_plane::routes::RouteTable`]. Tests use this very client against `gateway-testkit`'s
//! `FakeControlPlane` ([`client_for`]), so every test goes over HTTP in `wake-api`'s types.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wake_api::proxy::{
    AccessControl, ActivityReply, ActivityReport, ControlPlaneError as ErrorBody, Jwks, WakeCompute,
};

use crate::base::endpoint::EndpointId;
use crate::base::error::{ErrorKind, ReportableError};
use crate::base::retry::Retryable;
use crate::obs::labels::{Call, CallOutcome};
use crate::obs::metrics::Metrics;

/// The path of a call under the proxy API.
fn path(call: Call) -> &'static str {
    match call {
        Call::WakeCompute => "wake_compute",
        Call::AccessControl => "get_endpoint_access_control",
        Call::Activity => "activity",
        Call::Jwks => "endpoints/{id}/jwks",
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

impl ControlPlaneError {
    /// How long the control plane says a wake of this endpoint may take, when it takes
    /// seconds (`retry_info.wake_budget_ms`, not in Neon's API).
    pub fn wake_budget(&self) -> Option<Duration> {
        match self {
            ControlPlaneError::Api { body, .. } => body.wake_budget_ms().map(Duration::from_millis),
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

impl ControlPlaneClient {
    /// `wake_compute`: where `endpointish` (`ep` or `ep-pooler`) accepts connections now,
    /// starting its compute if needed. One request, no retries.
    pub async fn wake_compute(
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

    /// `get_endpoint_access_control`: the role's SCRAM secret ("" for an unknown role).
    pub async fn access_control(
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

    /// `endpoints/{id}/jwks`: the endpoint's JWKS rules and the JWT roles' logins (the
    /// endpoint without `-pooler`). One request, no retries.
    pub async fn jwks(&self, endpoint: &EndpointId) -> Result<Jwks, ControlPlaneError> {
        let url = format!(
            "{}/{}",
            self.config.url,
            path(Call::Jwks).replace("{id}", endpoint.without_pooler().as_str())
        );
        self.call(Call::Jwks, self.http.get(url)).await
    }

    /// `POST activity`: what this gateway's clients are doing; the reply names the reported
    /// and cached endpoints that are not active. One request, no retries.
    pub async fn report_activity(
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

/// The real client, pointed at a fake control plane: what the unit tests of the caches and
/// the activity reporter talk to.
#[cfg(test)]
pub(crate) fn client_for(
    fake: &gateway_testkit::FakeControlPlane,
    metrics: Arc<Metrics>,
) -> Arc<ControlPlaneClient> {
    let config = ControlPlaneConfig {
        url: fake.url(),
        token: fake.token().map(Token),
        request_timeout: Duration::from_secs(5),
    };
    Arc::new(ControlPlaneClient::new(config, metrics).expect("client"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::labels::Label;
    use gateway_testkit::{Call as Seen, FakeControlPlane, Outage, Reply};
    use wake_api::proxy::Reason;

    fn api(status: u16, reason: Reason) -> ControlPlaneError {
        ControlPlaneError::Api {
            status,
            body: ErrorBody::new("CODE", "refused", reason),
        }
    }

    /// An error and how it is classified.
    struct Case {
        error: ControlPlaneError,
        retryable: bool,
        not_found: bool,
        outcome: &'static str,
    }

    #[test]
    fn classification() {
        let case = |error, retryable, not_found, outcome| Case {
            error,
            retryable,
            not_found,
            outcome,
        };
        let cases = [
            case(
                ControlPlaneError::Transport("refused".into()),
                true,
                false,
                "unreachable",
            ),
            case(api(404, Reason::EndpointNotFound), false, true, "not_found"),
            case(api(404, Reason::ProjectNotFound), false, true, "not_found"),
            case(
                api(503, Reason::RunningOperations),
                true,
                false,
                "retryable",
            ),
            case(api(429, Reason::RateLimitExceeded), false, false, "error"),
            case(api(500, Reason::Unknown), false, false, "error"),
            case(
                ControlPlaneError::Api {
                    status: 500,
                    body: ErrorBody::new("CODE", "x", Reason::Unknown).with_retry_delay_ms(50),
                },
                true,
                false,
                "retryable",
            ),
            case(
                ControlPlaneError::Status { status: 502 },
                true,
                false,
                "retryable",
            ),
            case(
                ControlPlaneError::Status { status: 404 },
                false,
                false,
                "error",
            ),
            case(
                ControlPlaneError::Invalid("x".into()),
                false,
                false,
                "error",
            ),
        ];
        for Case {
            error,
            retryable,
            not_found,
            outcome,
        } in cases
        {
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

    fn client(fake: &FakeControlPlane) -> (Arc<ControlPlaneClient>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        (client_for(fake, metrics.clone()), metrics)
    }

    /// One request as `call sorted-query auth=… request_id=…` (the session id, a fresh uuid,
    /// only checked).
    fn described(request: &gateway_testkit::Request) -> String {
        let query: Vec<String> = request
            .query
            .iter()
            .filter(|(k, v)| k.as_str() != "session_id" || uuid::Uuid::parse_str(v).is_err())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "{:?} {} auth={} request_id={}",
            request.call,
            query.join("&"),
            request.authorization.as_deref().unwrap_or("-"),
            request.request_id.is_some()
        )
    }

    #[tokio::test]
    async fn the_http_client_speaks_the_proxy_api() {
        let fake = FakeControlPlane::start().await;
        fake.require_token("t0ken");
        fake.route("db", "127.0.0.1:5432");
        fake.route("db-pooler", "127.0.0.1:6432");
        fake.secret("db", "alice", "SCRAM-SHA-256$4096:c2FsdA==$a:b");
        fake.wake_replies("busy", [Reply::busy(Duration::from_millis(100))]);
        let raw = |status: u16, body: &str| Reply::Raw {
            status,
            body: body.into(),
        };
        fake.wake_replies("broken", [raw(500, "oops")]);
        fake.wake_replies("garbage", [raw(200, "not json")]);
        let (cp, metrics) = client(&fake);
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

        let seen: Vec<String> = fake.received().iter().take(3).map(described).collect();
        assert_eq!(
            seen,
            [
                "WakeCompute application_name=gateway&endpointish=db auth=Bearer t0ken request_id=true",
                "WakeCompute application_name=gateway&endpointish=db-pooler auth=Bearer t0ken request_id=true",
                "AccessControl endpointish=db&role=alice auth=Bearer t0ken request_id=true",
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
        let fake = FakeControlPlane::start().await;
        fake.require_token("t0ken");
        fake.set_inactive(&["old"]);
        let (cp, metrics) = client(&fake);
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
        let received = fake.reports();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].report, report);
        let requests = fake.received();
        assert_eq!(requests[0].call, Seen::Activity);
        assert_eq!(requests[0].authorization.as_deref(), Some("Bearer t0ken"));
        assert_eq!(
            metrics
                .control_plane_requests
                .get(Call::Activity, CallOutcome::Ok),
            1
        );
    }

    #[tokio::test]
    async fn an_unreachable_control_plane_is_a_retryable_transport_error() {
        let fake = FakeControlPlane::start().await;
        fake.route("db", "127.0.0.1:5432");
        fake.go_down(Outage::Refused);
        let (cp, metrics) = client(&fake);
        let db = EndpointId::parse("db").expect("id");
        let error = cp.wake_compute(&db).await.expect_err("refused");
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
        // Back: the same client reaches it again.
        fake.come_back();
        assert!(cp.wake_compute(&db).await.is_ok());
    }
}
