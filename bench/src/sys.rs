//! What the loadgen reads from the machine: its own file limit (raised at start), the
//! gateway's resident memory (now and at its peak), CPU time and file limit (from `/proc`),
//! and the facts a report starts with (CPU, cores, kernel, date, git commit).

use std::fs;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Context};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Raises this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit.
pub fn raise_nofile() -> anyhow::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(RLIMIT_NOFILE)")?;
    }
    Ok(hard)
}

/// VmRSS of a process, in KiB.
pub fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// VmHWM of a process (the most it was ever resident), in KiB.
pub fn vm_hwm_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

/// CPU time a process has used (user + system, all threads), from `/proc/<pid>/stat`
/// (`self` for this one).
pub fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    /// `/proc` counts in USER_HZ, 100 on every Linux architecture this runs on.
    const TICKS_PER_SECOND: u64 = 100;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat(5); `fields` starts at field 3.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok(Duration::from_millis(
            (user + system) * 1000 / TICKS_PER_SECOND,
        )),
        _ => Err(anyhow!("no CPU times in /proc/{pid}/stat")),
    }
}

/// The soft "Max open files" limit of a process (`/proc/<pid>/limits`).
pub fn nofile_of(pid: u32) -> anyhow::Result<u64> {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits"))
        .with_context(|| format!("reading /proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .ok_or_else(|| anyhow!("no open-files limit in /proc/{pid}/limits"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()
        .unwrap_or("unlimited");
    Ok(soft.parse().unwrap_or(u64::MAX))
}

/// The machine and the run a report describes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub date_utc: String,
    pub git_commit: String,
    /// `quick` or `full`.
    pub mode: String,
    /// How the gateway and the loadgen were placed on cores (from scripts/bench.sh).
    pub pinning: String,
}

impl Machine {
    pub fn detect(quick: bool, pinning: String) -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let cores = cpuinfo
            .lines()
            .filter(|line| line.starts_with("processor"))
            .count();
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let date_utc = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpu_model,
            cores,
            kernel,
            date_utc,
            git_commit: git_commit(),
            mode: if quick { "quick" } else { "full" }.into(),
            pinning,
        }
    }
}

/// `git rev-parse HEAD`, with `-dirty` when tracked files differ from it.
fn git_commit() -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(commit) => match run(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{commit}-dirty"),
            _ => commit,
        },
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_its_own_cpu_time_and_memory() {
        assert!(super::cpu_time("self").is_ok());
        let pid = std::process::id();
        let (rss, hwm) = (super::vm_rss_kib(pid), super::vm_hwm_kib(pid));
        assert!(matches!((rss, hwm), (Ok(rss), Ok(hwm)) if rss > 0 && hwm >= rss));
    }
}
