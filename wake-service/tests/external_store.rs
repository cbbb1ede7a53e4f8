//! The state store in an external Postgres (`WAKE_DATABASE_URL`, as on Railway), against a
//! Postgres 15 started for each test by `scripts/postgres.sh` (as the unprivileged `postgres`
//! OS user when the tests run as root), never the embedded one, and the real `wake-service`
//! binary run as separate processes (so they can be killed with SIGKILL and their logs read):
//!
//! - the service's store role is a plain login role that owns the state database (not a
//!   superuser, no CREATEDB or CREATEROLE), or only a schema of a database shared with an app;
//!   the migrations create everything there, and the URL's password shows in no log line, no
//!   API answer and no `--check-config` output;
//! - two replicas on one store and one `DATA_DIR` (the local driver's computes live on one
//!   machine's disk, so replicas of one service share it): exactly one leads (`wake_leader`),
//!   both answer the API, a create through the follower runs its compute, a `kill -9` of the
//!   leader hands leadership over (the time is printed) and the scheduler then runs on the new
//!   leader, and the killed replica comes back as a follower;
//! - a leader whose lock connection is cut (an operator's `pg_terminate_backend`, a store
//!   restart) steps down, so that two replicas never both lead;
//! - a bad, unreachable, silent or unauthorised store fails the start with a clear message and
//!   a non-zero status, without printing the password; the store connection has no TLS yet
//!   (asking for it fails the start; a store that offers it gets plaintext sessions).
//!
//! - two replicas acting on one endpoint at once: concurrent wakes start its compute once
//!   (operations on an endpoint take a lock in the store), and a wake through one replica
//!   after a suspend by the other resumes PgBouncer.
//!
//! Ports 28500-28999, one share per test: a store port, the API ports after it and a compute
//! range (28500-28559, 28600-28659, 28700-28799, 28800-28859, 28860-28899, 28900-28903 with
//! 28960-28999, 28930-28952).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reqwest::Method;
use serde_json::{json, Value};
use tokio_postgres::NoTls;
use wake_api::admin::{Endpoint, EndpointState};

mod common;
use common::store_postgres::{postgres_sh, StorePostgres};
use common::TempRoot;

/// The admin token of every replica.
const TOKEN: &str = "0123456789abcdef0123456789abcdef";
/// The store role's password: every character class a URL must encode, and distinctive
/// enough to search the logs for, raw and encoded.
const STORE_PASSWORD: &str = "Wk-st0re/p@ss:word";
const STORE_PASSWORD_ENCODED: &str = "Wk-st0re%2Fp%40ss%3Aword";
/// The role and password of the endpoints' tenants.
const APP_PASSWORD: &str = "app-password-1";
/// How long a replica may take to answer `/readyz`, or a state to show.
const SETTLE: Duration = Duration::from_secs(60);
/// The leader lock's advisory-lock key (`store::LEADER_LOCK`, 0x7761_6b65_0002), as
/// `pg_locks` shows a bigint key: its high and low 32 bits.
const LEADER_LOCK_CLASSID: i64 = 0x7761;
const LEADER_LOCK_OBJID: i64 = 0x6b65_0002;

// --- the external store ---------------------------------------------------------------------

impl StorePostgres {
    /// A login role that owns database `database` and holds nothing else (what a platform
    /// may give a tenant), with [`STORE_PASSWORD`].
    async fn owned_database(&self, role: &str, database: &str) -> String {
        let admin = self.superuser("postgres").await;
        admin
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
                 PASSWORD '{STORE_PASSWORD}'"
            ))
            .await
            .expect("the store role");
        admin
            .batch_execute(&format!("CREATE DATABASE {database} OWNER {role}"))
            .await
            .expect("the state database");
        self.url(role, database)
    }

    fn url(&self, role: &str, database: &str) -> String {
        format!(
            "postgres://{role}:{STORE_PASSWORD_ENCODED}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Turns TLS on (a self-signed certificate), as Railway's Postgres has it.
    async fn enable_tls(&self) {
        use std::os::unix::fs::MetadataExt;
        let (key, crt) = (self.dir.join("server.key"), self.dir.join("server.crt"));
        let made = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .output()
            .expect("run openssl");
        assert!(made.status.success(), "openssl: {made:?}");
        let owner = std::fs::metadata(&self.dir).expect("data dir").uid();
        for file in [&key, &crt] {
            std::os::unix::fs::chown(file, Some(owner), None).expect("chown");
        }
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let admin = self.superuser("postgres").await;
        for sql in ["ALTER SYSTEM SET ssl = on", "SELECT pg_reload_conf()"] {
            admin.batch_execute(sql).await.expect("ssl = on");
        }
    }

    /// A fast stop and a start on the same port: every connection to it is cut.
    fn restart(&self) {
        let dir = self.dir.to_str().expect("UTF-8 path");
        assert!(postgres_sh(&["stop", dir]).status.success(), "stop");
        let out = postgres_sh(&["start", dir, &self.port.to_string()]);
        assert!(
            out.status.success(),
            "start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// --- a replica: the real binary -------------------------------------------------------------

/// `wake-service serve` as a child process with `WAKE_DATABASE_URL` in its environment and
/// its output in a log file; SIGKILLed when dropped (a failing test leaves nothing running;
/// the computes go with the [`TempRoot`]).
struct Replica {
    name: String,
    child: tokio::process::Child,
    url: String,
    log: PathBuf,
    http: reqwest::Client,
}

/// What every replica of a test shares.
struct Cluster<'a> {
    temp: &'a TempRoot,
    database_url: String,
    compute_ports: &'static str,
}

/// `wake-service` with nothing of this environment's WAKE_* settings.
fn wake_command() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wake-service"));
    for (name, _) in std::env::vars() {
        let operator_set = [
            "DATA_DIR",
            "RUST_LOG",
            "RUST_BACKTRACE",
            "RUST_LIB_BACKTRACE",
        ];
        if name.starts_with("WAKE_") || operator_set.contains(&name.as_str()) {
            command.env_remove(name);
        }
    }
    command.stdin(Stdio::null()).kill_on_drop(true);
    command
}

impl Cluster<'_> {
    /// Starts replica `name` on API port `port`; returns once it is ready.
    async fn replica(&self, name: &str, port: u16) -> Replica {
        let log = self.temp.path.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let listen = format!("127.0.0.1:{port}");
        let data_dir = self.temp.path.to_str().expect("UTF-8 path");
        let child = wake_command()
            .args(["serve", "--listen", &listen, "--data-dir", data_dir])
            .args(["--compute-ports", self.compute_ports, "--compute-fast"])
            .args(["--default-endpoint", "", "--idle-check-interval-ms", "200"])
            .env("WAKE_DATABASE_URL", &self.database_url)
            .env("WAKE_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "info,wake_service=debug")
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start wake-service");
        let mut replica = Replica {
            name: name.to_owned(),
            child,
            url: format!("http://{listen}"),
            log,
            http: reqwest::Client::new(),
        };
        replica.wait_ready().await;
        replica
    }
}

impl Replica {
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let ready = self
                .http
                .get(format!("{}/readyz", self.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("{} exited at start ({status}):\n{}", self.name, self.logs());
            }
            assert!(Instant::now() < deadline, "{} is not ready", self.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id().expect("running")).expect("pid fits an i32"))
    }

    /// SIGKILL, and the exit reaped.
    async fn kill9(mut self) {
        kill(self.pid(), Signal::SIGKILL).expect("SIGKILL");
        let _ = self.child.wait().await;
    }

    /// SIGTERM; the exit status once it exited (bounded).
    async fn terminate(mut self) -> ExitStatus {
        kill(self.pid(), Signal::SIGTERM).expect("SIGTERM");
        tokio::time::timeout(Duration::from_secs(120), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit on SIGTERM", self.name))
            .expect("wait")
    }

    /// `method path [body]` with the admin token: status and JSON body (Null when none).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .timeout(Duration::from_secs(120));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn expect(&self, method: Method, path: &str, body: Option<Value>, want: u16) -> Value {
        let (status, value) = self.call(method.clone(), path, body).await;
        assert_eq!(status, want, "{}: {method} {path}: {value}", self.name);
        value
    }

    /// `GET path` with the admin token: status and body as text.
    async fn raw(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    async fn endpoint(&self, id: &str) -> Endpoint {
        let path = format!("/v1/endpoints/{id}");
        serde_json::from_value(self.expect(Method::GET, &path, None, 200).await)
            .expect("an endpoint")
    }

    async fn endpoint_ids(&self) -> Vec<String> {
        let list = self.expect(Method::GET, "/v1/endpoints", None, 200).await;
        let endpoints: Vec<Endpoint> = serde_json::from_value(list).expect("endpoint list");
        endpoints.into_iter().map(|e| e.id).collect()
    }

    async fn wait_state(&self, id: &str, state: EndpointState) -> Endpoint {
        let deadline = Instant::now() + SETTLE;
        loop {
            let endpoint = self.endpoint(id).await;
            if endpoint.state == state && endpoint.operation.is_none() {
                return endpoint;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never became {state:?} on {}: {endpoint:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metrics(&self) -> Option<String> {
        let response = self
            .http
            .get(format!("{}/metrics", self.url))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        response.text().await.ok()
    }

    /// The value of the sample `name` (with its labels, if any) in `/metrics`.
    async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics().await?;
        sample(&text, name)
    }

    /// Whether `/metrics` says this replica leads (None: no answer).
    async fn leads(&self) -> Option<bool> {
        self.metric("wake_leader").await.map(|v| v == 1.0)
    }
}

fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// An endpoint with role `app` and database `app`, made through `replica`, with compute
/// running; `suspend` is its suspend timeout.
async fn endpoint_with_app(replica: &Replica, id: &str, suspend: i64) -> Endpoint {
    let body = json!({"id": id, "suspend_timeout_seconds": suspend});
    replica
        .expect(Method::POST, "/v1/endpoints", Some(body), 201)
        .await;
    let role = json!({"name": "app", "password": APP_PASSWORD});
    let path = format!("/v1/endpoints/{id}/roles");
    replica.expect(Method::POST, &path, Some(role), 201).await;
    let database = json!({"name": "app", "owner": "app"});
    let path = format!("/v1/endpoints/{id}/databases");
    replica
        .expect(Method::POST, &path, Some(database), 201)
        .await;
    replica.endpoint(id).await
}

/// `SELECT 1` as `app` through `address` (`host:port`, direct or pooler), bounded.
async fn query_through(address: &str) -> Result<(), String> {
    let (host, port) = address.rsplit_once(':').expect("host:port");
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port.parse().expect("port"))
        .user("app")
        .password(APP_PASSWORD)
        .dbname("app")
        .connect_timeout(Duration::from_secs(10));
    let work = async {
        let (client, connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let row = client
            .query_one("SELECT 1::int4", &[])
            .await
            .map_err(|e| e.to_string())?;
        (row.get::<_, i32>(0) == 1)
            .then_some(())
            .ok_or_else(|| "wrong answer".to_owned())
    };
    tokio::time::timeout(Duration::from_secs(20), work)
        .await
        .map_err(|_| format!("no answer through {address} within 20 s"))?
}

/// Neither form of the store's password in `text`.
fn assert_no_password(text: &str, what: &str) {
    for secret in [STORE_PASSWORD, STORE_PASSWORD_ENCODED] {
        assert!(!text.contains(secret), "{what} shows the store's password");
    }
}

/// The migrations this build applies (one file each).
fn migration_count() -> i64 {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let files = std::fs::read_dir(dir).expect("migrations/");
    let sql = files
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "sql"))
        .count();
    i64::try_from(sql).expect("a few migrations")
}

/// Polls both replicas until exactly one of them leads; returns which (0 or 1) and when.
async fn sole_leader(replicas: [&Replica; 2], within: Duration) -> (usize, Instant) {
    let deadline = Instant::now() + within;
    loop {
        let a = replicas[0].leads().await;
        let b = replicas[1].leads().await;
        match (a, b) {
            (Some(true), Some(false)) => return (0, Instant::now()),
            (Some(false), Some(true)) => return (1, Instant::now()),
            (Some(true), Some(true)) => panic!("both replicas lead"),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no single leader within {within:?}: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Replica {
    /// Waits until the log says `what` `times` times (bounded); returns when it did.
    async fn logged(&self, what: &str, times: usize, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        while self.logs().matches(what).count() < times {
            assert!(
                Instant::now() < deadline,
                "{} never logged {what:?} {times} times:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Instant::now()
    }
}

/// Watches both replicas for `period`: exactly one leads all along (never both, and the same
/// one); returns it.
async fn stays_sole_leader(replicas: [&Replica; 2], period: Duration) -> usize {
    let (first, _) = sole_leader(replicas, Duration::from_secs(1)).await;
    let until = Instant::now() + period;
    while Instant::now() < until {
        let a = replicas[0].leads().await;
        let b = replicas[1].leads().await;
        let expected = if first == 0 {
            (Some(true), Some(false))
        } else {
            (Some(false), Some(true))
        };
        assert_eq!((a, b), expected, "leadership moved or doubled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first
}

// --- tests ----------------------------------------------------------------------------------

/// One replica with `WAKE_DATABASE_URL` in its environment, its role owning the state
/// database and nothing more: the schema is created there, endpoints work, and the password
/// is in no log, API answer or `--check-config` output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_owner_role_is_enough_and_the_password_never_shows() {
    let store = StorePostgres::start(28500);
    store.enable_tls().await;
    let database_url = store.owned_database("wake_owner", "wake_state").await;
    let temp = TempRoot::new("extstore-owner");
    let cluster = Cluster {
        temp: &temp,
        database_url: database_url.clone(),
        compute_ports: "28520-28559",
    };
    let replica = cluster.replica("solo", 28501).await;
    assert_eq!(replica.leads().await, Some(true), "a lone replica leads");

    // The schema is in the state database, every table the store role's own.
    let admin = store.superuser("wake_state").await;
    let applied: i64 = admin
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .expect("schema_migrations")
        .get(0);
    assert_eq!(applied, migration_count(), "every migration applied");
    let owners: Vec<String> = admin
        .query(
            "SELECT DISTINCT tableowner::text FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .expect("pg_tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(owners, ["wake_owner"], "tables made by the store role");
    let sessions: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE usename = 'wake_owner' AND application_name = 'wake-service'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0);
    assert!(sessions >= 1, "the service's sessions name it");
    // The store offers TLS, but the service has no TLS connector yet: its sessions are
    // plaintext (the documentation says so; update it when this changes).
    let encrypted: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'wake-service' AND s.ssl",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert_eq!(encrypted, 0, "the store connections are plaintext");

    // The API works on the external store, with a compute behind it.
    let endpoint = endpoint_with_app(&replica, "shop", -1).await;
    assert_eq!(endpoint.state, EndpointState::Active);
    query_through(&endpoint.addresses.direct)
        .await
        .expect("a query on the new compute");
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM endpoints WHERE id = 'shop'", &[])
        .await
        .expect("endpoints")
        .get(0);
    assert_eq!(rows, 1, "the endpoint is in the external store");

    // The password is in no answer of the API...
    let mut answers = String::new();
    for path in [
        "/v1/endpoints",
        "/v1/endpoints/shop",
        "/v1/endpoints/shop/events",
        "/metrics",
        "/readyz",
        "/healthz",
        "/openapi.json",
    ] {
        let (status, text) = replica.raw(path).await;
        assert_eq!(status, 200, "{path}: {text}");
        answers.push_str(&text);
    }
    assert_no_password(&answers, "the API");
    // ...nor in `--check-config`, which shows the URL redacted.
    let checked = wake_command()
        .args(["serve", "--check-config", "--data-dir"])
        .arg(&temp.path)
        .env("WAKE_DATABASE_URL", &database_url)
        .env("WAKE_ADMIN_TOKEN", TOKEN)
        .output()
        .await
        .expect("--check-config");
    assert!(checked.status.success(), "--check-config: {checked:?}");
    let printed = String::from_utf8_lossy(&checked.stdout);
    let compact: String = printed.split_whitespace().collect();
    assert!(
        compact.contains("database_url:Some(\"<redacted>\",)"),
        "{printed}"
    );
    assert_no_password(&printed, "--check-config");

    // SIGTERM: a clean exit (the leader suspends its computes first); nothing in the log.
    let log = replica.log.clone();
    let status = replica.terminate().await;
    assert!(status.success(), "exit status {status}");
    let logs = std::fs::read_to_string(&log).expect("log");
    assert!(
        logs.contains("leading: this replica holds the leader lock"),
        "{logs}"
    );
    assert_no_password(&logs, "the log");
}

/// The store role owns only a schema of a database an app uses too (with an `endpoints`
/// table of its own in `public`): `search_path` points the service at its schema, and the
/// app's table is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_of_a_shared_database_is_enough() {
    let store = StorePostgres::start(28600);
    let admin = store.superuser("postgres").await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE wake_schema LOGIN PASSWORD '{STORE_PASSWORD}'"
        ))
        .await
        .expect("the store role");
    admin
        .batch_execute("CREATE DATABASE shared")
        .await
        .expect("the shared database");
    let shared = store.superuser("shared").await;
    shared
        .batch_execute(
            "CREATE TABLE public.endpoints (app_column text);
             INSERT INTO public.endpoints VALUES ('the app''s row');
             CREATE SCHEMA wake AUTHORIZATION wake_schema;
             ALTER ROLE wake_schema IN DATABASE shared SET search_path = wake;",
        )
        .await
        .expect("the app's table and the service's schema");
    let temp = TempRoot::new("extstore-schema");
    let cluster = Cluster {
        temp: &temp,
        database_url: store.url("wake_schema", "shared"),
        compute_ports: "28620-28659",
    };
    let replica = cluster.replica("schema", 28601).await;
    assert!(replica.endpoint_ids().await.is_empty());
    let status = replica.terminate().await;
    assert!(status.success(), "exit status {status}");

    let tables: i64 = shared
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'wake' AND tableowner = 'wake_schema'",
            &[],
        )
        .await
        .expect("pg_tables")
        .get(0);
    assert!(tables >= 5, "the schema holds the state: {tables} tables");
    let app: Vec<String> = shared
        .query("SELECT app_column FROM public.endpoints", &[])
        .await
        .expect("the app's table")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(app, ["the app's row"], "the app's table is untouched");
}

/// Two replicas on one store and one `DATA_DIR`: one leads, both serve, a create through the
/// follower runs its compute, `kill -9` of the leader hands over, the new leader's scheduler
/// suspends, and the killed replica comes back as a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_and_the_follower_takes_over() {
    let store = StorePostgres::start(28700);
    let database_url = store.owned_database("wake_owner", "wake_state").await;
    let temp = TempRoot::new("extstore-ha");
    let cluster = Cluster {
        temp: &temp,
        database_url,
        compute_ports: "28720-28799",
    };
    let a = cluster.replica("a", 28701).await;
    let b = cluster.replica("b", 28702).await;
    assert_eq!(stays_sole_leader([&a, &b], Duration::from_secs(3)).await, 0);

    // Both serve the API; a create through the follower runs its compute, and the leader
    // sees it at once (one store).
    let endpoint = endpoint_with_app(&b, "via-follower", -1).await;
    assert_eq!(endpoint.state, EndpointState::Active);
    query_through(&endpoint.addresses.direct)
        .await
        .expect("direct");
    query_through(&endpoint.addresses.pooler)
        .await
        .expect("pooler");
    assert_eq!(a.endpoint_ids().await, ["via-follower"]);
    assert_eq!(
        a.endpoint("via-follower").await.state,
        EndpointState::Active
    );
    endpoint_with_app(&a, "via-leader", -1).await;
    assert_eq!(b.endpoint_ids().await, ["via-follower", "via-leader"]);

    // kill -9 the leader: the follower takes over within the retry interval and reconcile.
    let a_log = a.log.clone();
    let killed = Instant::now();
    a.kill9().await;
    let deadline = Duration::from_secs(30);
    while b.leads().await != Some(true) {
        assert!(
            killed.elapsed() < deadline,
            "no takeover within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let takeover = killed.elapsed();
    eprintln!("takeover after kill -9 of the leader: {takeover:?}");
    assert!(
        takeover < Duration::from_secs(10),
        "takeover took {takeover:?}"
    );
    let logs = b.logs();
    assert!(logs.contains("became the leader"), "{logs}");

    // The computes the dead leader and the follower started keep running...
    for id in ["via-follower", "via-leader"] {
        let endpoint = b.wait_state(id, EndpointState::Active).await;
        query_through(&endpoint.addresses.direct).await.expect(id);
    }
    // ...and the scheduler runs on the new leader: a short suspend timeout suspends.
    let patch = json!({"suspend_timeout_seconds": 1});
    b.expect(
        Method::PATCH,
        "/v1/endpoints/via-follower",
        Some(patch),
        200,
    )
    .await;
    b.wait_state("via-follower", EndpointState::Suspended).await;
    let idle = b.metric("wake_suspends_total{reason=\"idle\"}").await;
    assert_eq!(idle, Some(1.0), "suspended by the new leader's scheduler");

    // The killed replica comes back as a follower and serves; the leader stays.
    let a = cluster.replica("a", 28701).await;
    assert_eq!(stays_sole_leader([&a, &b], Duration::from_secs(3)).await, 1);
    let woken = a
        .expect(Method::POST, "/v1/endpoints/via-follower/wake", None, 200)
        .await;
    assert_eq!(woken["state"], "active", "{woken}");
    let endpoint = a.endpoint("via-follower").await;
    query_through(&endpoint.addresses.pooler)
        .await
        .expect("the pooler after a wake through the follower");

    let a_status = a.terminate().await;
    let b_status = b.terminate().await;
    assert!(
        a_status.success() && b_status.success(),
        "{a_status} {b_status}"
    );
    let mut logs = std::fs::read_to_string(&a_log).unwrap_or_default();
    logs.push_str(&std::fs::read_to_string(temp.path.join("b.log")).unwrap_or_default());
    assert_no_password(&logs, "the replicas' logs");
}

/// A replica that resumed an endpoint's PgBouncer once must not trust that memory after
/// another replica suspended (paused) it: a wake through the first must resume PgBouncer,
/// or clients of the `-pooler` address wait until PgBouncer's `query_wait_timeout`.
/// (The local driver's `start` forgets what it last knew of PgBouncer's pause.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_through_one_replica_after_a_suspend_by_the_other_resumes_the_pooler() {
    let store = StorePostgres::start(28860);
    let database_url = store.owned_database("wake_owner", "wake_state").await;
    let temp = TempRoot::new("extstore-pause");
    let cluster = Cluster {
        temp: &temp,
        database_url,
        compute_ports: "28870-28899",
    };
    let a = cluster.replica("a", 28861).await;
    let b = cluster.replica("b", 28862).await;
    let endpoint = endpoint_with_app(&a, "shop", -1).await;
    query_through(&endpoint.addresses.pooler)
        .await
        .expect("the pooler after the create");
    b.expect(Method::POST, "/v1/endpoints/shop/suspend", None, 200)
        .await;
    a.expect(Method::POST, "/v1/endpoints/shop/wake", None, 200)
        .await;
    query_through(&endpoint.addresses.direct)
        .await
        .expect("Postgres after the wake");
    query_through(&endpoint.addresses.pooler)
        .await
        .expect("PgBouncer after a wake through the other replica");
}

/// A leader whose lock connection is cut (by an operator, or a store restart) stops leading:
/// afterwards exactly one replica leads, never both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_lock_connection_steps_down() {
    let store = StorePostgres::start(28800);
    let database_url = store.owned_database("wake_owner", "wake_state").await;
    let temp = TempRoot::new("extstore-lock");
    let cluster = Cluster {
        temp: &temp,
        database_url,
        compute_ports: "28820-28859",
    };
    let a = cluster.replica("a", 28801).await;
    let b = cluster.replica("b", 28802).await;
    assert_eq!(stays_sole_leader([&a, &b], Duration::from_secs(1)).await, 0);

    // An operator ends the session that holds the lock; a keeps running.
    let admin = store.superuser("postgres").await;
    let cut: i64 = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_locks
             WHERE locktype = 'advisory' AND classid::int8 = $1 AND objid::int8 = $2
               AND objsubid = 1 AND granted",
            &[&LEADER_LOCK_CLASSID, &LEADER_LOCK_OBJID],
        )
        .await
        .expect("terminate the lock's session")
        .get(0);
    assert_eq!(cut, 1, "one session held the leader lock");
    let cut_at = Instant::now();
    let lost = "lost the leader lock";
    let noticed = a.logged(lost, 1, Duration::from_secs(5)).await;
    let (leader, led) = sole_leader([&a, &b], Duration::from_secs(15)).await;
    eprintln!(
        "lock session cut: a stepped down after {:?}, replica {} leads after {:?}",
        noticed - cut_at,
        ["a", "b"][leader],
        led - cut_at
    );
    let leader = stays_sole_leader([&a, &b], Duration::from_secs(5)).await;

    // The store restarts: every connection goes; the leader steps down, both replicas
    // recover, and one leads.
    let old = [&a, &b][leader];
    let before = old.logs().matches(lost).count();
    let restart_at = Instant::now();
    store.restart();
    let noticed = old.logged(lost, before + 1, Duration::from_secs(15)).await;
    let (leader, led) = sole_leader([&a, &b], Duration::from_secs(30)).await;
    eprintln!(
        "store restart: the leader stepped down after {:?}, replica {} leads after {:?}",
        noticed - restart_at,
        ["a", "b"][leader],
        led - restart_at
    );
    stays_sole_leader([&a, &b], Duration::from_secs(5)).await;
    for replica in [&a, &b] {
        assert!(replica.endpoint_ids().await.is_empty());
    }
    let a_status = a.terminate().await;
    let b_status = b.terminate().await;
    assert!(
        a_status.success() && b_status.success(),
        "{a_status} {b_status}"
    );
}

/// `serve` with `WAKE_DATABASE_URL` set to `url`: its exit status and output (stdout and
/// stderr) once it exited, which must be within `within`.
async fn serve_once(
    temp: &TempRoot,
    port: u16,
    url: &str,
    within: Duration,
) -> (ExitStatus, String) {
    let started = Instant::now();
    let output = tokio::time::timeout(
        within,
        wake_command()
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(&temp.path)
            .args(["--compute-ports", "28960-28999", "--default-endpoint", ""])
            .env("WAKE_DATABASE_URL", url)
            .env("WAKE_ADMIN_TOKEN", TOKEN)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("still running after {within:?} with a bad store"))
    .expect("run wake-service");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("bad store, exit after {:?}: {text}", started.elapsed());
    (output.status, text)
}

/// A store URL that does not parse, a store that refuses connections, a wrong password, a
/// role without the privileges, a URL asking for TLS (not supported yet) and a store that
/// never answers: each start fails (at once, or after its bound for the silent one) with a
/// message saying what is wrong, a non-zero status, and no password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_unreachable_store_fails_the_start_clearly() {
    let store = StorePostgres::start(28900);
    store.owned_database("wake_owner", "wake_state").await;
    store.enable_tls().await;
    let admin = store.superuser("postgres").await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE wake_nobody LOGIN PASSWORD '{STORE_PASSWORD}';"
        ))
        .await
        .expect("a role without privileges");
    let temp = TempRoot::new("extstore-bad");
    let quick = Duration::from_secs(30);
    let cases = [
        (
            format!("postgres://wake_owner:{STORE_PASSWORD_ENCODED}@127.0.0.1:notaport/wake_state"),
            "is not a valid Postgres connection string",
        ),
        (
            format!("postgres://wake_owner:{STORE_PASSWORD_ENCODED}@127.0.0.1:28901/wake_state"),
            "Connection refused",
        ),
        (
            format!(
                "postgres://wake_owner:wrong-{STORE_PASSWORD_ENCODED}@127.0.0.1:{}/wake_state",
                store.port
            ),
            "password authentication failed for user \"wake_owner\"",
        ),
        (
            store.url("wake_nobody", "wake_state"),
            "permission denied for schema public",
        ),
        // No TLS to the store yet: asking for it is refused, not silently dropped.
        (
            format!("{}?sslmode=require", store.url("wake_owner", "wake_state")),
            "no TLS implementation configured",
        ),
    ];
    for (url, says) in &cases {
        let (status, text) = serve_once(&temp, 28902, url, quick).await;
        assert!(!status.success(), "started with a bad store: {text}");
        assert!(
            text.contains("state store"),
            "names the state store: {text}"
        );
        assert!(text.contains(says), "says {says:?}: {text}");
        assert_no_password(&text, "the error");
    }

    // A store that accepts connections and never answers (a hung server or proxy): the
    // start gives up after its bound (15 s), saying so.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:28903")
        .await
        .expect("bind the silent store");
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            sockets.push(socket);
        }
    });
    let url = format!("postgres://wake_owner:{STORE_PASSWORD_ENCODED}@127.0.0.1:28903/db");
    let (status, text) = serve_once(&temp, 28902, &url, Duration::from_secs(60)).await;
    held.abort();
    assert!(!status.success(), "started with a silent store: {text}");
    assert!(text.contains("opening the state store"), "{text}");
    assert!(text.contains("did not answer within 15 s"), "{text}");
    assert_no_password(&text, "the error");
}

/// Two gateways (or an operator and a gateway) reaching different replicas wake the same
/// suspended endpoint at once: one start, both answered.
/// (Without the store's endpoint lock both replicas started a postmaster on the same data
/// directory, and one of them recorded the endpoint `failed` although its compute ran.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_wakes_through_two_replicas_start_the_compute_once() {
    let store = StorePostgres::start(28950);
    let database_url = store.owned_database("wake_owner", "wake_state").await;
    let temp = TempRoot::new("extstore-wakes");
    let cluster = Cluster {
        temp: &temp,
        database_url,
        compute_ports: "28930-28949",
    };
    let a = cluster.replica("a", 28951).await;
    let b = cluster.replica("b", 28952).await;
    endpoint_with_app(&a, "shop", -1).await;
    for round in 0..3 {
        a.expect(Method::POST, "/v1/endpoints/shop/suspend", None, 200)
            .await;
        let path = "/v1/endpoints/shop/wake";
        let (on_a, on_b) = tokio::join!(
            a.call(Method::POST, path, None),
            b.call(Method::POST, path, None)
        );
        assert_eq!(
            (on_a.0, on_b.0),
            (200, 200),
            "round {round}: {on_a:?} {on_b:?}"
        );
        let endpoint = b.endpoint("shop").await;
        assert_eq!(endpoint.state, EndpointState::Active, "round {round}");
    }
}
