//! A local compute's size in effect: the cgroup limits of its processes, the Postgres
//! settings file `wake.size.conf` (reloaded live; the restart-only settings wait for the next
//! start) and PgBouncer's pool sizes in `pool.ini` (`%include`d by its ini, `RELOAD`ed).
//!
//! What the running postmaster was started with is remembered per endpoint: set when this
//! driver spawns it, asked once from Postgres when it adopts one (a restarted wake service).
//! Nothing of it is read back from files a compute's user can write.

use std::sync::MutexGuard;

use nix::sys::signal::Signal;
use wake_api::admin::{ComputeSize, SizeSetting};

use super::pgbouncer;
use super::postgres::Started;
use super::{cgroup, process, Compute, LocalDriver};
use crate::autoscale::sizing::{Apply, CpuQuota, Cu, Size};
use crate::compute::{ComputeError, ComputeLoad, ComputeSpec};

/// The file with PgBouncer's pool sizes, in its directory.
pub(super) const POOL_INI: &str = "pool.ini";

/// What a running postmaster took at its start (`postmaster` context settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RestartSettings {
    pub shared_buffers: u64,
    pub max_connections: u32,
}

impl RestartSettings {
    fn of(size: &Size) -> RestartSettings {
        RestartSettings {
            shared_buffers: size.postgres.shared_buffers,
            max_connections: size.postgres.max_connections,
        }
    }
}

/// One running compute's size as applied.
#[derive(Clone, Copy, Debug)]
pub(super) struct Running {
    pub postmaster: i32,
    pub restart: RestartSettings,
    pub cu: Cu,
}

/// `wake.size.conf` for `size`.
pub(super) fn size_conf(size: &Size) -> String {
    let mut conf = format!(
        "# Written by the wake service (local driver): the settings of {} CU.\n",
        size.cu
    );
    for setting in size.postgres.settings() {
        conf.push_str(&format!("{} = '{}'\n", setting.name, setting.value));
    }
    conf
}

/// `pool.ini` for `size`.
pub(super) fn pool_ini(size: &Size) -> String {
    format!(
        "; Written by the wake service (local driver): the pools of {} CU.\n\
         default_pool_size = {}\n\
         max_db_connections = {}\n",
        size.cu, size.pooler.default_pool_size, size.pooler.max_db_connections
    )
}

/// The memory limit for `size` while the postmaster holds shared buffers sized for
/// `running`: a bigger postmaster's shared memory stays mapped until its next restart, so the
/// excess is added on top rather than letting the OOM killer find it. Never more than
/// `ceiling` (3/4 of the machine's memory, [`memory_ceiling`]): a size larger than the
/// machine must not let one tenant take the memory the host and the other tenants need.
fn memory_limit(size: &Size, running: RestartSettings, ceiling: u64) -> u64 {
    let wanted = size.memory_bytes
        + running
            .shared_buffers
            .saturating_sub(size.postgres.shared_buffers);
    wanted.min(ceiling)
}

/// 3/4 of the machine's memory (`MemTotal` in /proc/meminfo), the most one compute may be
/// given; no ceiling when it cannot be read.
pub(super) fn memory_ceiling() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(u64::MAX, |kib| kib * 1024 / 4 * 3)
}

impl LocalDriver {
    pub(super) fn sizes(&self) -> MutexGuard<'_, std::collections::HashMap<String, Running>> {
        self.sizes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The size's files and limits: before a start (`starting`: a postmaster spawned now
    /// reads them) or for a resize. Returns whether the Postgres settings file and the pool
    /// file changed (a running postmaster or PgBouncer then reloads).
    pub(super) fn write_size(
        &self,
        spec: &ComputeSpec,
        compute: &Compute,
        starting: bool,
    ) -> Result<(bool, bool), ComputeError> {
        let size = spec.cu.size();
        let running = self
            .sizes()
            .get(&spec.endpoint)
            .filter(|r| process::process_alive(r.postmaster))
            .map_or(RestartSettings::of(&size), |r| r.restart);
        // Limits first: a limit the kernel refuses (memory in use above a smaller one) leaves
        // the files as they were, and the next attempt starts from a consistent compute. A
        // start runs without the CPU quota (see `settle_size`); a running compute keeps it.
        let cpu = (!starting).then_some(size.cpu);
        self.limit(spec, &size, cpu, running)?;
        let conf_changed = self
            .setup
            .compute_cluster(compute)
            .write_size_conf(&size_conf(&size))?;
        let files = compute
            .dir
            .ensure_subdir(pgbouncer::DIR, 0o700, compute.identity.owner())
            .map_err(super::io_error(&compute.dir))?;
        let ini = pool_ini(&size);
        let pool_changed = !files.file_is(POOL_INI, ini.as_bytes());
        if pool_changed {
            files.write(POOL_INI, ini.as_bytes(), 0o600, compute.identity.owner())?;
        }
        Ok((conf_changed, pool_changed))
    }

    fn limit(
        &self,
        spec: &ComputeSpec,
        size: &Size,
        cpu: Option<CpuQuota>,
        running: RestartSettings,
    ) -> Result<(), ComputeError> {
        self.cgroups
            .limit(
                &spec.endpoint,
                cpu,
                memory_limit(size, running, self.memory_ceiling),
            )
            .map_err(|e| ComputeError::io(format!("limiting compute {}", spec.endpoint), e))
    }

    /// After a start: the processes join the compute's group, an adopted postmaster reloads
    /// a changed settings file, and what it runs with is remembered.
    pub(super) async fn settle_size(
        &self,
        spec: &ComputeSpec,
        started: Started,
        bouncer: i32,
        conf_changed: bool,
    ) -> Result<(), ComputeError> {
        // A fresh postmaster joined at its spawn; an adopted one (and what it forked) and
        // PgBouncer join once. Each move is a few writes the kernel makes slow (it waits for
        // RCU), so nothing already in place is moved again.
        let mut pids = Vec::new();
        if !self.cgroups.holds(&spec.endpoint, started.pid) {
            pids.push(started.pid);
            pids.extend(cgroup::children_of(started.pid));
        }
        if !self.cgroups.holds(&spec.endpoint, bouncer) {
            pids.push(bouncer);
        }
        self.confine(spec, &pids)?;
        let size = spec.cu.size();
        let known = self
            .sizes()
            .get(&spec.endpoint)
            .filter(|r| r.postmaster == started.pid)
            .map(|r| r.restart);
        let restart = match known {
            _ if started.fresh => RestartSettings::of(&size),
            Some(restart) => restart,
            None => self.ask_restart_settings(spec).await?,
        };
        if !started.fresh && conf_changed {
            process::signal(started.pid, Signal::SIGHUP);
        }
        self.sizes().insert(
            spec.endpoint.clone(),
            Running {
                postmaster: started.pid,
                restart,
                cu: spec.cu,
            },
        );
        // The quota from the moment the compute accepts connections: Postgres' own start
        // (recovery, forking its workers) is the resume path, and it should take as long as a
        // bare postmaster's (`resume_timing` in tests/local_driver.rs prints both).
        self.limit(spec, &size, Some(size.cpu), restart)?;
        Ok(())
    }

    /// Moves `pids` into the compute's group (nothing without cgroups).
    pub(super) fn confine(&self, spec: &ComputeSpec, pids: &[i32]) -> Result<(), ComputeError> {
        if !self.cgroups.enforced() || pids.is_empty() {
            return Ok(());
        }
        self.cgroups
            .attach(&spec.endpoint, pids)
            .map_err(|e| ComputeError::io(format!("confining compute {}", spec.endpoint), e))
    }

    /// The restart-only settings of an adopted postmaster, from Postgres itself.
    async fn ask_restart_settings(
        &self,
        spec: &ComputeSpec,
    ) -> Result<RestartSettings, ComputeError> {
        let client = crate::compute::ComputeDriver::admin(self, spec).await?;
        let row = client
            .query_one(
                "SELECT pg_size_bytes(current_setting('shared_buffers'))::int8,
                        current_setting('max_connections')::int4",
                &[],
            )
            .await?;
        let shared: i64 = row.try_get(0)?;
        let max: i32 = row.try_get(1)?;
        Ok(RestartSettings {
            shared_buffers: u64::try_from(shared).unwrap_or(0),
            max_connections: u32::try_from(max).unwrap_or(0),
        })
    }

    /// [`crate::compute::ComputeDriver::resize`] with the endpoint's lock held and its
    /// compute open.
    pub(super) async fn resize_running(
        &self,
        spec: &ComputeSpec,
        compute: &Compute,
    ) -> Result<ComputeSize, ComputeError> {
        let running = self
            .sizes()
            .get(&spec.endpoint)
            .copied()
            .filter(|r| process::process_alive(r.postmaster))
            .ok_or_else(|| {
                ComputeError::Process(format!(
                    "compute {} is not running: nothing to resize",
                    spec.endpoint
                ))
            })?;
        let size = spec.cu.size();
        let (conf_changed, pool_changed) = self.write_size(spec, compute, false)?;
        if conf_changed {
            process::signal(running.postmaster, Signal::SIGHUP);
        }
        if pool_changed {
            if let Some(pid) = self.setup.bouncer(&compute.identity, &compute.dir).pid() {
                self.pooler_admin(spec, compute, pid)
                    .await?
                    .reload()
                    .await?;
            }
        }
        let applied = Running {
            cu: spec.cu,
            ..running
        };
        self.sizes().insert(spec.endpoint.clone(), applied);
        Ok(self.report(&size, applied.restart))
    }

    /// The size as applied, for the API.
    pub(super) fn size_of(&self, spec: &ComputeSpec) -> Option<ComputeSize> {
        let running = self.sizes().get(&spec.endpoint).copied()?;
        Some(self.report(&running.cu.size(), running.restart))
    }

    fn report(&self, size: &Size, running: RestartSettings) -> ComputeSize {
        let runs = RestartSettings::of(size);
        let settings = size
            .postgres
            .settings()
            .into_iter()
            .map(|s| {
                let applied = match (s.apply, s.name) {
                    (Apply::Restart, "shared_buffers") if running != runs => {
                        Some(format!("{}kB", running.shared_buffers / 1024))
                    }
                    (Apply::Restart, "max_connections") if running != runs => {
                        Some(running.max_connections.to_string())
                    }
                    _ => None,
                };
                match applied {
                    Some(value) if value != s.value => SizeSetting {
                        name: s.name.to_string(),
                        value,
                        pending: Some(s.value),
                    },
                    _ => SizeSetting {
                        name: s.name.to_string(),
                        value: s.value,
                        pending: None,
                    },
                }
            })
            .collect();
        ComputeSize {
            limits: self.cgroups.describe(),
            cpu_max: size.cpu.cpu_max(),
            memory_limit_bytes: memory_limit(size, running, self.memory_ceiling),
            settings,
            pooler_pool_size: size.pooler.default_pool_size,
            gateway_pool_max_conns: size.gateway_pool_max_conns,
        }
    }

    /// CPU and memory from the compute's group (or `/proc` without cgroups).
    pub(super) fn usage_of(&self, spec: &ComputeSpec) -> ComputeLoad {
        let usage = self.cgroups.usage(&spec.endpoint).or_else(|| {
            let running = self.sizes().get(&spec.endpoint).copied()?;
            Some(cgroup::proc_usage(running.postmaster))
        });
        ComputeLoad {
            cpu_seconds: usage.and_then(|u| u.cpu_seconds),
            memory_bytes: usage.and_then(|u| u.memory_bytes),
            pooler: None,
        }
    }

    /// Forgets a compute that stopped (its next start applies everything afresh).
    pub(super) fn forget_size(&self, endpoint: &str) {
        self.sizes().remove(endpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_follow_the_size() {
        let size = Cu::from_quarters(1).expect("0.25 CU").size();
        let conf = size_conf(&size);
        assert!(conf.contains("max_connections = '104'"), "{conf}");
        assert!(conf.contains("shared_buffers = '131072kB'"), "{conf}");
        let ini = pool_ini(&size);
        assert!(ini.contains("default_pool_size = 88\n"), "{ini}");
        assert!(ini.contains("max_db_connections = 88\n"), "{ini}");
    }

    #[test]
    fn a_bigger_postmasters_shared_buffers_stay_inside_the_limit() {
        let small = Cu::from_quarters(1).expect("0.25 CU").size();
        let big = Cu::from_quarters(8).expect("2 CU").size();
        let none = u64::MAX;
        assert_eq!(
            memory_limit(&small, RestartSettings::of(&small), none),
            small.memory_bytes
        );
        assert_eq!(
            memory_limit(&small, RestartSettings::of(&big), none),
            small.memory_bytes + big.postgres.shared_buffers - small.postgres.shared_buffers
        );
        assert_eq!(
            memory_limit(&big, RestartSettings::of(&small), none),
            big.memory_bytes
        );
        // A size beyond the machine gets the machine's ceiling, whatever else.
        let machine = 3 << 30;
        assert_eq!(
            memory_limit(&big, RestartSettings::of(&big), machine),
            machine
        );
        let tiny = 1 << 30;
        assert_eq!(memory_limit(&small, RestartSettings::of(&big), tiny), tiny);
        let ceiling = memory_ceiling();
        assert!(ceiling > 1 << 30 && ceiling < u64::MAX, "{ceiling}");
    }
}
