//! The `local` driver: one Postgres 15 cluster plus one PgBouncer per endpoint, as processes
//! on this machine running as an unprivileged OS user (`postgres` when the wake service is
//! root, else the wake service's own user). Also [`StateCluster`], the wake service's own
//! embedded state store.
//!
//! # Layout
//!
//! ```text
//! root/<endpoint>/              0700, owned by the OS user
//!   pgdata/                     the cluster (initdb -U cloud_admin, SCRAM)
//!     wake.conf                 settings written at create (included from postgresql.conf)
//!     wake.start.conf           port, addresses, socket dir: rewritten before each start
//!   run/                        unix sockets of Postgres and PgBouncer, 0700
//!   pgbouncer/                  pgbouncer.ini, hba.conf, userlist.txt, pgbouncer.pid, pgbouncer.log
//!   postgres.log                the postmaster's stdout and stderr (appended)
//!   created                     written last by create: the compute is complete
//! ```
//!
//! `create` is idempotent through the `created` marker: present → nothing to do; the directory
//! present without it (the wake service died mid-create) → stop whatever runs there, kill
//! leftover processes (an initdb keeps running when the wake service is killed), wipe, redo.
//!
//! # Authentication
//!
//! Postgres: `local all all trust` (the socket directory is 0700 and owned by the OS user, so
//! only that user and root reach it), `host all cloud_admin all reject` (the superuser never
//! logs in over TCP), then `scram-sha-256` from loopback (from anywhere when the configured
//! host is not a loopback address).
//!
//! PgBouncer (`auth_type = hba`): its hba.conf has `local all all trust`, rejects
//! `cloud_admin` over TCP and asks everyone else for SCRAM. Users are not listed in a file:
//! `auth_user = cloud_admin` makes PgBouncer look each user up in the cluster itself, over the
//! private unix socket (trust, so `cloud_admin`'s entry in userlist.txt has an empty
//! password). The wake service stores only SCRAM verifiers, and a verifier is all PgBouncer
//! needs to run SCRAM with the client; PgBouncer then logs in to Postgres as that user over
//! the unix socket, again trust. Verified on PgBouncer 1.18 with roles created as
//! `CREATE ROLE … PASSWORD 'SCRAM-SHA-256$4096:…'` (see tests/local_driver.rs). Notes on 1.18:
//!
//! * The built-in `auth_query` of this build (Debian's 1.18.0) is not the `pg_shadow` one
//!   older documentation shows but `SELECT rolname, CASE WHEN rolvaliduntil < now() THEN
//!   NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin`: it needs a
//!   superuser `auth_user` (ours is) and refuses expired and NOLOGIN roles (checked: a role
//!   `VALID UNTIL` the past is refused). Roles without a password cannot log in.
//! * Its hba parser does not accept `all` as an address (the line is dropped with a warning),
//!   hence `0.0.0.0/0` and `::/0` in the reject lines.
//! * `cloud_admin` listed in userlist.txt with an empty password also means SCRAM for it can
//!   never succeed through PgBouncer, reject line or not.
//! * Startup parameters: PgBouncer tracks `client_encoding`, `DateStyle`, `TimeZone`,
//!   `standard_conforming_strings` and `application_name`; `extra_float_digits` (pgJDBC) is
//!   ignored by configuration; anything else, notably `options`, fails the login with
//!   "unsupported startup parameter: options" (checked; Neon's pooler behaves the same). tokio-postgres sends `client_encoding` (and
//!   `application_name`/`options` only when set); node-postgres sends `application_name`
//!   and `options` only when set.
//! * `pgbouncer -d` forks before it binds its ports, so the command succeeds whatever happens
//!   next. Worse, a TCP port it cannot bind is only a WARNING ("cannot listen on …") while
//!   the unix socket works: the daemon keeps running without TCP, and whatever holds the
//!   port answers connection probes. So starting watches the new log lines for FATAL and
//!   "cannot listen on", and waits until the daemon itself owns a listening socket on the
//!   port (the socket inodes of `/proc/net/tcp{,6}` matched against `/proc/<pid>/fd`); the
//!   health check uses the same ownership test for both processes.
//! * SIGTERM is an immediate shutdown (it became "wait for clients" in 1.23; the SIGKILL after
//!   a bound covers that). PgBouncer removes its pidfile on exit.
//! * It binds its TCP port first, then its unix socket; a start waits for both.
//!
//! # Processes and restarts
//!
//! The driver spawns the postmaster itself: `postgres -D pgdata` as the OS user, in its own
//! process group (a terminal's Ctrl-C to the wake service does not reach it; it outlives the
//! wake service), stdin closed, stdout and stderr appended to `postgres.log`, never killed
//! with its handle. A task of the driver awaits each spawned postmaster, so one that exits is
//! reaped at once and never left a zombie; a stop returns only once its postmaster is reaped.
//! `pg_ctl start -w` is not used because it polls every 100 ms: measured here, it takes
//! ~117 ms where the postmaster is ready after ~20-25 ms. Readiness is `postmaster.pid`
//! naming the spawned pid with status `ready` (line 8; the moment Postgres accepts
//! connections, and what pg_ctl waits for too) and a TCP listen address (line 6: Postgres
//! writes the first address it bound and exits when it binds none), read every 1 ms. That
//! beats polling with logins (~25 ms vs ~21 ms in a measurement, and every early login is a
//! "the database system is starting up" in the log) and spares reading `/proc/net/tcp`
//! (~5 ms). A postmaster that exits before it is ready fails the start with the log's tail.
//!
//! Postgres is stopped with signals to the postmaster, polling every 2 ms for it to be gone:
//! smart (SIGTERM: new connections are refused with 57P03, open sessions go on) for the
//! given patience, then fast (SIGINT: sessions are cut), immediate (SIGQUIT) and SIGKILL, the
//! last three bounded by 60 s, 60 s and 10 s. PgBouncer runs as a daemon (`pgbouncer -d`).
//!
//! Every start first looks for what already runs: a postmaster named by `postmaster.pid`
//! (alive, a `postgres` process whose `-D` or working directory is this data directory) is
//! adopted when its port, socket directory and start settings match and restarted when not
//! (one still starting is waited for, one shutting down too); the same for PgBouncer through
//! its pidfile (alive, command line names our ini, files on disk unchanged — they are only
//! rewritten while it is stopped — and it owns the listening socket on the port, checked once
//! per process: PgBouncer keeps its listening sockets for life). A pidfile naming a live
//! unrelated process (pid reuse after a crash) is removed, since both programs would refuse
//! to start otherwise. Nothing is ever started twice. Every wait is bounded (Postgres 60 s to
//! become ready, PgBouncer 30 s to start and 10 s + SIGKILL to stop, admin-console commands
//! 10 s) and errors carry the tail of the log. Logs over 10 MiB are rotated to `*.1` before a
//! start.
//!
//! # Suspend and resume
//!
//! A suspended compute is Postgres stopped behind a running, paused PgBouncer: clients keep
//! their connections and new ones are accepted, and all of them wait until the next `start`
//! resumes PgBouncer, instead of failing. The wake service suspends with `pause_pooler`
//! then `stop_postgres`, and resumes with `start` (Postgres, then PgBouncer adopted, then
//! RESUME — only once Postgres is ready). The driver talks to PgBouncer's admin console
//! (`cloud_admin`, database `pgbouncer`, over the private unix socket) with simple queries;
//! it caches one console connection per endpoint for RESUME and the stats, which are polled
//! often, and sends PAUSE on a connection of its own. What was verified on PgBouncer 1.18:
//!
//! * `PAUSE` answers only once every server connection has been released and closed; a
//!   transaction in progress holds it up for as long as it lasts. Then new clients (SCRAM
//!   logins: the `auth_query` needs a server connection) wait as `cl_waiting` in the
//!   `(<database>, cloud_admin)` pool of `SHOW POOLS`, and queries of connected clients
//!   wait as `cl_waiting` in their own pool; `RESUME` lets both go on (`query_wait_timeout`,
//!   120 s, still bounds the wait).
//! * `RESUME` cancels a `PAUSE` still waiting for a busy server connection, but the console
//!   connection that sent the PAUSE then never gets an answer (and tokio-postgres keeps a
//!   connection with a request in flight open): `pause_pooler` gives up after its timeout,
//!   sends RESUME on the cached connection and closes the pausing one by aborting its task.
//! * A second `PAUSE` while one is in effect fails with "already suspended/paused"; `RESUME`
//!   without one fails with "pooler is not paused/suspended" (both taken as answers).
//! * There is no `SHOW STATE` in 1.18, and `SHOW DATABASES.paused` only reflects `PAUSE
//!   <db>`, not a global PAUSE. So the driver remembers what it did, per PgBouncer process;
//!   for a PgBouncer it has not paused or resumed itself (a restarted wake service) it asks
//!   once with `PAUSE pgbouncer`, which fails with "already suspended/paused" under a global
//!   pause and "cannot pause admin db" otherwise (and logs an ERROR line).
//! * A server login that fails makes PgBouncer turn clients away with "server login has been
//!   failing, try again later (server_login_retry)" for `server_login_retry` (15 s by
//!   default); 1.18 takes fractions, so the ini sets 0.1 s. A server connection that cannot
//!   even be opened (Postgres' socket gone) does not count: an unpaused PgBouncer then keeps
//!   clients waiting in login and retries about every 1/3 s.
//!
//! Measured on this machine (2 cores, Postgres 15 with fsync off, debug build of the test;
//! `resume_timing` in tests/local_driver.rs): the postmaster is ready ~20-25 ms after the
//! spawn; `start` of a suspended compute takes about that plus 1-2 ms (adopting PgBouncer
//! and RESUME), and a query waiting in PgBouncer is answered ~6 ms after `start` returns
//! (PgBouncer opens a server connection). With `pg_ctl start -w` the same `start` took
//! ~117 ms. [`LocalDriver::bare_postgres_command`] gives benchmarks the floor: the same
//! postmaster, started by hand.
//!
//! # Limits
//!
//! * A unix socket path holds at most 107 bytes: `root/<endpoint>/run/.s.PGSQL.<port>` must
//!   fit, and create refuses an endpoint whose path would not.
//! * `cu` is not enforced (no cgroups): every compute gets `shared_buffers = 32MB` and
//!   `max_connections = 200` (room for the gateway's pool of 100 per endpoint plus PgBouncer's
//!   pools and direct clients).
//! * One wake service per root: the per-endpoint locks are in memory.

mod pgbouncer;
mod postgres;
mod process;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use wake_api::admin::Addresses;

use self::pgbouncer::{Admin, AdminReply, Bouncer, Counts};
use self::postgres::{Cluster, StartSettings, SUPERUSER};
use self::process::{Children, Identity};
use super::{ComputeDriver, ComputeError, ComputeSpec, Health, PoolerStats, StopMode};

/// The port number in the state cluster's socket name (it listens on no TCP port).
const STATE_PORT: u16 = 5432;
/// The longest unix socket path the kernel binds (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How the local driver runs its processes.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalConfig {
    /// One subdirectory per endpoint (e.g. DATA_DIR/computes).
    pub root: PathBuf,
    /// Where initdb and postgres are.
    pub pg_bin: PathBuf,
    /// The PgBouncer binary; a bare name is looked up on PATH (and in /usr/sbin).
    pub pgbouncer: PathBuf,
    /// Run Postgres and PgBouncer as this OS user; None = the wake service's own user.
    pub os_user: Option<String>,
    /// Computes listen on and are advertised at this host.
    pub host: String,
    /// Tests: fsync, synchronous_commit and full_page_writes off (and initdb --no-sync).
    pub fast: bool,
}

impl LocalConfig {
    /// Postgres 15 from Debian's packages, PgBouncer from PATH, `postgres` as the OS user when
    /// running as root, loopback only.
    pub fn defaults(root: PathBuf) -> LocalConfig {
        LocalConfig {
            root,
            pg_bin: PathBuf::from("/usr/lib/postgresql/15/bin"),
            pgbouncer: PathBuf::from("pgbouncer"),
            os_user: nix::unistd::geteuid()
                .is_root()
                .then(|| "postgres".to_string()),
            host: "127.0.0.1".to_string(),
            fast: false,
        }
    }
}

/// Checked configuration shared by [`LocalDriver`] and [`StateCluster`].
#[derive(Debug)]
struct Setup {
    pg_bin: PathBuf,
    pgbouncer: PathBuf,
    identity: Identity,
    host: String,
    fast: bool,
    /// `--locale=C.UTF-8` or `--no-locale`.
    locale: &'static str,
    /// Postmasters this process spawned, reaped when they exit.
    children: Children,
}

impl Setup {
    fn new(config: &LocalConfig) -> Result<Setup, ComputeError> {
        let identity = Identity::resolve(config.os_user.as_deref())?;
        for program in ["initdb", "postgres"] {
            let path = config.pg_bin.join(program);
            if !is_executable(&path) {
                return Err(ComputeError::Process(format!(
                    "{} not found or not executable (install postgresql-15 or set the Postgres bin directory)",
                    path.display()
                )));
            }
        }
        let pgbouncer = find_program(&config.pgbouncer).ok_or_else(|| {
            ComputeError::Process(format!(
                "{} not found (install pgbouncer or set its path)",
                config.pgbouncer.display()
            ))
        })?;
        if config.host.is_empty() || !safe_config_value(&config.host) {
            return Err(ComputeError::Process(format!(
                "invalid compute host '{}'",
                config.host
            )));
        }
        Ok(Setup {
            pg_bin: config.pg_bin.clone(),
            pgbouncer,
            identity,
            host: config.host.clone(),
            fast: config.fast,
            locale: pick_locale(),
            children: Children::default(),
        })
    }

    /// Creates `dir` (and its parents) when missing, makes it absolute, and checks it can be
    /// written into config files and reached by the OS user.
    fn prepare_dir(&self, dir: &Path, what: &str) -> Result<PathBuf, ComputeError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ComputeError::io(format!("creating {what} {}", dir.display()), e))?;
        let dir = std::fs::canonicalize(dir)
            .map_err(|e| ComputeError::io(format!("resolving {what} {}", dir.display()), e))?;
        let text = dir.to_str().ok_or_else(|| {
            ComputeError::Process(format!("{what} {} is not UTF-8", dir.display()))
        })?;
        if !safe_config_value(text) {
            return Err(ComputeError::Process(format!(
                "{what} {text} must not contain spaces, quotes, backslashes, commas, '#', ';' or '='"
            )));
        }
        if self.identity.switch {
            process::ensure_traversable(&dir, self.identity.uid, self.identity.gid)?;
        }
        Ok(dir)
    }

    fn cluster<'a>(&'a self, dir: &Path) -> Cluster<'a> {
        Cluster {
            identity: &self.identity,
            children: &self.children,
            pg_bin: &self.pg_bin,
            pgdata: dir.join("pgdata"),
            run_dir: dir.join("run"),
            log: dir.join("postgres.log"),
        }
    }

    fn bouncer<'a>(&'a self, dir: &Path) -> Bouncer<'a> {
        let bouncer_dir = dir.join("pgbouncer");
        Bouncer {
            identity: &self.identity,
            program: &self.pgbouncer,
            ini: bouncer_dir.join("pgbouncer.ini"),
            pidfile: bouncer_dir.join("pgbouncer.pid"),
            log: bouncer_dir.join("pgbouncer.log"),
            run_dir: dir.join("run"),
        }
    }

    /// Whether the host is loopback only (else remote clients are allowed in by the hba).
    fn loopback_only(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    fn endpoint_hba(&self) -> String {
        let mut hba = String::from(
            "# Written by the wake service (local driver).\n\
             # TYPE DATABASE USER        ADDRESS       METHOD\n\
             local  all      all                       trust\n\
             host   all      cloud_admin all           reject\n\
             host   all      all         127.0.0.1/32  scram-sha-256\n\
             host   all      all         ::1/128       scram-sha-256\n",
        );
        if !self.loopback_only() {
            hba.push_str(
                "host   all      all         0.0.0.0/0     scram-sha-256\n\
                 host   all      all         ::/0          scram-sha-256\n",
            );
        }
        hba
    }

    /// The ini, hba.conf and userlist.txt of an endpoint's PgBouncer.
    fn bouncer_files(&self, dir: &Path, spec: &ComputeSpec) -> Vec<(PathBuf, String)> {
        let bouncer_dir = dir.join("pgbouncer");
        let run_dir = dir.join("run");
        let ini = format!(
            "; Written by the wake service (local driver) before each start.\n\
             [databases]\n\
             * = host={run} port={pg_port}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = {host}\n\
             listen_port = {pooler_port}\n\
             unix_socket_dir = {run}\n\
             unix_socket_mode = 0700\n\
             pool_mode = transaction\n\
             max_client_conn = 10000\n\
             default_pool_size = 20\n\
             auth_type = hba\n\
             auth_hba_file = {dir}/hba.conf\n\
             auth_file = {dir}/userlist.txt\n\
             auth_user = {SUPERUSER}\n\
             admin_users = {SUPERUSER}\n\
             stats_users = {SUPERUSER}\n\
             ignore_startup_parameters = extra_float_digits\n\
             pidfile = {dir}/pgbouncer.pid\n\
             logfile = {dir}/pgbouncer.log\n\
             log_connections = 0\n\
             log_disconnections = 0\n\
             server_login_retry = 0.1\n",
            run = run_dir.display(),
            pg_port = spec.port,
            host = self.host,
            pooler_port = spec.pooler_port,
            dir = bouncer_dir.display(),
        );
        let mut hba = String::from(
            "# Written by the wake service (local driver).\n\
             local all all trust\n\
             host all cloud_admin 0.0.0.0/0 reject\n\
             host all cloud_admin ::/0 reject\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host all all ::1/128 scram-sha-256\n",
        );
        if !self.loopback_only() {
            hba.push_str("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n");
        }
        vec![
            (bouncer_dir.join("pgbouncer.ini"), ini),
            (bouncer_dir.join("hba.conf"), hba),
            (
                bouncer_dir.join("userlist.txt"),
                format!("\"{SUPERUSER}\" \"\"\n"),
            ),
        ]
    }

    fn endpoint_settings(&self, spec: &ComputeSpec) -> StartSettings {
        StartSettings {
            listen: self.host.clone(),
            port: spec.port,
            fast: self.fast,
        }
    }

    /// Stops PgBouncer and Postgres in `dir`, kills leftovers and deletes `dir`.
    async fn wipe(&self, dir: &Path) -> Result<(), ComputeError> {
        if let Err(e) = self.bouncer(dir).stop().await {
            tracing::warn!(error = %e, dir = %dir.display(), "stopping PgBouncer before wiping failed");
        }
        if let Err(e) = self.cluster(dir).stop(StopMode::Fast).await {
            tracing::warn!(error = %e, dir = %dir.display(), "stopping Postgres before wiping failed");
        }
        process::kill_processes_under(dir, self.identity.uid).await?;
        process::remove_tree(dir.to_path_buf()).await
    }

    /// initdb into `dir/pgdata` and write the cluster's configuration.
    async fn init_cluster(
        &self,
        dir: &Path,
        hba: &str,
        settings: &StartSettings,
    ) -> Result<(), ComputeError> {
        let owner = self.identity.owner();
        process::ensure_dir(&dir.join("run"), 0o700, owner)?;
        let cluster = self.cluster(dir);
        check_socket_path(&cluster.run_dir)?;
        cluster.initdb(self.locale, self.fast).await?;
        cluster.configure(hba, settings)
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// An absolute path for `program`: as given when it contains a '/', else the first match on
/// PATH or in the sbin directories (often missing from a non-root PATH).
fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return is_executable(program).then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

/// C.UTF-8 when the system has it (Debian does), like scripts/postgres.sh.
fn pick_locale() -> &'static str {
    let has_c_utf8 = std::process::Command::new("locale")
        .arg("-a")
        .output()
        .ok()
        .is_some_and(|output| {
            String::from_utf8_lossy(&output.stdout).lines().any(|line| {
                let line = line.trim().to_ascii_lowercase();
                line == "c.utf8" || line == "c.utf-8"
            })
        });
    if has_c_utf8 {
        "--locale=C.UTF-8"
    } else {
        "--no-locale"
    }
}

/// Paths and hosts end up unquoted in pgbouncer.ini: refuse anything that would need quoting
/// there (or in postgresql.conf).
fn safe_config_value(value: &str) -> bool {
    !value.chars().any(|c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, '\'' | '"' | '\\' | ',' | '#' | ';' | '=')
    })
}

fn check_socket_path(run_dir: &Path) -> Result<(), ComputeError> {
    let longest = run_dir.as_os_str().len() + "/.s.PGSQL.65535".len();
    if longest > MAX_SOCKET_PATH {
        return Err(ComputeError::Process(format!(
            "{} is too long for a unix socket path ({longest} > {MAX_SOCKET_PATH} bytes): use a shorter data directory",
            run_dir.display()
        )));
    }
    Ok(())
}

/// Endpoint ids become directory names: letters, digits, '-', '_' and '.', not leading '.'.
fn valid_endpoint(endpoint: &str) -> bool {
    (1..=63).contains(&endpoint.len())
        && !endpoint.starts_with('.')
        && endpoint
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `host:port`, with brackets for IPv6.
fn address(host: &str, port: u16) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The local compute driver. Operations on one endpoint are serialised within the driver
/// (a start waits for a `stop_postgres` in progress); different endpoints proceed in
/// parallel. `pooler_stats` takes no lock, so it can be polled while a pause waits.
pub struct LocalDriver {
    setup: Setup,
    root: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    poolers: Mutex<HashMap<String, Pooler>>,
}

/// What the driver keeps about one endpoint's PgBouncer process (`pid`, listening on
/// `port`): a cached admin-console connection and whether it is paused.
#[derive(Debug)]
struct Pooler {
    pid: i32,
    port: u16,
    admin: Option<Arc<Admin>>,
    /// As this driver left it (PAUSE → true, RESUME or a fresh start → false); None until
    /// known (a PgBouncer adopted from an earlier wake service is probed once).
    paused: Option<bool>,
    /// Seen owning its listening socket on `port` (see [`Bouncer::start`]).
    verified: bool,
}

impl std::fmt::Debug for LocalDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDriver")
            .field("root", &self.root)
            .field("setup", &self.setup)
            .finish_non_exhaustive()
    }
}

impl LocalDriver {
    /// Checks the binaries and the OS user, creates `root` and makes it reachable for the OS
    /// user.
    pub fn new(config: LocalConfig) -> Result<LocalDriver, ComputeError> {
        let setup = Setup::new(&config)?;
        let root = setup.prepare_dir(&config.root, "compute root")?;
        // Each endpoint's sockets are in root/<endpoint>/run: long ids may still not fit,
        // which create reports; refuse a root where even a short one cannot.
        check_socket_path(&root.join("x".repeat(8)).join("run"))
            .map_err(|e| ComputeError::Process(format!("compute root too long: {e}")))?;
        tracing::info!(
            root = %root.display(),
            os_user = %setup.identity.name,
            pgbouncer = %setup.pgbouncer.display(),
            "local compute driver ready"
        );
        Ok(LocalDriver {
            setup,
            root,
            locks: Mutex::new(HashMap::new()),
            poolers: Mutex::new(HashMap::new()),
        })
    }

    /// The absolute root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root/<endpoint>`, refusing names that could point anywhere else.
    fn endpoint_dir(&self, endpoint: &str) -> Result<PathBuf, ComputeError> {
        if !valid_endpoint(endpoint) {
            return Err(ComputeError::Process(format!(
                "invalid endpoint id for the local driver: {endpoint:?}"
            )));
        }
        let dir = self.root.join(endpoint);
        if dir.parent() != Some(self.root.as_path()) {
            return Err(ComputeError::Process(format!(
                "refusing {} outside {}",
                dir.display(),
                self.root.display()
            )));
        }
        Ok(dir)
    }

    fn check_spec(&self, spec: &ComputeSpec) -> Result<PathBuf, ComputeError> {
        if spec.port == 0 || spec.pooler_port == 0 || spec.port == spec.pooler_port {
            return Err(ComputeError::Process(format!(
                "invalid ports for {}: postgres {}, pooler {}",
                spec.endpoint, spec.port, spec.pooler_port
            )));
        }
        self.endpoint_dir(&spec.endpoint)
    }

    async fn lock(&self, endpoint: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self
                .locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            locks.entry(endpoint.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    async fn stop_dir(&self, endpoint: &str, dir: &Path) -> Result<(), ComputeError> {
        self.forget_pooler(endpoint);
        self.setup.bouncer(dir).stop().await?;
        self.setup.cluster(dir).stop(StopMode::Fast).await
    }

    fn check_created(&self, spec: &ComputeSpec, dir: &Path) -> Result<(), ComputeError> {
        if dir.join("created").exists() {
            Ok(())
        } else {
            Err(ComputeError::Process(format!(
                "compute {} has not been created",
                spec.endpoint
            )))
        }
    }

    /// Makes sure the endpoint's PgBouncer runs with the current files on its port (adopts
    /// it, or starts it; see [`Bouncer::start`]). A freshly started one is known unpaused.
    async fn ensure_bouncer(&self, spec: &ComputeSpec, dir: &Path) -> Result<i32, ComputeError> {
        let setup = &self.setup;
        // Sockets live in run/; recreate it if someone cleaned it up.
        process::ensure_dir(&dir.join("run"), 0o700, setup.identity.owner())?;
        let verified = self
            .poolers()
            .get(&spec.endpoint)
            .filter(|p| p.verified && p.port == spec.pooler_port)
            .map(|p| p.pid);
        let daemon = setup
            .bouncer(dir)
            .start(
                &setup.bouncer_files(dir, spec),
                &setup.host,
                spec.pooler_port,
                verified,
            )
            .await?;
        let mut poolers = self.poolers();
        let pooler = Self::pooler_entry(&mut poolers, spec, daemon.pid);
        pooler.verified = true;
        if daemon.fresh {
            pooler.paused = Some(false);
        }
        Ok(daemon.pid)
    }

    fn poolers(&self) -> MutexGuard<'_, HashMap<String, Pooler>> {
        self.poolers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The entry for PgBouncer `pid` on the spec's pooler port (replacing one about another
    /// process or port).
    fn pooler_entry<'a>(
        poolers: &'a mut HashMap<String, Pooler>,
        spec: &ComputeSpec,
        pid: i32,
    ) -> &'a mut Pooler {
        let entry = poolers
            .entry(spec.endpoint.clone())
            .or_insert_with(|| Pooler {
                pid,
                port: spec.pooler_port,
                admin: None,
                paused: None,
                verified: false,
            });
        if entry.pid != pid || entry.port != spec.pooler_port {
            *entry = Pooler {
                pid,
                port: spec.pooler_port,
                admin: None,
                paused: None,
                verified: false,
            };
        }
        entry
    }

    fn set_paused(&self, spec: &ComputeSpec, pid: i32, paused: bool) {
        Self::pooler_entry(&mut self.poolers(), spec, pid).paused = Some(paused);
    }

    fn known_paused(&self, spec: &ComputeSpec, pid: i32) -> Option<bool> {
        self.poolers()
            .get(&spec.endpoint)
            .filter(|p| p.pid == pid && p.port == spec.pooler_port)
            .and_then(|p| p.paused)
    }

    fn forget_pooler(&self, endpoint: &str) {
        self.poolers().remove(endpoint);
    }

    /// The cached admin-console connection to PgBouncer `pid`, or a new one (cached).
    async fn pooler_admin(
        &self,
        spec: &ComputeSpec,
        dir: &Path,
        pid: i32,
    ) -> Result<Arc<Admin>, ComputeError> {
        let cached = self
            .poolers()
            .get(&spec.endpoint)
            .filter(|p| p.pid == pid && p.port == spec.pooler_port)
            .and_then(|p| p.admin.clone())
            .filter(|admin| !admin.client.is_closed());
        if let Some(admin) = cached {
            return Ok(admin);
        }
        let admin = Admin::connect(&dir.join("run"), spec.pooler_port).await?;
        Self::pooler_entry(&mut self.poolers(), spec, pid).admin = Some(admin.clone());
        Ok(admin)
    }

    /// RESUME PgBouncer `pid` ("not paused" is fine).
    async fn resume(&self, spec: &ComputeSpec, dir: &Path, pid: i32) -> Result<(), ComputeError> {
        let admin = self.pooler_admin(spec, dir, pid).await?;
        match admin.resume().await? {
            AdminReply::Done => {
                tracing::info!(endpoint = %spec.endpoint, "PgBouncer resumed");
            }
            AdminReply::NotPaused => {}
            other => {
                return Err(ComputeError::Process(format!(
                    "unexpected PgBouncer reply to RESUME: {other:?}"
                )))
            }
        }
        self.set_paused(spec, pid, false);
        Ok(())
    }

    /// Polls PgBouncer's counts every `every` until `done` holds (true) or `deadline` passes
    /// (false).
    async fn wait_counts(
        &self,
        spec: &ComputeSpec,
        dir: &Path,
        pid: i32,
        deadline: Instant,
        every: Duration,
        done: impl Fn(&Counts) -> bool,
    ) -> Result<bool, ComputeError> {
        loop {
            let admin = self.pooler_admin(spec, dir, pid).await?;
            if done(&admin.counts().await?) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(every).await;
        }
    }

    /// The command the driver runs to start `endpoint`'s postmaster: `postgres -D
    /// root/<endpoint>/pgdata` as the OS user, in its own process group, with the
    /// settings the driver last wrote into the data directory (at create, or at the last
    /// start: the port among them), stdout and stderr to /dev/null (set them to keep the
    /// log). For benchmarks: start "a bare Postgres on the same data" the way the resume
    /// path does and compare. The endpoint must have been created and must not run (stop
    /// it first, e.g. with [`ComputeDriver::stop`]); whoever spawns the command owns the
    /// process (stop it with SIGINT and reap it).
    ///
    /// ```no_run
    /// # fn demo(driver: &wake_service::compute::local::LocalDriver) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut postmaster = driver.bare_postgres_command("ep-cool-darkness-123")?.spawn()?;
    /// // … poll root/ep-cool-darkness-123/pgdata/postmaster.pid for "ready", connect …
    /// nix::sys::signal::kill(
    ///     nix::unistd::Pid::from_raw(postmaster.id() as i32),
    ///     nix::sys::signal::Signal::SIGINT,
    /// )?;
    /// postmaster.wait()?;
    /// # Ok(()) }
    /// ```
    pub fn bare_postgres_command(
        &self,
        endpoint: &str,
    ) -> Result<std::process::Command, ComputeError> {
        let dir = self.endpoint_dir(endpoint)?;
        if !dir.join("created").exists() {
            return Err(ComputeError::Process(format!(
                "compute {endpoint} has not been created"
            )));
        }
        let mut cmd = self.setup.cluster(&dir).postmaster_command();
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Ok(cmd)
    }
}

#[async_trait]
impl ComputeDriver for LocalDriver {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn create(&self, spec: &ComputeSpec) -> Result<(), ComputeError> {
        let dir = self.check_spec(spec)?;
        check_socket_path(&dir.join("run"))?;
        let _guard = self.lock(&spec.endpoint).await;
        let marker = dir.join("created");
        if marker.exists() {
            tracing::debug!(endpoint = %spec.endpoint, "compute already created");
            return Ok(());
        }
        if dir.exists() {
            tracing::warn!(endpoint = %spec.endpoint, dir = %dir.display(), "unfinished compute found; wiping it and creating again");
            self.setup.wipe(&dir).await?;
        }
        tracing::info!(endpoint = %spec.endpoint, dir = %dir.display(), "creating compute");
        let owner = self.setup.identity.owner();
        process::ensure_dir(&dir, 0o700, owner)?;
        process::ensure_dir(&dir.join("pgbouncer"), 0o700, owner)?;
        let settings = self.setup.endpoint_settings(spec);
        self.setup
            .init_cluster(&dir, &self.setup.endpoint_hba(), &settings)
            .await?;
        for (path, contents) in self.setup.bouncer_files(&dir, spec) {
            process::write_file(&path, contents.as_bytes(), 0o600, owner)?;
        }
        process::write_file(&marker, b"local driver compute\n", 0o644, None)?;
        tracing::info!(endpoint = %spec.endpoint, "compute created");
        Ok(())
    }

    async fn start(&self, spec: &ComputeSpec) -> Result<Addresses, ComputeError> {
        let began = Instant::now();
        let dir = self.check_spec(spec)?;
        let _guard = self.lock(&spec.endpoint).await;
        self.check_created(spec, &dir)?;
        let setup = &self.setup;
        // Sockets live in run/; recreate it if someone cleaned it up.
        process::ensure_dir(&dir.join("run"), 0o700, setup.identity.owner())?;
        let postmaster = setup
            .cluster(&dir)
            .start(&setup.endpoint_settings(spec))
            .await?;
        let bouncer = self.ensure_bouncer(spec, &dir).await?;
        // Only now that Postgres is ready: a RESUME earlier would let PgBouncer try to log in,
        // fail, and turn clients away for server_login_retry.
        if self.known_paused(spec, bouncer) != Some(false) {
            self.resume(spec, &dir, bouncer).await?;
        }
        tracing::info!(
            endpoint = %spec.endpoint,
            postmaster,
            pgbouncer = bouncer,
            port = spec.port,
            pooler_port = spec.pooler_port,
            elapsed = ?began.elapsed(),
            "compute running"
        );
        Ok(Addresses {
            direct: address(&setup.host, spec.port),
            pooler: address(&setup.host, spec.pooler_port),
        })
    }

    async fn stop_postgres(&self, spec: &ComputeSpec, mode: StopMode) -> Result<(), ComputeError> {
        let dir = self.endpoint_dir(&spec.endpoint)?;
        let _guard = self.lock(&spec.endpoint).await;
        if !dir.exists() {
            return Ok(());
        }
        self.setup.cluster(&dir).stop(mode).await
    }

    async fn stop(&self, spec: &ComputeSpec) -> Result<(), ComputeError> {
        let dir = self.endpoint_dir(&spec.endpoint)?;
        let _guard = self.lock(&spec.endpoint).await;
        if !dir.exists() {
            return Ok(());
        }
        self.stop_dir(&spec.endpoint, &dir).await?;
        tracing::info!(endpoint = %spec.endpoint, "compute stopped");
        Ok(())
    }

    async fn pause_pooler(
        &self,
        spec: &ComputeSpec,
        timeout: Duration,
    ) -> Result<bool, ComputeError> {
        let dir = self.check_spec(spec)?;
        let _guard = self.lock(&spec.endpoint).await;
        self.check_created(spec, &dir)?;
        let pid = self.ensure_bouncer(spec, &dir).await?;
        // The timeout is the pause's own (not the lock's, nor a PgBouncer start's).
        let began = Instant::now();
        let deadline = began + timeout;
        // A PAUSE closes server connections still logging in, and PgBouncer 1.18 counts such a
        // close as a failed login: until the pool's next successful login, any client needing
        // a server there gets "server login has been failing" at once — right after the RESUME
        // that should have served it. So PAUSE only once no login is in flight (they take a
        // few ms; bounded by the pause's own timeout).
        let no_login = |c: &Counts| c.servers_logging_in == 0;
        let millis = Duration::from_millis(2);
        if !self
            .wait_counts(spec, &dir, pid, deadline, millis, no_login)
            .await?
        {
            return Ok(false);
        }
        // PAUSE on a connection of its own: it answers only once every server connection is
        // closed, and a connection waiting for that cannot be used for anything else.
        let pauser = match tokio::time::timeout_at(
            deadline.into(),
            Admin::connect(&dir.join("run"), spec.pooler_port),
        )
        .await
        {
            Ok(connected) => connected?,
            Err(_elapsed) => {
                return Err(ComputeError::Process(format!(
                    "PgBouncer's admin console did not answer within {timeout:?}"
                )))
            }
        };
        let paused = match tokio::time::timeout_at(deadline.into(), pauser.pause()).await {
            Ok(Ok(AdminReply::Done)) => true,
            Ok(Ok(AdminReply::AlreadyPaused)) => {
                // Sent by an earlier wake service, it may still be waiting for server
                // connections: paused once PgBouncer holds none.
                let no_server = |c: &Counts| c.servers == 0;
                let millis = Duration::from_millis(5);
                self.wait_counts(spec, &dir, pid, deadline, millis, no_server)
                    .await?
            }
            Ok(Ok(other)) => {
                return Err(ComputeError::Process(format!(
                    "unexpected PgBouncer reply to PAUSE: {other:?}"
                )))
            }
            Ok(Err(e)) => return Err(e),
            Err(_elapsed) => false,
        };
        if paused {
            self.set_paused(spec, pid, true);
            tracing::info!(endpoint = %spec.endpoint, elapsed = ?began.elapsed(), "PgBouncer paused");
            return Ok(true);
        }
        // RESUME cancels the pending PAUSE (PgBouncer 1.18 never answers the PAUSE then:
        // its connection is closed by dropping `pauser`).
        self.resume(spec, &dir, pid).await?;
        drop(pauser);
        tracing::info!(
            endpoint = %spec.endpoint,
            timeout = ?timeout,
            "PgBouncer could not pause in time (a server connection stayed busy); resumed"
        );
        Ok(false)
    }

    async fn resume_pooler(&self, spec: &ComputeSpec) -> Result<(), ComputeError> {
        let dir = self.check_spec(spec)?;
        let _guard = self.lock(&spec.endpoint).await;
        if !dir.exists() {
            return Ok(());
        }
        match self.setup.bouncer(&dir).pid() {
            Some(pid) => self.resume(spec, &dir, pid).await,
            None => Ok(()),
        }
    }

    async fn pooler_stats(&self, spec: &ComputeSpec) -> Result<Option<PoolerStats>, ComputeError> {
        let dir = self.endpoint_dir(&spec.endpoint)?;
        let bouncer = self.setup.bouncer(&dir);
        let Some(pid) = bouncer.pid() else {
            return Ok(None);
        };
        let stats = async {
            let admin = self.pooler_admin(spec, &dir, pid).await?;
            let paused = match self.known_paused(spec, pid) {
                Some(paused) => paused,
                None => {
                    let paused = admin.probe_paused().await?;
                    Self::pooler_entry(&mut self.poolers(), spec, pid)
                        .paused
                        .get_or_insert(paused);
                    paused
                }
            };
            let counts = admin.counts().await?;
            Ok::<_, ComputeError>(PoolerStats {
                clients_waiting: counts.clients_waiting,
                clients_active: counts.clients_active,
                servers_active: counts.servers_active,
                transactions: counts.transactions,
                paused,
            })
        };
        match stats.await {
            Ok(stats) => Ok(Some(stats)),
            // Stopped while we asked.
            Err(_) if bouncer.pid() != Some(pid) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn destroy(&self, endpoint: &str) -> Result<(), ComputeError> {
        let dir = self.endpoint_dir(endpoint)?;
        // The lock entry stays: a waiter may hold it, and a fresh one would not exclude it.
        let _guard = self.lock(endpoint).await;
        self.forget_pooler(endpoint);
        if dir.exists() {
            tracing::info!(endpoint, dir = %dir.display(), "destroying compute");
            self.setup.wipe(&dir).await?;
        }
        Ok(())
    }

    async fn health(&self, spec: &ComputeSpec) -> Result<Health, ComputeError> {
        let dir = self.endpoint_dir(&spec.endpoint)?;
        if !dir.exists() {
            return Ok(Health::Stopped);
        }
        let postmaster = match self.setup.cluster(&dir).pid_file() {
            postgres::PidFile::Running(pm) => pm,
            // Whether or not PgBouncer runs (paused, for a suspended compute).
            postgres::PidFile::NotRunning | postgres::PidFile::Stale(_) => {
                return Ok(Health::Stopped)
            }
            postgres::PidFile::Unknown(_) => return Ok(Health::Degraded),
        };
        let probe = Duration::from_secs(2);
        // The listening sockets must be our processes' own (not just anything on the port),
        // and they must accept.
        let healthy = postmaster.status == "ready"
            && postmaster.port == Some(spec.port)
            && process::listens_on(postmaster.pid, spec.port)
            && self.setup.bouncer(&dir).listening(spec.pooler_port)
            && process::tcp_accepts(&self.setup.host, spec.port, probe).await
            && process::tcp_accepts(&self.setup.host, spec.pooler_port, probe).await;
        Ok(if healthy {
            Health::Running
        } else {
            Health::Degraded
        })
    }

    async fn admin_database(
        &self,
        spec: &ComputeSpec,
        database: &str,
    ) -> Result<tokio_postgres::Client, ComputeError> {
        let dir = self.endpoint_dir(&spec.endpoint)?;
        let mut config = self.setup.cluster(&dir).admin_config(spec.port);
        config.dbname(database).options("-c search_path=pg_catalog");
        postgres::connect(&config).await
    }

    async fn set_pooler_roles(
        &self,
        _spec: &ComputeSpec,
        _roles: &[super::PoolerRole],
    ) -> Result<(), ComputeError> {
        // TODO(isolation helper): PgBouncer auth_file + RELOAD.
        Ok(())
    }

    async fn quarantine(&self, endpoint: &str) -> Result<String, ComputeError> {
        Err(ComputeError::Process(format!(
            "quarantine of {endpoint} is not implemented yet"
        )))
    }

    async fn list(&self) -> Result<Vec<String>, ComputeError> {
        let context = || format!("listing {}", self.root.display());
        let mut entries = tokio::fs::read_dir(&self.root)
            .await
            .map_err(|e| ComputeError::io(context(), e))?;
        let mut endpoints = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| ComputeError::io(context(), e))?
        {
            let is_dir = entry.file_type().await.is_ok_and(|t| t.is_dir());
            if let Some(name) = entry.file_name().to_str() {
                if is_dir && valid_endpoint(name) {
                    endpoints.push(name.to_string());
                }
            }
        }
        endpoints.sort();
        Ok(endpoints)
    }
}

/// The wake service's own embedded state store when no external database URL is given: a
/// private Postgres 15 cluster listening ONLY on a unix socket (listen_addresses = ''), so it
/// can never collide with a TCP port.
///
/// Layout under `dir`: `pgdata/`, `run/` (the socket, 0700), `postgres.log`, and a `created`
/// marker written after initdb and configuration succeeded.
#[derive(Debug)]
pub struct StateCluster {
    setup: Setup,
    dir: PathBuf,
}

impl StateCluster {
    /// initdb if `dir` has no cluster yet (idempotent, half-finished initdb wiped and redone),
    /// start it unless already running (adopt a running postmaster after a kill -9 of the wake
    /// service), wait until it accepts connections.
    pub async fn start(config: &LocalConfig, dir: &Path) -> Result<StateCluster, ComputeError> {
        let setup = Setup::new(config)?;
        let dir = setup.prepare_dir(dir, "state directory")?;
        let owner = setup.identity.owner();
        process::ensure_dir(&dir, 0o700, owner)?;
        let cluster = StateCluster { setup, dir };
        let setup = &cluster.setup;
        let dir = &cluster.dir;
        let settings = cluster.settings();
        let marker = dir.join("created");
        if !marker.exists() {
            let pgdata = dir.join("pgdata");
            if pgdata.exists() {
                tracing::warn!(pgdata = %pgdata.display(), "unfinished state cluster found; wiping it and running initdb again");
                if let Err(e) = setup.cluster(dir).stop(StopMode::Fast).await {
                    tracing::warn!(error = %e, "stopping the unfinished state cluster failed");
                }
                process::kill_processes_under(&pgdata, setup.identity.uid).await?;
                process::remove_tree(pgdata).await?;
            }
            tracing::info!(dir = %dir.display(), "creating the embedded state cluster");
            let hba = "# Written by the wake service: unix socket only.\nlocal all all trust\n";
            setup.init_cluster(dir, hba, &settings).await?;
            process::write_file(&marker, b"wake service state cluster\n", 0o644, None)?;
        }
        process::ensure_dir(&dir.join("run"), 0o700, owner)?;
        let pid = setup.cluster(dir).start(&settings).await?;

        // A "ready" postmaster (spawned or adopted) accepts connections; check with a real
        // login anyway, briefly retrying.
        let config = cluster.connection_config();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match config.connect(tokio_postgres::NoTls).await {
                Ok(_) => break,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "state cluster not accepting connections yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(process::with_log(
                        format!("the state cluster does not accept connections: {e}"),
                        &dir.join("postgres.log"),
                    ))
                }
            }
        }
        tracing::info!(dir = %dir.display(), pid, "embedded state cluster running");
        Ok(cluster)
    }

    fn settings(&self) -> StartSettings {
        StartSettings {
            listen: String::new(),
            port: STATE_PORT,
            fast: self.setup.fast,
        }
    }

    /// host = socket dir, user = cloud_admin, dbname = postgres, no password.
    pub fn connection_config(&self) -> tokio_postgres::Config {
        self.setup.cluster(&self.dir).admin_config(STATE_PORT)
    }

    /// The postmaster's pid, when one runs.
    pub fn pid(&self) -> Option<i32> {
        match self.setup.cluster(&self.dir).pid_file() {
            postgres::PidFile::Running(pm) => Some(pm.pid),
            _ => None,
        }
    }

    /// Fast shutdown. Nothing to do when it is not running.
    pub async fn stop(&self) -> Result<(), ComputeError> {
        self.setup.cluster(&self.dir).stop(StopMode::Fast).await?;
        tracing::info!(dir = %self.dir.display(), "embedded state cluster stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names() {
        for ok in ["ep-cool-darkness-123", "a", "db_1", "x.y"] {
            assert!(valid_endpoint(ok), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "é", &"x".repeat(64)] {
            assert!(!valid_endpoint(bad), "{bad}");
        }
    }

    #[test]
    fn config_values() {
        assert!(safe_config_value("/tmp/wake-1/computes"));
        for bad in ["/a b", "/a'b", "/a,b", "/a#b", "/a;b", "/a=b", "/a\\b"] {
            assert!(!safe_config_value(bad), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(address("127.0.0.1", 5432), "127.0.0.1:5432");
        assert_eq!(address("::1", 5432), "[::1]:5432");
        assert_eq!(address("db.local", 1), "db.local:1");
    }

    #[test]
    fn socket_path_limit() {
        assert!(check_socket_path(Path::new("/tmp/x/run")).is_ok());
        assert!(check_socket_path(&Path::new("/tmp").join("y".repeat(100))).is_err());
    }
}
