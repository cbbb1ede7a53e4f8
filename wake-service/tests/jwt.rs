//! JWT logins (issue 15) against a real wake service (in-process, its embedded state store and
//! local computes: Postgres 15): the JWKS rules API and what it does to the compute, and, at
//! the SQL level, that claims cannot be forged from inside a JWT session.
//!
//! The JWT sessions log in as `authenticated` with the material the proxy API hands gateways
//! (the SCRAM ClientKey; nobody knows the password), over TCP, through the small protocol
//! client below; the envelopes are minted here with the endpoint's claims key, exactly as
//! the gateway's `compute::claims` mints them.
//!
//! Each test has its own data directory under /tmp and its own share of 26000-26999 for
//! compute ports.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use hmac::{Hmac, Mac};
use postgres_protocol::message::{backend, frontend};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wake_api::admin::Endpoint;
use wake_api::proxy::{AccessControl, Jwks, JwtLogin};

mod common;
use common::service::{Wake, TOKEN};

const APP_PASSWORD: &str = "app-password-1";

impl Wake {
    async fn proxy_jwks(&self, id: &str) -> Jwks {
        let value = self
            .expect(
                reqwest::Method::GET,
                &format!("/proxy/api/v1/endpoints/{id}/jwks"),
                None,
                200,
            )
            .await;
        serde_json::from_value(value).expect("Jwks")
    }

    /// An endpoint with API role `app` and its database `shop`.
    async fn endpoint(&self, id: &str) -> Endpoint {
        use reqwest::Method;
        self.expect(
            Method::POST,
            "/v1/endpoints",
            Some(json!({"id": id, "suspend_timeout_seconds": -1})),
            201,
        )
        .await;
        let roles = format!("/v1/endpoints/{id}/roles");
        self.expect(
            Method::POST,
            &roles,
            Some(json!({"name": "app", "password": APP_PASSWORD})),
            201,
        )
        .await;
        let databases = format!("/v1/endpoints/{id}/databases");
        self.expect(
            Method::POST,
            &databases,
            Some(json!({"name": "shop", "owner": "app"})),
            201,
        )
        .await;
        let value = self
            .expect(Method::GET, &format!("/v1/endpoints/{id}"), None, 200)
            .await;
        serde_json::from_value(value).expect("Endpoint")
    }
}

fn host_port(endpoint: &Endpoint) -> (String, u16) {
    let (host, port) = endpoint
        .addresses
        .direct
        .rsplit_once(':')
        .expect("host:port");
    (host.to_owned(), port.parse().expect("port"))
}

/// `app` (an API role) logged in to `database` with its password.
async fn app(endpoint: &Endpoint, database: &str) -> tokio_postgres::Client {
    let (host, port) = host_port(endpoint);
    let mut config = tokio_postgres::Config::new();
    config
        .host(&host)
        .port(port)
        .user("app")
        .password(APP_PASSWORD)
        .dbname(database)
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("app logs in");
    tokio::spawn(connection);
    client
}

// --- a minimal protocol client that logs in with a SCRAM ClientKey --------------------------

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A query's outcome: rows of text values, or the error's SQLSTATE and message.
type Outcome = Result<Vec<Vec<Option<String>>>, (String, String)>;

struct Session {
    stream: TcpStream,
    buf: BytesMut,
    pid: i64,
    bs: i64,
    role: String,
    ctr: i64,
}

impl Session {
    async fn next(&mut self) -> backend::Message {
        loop {
            if let Some(message) = backend::Message::parse(&mut self.buf).expect("protocol") {
                return message;
            }
            let n = self.stream.read_buf(&mut self.buf).await.expect("read");
            assert!(n > 0, "the server closed the connection");
        }
    }

    async fn send(&mut self, out: &BytesMut) {
        self.stream.write_all(out).await.expect("write");
    }

    /// Logs in as `role` to `database` with the role's ClientKey (what a gateway does).
    async fn login(endpoint: &Endpoint, database: &str, role: &str, client_key: &[u8]) -> Session {
        let (host, port) = host_port(endpoint);
        let stream = TcpStream::connect((host.as_str(), port))
            .await
            .expect("connect");
        let mut session = Session {
            stream,
            buf: BytesMut::new(),
            pid: 0,
            bs: 0,
            role: role.into(),
            ctr: 0,
        };
        let mut out = BytesMut::new();
        frontend::startup_message([("user", role), ("database", database)], &mut out)
            .expect("startup");
        session.send(&out).await;
        let backend::Message::AuthenticationSasl(_) = session.next().await else {
            panic!("expected SASL authentication")
        };
        let nonce = BASE64.encode(rand::random::<[u8; 18]>());
        let first_bare = format!("n=,r={nonce}");
        out.clear();
        frontend::sasl_initial_response(
            "SCRAM-SHA-256",
            format!("n,,{first_bare}").as_bytes(),
            &mut out,
        )
        .expect("sasl");
        session.send(&out).await;
        let backend::Message::AuthenticationSaslContinue(body) = session.next().await else {
            panic!("expected SASL continue")
        };
        let server_first = String::from_utf8(body.data().to_vec()).expect("UTF-8");
        let server_nonce = server_first
            .split(',')
            .find_map(|p| p.strip_prefix("r="))
            .expect("nonce");
        let final_bare = format!("c=biws,r={server_nonce}");
        let auth_message = format!("{first_bare},{server_first},{final_bare}");
        let stored_key = Sha256::digest(client_key);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        out.clear();
        frontend::sasl_response(
            format!("{final_bare},p={}", BASE64.encode(proof)).as_bytes(),
            &mut out,
        )
        .expect("sasl");
        session.send(&out).await;
        loop {
            match session.next().await {
                backend::Message::ReadyForQuery(_) => break,
                backend::Message::ErrorResponse(body) => {
                    panic!("login refused: {:?}", fields(&body))
                }
                _ => {}
            }
        }
        let who = session
            .query(
                "SELECT pid, (extract(epoch from backend_start) * 1000000)::bigint \
                 FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid())",
            )
            .await
            .expect("pid and backend_start");
        session.pid = who[0][0].as_deref().expect("pid").parse().expect("pid");
        session.bs = who[0][1].as_deref().expect("bs").parse().expect("bs");
        session
    }

    async fn query(&mut self, sql: &str) -> Outcome {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).expect("query");
        self.send(&out).await;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next().await {
                backend::Message::DataRow(body) => {
                    let buffer = body.buffer();
                    let row = body
                        .ranges()
                        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned())))
                        .collect()
                        .expect("row");
                    rows.push(row);
                }
                backend::Message::ErrorResponse(body) => error = Some(fields(&body)),
                backend::Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// The first value of the first row (`None` for SQL NULL); panics on an error.
    async fn one(&mut self, sql: &str) -> Option<String> {
        let rows = self
            .query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        rows[0][0].clone()
    }

    /// Runs statements that must succeed.
    async fn exec(&mut self, sql: &str) {
        if let Err(e) = self.query(sql).await {
            panic!("{sql}: {e:?}");
        }
    }

    /// The error's SQLSTATE; panics when the statement succeeds.
    async fn fails(&mut self, sql: &str) -> String {
        match self.query(sql).await {
            Ok(rows) => panic!("{sql} must fail, gave {rows:?}"),
            Err((code, _)) => code,
        }
    }
}

fn fields(body: &backend::ErrorResponseBody) -> (String, String) {
    let mut code = String::new();
    let mut message = String::new();
    let mut fields = body.fields();
    while let Some(field) = fields.next().expect("error fields") {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    (code, message)
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs(),
    )
    .expect("time")
}

/// Mints envelopes for sessions with the endpoint's claims key (decision 3).
struct Minter {
    kid: i32,
    key: Vec<u8>,
}

impl Minter {
    fn new(login: &JwtLogin) -> Minter {
        let key = (0..login.claims_key.key.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&login.claims_key.key[i..i + 2], 16).expect("hex"))
            .collect();
        Minter {
            kid: login.claims_key.kid,
            key,
        }
    }

    fn envelope(
        &self,
        pid: i64,
        bs: i64,
        role: &str,
        exp: i64,
        ctr: i64,
        claims: &Value,
    ) -> (String, String) {
        let env = format!(
            r#"{{"v":1,"pid":{pid},"bs":{bs},"role":{},"exp":{exp},"ctr":{ctr},"claims":{}}}"#,
            json!(role),
            claims
        );
        let mac = format!("v1.{}.{}", self.kid, hex(&hmac(&self.key, env.as_bytes())));
        (env, mac)
    }

    /// The next envelope of `session` (its counter moves on), valid for a minute.
    fn next(&self, session: &mut Session, claims: &Value) -> (String, String) {
        session.ctr += 1;
        self.envelope(
            session.pid,
            session.bs,
            &session.role,
            now() + 60,
            session.ctr,
            claims,
        )
    }
}

fn begin_sql((env, mac): &(String, String)) -> String {
    format!("SELECT auth.begin({}, {})", quote(env), quote(mac))
}

async fn begin(session: &mut Session, envelope: &(String, String)) -> bool {
    session.one(&begin_sql(envelope)).await.as_deref() == Some("t")
}

/// Mints the session's next envelope and runs auth.begin with it.
async fn advance(session: &mut Session, minter: &Minter, claims: &Value) -> bool {
    let envelope = minter.next(session, claims);
    begin(session, &envelope).await
}

fn sub(user: &str) -> Value {
    json!({"sub": user, "role": "authenticated"})
}

// --- the tests -------------------------------------------------------------------------------

/// The message of an API error body.
fn message(error: &Value) -> &str {
    error["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rules_api() {
    use reqwest::Method;
    let wake = Wake::start("jwt-api", "26000-26499").await;
    let id = "ep-jwt";
    let endpoint = wake.endpoint(id).await;
    let rules = format!("/v1/endpoints/{id}/jwks");
    refuses_bad_rules(&wake, id).await;

    // A rule: 201, the compute woken (it is suspended) and prepared before the answer.
    let suspend = format!("/v1/endpoints/{id}/suspend?force=true");
    wake.expect(Method::POST, &suspend, None, 200).await;
    let body =
        json!({"provider_name": "test", "jwks": {"keys": []}, "jwt_issuer": "https://issuer"});
    let created = wake.expect(Method::POST, &rules, Some(body), 201).await;
    let rule_id = created["id"].as_str().expect("id").to_owned();
    assert!(rule_id.starts_with("jwks-"), "{created}");
    assert_eq!(created["role_names"], json!(["authenticated", "anonymous"]));
    assert_eq!(created["jwks_url"], "");
    let listed = wake.expect(Method::GET, &rules, None, 200).await;
    assert_eq!(listed, json!({"jwks": [created]}));

    let login = served_login(&wake, id).await;
    jwt_roles_are_not_api_roles(&wake, id).await;
    prepared_in_postgres(&wake, &endpoint, id).await;
    let second = preparation_is_idempotent(&wake, &endpoint, id, &login).await;
    let wake = survives_a_restart(wake, &endpoint, id).await;

    // Delete: 204, then 404; PATCH no longer takes rules.
    wake.expect(Method::DELETE, &format!("{rules}/{second}"), None, 204)
        .await;
    wake.expect(Method::DELETE, &format!("{rules}/{second}"), None, 404)
        .await;
    wake.expect(Method::DELETE, "/v1/endpoints/nope/jwks/jwks-1", None, 404)
        .await;
    wake.expect(Method::GET, "/v1/endpoints/nope/jwks", None, 404)
        .await;
    let served = wake.proxy_jwks(id).await;
    assert_eq!(served.jwks.len(), 1);
    let names: Vec<String> = served
        .jwt_login
        .expect("login")
        .roles
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(
        names,
        ["anonymous", "authenticated"],
        "a role no rule names is not served"
    );
    let patch = Some(json!({"jwks": []}));
    wake.expect(Method::PATCH, &format!("/v1/endpoints/{id}"), patch, 400)
        .await;
    wake.expect(Method::DELETE, &format!("{rules}/{rule_id}"), None, 204)
        .await;
    assert_eq!(wake.proxy_jwks(id).await, Jwks::default());

    cli_commands(&wake, id).await;

    // Deleting the endpoint removes everything.
    wake.expect(Method::DELETE, &format!("/v1/endpoints/{id}"), None, 204)
        .await;
    let proxy = format!("/proxy/api/v1/endpoints/{id}/jwks");
    wake.expect(Method::GET, &proxy, None, 404).await;
    wake.stop().await;
}

/// `wake-service <args> --url … --token …`: exit status, stdout, stderr.
async fn cli(wake: &Wake, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_wake-service"))
        .args(args)
        .args(["--url", &wake.url, "--token", TOKEN])
        .env_remove("WAKE_URL")
        .env_remove("WAKE_ADMIN_TOKEN")
        .env_remove("WAKE_ADMIN_TOKEN_FILE")
        .output()
        .await
        .expect("run wake-service");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `jwks add` (with a key set file), `jwks list`, `jwks delete`, and their failures.
async fn cli_commands(wake: &Wake, id: &str) {
    let file = wake.temp.path.join("jwks.json");
    std::fs::write(&file, r#"{"keys": []}"#).expect("write the key set");
    let file = file.to_str().expect("UTF-8 path");
    let add = [
        "jwks",
        "add",
        id,
        "--provider-name",
        "cli",
        "--jwks-file",
        file,
        "--role",
        "authenticated",
        "--algorithm",
        "ES256",
        "--algorithm",
        "EdDSA",
        "--audience",
        "app",
    ];
    let (ok, stdout, stderr) = cli(wake, &add).await;
    assert!(ok, "{stderr}");
    let rule: Value = serde_json::from_str(&stdout).expect("the rule as JSON");
    assert_eq!(rule["algorithms"], json!(["ES256", "EdDSA"]));
    assert_eq!(
        (rule["jwt_audience"].as_str(), rule["jwks"].clone()),
        (Some("app"), json!({"keys": []}))
    );
    let rule_id = rule["id"].as_str().expect("id");
    let (ok, stdout, _) = cli(wake, &["jwks", "list", id]).await;
    assert!(ok && stdout.contains(rule_id), "{stdout}");
    let url_add = [
        "jwks",
        "add",
        id,
        "--provider-name",
        "u",
        "--jwks-url",
        "https://idp.example/k",
    ];
    let (ok, stdout, stderr) = cli(wake, &url_add).await;
    assert!(ok, "{stderr}");
    let url_rule: Value = serde_json::from_str(&stdout).expect("JSON");
    let url_id = url_rule["id"].as_str().expect("id");
    for rule in [rule_id, url_id] {
        let (ok, _, stderr) = cli(wake, &["jwks", "delete", id, rule]).await;
        assert!(ok, "{stderr}");
    }
    let (ok, stdout, stderr) = cli(wake, &["jwks", "delete", id, rule_id]).await;
    assert!(
        !ok && stdout.is_empty() && stderr.contains(rule_id),
        "{stderr}"
    );
    let (ok, _, stderr) = cli(wake, &["jwks", "add", id, "--provider-name", "x"]).await;
    assert!(!ok && stderr.contains("--jwks-url"), "{stderr}");
    let bad = [
        "jwks",
        "add",
        id,
        "--provider-name",
        "x",
        "--jwks-url",
        "ftp://h/k",
    ];
    let (ok, _, stderr) = cli(wake, &bad).await;
    assert!(!ok && stderr.contains("https"), "{stderr}");
    let (ok, _, stderr) = cli(wake, &["jwks", "list", "nope"]).await;
    assert!(!ok && stderr.contains("nope"), "{stderr}");
}

/// A restarted service serves the same rules and material, and the JWT roles still log in
/// (after a wake, as the stop suspended the endpoint).
async fn survives_a_restart(wake: Wake, endpoint: &Endpoint, id: &str) -> Wake {
    let before = wake.proxy_jwks(id).await;
    let wake = Wake::run(wake.halt().await, "26000-26499").await;
    let after = wake.proxy_jwks(id).await;
    assert_eq!(after, before, "rules and material survive a restart");
    let path = format!("/v1/endpoints/{id}/wake");
    wake.expect(reqwest::Method::POST, &path, None, 200).await;
    let login = after.jwt_login.expect("jwt_login");
    let role = login
        .roles
        .iter()
        .find(|r| r.name == "authenticated")
        .expect("role");
    let client_key = BASE64.decode(&role.client_key).expect("base64");
    let mut session = Session::login(endpoint, "shop", "authenticated", &client_key).await;
    assert!(advance(&mut session, &Minter::new(&login), &sub("alice")).await);
    assert_eq!(
        session.one("SELECT auth.user_id()").await.as_deref(),
        Some("alice")
    );
    wake
}

/// Validation: 400 with what to fix, 409 for an API role's name; nothing recorded.
async fn refuses_bad_rules(wake: &Wake, id: &str) {
    use reqwest::Method;
    let rules = format!("/v1/endpoints/{id}/jwks");
    let jwks = json!({"keys": []});
    for (body, mentions) in [
        (json!({"provider_name": "p"}), "exactly one"),
        (
            json!({"provider_name": "p", "jwks_url": "https://u:p@idp.example/k"}),
            "user name",
        ),
        (
            json!({"provider_name": "p", "jwks_url": "https://idp.example/k?x=1"}),
            "query",
        ),
        (json!({"provider_name": "", "jwks": jwks}), "provider_name"),
        (
            json!({"provider_name": "p", "jwks": jwks, "role_names": ["cloud_admin"]}),
            "cloud_admin",
        ),
        (
            json!({"provider_name": "p", "jwks": jwks, "role_names": ["pg_monitor"]}),
            "pg_monitor",
        ),
        (
            json!({"provider_name": "p", "jwks": jwks, "algorithms": ["HS256"]}),
            "HS256",
        ),
        (
            json!({"provider_name": "p", "jwks": jwks, "bogus": 1}),
            "bogus",
        ),
    ] {
        let error = wake
            .expect(Method::POST, &rules, Some(body.clone()), 400)
            .await;
        assert!(message(&error).contains(mentions), "{body}: {error}");
    }
    let body = json!({"provider_name": "p", "jwks": jwks, "role_names": ["app"]});
    let error = wake.expect(Method::POST, &rules, Some(body), 409).await;
    assert!(message(&error).contains("app"), "{error}");
    let unknown = json!({"provider_name": "p", "jwks": jwks});
    wake.expect(Method::POST, "/v1/endpoints/nope/jwks", Some(unknown), 404)
        .await;
    assert_eq!(
        wake.expect(Method::GET, &rules, None, 200).await,
        json!({"jwks": []})
    );
    assert_eq!(wake.proxy_jwks(id).await, Jwks::default());
}

/// The proxy API: Neon's shape plus `jwt_login`, whose ClientKeys match the verifiers.
async fn served_login(wake: &Wake, id: &str) -> JwtLogin {
    let served = wake.proxy_jwks(id).await;
    assert_eq!(served.jwks.len(), 1);
    let login = served.jwt_login.clone().expect("jwt_login");
    assert_eq!((login.claims_key.kid, login.claims_key.key.len()), (1, 64));
    let names: Vec<&str> = login.roles.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["anonymous", "authenticated"]);
    for role in &login.roles {
        let stored = role
            .secret
            .split('$')
            .nth(2)
            .and_then(|k| k.split(':').next())
            .expect("StoredKey");
        let client_key = BASE64.decode(&role.client_key).expect("base64");
        assert_eq!(
            BASE64.encode(Sha256::digest(&client_key)),
            stored,
            "{}",
            role.name
        );
    }
    let path = format!("/proxy/api/v1/endpoints/{id}/jwks");
    let raw = wake.expect(reqwest::Method::GET, &path, None, 200).await;
    assert_eq!(raw["jwks"][0]["jwt_issuer"], "https://issuer");
    assert!(raw["jwks"][0].get("algorithms").is_none(), "{raw}");
    login
}

/// JWT roles have no password secret, are not listed, and cannot be made API roles.
async fn jwt_roles_are_not_api_roles(wake: &Wake, id: &str) {
    use reqwest::Method;
    for role in ["authenticated", "anonymous"] {
        let path =
            format!("/proxy/api/v1/get_endpoint_access_control?endpointish={id}&role={role}");
        let access: AccessControl =
            serde_json::from_value(wake.expect(Method::GET, &path, None, 200).await)
                .expect("access");
        assert_eq!(access.role_secret, "", "{role}");
    }
    let shown = wake
        .expect(Method::GET, &format!("/v1/endpoints/{id}"), None, 200)
        .await;
    assert_eq!(shown["roles"], json!(["app"]));
    let body = json!({"name": "authenticated", "password": "x"});
    let path = format!("/v1/endpoints/{id}/roles");
    let error = wake.expect(Method::POST, &path, Some(body), 409).await;
    assert!(message(&error).contains("JWT role"), "{error}");
}

/// Whether a database has the `auth` functions and one claims key.
const PREPARED: &str = "SELECT to_regprocedure('auth.begin(text,text)') IS NOT NULL
      AND to_regprocedure('auth.uid()') IS NOT NULL
      AND (SELECT count(*) FROM gw_auth.keys) = 1";

/// The roles as decision 1 says, the auth schema in every database, also one created later.
async fn prepared_in_postgres(wake: &Wake, endpoint: &Endpoint, id: &str) {
    let shop = app(endpoint, "shop").await;
    let role = shop
        .query_one(
            "SELECT rolcanlogin, rolinherit, rolbypassrls, rolsuper, rolcreatedb, rolcreaterole,
                    (SELECT count(*) FROM pg_auth_members WHERE member = r.oid),
                    rolconfig::text
             FROM pg_roles r WHERE rolname = 'authenticated'",
            &[],
        )
        .await
        .expect("authenticated exists");
    assert!(role.get::<_, bool>(0));
    for i in 1..=5 {
        assert!(!role.get::<_, bool>(i), "attribute {i}");
    }
    assert_eq!(role.get::<_, i64>(6), 0, "a member of nothing");
    assert_eq!(
        role.get::<_, Option<String>>(7).as_deref(),
        Some("{track_activities=off}")
    );
    for database in ["postgres", "shop"] {
        let client = app(endpoint, database).await;
        let ready: bool = client
            .query_one(PREPARED, &[])
            .await
            .expect(database)
            .get(0);
        assert!(ready, "{database}");
    }
    let body = json!({"name": "later", "owner": "app"});
    let path = format!("/v1/endpoints/{id}/databases");
    wake.expect(reqwest::Method::POST, &path, Some(body), 201)
        .await;
    let later = app(endpoint, "later").await;
    let ready: bool = later.query_one(PREPARED, &[]).await.expect("later").get(0);
    assert!(ready, "a database created later is prepared at creation");
}

/// A second rule re-runs the preparation and changes nothing; a third adds its new role;
/// the material still logs in. Returns the second rule's id (the third is deleted).
async fn preparation_is_idempotent(
    wake: &Wake,
    endpoint: &Endpoint,
    id: &str,
    login: &JwtLogin,
) -> String {
    use reqwest::Method;
    let rules = format!("/v1/endpoints/{id}/jwks");
    let shop = app(endpoint, "shop").await;
    let before = definitions(&shop).await;
    let body = json!({"provider_name": "other", "jwks_url": "https://idp.example/jwks.json",
                      "role_names": ["authenticated"], "algorithms": ["ES256"]});
    let second = wake.expect(Method::POST, &rules, Some(body), 201).await;
    assert_eq!(
        definitions(&shop).await,
        before,
        "the preparation is idempotent"
    );
    let body = json!({"provider_name": "third", "jwks": {"keys": []}, "role_names": ["reader"]});
    let third = wake.expect(Method::POST, &rules, Some(body), 201).await;
    let again = wake.proxy_jwks(id).await.jwt_login.expect("jwt_login");
    assert!(again.claims_key == login.claims_key, "the key is made once");
    let secret = |l: &JwtLogin, name: &str| {
        l.roles
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.secret.clone())
    };
    assert_eq!(
        secret(&again, "authenticated"),
        secret(login, "authenticated")
    );
    assert!(secret(&again, "reader").is_some());
    let third = third["id"].as_str().expect("id");
    wake.expect(Method::DELETE, &format!("{rules}/{third}"), None, 204)
        .await;

    // The material works: a JWT session logs in with the ClientKey and gets its claims.
    let authenticated = login
        .roles
        .iter()
        .find(|r| r.name == "authenticated")
        .expect("role");
    let client_key = BASE64.decode(&authenticated.client_key).expect("base64");
    let mut session = Session::login(endpoint, "later", "authenticated", &client_key).await;
    let minter = Minter::new(&again);
    assert!(advance(&mut session, &minter, &Value::Null).await);
    assert!(advance(&mut session, &minter, &sub("alice")).await);
    assert_eq!(
        session.one("SELECT auth.user_id()").await.as_deref(),
        Some("alice")
    );
    second["id"].as_str().expect("id").to_owned()
}

/// What the preparation makes, as text: functions (with owner, settings and privileges), the
/// schemas' privileges and the JWT roles' attributes.
async fn definitions(client: &tokio_postgres::Client) -> String {
    let rows = client
        .query(
            "SELECT format('%s %s %s %s', p.oid::regprocedure, p.proowner::regrole, p.proacl, md5(p.prosrc))
               FROM pg_proc p WHERE p.pronamespace = 'auth'::regnamespace
             UNION ALL SELECT format('%s %s %s', n.nspname, n.nspowner::regrole, n.nspacl)
               FROM pg_namespace n WHERE n.nspname IN ('auth', 'gw_auth')
             UNION ALL SELECT format('%s %s %s %s', rolname, rolinherit, rolcanlogin, rolconfig)
               FROM pg_roles WHERE rolname IN ('authenticated', 'anonymous', 'gw_auth_owner')
             UNION ALL SELECT format('%s %s', p.oid::regprocedure, p.proacl) FROM pg_proc p
               WHERE p.proname IN ('pg_cancel_backend', 'pg_terminate_backend')
             ORDER BY 1",
            &[],
        )
        .await
        .expect("definitions");
    rows.iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_cannot_be_forged() {
    use reqwest::Method;
    let wake = Wake::start("jwt-sql", "26500-26999").await;
    let id = "ep-forge";
    let endpoint = wake.endpoint(id).await;
    let body = json!({"provider_name": "test", "jwks": {"keys": []}});
    wake.expect(
        Method::POST,
        &format!("/v1/endpoints/{id}/jwks"),
        Some(body),
        201,
    )
    .await;
    let login = wake.proxy_jwks(id).await.jwt_login.expect("jwt_login");
    let minter = Minter::new(&login);
    let authenticated = login
        .roles
        .iter()
        .find(|r| r.name == "authenticated")
        .expect("role");
    let client_key = BASE64.decode(&authenticated.client_key).expect("base64");
    todos(&endpoint).await;

    let mut s = Session::login(&endpoint, "shop", "authenticated", &client_key).await;
    alice_sees_her_rows(&mut s, &minter).await;
    edited_or_misbound_envelopes_fail(&mut s, &minter).await;
    replays_fail(&mut s, &minter).await;
    let mut t = Session::login(&endpoint, "shop", "authenticated", &client_key).await;
    another_backend_cannot_use_them(&mut s, &mut t, &minter).await;
    no_other_role_or_object(&mut s).await;

    // RESET ALL and DISCARD ALL clear the claims.
    s.exec("RESET ALL").await;
    assert_eq!(s.one("SELECT auth.user_id()").await, None, "RESET ALL");
    assert!(advance(&mut s, &minter, &sub("alice")).await);
    s.exec("DISCARD ALL").await;
    assert_eq!(s.one("SELECT auth.user_id()").await, None, "DISCARD ALL");

    // Bob in his own session sees and adds only his rows.
    assert!(advance(&mut t, &minter, &Value::Null).await);
    assert!(advance(&mut t, &minter, &sub("bob")).await);
    let titles = t
        .query("SELECT title FROM todos ORDER BY 1")
        .await
        .expect("titles");
    assert_eq!(titles, vec![vec![Some("b1".to_owned())]]);
    let added = t
        .one("INSERT INTO todos (owner, title) VALUES ('bob', 'b2') RETURNING owner")
        .await;
    assert_eq!(added.as_deref(), Some("bob"));

    // A JWT role may set its own password in SQL; the suspend puts the stored one back.
    t.exec("ALTER ROLE authenticated PASSWORD 'chosen-by-a-user'")
        .await;
    drop((s, t));
    let suspend = format!("/v1/endpoints/{id}/suspend?force=false");
    let deadline = Instant::now() + Duration::from_secs(30);
    while wake.call(Method::POST, &suspend, None).await.0 != 200 {
        assert!(Instant::now() < deadline, "the endpoint never suspended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wake.expect(Method::POST, &format!("/v1/endpoints/{id}/wake"), None, 200)
        .await;
    let mut again = Session::login(&endpoint, "shop", "authenticated", &client_key).await;
    assert!(advance(&mut again, &minter, &Value::Null).await);
    wake.stop().await;
}

/// The app's table, with RLS on auth.user_id() in the init-plan form.
async fn todos(endpoint: &Endpoint) {
    app(endpoint, "shop")
        .await
        .batch_execute(
            "CREATE TABLE todos (id serial PRIMARY KEY, owner text NOT NULL, title text NOT NULL);
             ALTER TABLE todos ENABLE ROW LEVEL SECURITY;
             CREATE POLICY own ON todos FOR ALL TO authenticated
                 USING (owner = (SELECT auth.user_id())) WITH CHECK (owner = (SELECT auth.user_id()));
             GRANT SELECT, INSERT, UPDATE, DELETE ON todos TO authenticated;
             GRANT USAGE ON SEQUENCE todos_id_seq TO authenticated;
             INSERT INTO todos (owner, title) VALUES ('alice', 'a1'), ('alice', 'a2'), ('bob', 'b1');",
        )
        .await
        .expect("todos");
}

const COUNT: &str = "SELECT count(*) FROM todos";

/// No claims before auth.begin; ctr = 1 first; then alice's sub, her rows, and a UUID sub.
async fn alice_sees_her_rows(s: &mut Session, minter: &Minter) {
    assert_eq!(
        s.one("SELECT auth.user_id()").await,
        None,
        "no claims before auth.begin"
    );
    assert_eq!(s.one(COUNT).await.as_deref(), Some("0"));
    let skipped = minter.envelope(s.pid, s.bs, "authenticated", now() + 60, 2, &sub("alice"));
    assert!(
        !begin(s, &skipped).await,
        "the first envelope must have ctr 1"
    );
    assert!(advance(s, minter, &Value::Null).await);
    assert_eq!(s.one("SELECT auth.user_id()").await, None);
    assert!(advance(s, minter, &sub("alice")).await);
    assert_eq!(
        s.one("SELECT auth.user_id()").await.as_deref(),
        Some("alice")
    );
    assert_eq!(s.one("SELECT auth.uid()").await, None);
    assert_eq!(
        s.one("SELECT auth.jwt() ->> 'role'").await.as_deref(),
        Some("authenticated")
    );
    assert_eq!(s.one(COUNT).await.as_deref(), Some("2"));
    // The same in a parallel plan (auth.session() has no EXCEPTION block).
    s.exec("SET force_parallel_mode = on").await;
    assert_eq!(
        s.one(COUNT).await.as_deref(),
        Some("2"),
        "in a parallel plan"
    );
    s.exec("RESET force_parallel_mode").await;
    let forged = "INSERT INTO todos (owner, title) VALUES ('bob', 'forged')";
    assert_eq!(s.fails(forged).await, "42501");
    let uuid = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
    assert!(advance(s, minter, &sub(uuid)).await);
    assert_eq!(s.one("SELECT auth.uid()").await.as_deref(), Some(uuid));
}

/// Edited claims, another pid, role, backend_start or kid, an expired envelope: NULL or
/// refused, and a refused auth.begin clears the claims.
async fn edited_or_misbound_envelopes_fail(s: &mut Session, minter: &Minter) {
    let alice = minter.next(s, &sub("alice"));
    assert!(begin(s, &alice).await);
    let edited = alice.0.replace("\"alice\"", "\"bob\"");
    s.one(&format!(
        "SELECT set_config('gw_auth.claims', {}, false)",
        quote(&edited)
    ))
    .await;
    assert_eq!(s.one("SELECT auth.user_id()").await, None);
    assert_eq!(s.one(COUNT).await.as_deref(), Some("0"));
    assert!(advance(s, minter, &sub("alice")).await);
    s.ctr += 1;
    let other_pid = minter.envelope(
        s.pid + 1,
        s.bs,
        "authenticated",
        now() + 60,
        s.ctr,
        &sub("bob"),
    );
    assert!(!begin(s, &other_pid).await);
    assert_eq!(
        s.one("SELECT auth.user_id()").await,
        None,
        "a failed begin clears the claims"
    );
    let anon = minter.envelope(s.pid, s.bs, "anonymous", now() + 60, s.ctr + 1, &sub("bob"));
    assert!(!begin(s, &anon).await, "another role");
    let old_bs = minter.envelope(
        s.pid,
        s.bs - 1,
        "authenticated",
        now() + 60,
        s.ctr + 2,
        &sub("bob"),
    );
    assert!(!begin(s, &old_bs).await, "another backend_start");
    let (env, mac) = minter.next(s, &sub("bob"));
    assert!(
        !begin(s, &(env, mac.replacen("v1.1.", "v1.2.", 1))).await,
        "an unknown kid"
    );
    s.ctr += 1;
    let expired = minter.envelope(
        s.pid,
        s.bs,
        "authenticated",
        now() - 1,
        s.ctr,
        &sub("alice"),
    );
    assert!(!begin(s, &expired).await, "expired");
}

/// An older envelope (lower ctr) or the same one again is refused; a valid envelope that
/// never went through auth.begin gives NULL.
async fn replays_fail(s: &mut Session, minter: &Minter) {
    let older = minter.next(s, &sub("alice"));
    let newer = minter.next(s, &sub("alice"));
    assert!(begin(s, &newer).await);
    assert!(!begin(s, &older).await, "replay of a lower ctr");
    assert!(!begin(s, &newer).await, "replay of the same ctr");
    assert_eq!(s.one("SELECT auth.user_id()").await, None);
    assert!(advance(s, minter, &sub("alice")).await);
    let (env, mac) = minter.next(s, &sub("bob"));
    s.one(&format!(
        "SELECT set_config('gw_auth.claims', {}, false), set_config('gw_auth.mac', {}, false)",
        quote(&env),
        quote(&mac)
    ))
    .await;
    assert_eq!(
        s.one("SELECT auth.user_id()").await,
        None,
        "ctr must equal the register"
    );
}

/// Another backend of the same role cannot use this one's envelopes.
async fn another_backend_cannot_use_them(s: &mut Session, t: &mut Session, minter: &Minter) {
    let mut stolen = minter.next(s, &sub("alice"));
    assert!(begin(s, &stolen).await);
    assert!(!begin(t, &stolen).await);
    stolen.0 = stolen.0.replace(&format!("\"ctr\":{}", s.ctr), "\"ctr\":1");
    assert!(!begin(t, &stolen).await);
    assert_eq!(t.one("SELECT auth.user_id()").await, None);
    // Set by hand in a session that never took an envelope: an error, never claims.
    let forged = format!(
        "SELECT set_config('gw_auth.claims', {}, false), auth.user_id()",
        quote(&stolen.0)
    );
    assert_eq!(t.fails(&forged).await, "55000");
    t.exec("RESET ALL").await;
}

/// RESET ROLE and SET ROLE NONE keep `authenticated` (and alice); no other role can be
/// assumed; nothing in auth or gw_auth can be written, the keys not read, the register not
/// moved, other backends not signalled.
async fn no_other_role_or_object(s: &mut Session) {
    s.exec("RESET ROLE").await;
    s.exec("SET ROLE NONE").await;
    assert_eq!(
        s.one("SELECT current_user").await.as_deref(),
        Some("authenticated")
    );
    assert_eq!(
        s.one("SELECT auth.user_id()").await.as_deref(),
        Some("alice")
    );
    for sql in [
        "SET ROLE app",
        "SET ROLE cloud_admin",
        "SET ROLE gw_auth_owner",
        "SET ROLE anonymous",
        "SET SESSION AUTHORIZATION cloud_admin",
        "SET SESSION AUTHORIZATION app",
        "CREATE OR REPLACE FUNCTION auth.user_id() RETURNS text LANGUAGE sql AS $$ SELECT 'bob' $$",
        "CREATE FUNCTION auth.x() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
        "CREATE TABLE auth.t (i int)",
        "ALTER FUNCTION auth.session() RENAME TO s2",
        "SELECT * FROM gw_auth.keys",
        "INSERT INTO gw_auth.keys VALUES (9, '\\x00', '\\x00', NULL)",
        "SELECT setval('gw_auth.reg', 1000000)",
        "SELECT setval('gw_auth.held_hi', 1), setval('gw_auth.held_lo', 1)",
        "SELECT pg_cancel_backend(pg_backend_pid())",
        "SELECT pg_terminate_backend(pg_backend_pid())",
        "ALTER ROLE authenticated SET track_activities = on",
    ] {
        assert_eq!(s.fails(sql).await, "42501", "{sql}");
    }
    assert_eq!(
        s.one("SELECT current_user").await.as_deref(),
        Some("authenticated")
    );
    assert_eq!(
        s.one("SELECT auth.user_id()").await.as_deref(),
        Some("alice")
    );
}
