//! Hostile clients against a real gateway and Postgres 15: each test performs one attack from
//! issue 13 and checks that the gateway refuses it with a clear error and a counted limit,
//! while well-behaved clients keep being served.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use postgres_protocol::message::frontend;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use gateway::WsStream;
use support::raw::{fields, server_name, test_ca, Raw};
use support::{sql, FakeControlPlane, TestGateway, CONN};

/// How long any single step may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(10);

const USER: &[(&str, &str)] = &[("user", "postgres"), ("database", "main")];

fn startup_bytes(params: &[(&str, &str)]) -> BytesMut {
    let mut out = BytesMut::new();
    frontend::startup_message(params.iter().copied(), &mut out).expect("startup");
    out
}

/// A TCP connection to `to` from the loopback address `from` (127.0.0.2 plays another client).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a loopback source address");
    socket.connect(to).await.expect("connect")
}

/// Reads until the peer closes (or errors); panics if it does not within [`HANG`]. Returns
/// what was read.
async fn read_to_close(stream: &mut (impl AsyncRead + Unpin), what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(HANG, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("{what}: the gateway did not close the connection within {HANG:?}"),
        }
    }
}

async fn select_one(gw: &TestGateway) -> (u16, serde_json::Value) {
    tokio::time::timeout(HANG, sql(gw, CONN, json!({"query": "SELECT 1 AS one"})))
        .await
        .expect("a well-behaved request hung")
}

// --- before the first request ----------------------------------------------------------

/// `PRI` and stall: hyper's own HTTP/2 detection would wait for the rest of the preface
/// forever, so enough such connections locked everyone out.
#[tokio::test]
async fn connections_that_stall_before_their_first_request_are_closed() {
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| c.sessions.handshake_timeout = Duration::from_secs(1))
        .start()
        .await;
    let mut stalled = Vec::new();
    for prefix in [
        &b"PRI * HTTP/2.0\r\n"[..],
        b"P",
        b"POST /sql HTTP/1.1\r\n",
        b"",
    ] {
        for _ in 0..5 {
            let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
            tcp.write_all(prefix).await.expect("prefix");
            stalled.push(tcp);
        }
    }
    // Postgres startups and TLS handshakes that stall, too.
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    tcp.write_all(&[0, 0, 0, 80]).await.expect("half a length");
    stalled.push(tcp);
    for (i, tcp) in stalled.iter_mut().enumerate() {
        read_to_close(tcp, &format!("stalled connection {i}")).await;
    }
    let timeouts = gw
        .metric(
            "gateway_limit_hits_total",
            "limit=\"first_request_timeout\"",
        )
        .await;
    assert!(timeouts >= 21.0, "first_request_timeout counted {timeouts}");
    assert_eq!(select_one(&gw).await.0, 200);
}

/// An HTTP/2 connection that finishes its preface and then does nothing, or stops after its
/// requests, is closed with GOAWAY after the idle timeout; one in use is not.
#[tokio::test]
async fn idle_http2_connections_are_closed() {
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| {
            c.sessions.handshake_timeout = Duration::from_secs(1);
            c.http.idle_timeout = Duration::from_secs(1);
        })
        .start()
        .await;
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    // An empty SETTINGS frame.
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("settings");
    let got = read_to_close(&mut tcp, "idle HTTP/2 connection").await;
    // The server's frames end with a GOAWAY (type 7).
    assert!(h2_frame_types(&got).contains(&7), "no GOAWAY in {got:?}");

    // A real HTTP/2 client is served, and its connection closed once idle.
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    for _ in 0..3 {
        let response = support::driver_request(&client, &gw, CONN)
            .body(json!({"query": "SELECT 1"}).to_string())
            .send()
            .await
            .expect("HTTP/2 request");
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), 200);
    }
    support::eventually("the idle HTTP/2 connection closed", HANG, || async {
        let idle = gw
            .metric("gateway_limit_hits_total", "limit=\"http_idle_timeout\"")
            .await;
        (idle >= 1.0).then_some(())
    })
    .await;
}

/// The frame types in a run of HTTP/2 frames.
fn h2_frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = bytes.get(9 + len..).unwrap_or_default();
    }
    types
}

// --- /sql bodies -----------------------------------------------------------------------

/// A body sent a byte at a time gets 408 at the body read deadline.
#[tokio::test]
async fn trickled_bodies_get_408() {
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| c.http.body_read_timeout = Duration::from_secs(1))
        .start()
        .await;
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let head = format!(
        "POST /sql HTTP/1.1\r\nhost: x\r\nneon-connection-string: {CONN}\r\ncontent-length: 100000\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    let (mut read, mut write) = tcp.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if write.write_all(b" ").await.is_err() {
                return;
            }
            // Not synchronisation: this is the trickle (a byte every 100 ms) under test.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let answer =
        String::from_utf8_lossy(&read_to_close(&mut read, "trickled body").await).into_owned();
    trickle.abort();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("the request body did not arrive within 1 seconds"),
        "{answer}"
    );
    assert_eq!(
        gw.metric("gateway_limit_hits_total", "limit=\"body_read_timeout\"")
            .await,
        1.0
    );
}

/// With a control plane, a wrong password is refused before any of the body is parsed: a
/// malformed (or huge) body is not even looked at.
#[tokio::test]
async fn bodies_are_not_parsed_before_the_password_is_checked() {
    let pg = support::postgres();
    let cp = FakeControlPlane::start().await;
    cp.route("db", &pg.address());
    cp.secret("db", "postgres", &pg.role_secret("postgres").await);
    let gw = TestGateway::builder().control_plane(&cp).start().await;
    let wrong = "postgres://postgres:wrong@db.localtest.me/main";
    let client = reqwest::Client::new();
    // 10 MiB of `[0,0,0,…]` would have become ~300 MB of JSON values.
    let mut huge = String::from("{\"query\":\"SELECT 1\",\"params\":[0");
    huge.push_str(&",0".repeat(5 * 1024 * 1024 - 20));
    huge.push_str("]}");
    for body in ["not JSON at all".to_owned(), huge] {
        let response = support::driver_request(&client, &gw, wrong)
            .body(body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 400);
        let error: serde_json::Value = response.json().await.expect("JSON");
        assert_eq!(
            error["message"],
            "password authentication failed for user 'postgres'"
        );
    }
    // With the right password the same body is parsed, without a value tree, and refused for
    // what it is.
    let mut too_many = String::from("{\"query\":\"SELECT 1\",\"params\":[\"\"");
    too_many.push_str(&",\"\"".repeat(70_000));
    too_many.push_str("]}");
    let response = support::driver_request(&client, &gw, CONN)
        .body(too_many)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 400);
    let error: serde_json::Value = response.json().await.expect("JSON");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.starts_with("invalid request body: too many parameters (max is 65535)"),
        "{message}"
    );
}

// --- responses -------------------------------------------------------------------------

/// Rows with no columns, or one NULL, cost their handle against the response budget: a flood
/// of them gets 507 after the budget's worth, not after hundreds of millions of handles.
#[tokio::test]
async fn zero_column_and_null_rows_are_charged_against_the_response_budget() {
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| c.http.max_response_bytes = 1024 * 1024)
        .start()
        .await;
    // 100 000 rows render as ~300 KB (`[],` or `[null],` each) in array mode: under the byte
    // limit, so only their handles' cost refuses them.
    for query in [
        "SELECT FROM generate_series(1, 100000)",
        "SELECT NULL FROM generate_series(1, 100000)",
    ] {
        let client = reqwest::Client::new();
        let response = support::driver_request(&client, &gw, CONN)
            .body(json!({ "query": query }).to_string())
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 507, "{query}");
        let error: serde_json::Value = response.json().await.expect("JSON");
        assert_eq!(
            error["message"], "response is too large (max is 1048576 bytes)",
            "{query}"
        );
    }
    // The flood itself: hundreds of millions of rows stop at the budget, at once. (The series
    // is in the select list, so Postgres streams it instead of materializing it first.)
    let (status, _) = tokio::time::timeout(
        HANG,
        sql(
            &gw,
            CONN,
            json!({"query": "SELECT FROM (SELECT generate_series(1, 300000000)) AS s"}),
        ),
    )
    .await
    .expect("the zero-column flood was cut off");
    assert_eq!(status, 507);
    assert_eq!(
        gw.metric("gateway_limit_hits_total", "limit=\"response_size\"")
            .await,
        3.0
    );
    assert_eq!(select_one(&gw).await.0, 200);

    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| c.http.max_response_rows = 1000)
        .start()
        .await;
    let (status, error) = sql(
        &gw,
        CONN,
        json!({"query": "SELECT 1 FROM generate_series(1, 1001)"}),
    )
    .await;
    assert_eq!(status, 507);
    assert_eq!(error["message"], "response has too many rows (max is 1000)");
    let (status, body) = sql(
        &gw,
        CONN,
        json!({"query": "SELECT 1 FROM generate_series(1, 1000)"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["rows"].as_array().map(Vec::len), Some(1000));
}

// --- connection slots ------------------------------------------------------------------

/// A WebSocket session keeps its connection's place under the cap for as long as it lives
/// (it used to give it back at the upgrade), and a client over the cap is told why.
#[tokio::test]
async fn websocket_sessions_count_against_the_connection_cap() {
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| c.clients.max_connections = 3)
        .start()
        .await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let mut ws = websocket(&gw).await;
        ws.login(USER, "postgres").await.expect("login");
        sessions.push(ws);
    }
    // Over the cap: an HTTP client hears 429 with the driver's JSON error.
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    tcp.write_all(b"POST /sql HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .expect("request");
    let answer = String::from_utf8_lossy(&read_to_close(&mut tcp, "refused").await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains(
            "\"message\":\"too many connections to the gateway; please try again later\""
        ),
        "{answer}"
    );
    // A Postgres client hears FATAL 53300.
    let mut tcp = Raw::new(TcpStream::connect(gw.addr).await.expect("connect"));
    tcp.send(&startup_bytes(USER)).await;
    let error = tokio::time::timeout(HANG, tcp.error())
        .await
        .expect("FATAL");
    assert_eq!(error[&'C'], "53300");
    // The sessions still work; closing one frees a place.
    for ws in &mut sessions {
        assert_eq!(
            ws.query("SELECT 'still here'").await.expect("q"),
            ["still here"]
        );
    }
    drop(sessions.pop());
    support::eventually("a place is free again", HANG, || async {
        let mut ws = websocket_or_none(&gw).await?;
        ws.login(USER, "postgres").await.ok()
    })
    .await;
    assert!(
        gw.metric("gateway_limit_hits_total", "limit=\"client_connections\"")
            .await
            >= 2.0
    );
}

/// One client address cannot take every connection: past its own limit it is refused, and
/// other addresses are still served.
#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| {
            c.clients.max_connections_per_ip = 10;
            c.sessions.handshake_timeout = Duration::from_secs(30);
        })
        .start()
        .await;
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut tcp = connect_from([127, 0, 0, 2], gw.addr).await;
        tcp.write_all(b"PRI").await.expect("stall");
        held.push(tcp);
    }
    let mut refused = connect_from([127, 0, 0, 2], gw.addr).await;
    refused
        .write_all(b"POST /sql HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .expect("request");
    let answer =
        String::from_utf8_lossy(&read_to_close(&mut refused, "over the limit").await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains("too many connections from this IP address"),
        "{answer}"
    );
    // 127.0.0.1 is another client.
    assert_eq!(select_one(&gw).await.0, 200);
    assert_eq!(
        gw.metric("gateway_limit_hits_total", "limit=\"connections_per_ip\"")
            .await,
        1.0
    );
}

// --- WebSocket handshake ---------------------------------------------------------------

async fn websocket_stream(gw: &TestGateway) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let url = format!("ws://{}/v2", gw.addr);
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let (ws, response) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("WebSocket upgrade");
    assert_eq!(response.status(), 101);
    ws
}

async fn websocket(gw: &TestGateway) -> Raw<WsStream<TcpStream>> {
    Raw::new(WsStream::new(websocket_stream(gw).await))
}

async fn websocket_or_none(gw: &TestGateway) -> Option<Raw<WsStream<TcpStream>>> {
    let url = format!("ws://{}/v2", gw.addr);
    let tcp = TcpStream::connect(gw.addr).await.ok()?;
    let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.ok()?;
    Some(Raw::new(WsStream::new(ws)))
}

/// A huge message before the session is ready draws on the shared handshake pool, and is cut
/// off when the pool runs dry, instead of being buffered whole (up to 64 MiB) for a client
/// nobody authenticated. A large first query pipelined with the startup (as the driver sends
/// it) is still served.
#[tokio::test]
async fn oversized_websocket_messages_during_the_handshake_are_bounded() {
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| c.clients.max_handshake_bytes = 128 * 1024)
        .start()
        .await;
    let mut ws = websocket_stream(&gw).await;
    // A binary frame announcing 60 MiB, of which 256 KiB are sent: past the client's own 64
    // KiB and the whole pool's 128 KiB, far short of the message.
    let len: u64 = 60 * 1024 * 1024;
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    let tcp = ws.get_mut();
    tcp.write_all(&frame).await.expect("frame header");
    let chunk = vec![0u8; 16 * 1024];
    for _ in 0..16 {
        if tcp.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let mut fatal = None;
    loop {
        match tokio::time::timeout(HANG, ws.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) => {
                if data.first() == Some(&b'E') {
                    fatal = Some(fields(&data[5..]));
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(None | Some(Err(_))) => break,
            Err(_) => panic!("the gateway kept reading the oversized handshake message"),
        }
    }
    let fatal = fatal.expect("a FATAL before the close");
    assert_eq!(fatal[&'C'], "53300");
    assert!(
        fatal[&'M'].contains("too much data is waiting for authentication"),
        "{fatal:?}"
    );
    assert_eq!(
        gw.metric(
            "gateway_limit_hits_total",
            "limit=\"handshake_message_bytes\""
        )
        .await,
        1.0
    );
    // The pool came back when the session ended: the driver's way, startup, password and a
    // 100 KiB query in one message, is served.
    let big = "x".repeat(100 * 1024);
    let mut message = startup_bytes(USER);
    frontend::password_message(b"postgres", &mut message).expect("password");
    frontend::query(&format!("SELECT length('{big}')"), &mut message).expect("query");
    let mut ws = websocket_stream(&gw).await;
    futures_util::SinkExt::send(&mut ws, Message::Binary(message.freeze()))
        .await
        .expect("send");
    let mut raw = Raw::new(WsStream::new(ws));
    // Authentication up to the handshake's ReadyForQuery, then the query's answer.
    let handshake = tokio::time::timeout(HANG, raw.read_result()).await;
    assert_eq!(handshake.expect("the handshake ended"), Ok(vec![]));
    assert_eq!(
        tokio::time::timeout(HANG, raw.read_result())
            .await
            .expect("the pipelined query was answered")
            .expect("no error"),
        ["102400"]
    );
    // And after the handshake, large messages do not count at all.
    let mut ws = websocket(&gw).await;
    ws.login(USER, "postgres").await.expect("login");
    let big = "x".repeat(1024 * 1024);
    let rows = ws
        .query(&format!("SELECT length('{big}')"))
        .await
        .expect("a 1 MiB query after the handshake");
    assert_eq!(rows, ["1048576"]);
}

// --- per-endpoint limits ---------------------------------------------------------------

/// One endpoint's sessions and requests are capped, at once and per second; other endpoints
/// are not affected, and clients that fail to authenticate spend none of it.
#[tokio::test]
async fn endpoints_are_limited_apart() {
    let pg = support::postgres();
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| {
            c.endpoint_limits.max_connections = 2;
            c.routes
                .push(format!("other={}", pg.address()).parse().expect("route"));
        })
        .start()
        .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut ws = websocket(&gw).await;
        ws.login(USER, "postgres").await.expect("login");
        held.push(ws);
    }
    // Wrong passwords are refused for what they are, and count nothing.
    for _ in 0..5 {
        let mut ws = websocket(&gw).await;
        let error = ws.login(USER, "wrong").await.expect_err("wrong password");
        assert_eq!(error[&'C'], "28P01");
    }
    let mut third = websocket(&gw).await;
    let error = third
        .login(USER, "postgres")
        .await
        .expect_err("over the cap");
    assert_eq!(error[&'C'], "53300");
    assert!(
        error[&'M'].contains("too many connections to this endpoint"),
        "{error:?}"
    );
    let (status, error) = sql(&gw, CONN, json!({"query": "SELECT 1"})).await;
    assert_eq!(status, 429);
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("too many connections to this endpoint")),
        "{error}"
    );
    // Another endpoint is served.
    let other = "postgres://postgres:postgres@other.localtest.me/main";
    assert_eq!(sql(&gw, other, json!({"query": "SELECT 1"})).await.0, 200);
    drop(held.pop());
    support::eventually("the endpoint has room again", HANG, || async {
        (sql(&gw, CONN, json!({"query": "SELECT 1"})).await.0 == 200).then_some(())
    })
    .await;

    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| c.endpoint_limits.max_rps = Some(5))
        .start()
        .await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(sql(&gw, CONN, json!({"query": "SELECT 1"})).await.0);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses[..5].iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        gw.metric("gateway_limit_hits_total", "limit=\"endpoint_rate\"")
            .await
            >= 1.0
    );
}

// --- TLS -------------------------------------------------------------------------------

/// With `--require-tls`, plaintext HTTP, `ws://` and Postgres without TLS are refused with a
/// clear error; the same clients over TLS are served.
#[tokio::test]
async fn require_tls_refuses_plaintext() {
    let ca = test_ca();
    let files = ca.files();
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(move |c| {
            c.tls = Some(files);
            c.clients.require_tls = true;
        })
        .start()
        .await;
    let (status, error) = sql(&gw, CONN, json!({"query": "SELECT 1"})).await;
    assert_eq!(status, 403);
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("requires TLS")),
        "{error}"
    );
    let url = format!("ws://{}/v2", gw.addr);
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    // Refused with 403 (README: `ws://` gets 403), not merely dropped.
    match tokio_tungstenite::client_async(url, tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403, "{response:?}");
        }
        Err(other) => panic!("ws:// was not answered 403: {other}"),
        Ok(_) => panic!("ws:// was upgraded"),
    }

    let mut tcp = Raw::new(TcpStream::connect(gw.addr).await.expect("connect"));
    tcp.send(&startup_bytes(USER)).await;
    let error = tokio::time::timeout(HANG, tcp.error())
        .await
        .expect("FATAL");
    assert_eq!(error[&'C'], "28000");
    assert!(error[&'M'].contains("requires TLS"), "{error:?}");

    // SSLRequest, then TLS: served.
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .expect("SSLRequest");
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"S");
    let tls = ca
        .connector(&[])
        .connect(server_name("db.localtest.me"), tcp)
        .await
        .expect("TLS");
    let mut raw = Raw::new(tls);
    raw.login(USER, "postgres").await.expect("login over TLS");
    assert_eq!(raw.query("SELECT 'tls'").await.expect("query"), ["tls"]);
    // https: served.
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let mut tls = ca
        .connector(&[b"http/1.1"])
        .connect(server_name("db.localtest.me"), tcp)
        .await
        .expect("TLS");
    let body = json!({"query": "SELECT 1"}).to_string();
    let request = format!(
        "POST /sql HTTP/1.1\r\nhost: db.localtest.me\r\nneon-connection-string: {CONN}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.expect("request");
    let answer = String::from_utf8_lossy(&read_to_close(&mut tls, "https").await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        gw.metric("gateway_limit_hits_total", "limit=\"tls_required\"")
            .await
            >= 3.0
    );
}
