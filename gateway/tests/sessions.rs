//! Sessions on the public port against a real Postgres 15: plain TCP (tokio-postgres and a raw
//! protocol client), the WebSocket tunnel, TLS after SSLRequest and direct TLS, cancel keys,
//! limits, drain, and bad input.

mod support;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use gateway::WsStream;
use support::raw::{fields, server_name, test_ca, Raw};
use support::{postgres, TestGateway};

const USER: &[(&str, &str)] = &[("user", "postgres"), ("database", "main")];

async fn tcp(gw: &TestGateway) -> Raw<TcpStream> {
    Raw::new(TcpStream::connect(gw.addr).await.expect("connect"))
}

type WsClient = WsStream<TcpStream>;

async fn websocket_stream(
    gw: &TestGateway,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let url = format!("ws://{}{path}", gw.addr);
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let (ws, response) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("WebSocket upgrade");
    assert_eq!(response.status(), 101);
    ws
}

async fn websocket(gw: &TestGateway, path: &str) -> Raw<WsClient> {
    Raw::new(WsStream::new(websocket_stream(gw, path).await))
}

fn startup_bytes(params: &[(&str, &str)]) -> BytesMut {
    let mut out = BytesMut::new();
    frontend::startup_message(params.iter().copied(), &mut out).expect("startup");
    out
}

// --- TCP -------------------------------------------------------------------------------

#[tokio::test]
async fn tcp_clients_authenticate_with_the_backends_scram() {
    let gw = TestGateway::builder().route_to_postgres("db").start().await;
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres password=postgres dbname=main \
         application_name=tcp-test options='-c search_path=public,pg_catalog'",
        gw.addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("connect through the gateway");
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT current_setting('application_name'), current_setting('search_path'), $1::int + 1",
            &[&41i32],
        )
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), "tcp-test");
    assert_eq!(row.get::<_, String>(1), "public,pg_catalog");
    assert_eq!(row.get::<_, i32>(2), 42);
    // Sessions are real sessions: prepared statements, temp tables and transactions persist.
    client
        .batch_execute("CREATE TEMP TABLE t(a int); BEGIN; INSERT INTO t VALUES (1)")
        .await
        .expect("session state");
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1);
    drop(client);

    // Over the raw protocol: the backend's SCRAM challenge is what the client answers.
    let mut raw = tcp(&gw).await;
    let login = raw.login(USER, "postgres").await.expect("login");
    assert!(login.process_id > 0);
    assert_eq!(login.params["server_version"].split('.').next(), Some("15"));
    assert_eq!(
        raw.query("SELECT 'hello'").await.expect("query"),
        vec!["hello"]
    );
    drop(raw);

    // Wrong password, unknown role, unknown endpoint: one answer.
    let mut answers = Vec::new();
    for (params, password) in [
        (USER.to_vec(), "wrong"),
        (vec![("user", "nobody"), ("database", "main")], "postgres"),
        (
            vec![
                ("user", "postgres"),
                ("database", "main"),
                ("options", "endpoint=nope"),
            ],
            "postgres",
        ),
    ] {
        let mut raw = tcp(&gw).await;
        let error = raw.login(&params, password).await.expect_err("refused");
        assert_eq!(error[&'C'], "28P01");
        answers.push((
            error[&'S'].clone(),
            error[&'M'].replace("nobody", "postgres"),
        ));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert_eq!(
        answers[0].1,
        "password authentication failed for user 'postgres'"
    );

    // Host and option must agree; a database that does not exist is Postgres's own error.
    let mut raw = tcp(&gw).await;
    let error = raw
        .login(
            &[
                ("user", "postgres"),
                ("database", "nodb"),
                ("options", "endpoint=db"),
            ],
            "postgres",
        )
        .await
        .expect_err("no such database");
    assert_eq!(error[&'C'], "3D000");

    let usage = gw.usage().await;
    assert!(usage["endpoints"]["db"]["ingress_bytes"].as_u64() > Some(0));
    assert!(usage["endpoints"]["db"]["egress_bytes"].as_u64() > Some(0));
    assert!(usage["endpoints"].get("nope").is_none());
    assert!(gw.metric("gateway_sessions_total", "outcome=\"ok\"").await >= 1.0);
    assert_eq!(
        gw.metric("gateway_sessions_total", "outcome=\"user\"")
            .await,
        3.0
    );
    drop(raw);
    gw.stop().await;
}

#[tokio::test]
async fn cancel_keys_are_the_gateways_and_reach_only_their_own_query() {
    let gw = TestGateway::builder().route_to_postgres("db").start().await;
    let mut victim = tcp(&gw).await;
    let login = victim.login(USER, "postgres").await.expect("login");
    let backend_pid: i32 = victim.query("SELECT pg_backend_pid()").await.expect("pid")[0]
        .parse()
        .expect("number");
    assert_ne!(
        login.process_id, backend_pid,
        "the backend's key stays hidden"
    );

    let mut out = BytesMut::new();
    frontend::query("SELECT pg_sleep(30)", &mut out).expect("query");
    victim.send(&out).await;
    let direct = postgres().client().await;
    support::eventually("the victim's query runs", Duration::from_secs(10), || async {
        let state: Option<String> = direct
            .query_opt(
                "SELECT state FROM pg_stat_activity WHERE pid = $1 AND query = 'SELECT pg_sleep(30)'",
                &[&backend_pid],
            )
            .await
            .expect("activity")
            .and_then(|r| r.get(0));
        (state.as_deref() == Some("active")).then_some(())
    })
    .await;

    let cancel = |pid: i32, secret: i32| {
        let mut buf = BytesMut::new();
        frontend::cancel_request(pid, secret, &mut buf);
        buf
    };
    // Wrong secret, and the backend's own pid: nothing happens.
    for (pid, secret) in [
        (login.process_id, login.secret_key.wrapping_add(1)),
        (backend_pid, login.secret_key),
    ] {
        let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
        stream.write_all(&cancel(pid, secret)).await.expect("send");
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.expect("closed");
        assert!(rest.is_empty(), "a CancelRequest gets no reply");
    }
    assert_eq!(
        gw.metric("gateway_cancel_requests_total", "no_match").await,
        2.0
    );
    let still_running: Vec<String> = {
        let direct = postgres().client().await;
        direct
            .query(
                "SELECT state FROM pg_stat_activity WHERE pid = $1",
                &[&backend_pid],
            )
            .await
            .expect("activity")
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(still_running, vec!["active"]);

    // The right key, over a WebSocket this time.
    let mut ws = websocket(&gw, "/v2").await;
    ws.send(&cancel(login.process_id, login.secret_key)).await;
    assert!(ws.recv().await.is_none());
    let error = victim.read_result().await.expect_err("cancelled");
    assert_eq!(error[&'C'], "57014");
    assert_eq!(
        gw.metric("gateway_cancel_requests_total", "forwarded")
            .await,
        1.0
    );
    // The session goes on after a cancel.
    assert_eq!(victim.query("SELECT 1").await.expect("query"), vec!["1"]);

    // tokio-postgres's own cancel path works too.
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres password=postgres dbname=main",
        gw.addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    support::eventually("the query to cancel runs", Duration::from_secs(10), || async {
        let running: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(30)'",
                &[],
            )
            .await
            .expect("activity")
            .get(0);
        (running == 1).then_some(())
    })
    .await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel");
    let error = sleeper.await.expect("task").expect_err("cancelled");
    assert_eq!(error.as_db_error().map(|e| e.code().code()), Some("57014"));
    drop((victim, ws));
    gw.stop().await;
}

// --- WebSocket -------------------------------------------------------------------------

#[tokio::test]
async fn pipelined_websocket_connect_gets_exactly_one_ready_for_query() {
    let gw = TestGateway::builder().route_to_postgres("db").start().await;
    let mut ws = websocket(&gw, "/v2?address=db.localtest.me:5432").await;
    // Startup, password and a query in one frame, before the server asks for anything.
    let mut frame = startup_bytes(USER);
    frontend::password_message(b"postgres", &mut frame).expect("pw");
    frontend::query("SELECT 'pipelined'", &mut frame).expect("query");
    ws.send(&frame).await;
    let mut tags = Vec::new();
    let mut row = None;
    while tags.iter().filter(|&&t| t == b'Z').count() < 2 {
        let (tag, body) = ws.recv().await.expect("message");
        if tag == b'D' {
            row = Some(String::from_utf8_lossy(&body[6..]).into_owned());
        }
        tags.push(tag);
    }
    assert_eq!(row.as_deref(), Some("pipelined"));
    let first_ready = tags.iter().position(|&t| t == b'Z').expect("ready");
    assert_eq!(
        &tags[..2],
        b"RR",
        "cleartext request, then AuthenticationOk"
    );
    assert_eq!(tags[first_ready - 1], b'K');
    assert!(tags[..first_ready].iter().all(|t| b"RSK".contains(t)));
    assert_eq!(&tags[first_ready + 1..], b"TDCZ");
    drop(ws);

    // Messages split across frames, and a frame holding several messages.
    let mut ws = websocket(&gw, "/v1").await;
    let startup = startup_bytes(USER);
    let (a, b) = startup.split_at(5);
    ws.send(a).await;
    ws.send(b).await;
    assert_eq!(ws.recv().await.map(|(t, _)| t), Some(b'R'));
    let mut pw = BytesMut::new();
    frontend::password_message(b"postgres", &mut pw).expect("pw");
    ws.send(&pw[..3]).await;
    ws.send(&pw[3..]).await;
    while ws.recv().await.expect("startup").0 != b'Z' {}
    let mut two = BytesMut::new();
    frontend::query("SELECT 1", &mut two).expect("q");
    frontend::query("SELECT 2", &mut two).expect("q");
    ws.send(&two).await;
    assert_eq!(ws.read_result().await.expect("first"), vec!["1"]);
    assert_eq!(ws.read_result().await.expect("second"), vec!["2"]);
    drop(ws);
    gw.stop().await;
}

#[tokio::test]
async fn websocket_endpoints_passwords_and_frames() {
    let gw = TestGateway::builder().route_to_postgres("db").start().await;
    // No address: the Host is an IP, so the default endpoint; the password hack names one.
    struct Case {
        path: &'static str,
        password: &'static str,
        logs_in: bool,
    }
    let cases = [
        Case {
            path: "/v2",
            password: "postgres",
            logs_in: true,
        },
        Case {
            path: "/v2",
            password: "endpoint=db;postgres",
            logs_in: true,
        },
        Case {
            path: "/v2",
            password: "endpoint=nope;postgres",
            logs_in: false,
        },
        Case {
            path: "/v2?address=nope.localtest.me:5432",
            password: "postgres",
            logs_in: false,
        },
        Case {
            path: "/any/path?address=localhost:5432",
            password: "postgres",
            logs_in: true,
        },
    ];
    for Case {
        path,
        password,
        logs_in,
    } in cases
    {
        let mut ws = websocket(&gw, path).await;
        let result = ws.login(USER, password).await;
        match (logs_in, result) {
            (true, Ok(_)) => assert_eq!(ws.query("SELECT 1").await.expect("q"), vec!["1"]),
            (false, Err(error)) => {
                assert_eq!(error[&'C'], "28P01");
                assert_eq!(
                    error[&'M'],
                    "password authentication failed for user 'postgres'"
                );
            }
            (logs_in, result) => {
                panic!("{path} {password}: expected logs_in={logs_in}, got {result:?}")
            }
        }
    }
    // Host and options disagreeing is an error before any password is asked.
    let mut ws = websocket(&gw, "/v2?address=db.localtest.me:5432").await;
    let error = ws
        .login(
            &[
                ("user", "postgres"),
                ("database", "main"),
                ("options", "endpoint=other"),
            ],
            "postgres",
        )
        .await
        .expect_err("inconsistent");
    assert!(error[&'M'].contains("inconsistent endpoint"), "{error:?}");

    // A text frame ends the session: a FATAL in a binary frame, then close code 1003.
    let mut ws = websocket_stream(&gw, "/v2").await;
    ws.send(Message::text("SELECT 1")).await.expect("send");
    let mut saw_error = false;
    let mut close = None;
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Binary(data) => {
                assert_eq!(data[0], b'E');
                let error = fields(&data[5..]);
                assert_eq!(error[&'C'], "08P01");
                assert!(error[&'M'].contains("text frames"), "{error:?}");
                saw_error = true;
            }
            Message::Close(frame) => close = frame.map(|f| f.code),
            _ => {}
        }
    }
    assert!(saw_error);
    assert_eq!(close, Some(CloseCode::Unsupported));

    // Pings are answered while a session is open.
    let mut ws = websocket_stream(&gw, "/v2").await;
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .expect("ping");
    match ws.next().await {
        Some(Ok(Message::Pong(data))) => assert_eq!(&data[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    // A plain GET without upgrade headers is not a tunnel.
    let response = reqwest::get(format!("http://{}/v2", gw.addr))
        .await
        .expect("GET");
    assert_eq!(response.status(), 400);
    assert!(
        gw.metric("gateway_sessions_total", "transport=\"ws\"")
            .await
            >= 6.0
    );
    drop(ws);
    gw.stop().await;
}

// --- bad input, limits, drain ------------------------------------------------------------

#[tokio::test]
async fn bad_input_is_refused_clearly() {
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| {
            c.sessions.handshake_timeout = Duration::from_secs(1);
            c.sessions.max_message_bytes = 4096;
        })
        .start()
        .await;
    async fn exchange(gw: &TestGateway, bytes: &[u8]) -> Vec<u8> {
        let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
        stream.write_all(bytes).await.expect("send");
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply))
            .await
            .expect("the gateway closes the connection")
            .ok();
        reply
    }
    let error_of = |reply: &[u8]| {
        assert_eq!(
            reply.first(),
            Some(&b'E'),
            "{:?}",
            String::from_utf8_lossy(reply)
        );
        fields(&reply[5..])
    };
    // Absurd, too small and too large length prefixes.
    for bytes in [
        &[0u8, 0xff, 0xff, 0xff, 0, 3, 0, 0][..],
        &[0, 0, 0, 4, 0, 3, 0, 0],
        &[0, 0, 0x27, 0x11, 0, 3, 0, 0],
    ] {
        let error = error_of(&exchange(&gw, bytes).await);
        assert_eq!(error[&'M'], "invalid length of startup packet");
        assert_eq!(error[&'C'], "08P01");
    }
    // An unknown protocol version, a missing user, a broken parameter list.
    let mut v2 = vec![0, 0, 0, 9, 0, 2, 0, 0, 0];
    let error = error_of(&exchange(&gw, &v2).await);
    assert_eq!(error[&'C'], "0A000");
    v2 = startup_bytes(&[("database", "main")]).to_vec();
    let error = error_of(&exchange(&gw, &v2).await);
    assert_eq!(error[&'C'], "28000");
    let error = error_of(&exchange(&gw, &[0, 0, 0, 13, 0, 3, 0, 0, b'u', 0, b'x', 0, b'y']).await);
    assert!(error[&'M'].contains("startup packet layout"), "{error:?}");
    // Truncated startup, and a client that says nothing: closed at the handshake timeout.
    let error = error_of(&exchange(&gw, &[0, 0, 0, 40, 0, 3, 0, 0, b'u']).await);
    assert_eq!(error[&'M'], "canceling authentication due to timeout");
    let mut silent = TcpStream::connect(gw.addr).await.expect("connect");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf))
        .await
        .expect("closed")
        .expect("read");
    assert!(buf.is_empty());
    // A ClientHello with no certificate configured, and HTTP garbage.
    assert!(exchange(&gw, &[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5])
        .await
        .is_empty());
    let reply = exchange(&gw, b"GARBAGE\r\n\r\n").await;
    assert!(
        reply.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
    // Not a password where a password is due; an oversized one.
    let mut ws = websocket(&gw, "/v2").await;
    ws.send(&startup_bytes(USER)).await;
    let mut q = BytesMut::new();
    frontend::query("SELECT 1", &mut q).expect("q");
    ws.send(&q).await;
    assert!(ws.error().await[&'M'].contains("expected password response"));
    let mut ws = websocket(&gw, "/v2").await;
    ws.send(&startup_bytes(USER)).await;
    ws.send(&[b'p', 0x7f, 0, 0, 0]).await;
    assert_eq!(ws.error().await[&'C'], "08P01");
    // A message over the session limit, after startup, ends the session.
    let mut raw = tcp(&gw).await;
    raw.login(USER, "postgres").await.expect("login");
    let mut big = BytesMut::new();
    frontend::query(&format!("SELECT '{}'", "x".repeat(5000)), &mut big).expect("q");
    raw.send(&big).await;
    let error = raw.error().await;
    assert!(
        error[&'M'].contains("exceeds the limit of 4096 bytes"),
        "{error:?}"
    );
    // Nothing is left behind.
    support::eventually("no session is left", Duration::from_secs(10), || async {
        (gw.metric("gateway_sessions_active", "").await == 0.0).then_some(())
    })
    .await;
    drop(raw);
    gw.stop().await;
}

#[tokio::test]
async fn idle_sessions_and_drains_end_with_a_fatal() {
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| {
            c.sessions.idle_timeout = Some(Duration::from_secs(1));
        })
        .start()
        .await;
    let mut raw = tcp(&gw).await;
    raw.login(USER, "postgres").await.expect("login");
    let error = raw.error().await;
    assert_eq!(error[&'C'], "57P05");
    assert!(raw.recv().await.is_none());
    assert_eq!(
        gw.metric("gateway_sessions_total", "outcome=\"idle_timeout\"")
            .await,
        1.0
    );
    gw.stop().await;

    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|c| c.shutdown_timeout = Duration::from_millis(500))
        .start()
        .await;
    let mut raw = websocket(&gw, "/v2").await;
    raw.login(USER, "postgres").await.expect("login");
    let stopping = tokio::spawn(gw.stop());
    let error = raw.error().await;
    assert_eq!(error[&'C'], "57P01");
    assert_eq!(
        error[&'M'],
        "terminating connection due to administrator command"
    );
    stopping.await.expect("the gateway stops");
}

#[tokio::test]
async fn tls_after_ssl_request_direct_tls_and_https_on_one_port() {
    let ca = test_ca();
    let files = ca.files();
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(move |c| c.tls = Some(files))
        .start()
        .await;

    // SSLRequest → 'S' → TLS with SNI naming the endpoint → the backend's SCRAM.
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
    assert_eq!(raw.query("SELECT 'tls'").await.expect("query"), vec!["tls"]);
    drop(raw);

    // Postgres 17 direct TLS: ALPN `postgresql`, no SSLRequest. SNI `localhost` names no
    // endpoint, so the password is asked in cleartext (safe inside TLS) and may carry one.
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let tls = ca
        .connector(&[b"postgresql"])
        .connect(server_name("localhost"), tcp)
        .await
        .expect("direct TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    let mut raw = Raw::new(tls);
    raw.login(USER, "endpoint=db;postgres")
        .await
        .expect("password hack over TLS");
    assert_eq!(
        raw.query("SELECT 'direct'").await.expect("q"),
        vec!["direct"]
    );
    drop(raw);

    // HTTPS without ALPN (as Node's https module connects): HTTP is recognised inside.
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let mut tls = ca
        .connector(&[])
        .connect(server_name("localhost"), tcp)
        .await
        .expect("TLS");
    let body = r#"{"query":"SELECT 1 AS one","params":[]}"#;
    let request = format!(
        "POST /sql HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Neon-Connection-String: postgres://postgres:postgres@db.localtest.me/main\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.expect("request");
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await.ok();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""rows":[{"one":1}]"#), "{response}");

    // Data sent after SSLRequest but before the answer is refused (an injection risk).
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let mut early = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    early.extend_from_slice(&startup_bytes(USER));
    tcp.write_all(&early).await.expect("send");
    let mut reply = Vec::new();
    tcp.read_to_end(&mut reply).await.ok();
    assert_eq!(reply[0], b'E');
    assert!(fields(&reply[5..])[&'M'].contains("unencrypted data after SSL request"));

    // Plain TCP and WebSocket still work next to TLS.
    let mut raw = Raw::new(TcpStream::connect(gw.addr).await.expect("connect"));
    raw.login(USER, "postgres").await.expect("plain");
    let mut ws = websocket(&gw, "/v2").await;
    ws.login(USER, "postgres").await.expect("ws");
    // Direct TLS and HTTPS; SSLRequest connections begin as Postgres.
    assert_eq!(
        gw.metric("gateway_client_connections_total", "protocol=\"tls\"")
            .await,
        2.0
    );
    drop((raw, ws));
    gw.stop().await;
}
