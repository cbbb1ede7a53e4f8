//! [`TestWakeService`]: the real wake service (`wake_service::run`), in-process, with its
//! local driver: its state store is a fresh database on the shared [`TestPostgres`], and its
//! computes are real Postgres 15 and PgBouncer processes under a temporary directory, run as
//! the `postgres` OS user when the tests run as root. For tests that need the real control
//! plane rather than a script of one.
//!
//! [`TestPostgres`]: crate::TestPostgres

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::postgres::{postgres, repo_root};

/// Ports the computes of test wake services take (`make up` uses 20000-20999, `make test`'s
/// stack 21000-21999, the wake service's own tests 24000-24999).
const COMPUTE_PORTS: &str = "26000-26999";

/// A wake service serving on a port-0 listener, with endpoint `db` (role `postgres`, password
/// `postgres`, database `main`) created at start and woken by the first `wake_compute`.
pub struct TestWakeService {
    addr: std::net::SocketAddr,
    admin_token: String,
    proxy_token: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestWakeService {
    /// Starts a wake service and waits until it is ready. Its computes and data directory are
    /// removed by [`stop`](Self::stop), or by a watcher when the test process exits.
    pub async fn start() -> TestWakeService {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::SeqCst);
        let name = format!("gateway_wake_{}_{n}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("the wake service's data directory");
        watch(&dir);

        let pg = postgres();
        let store = pg.client().await;
        store
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("a state-store database");
        let admin_token = format!("admin-{:0>32}", n);
        let proxy_token = format!("proxy-{:0>32}", n);
        let data_dir = dir.to_str().expect("a UTF-8 temp path").to_owned();
        let database_url = pg.url(&name);
        let mut argv = vec![
            "wake-service",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_dir,
            "--database-url",
            &database_url,
            "--admin-token",
            &admin_token,
            "--proxy-token",
            &proxy_token,
            "--compute-ports",
            COMPUTE_PORTS,
            "--compute-fast",
        ];
        if running_as_root() {
            // Postgres refuses to run as root: one shared user, as scripts/postgres.sh does.
            argv.extend(["--compute-os-user", "postgres"]);
        }
        let cli = <wake_service::config::Cli as clap::Parser>::try_parse_from(argv)
            .expect("the test wake service's command line");
        let wake_service::config::Command::Serve(args) = cli.command else {
            unreachable!("serve was asked for")
        };
        let config = args.validate().expect("a valid wake-service configuration");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(wake_service::run(config, listener, shutdown.clone()));
        let wake = TestWakeService {
            addr,
            admin_token,
            proxy_token,
            shutdown,
            task,
        };
        wake.ready().await;
        wake
    }

    async fn ready(&self) {
        let client = reqwest::Client::new();
        let url = format!("http://{}/readyz", self.addr);
        for _ in 0..600 {
            assert!(
                !self.task.is_finished(),
                "the wake service stopped at start"
            );
            let ready = client
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the wake service was not ready within a minute");
    }

    /// The proxy API base, for the gateway's `--control-plane-url`.
    pub fn proxy_url(&self) -> String {
        format!("http://{}/proxy/api/v1", self.addr)
    }

    /// The token for the proxy API (`--control-plane-token`).
    pub fn proxy_token(&self) -> &str {
        &self.proxy_token
    }

    /// The REST API base (`http://127.0.0.1:<port>/v1`), for endpoints, roles and databases.
    pub fn admin_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The bearer token for the REST API.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Shuts the service down (it suspends its computes) and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        (&mut self.task)
            .await
            .expect("the wake service's task")
            .expect("the wake service ran");
    }
}

/// Whether this process runs as root (the effective uid in `/proc/self/status`).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|uids| uids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A detached watcher: when this process exits, the computes under `dir` are stopped
/// (`scripts/stop-computes.sh`) and `dir` is deleted.
fn watch(dir: &std::path::Path) {
    let stop = repo_root().join("scripts/stop-computes.sh");
    let script =
        r#"while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; bash "$2" "$3"; rm -rf -- "$3""#;
    let _forked = Command::new("setsid")
        .args(["--fork", "nohup", "bash", "-c", script, "watch"])
        .arg(std::process::id().to_string())
        .arg(&stop)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("start the wake service's watcher");
}

impl Drop for TestWakeService {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
