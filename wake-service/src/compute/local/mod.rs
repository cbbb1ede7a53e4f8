//! The `local` driver: one Postgres 15 cluster plus one PgBouncer per endpoint, as processes
//! on this machine, each endpoint under an OS user of its own when the wake service is root.
//! The machinery to run a Postgres cluster as an isolated OS user (`Setup`, `postgres`,
//! `process`, `files`, `users`) is shared, crate-internally, with the wake service's own
//! embedded state store ([`crate::state_cluster`]), which lives outside this driver.
//!
//! # OS users
//!
//! When the wake service runs as root (as `make up` runs it), every endpoint gets its own
//! unprivileged OS user, made at `create` (`useradd --system --user-group`, no home, shell
//! `nologin`; an existing one is reused only when its comment says it is ours) and removed by
//! `destroy` and `quarantine` once every process of it is gone; the state store has one too.
//! Names come from the compute root and the endpoint id, so several wake services share a
//! machine (`w<6 hex of sha256(root)>-<id>`, or a hashed form; see `users.rs`). An endpoint's
//! Postgres and PgBouncer run as its user, its directory (0700), sockets and data are owned by
//! it, and the compute root is 0711: a shell obtained inside one endpoint's Postgres can
//! neither read, connect to nor signal another endpoint's processes and files, nor the state
//! store's. Once Postgres stopped (`stop_postgres`, `stop`), every other process of the user
//! but its PgBouncer is killed: a daemon started through `COPY … TO PROGRAM` does not outlive
//! a suspend, nor do orphaned backends.
//!
//! `LocalConfig::os_user` (`--compute-os-user`) instead runs every compute and the state store
//! as one shared user: no isolation between endpoints. A wake service that is not root runs
//! them all as its own user, without isolation either; both log a warning at startup.
//!
//! Directories from earlier versions (owned by the `postgres` user every compute shared) are
//! taken over by the first operation on them: the processes there that run as the old owner
//! are stopped, the tree is chowned to the endpoint's user without following symlinks
//! (`files::Dir::chown_tree`: `O_PATH|O_NOFOLLOW` descriptors, files with several hard
//! links left alone), and the compute goes on as its own user. The state store's directory the
//! same way.
//!
//! # Files
//!
//! Everything inside a compute's directory is writable by the compute's user, who can replace
//! any entry there with a symlink, a FIFO or a hard link. The root wake service reaches those
//! entries only through `files::Dir`: checked directory descriptors, `openat` with
//! `O_NOFOLLOW|O_NONBLOCK`, `fstat` checks (regular file, one link, owned by the compute's
//! user or the wake service), bounded reads, writes by `O_EXCL` temporary file and `renameat`,
//! `fchown`/`fchmod` on descriptors. A pid read from `postmaster.pid` or `pgbouncer.pid` is
//! only signalled when the process runs as the compute's user (real and effective uid), and
//! every connection to a unix socket there (Postgres as `cloud_admin`, PgBouncer's admin
//! console) checks with `SO_PEERCRED` that the process behind it runs as the compute's user,
//! so a socket replaced by a symlink to another endpoint's is refused.
//!
//! # Layout
//!
//! ```text
//! root/                         0711 with one user per endpoint
//!   .quarantine/<id>-<time>/    computes moved aside by `quarantine` (0700, root): never
//!                               listed, started or deleted
//!   <endpoint>/                 0700, owned by the endpoint's OS user
//!     pgdata/                   the cluster (initdb -U cloud_admin, SCRAM)
//!       wake.conf               settings written at create (included from postgresql.conf)
//!       wake.start.conf         port, addresses, socket dir: rewritten before each start
//!       pg_hba.conf, pg_ident.conf   rewritten before each start when they differ
//!     pgdata.init/              where initdb works; renamed to pgdata/ once configured
//!     run/                      unix sockets of Postgres and PgBouncer, 0700
//!     pgbouncer/                pgbouncer.ini, hba.conf, userlist.txt (the auth file),
//!                               pgbouncer.pid, pgbouncer.log
//!     postgres.log              the postmaster's stdout and stderr (appended)
//!     created                   written last by create (owned by the wake service)
//! ```
//!
//! `create` is idempotent through the `created` marker: present → nothing to do; the directory
//! present without it (the wake service died mid-create, and the store says the create is in
//! progress: nothing of value is there) → stop whatever runs there, kill leftover processes
//! (an initdb keeps running when the wake service is killed), wipe, redo.
//!
//! # Authentication
//!
//! Postgres: the superuser `cloud_admin` logs in only over the unix socket and only by `peer`
//! authentication mapped from the wake service's own OS user (`local all cloud_admin peer
//! map=wake`, and pg_ident.conf `wake root cloud_admin`, or the wake service's user when it
//! is not root): a shell as the compute's user reaches the socket but is not in the map.
//! Other local logins are `trust` (the socket directory is 0700 and the compute's: PgBouncer
//! logs in there as the client's role). `host all cloud_admin all reject` (never over TCP),
//! then `scram-sha-256` from loopback (from anywhere when the configured host is not a
//! loopback address). The state store has `local all cloud_admin peer map=wake` only. Both
//! files are rewritten before each start when they differ (clusters of earlier versions
//! included). When the wake service's uid has no passwd entry, peer cannot work and
//! `cloud_admin` is trusted on the socket instead (with a warning).
//!
//! PgBouncer (`auth_type = hba`, no `auth_user`: it never runs SQL to authenticate anyone, so
//! nothing a database owner sets, such as a `search_path`, is ever run as superuser): its
//! `auth_file` (userlist.txt) lists the endpoint's API roles with their SCRAM-SHA-256
//! verifiers exactly as the store has them (`"name" "SCRAM-SHA-256$…"`), plus `cloud_admin`
//! with an empty password for the admin console. [`ComputeDriver::set_pooler_roles`] rewrites
//! it atomically and sends `RELOAD`; a stopped PgBouncer reads it at its next start. Its
//! hba.conf has `local all all trust` (the admin console, as `cloud_admin`, over the private
//! socket), rejects `cloud_admin` over TCP and asks everyone else for SCRAM, which PgBouncer
//! runs with the client against the verifier; it then logs in to Postgres as that role over
//! the unix socket (trust). Notes on 1.18 (checked in tests/local_driver.rs):
//!
//! * After a `RELOAD`, a role no longer in the file is refused for new logins ("SASL
//!   authentication failed") and a changed verifier is the one that counts; clients already
//!   connected stay connected. A role missing from the file (one made in SQL outside the API)
//!   cannot log in through PgBouncer at all.
//! * Its hba parser does not accept `all` as an address (the line is dropped with a warning),
//!   hence `0.0.0.0/0` and `::/0` in the reject lines.
//! * `cloud_admin` listed in the auth file with an empty password also means SCRAM for it can
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
//! (alive, running as the compute's user, a `postgres` process whose `-D` or working
//! directory is this data directory) is adopted when its port, socket directory, start
//! settings and authentication files match and restarted when not (one still starting is
//! waited for, one shutting down too); the same for PgBouncer through its pidfile (alive, the
//! compute's user, command line names our ini, ini and hba.conf on disk unchanged — they are
//! only rewritten while it is stopped; the auth file is not compared, it changes at runtime —
//! and it owns the listening socket on the port, checked once per process: PgBouncer keeps its
//! listening sockets for life). A pidfile naming a live process that is not ours (pid reuse
//! after a crash, or a pid the compute's user wrote there) is removed and never signalled,
//! since both programs would refuse to start otherwise. Nothing is ever started twice. Every
//! wait is bounded (Postgres 60 s to become ready, PgBouncer 30 s to start and 10 s + SIGKILL
//! to stop, admin-console commands 10 s, killing a user's leftover processes 10 s) and errors
//! carry the tail of the log. Logs over 10 MiB are rotated to `*.1` before a start.
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
//!   transaction in progress holds it up for as long as it lasts. Then queries of connected
//!   clients wait as `cl_waiting` in their pool of `SHOW POOLS`, and `RESUME` lets them go on
//!   (`query_wait_timeout`, 120 s, still bounds the wait). New clients log in without a
//!   server connection (their verifier is in the auth file) once PgBouncer has the server's
//!   parameters for the pool (from any earlier server login since it started); they show up
//!   as `cl_waiting` only once they send a query, which is what the scheduler's pooler watch
//!   wakes a suspended endpoint on. Before that (a PgBouncer started while Postgres is down)
//!   they wait in the login itself, also as `cl_waiting`.
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
//! * The size (`cu`) is enforced only where cgroups are writable ([`cgroup`]): elsewhere the
//!   settings and pools follow it but CPU and memory are not limited (said once in the log
//!   and in every endpoint's status). Sizes apply as [`size`] describes.
//! * One wake service per root: the per-endpoint locks are in memory.
//! * Per-endpoint users are system users (`useradd --system`): Debian's range 100-999 bounds
//!   how many endpoints (of all wake services) a machine holds.
//! * Nothing confines a compute's user on the network: its processes can bind any free TCP
//!   port, including another endpoint's while that one is stopped.

mod cgroup;
pub(crate) mod files;
mod pgbouncer;
pub(crate) mod postgres;
pub(crate) mod process;
mod size;
pub(crate) mod users;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use wake_api::admin::{Addresses, ComputeSize};
use wake_api::names;

use self::cgroup::Cgroups;
use self::files::Dir;
use self::pgbouncer::{Admin, AdminReply, Bouncer, Counts};
use self::postgres::{Cluster, StartSettings, PGDATA, PGDATA_INIT, SUPERUSER};
use self::process::{Children, Identity};
use self::size::Running;
use super::{
    ComputeDriver, ComputeError, ComputeLoad, ComputeSpec, Health, PoolerRole, PoolerStats,
    StopMode,
};

/// The driver's name in the store and the API.
pub const NAME: &str = "local";

/// The longest unix socket path the kernel binds (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Written last by create (and by the state store's start).
pub(crate) const MARKER: &str = "created";
/// The unix socket directory in a compute's (or the state store's) directory.
pub(crate) const RUN: &str = "run";
/// Where `quarantine` moves computes, in the compute root.
const QUARANTINE: &str = ".quarantine";
/// The name of the pg_ident.conf map that lets the wake service's OS user be `cloud_admin`.
const IDENT_MAP: &str = "wake";
/// How long killing every leftover process of a compute's user may take.
const SWEEP_TIMEOUT: Duration = Duration::from_secs(10);

/// How the local driver runs its processes.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalConfig {
    /// One subdirectory per endpoint (e.g. DATA_DIR/computes).
    pub root: PathBuf,
    /// Where initdb and postgres are.
    pub pg_bin: PathBuf,
    /// The PgBouncer binary; a bare name is looked up on PATH (and in /usr/sbin).
    pub pgbouncer: PathBuf,
    /// Run every compute's Postgres and PgBouncer (and the state store) as this one OS user:
    /// no isolation between endpoints. None: one OS user per endpoint (and one for the state
    /// store) when the wake service is root, else the wake service's own user.
    pub os_user: Option<String>,
    /// Computes listen on and are advertised at this host.
    pub host: String,
    /// Tests: fsync, synchronous_commit and full_page_writes off (and initdb --no-sync).
    pub fast: bool,
}

impl LocalConfig {
    /// Postgres 15 from Debian's packages, PgBouncer from PATH, one OS user per endpoint when
    /// running as root, loopback only.
    pub fn defaults(root: PathBuf) -> LocalConfig {
        LocalConfig {
            root,
            pg_bin: PathBuf::from("/usr/lib/postgresql/15/bin"),
            pgbouncer: PathBuf::from("pgbouncer"),
            os_user: None,
            host: "127.0.0.1".to_string(),
            fast: false,
        }
    }
}

/// The prefix of every OS user the local driver makes for the computes under `root` (a
/// canonical path) and for its state store: `w<6 hex digits>`. For operators and tests that
/// clean up after a wake service.
pub fn os_user_prefix(root: &Path) -> String {
    format!("w{}", users::instance_tag(root))
}

/// Who the computes run as.
#[derive(Debug)]
pub(crate) enum Principals {
    /// The wake service is root: each endpoint has its own user, and so has the state store
    /// (names derived from `tag`, see [`users`]).
    PerEndpoint { tag: String },
    /// One user for every compute and the state store: an explicit `os_user`, or the wake
    /// service's own user when it is not root. No isolation between endpoints.
    Shared(Identity),
}

/// Checked configuration shared by [`LocalDriver`] and the embedded state store
/// ([`crate::state_cluster::StateCluster`]): how to run a Postgres cluster here, as whom.
#[derive(Debug)]
pub(crate) struct Setup {
    pg_bin: PathBuf,
    pgbouncer: PathBuf,
    principals: Principals,
    /// The canonical compute root.
    root: PathBuf,
    host: String,
    fast: bool,
    /// `--locale=C.UTF-8` or `--no-locale`.
    locale: &'static str,
    /// Postmasters this process spawned, reaped when they exit.
    children: Children,
    /// pg_hba.conf of computes, and the pg_ident.conf of computes and the state store.
    endpoint_hba: String,
    ident: String,
    /// How `cloud_admin` authenticates on a unix socket: `peer map=wake`, or `trust` when the
    /// wake service's uid has no passwd entry.
    admin_method: String,
    /// The users of endpoints, once looked up (per-endpoint users only).
    identities: Mutex<HashMap<String, Identity>>,
}

/// One compute's directory, opened and checked, and the OS user its processes run as.
struct Compute {
    dir: Dir,
    identity: Identity,
}

impl Setup {
    pub(crate) fn new(config: &LocalConfig) -> Result<Setup, ComputeError> {
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
        let root = canonical_dir(&config.root, "compute root")?;
        let root_user = nix::unistd::geteuid().is_root();
        let principals = match (&config.os_user, root_user) {
            (Some(name), _) => Principals::Shared(Identity::resolve(Some(name))?),
            (None, true) => Principals::PerEndpoint {
                tag: users::instance_tag(&root),
            },
            (None, false) => Principals::Shared(Identity::resolve(None)?),
        };
        let (admin_method, ident) = admin_login();
        let loopback_only = config.host == "localhost"
            || config
                .host
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        Ok(Setup {
            pg_bin: config.pg_bin.clone(),
            pgbouncer,
            principals,
            root,
            host: config.host.clone(),
            fast: config.fast,
            locale: pick_locale(),
            children: Children::default(),
            endpoint_hba: endpoint_hba(&admin_method, loopback_only),
            ident,
            admin_method,
            identities: Mutex::new(HashMap::new()),
        })
    }
}

/// How `cloud_admin` logs in on a unix socket (a pg_hba.conf method), and the pg_ident.conf
/// that maps the wake service's own OS user (only it) to `cloud_admin`.
fn admin_login() -> (String, String) {
    // The OS user that may log in as cloud_admin (by peer authentication): ours.
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|user| user.name)
        .filter(|name| safe_config_value(name));
    let admin_method = match &me {
        Some(_) => format!("peer map={IDENT_MAP}"),
        None => {
            tracing::warn!(
                "the wake service's uid has no passwd entry: cloud_admin is trusted on the \
                     computes' unix sockets instead of peer-authenticated"
            );
            "trust".to_string()
        }
    };
    let ident = format!(
        "# Written by the wake service (local driver): only its own OS user is cloud_admin.\n\
             # MAPNAME  SYSTEM-USERNAME  PG-USERNAME\n{}",
        me.map(|me| format!("{IDENT_MAP}  {me}  {SUPERUSER}\n"))
            .unwrap_or_default()
    );
    (admin_method, ident)
}

/// A compute's pg_hba.conf: `cloud_admin` on the socket only, SCRAM over TCP from loopback
/// (from anywhere unless `loopback_only`).
fn endpoint_hba(admin_method: &str, loopback_only: bool) -> String {
    let mut endpoint_hba = format!(
        "# Written by the wake service (local driver); rewritten before each start.\n\
             # TYPE DATABASE USER        ADDRESS       METHOD\n\
             local  all      {SUPERUSER}                {admin_method}\n\
             local  all      all                       trust\n\
             host   all      {SUPERUSER} all           reject\n\
             host   all      all         127.0.0.1/32  scram-sha-256\n\
             host   all      all         ::1/128       scram-sha-256\n",
    );
    if !loopback_only {
        endpoint_hba.push_str(
            "host   all      all         0.0.0.0/0     scram-sha-256\n\
                 host   all      all         ::/0          scram-sha-256\n",
        );
    }
    endpoint_hba
}

impl Setup {
    fn per_endpoint(&self) -> bool {
        matches!(self.principals, Principals::PerEndpoint { .. })
    }

    /// Makes `dir` (canonical, created by [`canonical_dir`]) reachable for the computes' users.
    pub(crate) fn make_traversable(&self, dir: &Path) -> Result<(), ComputeError> {
        match &self.principals {
            // Per-endpoint users are in no group: "others" must be able to pass.
            Principals::PerEndpoint { .. } => process::ensure_traversable(dir, u32::MAX, u32::MAX),
            Principals::Shared(identity) if identity.switch => {
                process::ensure_traversable(dir, identity.uid, identity.gid)
            }
            Principals::Shared(_) => Ok(()),
        }
    }

    fn identities(&self) -> MutexGuard<'_, HashMap<String, Identity>> {
        self.identities
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The OS user name and comment of `endpoint`'s user (per-endpoint users only).
    fn endpoint_user(&self, endpoint: &str) -> Option<(String, String)> {
        match &self.principals {
            Principals::PerEndpoint { tag } => Some((
                users::endpoint_user(tag, endpoint),
                users::comment(tag, &format!("compute {endpoint}")),
            )),
            Principals::Shared(_) => None,
        }
    }

    /// Who `endpoint`'s processes run as: its own user (created when `create` and missing;
    /// None when missing otherwise), or the shared one.
    async fn identity(
        &self,
        endpoint: &str,
        create: bool,
    ) -> Result<Option<Identity>, ComputeError> {
        let Some((name, comment)) = self.endpoint_user(endpoint) else {
            return Ok(self.shared());
        };
        if let Some(identity) = self.identities().get(endpoint) {
            return Ok(Some(identity.clone()));
        }
        let identity = if create {
            Some(users::ensure(&name, &comment).await?)
        } else {
            users::lookup(&name, &comment)?
        };
        if let Some(identity) = &identity {
            self.identities()
                .insert(endpoint.to_string(), identity.clone());
        }
        Ok(identity)
    }

    /// [`Self::identity`] without creating, from the cache or `getpwnam` (no `useradd`).
    fn known_identity(&self, endpoint: &str) -> Result<Option<Identity>, ComputeError> {
        let Some((name, comment)) = self.endpoint_user(endpoint) else {
            return Ok(self.shared());
        };
        if let Some(identity) = self.identities().get(endpoint) {
            return Ok(Some(identity.clone()));
        }
        let identity = users::lookup(&name, &comment)?;
        if let Some(identity) = &identity {
            self.identities()
                .insert(endpoint.to_string(), identity.clone());
        }
        Ok(identity)
    }

    fn shared(&self) -> Option<Identity> {
        match &self.principals {
            Principals::Shared(identity) => Some(identity.clone()),
            Principals::PerEndpoint { .. } => None,
        }
    }

    /// Removes `endpoint`'s own user (every process of it must be gone).
    async fn remove_identity(&self, endpoint: &str) -> Result<(), ComputeError> {
        self.identities().remove(endpoint);
        match self.endpoint_user(endpoint) {
            Some((name, comment)) => users::remove(&name, &comment).await,
            None => Ok(()),
        }
    }

    /// Who the computes (and the state store) run as.
    pub(crate) fn principals(&self) -> &Principals {
        &self.principals
    }

    /// How `cloud_admin` authenticates on a unix socket (a pg_hba.conf method).
    pub(crate) fn admin_method(&self) -> &str {
        &self.admin_method
    }

    /// Settings for a cluster that listens on no TCP address.
    pub(crate) fn socket_only_settings(&self, port: u16) -> StartSettings {
        StartSettings {
            listen: String::new(),
            port,
            fast: self.fast,
        }
    }

    pub(crate) fn cluster<'a>(
        &'a self,
        identity: &'a Identity,
        dir: &'a Dir,
        pgdata_name: &'static str,
        hba: &'a str,
    ) -> Cluster<'a> {
        Cluster {
            identity,
            children: &self.children,
            pg_bin: &self.pg_bin,
            dir,
            pgdata_name,
            pgdata: dir.join(pgdata_name),
            run_dir: dir.join(RUN),
            hba,
            ident: &self.ident,
        }
    }

    /// The cluster of a compute.
    fn compute_cluster<'a>(&'a self, compute: &'a Compute) -> Cluster<'a> {
        self.cluster(&compute.identity, &compute.dir, PGDATA, &self.endpoint_hba)
    }

    fn bouncer<'a>(&'a self, identity: &'a Identity, dir: &'a Dir) -> Bouncer<'a> {
        Bouncer {
            identity,
            program: &self.pgbouncer,
            dir,
            ini: dir.join(pgbouncer::DIR).join(pgbouncer::INI),
        }
    }

    /// Whether the host is loopback only (else remote clients are allowed in by the hba).
    fn loopback_only(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The ini and hba.conf of an endpoint's PgBouncer (names in its directory). The auth file
    /// is not among them: see [`pooler_userlist`].
    fn bouncer_files(&self, dir: &Path, spec: &ComputeSpec) -> Vec<(&'static str, String)> {
        let bouncer_dir = dir.join(pgbouncer::DIR);
        let run_dir = dir.join(RUN);
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
             auth_type = hba\n\
             auth_hba_file = {dir}/{hba}\n\
             auth_file = {dir}/{userlist}\n\
             admin_users = {SUPERUSER}\n\
             stats_users = {SUPERUSER}\n\
             ignore_startup_parameters = extra_float_digits\n\
             pidfile = {dir}/pgbouncer.pid\n\
             logfile = {dir}/pgbouncer.log\n\
             log_connections = 0\n\
             log_disconnections = 0\n\
             server_login_retry = 0.1\n\
             %include {dir}/{pool}\n",
            run = run_dir.display(),
            pg_port = spec.port,
            host = self.host,
            pooler_port = spec.pooler_port,
            dir = bouncer_dir.display(),
            hba = pgbouncer::HBA,
            userlist = pgbouncer::USERLIST,
            pool = size::POOL_INI,
        );
        let mut hba = format!(
            "# Written by the wake service (local driver).\n\
             local all all trust\n\
             host all {SUPERUSER} 0.0.0.0/0 reject\n\
             host all {SUPERUSER} ::/0 reject\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host all all ::1/128 scram-sha-256\n",
        );
        if !self.loopback_only() {
            hba.push_str("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n");
        }
        vec![(pgbouncer::INI, ini), (pgbouncer::HBA, hba)]
    }

    fn endpoint_settings(&self, spec: &ComputeSpec) -> StartSettings {
        StartSettings {
            listen: self.host.clone(),
            port: spec.port,
            fast: self.fast,
        }
    }

    /// Stops PgBouncer and Postgres in `dir` as `identity` (only processes of that user are
    /// signalled), then kills what is left: every process of the user when `whole_user` (a
    /// compute's own user), else only Postgres, PgBouncer and initdb processes under `dir`
    /// (a shared user, or the old owner of an earlier version's directory).
    async fn halt(
        &self,
        identity: &Identity,
        dir: &Dir,
        whole_user: bool,
    ) -> Result<(), ComputeError> {
        if let Err(e) = self.bouncer(identity, dir).stop().await {
            tracing::warn!(error = %e, dir = %dir.path().display(), "stopping PgBouncer failed");
        }
        let cluster = self.cluster(identity, dir, PGDATA, &self.endpoint_hba);
        if let Err(e) = cluster.stop(StopMode::Fast).await {
            tracing::warn!(error = %e, dir = %dir.path().display(), "stopping Postgres failed");
        }
        if whole_user {
            process::kill_all_of(identity.uid, &[], SWEEP_TIMEOUT).await?;
            Ok(())
        } else {
            process::kill_processes_under(dir.path(), identity.uid).await
        }
    }

    /// Stops everything that runs for the directory `dir`: processes of its owner when that is
    /// not `identity` (an earlier version's shared user), and those of `identity`.
    async fn halt_all(&self, dir: &Dir, identity: Option<&Identity>) -> Result<(), ComputeError> {
        let (owner, group) = dir.owner();
        let me = nix::unistd::geteuid().as_raw();
        if owner != me && identity.is_none_or(|identity| identity.uid != owner) {
            let old = Identity::for_uid(owner, group);
            self.halt(
                &old,
                &dir.try_clone().map_err(io_error(dir))?.trusting(owner),
                false,
            )
            .await?;
        }
        if let Some(identity) = identity {
            let whole_user = self.per_endpoint() && identity.uid != me;
            let dir = dir
                .try_clone()
                .map_err(io_error(dir))?
                .trusting(identity.uid);
            self.halt(identity, &dir, whole_user).await?;
        }
        Ok(())
    }

    /// Opens the directory at `path` (a compute's or the state store's) for `identity`. A
    /// directory owned by another user (an earlier version ran every compute as one shared
    /// user) is taken over: that user's processes there are stopped and the tree is chowned
    /// to `identity` without following symlinks. None when missing.
    pub(crate) async fn take(
        &self,
        path: &Path,
        identity: &Identity,
    ) -> Result<Option<Dir>, ComputeError> {
        let Some(dir) = Dir::open(path)
            .map_err(|e| ComputeError::io(format!("opening {}", path.display()), e))?
        else {
            return Ok(None);
        };
        let (owner, group) = dir.owner();
        let me = nix::unistd::geteuid().as_raw();
        if owner == identity.uid || owner == me {
            return Ok(Some(dir.trusting(identity.uid)));
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(ComputeError::Process(format!(
                "{} is owned by uid {owner}, and this wake service (uid {me}) cannot take it over",
                path.display()
            )));
        }
        tracing::warn!(
            dir = %path.display(),
            old_uid = owner,
            user = %identity.name,
            "directory owned by another user (an earlier version ran every compute as one shared \
             user): stopping its processes and handing it to its own user"
        );
        let old = Identity::for_uid(owner, group);
        let old_dir = dir.trusting(owner);
        self.halt(&old, &old_dir, false).await?;
        let to = (identity.uid, identity.gid);
        let display = path.display().to_string();
        let skipped = tokio::task::spawn_blocking(move || old_dir.chown_tree(owner, to))
            .await
            .map_err(|e| ComputeError::Process(format!("chowning {display}: {e}")))?
            .map_err(|e| ComputeError::io(format!("chowning {}", path.display()), e))?;
        if skipped > 0 {
            tracing::warn!(
                dir = %path.display(),
                skipped,
                "files with several hard links were not chowned (a link could lead outside)"
            );
        }
        let dir = Dir::open(path)
            .map_err(|e| ComputeError::io(format!("opening {}", path.display()), e))?
            .ok_or_else(|| ComputeError::Process(format!("{} vanished", path.display())))?;
        Ok(Some(dir.trusting(identity.uid)))
    }

    /// initdb into `dir/pgdata.init` (a leftover one is wiped first), configure it, then
    /// rename it to `dir/pgdata`: a `pgdata` exists only once complete, and is never wiped by a
    /// later initdb.
    pub(crate) async fn init_cluster(
        &self,
        identity: &Identity,
        dir: &Dir,
        hba: &str,
        settings: &StartSettings,
    ) -> Result<(), ComputeError> {
        dir.ensure_subdir(RUN, 0o700, identity.owner())
            .map_err(io_error(dir))?;
        check_socket_path(&dir.join(RUN))?;
        if dir.exists(PGDATA_INIT) {
            let leftover = dir.join(PGDATA_INIT);
            tracing::warn!(dir = %leftover.display(), "wiping an unfinished initdb");
            process::kill_processes_under(&leftover, identity.uid).await?;
            process::remove_tree(leftover).await?;
        }
        let cluster = self.cluster(identity, dir, PGDATA_INIT, hba);
        cluster.initdb(self.locale, self.fast).await?;
        cluster.spread_databases().await;
        cluster.configure(settings)?;
        dir.rename(PGDATA_INIT, PGDATA).map_err(|e| {
            ComputeError::io(
                format!("renaming {} to {PGDATA}", dir.join(PGDATA_INIT).display()),
                e,
            )
        })
    }
}

/// An io error about `dir`, as a [`ComputeError`].
pub(crate) fn io_error(dir: &Dir) -> impl Fn(std::io::Error) -> ComputeError + '_ {
    move |e| ComputeError::io(format!("in {}", dir.path().display()), e)
}

/// Creates `dir` (and its parents) when missing and returns its canonical path, checked to be
/// writable into config files.
pub(crate) fn canonical_dir(dir: &Path, what: &str) -> Result<PathBuf, ComputeError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ComputeError::io(format!("creating {what} {}", dir.display()), e))?;
    let dir = std::fs::canonicalize(dir)
        .map_err(|e| ComputeError::io(format!("resolving {what} {}", dir.display()), e))?;
    let text = dir
        .to_str()
        .ok_or_else(|| ComputeError::Process(format!("{what} {} is not UTF-8", dir.display())))?;
    if !safe_config_value(text) {
        return Err(ComputeError::Process(format!(
            "{what} {text} must not contain spaces, quotes, backslashes, commas, '#', ';' or '='"
        )));
    }
    Ok(dir)
}

/// PgBouncer's auth file for `roles`: `"name" "verifier"` lines (a `"` in a name doubled),
/// plus `cloud_admin` with an empty password for the admin console (trusted on the private
/// socket only; SCRAM for it can never succeed). Refuses names and verifiers PgBouncer would
/// misread, `cloud_admin` itself and duplicates.
fn pooler_userlist(roles: &[PoolerRole]) -> Result<String, ComputeError> {
    let mut text = format!(
        "; Written by the wake service (local driver): the endpoint's roles.\n\"{SUPERUSER}\" \"\"\n"
    );
    let mut seen = std::collections::HashSet::new();
    for role in roles {
        let name_ok = !role.name.is_empty()
            && role.name.len() <= 63
            && !role.name.chars().any(char::is_control)
            && role.name != SUPERUSER;
        if !name_ok {
            return Err(ComputeError::Process(format!(
                "role name {:?} cannot be given to PgBouncer",
                role.name
            )));
        }
        let secret_ok = role.secret.starts_with("SCRAM-SHA-256$")
            && role.secret.len() <= 1024
            && role
                .secret
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"');
        if !secret_ok {
            // Never the secret itself in the message.
            return Err(ComputeError::Process(format!(
                "the secret of role {:?} is not a SCRAM-SHA-256 verifier",
                role.name
            )));
        }
        if !seen.insert(role.name.as_str()) {
            return Err(ComputeError::Process(format!(
                "role {:?} is listed twice",
                role.name
            )));
        }
        text.push_str(&format!(
            "\"{}\" \"{}\"\n",
            role.name.replace('"', "\"\""),
            role.secret
        ));
    }
    Ok(text)
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

/// Endpoint ids become directory names under the compute root. The API's one rule for an
/// endpoint id ([`names::valid_endpoint_id`]: a lower-case DNS label) admits no `.` and no
/// `/`, so such a name is a single, non-hidden path component by construction: never `.`,
/// `..`, `.quarantine` or a path elsewhere.
fn valid_endpoint(endpoint: &str) -> bool {
    let valid = names::valid_endpoint_id(endpoint);
    debug_assert!(
        !valid || !endpoint.contains(['.', '/', '\0']),
        "an endpoint id is one plain path component"
    );
    valid
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
    /// Where the computes' CPU and memory limits go (or why they cannot).
    cgroups: Cgroups,
    /// The size each running compute has, as applied ([`size`]).
    sizes: Mutex<HashMap<String, Running>>,
    /// The largest memory limit a compute gets ([`size::memory_ceiling`]).
    memory_ceiling: u64,
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
    /// Stops whatever runs for `endpoint` and deletes its data and OS user. Idempotent.
    pub async fn destroy_endpoint(&self, endpoint: &str) -> Result<(), ComputeError> {
        let path = self.endpoint_dir(endpoint)?;
        // The lock entry stays: a waiter may hold it, and a fresh one would not exclude it.
        let _guard = self.lock(endpoint).await;
        if let Some(dir) = self.halt_endpoint(endpoint, &path).await? {
            tracing::info!(endpoint, dir = %path.display(), "destroying compute");
            drop(dir);
            process::remove_tree(path).await?;
        }
        self.forget_size(endpoint);
        self.cgroups.remove(endpoint);
        self.setup.remove_identity(endpoint).await
    }

    /// Checks the binaries and the OS user(s), creates `root` and makes it reachable for the
    /// computes' users (and, with one user per endpoint, closed to listing: 0711).
    pub fn new(config: LocalConfig) -> Result<LocalDriver, ComputeError> {
        let setup = Setup::new(&config)?;
        let root = setup.root.clone();
        setup.make_traversable(&root)?;
        if setup.per_endpoint() {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&root)
                .map_err(|e| ComputeError::io(format!("inspecting {}", root.display()), e))?
                .permissions()
                .mode();
            if mode & 0o066 != 0 {
                std::fs::set_permissions(&root, std::fs::Permissions::from_mode(mode & !0o066))
                    .map_err(|e| ComputeError::io(format!("chmod {}", root.display()), e))?;
            }
        }
        // Each endpoint's sockets are in root/<endpoint>/run: long ids may still not fit,
        // which create reports; refuse a root where even a short one cannot.
        check_socket_path(&root.join("x".repeat(8)).join(RUN))
            .map_err(|e| ComputeError::Process(format!("compute root too long: {e}")))?;
        match &setup.principals {
            Principals::PerEndpoint { tag } => tracing::info!(
                root = %root.display(),
                os_users = %format!("w{tag}-<endpoint>"),
                pgbouncer = %setup.pgbouncer.display(),
                "local compute driver ready: one OS user per endpoint"
            ),
            Principals::Shared(identity) if config.os_user.is_some() => tracing::warn!(
                root = %root.display(),
                os_user = %identity.name,
                "local compute driver ready: every compute runs as this one OS user \
                 (--compute-os-user), so endpoints are NOT isolated from each other"
            ),
            Principals::Shared(identity) => tracing::warn!(
                root = %root.display(),
                os_user = %identity.name,
                "local compute driver ready: the wake service is not root, so every compute \
                 runs as its own user and endpoints are NOT isolated from each other (run it \
                 as root for one OS user per endpoint)"
            ),
        }
        let cgroups = Cgroups::detect(&users::instance_tag(&root));
        if cgroups.enforced() {
            tracing::info!(limits = %cgroups.describe(), "compute sizes are enforced");
        } else {
            tracing::warn!(
                limits = %cgroups.describe(),
                "compute CPU and memory are NOT limited; Postgres settings and pool sizes still follow each compute's size"
            );
        }
        Ok(LocalDriver {
            setup,
            root,
            locks: Mutex::new(HashMap::new()),
            poolers: Mutex::new(HashMap::new()),
            cgroups,
            sizes: Mutex::new(HashMap::new()),
            memory_ceiling: size::memory_ceiling(),
        })
    }

    /// The absolute root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The OS user `endpoint`'s processes run as (whether or not it exists yet).
    pub fn os_user(&self, endpoint: &str) -> Option<String> {
        match &self.setup.principals {
            Principals::PerEndpoint { tag } => Some(users::endpoint_user(tag, endpoint)),
            Principals::Shared(identity) => Some(identity.name.clone()),
        }
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

    /// The compute root, opened.
    fn root_dir(&self) -> Result<Dir, ComputeError> {
        Dir::open(&self.root)
            .map_err(|e| ComputeError::io(format!("opening {}", self.root.display()), e))?
            .ok_or_else(|| ComputeError::Process(format!("{} is missing", self.root.display())))
    }

    /// The compute of `endpoint` for an operation that may run its processes (lock held): its
    /// user made when missing, a directory of an earlier version taken over. None when it
    /// has no directory.
    async fn prepare(&self, endpoint: &str, path: &Path) -> Result<Option<Compute>, ComputeError> {
        if !path.exists() {
            return Ok(None);
        }
        let identity = self
            .setup
            .identity(endpoint, true)
            .await?
            .ok_or_else(|| ComputeError::Process(format!("no OS user for {endpoint}")))?;
        Ok(self
            .setup
            .take(path, &identity)
            .await?
            .map(|dir| Compute { dir, identity }))
    }

    /// The compute of `endpoint` for a look (no lock, no change): None when it has no
    /// directory or user yet, or its directory is still another user's (taken over by the
    /// next locked operation).
    fn peek(&self, endpoint: &str, path: &Path) -> Result<Option<Compute>, ComputeError> {
        let Some(identity) = self.setup.known_identity(endpoint)? else {
            return Ok(None);
        };
        let Some(dir) = Dir::open(path)
            .map_err(|e| ComputeError::io(format!("opening {}", path.display()), e))?
        else {
            return Ok(None);
        };
        let (owner, _) = dir.owner();
        if owner != identity.uid && owner != nix::unistd::geteuid().as_raw() {
            return Ok(None);
        }
        Ok(Some(Compute {
            dir: dir.trusting(identity.uid),
            identity,
        }))
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

    fn check_created(&self, spec: &ComputeSpec, compute: &Compute) -> Result<(), ComputeError> {
        if compute.dir.exists(MARKER) {
            Ok(())
        } else {
            Err(ComputeError::Process(format!(
                "compute {} has not been created",
                spec.endpoint
            )))
        }
    }

    /// After Postgres stopped: kills every other process of the compute's own user but
    /// `spare` (its PgBouncer, when it stays): a shell a tenant daemonized through `COPY … TO
    /// PROGRAM`, orphaned backends. Only with one user per endpoint (a shared user's
    /// processes are other computes').
    async fn sweep(&self, compute: &Compute, spare: Option<i32>) -> Result<(), ComputeError> {
        if !self.setup.per_endpoint() {
            return Ok(());
        }
        let spare: Vec<i32> = spare.into_iter().collect();
        let killed = process::kill_all_of(compute.identity.uid, &spare, SWEEP_TIMEOUT).await?;
        if killed > 0 {
            tracing::warn!(
                user = %compute.identity.name,
                killed,
                "killed processes of the compute's user that outlived its Postgres"
            );
        }
        Ok(())
    }

    /// Makes sure the endpoint's PgBouncer runs with the current files on its port (adopts
    /// it, or starts it; see [`Bouncer::start`]). A freshly started one is known unpaused.
    async fn ensure_bouncer(
        &self,
        spec: &ComputeSpec,
        compute: &Compute,
    ) -> Result<i32, ComputeError> {
        let setup = &self.setup;
        let owner = compute.identity.owner();
        // Sockets live in run/; recreate it if someone cleaned it up.
        compute
            .dir
            .ensure_subdir(RUN, 0o700, owner)
            .map_err(io_error(&compute.dir))?;
        let files = compute
            .dir
            .ensure_subdir(pgbouncer::DIR, 0o700, owner)
            .map_err(io_error(&compute.dir))?;
        // A stopped PgBouncer reads the auth file set_pooler_roles last wrote; without one,
        // it starts with none (the next set_pooler_roles fills it in).
        if !files.exists(pgbouncer::USERLIST) {
            files.write(
                pgbouncer::USERLIST,
                pooler_userlist(&[])?.as_bytes(),
                0o600,
                owner,
            )?;
        }
        if !files.exists(size::POOL_INI) {
            let ini = size::pool_ini(&spec.cu.size());
            files.write(size::POOL_INI, ini.as_bytes(), 0o600, owner)?;
        }
        let verified = self
            .poolers()
            .get(&spec.endpoint)
            .filter(|p| p.verified && p.port == spec.pooler_port)
            .map(|p| p.pid);
        let daemon = setup
            .bouncer(&compute.identity, &compute.dir)
            .start(
                &setup.bouncer_files(compute.dir.path(), spec),
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

    fn forget_paused(&self, endpoint: &str) {
        if let Some(pooler) = self.poolers().get_mut(endpoint) {
            pooler.paused = None;
        }
    }

    fn forget_pooler(&self, endpoint: &str) {
        self.poolers().remove(endpoint);
    }

    /// The cached admin-console connection to PgBouncer `pid`, or a new one (cached).
    async fn pooler_admin(
        &self,
        spec: &ComputeSpec,
        compute: &Compute,
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
        let admin = Admin::connect(
            &compute.dir.join(RUN),
            spec.pooler_port,
            compute.identity.uid,
        )
        .await?;
        Self::pooler_entry(&mut self.poolers(), spec, pid).admin = Some(admin.clone());
        Ok(admin)
    }

    /// RESUME PgBouncer `pid` ("not paused" is fine).
    async fn resume(
        &self,
        spec: &ComputeSpec,
        compute: &Compute,
        pid: i32,
    ) -> Result<(), ComputeError> {
        let admin = self.pooler_admin(spec, compute, pid).await?;
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

    /// A new connection to PgBouncer's admin console, made before `deadline`.
    async fn console_until(
        spec: &ComputeSpec,
        compute: &Compute,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Arc<Admin>, ComputeError> {
        let run = compute.dir.join(RUN);
        let connect = Admin::connect(&run, spec.pooler_port, compute.identity.uid);
        match tokio::time::timeout_at(deadline.into(), connect).await {
            Ok(connected) => connected,
            Err(_elapsed) => Err(ComputeError::Process(format!(
                "PgBouncer's admin console did not answer within {timeout:?}"
            ))),
        }
    }

    /// Polls PgBouncer's counts every `every` until `done` holds (true) or `deadline` passes
    /// (false).
    async fn wait_counts(
        &self,
        spec: &ComputeSpec,
        compute: &Compute,
        pid: i32,
        deadline: Instant,
        every: Duration,
        done: impl Fn(&Counts) -> bool,
    ) -> Result<bool, ComputeError> {
        loop {
            let admin = self.pooler_admin(spec, compute, pid).await?;
            if done(&admin.counts().await?) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Stops whatever runs for `endpoint` (lock held): its PgBouncer and Postgres, then every
    /// process of its own user (or, with a shared user, those under its directory; processes
    /// of an earlier version's owner too). Returns the directory, None when there is none.
    async fn halt_endpoint(
        &self,
        endpoint: &str,
        path: &Path,
    ) -> Result<Option<Dir>, ComputeError> {
        self.forget_pooler(endpoint);
        let identity = self.setup.identity(endpoint, false).await?;
        let dir = Dir::open(path)
            .map_err(|e| ComputeError::io(format!("opening {}", path.display()), e))?;
        match &dir {
            Some(dir) => self.setup.halt_all(dir, identity.as_ref()).await?,
            None => {
                if let (Some(identity), true) = (&identity, self.setup.per_endpoint()) {
                    process::kill_all_of(identity.uid, &[], SWEEP_TIMEOUT).await?;
                }
            }
        }
        Ok(dir)
    }

    /// The command the driver runs to start `endpoint`'s postmaster: `postgres -D
    /// root/<endpoint>/pgdata` as the endpoint's OS user, in its own process group, with the
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
        let path = self.endpoint_dir(endpoint)?;
        let compute = self
            .peek(endpoint, &path)?
            .filter(|compute| compute.dir.exists(MARKER))
            .ok_or_else(|| {
                ComputeError::Process(format!("compute {endpoint} has not been created"))
            })?;
        let mut cmd = self.setup.compute_cluster(&compute).postmaster_command();
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Ok(cmd)
    }
}

#[async_trait]
impl ComputeDriver for LocalDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn create(&self, spec: &ComputeSpec) -> Result<(), ComputeError> {
        let path = self.check_spec(spec)?;
        check_socket_path(&path.join(RUN))?;
        let _guard = self.lock(&spec.endpoint).await;
        let identity = self
            .setup
            .identity(&spec.endpoint, true)
            .await?
            .ok_or_else(|| ComputeError::Process(format!("no OS user for {}", spec.endpoint)))?;
        if let Some(existing) = Dir::open(&path)
            .map_err(|e| ComputeError::io(format!("opening {}", path.display()), e))?
        {
            if existing.exists(MARKER) {
                tracing::debug!(endpoint = %spec.endpoint, "compute already created");
                // Data of an earlier version is handed to the endpoint's own user now.
                self.setup.take(&path, &identity).await?;
                return Ok(());
            }
            tracing::warn!(endpoint = %spec.endpoint, dir = %path.display(), "unfinished compute found; wiping it and creating again");
            self.forget_pooler(&spec.endpoint);
            self.setup.halt_all(&existing, Some(&identity)).await?;
            drop(existing);
            process::remove_tree(path.clone()).await?;
        }
        tracing::info!(endpoint = %spec.endpoint, dir = %path.display(), user = %identity.name, "creating compute");
        let owner = identity.owner();
        let dir = self
            .root_dir()?
            .ensure_subdir(&spec.endpoint, 0o700, owner)
            .map_err(|e| ComputeError::io(format!("creating {}", path.display()), e))?
            .trusting(identity.uid);
        let files = dir
            .ensure_subdir(pgbouncer::DIR, 0o700, owner)
            .map_err(io_error(&dir))?;
        let settings = self.setup.endpoint_settings(spec);
        self.setup
            .init_cluster(&identity, &dir, &self.setup.endpoint_hba, &settings)
            .await?;
        for (name, contents) in self.setup.bouncer_files(&path, spec) {
            files.write(name, contents.as_bytes(), 0o600, owner)?;
        }
        files.write(
            pgbouncer::USERLIST,
            pooler_userlist(&[])?.as_bytes(),
            0o600,
            owner,
        )?;
        dir.write(MARKER, b"local driver compute\n", 0o644, None)?;
        tracing::info!(endpoint = %spec.endpoint, "compute created");
        Ok(())
    }

    async fn start(&self, spec: &ComputeSpec) -> Result<Addresses, ComputeError> {
        let began = Instant::now();
        let path = self.check_spec(spec)?;
        let _guard = self.lock(&spec.endpoint).await;
        let compute = self.prepare(&spec.endpoint, &path).await?.ok_or_else(|| {
            ComputeError::Process(format!("compute {} has not been created", spec.endpoint))
        })?;
        self.check_created(spec, &compute)?;
        let setup = &self.setup;
        // Sockets live in run/; recreate it if someone cleaned it up (or replaced it).
        compute
            .dir
            .ensure_subdir(RUN, 0o700, compute.identity.owner())
            .map_err(io_error(&compute.dir))?;
        let (conf_changed, pool_changed) = self.write_size(spec, &compute, true)?;
        let confine = |pid: i32| self.confine(spec, &[pid]);
        let started = setup
            .compute_cluster(&compute)
            .start(&setup.endpoint_settings(spec), &confine)
            .await?;
        let postmaster = started.pid;
        // Whether PgBouncer is paused is not this process's to know: another replica of the
        // wake service may have paused it since. Only one started just now is known unpaused.
        self.forget_paused(&spec.endpoint);
        let bouncer = self.ensure_bouncer(spec, &compute).await?;
        self.settle_size(spec, started, bouncer, conf_changed)
            .await?;
        if pool_changed {
            // An adopted PgBouncer has the old pool sizes (RELOAD is harmless for a fresh one).
            self.pooler_admin(spec, &compute, bouncer)
                .await?
                .reload()
                .await?;
        }
        // Only now that Postgres is ready: a RESUME earlier would let PgBouncer try to log in,
        // fail, and turn clients away for server_login_retry.
        if self.known_paused(spec, bouncer) != Some(false) {
            self.resume(spec, &compute, bouncer).await?;
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
        let path = self.endpoint_dir(&spec.endpoint)?;
        let _guard = self.lock(&spec.endpoint).await;
        let Some(compute) = self.prepare(&spec.endpoint, &path).await? else {
            return Ok(());
        };
        self.setup.compute_cluster(&compute).stop(mode).await?;
        self.forget_size(&spec.endpoint);
        let bouncer = self.setup.bouncer(&compute.identity, &compute.dir).pid();
        self.sweep(&compute, bouncer).await
    }

    async fn stop(&self, spec: &ComputeSpec) -> Result<(), ComputeError> {
        let path = self.endpoint_dir(&spec.endpoint)?;
        let _guard = self.lock(&spec.endpoint).await;
        let Some(compute) = self.prepare(&spec.endpoint, &path).await? else {
            return Ok(());
        };
        self.forget_pooler(&spec.endpoint);
        self.forget_size(&spec.endpoint);
        self.setup
            .bouncer(&compute.identity, &compute.dir)
            .stop()
            .await?;
        self.setup
            .compute_cluster(&compute)
            .stop(StopMode::Fast)
            .await?;
        self.sweep(&compute, None).await?;
        tracing::info!(endpoint = %spec.endpoint, "compute stopped");
        Ok(())
    }

    async fn pause_pooler(
        &self,
        spec: &ComputeSpec,
        timeout: Duration,
    ) -> Result<bool, ComputeError> {
        let path = self.check_spec(spec)?;
        let _guard = self.lock(&spec.endpoint).await;
        let compute = self.prepare(&spec.endpoint, &path).await?.ok_or_else(|| {
            ComputeError::Process(format!("compute {} has not been created", spec.endpoint))
        })?;
        self.check_created(spec, &compute)?;
        let pid = self.ensure_bouncer(spec, &compute).await?;
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
            .wait_counts(spec, &compute, pid, deadline, millis, no_login)
            .await?
        {
            return Ok(false);
        }
        // PAUSE on a connection of its own: it answers only once every server connection is
        // closed, and a connection waiting for that cannot be used for anything else.
        let pauser = Self::console_until(spec, &compute, deadline, timeout).await?;
        let paused = match tokio::time::timeout_at(deadline.into(), pauser.pause()).await {
            Ok(Ok(AdminReply::Done)) => true,
            Ok(Ok(AdminReply::AlreadyPaused)) => {
                // Sent by an earlier wake service, it may still be waiting for server
                // connections: paused once PgBouncer holds none.
                let no_server = |c: &Counts| c.servers == 0;
                let millis = Duration::from_millis(5);
                self.wait_counts(spec, &compute, pid, deadline, millis, no_server)
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
        self.resume(spec, &compute, pid).await?;
        drop(pauser);
        tracing::info!(
            endpoint = %spec.endpoint,
            timeout = ?timeout,
            "PgBouncer could not pause in time (a server connection stayed busy); resumed"
        );
        Ok(false)
    }

    async fn resume_pooler(&self, spec: &ComputeSpec) -> Result<(), ComputeError> {
        let path = self.check_spec(spec)?;
        let _guard = self.lock(&spec.endpoint).await;
        let Some(compute) = self.prepare(&spec.endpoint, &path).await? else {
            return Ok(());
        };
        match self.setup.bouncer(&compute.identity, &compute.dir).pid() {
            Some(pid) => self.resume(spec, &compute, pid).await,
            None => Ok(()),
        }
    }

    async fn pooler_stats(&self, spec: &ComputeSpec) -> Result<Option<PoolerStats>, ComputeError> {
        let path = self.endpoint_dir(&spec.endpoint)?;
        let Some(compute) = self.peek(&spec.endpoint, &path)? else {
            return Ok(None);
        };
        let bouncer = self.setup.bouncer(&compute.identity, &compute.dir);
        let Some(pid) = bouncer.pid() else {
            return Ok(None);
        };
        let stats = async {
            let admin = self.pooler_admin(spec, &compute, pid).await?;
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

    async fn resize(&self, spec: &ComputeSpec) -> Result<ComputeSize, ComputeError> {
        let path = self.check_spec(spec)?;
        let _guard = self.lock(&spec.endpoint).await;
        let compute = self.prepare(&spec.endpoint, &path).await?.ok_or_else(|| {
            ComputeError::Process(format!("compute {} has not been created", spec.endpoint))
        })?;
        self.resize_running(spec, &compute).await
    }

    fn size(&self, spec: &ComputeSpec) -> Option<ComputeSize> {
        self.size_of(spec)
    }

    async fn load(&self, spec: &ComputeSpec) -> Result<ComputeLoad, ComputeError> {
        let mut load = self.usage_of(spec);
        load.pooler = self.pooler_stats(spec).await?;
        Ok(load)
    }

    async fn destroy(&self, spec: &ComputeSpec) -> Result<(), ComputeError> {
        self.destroy_endpoint(&spec.endpoint).await
    }

    async fn health(&self, spec: &ComputeSpec) -> Result<Health, ComputeError> {
        let path = self.endpoint_dir(&spec.endpoint)?;
        let Some(compute) = self.peek(&spec.endpoint, &path)? else {
            return Ok(Health::Stopped);
        };
        let postmaster = match self.setup.compute_cluster(&compute).pid_file() {
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
            && self
                .setup
                .bouncer(&compute.identity, &compute.dir)
                .listening(spec.pooler_port)
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
        let path = self.endpoint_dir(&spec.endpoint)?;
        let compute = self.peek(&spec.endpoint, &path)?.ok_or_else(|| {
            ComputeError::Process(format!("compute {} is not running", spec.endpoint))
        })?;
        let cluster = self.setup.compute_cluster(&compute);
        let mut config = cluster.admin_config(spec.port);
        config.dbname(database).options("-c search_path=pg_catalog");
        postgres::connect(&config, &cluster.run_dir, spec.port, compute.identity.uid).await
    }

    async fn set_pooler_roles(
        &self,
        spec: &ComputeSpec,
        roles: &[PoolerRole],
    ) -> Result<(), ComputeError> {
        let path = self.check_spec(spec)?;
        let userlist = pooler_userlist(roles)?;
        let _guard = self.lock(&spec.endpoint).await;
        let Some(compute) = self.prepare(&spec.endpoint, &path).await? else {
            tracing::debug!(endpoint = %spec.endpoint, "no compute yet: no pooler roles to set");
            return Ok(());
        };
        if !compute.dir.exists(MARKER) {
            // An unfinished create is redone from scratch, auth file included.
            tracing::debug!(endpoint = %spec.endpoint, "compute not created yet: no pooler roles to set");
            return Ok(());
        }
        let owner = compute.identity.owner();
        let files = compute
            .dir
            .ensure_subdir(pgbouncer::DIR, 0o700, owner)
            .map_err(io_error(&compute.dir))?;
        let changed = !files.file_is(pgbouncer::USERLIST, userlist.as_bytes());
        if changed {
            files.write(pgbouncer::USERLIST, userlist.as_bytes(), 0o600, owner)?;
        }
        // RELOAD even when the file was already current: an earlier call may have written it
        // and failed before its RELOAD.
        if let Some(pid) = self.setup.bouncer(&compute.identity, &compute.dir).pid() {
            let admin = self.pooler_admin(spec, &compute, pid).await?;
            admin.reload().await?;
        }
        tracing::info!(endpoint = %spec.endpoint, roles = roles.len(), changed, "pooler roles set");
        Ok(())
    }

    async fn quarantine(&self, endpoint: &str) -> Result<String, ComputeError> {
        let path = self.endpoint_dir(endpoint)?;
        let _guard = self.lock(endpoint).await;
        let Some(dir) = self.halt_endpoint(endpoint, &path).await? else {
            return Err(ComputeError::Process(format!(
                "compute {endpoint} has no directory to quarantine"
            )));
        };
        drop(dir);
        let root = self.root_dir()?;
        let quarantine = root
            .ensure_subdir(QUARANTINE, 0o700, None)
            .map_err(io_error(&root))?;
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut name = format!("{endpoint}-{seconds}");
        let mut n = 1;
        while quarantine.exists(&name) {
            n += 1;
            name = format!("{endpoint}-{seconds}-{n}");
        }
        root.rename_into(endpoint, &quarantine, &name)
            .map_err(|e| {
                ComputeError::io(
                    format!(
                        "moving {} to {}",
                        path.display(),
                        quarantine.join(&name).display()
                    ),
                    e,
                )
            })?;
        // Its files keep their (now unnamed) owner; nothing can reach them in .quarantine.
        self.setup.remove_identity(endpoint).await?;
        let moved = quarantine.join(&name);
        tracing::warn!(endpoint, moved_to = %moved.display(), "compute quarantined");
        Ok(moved.display().to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names() {
        for ok in ["ep-cool-darkness-123", "a", "db-1"] {
            assert!(valid_endpoint(ok), "{ok}");
        }
        // Directory names derived from endpoint ids are safe by construction.
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            ".quarantine",
            "a/b",
            "/etc",
            "../x",
            "x.y",
            "db_1",
            "a b",
            "é",
            "a\0b",
            &"x".repeat(64),
        ] {
            assert!(!valid_endpoint(bad), "{bad:?}");
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
    fn userlists() {
        let role = |name: &str, secret: &str| PoolerRole {
            name: name.into(),
            secret: secret.into(),
        };
        let verifier = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy";
        let text = pooler_userlist(&[role("app", verifier), role("we\"ird", verifier)])
            .expect("valid roles");
        assert_eq!(
            text.lines().skip(1).collect::<Vec<_>>(),
            vec![
                "\"cloud_admin\" \"\"".to_string(),
                format!("\"app\" \"{verifier}\""),
                format!("\"we\"\"ird\" \"{verifier}\""),
            ]
        );
        assert_eq!(
            pooler_userlist(&[]).expect("no roles").lines().count(),
            2,
            "the admin console's entry only"
        );
        for bad in [
            vec![role("cloud_admin", verifier)],
            vec![role("", verifier)],
            vec![role("a\nb", verifier)],
            vec![role(&"x".repeat(64), verifier)],
            vec![role("app", "md5abcdef")],
            vec![role("app", "SCRAM-SHA-256$4096:x\" \"y")],
            vec![role("app", "SCRAM-SHA-256$4096:x y")],
            vec![role("app", verifier), role("app", verifier)],
        ] {
            let err = pooler_userlist(&bad).expect_err("refused");
            assert!(!err.to_string().contains("4096"), "no secret in {err}");
        }
    }

    #[test]
    fn socket_path_limit() {
        assert!(check_socket_path(Path::new("/tmp/x/run")).is_ok());
        assert!(check_socket_path(&Path::new("/tmp").join("y".repeat(100))).is_err());
    }
}
