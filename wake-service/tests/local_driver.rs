//! The `local` compute driver and the embedded state cluster against real Postgres 15 and
//! PgBouncer processes: create, start, SCRAM logins direct and through PgBouncer, adoption by
//! a second driver, recovery from a killed PgBouncer, a port change, stop, restart with the
//! data intact, destroy; then the suspend/resume path: clients waiting in a paused PgBouncer
//! while Postgres is down, a pause giving up on a busy transaction, smart shutdown, repeated
//! stop/start cycles (one postmaster, no zombies), and the resume timings. Each test works in
//! its own directory under /tmp, removed at the end (processes included) even when an
//! assertion fails. Ports are drawn from 24000-24999.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio_postgres::error::SqlState;
use wake_service::compute::local::{LocalConfig, LocalDriver, StateCluster};
use wake_service::compute::{ComputeDriver, ComputeSpec, Health, PoolerStats, StopMode};

/// `RUST_LOG=wake_service=debug` shows what the driver does.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

// --- a temp directory that takes its processes with it -------------------------------------

struct TempRoot {
    path: PathBuf,
}

impl TempRoot {
    fn new(tag: &str) -> TempRoot {
        logs();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos();
        let path = PathBuf::from(format!(
            "/tmp/wake-local-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create temp root");
        TempRoot { path }
    }

    fn config(&self) -> LocalConfig {
        let mut config = LocalConfig::defaults(self.path.join("computes"));
        config.fast = true;
        config
    }
}

impl Drop for TempRoot {
    /// Immediate shutdown of every cluster, SIGTERM to every PgBouncer, SIGKILL to anything
    /// left, then the directory goes.
    fn drop(&mut self) {
        let mut dirs = vec![self.path.join("state")];
        if let Ok(entries) = std::fs::read_dir(self.path.join("computes")) {
            dirs.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
        }
        for dir in &dirs {
            let pgdata = dir.join("pgdata");
            if pgdata.join("postmaster.pid").exists() {
                let pg_ctl = "/usr/lib/postgresql/15/bin/pg_ctl";
                let mut cmd = if nix::unistd::geteuid().is_root() {
                    let mut cmd = std::process::Command::new("runuser");
                    cmd.args(["-u", "postgres", "--", pg_ctl]);
                    cmd
                } else {
                    std::process::Command::new(pg_ctl)
                };
                let _ = cmd
                    .args(["stop", "-m", "immediate", "-w", "-t", "30", "-D"])
                    .arg(&pgdata)
                    .current_dir("/")
                    .output();
            }
            if let Some(pid) = bouncer_pid(dir) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_under(&self.path);
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for (pid, _) in left {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// --- looking at processes -------------------------------------------------------------------

fn cmdline(pid: i32) -> Option<Vec<String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect(),
    )
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X')
    })
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live processes (other than this test) with an argument or working directory under `dir`.
fn processes_under(dir: &Path) -> Vec<(i32, String)> {
    let me = i32::try_from(std::process::id()).expect("pid");
    pids()
        .into_iter()
        .filter(|&pid| pid != me && alive(pid))
        .filter_map(|pid| {
            let args = cmdline(pid)?;
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
            let under = args.iter().any(|arg| Path::new(arg).starts_with(dir))
                || cwd.is_some_and(|cwd| cwd.starts_with(dir));
            under.then(|| (pid, args.join(" ")))
        })
        .collect()
}

/// Postmasters (`postgres -D <pgdata>`) of one data directory. A backend the postmaster just
/// forked has the same command line until it retitles itself (one for a connection that
/// closes before its startup packet never does), so processes whose parent matches too are
/// left out.
fn postmasters(pgdata: &Path) -> Vec<i32> {
    let matching: Vec<i32> = pids()
        .into_iter()
        .filter(|&pid| alive(pid))
        .filter(|&pid| {
            cmdline(pid).is_some_and(|args| {
                args.first().is_some_and(|arg0| arg0.ends_with("/postgres"))
                    && args
                        .windows(2)
                        .any(|pair| pair[0] == "-D" && Path::new(&pair[1]) == pgdata)
            })
        })
        .collect();
    matching
        .iter()
        .copied()
        .filter(|&pid| state_and_parent(pid).is_some_and(|(_, parent)| !matching.contains(&parent)))
        .collect()
}

fn bouncer_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("pgbouncer/pgbouncer.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&pid| alive(pid))
}

/// A port free right now, below the kernel's ephemeral range (32768-60999 by default): a port
/// from `bind(:0)` is an ephemeral one, and once the compute holding it stops, any outgoing
/// connection (another test's client) may take it as its source port and make the next start
/// fail with "address in use". 24000-24999 is this suite's share of the low range.
fn free_port() -> u16 {
    use rand::Rng;
    loop {
        let port = rand::thread_rng().gen_range(24_000..25_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn spec(endpoint: &str) -> ComputeSpec {
    let port = free_port();
    let mut pooler_port = free_port();
    while pooler_port == port {
        pooler_port = free_port();
    }
    ComputeSpec {
        endpoint: endpoint.to_string(),
        port,
        pooler_port,
        cu: 0.25,
    }
}

// --- clients ----------------------------------------------------------------------------------

async fn connect(
    port: u16,
    user: &str,
    password: &str,
    dbname: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname(dbname)
        .application_name("local-driver-test")
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The only value of a one-row, one-column simple query.
async fn scalar(client: &tokio_postgres::Client, sql: &str) -> String {
    let messages = client.simple_query(sql).await.expect(sql);
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a row")
}

/// Role `app` (password `pw`) and its database `appdb`, the way the wake service makes
/// roles: only the SCRAM verifier is sent.
async fn create_app_role(admin: &tokio_postgres::Client) {
    let verifier = postgres_protocol::password::scram_sha_256(b"pw");
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"));
    admin
        .batch_execute(&format!("CREATE ROLE app LOGIN PASSWORD '{verifier}'"))
        .await
        .expect("create role");
    admin
        .batch_execute("CREATE DATABASE appdb OWNER app")
        .await
        .expect("create database");
}

async fn expect_health(driver: &LocalDriver, spec: &ComputeSpec, want: Health) {
    let got = driver.health(spec).await.expect("health");
    assert_eq!(got, want, "health of {}", spec.endpoint);
}

// --- tests ------------------------------------------------------------------------------------

#[tokio::test]
async fn local_driver_lifecycle() {
    let began = Instant::now();
    let temp = TempRoot::new("driver");
    let config = temp.config();
    let driver = LocalDriver::new(config.clone()).expect("driver");
    assert_eq!(driver.name(), "local");
    let root = driver.root().to_path_buf();
    let mut spec = spec("ep-test-1");
    let dir = root.join(&spec.endpoint);
    let pgdata = dir.join("pgdata");

    // Create, twice (the second finds the marker and does nothing).
    expect_health(&driver, &spec, Health::Stopped).await;
    driver.create(&spec).await.expect("create");
    assert!(dir.join("created").exists());
    let marker_time = std::fs::metadata(dir.join("created"))
        .and_then(|m| m.modified())
        .expect("marker");
    driver.create(&spec).await.expect("create again");
    assert_eq!(
        std::fs::metadata(dir.join("created"))
            .and_then(|m| m.modified())
            .expect("marker"),
        marker_time,
        "a finished create is left alone"
    );
    assert_eq!(driver.list().await.expect("list"), vec!["ep-test-1"]);
    expect_health(&driver, &spec, Health::Stopped).await;
    assert!(
        processes_under(&dir).is_empty(),
        "create leaves the compute stopped"
    );

    // Start.
    let addresses = driver.start(&spec).await.expect("start");
    assert_eq!(addresses.direct, format!("127.0.0.1:{}", spec.port));
    assert_eq!(addresses.pooler, format!("127.0.0.1:{}", spec.pooler_port));
    expect_health(&driver, &spec, Health::Running).await;
    println!("created and started in {:?}", began.elapsed());

    // Role app and its database, as the wake service makes them.
    let admin = driver.admin(&spec).await.expect("admin");
    create_app_role(&admin).await;
    assert_eq!(scalar(&admin, "SHOW port").await, spec.port.to_string());
    drop(admin);

    // Direct: SCRAM works, a wrong password and the superuser over TCP do not.
    let direct = connect(spec.port, "app", "pw", "appdb")
        .await
        .expect("direct login");
    assert_eq!(scalar(&direct, "SELECT 1").await, "1");
    assert_eq!(scalar(&direct, "SELECT current_user").await, "app");
    drop(direct);
    assert!(connect(spec.port, "app", "wrong", "appdb").await.is_err());
    assert!(connect(spec.port, "cloud_admin", "", "postgres")
        .await
        .is_err());

    // Through PgBouncer (transaction mode): the same SCRAM login, a transaction.
    let pooled = connect(spec.pooler_port, "app", "pw", "appdb")
        .await
        .expect("pooled login");
    pooled
        .batch_execute(
            "BEGIN; CREATE TABLE t (id int PRIMARY KEY, note text); \
             INSERT INTO t VALUES (1, 'one'), (2, 'two'); COMMIT;",
        )
        .await
        .expect("transaction through the pooler");
    assert_eq!(scalar(&pooled, "SELECT count(*) FROM t").await, "2");
    drop(pooled);
    assert!(connect(spec.pooler_port, "app", "wrong", "appdb")
        .await
        .is_err());
    assert!(connect(spec.pooler_port, "cloud_admin", "", "postgres")
        .await
        .is_err());

    // A second driver (a restarted wake service) adopts both processes.
    let postmaster = postmasters(&pgdata);
    assert_eq!(postmaster.len(), 1, "one postmaster: {postmaster:?}");
    let bouncer = bouncer_pid(&dir).expect("pgbouncer pid");
    let restarted = LocalDriver::new(config.clone()).expect("second driver");
    restarted.start(&spec).await.expect("adopting start");
    assert_eq!(postmasters(&pgdata), postmaster, "postmaster adopted");
    assert_eq!(bouncer_pid(&dir), Some(bouncer), "pgbouncer adopted");
    expect_health(&restarted, &spec, Health::Running).await;

    // PgBouncer killed (stale pidfile left behind): Degraded, and start brings it back.
    kill(Pid::from_raw(bouncer), Signal::SIGKILL).expect("kill pgbouncer");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(bouncer) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    expect_health(&restarted, &spec, Health::Degraded).await;
    restarted
        .start(&spec)
        .await
        .expect("start after pgbouncer died");
    let bouncer = bouncer_pid(&dir).expect("new pgbouncer");
    assert_eq!(postmasters(&pgdata), postmaster, "postmaster untouched");
    expect_health(&restarted, &spec, Health::Running).await;

    // New ports: both processes are restarted on them.
    let old = spec.clone();
    let moved = self::spec("ep-test-1");
    spec.port = moved.port;
    spec.pooler_port = moved.pooler_port;
    restarted.start(&spec).await.expect("start on new ports");
    let moved_postmaster = postmasters(&pgdata);
    assert_eq!(moved_postmaster.len(), 1);
    assert_ne!(moved_postmaster, postmaster, "postmaster restarted");
    assert_ne!(bouncer_pid(&dir), Some(bouncer), "pgbouncer restarted");
    expect_health(&restarted, &spec, Health::Running).await;
    expect_health(&restarted, &old, Health::Degraded).await;
    let pooled = connect(spec.pooler_port, "app", "pw", "appdb")
        .await
        .expect("pooled login on the new port");
    assert_eq!(scalar(&pooled, "SELECT count(*) FROM t").await, "2");
    drop(pooled);

    // Stop: nothing left, twice.
    driver.stop(&spec).await.expect("stop");
    expect_health(&driver, &spec, Health::Stopped).await;
    assert_eq!(processes_under(&dir), vec![], "no process after stop");
    assert!(!dir.join("pgbouncer/pgbouncer.pid").exists());
    driver.stop(&spec).await.expect("stop again");

    // Pidfiles naming a live process that is not ours (pid reuse after a crash): both
    // programs would refuse to start; the driver removes them.
    for pidfile in ["pgdata/postmaster.pid", "pgbouncer/pgbouncer.pid"] {
        std::fs::write(dir.join(pidfile), "1\n").expect("fake pidfile");
    }
    expect_health(&driver, &spec, Health::Stopped).await;

    // Start again: the data is still there.
    driver.start(&spec).await.expect("restart");
    expect_health(&driver, &spec, Health::Running).await;
    let pooled = connect(spec.pooler_port, "app", "pw", "appdb")
        .await
        .expect("pooled login after restart");
    assert_eq!(
        scalar(&pooled, "SELECT string_agg(note, ',' ORDER BY id) FROM t").await,
        "one,two"
    );
    drop(pooled);

    // Destroy: directory and processes gone; idempotent.
    driver.destroy(&spec.endpoint).await.expect("destroy");
    assert!(!dir.exists());
    assert_eq!(processes_under(&dir), vec![], "no process after destroy");
    driver.destroy(&spec.endpoint).await.expect("destroy again");
    expect_health(&driver, &spec, Health::Stopped).await;
    assert!(driver.list().await.expect("list").is_empty());

    // Names that could leave the root are refused.
    for bad in ["..", "../x", "a/b", ""] {
        assert!(driver.destroy(bad).await.is_err(), "{bad:?}");
    }
    assert!(root.exists());
    println!("lifecycle test took {:?}", began.elapsed());
}

#[tokio::test]
async fn local_driver_redoes_an_unfinished_create() {
    let temp = TempRoot::new("half");
    let driver = LocalDriver::new(temp.config()).expect("driver");
    let spec = spec("ep-half");
    let dir = driver.root().join(&spec.endpoint);

    // What a wake service killed in the middle of create leaves: the directory without the
    // marker, here even with processes running in it.
    driver.create(&spec).await.expect("create");
    driver.start(&spec).await.expect("start");
    let old_postmaster = postmasters(&dir.join("pgdata"));
    assert_eq!(old_postmaster.len(), 1);
    std::fs::remove_file(dir.join("created")).expect("remove marker");
    std::fs::write(dir.join("pgdata/junk"), b"half-finished").expect("junk");

    driver
        .create(&spec)
        .await
        .expect("create over the leftovers");
    assert!(dir.join("created").exists());
    assert!(!dir.join("pgdata/junk").exists(), "leftovers wiped");
    assert!(dir.join("pgdata/PG_VERSION").exists());
    assert_eq!(processes_under(&dir), vec![], "old processes stopped");

    // A pooler port taken by someone else: PgBouncer 1.18 only warns and keeps its unix
    // socket, and the other listener answers on the port; start must still fail.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = ComputeSpec {
        pooler_port: squatter.local_addr().expect("addr").port(),
        ..spec.clone()
    };
    let err = driver.start(&taken).await.expect_err("pooler port in use");
    assert!(err.to_string().contains("cannot listen"), "{err}");
    expect_health(&driver, &taken, Health::Degraded).await;
    assert_eq!(bouncer_pid(&dir), None, "the failed PgBouncer is gone");
    drop(squatter);

    driver.start(&spec).await.expect("start the new cluster");
    expect_health(&driver, &spec, Health::Running).await;
    let admin = driver.admin(&spec).await.expect("admin");
    assert_eq!(
        scalar(
            &admin,
            "SELECT count(*) FROM pg_roles WHERE rolname = 'cloud_admin'"
        )
        .await,
        "1"
    );
    drop(admin);
    driver
        .destroy(&spec.endpoint)
        .await
        .expect("destroy a running compute");
    assert!(!dir.exists());
    assert_eq!(processes_under(&dir), vec![]);
}

#[tokio::test]
async fn state_cluster_start_adopt_stop() {
    let temp = TempRoot::new("state");
    let config = temp.config();
    let dir = temp.path.join("state");

    let cluster = StateCluster::start(&config, &dir).await.expect("start");
    let pid = cluster.pid().expect("postmaster runs");
    let connect = || async {
        let (client, connection) = cluster
            .connection_config()
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect over the unix socket");
        tokio::spawn(connection);
        client
    };
    let client = connect().await;
    assert_eq!(scalar(&client, "SELECT current_user").await, "cloud_admin");
    assert_eq!(scalar(&client, "SHOW listen_addresses").await, "");
    client
        .batch_execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('x')")
        .await
        .expect("write");
    drop(client);

    // Starting again without a stop (a killed wake service) adopts the postmaster.
    let again = StateCluster::start(&config, &dir)
        .await
        .expect("start again");
    assert_eq!(again.pid(), Some(pid), "same postmaster");
    assert_eq!(postmasters(&dir.join("pgdata")), vec![pid]);

    cluster.stop().await.expect("stop");
    assert_eq!(cluster.pid(), None);
    assert_eq!(processes_under(&dir), vec![], "no process after stop");
    again.stop().await.expect("stop again is a no-op");

    let restarted = StateCluster::start(&config, &dir)
        .await
        .expect("start after stop");
    assert!(restarted.pid().is_some_and(|p| p != pid));
    let (client, connection) = restarted
        .connection_config()
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect after restart");
    tokio::spawn(connection);
    assert_eq!(scalar(&client, "SELECT v FROM kept").await, "x");
    drop(client);
    restarted.stop().await.expect("final stop");
}

// --- suspend and resume ---------------------------------------------------------------------

/// `/proc/<pid>/stat`: the state letter and the parent pid (None when there is no such pid).
fn state_and_parent(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat[stat.rfind(')')? + 1..].trim_start();
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

fn me() -> i32 {
    i32::try_from(std::process::id()).expect("pid")
}

/// The value of a one-row, one-column query, or the error.
async fn query(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<String, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default())
}

async fn stats(driver: &LocalDriver, spec: &ComputeSpec) -> PoolerStats {
    driver
        .pooler_stats(spec)
        .await
        .expect("pooler stats")
        .expect("PgBouncer runs")
}

/// Polls `stats` until `done` holds (10 s at most).
async fn wait_for_stats(
    driver: &LocalDriver,
    spec: &ComputeSpec,
    what: &str,
    done: impl Fn(&PoolerStats) -> bool,
) -> PoolerStats {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = stats(driver, spec).await;
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "{what}: last {stats:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A created and started compute with role `app` (password `pw`), database `appdb` and table
/// `t` holding two rows.
async fn running_compute(tag: &str) -> (TempRoot, Arc<LocalDriver>, ComputeSpec, PathBuf) {
    let temp = TempRoot::new(tag);
    let driver = Arc::new(LocalDriver::new(temp.config()).expect("driver"));
    let spec = spec(&format!("ep-{tag}"));
    let dir = driver.root().join(&spec.endpoint);
    driver.create(&spec).await.expect("create");
    driver.start(&spec).await.expect("start");
    let admin = driver.admin(&spec).await.expect("admin");
    create_app_role(&admin).await;
    drop(admin);
    let app = connect(spec.port, "app", "pw", "appdb")
        .await
        .expect("app login");
    app.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, note text); INSERT INTO t VALUES (1, 'one'), (2, 'two')",
    )
    .await
    .expect("table");
    drop(app);
    (temp, driver, spec, dir)
}

/// (a) + (e): clients of a paused PgBouncer in front of a stopped Postgres wait (the stats
/// show them) and get their answers once `start` ran.
#[tokio::test]
async fn paused_clients_wait_for_start() {
    let (_temp, driver, spec, dir) = running_compute("wait").await;
    let before = stats(&driver, &spec).await;
    assert!(!before.paused, "{before:?}");
    assert_eq!(before.clients_waiting, 0, "{before:?}");

    // Logged in before the suspend, idle between transactions.
    let idle = connect(spec.pooler_port, "app", "pw", "appdb")
        .await
        .expect("pooled login");
    assert_eq!(
        query(&idle, "SELECT count(*) FROM t").await.expect("query"),
        "2"
    );
    let counted = wait_for_stats(&driver, &spec, "the transaction is counted", |s| {
        s.transactions > before.transactions
    })
    .await;
    assert_eq!(counted.clients_active, 1, "{counted:?}");

    // Suspend: PAUSE, then Postgres stops; PgBouncer stays.
    let bouncer = bouncer_pid(&dir).expect("pgbouncer");
    assert!(driver
        .pause_pooler(&spec, Duration::from_secs(10))
        .await
        .expect("pause"));
    driver
        .stop_postgres(&spec, StopMode::Fast)
        .await
        .expect("stop postgres");
    expect_health(&driver, &spec, Health::Stopped).await;
    assert!(postmasters(&dir.join("pgdata")).is_empty());
    assert_eq!(bouncer_pid(&dir), Some(bouncer), "PgBouncer keeps running");
    let paused = stats(&driver, &spec).await;
    assert!(paused.paused, "{paused:?}");
    assert_eq!(paused.clients_waiting, 0, "{paused:?}");

    // A new client logs in (over TCP, SCRAM: PgBouncer needs Postgres for the verifier), and
    // the idle one sends a query: both wait.
    let newcomer = tokio::spawn({
        let port = spec.pooler_port;
        async move {
            let client = connect(port, "app", "pw", "appdb").await?;
            query(&client, "SELECT string_agg(note, ',' ORDER BY id) FROM t").await
        }
    });
    let waiting = tokio::spawn(async move { query(&idle, "SELECT sum(id) FROM t").await });
    let seen = wait_for_stats(&driver, &spec, "two clients waiting", |s| {
        s.clients_waiting == 2
    })
    .await;
    assert!(seen.paused && seen.servers_active == 0, "{seen:?}");
    assert!(!newcomer.is_finished(), "the new client must wait");
    assert!(!waiting.is_finished(), "the idle client's query must wait");

    let resumed = Instant::now();
    driver.start(&spec).await.expect("start (resume)");
    let started = resumed.elapsed();
    let answer = tokio::time::timeout(Duration::from_secs(10), newcomer)
        .await
        .expect("the new client got an answer in time")
        .expect("task")
        .expect("the new client's query");
    assert_eq!(answer, "one,two");
    let sum = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting query got an answer in time")
        .expect("task")
        .expect("the waiting query");
    assert_eq!(sum, "3");
    println!(
        "resume: start took {started:?}, waiting clients answered after {:?}",
        resumed.elapsed()
    );

    expect_health(&driver, &spec, Health::Running).await;
    let after = stats(&driver, &spec).await;
    assert!(!after.paused, "{after:?}");
    assert_eq!(after.clients_waiting, 0, "{after:?}");
    assert!(after.transactions > counted.transactions, "{after:?}");
    assert_eq!(
        bouncer_pid(&dir),
        Some(bouncer),
        "the same PgBouncer throughout"
    );

    driver.stop(&spec).await.expect("stop");
    assert_eq!(driver.pooler_stats(&spec).await.expect("stats"), None);
}

/// Clients of the admin console (database `pgbouncer`), asked over its unix socket.
async fn admin_console_clients(dir: &Path, port: u16) -> usize {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(dir.join("run"))
        .port(port)
        .user("cloud_admin")
        .dbname("pgbouncer");
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("admin console");
    tokio::spawn(connection);
    let rows = client
        .simple_query("SHOW CLIENTS")
        .await
        .expect("SHOW CLIENTS");
    rows.iter()
        .filter(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                row.get("database") == Some("pgbouncer")
            }
            _ => false,
        })
        .count()
}

/// (b): a transaction holding a server connection makes PAUSE time out; PgBouncer is resumed
/// and keeps working, and the transaction commits.
#[tokio::test]
async fn pause_gives_up_on_a_busy_transaction() {
    let (_temp, driver, spec, dir) = running_compute("busy").await;
    let tx = connect(spec.pooler_port, "app", "pw", "appdb")
        .await
        .expect("pooled login");
    tx.batch_execute("BEGIN; INSERT INTO t VALUES (10, 'ten')")
        .await
        .expect("open a transaction");

    let began = Instant::now();
    let paused = driver
        .pause_pooler(&spec, Duration::from_millis(300))
        .await
        .expect("pause_pooler");
    let took = began.elapsed();
    assert!(
        !paused,
        "a busy transaction keeps the pause from completing"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(!stats(&driver, &spec).await.paused);

    // PgBouncer serves others meanwhile, and the transaction goes on and commits.
    let other = connect(spec.pooler_port, "app", "pw", "appdb")
        .await
        .expect("login after the failed pause");
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        query(&other, "SELECT count(*) FROM t"),
    )
    .await
    .expect("not paused")
    .expect("query");
    assert_eq!(answer, "2", "the open transaction is not visible yet");
    tx.batch_execute("INSERT INTO t VALUES (11, 'eleven'); COMMIT")
        .await
        .expect("commit");
    assert_eq!(
        query(
            &other,
            "SELECT string_agg(note, ',' ORDER BY id) FROM t WHERE id >= 10"
        )
        .await
        .expect("query"),
        "ten,eleven"
    );

    // The given-up PAUSE's connection was closed: the driver's cached one and ours remain.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let clients = admin_console_clients(&dir, spec.pooler_port).await;
        if clients == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{clients} admin console clients");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Without the transaction the pause completes; a second pause finds it done; resume is
    // idempotent.
    drop(tx);
    assert!(driver
        .pause_pooler(&spec, Duration::from_secs(10))
        .await
        .expect("pause"));
    assert!(driver
        .pause_pooler(&spec, Duration::from_secs(10))
        .await
        .expect("pause again"));
    assert!(stats(&driver, &spec).await.paused);
    driver.resume_pooler(&spec).await.expect("resume");
    driver.resume_pooler(&spec).await.expect("resume again");
    assert!(!stats(&driver, &spec).await.paused);
    assert_eq!(query(&other, "SELECT 1").await.expect("query"), "1");

    // A driver that did not pause it (a restarted wake service) finds out by asking.
    assert!(driver
        .pause_pooler(&spec, Duration::from_secs(10))
        .await
        .expect("pause"));
    let fresh = LocalDriver::new(_temp.config()).expect("second driver");
    assert!(stats(&fresh, &spec).await.paused, "probed: paused");
    fresh.start(&spec).await.expect("start resumes");
    assert!(!stats(&fresh, &spec).await.paused);
    assert!(
        !stats(
            &LocalDriver::new(_temp.config()).expect("third driver"),
            &spec
        )
        .await
        .paused,
        "probed: not paused"
    );
    assert_eq!(query(&other, "SELECT 1").await.expect("query"), "1");
}

/// Whether a new direct login is refused because the database is shutting down.
async fn refused_as_shutting_down(port: u16) -> bool {
    match connect(port, "app", "pw", "appdb").await {
        Ok(_) => false,
        Err(e) if e.code() == Some(&SqlState::CANNOT_CONNECT_NOW) => true,
        Err(e) => panic!("unexpected login error: {e}"),
    }
}

/// (c): a smart stop refuses new connections but lets an open session finish its transaction;
/// after its patience it turns fast.
#[tokio::test]
async fn smart_stop_waits_for_open_sessions() {
    let (_temp, driver, spec, dir) = running_compute("smart").await;
    let session = connect(spec.port, "app", "pw", "appdb")
        .await
        .expect("direct login");
    session
        .batch_execute("BEGIN; INSERT INTO t VALUES (20, 'twenty')")
        .await
        .expect("open a transaction");

    let stopper = tokio::spawn({
        let (driver, spec) = (driver.clone(), spec.clone());
        async move {
            driver
                .stop_postgres(
                    &spec,
                    StopMode::Smart {
                        patience: Duration::from_secs(60),
                    },
                )
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !refused_as_shutting_down(spec.port).await {
        assert!(Instant::now() < deadline, "new logins are never refused");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!stopper.is_finished(), "the stop waits for the session");
    session
        .batch_execute("INSERT INTO t VALUES (21, 'twenty-one'); COMMIT")
        .await
        .expect("the session goes on and commits");
    assert_eq!(
        query(&session, "SELECT count(*) FROM t")
            .await
            .expect("query"),
        "4"
    );
    assert!(refused_as_shutting_down(spec.port).await);
    assert!(
        !stopper.is_finished(),
        "the stop waits until the session ends"
    );
    drop(session);
    tokio::time::timeout(Duration::from_secs(10), stopper)
        .await
        .expect("the stop finishes once the session ended")
        .expect("task")
        .expect("smart stop");
    expect_health(&driver, &spec, Health::Stopped).await;
    assert!(postmasters(&dir.join("pgdata")).is_empty());
    assert!(bouncer_pid(&dir).is_some(), "PgBouncer keeps running");

    // The committed rows are there; then an idle session outlasts a short patience and is cut.
    driver.start(&spec).await.expect("start");
    let session = connect(spec.port, "app", "pw", "appdb")
        .await
        .expect("direct login");
    assert_eq!(
        query(
            &session,
            "SELECT string_agg(note, ',' ORDER BY id) FROM t WHERE id >= 20"
        )
        .await
        .expect("query"),
        "twenty,twenty-one"
    );
    let began = Instant::now();
    driver
        .stop_postgres(
            &spec,
            StopMode::Smart {
                patience: Duration::from_millis(300),
            },
        )
        .await
        .expect("smart stop turning fast");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(
        query(&session, "SELECT 1").await.is_err(),
        "the session was cut"
    );
    expect_health(&driver, &spec, Health::Stopped).await;
}

/// (d): suspend/resume cycles keep one postmaster (a child of this process, reaped when it
/// stops: never a zombie) and the same PgBouncer; suspended means Health::Stopped with
/// PgBouncer running.
#[tokio::test]
async fn suspend_resume_cycles() {
    let (_temp, driver, spec, dir) = running_compute("cycles").await;
    let pgdata = dir.join("pgdata");
    let bouncer = bouncer_pid(&dir).expect("pgbouncer");
    let client = connect(spec.pooler_port, "app", "pw", "appdb")
        .await
        .expect("pooled login");
    let mut seen = Vec::new();
    for cycle in 0..4 {
        let running = postmasters(&pgdata);
        assert_eq!(running.len(), 1, "cycle {cycle}: {running:?}");
        let postmaster = running[0];
        assert_eq!(
            state_and_parent(postmaster).map(|(_, parent)| parent),
            Some(me()),
            "the driver spawns the postmaster itself"
        );
        seen.push(postmaster);

        assert!(driver
            .pause_pooler(&spec, Duration::from_secs(10))
            .await
            .expect("pause"));
        // Smart first on odd cycles (nothing is connected, so it is as quick as fast).
        let mode = if cycle % 2 == 1 {
            StopMode::Smart {
                patience: Duration::from_secs(10),
            }
        } else {
            StopMode::Fast
        };
        driver
            .stop_postgres(&spec, mode)
            .await
            .expect("stop postgres");
        assert_eq!(
            state_and_parent(postmaster),
            None,
            "cycle {cycle}: the stopped postmaster is gone and reaped"
        );
        expect_health(&driver, &spec, Health::Stopped).await;
        assert_eq!(bouncer_pid(&dir), Some(bouncer), "PgBouncer keeps running");
        assert!(stats(&driver, &spec).await.paused);
        // Idempotent.
        driver
            .stop_postgres(&spec, StopMode::Fast)
            .await
            .expect("stop again");

        let began = Instant::now();
        driver.start(&spec).await.expect("start");
        let started = began.elapsed();
        assert_eq!(
            query(&client, "SELECT count(*) FROM t")
                .await
                .expect("query"),
            "2"
        );
        println!(
            "cycle {cycle}: start {started:?}, first query through PgBouncer after {:?}",
            began.elapsed()
        );
        expect_health(&driver, &spec, Health::Running).await;
        assert_eq!(bouncer_pid(&dir), Some(bouncer));
        assert!(!stats(&driver, &spec).await.paused);
    }
    // A start of a running compute adopts it.
    let running = postmasters(&pgdata);
    driver.start(&spec).await.expect("start while running");
    assert_eq!(postmasters(&pgdata), running);
    seen.extend(running);

    driver.stop(&spec).await.expect("stop");
    assert_eq!(processes_under(&dir), vec![], "nothing runs after stop");
    let zombies: Vec<i32> = seen
        .iter()
        .copied()
        .filter(|&pid| state_and_parent(pid).is_some_and(|(state, _)| state == 'Z'))
        .collect();
    assert!(zombies.is_empty(), "zombies: {zombies:?}");
    // Other tests run in this process too, so only our own postmasters are checked: each is
    // gone from /proc entirely (reaped), not merely dead.
    for pid in seen {
        assert_eq!(state_and_parent(pid), None, "postmaster {pid} reaped");
    }
    assert_eq!(driver.pooler_stats(&spec).await.expect("stats"), None);
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// `SELECT 1` as `cloud_admin` over the compute's unix socket (trust: no SCRAM).
async fn trusted_select(dir: &Path, port: u16) -> Result<String, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(dir.join("run"))
        .port(port)
        .user("cloud_admin")
        .dbname("postgres");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    query(&client, "SELECT 1").await
}

/// Timings of the resume path against the floor (a bare postmaster on the same data, started
/// with the driver's own command and polled the same way), printed; run alone for meaningful
/// numbers: `cargo test -p wake-service --test local_driver resume_timing -- --nocapture`.
/// A SCRAM login costs the (unoptimised) test client tens of ms, so first queries are taken
/// over trust (floor) or on a connection logged in before the suspend (resume), and a SCRAM
/// login is timed on its own.
#[tokio::test]
async fn resume_timing() {
    const ROUNDS: usize = 9;
    let (_temp, driver, spec, dir) = running_compute("timing").await;
    let pgdata = dir.join("pgdata");

    let began = Instant::now();
    let client = connect(spec.port, "app", "pw", "appdb")
        .await
        .expect("login");
    assert_eq!(query(&client, "SELECT 1").await.expect("query"), "1");
    let scram_direct = began.elapsed();
    let began = Instant::now();
    let client = connect(spec.pooler_port, "app", "pw", "appdb")
        .await
        .expect("login");
    assert_eq!(query(&client, "SELECT 1").await.expect("query"), "1");
    let scram_pooled = began.elapsed();
    drop(client);

    // The floor.
    driver.stop(&spec).await.expect("stop");
    let (mut bare_ready, mut bare_query) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let command = driver
            .bare_postgres_command(&spec.endpoint)
            .expect("bare command");
        let began = Instant::now();
        let mut child = tokio::process::Command::from(command)
            .spawn()
            .expect("spawn a bare postmaster");
        let pid = i32::try_from(child.id().expect("pid")).expect("pid");
        loop {
            let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).unwrap_or_default();
            let lines: Vec<&str> = text.lines().map(str::trim).collect();
            if lines.first() == Some(&pid.to_string().as_str()) && lines.get(7) == Some(&"ready") {
                break;
            }
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "bare postmaster never ready"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        bare_ready.push(began.elapsed());
        assert_eq!(trusted_select(&dir, spec.port).await.expect("query"), "1");
        bare_query.push(began.elapsed());
        kill(Pid::from_raw(pid), Signal::SIGINT).expect("SIGINT");
        child.wait().await.expect("reap");
    }

    // The resume path: PgBouncer paused and running, Postgres stopped; one client logged in
    // before the suspend sends a query, another logs in (SCRAM) while suspended.
    driver.start(&spec).await.expect("start");
    let idle = Arc::new(
        connect(spec.pooler_port, "app", "pw", "appdb")
            .await
            .expect("pooled login"),
    );
    let (mut starts, mut idle_answers, mut login_answers) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        assert!(driver
            .pause_pooler(&spec, Duration::from_secs(10))
            .await
            .expect("pause"));
        driver
            .stop_postgres(&spec, StopMode::Fast)
            .await
            .expect("stop postgres");
        let waiting = tokio::spawn({
            let idle = idle.clone();
            async move { (query(&idle, "SELECT 1").await, Instant::now()) }
        });
        let login = tokio::spawn({
            let port = spec.pooler_port;
            async move {
                let client = connect(port, "app", "pw", "appdb").await?;
                query(&client, "SELECT 1").await
            }
        });
        wait_for_stats(&driver, &spec, "two clients waiting", |s| {
            s.clients_waiting == 2
        })
        .await;
        let began = Instant::now();
        driver.start(&spec).await.expect("start");
        starts.push(began.elapsed());
        let (answer, answered) = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("answered in time")
            .expect("task");
        assert_eq!(answer.expect("query"), "1");
        idle_answers.push(answered - began);
        let answer = tokio::time::timeout(Duration::from_secs(10), login)
            .await
            .expect("answered in time")
            .expect("task");
        assert_eq!(answer.expect("query"), "1");
        login_answers.push(began.elapsed());
    }
    let mut direct = Vec::new();
    for _ in 0..ROUNDS {
        driver
            .stop_postgres(&spec, StopMode::Fast)
            .await
            .expect("stop postgres");
        let began = Instant::now();
        driver.start(&spec).await.expect("start");
        assert_eq!(trusted_select(&dir, spec.port).await.expect("query"), "1");
        direct.push(began.elapsed());
    }
    println!(
        "floor (bare postmaster, medians of {ROUNDS}): spawn→ready {:?}, spawn→first query (unix socket, trust) {:?}",
        median(bare_ready),
        median(bare_query)
    );
    println!(
        "resume (medians of {ROUNDS}): start {:?}; start→answer of a query waiting in PgBouncer {:?}; \
         start→answer of a client that logged in while suspended (SCRAM) {:?}",
        median(starts.clone()),
        median(idle_answers),
        median(login_answers)
    );
    println!(
        "resume → first direct query (unix socket, trust): {:?}",
        median(direct)
    );
    println!(
        "reference: SCRAM login + SELECT 1 on a running compute: direct {scram_direct:?}, through PgBouncer {scram_pooled:?}"
    );
    assert!(median(starts) < Duration::from_secs(5));
}
