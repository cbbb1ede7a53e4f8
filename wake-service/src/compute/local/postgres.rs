//! One Postgres cluster: initdb, configuration files, and a postmaster the wake service
//! spawns itself (no `pg_ctl`: it polls every 100 ms) and stops with signals, recognised again
//! through `postmaster.pid` after the wake service restarts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::files::Dir;
use super::process::{self, Children, Identity};
use crate::compute::{ComputeError, StopMode};

// The superuser initdb creates (`-U`); it logs in only over the private unix socket.
pub(crate) use crate::roles::SUPERUSER;

/// How long a postmaster may take to become ready, and each of the fast and immediate
/// shutdowns to finish.
pub(crate) const PG_SECONDS: u64 = 60;
/// How long a SIGKILLed postmaster may take to be gone.
const KILL_SECONDS: u64 = 10;
/// How often a starting postmaster's `postmaster.pid` is read. Postgres 15 needs ~20-35 ms
/// from spawn to ready here, so a coarse poll would dominate the resume time.
const READY_POLL: Duration = Duration::from_millis(1);

/// Included from `postgresql.conf`; written once by create.
const STATIC_CONF: &str = "wake.conf";
/// Included from `postgresql.conf`; rewritten before each start (port, addresses).
const START_CONF: &str = "wake.start.conf";
/// The settings that follow the compute's size, rewritten on every resize and included by
/// [`START_CONF`] (so a resize alone never makes a running postmaster look out of date).
const SIZE_CONF: &str = "wake.size.conf";
/// Authentication files, rewritten before each start when they differ.
const HBA: &str = "pg_hba.conf";
const IDENT: &str = "pg_ident.conf";
/// The postmaster's lock file.
const PID_FILE: &str = "postmaster.pid";

/// The log the postmaster's stdout and stderr are appended to, in the cluster's directory.
pub(crate) const LOG: &str = "postgres.log";
/// The data directory's name, and the one initdb works in until the cluster is complete.
pub(crate) const PGDATA: &str = "pgdata";
pub(crate) const PGDATA_INIT: &str = "pgdata.init";

/// Where a cluster lives and how its processes run.
pub(crate) struct Cluster<'a> {
    pub identity: &'a Identity,
    /// Postmasters spawned by this wake service, reaped when they exit.
    pub children: &'a Children,
    pub pg_bin: &'a Path,
    /// The compute's (or state store's) directory, checked; the data directory, `run/` and
    /// the log are in it. Only reached through it (see [`super::files`]).
    pub dir: &'a Dir,
    /// [`PGDATA`], or [`PGDATA_INIT`] while being created.
    pub pgdata_name: &'static str,
    /// The path of the data directory (for the postmaster's `-D`).
    pub pgdata: PathBuf,
    /// The unix socket directory (private: 0700, owned by the OS user).
    pub run_dir: PathBuf,
    /// How `cloud_admin` logs in over the unix socket: pg_hba.conf and pg_ident.conf, rewritten
    /// before each start when they differ.
    pub hba: &'a str,
    pub ident: &'a str,
}

/// Called with a spawned postmaster's pid before it has forked anything (a compute's cgroup:
/// everything it forks later inherits it). An error fails the start.
pub(crate) type OnSpawn<'a> = &'a (dyn Fn(i32) -> Result<(), ComputeError> + Sync);

/// What the per-start file says.
#[derive(Clone, Debug)]
pub(crate) struct StartSettings {
    /// `listen_addresses`: a host, or "" for the unix socket only.
    pub listen: String,
    pub port: u16,
    /// fsync, synchronous_commit and full_page_writes off.
    pub fast: bool,
}

/// A running postmaster, as [`Cluster::start`] left it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Started {
    pub pid: i32,
    /// Spawned now (it read every conf file as they are), not adopted.
    pub fresh: bool,
}

/// A postmaster found through `postmaster.pid`.
#[derive(Clone, Debug)]
pub(crate) struct Postmaster {
    pub pid: i32,
    pub port: Option<u16>,
    pub socket_dir: String,
    /// `starting`, `ready`, `stopping` or `standby` (empty while being written).
    pub status: String,
}

pub(crate) enum PidFile {
    /// No `postmaster.pid`, or its pid is dead (Postgres itself replaces such a file).
    NotRunning,
    /// A live postmaster of this data directory.
    Running(Postmaster),
    /// The pid is alive but is not a postmaster of this data directory (pid reuse after a
    /// crash): Postgres would refuse to start, so the file must go.
    Stale(i32),
    /// The pid is alive but its command line cannot be read (another user's process under
    /// a restrictive /proc): nothing is safe to do.
    Unknown(i32),
}

/// Quotes a value for postgresql.conf.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

impl Cluster<'_> {
    /// The data directory, checked (a directory of the compute's user, not a symlink).
    fn pgdata_dir(&self) -> Result<Option<Dir>, ComputeError> {
        self.dir
            .subdir(self.pgdata_name)
            .map_err(|e| ComputeError::io(format!("opening {}", self.pgdata.display()), e))
    }

    fn error_with_log(&self, message: String) -> ComputeError {
        self.dir.error_with_log(message, LOG)
    }

    /// Runs `initdb` into the data directory (which must not exist or be empty).
    pub async fn initdb(&self, locale: &str, no_sync: bool) -> Result<(), ComputeError> {
        let mut cmd = self.identity.command(self.pg_bin.join("initdb"));
        cmd.arg("-D")
            .arg(&self.pgdata)
            .arg("-U")
            .arg(SUPERUSER)
            .arg("--auth-local=trust")
            .arg("--auth-host=scram-sha-256")
            .arg("-E")
            .arg("UTF8")
            .arg(locale)
            .arg("--no-instructions");
        if no_sync {
            cmd.arg("--no-sync");
        }
        tracing::info!(pgdata = %self.pgdata.display(), "initdb");
        let output = process::run(cmd, Duration::from_secs(180), "initdb").await?;
        if !output.status.success() {
            return Err(ComputeError::Process(format!(
                "initdb failed for {} ({}): {}",
                self.pgdata.display(),
                output.status,
                process::output_text(&output)
            )));
        }
        Ok(())
    }

    /// Marks `base/` (one directory per database) as the top of a directory tree for ext2/3/4
    /// (`chattr +T`), so that the kernel spreads the databases' directories, and with them
    /// their files' inodes, over block groups instead of packing them next to `base/`. Why:
    /// on ext4 without a journal, finding an inode for a new file steps past every inode its
    /// group freed in the last minutes, so a test suite that makes and drops branches (about
    /// 300 files each) slowed every later `CREATE DATABASE` (perf: the time was in
    /// `ext4_create`'s `recently_deleted`); `make bench` scenario 10 measures copies with the
    /// flag and without. Elsewhere (another filesystem, no `chattr`) it changes nothing, and a
    /// failure is only logged: the cluster works either way.
    pub async fn spread_databases(&self) {
        let base = self.pgdata.join("base");
        let mut cmd = self.identity.command("chattr");
        cmd.arg("+T").arg(&base);
        match process::run(cmd, Duration::from_secs(10), "chattr").await {
            Ok(output) if output.status.success() => {}
            Ok(output) => tracing::debug!(
                dir = %base.display(),
                output = %process::output_text(&output),
                "chattr +T refused: databases' directories stay where the filesystem puts them"
            ),
            Err(e) => tracing::debug!(
                dir = %base.display(),
                error = %e,
                "chattr +T did not run: databases' directories stay where the filesystem puts them"
            ),
        }
    }

    /// Writes pg_hba.conf, pg_ident.conf, the static settings and the include lines. Called
    /// once after initdb.
    pub fn configure(&self, settings: &StartSettings) -> Result<(), ComputeError> {
        let owner = self.identity.owner();
        let pgdata = self.pgdata_dir()?.ok_or_else(|| {
            ComputeError::Process(format!("{} is missing", self.pgdata.display()))
        })?;
        self.write_auth(&pgdata)?;
        let static_conf = "# Written by the wake service (local driver) at create.\n\
             unix_socket_permissions = 0700\n\
             password_encryption = 'scram-sha-256'\n\
             logging_collector = off\n";
        pgdata.write(STATIC_CONF, static_conf.as_bytes(), 0o600, owner)?;
        self.write_start_conf(&pgdata, settings)?;

        let conf = "postgresql.conf";
        let mut text = pgdata
            .read(conf, 1024 * 1024)
            .map_err(|e| {
                ComputeError::io(format!("reading {}", self.pgdata.join(conf).display()), e)
            })?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .ok_or_else(|| {
                ComputeError::Process(format!("{} is missing", self.pgdata.join(conf).display()))
            })?;
        if !text.contains(&format!("include = '{STATIC_CONF}'")) {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!(
                "\n# Added by the wake service: settings written at create, then those \
                 rewritten before each start.\ninclude = '{STATIC_CONF}'\ninclude = '{START_CONF}'\n"
            ));
            pgdata.write(conf, text.as_bytes(), 0o600, owner)?;
        }
        Ok(())
    }

    /// pg_hba.conf and pg_ident.conf, when they differ from what they should be.
    fn write_auth(&self, pgdata: &Dir) -> Result<(), ComputeError> {
        let owner = self.identity.owner();
        for (name, contents) in [(HBA, self.hba), (IDENT, self.ident)] {
            if !pgdata.file_is(name, contents.as_bytes()) {
                pgdata.write(name, contents.as_bytes(), 0o600, owner)?;
            }
        }
        Ok(())
    }

    fn start_conf(&self, settings: &StartSettings) -> String {
        let mut conf = format!(
            "# Written by the wake service (local driver) before each start.\n\
             listen_addresses = {}\n\
             port = {}\n\
             unix_socket_directories = {}\n",
            quote(&settings.listen),
            settings.port,
            quote(&self.run_dir.to_string_lossy()),
        );
        if settings.fast {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        conf.push_str(&format!("include_if_exists = '{SIZE_CONF}'\n"));
        conf
    }

    fn write_start_conf(&self, pgdata: &Dir, settings: &StartSettings) -> Result<(), ComputeError> {
        let conf = self.start_conf(settings);
        if pgdata.file_is(START_CONF, conf.as_bytes()) {
            return Ok(());
        }
        pgdata.write(START_CONF, conf.as_bytes(), 0o600, self.identity.owner())
    }

    /// Writes the size settings file when it differs; whether it changed. A running
    /// postmaster reads it at its next reload (SIGHUP) or start.
    pub fn write_size_conf(&self, conf: &str) -> Result<bool, ComputeError> {
        let pgdata = self.pgdata_dir()?.ok_or_else(|| {
            ComputeError::Process(format!("{} is missing", self.pgdata.display()))
        })?;
        if pgdata.file_is(SIZE_CONF, conf.as_bytes()) {
            return Ok(false);
        }
        pgdata.write(SIZE_CONF, conf.as_bytes(), 0o600, self.identity.owner())?;
        Ok(true)
    }

    /// Reads `postmaster.pid`: line 1 pid, 4 port, 5 socket directory, 8 status. A pid is
    /// only ever taken for our postmaster when it runs as the compute's user.
    pub fn pid_file(&self) -> PidFile {
        let Ok(Some(pgdata)) = self.pgdata_dir() else {
            return PidFile::NotRunning;
        };
        self.pid_file_in(&pgdata)
    }

    fn pid_file_in(&self, pgdata: &Dir) -> PidFile {
        let text = match pgdata.read(PID_FILE, 4096) {
            Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            Ok(None) => return PidFile::NotRunning,
            // Not a plain file of the compute's user (a symlink, a FIFO): not believed, and
            // in the way of a new postmaster.
            Err(e) => {
                tracing::warn!(error = %e, "ignoring postmaster.pid");
                return PidFile::Stale(0);
            }
        };
        let lines: Vec<&str> = text.lines().collect();
        let Some(pid) = lines.first().and_then(|l| l.trim().parse::<i32>().ok()) else {
            // Being written right now, or garbage: treat as no postmaster (Postgres decides).
            return PidFile::NotRunning;
        };
        if pid <= 0 || !process::process_alive(pid) {
            return PidFile::NotRunning;
        }
        match self.is_our_postmaster(pid) {
            Some(true) => {}
            _ if !process::process_alive(pid) => return PidFile::NotRunning,
            Some(false) => return PidFile::Stale(pid),
            None => return PidFile::Unknown(pid),
        }
        let line = |n: usize| lines.get(n - 1).map(|l| l.trim()).unwrap_or_default();
        PidFile::Running(Postmaster {
            pid,
            port: line(4).parse().ok(),
            socket_dir: line(5).to_string(),
            status: line(8).to_string(),
        })
    }

    /// A postmaster of this data directory: it runs as the compute's user, the program is
    /// `postgres` (a postmaster keeps its command line; only its children retitle themselves)
    /// and its `-D` is our data directory, or its working directory is (the postmaster chdirs
    /// into the data directory). None when the command line cannot be read.
    fn is_our_postmaster(&self, pid: i32) -> Option<bool> {
        if !process::owned_by(pid, self.identity.uid) {
            return Some(false);
        }
        let args = process::cmdline(pid)?;
        let Some(arg0) = args.first() else {
            return Some(false);
        };
        if !matches!(process::program_name(arg0), "postgres" | "postmaster") {
            return Some(false);
        }
        let data_arg = args
            .windows(2)
            .find(|pair| pair[0] == "-D")
            .map(|pair| PathBuf::from(&pair[1]));
        Some(
            data_arg.is_some_and(|dir| same_path(&dir, &self.pgdata))
                || process::cwd(pid).is_some_and(|dir| same_path(&dir, &self.pgdata)),
        )
    }

    /// Starts the postmaster with `settings`, or adopts one already running for this data
    /// directory with the same settings (and authentication files); one running with other
    /// settings is restarted. Returns the postmaster's pid once it accepts connections.
    pub async fn start(
        &self,
        settings: &StartSettings,
        on_spawn: OnSpawn<'_>,
    ) -> Result<Started, ComputeError> {
        let pgdata = self.pgdata_dir()?.ok_or_else(|| {
            ComputeError::Process(format!("{} is missing", self.pgdata.display()))
        })?;
        let wanted = self.start_conf(settings);
        let run_dir = self.run_dir.to_string_lossy();
        let deadline = Instant::now() + Duration::from_secs(3 * PG_SECONDS);
        loop {
            if Instant::now() >= deadline {
                return Err(self.error_with_log(format!(
                    "Postgres in {} did not reach a running state",
                    self.pgdata.display()
                )));
            }
            match self.pid_file_in(&pgdata) {
                PidFile::NotRunning => {
                    self.write_auth(&pgdata)?;
                    self.write_start_conf(&pgdata, settings)?;
                    let pid = self.spawn(&pgdata, settings, on_spawn).await?;
                    return Ok(Started { pid, fresh: true });
                }
                PidFile::Stale(pid) => {
                    tracing::warn!(
                        pid,
                        pgdata = %self.pgdata.display(),
                        "postmaster.pid names a live process that is not our postmaster; removing it"
                    );
                    pgdata
                        .unlink(PID_FILE)
                        .map_err(|e| ComputeError::io("removing stale postmaster.pid", e))?;
                }
                PidFile::Unknown(pid) => return Err(unknown(pid, &self.pgdata)),
                PidFile::Running(pm) if pm.status == "stopping" => {
                    tracing::info!(pid = pm.pid, "postmaster is shutting down; waiting");
                    if !self
                        .children
                        .wait_gone(pm.pid, Duration::from_secs(PG_SECONDS))
                        .await
                    {
                        return Err(self.error_with_log(format!(
                            "postmaster {} did not finish shutting down",
                            pm.pid
                        )));
                    }
                }
                PidFile::Running(pm) => {
                    let same = pm.port == Some(settings.port)
                        && pm.socket_dir == run_dir
                        && pgdata.file_is(START_CONF, wanted.as_bytes())
                        && pgdata.file_is(HBA, self.hba.as_bytes())
                        && pgdata.file_is(IDENT, self.ident.as_bytes());
                    if !same {
                        tracing::info!(
                            pid = pm.pid,
                            running_port = ?pm.port,
                            port = settings.port,
                            "postmaster runs with other settings; restarting it"
                        );
                        self.stop(StopMode::Fast).await?;
                    } else if pm.status == "ready" || pm.status == "standby" {
                        tracing::info!(
                            pid = pm.pid,
                            port = settings.port,
                            "adopted running postmaster"
                        );
                        return Ok(Started {
                            pid: pm.pid,
                            fresh: false,
                        });
                    } else {
                        // Starting up (spawned by a wake service that was then killed).
                        tokio::time::sleep(READY_POLL).await;
                    }
                }
            }
        }
    }

    /// The command that runs this cluster's postmaster (`postgres -D <pgdata>` as the OS
    /// user, in its own process group; stdout and stderr inherited): the configuration is all
    /// in the data directory.
    pub fn postmaster_command(&self) -> std::process::Command {
        let mut cmd = self.identity.std_command(self.pg_bin.join("postgres"));
        cmd.arg("-D").arg(&self.pgdata);
        cmd
    }

    /// Spawns the postmaster (no postmaster runs) and waits until `postmaster.pid` names it
    /// and says `ready` (the moment Postgres accepts connections; pg_ctl waits for the same
    /// line, but polls every 100 ms) and, when it should listen on TCP, names the address it
    /// bound (line 6: Postgres writes the first address it could bind, and fails to start
    /// when it binds none; a port held by another program is such a failure). That is the
    /// proof [`process::listens_on`] gives for an adopted postmaster, without reading
    /// `/proc/net/tcp` (~5 ms here).
    async fn spawn(
        &self,
        pgdata: &Dir,
        settings: &StartSettings,
        on_spawn: OnSpawn<'_>,
    ) -> Result<i32, ComputeError> {
        self.dir.rotate_log(LOG)?;
        let log = self.dir.open_append(LOG, self.identity.owner())?;
        let stderr = log.try_clone().map_err(|e| {
            ComputeError::io(format!("opening {}", self.dir.join(LOG).display()), e)
        })?;
        let mut cmd = tokio::process::Command::from(self.postmaster_command());
        // The postmaster outlives the wake service: never kill it with the handle.
        cmd.stdout(log).stderr(stderr).kill_on_drop(false);
        let began = Instant::now();
        let mut child = cmd.spawn().map_err(|e| {
            ComputeError::io(format!("starting Postgres in {}", self.pgdata.display()), e)
        })?;
        let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) else {
            // Only when it already exited and was reaped, which cannot happen before a wait.
            return Err(self.error_with_log(format!(
                "the postmaster of {} vanished",
                self.pgdata.display()
            )));
        };
        tracing::info!(pid, pgdata = %self.pgdata.display(), "starting Postgres");
        if let Err(e) = on_spawn(pid) {
            // Left to finish starting, like a timeout: the next start adopts it and tries again.
            self.children.reap(pid, child);
            return Err(e);
        }
        let deadline = began + Duration::from_secs(PG_SECONDS);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(self.error_with_log(format!(
                        "Postgres in {} exited during startup ({status})",
                        self.pgdata.display()
                    )))
                }
                Ok(None) => {}
                Err(e) => {
                    self.children.reap(pid, child);
                    return Err(ComputeError::io("waiting for the postmaster", e));
                }
            }
            if let Some(listening) = says_ready(pgdata, pid) {
                if settings.listen.is_empty() || listening {
                    break;
                }
                self.children.reap(pid, child);
                return Err(self.error_with_log(format!(
                    "Postgres in {} is ready but does not listen on TCP port {}",
                    self.pgdata.display(),
                    settings.port
                )));
            }
            if Instant::now() >= deadline {
                // Left running, like pg_ctl does: the next start finds it and waits again.
                self.children.reap(pid, child);
                return Err(self.error_with_log(format!(
                    "Postgres in {} did not become ready within {PG_SECONDS} s",
                    self.pgdata.display()
                )));
            }
            tokio::time::sleep(READY_POLL).await;
        }
        self.children.reap(pid, child);
        tracing::info!(pid, elapsed = ?began.elapsed(), "Postgres ready");
        Ok(pid)
    }

    /// Stops the postmaster by signals, polling every few ms for it to be gone (and reaped,
    /// when it is our child). Smart (SIGTERM: new connections are refused with 57P03, open
    /// sessions go on) for up to `patience`, then fast (SIGINT: sessions are cut), then
    /// immediate (SIGQUIT), then SIGKILL, each bounded. Nothing to do when no postmaster
    /// runs.
    pub async fn stop(&self, mode: StopMode) -> Result<(), ComputeError> {
        let pm = match self.pid_file() {
            PidFile::Running(pm) => pm,
            PidFile::NotRunning | PidFile::Stale(_) => return Ok(()),
            PidFile::Unknown(pid) => return Err(unknown(pid, &self.pgdata)),
        };
        let began = Instant::now();
        let mut steps = Vec::with_capacity(4);
        if let StopMode::Smart { patience } = mode {
            steps.push(("smart", Signal::SIGTERM, patience));
        }
        steps.push(("fast", Signal::SIGINT, Duration::from_secs(PG_SECONDS)));
        steps.push((
            "immediate",
            Signal::SIGQUIT,
            Duration::from_secs(PG_SECONDS),
        ));
        steps.push(("kill", Signal::SIGKILL, Duration::from_secs(KILL_SECONDS)));
        for (i, (name, signal, bound)) in steps.into_iter().enumerate() {
            if i == 0 {
                tracing::info!(pid = pm.pid, pgdata = %self.pgdata.display(), mode = name, "stopping Postgres");
            } else {
                tracing::warn!(
                    pid = pm.pid,
                    mode = name,
                    "postmaster still runs; escalating"
                );
            }
            process::signal_owned(pm.pid, self.identity.uid, signal);
            if self.children.wait_gone(pm.pid, bound).await {
                tracing::info!(pid = pm.pid, elapsed = ?began.elapsed(), "Postgres stopped");
                return Ok(());
            }
        }
        Err(self.error_with_log(format!(
            "postmaster {} of {} would not stop",
            pm.pid,
            self.pgdata.display()
        )))
    }

    /// A connection config for the superuser over the unix socket.
    pub fn admin_config(&self, port: u16) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.run_dir)
            .port(port)
            .user(SUPERUSER)
            .dbname("postgres")
            .application_name("wake-service")
            .connect_timeout(Duration::from_secs(10));
        config
    }
}

/// When `postmaster.pid` names `pid` and says `ready` (line 8): whether it names a TCP listen
/// address (line 6). The lighter check of the startup loop: `pid` is our own child, so
/// [`Cluster::pid_file`]'s identity checks are not needed.
fn says_ready(pgdata: &Dir, pid: i32) -> Option<bool> {
    let text = pgdata.read_text(PID_FILE, 4096)?;
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    (lines.first() == Some(&pid.to_string().as_str()) && lines.get(7) == Some(&"ready"))
        .then(|| lines.get(5).is_some_and(|address| !address.is_empty()))
}

fn unknown(pid: i32, pgdata: &Path) -> ComputeError {
    ComputeError::Process(format!(
        "{}/postmaster.pid names process {pid}, which cannot be inspected; stop it by hand",
        pgdata.display()
    ))
}

/// Whether two paths name the same directory (canonical forms equal, or literally equal).
fn same_path(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// How long connecting to a unix socket and logging in may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Logs in with `config` (its host and port are not used) over the unix socket
/// `run_dir/.s.PGSQL.<port>`, once the process at the other end is known to run as `uid`: the
/// socket's directory belongs to the compute's user, who could replace the socket with a
/// symlink to another compute's (which `connect(2)` would follow).
pub(crate) async fn connect_unix(
    config: &tokio_postgres::Config,
    run_dir: &Path,
    port: u16,
    uid: u32,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio::net::UnixStream, tokio_postgres::tls::NoTlsStream>,
    ),
    ComputeError,
> {
    let path = run_dir.join(format!(".s.PGSQL.{port}"));
    let login = async {
        let stream = tokio::net::UnixStream::connect(&path)
            .await
            .map_err(|e| ComputeError::io(format!("connecting to {}", path.display()), e))?;
        let peer = stream
            .peer_cred()
            .map_err(|e| ComputeError::io(format!("checking the peer of {}", path.display()), e))?
            .uid();
        if peer != uid {
            return Err(ComputeError::Process(format!(
                "refusing {}: the process behind it runs as uid {peer}, not as the compute's user \
                 (uid {uid}); the socket was replaced",
                path.display()
            )));
        }
        Ok(config.connect_raw(stream, tokio_postgres::NoTls).await?)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, login)
        .await
        .map_err(|_| {
            ComputeError::Process(format!(
                "{} did not answer within {CONNECT_TIMEOUT:?}",
                path.display()
            ))
        })?
}

/// [`connect_unix`] to a cluster as its superuser, with the connection spawned on tokio.
pub(crate) async fn connect(
    config: &tokio_postgres::Config,
    run_dir: &Path,
    port: u16,
    uid: u32,
) -> Result<tokio_postgres::Client, ComputeError> {
    let (client, connection) = connect_unix(config, run_dir, port, uid).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "admin connection ended");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quoting() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a'b"), "'a''b'");
    }
}
