//! What a `POST /sql` request can fail with, and the one place that turns it into the
//! response: the HTTP status and the exact JSON error shape the driver parses.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::auth::jwt::JwtError;
use crate::base::error::{ErrorKind, ReportableError};
use crate::base::limits::Refused;
use crate::compute::{BackendError, DbError};
use crate::control_plane::client::{unavailable, ControlPlaneError};
use crate::frontend::query::QueryError;
use crate::proxy::login::LoginError;

/// Everything a `POST /sql` request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// Malformed request: body, headers or connection string. The text is shown to the client.
    #[error("{0}")]
    BadRequest(String),
    /// Wrong password, unknown role, or unknown endpoint: deliberately indistinguishable.
    #[error("password authentication failed for user '{user}'")]
    AuthFailed { user: String },
    #[error(transparent)]
    Postgres(Box<DbError>),
    #[error("request is too large (max is {max} bytes)")]
    RequestTooLarge { max: usize },
    #[error("response is too large (max is {max} bytes)")]
    ResponseTooLarge { max: usize },
    #[error("Too many connections to this endpoint. Please try again later.")]
    TooManyConnections,
    /// A limit protecting the gateway or other tenants ([`crate::base::limits`]).
    #[error(transparent)]
    Limited(#[from] Refused),
    /// The control plane could not give an address (down, refused, or the endpoint did not
    /// wake in time): 503, worth retrying. The cause is logged; the text is [`unavailable`].
    #[error("{}", unavailable(.0))]
    Unavailable(#[source] Arc<ControlPlaneError>),
    /// The backend could not be reached, or failed mid-request. The cause is logged, not shown.
    #[error("could not connect to the database")]
    Compute(#[source] BackendError),
    /// A missing, malformed, expired or wrongly signed token: 401, one text whatever the
    /// reason (logged, not shown).
    #[error(transparent)]
    Jwt(JwtError),
    /// A token for a role no JWKS rule of the endpoint names: 403.
    #[error("role '{role}' may not log in with a JWT on this endpoint")]
    JwtRoleNotAllowed { role: String },
    /// The database did not accept the token's claims: 502.
    #[error("could not pass the token's claims to the database")]
    ClaimsRefused,
}

impl ReportableError for SqlError {
    fn kind(&self) -> ErrorKind {
        match self {
            SqlError::BadRequest(_)
            | SqlError::AuthFailed { .. }
            | SqlError::JwtRoleNotAllowed { .. }
            | SqlError::RequestTooLarge { .. }
            | SqlError::ResponseTooLarge { .. } => ErrorKind::User,
            SqlError::Jwt(e) => e.kind(),
            SqlError::ClaimsRefused => ErrorKind::Compute,
            SqlError::Postgres(_) => ErrorKind::Postgres,
            SqlError::TooManyConnections | SqlError::Limited(_) => ErrorKind::RateLimit,
            SqlError::Unavailable(_) => ErrorKind::ControlPlane,
            SqlError::Compute(_) => ErrorKind::Compute,
        }
    }
}

impl SqlError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        SqlError::BadRequest(message.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            SqlError::BadRequest(_) | SqlError::AuthFailed { .. } | SqlError::Postgres(_) => {
                StatusCode::BAD_REQUEST
            }
            SqlError::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            SqlError::ResponseTooLarge { .. } => StatusCode::INSUFFICIENT_STORAGE,
            SqlError::TooManyConnections | SqlError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            SqlError::Compute(_) | SqlError::ClaimsRefused => StatusCode::BAD_GATEWAY,
            SqlError::Jwt(_) => StatusCode::UNAUTHORIZED,
            SqlError::JwtRoleNotAllowed { .. } => StatusCode::FORBIDDEN,
            SqlError::Limited(refused) => refused.status(),
        }
    }

    /// Logs the error once, where it is handled, at the level its kind deserves.
    pub fn log(&self) {
        match self.kind() {
            ErrorKind::User | ErrorKind::Postgres | ErrorKind::ClientDisconnect => {
                tracing::debug!(error = %self, kind = self.kind().label(), "request failed")
            }
            ErrorKind::RateLimit | ErrorKind::ControlPlane | ErrorKind::Compute => {
                tracing::warn!(error = %self, cause = ?std::error::Error::source(self), kind = self.kind().label(), "request failed")
            }
            ErrorKind::Internal => {
                tracing::error!(error = ?self, kind = self.kind().label(), "request failed")
            }
        }
    }

    /// The JSON error body, as `/sql` answers it.
    pub fn json_body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body()).unwrap_or_default()
    }

    /// The flat error object: every key always present, in the order the proxy writes them.
    fn body(&self) -> Value {
        match self {
            SqlError::Postgres(e) => json!({
                "message": e.message,
                "code": e.code,
                "detail": e.detail,
                "hint": e.hint,
                "position": e.position,
                "internalPosition": e.internal_position,
                "internalQuery": e.internal_query,
                "severity": e.severity,
                "where": e.where_,
                "table": e.table,
                "column": e.column,
                "schema": e.schema,
                "dataType": e.data_type,
                "constraint": e.constraint,
                "file": e.file,
                "line": e.line,
                "routine": e.routine,
            }),
            other => json!({
                "message": other.to_string(),
                "code": "",
                "detail": null,
                "hint": null,
                "position": null,
                "internalPosition": null,
                "internalQuery": null,
                "severity": "",
                "where": null,
                "table": null,
                "column": null,
                "schema": null,
                "dataType": null,
                "constraint": null,
                "file": null,
                "line": null,
                "routine": null,
            }),
        }
    }
}

impl From<LoginError> for SqlError {
    fn from(error: LoginError) -> Self {
        match error {
            LoginError::AuthFailed { user } => SqlError::AuthFailed { user },
            LoginError::Unavailable(e) => SqlError::Unavailable(e),
            LoginError::Limited(refused) => SqlError::Limited(refused),
            LoginError::TooManyConnections => SqlError::TooManyConnections,
            LoginError::Postgres(db) => SqlError::Postgres(db),
            LoginError::Backend(e) => SqlError::Compute(e),
            LoginError::Jwt(e) => SqlError::Jwt(e),
            LoginError::JwtRoleNotAllowed { role } => SqlError::JwtRoleNotAllowed { role },
            LoginError::ClaimsRefused => SqlError::ClaimsRefused,
        }
    }
}

impl From<QueryError> for SqlError {
    fn from(error: QueryError) -> Self {
        match error {
            QueryError::Backend(e) => e.into(),
            QueryError::ResponseTooLarge { max } => SqlError::ResponseTooLarge { max },
            error @ QueryError::TooManyRows { .. } => SqlError::Limited(Refused::new(
                crate::base::limits::Limit::ResponseSize,
                error.to_string(),
            )),
            QueryError::Invalid(message) => SqlError::BadRequest(message.to_owned()),
        }
    }
}

impl From<BackendError> for SqlError {
    fn from(error: BackendError) -> Self {
        match error {
            BackendError::Db(e) => SqlError::Postgres(e),
            BackendError::Limited(refused) => SqlError::Limited(refused),
            other => SqlError::Compute(other),
        }
    }
}

impl IntoResponse for SqlError {
    fn into_response(self) -> Response {
        (self.status(), axum::Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::routes::RouteError;

    #[test]
    fn non_postgres_errors_have_empty_code_and_severity() {
        let body = SqlError::bad_request("missing connection string").body();
        assert_eq!(body["message"], "missing connection string");
        assert_eq!(body["code"], "");
        assert_eq!(body["severity"], "");
        assert!(body["position"].is_null());
    }

    #[test]
    fn postgres_error_keys_are_in_driver_order() {
        let body = SqlError::Postgres(Box::new(DbError {
            severity: "ERROR".into(),
            code: "42703".into(),
            message: "column \"x\" does not exist".into(),
            position: Some("8".into()),
            ..DbError::default()
        }))
        .body();
        let keys: Vec<&str> = body
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "message",
                "code",
                "detail",
                "hint",
                "position",
                "internalPosition",
                "internalQuery",
                "severity",
                "where",
                "table",
                "column",
                "schema",
                "dataType",
                "constraint",
                "file",
                "line",
                "routine"
            ]
        );
        assert_eq!(body["position"], "8");
    }

    #[test]
    fn statuses() {
        assert_eq!(
            SqlError::RequestTooLarge { max: 1 }.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(SqlError::ResponseTooLarge { max: 1 }.status().as_u16(), 507);
        assert_eq!(
            SqlError::AuthFailed { user: "u".into() }.status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn route_errors() {
        let not_found = SqlError::from(LoginError::from_route(RouteError::NotFound, "alice"));
        let wrong_password = SqlError::AuthFailed {
            user: "alice".into(),
        };
        assert_eq!(not_found.status(), wrong_password.status());
        assert_eq!(not_found.body(), wrong_password.body());

        let down = SqlError::from(LoginError::from_route(
            RouteError::Unavailable(Arc::new(ControlPlaneError::Transport(
                "connection refused to 10.1.2.3:4400".into(),
            ))),
            "alice",
        ));
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.kind(), ErrorKind::ControlPlane);
        let body = down.body();
        assert_eq!(
            body["message"],
            "endpoint is temporarily unavailable; please try again later"
        );
        assert_eq!(body["code"], "");

        let quota = SqlError::Unavailable(Arc::new(ControlPlaneError::Api {
            status: 423,
            body: wake_api::proxy::ControlPlaneError::new(
                "LOCKED",
                "compute time quota exceeded",
                wake_api::proxy::Reason::ComputeTimeQuotaExceeded,
            ),
        }));
        assert_eq!(
            quota.body()["message"],
            "endpoint is unavailable: compute time quota exceeded"
        );
    }
}
