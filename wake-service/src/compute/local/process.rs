//! Running programs as the compute's OS user, and looking at processes through `/proc`.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};
use tokio::process::Command;

use crate::compute::ComputeError;

/// Who Postgres and PgBouncer run as, and how to get there from the wake service's user.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// True when the wake service runs as another user (root) and switches for each command;
    /// then every directory and file it writes for the processes is chowned to `uid:gid`.
    pub switch: bool,
}

impl Identity {
    /// `os_user` None means the wake service's own (effective) user.
    pub fn resolve(os_user: Option<&str>) -> Result<Identity, ComputeError> {
        let euid = nix::unistd::geteuid();
        let lookup_err =
            |e: nix::Error| ComputeError::Process(format!("looking up OS user failed: {e}"));
        let user = match os_user {
            Some(name) => Some(User::from_name(name).map_err(lookup_err)?.ok_or_else(|| {
                ComputeError::Process(format!("OS user '{name}' does not exist"))
            })?),
            None => User::from_uid(euid).map_err(lookup_err)?,
        };
        let identity = match user {
            Some(user) => Identity {
                name: user.name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
                home: user.dir,
                switch: user.uid != euid,
            },
            // The current uid has no passwd entry (containers with an arbitrary uid).
            None => Identity {
                name: euid.as_raw().to_string(),
                uid: euid.as_raw(),
                gid: nix::unistd::getegid().as_raw(),
                home: PathBuf::from("/"),
                switch: false,
            },
        };
        if identity.uid == 0 {
            return Err(ComputeError::Process(
                "Postgres and PgBouncer refuse to run as root: set the local driver's OS user \
                 (e.g. `postgres`)"
                    .into(),
            ));
        }
        if identity.switch && !euid.is_root() {
            return Err(ComputeError::Process(format!(
                "cannot run processes as OS user '{}': the wake service is not root",
                identity.name
            )));
        }
        Ok(identity)
    }

    /// Whoever owns `uid` (a compute directory of an earlier version, owned by the user
    /// every compute shared then): only to recognise and stop its processes.
    pub fn for_uid(uid: u32, gid: u32) -> Identity {
        let user = User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten();
        Identity {
            name: user
                .as_ref()
                .map_or_else(|| uid.to_string(), |u| u.name.clone()),
            uid,
            gid,
            home: user.map_or_else(|| PathBuf::from("/"), |u| u.dir),
            switch: nix::unistd::geteuid().as_raw() != uid,
        }
    }

    /// `uid:gid` to chown written paths to, when switching users.
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.switch.then_some((self.uid, self.gid))
    }

    /// A command that runs as this identity: cwd `/` (the wake service's cwd may be closed to
    /// the OS user), a minimal environment (the wake service's own secrets stay out of the
    /// compute; stray `PG*` variables cannot redirect Postgres), its own process group (a
    /// terminal's Ctrl-C to the wake service does not reach Postgres), stdin closed. stdout
    /// and stderr are inherited: set them.
    pub fn std_command(&self, program: impl AsRef<OsStr>) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(program);
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name)
            .env("LANG", "C");
        if let Some(tz) = std::env::var_os("TZ") {
            cmd.env("TZ", tz);
        }
        cmd.current_dir("/").stdin(Stdio::null()).process_group(0);
        if self.switch {
            // std drops supplementary groups (setgroups(0)) before setuid.
            cmd.uid(self.uid).gid(self.gid);
        }
        cmd
    }

    /// [`Self::std_command`] for a short-lived helper (initdb, `pgbouncer -d`): stdout and
    /// stderr captured, killed if the handle is dropped before it exits (timeouts).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::from(self.std_command(program));
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }
}

/// Processes the wake service started itself and must reap (postmasters, which run long and
/// are not daemons): each one is awaited by a task, so none is left a zombie when it exits.
/// A pid stays registered until it has been reaped, so a wait for a process to be gone can
/// also wait for that.
#[derive(Clone, Debug, Default)]
pub(crate) struct Children {
    unreaped: Arc<Mutex<HashSet<i32>>>,
}

impl Children {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        self.unreaped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands `child` (already spawned, not exited) to a task that reaps it when it exits.
    pub fn reap(&self, pid: i32, mut child: tokio::process::Child) {
        self.set().insert(pid);
        let children = self.clone();
        tokio::spawn(async move {
            match child.wait().await {
                Ok(status) => tracing::debug!(pid, %status, "child exited"),
                Err(e) => tracing::warn!(pid, error = %e, "waiting for a child failed"),
            }
            children.set().remove(&pid);
        });
    }

    /// Whether `pid` is a child of ours that has not been reaped yet (running or a zombie).
    pub fn unreaped(&self, pid: i32) -> bool {
        self.set().contains(&pid)
    }

    /// Polls (every [`EXIT_POLL`]) until `pid` has exited and, when it is our child, has been
    /// reaped; false when it still runs at the deadline.
    pub async fn wait_gone(&self, pid: i32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !process_alive(pid) && !self.unreaped(pid) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }
}

/// How often waits for a process to exit look again: `/proc/<pid>/stat` is cheap, and a stop
/// is on the suspend path.
pub(crate) const EXIT_POLL: Duration = Duration::from_millis(2);

/// Runs `cmd` to completion within `timeout`; `what` names it in errors. A command still
/// running at the deadline is killed (only it: a daemon it started is not in its reach).
pub(crate) async fn run(
    mut cmd: Command,
    timeout: Duration,
    what: &str,
) -> Result<Output, ComputeError> {
    let child = cmd
        .spawn()
        .map_err(|e| ComputeError::io(format!("{what}: could not run"), e))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(e)) => Err(ComputeError::io(format!("{what}: waiting failed"), e)),
        Err(_) => Err(ComputeError::Process(format!(
            "{what} did not finish within {} s",
            timeout.as_secs()
        ))),
    }
}

/// stdout and stderr of a finished command, trimmed, for error messages.
pub(crate) fn output_text(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim();
    if !stderr.is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(stderr);
    }
    tail_chars(&text, 4000)
}

fn tail_chars(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        text.to_string()
    } else {
        let start = text
            .char_indices()
            .nth(count - max)
            .map_or(0, |(index, _)| index);
        format!("…{}", &text[start..])
    }
}

// --- /proc ---------------------------------------------------------------------------------

/// Whether `pid` exists and is not a zombie.
pub(crate) fn process_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: comm may contain anything, the state follows the last ')'.
    let Some(end) = stat.rfind(')') else {
        return false;
    };
    !matches!(
        stat[end + 1..].trim_start().chars().next(),
        Some('Z' | 'X') | None
    )
}

/// The arguments of `pid` (None when it is gone or not readable).
pub(crate) fn cmdline(pid: i32) -> Option<Vec<String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if bytes.is_empty() {
        return None;
    }
    let mut args: Vec<String> = bytes
        .split(|b| *b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    if args.last().is_some_and(|arg| arg.is_empty()) {
        args.pop();
    }
    Some(args)
}

/// The working directory of `pid` (None when gone or not ours to read).
pub(crate) fn cwd(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// The real and effective uid of `pid` (from `/proc/<pid>/status`: the owner of
/// `/proc/<pid>` is root for a process that made itself non-dumpable).
pub(crate) fn process_uids(pid: i32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|id| id.parse::<u32>().ok());
    Some((ids.next()??, ids.next()??))
}

/// Whether `pid` runs as `uid` (real and effective): only such a process is ever signalled
/// on the word of a pidfile the compute's user can write (it could signal it itself).
pub(crate) fn owned_by(pid: i32, uid: u32) -> bool {
    process_uids(pid) == Some((uid, uid))
}

/// Sends `signal` to `pid` only when it runs as `uid`; false when it does not (or is gone).
pub(crate) fn signal_owned(pid: i32, uid: u32, sig: Signal) -> bool {
    if !owned_by(pid, uid) {
        tracing::warn!(pid, uid, ?sig, "not signalling a process of another user");
        return false;
    }
    signal(pid, sig)
}

/// The file name of a program path (`/usr/sbin/pgbouncer` → `pgbouncer`).
pub(crate) fn program_name(arg0: &str) -> &str {
    arg0.rsplit('/').next().unwrap_or(arg0)
}

/// Sends `signal`; false when the process does not exist (any other failure is logged).
pub(crate) fn signal(pid: i32, signal: Signal) -> bool {
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) => true,
        Err(nix::Error::ESRCH) => false,
        Err(e) => {
            tracing::warn!(pid, ?signal, error = %e, "could not signal process");
            false
        }
    }
}

/// Polls (every [`EXIT_POLL`]) until `pid` is gone or a zombie; false when it still runs at
/// the deadline. For processes that are not our children (see [`Children::wait_gone`]).
pub(crate) async fn wait_exit(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !process_alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(EXIT_POLL).await;
    }
}

/// Every pid in `/proc`.
fn all_pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Every pid whose real uid is `uid`.
pub(crate) fn pids_of(uid: u32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| process_uids(pid).is_some_and(|(real, _)| real == uid))
        .collect()
}

/// Postgres, PgBouncer or initdb processes of `uid` that belong to `dir`: an argument is a
/// path under it (`postgres -D dir/pgdata`, `pgbouncer -d dir/pgbouncer/pgbouncer.ini`,
/// `initdb -D …`) or the working directory is under it (backends live in the data directory).
/// Only these program names are considered, so an operator's shell in the directory is safe.
pub(crate) fn processes_under(dir: &Path, uid: u32) -> Vec<i32> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|&pid| u32::try_from(pid).is_ok_and(|p| p != me))
        .filter(|&pid| process_uids(pid).is_some_and(|(real, _)| real == uid))
        .filter(|&pid| {
            let Some(args) = cmdline(pid) else {
                return false;
            };
            let Some(arg0) = args.first() else {
                return false;
            };
            let ours = arg0.starts_with("postgres:")
                || matches!(
                    program_name(arg0.split(' ').next().unwrap_or_default()),
                    "postgres" | "postmaster" | "initdb" | "pg_ctl" | "pgbouncer"
                );
            ours && (args.iter().any(|arg| Path::new(arg).starts_with(dir))
                || cwd(pid).is_some_and(|cwd| cwd.starts_with(dir)))
        })
        .filter(|&pid| process_alive(pid))
        .collect()
}

/// SIGKILLs what [`processes_under`] finds and waits (bounded) for it to go: leftovers of a
/// wake service killed in the middle of initdb, or orphaned backends of a killed postmaster.
pub(crate) async fn kill_processes_under(dir: &Path, uid: u32) -> Result<(), ComputeError> {
    let pids = processes_under(dir, uid);
    for &pid in &pids {
        tracing::warn!(pid, dir = %dir.display(), "killing leftover process");
        signal(pid, Signal::SIGKILL);
    }
    for &pid in &pids {
        if !wait_exit(pid, Duration::from_secs(10)).await {
            return Err(ComputeError::Process(format!(
                "process {pid} under {} survived SIGKILL",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Live processes whose real or effective uid is `uid` (not this process).
pub(crate) fn processes_of(uid: u32) -> Vec<i32> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|&pid| u32::try_from(pid).is_ok_and(|p| p != me))
        .filter(|&pid| {
            process_uids(pid).is_some_and(|(real, effective)| real == uid || effective == uid)
        })
        .filter(|&pid| process_alive(pid))
        .collect()
}

/// SIGKILLs every process of `uid` but `spare`, in rounds (a process forking meanwhile is
/// caught by the next one), and waits (bounded) until none is left. Only for a uid that is
/// one compute's own. Returns how many were killed.
pub(crate) async fn kill_all_of(
    uid: u32,
    spare: &[i32],
    timeout: Duration,
) -> Result<usize, ComputeError> {
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return Err(ComputeError::Process(format!(
            "refusing to kill every process of uid {uid}"
        )));
    }
    let deadline = Instant::now() + timeout;
    let mut killed = HashSet::new();
    loop {
        let left: Vec<i32> = processes_of(uid)
            .into_iter()
            .filter(|pid| !spare.contains(pid))
            .collect();
        if left.is_empty() {
            return Ok(killed.len());
        }
        if Instant::now() >= deadline {
            return Err(ComputeError::Process(format!(
                "{} process(es) of uid {uid} survived SIGKILL: {left:?}",
                left.len()
            )));
        }
        for &pid in &left {
            if killed.insert(pid) {
                // The program only: a tenant's command line may hold anything.
                let program = cmdline(pid)
                    .and_then(|args| args.first().map(|arg0| program_name(arg0).to_string()))
                    .unwrap_or_default();
                tracing::info!(
                    pid,
                    uid,
                    program,
                    "killing a leftover process of the compute's user"
                );
            }
            signal(pid, Signal::SIGKILL);
        }
        tokio::time::sleep(EXIT_POLL).await;
    }
}

// --- files ---------------------------------------------------------------------------------

/// Makes sure `uid:gid` can enter `path` and each of its ancestors, adding o+x where it
/// cannot (e.g. a data root under `/root`). Only needed when switching users.
pub(crate) fn ensure_traversable(path: &Path, uid: u32, gid: u32) -> Result<(), ComputeError> {
    let mut current = PathBuf::new();
    for component in path.components() {
        current.push(component);
        let meta = std::fs::metadata(&current)
            .map_err(|e| ComputeError::io(format!("inspecting {}", current.display()), e))?;
        let mode = meta.mode();
        let can_enter = if meta.uid() == uid {
            mode & 0o100 != 0
        } else if meta.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !can_enter {
            tracing::info!(
                path = %current.display(),
                "granting other users traverse (o+x) so the compute's OS user can reach its data"
            );
            std::fs::set_permissions(&current, std::fs::Permissions::from_mode(mode | 0o001))
                .map_err(|e| ComputeError::io(format!("chmod o+x {}", current.display()), e))?;
        }
    }
    Ok(())
}

/// Removes `path` and everything below it (nothing to do when it is gone).
pub(crate) async fn remove_tree(path: PathBuf) -> Result<(), ComputeError> {
    let display = path.display().to_string();
    let result = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&path))
        .await
        .map_err(|e| ComputeError::Process(format!("removing {display}: {e}")))?;
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ComputeError::io(format!("removing {display}"), e)),
    }
}

/// Whether `pid` holds a listening TCP socket (IPv4 or IPv6, any address) on `port`: the
/// listening sockets of `/proc/net/tcp{,6}` matched against the process's descriptors. Unlike
/// a connection attempt, another program on the port does not count.
pub(crate) fn listens_on(pid: i32, port: u16) -> bool {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 || fields[3] != "0A" {
                continue;
            }
            let local_port = fields[1]
                .rsplit_once(':')
                .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
            if local_port == Some(port) {
                if let Ok(inode) = fields[9].parse::<u64>() {
                    inodes.insert(inode);
                }
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|entry| entry.ok()).any(|entry| {
        std::fs::read_link(entry.path())
            .ok()
            .and_then(|link| {
                link.to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            })
            .is_some_and(|inode| inodes.contains(&inode))
    })
}

/// Whether something accepts TCP connections on `host:port` within `timeout`. Wildcard listen
/// addresses are probed on loopback.
pub(crate) async fn tcp_accepts(host: &str, port: u16, timeout: Duration) -> bool {
    let host = match host {
        "0.0.0.0" | "*" => "127.0.0.1",
        "::" => "::1",
        other => other,
    };
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names() {
        assert_eq!(
            program_name("/usr/lib/postgresql/15/bin/postgres"),
            "postgres"
        );
        assert_eq!(program_name("pgbouncer"), "pgbouncer");
    }

    #[test]
    fn own_process_is_alive() {
        let me = i32::try_from(std::process::id()).expect("pid");
        assert!(process_alive(me));
        assert!(cmdline(me).is_some_and(|args| !args.is_empty()));
        assert!(!process_alive(i32::MAX));
    }

    #[tokio::test]
    async fn children_are_reaped() {
        let children = Children::default();
        let child = Command::new("sleep")
            .arg("0.05")
            .kill_on_drop(false)
            .spawn()
            .expect("spawn sleep");
        let pid = i32::try_from(child.id().expect("pid")).expect("pid");
        children.reap(pid, child);
        assert!(children.unreaped(pid));
        assert!(!children.wait_gone(pid, Duration::from_millis(1)).await);
        assert!(children.wait_gone(pid, Duration::from_secs(10)).await);
        assert!(!children.unreaped(pid));
        assert!(
            std::fs::metadata(format!("/proc/{pid}")).is_err(),
            "reaped, not a zombie"
        );
    }

    #[test]
    fn tails() {
        assert_eq!(tail_chars("abcdef", 3), "…def");
        assert_eq!(tail_chars("abc", 3), "abc");
    }
}
