//! [`TestPostgres`]: one real Postgres 15 per test process, started through
//! `scripts/postgres.sh` (which also knows how to run it when the tests run as root), and
//! stopped and deleted by a watcher when the process exits.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// A throwaway Postgres 15 on `127.0.0.1:port`: superuser `postgres` with password `postgres`,
/// SCRAM authentication, a database `main`, fsync off (`PG_FAST=1`).
pub struct TestPostgres {
    /// The port it listens on.
    pub port: u16,
}

/// The repository's root (this crate lives in `gateway/testkit`).
pub(crate) fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("gateway/testkit lies two levels below the repository root")
        .to_path_buf()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// The Postgres shared by every test of this test process, started on first use.
pub fn postgres() -> &'static TestPostgres {
    static PG: OnceLock<TestPostgres> = OnceLock::new();
    PG.get_or_init(|| {
        let script = repo_root().join("scripts/postgres.sh");
        let port = free_port();
        let out = Command::new("bash")
            .arg(&script)
            .args(["temp", &port.to_string()])
            .env("PG_FAST", "1")
            .output()
            .expect("run scripts/postgres.sh");
        assert!(
            out.status.success(),
            "postgres.sh temp failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let status = Command::new("bash")
            .arg(&script)
            .args(["watch", &std::process::id().to_string(), &dir])
            .status()
            .expect("start the watcher");
        assert!(status.success(), "postgres.sh watch failed");
        TestPostgres { port }
    })
}

impl TestPostgres {
    /// `127.0.0.1:<port>`, as a route's address.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A connection string for `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:postgres@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// A role's SCRAM secret as Postgres stores it (what a control plane hands out).
    pub async fn role_secret(&self, role: &str) -> String {
        self.client()
            .await
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[&role],
            )
            .await
            .expect("pg_authid")
            .get(0)
    }

    /// A direct tokio-postgres client on database `main`, to set up and check what the
    /// gateway did.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.url("main"), tokio_postgres::NoTls)
                .await
                .expect("connect directly to the test Postgres");
        tokio::spawn(connection);
        client
    }
}
