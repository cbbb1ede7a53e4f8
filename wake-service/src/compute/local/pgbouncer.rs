//! One PgBouncer daemon (`pgbouncer -d`), recognised again through its pidfile.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::process::{self, Identity};
use crate::compute::ComputeError;

/// How long PgBouncer may take to come up.
const START_SECONDS: u64 = 30;
/// How long SIGTERM may take before SIGKILL.
const STOP_SECONDS: u64 = 10;

/// The files of one PgBouncer.
pub(crate) struct Bouncer<'a> {
    pub identity: &'a Identity,
    pub program: &'a Path,
    pub ini: PathBuf,
    pub pidfile: PathBuf,
    pub log: PathBuf,
}

pub(crate) enum PidFile {
    NotRunning,
    /// A live PgBouncer started with our ini.
    Running(i32),
    /// The pidfile names a live process that is not our PgBouncer (pid reuse after a crash):
    /// PgBouncer would refuse to start while the file exists.
    Stale,
    /// Alive, but its command line cannot be read (another user's process under a
    /// restrictive /proc): nothing is safe to do.
    Unknown(i32),
}

impl Bouncer<'_> {
    pub fn pid_file(&self) -> PidFile {
        let Ok(text) = std::fs::read_to_string(&self.pidfile) else {
            return PidFile::NotRunning;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            return PidFile::Stale;
        };
        if pid <= 0 || !process::process_alive(pid) {
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
        match std::fs::remove_file(&self.pidfile) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ComputeError::io(
                format!("removing {}", self.pidfile.display()),
                e,
            )),
        }
    }

    /// Starts PgBouncer with `files` (path, contents; the ini among them) unless one already
    /// runs with exactly these files and answers on `host:port`; one with other files is
    /// restarted. Files are only rewritten while no PgBouncer runs, so "files on disk equal"
    /// means "the running daemon loaded them". Returns the daemon's pid.
    pub async fn start(
        &self,
        files: &[(PathBuf, String)],
        host: &str,
        port: u16,
    ) -> Result<i32, ComputeError> {
        let current = files
            .iter()
            .all(|(path, contents)| process::file_is(path, contents.as_bytes()));
        match self.pid_file() {
            PidFile::Running(pid) => {
                if current
                    && process::listens_on(pid, port)
                    && process::tcp_accepts(host, port, Duration::from_secs(2)).await
                {
                    tracing::info!(pid, port, "adopted running PgBouncer");
                    return Ok(pid);
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
        for (path, contents) in files {
            if !process::file_is(path, contents.as_bytes()) {
                process::write_file(path, contents.as_bytes(), 0o600, self.identity.owner())?;
            }
        }

        process::rotate_log(&self.log)?;
        let log_offset = process::file_len(&self.log);
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
            return Err(process::with_log(
                format!(
                    "pgbouncer failed to start ({}): {}",
                    output.status,
                    process::output_text(&output)
                ),
                &self.log,
            ));
        }
        // `-d` forks before it binds its ports, and a TCP port in use is only a WARNING while
        // the unix socket works: both show only in the log.
        let deadline = Instant::now() + Duration::from_secs(START_SECONDS);
        loop {
            let fresh = process::read_from(&self.log, log_offset);
            if let Some(line) = fresh
                .lines()
                .find(|line| line.contains(" FATAL ") || line.contains("cannot listen on"))
            {
                let line = line.trim().to_string();
                // The daemon may not have written its pidfile yet: its pid is in the line
                // (`… UTC [1234] WARNING …`).
                let logged_pid = line
                    .split_once('[')
                    .and_then(|(_, rest)| rest.split_once(']'))
                    .and_then(|(pid, _)| pid.parse::<i32>().ok())
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
                return Err(ComputeError::Process(format!(
                    "pgbouncer failed to start: {line}"
                )));
            }
            if let PidFile::Running(pid) = self.pid_file() {
                if process::listens_on(pid, port) {
                    return Ok(pid);
                }
            }
            if Instant::now() >= deadline {
                return Err(process::with_log(
                    format!("pgbouncer did not accept connections on port {port} within {START_SECONDS} s"),
                    &self.log,
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
        tracing::info!(pid, ini = %self.ini.display(), "stopping PgBouncer");
        process::signal(pid, Signal::SIGTERM);
        if !process::wait_exit(pid, Duration::from_secs(STOP_SECONDS)).await {
            tracing::warn!(pid, "PgBouncer ignored SIGTERM; killing it");
            process::signal(pid, Signal::SIGKILL);
            if !process::wait_exit(pid, Duration::from_secs(STOP_SECONDS)).await {
                return Err(ComputeError::Process(format!(
                    "PgBouncer {pid} ({}) would not stop",
                    self.ini.display()
                )));
            }
        }
        Ok(())
    }

    /// Whether a PgBouncer (or something we cannot inspect) holds the pidfile.
    pub fn running(&self) -> bool {
        matches!(self.pid_file(), PidFile::Running(_) | PidFile::Unknown(_))
    }

    /// Whether our PgBouncer runs and owns the listening socket on `port`.
    pub fn listening(&self, port: u16) -> bool {
        matches!(self.pid_file(), PidFile::Running(pid) if process::listens_on(pid, port))
    }

    fn unknown(&self, pid: i32) -> ComputeError {
        ComputeError::Process(format!(
            "{} names process {pid}, which cannot be inspected; stop it by hand",
            self.pidfile.display()
        ))
    }
}
