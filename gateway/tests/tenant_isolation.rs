//! Tenant isolation at the gateway (issue 12, finding 4), attacked against a real Postgres 15
//! behind a stand-in control plane:
//!
//! - clients without credentials (an unknown endpoint, an unknown role, a wrong password) over
//!   HTTP, WebSocket, TCP and TLS wake nothing, reach no backend, and all get the same answer
//!   after the same exchange;
//! - TCP and TLS clients log in through the gateway's own SCRAM server, to Postgres and to a
//!   `-pooler` route, and a backend that asks for a cleartext or MD5 password is refused;
//! - a wrong password never disturbs another key's pooled connections or proofs;
//! - a role change in an activity reply takes effect over every protocol before the wake
//!   service's API call would return.

mod support;

use std::time::Duration;

use base64::Engine;
use bytes::BytesMut;
use postgres_protocol::authentication::sasl;
use postgres_protocol::message::frontend;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;

use gateway::WsStream;
use support::raw::{fields, server_name, test_ca, Raw, TestCa};
use support::{
    driver_request, eventually, postgres, sql, FakeControlPlane, Forwarder, TestGateway,
};

/// Bound for conditions that come true in the background (reports, releases).
const WITHIN: Duration = Duration::from_secs(10);

fn conn(user: &str, password: &str, endpoint: &str) -> String {
    format!("postgres://{user}:{password}@{endpoint}.localtest.me/main")
}

/// A role of this test process, so parallel test binaries do not meet.
fn role(name: &str) -> String {
    format!("{name}_{}", std::process::id())
}

/// `POST /sql` as the driver sends it: (status, the body's exact bytes).
async fn http(gw: &TestGateway, conn: &str) -> (u16, Vec<u8>) {
    let client = reqwest::Client::new();
    let response = driver_request(&client, gw, conn)
        .body(json!({"query": "SELECT 1"}).to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("body").to_vec())
}

/// A raw session over a WebSocket to `endpoint` (named by `?address=`).
async fn ws(gw: &TestGateway, endpoint: &str) -> Raw<WsStream<TcpStream>> {
    let url = format!("ws://{}/v2?address={endpoint}.localtest.me:443", gw.addr);
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("WebSocket upgrade");
    Raw::new(WsStream::new(ws))
}

/// A raw session over TLS after SSLRequest, with SNI `sni`.
async fn tls(
    gw: &TestGateway,
    ca: &TestCa,
    sni: &str,
) -> Raw<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .expect("SSLRequest");
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"S");
    let stream = ca
        .connector(&[])
        .connect(server_name(sni), tcp)
        .await
        .expect("TLS");
    Raw::new(stream)
}

async fn tcp(gw: &TestGateway) -> Raw<TcpStream> {
    Raw::new(TcpStream::connect(gw.addr).await.expect("connect"))
}

/// Logs in as asked (SCRAM or cleartext) and writes down what the server said, with the
/// random parts (nonces, salts) replaced by their lengths, up to the first ErrorResponse or
/// ReadyForQuery.
async fn transcript<S>(raw: &mut Raw<S>, params: &[(&str, &str)], password: &str) -> Vec<String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let base64 = base64::engine::general_purpose::STANDARD;
    let mut out = BytesMut::new();
    frontend::startup_message(params.iter().copied(), &mut out).expect("startup");
    raw.send(&out).await;
    let mut scram: Option<sasl::ScramSha256> = None;
    let mut said = Vec::new();
    loop {
        let Some((tag, body)) = raw.recv().await else {
            said.push("closed".to_owned());
            return said;
        };
        out.clear();
        match tag {
            b'R' => match i32::from_be_bytes([body[0], body[1], body[2], body[3]]) {
                3 => {
                    said.push("AuthenticationCleartextPassword".to_owned());
                    frontend::password_message(password.as_bytes(), &mut out).expect("pw");
                    raw.send(&out).await;
                }
                10 => {
                    let mechanisms = String::from_utf8_lossy(&body[4..]).replace('\0', " ");
                    said.push(format!("AuthenticationSASL {}", mechanisms.trim()));
                    let s = sasl::ScramSha256::new(
                        password.as_bytes(),
                        sasl::ChannelBinding::unsupported(),
                    );
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut out)
                        .expect("sasl");
                    raw.send(&out).await;
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().expect("SASL started");
                    let text = String::from_utf8_lossy(&body[4..]).into_owned();
                    let shape: Vec<String> = text
                        .split(',')
                        .map(|attribute| match attribute.split_once('=') {
                            Some(("r", nonce)) => format!("r=<{} bytes>", nonce.len()),
                            Some(("s", salt)) => {
                                format!("s=<{} bytes>", base64.decode(salt).map_or(0, |s| s.len()))
                            }
                            _ => attribute.to_owned(),
                        })
                        .collect();
                    said.push(format!("AuthenticationSASLContinue {}", shape.join(",")));
                    s.update(&body[4..]).expect("server-first");
                    frontend::sasl_response(s.message(), &mut out).expect("sasl");
                    raw.send(&out).await;
                }
                12 => {
                    said.push("AuthenticationSASLFinal".to_owned());
                    scram
                        .as_mut()
                        .expect("SASL started")
                        .finish(&body[4..])
                        .expect("the server's signature verifies");
                }
                0 => said.push("AuthenticationOk".to_owned()),
                other => said.push(format!("Authentication {other}")),
            },
            b'E' => {
                let f = fields(&body);
                said.push(format!("ErrorResponse {} {} {}", f[&'S'], f[&'C'], f[&'M']));
                return said;
            }
            b'Z' => {
                said.push("ReadyForQuery".to_owned());
                return said;
            }
            _ => {}
        }
    }
}

fn params<'a>(user: &'a str, endpoint: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("user", user), ("database", "main"), ("options", endpoint)]
}

#[tokio::test]
async fn unauthenticated_clients_wake_nothing_reach_no_backend_and_all_look_alike() {
    let pg = postgres();
    let ca = test_ca();
    let cp = FakeControlPlane::start().await;
    let db = Forwarder::start(pg.address()).await;
    let other = Forwarder::start(pg.address()).await;
    cp.route("db", &db.addr.to_string());
    cp.route("other", &other.addr.to_string());
    cp.secret("db", "postgres", &pg.role_secret("postgres").await);
    let files = ca.files();
    let gw = TestGateway::builder()
        .control_plane(&cp)
        .config(|config| {
            config.tls = Some(files);
        })
        .start()
        .await;

    // (endpoint, password) for user postgres: an endpoint nobody has, a real endpoint where
    // the role does not exist, and a wrong password for a real role.
    let attackers = [
        ("ghost", "postgres"),
        ("other", "postgres"),
        ("db", "wrong"),
    ];
    let alike = |answers: &[Vec<String>], what: &str| {
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "{what}: {answers:#?}"
        );
    };
    let failed = "ErrorResponse FATAL 28P01 password authentication failed for user 'postgres'";

    // HTTP: byte-identical 400s.
    let mut bodies = Vec::new();
    for (endpoint, password) in attackers {
        let (status, body) = http(&gw, &conn("postgres", password, endpoint)).await;
        assert_eq!(status, 400, "{endpoint}");
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    let body: serde_json::Value = serde_json::from_slice(&bodies[0]).expect("JSON");
    assert_eq!(
        body["message"],
        "password authentication failed for user 'postgres'"
    );

    // WebSocket (and TLS without an endpoint, the password hack): a cleartext password.
    let mut answers = Vec::new();
    for (endpoint, password) in attackers {
        let mut raw = ws(&gw, endpoint).await;
        answers.push(transcript(&mut raw, &params("postgres", ""), password).await);
        let mut raw = tls(&gw, &ca, "localhost").await;
        let hack = format!("endpoint={endpoint};{password}");
        answers.push(transcript(&mut raw, &params("postgres", ""), &hack).await);
    }
    alike(&answers, "cleartext");
    assert_eq!(answers[0], ["AuthenticationCleartextPassword", failed]);

    // TCP and TLS with the endpoint named: a whole SCRAM exchange with the gateway, with a
    // salt and iteration count like a real role's, then the same FATAL.
    let mut answers = Vec::new();
    for (endpoint, password) in attackers {
        let option = format!("endpoint={endpoint}");
        let mut raw = tcp(&gw).await;
        answers.push(transcript(&mut raw, &params("postgres", &option), password).await);
        let mut raw = tls(&gw, &ca, &format!("{endpoint}.localtest.me")).await;
        answers.push(transcript(&mut raw, &params("postgres", ""), password).await);
    }
    alike(&answers, "SCRAM");
    assert_eq!(
        answers[0],
        [
            "AuthenticationSASL SCRAM-SHA-256",
            // The client's nonce (24) and the server's (24); a 16-byte salt; 4096 rounds.
            "AuthenticationSASLContinue r=<48 bytes>,s=<16 bytes>,i=4096",
            failed
        ]
    );
    // tokio-postgres agrees.
    for (endpoint, password) in attackers {
        let conn = format!(
            "host=127.0.0.1 port={} user=postgres password={password} dbname=main options='endpoint={endpoint}'",
            gw.addr.port()
        );
        let error = tokio_postgres::connect(&conn, NoTls)
            .await
            .err()
            .expect("refused");
        let db = error.as_db_error().expect("a server error");
        assert_eq!(
            (db.code().code(), db.message()),
            (
                "28P01",
                "password authentication failed for user 'postgres'"
            )
        );
    }

    // Nothing was woken, no backend saw a connection.
    assert_eq!(cp.wakes(), 0);
    assert_eq!((db.connections(), other.connections()), (0, 0));
    assert_eq!(
        gw.metric("gateway_backend_connect_duration_seconds_count", "")
            .await,
        0.0
    );
    // And every attempt cost the same work: each cleartext password was hashed against a
    // secret, real or mock (9), each SCRAM proof checked against one (9).
    let metric = |name: &'static str, outcome: &'static str| {
        let gw = &gw;
        async move { gw.metric(name, &format!("outcome=\"{outcome}\"")).await }
    };
    assert_eq!(
        (
            metric("gateway_secret_verifications_total", "mock").await,
            metric("gateway_secret_verifications_total", "mismatch").await
        ),
        (6.0, 3.0)
    );
    assert_eq!(
        (
            metric("gateway_scram_proofs_total", "mock").await,
            metric("gateway_scram_proofs_total", "mismatch").await
        ),
        (6.0, 3.0)
    );

    // The right password, for contrast, gets through (and now a backend is reached).
    let (status, body) = http(&gw, &conn("postgres", "postgres", "db")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!((cp.wakes(), db.connections()), (1, 1));
    gw.stop().await;
}

/// A compute impostor for `connections` connections: answers each startup with an
/// authentication request of `code` (3 cleartext, 5 MD5) and records what it is sent after
/// the startup, until the gateway closes the connection.
async fn impostor(code: i32, connections: usize) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let task = tokio::spawn(async move {
        let mut heard = Vec::new();
        for _ in 0..connections {
            let Ok(Ok((mut client, _))) = tokio::time::timeout(WITHIN, listener.accept()).await
            else {
                break;
            };
            let mut len = [0u8; 4];
            if client.read_exact(&mut len).await.is_err() {
                continue;
            }
            let mut startup = vec![0; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
            if client.read_exact(&mut startup).await.is_err() {
                continue;
            }
            let mut request = vec![b'R'];
            let body: &[u8] = if code == 5 { &[1, 2, 3, 4] } else { &[] };
            request.extend_from_slice(&(8 + body.len() as u32).to_be_bytes());
            request.extend_from_slice(&code.to_be_bytes());
            request.extend_from_slice(body);
            let _ = client.write_all(&request).await;
            let _ = tokio::time::timeout(WITHIN, client.read_to_end(&mut heard)).await;
        }
        heard
    });
    (addr, task)
}

#[tokio::test]
async fn tcp_and_tls_clients_log_in_through_the_gateways_scram_and_impostors_learn_nothing() {
    let pg = postgres();
    let ca = test_ca();
    let cp = FakeControlPlane::start().await;
    let db = Forwarder::start(pg.address()).await;
    // A PgBouncer-like route: another address holding the same verifier.
    let pooler = Forwarder::start(pg.address()).await;
    cp.route("db", &db.addr.to_string());
    cp.route("db-pooler", &pooler.addr.to_string());
    let secret = pg.role_secret("postgres").await;
    cp.secret("db", "postgres", &secret);
    let files = ca.files();
    let gw = TestGateway::builder()
        .control_plane(&cp)
        .config(|config| {
            config.tls = Some(files);
        })
        .start()
        .await;
    let port = gw.addr.port();

    for (endpoint, forwarder) in [("db", &db), ("db-pooler", &pooler)] {
        let before = forwarder.connections();
        let conn = format!(
            "host=127.0.0.1 port={port} user=postgres password=postgres dbname=main options='endpoint={endpoint}'"
        );
        let (client, connection) = tokio_postgres::connect(&conn, NoTls)
            .await
            .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        tokio::spawn(connection);
        let user: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .expect("query")
            .get(0);
        assert_eq!(user, "postgres");
        assert_eq!(forwarder.connections(), before + 1, "{endpoint}");
    }

    // Over the raw protocol: SASLFinal (whose signature the client checks) comes with the
    // rest of the startup, once the backend accepted the gateway's login.
    let mut raw = tcp(&gw).await;
    assert_eq!(
        transcript(&mut raw, &params("postgres", "endpoint=db"), "postgres").await,
        [
            "AuthenticationSASL SCRAM-SHA-256",
            "AuthenticationSASLContinue r=<48 bytes>,s=<16 bytes>,i=4096",
            "AuthenticationSASLFinal",
            "AuthenticationOk",
            "ReadyForQuery"
        ]
    );
    assert_eq!(raw.query("SELECT 'tcp'").await.expect("query"), ["tcp"]);
    drop(raw);
    let mut raw = tls(&gw, &ca, "db-pooler.localtest.me").await;
    let login = raw
        .login(&params("postgres", ""), "postgres")
        .await
        .expect("login over TLS");
    assert!(login.process_id != 0);
    assert_eq!(raw.query("SELECT 'tls'").await.expect("query"), ["tls"]);
    drop(raw);

    // psql (libpq), plain and over TLS, where libpq says it could bind a channel ("y").
    for sslmode in ["disable", "require"] {
        let pg_bin =
            std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
        let output = tokio::process::Command::new(format!("{pg_bin}/psql"))
            .arg(format!(
                "host=127.0.0.1 port={port} user=postgres dbname=main options=endpoint=db sslmode={sslmode}"
            ))
            .args(["-XAtc", "SELECT 'psql ' || current_user"])
            .env("PGPASSWORD", "postgres")
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .await
            .expect("psql runs (make test installs postgresql-client-15)");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "psql postgres",
            "{sslmode}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(
        gw.metric("gateway_scram_proofs_total", "outcome=\"mismatch\"")
            .await,
        0.0
    );

    // An impostor on a compute's address (say, a process bound to a suspended compute's
    // port) asks for the password in cleartext, or as MD5: it is refused before it hears
    // anything, over TCP, WebSocket and HTTP alike.
    for (code, name) in [(3, "cleartext"), (5, "md5")] {
        // One connection each over TCP, WebSocket and HTTP.
        let (address, heard) = impostor(code, 3).await;
        let endpoint = format!("evil{code}");
        cp.route(&endpoint, &address);
        cp.secret(&endpoint, "postgres", &secret);
        let mut raw = tcp(&gw).await;
        let said = transcript(
            &mut raw,
            &params("postgres", &format!("endpoint={endpoint}")),
            "postgres",
        )
        .await;
        assert_eq!(
            said.last().map(String::as_str),
            Some("ErrorResponse FATAL 08001 could not connect to the database"),
            "{name}: {said:?}"
        );
        let mut raw = ws(&gw, &endpoint).await;
        let said = transcript(&mut raw, &params("postgres", ""), "postgres").await;
        assert!(said.last().is_some_and(|s| s.contains("08001")), "{said:?}");
        let (status, _) = http(&gw, &conn("postgres", "postgres", &endpoint)).await;
        assert_eq!(status, 502, "{name}");
        let heard = heard.await.expect("impostor");
        assert!(
            !heard.contains(&b'p'),
            "{name}: the impostor got a password message: {heard:?}"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_wrong_password_never_disturbs_another_keys_pool() {
    let pg = postgres();
    let victim = "postgres://postgres:postgres@db.localtest.me/main";
    let wrong = "postgres://postgres:wrong@db.localtest.me/main";
    let stranger = "postgres://nobody:whatever@db.localtest.me/main";
    // Static route (Postgres judges passwords), room for many connections: the wrong
    // password opens its own connection and is refused by Postgres; the victim's idle
    // connection and proof stay (they used to be dropped: one wrong password emptied the
    // victim's pool).
    let gw = TestGateway::builder().route_to_postgres("db").start().await;
    warm(&gw, victim).await;
    let (status, _) = sql(&gw, wrong, json!({"query": "SELECT 1"})).await;
    assert_eq!(status, 400);
    assert_pool_hit(&gw, victim).await;
    gw.stop().await;

    // One connection per endpoint, held idle by the victim: an unproven request (a wrong
    // password, an unknown role) waits for a free slot and gives up; it does not close the
    // victim's connection to take its slot.
    let gw = TestGateway::builder()
        .route_to_postgres("db")
        .config(|config| {
            config.pool.max_conns_per_endpoint = 1;
            config.pool.acquire_timeout = Duration::from_millis(300);
        })
        .start()
        .await;
    warm(&gw, victim).await;
    let discards = gw.metric("gateway_pool_discards_total", "").await;
    for attacker in [wrong, stranger] {
        let (status, body) = sql(&gw, attacker, json!({"query": "SELECT 1"})).await;
        assert_eq!(status, 503, "{body}");
    }
    assert_eq!(gw.metric("gateway_pool_discards_total", "").await, discards);
    assert_pool_hit(&gw, victim).await;
    gw.stop().await;

    // With a control plane, unproven requests never get that far.
    let cp = FakeControlPlane::start().await;
    let backend = Forwarder::start(pg.address()).await;
    cp.route("db", &backend.addr.to_string());
    cp.secret("db", "postgres", &pg.role_secret("postgres").await);
    let gw = TestGateway::builder()
        .control_plane(&cp)
        .config(|config| {
            config.pool.max_conns_per_endpoint = 1;
            config.activity_interval = None;
        })
        .start()
        .await;
    warm(&gw, victim).await;
    let connections = backend.connections();
    for attacker in [wrong, stranger] {
        let (status, _) = sql(&gw, attacker, json!({"query": "SELECT 1"})).await;
        assert_eq!(status, 400);
    }
    let error = ws(&gw, "db")
        .await
        .login(&params("postgres", ""), "wrong")
        .await
        .expect_err("refused");
    assert_eq!(error[&'C'], "28P01");
    assert_eq!(backend.connections(), connections);
    assert_pool_hit(&gw, victim).await;
    gw.stop().await;
}

/// One request through `conn`, then waits until its connection is idle in the pool.
async fn warm(gw: &TestGateway, conn: &str) {
    let (status, body) = sql(gw, conn, json!({"query": "SELECT 1"})).await;
    assert_eq!(status, 200, "{body}");
    eventually("the connection is idle", WITHIN, || async {
        (gw.metric("gateway_pool_idle_connections", "").await >= 1.0).then_some(())
    })
    .await;
}

/// The next request through `conn` reuses an idle connection.
async fn assert_pool_hit(gw: &TestGateway, conn: &str) {
    let hits = gw
        .metric("gateway_pool_checkouts_total", "outcome=\"hit\"")
        .await;
    let (status, body) = sql(gw, conn, json!({"query": "SELECT 1"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        gw.metric("gateway_pool_checkouts_total", "outcome=\"hit\"")
            .await,
        hits + 1.0,
        "the owner's connection was still there"
    );
}

/// A tokio-postgres session over plain TCP (SCRAM with the gateway) as `user`.
async fn tcp_session(
    gw: &TestGateway,
    endpoint: &str,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let conn = format!(
        "host=127.0.0.1 port={} user={user} password={password} dbname=main options='endpoint={endpoint}'",
        gw.addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Logs in over every protocol as `user` with `password`: (HTTP status on `db`, HTTP status
/// on `db-pooler`, WebSocket SQLSTATE or "ok", TCP SQLSTATE or "ok", TCP to `db-pooler`).
async fn every_protocol(gw: &TestGateway, user: &str, password: &str) -> [String; 5] {
    let code = |result: Result<tokio_postgres::Client, tokio_postgres::Error>| match result {
        Ok(_) => "ok".to_owned(),
        Err(e) => e
            .as_db_error()
            .map_or_else(|| e.to_string(), |db| db.code().code().to_owned()),
    };
    let ws_code = match ws(gw, "db").await.login(&params(user, ""), password).await {
        Ok(_) => "ok".to_owned(),
        Err(fields) => fields[&'C'].clone(),
    };
    [
        http(gw, &conn(user, password, "db")).await.0.to_string(),
        http(gw, &conn(user, password, "db-pooler"))
            .await
            .0
            .to_string(),
        ws_code,
        code(tcp_session(gw, "db", user, password).await),
        code(tcp_session(gw, "db-pooler", user, password).await),
    ]
}

#[tokio::test]
async fn role_changes_in_activity_replies_take_effect_at_once() {
    let pg = postgres();
    let direct = pg.client().await;
    let alice = role("iso_alice");
    direct
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {alice}; CREATE ROLE {alice} LOGIN PASSWORD 'old'"
        ))
        .await
        .expect("role");
    let cp = FakeControlPlane::start().await;
    cp.route("db", &pg.address());
    cp.route("db-pooler", &pg.address());
    cp.secret("db", &alice, &pg.role_secret(&alice).await);
    cp.secret("db", "postgres", &pg.role_secret("postgres").await);
    let gw = TestGateway::builder()
        .control_plane(&cp)
        .config(|config| {
            config.activity_interval = Some(Duration::from_millis(200));
        })
        .start()
        .await;
    let ok = |http: &str| [http, http, "ok", "ok", "ok"].map(str::to_owned).to_vec();

    // Warm: alice's old password works everywhere, her secret and proofs are cached, and she
    // and a bystander have idle pooled connections. (The first activity reply drops every
    // secret cached before it: wait for it, then warm again.)
    assert_eq!(every_protocol(&gw, &alice, "old").await.to_vec(), ok("200"));
    eventually("the first activity reply is applied", WITHIN, || async {
        (gw.metric("gateway_role_invalidations_total", "reason=\"first_reply\"")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(every_protocol(&gw, &alice, "old").await.to_vec(), ok("200"));
    warm(&gw, &conn(&alice, "old", "db")).await;
    warm(&gw, support::CONN).await;
    eventually("three idle connections", WITHIN, || async {
        (gw.metric("gateway_pool_idle_connections", "").await >= 3.0).then_some(())
    })
    .await;
    let lookups = cp.lookups();

    // The password changes (the wake service: in Postgres, then in its store, then it hands
    // the change out and waits until every gateway applied it).
    direct
        .batch_execute(&format!("ALTER ROLE {alice} PASSWORD 'new'"))
        .await
        .expect("alter");
    let changed = cp.change_role("db", &alice, Some(&pg.role_secret(&alice).await));
    let started = std::time::Instant::now();
    eventually("the change is applied", WITHIN, || async {
        cp.applied(changed).then_some(())
    })
    .await;
    // Applied as soon as the next reply carried it: within about one report interval.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Her idle connections are closed (on db and db-pooler); the bystander's stays.
    assert_eq!(gw.metric("gateway_pool_idle_connections", "").await, 1.0);
    assert_pool_hit(&gw, support::CONN).await;

    // From now on the old password fails everywhere (the cached secret and the cached match
    // said yes until the change), and the new one works everywhere.
    let refused = ["400", "400", "28P01", "28P01", "28P01"].map(str::to_owned);
    assert_eq!(every_protocol(&gw, &alice, "old").await, refused);
    assert_eq!(every_protocol(&gw, &alice, "new").await.to_vec(), ok("200"));
    assert_eq!(
        cp.lookups(),
        lookups + 1,
        "her secret was asked for once more"
    );

    // Dropped: nothing logs in as her any more, and no backend is asked (Postgres would
    // still accept her: the role is still there).
    let dropped = cp.change_role("db", &alice, None);
    eventually("the drop is applied", WITHIN, || async {
        cp.applied(dropped).then_some(())
    })
    .await;
    let connects = gw
        .metric("gateway_backend_connect_duration_seconds_count", "")
        .await;
    assert_eq!(every_protocol(&gw, &alice, "new").await, refused);
    assert_eq!(
        gw.metric("gateway_backend_connect_duration_seconds_count", "")
            .await,
        connects
    );
    assert!(
        gw.metric("gateway_role_invalidations_total", "reason=\"role_change\"")
            .await
            >= 2.0
    );
    let ids: std::collections::BTreeSet<_> = cp
        .reports()
        .iter()
        .map(|r| r.report.gateway_id.clone().expect("a gateway id"))
        .collect();
    assert_eq!(ids.len(), 1, "one gateway, one id: {ids:?}");
    gw.stop().await;

    direct
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{alice}'"
        ))
        .await
        .expect("terminate");
    support::eventually("its backends are gone", Duration::from_secs(10), || async {
        let left: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                &[&alice],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        (left == 0).then_some(())
    })
    .await;
    direct
        .batch_execute(&format!("DROP ROLE {alice}"))
        .await
        .expect("drop role");
}
