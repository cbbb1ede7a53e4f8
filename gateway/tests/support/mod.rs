//! Test harness: a real Postgres 15 (started through `scripts/postgres.sh`, stopped by a watcher
//! when the test process exits) and in-process gateways on port-0 listeners.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use gateway::config::Config;
use gateway::routes::Route;
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
