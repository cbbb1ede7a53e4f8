//! `/api/v2`: the subset of Neon's public API that test tooling uses (`neonctl`,
//! `@neondatabase/api-client`, `neon-testing`), with the admin token as the API key.
//!
//! How Neon's objects map onto this service's:
//! - A **project** is an endpoint (one each; same id). `GET /projects` lists them all.
//! - Its **default branch** (`main`, id [`ROOT_ID`]) is the endpoint's own databases, those
//!   that are not branches.
//! - Every other **branch** is one branch of `/v1` (a database copied with
//!   `CREATE DATABASE … TEMPLATE`); its id is its database's name. A branch of the default
//!   branch copies the endpoint's first database (the oldest); a branch of a branch copies
//!   that branch. Annotations are its labels; `expires_at` its expiry; `init_source:
//!   "schema-only"` a copy without data. A reset (`/restore`) copies its parent again.
//! - Every branch has the endpoint as its one `read_write` **endpoint**: the same compute,
//!   the same host, a different database.
//! - **Roles** are the endpoint's (they log in to every database of it); their passwords are
//!   kept sealed (see `password_vault`), so `reveal_password` and `connection_uri` work. They
//!   and **databases** are created on the default branch only.
//! - **Operations** finish before the reply, so each is recorded once, `finished`.
//!
//! Errors are Neon's `{"code", "message", "request_id"}`; a busy endpoint answers 423, which
//! Neon's clients retry.

mod shapes;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use wake_api::admin::{CreateBranch, EndpointState, MAX_BRANCH_TTL_SECONDS};

use self::shapes::{
    Annotation, ConnectionDetails, ConnectionParameters, CreateBranchBody, CreateDatabaseBody,
    CreateRoleBody, EndpointSettings, GeneralError, Operation, Project, RestoreBody,
};
use super::admin::detached;
use super::{ApiError, Service};
use crate::lifecycle::LifecycleError;
use crate::store::{DatabaseRow, EndpointRow, OperationRow};

/// The default branch's id (it has the shape neonctl takes for an id).
use crate::lifecycle::DEFAULT_BRANCH_ID as ROOT_ID;
/// The default branch's name.
const ROOT_NAME: &str = "main";

/// The most branches one page lists unless `limit` says.
const DEFAULT_PAGE: usize = 10_000;

/// The routes, to be nested under `/api/v2` (unknown paths there answer in Neon's shape).
pub fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/projects", get(list_projects))
        .route("/projects/{project}", get(get_project))
        .route(
            "/projects/{project}/branches",
            get(list_branches).post(create_branch),
        )
        .route(
            "/projects/{project}/branches/{branch}",
            get(get_branch).delete(delete_branch),
        )
        .route(
            "/projects/{project}/branches/{branch}/restore",
            post(restore_branch),
        )
        .route(
            "/projects/{project}/branches/{branch}/endpoints",
            get(branch_endpoints),
        )
        .route("/projects/{project}/endpoints", get(project_endpoints))
        .route(
            "/projects/{project}/branches/{branch}/roles",
            get(list_roles).post(create_role),
        )
        .route(
            "/projects/{project}/branches/{branch}/roles/{role}",
            get(get_role),
        )
        .route(
            "/projects/{project}/branches/{branch}/roles/{role}/reveal_password",
            get(reveal_password),
        )
        .route(
            "/projects/{project}/branches/{branch}/roles/{role}/reset_password",
            post(reset_password),
        )
        .route(
            "/projects/{project}/branches/{branch}/databases",
            get(list_databases).post(create_database),
        )
        .route(
            "/projects/{project}/branches/{branch}/databases/{database}",
            get(get_database),
        )
        .route("/projects/{project}/connection_uri", get(connection_uri))
        .route("/projects/{project}/operations", get(list_operations))
        .route(
            "/projects/{project}/operations/{operation}",
            get(get_operation),
        )
        .fallback(|| async { NeonError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { NeonError::MethodNotAllowed })
}

/// An `/api/v2` error, in Neon's shape.
#[derive(Debug)]
pub enum NeonError {
    BadRequest(String),
    Unauthorized,
    NotFound(String),
    Conflict(String),
    /// The password cannot be revealed (Neon: 412, "storing passwords is disabled").
    PreconditionFailed(String),
    /// Another operation holds the endpoint: Neon's clients retry a 423.
    Locked(String),
    Unavailable(String),
    MethodNotAllowed,
}

impl From<LifecycleError> for NeonError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::NotFound(id) => {
                NeonError::NotFound(format!("project '{id}' not found"))
            }
            LifecycleError::RoleNotFound { .. }
            | LifecycleError::RuleNotFound { .. }
            | LifecycleError::BranchNotFound { .. }
            | LifecycleError::DatabaseNotFound { .. } => NeonError::NotFound(e.to_string()),
            LifecycleError::Conflict(m) => NeonError::Conflict(m),
            LifecycleError::PasswordUnavailable { .. } => {
                NeonError::PreconditionFailed(e.to_string())
            }
            LifecycleError::Invalid(m) | LifecycleError::BadRule(m) => NeonError::BadRequest(m),
            LifecycleError::Busy(_) => NeonError::Locked(e.to_string()),
            // Compute and store failures: logged and worded once, by the /v1 mapping.
            other => NeonError::from(ApiError::from(other)),
        }
    }
}

impl From<ApiError> for NeonError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::BadRequest(m) | ApiError::Invalid(m) => NeonError::BadRequest(m),
            ApiError::Unauthorized => NeonError::Unauthorized,
            ApiError::NotFound(m) => NeonError::NotFound(m),
            ApiError::MethodNotAllowed => NeonError::MethodNotAllowed,
            ApiError::Conflict(m) => NeonError::Conflict(m),
            ApiError::Unavailable(m) => NeonError::Unavailable(m),
        }
    }
}

impl IntoResponse for NeonError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            NeonError::BadRequest(m) => (StatusCode::BAD_REQUEST, "BAD_REQUEST", m),
            NeonError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "authentication required: Authorization: Bearer <API key (the admin token)>".into(),
            ),
            NeonError::NotFound(m) => (StatusCode::NOT_FOUND, "NOT_FOUND", m),
            NeonError::Conflict(m) => (StatusCode::CONFLICT, "CONFLICT", m),
            NeonError::PreconditionFailed(m) => {
                (StatusCode::PRECONDITION_FAILED, "PRECONDITION_FAILED", m)
            }
            NeonError::Locked(m) => (StatusCode::LOCKED, "LOCKED", m),
            NeonError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", m),
            NeonError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "method not allowed on this route".into(),
            ),
        };
        let request_id = uuid::Uuid::new_v4().to_string();
        let header = HeaderValue::from_str(&request_id).ok();
        let body = GeneralError {
            code,
            message,
            request_id,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(header) = header {
            response
                .headers_mut()
                .insert("x-neon-ret-request-id", header);
        }
        response
    }
}

/// `axum::Json` whose rejections are Neon's 400.
struct NeonJson<T>(T);

impl<T, S> FromRequest<S> for NeonJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = NeonError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(NeonJson(value)),
            Err(rejection) => Err(NeonError::BadRequest(rejection.body_text())),
        }
    }
}

type Reply = Result<Response, NeonError>;

fn ok(value: Value) -> Reply {
    Ok(Json(value).into_response())
}

fn created(value: Value) -> Reply {
    Ok((StatusCode::CREATED, Json(value)).into_response())
}

fn to_value<T: serde::Serialize>(value: &T) -> Result<Value, NeonError> {
    serde_json::to_value(value).map_err(|e| NeonError::Unavailable(format!("encoding: {e}")))
}

// ---- what a project is made of, read from the store ----

/// One project (endpoint) as the handlers need it.
struct ProjectView {
    row: EndpointRow,
    databases: Vec<DatabaseRow>,
    branches: Vec<shapes::Branch>,
    /// Each branch's database's source (the database it was copied from).
    sources: BTreeMap<String, String>,
}

impl ProjectView {
    async fn load(service: &Service, id: &str) -> Result<ProjectView, NeonError> {
        let store = service.computes.store();
        let row = store
            .endpoint(id)
            .await
            .map_err(LifecycleError::from)?
            .ok_or_else(|| NeonError::NotFound(format!("project '{id}' not found")))?;
        let databases = store
            .database_rows(id)
            .await
            .map_err(LifecycleError::from)?;
        let mut branches = vec![root_branch(&row)];
        let mut sources = BTreeMap::new();
        for b in service.computes.branches(id, None).await? {
            sources.insert(b.name.clone(), b.source.clone());
            let parent = if databases.iter().any(|d| d.name == b.source && d.branch) {
                b.source.clone()
            } else {
                ROOT_ID.to_owned()
            };
            branches.push(shapes::Branch {
                id: b.name.clone(),
                project_id: id.to_owned(),
                parent_id: Some(parent),
                name: b.display_name,
                current_state: "ready",
                state_changed_at: b.copied_at,
                creation_source: "wake-service",
                created_at: b.created_at,
                updated_at: b.copied_at,
                last_reset_at: (b.copied_at != b.created_at).then_some(b.copied_at),
                expires_at: b.expires_at,
                init_source: Some(if b.data { "parent-data" } else { "schema-only" }),
                default: false,
                primary: false,
                protected: false,
                cpu_used_sec: 0,
                active_time_seconds: 0,
                compute_time_seconds: 0,
                written_data_bytes: 0,
                data_transfer_bytes: 0,
                annotations: b.labels,
            });
        }
        Ok(ProjectView {
            row,
            databases,
            branches,
            sources,
        })
    }

    fn branch(&self, id: &str) -> Result<&shapes::Branch, NeonError> {
        self.branches
            .iter()
            .find(|b| b.id == id)
            .ok_or_else(|| NeonError::NotFound(format!("branch '{id}' not found")))
    }

    /// The databases a branch holds: the endpoint's own for the default branch, its copy for
    /// any other.
    fn databases_of(&self, branch: &str) -> Vec<&DatabaseRow> {
        self.databases
            .iter()
            .filter(|d| {
                if branch == ROOT_ID {
                    !d.branch
                } else {
                    d.name == branch
                }
            })
            .collect()
    }

    /// The database a branch of `branch` copies.
    fn source_of(&self, branch: &str) -> Result<String, NeonError> {
        self.databases_of(branch)
            .first()
            .map(|d| d.name.clone())
            .ok_or_else(|| {
                NeonError::BadRequest(format!(
                    "branch '{branch}' has no database to copy; create one first"
                ))
            })
    }

    fn endpoint_id(&self, branch: &str) -> String {
        branch_endpoint_id(&self.row.id, branch)
    }

    fn endpoint(&self, service: &Service, branch: &str) -> shapes::Endpoint {
        let row = &self.row;
        let public = service.computes.public_address();
        let id = self.endpoint_id(branch);
        shapes::Endpoint {
            host: public.host(&id, false),
            id,
            project_id: row.id.clone(),
            branch_id: branch.to_owned(),
            region_id: region(row),
            autoscaling_limit_min_cu: row.min_cu,
            autoscaling_limit_max_cu: row.max_cu,
            kind: "read_write",
            current_state: if row.state == EndpointState::Active {
                "active"
            } else {
                "idle"
            },
            pooler_enabled: true,
            pooler_mode: "transaction",
            disabled: false,
            passwordless_access: false,
            creation_source: "wake-service",
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_active: row.last_active,
            suspended_at: row.suspended_at,
            settings: serde_json::Map::new(),
            proxy_host: public.domain.clone(),
            suspend_timeout_seconds: row.suspend_timeout_seconds,
            provisioner: row.driver.clone(),
        }
    }

    /// The name of the endpoint's database a branch's database was copied from, through
    /// branches of branches.
    fn original_name(&self, database: &str) -> String {
        let mut at = database;
        for _ in 0..=self.sources.len() {
            match self.sources.get(at) {
                Some(source) => at = source,
                None => break,
            }
        }
        at.to_owned()
    }

    /// The name a branch's database is shown under, the one that reaches it with the branch
    /// endpoint's host. On Neon a branch's databases keep their names; here each copy is a
    /// database of its own, named after its branch. On the branch's own host
    /// (`<endpoint>--<branch>`, which the gateway reads as the copy) it keeps its original's
    /// name (`neondb`), as on Neon; a branch without a host of its own is reached on the
    /// endpoint's host, by the copy's name. Tools build connection strings from this name.
    fn shown_name(&self, branch: &str, database: &str) -> String {
        if branch != ROOT_ID && self.endpoint_id(branch) != self.row.id {
            self.original_name(database)
        } else {
            database.to_owned()
        }
    }

    fn database(&self, branch: &str, d: &DatabaseRow) -> shapes::Database {
        shapes::Database {
            id: database_id(&self.row.id, &d.name),
            branch_id: branch.to_owned(),
            name: self.shown_name(branch, &d.name),
            owner_name: d.owner.clone(),
            created_at: d.created_at,
            updated_at: d.created_at,
        }
    }

    /// The database a request names: on the default branch, one of the endpoint's by its
    /// name; on a branch, its copy, by its original's name or its own. Its real name.
    fn resolve_database(&self, branch: &shapes::Branch, name: &str) -> Result<String, NeonError> {
        let found = if branch.id == ROOT_ID {
            self.databases_of(ROOT_ID).iter().any(|d| d.name == name)
        } else {
            name == branch.id || name == self.original_name(&branch.id)
        };
        if found {
            return Ok(if branch.id == ROOT_ID {
                name.to_owned()
            } else {
                branch.id.clone()
            });
        }
        Err(NeonError::NotFound(format!(
            "database '{name}' not found on branch '{}'",
            branch.id
        )))
    }
}

/// The id of a branch's endpoint, which its host carries: the endpoint's own for the default
/// branch; `<endpoint>--<branch>` for another, which the gateway reads as the endpoint and the
/// branch's database ([`wake_api::DATABASE_SEPARATOR`]), so that a client building its URL from
/// the host and the parent's database name (`neondb`), as create-branch-action does, lands in
/// the branch. A branch name a host cannot carry (upper case, a label over 63 characters with
/// `-pooler`), or an endpoint id made before `--` was refused in ids, keeps the endpoint's own
/// host, where its database name reaches it.
fn branch_endpoint_id(endpoint: &str, branch: &str) -> String {
    if branch == ROOT_ID {
        return endpoint.to_owned();
    }
    let label = format!("{endpoint}{}{branch}", wake_api::DATABASE_SEPARATOR);
    let hostable = !endpoint.contains(wake_api::DATABASE_SEPARATOR)
        && branch
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !wake_api::split_pooler(branch).1
        && label.len() + wake_api::POOLER_SUFFIX.len() <= 63;
    if hostable {
        label
    } else {
        endpoint.to_owned()
    }
}

fn root_branch(row: &EndpointRow) -> shapes::Branch {
    shapes::Branch {
        id: ROOT_ID.to_owned(),
        project_id: row.id.clone(),
        parent_id: None,
        name: ROOT_NAME.to_owned(),
        current_state: "ready",
        state_changed_at: row.created_at,
        creation_source: "wake-service",
        created_at: row.created_at,
        updated_at: row.updated_at,
        last_reset_at: None,
        expires_at: None,
        init_source: None,
        default: true,
        primary: true,
        protected: false,
        cpu_used_sec: 0,
        active_time_seconds: 0,
        compute_time_seconds: 0,
        written_data_bytes: 0,
        data_transfer_bytes: 0,
        annotations: BTreeMap::new(),
    }
}

fn region(row: &EndpointRow) -> String {
    format!("{}-local", row.driver)
}

/// A stable number for a database (Neon's ids are integers): 53 bits of a SHA-256, so that
/// JavaScript reads it exactly.
fn database_id(endpoint: &str, name: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest([endpoint.as_bytes(), b"\0", name.as_bytes()].concat());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes) & ((1 << 53) - 1)
}

fn project(service: &Service, row: &EndpointRow) -> Project {
    let now = OffsetDateTime::now_utc();
    // The first of this month, UTC (replace_day(1) never fails).
    let period_start = now
        .replace_day(1)
        .map_or(now, |d| d.replace_time(time::Time::MIDNIGHT));
    Project {
        id: row.id.clone(),
        platform_id: row.driver.clone(),
        region_id: region(row),
        name: row.id.clone(),
        provisioner: row.driver.clone(),
        pg_version: 15,
        proxy_host: service.computes.public_address().domain.clone(),
        branch_logical_size_limit: 0,
        branch_logical_size_limit_bytes: 0,
        store_passwords: true,
        creation_source: "wake-service".into(),
        history_retention_seconds: 0,
        created_at: row.created_at,
        updated_at: row.updated_at,
        owner_id: String::new(),
        consumption_period_start: period_start,
        consumption_period_end: now,
        active_time_seconds: 0,
        active_time: 0,
        compute_time_seconds: 0,
        written_data_bytes: 0,
        data_transfer_bytes: 0,
        data_storage_bytes_hour: 0,
        cpu_used_sec: 0,
        default_endpoint_settings: EndpointSettings {
            autoscaling_limit_min_cu: row.min_cu,
            autoscaling_limit_max_cu: row.max_cu,
            suspend_timeout_seconds: row.suspend_timeout_seconds,
        },
    }
}

fn operation(row: OperationRow) -> Operation {
    Operation {
        id: row.id,
        project_id: row.endpoint.clone(),
        branch_id: row.branch,
        endpoint_id: row.endpoint,
        action: row.action,
        status: "finished",
        failures_count: 0,
        created_at: row.created_at,
        updated_at: row.created_at,
        total_duration_ms: row.duration_ms,
    }
}

/// Records a finished operation and returns it as Neon's.
async fn record(
    service: &Service,
    project: &str,
    branch: &str,
    action: &str,
    started: Instant,
) -> Result<Operation, NeonError> {
    let ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
    let row = service
        .computes
        .store()
        .record_operation(project, branch, action, ms)
        .await
        .map_err(LifecycleError::from)?;
    Ok(operation(row))
}

/// Where a page starts: a cursor is the offset of the next page (opaque to clients).
fn offset(cursor: Option<&str>) -> Result<usize, NeonError> {
    match cursor {
        None | Some("") => Ok(0),
        Some(cursor) => cursor
            .parse()
            .map_err(|_| NeonError::BadRequest(format!("invalid cursor '{cursor}'"))),
    }
}

// ---- projects ----

async fn list_projects(State(service): State<Arc<Service>>) -> Reply {
    let rows = service
        .computes
        .store()
        .endpoints()
        .await
        .map_err(LifecycleError::from)?;
    let projects: Vec<Project> = rows.iter().map(|row| project(&service, row)).collect();
    ok(json!({
        "projects": to_value(&projects)?,
        "pagination": {"cursor": projects.last().map(|p| p.id.clone()).unwrap_or_default()},
        "applications": {},
        "integrations": {},
    }))
}

async fn get_project(State(service): State<Arc<Service>>, Path(id): Path<String>) -> Reply {
    let view = ProjectView::load(&service, &id).await?;
    ok(json!({ "project": to_value(&project(&service, &view.row))? }))
}

// ---- branches ----

#[derive(Deserialize)]
struct ListBranches {
    search: Option<String>,
    sort_by: Option<String>,
    sort_order: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn list_branches(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    Query(query): Query<ListBranches>,
) -> Reply {
    let view = ProjectView::load(&service, &id).await?;
    let mut branches: Vec<&shapes::Branch> = view
        .branches
        .iter()
        .filter(|b| {
            query
                .search
                .as_deref()
                .is_none_or(|s| b.name.contains(s) || b.id.contains(s))
        })
        .collect();
    let sort_by = query.sort_by.as_deref().unwrap_or("updated_at");
    match sort_by {
        "name" => branches.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id))),
        "created_at" => branches.sort_by_key(|b| (b.created_at, b.id.clone())),
        "updated_at" => branches.sort_by_key(|b| (b.updated_at, b.id.clone())),
        other => {
            return Err(NeonError::BadRequest(format!(
                "sort_by must be name, created_at or updated_at, not '{other}'"
            )))
        }
    }
    let sort_order = query.sort_order.as_deref().unwrap_or("desc");
    match sort_order {
        "asc" => {}
        "desc" => branches.reverse(),
        other => {
            return Err(NeonError::BadRequest(format!(
                "sort_order must be asc or desc, not '{other}'"
            )))
        }
    }
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=DEFAULT_PAGE).contains(&limit) {
        return Err(NeonError::BadRequest(format!(
            "limit must be between 1 and {DEFAULT_PAGE}"
        )));
    }
    let start = offset(query.cursor.as_deref())?;
    let page: Vec<&shapes::Branch> = branches.iter().skip(start).take(limit).copied().collect();
    let end = start + page.len();
    let annotations: BTreeMap<String, Annotation> = page
        .iter()
        .map(|b| (b.id.clone(), Annotation::of(b)))
        .collect();
    let mut pagination = json!({"sort_by": sort_by, "sort_order": sort_order});
    if end < branches.len() {
        pagination["next"] = Value::String(end.to_string());
    }
    ok(json!({
        "branches": to_value(&page)?,
        "annotations": to_value(&annotations)?,
        "pagination": pagination,
    }))
}

async fn get_branch(
    State(service): State<Arc<Service>>,
    Path((id, branch)): Path<(String, String)>,
) -> Reply {
    let view = ProjectView::load(&service, &id).await?;
    let branch = view.branch(&branch)?;
    ok(json!({
        "branch": to_value(branch)?,
        "annotation": to_value(&Annotation::of(branch))?,
    }))
}

async fn create_branch(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Reply {
    let started = Instant::now();
    // The body is optional, as in Neon's: an empty one makes a branch of the default branch.
    let body: CreateBranchBody = if body.iter().all(u8::is_ascii_whitespace) {
        CreateBranchBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| NeonError::BadRequest(format!("invalid request body: {e}")))?
    };
    let fields = &body.branch;
    if fields.parent_lsn.is_some() || fields.parent_timestamp.is_some() {
        return Err(NeonError::BadRequest(
            "branching from a point in time (parent_lsn, parent_timestamp) is not supported: a branch copies its parent's current state".into(),
        ));
    }
    if fields.protected || fields.archived {
        return Err(NeonError::BadRequest(
            "protected and archived branches are not supported".into(),
        ));
    }
    let data = match fields.init_source.as_deref() {
        None | Some("parent-data") => true,
        Some("schema-only") => false,
        Some(other) => {
            return Err(NeonError::BadRequest(format!(
                "init_source must be 'parent-data' or 'schema-only', not '{other}'"
            )))
        }
    };
    if body.endpoints.len() > 1 || body.endpoints.iter().any(|e| e.kind != "read_write") {
        return Err(NeonError::BadRequest(
            "a branch has one read_write endpoint (the project's compute); read_only endpoints are not supported".into(),
        ));
    }
    let ttl_seconds = match fields.expires_at {
        None => None,
        Some(at) => {
            let seconds = (at - OffsetDateTime::now_utc()).as_seconds_f64().ceil();
            if !(1.0..=MAX_BRANCH_TTL_SECONDS as f64).contains(&seconds) {
                return Err(NeonError::BadRequest(
                    "expires_at must be in the future and at most 30 days away".into(),
                ));
            }
            Some(seconds as i64)
        }
    };
    let view = ProjectView::load(&service, &id).await?;
    let parent = fields.parent_id.as_deref().unwrap_or(ROOT_ID);
    view.branch(parent)?;
    let display_name = match &fields.name {
        Some(name) => {
            if view.branches.iter().any(|b| &b.name == name) {
                return Err(NeonError::Conflict(format!(
                    "a branch named '{name}' already exists"
                )));
            }
            Some(name.clone())
        }
        None => None,
    };
    let request = CreateBranch {
        from: view.source_of(parent)?,
        name: Some(generated_id()),
        display_name,
        ttl_seconds,
        labels: body.annotation_value,
        data,
    };
    let branch = detached(&service, move |service| async move {
        service.computes.create_branch(&id, &request).await
    })
    .await??;
    let operation = record(
        &service,
        &branch.endpoint,
        &branch.name,
        "create_branch",
        started,
    )
    .await?;
    let view = ProjectView::load(&service, &branch.endpoint).await?;
    let new = view.branch(&branch.name)?;
    let roles = roles_of(&service, &view, &new.id).await?;
    let databases: Vec<shapes::Database> = view
        .databases_of(&new.id)
        .into_iter()
        .map(|d| view.database(&new.id, d))
        .collect();
    let mut connection_uris = Vec::new();
    if let Ok(password) = service
        .computes
        .role_password(&branch.endpoint, &branch.owner)
        .await
    {
        connection_uris.push(connection_details(
            &service,
            &view.endpoint_id(&new.id),
            &branch.owner,
            &password,
            &view.shown_name(&new.id, &branch.name),
        ));
    }
    created(json!({
        "branch": to_value(new)?,
        "endpoints": [to_value(&view.endpoint(&service, &new.id))?],
        "operations": [to_value(&operation)?],
        "roles": to_value(&roles)?,
        "databases": to_value(&databases)?,
        "connection_uris": to_value(&connection_uris)?,
    }))
}

async fn delete_branch(
    State(service): State<Arc<Service>>,
    Path((id, branch)): Path<(String, String)>,
) -> Reply {
    let started = Instant::now();
    let view = ProjectView::load(&service, &id).await?;
    let deleted = view.branch(&branch)?.clone();
    if deleted.default {
        return Err(NeonError::BadRequest(
            "the default branch cannot be deleted (delete the endpoint through /v1)".into(),
        ));
    }
    let (project, name) = (id.clone(), branch.clone());
    detached(&service, move |service| async move {
        service.computes.delete_branch(&project, &name).await
    })
    .await??;
    let operation = record(&service, &id, &branch, "delete_timeline", started).await?;
    ok(json!({
        "branch": to_value(&deleted)?,
        "operations": [to_value(&operation)?],
    }))
}

async fn restore_branch(
    State(service): State<Arc<Service>>,
    Path((id, branch)): Path<(String, String)>,
    NeonJson(body): NeonJson<RestoreBody>,
) -> Reply {
    let started = Instant::now();
    let view = ProjectView::load(&service, &id).await?;
    let target = view.branch(&branch)?;
    if body.source_lsn.is_some() || body.source_timestamp.is_some() {
        return Err(NeonError::BadRequest(
            "restoring to a point in time (source_lsn, source_timestamp) is not supported".into(),
        ));
    }
    if body.preserve_under_name.is_some() {
        return Err(NeonError::BadRequest(
            "preserve_under_name is not supported: the branch's state before the reset is not kept"
                .into(),
        ));
    }
    if target.parent_id.as_deref() != Some(body.source_branch_id.as_str()) {
        return Err(NeonError::BadRequest(format!(
            "only a reset from the branch's parent is supported: source_branch_id must be '{}'",
            target
                .parent_id
                .as_deref()
                .unwrap_or("(the default branch has none)")
        )));
    }
    let (project, name) = (id.clone(), branch.clone());
    detached(&service, move |service| async move {
        service.computes.reset_branch(&project, &name).await
    })
    .await??;
    let operation = record(&service, &id, &branch, "create_timeline", started).await?;
    let view = ProjectView::load(&service, &id).await?;
    ok(json!({
        "branch": to_value(view.branch(&branch)?)?,
        "operations": [to_value(&operation)?],
    }))
}

fn generated_id() -> String {
    const WORDS: [&str; 16] = [
        "quiet", "bold", "calm", "brisk", "dry", "wild", "cool", "late", "river", "stone", "cloud",
        "field", "frost", "leaf", "moon", "wave",
    ];
    let n: u64 = rand::random();
    format!(
        "br-{}-{}-{:08}",
        WORDS[(n & 15) as usize],
        WORDS[((n >> 4) & 15) as usize],
        (n >> 8) % 100_000_000
    )
}

// ---- endpoints ----

async fn branch_endpoints(
    State(service): State<Arc<Service>>,
    Path((id, branch)): Path<(String, String)>,
) -> Reply {
    let view = ProjectView::load(&service, &id).await?;
    view.branch(&branch)?;
    ok(json!({ "endpoints": [to_value(&view.endpoint(&service, &branch))?] }))
}

async fn project_endpoints(State(service): State<Arc<Service>>, Path(id): Path<String>) -> Reply {
    let view = ProjectView::load(&service, &id).await?;
    let endpoints: Vec<shapes::Endpoint> = view
        .branches
        .iter()
        .map(|b| view.endpoint(&service, &b.id))
        .collect();
    ok(json!({ "endpoints": to_value(&endpoints)? }))
}

// ---- roles ----

async fn roles_of(
    service: &Service,
    view: &ProjectView,
    branch: &str,
) -> Result<Vec<shapes::Role>, NeonError> {
    let rows = service
        .computes
        .store()
        .role_rows(&view.row.id)
        .await
        .map_err(LifecycleError::from)?;
    Ok(rows
        .into_iter()
        .filter(|r| r.pending.is_none())
        .map(|r| shapes::Role {
            branch_id: branch.to_owned(),
            name: r.name,
            password: None,
            protected: false,
            created_at: r.created_at,
            updated_at: r.created_at,
        })
        .collect())
}

async fn find_role(
    service: &Service,
    view: &ProjectView,
    branch: &str,
    role: &str,
) -> Result<shapes::Role, NeonError> {
    view.branch(branch)?;
    roles_of(service, view, branch)
        .await?
        .into_iter()
        .find(|r| r.name == role)
        .ok_or_else(|| NeonError::NotFound(format!("role '{role}' not found")))
}

fn on_default_branch(branch: &str, what: &str) -> Result<(), NeonError> {
    if branch == ROOT_ID {
        Ok(())
    } else {
        Err(NeonError::BadRequest(format!(
            "{what} on the default branch ('{ROOT_ID}'): roles and databases belong to the endpoint, which every branch shares"
        )))
    }
}

async fn list_roles(
    State(service): State<Arc<Service>>,
    Path((id, branch)): Path<(String, String)>,
) -> Reply {
    let view = ProjectView::load(&service, &id).await?;
    view.branch(&branch)?;
    ok(json!({ "roles": to_value(&roles_of(&service, &view, &branch).await?)? }))
}

async fn get_role(
    State(service): State<Arc<Service>>,
    Path((id, branch, role)): Path<(String, String, String)>,
) -> Reply {
    let view = ProjectView::load(&service, &id).await?;
    ok(json!({ "role": to_value(&find_role(&service, &view, &branch, &role).await?)? }))
}

async fn create_role(
    State(service): State<Arc<Service>>,
    Path((id, branch)): Path<(String, String)>,
    NeonJson(body): NeonJson<CreateRoleBody>,
) -> Reply {
    let started = Instant::now();
    let view = ProjectView::load(&service, &id).await?;
    view.branch(&branch)?;
    on_default_branch(&branch, "create roles")?;
    let password = crate::password_vault::generate_password();
    let (project, name, secret) = (id.clone(), body.role.name.clone(), password.clone());
    detached(&service, move |service| async move {
        service.computes.create_role(&project, &name, &secret).await
    })
    .await??;
    let operation = record(&service, &id, &branch, "apply_config", started).await?;
    let mut role = find_role(&service, &view, &branch, &body.role.name).await?;
    role.password = Some(password);
    created(json!({
        "role": to_value(&role)?,
        "operations": [to_value(&operation)?],
    }))
}

async fn reveal_password(
    State(service): State<Arc<Service>>,
    Path((id, branch, role)): Path<(String, String, String)>,
) -> Reply {
    let view = ProjectView::load(&service, &id).await?;
    find_role(&service, &view, &branch, &role).await?;
    let password = service.computes.role_password(&id, &role).await?;
    ok(json!({ "password": password }))
}

async fn reset_password(
    State(service): State<Arc<Service>>,
    Path((id, branch, role)): Path<(String, String, String)>,
) -> Reply {
    let started = Instant::now();
    let view = ProjectView::load(&service, &id).await?;
    let mut found = find_role(&service, &view, &branch, &role).await?;
    on_default_branch(&branch, "reset passwords")?;
    let (project, name) = (id.clone(), role.clone());
    let password = detached(&service, move |service| async move {
        service.computes.reset_role_password(&project, &name).await
    })
    .await??;
    let operation = record(&service, &id, &branch, "apply_config", started).await?;
    found.password = Some(password);
    ok(json!({
        "role": to_value(&found)?,
        "operations": [to_value(&operation)?],
    }))
}

// ---- databases ----

async fn list_databases(
    State(service): State<Arc<Service>>,
    Path((id, branch)): Path<(String, String)>,
) -> Reply {
    let view = ProjectView::load(&service, &id).await?;
    view.branch(&branch)?;
    let databases: Vec<shapes::Database> = view
        .databases_of(&branch)
        .into_iter()
        .map(|d| view.database(&branch, d))
        .collect();
    ok(json!({ "databases": to_value(&databases)? }))
}

async fn get_database(
    State(service): State<Arc<Service>>,
    Path((id, branch, database)): Path<(String, String, String)>,
) -> Reply {
    let view = ProjectView::load(&service, &id).await?;
    let b = view.branch(&branch)?;
    let name = view.resolve_database(b, &database)?;
    let row = view
        .databases
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| NeonError::NotFound(format!("database '{database}' not found")))?;
    ok(json!({ "database": to_value(&view.database(&branch, row))? }))
}

async fn create_database(
    State(service): State<Arc<Service>>,
    Path((id, branch)): Path<(String, String)>,
    NeonJson(body): NeonJson<CreateDatabaseBody>,
) -> Reply {
    let started = Instant::now();
    let view = ProjectView::load(&service, &id).await?;
    view.branch(&branch)?;
    on_default_branch(&branch, "create databases")?;
    let (project, name, owner) = (
        id.clone(),
        body.database.name.clone(),
        body.database.owner_name.clone(),
    );
    detached(&service, move |service| async move {
        service
            .computes
            .create_database(&project, &name, &owner)
            .await
    })
    .await??;
    let operation = record(&service, &id, &branch, "apply_config", started).await?;
    let view = ProjectView::load(&service, &id).await?;
    let row = view
        .databases
        .iter()
        .find(|d| d.name == body.database.name)
        .ok_or_else(|| {
            NeonError::NotFound(format!("database '{}' not found", body.database.name))
        })?;
    created(json!({
        "database": to_value(&view.database(&branch, row))?,
        "operations": [to_value(&operation)?],
    }))
}

// ---- connection strings ----

#[derive(Deserialize)]
struct ConnectionUriQuery {
    branch_id: Option<String>,
    endpoint_id: Option<String>,
    database_name: String,
    role_name: String,
    #[serde(default)]
    pooled: bool,
}

fn connection_details(
    service: &Service,
    endpoint: &str,
    role: &str,
    password: &str,
    database: &str,
) -> ConnectionDetails {
    let public = service.computes.public_address();
    ConnectionDetails {
        connection_uri: crate::lifecycle::connection_uri(
            public,
            endpoint,
            false,
            role,
            Some(password),
            database,
        ),
        connection_parameters: ConnectionParameters {
            database: database.to_owned(),
            password: password.to_owned(),
            role: role.to_owned(),
            host: public.host(endpoint, false),
            pooler_host: public.host(endpoint, true),
        },
    }
}

async fn connection_uri(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    Query(query): Query<ConnectionUriQuery>,
) -> Reply {
    let view = ProjectView::load(&service, &id).await?;
    let branch = match (&query.branch_id, &query.endpoint_id) {
        (Some(branch), _) => view.branch(branch)?,
        (None, None) => view.branch(ROOT_ID)?,
        (None, Some(endpoint)) => view
            .branches
            .iter()
            .find(|b| &view.endpoint_id(&b.id) == endpoint)
            .ok_or_else(|| {
                NeonError::NotFound(format!("endpoint '{endpoint}' not found in project '{id}'"))
            })?,
    };
    // Every branch runs on the project's compute, so its id is accepted on any branch.
    if let Some(endpoint) = &query.endpoint_id {
        if endpoint != &view.endpoint_id(&branch.id) && endpoint != &id {
            return Err(NeonError::NotFound(format!(
                "endpoint '{endpoint}' is not branch '{}''s",
                branch.id
            )));
        }
    }
    let database = view.shown_name(
        &branch.id,
        &view.resolve_database(branch, &query.database_name)?,
    );
    find_role(&service, &view, &branch.id, &query.role_name).await?;
    let password = service
        .computes
        .role_password(&id, &query.role_name)
        .await?;
    let uri = crate::lifecycle::connection_uri(
        service.computes.public_address(),
        &view.endpoint_id(&branch.id),
        query.pooled,
        &query.role_name,
        Some(&password),
        &database,
    );
    ok(json!({ "uri": uri }))
}

// ---- operations ----

#[derive(Deserialize)]
struct ListOperations {
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn list_operations(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    Query(query): Query<ListOperations>,
) -> Reply {
    ProjectView::load(&service, &id).await?;
    let rows = service
        .computes
        .store()
        .operations(&id)
        .await
        .map_err(LifecycleError::from)?;
    let limit = query.limit.unwrap_or(1000).clamp(1, 1000);
    let start = offset(query.cursor.as_deref())?;
    let page: Vec<Operation> = rows
        .into_iter()
        .skip(start)
        .take(limit)
        .map(operation)
        .collect();
    let next = start + page.len();
    ok(json!({
        "operations": to_value(&page)?,
        "pagination": {"cursor": next.to_string()},
    }))
}

async fn get_operation(
    State(service): State<Arc<Service>>,
    Path((id, operation_id)): Path<(String, String)>,
) -> Reply {
    ProjectView::load(&service, &id).await?;
    let row = service
        .computes
        .store()
        .operation(&id, &operation_id)
        .await
        .map_err(LifecycleError::from)?
        .ok_or_else(|| NeonError::NotFound(format!("operation '{operation_id}' not found")))?;
    ok(json!({ "operation": to_value(&operation(row))? }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_look_like_neons() {
        // neonctl takes `br-` and three dash-separated lowercase words as an id, else a name.
        for _ in 0..100 {
            let id = generated_id();
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(parts.len(), 4, "{id}");
            assert_eq!(parts[0], "br");
            assert!(parts[1..].iter().all(|p| !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())));
            assert!(wake_api::names::valid_object_name(&id), "{id}");
        }
        assert!(wake_api::names::valid_object_name(ROOT_ID));
    }

    #[test]
    fn lifecycle_errors_get_the_statuses_neons_clients_expect() {
        let status = |e: LifecycleError| NeonError::from(e).into_response().status().as_u16();
        // neonctl and neon-testing retry 423 ("project locked").
        assert_eq!(status(LifecycleError::Busy("db".into())), 423);
        let unavailable = LifecycleError::PasswordUnavailable {
            endpoint: "db".into(),
            role: "r".into(),
            reason: "x".into(),
        };
        assert_eq!(status(unavailable), 412);
        assert_eq!(status(LifecycleError::NotFound("db".into())), 404);
        assert_eq!(status(LifecycleError::Conflict("taken".into())), 409);
        assert_eq!(status(LifecycleError::Invalid("bad".into())), 400);
        let response = NeonError::Locked("busy".into()).into_response();
        assert!(response.headers().contains_key("x-neon-ret-request-id"));
    }

    #[test]
    fn branch_endpoints_are_named_by_their_host_when_it_can_carry_them() {
        assert_eq!(branch_endpoint_id("db", ROOT_ID), "db");
        assert_eq!(
            branch_endpoint_id("db", "br-cool-dawn-12345678"),
            "db--br-cool-dawn-12345678"
        );
        assert_eq!(
            branch_endpoint_id("db", "br_0a1b2c3d4e5f"),
            "db--br_0a1b2c3d4e5f"
        );
        // Upper case, a name ending in -pooler, a label too long: the endpoint's own host.
        assert_eq!(branch_endpoint_id("db", "Test1"), "db");
        assert_eq!(branch_endpoint_id("db", "x-pooler"), "db");
        assert_eq!(branch_endpoint_id("old--id", "br-1"), "old--id");
        assert_eq!(
            branch_endpoint_id(&"e".repeat(30), &"b".repeat(25)),
            "e".repeat(30)
        );
        assert_eq!(
            branch_endpoint_id(&"e".repeat(29), &"b".repeat(25)),
            format!("{}--{}", "e".repeat(29), "b".repeat(25))
        );
    }

    #[test]
    fn database_ids_are_stable_and_safe_in_javascript() {
        let a = database_id("db", "main");
        assert_eq!(a, database_id("db", "main"));
        assert_ne!(a, database_id("db", "other"));
        assert!((0..(1i64 << 53)).contains(&a));
    }
}
