//! One Postgres cluster: initdb, configuration files, and a postmaster started by `pg_ctl`,
//! recognised again through `postmaster.pid` after the wake service restarts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::process::{self, Identity};
use crate::compute::ComputeError;

/// The superuser initdb creates. It logs in only over the private unix socket.
pub(crate) const SUPERUSER: &str = "cloud_admin";

/// How long `pg_ctl` may take to start or stop a postmaster.
pub(crate) const PG_CTL_SECONDS: u64 = 60;

/// Included from `postgresql.conf`; written once by create.
const STATIC_CONF: &str = "wake.conf";
/// Included from `postgresql.conf`; rewritten before each start (port, addresses).
const START_CONF: &str = "wake.start.conf";

/// Where a cluster lives and how its processes run.
pub(crate) struct Cluster<'a> {
    pub identity: &'a Identity,
    pub pg_bin: &'a Path,
    pub pgdata: PathBuf,
    /// The unix socket directory (private: 0700, owned by the OS user).
    pub run_dir: PathBuf,
    /// pg_ctl's `-l`: the postmaster's stderr.
    pub log: PathBuf,
}

/// What the per-start file says.
#[derive(Clone, Debug)]
pub(crate) struct StartSettings {
    /// `listen_addresses`: a host, or "" for the unix socket only.
    pub listen: String,
    pub port: u16,
    /// fsync, synchronous_commit and full_page_writes off.
    pub fast: bool,
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
    fn pid_path(&self) -> PathBuf {
        self.pgdata.join("postmaster.pid")
    }

    /// Runs `initdb` into `pgdata` (which must not exist or be empty).
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

    /// Writes pg_hba.conf (`hba`), the static settings and the include lines. Called once
    /// after initdb, by create.
    pub fn configure(&self, hba: &str, settings: &StartSettings) -> Result<(), ComputeError> {
        let owner = self.identity.owner();
        process::write_file(
            &self.pgdata.join("pg_hba.conf"),
            hba.as_bytes(),
            0o600,
            owner,
        )?;
        let static_conf = "# Written by the wake service (local driver) at create.\n\
             unix_socket_permissions = 0700\n\
             password_encryption = 'scram-sha-256'\n\
             max_connections = 200\n\
             shared_buffers = '32MB'\n\
             logging_collector = off\n";
        process::write_file(
            &self.pgdata.join(STATIC_CONF),
            static_conf.as_bytes(),
            0o600,
            owner,
        )?;
        self.write_start_conf(settings)?;

        let conf = self.pgdata.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)
            .map_err(|e| ComputeError::io(format!("reading {}", conf.display()), e))?;
        if !text.contains(&format!("include = '{STATIC_CONF}'")) {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!(
                "\n# Added by the wake service: settings written at create, then those \
                 rewritten before each start.\ninclude = '{STATIC_CONF}'\ninclude = '{START_CONF}'\n"
            ));
            process::write_file(&conf, text.as_bytes(), 0o600, owner)?;
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
        conf
    }

    fn write_start_conf(&self, settings: &StartSettings) -> Result<(), ComputeError> {
        let path = self.pgdata.join(START_CONF);
        let conf = self.start_conf(settings);
        if process::file_is(&path, conf.as_bytes()) {
            return Ok(());
        }
        process::write_file(&path, conf.as_bytes(), 0o600, self.identity.owner())
    }

    /// Reads `postmaster.pid`: line 1 pid, 4 port, 5 socket directory, 8 status.
    pub fn pid_file(&self) -> PidFile {
        let Ok(text) = std::fs::read_to_string(self.pid_path()) else {
            return PidFile::NotRunning;
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

    /// A postmaster of this data directory: the program is `postgres` (a postmaster keeps its
    /// command line; only its children retitle themselves) and its `-D` is our data directory,
    /// or its working directory is (the postmaster chdirs into the data directory).
    /// None when the command line cannot be read.
    fn is_our_postmaster(&self, pid: i32) -> Option<bool> {
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
    /// directory with the same settings; one running with other settings is restarted.
    /// Returns the postmaster's pid once it accepts connections.
    pub async fn start(&self, settings: &StartSettings) -> Result<i32, ComputeError> {
        let wanted = self.start_conf(settings);
        let start_conf = self.pgdata.join(START_CONF);
        let run_dir = self.run_dir.to_string_lossy();
        let deadline = Instant::now() + Duration::from_secs(3 * PG_CTL_SECONDS);
        loop {
            if Instant::now() >= deadline {
                return Err(process::with_log(
                    format!(
                        "Postgres in {} did not reach a running state",
                        self.pgdata.display()
                    ),
                    &self.log,
                ));
            }
            match self.pid_file() {
                PidFile::NotRunning => {
                    self.write_start_conf(settings)?;
                    return self.pg_ctl_start(settings).await;
                }
                PidFile::Stale(pid) => {
                    tracing::warn!(
                        pid,
                        pgdata = %self.pgdata.display(),
                        "postmaster.pid names a live process that is not our postmaster; removing it"
                    );
                    match std::fs::remove_file(self.pid_path()) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(ComputeError::io("removing stale postmaster.pid", e)),
                    }
                }
                PidFile::Unknown(pid) => return Err(unknown(pid, &self.pgdata)),
                PidFile::Running(pm) if pm.status == "stopping" => {
                    tracing::info!(pid = pm.pid, "postmaster is shutting down; waiting");
                    if !process::wait_exit(pm.pid, Duration::from_secs(PG_CTL_SECONDS)).await {
                        return Err(process::with_log(
                            format!("postmaster {} did not finish shutting down", pm.pid),
                            &self.log,
                        ));
                    }
                }
                PidFile::Running(pm) => {
                    let same = pm.port == Some(settings.port)
                        && pm.socket_dir == run_dir
                        && process::file_is(&start_conf, wanted.as_bytes());
                    if !same {
                        tracing::info!(
                            pid = pm.pid,
                            running_port = ?pm.port,
                            port = settings.port,
                            "postmaster runs with other settings; restarting it"
                        );
                        self.stop().await?;
                    } else if pm.status == "ready" || pm.status == "standby" {
                        tracing::info!(
                            pid = pm.pid,
                            port = settings.port,
                            "adopted running postmaster"
                        );
                        return Ok(pm.pid);
                    } else {
                        // Starting up (e.g. a pg_ctl start of a killed wake service).
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    async fn pg_ctl_start(&self, settings: &StartSettings) -> Result<i32, ComputeError> {
        process::rotate_log(&self.log)?;
        let mut cmd = self.identity.command(self.pg_bin.join("pg_ctl"));
        cmd.arg("start")
            .arg("-w")
            .arg("-t")
            .arg(PG_CTL_SECONDS.to_string())
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&self.log);
        tracing::info!(pgdata = %self.pgdata.display(), "starting Postgres");
        let output = process::run(
            cmd,
            Duration::from_secs(PG_CTL_SECONDS + 15),
            "pg_ctl start",
        )
        .await
        .map_err(|e| process::with_log(e.to_string(), &self.log))?;
        if !output.status.success() {
            return Err(process::with_log(
                format!(
                    "pg_ctl start failed for {} ({}): {}",
                    self.pgdata.display(),
                    output.status,
                    process::output_text(&output)
                ),
                &self.log,
            ));
        }
        match self.pid_file() {
            PidFile::Running(pm)
                if settings.listen.is_empty() || process::listens_on(pm.pid, settings.port) =>
            {
                Ok(pm.pid)
            }
            _ => Err(process::with_log(
                format!(
                    "pg_ctl reported Postgres in {} started, but no postmaster runs or it does \
                     not listen on TCP port {}",
                    self.pgdata.display(),
                    settings.port
                ),
                &self.log,
            )),
        }
    }

    /// Fast shutdown (sessions are cut); falls back to immediate, then SIGKILL. Nothing to do
    /// when no postmaster runs.
    pub async fn stop(&self) -> Result<(), ComputeError> {
        let pm = match self.pid_file() {
            PidFile::Running(pm) => pm,
            PidFile::NotRunning | PidFile::Stale(_) => return Ok(()),
            PidFile::Unknown(pid) => return Err(unknown(pid, &self.pgdata)),
        };
        tracing::info!(pid = pm.pid, pgdata = %self.pgdata.display(), "stopping Postgres");
        for mode in ["fast", "immediate"] {
            let mut cmd = self.identity.command(self.pg_bin.join("pg_ctl"));
            cmd.arg("stop")
                .arg("-m")
                .arg(mode)
                .arg("-w")
                .arg("-t")
                .arg(PG_CTL_SECONDS.to_string())
                .arg("-D")
                .arg(&self.pgdata);
            let result =
                process::run(cmd, Duration::from_secs(PG_CTL_SECONDS + 15), "pg_ctl stop").await;
            if !process::process_alive(pm.pid) {
                return Ok(());
            }
            match result {
                Ok(output) => tracing::warn!(
                    mode,
                    status = %output.status,
                    output = %process::output_text(&output),
                    "pg_ctl stop did not stop the postmaster"
                ),
                Err(e) => tracing::warn!(mode, error = %e, "pg_ctl stop failed"),
            }
        }
        tracing::warn!(pid = pm.pid, "killing the postmaster");
        process::signal(pm.pid, Signal::SIGKILL);
        if process::wait_exit(pm.pid, Duration::from_secs(10)).await {
            Ok(())
        } else {
            Err(process::with_log(
                format!(
                    "postmaster {} of {} would not stop",
                    pm.pid,
                    self.pgdata.display()
                ),
                &self.log,
            ))
        }
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

/// Connects with `config` and spawns the connection on tokio.
pub(crate) async fn connect(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, ComputeError> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
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
