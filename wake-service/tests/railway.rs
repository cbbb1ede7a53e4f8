//! The `railway` compute driver end to end, against the Railway double
//! (`tests/railway_double`: every request validated against Railway's published schema, real
//! Postgres and PgBouncer processes behind the simulated services) and the real wake-service
//! binary: bind, roles and databases over SQL, suspend (`deploymentStop`), wake
//! (`deploymentRedeploy` until `SUCCESS` and a login), resize (`serviceInstanceLimitsUpdate`),
//! the autoscaler on Railway's `metrics`, rate limiting and transient errors, delete (nothing
//! of the user's removed), bad bindings, a crashed redeploy, a late answer past the request
//! timeout; and `kill -9` in the middle of a stop, of a redeploy and of a resize: after the
//! restart the stop and the redeploy complete, sent once, and the unrecorded resize is undone
//! (Railway and the store agree).
//!
//! Ports 29000-29499.

mod common;
mod railway_double;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::TempRoot;
use railway_double::postgres::{Bouncer, Postgres};
use railway_double::server::{Double, Fault, NewService, Timing};

const ADMIN: &str = "0123456789abcdef0123456789abcdef";
/// Railway's token in these tests: it must never show in a log or an answer.
const RAILWAY_TOKEN: &str = "rw-token-5d1f0c7e9b2a4e3c";
const APP_PASSWORD: &str = "app-secret-pass-81c2";
/// How long a state change may take.
const SETTLE: Duration = Duration::from_secs(60);

/// The real wake-service binary, killed (SIGKILL) when dropped.
struct WakeProcess {
    child: tokio::process::Child,
    url: String,
    http: reqwest::Client,
    log: PathBuf,
}

impl WakeProcess {
    async fn start(
        temp: &TempRoot,
        port: u16,
        compute_ports: &str,
        double: &Double,
    ) -> WakeProcess {
        let log = temp.path.join(format!(
            "wake-{}.log",
            std::fs::read_dir(&temp.path)
                .map(|d| d.count())
                .unwrap_or(0)
        ));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let data = temp.path.join("data");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wake-service"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&data)
            .args(["--admin-token", ADMIN, "--compute-ports", compute_ports])
            .args(["--compute-fast", "--default-endpoint", ""])
            .args([
                "--railway-api-url",
                &double.url,
                "--railway-poll-interval-ms",
                "100",
                "--railway-request-timeout-ms",
                "1500",
            ])
            .args([
                "--autoscale-interval-ms",
                "300",
                "--autoscale-cooldown-seconds",
                "1",
            ])
            .env("RAILWAY_API_TOKEN", RAILWAY_TOKEN)
            .env("RUST_LOG", "info,wake_service=debug")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .expect("the wake service starts");
        let wake = WakeProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
            log,
        };
        let deadline = Instant::now() + SETTLE;
        loop {
            let ready = wake.http.get(format!("{}/readyz", wake.url)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return wake;
            }
            assert!(Instant::now() < deadline, "not ready: {}", wake.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn kill9(mut self) -> PathBuf {
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
        self.log.clone()
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(ADMIN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        assert!(
            !text.contains(RAILWAY_TOKEN),
            "the token in an answer: {text}"
        );
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) -> Value {
        let (status, value) = self.call(method.clone(), path, body).await;
        assert_eq!(status, want, "{method} {path}: {value}");
        value
    }

    async fn endpoint(&self, id: &str) -> Value {
        self.expect(
            reqwest::Method::GET,
            &format!("/v1/endpoints/{id}"),
            None,
            200,
        )
        .await
    }

    /// A forced suspend (open sessions cut), once it has settled.
    async fn suspend_forced(&self, id: &str) -> Value {
        let path = format!("/v1/endpoints/{id}/suspend?force=true");
        self.expect(reqwest::Method::POST, &path, None, 200).await;
        self.wait_state(id, "suspended").await
    }

    async fn wait_state(&self, id: &str, state: &str) -> Value {
        let deadline = Instant::now() + SETTLE;
        loop {
            let endpoint = self.endpoint(id).await;
            if endpoint["state"] == state && endpoint["operation"].is_null() {
                return endpoint;
            }
            assert!(Instant::now() < deadline, "{id} never {state}: {endpoint}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Secrets that must never reach a log.
fn assert_no_secrets(log: &str) {
    for secret in [
        RAILWAY_TOKEN,
        APP_PASSWORD,
        "postgres:postgres@",
        "rotated-9f1c",
    ] {
        assert!(
            !log.contains(secret),
            "{secret:?} in the wake service's log"
        );
    }
}

/// One simulated Railway project: a Postgres service (a real cluster) and a PgBouncer
/// service in front of it.
struct Railway {
    double: Double,
    postgres: Arc<Postgres>,
    _bouncer: Bouncer,
}

impl Railway {
    async fn start(temp: &TempRoot, pg_port: u16, bouncer_port: u16, timing: Timing) -> Railway {
        let postgres = Arc::new(Postgres::init(temp.path.join("railway-pg"), pg_port).await);
        let double = Double::start(RAILWAY_TOKEN, timing).await;
        let url = postgres.url();
        let variables = json!({
            "DATABASE_URL": url, "DATABASE_PUBLIC_URL": url,
            "PGUSER": "postgres", "PGPASSWORD": "postgres", "PGPORT": pg_port.to_string(),
        });
        double
            .add_service(NewService {
                project: "prj-1".into(),
                environment: "env-1".into(),
                service: "svc-pg".into(),
                variables: variables.as_object().cloned().unwrap_or_default(),
                backend: Some(postgres.clone()),
            })
            .await;
        let bouncer = Bouncer::start(temp.path.join("railway-bouncer"), bouncer_port, pg_port);
        let pooled = format!("postgresql://postgres:postgres@127.0.0.1:{bouncer_port}/postgres");
        double
            .add_service(NewService {
                project: "prj-1".into(),
                environment: "env-1".into(),
                service: "svc-bouncer".into(),
                variables: json!({"DATABASE_URL": pooled, "DATABASE_PUBLIC_URL": pooled})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                backend: None,
            })
            .await;
        Railway {
            double,
            postgres,
            _bouncer: bouncer,
        }
    }

    fn binding(service: &str) -> Value {
        json!({"project_id": "prj-1", "environment_id": "env-1", "service_id": service,
               "pooler_service_id": "svc-bouncer"})
    }

    /// The double refused nothing the driver sent.
    fn assert_contract_kept(&self) {
        assert_eq!(self.double.violations(), Vec::<String>::new());
    }
}

/// Logs in at `address` (`host:port`) and runs `sql`, returning the first column of each row.
async fn query(
    address: &str,
    user: &str,
    password: &str,
    db: &str,
    sql: &str,
) -> Result<Vec<String>, String> {
    let (host, port) = address.rsplit_once(':').expect("host:port");
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port.parse().expect("port"))
        .user(user)
        .password(password)
        .dbname(db)
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let messages = client.simple_query(sql).await.map_err(|e| e.to_string())?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect())
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_bound(wake: &WakeProcess, id: &str) -> Value {
    let body = json!({"id": id, "driver": "railway", "railway": Railway::binding("svc-pg")});
    wake.expect(reqwest::Method::POST, "/v1/endpoints", Some(body), 201)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_railway_endpoint_suspends_wakes_resizes_and_unbinds() {
    common::logs();
    let temp = TempRoot::new("rwe2e");
    let railway = Railway::start(&temp, 29000, 29001, Timing::default()).await;
    let double = &railway.double;
    let wake = WakeProcess::start(&temp, 29002, "29100-29199", double).await;
    use reqwest::Method;

    // Bad bindings: clear errors, nothing stored.
    let unknown =
        json!({"id": "bad", "driver": "railway", "railway": Railway::binding("svc-nope")});
    let (status, error) = wake
        .call(Method::POST, "/v1/endpoints", Some(unknown))
        .await;
    assert_eq!(status, 422, "{error}");
    assert!(error.to_string().contains("Service not found"), "{error}");
    let (status, error) = wake
        .call(
            Method::POST,
            "/v1/endpoints",
            Some(json!({"id": "bad", "driver": "railway"})),
        )
        .await;
    assert_eq!(status, 422, "{error}");
    assert!(error.to_string().contains("railway"), "{error}");
    wake.expect(Method::GET, "/v1/endpoints/bad", None, 404)
        .await;

    // Bind: addresses from the services' variables, the size's limits set.
    let created = create_bound(&wake, "rw").await;
    assert_eq!(created["driver"], "railway");
    assert_eq!(created["state"], "active");
    assert_eq!(created["addresses"]["direct"], "127.0.0.1:29000");
    assert_eq!(created["addresses"]["pooler"], "127.0.0.1:29001");
    assert_eq!(created["railway"]["service_id"], "svc-pg");
    assert_eq!(double.limits("svc-pg"), Some((0.25, 1.0)));

    // Roles and databases over SQL, then the role logs in directly and through PgBouncer.
    let role = json!({"name": "app", "password": APP_PASSWORD});
    wake.expect(Method::POST, "/v1/endpoints/rw/roles", Some(role), 201)
        .await;
    let database = json!({"name": "appdb", "owner": "app"});
    wake.expect(
        Method::POST,
        "/v1/endpoints/rw/databases",
        Some(database),
        201,
    )
    .await;
    let direct = "127.0.0.1:29000";
    let setup = "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('kept'); SELECT count(*) FROM notes";
    assert_eq!(
        query(direct, "app", APP_PASSWORD, "appdb", setup).await,
        Ok(vec!["1".to_owned()])
    );
    let pooled = query(
        "127.0.0.1:29001",
        "app",
        APP_PASSWORD,
        "appdb",
        "SELECT body FROM notes",
    )
    .await;
    assert_eq!(pooled, Ok(vec!["kept".to_owned()]));

    // Suspend: refused while a session was just active (PgBouncer's server connection),
    // then forced: one deploymentStop, and Postgres is really gone.
    let (status, busy) = wake
        .call(Method::POST, "/v1/endpoints/rw/suspend", None)
        .await;
    assert_eq!(status, 409, "{busy}");
    assert_eq!(double.count("DeploymentStop"), 0);
    wake.suspend_forced("rw").await;
    assert_eq!(double.count("DeploymentStop"), 1);
    assert!(query(direct, "app", APP_PASSWORD, "appdb", "SELECT 1")
        .await
        .is_err());

    // Wake as a gateway does: one redeploy, SUCCESS, the data is there.
    let started = Instant::now();
    let woken = wake
        .expect(
            Method::GET,
            "/proxy/api/v1/wake_compute?endpointish=rw",
            None,
            200,
        )
        .await;
    let resume = started.elapsed();
    assert_eq!(woken["address"], direct);
    // The gateways' pool cap: the size's (88 at 0.25 CU), capped for Railway's Postgres.
    assert_eq!(woken["pool_max_conns"], 80);
    assert_eq!(double.count("DeploymentRedeploy"), 1);
    let deployments = double.deployments("svc-pg");
    assert_eq!(
        deployments.last().map(|d| d.status.as_str()),
        Some("SUCCESS")
    );
    assert_eq!(
        query(
            direct,
            "app",
            APP_PASSWORD,
            "appdb",
            "SELECT body FROM notes"
        )
        .await,
        Ok(vec!["kept".to_owned()])
    );
    eprintln!("railway double: resume through the wake service took {resume:?}");

    // Resize: the limits follow the size.
    wake.expect(
        Method::POST,
        "/v1/endpoints/rw/resize",
        Some(json!({"cu": 1})),
        200,
    )
    .await;
    assert_eq!(double.limits("svc-pg"), Some((1.0, 4.0)));
    let endpoint = wake.endpoint("rw").await;
    assert_eq!(
        endpoint["size"]["limits"], "railway service limits",
        "{endpoint}"
    );

    // A 429 with Retry-After, a 502 and a late answer on the way: the suspend still completes.
    double.fault(
        "Deployments",
        Fault::RateLimited {
            retry_after_seconds: 1,
        },
    );
    double.fault("Deployments", Fault::BadGateway);
    // An answer later than the request timeout (1.5 s here): given up on, and sent again.
    double.fault("Deployments", Fault::SlowAnswer(Duration::from_secs(4)));
    let started = Instant::now();
    wake.suspend_forced("rw").await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    let statuses: Vec<u16> = double
        .calls()
        .iter()
        .filter(|c| c.operation == "Deployments")
        .map(|c| c.status)
        .collect();
    assert!(
        statuses.contains(&429) && statuses.contains(&502),
        "{statuses:?}"
    );
    let log = std::fs::read_to_string(&wake.log).unwrap_or_default();
    assert!(
        log.contains("timed out"),
        "the slow answer timed out and was retried"
    );
    assert_eq!(double.count("DeploymentStop"), 2);

    // The autoscaler reads Railway's metrics and resizes: load beyond the size grows it.
    wake.expect(Method::POST, "/v1/endpoints/rw/wake", None, 200)
        .await;
    wake.wait_state("rw", "active").await;
    let range = json!({"min_cu": 0.25, "max_cu": 2});
    wake.expect(Method::PATCH, "/v1/endpoints/rw", Some(range), 200)
        .await;
    double.set_usage("svc-pg", 2.0, 0.5);
    wait_for("the autoscaler grows the service", || {
        double.limits("svc-pg").is_some_and(|(cpu, _)| cpu > 1.0)
    })
    .await;
    assert!(double.count("Metrics") >= 2);

    // A redeploy that crashes: the wake fails with Railway's status in the answer and in the
    // endpoint's events; the next wake redeploys again.
    wake.suspend_forced("rw").await;
    double.fault("DeploymentRedeploy", Fault::Crash);
    let (status, error) = wake.call(Method::POST, "/v1/endpoints/rw/wake", None).await;
    assert!(status >= 500, "{status}: {error}");
    assert!(error.to_string().contains("CRASHED"), "{error}");
    let events = wake
        .expect(Method::GET, "/v1/endpoints/rw/events", None, 200)
        .await;
    assert!(events.to_string().contains("CRASHED"), "{events}");
    wake.expect(Method::POST, "/v1/endpoints/rw/wake", None, 200)
        .await;
    wake.wait_state("rw", "active").await;

    // The user rotates the service's superuser password in Railway: the driver's next login
    // is refused, it reads the variables again, and the operation goes through.
    let rotated = "rotated-9f1c";
    let alter = format!("ALTER ROLE postgres PASSWORD '{rotated}'");
    query(direct, "postgres", "postgres", "postgres", &alter)
        .await
        .expect("rotate");
    let url = format!("postgresql://postgres:{rotated}@{direct}/postgres");
    let rotated_vars =
        json!({"DATABASE_URL": url, "DATABASE_PUBLIC_URL": url, "PGPASSWORD": rotated});
    double.set_variables("svc-pg", rotated_vars.as_object().expect("object"));
    let role = json!({"name": "app2", "password": APP_PASSWORD});
    wake.expect(Method::POST, "/v1/endpoints/rw/roles", Some(role), 201)
        .await;
    let log = std::fs::read_to_string(&wake.log).unwrap_or_default();
    assert!(
        log.contains("the Railway login was refused"),
        "the cached login was refused and read again"
    );

    // App Sleeping slept the service under an active endpoint: a wake connects (inbound
    // traffic wakes a slept Railway service) instead of redeploying.
    let redeploys = double.count("DeploymentRedeploy");
    double.sleep("svc-pg").await;
    let woken = wake
        .expect(
            Method::GET,
            "/proxy/api/v1/wake_compute?endpointish=rw",
            None,
            200,
        )
        .await;
    assert_eq!(woken["address"], direct);
    assert_eq!(double.count("DeploymentRedeploy"), redeploys, "no redeploy");
    // (Postgres answers a moment before the double marks the deployment awake.)
    wait_for("the slept deployment is SUCCESS again", || {
        double
            .deployments("svc-pg")
            .last()
            .map(|d| d.status.clone())
            == Some("SUCCESS".to_owned())
    })
    .await;

    // One endpoint per service; the CLI binds like the API does.
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_wake-service"))
        .args(["endpoints", "create", "rw2", "--railway-service", "svc-pg"])
        .args([
            "--railway-project",
            "prj-1",
            "--railway-environment",
            "env-1",
        ])
        .args(["--url", &wake.url, "--token", ADMIN])
        .output()
        .await
        .expect("the CLI runs");
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(!cli.status.success(), "a second binding is refused");
    assert!(
        stderr.contains("already bound to endpoint 'rw'"),
        "{stderr}"
    );

    // Delete: unbound, and nothing of the user's removed on Railway.
    wake.expect(Method::DELETE, "/v1/endpoints/rw", None, 204)
        .await;
    wake.expect(Method::GET, "/v1/endpoints/rw", None, 404)
        .await;
    assert!(double.service_exists("svc-pg"));
    let sent: std::collections::BTreeSet<String> = double
        .calls()
        .iter()
        .map(|c| c.root_field.clone())
        .collect();
    let allowed = [
        "deployments",
        "variables",
        "serviceInstanceLimitsUpdate",
        "metrics",
        "deploymentStop",
        "deploymentRedeploy",
    ];
    assert!(
        sent.iter().all(|f| allowed.contains(&f.as_str())),
        "{sent:?}"
    );
    railway.assert_contract_kept();
    let log = wake.kill9().await;
    assert_no_secrets(&std::fs::read_to_string(log).unwrap_or_default());
    railway.postgres.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_railway_operation_completes_it_once() {
    common::logs();
    let temp = TempRoot::new("rwkill");
    let timing = Timing {
        stopping: Duration::from_secs(2),
        ..Timing::default()
    };
    let railway = Railway::start(&temp, 29010, 29011, timing).await;
    let double = &railway.double;
    let wake = WakeProcess::start(&temp, 29012, "29200-29299", double).await;
    use reqwest::Method;
    create_bound(&wake, "rk").await;

    // A stop: killed while the deployment is stopping.
    let url = format!("{}/v1/endpoints/rk/suspend", wake.url);
    let http = wake.http.clone();
    let suspend = tokio::spawn(async move { http.post(url).bearer_auth(ADMIN).send().await });
    wait_for("deploymentStop sent", || {
        double.count("DeploymentStop") == 1
    })
    .await;
    let log1 = wake.kill9().await;
    suspend.abort();
    let wake = WakeProcess::start(&temp, 29012, "29200-29299", double).await;
    wake.wait_state("rk", "suspended").await;
    assert_eq!(
        double.count("DeploymentStop"),
        1,
        "the stop was not sent again"
    );
    assert!(query(
        "127.0.0.1:29010",
        "postgres",
        "postgres",
        "postgres",
        "SELECT 1"
    )
    .await
    .is_err());

    // A redeploy: killed after Railway applied it, before its answer arrived.
    double.fault(
        "DeploymentRedeploy",
        Fault::SlowAnswer(Duration::from_secs(30)),
    );
    let url = format!("{}/v1/endpoints/rk/wake", wake.url);
    let http = wake.http.clone();
    let resume = tokio::spawn(async move { http.post(url).bearer_auth(ADMIN).send().await });
    wait_for("the redeploy applied", || {
        double.deployments("svc-pg").len() == 2
    })
    .await;
    let log2 = wake.kill9().await;
    resume.abort();
    let wake = WakeProcess::start(&temp, 29012, "29200-29299", double).await;
    wake.wait_state("rk", "active").await;
    let redeploys = double
        .calls()
        .iter()
        .filter(|c| c.operation == "DeploymentRedeploy")
        .count();
    assert_eq!(redeploys, 1, "the redeploy was not sent again");
    assert_eq!(double.deployments("svc-pg").len(), 2, "one new deployment");
    assert_eq!(
        query(
            "127.0.0.1:29010",
            "postgres",
            "postgres",
            "postgres",
            "SELECT 1"
        )
        .await,
        Ok(vec!["1".to_owned()])
    );

    // A resize: killed after Railway applied the limits, before the answer: the size was never
    // recorded, and the restart applies the recorded one again, so Railway and the store agree.
    double.fault(
        "ServiceInstanceLimitsUpdate",
        Fault::SlowAnswer(Duration::from_secs(30)),
    );
    let url = format!("{}/v1/endpoints/rk/resize", wake.url);
    let http = wake.http.clone();
    let resize = tokio::spawn(async move {
        http.post(url)
            .bearer_auth(ADMIN)
            .json(&json!({"cu": 1}))
            .send()
            .await
    });
    wait_for("the new limits applied", || {
        double.limits("svc-pg") == Some((1.0, 4.0))
    })
    .await;
    let log4 = wake.kill9().await;
    resize.abort();
    let wake = WakeProcess::start(&temp, 29012, "29200-29299", double).await;
    let endpoint = wake.wait_state("rk", "active").await;
    assert_eq!(endpoint["current_cu"], 0.25, "{endpoint}");
    wait_for("the recorded size applied again", || {
        double.limits("svc-pg") == Some((0.25, 1.0))
    })
    .await;

    wake.expect(Method::DELETE, "/v1/endpoints/rk", None, 204)
        .await;
    railway.assert_contract_kept();
    let log3 = wake.kill9().await;
    for log in [log1, log2, log3, log4] {
        assert_no_secrets(&std::fs::read_to_string(log).unwrap_or_default());
    }
    railway.postgres.remove().await;
}
