//! [`FakeControlPlane`]: the wake service's proxy API (`/proxy/api/v1/...`) on a real socket,
//! answering from scripts the test writes, so the gateway's HTTP client, retries and caches run
//! exactly as in production. Requests and answers are `wake-api`'s serde types: a change of
//! the wire contract breaks these tests too.
//!
//! It can refuse (any status, any [`Reason`]), answer late, go down (connection refused, or a
//! bare 503 as from a load balancer) and come back, and it counts and records what it was
//! asked. It meters as the wake service does: the usage of an activity report is stored once
//! per report id and acknowledged in the reply, so a test can compare what it stored with
//! what the gateway counted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use wake_api::proxy::{
    AccessControl, ActivityReply, ActivityReport, ColdStartInfo, ControlPlaneError,
    EndpointTraffic, MetricsAuxInfo, PoolLimit, Reason, RoleChange, UsageReport, WakeCompute,
};

/// What the fake answers to one `wake_compute` or `get_endpoint_access_control` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `wake_compute`: the endpoint's compute accepts connections at this `host:port`.
    Address(String),
    /// `get_endpoint_access_control`: the role's SCRAM secret ("" for a role that does not
    /// exist).
    Secret(String),
    /// An error in the proxy API's shape.
    Refuse {
        /// The HTTP status.
        status: u16,
        /// The body, with its reason and perhaps a retry delay.
        error: ControlPlaneError,
    },
    /// A status with no body the gateway can read (as a load balancer in front of a stopped
    /// control plane answers).
    Status(u16),
    /// Exactly this status and body text (say, a 200 that is not JSON).
    Raw {
        /// The HTTP status.
        status: u16,
        /// The body, sent as `text/plain`.
        body: String,
    },
}

impl Reply {
    /// `wake_compute` answers `address`.
    pub fn address(address: impl Into<String>) -> Reply {
        Reply::Address(address.into())
    }

    /// `get_endpoint_access_control` answers `secret`.
    pub fn secret(secret: impl Into<String>) -> Reply {
        Reply::Secret(secret.into())
    }

    /// 404 `ENDPOINT_NOT_FOUND`: not retried, cached for the negative TTL.
    pub fn not_found() -> Reply {
        Reply::refuse(404, Reason::EndpointNotFound, "no such endpoint")
    }

    /// 503 `RUNNING_OPERATIONS` with a retry delay: the compute is starting, try again.
    pub fn busy(retry_delay: Duration) -> Reply {
        let delay = u64::try_from(retry_delay.as_millis()).unwrap_or(u64::MAX);
        Reply::Refuse {
            status: 503,
            error: ControlPlaneError::new("UNAVAILABLE", "starting", Reason::RunningOperations)
                .with_retry_delay_ms(delay),
        }
    }

    /// A 503 for a compute that resumes in seconds: retry after `retry_delay`, for up to
    /// `budget` from the first try (`retry_info.wake_budget_ms`).
    pub fn starting(retry_delay: Duration, budget: Duration) -> Reply {
        let budget = u64::try_from(budget.as_millis()).unwrap_or(u64::MAX);
        match Reply::busy(retry_delay) {
            Reply::Refuse { status, error } => Reply::Refuse {
                status,
                error: error.with_wake_budget_ms(budget),
            },
            other => other,
        }
    }

    /// A bare 503: the control plane is unavailable for this call (retried by the gateway).
    pub fn unavailable() -> Reply {
        Reply::Status(503)
    }

    /// `status` with a proxy-API error body carrying `reason` and `message` (which is also
    /// its user-facing message).
    pub fn refuse(status: u16, reason: Reason, message: &str) -> Reply {
        Reply::Refuse {
            status,
            error: ControlPlaneError::new("REFUSED", message, reason),
        }
    }
}

/// How the fake is down (see [`FakeControlPlane::go_down`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outage {
    /// Nothing listens: connections are refused, open ones are closed.
    Refused,
    /// It listens, and answers every request (activity reports too) with a bare 503.
    Unavailable,
}

/// Which proxy-API call a [`Request`] was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `GET wake_compute`.
    WakeCompute,
    /// `GET get_endpoint_access_control`.
    AccessControl,
    /// `POST activity`.
    Activity,
}

/// One request as the fake received it (whatever it answered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Which call.
    pub call: Call,
    /// The query parameters, sorted by name.
    pub query: BTreeMap<String, String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The `X-Request-ID` header, if any.
    pub request_id: Option<String>,
}

/// One activity report as the fake received it.
#[derive(Clone, Debug)]
pub struct ReceivedReport {
    /// When it arrived (tokio's clock, so paused-time tests can measure it).
    pub at: tokio::time::Instant,
    /// The report.
    pub report: ActivityReport,
    /// Whether it was answered 200 (the gateway counts it delivered).
    pub delivered: bool,
    /// Whether its usage was stored now (false for a report id stored before, or a report
    /// refused, or one without usage).
    pub usage_stored: bool,
}

impl ReceivedReport {
    /// `(sessions, in_flight, idle_ms)` of `endpoint`, when the report lists it.
    pub fn endpoint(&self, endpoint: &str) -> Option<(u32, u32, u64)> {
        self.report
            .endpoints
            .iter()
            .find(|e| e.endpoint_id == endpoint)
            .map(|e| (e.sessions, e.in_flight, e.idle_ms))
    }
}

/// A stand-in for the wake service's proxy API on a port-0 listener, scripted by the test.
///
/// - `wake_compute?endpointish=E` answers E's script ([`route`](Self::route),
///   [`wake_replies`](Self::wake_replies)); 404 `ENDPOINT_NOT_FOUND` for an endpoint without
///   one.
/// - `get_endpoint_access_control?endpointish=E&role=R` answers (E, R)'s script
///   ([`secret`](Self::secret), [`secret_replies`](Self::secret_replies)); for a role without
///   one, "" (no such role) when E is known (has a wake script or a secret), else 404.
/// - `POST activity` records the report and answers, as the wake service does, with the
///   endpoints [`set_inactive`](Self::set_inactive) names and the role changes
///   ([`change_role`](Self::change_role)) after the report's `role_changes_applied`; it stores
///   the report's usage once per report id ([`usage`](Self::usage)) and names the id in
///   `usage_applied` (unless [`without_metering`](Self::without_metering)).
/// - An endpoint given a pool cap ([`pool_max_conns`](Self::pool_max_conns)) has it in its
///   `wake_compute` replies (not its `-pooler`'s) and, while a report names it (busy or
///   cached) and it is not inactive, in activity replies' `pool_limits`, as the wake service
///   sends its compute size's cap.
///
/// A script is a list of replies, one per call, whose last one repeats. Every call is counted
/// (also when refused for a missing token or an outage) once its reply is chosen, and answered
/// after the [`delay`](Self::delay): a test that sees a call counted can change the script
/// without changing that call's answer.
pub struct FakeControlPlane {
    addr: SocketAddr,
    state: Arc<Fake>,
    server: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Fake {
    script: Mutex<Script>,
    wakes: AtomicUsize,
    lookups: AtomicUsize,
}

#[derive(Default)]
struct Script {
    wake: HashMap<String, VecDeque<Reply>>,
    secrets: HashMap<(String, String), VecDeque<Reply>>,
    token: Option<String>,
    delay: Duration,
    unavailable: bool,
    requests: Vec<Request>,
    activity: ActivityScript,
    /// Pool caps per endpoint id (without `-pooler`).
    pool_caps: HashMap<String, u32>,
}

#[derive(Default)]
struct ActivityScript {
    reports: Vec<ReceivedReport>,
    inactive: Vec<String>,
    failing: bool,
    role_changes: Vec<RoleChange>,
    /// Replies whose role-change part is used verbatim, one per report.
    scripted: VecDeque<ActivityReply>,
    /// Answer as a control plane that tracks no role changes (no cursor).
    no_role_changes: bool,
    /// Store reports' usage, then answer 500 as if the reply was lost on the way.
    losing_replies: bool,
    /// Answer as a control plane that does not meter (usage ignored, never acknowledged).
    no_metering: bool,
    /// The report ids whose usage was stored.
    usage_ids: Vec<String>,
    /// The usage stored, per endpoint.
    usage: BTreeMap<String, EndpointTraffic>,
}

impl ActivityScript {
    /// Stores `usage` unless its id was stored before, as the wake service does. Returns
    /// whether it was stored now.
    fn store(&mut self, usage: &UsageReport) -> bool {
        if self.usage_ids.contains(&usage.report_id) {
            return false;
        }
        self.usage_ids.push(usage.report_id.clone());
        for entry in &usage.endpoints {
            let total = self
                .usage
                .entry(entry.endpoint_id.clone())
                .or_insert_with(|| EndpointTraffic {
                    endpoint_id: entry.endpoint_id.clone(),
                    ..EndpointTraffic::default()
                });
            total.ingress_bytes += entry.ingress_bytes;
            total.egress_bytes += entry.egress_bytes;
            total.queries += entry.queries;
            total.sessions += entry.sessions;
            total.connections += entry.connections;
        }
        true
    }
}

/// The next reply of a script: the first one, which stays when it is the last.
fn next(script: &mut VecDeque<Reply>) -> Option<Reply> {
    if script.len() > 1 {
        script.pop_front()
    } else {
        script.front().cloned()
    }
}

impl FakeControlPlane {
    /// Starts the fake on `127.0.0.1:0` with empty scripts: every endpoint is unknown.
    pub async fn start() -> FakeControlPlane {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake control plane");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Fake::default());
        let server = tokio::spawn(serve(listener, state.clone()));
        FakeControlPlane {
            addr,
            state,
            server: Mutex::new(Some(server)),
        }
    }

    /// The proxy API base, for `--control-plane-url` (`http://127.0.0.1:<port>/proxy/api/v1`).
    pub fn url(&self) -> String {
        format!("http://{}/proxy/api/v1", self.addr)
    }

    /// The token requests must carry ([`require_token`](Self::require_token)), if any.
    pub fn token(&self) -> Option<String> {
        self.script().token.clone()
    }

    fn script(&self) -> MutexGuard<'_, Script> {
        self.state.script.lock().expect("the fake's lock")
    }

    /// `wake_compute` for `endpointish` answers `address` from now on.
    pub fn route(&self, endpointish: &str, address: &str) {
        self.wake_replies(endpointish, [Reply::address(address)]);
    }

    /// `wake_compute` for `endpointish` answers `replies`, one per call, the last one repeating.
    pub fn wake_replies(&self, endpointish: &str, replies: impl IntoIterator<Item = Reply>) {
        let replies: VecDeque<Reply> = replies.into_iter().collect();
        assert!(!replies.is_empty(), "a script needs a reply");
        self.script().wake.insert(endpointish.to_owned(), replies);
    }

    /// From now on `wake_compute` for `endpoint` (an id without `-pooler`) says the gateway
    /// should hold at most `cap` backend connections to it, and activity replies say so for it
    /// while reports name it; `None`: nothing is said (as by a control plane without caps).
    pub fn pool_max_conns(&self, endpoint: &str, cap: Option<u32>) {
        let mut script = self.script();
        match cap {
            Some(cap) => script.pool_caps.insert(endpoint.to_owned(), cap),
            None => script.pool_caps.remove(endpoint),
        };
    }

    /// `get_endpoint_access_control` for (`endpoint`, `role`) answers `secret` from now on.
    pub fn secret(&self, endpoint: &str, role: &str, secret: &str) {
        self.secret_replies(endpoint, role, [Reply::secret(secret)]);
    }

    /// `get_endpoint_access_control` for (`endpoint`, `role`) answers `replies`, one per call,
    /// the last one repeating.
    pub fn secret_replies(
        &self,
        endpoint: &str,
        role: &str,
        replies: impl IntoIterator<Item = Reply>,
    ) {
        let replies: VecDeque<Reply> = replies.into_iter().collect();
        assert!(!replies.is_empty(), "a script needs a reply");
        self.script()
            .secrets
            .insert((endpoint.to_owned(), role.to_owned()), replies);
    }

    /// Requests without `Authorization: Bearer <token>` get 401 from now on.
    pub fn require_token(&self, token: &str) {
        self.script().token = Some(token.to_owned());
    }

    /// `wake_compute` and `get_endpoint_access_control` answer `delay` after the request
    /// arrived (the reply is chosen on arrival). Activity reports are answered at once.
    pub fn delay(&self, delay: Duration) {
        self.script().delay = delay;
    }

    /// Goes down until [`come_back`](Self::come_back). The calls refused by
    /// [`Outage::Unavailable`] are counted and recorded; with [`Outage::Refused`] nothing
    /// arrives.
    pub fn go_down(&self, how: Outage) {
        match how {
            Outage::Unavailable => self.script().unavailable = true,
            Outage::Refused => {
                if let Some(server) = self.server.lock().expect("lock").take() {
                    // The task owns the listener and every connection: all closed.
                    server.abort();
                }
            }
        }
    }

    /// Up again, on the same address, with the same scripts.
    pub fn come_back(&self) {
        self.script().unavailable = false;
        let mut server = self.server.lock().expect("lock");
        if server.is_none() {
            let listener = std::net::TcpListener::bind(self.addr)
                .expect("bind the fake control plane's address again");
            listener.set_nonblocking(true).expect("non-blocking");
            let listener = TcpListener::from_std(listener).expect("a tokio listener");
            *server = Some(tokio::spawn(serve(listener, self.state.clone())));
        }
    }

    /// `wake_compute` calls so far (refused ones too).
    pub fn wakes(&self) -> usize {
        self.state.wakes.load(Ordering::SeqCst)
    }

    /// `get_endpoint_access_control` calls so far (refused ones too).
    pub fn lookups(&self) -> usize {
        self.state.lookups.load(Ordering::SeqCst)
    }

    /// Every `wake_compute` and access-control call so far (activity reports apart).
    pub fn requests(&self) -> usize {
        self.wakes() + self.lookups()
    }

    /// Every request so far, in order of arrival.
    pub fn received(&self) -> Vec<Request> {
        self.script().requests.clone()
    }

    /// Every activity report received so far, in order.
    pub fn reports(&self) -> Vec<ReceivedReport> {
        self.script().activity.reports.clone()
    }

    /// Activity reports are answered with these endpoints as inactive from now on. Returns
    /// how many reports were received before the change (those were answered the old way).
    pub fn set_inactive(&self, inactive: &[&str]) -> usize {
        let mut script = self.script();
        script.activity.inactive = inactive.iter().map(|s| (*s).to_owned()).collect();
        script.activity.reports.len()
    }

    /// While set, activity reports get a 500 (they are still recorded).
    pub fn fail_activity(&self, failing: bool) {
        self.script().activity.failing = failing;
    }

    /// While set, activity reports are acted on (their usage stored) but answered 500, as if
    /// each reply was lost on its way back.
    pub fn lose_activity_replies(&self, losing: bool) {
        self.script().activity.losing_replies = losing;
    }

    /// From now on, activity reports' usage is neither stored nor acknowledged, as by a
    /// control plane that does not meter.
    pub fn without_metering(&self) {
        self.script().activity.no_metering = true;
    }

    /// The usage stored so far, per endpoint: each report id counted once.
    pub fn usage(&self) -> BTreeMap<String, EndpointTraffic> {
        self.script().activity.usage.clone()
    }

    /// The ids of the usage reports stored so far, in order.
    pub fn usage_ids(&self) -> Vec<String> {
        self.script().activity.usage_ids.clone()
    }

    /// `role` on `endpoint` changed, as `PATCH` or `DELETE` on the wake service would do it:
    /// its secret is now `secret` (`None`: the role is gone), and the change is handed to
    /// gateways in activity replies. Returns the change's id (from 1).
    pub fn change_role(&self, endpoint: &str, role: &str, secret: Option<&str>) -> i64 {
        let mut script = self.script();
        let key = (endpoint.to_owned(), role.to_owned());
        match secret {
            Some(secret) => {
                script
                    .secrets
                    .insert(key, VecDeque::from([Reply::secret(secret)]));
            }
            None => {
                script.secrets.remove(&key);
            }
        }
        let changes = &mut script.activity.role_changes;
        let id = i64::try_from(changes.len()).expect("few changes") + 1;
        changes.push(RoleChange {
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

    /// The next activity replies, one per report, carry these role-change parts
    /// (`role_changes`, `role_changes_cursor`, `role_changes_truncated`) verbatim instead of
    /// the ones [`change_role`](Self::change_role) makes; `inactive` still comes from
    /// [`set_inactive`](Self::set_inactive).
    pub fn activity_replies(&self, replies: impl IntoIterator<Item = ActivityReply>) {
        self.script().activity.scripted = replies.into_iter().collect();
    }

    /// From now on activity replies carry no role changes and no cursor, as from a control
    /// plane that does not track them.
    pub fn without_role_changes(&self) {
        self.script().activity.no_role_changes = true;
    }
}

impl Drop for FakeControlPlane {
    fn drop(&mut self) {
        if let Some(server) = self.server.lock().map(|mut s| s.take()).ok().flatten() {
            server.abort();
        }
    }
}

/// Accepts connections until aborted; aborting also closes every connection (they are
/// owned here, not detached), which is what [`Outage::Refused`] needs.
async fn serve(listener: TcpListener, state: Arc<Fake>) {
    let app = axum::Router::new()
        .route("/proxy/api/v1/wake_compute", get(wake))
        .route("/proxy/api/v1/get_endpoint_access_control", get(access))
        .route("/proxy/api/v1/activity", post(activity))
        .with_state(state);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

type Params = Query<HashMap<String, String>>;

impl Fake {
    /// Counts nothing; records the request and says whether it is refused (outage, token).
    fn admit(&self, call: Call, query: &HashMap<String, String>, headers: &HeaderMap) -> Admit {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let request = Request {
            call,
            query: query.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            authorization: header("authorization"),
            request_id: header("x-request-id"),
        };
        let mut script = self.script.lock().expect("the fake's lock");
        let refused = if script.unavailable {
            Some(StatusCode::SERVICE_UNAVAILABLE.into_response())
        } else {
            match &script.token {
                Some(token) if request.authorization != Some(format!("Bearer {token}")) => {
                    Some(StatusCode::UNAUTHORIZED.into_response())
                }
                _ => None,
            }
        };
        script.requests.push(request);
        Admit {
            refused,
            delay: script.delay,
        }
    }
}

struct Admit {
    refused: Option<Response>,
    delay: Duration,
}

/// The answer to a call: `pool_max_conns` goes into a `wake_compute` reply.
fn answer(reply: Reply, endpointish: &str, pool_max_conns: Option<u32>) -> Response {
    match reply {
        Reply::Address(address) => axum::Json(WakeCompute {
            address,
            server_name: None,
            pool_max_conns,
            aux: MetricsAuxInfo {
                endpoint_id: endpointish.to_owned(),
                project_id: "p".into(),
                branch_id: "b".into(),
                compute_id: "c".into(),
                cold_start_info: ColdStartInfo::Warm,
            },
        })
        .into_response(),
        Reply::Secret(role_secret) => axum::Json(AccessControl {
            role_secret,
            project_id: Some("p".into()),
            allowed_ips: None,
            allowed_vpc_endpoint_ids: None,
            block_public_connections: None,
            block_vpc_connections: None,
        })
        .into_response(),
        Reply::Refuse { status, error } => (status_code(status), axum::Json(error)).into_response(),
        Reply::Status(status) => status_code(status).into_response(),
        Reply::Raw { status, body } => (status_code(status), body).into_response(),
    }
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).expect("a valid HTTP status in the script")
}

async fn delayed(delay: Duration, response: Response) -> Response {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    response
}

async fn wake(State(fake): State<Arc<Fake>>, Query(query): Params, headers: HeaderMap) -> Response {
    let admit = fake.admit(Call::WakeCompute, &query, &headers);
    if let Some(refused) = admit.refused {
        fake.wakes.fetch_add(1, Ordering::SeqCst);
        return refused;
    }
    let endpoint = query.get("endpointish").cloned().unwrap_or_default();
    let (reply, cap) = {
        let mut script = fake.script.lock().expect("the fake's lock");
        let cap = script.pool_caps.get(&endpoint).copied();
        (script.wake.get_mut(&endpoint).and_then(next), cap)
    };
    // Counted once the reply is chosen: a test that sees the count can change the script
    // without changing this answer.
    fake.wakes.fetch_add(1, Ordering::SeqCst);
    let response = answer(reply.unwrap_or_else(Reply::not_found), &endpoint, cap);
    delayed(admit.delay, response).await
}

async fn access(
    State(fake): State<Arc<Fake>>,
    Query(query): Params,
    headers: HeaderMap,
) -> Response {
    let admit = fake.admit(Call::AccessControl, &query, &headers);
    if let Some(refused) = admit.refused {
        fake.lookups.fetch_add(1, Ordering::SeqCst);
        return refused;
    }
    let endpoint = query.get("endpointish").cloned().unwrap_or_default();
    let role = query.get("role").cloned().unwrap_or_default();
    let reply = {
        let mut script = fake.script.lock().expect("the fake's lock");
        let known = script.wake.contains_key(&endpoint)
            || script.secrets.keys().any(|(e, _)| *e == endpoint);
        match script
            .secrets
            .get_mut(&(endpoint.clone(), role))
            .and_then(next)
        {
            Some(reply) => reply,
            None if known => Reply::secret(""),
            None => Reply::not_found(),
        }
    };
    fake.lookups.fetch_add(1, Ordering::SeqCst);
    delayed(admit.delay, answer(reply, &endpoint, None)).await
}

async fn activity(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    axum::Json(report): axum::Json<ActivityReport>,
) -> Response {
    let admit = fake.admit(Call::Activity, &HashMap::new(), &headers);
    if let Some(refused) = admit.refused {
        return refused;
    }
    // One lock for the reply and the record: a test that changes the reply knows which
    // reports were answered the old way.
    let mut script = fake.script.lock().expect("the fake's lock");
    let pool_limits = pool_limits(&report, &script.pool_caps, &script.activity.inactive);
    let log = &mut script.activity;
    let delivered = !log.failing && !log.losing_replies;
    let applied = report.role_changes_applied;
    let usage = report
        .usage
        .as_ref()
        .filter(|_| !log.failing && !log.no_metering);
    let usage_applied = usage.map(|usage| usage.report_id.clone());
    let usage_stored = usage.is_some_and(|usage| log.store(usage));
    log.reports.push(ReceivedReport {
        at: tokio::time::Instant::now(),
        report,
        delivered,
        usage_stored,
    });
    if !delivered {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let roles = if let Some(scripted) = log.scripted.pop_front() {
        scripted
    } else if log.no_role_changes {
        ActivityReply::default()
    } else {
        // As the wake service: the changes after the applied one; none on a first report.
        ActivityReply {
            role_changes: match applied {
                Some(applied) => log
                    .role_changes
                    .iter()
                    .filter(|c| c.id > applied)
                    .cloned()
                    .collect(),
                None => Vec::new(),
            },
            role_changes_cursor: Some(log.role_changes.last().map_or(0, |c| c.id)),
            ..ActivityReply::default()
        }
    };
    axum::Json(ActivityReply {
        inactive: log.inactive.clone(),
        usage_applied,
        pool_limits,
        ..roles
    })
    .into_response()
}

/// The caps of the endpoints `report` names (busy or cached) that are not `inactive`.
fn pool_limits(
    report: &ActivityReport,
    caps: &HashMap<String, u32>,
    inactive: &[String],
) -> Vec<PoolLimit> {
    let named = report.endpoints.iter().map(|e| &e.endpoint_id);
    let named: std::collections::BTreeSet<&String> = named.chain(&report.cached).collect();
    named
        .into_iter()
        .filter(|id| !inactive.contains(id))
        .filter_map(|id| {
            caps.get(id).map(|&pool_max_conns| PoolLimit {
                endpoint_id: id.clone(),
                pool_max_conns,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn wake_status(cp: &FakeControlPlane, endpoint: &str) -> Result<u16, String> {
        reqwest::Client::new()
            .get(format!("{}/wake_compute", cp.url()))
            .query(&[("endpointish", endpoint)])
            .bearer_auth("t")
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn scripts_play_in_order_and_the_last_reply_repeats() {
        let cp = FakeControlPlane::start().await;
        cp.wake_replies(
            "ep",
            [
                Reply::busy(Duration::from_millis(1)),
                Reply::unavailable(),
                Reply::address("10.0.0.1:5432"),
            ],
        );
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(wake_status(&cp, "ep").await);
        }
        assert_eq!(statuses, [Ok(503), Ok(503), Ok(200), Ok(200)]);
        assert_eq!(wake_status(&cp, "ghost").await, Ok(404));
        assert_eq!(cp.wakes(), 5);
        let seen = cp.received();
        assert_eq!(seen[0].call, Call::WakeCompute);
        assert_eq!(seen[0].query["endpointish"], "ep");
        assert_eq!(seen[0].authorization.as_deref(), Some("Bearer t"));
    }

    #[tokio::test]
    async fn it_goes_down_both_ways_and_comes_back() {
        let cp = FakeControlPlane::start().await;
        cp.route("ep", "10.0.0.1:5432");
        cp.require_token("t");
        assert_eq!(wake_status(&cp, "ep").await, Ok(200));
        cp.go_down(Outage::Unavailable);
        assert_eq!(wake_status(&cp, "ep").await, Ok(503));
        cp.come_back();
        cp.go_down(Outage::Refused);
        assert!(wake_status(&cp, "ep").await.is_err(), "connection refused");
        cp.come_back();
        assert_eq!(wake_status(&cp, "ep").await, Ok(200));
        assert_eq!(cp.wakes(), 3, "nothing arrived while refused");
        cp.require_token("other");
        assert_eq!(wake_status(&cp, "ep").await, Ok(401));
    }
}
