//! Real processes behind the double's services: a Postgres 15 cluster (through
//! `scripts/postgres.sh`, superuser `postgres`/`postgres` on 127.0.0.1) and a PgBouncer in
//! front of it that authenticates every role through `auth_query`, as Railway's PgBouncer
//! template does with its Postgres.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use super::server::Backend;

type Done<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh")
}

async fn run(args: &[&str]) -> Result<(), String> {
    let output = tokio::process::Command::new("bash")
        .arg(script())
        .args(args)
        .env("PG_FAST", "1")
        .output()
        .await
        .map_err(|e| format!("postgres.sh: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "postgres.sh {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A Postgres cluster that starts and stops with its simulated deployment.
pub struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
}

impl Postgres {
    /// initdb in `dir` (a new directory).
    pub async fn init(dir: PathBuf, port: u16) -> Postgres {
        run(&["init", dir.to_str().expect("UTF-8 path")])
            .await
            .expect("initdb");
        Postgres { dir, port }
    }

    /// `postgresql://postgres:postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgresql://postgres:postgres@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// Stops the cluster and deletes its directory (the end of a test).
    pub async fn remove(&self) {
        let _ = run(&["stop", self.dir.to_str().expect("UTF-8 path")]).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Backend for Postgres {
    fn start(&self) -> Done<'_> {
        Box::pin(async move {
            let port = self.port.to_string();
            run(&["start", self.dir.to_str().unwrap_or_default(), &port]).await
        })
    }

    fn stop(&self) -> Done<'_> {
        Box::pin(async move { run(&["stop", self.dir.to_str().unwrap_or_default()]).await })
    }

    fn port(&self) -> Option<u16> {
        Some(self.port)
    }
}

/// A PgBouncer (transaction pooling) in front of a [`Postgres`], run as the `postgres` OS
/// user; every role logs in through `auth_query` against `pg_shadow`.
pub struct Bouncer {
    pub dir: PathBuf,
    pub port: u16,
    child: std::sync::Mutex<Option<std::process::Child>>,
}

impl Bouncer {
    pub fn start(dir: PathBuf, port: u16, postgres_port: u16) -> Bouncer {
        std::fs::create_dir_all(&dir).expect("bouncer dir");
        let d = dir.display();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host=127.0.0.1 port={postgres_port}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = scram-sha-256\nauth_file = {d}/userlist.txt\nauth_user = postgres\n\
                 auth_query = SELECT usename, passwd FROM pg_shadow WHERE usename = $1\n\
                 pool_mode = transaction\nlogfile = {d}/pgbouncer.log\nserver_login_retry = 1\n"
            ),
        )
        .expect("pgbouncer.ini");
        std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"postgres\"\n").expect("userlist");
        let chown = std::process::Command::new("chown")
            .args(["-R", "postgres:", dir.to_str().expect("UTF-8 path")])
            .status()
            .expect("chown");
        assert!(chown.success());
        let child = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", "pgbouncer"])
            .arg(dir.join("pgbouncer.ini"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("pgbouncer starts");
        Bouncer {
            dir,
            port,
            child: std::sync::Mutex::new(Some(child)),
        }
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let child = self.child.lock().map(|mut c| c.take()).unwrap_or(None);
        if let Some(mut child) = child {
            // runuser forwards the signal to PgBouncer.
            let _ = std::process::Command::new("pkill")
                .args([
                    "-f",
                    &format!("pgbouncer {}", self.dir.join("pgbouncer.ini").display()),
                ])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
