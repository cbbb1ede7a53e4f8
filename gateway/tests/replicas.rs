//! Two gateway replicas in front of one real wake service (in-process, `TestWakeService`, with
//! its real Postgres and PgBouncer compute for endpoint `db`): a CancelRequest works whichever
//! replica it reaches (the key names its replica, the other forwards it once over
//! `/internal/cancel`), keys nobody holds cancel nothing, and the internal endpoint takes only
//! requests signed with the key the replicas derive from their shared control-plane token.
//! Separate processes, SIGKILL, scale to zero, role changes and deletes across replicas are in
//! sdk-tests/test/replicas.test.js.

mod support;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use hmac::{Hmac, Mac};
use postgres_protocol::message::frontend;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::raw::Raw;
use support::{eventually, TestGateway, TestWakeService};

const USER: &[(&str, &str)] = &[("user", "postgres"), ("database", "main")];
const SLEEP: &str = "SELECT pg_sleep(30)";

/// A replica: reports every 100 ms, takes forwarded cancel requests at its admin listener,
/// whose address it is given, or finds itself (`--peer-addr auto`).
async fn replica(wake: &TestWakeService, auto: bool) -> TestGateway {
    let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let peer = match auto {
        true => "auto".to_owned(),
        false => admin.local_addr().expect("addr").to_string(),
    };
    let config = TestGateway::builder()
        .wake_service(wake)
        .config(|config| {
            config.activity_interval = Some(Duration::from_millis(100));
            config.cancels.peer_address = Some(peer);
        })
        .build();
    TestGateway::serve_on(config, public, admin)
}

/// A session through `gw`, logged in: the client and the key the gateway gave it.
async fn session(gw: &TestGateway) -> (Raw<TcpStream>, i32, i32) {
    let mut raw = Raw::new(TcpStream::connect(gw.addr).await.expect("connect"));
    let login = raw.login(USER, "postgres").await.expect("login");
    (raw, login.process_id, login.secret_key)
}

/// A CancelRequest to `gw`; the gateway answers nothing and closes.
async fn cancel(gw: &TestGateway, process_id: i32, secret_key: i32) {
    let mut buf = BytesMut::new();
    frontend::cancel_request(process_id, secret_key, &mut buf);
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    stream.write_all(&buf).await.expect("send");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("closed");
    assert!(rest.is_empty(), "a CancelRequest gets no reply");
}

/// Starts `SELECT pg_sleep(30)` on `victim` and waits until `watcher` sees it run.
async fn start_sleep(victim: &mut Raw<TcpStream>, watcher: &mut Raw<TcpStream>) {
    let mut out = BytesMut::new();
    frontend::query(SLEEP, &mut out).expect("query");
    victim.send(&out).await;
    let query = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '{SLEEP}'"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while watcher.query(&query).await.expect("activity") != ["1"] {
        assert!(Instant::now() < deadline, "the query to cancel never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long a cancel sent to `via` for the query running on `victim` takes to end it (57014).
async fn cancel_through(
    via: &TestGateway,
    victim: &mut Raw<TcpStream>,
    (process_id, secret_key): (i32, i32),
) -> Duration {
    let started = Instant::now();
    cancel(via, process_id, secret_key).await;
    let error = tokio::time::timeout(Duration::from_secs(10), victim.read_result())
        .await
        .expect("the query ends well before its 30 s")
        .expect_err("cancelled");
    assert_eq!(error[&'C'], "57014", "{error:?}");
    started.elapsed()
}

fn tag(process_id: i32) -> i32 {
    process_id >> 23
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_request_reaches_its_session_through_either_replica() {
    let wake = TestWakeService::start().await;
    let a = replica(&wake, true).await;
    let b = replica(&wake, false).await;
    for gw in [&a, &b] {
        eventually(
            "each replica knows the other",
            Duration::from_secs(15),
            || async { (gw.metric("gateway_peers", "").await == 1.0).then_some(()) },
        )
        .await;
    }

    // A query through A, cancelled through B; then one through B, cancelled through A.
    let (mut on_a, pid_a, secret_a) = session(&a).await;
    let (mut on_b, pid_b, secret_b) = session(&b).await;
    // The tags are random: equal ones (1 in 256) change nothing but the hop's target count.
    start_sleep(&mut on_a, &mut on_b).await;
    let via_b = cancel_through(&b, &mut on_a, (pid_a, secret_a)).await;
    start_sleep(&mut on_b, &mut on_a).await;
    let via_a = cancel_through(&a, &mut on_b, (pid_b, secret_b)).await;
    println!(
        "cancel through the other replica: {via_b:?} (A's query via B), {via_a:?} (B's via A)"
    );
    for (gw, name) in [(&a, "A"), (&b, "B")] {
        let count = |labels| gw.metric("gateway_cancel_requests_total", labels);
        assert_eq!(count("outcome=\"peer\"").await, 1.0, "{name} forwarded one");
        let received = |labels| gw.metric("gateway_peer_cancel_requests_total", labels);
        assert_eq!(
            received("outcome=\"forwarded\"").await,
            1.0,
            "{name} took one"
        );
    }
    // The sessions go on after a cancel.
    assert_eq!(on_a.query("SELECT 1").await.expect("query"), ["1"]);

    // A's pid with a wrong secret, through B: forwarded, nothing cancelled anywhere.
    start_sleep(&mut on_a, &mut on_b).await;
    cancel(&b, pid_a, secret_a.wrapping_add(1)).await;
    let others = (0..256).find(|t| ![tag(pid_a), tag(pid_b)].contains(t));
    let nobody = (others.expect("a free tag") << 23) | 1;
    // A tag no replica has: not forwarded at all.
    cancel(&b, nobody, 1).await;
    cancel(&b, -5, 1).await;
    assert_eq!(
        b.metric("gateway_cancel_requests_total", "outcome=\"peer_no_match\"")
            .await,
        1.0
    );
    assert_eq!(
        b.metric("gateway_cancel_requests_total", "outcome=\"no_match\"")
            .await,
        2.0
    );
    assert_eq!(
        a.metric("gateway_peer_cancel_requests_total", "outcome=\"no_match\"")
            .await,
        1.0
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '{SLEEP}'"
    );
    assert_eq!(
        on_b.query(&still).await.expect("activity"),
        ["1"],
        "still running"
    );
    cancel(&a, pid_a, secret_a).await;
    assert_eq!(
        on_a.read_result().await.expect_err("cancelled")[&'C'],
        "57014"
    );

    internal_endpoint_takes_only_signed_requests(&a, wake.proxy_token()).await;
    drop((on_a, on_b));
    a.stop().await;
    b.stop().await;
    wake.stop().await;
}

/// `POST /internal/cancel` without the peer key, or with a bad body, is refused before any
/// lookup; with it, an unknown key is answered `cancelled: false`.
async fn internal_endpoint_takes_only_signed_requests(gw: &TestGateway, token: &str) {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("any key length");
    mac.update(b"gateway peer cancel v1");
    let key: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let url = format!("http://{}/internal/cancel", gw.admin);
    let body = serde_json::json!({"process_id": 12345, "secret_key": 1, "client_ip": "127.0.0.1"});
    let client = reqwest::Client::new();
    let post = |auth: Option<String>, body: String| {
        let mut request = client.post(&url).body(body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        async move {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            (status, response.text().await.expect("body"))
        }
    };
    let before = gw
        .metric("gateway_peer_cancel_requests_total", "outcome=\"no_match\"")
        .await;
    for auth in [
        None,
        Some(format!("Bearer {token}")),
        Some(format!("Bearer {}", &key[1..])),
    ] {
        assert_eq!(post(auth, body.to_string()).await.0, 401);
    }
    assert_eq!(
        post(Some(format!("Bearer {key}")), "{}".into()).await.0,
        400
    );
    let (status, answer) = post(Some(format!("Bearer {key}")), body.to_string()).await;
    assert_eq!((status, answer.as_str()), (200, r#"{"cancelled":false}"#));
    let count = |labels| gw.metric("gateway_peer_cancel_requests_total", labels);
    assert_eq!(count("outcome=\"unauthorized\"").await, 3.0);
    assert_eq!(count("outcome=\"invalid\"").await, 1.0);
    assert_eq!(count("outcome=\"no_match\"").await, before + 1.0);
}
