//! Autoscaling (issue 17) against a real wake service (in-process, its embedded state store and
//! local computes: Postgres 15 + PgBouncer) and real `pgbench` load: the size is enforced on the
//! compute's own processes (cgroup CPU quota and memory limit, read back from the kernel for a
//! backend of the tenant), Postgres settings and PgBouncer pool sizes follow it live, the
//! restart-only settings are pending until the next start, the autoscaler grows a loaded
//! endpoint and shrinks it after the cooldown without failing a query, and bad input is
//! refused with nothing changed.
//!
//! Compute ports 28000-28499 (28000-28199, 28200-28399, 28400-28499: one range per test).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio_postgres::NoTls;
use wake_api::admin::{ComputeEvent, Endpoint};
use wake_api::usage::EndpointUsage;

mod common;
use common::service::Wake;
use common::TempRoot;

const PASSWORD: &str = "scale-password-1";
/// Fast sampling and a short cooldown so a test sees both directions in seconds.
const FLAGS: &[&str] = &[
    "--autoscale-interval-ms",
    "500",
    "--autoscale-cooldown-seconds",
    "4",
];

impl Wake {
    async fn endpoint(&self, id: &str) -> Endpoint {
        let value = self
            .expect(Method::GET, &format!("/v1/endpoints/{id}"), None, 200)
            .await;
        serde_json::from_value(value).expect("endpoint")
    }

    async fn events(&self, id: &str) -> Vec<ComputeEvent> {
        let value = self
            .expect(
                Method::GET,
                &format!("/v1/endpoints/{id}/events"),
                None,
                200,
            )
            .await;
        serde_json::from_value(value).expect("events")
    }

    /// An endpoint with role `app` and database `app`.
    async fn endpoint_with_role(&self, id: &str, min: f64, max: f64) -> Endpoint {
        self.expect(
            Method::POST,
            "/v1/endpoints",
            Some(json!({"id": id, "min_cu": min, "max_cu": max, "suspend_timeout_seconds": -1})),
            201,
        )
        .await;
        self.expect(
            Method::POST,
            &format!("/v1/endpoints/{id}/roles"),
            Some(json!({"name": "app", "password": PASSWORD})),
            201,
        )
        .await;
        self.expect(
            Method::POST,
            &format!("/v1/endpoints/{id}/databases"),
            Some(json!({"name": "app", "owner": "app"})),
            201,
        )
        .await;
        self.endpoint(id).await
    }
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("host:port")
}

async fn connect(port: u16) -> tokio_postgres::Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("app")
        .password(PASSWORD)
        .dbname("app");
    let (client, connection) = config.connect(NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

async fn show(client: &tokio_postgres::Client, name: &str) -> String {
    client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .expect("SHOW")
        .get(0)
}

/// The cgroup files (cpu quota, memory limit) of the process behind `client`'s session: the
/// kernel's word that the tenant's own backend is confined.
async fn backend_limits(client: &tokio_postgres::Client) -> (u64, u64) {
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let dir = |controller: &str| -> PathBuf {
        let line = groups
            .lines()
            .find(|l| l.split(':').nth(1) == Some(controller))
            .unwrap_or_else(|| panic!("no {controller} line in {groups}"));
        let path = line.splitn(3, ':').nth(2).expect("path");
        assert!(
            path.contains("/wake-"),
            "backend in its compute's group: {path}"
        );
        PathBuf::from(format!("/sys/fs/cgroup/{controller}{path}"))
    };
    let read = |path: PathBuf| -> u64 {
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .parse()
            .expect("number")
    };
    (
        read(dir("cpu").join("cpu.cfs_quota_us")),
        read(dir("memory").join("memory.limit_in_bytes")),
    )
}

/// `SHOW CONFIG` value of PgBouncer `key`, through its admin console on the unix socket.
async fn pooler_config(wake: &Wake, id: &str, pooler_port: u16, key: &str) -> String {
    let run = wake.temp.path.join("computes").join(id).join("run");
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(&run)
        .port(pooler_port)
        .user("cloud_admin")
        .dbname("pgbouncer");
    let (client, connection) = config.connect(NoTls).await.expect("admin console");
    tokio::spawn(connection);
    let rows = client
        .simple_query("SHOW CONFIG")
        .await
        .expect("SHOW CONFIG");
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some(key) => {
                row.get(1).map(str::to_owned)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {key} in SHOW CONFIG"))
}

fn setting<'a>(endpoint: &'a Endpoint, name: &str) -> &'a wake_api::admin::SizeSetting {
    endpoint
        .size
        .as_ref()
        .expect("a running compute shows its size")
        .settings
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_size_is_enforced_resized_live_and_restart_settings_wait() {
    common::logs();
    let wake = Wake::run_with(TempRoot::new("scale-fixed"), "28000-28199", FLAGS).await;
    let id = "ep-fixed";
    let endpoint = wake.endpoint_with_role(id, 0.25, 0.25).await;
    let size = endpoint.size.clone().expect("size shown");
    assert_eq!(
        size.limits, "cgroup v1",
        "this machine has writable v1 cgroups"
    );
    assert_eq!(size.cpu_max, "25000 100000");
    assert_eq!(size.memory_limit_bytes, 1 << 30);
    assert_eq!(size.pooler_pool_size, 88);
    assert_eq!(size.gateway_pool_max_conns, 88);
    assert_eq!(setting(&endpoint, "max_connections").value, "104");
    let direct = port_of(&endpoint.addresses.direct);
    let pooler = port_of(&endpoint.addresses.pooler);

    // The tenant's backend is in the compute's group, limited to 0.25 CU.
    let session = connect(direct).await;
    assert_eq!(backend_limits(&session).await, (25_000, 1 << 30));
    assert_eq!(show(&session, "max_connections").await, "104");
    assert_eq!(show(&session, "shared_buffers").await, "128MB");
    assert_eq!(show(&session, "effective_cache_size").await, "768MB");
    assert_eq!(
        pooler_config(&wake, id, pooler, "default_pool_size").await,
        "88"
    );

    // A transaction stays open across the resize, and a client of PgBouncer stays connected
    // through its RELOAD: nothing is interrupted.
    let pooled = connect(pooler).await;
    pooled
        .batch_execute("SELECT 1")
        .await
        .expect("pooled query");
    session
        .batch_execute("BEGIN; CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .expect("begin");
    let resized: Endpoint = serde_json::from_value(
        wake.expect(
            Method::POST,
            &format!("/v1/endpoints/{id}/resize"),
            Some(json!({"cu": 1})),
            200,
        )
        .await,
    )
    .expect("endpoint");
    assert_eq!(
        (resized.min_cu, resized.max_cu, resized.current_cu),
        (1.0, 1.0, 1.0)
    );
    session
        .batch_execute("INSERT INTO t VALUES (2); COMMIT")
        .await
        .expect("the open transaction goes on");
    assert_eq!(
        backend_limits(&session).await,
        (100_000, 4 << 30),
        "limits moved live"
    );
    let max_connections = setting(&resized, "max_connections");
    assert_eq!(
        (
            max_connections.value.as_str(),
            max_connections.pending.as_deref()
        ),
        ("104", Some("419"))
    );
    assert_eq!(
        setting(&resized, "shared_buffers").pending.as_deref(),
        Some("524288kB")
    );
    assert_eq!(
        setting(&resized, "effective_cache_size").pending,
        None,
        "reloadable: applied"
    );
    // Reloaded: a new session sees the new memory budgets, the postmaster keeps its own.
    let fresh = connect(direct).await;
    assert_eq!(show(&fresh, "effective_cache_size").await, "3GB");
    assert_eq!(show(&fresh, "max_connections").await, "104");
    assert_eq!(
        pooler_config(&wake, id, pooler, "default_pool_size").await,
        "372"
    );
    pooled
        .batch_execute("SELECT 2")
        .await
        .expect("the pooler's client goes on after its RELOAD");
    let through_pooler = connect(pooler).await;
    assert_eq!(show(&through_pooler, "max_connections").await, "104");
    let resize_event = wake
        .events(id)
        .await
        .into_iter()
        .rev()
        .find(|e| e.kind == "resized")
        .expect("event");
    assert_eq!(resize_event.cu, Some(1.0));
    assert!(
        resize_event
            .detail
            .as_deref()
            .is_some_and(|d| d.starts_with("api:")),
        "{resize_event:?}"
    );
    drop((session, fresh, through_pooler, pooled));

    // The next start applies what was pending.
    wake.expect(
        Method::POST,
        &format!("/v1/endpoints/{id}/suspend?force=true"),
        None,
        200,
    )
    .await;
    let suspended = wake.endpoint(id).await;
    assert!(suspended.size.is_none(), "no size shown while suspended");
    assert_eq!(suspended.current_cu, 1.0, "suspend keeps the size");
    let woken: Endpoint = serde_json::from_value(
        wake.expect(Method::POST, &format!("/v1/endpoints/{id}/wake"), None, 200)
            .await,
    )
    .expect("endpoint");
    assert_eq!(woken.current_cu, 1.0);
    assert_eq!(setting(&woken, "max_connections").value, "419");
    assert!(woken
        .size
        .as_ref()
        .expect("size")
        .settings
        .iter()
        .all(|s| s.pending.is_none()));
    let session = connect(direct).await;
    assert_eq!(show(&session, "max_connections").await, "419");
    assert_eq!(show(&session, "shared_buffers").await, "512MB");
    assert_eq!(backend_limits(&session).await, (100_000, 4 << 30));
    let rows: i64 = session
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 2);
    drop(session);

    // Metering: CU-seconds change at the moment of the resize.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let expected = cu_seconds_from_events(&wake.events(id).await);
    let usage: EndpointUsage = serde_json::from_value(
        wake.expect(Method::GET, &format!("/v1/endpoints/{id}/usage"), None, 200)
            .await,
    )
    .expect("usage");
    let metered = usage.total.compute_unit_seconds;
    assert!(
        (metered - expected).abs() < 0.5,
        "metered {metered} CU-s, the events say {expected}"
    );
    assert!(
        metered > usage.total.active_seconds * 0.5,
        "the 1 CU time is metered at 1 CU: {metered} CU-s over {} s",
        usage.total.active_seconds
    );

    bad_input_changes_nothing(&wake, id).await;
    wake.stop().await;
}

/// CU-seconds from the lifecycle events: each active span at the size of the moment (a state
/// event carries the size then, a `resized` event the new one).
fn cu_seconds_from_events(events: &[ComputeEvent]) -> f64 {
    let (mut total, mut cu, mut since) = (0.0, 0.0, None::<OffsetDateTime>);
    for e in events {
        if let Some(start) = since {
            total += (e.at - start).as_seconds_f64() * cu;
        }
        cu = e.cu.unwrap_or(cu);
        since = (e.to_state.as_deref() == Some("active")).then_some(e.at);
    }
    if let Some(start) = since {
        total += (OffsetDateTime::now_utc() - start).as_seconds_f64() * cu;
    }
    total
}

/// Every refusal is a 4xx with a message (422 for a value out of range, 400 for a body that
/// is not the right shape), and the endpoint is as it was.
async fn bad_input_changes_nothing(wake: &Wake, id: &str) {
    let before = wake.endpoint(id).await;
    let path = format!("/v1/endpoints/{id}");
    let resize = format!("/v1/endpoints/{id}/resize");
    let cases: &[(Method, &str, Value, u16, &str)] = &[
        (
            Method::PATCH,
            &path,
            json!({"min_cu": 0.3}),
            422,
            "multiple of 0.25",
        ),
        (
            Method::PATCH,
            &path,
            json!({"min_cu": 0.0}),
            422,
            "at least 0.25",
        ),
        (
            Method::PATCH,
            &path,
            json!({"max_cu": 17}),
            422,
            "at most 16",
        ),
        (
            Method::PATCH,
            &path,
            json!({"min_cu": 2, "max_cu": 1}),
            422,
            "greater than max_cu",
        ),
        (Method::PATCH, &path, json!({"min_cu": "1"}), 400, ""),
        (
            Method::POST,
            &resize,
            json!({"cu": 0.1}),
            422,
            "at least 0.25",
        ),
        (
            Method::POST,
            &resize,
            json!({"cu": 1.3}),
            422,
            "multiple of 0.25",
        ),
        (Method::POST, &resize, json!({"cu": 64}), 422, "at most 16"),
        (Method::POST, &resize, json!({}), 400, ""),
        (
            Method::POST,
            "/v1/endpoints/ep-nowhere/resize",
            json!({"cu": 1}),
            404,
            "does not exist",
        ),
    ];
    for (method, path, body, status, says) in cases {
        let value = wake
            .expect(method.clone(), path, Some(body.clone()), *status)
            .await;
        let message = value["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{method} {path} {body}: {message}");
    }
    let conflict = |says: &'static str| {
        let value = wake.expect(Method::POST, &resize, Some(json!({"cu": 2})), 409);
        async move {
            let value = value.await;
            let message = value["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(says), "{value}");
        }
    };
    // Not a fixed size: a resize is refused (PATCH the range instead).
    let range = |min: f64, max: f64| Some(json!({"min_cu": min, "max_cu": max}));
    wake.expect(Method::PATCH, &path, range(0.5, 2.0), 200)
        .await;
    conflict("PATCH").await;
    wake.expect(Method::PATCH, &path, range(1.0, 1.0), 200)
        .await;
    // Suspended: a resize is refused, the stored size stays.
    let suspend = format!("{path}/suspend?force=true");
    wake.expect(Method::POST, &suspend, None, 200).await;
    conflict("suspended").await;
    let after = wake.endpoint(id).await;
    assert_eq!(
        (after.min_cu, after.max_cu, after.current_cu),
        (before.min_cu, before.max_cu, before.current_cu)
    );
}

/// `pgbench` against `port` for `seconds`, select-only, progress every second: the exit
/// status, the per-second tps, and the whole output.
async fn pgbench(port: u16, clients: u32, seconds: u32) -> (bool, Vec<f64>, String) {
    let bin = PathBuf::from("/usr/lib/postgresql/15/bin/pgbench");
    let output = tokio::process::Command::new(bin)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "app",
            "-n",
            "-S",
        ])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-P",
            "1",
        ])
        .arg("app")
        .env("PGPASSWORD", PASSWORD)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("pgbench runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let tps = text
        .lines()
        .filter(|l| l.starts_with("progress:"))
        .filter_map(|l| l.split(", ").nth(1)?.strip_suffix(" tps")?.parse().ok())
        .collect();
    (output.status.success(), tps, text)
}

async fn pgbench_init(port: u16) {
    let status = tokio::process::Command::new("/usr/lib/postgresql/15/bin/pgbench")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "app",
            "-i",
            "-s",
            "2",
            "-q",
        ])
        .arg("app")
        .env("PGPASSWORD", PASSWORD)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("pgbench -i");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_grows_the_compute_and_idle_shrinks_it() {
    common::logs();
    let wake = Wake::run_with(TempRoot::new("scale-auto"), "28200-28399", FLAGS).await;
    let id = "ep-auto";
    let endpoint = wake.endpoint_with_role(id, 0.25, 2.0).await;
    let direct = port_of(&endpoint.addresses.direct);
    pgbench_init(direct).await;
    // Let the autoscaler settle (pgbench -i used CPU).
    let settle = Instant::now() + Duration::from_secs(30);
    while wake.endpoint(id).await.current_cu > 0.25 {
        assert!(
            Instant::now() < settle,
            "back to 0.25 CU after initialising"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let fixed = wake.endpoint_with_role("ep-pinned", 0.25, 0.25).await;
    let pinned_port = port_of(&fixed.addresses.direct);
    pgbench_init(pinned_port).await;

    let began = Instant::now();
    let load = tokio::spawn(pgbench(direct, 8, 20));
    let mut grown_after = None;
    let mut peak = 0.25f64;
    while !load.is_finished() {
        let cu = wake.endpoint(id).await.current_cu;
        if cu > 0.25 && grown_after.is_none() {
            grown_after = Some(began.elapsed());
        }
        peak = peak.max(cu);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, tps, text) = load.await.expect("load task");
    let idle = Instant::now();
    assert!(
        ok && text.contains("number of failed transactions: 0"),
        "no query failed: {text}"
    );
    let grown_after = grown_after.expect("the endpoint grew under load");
    println!("autoscale: grew after {grown_after:?}, peak {peak} CU, tps per second {tps:?}");
    assert!(
        grown_after < Duration::from_secs(10),
        "grew within 10 s: {grown_after:?}"
    );
    assert!(peak <= 2.0, "never above max_cu: {peak}");
    assert!(peak >= 0.75, "grew past one step: {peak}");

    // The same load on a fixed 0.25 CU endpoint: the baseline, and it never changes size.
    let (pinned_ok, pinned_tps, pinned_text) = pgbench(pinned_port, 8, 5).await;
    assert!(pinned_ok, "{pinned_text}");
    let (grown, small) = (mean(&tps[tps.len().saturating_sub(5)..]), mean(&pinned_tps));
    println!("autoscale: {grown:.0} tps grown vs {small:.0} tps at a fixed 0.25 CU");
    assert!(
        grown > small * 1.5,
        "throughput rose with the size: {small:.0} -> {grown:.0} tps"
    );
    let pinned = wake.endpoint("ep-pinned").await;
    assert_eq!(pinned.current_cu, 0.25, "a fixed size never changes");
    assert!(wake
        .events("ep-pinned")
        .await
        .iter()
        .all(|e| e.kind != "resized"));
    // At its maximum under load, an endpoint stays there.
    wake.expect(
        Method::PATCH,
        "/v1/endpoints/ep-pinned",
        Some(json!({"max_cu": 0.5})),
        200,
    )
    .await;
    let capped = tokio::spawn(pgbench(pinned_port, 8, 6));
    let mut sizes = Vec::new();
    while !capped.is_finished() {
        sizes.push(wake.endpoint("ep-pinned").await.current_cu);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (capped_ok, _, capped_text) = capped.await.expect("capped task");
    assert!(capped_ok, "{capped_text}");
    assert!(sizes.iter().all(|&cu| cu <= 0.5), "{sizes:?}");
    let at_max = sizes
        .iter()
        .position(|&cu| cu == 0.5)
        .expect("reached max_cu");
    assert!(
        sizes[at_max..].iter().all(|&cu| cu == 0.5),
        "stayed at max_cu under load: {sizes:?}"
    );

    // Idle: back to min_cu after the cooldown, and the pools followed both ways.
    while wake.endpoint(id).await.current_cu > 0.25 {
        assert!(
            idle.elapsed() < Duration::from_secs(30),
            "shrank back to 0.25 CU"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let shrunk_after = idle.elapsed();
    println!("autoscale: back to 0.25 CU {shrunk_after:?} after the load ended");
    assert!(
        shrunk_after >= Duration::from_secs(3),
        "not before the cooldown: {shrunk_after:?}"
    );
    let events = wake.events(id).await;
    let resizes: Vec<&ComputeEvent> = events.iter().filter(|e| e.kind == "resized").collect();
    assert!(resizes.len() >= 2, "{resizes:?}");
    for event in &resizes {
        let detail = event.detail.as_deref().unwrap_or_default();
        assert!(
            detail.starts_with("autoscaler: ") && detail.contains("cpu"),
            "{detail}"
        );
    }
    let endpoint = wake.endpoint(id).await;
    assert_eq!(endpoint.size.as_ref().map(|s| s.pooler_pool_size), Some(88));
    let metrics = wake
        .http
        .get(format!("{}/metrics", wake.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("wake_autoscale_resizes_total{cause=\"autoscaler\",direction=\"up\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wake_autoscale_resizes_total{cause=\"autoscaler\",direction=\"down\"}")
    );
    wake.stop().await;
}

/// A tenant that allocates more memory than its size allows meets its own memory limit: the
/// kernel stops its backends inside its group (Postgres restarts itself), while another
/// endpoint's session and the wake service go on untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_out_of_memory_hurts_only_itself() {
    common::logs();
    let wake = Wake::run_with(TempRoot::new("scale-oom"), "28400-28499", FLAGS).await;
    let hog = wake.endpoint_with_role("ep-hog", 0.25, 0.25).await;
    let calm = wake.endpoint_with_role("ep-calm", 0.25, 0.25).await;
    let calm_session = connect(port_of(&calm.addresses.direct)).await;
    calm_session
        .batch_execute("BEGIN; CREATE TEMP TABLE kept (x int); INSERT INTO kept VALUES (1)")
        .await
        .expect("calm session");
    let hog_port = port_of(&hog.addresses.direct);
    // Three sessions of ~900 MB each against a 1 GiB limit.
    let hogs: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(async move {
                let client = connect(hog_port).await;
                client
                    .query_one(
                        "SELECT length(string_agg(repeat('x', 1048576), '')) FROM generate_series(1, 900)",
                        &[],
                    )
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    let mut failed = 0;
    for hog in hogs {
        if hog.await.expect("task").is_err() {
            failed += 1;
        }
    }
    assert!(failed >= 1, "the hog did not fit in 1 GiB");
    let group = PathBuf::from(format!(
        "/sys/fs/cgroup/memory{}",
        std::fs::read_to_string("/proc/self/cgroup")
            .expect("cgroup")
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned()))
            .expect("memory line")
    ));
    let hog_groups: Vec<PathBuf> = std::fs::read_dir(&group)
        .expect("own memory group")
        .filter_map(|e| Some(e.ok()?.path().join("ep-hog")))
        .filter(|p| p.exists())
        .collect();
    let peak: u64 = std::fs::read_to_string(hog_groups[0].join("memory.max_usage_in_bytes"))
        .expect("peak")
        .trim()
        .parse()
        .expect("number");
    assert!(peak <= 1 << 30, "the hog stayed within its limit: {peak}");
    // The neighbour's transaction and the wake service are untouched.
    calm_session
        .batch_execute("INSERT INTO kept VALUES (2); COMMIT")
        .await
        .expect("the other tenant's transaction goes on");
    assert_eq!(wake.endpoint("ep-calm").await.current_cu, 0.25);
    // The hog's Postgres restarts itself and serves again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(hog_port)
            .user("app")
            .password(PASSWORD)
            .dbname("app");
        if let Ok((client, connection)) = config.connect(NoTls).await {
            tokio::spawn(connection);
            if client.query_one("SELECT 1", &[]).await.is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the hog's compute came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wake.stop().await;
}
