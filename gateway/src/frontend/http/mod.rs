//! The HTTP surfaces: the public router (`POST /sql`, its CORS preflight, a request id on every
//! response) and the admin router (`/metrics`, `/usage`, `/healthz`, `/readyz`, and the cancel
//! requests other gateway replicas forward, `/internal/cancel`).

pub mod cors;
pub mod error;
pub mod peer;
pub mod sql;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tracing::Instrument;

use crate::base::limits::{Limit, Refused};
use crate::frontend::connection::ConnectionInfo;
use crate::frontend::http::error::SqlError;
use crate::frontend::websocket;
use crate::proxy::cancel::PEER_CANCEL_PATH;

pub use crate::frontend::state::AppState;

pub const REQUEST_ID: &str = "neon-request-id";

/// The public router: every request gets an id and a span, then a WebSocket upgrade on any
/// path is the tunnel; any other path ending in `/sql` is the query endpoint (`POST`, and
/// `OPTIONS` for the CORS preflight; a path prefix is ignored, as is the Host header).
///
/// One handler routes by hand: a method router and a middleware layer would be cloned and
/// boxed for every request.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new().fallback(public).with_state(state)
}

/// Gives each request an id (returned as `Neon-Request-Id`) and a span carrying it, and routes it.
async fn public(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let mut id = uuid::Uuid::encode_buffer();
    let id: &str = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id);
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %request.method(),
        path = %request.uri().path()
    );
    let mut response = route(state, request).instrument(span).await;
    cors::allow_any_origin(&mut response);
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

async fn route(state: Arc<AppState>, request: Request) -> Response {
    if state.require_tls {
        let tls = request
            .extensions()
            .get::<Arc<ConnectionInfo>>()
            .is_some_and(|info| info.tls);
        if !tls {
            let refused = Refused::new(
                Limit::TlsRequired,
                "this gateway requires TLS: use https:// for /sql and wss:// for WebSockets",
            );
            state.metrics.limit_hit(Limit::TlsRequired);
            return SqlError::Limited(refused).into_response();
        }
    }
    if websocket::is_upgrade(request.headers()) {
        return websocket::upgrade(state, request).await;
    }
    if !request.uri().path().ends_with("/sql") {
        return not_supported().await;
    }
    match *request.method() {
        Method::POST => {
            let (parts, body) = request.into_parts();
            sql::handle(state, parts.headers, body).await
        }
        Method::OPTIONS => cors::preflight(),
        _ => not_supported().await,
    }
}

/// The admin router; with `--peer-addr` other gateway replicas reach it too
/// (`POST /internal/cancel`).
pub fn admin(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/usage", get(usage))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route(
            PEER_CANCEL_PATH,
            post(peer::cancel).layer(DefaultBodyLimit::max(peer::MAX_BODY)),
        )
        .with_state(state)
}

async fn not_supported() -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json("query is not supported"),
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// A view of the counters the gateway reports for metering (`obs::usage`): per endpoint
/// (direct and `-pooler` as one), totals since this process started, reported or not:
/// `{"endpoints":{"db":{"ingress_bytes":…,"egress_bytes":…,"queries":…,"sessions":…,
/// "connections":…}}}`.
async fn usage(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({ "endpoints": state.usage.snapshot() })).into_response()
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn router() -> Router {
        let config = crate::app::config::Config::for_tests(vec![]);
        let mut state = crate::app::state(&config).expect("state");
        Arc::get_mut(&mut state)
            .expect("sole owner")
            .http
            .max_request_bytes = 1024;
        app(state)
    }

    async fn send(
        request: axum::http::Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let response = router().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    fn post(path: &str, conn: Option<&str>, body: &str) -> axum::http::Request<Body> {
        let mut builder = axum::http::Request::post(path);
        if let Some(conn) = conn {
            builder = builder.header("neon-connection-string", conn);
        }
        builder.body(Body::from(body.to_owned())).expect("request")
    }

    #[tokio::test]
    async fn preflight_and_unsupported_paths() {
        let (status, headers, _) = send(
            axum::http::Request::options("/sql")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["allow"], "OPTIONS, POST");
        assert_eq!(headers["access-control-max-age"], "86400");
        assert!(headers.contains_key(REQUEST_ID));
        let (status, headers, body) = send(post("/nope", None, "")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::BAD_REQUEST, "\"query is not supported\"")
        );
        assert!(headers.contains_key(REQUEST_ID));
    }

    #[tokio::test]
    async fn errors_before_any_backend_is_involved() {
        let conn = "postgres://alice:pw@ghost.example.com/main";
        struct Case {
            request: axum::http::Request<Body>,
            status: StatusCode,
            /// A fragment of the error message.
            says: &'static str,
        }
        let cases = [
            Case {
                request: post("/sql", None, "{}"),
                status: StatusCode::BAD_REQUEST,
                says: "missing connection string",
            },
            // Bodies are not looked at before the password is checked.
            Case {
                request: post("/sql", Some(conn), "nope"),
                status: StatusCode::BAD_REQUEST,
                says: "password authentication failed for user 'alice'",
            },
            // A declared length over the limit is refused before anything else.
            Case {
                request: axum::http::Request::post("/sql")
                    .header("neon-connection-string", conn)
                    .header("content-length", "2000")
                    .body(Body::from("x".repeat(2000)))
                    .expect("request"),
                status: StatusCode::PAYLOAD_TOO_LARGE,
                says: "request is too large (max is 1024 bytes)",
            },
            Case {
                request: post("/sql", Some(conn), "{\"query\":\"SELECT 1\"}"),
                status: StatusCode::BAD_REQUEST,
                says: "password authentication failed for user 'alice'",
            },
            Case {
                request: axum::http::Request::post("/sql")
                    .header("neon-connection-string", conn)
                    .header("authorization", "Bearer x.y.z")
                    .body(Body::from("{}"))
                    .expect("request"),
                status: StatusCode::BAD_REQUEST,
                says: "a connection string with a password cannot be used with a JWT",
            },
            // A token is checked before anything else (here, no endpoint has JWKS rules).
            Case {
                request: axum::http::Request::post("/sql")
                    .header(
                        "neon-connection-string",
                        "postgres://authenticated@localhost/db",
                    )
                    .header("authorization", "Bearer x.y.z")
                    .body(Body::from("{}"))
                    .expect("request"),
                status: StatusCode::UNAUTHORIZED,
                says: "authentication failed: invalid JWT",
            },
            Case {
                request: axum::http::Request::post("/sql")
                    .header(
                        "neon-connection-string",
                        "postgres://authenticated@localhost/db",
                    )
                    .header("authorization", "Basic eDp5")
                    .body(Body::from("{}"))
                    .expect("request"),
                status: StatusCode::BAD_REQUEST,
                says: "invalid Authorization header: expected 'Bearer <JWT>'",
            },
        ];
        for Case {
            request,
            status,
            says,
        } in cases
        {
            let (got, headers, body) = send(request).await;
            assert_eq!(got, status, "{body}");
            assert!(body.contains(says), "{body}");
            assert_eq!(headers["access-control-allow-origin"], "*");
            assert_eq!(headers["content-type"], "application/json");
        }
    }
}
