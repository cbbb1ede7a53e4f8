//! Hostile authentication (issue 13, finding 1), attacked against a real Postgres 15:
//!
//! - the iteration bomb: a tenant gives its role a SCRAM verifier asking for a hundred million
//!   iterations (Postgres accepts any count in a verifier and advertises it in its challenge)
//!   and sends requests with random passwords; each would derive keys afresh. The gateway
//!   refuses the count at once, and a well-behaved client on another role keeps being served;
//! - the hashing queue: a flood of wrong passwords against a control-plane role fills the
//!   bounded queue in front of password hashing; the excess is refused at once with 429 while
//!   a client whose password was already verified keeps being served.
//!
//! Each gateway runs on a runtime of its own (four workers, as on a small server): whatever
//! blocks its workers cannot stop the test's clients and timers, so a regression fails these
//! tests with a timeout instead of hanging them.

mod support;

use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::future::join_all;
use rand::RngCore;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use gateway::Config;
use gateway::Route;
use gateway::WsStream;
use support::raw::Raw;
use support::{postgres, FakeControlPlane};

/// How long a refusal or a well-behaved request may take. A derivation of the bomb's count
/// takes minutes; a refusal, a cached match and `SELECT 1` take milliseconds.
const QUICKLY: Duration = Duration::from_secs(5);

/// The gateway's runtime workers.
const WORKERS: usize = 4;

/// A role of this test process, so parallel test binaries do not meet.
fn role(name: &str) -> String {
    format!("{name}_{}", std::process::id())
}

fn random_password() -> String {
    let mut bytes = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A well-formed SCRAM-SHA-256 verifier with `iterations` and random salt and keys: Postgres
/// and the gateway accept it as a secret, and no password matches it.
fn verifier(iterations: u32) -> String {
    let base64 = base64::engine::general_purpose::STANDARD;
    let random = |n: usize| {
        let mut bytes = vec![0u8; n];
        rand::thread_rng().fill_bytes(&mut bytes);
        base64.encode(bytes)
    };
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        random(16),
        random(32),
        random(32)
    )
}

/// A gateway serving `config` on its own multi-threaded runtime, in a thread of its own.
struct Gateway {
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    shutdown: CancellationToken,
}

impl Gateway {
    fn start(config: Config) -> Gateway {
        let bind = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.set_nonblocking(true).expect("non-blocking");
            listener
        };
        let (public, admin) = (bind(), bind());
        let addr = public.local_addr().expect("addr");
        let admin_addr = admin.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(WORKERS)
                .enable_all()
                .build()
                .expect("the gateway's runtime");
            runtime.block_on(async move {
                let public = TcpListener::from_std(public).expect("listener");
                let admin = TcpListener::from_std(admin).expect("listener");
                gateway::serve(config, public, admin, stop)
                    .await
                    .expect("gateway ran");
            });
            // A regression leaves hashes running on the workers: do not wait for them.
            runtime.shutdown_background();
        });
        Gateway {
            addr,
            admin: admin_addr,
            shutdown,
        }
    }

    /// A gateway routing endpoint `db` to the shared Postgres.
    fn with_static_route() -> Gateway {
        let route: Route = format!("db={}", postgres().address())
            .parse()
            .expect("route");
        Gateway::start(Config::for_tests(vec![route]))
    }

    /// `SELECT 1` as the driver sends it, as `user` with `password` on endpoint `db`:
    /// (status, JSON body), or `None` when no answer came within [`QUICKLY`].
    async fn select_1(
        &self,
        client: &reqwest::Client,
        user: &str,
        password: &str,
    ) -> Option<(u16, Value)> {
        let request = client
            .post(format!("http://{}/sql", self.addr))
            .header(
                "Neon-Connection-String",
                format!("postgres://{user}:{password}@db.localtest.me/main"),
            )
            .header("Neon-Raw-Text-Output", "true")
            .header("Neon-Array-Mode", "true")
            .header("content-type", "text/plain;charset=UTF-8")
            .body(json!({"query": "SELECT 1"}).to_string())
            .send();
        let answer = async {
            let response = request.await.expect("request");
            let status = response.status().as_u16();
            (status, response.json().await.expect("JSON body"))
        };
        tokio::time::timeout(QUICKLY, answer).await.ok()
    }

    /// `gateway_limit_hits_total{limit}`, from the admin listener.
    async fn limit_hits(&self, limit: &str) -> f64 {
        let metrics = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        let labels = format!("limit=\"{limit}\"");
        metrics
            .lines()
            .filter(|l| l.starts_with("gateway_limit_hits_total{") && l.contains(&labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// A WebSocket session to endpoint `db`, logging in as `user` with a cleartext password:
    /// the ErrorResponse's fields, or `None` when the login did not fail within [`QUICKLY`].
    async fn ws_login_error(&self, user: &str, password: &str) -> Option<support::raw::Fields> {
        let login = async {
            let url = format!("ws://{}/v2?address=db.localtest.me:5432", self.addr);
            let tcp = TcpStream::connect(self.addr).await.expect("connect");
            let (ws, _) = tokio_tungstenite::client_async(url, tcp)
                .await
                .expect("WebSocket upgrade");
            let mut raw = Raw::new(WsStream::new(ws));
            let params = [("user", user), ("database", "main")];
            raw.login(&params, password)
                .await
                .expect_err("the login fails")
        };
        tokio::time::timeout(QUICKLY, login).await.ok()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A role whose verifier asks for 10^8 iterations, hit by concurrent requests and sessions
/// with random passwords: each is refused at once with the clear error (deriving the keys
/// would take minutes of a worker each), and a well-behaved client on another role keeps
/// getting its `SELECT 1` meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iteration_bomb_is_refused_at_once_and_others_are_served() {
    let pg = postgres().client().await;
    let (bomb, good) = (role("bomb"), role("good"));
    // What `ALTER ROLE … PASSWORD '<verifier>'` stores. Written into the catalog directly:
    // Postgres checks a new verifier against the empty password, which costs its iterations
    // (minutes of the test's Postgres for this one).
    pg.batch_execute(&format!(
        "DROP ROLE IF EXISTS {bomb}; DROP ROLE IF EXISTS {good};
         CREATE ROLE {bomb} LOGIN PASSWORD 'placeholder';
         UPDATE pg_authid SET rolpassword = '{}' WHERE rolname = '{bomb}';
         CREATE ROLE {good} LOGIN PASSWORD 'good';",
        verifier(100_000_000)
    ))
    .await
    .expect("roles");
    let gw = Gateway::with_static_route();
    let client = reqwest::Client::new();
    assert_eq!(
        gw.select_1(&client, &good, "good")
            .await
            .map(|(status, _)| status),
        Some(200),
        "the well-behaved client before the attack"
    );

    let attack = async {
        let requests = (0..32).map(|_| {
            let (client, gw, bomb) = (&client, &gw, &bomb);
            async move {
                let started = Instant::now();
                let answer = gw.select_1(client, bomb, &random_password()).await;
                (answer, started.elapsed())
            }
        });
        let sessions = (0..4).map(|_| gw.ws_login_error(&bomb, "guess"));
        tokio::join!(join_all(requests), join_all(sessions))
    };
    let well_behaved = async {
        let mut served = Vec::new();
        for _ in 0..10 {
            let started = Instant::now();
            let answer = gw.select_1(&client, &good, "good").await;
            served.push((answer.map(|(status, _)| status), started.elapsed()));
            // Not synchronisation: the well-behaved client's requests are spread over the attack.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        served
    };
    let ((requests, sessions), served) = tokio::join!(attack, well_behaved);

    for (answer, took) in &requests {
        let (status, body) = answer
            .as_ref()
            .unwrap_or_else(|| panic!("a bomb request was not answered within {QUICKLY:?}"));
        assert_eq!(*status, 502, "{body}");
        let message = body["message"].as_str().expect("message");
        assert!(
            message.contains("100000000 SCRAM iterations")
                && message.contains("more than this gateway allows"),
            "{message}"
        );
        assert!(*took < QUICKLY, "{took:?}");
    }
    for fields in &sessions {
        let fields = fields
            .as_ref()
            .unwrap_or_else(|| panic!("a bomb session was not refused within {QUICKLY:?}"));
        assert_eq!(fields[&'S'], "FATAL");
        assert_eq!(fields[&'C'], "08001");
        assert!(
            fields[&'M'].contains("100000000 SCRAM iterations"),
            "{fields:?}"
        );
    }
    for (status, took) in served {
        assert_eq!(
            status,
            Some(200),
            "the well-behaved client during the attack ({took:?})"
        );
    }
    assert_eq!(gw.limit_hits("scram_iterations").await, 36.0);
}

/// With a small hashing queue, a flood of wrong passwords against a control-plane role whose
/// secret is expensive: what cannot wait is refused at once with 429 and the driver's JSON
/// error, and a client whose password was already verified (a cached match) is served
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_passwords_fills_the_queue_and_the_rest_is_refused() {
    let pg = postgres();
    let client_pg = pg.client().await;
    let victim = role("victim");
    client_pg
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {victim};
             CREATE ROLE {victim} LOGIN PASSWORD 'right';"
        ))
        .await
        .expect("role");
    let cp = FakeControlPlane::start().await;
    cp.route("db", &pg.address());
    cp.secret("db", &victim, &pg.role_secret(&victim).await);
    // The most a secret may ask for by default: a check costs as much as the gateway allows.
    let flooded = role("flooded");
    cp.secret("db", &flooded, &verifier(100_000));
    let mut config = Config::for_tests_with_control_plane(&cp.url(), None);
    config.pool.hashing.max_queue = 4;
    // No activity reports: the first reply drops every cached proof (the gateway cannot know
    // what changed before it), which would make the victim's next check a new one.
    config.activity_interval = None;
    let gw = Gateway::start(config);
    let client = reqwest::Client::new();
    assert_eq!(
        gw.select_1(&client, &victim, "right").await.map(|(s, _)| s),
        Some(200),
        "the victim's password is verified before the flood"
    );

    let flood = join_all((0..48).map(|_| {
        let (client, gw, flooded) = (&client, &gw, &flooded);
        async move {
            let started = Instant::now();
            let answer = gw.select_1(client, flooded, &random_password()).await;
            (answer, started.elapsed())
        }
    }));
    let victim_served = async {
        let mut served = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let answer = gw.select_1(&client, &victim, "right").await;
            served.push((answer.map(|(status, _)| status), started.elapsed()));
        }
        served
    };
    let (flood, served) = tokio::join!(flood, victim_served);

    let mut refused = 0;
    for (answer, took) in &flood {
        let Some((status, body)) = answer else {
            continue;
        };
        if *status == 429 {
            refused += 1;
            assert_eq!(
                body["message"],
                json!("too many connection attempts; please try again later"),
                "{body}"
            );
            assert!(*took < QUICKLY, "{took:?}");
        } else {
            assert_eq!(*status, 400, "a wrong password: {body}");
        }
    }
    assert!(
        refused > 0,
        "no request was refused by the hashing queue: {:?}",
        flood
            .iter()
            .map(|(answer, took)| (answer.as_ref().map(|(status, _)| *status), *took))
            .collect::<Vec<_>>()
    );
    for (status, took) in served {
        assert_eq!(
            status,
            Some(200),
            "the verified client during the flood ({took:?})"
        );
    }
    assert_eq!(gw.limit_hits("password_hash_queue").await, refused as f64);
}
