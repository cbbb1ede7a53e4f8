//! Endpoints from a control plane in front of a real Postgres 15 (the real wake service
//! in-process where no fault is scripted, else `FakeControlPlane`): the warm path makes no
//! control-plane calls, unknown endpoints, unknown roles and wrong passwords are refused alike
//! by the gateway itself, an unavailable control plane is a clear retryable error that does not touch warm endpoints (and never lets a
//! client through unchecked), and a cached address that stops answering is replaced.
//!
//! Scale to zero: activity reports (sessions at once, queries in flight, idle time, failed
//! reports resent), an "inactive" reply dropping routes and idle connections, `57P03` at
//! connect retried through a new wake, and a query on a pooled connection that its server
//! closed retried only when it provably never ran. Metering: the usage the reports carry
//! reaches the control plane once, across an outage. Autoscaling: the pool cap a wake reply
//! or an activity reply gives holds the `/sql` pool's backend connections.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;

use gateway::RetryConfig;
use gateway::WsStream;
use support::{
    eventually, postgres, sql, FakeControlPlane, Forwarder, Outage, ReceivedReport, TestGateway,
    TestWakeService, CONN,
};

/// Bound for conditions that come true in the background (reports, releases).
const WITHIN: Duration = Duration::from_secs(10);

fn conn(endpoint: &str, password: &str) -> String {
    format!("postgres://postgres:{password}@{endpoint}.localtest.me/main")
}

/// A plain TCP session (SCRAM with the gateway, which logs in to the backend) for `endpoint`.
async fn tcp_session(
    gw: &TestGateway,
    endpoint: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres password={password} dbname=main \
         options='endpoint={endpoint}'",
        gw.addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A WebSocket session (cleartext password inside the tunnel) for `endpoint`.
async fn ws_session(
    gw: &TestGateway,
    endpoint: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let url = format!("ws://{}/v2?address={endpoint}.localtest.me:443", gw.addr);
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("WebSocket upgrade");
    let mut config = tokio_postgres::Config::new();
    config.user("postgres").password(password).dbname("main");
    let (client, connection) = config.connect_raw(WsStream::new(ws), NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn select_one(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT 1", &[])
        .await
        .expect("query")
        .get(0)
}

fn sqlstate(error: &tokio_postgres::Error) -> String {
    error
        .as_db_error()
        .map(|e| format!("{} {}", e.code().code(), e.message()))
        .unwrap_or_else(|| format!("no server error: {error}"))
}

/// The role-secret lookups `gw` sent to its control plane, whatever the answer.
async fn lookups(gw: &TestGateway) -> f64 {
    gw.metric(
        "gateway_control_plane_requests_total",
        "call=\"access_control\"",
    )
    .await
}

/// The `wake_compute` calls `gw` sent to its control plane, whatever the answer.
async fn wakes(gw: &TestGateway) -> f64 {
    gw.metric(
        "gateway_control_plane_requests_total",
        "call=\"wake_compute\"",
    )
    .await
}

#[tokio::test]
async fn endpoints_come_from_the_control_plane_and_stay_warm() {
    // The real wake service: endpoint `db` is a Postgres and a PgBouncer it starts.
    let wake = TestWakeService::start().await;
    let gw = TestGateway::builder()
        .wake_service(&wake)
        .config(|config| {
            config.route_cache.negative_ttl = Duration::from_millis(1500);
            // No activity replies: the first one drops every cached secret (role changes may
            // have been missed), which would blur the counts here.
            config.activity_interval = None;
        })
        .start()
        .await;
    let query = json!({"query": "SELECT 1 AS one"});

    // Cold: one secret lookup and one wake.
    let (status, body) = sql(&gw, CONN, query.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((lookups(&gw).await, wakes(&gw).await), (1.0, 1.0));
    // Warm: HTTP (pooled connection, password proven by the cached check), TCP and WebSocket
    // sessions make no control-plane call.
    for _ in 0..5 {
        assert_eq!(sql(&gw, CONN, query.clone()).await.0, 200);
    }
    let tcp = tcp_session(&gw, "db", "postgres")
        .await
        .expect("TCP session");
    assert_eq!(select_one(&tcp).await, 1);
    let ws = ws_session(&gw, "db", "postgres")
        .await
        .expect("WebSocket session");
    assert_eq!(select_one(&ws).await, 1);
    assert_eq!(
        lookups(&gw).await + wakes(&gw).await,
        2.0,
        "the warm path asked the control plane"
    );
    assert!(
        gw.metric("gateway_pool_checkouts_total", "outcome=\"hit\"")
            .await
            >= 4.0
    );
    assert_eq!(
        gw.metric("gateway_secret_verifications_total", "outcome=\"match\"")
            .await,
        1.0,
        "PBKDF2 ran once"
    );
    assert_eq!(
        gw.metric("gateway_scram_proofs_total", "outcome=\"match\"")
            .await,
        1.0,
        "the TCP client proved its password to the gateway"
    );

    // A wrong password is refused by the secret check: no backend, no control plane.
    let connects = gw
        .metric("gateway_backend_connect_duration_seconds_count", "")
        .await;
    let (status, wrong) = sql(&gw, &conn("db", "wrong"), query.clone()).await;
    assert_eq!(status, 400);
    assert_eq!(
        wrong["message"],
        "password authentication failed for user 'postgres'"
    );
    let error = ws_session(&gw, "db", "wrong").await.expect_err("refused");
    assert_eq!(
        sqlstate(&error),
        "28P01 password authentication failed for user 'postgres'"
    );
    assert_eq!(
        gw.metric("gateway_backend_connect_duration_seconds_count", "")
            .await,
        connects
    );
    assert_eq!(
        gw.metric("gateway_secret_verifications_total", "outcome=\"mismatch\"")
            .await,
        2.0
    );
    // TCP clients prove their password to the gateway's SCRAM server: a wrong one is
    // refused there too.
    let error = tcp_session(&gw, "db", "wrong").await.expect_err("refused");
    assert_eq!(
        sqlstate(&error),
        "28P01 password authentication failed for user 'postgres'"
    );
    assert_eq!(
        gw.metric("gateway_scram_proofs_total", "outcome=\"mismatch\"")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("gateway_backend_connect_duration_seconds_count", "")
            .await,
        connects
    );

    // An unknown endpoint reads exactly like a wrong password, and is asked about once per
    // negative TTL however often it is tried.
    let (status, ghost) = sql(&gw, &conn("ghost", "postgres"), query.clone()).await;
    assert_eq!((status, &ghost), (400, &wrong));
    let before = lookups(&gw).await + wakes(&gw).await;
    for _ in 0..5 {
        assert_eq!(
            sql(&gw, &conn("ghost", "postgres"), query.clone()).await,
            (400, wrong.clone())
        );
    }
    let error = tcp_session(&gw, "ghost", "postgres")
        .await
        .expect_err("refused");
    assert!(sqlstate(&error).starts_with("28P01"), "{error}");
    let error = ws_session(&gw, "ghost", "postgres")
        .await
        .expect_err("refused");
    assert!(sqlstate(&error).starts_with("28P01"), "{error}");
    assert_eq!(lookups(&gw).await + wakes(&gw).await, before);
    // Not synchronisation: this waits out the negative TTL (1.5 s) that is being tested.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        sql(&gw, &conn("ghost", "postgres"), query.clone()).await.0,
        400
    );
    assert_eq!(lookups(&gw).await + wakes(&gw).await, before + 1.0);

    // A role the control plane has no secret for (say, created in SQL) cannot log in: the
    // same answer as a wrong password, and no backend is asked.
    let connects = gw
        .metric("gateway_backend_connect_duration_seconds_count", "")
        .await;
    let (status, nobody) = sql(
        &gw,
        "postgres://nobody:postgres@db.localtest.me/main",
        query.clone(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        nobody["message"],
        "password authentication failed for user 'nobody'"
    );
    assert_eq!(
        gw.metric("gateway_backend_connect_duration_seconds_count", "")
            .await,
        connects
    );

    // `db-pooler` is woken on its own, but shares `db`'s role secrets.
    let looked_up = lookups(&gw).await;
    let (status, body) = sql(&gw, &conn("db-pooler", "postgres"), query.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(lookups(&gw).await, looked_up);
    assert_eq!(
        gw.metric(
            "gateway_control_plane_requests_total",
            "call=\"wake_compute\",outcome=\"ok\""
        )
        .await,
        2.0
    );
    drop((tcp, ws));
    gw.stop().await;
    wake.stop().await;
}

#[tokio::test]
async fn an_unavailable_control_plane_fails_clearly_and_warm_endpoints_keep_working() {
    let pg = postgres();
    let cp = FakeControlPlane::start().await;
    cp.route("db", &pg.address());
    cp.secret("db", "postgres", &pg.role_secret("postgres").await);
    let quick = RetryConfig {
        max_attempts: 3,
        base_delay: Duration::from_millis(20),
        factor: 2.0,
    };
    let gw = TestGateway::builder()
        .control_plane(&cp)
        .config(|config| {
            config.route_cache.wake_retry = quick;
            // Every hit refreshes in the background: the refreshes fail while the control plane is
            // down, and the cached route must survive them.
            config.route_cache.refresh_after = Duration::ZERO;
        })
        .start()
        .await;
    let query = json!({"query": "SELECT 1"});
    assert_eq!(sql(&gw, CONN, query.clone()).await.0, 200);
    // The first activity reply drops every secret cached before it (role changes may have
    // been missed); warm again after it.
    eventually("the first activity reply is applied", WITHIN, || async {
        (gw.metric("gateway_role_invalidations_total", "reason=\"first_reply\"")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(sql(&gw, CONN, query.clone()).await.0, 200);

    cp.go_down(Outage::Unavailable);
    for _ in 0..5 {
        let wakes = cp.wakes();
        assert_eq!(sql(&gw, CONN, query.clone()).await.0, 200);
        // Each hit refreshes the route in the background; wait until that refresh has asked
        // the control plane (and been refused) before the next request.
        eventually(
            "a background refresh asks the control plane",
            WITHIN,
            || async { (cp.wakes() > wakes).then_some(()) },
        )
        .await;
    }
    let tcp = tcp_session(&gw, "db", "postgres")
        .await
        .expect("TCP session");
    assert_eq!(select_one(&tcp).await, 1);
    let ws = ws_session(&gw, "db", "postgres")
        .await
        .expect("WebSocket session");
    assert_eq!(select_one(&ws).await, 1);
    assert!(cp.wakes() > 1, "background refreshes were tried");

    // A role whose secret is not cached cannot be checked: unavailable, never handed to
    // Postgres to judge (that would connect an unauthenticated client).
    let connects = gw
        .metric("gateway_backend_connect_duration_seconds_count", "")
        .await;
    let nobody = "postgres://nobody:postgres@db.localtest.me/main";
    let (status, body) = sql(&gw, nobody, query.clone()).await;
    assert_eq!(status, 503, "{body}");
    let port = gw.addr.port();
    let tcp_nobody = format!(
        "host=127.0.0.1 port={port} user=nobody password=postgres dbname=main options='endpoint=db'"
    );
    let error = tokio_postgres::connect(&tcp_nobody, NoTls)
        .await
        .err()
        .expect("unavailable");
    assert!(sqlstate(&error).starts_with("57P03"), "{error}");
    assert_eq!(
        gw.metric("gateway_backend_connect_duration_seconds_count", "")
            .await,
        connects
    );

    // An endpoint that is not cached cannot be served: a 503, not a hang.
    cp.route("cold", &pg.address());
    cp.secret("cold", "postgres", &pg.role_secret("postgres").await);
    let started = Instant::now();
    let (status, body) = sql(&gw, &conn("cold", "postgres"), query.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["message"],
        "endpoint is temporarily unavailable; please try again later"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let error = tcp_session(&gw, "cold", "postgres")
        .await
        .expect_err("unavailable");
    assert_eq!(
        sqlstate(&error),
        "57P03 endpoint is temporarily unavailable; please try again later"
    );
    let error = ws_session(&gw, "cold", "postgres")
        .await
        .expect_err("unavailable");
    assert!(sqlstate(&error).starts_with("57P03"), "{error}");
    assert!(
        gw.metric("gateway_retries_total", "operation=\"wake_compute\"")
            .await
            >= 2.0
    );

    // Back up: the same endpoint works (failures were not cached).
    cp.come_back();
    let (status, body) = sql(&gw, &conn("cold", "postgres"), query.clone()).await;
    assert_eq!(status, 200, "{body}");
    drop((tcp, ws));
    gw.stop().await;

    // No control plane listening at all, and one that refuses the gateway's token: 503, and
    // the refusal is not retried.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let gw = TestGateway::builder()
        .control_plane_at(&format!("http://{closed}/proxy/api/v1"), None)
        .config(|config| config.route_cache.wake_retry = quick)
        .start()
        .await;
    assert_eq!(sql(&gw, CONN, query.clone()).await.0, 503);
    gw.stop().await;
    cp.require_token("right");
    let gw = TestGateway::builder()
        .control_plane_at(&cp.url(), Some("wrong"))
        .config(|config| {
            config.route_cache.wake_retry = quick;
        })
        .start()
        .await;
    // (Counted as secret lookups: the query's activity report may reach the mock too.)
    let lookups = cp.lookups();
    assert_eq!(sql(&gw, CONN, query).await.0, 503);
    assert_eq!(cp.lookups(), lookups + 1, "one secret lookup, not retried");
    gw.stop().await;
}

/// Forwards TCP connections to `target` until the returned task is aborted, which also closes
/// every forwarded connection (a moment later: the returned count of open connections says
/// when).
async fn forwarder(target: String) -> (SocketAddr, tokio::task::JoinHandle<()>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let open = Arc::new(AtomicUsize::new(0));
    let counted = open.clone();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut client, _)) = listener.accept().await {
            let target = target.clone();
            // Counts the connection until its task ends or is aborted (the sockets go with it).
            let guard = OpenGuard::new(counted.clone());
            connections.spawn(async move {
                let _guard = guard;
                if let Ok(mut server) = TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (addr, task, open)
}

struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: Arc<AtomicUsize>) -> OpenGuard {
        open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Opens one connection of `transport` (http, tcp, ws) to endpoint `db` and runs `SELECT 1`.
async fn use_db(gw: &TestGateway, transport: &str) -> Result<(), String> {
    match transport {
        "http" => match sql(gw, CONN, json!({"query": "SELECT 1"})).await {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        },
        _ => {
            let session = if transport == "tcp" {
                tcp_session(gw, "db", "postgres").await
            } else {
                ws_session(gw, "db", "postgres").await
            };
            let client = session.map_err(|e| sqlstate(&e))?;
            assert_eq!(select_one(&client).await, 1);
            Ok(())
        }
    }
}

#[tokio::test]
async fn a_cached_address_that_stops_answering_is_woken_again() {
    let pg = postgres();
    let secret = pg.role_secret("postgres").await;
    for transport in ["http", "tcp", "ws"] {
        let (old, forwarding, open) = forwarder(pg.address()).await;
        let cp = FakeControlPlane::start().await;
        cp.route("db", &old.to_string());
        cp.secret("db", "postgres", &secret);
        let gw = TestGateway::builder().control_plane(&cp).start().await;
        use_db(&gw, transport)
            .await
            .expect("through the old address");
        assert_eq!(cp.wakes(), 1);

        // The compute moves: the old address refuses connections, and the ones it had close
        // (pooled connections are found closed and discarded).
        forwarding.abort();
        let _ = forwarding.await;
        cp.route("db", &pg.address());
        // The aborted forwarder's connection tasks end a moment after it: wait until their
        // sockets are closed, so the gateway's pooled connection is closed at its end.
        eventually(
            "the old address's connections are closed",
            WITHIN,
            || async { (open.load(Ordering::SeqCst) == 0).then_some(()) },
        )
        .await;

        use_db(&gw, transport)
            .await
            .unwrap_or_else(|e| panic!("{transport} after the move: {e}"));
        assert_eq!(cp.wakes(), 2, "{transport}: one new wake");
        assert_eq!(
            gw.metric("gateway_route_cache_invalidations_total", "")
                .await,
            1.0,
            "{transport}"
        );
        // The new address is cached.
        use_db(&gw, transport).await.expect("again");
        assert_eq!(cp.wakes(), 2, "{transport}");
        gw.stop().await;
    }
}

/// What a [`Compute`] does with connections.
const FORWARD: u8 = 0;
/// Postgres shutting down (a compute being suspended): a new connection gets FATAL `57P03`
/// after its startup packet; an open one answers its next request with FATAL `57P01`, without
/// passing the request on, and closes (the FATAL was on its way before the request arrived).
const STOPPING: u8 = 1;
/// Postgres dying right after it ran a request: requests are passed on, the reply is dropped
/// and the connection closed.
const CRASHING: u8 = 2;

/// A compute in front of the test Postgres: a TCP proxy that can play one being suspended.
struct Compute {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Compute {
    async fn start(target: String) -> Compute {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(AtomicU8::new(FORWARD));
        let refused = Arc::new(AtomicUsize::new(0));
        let (m, r) = (mode.clone(), refused.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(Compute::serve(client, target.clone(), m.clone(), r.clone()));
            }
        });
        Compute {
            addr,
            mode,
            refused,
            task,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// Connections refused with `57P03`.
    fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    async fn serve(
        mut client: TcpStream,
        target: String,
        mode: Arc<AtomicU8>,
        refused: Arc<AtomicUsize>,
    ) {
        let mode = move || mode.load(Ordering::SeqCst);
        if mode() == STOPPING {
            let mut len = [0u8; 4];
            if client.read_exact(&mut len).await.is_ok() {
                let mut rest = vec![0; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
                if client.read_exact(&mut rest).await.is_ok() {
                    refused.fetch_add(1, Ordering::SeqCst);
                    let refusal = fatal("57P03", "the database system is shutting down");
                    let _ = client.write_all(&refusal).await;
                }
            }
            return;
        }
        let Ok(server) = TcpStream::connect(&target).await else {
            return;
        };
        let (mut client_r, mut client_w) = client.into_split();
        let (mut server_r, mut server_w) = server.into_split();
        let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
        loop {
            tokio::select! {
                read = client_r.read(&mut up) => {
                    let Ok(n @ 1..) = read else { return };
                    if mode() == STOPPING {
                        let goodbye = fatal("57P01", "terminating connection due to administrator command");
                        let _ = client_w.write_all(&goodbye).await;
                        return;
                    }
                    if server_w.write_all(&up[..n]).await.is_err() {
                        return;
                    }
                }
                read = server_r.read(&mut down) => {
                    let Ok(n @ 1..) = read else { return };
                    if mode() == CRASHING || client_w.write_all(&down[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

impl Drop for Compute {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A FATAL ErrorResponse as Postgres sends it.
fn fatal(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    message.extend(body);
    message
}

#[tokio::test]
async fn a_57p03_at_connect_is_retried_through_a_new_wake() {
    let pg = postgres();
    let secret = pg.role_secret("postgres").await;
    for transport in ["http", "tcp", "ws"] {
        let compute = Compute::start(pg.address()).await;
        let cp = FakeControlPlane::start().await;
        cp.route("db", &compute.addr.to_string());
        cp.secret("db", "postgres", &secret);
        let gw = TestGateway::builder()
            .control_plane(&cp)
            .config(|config| {
                // No idle connections: every query connects, as every session does.
                config.pool.max_idle_per_endpoint = 0;
            })
            .start()
            .await;
        use_db(&gw, transport).await.expect("through the compute");
        assert_eq!(cp.wakes(), 1);
        if transport == "http" {
            // The connection was reset and closed (not kept: no idle slots) before the switch.
            eventually("the first connection closed", WITHIN, || async {
                (gw.metric("gateway_pool_discards_total", "").await >= 1.0).then_some(())
            })
            .await;
        }

        // The compute is being suspended: Postgres refuses new connections with 57P03, and
        // the control plane will start the endpoint elsewhere.
        compute.set(STOPPING);
        cp.route("db", &pg.address());
        use_db(&gw, transport)
            .await
            .unwrap_or_else(|e| panic!("{transport} while the compute stops: {e}"));
        assert_eq!(compute.refused(), 1, "{transport}: refused once");
        assert_eq!(cp.wakes(), 2, "{transport}: one new wake");
        assert_eq!(
            gw.metric("gateway_route_cache_invalidations_total", "")
                .await,
            1.0,
            "{transport}"
        );
        gw.stop().await;
    }
}

/// `INSERT … RETURNING` of `n` into `suspended`.
fn insert(n: i32) -> serde_json::Value {
    json!({"query": "INSERT INTO suspended VALUES ($1) RETURNING n", "params": [n.to_string()]})
}

async fn count(pg: &tokio_postgres::Client, n: i32) -> i64 {
    pg.query_one("SELECT count(*) FROM suspended WHERE n = $1", &[&n])
        .await
        .expect("count")
        .get(0)
}

/// A gateway routing `db` through `compute`, with one idle pooled connection through it.
async fn warm_through(compute: &Compute, cp: &FakeControlPlane, warmup: i32) -> TestGateway {
    let pg = postgres();
    cp.route("db", &compute.addr.to_string());
    cp.secret("db", "postgres", &pg.role_secret("postgres").await);
    let gw = TestGateway::builder().control_plane(cp).start().await;
    let (status, body) = sql(&gw, CONN, insert(warmup)).await;
    assert_eq!(status, 200, "{body}");
    eventually("the connection is idle", WITHIN, || async {
        (gw.metric("gateway_pool_idle_connections", "").await == 1.0).then_some(())
    })
    .await;
    gw
}

#[tokio::test]
async fn a_query_on_a_pooled_connection_its_server_closed_is_retried_only_if_it_never_ran() {
    let pg = postgres();
    let direct = pg.client().await;
    direct
        .batch_execute("DROP TABLE IF EXISTS suspended; CREATE TABLE suspended (n int)")
        .await
        .expect("table");

    // The compute stops while the connection is idle, and its FATAL is on the wire when the
    // next query is sent: the query never reached Postgres, so it runs once more on a new
    // connection, through a new wake (the old address refuses with 57P03).
    let compute = Compute::start(pg.address()).await;
    let cp = FakeControlPlane::start().await;
    let gw = warm_through(&compute, &cp, 1).await;
    compute.set(STOPPING);
    cp.route("db", &pg.address());
    let (status, body) = sql(&gw, CONN, insert(2)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], json!([["2"]]));
    assert_eq!(count(&direct, 2).await, 1, "ran exactly once");
    assert_eq!(
        gw.metric("gateway_retries_total", "operation=\"pooled_query\"")
            .await,
        1.0
    );
    assert_eq!(cp.wakes(), 2);
    // Metered as it ran: two statements (the attempt that never ran is none), on two
    // connections.
    assert_eq!(queries_and_connections(&gw).await, (Some(2), Some(2)));
    gw.stop().await;

    // The server dies after running the query, before its reply: the query may have run
    // (it did), so it is not repeated, although a retry would succeed.
    let compute = Compute::start(pg.address()).await;
    let cp = FakeControlPlane::start().await;
    let gw = warm_through(&compute, &cp, 10).await;
    compute.set(CRASHING);
    cp.route("db", &pg.address());
    let (status, body) = sql(&gw, CONN, insert(11)).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(count(&direct, 11).await, 1, "ran once, and only once");
    assert_eq!(
        gw.metric("gateway_retries_total", "operation=\"pooled_query\"")
            .await,
        0.0
    );
    assert_eq!(cp.wakes(), 1);
    // The failed statement was sent (and ran): it counts.
    assert_eq!(queries_and_connections(&gw).await, (Some(2), Some(1)));
    gw.stop().await;
}

/// `db`'s queries and backend connections in `/usage`.
async fn queries_and_connections(gw: &TestGateway) -> (Option<u64>, Option<u64>) {
    let usage = gw.usage().await;
    let db = &usage["endpoints"]["db"];
    (db["queries"].as_u64(), db["connections"].as_u64())
}

/// A gateway on `cp` reporting activity every `interval`.
async fn reporting(cp: &FakeControlPlane, interval: Duration) -> TestGateway {
    let pg = postgres();
    cp.route("db", &pg.address());
    cp.route("db-pooler", &pg.address());
    cp.secret("db", "postgres", &pg.role_secret("postgres").await);
    TestGateway::builder()
        .control_plane(cp)
        .config(|config| {
            config.activity_interval = Some(interval);
        })
        .start()
        .await
}

/// The first report after the `after` first ones that satisfies `check`.
async fn report_where(
    cp: &FakeControlPlane,
    after: usize,
    what: &str,
    check: impl Fn(&ReceivedReport) -> bool,
) -> ReceivedReport {
    eventually(what, WITHIN, || {
        let found = cp.reports().into_iter().skip(after).find(|r| check(r));
        async move { found }
    })
    .await
}

#[tokio::test]
async fn an_open_session_is_reported_at_once() {
    let cp = FakeControlPlane::start().await;
    // Far longer than the test's deadlines: only the report for a new session can show it.
    let gw = reporting(&cp, Duration::from_secs(60)).await;

    let tcp = tcp_session(&gw, "db", "postgres")
        .await
        .expect("TCP session");
    let report = report_where(&cp, 0, "the TCP session is reported", |r| {
        r.endpoint("db") == Some((1, 0, 0))
    })
    .await;
    assert_eq!(report.report.interval_ms, 60_000);
    assert_eq!(report.report.cached, ["db"]);
    drop(tcp);
    eventually("the TCP session ended", WITHIN, || async {
        (gw.metric("gateway_sessions_active", "").await == 0.0).then_some(())
    })
    .await;

    // Through the pooler too: activity is per endpoint, without -pooler.
    let before = cp.reports().len();
    let ws = ws_session(&gw, "db-pooler", "postgres")
        .await
        .expect("WebSocket session");
    let report = report_where(&cp, before, "the WebSocket session is reported", |r| {
        r.endpoint("db")
            .is_some_and(|(sessions, _, _)| sessions == 1)
    })
    .await;
    assert_eq!(report.report.cached, ["db"], "db and db-pooler, once");
    assert!(report
        .report
        .endpoints
        .iter()
        .all(|e| e.endpoint_id == "db"));
    assert_eq!(select_one(&ws).await, 1);
    drop(ws);
    gw.stop().await;
}

#[tokio::test]
async fn http_queries_are_in_flight_while_they_run_and_idle_time_grows_after() {
    let cp = FakeControlPlane::start().await;
    let gw = Arc::new(reporting(&cp, Duration::from_millis(100)).await);
    // The control plane refuses reports throughout: queries do not care, and what the
    // reports carried is sent again until one is delivered.
    cp.fail_activity(true);
    let running = {
        let gw = gw.clone();
        tokio::spawn(async move { sql(&gw, CONN, json!({"query": "SELECT pg_sleep(1)"})).await })
    };
    report_where(&cp, 0, "the query is reported in flight", |r| {
        r.endpoint("db") == Some((0, 1, 0))
    })
    .await;
    let (status, body) = running.await.expect("query task");
    assert_eq!(status, 200, "{body}");

    // Ended: the failed reports keep carrying it, idle for longer each time.
    let ended = cp.reports().len();
    let idle = |r: &ReceivedReport| match r.endpoint("db") {
        Some((0, 0, idle_ms)) => Some(idle_ms),
        _ => None,
    };
    let first = report_where(&cp, ended, "a report after the end", |r| idle(r).is_some()).await;
    let first_idle = idle(&first).expect("idle");
    let later = report_where(&cp, ended, "a later report", |r| {
        r.at > first.at && idle(r).is_some()
    })
    .await;
    assert!(!first.delivered && !later.delivered);
    assert!(
        idle(&later).expect("idle") > first_idle,
        "{first_idle} then {:?}",
        idle(&later)
    );
    assert!(
        gw.metric("gateway_activity_reports_total", "outcome=\"error\"")
            .await
            >= 2.0
    );

    // Delivered at last, then no longer reported (the route stays cached).
    cp.fail_activity(false);
    let delivered = report_where(&cp, ended, "a delivered report", |r| r.delivered).await;
    assert!(idle(&delivered).expect("idle") > first_idle);
    let after = cp.reports().len();
    let quiet = report_where(&cp, after, "a report after the delivered one", |r| {
        r.delivered
    })
    .await;
    assert!(quiet.report.endpoints.is_empty(), "{:?}", quiet.report);
    assert_eq!(quiet.report.cached, ["db"]);
    Arc::try_unwrap(gw).ok().expect("sole owner").stop().await;
}

/// The five counters of `usage` (`/usage` or the control plane's), in one order.
fn counters(usage: &serde_json::Value) -> [Option<u64>; 5] {
    [
        "ingress_bytes",
        "egress_bytes",
        "queries",
        "sessions",
        "connections",
    ]
    .map(|name| usage[name].as_u64())
}

#[tokio::test]
async fn usage_reaches_the_control_plane_once_whatever_its_outages() {
    let cp = FakeControlPlane::start().await;
    let gw = reporting(&cp, Duration::from_millis(100)).await;
    // Down from the start: the traffic is counted all the same.
    cp.fail_activity(true);
    let pooler = conn("db-pooler", "postgres");
    for (conn, body) in [
        (CONN, json!({"query": "SELECT 1"})),
        (
            &pooler[..],
            json!({"queries": [{"query": "SELECT 1"}, {"query": "SELECT 2"}]}),
        ),
    ] {
        let (status, body) = sql(&gw, conn, body).await;
        assert_eq!(status, 200, "{body}");
    }
    let session = tcp_session(&gw, "db-pooler", "postgres")
        .await
        .expect("TCP session");
    assert_eq!(select_one(&session).await, 1); // one Execute
    session.batch_execute("SELECT 2").await.expect("a Query");
    drop(session);
    eventually("the session ended", WITHIN, || async {
        (gw.metric("gateway_sessions_active", "").await == 0.0).then_some(())
    })
    .await;
    let failed = report_where(&cp, 0, "a failed report with usage", |r| {
        !r.delivered && r.report.usage.is_some()
    })
    .await;
    report_where(&cp, 0, "the same batch again", |r| {
        r.at > failed.at && r.report.usage == failed.report.usage
    })
    .await;

    // Back: whatever was counted arrives, once, under `db`.
    cp.fail_activity(false);
    let counted = gw.usage().await["endpoints"]["db"].clone();
    assert_eq!(
        counters(&counted)[2..],
        [Some(5), Some(1), Some(3)],
        "queries (1 + 2 over HTTP, an Execute and a Query), one session, connections (db and \
         db-pooler pooled apart, and the session's): {counted}"
    );
    eventually("the control plane stored all of it", WITHIN, || async {
        let stored = serde_json::to_value(cp.usage()).expect("JSON");
        (counters(&stored["db"]) == counters(&counted)).then_some(())
    })
    .await;
    assert_eq!(cp.usage().keys().collect::<Vec<_>>(), ["db"]);
    // Every batch the gateway sent (several times each while the control plane was down) was
    // stored, once: more ids for the same traffic would have counted it twice.
    let sent: std::collections::BTreeSet<String> = cp
        .reports()
        .iter()
        .filter_map(|r| Some(r.report.usage.as_ref()?.report_id.clone()))
        .collect();
    assert_eq!(sent, cp.usage_ids().into_iter().collect());
    assert!(
        gw.metric("gateway_usage_reports_total", "outcome=\"failed\"")
            .await
            >= 2.0
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_inactive_reply_drops_routes_and_idle_connections() {
    let cp = FakeControlPlane::start().await;
    let gw = reporting(&cp, Duration::from_millis(100)).await;
    let query = json!({"query": "SELECT 1"});
    for conn in [CONN, &conn("db-pooler", "postgres"), CONN] {
        let (status, body) = sql(&gw, conn, query.clone()).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(cp.wakes(), 2, "db and db-pooler, then warm");
    eventually("two idle connections", WITHIN, || async {
        (gw.metric("gateway_pool_idle_connections", "").await == 2.0).then_some(())
    })
    .await;
    report_where(&cp, 0, "db is cached", |r| {
        r.delivered && r.report.cached == ["db"]
    })
    .await;

    // The wake service suspended db.
    cp.set_inactive(&["db"]);
    eventually("routes and connections dropped", WITHIN, || async {
        let drops = gw.metric("gateway_inactive_endpoint_drops_total", "").await;
        let idle = gw.metric("gateway_pool_idle_connections", "").await;
        (drops >= 2.0 && idle == 0.0).then_some(())
    })
    .await;
    // Until the wake service says otherwise. Nothing is cached or busy now, so no report
    // follows: wait until the gateway has acted on every reply of the old kind.
    let answered_old_way = cp.set_inactive(&[]) as f64;
    eventually("every reply acted on", WITHIN, || async {
        let ok = gw
            .metric("gateway_activity_reports_total", "outcome=\"ok\"")
            .await;
        (ok >= answered_old_way).then_some(())
    })
    .await;

    // The next queries wake db and db-pooler again, on new connections.
    let misses = gw
        .metric("gateway_pool_checkouts_total", "outcome=\"miss\"")
        .await;
    for conn in [CONN, &conn("db-pooler", "postgres")] {
        let (status, body) = sql(&gw, conn, query.clone()).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(cp.wakes(), 4);
    assert_eq!(
        gw.metric("gateway_pool_checkouts_total", "outcome=\"miss\"")
            .await,
        misses + 2.0
    );
    gw.stop().await;
}

/// Three `/sql` requests at once, each holding its backend connection for half a second:
/// their statuses, and how long they took together.
async fn three_at_once(gw: &TestGateway) -> (Vec<u16>, Duration) {
    let started = Instant::now();
    let requests = (0..3).map(|_| sql(gw, CONN, json!({"query": "SELECT pg_sleep(0.5)"})));
    let statuses = futures_util::future::join_all(requests)
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    (statuses, started.elapsed())
}

#[tokio::test]
async fn the_control_planes_pool_cap_holds_the_backend_connections() {
    let pg = postgres();
    let backend = Forwarder::start(pg.address()).await;
    let cp = FakeControlPlane::start().await;
    cp.route("db", &backend.addr.to_string());
    cp.secret("db", "postgres", &pg.role_secret("postgres").await);
    // The compute's size allows 2, far below the gateway's own cap.
    cp.pool_max_conns("db", Some(2));
    let gw = TestGateway::builder()
        .control_plane(&cp)
        .config(|config| config.activity_interval = Some(Duration::from_millis(100)))
        .start()
        .await;

    // The third request waits for one of the two connections instead of opening a third.
    let (statuses, took) = three_at_once(&gw).await;
    assert_eq!(statuses, [200, 200, 200]);
    assert_eq!(backend.connections(), 2);
    assert!(took >= Duration::from_secs(1), "the third waited: {took:?}");

    // The compute grew: the next activity reply says so, and the cached route (which still
    // says 2) does not undo it.
    cp.pool_max_conns("db", Some(3));
    let replies = gw
        .metric("gateway_activity_reports_total", "outcome=\"ok\"")
        .await;
    eventually("two more replies acted on", WITHIN, || async {
        let ok = gw
            .metric("gateway_activity_reports_total", "outcome=\"ok\"")
            .await;
        (ok >= replies + 2.0).then_some(())
    })
    .await;
    // No reply can apply it again from here: only the later word winning keeps it.
    cp.fail_activity(true);
    let (statuses, took) = three_at_once(&gw).await;
    assert_eq!(statuses, [200, 200, 200]);
    assert_eq!(backend.connections(), 3, "two reused, one more opened");
    assert!(took < Duration::from_secs(1), "none waited: {took:?}");
    assert_eq!(cp.wakes(), 1);
    gw.stop().await;
}
