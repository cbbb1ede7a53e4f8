//! The `local` compute driver and the embedded state store against real Postgres 15 and
//! PgBouncer processes: create, start, SCRAM logins direct and through PgBouncer, adoption by
//! a second driver, recovery from a killed PgBouncer, a port change, stop, restart with the
//! data intact, destroy; then the suspend/resume path: clients waiting in a paused PgBouncer
//! while Postgres is down, a pause giving up on a busy transaction, smart shutdown, repeated
//! stop/start cycles (one postmaster, no zombies), and the resume timings. Then tenant
//! isolation (run as root, as `make up` runs the wake service), each test performing an
//! attack of issue 12: two endpoints as two OS users that cannot reach each other nor the
//! state store; a daemon started through `COPY … TO PROGRAM` killed by a suspend; symlinks,
//! FIFOs and fake pidfiles planted by the compute's user; sockets swapped for another
//! endpoint's; PgBouncer's auth file (roles added, changed, removed; the `search_path`
//! hijack); a state store without its marker; quarantine; data of an earlier version taken
//! over. Each test works in its own directory under /tmp, removed at the end with its
//! processes and the OS users made for it, even when an assertion fails. Ports are drawn
//! from 24000-24999.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio_postgres::error::SqlState;
use wake_service::autoscale::sizing::Cu;
use wake_service::compute::local::LocalDriver;
use wake_service::state_cluster::StateCluster;

mod common;
use common::{alive, bouncer_pid, cmdline, pids, processes_of, processes_under, uids, TempRoot};
use wake_service::compute::{
    ComputeDriver, ComputeSpec, Health, PoolerRole, PoolerStats, StopMode, Target,
};

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

/// A port free right now, below the kernel's ephemeral range (32768-60999 by default): a port
/// from `bind(:0)` is an ephemeral one, and once the compute holding it stops, any outgoing
/// connection (another test's client) may take it as its source port and make the next start
/// fail with "address in use". 24000-24999 is this suite's share of the low range. Ports are
/// handed out in turn from a random start, so two tests of this process never get the same
/// one (a random pick for each collides often: a port is free from the pick until its start).
fn free_port() -> u16 {
    use rand::Rng;
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        rand::thread_rng().gen_range(0..1000),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = 24_000 + u16::try_from(n % 1000).expect("below 1000");
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
        cu: Cu::MIN,
        target: Target::Local,
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
/// roles: only the SCRAM verifier is sent. PgBouncer is given the same verifier.
async fn create_app_role(driver: &LocalDriver, spec: &ComputeSpec, admin: &tokio_postgres::Client) {
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
    driver
        .set_pooler_roles(spec, &[pooler_role("app", &verifier)])
        .await
        .expect("pooler roles");
}

/// Whether `chattr +T` sets the top-directory flag on `dir`.
fn chattr_topdir(dir: &Path) -> bool {
    std::process::Command::new("chattr")
        .arg("+T")
        .arg(dir)
        .output()
        .is_ok_and(|o| o.status.success())
        && has_topdir(dir)
}

/// Whether `lsattr -d` shows the top-directory flag (`T`) on `dir`.
fn has_topdir(dir: &Path) -> bool {
    std::process::Command::new("lsattr")
        .arg("-d")
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|text| text.split_whitespace().next().map(|f| f.contains('T')))
        .unwrap_or(false)
}

fn pooler_role(name: &str, secret: &str) -> PoolerRole {
    PoolerRole {
        name: name.to_string(),
        secret: secret.to_string(),
    }
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
    // Where the filesystem has ext2/3/4's top-directory flag (a probe directory next to the
    // compute takes it), base/ carries it: new databases spread over block groups.
    let probe = root.join("topdir-probe");
    std::fs::create_dir(&probe).expect("probe dir");
    if chattr_topdir(&probe) {
        assert!(has_topdir(&pgdata.join("base")), "base/ is a top directory");
    }
    std::fs::remove_dir(&probe).expect("probe dir removed");

    // Start.
    let addresses = driver.start(&spec).await.expect("start");
    assert_eq!(addresses.direct, format!("127.0.0.1:{}", spec.port));
    assert_eq!(addresses.pooler, format!("127.0.0.1:{}", spec.pooler_port));
    expect_health(&driver, &spec, Health::Running).await;
    println!("created and started in {:?}", began.elapsed());

    // Role app and its database, as the wake service makes them.
    let admin = driver.admin(&spec).await.expect("admin");
    create_app_role(&driver, &spec, &admin).await;
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
    driver
        .destroy_endpoint(&spec.endpoint)
        .await
        .expect("destroy");
    assert!(!dir.exists());
    assert_eq!(processes_under(&dir), vec![], "no process after destroy");
    driver
        .destroy_endpoint(&spec.endpoint)
        .await
        .expect("destroy again");
    expect_health(&driver, &spec, Health::Stopped).await;
    assert!(driver.list().await.expect("list").is_empty());

    // Names that could leave the root are refused.
    for bad in ["..", "../x", "a/b", ""] {
        assert!(driver.destroy_endpoint(bad).await.is_err(), "{bad:?}");
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
        .destroy_endpoint(&spec.endpoint)
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
    create_app_role(&driver, &spec, &admin).await;
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

    // A new client logs in (over TCP, SCRAM against the auth file: no server needed) and
    // sends a query, and the idle one sends a query: both wait.
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

// --- isolation: each compute is its own principal ----------------------------------------------

const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";

/// Runs `script` with `/bin/sh` as OS user `user` (what `COPY … TO PROGRAM` gives a tenant),
/// bounded by 20 s.
async fn shell_as(user: &str, script: &str) -> std::process::Output {
    tokio::process::Command::new("runuser")
        .args(["-u", user, "--", "timeout", "20", "/bin/sh", "-c", script])
        .current_dir("/")
        .kill_on_drop(true)
        .output()
        .await
        .expect("runuser")
}

fn uid_of(user: &str) -> u32 {
    nix::unistd::User::from_name(user)
        .expect("getpwnam")
        .expect("the user exists")
        .uid
        .as_raw()
}

fn owner_and_mode(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).expect("metadata");
    (meta.uid(), meta.mode() & 0o7777)
}

/// Two endpoints (with role `app`), started.
async fn two_computes(tag: &str) -> (TempRoot, Arc<LocalDriver>, ComputeSpec, ComputeSpec) {
    let temp = TempRoot::new(tag);
    let driver = Arc::new(LocalDriver::new(temp.config()).expect("driver"));
    let a = spec(&format!("ep-{tag}-a"));
    let mut b = spec(&format!("ep-{tag}-b"));
    while b.port == a.port
        || b.port == a.pooler_port
        || b.pooler_port == a.port
        || b.pooler_port == a.pooler_port
    {
        b = spec(&b.endpoint);
    }
    for s in [&a, &b] {
        driver.create(s).await.expect("create");
        driver.start(s).await.expect("start");
        let admin = driver.admin(s).await.expect("admin");
        create_app_role(&driver, s, &admin).await;
    }
    (temp, driver, a, b)
}

/// Two endpoints run as two OS users; a shell as A's user can neither read B's files, nor
/// connect to B's Postgres or PgBouncer (nor be cloud_admin on its own), nor signal B's
/// processes, nor look into the state store.
#[tokio::test]
async fn each_endpoint_is_its_own_principal() {
    let began = Instant::now();
    let (temp, driver, a, b) = two_computes("iso").await;
    let state = StateCluster::start(&temp.config(), &temp.path.join("state"))
        .await
        .expect("state cluster");
    let root = driver.root().to_path_buf();
    let (dir_a, dir_b) = (root.join(&a.endpoint), root.join(&b.endpoint));
    let user_a = driver.os_user(&a.endpoint).expect("A's user");
    let user_b = driver.os_user(&b.endpoint).expect("B's user");
    assert_eq!(user_a, format!("{}-{}", temp.user_prefix, a.endpoint));
    let (uid_a, uid_b) = (uid_of(&user_a), uid_of(&user_b));
    let uid_state = uid_of(state.os_user());
    assert!(state.os_user().ends_with("_state"), "{}", state.os_user());
    assert_ne!(uid_a, uid_b);
    assert!(uid_a != 0 && uid_b != 0 && uid_state != 0);
    assert!(uid_state != uid_a && uid_state != uid_b);

    // Who runs and owns what.
    for (dir, uid) in [(&dir_a, uid_a), (&dir_b, uid_b)] {
        let postmaster = postmasters(&dir.join("pgdata"));
        assert_eq!(postmaster.len(), 1);
        assert_eq!(uids(postmaster[0]), Some((uid, uid)), "postmaster's user");
        let bouncer = bouncer_pid(dir).expect("pgbouncer");
        assert_eq!(uids(bouncer), Some((uid, uid)), "pgbouncer's user");
        for (path, mode) in [
            (dir.clone(), 0o700),
            (dir.join("run"), 0o700),
            (dir.join("pgdata"), 0o700),
            (dir.join("pgbouncer"), 0o700),
        ] {
            assert_eq!(owner_and_mode(&path), (uid, mode), "{}", path.display());
        }
    }
    assert_eq!(
        owner_and_mode(&root).1,
        0o711,
        "the compute root cannot be listed"
    );
    let state_pm = state.pid().expect("state postmaster");
    assert_eq!(uids(state_pm), Some((uid_state, uid_state)));

    // A's shell reaches its own cluster as a tenant role (trust on its private socket) but not
    // as cloud_admin (peer, mapped only from the wake service's user).
    let own = shell_as(
        &user_a,
        &format!(
            "{PSQL} -XAtw -h {} -p {} -U app -d appdb -c 'SELECT current_user'",
            dir_a.join("run").display(),
            a.port
        ),
    )
    .await;
    assert!(own.status.success(), "{own:?}");
    assert_eq!(String::from_utf8_lossy(&own.stdout).trim(), "app");
    let admin = shell_as(
        &user_a,
        &format!(
            "{PSQL} -XAtw -h {} -p {} -U cloud_admin -d postgres -c 'SELECT 1'",
            dir_a.join("run").display(),
            a.port
        ),
    )
    .await;
    assert!(!admin.status.success(), "{admin:?}");
    assert!(
        String::from_utf8_lossy(&admin.stderr).contains("Peer authentication failed"),
        "{admin:?}"
    );

    // Nothing of B's, nor of the state store's.
    let attempts = [
        format!("ls {}", dir_b.display()),
        format!("cat {}", dir_b.join("pgdata/PG_VERSION").display()),
        format!("ls {}", temp.path.join("state").display()),
        format!("ls {}", root.display()),
        format!(
            "{PSQL} -XAtw -h {} -p {} -U app -d appdb -c 'SELECT 1'",
            dir_b.join("run").display(),
            b.port
        ),
        format!(
            "{PSQL} -XAtw -h {} -p {} -U cloud_admin -d pgbouncer -c 'SHOW POOLS'",
            dir_b.join("run").display(),
            b.pooler_port
        ),
        format!(
            "{PSQL} -XAtw -h {} -p 5432 -U cloud_admin -d postgres -c 'SELECT 1'",
            temp.path.join("state/run").display()
        ),
        format!("kill -0 {}", postmasters(&dir_b.join("pgdata"))[0]),
        format!("kill -0 {}", bouncer_pid(&dir_b).expect("B's pgbouncer")),
        format!("kill -0 {state_pm}"),
    ];
    for attempt in &attempts {
        let out = shell_as(&user_a, attempt).await;
        assert!(
            !out.status.success(),
            "as {user_a}: `{attempt}` succeeded: {out:?}"
        );
    }
    // The wake service itself still is cloud_admin everywhere.
    let admin = driver.admin(&b).await.expect("admin of B");
    assert_eq!(scalar(&admin, "SELECT current_user").await, "cloud_admin");
    let client = state.connect().await.expect("state store");
    assert_eq!(scalar(&client, "SELECT current_user").await, "cloud_admin");
    drop(client);
    state.stop().await.expect("stop state");
    println!("isolation checks took {:?}", began.elapsed());
}

/// A process the tenant daemonized from inside Postgres (`COPY … TO PROGRAM` as superuser of
/// its own cluster) does not survive a suspend; PgBouncer does. `destroy` leaves no process
/// and no OS user.
#[tokio::test]
async fn a_daemon_of_the_tenant_does_not_survive_a_suspend() {
    let began = Instant::now();
    let (_temp, driver, spec, dir) = running_compute("daemon").await;
    let user = driver.os_user(&spec.endpoint).expect("user");
    let uid = uid_of(&user);
    let admin = driver.admin(&spec).await.expect("admin");
    let marker = format!("wake-test-daemon-{}", std::process::id());
    admin
        .batch_execute(&format!(
            // The program reads the row first: one that exits unread fails the COPY with
            // EPIPE when Postgres writes to it late.
            "COPY (SELECT 1) TO PROGRAM 'cat >/dev/null; setsid -f bash -c \"exec -a {marker} sleep 600\" </dev/null >/dev/null 2>&1'"
        ))
        .await
        .expect("COPY TO PROGRAM as the compute's superuser");
    drop(admin);
    let daemon = |marker: &str| {
        processes_of(uid)
            .into_iter()
            .filter(|&pid| {
                cmdline(pid).is_some_and(|args| args.first().is_some_and(|a| a == marker))
            })
            .collect::<Vec<i32>>()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon(&marker).is_empty() {
        assert!(Instant::now() < deadline, "the daemon never showed up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shell = daemon(&marker)[0];
    assert_eq!(
        uids(shell),
        Some((uid, uid)),
        "it runs as the compute's user"
    );
    // Reparented: not a child of the postmaster.
    let postmaster = postmasters(&dir.join("pgdata"))[0];
    assert_ne!(
        state_and_parent(shell).map(|(_, parent)| parent),
        Some(postmaster)
    );

    let bouncer = bouncer_pid(&dir).expect("pgbouncer");
    assert!(driver
        .pause_pooler(&spec, Duration::from_secs(10))
        .await
        .expect("pause"));
    let stopping = Instant::now();
    driver
        .stop_postgres(&spec, StopMode::Fast)
        .await
        .expect("suspend");
    println!("stop_postgres with the sweep took {:?}", stopping.elapsed());
    assert!(
        daemon(&marker).is_empty(),
        "the daemon survived the suspend"
    );
    assert_eq!(processes_of(uid), vec![bouncer], "only PgBouncer is left");

    // Resume: a client that came while suspended gets its answer (its login waits: this
    // PgBouncer never had a server connection for the pool, so it cannot answer a login
    // yet); then destroy takes everything.
    let port = spec.pooler_port;
    let waiting = tokio::spawn(async move {
        let client = connect(port, "app", "pw", "appdb").await?;
        query(&client, "SELECT count(*) FROM t").await
    });
    wait_for_stats(&driver, &spec, "the login waits", |s| {
        s.clients_waiting == 1
    })
    .await;
    driver.start(&spec).await.expect("resume");
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered")
        .expect("task")
        .expect("query");
    assert_eq!(answer, "2");
    driver
        .destroy_endpoint(&spec.endpoint)
        .await
        .expect("destroy");
    assert!(
        processes_of(uid).is_empty(),
        "nothing of the user after destroy"
    );
    assert!(
        nix::unistd::User::from_name(&user)
            .expect("getpwnam")
            .is_none(),
        "the OS user is removed by destroy"
    );
    assert!(!dir.exists());
    println!("daemon test took {:?}", began.elapsed());
}

/// A root-owned file outside the compute, and what it looked like.
struct Sentinel {
    path: PathBuf,
    contents: Vec<u8>,
    owner_mode: (u32, u32),
}

impl Sentinel {
    fn new(path: PathBuf) -> Sentinel {
        use std::os::unix::fs::PermissionsExt;
        let contents = b"root's own file\n".to_vec();
        std::fs::write(&path, &contents).expect("sentinel");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let owner_mode = owner_and_mode(&path);
        assert_eq!(owner_mode.0, 0);
        Sentinel {
            path,
            contents,
            owner_mode,
        }
    }

    fn check(&self, when: &str) {
        assert_eq!(
            std::fs::read(&self.path).expect("sentinel"),
            self.contents,
            "{when}: {} was written to",
            self.path.display()
        );
        assert_eq!(
            owner_and_mode(&self.path),
            self.owner_mode,
            "{when}: {} changed owner or mode",
            self.path.display()
        );
    }
}

/// What a shell as the compute's user can plant in its own directory, followed by suspend and
/// resume and by a full stop and start: `postgres.log` → a root-owned file outside, `run/` → a
/// directory outside, `pgbouncer.pid` naming a root process (plain, and a symlink to a
/// root-owned file), FIFOs in place of both logs. The root files keep their contents, owner and
/// mode, the root process is not signalled, nothing hangs, and the compute comes back.
#[tokio::test]
async fn a_tenants_symlinks_pidfiles_and_fifos_are_not_followed() {
    let began = Instant::now();
    let (temp, driver, spec, dir) = running_compute("swap").await;
    let user = driver.os_user(&spec.endpoint).expect("user");
    let uid = uid_of(&user);
    let log = Sentinel::new(temp.path.join("outside.log"));
    let elsewhere = temp.path.join("outside-dir");
    std::fs::create_dir(&elsewhere).expect("outside dir");
    let elsewhere_before = owner_and_mode(&elsewhere);
    let mut root_process = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("a root process");
    let root_pid = i32::try_from(root_process.id()).expect("pid");
    let pid_path = temp.path.join("outside.pid");
    std::fs::write(&pid_path, format!("{root_pid}\n")).expect("pid");
    let pidfile_target = Sentinel::new_with(&pid_path);
    assert_eq!(pidfile_target.owner_mode.0, 0);

    // Round 1: the log and the pidfile become symlinks, then suspend and resume.
    let plant = shell_as(
        &user,
        &format!(
            "cd {dir} && ln -sfn {log} postgres.log && ln -sfn {pid} pgbouncer/pgbouncer.pid",
            dir = dir.display(),
            log = log.path.display(),
            pid = pidfile_target.path.display(),
        ),
    )
    .await;
    assert!(plant.status.success(), "{plant:?}");
    cycle(&driver, &spec, true).await;
    log.check("suspend and resume with postgres.log a symlink");
    pidfile_target.check("suspend and resume with a symlinked pgbouncer.pid");
    assert!(
        alive(root_pid),
        "the root process named by pgbouncer.pid was signalled"
    );

    // Round 2: the same plus run/ a symlink to a directory outside, and a full stop/start.
    let plant = shell_as(
        &user,
        &format!(
            "cd {dir} && ln -sfn {log} postgres.log && rm -rf run && ln -sfn {elsewhere} run \
             && echo {root_pid} > pgbouncer/pgbouncer.pid.new && mv -f pgbouncer/pgbouncer.pid.new pgbouncer/pgbouncer.pid",
            dir = dir.display(),
            log = log.path.display(),
            elsewhere = elsewhere.display(),
        ),
    )
    .await;
    assert!(plant.status.success(), "{plant:?}");
    cycle(&driver, &spec, false).await;
    log.check("stop and start with postgres.log a symlink");
    assert_eq!(
        owner_and_mode(&elsewhere),
        elsewhere_before,
        "run/'s target was chmodded or chowned"
    );
    assert!(
        std::fs::read_dir(&elsewhere)
            .expect("outside dir")
            .next()
            .is_none(),
        "nothing was created in run/'s target"
    );
    assert_eq!(
        owner_and_mode(&dir.join("run")),
        (uid, 0o700),
        "run/ is a real directory again"
    );
    assert!(
        alive(root_pid),
        "the root process named by pgbouncer.pid was signalled"
    );

    // Round 3: FIFOs in place of both logs: nothing blocks (bounded), the compute comes back.
    let plant = shell_as(
        &user,
        &format!(
            "cd {dir} && rm -f postgres.log pgbouncer/pgbouncer.log && mkfifo postgres.log pgbouncer/pgbouncer.log",
            dir = dir.display(),
        ),
    )
    .await;
    assert!(plant.status.success(), "{plant:?}");
    tokio::time::timeout(Duration::from_secs(60), cycle(&driver, &spec, true))
        .await
        .expect("suspend and resume with FIFOs for logs did not hang");
    tokio::time::timeout(Duration::from_secs(60), cycle(&driver, &spec, false))
        .await
        .expect("stop and start with FIFOs for logs did not hang");
    for name in ["postgres.log", "pgbouncer/pgbouncer.log"] {
        let meta = std::fs::symlink_metadata(dir.join(name)).expect("log");
        assert!(meta.file_type().is_file(), "{name} is a plain file again");
    }
    log.check("at the end");
    pidfile_target.check("at the end");
    assert!(alive(root_pid));
    let _ = root_process.kill();
    let _ = root_process.wait();
    driver.stop(&spec).await.expect("stop");
    assert!(processes_of(uid).is_empty());
    println!("symlink test took {:?}", began.elapsed());
}

impl Sentinel {
    /// A sentinel for a root-owned file already written.
    fn new_with(path: &Path) -> Sentinel {
        Sentinel {
            path: path.to_path_buf(),
            contents: std::fs::read(path).expect("sentinel"),
            owner_mode: owner_and_mode(path),
        }
    }
}

/// Suspend and resume (`suspend`), or a full stop and start, checking the compute answers
/// through PgBouncer afterwards.
async fn cycle(driver: &LocalDriver, spec: &ComputeSpec, suspend: bool) {
    if suspend {
        // PAUSE needs the admin console, which a replaced run/ takes away: not asserted.
        let _ = driver.pause_pooler(spec, Duration::from_secs(10)).await;
        driver
            .stop_postgres(spec, StopMode::Fast)
            .await
            .expect("stop postgres");
    } else {
        driver.stop(spec).await.expect("stop");
    }
    driver.start(spec).await.expect("start");
    let client = connect(spec.pooler_port, "app", "pw", "appdb")
        .await
        .expect("pooled login after the cycle");
    assert_eq!(
        query(&client, "SELECT count(*) FROM t")
            .await
            .expect("query"),
        "2"
    );
    expect_health(driver, spec, Health::Running).await;
}

/// A tenant replaces its admin sockets (`run/.s.PGSQL.<port>`) with symlinks to another
/// endpoint's: the driver refuses to talk to them, and the other endpoint is not touched.
#[tokio::test]
async fn a_swapped_socket_is_refused() {
    let (temp, driver, a, b) = two_computes("sock").await;
    let root = driver.root().to_path_buf();
    let (dir_a, dir_b) = (root.join(&a.endpoint), root.join(&b.endpoint));
    let user_a = driver.os_user(&a.endpoint).expect("user");
    let plant =
        shell_as(
            &user_a,
            &format!(
            "cd {run} && ln -sfn {b_pooler} .s.PGSQL.{a_pooler} && ln -sfn {b_pg} .s.PGSQL.{a_pg}",
            run = dir_a.join("run").display(),
            b_pooler = dir_b.join(format!("run/.s.PGSQL.{}", b.pooler_port)).display(),
            a_pooler = a.pooler_port,
            b_pg = dir_b.join(format!("run/.s.PGSQL.{}", b.port)).display(),
            a_pg = a.port,
        ),
        )
        .await;
    assert!(plant.status.success(), "{plant:?}");

    // A driver without cached connections (a restarted wake service).
    let fresh = LocalDriver::new(temp.config()).expect("driver");
    let err = fresh
        .admin(&a)
        .await
        .expect_err("admin through a swapped socket");
    assert!(err.to_string().contains("refusing"), "{err}");
    let err = fresh
        .pooler_stats(&a)
        .await
        .expect_err("stats through a swapped socket");
    assert!(err.to_string().contains("refusing"), "{err}");
    assert!(fresh
        .pause_pooler(&a, Duration::from_secs(5))
        .await
        .is_err());
    let err = fresh
        .set_pooler_roles(&a, &[])
        .await
        .expect_err("RELOAD through a swapped socket");
    assert!(err.to_string().contains("refusing"), "{err}");
    // B was not paused, and still knows its role.
    assert!(!stats(&fresh, &b).await.paused);
    let client = connect(b.pooler_port, "app", "pw", "appdb")
        .await
        .expect("B's role still logs in through B's PgBouncer");
    assert_eq!(query(&client, "SELECT 1").await.expect("query"), "1");
}

// --- PgBouncer's auth file ---------------------------------------------------------------------

/// Whether a SCRAM login through PgBouncer works.
async fn pooled_login(
    port: u16,
    user: &str,
    password: &str,
) -> Result<String, tokio_postgres::Error> {
    let client = connect(port, user, password, "appdb").await?;
    query(&client, "SELECT current_user").await
}

/// `set_pooler_roles` decides who logs in through PgBouncer: a role added, a verifier changed
/// and a role removed take effect with the RELOAD (for new logins), a stopped PgBouncer reads
/// the file at its next start, and authenticating runs no SQL as superuser in the tenant's
/// database (the `search_path` hijack of issue 12 stays harmless). A client logging in while
/// the endpoint is suspended logs in at once and waits (`cl_waiting`) once it sends a query.
#[tokio::test]
async fn pooler_roles_follow_set_pooler_roles() {
    let began = Instant::now();
    let (_temp, driver, spec, dir) = running_compute("roles").await;
    let port = spec.pooler_port;
    let app = postgres_protocol::password::scram_sha_256(b"pw");
    let admin = driver.admin(&spec).await.expect("admin");

    // A role made in SQL is unknown to PgBouncer until the driver is told.
    let bob = postgres_protocol::password::scram_sha_256(b"bob-1");
    admin
        .batch_execute(&format!(
            "CREATE ROLE bob LOGIN PASSWORD '{bob}'; GRANT CONNECT ON DATABASE appdb TO bob"
        ))
        .await
        .expect("create bob");
    assert!(
        pooled_login(port, "bob", "bob-1").await.is_err(),
        "bob is not in the auth file yet"
    );
    let roles = [pooler_role("app", &app), pooler_role("bob", &bob)];
    driver
        .set_pooler_roles(&spec, &roles)
        .await
        .expect("add bob");
    assert_eq!(
        pooled_login(port, "bob", "bob-1")
            .await
            .expect("bob logs in"),
        "bob"
    );
    assert_eq!(
        pooled_login(port, "app", "pw")
            .await
            .expect("app still logs in"),
        "app"
    );
    driver
        .set_pooler_roles(&spec, &roles)
        .await
        .expect("idempotent");
    let text = std::fs::read_to_string(dir.join("pgbouncer/userlist.txt")).expect("auth file");
    assert!(text.contains(&format!("\"bob\" \"{bob}\"")), "{text}");
    assert!(!text.contains("auth_user"), "{text}");

    // A new password: only the new one works for new logins; a connected client stays.
    let connected = connect(port, "bob", "bob-1", "appdb").await.expect("bob");
    let bob2 = postgres_protocol::password::scram_sha_256(b"bob-2");
    admin
        .batch_execute(&format!("ALTER ROLE bob PASSWORD '{bob2}'"))
        .await
        .expect("alter bob");
    driver
        .set_pooler_roles(
            &spec,
            &[pooler_role("app", &app), pooler_role("bob", &bob2)],
        )
        .await
        .expect("change bob");
    assert!(
        pooled_login(port, "bob", "bob-1").await.is_err(),
        "the old password is refused"
    );
    assert_eq!(
        pooled_login(port, "bob", "bob-2")
            .await
            .expect("new password"),
        "bob"
    );
    assert_eq!(
        query(&connected, "SELECT 1")
            .await
            .expect("connected client"),
        "1"
    );

    // Removed: refused for new logins, even with the right password.
    driver
        .set_pooler_roles(&spec, &[pooler_role("app", &app)])
        .await
        .expect("remove bob");
    assert!(
        pooled_login(port, "bob", "bob-2").await.is_err(),
        "a removed role is refused"
    );
    assert_eq!(pooled_login(port, "app", "pw").await.expect("app"), "app");
    // cloud_admin never logs in over TCP; bad input is refused without touching the file.
    assert!(pooled_login(port, "cloud_admin", "").await.is_err());
    for bad in [
        vec![pooler_role("cloud_admin", &app)],
        vec![pooler_role("x", "md5abc")],
        vec![pooler_role("x", &format!("{app}\" \"x"))],
        vec![pooler_role("x", &app), pooler_role("x", &app)],
    ] {
        assert!(
            driver.set_pooler_roles(&spec, &bad).await.is_err(),
            "{bad:?}"
        );
    }
    assert_eq!(pooled_login(port, "app", "pw").await.expect("app"), "app");

    // A stopped PgBouncer reads the file at its next start.
    driver.stop(&spec).await.expect("stop");
    driver
        .set_pooler_roles(
            &spec,
            &[pooler_role("app", &app), pooler_role("bob", &bob2)],
        )
        .await
        .expect("roles while stopped");
    driver.start(&spec).await.expect("start");
    assert_eq!(
        pooled_login(port, "bob", "bob-2")
            .await
            .expect("bob after start"),
        "bob"
    );

    // The search_path hijack: a database owner's function shadowing now() must never run as
    // a superuser when someone logs in through PgBouncer.
    let owner = connect(spec.port, "app", "pw", "appdb")
        .await
        .expect("owner");
    owner
        .batch_execute(
            "CREATE SCHEMA evil; \
             CREATE TABLE evil.calls (who text, superuser bool); \
             GRANT USAGE ON SCHEMA evil TO PUBLIC; GRANT INSERT ON evil.calls TO PUBLIC; \
             CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS $$ \
             BEGIN \
               INSERT INTO evil.calls SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user; \
               IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN \
                 EXECUTE 'ALTER ROLE app SUPERUSER'; \
               END IF; \
               RETURN pg_catalog.now(); \
             END $$; \
             GRANT EXECUTE ON FUNCTION evil.now() TO PUBLIC; \
             ALTER DATABASE appdb SET search_path = evil, pg_catalog",
        )
        .await
        .expect("plant the hijack");
    drop(owner);
    driver.stop(&spec).await.expect("stop (fresh pools)");
    driver.start(&spec).await.expect("start");
    for (user, password) in [("app", "pw"), ("bob", "bob-2")] {
        assert_eq!(
            pooled_login(port, user, password).await.expect("login"),
            user
        );
    }
    assert_eq!(
        scalar(
            &admin_after(&driver, &spec).await,
            "SELECT rolsuper::text FROM pg_roles WHERE rolname = 'app'"
        )
        .await,
        "false",
        "a login through PgBouncer made the database owner superuser"
    );
    let calls = scalar(
        &driver
            .admin_database(&spec, "appdb")
            .await
            .expect("admin appdb"),
        "SELECT count(*) FROM evil.calls WHERE superuser",
    )
    .await;
    assert_eq!(calls, "0", "evil.now() ran as a superuser");

    // Suspended: a client logs in at once (no server needed) and waits once it sends a query,
    // which is what the scheduler's pooler watch wakes the endpoint on.
    assert!(driver
        .pause_pooler(&spec, Duration::from_secs(10))
        .await
        .expect("pause"));
    driver
        .stop_postgres(&spec, StopMode::Fast)
        .await
        .expect("suspend");
    let client = tokio::time::timeout(Duration::from_secs(5), connect(port, "app", "pw", "appdb"))
        .await
        .expect("a login while suspended does not wait for Postgres")
        .expect("login while suspended");
    let idle = stats(&driver, &spec).await;
    assert_eq!(idle.clients_waiting, 0, "{idle:?}");
    // Roles change while suspended: the RELOAD reaches the paused PgBouncer and leaves it paused.
    let carol = postgres_protocol::password::scram_sha_256(b"carol");
    driver
        .set_pooler_roles(
            &spec,
            &[
                pooler_role("app", &app),
                pooler_role("bob", &bob2),
                pooler_role("carol", &carol),
            ],
        )
        .await
        .expect("roles while suspended");
    assert!(
        stats(&driver, &spec).await.paused,
        "a RELOAD does not resume"
    );
    let waiting =
        tokio::spawn(async move { query(&client, "SELECT count(*) FROM public.t").await });
    wait_for_stats(&driver, &spec, "the query waits", |s| {
        s.clients_waiting == 1
    })
    .await;
    driver.start(&spec).await.expect("resume");
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered")
        .expect("task")
        .expect("query");
    assert_eq!(answer, "2");
    let admin = driver.admin(&spec).await.expect("admin");
    admin
        .batch_execute(&format!("CREATE ROLE carol LOGIN PASSWORD '{carol}'"))
        .await
        .expect("create carol");
    assert_eq!(
        pooled_login(port, "carol", "carol").await.expect("carol"),
        "carol"
    );
    println!("pooler roles test took {:?}", began.elapsed());
}

async fn admin_after(driver: &LocalDriver, spec: &ComputeSpec) -> tokio_postgres::Client {
    driver.admin(spec).await.expect("admin")
}

// --- the state store, quarantine, data of earlier versions -------------------------------------

/// The state cluster runs as its own user, and is never wiped: a missing `created` marker is
/// written again over the existing data, a leftover `pgdata.init` of an interrupted initdb is.
#[tokio::test]
async fn the_state_cluster_is_never_wiped() {
    let temp = TempRoot::new("statewipe");
    let config = temp.config();
    let dir = temp.path.join("state");
    let cluster = StateCluster::start(&config, &dir).await.expect("start");
    let user = cluster.os_user().to_string();
    assert_eq!(user, format!("{}_state", temp.user_prefix));
    let uid = uid_of(&user);
    assert_eq!(owner_and_mode(&dir), (uid, 0o700));
    let client = cluster.connect().await.expect("connect");
    client
        .batch_execute("CREATE TABLE tenants (v text); INSERT INTO tenants VALUES ('precious')")
        .await
        .expect("write");
    drop(client);
    cluster.stop().await.expect("stop");

    std::fs::remove_file(dir.join("created")).expect("remove the marker");
    std::fs::create_dir(dir.join("pgdata.init")).expect("leftover");
    std::fs::write(dir.join("pgdata.init/junk"), b"x").expect("junk");
    let cluster = StateCluster::start(&config, &dir)
        .await
        .expect("start without marker");
    let client = cluster.connect().await.expect("connect");
    assert_eq!(
        scalar(&client, "SELECT v FROM tenants").await,
        "precious",
        "the data survived"
    );
    drop(client);
    assert!(dir.join("created").exists(), "the marker is written again");
    // The leftover is only wiped by an initdb; it is in nobody's way meanwhile.
    assert!(dir.join("pgdata").join("PG_VERSION").exists());
    // Only the wake service's user logs in: the state user itself is not mapped.
    let out = shell_as(
        &user,
        &format!(
            "{PSQL} -XAtw -h {} -p 5432 -U cloud_admin -d postgres -c 'SELECT 1'",
            dir.join("run").display()
        ),
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    cluster.stop().await.expect("stop");
}

/// `quarantine` stops the compute and moves its directory where nothing lists, starts or
/// deletes it; its OS user goes.
#[tokio::test]
async fn quarantine_moves_a_compute_aside() {
    let (_temp, driver, spec, dir) = running_compute("quar").await;
    let user = driver.os_user(&spec.endpoint).expect("user");
    let uid = uid_of(&user);
    assert_eq!(
        driver.list().await.expect("list"),
        vec![spec.endpoint.clone()]
    );
    let moved = PathBuf::from(driver.quarantine(&spec.endpoint).await.expect("quarantine"));
    let quarantine = driver.root().join(".quarantine");
    assert_eq!(
        moved.parent(),
        Some(quarantine.as_path()),
        "{}",
        moved.display()
    );
    assert!(moved
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(&format!("{}-", spec.endpoint))));
    assert_eq!(owner_and_mode(&quarantine), (0, 0o700));
    assert!(moved.join("pgdata/PG_VERSION").exists(), "the data is kept");
    assert!(!dir.exists());
    assert!(processes_of(uid).is_empty(), "nothing of it runs");
    assert!(
        driver.list().await.expect("list").is_empty(),
        "list() does not show it"
    );
    assert!(nix::unistd::User::from_name(&user)
        .expect("getpwnam")
        .is_none());
    expect_health(&driver, &spec, Health::Stopped).await;
    assert!(
        driver.quarantine(&spec.endpoint).await.is_err(),
        "nothing left to move"
    );
    // The same id can be created again beside it.
    driver.create(&spec).await.expect("create again");
    driver.start(&spec).await.expect("start");
    assert!(moved.join("pgdata/PG_VERSION").exists());
    driver
        .destroy_endpoint(&spec.endpoint)
        .await
        .expect("destroy");
    assert!(moved.exists(), "destroy does not touch the quarantine");
}

/// A compute and a state store made by an earlier version (every compute and the state store
/// running as the shared `postgres` user), running: the first operation of a driver with one
/// user per endpoint stops the old processes, hands the trees to the new users without
/// following a symlink planted in them, and goes on with the data intact.
#[tokio::test]
async fn data_of_an_earlier_version_is_taken_over() {
    let temp = TempRoot::new("legacy");
    let postgres_uid = uid_of("postgres");
    let mut shared = temp.config();
    shared.os_user = Some("postgres".into());
    let old = LocalDriver::new(shared.clone()).expect("shared-user driver");
    let spec = spec("ep-legacy");
    let dir = old.root().join(&spec.endpoint);
    old.create(&spec).await.expect("create");
    old.start(&spec).await.expect("start");
    let admin = old.admin(&spec).await.expect("admin");
    create_app_role(&old, &spec, &admin).await;
    drop(admin);
    let app = connect(spec.port, "app", "pw", "appdb").await.expect("app");
    app.batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')")
        .await
        .expect("table");
    drop(app);
    let old_postmaster = postmasters(&dir.join("pgdata"));
    assert_eq!(uids(old_postmaster[0]), Some((postgres_uid, postgres_uid)));
    let state_dir = temp.path.join("state");
    let state = StateCluster::start(&shared, &state_dir)
        .await
        .expect("shared-user state");
    let client = state.connect().await.expect("state");
    client
        .batch_execute("CREATE TABLE s (v text); INSERT INTO s VALUES ('state')")
        .await
        .expect("state table");
    drop(client);
    assert_eq!(owner_and_mode(&state_dir).0, postgres_uid);
    // A link planted by the old shared user, pointing at a root file outside.
    let sentinel = Sentinel::new(temp.path.join("outside.txt"));
    let plant = shell_as(
        "postgres",
        &format!(
            "ln -s {} {}",
            sentinel.path.display(),
            dir.join("pgdata/link").display()
        ),
    )
    .await;
    assert!(plant.status.success(), "{plant:?}");

    // The new driver: the lifecycle gives the pooler its roles, then starts the compute.
    let driver = LocalDriver::new(temp.config()).expect("per-endpoint driver");
    let verifier = {
        let admin = old.admin(&spec).await.expect("admin");
        scalar(
            &admin,
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'",
        )
        .await
    };
    driver
        .set_pooler_roles(&spec, &[pooler_role("app", &verifier)])
        .await
        .expect("set pooler roles (takes the directory over)");
    driver
        .start(&spec)
        .await
        .expect("start as the endpoint's own user");
    let uid = uid_of(&driver.os_user(&spec.endpoint).expect("user"));
    assert_ne!(uid, postgres_uid);
    assert!(
        old_postmaster.iter().all(|&pid| !alive(pid)),
        "the old postmaster was stopped"
    );
    assert!(processes_of(postgres_uid)
        .iter()
        .all(|&pid| processes_under(&dir).iter().all(|(p, _)| *p != pid)));
    let postmaster = postmasters(&dir.join("pgdata"));
    assert_eq!(uids(postmaster[0]), Some((uid, uid)));
    assert_eq!(
        uids(bouncer_pid(&dir).expect("pgbouncer")),
        Some((uid, uid))
    );
    for path in [
        dir.clone(),
        dir.join("pgdata"),
        dir.join("pgdata/PG_VERSION"),
        dir.join("pgdata/link"),
        dir.join("pgbouncer/userlist.txt"),
    ] {
        assert_eq!(owner_and_mode(&path).0, uid, "{}", path.display());
    }
    sentinel.check("after the takeover");
    for port in [spec.port, spec.pooler_port] {
        let client = connect(port, "app", "pw", "appdb")
            .await
            .expect("login after the takeover");
        assert_eq!(
            query(&client, "SELECT v FROM t").await.expect("query"),
            "kept"
        );
    }
    let admin = driver.admin(&spec).await.expect("admin by peer");
    assert_eq!(scalar(&admin, "SELECT current_user").await, "cloud_admin");

    // The state store likewise.
    let state = StateCluster::start(&temp.config(), &state_dir)
        .await
        .expect("state taken over");
    let state_uid = uid_of(state.os_user());
    assert_eq!(owner_and_mode(&state_dir).0, state_uid);
    let client = state.connect().await.expect("state");
    assert_eq!(scalar(&client, "SELECT v FROM s").await, "state");
    drop(client);
    state.stop().await.expect("stop state");
    driver
        .destroy_endpoint(&spec.endpoint)
        .await
        .expect("destroy");
    sentinel.check("after destroy");
}
