//! The wake service's REST API (`/v1/...`, bearer-token protected).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Where an endpoint's compute is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointState {
    Active,
    Suspending,
    Suspended,
    Resuming,
    Failed,
    #[serde(other)]
    Unknown,
}

impl EndpointState {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Active => "active",
            EndpointState::Suspending => "suspending",
            EndpointState::Suspended => "suspended",
            EndpointState::Resuming => "resuming",
            EndpointState::Failed => "failed",
            EndpointState::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> EndpointState {
        match s {
            "active" => EndpointState::Active,
            "suspending" => EndpointState::Suspending,
            "suspended" => EndpointState::Suspended,
            "resuming" => EndpointState::Resuming,
            "failed" => EndpointState::Failed,
            _ => EndpointState::Unknown,
        }
    }
}

/// `host:port` of the endpoint's Postgres and of its PgBouncer (transaction mode).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    pub direct: String,
    pub pooler: String,
}

/// An endpoint as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub state: EndpointState,
    /// The operation in progress (`create`, `wake`, `suspend`, `delete`), if any.
    pub operation: Option<String>,
    pub suspend_timeout_seconds: i64,
    pub min_cu: f64,
    pub max_cu: f64,
    pub current_cu: f64,
    pub driver: String,
    pub addresses: Addresses,
    pub roles: Vec<String>,
    pub databases: Vec<Database>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_active: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub suspended_at: Option<OffsetDateTime>,
    /// How `current_cu` is in effect on a running compute (absent while it does not run, or
    /// before this wake service has applied it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ComputeSize>,
    /// The Railway services of a `railway` endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub railway: Option<RailwayService>,
}

/// How a running compute's size is applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeSize {
    /// How CPU and memory are limited: `cgroup v1`, `cgroup v2`, or `not enforced: <why>`.
    pub limits: String,
    /// The CPU quota (`<quota_us> <period_us>`) and memory limit in bytes, as enforced.
    pub cpu_max: String,
    pub memory_limit_bytes: u64,
    /// The Postgres settings the size sets: the value in effect and, for a setting that
    /// needs a restart and differs, the value the next resume or restart applies.
    pub settings: Vec<SizeSetting>,
    /// PgBouncer's `default_pool_size` (and `max_db_connections`).
    pub pooler_pool_size: u32,
    /// The cap gateways are given for their own pool of direct connections.
    pub gateway_pool_max_conns: u32,
}

/// One Postgres setting of a [`ComputeSize`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeSetting {
    pub name: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

/// `POST /v1/endpoints/{id}/resize`: sets a fixed-size endpoint's size (`min_cu = max_cu =
/// cu`) and applies it at once.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    pub cu: f64,
}

/// `POST /v1/endpoints`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend_timeout_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cu: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cu: Option<f64>,
    /// `local` (the default) or `railway` (then `railway` names the service to bind to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub railway: Option<RailwayService>,
}

/// An existing Railway Postgres service an endpoint is bound to (`driver: "railway"`), and
/// the PgBouncer service in front of it, if any. Ids as Railway shows them (project settings,
/// or the service's URL in the dashboard).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RailwayService {
    pub project_id: String,
    pub environment_id: String,
    pub service_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooler_service_id: Option<String>,
}

/// `PATCH /v1/endpoints/{id}`: only the fields present change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchEndpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend_timeout_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cu: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cu: Option<f64>,
}

/// `POST /v1/endpoints/{id}/roles`. The password is hashed (SCRAM-SHA-256) by the wake
/// service and never stored in clear.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRole {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for CreateRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateRole")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// `PATCH /v1/endpoints/{id}/roles/{name}`: a new password (hashed like at create). Postgres,
/// PgBouncer and the gateways stop accepting the old one before the call returns.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchRole {
    pub password: String,
}

impl std::fmt::Debug for PatchRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PatchRole { password: <redacted> }")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// `POST /v1/endpoints/{id}/databases`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDatabase {
    pub name: String,
    pub owner: String,
}

/// `POST /v1/endpoints/{id}/jwks`: a JWKS rule. Exactly one of `jwks_url` and `jwks`;
/// `role_names` defaults to `["authenticated", "anonymous"]`, `algorithms` to
/// [`crate::proxy::DEFAULT_JWT_ALGORITHMS`]. The answer (201) is the rule as the proxy API
/// serves it ([`crate::proxy::JwksSettings`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJwks {
    pub provider_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// An inline key set (`{"keys": [...]}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_audience: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_names: Option<Vec<String>>,
}

/// `GET /v1/endpoints/{id}/jwks`: the endpoint's rules, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwksList {
    pub jwks: Vec<crate::proxy::JwksSettings>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Database {
    pub name: String,
    pub owner: String,
}

/// The longest a branch may live (`ttl_seconds`): 30 days, as Neon's `expires_at`.
pub const MAX_BRANCH_TTL_SECONDS: i64 = 30 * 24 * 3600;
/// At most this many labels per branch; keys 1 to 63 of `[A-Za-z0-9_.-]`, values at most
/// [`MAX_LABEL_VALUE_BYTES`].
pub const MAX_BRANCH_LABELS: usize = 16;
pub const MAX_LABEL_VALUE_BYTES: usize = 256;

/// `POST /v1/endpoints/{id}/branches`: a copy of database `from` of the same endpoint, made
/// as a database of its own (`CREATE DATABASE … TEMPLATE`), owned by `from`'s owner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBranch {
    pub from: String,
    /// The branch's (and its database's) name; `br_<12 hex digits>` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A free-form name of 1 to 256 characters (Neon's API shows it as the branch's name,
    /// e.g. `test/<uuid>`); the name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Deleted this long after its creation (1 to [`MAX_BRANCH_TTL_SECONDS`]); never when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// `false`: the schema only (every table of the copy emptied, its sequences restarted).
    #[serde(default = "yes")]
    pub data: bool,
}

fn yes() -> bool {
    true
}

/// Connection strings through the gateway, as Neon's look: `<endpoint>.<domain>` and
/// `<endpoint>-pooler.<domain>` (PgBouncer, transaction mode), the branch's database and
/// owner, the configured port and `sslmode`. No password: the owner's is the caller's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionUris {
    pub direct: String,
    pub pooled: String,
}

/// A branch: a database copied from another of the same endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    /// Also the name of its database.
    pub name: String,
    /// What Neon's API shows as its name (the name unless one was given).
    pub display_name: String,
    pub endpoint: String,
    /// The database it was copied from (at its creation or last reset).
    pub source: String,
    pub owner: String,
    /// `false`: made from the source's schema only.
    pub data: bool,
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was last copied from its source (its creation, or a reset).
    #[serde(with = "time::serde::rfc3339")]
    pub copied_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub connection_uris: ConnectionUris,
}

/// `GET /v1/endpoints/{id}/branches[?label=key=value]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchList {
    pub branches: Vec<Branch>,
}

/// `DELETE /v1/endpoints/{id}/branches?label=key=value`: the names of the branches deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedBranches {
    pub deleted: Vec<String>,
}

/// `GET /v1/endpoints/{id}/events`: one step of the compute's life, as recorded (durably,
/// in the same transaction as the state change) for metering: `started` and `stopped` bound
/// the periods the compute ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComputeEvent {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `created`, `resume_started`, `started`, `adopted`, `suspend_started`, `stopped`,
    /// `suspend_cancelled`, `failed`, `delete_started`, …
    pub kind: String,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    /// Compute units at the time.
    pub cu: Option<f64>,
    /// Why (a suspend's reason, a wake's trigger, a failure's message).
    pub detail: Option<String>,
}

/// Every API error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip_and_unknown() {
        for state in [
            EndpointState::Active,
            EndpointState::Suspending,
            EndpointState::Suspended,
            EndpointState::Resuming,
            EndpointState::Failed,
        ] {
            let json = serde_json::to_string(&state).expect("serialize");
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(EndpointState::parse(state.as_str()), state);
        }
        let later: EndpointState = serde_json::from_str("\"migrating\"").expect("parse");
        assert_eq!(later, EndpointState::Unknown);
    }

    #[test]
    fn create_endpoint_golden() {
        let body: CreateEndpoint =
            serde_json::from_str(r#"{"id":"db","suspend_timeout_seconds":-1}"#).expect("parse");
        assert_eq!(body.id, "db");
        assert_eq!(body.suspend_timeout_seconds, Some(-1));
        assert!(serde_json::from_str::<CreateEndpoint>(r#"{"id":"db","bogus":1}"#).is_err());
        assert!(serde_json::from_str::<CreateEndpoint>(r#"{}"#).is_err());
    }

    #[test]
    fn create_jwks_golden() {
        let json = r#"{"provider_name":"clerk","jwks_url":"https://x/.well-known/jwks.json","role_names":["authenticated"]}"#;
        let body: CreateJwks = serde_json::from_str(json).expect("parse");
        assert_eq!(
            body.role_names.as_deref(),
            Some(&["authenticated".to_owned()][..])
        );
        assert_eq!(serde_json::to_string(&body).expect("serialize"), json);
        assert!(serde_json::from_str::<CreateJwks>(r#"{"provider_name":"x","bogus":1}"#).is_err());
        let patch = r#"{"jwks":[]}"#;
        assert!(serde_json::from_str::<PatchEndpoint>(patch).is_err());
    }

    #[test]
    fn error_body_golden() {
        let body = ErrorBody {
            error: ErrorDetail {
                code: "not_found".into(),
                message: "endpoint 'x' does not exist".into(),
            },
        };
        assert_eq!(
            serde_json::to_string(&body).expect("serialize"),
            r#"{"error":{"code":"not_found","message":"endpoint 'x' does not exist"}}"#
        );
    }
}
