//! What the loadgen reads from the machine: its own file limit (raised at start), the
//! gateway's resident memory and file limit (from `/proc`), and the facts a report starts with
//! (CPU, cores, kernel, date, git commit).

use std::fs;
use std::process::Command;

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
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
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
