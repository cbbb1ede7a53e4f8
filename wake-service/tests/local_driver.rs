//! The `local` compute driver and the embedded state cluster against real Postgres 15 and
//! PgBouncer processes: create, start, SCRAM logins direct and through PgBouncer, adoption by
//! a second driver, recovery from a killed PgBouncer, a port change, stop, restart with the
//! data intact, destroy. Each test works in its own directory under /tmp, removed at the end
//! (processes included) even when an assertion fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use wake_service::compute::local::{LocalConfig, LocalDriver, StateCluster};
use wake_service::compute::{ComputeDriver, ComputeSpec, Health};

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

/// Postmasters (`postgres -D <pgdata>`) of one data directory.
fn postmasters(pgdata: &Path) -> Vec<i32> {
    pids()
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
/// fail with "address in use".
fn free_port() -> u16 {
    use rand::Rng;
    loop {
        let port = rand::thread_rng().gen_range(20_000..32_000);
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

    // A role the way the wake service makes them: only the SCRAM verifier is sent.
    let verifier = postgres_protocol::password::scram_sha_256(b"pw");
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"));
    let admin = driver.admin(&spec).await.expect("admin");
    admin
        .batch_execute(&format!("CREATE ROLE app LOGIN PASSWORD '{verifier}'"))
        .await
        .expect("create role");
    admin
        .batch_execute("CREATE DATABASE appdb OWNER app")
        .await
        .expect("create database");
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
