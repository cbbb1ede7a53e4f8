//! Test harness: in-process gateways on port-0 listeners, in front of the real Postgres 15
//! and the control planes of `gateway-testkit` (re-exported here).
//!
//! `TestGateway::builder()` takes static routes (`.route_to_postgres("db")` for the shared
//! Postgres), a control plane (`.control_plane(&fake)` for a `FakeControlPlane`,
//! `.control_plane_at(url, token)` for anything else, such as a `TestWakeService`) and a
//! tweak of its `Config`, then `.start()`s it. `Forwarder` is a TCP proxy that counts the
//! backend connections opened through it.

#![allow(dead_code)]

pub mod raw;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gateway::Config;
use gateway::Route;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

// Each test binary uses its own share of these.
#[allow(unused_imports)]
pub use gateway_testkit::{
    postgres, FakeControlPlane, Outage, ReceivedReport, Reply, TestPostgres, TestWakeService,
};

pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A change to a test gateway's configuration.
type Tweak<'a> = Box<dyn FnOnce(&mut Config) + 'a>;

/// How a [`TestGateway`] is set up: `TestGateway::builder()…start()`.
#[must_use = "a builder does nothing until `.start()`"]
pub struct TestGatewayBuilder<'a> {
    routes: Vec<Route>,
    control_plane: Option<(String, Option<String>)>,
    tweaks: Vec<Tweak<'a>>,
}

impl<'a> TestGatewayBuilder<'a> {
    /// A static route: `endpoint` is served by the Postgres at `address`.
    pub fn route(mut self, endpoint: &str, address: &str) -> Self {
        let route = format!("{endpoint}={address}").parse().expect("route");
        self.routes.push(route);
        self
    }

    /// A static route from `endpoint` to the shared test Postgres.
    pub fn route_to_postgres(self, endpoint: &str) -> Self {
        self.route(endpoint, &postgres().address())
    }

    /// Endpoints without a static route come from `fake` (with the token it requires).
    pub fn control_plane(self, fake: &FakeControlPlane) -> Self {
        let token = fake.token();
        self.control_plane_at(&fake.url(), token.as_deref())
    }

    /// Endpoints without a static route come from the proxy API at `url`, called with `token`.
    pub fn control_plane_at(mut self, url: &str, token: Option<&str>) -> Self {
        self.control_plane = Some((url.to_owned(), token.map(str::to_owned)));
        self
    }

    /// Endpoints come from the real wake service `wake`, with its proxy token.
    pub fn wake_service(self, wake: &TestWakeService) -> Self {
        self.control_plane_at(&wake.proxy_url(), Some(wake.proxy_token()))
    }

    /// Changes the configuration (after routes and control plane are set).
    pub fn config(mut self, tweak: impl FnOnce(&mut Config) + 'a) -> Self {
        self.tweaks.push(Box::new(tweak));
        self
    }

    /// The configuration `start` serves.
    pub fn build(self) -> Config {
        let mut config = match &self.control_plane {
            Some((url, token)) => {
                let mut config = Config::for_tests_with_control_plane(url, token.as_deref());
                config.routes = self.routes;
                config
            }
            None => Config::for_tests(self.routes),
        };
        for tweak in self.tweaks {
            tweak(&mut config);
        }
        config
    }

    /// Serves the gateway on fresh port-0 listeners.
    pub async fn start(self) -> TestGateway {
        TestGateway::serve(self.build()).await
    }
}

impl TestGateway {
    /// A gateway with no routes and no control plane yet.
    pub fn builder() -> TestGatewayBuilder<'static> {
        TestGatewayBuilder {
            routes: Vec::new(),
            control_plane: None,
            tweaks: Vec::new(),
        }
    }

    /// A gateway with this configuration, on fresh port-0 listeners (its listen addresses are
    /// not used).
    pub async fn serve(config: Config) -> TestGateway {
        let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        TestGateway::serve_on(config, public, admin)
    }

    /// A gateway with this configuration on these listeners (for a configuration that names
    /// the gateway's own addresses).
    pub fn serve_on(config: Config, public: TcpListener, admin: TcpListener) -> TestGateway {
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
