//! Test harness: a real Postgres 15 (started through `scripts/postgres.sh`, stopped by a watcher
//! when the test process exits) and in-process gateways on port-0 listeners.
//!
//! Gateways with a control plane: `TestGateway::with_control_plane(url, token, tweak)` serves
//! every endpoint from the proxy API at `url` (e.g. `http://127.0.0.1:4400/proxy/api/v1` for a
//! real wake service) with no static routes; `tweak` can tune `config.route_cache` (say a short
//! `negative_ttl`). The same configuration is `Config::for_tests_with_control_plane(url, token)`
//! for tests that start gateways themselves. `MockControlPlane` is a stand-in proxy API that
//! answers from tables and counts requests; it also takes the gateway's activity reports
//! (`POST /activity`), records them and answers with a configurable `inactive` list and, as
//! the wake service does, the role changes the report has not applied yet
//! (`MockControlPlane::change_role`). `Forwarder` is a TCP proxy that counts the backend
//! connections opened through it.

#![allow(dead_code)]

pub mod raw;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use gateway::Config;
use gateway::Route;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct TestPostgres {
    pub port: u16,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("gateway/ has a parent")
        .to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// The Postgres shared by every test of this test binary.
pub fn postgres() -> &'static TestPostgres {
    static PG: OnceLock<TestPostgres> = OnceLock::new();
    PG.get_or_init(|| {
        let script = repo_root().join("scripts/postgres.sh");
        let port = free_port();
        let out = Command::new("bash")
            .arg(&script)
            .args(["temp", &port.to_string()])
            .env("PG_FAST", "1")
            .output()
            .expect("run scripts/postgres.sh");
        assert!(
            out.status.success(),
            "postgres.sh temp failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let status = Command::new("bash")
            .arg(&script)
            .args(["watch", &std::process::id().to_string(), &dir])
            .status()
            .expect("start the watcher");
        assert!(status.success(), "postgres.sh watch failed");
        TestPostgres { port }
    })
}

impl TestPostgres {
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:postgres@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// A role's SCRAM secret as Postgres stores it (what a control plane hands out).
    pub async fn role_secret(&self, role: &str) -> String {
        self.client()
            .await
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[&role],
            )
            .await
            .expect("pg_authid")
            .get(0)
    }

    /// A direct tokio-postgres client, to set up and check what the gateway did.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.url("main"), tokio_postgres::NoTls)
                .await
                .expect("connect directly to the test Postgres");
        tokio::spawn(connection);
        client
    }
}

pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestGateway {
    /// A gateway routing endpoint `db` to the shared Postgres, with `tweak` applied to its config.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestGateway {
        let route: Route = format!("db={}", postgres().address())
            .parse()
            .expect("route");
        let mut config = Config::for_tests(vec![route]);
        tweak(&mut config);
        TestGateway::serve(config).await
    }

    /// A gateway whose endpoints all come from the control plane at `url` (the proxy API base),
    /// with `tweak` applied to its config.
    pub async fn with_control_plane(
        url: &str,
        token: Option<&str>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestGateway {
        let mut config = Config::for_tests_with_control_plane(url, token);
        tweak(&mut config);
        TestGateway::serve(config).await
    }

    /// A gateway with this configuration, on fresh port-0 listeners (its listen addresses are
    /// not used).
    pub async fn serve(config: Config) -> TestGateway {
        let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = public.local_addr().expect("addr");
        let admin_addr = admin.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(gateway::serve(config, public, admin, shutdown.clone()));
        TestGateway {
            addr,
            admin: admin_addr,
            shutdown,
            task,
        }
    }

    pub fn sql_url(&self) -> String {
        format!("http://{}/sql", self.addr)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("gateway task").expect("gateway ran");
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The admin listener's `/usage` document.
    pub async fn usage(&self) -> serde_json::Value {
        reqwest::get(format!("http://{}/usage", self.admin))
            .await
            .expect("usage")
            .json()
            .await
            .expect("usage JSON")
    }

    /// Sum of the samples of `name` whose label set contains `labels` (e.g. `outcome="hit"`).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .filter(|l| l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

pub const CONN: &str = "postgres://postgres:postgres@db.localtest.me/main";

/// A stand-in control plane: the Neon-compatible proxy API (`wake_compute`,
/// `get_endpoint_access_control`) answering from tables, counting every request. Unknown
/// endpoints get 404 ENDPOINT_NOT_FOUND; while `set_down(true)`, everything gets a bare 503.
pub struct MockControlPlane {
    /// The proxy API base, for `--control-plane-url`.
    pub url: String,
    state: Arc<MockState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct MockState {
    routes: Mutex<HashMap<String, String>>,
    secrets: Mutex<HashMap<(String, String), String>>,
    wakes: AtomicUsize,
    lookups: AtomicUsize,
    down: AtomicBool,
    token: Mutex<Option<String>>,
    activity: Mutex<ActivityLog>,
}

#[derive(Default)]
struct ActivityLog {
    /// Every report received, also the ones answered with an error.
    reports: Vec<ReceivedReport>,
    /// The reply's `inactive` list.
    inactive: Vec<String>,
    /// Reports get a 500 while set.
    failing: bool,
    /// Every role change so far, ids from 1.
    role_changes: Vec<wake_api::proxy::RoleChange>,
}

/// One activity report as the mock control plane received it.
#[derive(Clone, Debug)]
pub struct ReceivedReport {
    pub at: std::time::Instant,
    pub report: wake_api::proxy::ActivityReport,
    /// Answered 200 (the gateway counts it delivered).
    pub delivered: bool,
}

impl ReceivedReport {
    /// (sessions, in_flight, idle_ms) of `endpoint`, when the report lists it.
    pub fn endpoint(&self, endpoint: &str) -> Option<(u32, u32, u64)> {
        self.report
            .endpoints
            .iter()
            .find(|e| e.endpoint_id == endpoint)
            .map(|e| (e.sessions, e.in_flight, e.idle_ms))
    }
}

impl MockControlPlane {
    pub async fn start() -> MockControlPlane {
        use axum::extract::{Query, State};
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::{IntoResponse, Response};
        use axum::routing::get;
        use wake_api::proxy::{ControlPlaneError, Reason};

        type Params = Query<HashMap<String, String>>;
        fn refused(state: &MockState, headers: &HeaderMap) -> Option<Response> {
            if state.down.load(Ordering::SeqCst) {
                return Some(StatusCode::SERVICE_UNAVAILABLE.into_response());
            }
            let expected = state.token.lock().expect("lock").clone();
            let given = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match expected {
                Some(token) if given != Some(format!("Bearer {token}")) => {
                    Some(StatusCode::UNAUTHORIZED.into_response())
                }
                _ => None,
            }
        }
        fn not_found() -> Response {
            (
                StatusCode::NOT_FOUND,
                axum::Json(ControlPlaneError::new(
                    "NOT_FOUND",
                    "no such endpoint",
                    Reason::EndpointNotFound,
                )),
            )
                .into_response()
        }
        async fn wake(
            State(state): State<Arc<MockState>>,
            Query(query): Params,
            headers: HeaderMap,
        ) -> Response {
            state.wakes.fetch_add(1, Ordering::SeqCst);
            if let Some(refused) = refused(&state, &headers) {
                return refused;
            }
            let endpoint = query.get("endpointish").cloned().unwrap_or_default();
            let address = state.routes.lock().expect("lock").get(&endpoint).cloned();
            match address {
                Some(address) => axum::Json(serde_json::json!({
                    "address": address,
                    "server_name": null,
                    "aux": {"endpoint_id": endpoint, "project_id": "p", "branch_id": "b",
                            "compute_id": "c", "cold_start_info": "warm"}
                }))
                .into_response(),
                None => not_found(),
            }
        }
        async fn access(
            State(state): State<Arc<MockState>>,
            Query(query): Params,
            headers: HeaderMap,
        ) -> Response {
            state.lookups.fetch_add(1, Ordering::SeqCst);
            if let Some(refused) = refused(&state, &headers) {
                return refused;
            }
            let endpoint = query.get("endpointish").cloned().unwrap_or_default();
            let role = query.get("role").cloned().unwrap_or_default();
            if !state.routes.lock().expect("lock").contains_key(&endpoint) {
                return not_found();
            }
            let secret = state
                .secrets
                .lock()
                .expect("lock")
                .get(&(endpoint, role))
                .cloned()
                .unwrap_or_default();
            axum::Json(serde_json::json!({
                "role_secret": secret, "project_id": "p", "allowed_ips": null
            }))
            .into_response()
        }

        async fn activity(
            State(state): State<Arc<MockState>>,
            headers: HeaderMap,
            axum::Json(report): axum::Json<wake_api::proxy::ActivityReport>,
        ) -> Response {
            if let Some(refused) = refused(&state, &headers) {
                return refused;
            }
            // One lock for the reply and the record: a test that changes the reply knows
            // which reports were answered the old way.
            let mut log = state.activity.lock().expect("lock");
            let delivered = !log.failing;
            log.reports.push(ReceivedReport {
                at: std::time::Instant::now(),
                report,
                delivered,
            });
            if !delivered {
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
            let applied = log
                .reports
                .last()
                .and_then(|r| r.report.role_changes_applied);
            // As the wake service: the changes after the applied one; none on a first report.
            let role_changes = match applied {
                Some(applied) => log
                    .role_changes
                    .iter()
                    .filter(|c| c.id > applied)
                    .cloned()
                    .collect(),
                None => Vec::new(),
            };
            axum::Json(wake_api::proxy::ActivityReply {
                inactive: log.inactive.clone(),
                role_changes,
                role_changes_cursor: Some(log.role_changes.last().map_or(0, |c| c.id)),
                role_changes_truncated: false,
            })
            .into_response()
        }

        let state = Arc::new(MockState::default());
        let app = axum::Router::new()
            .route("/proxy/api/v1/wake_compute", get(wake))
            .route("/proxy/api/v1/get_endpoint_access_control", get(access))
            .route("/proxy/api/v1/activity", axum::routing::post(activity))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockControlPlane {
            url: format!("http://{addr}/proxy/api/v1"),
            state,
            task,
        }
    }

    /// `wake_compute` for `endpointish` answers `address` from now on.
    pub fn route(&self, endpointish: &str, address: &str) {
        self.state
            .routes
            .lock()
            .expect("lock")
            .insert(endpointish.to_owned(), address.to_owned());
    }

    /// `get_endpoint_access_control` for (endpoint, role) answers `secret` ("" by default).
    pub fn secret(&self, endpoint: &str, role: &str, secret: &str) {
        self.state
            .secrets
            .lock()
            .expect("lock")
            .insert((endpoint.to_owned(), role.to_owned()), secret.to_owned());
    }

    /// Requests without `Authorization: Bearer <token>` get 401.
    pub fn require_token(&self, token: &str) {
        *self.state.token.lock().expect("lock") = Some(token.to_owned());
    }

    /// While down, every request gets a bare 503.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    pub fn wakes(&self) -> usize {
        self.state.wakes.load(Ordering::SeqCst)
    }

    pub fn lookups(&self) -> usize {
        self.state.lookups.load(Ordering::SeqCst)
    }

    /// Every `wake_compute` and access-control request so far (activity reports apart).
    pub fn requests(&self) -> usize {
        self.wakes() + self.lookups()
    }

    /// Every activity report received so far, in order.
    pub fn reports(&self) -> Vec<ReceivedReport> {
        self.state.activity.lock().expect("lock").reports.clone()
    }

    /// Activity reports are answered with these endpoints as inactive from now on. Returns
    /// how many reports were received before the change (those were answered the old way).
    pub fn set_inactive(&self, inactive: &[&str]) -> usize {
        let mut log = self.state.activity.lock().expect("lock");
        log.inactive = inactive.iter().map(|s| (*s).to_owned()).collect();
        log.reports.len()
    }

    /// While set, activity reports get a 500 (they are still recorded).
    pub fn fail_activity(&self, failing: bool) {
        self.state.activity.lock().expect("lock").failing = failing;
    }

    /// `role` on `endpoint` changed, as `PATCH` or `DELETE` on the wake service would do it:
    /// its secret is now `secret` (`None`: the role is gone), and the change is handed to
    /// gateways in activity replies. Returns the change's id.
    pub fn change_role(&self, endpoint: &str, role: &str, secret: Option<&str>) -> i64 {
        let key = (endpoint.to_owned(), role.to_owned());
        match secret {
            Some(secret) => self.secret(endpoint, role, secret),
            None => {
                self.state.secrets.lock().expect("lock").remove(&key);
            }
        }
        let mut log = self.state.activity.lock().expect("lock");
        let id = log.role_changes.len() as i64 + 1;
        log.role_changes.push(wake_api::proxy::RoleChange {
            id,
            endpoint_id: endpoint.to_owned(),
            role: role.to_owned(),
        });
        id
    }

    /// Whether a delivered report said the change `id` is applied (what the wake service
    /// waits for before its role API call returns).
    pub fn applied(&self, id: i64) -> bool {
        self.reports()
            .iter()
            .any(|r| r.delivered && r.report.role_changes_applied >= Some(id))
    }
}

/// A TCP proxy to `target` that counts the connections opened through it: a backend that
/// knows how many clients reached it.
pub struct Forwarder {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    pub async fn start(target: String) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            let mut open = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let target = target.clone();
                open.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Forwarder {
            addr,
            connections,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for MockControlPlane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request as the driver sends it: raw text and array mode, connection string header.
pub fn driver_request(
    client: &reqwest::Client,
    gw: &TestGateway,
    conn: &str,
) -> reqwest::RequestBuilder {
    client
        .post(gw.sql_url())
        .header("Neon-Connection-String", conn)
        .header("Neon-Raw-Text-Output", "true")
        .header("Neon-Array-Mode", "true")
        .header("content-type", "text/plain;charset=UTF-8")
}

/// Sends `body` as the driver would and returns (status, JSON body).
pub async fn sql(
    gw: &TestGateway,
    conn: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let response = driver_request(&client, gw, conn)
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let json = response.json().await.expect("JSON body");
    (status, json)
}

/// Polls `check` every 20 ms until it gives a value, for at most `limit`; panics naming `what`
/// when it never does. For conditions that come true in the background (reports, drains).
pub async fn eventually<T, F, Fut>(what: &str, limit: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
