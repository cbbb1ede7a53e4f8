//! JWT logins against the real wake service (in-process) and its real Postgres 15: a JWKS
//! rule with an inline Ed25519 key set, `/sql` with `Authorization: Bearer`, and a TCP session
//! with the token as its password. Row-level security on `auth.user_id()` sees each user's
//! own rows, pooled backends serve alice, bob and alice again with the right identity, SQL
//! cannot forge or replay claims, and a session ends when its token expires.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};
use tokio_postgres::NoTls;

use support::raw::Raw;
use support::{driver_request, sql, TestGateway, TestWakeService, CONN};
use tokio::net::TcpStream;

/// The JWT role's connection string: no password.
const JWT_CONN: &str = "postgres://authenticated@db.localtest.me/main";

struct Issuer {
    key: Ed25519KeyPair,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

impl Issuer {
    fn new() -> Issuer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
        Issuer {
            key: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key"),
        }
    }

    fn jwks(&self) -> Value {
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64(self.key.public_key().as_ref()),
                         "kid": "k1", "alg": "EdDSA", "use": "sig"}]})
    }

    fn sign(&self, header: &Value, payload: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        let signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", b64(signature.as_ref()))
    }

    fn token(&self, sub: &str, ttl: u64) -> String {
        self.sign(
            &json!({"alg": "EdDSA", "kid": "k1", "typ": "JWT"}),
            &json!({"sub": sub, "iat": now(), "exp": now() + ttl}),
        )
    }
}

async fn admin(
    wake: &TestWakeService,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut request = client
        .request(method, format!("{}{path}", wake.admin_url()))
        .bearer_auth(wake.admin_token());
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("admin request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("admin body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `/sql` as the JWT role with `token`.
async fn jwt_sql(gw: &TestGateway, token: &str, body: Value) -> (u16, Value) {
    let response = driver_request(&reqwest::Client::new(), gw, JWT_CONN)
        .header("Authorization", format!("Bearer {token}"))
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// The first column of every row (array mode, raw text).
fn column(body: &Value) -> Vec<Value> {
    body["rows"]
        .as_array()
        .map(|rows| rows.iter().map(|r| r[0].clone()).collect())
        .unwrap_or_default()
}

async fn whoami(gw: &TestGateway, token: &str) -> Value {
    let (status, body) = jwt_sql(gw, token, json!({"query": "SELECT auth.user_id()"})).await;
    assert_eq!(status, 200, "{body}");
    column(&body)[0].clone()
}

/// A TCP session as `authenticated` with the token as its password.
async fn tcp_session(
    gw: &TestGateway,
    token: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    ),
    tokio_postgres::Error,
> {
    let conn = format!(
        "host=127.0.0.1 port={} user=authenticated password={token} dbname=main options='endpoint=db'",
        gw.addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
    Ok((client, tokio::spawn(connection)))
}

async fn setup() -> (TestWakeService, TestGateway, Issuer) {
    let wake = TestWakeService::start().await;
    let gw = TestGateway::builder().wake_service(&wake).start().await;
    let issuer = Issuer::new();
    let rule = json!({"provider_name": "test", "jwks": issuer.jwks(), "algorithms": ["EdDSA"],
                      "role_names": ["authenticated"]});
    let (status, body) = admin(
        &wake,
        reqwest::Method::POST,
        "/endpoints/db/jwks",
        Some(rule),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let owner = json!({"queries": [
        {"query": "CREATE TABLE todos (id bigserial PRIMARY KEY, owner text NOT NULL DEFAULT auth.user_id(), task text)"},
        {"query": "ALTER TABLE todos ENABLE ROW LEVEL SECURITY"},
        {"query": "CREATE POLICY own ON todos FOR ALL TO authenticated USING (owner = (select auth.user_id())) WITH CHECK (owner = (select auth.user_id()))"},
        {"query": "GRANT SELECT, INSERT, UPDATE, DELETE ON todos TO authenticated"},
        {"query": "GRANT USAGE ON SEQUENCE todos_id_seq TO authenticated"},
    ]});
    let (status, body) = sql(&gw, CONN, owner).await;
    assert_eq!(status, 200, "{body}");
    (wake, gw, issuer)
}

/// One wake service for every part (test wake services share a compute port range).
#[tokio::test]
async fn jwt_logins() {
    let (wake, gw, issuer) = setup().await;
    tokens_log_in_and_rls_sees_each_users_rows(&gw, &issuer).await;
    sql_cannot_forge_or_replay_claims(&gw, &issuer).await;
    bad_tokens_are_refused_and_sessions_end_with_their_token(&gw, &issuer).await;
    gw.stop().await;
    wake.stop().await;
}

async fn tokens_log_in_and_rls_sees_each_users_rows(gw: &TestGateway, issuer: &Issuer) {
    let (alice, bob) = (issuer.token("alice", 600), issuer.token("bob", 600));
    for (token, task) in [(&alice, "alice's"), (&bob, "bob's")] {
        let insert = json!({"query": "INSERT INTO todos (task) VALUES ($1)", "params": [task]});
        let (status, body) = jwt_sql(gw, token, insert).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = jwt_sql(gw, &alice, json!({"query": "SELECT task FROM todos"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(column(&body), [json!("alice's")]);
    // A transaction (batch) sees the same identity.
    let batch = json!({"queries": [{"query": "SELECT auth.user_id()"}, {"query": "SELECT count(*) FROM todos"}]});
    let (status, body) = jwt_sql(gw, &bob, batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(column(&body["results"][0]), [json!("bob")]);
    assert_eq!(column(&body["results"][1]), [json!("1")]);
    // Pooled backends move between users: each request sees its own identity.
    for (token, who) in [
        (&alice, "alice"),
        (&bob, "bob"),
        (&alice, "alice"),
        (&bob, "bob"),
    ] {
        assert_eq!(whoami(gw, token).await, json!(who));
    }
    // Bob cannot write a row as alice.
    let forged_row = json!({"query": "INSERT INTO todos (owner, task) VALUES ('alice', 'x')"});
    let (status, body) = jwt_sql(gw, &bob, forged_row).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "42501", "{body}");

    // A session with the token as password.
    let (client, _conn) = tcp_session(gw, &alice).await.expect("session");
    let row = client
        .query_one("SELECT auth.user_id()", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("alice"));
    let rows = client
        .query("SELECT task FROM todos", &[])
        .await
        .expect("query");
    assert_eq!(rows.len(), 1);
}

async fn sql_cannot_forge_or_replay_claims(gw: &TestGateway, issuer: &Issuer) {
    let (alice, bob) = (issuer.token("alice", 600), issuer.token("bob", 600));
    // Alice's envelope, as SQL can read it in her own request.
    let read = json!({"query": "SELECT current_setting('gw_auth.claims'), current_setting('gw_auth.mac')"});
    let (status, body) = jwt_sql(gw, &alice, read).await;
    assert_eq!(status, 200, "{body}");
    let (env, mac) = (body["rows"][0][0].clone(), body["rows"][0][1].clone());
    assert!(
        env.as_str()
            .is_some_and(|e| e.contains("\"sub\":\"alice\"")),
        "{env}"
    );

    let forgeries = [
        // Bob sets alice's envelope directly, or edits his own.
        json!({"query": "SELECT set_config('gw_auth.claims', $1, false), set_config('gw_auth.mac', $2, false), auth.user_id()", "params": [env, mac]}),
        json!({"query": "SELECT set_config('gw_auth.claims', replace(current_setting('gw_auth.claims'), '\"bob\"', '\"alice\"'), false), auth.user_id()"}),
        // Bob replays alice's envelope through auth.begin.
        json!({"query": "SELECT auth.begin($1, $2), auth.user_id()", "params": [env, mac]}),
    ];
    for forgery in forgeries {
        let (status, body) = jwt_sql(gw, &bob, forgery.clone()).await;
        if status == 200 {
            let id = body["rows"][0].as_array().and_then(|r| r.last()).cloned();
            assert!(
                matches!(id, Some(Value::Null)) || id == Some(json!("bob")),
                "{forgery}: {body}"
            );
        } else {
            assert_eq!(status, 400, "{forgery}: {body}");
        }
    }
    // Session-level resets and role changes give NULL or bob, never alice.
    let (client, _conn) = tcp_session(gw, &bob).await.expect("session");
    for statement in [
        "RESET ROLE",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "RESET ALL",
        "DISCARD ALL",
    ] {
        let _ = client.batch_execute(statement).await;
        let _ = client
            .query("SELECT set_config('gw_auth.claims', $1, false), set_config('gw_auth.mac', $2, false)", &[&env.as_str(), &mac.as_str()])
            .await;
        let id: Option<String> = client
            .query_one("SELECT auth.user_id()", &[])
            .await
            .ok()
            .and_then(|row| row.get(0));
        assert_ne!(id.as_deref(), Some("alice"), "after {statement}");
    }
    let written = client.batch_execute("CREATE OR REPLACE FUNCTION auth.user_id() RETURNS text LANGUAGE sql AS 'SELECT ''alice'''").await;
    assert!(written.is_err(), "the auth schema is writable");
    let keys = client.query("SELECT * FROM gw_auth.keys", &[]).await;
    assert!(keys.is_err(), "the claims key is readable");
    // The next user of a pooled backend is herself.
    assert_eq!(whoami(gw, &alice).await, json!("alice"));
}

async fn bad_tokens_are_refused_and_sessions_end_with_their_token(
    gw: &TestGateway,
    issuer: &Issuer,
) {
    let other = Issuer::new();
    let expired = issuer.sign(
        &json!({"alg": "EdDSA", "kid": "k1"}),
        &json!({"sub": "alice", "exp": now() - 3600}),
    );
    for bad in [
        other.token("alice", 600),
        expired,
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.".to_owned(),
        "not a token".to_owned(),
    ] {
        let (status, body) = jwt_sql(gw, &bad, json!({"query": "SELECT 1"})).await;
        assert_eq!(status, 401, "{body}");
        assert!(tcp_session(gw, &bad).await.is_err());
    }
    // A role no rule names.
    let response = driver_request(
        &reqwest::Client::new(),
        gw,
        "postgres://anonymous@db.localtest.me/main",
    )
    .header(
        "Authorization",
        format!("Bearer {}", issuer.token("alice", 600)),
    )
    .body(json!({"query": "SELECT 1"}).to_string())
    .send()
    .await
    .expect("request");
    assert_eq!(response.status().as_u16(), 403);
    // A password login as the JWT role is refused like a wrong password.
    let (status, _) = sql(
        gw,
        "postgres://authenticated:guess@db.localtest.me/main",
        json!({"query": "SELECT 1"}),
    )
    .await;
    assert_eq!(status, 400);
    let metric = gw.metric("gateway_jwt_validations_total", "outcome=").await;
    assert!(metric >= 4.0, "validations counted: {metric}");

    // A session whose token expires in 2 s is ended by the gateway with a FATAL.
    let mut raw = Raw::new(TcpStream::connect(gw.addr).await.expect("connect"));
    let params = [
        ("user", "authenticated"),
        ("database", "main"),
        ("options", "endpoint=db"),
    ];
    raw.login(&params, &issuer.token("alice", 2))
        .await
        .expect("login");
    let error = tokio::time::timeout(Duration::from_secs(10), raw.error())
        .await
        .expect("the session ended within its token's lifetime and a margin");
    assert_eq!(error[&'C'], "28000");
}
