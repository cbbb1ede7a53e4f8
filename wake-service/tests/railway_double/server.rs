//! The double's HTTP server: `POST /graphql/v2` with a bearer token, every request validated
//! against Railway's published schema ([`Contract`]) before it is executed, and services whose
//! deployments go through Railway's statuses with real timings while a real Postgres (a
//! [`Backend`]) starts and stops behind them. Faults can be queued per operation: `429` with
//! `Retry-After`, a transient `502`, an answer held back after the change is applied (a slow
//! or lost reply). Everything the driver sent is logged for the tests to count.
//!
//! Arguments are read from the request's variables (the driver always sends variables); the
//! document itself is what the schema validates.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::contract::Contract;

/// What runs behind a simulated service.
pub trait Backend: Send + Sync + 'static {
    fn start(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>;
    fn stop(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>;
    /// The TCP port it serves on (where App Sleeping's wake-on-traffic is simulated).
    fn port(&self) -> Option<u16> {
        None
    }
}

/// How long each status of a new deployment lasts.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub queued: Duration,
    pub initializing: Duration,
    /// After the backend has started, before `SUCCESS`.
    pub deploying: Duration,
    /// After `deploymentStop`, before the backend stops.
    pub stopping: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            queued: Duration::from_millis(200),
            initializing: Duration::from_millis(200),
            deploying: Duration::from_millis(200),
            stopping: Duration::from_millis(100),
        }
    }
}

/// A fault for the next request of one operation.
#[derive(Clone, Debug)]
pub enum Fault {
    /// `429` with `Retry-After: <seconds>`; nothing applied.
    RateLimited { retry_after_seconds: u64 },
    /// `502`; nothing applied.
    BadGateway,
    /// The change is applied, the answer sent only after this long.
    SlowAnswer(Duration),
    /// The next deployment crashes instead of succeeding.
    Crash,
}

/// A request the double received, once it passed the schema.
#[derive(Clone, Debug)]
pub struct Call {
    pub operation: String,
    pub root_field: String,
    pub variables: Map<String, Value>,
    pub status: u16,
}

#[derive(Clone, Debug)]
pub struct Deployment {
    pub id: String,
    pub status: String,
    pub stopped: bool,
}

struct Service {
    project: String,
    environment: String,
    variables: Map<String, Value>,
    deployments: Vec<Deployment>,
    limits: Option<(f64, f64)>,
    usage: (f64, f64),
    backend: Option<Arc<dyn Backend>>,
}

#[derive(Default)]
struct World {
    services: HashMap<String, Service>,
    calls: Vec<Call>,
    violations: Vec<String>,
    faults: HashMap<String, VecDeque<Fault>>,
    next_id: u64,
}

struct Inner {
    contract: Contract,
    token: String,
    timing: Timing,
    world: Mutex<World>,
}

/// A running double (its server stops when this is dropped).
pub struct Double {
    /// `http://127.0.0.1:<port>/graphql/v2`.
    pub url: String,
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Double {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A service to simulate.
pub struct NewService {
    pub project: String,
    pub environment: String,
    pub service: String,
    pub variables: Map<String, Value>,
    pub backend: Option<Arc<dyn Backend>>,
}

impl Double {
    pub async fn start(token: &str, timing: Timing) -> Double {
        let inner = Arc::new(Inner {
            contract: Contract::railway(),
            token: token.to_owned(),
            timing,
            world: Mutex::new(World::default()),
        });
        let app = Router::new()
            .route("/graphql/v2", post(graphql))
            .route("/_double/calls", axum::routing::get(calls))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/graphql/v2", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the double serves");
        });
        Double { url, inner, server }
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.inner.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a service with one deployment, `SUCCESS`, its backend started.
    pub async fn add_service(&self, new: NewService) {
        if let Some(backend) = &new.backend {
            backend.start().await.expect("the service's backend starts");
        }
        let mut world = self.world();
        world.next_id += 1;
        let id = format!("dep-{}", world.next_id);
        world.services.insert(
            new.service,
            Service {
                project: new.project,
                environment: new.environment,
                variables: new.variables,
                deployments: vec![Deployment {
                    id,
                    status: "SUCCESS".into(),
                    stopped: false,
                }],
                limits: None,
                usage: (0.01, 0.05),
                backend: new.backend,
            },
        );
    }

    pub fn fault(&self, operation: &str, fault: Fault) {
        self.world()
            .faults
            .entry(operation.to_owned())
            .or_default()
            .push_back(fault);
    }

    /// Sets variables of `service` (a rotated password, a moved address).
    pub fn set_variables(&self, service: &str, variables: &Map<String, Value>) {
        if let Some(s) = self.world().services.get_mut(service) {
            s.variables.extend(variables.clone());
        }
    }

    /// The CPU (vCPUs) and memory (GB) the next `metrics` answers report for `service`.
    pub fn set_usage(&self, service: &str, cpu: f64, memory_gb: f64) {
        if let Some(s) = self.world().services.get_mut(service) {
            s.usage = (cpu, memory_gb);
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.world().calls.clone()
    }

    /// How many requests of `operation` were answered 200.
    pub fn count(&self, operation: &str) -> usize {
        self.world()
            .calls
            .iter()
            .filter(|c| c.operation == operation && c.status == 200)
            .count()
    }

    /// Requests the schema refused (a test fails on any).
    pub fn violations(&self) -> Vec<String> {
        self.world().violations.clone()
    }

    pub fn deployments(&self, service: &str) -> Vec<Deployment> {
        self.world()
            .services
            .get(service)
            .map(|s| s.deployments.clone())
            .unwrap_or_default()
    }

    pub fn limits(&self, service: &str) -> Option<(f64, f64)> {
        self.world().services.get(service).and_then(|s| s.limits)
    }

    /// App Sleeping: the service's deployment goes `SLEEPING` and its backend stops; the first
    /// inbound connection on its port (which is turned away, as Railway's proxy may answer the
    /// first request of a slept service with an error) wakes it: the backend starts again and
    /// the deployment is `SUCCESS`, with no new deployment.
    pub async fn sleep(&self, service: &str) {
        let backend = {
            let mut world = self.world();
            let s = world.services.get_mut(service).expect("a service to sleep");
            if let Some(d) = s.deployments.last_mut() {
                d.status = "SLEEPING".into();
            }
            s.backend.clone().expect("a service with a backend")
        };
        backend.stop().await.expect("the backend stops");
        let port = backend.port().expect("a backend with a port");
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the slept service's port");
        let inner = self.inner.clone();
        let service = service.to_owned();
        tokio::spawn(async move {
            if let Ok((first, _)) = listener.accept().await {
                drop(first);
            }
            drop(listener);
            if let Err(e) = backend.start().await {
                eprintln!("railway double: waking the slept service failed: {e}");
                return;
            }
            let mut world = inner.world();
            if let Some(d) = world
                .services
                .get_mut(&service)
                .and_then(|s| s.deployments.last_mut())
            {
                d.status = "SUCCESS".into();
            }
        });
    }

    pub fn service_exists(&self, service: &str) -> bool {
        self.world().services.contains_key(service)
    }
}

/// `GET /_double/calls`: every request that passed the schema, and the refused ones (for
/// tests in other languages).
async fn calls(State(inner): State<Arc<Inner>>) -> Json<Value> {
    let world = inner.world();
    let calls: Vec<Value> = world
        .calls
        .iter()
        .map(|c| json!({"operation": c.operation, "root_field": c.root_field, "status": c.status}))
        .collect();
    Json(json!({"calls": calls, "violations": world.violations}))
}

fn graphql_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"data": null, "errors": [{"message": message}]})),
    )
        .into_response()
}

async fn graphql(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: String) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(inner.token.as_str()) {
        return graphql_error(StatusCode::UNAUTHORIZED, "Not Authorized");
    }
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        inner.violation(format!("not JSON: {body}"));
        return graphql_error(StatusCode::BAD_REQUEST, "bad JSON");
    };
    let query = request["query"].as_str().unwrap_or_default();
    let operation = request["operationName"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let variables = request["variables"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let checked = match inner.contract.check(query, Some(&operation), &variables) {
        Ok(checked) => checked,
        Err(e) => {
            inner.violation(format!("{operation}: {e}"));
            return graphql_error(StatusCode::BAD_REQUEST, &e);
        }
    };
    let root_field = checked.root_fields.first().cloned().unwrap_or_default();
    let fault = inner.next_fault(&operation);
    let (status, response) = match fault {
        Some(Fault::RateLimited {
            retry_after_seconds,
        }) => {
            let mut response = graphql_error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
            response
                .headers_mut()
                .insert("retry-after", retry_after_seconds.into());
            (429, response)
        }
        Some(Fault::BadGateway) => (
            502,
            (StatusCode::BAD_GATEWAY, "upstream hiccup").into_response(),
        ),
        other => {
            let crash = matches!(other, Some(Fault::Crash));
            let answer = match inner.execute(&root_field, &variables, crash) {
                Ok(data) => Json(json!({"data": data})).into_response(),
                Err(message) => graphql_error(StatusCode::OK, &message),
            };
            let delay = match other {
                Some(Fault::SlowAnswer(delay)) => delay,
                _ => Duration::ZERO,
            };
            inner.log(Call {
                operation,
                root_field,
                variables,
                status: 200,
            });
            // Applied and logged; the answer comes late (or never, to a killed client).
            tokio::time::sleep(delay).await;
            return answer;
        }
    };
    inner.log(Call {
        operation,
        root_field,
        variables,
        status,
    });
    response
}

impl Inner {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn violation(&self, message: String) {
        eprintln!("railway double: request refused by the schema: {message}");
        self.world().violations.push(message);
    }

    fn log(&self, call: Call) {
        self.world().calls.push(call);
    }

    fn next_fault(&self, operation: &str) -> Option<Fault> {
        self.world()
            .faults
            .get_mut(operation)
            .and_then(VecDeque::pop_front)
    }

    /// Runs one root field; `Err` is a GraphQL error message.
    fn execute(
        self: &Arc<Self>,
        field: &str,
        vars: &Map<String, Value>,
        crash: bool,
    ) -> Result<Value, String> {
        let text = |v: &Value| {
            v.as_str()
                .map(str::to_owned)
                .ok_or("missing argument".to_owned())
        };
        match field {
            "deployments" => {
                let service = text(&vars["input"]["serviceId"])?;
                let world = self.world();
                let s = world.services.get(&service).ok_or("Service not found")?;
                let edges: Vec<Value> = s
                    .deployments
                    .iter()
                    .rev()
                    .take(1)
                    .map(|d| json!({"node": {"id": d.id, "status": d.status, "deploymentStopped": d.stopped}}))
                    .collect();
                Ok(json!({"deployments": {"edges": edges}}))
            }
            "variables" => {
                let service = text(&vars["service"])?;
                let world = self.world();
                let s = world.services.get(&service).ok_or("Service not found")?;
                if s.project != text(&vars["project"])?
                    || s.environment != text(&vars["environment"])?
                {
                    return Err("Project or environment not found".into());
                }
                Ok(json!({"variables": s.variables}))
            }
            "serviceInstanceLimitsUpdate" => {
                let input = &vars["input"];
                let service = text(&input["serviceId"])?;
                let mut world = self.world();
                let s = world
                    .services
                    .get_mut(&service)
                    .ok_or("Service not found")?;
                s.limits = Some((
                    input["vCPUs"].as_f64().unwrap_or_default(),
                    input["memoryGB"].as_f64().unwrap_or_default(),
                ));
                Ok(json!({"serviceInstanceLimitsUpdate": true}))
            }
            "metrics" => {
                let service = text(&vars["service"])?;
                let world = self.world();
                let s = world.services.get(&service).ok_or("Service not found")?;
                let ts = time::OffsetDateTime::now_utc().unix_timestamp();
                Ok(json!({"metrics": [
                    {"measurement": "CPU_USAGE", "values": [{"ts": ts - 30, "value": 0.0}, {"ts": ts, "value": s.usage.0}]},
                    {"measurement": "MEMORY_USAGE_GB", "values": [{"ts": ts, "value": s.usage.1}]},
                ]}))
            }
            "deploymentStop" => self.stop(&text(&vars["id"])?),
            "deploymentRedeploy" => self.redeploy(&text(&vars["id"])?, crash),
            other => Err(format!("the double does not implement {other}")),
        }
    }

    fn find(world: &mut World, deployment: &str) -> Option<(String, usize)> {
        world.services.iter().find_map(|(name, s)| {
            s.deployments
                .iter()
                .position(|d| d.id == deployment)
                .map(|i| (name.clone(), i))
        })
    }

    fn stop(self: &Arc<Self>, id: &str) -> Result<Value, String> {
        let backend = {
            let mut world = self.world();
            let (service, index) = Self::find(&mut world, id).ok_or("Deployment not found")?;
            let s = world
                .services
                .get_mut(&service)
                .ok_or("Service not found")?;
            let d = &mut s.deployments[index];
            if d.stopped {
                return Err("Deployment is already stopped".into());
            }
            d.stopped = true;
            s.backend.clone()
        };
        let delay = self.timing.stopping;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(backend) = backend {
                if let Err(e) = backend.stop().await {
                    eprintln!("railway double: backend stop failed: {e}");
                }
            }
        });
        Ok(json!({"deploymentStop": true}))
    }

    fn redeploy(self: &Arc<Self>, id: &str, crash: bool) -> Result<Value, String> {
        let (service, new_id) = {
            let mut world = self.world();
            let (service, _) = Self::find(&mut world, id).ok_or("Deployment not found")?;
            world.next_id += 1;
            let new_id = format!("dep-{}", world.next_id);
            let s = world
                .services
                .get_mut(&service)
                .ok_or("Service not found")?;
            s.deployments.push(Deployment {
                id: new_id.clone(),
                status: "QUEUED".into(),
                stopped: false,
            });
            (service, new_id)
        };
        let inner = self.clone();
        let deployment = new_id.clone();
        tokio::spawn(async move { inner.roll_out(service, deployment, crash).await });
        Ok(json!({"deploymentRedeploy": {"id": new_id, "status": "QUEUED"}}))
    }

    fn set_status(&self, service: &str, id: &str, status: &str) -> Option<Arc<dyn Backend>> {
        let mut world = self.world();
        let s = world.services.get_mut(service)?;
        for d in &mut s.deployments {
            if d.id == id {
                d.status = status.to_owned();
            } else if status == "SUCCESS" && d.status != "REMOVED" {
                // A new deployment replaces the ones before it.
                d.status = "REMOVED".to_owned();
            }
        }
        s.backend.clone()
    }

    /// QUEUED → INITIALIZING → DEPLOYING (the backend starts) → SUCCESS, or CRASHED.
    async fn roll_out(self: Arc<Self>, service: String, id: String, crash: bool) {
        let timing = self.timing;
        tokio::time::sleep(timing.queued).await;
        self.set_status(&service, &id, "INITIALIZING");
        tokio::time::sleep(timing.initializing).await;
        let backend = self.set_status(&service, &id, "DEPLOYING");
        if crash {
            tokio::time::sleep(timing.deploying).await;
            self.set_status(&service, &id, "CRASHED");
            return;
        }
        if let Some(backend) = backend {
            if let Err(e) = backend.start().await {
                eprintln!("railway double: backend start failed: {e}");
                self.set_status(&service, &id, "CRASHED");
                return;
            }
        }
        tokio::time::sleep(timing.deploying).await;
        self.set_status(&service, &id, "SUCCESS");
    }
}
