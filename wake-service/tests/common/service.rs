//! A wake service running in this test process (`wake_service::run` on a port-0 listener),
//! without a default endpoint, its `DATA_DIR` a [`TempRoot`]. Test files add the calls they
//! need in `impl Wake` blocks of their own.

use std::time::{Duration, Instant};

use clap::Parser;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wake_service::config::{Cli, Command};

use super::TempRoot;

/// The admin token of every in-process service.
pub const TOKEN: &str = "0123456789abcdef0123456789abcdef";
/// How long a service may take to become ready.
const READY: Duration = Duration::from_secs(60);

pub struct Wake {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    // Dropped last: removes what is left of the service's processes and OS users.
    pub temp: TempRoot,
}

impl Wake {
    /// A service with computes on `ports` (FIRST-LAST), in a new directory tagged `tag`.
    pub async fn start(tag: &str, ports: &str) -> Wake {
        Wake::run(TempRoot::new(tag), ports).await
    }

    /// A service on `temp` (a new directory, or one a halted service left), once ready.
    pub async fn run(temp: TempRoot, ports: &str) -> Wake {
        Wake::run_with(temp, ports, &[]).await
    }

    /// [`Self::run`] with more `serve` flags.
    #[allow(dead_code)] // not every test file uses it
    pub async fn run_with(temp: TempRoot, ports: &str, flags: &[&str]) -> Wake {
        let data_dir = temp.path.to_str().expect("UTF-8 temp path").to_owned();
        let mut args = vec![
            "wake-service",
            "serve",
            "--data-dir",
            &data_dir,
            "--admin-token",
            TOKEN,
            "--compute-ports",
            ports,
            "--compute-fast",
            "--default-endpoint",
            "",
        ];
        args.extend_from_slice(flags);
        let cli = Cli::try_parse_from(args).expect("serve flags");
        let Command::Serve(args) = cli.command else {
            unreachable!("parsed `serve`")
        };
        let config = args.validate().expect("valid config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(wake_service::run(config, listener, shutdown.clone()));
        let wake = Wake {
            url,
            http: reqwest::Client::new(),
            shutdown,
            task,
            temp,
        };
        wake.wait_ready().await;
        wake
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + READY;
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
            assert!(!self.task.is_finished(), "the wake service exited at start");
            assert!(Instant::now() < deadline, "the wake service is not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the service (its computes suspended, its state store stopped) and returns its
    /// directory.
    pub async fn halt(self) -> TempRoot {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(120), self.task)
            .await
            .expect("the wake service stops")
            .expect("the service task");
        result.expect("the wake service ran without error");
        self.temp
    }

    /// `method path [body]` with the admin token: the status and the JSON body (Null when
    /// empty or not JSON).
    #[allow(dead_code)] // not every test file uses it
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// [`Self::call`], asserting the status.
    #[allow(dead_code)] // not every test file uses it
    pub async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        want: u16,
    ) -> serde_json::Value {
        let (status, value) = self.call(method.clone(), path, body).await;
        assert_eq!(status, want, "{method} {path}: {value}");
        value
    }

    /// [`Self::halt`], then the directory and what is left in it go.
    pub async fn stop(self) {
        drop(self.halt().await);
    }
}
