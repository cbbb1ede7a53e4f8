//! The request and response bodies of Neon's public API, as far as this subset serves them,
//! with the field names and required fields of Neon's published OpenAPI document
//! (`public-v2-for-users.gen.yaml`, shipped in `@neondatabase/api-client`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

type Map = BTreeMap<String, String>;

#[derive(Serialize)]
pub struct Project {
    pub id: String,
    pub platform_id: String,
    pub region_id: String,
    pub name: String,
    pub provisioner: String,
    pub pg_version: u32,
    pub proxy_host: String,
    pub branch_logical_size_limit: i64,
    pub branch_logical_size_limit_bytes: i64,
    pub store_passwords: bool,
    pub creation_source: String,
    pub history_retention_seconds: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub owner_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub consumption_period_start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub consumption_period_end: OffsetDateTime,
    pub active_time_seconds: i64,
    /// What the project list calls `active_time_seconds`.
    pub active_time: i64,
    pub compute_time_seconds: i64,
    pub written_data_bytes: i64,
    pub data_transfer_bytes: i64,
    pub data_storage_bytes_hour: i64,
    pub cpu_used_sec: i64,
    pub default_endpoint_settings: EndpointSettings,
}

#[derive(Serialize)]
pub struct EndpointSettings {
    pub autoscaling_limit_min_cu: f64,
    pub autoscaling_limit_max_cu: f64,
    pub suspend_timeout_seconds: i64,
}

#[derive(Clone, Serialize)]
pub struct Branch {
    pub id: String,
    pub project_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    pub name: String,
    pub current_state: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub state_changed_at: OffsetDateTime,
    pub creation_source: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub last_reset_at: Option<OffsetDateTime>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_source: Option<&'static str>,
    pub default: bool,
    pub primary: bool,
    pub protected: bool,
    pub cpu_used_sec: i64,
    pub active_time_seconds: i64,
    pub compute_time_seconds: i64,
    pub written_data_bytes: i64,
    pub data_transfer_bytes: i64,
    /// Not a field of Neon's: the branch's labels, which are its annotations here.
    #[serde(skip)]
    pub annotations: Map,
}

#[derive(Serialize)]
pub struct Annotation {
    pub object: AnnotationObject,
    pub value: Map,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Serialize)]
pub struct AnnotationObject {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
}

impl Annotation {
    pub fn of(branch: &Branch) -> Annotation {
        Annotation {
            object: AnnotationObject {
                kind: "console/branch",
                id: branch.id.clone(),
            },
            value: branch.annotations.clone(),
            created_at: branch.created_at,
            updated_at: branch.created_at,
        }
    }
}

#[derive(Clone, Serialize)]
pub struct Endpoint {
    pub host: String,
    pub id: String,
    pub project_id: String,
    pub branch_id: String,
    pub region_id: String,
    pub autoscaling_limit_min_cu: f64,
    pub autoscaling_limit_max_cu: f64,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub current_state: &'static str,
    pub pooler_enabled: bool,
    pub pooler_mode: &'static str,
    pub disabled: bool,
    pub passwordless_access: bool,
    pub creation_source: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub last_active: Option<OffsetDateTime>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub suspended_at: Option<OffsetDateTime>,
    pub settings: serde_json::Map<String, serde_json::Value>,
    pub proxy_host: String,
    pub suspend_timeout_seconds: i64,
    pub provisioner: String,
}

#[derive(Clone, Serialize)]
pub struct Role {
    pub branch_id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    pub protected: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Clone, Serialize)]
pub struct Database {
    pub id: i64,
    pub branch_id: String,
    pub name: String,
    pub owner_name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Serialize)]
pub struct Operation {
    pub id: String,
    pub project_id: String,
    pub branch_id: String,
    pub endpoint_id: String,
    pub action: String,
    pub status: &'static str,
    pub failures_count: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub total_duration_ms: i32,
}

#[derive(Serialize)]
pub struct ConnectionDetails {
    pub connection_uri: String,
    pub connection_parameters: ConnectionParameters,
}

#[derive(Serialize)]
pub struct ConnectionParameters {
    pub database: String,
    pub password: String,
    pub role: String,
    pub host: String,
    pub pooler_host: String,
}

/// Neon's `GeneralError`.
#[derive(Serialize)]
pub struct GeneralError {
    pub code: &'static str,
    pub message: String,
    pub request_id: String,
}

/// `POST /projects/{id}/branches` (every part optional, as in Neon's).
#[derive(Default, Deserialize)]
pub struct CreateBranchBody {
    #[serde(default)]
    pub branch: CreateBranchFields,
    #[serde(default)]
    pub endpoints: Vec<CreateEndpointOptions>,
    #[serde(default)]
    pub annotation_value: Map,
}

#[derive(Default, Deserialize)]
pub struct CreateBranchFields {
    pub parent_id: Option<String>,
    pub name: Option<String>,
    pub parent_lsn: Option<String>,
    pub parent_timestamp: Option<String>,
    #[serde(default)]
    pub protected: bool,
    #[serde(default)]
    pub archived: bool,
    pub init_source: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

#[derive(Deserialize)]
pub struct CreateEndpointOptions {
    #[serde(rename = "type")]
    pub kind: String,
}

/// `POST /projects/{id}/branches/{branch_id}/restore`.
#[derive(Deserialize)]
pub struct RestoreBody {
    pub source_branch_id: String,
    pub source_lsn: Option<String>,
    pub source_timestamp: Option<String>,
    pub preserve_under_name: Option<String>,
}

/// `POST …/roles`.
#[derive(Deserialize)]
pub struct CreateRoleBody {
    pub role: CreateRoleFields,
}

#[derive(Deserialize)]
pub struct CreateRoleFields {
    pub name: String,
}

/// `POST …/databases`.
#[derive(Deserialize)]
pub struct CreateDatabaseBody {
    pub database: CreateDatabaseFields,
}

#[derive(Deserialize)]
pub struct CreateDatabaseFields {
    pub name: String,
    pub owner_name: String,
}
