//! What the integration tests share: a temporary directory (a compute root, or a whole
//! wake service's `DATA_DIR`) that takes its processes and OS users with it when dropped,
//! and looks at processes through `/proc`. Each test binary uses part of it.

#![allow(dead_code)]

pub mod service;
pub mod store_postgres;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use wake_service::compute::local::{os_user_prefix, LocalConfig};

/// `RUST_LOG=wake_service=debug` shows what the driver does.
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

// --- a temp directory that takes its processes with it -------------------------------------

pub struct TempRoot {
    pub path: PathBuf,
    /// The prefix of the OS users drivers under this root make (`w<6 hex>`).
    pub user_prefix: String,
}

impl TempRoot {
    pub fn new(tag: &str) -> TempRoot {
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
        let path = std::fs::canonicalize(&path).expect("canonical temp root");
        let user_prefix = os_user_prefix(&path.join("computes"));
        TempRoot { path, user_prefix }
    }

    pub fn config(&self) -> LocalConfig {
        let mut config = LocalConfig::defaults(self.path.join("computes"));
        config.fast = true;
        config
    }

    /// The OS users made for this root (name, uid), from /etc/passwd.
    pub fn os_users(&self) -> Vec<(String, u32)> {
        os_users_with_prefix(&self.user_prefix)
    }
}

/// Users whose name starts with `prefix` and whose comment says the wake service made them.
pub fn os_users_with_prefix(prefix: &str) -> Vec<(String, u32)> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let (name, uid, comment) = (fields.first()?, fields.get(2)?, fields.get(4)?);
            (name.starts_with(prefix) && comment.starts_with("wake-service "))
                .then(|| Some((name.to_string(), uid.parse().ok()?)))
                .flatten()
        })
        .collect()
}

/// The name of the user owning `path` (None for a uid without a passwd entry).
pub fn owner_name(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(path).ok()?.uid();
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
}

impl Drop for TempRoot {
    /// Immediate shutdown of every cluster (as the owner of its data directory), SIGTERM to
    /// every PgBouncer, SIGKILL to anything left (processes under the directory, and every
    /// process of the OS users made for it), then the directory and those users go.
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
                    let owner = owner_name(&pgdata).unwrap_or_else(|| "nobody".into());
                    cmd.args(["-u", &owner, "--", pg_ctl]);
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
        let users = self.os_users();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut left: Vec<i32> = processes_under(&self.path)
                .into_iter()
                .map(|(pid, _)| pid)
                .collect();
            for (_, uid) in &users {
                left.extend(processes_of(*uid));
            }
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in left {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(&self.path);
        for (name, _) in users {
            for _ in 0..50 {
                let done = std::process::Command::new("userdel")
                    .arg(&name)
                    .output()
                    .is_ok_and(|out| out.status.success());
                if done {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = std::process::Command::new("groupdel").arg(&name).output();
        }
    }
}

// --- looking at processes -------------------------------------------------------------------

pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect(),
    )
}

pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X')
    })
}

pub fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live processes (other than this test) with an argument or working directory under `dir`.
pub fn processes_under(dir: &Path) -> Vec<(i32, String)> {
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

/// The real and effective uid of `pid`.
pub fn uids(pid: i32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|id| id.parse::<u32>().ok());
    Some((ids.next()??, ids.next()??))
}

/// Live processes of `uid` (real or effective).
pub fn processes_of(uid: u32) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|&pid| alive(pid))
        .filter(|&pid| uids(pid).is_some_and(|(real, effective)| real == uid || effective == uid))
        .collect()
}

pub fn bouncer_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("pgbouncer/pgbouncer.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&pid| alive(pid))
}
