//! Endpoints from a control plane (a stand-in for the wake service's proxy API) in front of a
//! real Postgres 15: the warm path makes no control-plane calls, unknown endpoints and wrong
//! passwords are refused like today, an unavailable control plane is a clear retryable error
//! that does not touch warm endpoints, and a cached address that stops answering is replaced.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;

use gateway::retry::RetryConfig;
use gateway::websocket::WsStream;
use support::{postgres, sql, MockControlPlane, TestGateway, CONN};

fn conn(endpoint: &str, password: &str) -> String {
    format!("postgres://postgres:{password}@{endpoint}.localtest.me/main")
}

/// A plain TCP session (the backend's SCRAM relayed) for `endpoint`.
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

#[tokio::test]
async fn endpoints_come_from_the_control_plane_and_stay_warm() {
    let pg = postgres();
    let cp = MockControlPlane::start().await;
    cp.require_token("t0ken");
    cp.route("db", &pg.address());
    cp.route("db-pooler", &pg.address());
    cp.secret("db", "postgres", &pg.role_secret("postgres").await);
    let gw = TestGateway::with_control_plane(&cp.url, Some("t0ken"), |config| {
        config.route_cache.negative_ttl = Duration::from_millis(300);
    })
    .await;
    let query = json!({"query": "SELECT 1 AS one"});

    // Cold: one secret lookup and one wake.
    let (status, body) = sql(&gw, CONN, query.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((cp.lookups(), cp.wakes()), (1, 1));
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
    assert_eq!(cp.requests(), 2, "the warm path asked the control plane");
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
    // TCP still relays the backend's own SCRAM exchange.
    let error = tcp_session(&gw, "db", "wrong").await.expect_err("refused");
    assert!(sqlstate(&error).starts_with("28P01"), "{error}");

    // An unknown endpoint reads exactly like a wrong password, and is asked about once per
    // negative TTL however often it is tried.
    let (status, ghost) = sql(&gw, &conn("ghost", "postgres"), query.clone()).await;
    assert_eq!((status, &ghost), (400, &wrong));
    let before = cp.requests();
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
    assert_eq!(cp.requests(), before);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        sql(&gw, &conn("ghost", "postgres"), query.clone()).await.0,
        400
    );
    assert_eq!(cp.requests(), before + 1);

    // A role the control plane has no secret for: Postgres decides, as without one.
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

    // `db-pooler` is woken on its own, but shares `db`'s role secrets.
    let lookups = cp.lookups();
    let (status, body) = sql(&gw, &conn("db-pooler", "postgres"), query.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cp.lookups(), lookups);
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
}

#[tokio::test]
async fn an_unavailable_control_plane_fails_clearly_and_warm_endpoints_keep_working() {
    let pg = postgres();
    let cp = MockControlPlane::start().await;
    cp.route("db", &pg.address());
    cp.secret("db", "postgres", &pg.role_secret("postgres").await);
    let quick = RetryConfig {
        max_attempts: 3,
        base_delay: Duration::from_millis(20),
        factor: 2.0,
    };
    let gw = TestGateway::with_control_plane(&cp.url, None, |config| {
        config.route_cache.wake_retry = quick;
        // Every hit refreshes in the background: the refreshes fail while the control plane is
        // down, and the cached route must survive them.
        config.route_cache.refresh_after = Duration::ZERO;
    })
    .await;
    let query = json!({"query": "SELECT 1"});
    assert_eq!(sql(&gw, CONN, query.clone()).await.0, 200);

    cp.set_down(true);
    for _ in 0..5 {
        assert_eq!(sql(&gw, CONN, query.clone()).await.0, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
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

    // An endpoint that is not cached cannot be served: a 503 after the retries, not a hang.
    cp.route("cold", &pg.address());
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
    cp.set_down(false);
    let (status, body) = sql(&gw, &conn("cold", "postgres"), query.clone()).await;
    assert_eq!(status, 200, "{body}");
    drop((tcp, ws));
    gw.stop().await;

    // No control plane listening at all, and one that refuses the gateway's token: 503, and
    // the refusal is not retried.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let gw =
        TestGateway::with_control_plane(&format!("http://{closed}/proxy/api/v1"), None, |config| {
            config.route_cache.wake_retry = quick
        })
        .await;
    assert_eq!(sql(&gw, CONN, query.clone()).await.0, 503);
    gw.stop().await;
    cp.require_token("right");
    let gw = TestGateway::with_control_plane(&cp.url, Some("wrong"), |config| {
        config.route_cache.wake_retry = quick;
    })
    .await;
    let wakes = cp.wakes();
    assert_eq!(sql(&gw, CONN, query).await.0, 503);
    assert_eq!(cp.wakes(), wakes + 1);
    gw.stop().await;
}

/// Forwards TCP connections to `target` until the returned task is aborted, which also closes
/// every forwarded connection.
async fn forwarder(target: String) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut client, _)) = listener.accept().await {
            let target = target.clone();
            connections.spawn(async move {
                if let Ok(mut server) = TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (addr, task)
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
        let (old, forwarding) = forwarder(pg.address()).await;
        let cp = MockControlPlane::start().await;
        cp.route("db", &old.to_string());
        cp.secret("db", "postgres", &secret);
        let gw = TestGateway::with_control_plane(&cp.url, None, |_| {}).await;
        use_db(&gw, transport)
            .await
            .expect("through the old address");
        assert_eq!(cp.wakes(), 1);

        // The compute moves: the old address refuses connections, and the ones it had close
        // (pooled connections are found closed and discarded).
        forwarding.abort();
        let _ = forwarding.await;
        cp.route("db", &pg.address());
        tokio::time::sleep(Duration::from_millis(50)).await;

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
