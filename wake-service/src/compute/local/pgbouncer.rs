//! One PgBouncer daemon (`pgbouncer -d`) running as the compute's user, recognised again
//! through its pidfile, and its admin console (`PAUSE`, `RESUME`, `RELOAD`, `SHOW
//! POOLS`/`STATS`) over the private unix socket, peer-checked.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio_postgres::{SimpleQueryMessage, SimpleQueryRow};

use super::files::{Dir, Kind};
use super::postgres::{self, SUPERUSER};
use super::process::{self, Identity};
use crate::compute::ComputeError;

/// How long PgBouncer may take to come up.
const START_SECONDS: u64 = 30;
/// How long SIGTERM may take before SIGKILL.
const STOP_SECONDS: u64 = 10;
/// How often a starting PgBouncer's log and sockets are looked at.
const START_POLL: Duration = Duration::from_millis(5);
/// The admin console's database name.
const ADMIN_DB: &str = "pgbouncer";
/// How long the admin console may take to accept a connection or answer a command (PAUSE
/// excepted: its caller bounds it).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The directory of PgBouncer's files in the compute's directory, and their names.
pub(crate) const DIR: &str = "pgbouncer";
pub(crate) const INI: &str = "pgbouncer.ini";
pub(crate) const HBA: &str = "hba.conf";
pub(crate) const USERLIST: &str = "userlist.txt";
const PIDFILE: &str = "pgbouncer.pid";
const LOG: &str = "pgbouncer.log";

/// One compute's PgBouncer.
pub(crate) struct Bouncer<'a> {
    pub identity: &'a Identity,
    pub program: &'a Path,
    /// The compute's directory, checked; PgBouncer's files are in its [`DIR`].
    pub dir: &'a Dir,
    /// The ini's path, which PgBouncer is given (it resolves it as the compute's user).
    pub ini: PathBuf,
}

/// A running PgBouncer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Daemon {
    pub pid: i32,
    /// Started just now (so certainly not paused), not adopted.
    pub fresh: bool,
}

pub(crate) enum PidFile {
    NotRunning,
    /// A live PgBouncer of the compute's user started with our ini.
    Running(i32),
    /// The pidfile names a live process that is not our PgBouncer (pid reuse after a crash,
    /// or a pid the compute's user wrote there): never signalled. PgBouncer would refuse to
    /// start while the file exists.
    Stale,
    /// Alive, but its command line cannot be read (another user's process under a
    /// restrictive /proc): nothing is safe to do.
    Unknown(i32),
}

impl Bouncer<'_> {
    /// PgBouncer's directory, checked.
    fn files(&self) -> Result<Option<Dir>, ComputeError> {
        self.dir
            .subdir(DIR)
            .map_err(|e| ComputeError::io(format!("opening {}", self.dir.join(DIR).display()), e))
    }

    /// Our PgBouncer: the one its pidfile names, or — when that file names anything else
    /// (the compute's user can rewrite it) — a live `pgbouncer … <our ini>` of the compute's
    /// user found in `/proc`, so that a tampered pidfile never makes the driver start a second
    /// PgBouncer next to the first. A missing pidfile means none runs (PgBouncer writes it
    /// once it has forked and removes it when it exits).
    pub fn pid_file(&self) -> PidFile {
        match self.named_by_pid_file() {
            PidFile::Stale => match self.find_running() {
                Some(pid) => {
                    tracing::warn!(pid, ini = %self.ini.display(), "PgBouncer's pidfile does not name it; found it by its command line");
                    PidFile::Running(pid)
                }
                None => PidFile::Stale,
            },
            other => other,
        }
    }

    /// A live PgBouncer of the compute's user started with our ini, if any.
    fn find_running(&self) -> Option<i32> {
        process::pids_of(self.identity.uid)
            .into_iter()
            .find(|&pid| {
                process::owned_by(pid, self.identity.uid)
                    && process::process_alive(pid)
                    && process::cmdline(pid).is_some_and(|args| self.is_ours(&args))
            })
    }

    fn named_by_pid_file(&self) -> PidFile {
        let Ok(Some(files)) = self.files() else {
            return PidFile::NotRunning;
        };
        let text = match files.read(PIDFILE, 64) {
            Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            Ok(None) => return PidFile::NotRunning,
            // Not a plain file of the compute's user (a symlink, a FIFO): not believed.
            Err(e) => {
                tracing::warn!(error = %e, "ignoring PgBouncer's pidfile");
                return PidFile::Stale;
            }
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            return PidFile::Stale;
        };
        if pid <= 0 || !process::process_alive(pid) {
            return PidFile::Stale;
        }
        if !process::owned_by(pid, self.identity.uid) {
            return PidFile::Stale;
        }
        match process::cmdline(pid) {
            Some(args) if self.is_ours(&args) => PidFile::Running(pid),
            Some(_) => PidFile::Stale,
            None => PidFile::Unknown(pid),
        }
    }

    /// `pgbouncer … <our ini>`.
    fn is_ours(&self, args: &[String]) -> bool {
        args.first()
            .is_some_and(|arg0| process::program_name(arg0) == "pgbouncer")
            && args.iter().any(|arg| Path::new(arg) == self.ini)
    }

    fn remove_pidfile(&self) -> Result<(), ComputeError> {
        let Some(files) = self.files()? else {
            return Ok(());
        };
        files
            .unlink(PIDFILE)
            .map_err(|e| ComputeError::io(format!("removing {}", files.join(PIDFILE).display()), e))
    }

    /// Starts PgBouncer with `files` (name in [`DIR`], contents: the ini and hba.conf) unless
    /// one already runs with exactly these files and answers on `host:port`; one with other
    /// files is restarted. These files are only rewritten while no PgBouncer runs, so "files
    /// on disk equal" means "the running daemon loaded them". The auth file is not among
    /// them: it changes at runtime (RELOAD). `verified`: a pid already seen listening on
    /// `port` (by this wake service; PgBouncer keeps its listening sockets for life), which
    /// spares reading `/proc/net/tcp` and a TCP probe on the resume path.
    pub async fn start(
        &self,
        files: &[(&str, String)],
        host: &str,
        port: u16,
        verified: Option<i32>,
    ) -> Result<Daemon, ComputeError> {
        let dir = self
            .dir
            .ensure_subdir(DIR, 0o700, self.identity.owner())
            .map_err(|e| {
                ComputeError::io(format!("opening {}", self.dir.join(DIR).display()), e)
            })?;
        if let Some(daemon) = self.adopt(&dir, files, host, port, verified).await? {
            return Ok(daemon);
        }
        for (name, contents) in files {
            if !dir.file_is(name, contents.as_bytes()) {
                dir.write(name, contents.as_bytes(), 0o600, self.identity.owner())?;
            }
        }
        let log_offset = self.spawn(&dir, port).await?;
        self.wait_listening(&dir, port, log_offset).await
    }

    /// The running PgBouncer when it runs with exactly `files` and answers on `host:port`;
    /// None once nothing runs (one with other settings stopped, a stale pidfile removed).
    async fn adopt(
        &self,
        dir: &Dir,
        files: &[(&str, String)],
        host: &str,
        port: u16,
        verified: Option<i32>,
    ) -> Result<Option<Daemon>, ComputeError> {
        let current = files
            .iter()
            .all(|(name, contents)| dir.file_is(name, contents.as_bytes()));
        match self.pid_file() {
            PidFile::Running(pid) => {
                if current
                    && (verified == Some(pid)
                        || (process::listens_on(pid, port)
                            && process::tcp_accepts(host, port, Duration::from_secs(2)).await))
                {
                    tracing::debug!(pid, port, "adopted running PgBouncer");
                    return Ok(Some(Daemon { pid, fresh: false }));
                }
                tracing::info!(
                    pid,
                    port,
                    "PgBouncer runs with other settings or does not answer; restarting it"
                );
                self.stop().await?;
            }
            PidFile::Stale => self.remove_pidfile()?,
            PidFile::Unknown(pid) => return Err(self.unknown(pid)),
            PidFile::NotRunning => {}
        }
        Ok(None)
    }

    /// Runs `pgbouncer -d` (which forks and returns); the log's length before it, where its
    /// new lines start.
    async fn spawn(&self, dir: &Dir, port: u16) -> Result<u64, ComputeError> {
        // PgBouncer opens its log by path as the compute's user: a FIFO there would hang it.
        dir.clear_unless_plain_file(LOG)
            .map_err(|e| ComputeError::io(format!("checking {}", dir.join(LOG).display()), e))?;
        dir.rotate_log(LOG)?;
        let log_offset = dir.len(LOG);
        // PgBouncer does not raise its file limit itself; lift the soft limit to the hard one
        // so max_client_conn is reachable. `exec` keeps the daemon's command line
        // `pgbouncer -d <ini>`, which is how it is recognised later.
        let mut cmd = self.identity.command("/bin/sh");
        cmd.arg("-c")
            .arg(r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" -d "$1""#)
            .arg(self.program)
            .arg(&self.ini);
        tracing::info!(ini = %self.ini.display(), port, "starting PgBouncer");
        let output = process::run(cmd, Duration::from_secs(START_SECONDS), "pgbouncer -d").await?;
        if !output.status.success() {
            return Err(dir.error_with_log(
                format!(
                    "pgbouncer failed to start ({}): {}",
                    output.status,
                    process::output_text(&output)
                ),
                LOG,
            ));
        }
        Ok(log_offset)
    }

    /// `-d` forks before it binds its ports, and a TCP port in use is only a WARNING while the
    /// unix socket works: both show only in the log. So: a FATAL or "cannot listen on" in the
    /// new log lines fails the start (and stops the daemon); otherwise wait until the daemon
    /// owns a listening socket on `port` and its unix socket exists.
    async fn wait_listening(
        &self,
        dir: &Dir,
        port: u16,
        log_offset: u64,
    ) -> Result<Daemon, ComputeError> {
        let socket = format!(".s.PGSQL.{port}");
        let deadline = Instant::now() + Duration::from_secs(START_SECONDS);
        loop {
            let fresh = dir.read_from(LOG, log_offset, 1024 * 1024);
            if let Some(line) = fresh
                .lines()
                .find(|line| line.contains(" FATAL ") || line.contains("cannot listen on"))
            {
                return Err(self.failed_start(line.trim()).await);
            }
            // It binds TCP first, then the unix socket (the admin console's way in).
            if let PidFile::Running(pid) = self.pid_file() {
                let has_socket = self
                    .dir
                    .subdir("run")
                    .ok()
                    .flatten()
                    .is_some_and(|run| run.kind(&socket) == Some(Kind::Socket));
                if process::listens_on(pid, port) && has_socket {
                    return Ok(Daemon { pid, fresh: true });
                }
            }
            if Instant::now() >= deadline {
                return Err(dir.error_with_log(
                    format!("pgbouncer did not accept connections on port {port} within {START_SECONDS} s"),
                    LOG,
                ));
            }
            tokio::time::sleep(START_POLL).await;
        }
    }

    /// Stops a PgBouncer whose log says it failed (`line`), and the error saying so.
    async fn failed_start(&self, line: &str) -> ComputeError {
        // The daemon may not have written its pidfile yet: its pid is in the line
        // (`… UTC [1234] WARNING …`).
        let logged_pid = line
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
            .filter(|&pid| process::owned_by(pid, self.identity.uid))
            .filter(|&pid| process::cmdline(pid).is_some_and(|args| self.is_ours(&args)));
        let stopped = match logged_pid {
            Some(pid) => match self.terminate(pid).await {
                Ok(()) => self.stop().await,
                Err(e) => Err(e),
            },
            None => self.stop().await,
        };
        if let Err(e) = stopped {
            tracing::warn!(error = %e, "stopping a PgBouncer that failed to start");
        }
        ComputeError::Process(format!("pgbouncer failed to start: {line}"))
    }

    /// SIGTERM (PgBouncer ≤ 1.22: immediate shutdown; 1.23+: waits for clients, hence the
    /// SIGKILL after a bound), then removes a leftover pidfile. Nothing to do when not running.
    pub async fn stop(&self) -> Result<(), ComputeError> {
        let pid = match self.pid_file() {
            PidFile::Running(pid) => pid,
            PidFile::Stale => return self.remove_pidfile(),
            PidFile::Unknown(pid) => return Err(self.unknown(pid)),
            PidFile::NotRunning => return Ok(()),
        };
        self.terminate(pid).await?;
        self.remove_pidfile()
    }

    async fn terminate(&self, pid: i32) -> Result<(), ComputeError> {
        let uid = self.identity.uid;
        tracing::info!(pid, ini = %self.ini.display(), "stopping PgBouncer");
        process::signal_owned(pid, uid, Signal::SIGTERM);
        if !process::wait_exit(pid, Duration::from_secs(STOP_SECONDS)).await {
            tracing::warn!(pid, "PgBouncer ignored SIGTERM; killing it");
            process::signal_owned(pid, uid, Signal::SIGKILL);
            if !process::wait_exit(pid, Duration::from_secs(STOP_SECONDS)).await {
                return Err(ComputeError::Process(format!(
                    "PgBouncer {pid} ({}) would not stop",
                    self.ini.display()
                )));
            }
        }
        Ok(())
    }

    /// The pid of our PgBouncer, when it runs.
    pub fn pid(&self) -> Option<i32> {
        match self.pid_file() {
            PidFile::Running(pid) => Some(pid),
            _ => None,
        }
    }

    /// Whether our PgBouncer runs and owns the listening socket on `port`.
    pub fn listening(&self, port: u16) -> bool {
        matches!(self.pid_file(), PidFile::Running(pid) if process::listens_on(pid, port))
    }

    fn unknown(&self, pid: i32) -> ComputeError {
        ComputeError::Process(format!(
            "{} names process {pid}, which cannot be inspected; stop it by hand",
            self.dir.join(DIR).join(PIDFILE).display()
        ))
    }
}

// --- the admin console ---------------------------------------------------------------------

/// A connection to a PgBouncer's admin console. The connection task is aborted when the last
/// handle goes: a client dropped with a request in flight (a `PAUSE` that was given up) would
/// otherwise keep its connection open until PgBouncer answers, which it may never do.
#[derive(Debug)]
pub(crate) struct Admin {
    pub client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Admin {
    /// Connects as `cloud_admin` to database `pgbouncer` over the unix socket in `run_dir`
    /// (PgBouncer's hba trusts local connections; `cloud_admin` is its admin user), once the
    /// process behind the socket is known to run as `uid` (the compute's user).
    pub async fn connect(run_dir: &Path, port: u16, uid: u32) -> Result<Arc<Admin>, ComputeError> {
        let mut config = tokio_postgres::Config::new();
        config
            .user(SUPERUSER)
            .dbname(ADMIN_DB)
            .application_name("wake-service");
        let (client, connection) = bounded(
            "connecting",
            postgres::connect_unix(&config, run_dir, port, uid),
        )
        .await??;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PgBouncer admin connection ended");
            }
        });
        Ok(Arc::new(Admin { client, task }))
    }

    /// `RELOAD`: PgBouncer reads its configuration and auth file again.
    pub async fn reload(&self) -> Result<(), ComputeError> {
        match self.command("RELOAD").await? {
            AdminReply::Done => Ok(()),
            other => Err(ComputeError::Process(format!(
                "unexpected PgBouncer reply to RELOAD: {other:?}"
            ))),
        }
    }

    /// `PAUSE`: returns once every server connection is released and closed. An error of
    /// kind [`AdminReply::AlreadyPaused`] when a PAUSE is in effect (maybe still pending).
    pub async fn pause(&self) -> Result<AdminReply, ComputeError> {
        reply("PAUSE", self.client.simple_query("PAUSE").await)
    }

    /// `RESUME`: waiting clients go on. [`AdminReply::NotPaused`] when there was no PAUSE.
    pub async fn resume(&self) -> Result<AdminReply, ComputeError> {
        self.command("RESUME").await
    }

    /// Whether a global PAUSE is in effect, without changing anything. PgBouncer 1.18 has no
    /// `SHOW STATE`, and `SHOW DATABASES.paused` only reflects `PAUSE <db>`; but `PAUSE
    /// pgbouncer` checks the global pause first ("already suspended/paused") and otherwise
    /// refuses ("cannot pause admin db"). It costs an ERROR line in PgBouncer's log.
    pub async fn probe_paused(&self) -> Result<bool, ComputeError> {
        match self.command(&format!("PAUSE {ADMIN_DB}")).await? {
            AdminReply::AlreadyPaused => Ok(true),
            AdminReply::Refused => Ok(false),
            other => Err(ComputeError::Process(format!(
                "unexpected PgBouncer reply to PAUSE {ADMIN_DB}: {other:?}"
            ))),
        }
    }

    async fn command(&self, command: &str) -> Result<AdminReply, ComputeError> {
        reply(
            command,
            bounded(command, self.client.simple_query(command)).await?,
        )
    }

    /// `SHOW POOLS` and `SHOW STATS` (pipelined), summed over the databases except the admin
    /// console.
    pub async fn counts(&self) -> Result<Counts, ComputeError> {
        let (pools, stats) = bounded("SHOW POOLS, SHOW STATS", async {
            tokio::try_join!(
                self.client.simple_query("SHOW POOLS"),
                self.client.simple_query("SHOW STATS"),
            )
        })
        .await??;
        Ok(Counts::parse(&pools, &stats))
    }
}

/// `what` within [`ADMIN_TIMEOUT`].
async fn bounded<T>(
    what: &str,
    future: impl std::future::Future<Output = T>,
) -> Result<T, ComputeError> {
    tokio::time::timeout(ADMIN_TIMEOUT, future)
        .await
        .map_err(|_| {
            ComputeError::Process(format!(
                "PgBouncer's admin console did not answer {what} within {ADMIN_TIMEOUT:?}"
            ))
        })
}

/// An admin command's outcome: the errors that describe a state are answers.
fn reply<T>(
    command: &str,
    result: Result<T, tokio_postgres::Error>,
) -> Result<AdminReply, ComputeError> {
    let e = match result {
        Ok(_) => return Ok(AdminReply::Done),
        Err(e) => e,
    };
    let Some(db) = e.as_db_error() else {
        return Err(e.into());
    };
    let message = db.message();
    if message.contains("already suspended/paused") {
        Ok(AdminReply::AlreadyPaused)
    } else if message.contains("is not paused") {
        Ok(AdminReply::NotPaused)
    } else if message.contains("cannot pause admin db") {
        Ok(AdminReply::Refused)
    } else {
        Err(ComputeError::Process(format!(
            "PgBouncer refused {command}: {message}"
        )))
    }
}

/// How PgBouncer answered an admin command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AdminReply {
    Done,
    /// "already suspended/paused" (to PAUSE).
    AlreadyPaused,
    /// "pooler is not paused/suspended" (to RESUME).
    NotPaused,
    /// "cannot pause admin db" (to `PAUSE pgbouncer`).
    Refused,
}

/// Sums from `SHOW POOLS` and `SHOW STATS` (the admin console's own rows left out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub clients_waiting: u64,
    pub clients_active: u64,
    pub servers_active: u64,
    /// Server connections still logging in (`sv_login`).
    pub servers_logging_in: u64,
    /// Every server connection, whatever its state (`sv_*`): zero once a PAUSE completed.
    pub servers: u64,
    pub transactions: u64,
}

impl Counts {
    fn parse(pools: &[SimpleQueryMessage], stats: &[SimpleQueryMessage]) -> Counts {
        let mut counts = Counts::default();
        for row in rows(pools) {
            counts.clients_waiting += number(row, "cl_waiting");
            counts.clients_active += number(row, "cl_active");
            counts.servers_active += number(row, "sv_active");
            counts.servers_logging_in += number(row, "sv_login");
            counts.servers += row
                .columns()
                .iter()
                .filter(|column| column.name().starts_with("sv_"))
                .map(|column| number(row, column.name()))
                .sum::<u64>();
        }
        for row in rows(stats) {
            counts.transactions += number(row, "total_xact_count");
        }
        counts
    }
}

/// The rows of a result, without the admin console's own (`database = pgbouncer`).
fn rows(messages: &[SimpleQueryMessage]) -> impl Iterator<Item = &SimpleQueryRow> {
    messages.iter().filter_map(|message| match message {
        SimpleQueryMessage::Row(row) if text(row, "database") != Some(ADMIN_DB) => Some(row),
        _ => None,
    })
}

/// A column's text; None when it is NULL or missing (another PgBouncer version).
fn text<'a>(row: &'a SimpleQueryRow, column: &str) -> Option<&'a str> {
    row.try_get(column).ok().flatten()
}

/// A counter column (0 when missing or not a number).
fn number(row: &SimpleQueryRow, column: &str) -> u64 {
    text(row, column).and_then(|v| v.parse().ok()).unwrap_or(0)
}
