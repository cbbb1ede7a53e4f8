//! Neon's API (`/api/v2`) where it touches what the store keeps: role passwords are sealed
//! (the store never holds one in the clear), bound to their role, kept across a restart,
//! refused with Neon's 412 when a role has none (made before passwords were kept, or
//! tampered with) until a reset, and a replica with another key refuses to start on the same
//! store. The API's shapes are tested with Neon's clients in sdk-tests/test/neon-api.test.js.
//!
//! Ports: computes 29600-29639, the store's Postgres 29699.

mod common;

use clap::Parser;
use reqwest::Method;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wake_service::config::{Cli, Command};

use common::service::{Wake, TOKEN};
use common::store_postgres::StorePostgres;
use common::TempRoot;

const PORTS: &str = "29600-29639";
const PASSWORD: &str = "the-owner's password: long & odd";
const OTHER_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_passwords_are_sealed_revealed_and_bound_to_their_key() {
    common::logs();
    let store = StorePostgres::start(29699);
    let url = format!("postgres://postgres:postgres@127.0.0.1:{}/main", store.port);
    let flags = ["--database-url", url.as_str()];
    let wake = Wake::run_with(TempRoot::new("neon-api"), PORTS, &flags).await;
    wake.expect(
        Method::POST,
        "/v1/endpoints",
        Some(json!({"id": "keys", "suspend_timeout_seconds": -1})),
        201,
    )
    .await;
    for (name, password) in [("owner", PASSWORD), ("other", "other-password")] {
        wake.expect(
            Method::POST,
            "/v1/endpoints/keys/roles",
            Some(json!({"name": name, "password": password})),
            201,
        )
        .await;
    }
    wake.expect(
        Method::POST,
        "/v1/endpoints/keys/databases",
        Some(json!({"name": "app", "owner": "owner"})),
        201,
    )
    .await;
    let reveal = "/api/v2/projects/keys/branches/br-main-root-0/roles/owner/reveal_password";
    let revealed = wake.expect(Method::GET, reveal, None, 200).await;
    assert_eq!(revealed["password"], PASSWORD);

    // The store holds the password sealed, never in the clear.
    let state = store.superuser("main").await;
    let kept: Vec<(String, String)> = state
        .query(
            "SELECT name, sealed_password FROM roles WHERE endpoint_id = 'keys' ORDER BY name",
            &[],
        )
        .await
        .expect("roles")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(kept.len(), 2);
    for (name, sealed) in &kept {
        assert!(sealed.starts_with("v1:"), "{name}: {sealed}");
        assert!(!sealed.contains("password"), "{name}: {sealed}");
    }
    let everything: String = state
        .query_one("SELECT string_agg(t::text, ' ') FROM roles t", &[])
        .await
        .expect("rows")
        .get(0);
    assert!(!everything.contains(PASSWORD), "a password in the clear");

    // A sealed value is bound to its role: copied onto another role's row, it does not open.
    state
        .execute(
            "UPDATE roles SET sealed_password = $1 WHERE endpoint_id = 'keys' AND name = 'other'",
            &[&kept[1].1],
        )
        .await
        .expect("tamper");
    let (status, body) = wake
        .call(
            Method::GET,
            "/api/v2/projects/keys/branches/br-main-root-0/roles/other/reveal_password",
            None,
        )
        .await;
    assert_eq!(status, 412, "{body}");
    assert!(
        body["request_id"].is_string() && body["code"] == "PRECONDITION_FAILED",
        "{body}"
    );

    // A role made before passwords were kept: 412 until its password is reset.
    state
        .execute(
            "UPDATE roles SET sealed_password = NULL WHERE endpoint_id = 'keys' AND name = 'other'",
            &[],
        )
        .await
        .expect("as an earlier version left it");
    let (status, body) = wake
        .call(
            Method::GET,
            "/api/v2/projects/keys/connection_uri?role_name=other&database_name=app",
            None,
        )
        .await;
    assert_eq!(status, 412, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("reset it")),
        "{body}"
    );
    let reset = wake
        .expect(
            Method::POST,
            "/api/v2/projects/keys/branches/br-main-root-0/roles/other/reset_password",
            None,
            200,
        )
        .await;
    let new_password = reset["role"]["password"]
        .as_str()
        .expect("a password")
        .to_owned();
    let again = wake
        .expect(
            Method::GET,
            "/api/v2/projects/keys/branches/br-main-root-0/roles/other/reveal_password",
            None,
            200,
        )
        .await;
    assert_eq!(again["password"], new_password.as_str());

    // The key the first start made is in DATA_DIR/password.key; given as --password-key,
    // after a restart, it opens what was sealed.
    let key = std::fs::read_to_string(wake.temp.path.join("password.key")).expect("key file");
    let temp = wake.halt().await;
    let key = key.trim().to_owned();
    let mut with_key = flags.to_vec();
    with_key.extend_from_slice(&["--password-key", &key]);
    let wake = Wake::run_with(temp, PORTS, &with_key).await;
    let revealed = wake.expect(Method::GET, reveal, None, 200).await;
    assert_eq!(revealed["password"], PASSWORD);

    // A replica with another key refuses to start on this store, and says why.
    let other = TempRoot::new("neon-api-other");
    let cli = Cli::try_parse_from([
        "wake-service",
        "serve",
        "--data-dir",
        other.path.to_str().expect("UTF-8"),
        "--admin-token",
        TOKEN,
        "--compute-ports",
        "29630-29639",
        "--default-endpoint",
        "",
        "--database-url",
        &url,
        "--password-key",
        OTHER_KEY,
    ])
    .expect("flags");
    let Command::Serve(args) = cli.command else {
        unreachable!("parsed `serve`")
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let refused = wake_service::run(
        args.validate().expect("config"),
        listener,
        CancellationToken::new(),
    )
    .await
    .expect_err("another key is refused");
    assert!(
        format!("{refused:#}").contains("same --password-key"),
        "{refused:#}"
    );
    let still = wake.expect(Method::GET, reveal, None, 200).await;
    assert_eq!(still["password"], PASSWORD);
    wake.stop().await;
}
