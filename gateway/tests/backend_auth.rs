//! The gateway logs in to a static route's Postgres with MD5 and with a cleartext password,
//! whichever the server asks for (README "Use it with your own Postgres"): this test binary's
//! Postgres gets `pg_hba.conf` lines asking one role for `md5` (its password stored as MD5)
//! and another for `password`. A TCP proxy in front of Postgres records which authentication
//! request each backend connection was sent, so the test knows the method was really used.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use gateway::{Config, Route};
use support::postgres;
use support::raw::Raw;

const WITHIN: Duration = Duration::from_secs(15);
/// AuthenticationCleartextPassword and AuthenticationMD5Password.
const CLEARTEXT: i32 = 3;
const MD5: i32 = 5;

/// A TCP proxy to Postgres recording, per connection, the user of the startup packet and the
/// first authentication request the server sent back (-1 when it sent something else).
struct AuthRecorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, i32)>>>,
}

impl AuthRecorder {
    async fn start(target: String) -> AuthRecorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (target, record) = (target.clone(), record.clone());
                tokio::spawn(async move {
                    let _ = relay(client, &target, &record).await;
                });
            }
        });
        AuthRecorder { addr, seen }
    }

    /// Connections seen for `user`, each with its first authentication request.
    fn codes(&self, user: &str) -> Vec<i32> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, code)| *code)
            .collect()
    }
}

async fn relay(
    mut client: TcpStream,
    target: &str,
    record: &Mutex<Vec<(String, i32)>>,
) -> std::io::Result<()> {
    let mut server = TcpStream::connect(target).await?;
    // The startup packet: length, protocol, then key\0value\0 pairs.
    let len = client.read_u32().await?;
    let mut startup = vec![0u8; len as usize - 4];
    client.read_exact(&mut startup).await?;
    let mut words = startup[4..].split(|&b| b == 0);
    let mut user = String::new();
    while let (Some(key), Some(value)) = (words.next(), words.next()) {
        if key == b"user" {
            user = String::from_utf8_lossy(value).into_owned();
        }
    }
    server.write_u32(len).await?;
    server.write_all(&startup).await?;
    // The server's first message: tag, length, and for 'R' the request code.
    let mut head = [0u8; 9];
    server.read_exact(&mut head).await?;
    let code = if head[0] == b'R' {
        i32::from_be_bytes([head[5], head[6], head[7], head[8]])
    } else {
        -1
    };
    record.lock().expect("lock").push((user, code));
    client.write_all(&head).await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

async fn sql(addr: SocketAddr, conn: &str, query: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/sql"))
        .header("Neon-Connection-String", conn)
        .header("Neon-Array-Mode", "true")
        .header("Neon-Raw-Text-Output", "true")
        .body(json!({ "query": query }).to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

#[tokio::test]
async fn md5_and_cleartext_backend_logins_work_over_sql_and_sessions() {
    let pg = postgres();
    let direct = pg.client().await;
    let suffix = std::process::id();
    let md5_role = format!("md5_user_{suffix}");
    let clear_role = format!("clear_user_{suffix}");
    // The MD5 role's password is stored as MD5 (with a SCRAM verifier Postgres would answer
    // an `md5` line with SCRAM instead).
    direct
        .batch_execute(&format!(
            "SET password_encryption = 'md5';
             CREATE ROLE {md5_role} LOGIN PASSWORD 'md5-secret';
             RESET password_encryption;
             CREATE ROLE {clear_role} LOGIN PASSWORD 'clear-secret';"
        ))
        .await
        .expect("roles");
    let stored: String = direct
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&md5_role],
        )
        .await
        .expect("pg_authid")
        .get(0);
    assert!(stored.starts_with("md5"), "{stored}");
    // This test binary's Postgres is its own: its hba file gets two lines ahead of the
    // scram-sha-256 ones initdb wrote (first match wins), then a reload.
    let hba_file: String = direct
        .query_one("SHOW hba_file", &[])
        .await
        .expect("hba_file")
        .get(0);
    let before = std::fs::read_to_string(&hba_file).expect("read pg_hba.conf");
    std::fs::write(
        &hba_file,
        format!(
            "host all {md5_role} 127.0.0.1/32 md5\nhost all {clear_role} 127.0.0.1/32 password\n{before}"
        ),
    )
    .expect("write pg_hba.conf");
    direct
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");

    let recorder = AuthRecorder::start(pg.address()).await;
    // The reload is asynchronous: wait until a direct login (through the recorder) is asked
    // for MD5.
    support::eventually("Postgres asks for MD5", WITHIN, || async {
        let conn = format!(
            "host=127.0.0.1 port={} user={md5_role} password=md5-secret dbname=main",
            recorder.addr.port()
        );
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .ok()?;
        drop(client);
        let _ = connection.await;
        (recorder.codes(&md5_role).last() == Some(&MD5)).then_some(())
    })
    .await;

    let route: Route = format!("db={}", recorder.addr).parse().expect("route");
    let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = public.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let gateway = tokio::spawn(gateway::serve(
        Config::for_tests(vec![route]),
        public,
        admin,
        shutdown.clone(),
    ));

    for (role, password, method) in [
        (&md5_role, "md5-secret", MD5),
        (&clear_role, "clear-secret", CLEARTEXT),
    ] {
        let connections = recorder.codes(role).len();
        let conn = format!("postgres://{role}:{password}@db.localtest.me/main");

        // POST /sql: the gateway logs in with the password from the connection string.
        let (status, body) = sql(addr, &conn, "SELECT current_user::text").await;
        assert_eq!((status, &body["rows"]), (200, &json!([[role]])), "{body}");
        // A wrong password is refused by Postgres, through the same method.
        let wrong = format!("postgres://{role}:wrong@db.localtest.me/main");
        let (status, body) = sql(addr, &wrong, "SELECT 1").await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(
            body["message"],
            format!("password authentication failed for user '{role}'")
        );

        // A WebSocket session: the client's cleartext password, the gateway's MD5 or
        // cleartext login.
        let url = format!("ws://{addr}/v2?address=db.localtest.me:5432");
        let (ws, _) =
            tokio_tungstenite::client_async(url, TcpStream::connect(addr).await.expect("tcp"))
                .await
                .expect("WebSocket upgrade");
        let mut ws = Raw::new(gateway::WsStream::new(ws));
        ws.login(&[("user", role.as_str()), ("database", "main")], password)
            .await
            .unwrap_or_else(|e| panic!("{role}: WebSocket login: {e:?}"));
        assert_eq!(
            ws.query("SELECT current_user").await.expect("query"),
            std::slice::from_ref(role)
        );
        drop(ws);

        // A TCP session: on a static route Postgres's own challenge is relayed to the client.
        let tcp_conn = format!(
            "host=127.0.0.1 port={} user={role} password={password} dbname=main",
            addr.port()
        );
        let (client, connection) = tokio_postgres::connect(&tcp_conn, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("{role}: TCP session: {e}"));
        let connection = tokio::spawn(connection);
        let row = client
            .query_one("SELECT current_user::text", &[])
            .await
            .expect("query");
        assert_eq!(&row.get::<_, String>(0), role);
        drop(client);
        let _ = connection.await;

        // Every backend connection opened for the role was asked for this method: /sql, the
        // wrong password, the WebSocket and the TCP session (4 at least).
        let codes = recorder.codes(role)[connections..].to_vec();
        assert!(codes.len() >= 4, "{role}: {codes:?}");
        assert!(codes.iter().all(|&c| c == method), "{role}: {codes:?}");
    }

    shutdown.cancel();
    gateway.await.expect("gateway task").expect("gateway ran");
}
