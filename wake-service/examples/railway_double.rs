//! Runs the Railway test double (`tests/railway_double`) as a process, for the Node suite's
//! end-to-end test of the `railway` driver (sdk-tests/test/railway.test.js). Test tooling
//! only: nothing here is part of the wake service.
//!
//! `railway_double <dir> <postgres-port> <pgbouncer-port>` with the token in
//! `RAILWAY_DOUBLE_TOKEN`: a real Postgres (initdb in `<dir>/pg`) behind service `svc-pg`, a
//! real PgBouncer in front of it behind service `svc-bouncer` (project `prj-1`, environment
//! `env-1`), and the API on a free port. Prints one JSON line (`{"url": …}`), then serves
//! until stdin closes; stops Postgres and PgBouncer on the way out. `RAILWAY_DOUBLE_DEPLOYING_MS`
//! makes resumes slow (how long a deployment stays `DEPLOYING`).

#[path = "../tests/railway_double/mod.rs"]
mod railway_double;

use std::path::PathBuf;
use std::sync::Arc;

use railway_double::postgres::{Bouncer, Postgres};
use railway_double::server::{Double, NewService, Timing};
use serde_json::json;
use std::io::Read;

fn variables(url: &str) -> serde_json::Map<String, serde_json::Value> {
    json!({"DATABASE_URL": url, "DATABASE_PUBLIC_URL": url, "PGUSER": "postgres", "PGPASSWORD": "postgres"})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, pg_port, bouncer_port] = args.as_slice() else {
        eprintln!("usage: railway_double <dir> <postgres-port> <pgbouncer-port>");
        std::process::exit(2);
    };
    let token = std::env::var("RAILWAY_DOUBLE_TOKEN").expect("RAILWAY_DOUBLE_TOKEN");
    let (pg_port, bouncer_port): (u16, u16) = (
        pg_port.parse().expect("postgres port"),
        bouncer_port.parse().expect("pgbouncer port"),
    );
    let dir = PathBuf::from(dir);
    let postgres = Arc::new(Postgres::init(dir.join("pg"), pg_port).await);
    // RAILWAY_DOUBLE_DEPLOYING_MS: how long a new deployment stays DEPLOYING (a slow resume).
    let mut timing = Timing::default();
    if let Some(ms) = std::env::var("RAILWAY_DOUBLE_DEPLOYING_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        timing.deploying = std::time::Duration::from_millis(ms);
    }
    let double = Double::start(&token, timing).await;
    double
        .add_service(NewService {
            project: "prj-1".into(),
            environment: "env-1".into(),
            service: "svc-pg".into(),
            variables: variables(&postgres.url()),
            backend: Some(postgres.clone()),
        })
        .await;
    let bouncer = Bouncer::start(dir.join("bouncer"), bouncer_port, pg_port);
    let pooled = format!("postgresql://postgres:postgres@127.0.0.1:{bouncer_port}/postgres");
    double
        .add_service(NewService {
            project: "prj-1".into(),
            environment: "env-1".into(),
            service: "svc-bouncer".into(),
            variables: variables(&pooled),
            backend: None,
        })
        .await;
    println!("{}", json!({"url": double.url}));
    let _ = tokio::task::spawn_blocking(|| {
        let mut rest = Vec::new();
        std::io::stdin().read_to_end(&mut rest)
    })
    .await;
    drop(bouncer);
    postgres.remove().await;
}
