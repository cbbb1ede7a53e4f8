//! Branches (`/v1/endpoints/{id}/branches`) against a wake service in this process and its
//! real Postgres 15 computes: a copy with the data or the schema only, independent of its
//! source, the source's idle sessions ended for the copy and a busy one refused in bounded
//! time with nothing created, bad input, the cap, labels, reset (ending the branch's
//! sessions with 57P01), expiry (never waking a suspended endpoint, kept across a restart),
//! and a create that wakes a suspended endpoint. The driver's view (HTTP, WebSocket, pooled)
//! is in sdk-tests/test/branches.test.js.
//!
//! Computes on ports 29500-29597 (a range per test); the third test's state store (a Postgres
//! of its own, so that the test can write what a crash leaves) on 29599.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

mod common;
use common::service::Wake;
use common::store_postgres::StorePostgres;
use common::TempRoot;

const PORTS: &str = "29500-29539";
const PASSWORD: &str = "branch-test-password";
const FLAGS: &[&str] = &[
    "--public-domain",
    "db.example.test",
    "--public-port",
    "5433",
    "--public-sslmode",
    "require",
    "--max-branches-per-endpoint",
    "4",
];

impl Wake {
    /// Endpoint `id` (never suspended by itself) with role `app` owning database `app`.
    async fn endpoint_with_app(&self, id: &str) {
        let body = json!({"id": id, "suspend_timeout_seconds": -1});
        self.expect(Method::POST, "/v1/endpoints", Some(body), 201)
            .await;
        let role = json!({"name": "app", "password": PASSWORD});
        self.expect(
            Method::POST,
            &format!("/v1/endpoints/{id}/roles"),
            Some(role),
            201,
        )
        .await;
        let db = json!({"name": "app", "owner": "app"});
        self.expect(
            Method::POST,
            &format!("/v1/endpoints/{id}/databases"),
            Some(db),
            201,
        )
        .await;
    }

    async fn port_of(&self, id: &str) -> u16 {
        let ep = self
            .expect(Method::GET, &format!("/v1/endpoints/{id}"), None, 200)
            .await;
        let direct = ep["addresses"]["direct"].as_str().expect("direct address");
        direct
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("host:port")
    }

    async fn branch(&self, id: &str, body: Value) -> (u16, Value) {
        self.call(
            Method::POST,
            &format!("/v1/endpoints/{id}/branches"),
            Some(body),
        )
        .await
    }

    async fn branch_names(&self, id: &str, query: &str) -> Vec<String> {
        let list = self
            .expect(
                Method::GET,
                &format!("/v1/endpoints/{id}/branches{query}"),
                None,
                200,
            )
            .await;
        list["branches"]
            .as_array()
            .expect("branches")
            .iter()
            .map(|b| b["name"].as_str().expect("name").to_owned())
            .collect()
    }

    async fn state(&self, id: &str) -> String {
        let ep = self
            .expect(Method::GET, &format!("/v1/endpoints/{id}"), None, 200)
            .await;
        ep["state"].as_str().expect("state").to_owned()
    }
}

async fn connect(port: u16, database: &str) -> tokio_postgres::Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("app")
        .password(PASSWORD)
        .dbname(database);
    let (client, connection) = config.connect(NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// The rows of `notes` (id, body) in `database`.
async fn notes(port: u16, database: &str) -> Vec<(i64, String)> {
    connect(port, database)
        .await
        .query("SELECT id, body FROM notes ORDER BY id", &[])
        .await
        .expect("notes")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Whether Postgres has a database of that name.
async fn exists(port: u16, database: &str) -> bool {
    connect(port, "app")
        .await
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .expect("pg_database")
        .is_some()
}

/// The error of a statement on a session that should have been ended by an operator.
async fn ended(client: &tokio_postgres::Client) -> bool {
    match client.simple_query("SELECT 1").await {
        Ok(_) => false,
        Err(e) => e.code() == Some(&SqlState::ADMIN_SHUTDOWN) || client.is_closed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_copy_reset_expire_and_refuse_bad_input() {
    common::logs();
    let wake = Wake::run_with(TempRoot::new("branches"), PORTS, FLAGS).await;
    wake.endpoint_with_app("br").await;
    let port = wake.port_of("br").await;
    let source = connect(port, "app").await;
    source
        .batch_execute(
            "CREATE TABLE notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text NOT NULL);
             INSERT INTO notes (body) VALUES ('one'), ('two');",
        )
        .await
        .expect("schema");
    drop(source);
    // An idle session on the source, as a pool keeps one: it is ended for the copy.
    let idle = connect(port, "app").await;
    idle.simple_query("SELECT 1").await.expect("idle session");

    // A copy with the data, labelled, with the connection strings the flags describe.
    let started = Instant::now();
    let (status, b) = wake
        .branch(
            "br",
            json!({"from": "app", "name": "t1", "labels": {"suite": "a"}}),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    eprintln!("branch t1 created in {:?}", started.elapsed());
    assert_eq!(b["source"], "app");
    assert_eq!(b["owner"], "app");
    assert_eq!(b["data"], true);
    assert_eq!(b["labels"], json!({"suite": "a"}));
    assert_eq!(b["expires_at"], Value::Null);
    assert_eq!(
        b["connection_uris"],
        json!({"direct": "postgresql://app@br.db.example.test:5433/t1?sslmode=require",
               "pooled": "postgresql://app@br-pooler.db.example.test:5433/t1?sslmode=require"})
    );
    assert!(
        ended(&idle).await,
        "the source's idle session was ended for the copy"
    );
    let rows = vec![(1, "one".to_owned()), (2, "two".to_owned())];
    assert_eq!(notes(port, "t1").await, rows);

    // Independent of its source, both ways.
    connect(port, "t1")
        .await
        .batch_execute("INSERT INTO notes (body) VALUES ('branch only')")
        .await
        .expect("write to the branch");
    assert_eq!(notes(port, "app").await, rows);
    connect(port, "app")
        .await
        .batch_execute("INSERT INTO notes (body) VALUES ('three')")
        .await
        .expect("write to the source");
    assert_eq!(notes(port, "t1").await.len(), 3);
    assert_eq!(notes(port, "t1").await[2].1, "branch only");

    // The schema only: the table, empty, its identity restarted.
    let (status, s) = wake
        .branch(
            "br",
            json!({"from": "app", "name": "t2", "data": false, "labels": {"suite": "a"}}),
        )
        .await;
    assert_eq!(status, 201, "{s}");
    assert_eq!(s["data"], false);
    assert_eq!(notes(port, "t2").await, Vec::<(i64, String)>::new());
    let id: i64 = connect(port, "t2")
        .await
        .query_one("INSERT INTO notes (body) VALUES ('x') RETURNING id", &[])
        .await
        .expect("insert")
        .get(0);
    assert_eq!(id, 1, "identity restarted");

    // A tenant's TRUNCATE trigger (even one enabled ALWAYS) must not run when a schema-only
    // copy empties its table: it would run as the compute's superuser.
    connect(port, "app")
        .await
        .batch_execute(
            "CREATE TABLE trap (x int);
             CREATE FUNCTION escalate() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN EXECUTE 'ALTER ROLE app SUPERUSER'; RETURN NULL; END $$;
             CREATE TRIGGER escalate AFTER TRUNCATE ON trap EXECUTE FUNCTION escalate();
             ALTER TABLE trap ENABLE ALWAYS TRIGGER escalate;
             CREATE TRIGGER off AFTER TRUNCATE ON trap EXECUTE FUNCTION escalate();
             ALTER TABLE trap DISABLE TRIGGER off;",
        )
        .await
        .expect("the trap");
    let (status, trap) = wake
        .branch(
            "br",
            json!({"from": "app", "name": "trapped", "data": false}),
        )
        .await;
    assert_eq!(status, 201, "{trap}");
    let copy = connect(port, "trapped").await;
    let superuser: bool = copy
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = 'app'", &[])
        .await
        .expect("rolsuper")
        .get(0);
    assert!(!superuser, "the tenant's trigger ran as superuser");
    let states: Vec<String> = copy
        .query("SELECT tgname || ':' || tgenabled::text FROM pg_trigger WHERE tgrelid = 'trap'::regclass ORDER BY 1", &[])
        .await
        .expect("triggers")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(states, ["escalate:A", "off:D"], "trigger states kept");
    drop(copy);
    wake.expect(
        Method::DELETE,
        "/v1/endpoints/br/branches/trapped",
        None,
        204,
    )
    .await;
    connect(port, "app")
        .await
        .batch_execute("DROP TABLE trap; DROP FUNCTION escalate();")
        .await
        .expect("drop the trap");

    // Only the admin token reaches the branch API.
    let anonymous = wake
        .http
        .post(format!("{}/v1/endpoints/br/branches", wake.url))
        .json(&json!({"from": "app"}))
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status().as_u16(), 401);

    // A session in a transaction on the source is waited for (Postgres's 5 s), then the branch
    // is refused with nothing created.
    let busy = connect(port, "app").await;
    busy.batch_execute("BEGIN; SELECT count(*) FROM notes;")
        .await
        .expect("BEGIN");
    let started = Instant::now();
    let (status, err) = wake
        .branch("br", json!({"from": "app", "name": "t3"}))
        .await;
    assert_eq!(status, 409, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "bounded: {:?}",
        started.elapsed()
    );
    let message = err["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("1 session(s) in a transaction"),
        "{message}"
    );
    assert!(!exists(port, "t3").await, "no database half-created");
    assert!(!wake.branch_names("br", "").await.contains(&"t3".to_owned()));
    // A reset refused for the same reason leaves the branch as it was.
    let before = notes(port, "t1").await;
    wake.expect(
        Method::POST,
        "/v1/endpoints/br/branches/t1/reset",
        None,
        409,
    )
    .await;
    assert_eq!(
        notes(port, "t1").await,
        before,
        "a refused reset keeps the branch"
    );
    busy.batch_execute("COMMIT").await.expect("COMMIT");
    assert!(!ended(&busy).await, "a busy session is never ended");

    // Bad input: each a clear error, nothing created.
    for (body, want) in [
        (json!({"from": "app", "name": "t1"}), 409),
        (json!({"from": "app", "name": "app"}), 409),
        (json!({"from": "nope"}), 404),
        (json!({"from": "postgres"}), 404),
        (json!({"from": "app", "ttl_seconds": 0}), 422),
        (json!({"from": "app", "ttl_seconds": 2_592_001}), 422),
        (json!({"from": "app", "name": "pg_x"}), 422),
        (json!({"from": "app", "labels": {"a=b": "c"}}), 422),
        (json!({"from": "app", "surprise": 1}), 400),
        (json!({"name": "x"}), 400),
    ] {
        let (status, answer) = wake.branch("br", body.clone()).await;
        assert_eq!(status, want, "{body}: {answer}");
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }
    let (status, _) = wake.branch("nope", json!({"from": "app"})).await;
    assert_eq!(status, 404);
    assert_eq!(wake.branch_names("br", "").await, ["t1", "t2"]);

    // The cap (4): two more fit, the fifth is refused.
    let (status, t4) = wake.branch("br", json!({"from": "t1", "name": "t4"})).await;
    assert_eq!(status, 201, "a branch of a branch: {t4}");
    let (status, _) = wake
        .branch("br", json!({"from": "app", "name": "t5"}))
        .await;
    assert_eq!(status, 201);
    let (status, full) = wake
        .branch("br", json!({"from": "app", "name": "t6"}))
        .await;
    assert_eq!(status, 409, "{full}");
    assert!(!exists(port, "t6").await);

    // Reset: the source's current state, the same name; the branch's sessions end.
    let on_branch = connect(port, "t1").await;
    on_branch
        .simple_query("SELECT 1")
        .await
        .expect("session on t1");
    let reset = wake
        .expect(
            Method::POST,
            "/v1/endpoints/br/branches/t1/reset",
            None,
            200,
        )
        .await;
    assert_eq!(reset["name"], "t1");
    assert_eq!(reset["labels"], json!({"suite": "a"}));
    assert!(
        ended(&on_branch).await,
        "a session on a reset branch ends (57P01)"
    );
    let now = notes(port, "t1").await;
    assert_eq!(
        now.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(),
        ["one", "two", "three"]
    );
    wake.expect(
        Method::POST,
        "/v1/endpoints/br/branches/nope/reset",
        None,
        404,
    )
    .await;

    // Labels: list and delete by label; a DELETE without one is refused.
    assert_eq!(
        wake.branch_names("br", "?label=suite=a").await,
        ["t1", "t2"]
    );
    assert_eq!(
        wake.branch_names("br", "?label=suite=b").await,
        Vec::<String>::new()
    );
    wake.expect(
        Method::GET,
        "/v1/endpoints/br/branches?label=oops",
        None,
        400,
    )
    .await;
    wake.expect(Method::DELETE, "/v1/endpoints/br/branches", None, 400)
        .await;
    let deleted = wake
        .expect(
            Method::DELETE,
            "/v1/endpoints/br/branches?label=suite=a",
            None,
            200,
        )
        .await;
    assert_eq!(deleted["deleted"], json!(["t1", "t2"]));
    assert!(!exists(port, "t1").await && !exists(port, "t2").await);
    wake.expect(Method::DELETE, "/v1/endpoints/br/branches/t4", None, 204)
        .await;
    wake.expect(Method::DELETE, "/v1/endpoints/br/branches/t4", None, 404)
        .await;
    wake.expect(Method::GET, "/v1/endpoints/br/branches/t4", None, 404)
        .await;
    assert_eq!(wake.branch_names("br", "").await, ["t5"]);

    // Expiry: gone within the loop's second after its TTL, database and all.
    let (status, e) = wake
        .branch(
            "br",
            json!({"from": "app", "name": "short", "ttl_seconds": 2}),
        )
        .await;
    assert_eq!(status, 201, "{e}");
    assert!(e["expires_at"].is_string());
    let deadline = Instant::now() + Duration::from_secs(10);
    while exists(port, "short").await {
        assert!(
            Instant::now() < deadline,
            "the expired branch is still there"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(wake.branch_names("br", "").await, ["t5"]);
    let metrics = wake
        .http
        .get(format!("{}/metrics", wake.url))
        .send()
        .await
        .expect("metrics");
    let metrics = metrics.text().await.expect("text");
    assert!(
        metrics.contains("wake_branch_operations_total{kind=\"expire\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wake_branch_copy_seconds_count"),
        "{metrics}"
    );
    wake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_never_wakes_an_endpoint_and_survives_a_restart() {
    common::logs();
    let wake = Wake::run_with(TempRoot::new("branch-ttl"), "29540-29569", FLAGS).await;
    wake.endpoint_with_app("ttl").await;

    // A create wakes a suspended endpoint.
    wake.expect(
        Method::POST,
        "/v1/endpoints/ttl/suspend?force=true",
        None,
        200,
    )
    .await;
    assert_eq!(wake.state("ttl").await, "suspended");
    let (status, b) = wake
        .branch(
            "ttl",
            json!({"from": "app", "name": "soon", "ttl_seconds": 3}),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    assert_eq!(wake.state("ttl").await, "active");

    // Suspended past the expiry, and restarted: the endpoint is not woken to delete it.
    wake.expect(
        Method::POST,
        "/v1/endpoints/ttl/suspend?force=true",
        None,
        200,
    )
    .await;
    let temp = wake.halt().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let wake = Wake::run_with(temp, "29540-29569", FLAGS).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        wake.state("ttl").await,
        "suspended",
        "expiry never wakes an endpoint"
    );
    assert_eq!(wake.branch_names("ttl", "").await, ["soon"]);

    // Its next wake (any) deletes it within a round or two.
    wake.expect(Method::POST, "/v1/endpoints/ttl/wake", None, 200)
        .await;
    let port = wake.port_of("ttl").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wake.branch_names("ttl", "").await.is_empty() || exists(port, "soon").await {
        assert!(
            Instant::now() < deadline,
            "the expired branch outlived the wake"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wake.stop().await;
}

/// The store's URL: the superuser on database `main`.
fn store_url(store: &StorePostgres) -> String {
    format!("postgres://postgres:postgres@127.0.0.1:{}/main", store.port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_crash_leaves_is_settled_and_expiry_goes_by_the_store() {
    common::logs();
    let store = StorePostgres::start(29599);
    let url = store_url(&store);
    let mut flags = FLAGS.to_vec();
    flags.extend_from_slice(&["--database-url", &url]);
    let wake = Wake::run_with(TempRoot::new("branch-crash"), "29570-29597", &flags).await;
    wake.endpoint_with_app("crash").await;
    let port = wake.port_of("crash").await;
    connect(port, "app")
        .await
        .batch_execute(
            "CREATE TABLE notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text NOT NULL);
             INSERT INTO notes (body) VALUES ('kept');",
        )
        .await
        .expect("schema");
    for name in ["made", "deleting", "resetting", "old"] {
        let (status, b) = wake
            .branch("crash", json!({"from": "app", "name": name}))
            .await;
        assert_eq!(status, 201, "{b}");
    }

    // What a kill -9 in the middle of each operation leaves in the store (the database of
    // `made` exists, as after the CREATE and before the store said ready), and an expiry
    // that passed while nothing ran.
    let state = store.superuser("main").await;
    state
        .batch_execute(
            "UPDATE branches SET state = 'creating' WHERE name = 'made';
             UPDATE branches SET state = 'deleting' WHERE name = 'deleting';
             UPDATE branches SET state = 'resetting' WHERE name = 'resetting';
             UPDATE branches SET expires_at = now() - interval '1 second' WHERE name = 'old';",
        )
        .await
        .expect("the store as a crash leaves it");

    // Within a few rounds: the unfinished create and delete and the expired branch are gone,
    // database and all; the unfinished reset is settled with the branch as it was.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let names = wake.branch_names("crash", "").await;
        let gone = !exists(port, "made").await
            && !exists(port, "deleting").await
            && !exists(port, "old").await;
        if names == ["resetting"] && gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {names:?}, databases gone: {gone}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left: Vec<String> = state
        .query(
            "SELECT name || ':' || state FROM branches ORDER BY name",
            &[],
        )
        .await
        .expect("branches")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["resetting:ready"]);
    assert_eq!(notes(port, "resetting").await, vec![(1, "kept".to_owned())]);
    wake.stop().await;
}
