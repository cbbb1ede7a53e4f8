//! A Postgres 15 of a test's own (superuser `postgres`/`postgres`, `scripts/postgres.sh
//! temp`), for a state store outside the wake service: stopped and deleted on drop, and by
//! `postgres.sh watch` should the test process die.

use std::path::{Path, PathBuf};

use tokio_postgres::NoTls;

pub struct StorePostgres {
    pub dir: PathBuf,
    pub port: u16,
}

/// `bash scripts/postgres.sh <args>` (with `PG_FAST=1`).
pub fn postgres_sh(args: &[&str]) -> std::process::Output {
    std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh"))
        .args(args)
        .env("PG_FAST", "1")
        .output()
        .expect("run scripts/postgres.sh")
}

impl StorePostgres {
    pub fn start(port: u16) -> StorePostgres {
        let out = postgres_sh(&["temp", &port.to_string()]);
        assert!(
            out.status.success(),
            "postgres.sh temp {port}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let me = std::process::id().to_string();
        let dir_arg = dir.to_str().expect("UTF-8 path");
        assert!(postgres_sh(&["watch", &me, dir_arg]).status.success());
        StorePostgres { dir, port }
    }

    /// A superuser session on `database`.
    pub async fn superuser(&self, database: &str) -> tokio_postgres::Client {
        let url = format!(
            "postgres://postgres:postgres@127.0.0.1:{}/{database}",
            self.port
        );
        let (client, connection) = tokio_postgres::connect(&url, NoTls)
            .await
            .expect("superuser login to the store");
        tokio::spawn(connection);
        client
    }
}

impl Drop for StorePostgres {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.to_str() {
            let _ = postgres_sh(&["stop", dir]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
