//! A compute's size on the machine: its processes in a cgroup of their own with a CPU quota
//! and a memory limit, and how much CPU and memory they use (the autoscaler's signals).
//!
//! Where the groups go: under the wake service's own group in each hierarchy (so whatever
//! confines the wake service, a systemd slice or a container, confines its computes too), in
//! `wake-<instance tag>/<endpoint>`. cgroup v1 is used when its `cpu`, `cpuacct` and `memory`
//! controllers are mounted (then they are not available to v2 on the same machine); else v2,
//! which needs the wake service's group to be able to hand `cpu` and `memory` to child groups
//! (a delegated group: `cgroup.subtree_control` accepts `+cpu +memory` only in a group without
//! processes of its own, so the wake service must run in a leaf below it, as systemd's
//! `Delegate=yes` arranges). When neither works the driver runs computes without limits, says
//! why once in its log and in every endpoint's status, and reads usage from `/proc` instead.
//!
//! Processes join a group by pid after they start (the postmaster first, then every child it
//! already forked; backends forked later inherit the group). Nothing here is readable or
//! writable by a compute's user: the groups belong to root.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::autoscale::sizing::{CpuQuota, CPU_PERIOD_US};

/// The hierarchy the computes' groups live in, found at startup.
#[derive(Debug)]
pub(crate) enum Cgroups {
    /// One directory per controller (`cpu` and `cpuacct` may be the same mount).
    V1 {
        cpu: PathBuf,
        cpuacct: PathBuf,
        memory: PathBuf,
    },
    V2 {
        base: PathBuf,
    },
    /// No limits can be set; the reason is for operators and the API.
    Unavailable(String),
}

/// CPU time and memory a compute's processes use.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Usage {
    /// CPU time since the group (or the postmaster) began, in seconds.
    pub cpu_seconds: Option<f64>,
    /// Memory that reclaim cannot take back: anonymous memory plus shared memory (Postgres'
    /// shared buffers), without the page cache.
    pub memory_bytes: Option<u64>,
}

impl Cgroups {
    /// Finds a writable hierarchy for the computes of the wake service tagged `tag`, creating
    /// its base groups.
    pub fn detect(tag: &str) -> Cgroups {
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let base = format!("wake-{tag}");
        let v1 = v1_paths(&mounts, &own, &base).and_then(|paths| {
            for dir in [&paths.0, &paths.1, &paths.2] {
                fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            Ok(Cgroups::V1 {
                cpu: paths.0,
                cpuacct: paths.1,
                memory: paths.2,
            })
        });
        let v1_error = match v1 {
            Ok(found) => return found,
            Err(e) => e,
        };
        match v2_base(&mounts, &own, &base) {
            Ok(base) => Cgroups::V2 { base },
            Err(v2_error) => Cgroups::Unavailable(format!(
                "no writable cgroup hierarchy (v1: {v1_error}; v2: {v2_error})"
            )),
        }
    }

    /// `v1`, `v2` or why limits are not enforced.
    pub fn describe(&self) -> String {
        match self {
            Cgroups::V1 { .. } => "cgroup v1".to_string(),
            Cgroups::V2 { .. } => "cgroup v2".to_string(),
            Cgroups::Unavailable(reason) => format!("not enforced: {reason}"),
        }
    }

    pub fn enforced(&self) -> bool {
        !matches!(self, Cgroups::Unavailable(_))
    }

    /// The directories of `endpoint`'s group, one per hierarchy in use.
    fn dirs(&self, endpoint: &str) -> Vec<PathBuf> {
        match self {
            Cgroups::V1 {
                cpu,
                cpuacct,
                memory,
            } => {
                let mut dirs = vec![cpu.join(endpoint), memory.join(endpoint)];
                if cpuacct != cpu {
                    dirs.push(cpuacct.join(endpoint));
                }
                dirs
            }
            Cgroups::V2 { base } => vec![base.join(endpoint)],
            Cgroups::Unavailable(_) => Vec::new(),
        }
    }

    /// Creates `endpoint`'s group (idempotent) and sets its limits; `cpu` None lifts the CPU
    /// quota (a start: see [`super::size`]). A memory limit below what the group uses now is
    /// refused by the kernel when reclaim cannot make room: the error says so and the old
    /// limit stays.
    pub fn limit(&self, endpoint: &str, cpu: Option<CpuQuota>, memory: u64) -> io::Result<()> {
        for dir in self.dirs(endpoint) {
            fs::create_dir_all(&dir)?;
        }
        match self {
            Cgroups::V1 {
                cpu: cpu_root,
                memory: memory_root,
                ..
            } => {
                // Memory first: the one the kernel may refuse, and then nothing changed.
                write(
                    &memory_root.join(endpoint),
                    "memory.limit_in_bytes",
                    &memory.to_string(),
                )?;
                let cpu_dir = cpu_root.join(endpoint);
                match cpu {
                    Some(cpu) => {
                        write(&cpu_dir, "cpu.cfs_period_us", &cpu.period_us.to_string())?;
                        write(&cpu_dir, "cpu.cfs_quota_us", &cpu.quota_us.to_string())
                    }
                    None => write(&cpu_dir, "cpu.cfs_quota_us", "-1"),
                }
            }
            Cgroups::V2 { base } => {
                let dir = base.join(endpoint);
                write(&dir, "memory.max", &memory.to_string())?;
                let max = cpu.map_or_else(|| format!("max {CPU_PERIOD_US}"), CpuQuota::cpu_max);
                write(&dir, "cpu.max", &max)
            }
            Cgroups::Unavailable(_) => Ok(()),
        }
    }

    /// Moves `pids` into `endpoint`'s group, in order; a pid gone meanwhile is skipped.
    pub fn attach(&self, endpoint: &str, pids: &[i32]) -> io::Result<()> {
        for dir in self.dirs(endpoint) {
            let procs = dir.join("cgroup.procs");
            for &pid in pids {
                match fs::write(&procs, pid.to_string()) {
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("moving {pid} into {}: {e}", procs.display()),
                        ))
                    }
                    Ok(()) => {}
                }
            }
        }
        Ok(())
    }

    /// Whether `pid` is in `endpoint`'s group in every hierarchy in use (one read of
    /// `/proc/<pid>/cgroup`; false without cgroups or when the process is gone).
    pub fn holds(&self, endpoint: &str, pid: i32) -> bool {
        let dirs = self.dirs(endpoint);
        let Some(suffix) = dirs.first().and_then(|dir| {
            let mut parts = dir.iter().rev();
            let (leaf, base) = (parts.next()?, parts.next()?);
            Some(format!("/{}/{}", base.to_str()?, leaf.to_str()?))
        }) else {
            return false;
        };
        let Ok(groups) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return false;
        };
        groups.lines().filter(|l| l.ends_with(&suffix)).count() >= dirs.len()
    }

    /// What `endpoint`'s group uses; `None` without cgroups.
    pub fn usage(&self, endpoint: &str) -> Option<Usage> {
        match self {
            Cgroups::V1 {
                cpuacct, memory, ..
            } => {
                let cpu = read_number(&cpuacct.join(endpoint).join("cpuacct.usage"))
                    .map(|ns| ns as f64 / 1e9);
                let stat = fs::read_to_string(memory.join(endpoint).join("memory.stat")).ok();
                let memory = stat.and_then(|s| {
                    Some(stat_field(&s, "total_rss")? + stat_field(&s, "total_shmem")?)
                });
                Some(Usage {
                    cpu_seconds: cpu,
                    memory_bytes: memory,
                })
            }
            Cgroups::V2 { base } => {
                let dir = base.join(endpoint);
                let cpu = fs::read_to_string(dir.join("cpu.stat"))
                    .ok()
                    .and_then(|s| stat_field(&s, "usage_usec"))
                    .map(|us| us as f64 / 1e6);
                let stat = fs::read_to_string(dir.join("memory.stat")).ok();
                let memory =
                    stat.and_then(|s| Some(stat_field(&s, "anon")? + stat_field(&s, "shmem")?));
                Some(Usage {
                    cpu_seconds: cpu,
                    memory_bytes: memory,
                })
            }
            Cgroups::Unavailable(_) => None,
        }
    }

    /// Removes `endpoint`'s group once its processes are gone (destroy). A group still busy
    /// stays (logged); nothing else depends on it.
    pub fn remove(&self, endpoint: &str) {
        for dir in self.dirs(endpoint) {
            match fs::remove_dir(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cgroup not removed");
                }
                _ => {}
            }
        }
    }
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    fs::write(dir.join(file), value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value} to {}: {e}", dir.join(file).display()),
        )
    })
}

fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `name value` lines (`memory.stat`, `cpu.stat`).
fn stat_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

/// The wake service's own group for `controller` in `/proc/self/cgroup` (v1 lines
/// `N:cpu,cpuacct:/path`, v2 `0::/path`).
fn own_path(own: &str, controller: Option<&str>) -> Option<String> {
    own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        let matches = match controller {
            Some(c) => controllers.split(',').any(|x| x == c),
            None => controllers.is_empty(),
        };
        matches.then(|| path.to_string())
    })
}

/// Mount points of `fstype` with their super options (`/proc/self/mountinfo`: fields after
/// ` - ` are the type, the source and the super options).
fn mounts_of<'a>(mounts: &'a str, fstype: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
    mounts.lines().filter_map(move |line| {
        let (before, after) = line.split_once(" - ")?;
        let mut tail = after.split(' ');
        if tail.next()? != fstype {
            return None;
        }
        let options = tail.nth(1).unwrap_or_default();
        let point = before.split(' ').nth(4)?;
        Some((point, options))
    })
}

/// The v1 directories (cpu, cpuacct, memory) for `base` under the wake service's own groups.
fn v1_paths(mounts: &str, own: &str, base: &str) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let find = |controller: &str| -> Result<PathBuf, String> {
        let (point, _) = mounts_of(mounts, "cgroup")
            .find(|(_, options)| options.split(',').any(|o| o == controller))
            .ok_or_else(|| format!("the {controller} controller is not mounted"))?;
        let own = own_path(own, Some(controller))
            .ok_or_else(|| format!("no {controller} group in /proc/self/cgroup"))?;
        Ok(Path::new(point)
            .join(own.trim_start_matches('/'))
            .join(base))
    };
    Ok((find("cpu")?, find("cpuacct")?, find("memory")?))
}

/// The v2 base group, with `cpu` and `memory` handed down to its children.
fn v2_base(mounts: &str, own: &str, base: &str) -> Result<PathBuf, String> {
    let (point, _) = mounts_of(mounts, "cgroup2")
        .next()
        .ok_or("no cgroup2 mount")?;
    let own = own_path(own, None).ok_or("no v2 group in /proc/self/cgroup")?;
    let parent = Path::new(point).join(own.trim_start_matches('/'));
    let controllers = fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
    for needed in ["cpu", "memory"] {
        if !controllers.split_whitespace().any(|c| c == needed) {
            return Err(format!(
                "the {needed} controller is not available in {}",
                parent.display()
            ));
        }
    }
    let enable = |dir: &Path| write(dir, "cgroup.subtree_control", "+cpu +memory");
    enable(&parent).map_err(|e| e.to_string())?;
    let base = parent.join(base);
    fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    enable(&base).map_err(|e| e.to_string())?;
    Ok(base)
}

/// CPU time and memory of a postmaster and its live children from `/proc`, for machines
/// without a usable cgroup: CPU is the postmaster's own time plus what it reaped (`cutime`,
/// `cstime`: exited backends) plus its live children's; memory is the anonymous memory of
/// all of them plus the largest shared-memory figure (shared buffers, mapped by each).
pub(crate) fn proc_usage(postmaster: i32) -> Usage {
    let tick = 100.0; // USER_HZ: 100 on every Linux ABI Rust supports.
    let mut cpu = None;
    let mut anon = 0u64;
    let mut shmem = 0u64;
    let mut pids = vec![postmaster];
    pids.extend(children_of(postmaster));
    for pid in pids {
        if let Some(fields) = stat_fields(pid) {
            let ticks: u64 = if pid == postmaster {
                fields[10..14].iter().sum()
            } else {
                fields[10..12].iter().sum()
            };
            *cpu.get_or_insert(0.0) += ticks as f64 / tick;
        }
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kb = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        anon += kb("RssAnon:");
        shmem = shmem.max(kb("RssShmem:"));
    }
    Usage {
        cpu_seconds: cpu,
        memory_bytes: cpu.map(|_| anon + shmem),
    }
}

/// The numeric fields of `/proc/<pid>/stat` after the state (field 4 on): index 0 is the
/// ppid, 10 utime, 11 stime, 12 cutime, 13 cstime.
fn stat_fields(pid: i32) -> Option<Vec<u64>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    (fields.len() > 14).then_some(fields)
}

/// Live children of `pid` (single-threaded, as a postmaster is): the kernel's own list when it
/// has one (`CONFIG_PROC_CHILDREN`, one file read on the resume path), else a scan of `/proc`.
pub(crate) fn children_of(pid: i32) -> Vec<i32> {
    if let Ok(list) = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        return list
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .collect();
    }
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&child| stat_fields(child).is_some_and(|f| i32::try_from(f[0]).ok() == Some(pid)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu
31 25 0:27 / /sys/fs/cgroup/cpuacct rw,nosuid - cgroup cgroup rw,cpuacct
32 25 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
33 25 0:29 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
";
    const OWN: &str = "4:memory:/jail/abc\n2:cpuacct:/\n1:cpu:/\n0::/svc\n";

    #[test]
    fn v1_paths_nest_under_the_services_own_groups() {
        let (cpu, cpuacct, memory) = v1_paths(MOUNTS, OWN, "wake-x").expect("found");
        assert_eq!(cpu, Path::new("/sys/fs/cgroup/cpu/wake-x"));
        assert_eq!(cpuacct, Path::new("/sys/fs/cgroup/cpuacct/wake-x"));
        assert_eq!(memory, Path::new("/sys/fs/cgroup/memory/jail/abc/wake-x"));
        let combined = "30 25 0:26 / /c rw - cgroup cgroup rw,cpu,cpuacct\n\
                        32 25 0:28 / /m rw - cgroup cgroup rw,memory\n";
        let own = "3:memory:/\n1:cpu,cpuacct:/a\n";
        let (cpu, cpuacct, _) = v1_paths(combined, own, "w").expect("found");
        assert_eq!(cpu, cpuacct);
        assert_eq!(cpu, Path::new("/c/a/w"));
    }

    #[test]
    fn v1_needs_every_controller() {
        let only_cpu = "30 25 0:26 / /c rw - cgroup cgroup rw,cpu\n";
        let error = v1_paths(only_cpu, OWN, "w").expect_err("cpuacct missing");
        assert!(error.contains("cpuacct"), "{error}");
    }

    #[test]
    fn stat_fields_are_read_by_name() {
        let stat = "cache 10\nrss 5\nshmem 3\ntotal_rss 50\ntotal_shmem 30\n";
        assert_eq!(stat_field(stat, "total_rss"), Some(50));
        assert_eq!(stat_field(stat, "rss"), Some(5));
        assert_eq!(stat_field(stat, "mapped_file"), None);
        assert_eq!(own_path(OWN, None).as_deref(), Some("/svc"));
        assert_eq!(own_path(OWN, Some("memory")).as_deref(), Some("/jail/abc"));
    }

    #[test]
    fn children_are_listed() {
        // A single-threaded parent (as a postmaster is) with one child.
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & wait"])
            .spawn()
            .expect("sh");
        let pid = i32::try_from(shell.id()).expect("pid fits");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // Until the child has run `sleep`: just after the fork it is still a copy of `sh`.
        let cmdline = |child: i32| fs::read_to_string(format!("/proc/{child}/cmdline"));
        let children = loop {
            let children = children_of(pid);
            let execed = children
                .first()
                .is_some_and(|&c| cmdline(c).is_ok_and(|args| args.starts_with("sleep")));
            if execed || std::time::Instant::now() > deadline {
                break children;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(children.len(), 1, "{children:?}");
        let args = cmdline(children[0]).expect("cmdline");
        assert!(args.starts_with("sleep"), "{args:?}");
        for child in children {
            let _ = std::process::Command::new("kill")
                .arg(child.to_string())
                .status();
        }
        shell.wait().expect("reaped");
    }

    #[test]
    fn proc_usage_reads_this_process() {
        let me = i32::try_from(std::process::id()).expect("pid fits");
        let usage = proc_usage(me);
        assert!(usage.cpu_seconds.is_some_and(|c| c >= 0.0));
        assert!(usage.memory_bytes.is_some_and(|m| m > 0));
    }
}
