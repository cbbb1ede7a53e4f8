//! The operator CLI end to end: the real `wake-service` binary against a real wake service
//! (started in-process by `wake_service::run` on a port-0 listener, with its embedded state
//! store and local computes: Postgres 15 and PgBouncer, as in tests/local_driver.rs). For every
//! subcommand: its exit status, what it prints, and the state the API (and Postgres) shows
//! afterwards; and for every command class, an unknown endpoint fails with a non-zero exit, a
//! message naming it on stderr and nothing on stdout. `endpoints list`/`get` are also covered
//! by the Node suite (sdk-tests/test/control-plane.test.js).
//!
//! Each test has its own data directory under /tmp (removed at the end with its processes and
//! OS users, even when an assertion fails) and its own share of 25000-25999 for compute ports.

use std::process::Output;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use wake_api::admin::{ComputeEvent, Endpoint, EndpointState};

mod common;
use common::service::{Wake, TOKEN};

/// How long a state the API reports may take to appear.
const SETTLE: Duration = Duration::from_secs(60);

impl Wake {
    /// `wake-service <args> --url … --token …`, with no WAKE_* variable inherited.
    async fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, None).await
    }

    async fn cli_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut all = args.to_vec();
        all.extend(["--url", &self.url, "--token", TOKEN]);
        run_cli(&all, stdin).await
    }

    /// `GET path` on the API: Some(body) for 200, None for 404.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Option<T> {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET");
        match response.status().as_u16() {
            200 => Some(response.json().await.expect("JSON")),
            404 => None,
            other => panic!("GET {path}: {other}"),
        }
    }

    async fn endpoint(&self, id: &str) -> Option<Endpoint> {
        self.get(&format!("/v1/endpoints/{id}")).await
    }

    /// Polls the endpoint until `done` holds (no fixed sleeps), failing after [`SETTLE`].
    async fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Endpoint) -> bool) -> Endpoint {
        let deadline = Instant::now() + SETTLE;
        loop {
            let endpoint = self.endpoint(id).await.expect("the endpoint exists");
            if done(&endpoint) {
                return endpoint;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: {what} never happened: {endpoint:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `wake-service <args>`, with no WAKE_* variable inherited; `stdin` written, then closed.
async fn run_cli(args: &[&str], stdin: Option<&str>) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wake-service"));
    command
        .args(args)
        .env_remove("WAKE_URL")
        .env_remove("WAKE_ADMIN_TOKEN")
        .env_remove("WAKE_ADMIN_TOKEN_FILE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("run wake-service");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.expect("write stdin");
    }
    drop(input);
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the CLI finishes")
        .expect("the CLI's output")
}

/// Exit 0; stdout is JSON (returned), or nothing for `None`.
fn succeeded(output: &Output, what: &str) -> Option<serde_json::Value> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{what}: {:?}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    (!stdout.trim().is_empty())
        .then(|| serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{what}: {e}: {stdout}")))
}

/// A non-zero exit, nothing on stdout, and a message on stderr containing every one of
/// `mentions`.
fn failed(output: &Output, what: &str, mentions: &[&str]) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "{what} must fail; stdout: {stdout}"
    );
    assert_eq!(stdout.trim(), "", "{what}: nothing on stdout");
    for mention in mentions {
        assert!(stderr.contains(mention), "{what}: {mention:?} in {stderr}");
    }
}

/// Logs in to the endpoint's Postgres (the direct address) with a password.
async fn login(
    endpoint: &Endpoint,
    user: &str,
    password: &str,
    database: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (host, port) = endpoint
        .addresses
        .direct
        .rsplit_once(':')
        .expect("host:port");
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port.parse().expect("port"))
        .user(user)
        .password(password)
        .dbname(database)
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A session that logged in moments ago is activity: no gateway's report can cover it yet (a
/// WebSocket client between its login and its first query looks just like it), so a plain
/// suspend steps back and the session goes on. Idle past that window (no gateway reports
/// here: the assumed 1 s interval and 1 s of slack), a plain suspend closes it. Leaves the
/// endpoint active.
async fn fresh_sessions_are_activity(wake: &Wake, endpoint: &Endpoint) {
    let id = endpoint.id.as_str();
    let fresh = login(endpoint, "app", "app-password-1", "postgres")
        .await
        .expect("login");
    let out = wake.cli(&["endpoints", "suspend", id]).await;
    failed(
        &out,
        "endpoints suspend (a session just logged in)",
        &["409", "1 session(s) active"],
    );
    let row = fresh
        .query_one("SELECT 1", &[])
        .await
        .expect("the session goes on");
    assert_eq!(row.get::<_, i32>(0), 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let out = wake.cli(&["endpoints", "suspend", id]).await;
    succeeded(&out, "endpoints suspend (the session idle for 2.5 s)");
    assert!(
        fresh.simple_query("SELECT 1").await.is_err(),
        "the idle session was closed"
    );
    let out = wake.cli(&["endpoints", "wake", id]).await;
    succeeded(&out, "endpoints wake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_commands() {
    let wake = Wake::start("cli-ep", "25000-25499").await;
    let id = "ep-cli";

    // create: 201's body on stdout, the endpoint active with the settings given.
    let out = wake
        .cli(&[
            "endpoints",
            "create",
            id,
            "--suspend-timeout-seconds",
            "-1",
            "--min-cu",
            "0.25",
            "--max-cu",
            "1",
        ])
        .await;
    let printed = succeeded(&out, "endpoints create").expect("JSON");
    assert_eq!(printed["id"], id);
    let endpoint = wake.endpoint(id).await.expect("created");
    assert_eq!(endpoint.state, EndpointState::Active);
    assert_eq!(
        (endpoint.suspend_timeout_seconds, endpoint.max_cu),
        (-1, 1.0)
    );
    // A second create of the same id is refused.
    let out = wake.cli(&["endpoints", "create", id]).await;
    failed(&out, "endpoints create (twice)", &[id, "already exists"]);
    // An invalid id is refused before anything is made.
    let out = wake.cli(&["endpoints", "create", "Not/Valid"]).await;
    failed(&out, "endpoints create (invalid id)", &["422"]);

    // list and get show it.
    let list = succeeded(&wake.cli(&["endpoints", "list"]).await, "endpoints list");
    let list = list.expect("JSON");
    assert!(
        list.as_array()
            .expect("array")
            .iter()
            .any(|e| e["id"] == id),
        "{list}"
    );
    let got = succeeded(&wake.cli(&["endpoints", "get", id]).await, "endpoints get");
    assert_eq!(got.expect("JSON")["state"], "active");

    // update: only the settings given change.
    let out = wake
        .cli(&[
            "endpoints",
            "update",
            id,
            "--suspend-timeout-seconds",
            "600",
        ])
        .await;
    let printed = succeeded(&out, "endpoints update").expect("JSON");
    assert_eq!(printed["suspend_timeout_seconds"], 600);
    let endpoint = wake.endpoint(id).await.expect("exists");
    assert_eq!(
        (endpoint.suspend_timeout_seconds, endpoint.max_cu),
        (600, 1.0)
    );
    let out = wake
        .cli(&["endpoints", "update", id, "--max-cu", "100"])
        .await;
    failed(&out, "endpoints update (out of range)", &["422"]);

    // suspend, then wake, each seen by the API and in Postgres.
    let out = wake.cli(&["endpoints", "suspend", id]).await;
    let printed = succeeded(&out, "endpoints suspend").expect("JSON");
    assert_eq!(printed["state"], "suspended");
    let endpoint = wake
        .wait_for(id, "suspended", |e| e.state == EndpointState::Suspended)
        .await;
    assert!(endpoint.suspended_at.is_some());
    let out = wake.cli(&["endpoints", "wake", id]).await;
    let printed = succeeded(&out, "endpoints wake").expect("JSON");
    assert_eq!(printed["state"], "active");
    assert_eq!(
        wake.endpoint(id).await.expect("exists").state,
        EndpointState::Active
    );

    // A busy client refuses a plain suspend; --force cuts it.
    let endpoint = wake.endpoint(id).await.expect("exists");
    let out = wake
        .cli(&["roles", "create", id, "app", "--password", "app-password-1"])
        .await;
    succeeded(&out, "roles create");
    fresh_sessions_are_activity(&wake, &endpoint).await;
    let busy = login(&endpoint, "app", "app-password-1", "postgres")
        .await
        .expect("login");
    let sleeper = tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(60)").await });
    wait_until_sleeping(&wake, &endpoint).await;
    let out = wake.cli(&["endpoints", "suspend", id]).await;
    failed(&out, "endpoints suspend (busy)", &["409"]);
    assert_eq!(
        wake.endpoint(id).await.expect("exists").state,
        EndpointState::Active
    );
    let out = wake.cli(&["endpoints", "suspend", id, "--force"]).await;
    let printed = succeeded(&out, "endpoints suspend --force").expect("JSON");
    assert_eq!(printed["state"], "suspended");
    let cut = tokio::time::timeout(Duration::from_secs(30), sleeper)
        .await
        .expect("the busy session ends")
        .expect("task");
    assert!(cut.is_err(), "the forced suspend cut the busy session");

    // events: the starts and stops, oldest first, at most --limit.
    let out = wake.cli(&["endpoints", "events", id]).await;
    let events: Vec<ComputeEvent> =
        serde_json::from_value(succeeded(&out, "endpoints events").expect("JSON")).expect("events");
    assert!(
        events.len() >= 4,
        "create, suspend, wake, suspend: {events:?}"
    );
    let out = wake.cli(&["endpoints", "events", id, "--limit", "2"]).await;
    let last: Vec<ComputeEvent> =
        serde_json::from_value(succeeded(&out, "endpoints events --limit").expect("JSON"))
            .expect("events");
    assert_eq!(last, events[events.len() - 2..].to_vec());

    // delete: nothing printed, the endpoint and its directory gone.
    let out = wake.cli(&["endpoints", "delete", id]).await;
    assert_eq!(succeeded(&out, "endpoints delete"), None);
    assert!(wake.endpoint(id).await.is_none(), "deleted");
    assert!(!wake.temp.path.join("computes").join(id).exists());

    // Every endpoint command on an unknown endpoint.
    for args in [
        &["endpoints", "get", "nope"][..],
        &["endpoints", "update", "nope", "--max-cu", "2"],
        &["endpoints", "delete", "nope"],
        &["endpoints", "wake", "nope"],
        &["endpoints", "suspend", "nope"],
        &["endpoints", "suspend", "nope", "--force"],
        &["endpoints", "events", "nope"],
    ] {
        let out = wake.cli(args).await;
        failed(&out, &args.join(" "), &["'nope'", "404"]);
    }

    // A wrong token and an unreachable service are told apart.
    let wrong = "x".repeat(32);
    let out = run_cli(
        &["endpoints", "list", "--url", &wake.url, "--token", &wrong],
        None,
    )
    .await;
    failed(&out, "a wrong token", &["401"]);
    let out = run_cli(
        &[
            "endpoints",
            "list",
            "--url",
            "http://127.0.0.1:1",
            "--token",
            TOKEN,
        ],
        None,
    )
    .await;
    failed(&out, "no service", &["cannot reach the wake service"]);

    wake.stop().await;
}

/// Waits until the endpoint's Postgres shows a non-idle session of `app`.
async fn wait_until_sleeping(wake: &Wake, endpoint: &Endpoint) {
    let admin = login(endpoint, "app", "app-password-1", "postgres")
        .await
        .expect("login");
    let deadline = Instant::now() + SETTLE;
    loop {
        let rows = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'",
                &[],
            )
            .await
            .expect("pg_stat_activity");
        if rows.get::<_, i64>(0) > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the sleeper never ran ({})",
            wake.url
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_and_database_commands() {
    let wake = Wake::start("cli-roles", "25500-25999").await;
    let id = "ep-roles";
    succeeded(&wake.cli(&["endpoints", "create", id]).await, "create");
    let endpoint = wake.endpoint(id).await.expect("created");

    // roles create, with --password and with --password-stdin: both log in.
    let out = wake
        .cli(&["roles", "create", id, "alice", "--password", "alice-pw-1"])
        .await;
    let printed = succeeded(&out, "roles create").expect("JSON");
    assert_eq!(printed["name"], "alice");
    let out = wake
        .cli_with_stdin(
            &["roles", "create", id, "bob", "--password-stdin"],
            Some("bob-pw-1\n"),
        )
        .await;
    succeeded(&out, "roles create --password-stdin");
    let roles = wake.endpoint(id).await.expect("exists").roles;
    assert!(roles.contains(&"alice".to_owned()) && roles.contains(&"bob".to_owned()));
    login(&endpoint, "alice", "alice-pw-1", "postgres")
        .await
        .expect("alice logs in");
    login(&endpoint, "bob", "bob-pw-1", "postgres")
        .await
        .expect("bob logs in (no newline in the password)");
    let out = wake
        .cli(&["roles", "create", id, "alice", "--password", "other"])
        .await;
    failed(&out, "roles create (twice)", &["alice", "409"]);
    let out = wake.cli(&["roles", "create", id, "carol"]).await;
    failed(&out, "roles create without a password", &["--password"]);

    // roles update: the old password stops working, the new one works.
    let out = wake
        .cli(&["roles", "update", id, "alice", "--password", "alice-pw-2"])
        .await;
    let printed = succeeded(&out, "roles update").expect("JSON");
    assert_eq!(printed["name"], "alice");
    assert!(login(&endpoint, "alice", "alice-pw-1", "postgres")
        .await
        .is_err());
    login(&endpoint, "alice", "alice-pw-2", "postgres")
        .await
        .expect("the new password");

    // databases create: owned by the role, which logs in to it.
    let out = wake
        .cli(&["databases", "create", id, "shop", "--owner", "alice"])
        .await;
    let printed = succeeded(&out, "databases create").expect("JSON");
    assert_eq!(
        (&printed["name"], &printed["owner"]),
        (&"shop".into(), &"alice".into())
    );
    let databases = wake.endpoint(id).await.expect("exists").databases;
    assert!(
        databases
            .iter()
            .any(|d| d.name == "shop" && d.owner == "alice"),
        "{databases:?}"
    );
    let shop = login(&endpoint, "alice", "alice-pw-2", "shop")
        .await
        .expect("alice logs in to shop");
    let owner = shop
        .query_one(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop'",
            &[],
        )
        .await
        .expect("owner");
    assert_eq!(owner.get::<_, String>(0), "alice");
    let out = wake
        .cli(&["databases", "create", id, "other", "--owner", "nobody"])
        .await;
    failed(
        &out,
        "databases create (unknown owner)",
        &["'nobody'", "422"],
    );

    // roles delete: refused while the role owns a database; bob goes.
    let out = wake.cli(&["roles", "delete", id, "alice"]).await;
    failed(&out, "roles delete (owns a database)", &["409"]);
    let out = wake.cli(&["roles", "delete", id, "bob"]).await;
    assert_eq!(succeeded(&out, "roles delete"), None);
    let roles = wake.endpoint(id).await.expect("exists").roles;
    assert!(!roles.contains(&"bob".to_owned()), "{roles:?}");
    assert!(login(&endpoint, "bob", "bob-pw-1", "postgres")
        .await
        .is_err());
    let out = wake.cli(&["roles", "delete", id, "bob"]).await;
    failed(&out, "roles delete (unknown role)", &["bob", "404"]);

    // Every role and database command on an unknown endpoint.
    for args in [
        &["roles", "create", "nope", "x", "--password", "password-1"][..],
        &["roles", "update", "nope", "x", "--password", "password-1"],
        &["roles", "delete", "nope", "x"],
        &["databases", "create", "nope", "x", "--owner", "x"],
    ] {
        let out = wake.cli(args).await;
        failed(&out, &args.join(" "), &["'nope'", "404"]);
    }

    wake.stop().await;
}
