//! What a compute size means: a validated CU value ([`Cu`], [`CuRange`]) and everything derived
//! from it ([`Size`]): the CPU quota and memory limit for the compute's cgroup, the Postgres
//! settings (and which of them need a restart), and PgBouncer's pool sizes.
//!
//! 1 CU = 1 vCPU and 4 GiB of memory, in steps of 0.25 CU. All of this is pure arithmetic;
//! applying it (cgroup files, `postgresql.conf`, `pgbouncer.ini` + `RELOAD`) is the driver's job.

use std::fmt;

/// Bytes of memory per 0.25 CU step (1 CU = 4 GiB).
pub const BYTES_PER_QUARTER: u64 = 1 << 30;

/// The CFS period the CPU quota is expressed in: 100 ms, the kernel's default
/// `cpu.cfs_period_us` (and the second field of cgroup v2's default `cpu.max`).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The largest ceiling a configuration may set: 56 CU, Neon's largest (fixed) compute size
/// (control-plane.md Part 2 §2.1). Keeps every derived figure far from integer overflow.
pub const MAX_CEILING: Cu = Cu(56 * 4);

/// The ceiling when none is configured: 16 CU, the top of Neon's autoscaling range
/// (control-plane.md Part 2 §2.1: "range 0.25–16 CU autoscaling").
pub const DEFAULT_CEILING: Cu = Cu(16 * 4);

/// Slots Postgres keeps for superusers (`superuser_reserved_connections`). Postgres' default is
/// 3 and Neon reserves 7 (§5.4) for its own agents; ours are the wake service's admin sessions
/// (which connect as the superuser) and an operator's `psql`, for which the default is enough.
pub const SUPERUSER_RESERVED_CONNECTIONS: u32 = 3;

/// Connections the wake service itself may hold on a compute outside PgBouncer (role and
/// database management, the autoscaler's sampling query): kept out of PgBouncer's share so a
/// full pool never starves the control plane.
pub const WAKE_SERVICE_CONNECTIONS: u32 = 2;

/// PgBouncer's share of `max_connections`, in tenths: Neon sizes its pools at 90% of
/// `max_connections` (§5.4, and Neon's connection-pooling docs). The other 10% is left for
/// direct connections (the gateway's direct path, `psql`).
const POOLER_SHARE_TENTHS: u32 = 9;

/// Neon's `max_connections` follows RDS' `DBInstanceClassMemory / 9531392` with 4 GB
/// (4·10⁹ bytes) per CU: `floor(CU × 4e9 / 9531392)` reproduces every row of Neon's table
/// (control-plane.md Part 2 §5.4; neon.com/docs/connect/connection-pooling, which also lists
/// 3 CU 1258, 5 CU 2098, 6 CU 2517, 7 CU 2937).
const NEON_BYTES_PER_QUARTER: u64 = 1_000_000_000;
const NEON_BYTES_PER_CONNECTION: u64 = 9_531_392;
/// "≥9 CU capped 4000" (§5.4): from 9 CU on, `max_connections` is 4000 whatever the memory.
const MAX_CONNECTIONS_CAP: u32 = 4000;
const MAX_CONNECTIONS_CAP_FROM: Cu = Cu(9 * 4);

/// Postgres' own defaults, used as floors so a small compute is never tuned below them.
const PG_DEFAULT_WORK_MEM: u64 = 4 << 20;
const PG_DEFAULT_MAINTENANCE_WORK_MEM: u64 = 64 << 20;
/// VACUUM in Postgres 15 uses at most 1 GB for dead tuple ids, and every autovacuum worker may
/// take `maintenance_work_mem`: more than 1 GiB buys little and risks much.
const MAINTENANCE_WORK_MEM_CAP: u64 = 1 << 30;

/// Why a CU value (or a pair of them) is refused. The messages are client-visible (they become
/// 400/422 API errors) and name the field as the client sent it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SizeError {
    #[error("{field} must be a finite number of compute units")]
    NotFinite { field: &'static str },
    #[error("{field} must be at least 0.25 CU, got {value}")]
    BelowMinimum { field: &'static str, value: f64 },
    #[error("{field} must be at most {ceiling} CU, got {value}")]
    AboveCeiling {
        field: &'static str,
        value: f64,
        ceiling: Cu,
    },
    #[error("{field} must be a multiple of 0.25 CU, got {value}")]
    NotAStep { field: &'static str, value: f64 },
    #[error("min_cu ({min}) must not be greater than max_cu ({max})")]
    MinAboveMax { min: Cu, max: Cu },
}

/// A valid compute size: a whole number of 0.25 CU steps, at least one. Kept as the step
/// count so arithmetic and comparisons are exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cu(u32);

impl Cu {
    /// The smallest size, 0.25 CU.
    pub const MIN: Cu = Cu(1);

    /// Validates `value` (sent as `field`): finite, at least 0.25, at most `ceiling`, and a
    /// multiple of 0.25. Multiples of 0.25 are exact in binary floating point, so the check is
    /// exact too: 0.3 (or 0.30000000000000004) is refused, not rounded.
    pub fn parse(field: &'static str, value: f64, ceiling: Cu) -> Result<Cu, SizeError> {
        if !value.is_finite() {
            return Err(SizeError::NotFinite { field });
        }
        if value < Cu::MIN.as_f64() {
            return Err(SizeError::BelowMinimum { field, value });
        }
        if value > ceiling.as_f64() {
            return Err(SizeError::AboveCeiling {
                field,
                value,
                ceiling,
            });
        }
        let quarters = value * 4.0;
        if quarters.fract() != 0.0 {
            return Err(SizeError::NotAStep { field, value });
        }
        // In range [1, MAX_CEILING quarters] and whole, so the cast is exact.
        Ok(Cu(quarters as u32))
    }

    /// Validates a configured ceiling: a valid size no larger than [`MAX_CEILING`].
    pub fn parse_ceiling(field: &'static str, value: f64) -> Result<Cu, SizeError> {
        Cu::parse(field, value, MAX_CEILING)
    }

    /// `quarters` × 0.25 CU, or `None` for zero.
    pub fn from_quarters(quarters: u32) -> Option<Cu> {
        (quarters > 0).then_some(Cu(quarters))
    }

    /// The smallest size that holds `cu` compute units: rounded up to the next 0.25 step, at
    /// least 0.25 CU. A hair of slack (1e-9 CU) absorbs floating-point noise, so that Neon's
    /// worked example (load 1.8 / 0.9 = 2 CU) gives 2 CU, not 2.25. Huge or non-finite
    /// values saturate; callers clamp to a [`CuRange`].
    pub fn round_up(cu: f64) -> Cu {
        let quarters = (cu * 4.0 - 1e-9).ceil();
        // Float-to-int casts saturate (NaN gives 0), which is what we want here.
        Cu((quarters as u32).max(1))
    }

    /// The number of 0.25 CU steps.
    pub fn quarters(self) -> u32 {
        self.0
    }

    /// The size in CU.
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 4.0
    }

    /// `factor` times this size (saturating).
    pub fn times(self, factor: u32) -> Cu {
        Cu(self.0.saturating_mul(factor))
    }

    /// Everything this size means for the compute.
    pub fn size(self) -> Size {
        Size::of(self)
    }
}

impl fmt::Display for Cu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // f64's Display is the shortest exact form: "0.25", "1", "2.5".
        write!(f, "{}", self.as_f64())
    }
}

/// An endpoint's autoscaling range, `min <= max`. `min == max` is a fixed size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CuRange {
    min: Cu,
    max: Cu,
}

impl CuRange {
    /// The range `[min, max]`, refused when `min > max`.
    pub fn new(min: Cu, max: Cu) -> Result<CuRange, SizeError> {
        if min > max {
            return Err(SizeError::MinAboveMax { min, max });
        }
        Ok(CuRange { min, max })
    }

    /// Validates `min_cu` and `max_cu` as a client sent them, each against `ceiling`, then
    /// their order.
    pub fn parse(min_cu: f64, max_cu: f64, ceiling: Cu) -> Result<CuRange, SizeError> {
        let min = Cu::parse("min_cu", min_cu, ceiling)?;
        let max = Cu::parse("max_cu", max_cu, ceiling)?;
        CuRange::new(min, max)
    }

    /// A fixed size: `min == max == cu`.
    pub fn fixed(cu: Cu) -> CuRange {
        CuRange { min: cu, max: cu }
    }

    pub fn min(self) -> Cu {
        self.min
    }

    pub fn max(self) -> Cu {
        self.max
    }

    /// Whether the size never changes (`min == max`).
    pub fn is_fixed(self) -> bool {
        self.min == self.max
    }

    /// `cu` brought into the range.
    pub fn clamp(self, cu: Cu) -> Cu {
        cu.clamp(self.min, self.max)
    }
}

/// How a changed setting takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Apply {
    /// `pg_ctl reload` / PgBouncer `RELOAD`: live, nothing interrupted.
    Reload,
    /// Only at the next start (`postmaster` context): pending until the next resume or restart.
    Restart,
}

/// One Postgres setting as it goes into a conf file: `name = 'value'`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    /// The value in Postgres' syntax (memory in `kB`, which Postgres reads as KiB).
    pub value: String,
    pub apply: Apply,
}

/// The CPU quota for a size: `quota_us` of CPU time per `period_us` of wall time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuQuota {
    pub quota_us: u64,
    pub period_us: u64,
}

impl CpuQuota {
    /// cgroup v2 `cpu.max`: `"<quota> <period>"`, e.g. `"25000 100000"` for 0.25 CU.
    pub fn cpu_max(self) -> String {
        format!("{} {}", self.quota_us, self.period_us)
    }
}

/// The Postgres settings derived from a size (memory in bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PostgresSettings {
    /// 12.5% of memory (128 MiB, Postgres' default, at 0.25 CU). Less than the Postgres docs'
    /// 25% for a dedicated server on purpose: the memory limit counts the page cache too, so
    /// what shared buffers leave is the compute's cache anyway (as Neon's small shared buffers
    /// leave it to its file cache), and a start maps all of them before it accepts a
    /// connection, so every resume pays more for more of them (`resume_timing` in
    /// tests/local_driver.rs prints a resume and a bare postmaster at 0.25 CU).
    pub shared_buffers: u64,
    /// 75% of memory: what the planner may assume is cached (shared buffers + page cache).
    pub effective_cache_size: u64,
    /// Memory outside shared buffers split over two sort/hash nodes per possible connection,
    /// floored at Postgres' default 4 MiB. As Neon's `max_connections` grows with memory, this
    /// stays near 4.3 MiB up to 8 CU and grows only once `max_connections` is capped at 4000.
    pub work_mem: u64,
    /// 1/16 of memory (64 MiB at 0.25 CU, Postgres' default), at most 1 GiB.
    pub maintenance_work_mem: u64,
    /// Neon's table (see [`max_connections`]).
    pub max_connections: u32,
    /// [`SUPERUSER_RESERVED_CONNECTIONS`].
    pub superuser_reserved_connections: u32,
}

impl PostgresSettings {
    /// The settings as conf entries, each with how it takes effect: `shared_buffers`,
    /// `max_connections` and `superuser_reserved_connections` need a restart (`postmaster`
    /// context); the memory budgets are reloadable.
    pub fn settings(&self) -> Vec<Setting> {
        let kb = |bytes: u64| format!("{}kB", bytes / 1024);
        let entry = |name, value, apply| Setting { name, value, apply };
        vec![
            entry("shared_buffers", kb(self.shared_buffers), Apply::Restart),
            entry(
                "max_connections",
                self.max_connections.to_string(),
                Apply::Restart,
            ),
            entry(
                "superuser_reserved_connections",
                self.superuser_reserved_connections.to_string(),
                Apply::Restart,
            ),
            entry(
                "effective_cache_size",
                kb(self.effective_cache_size),
                Apply::Reload,
            ),
            entry("work_mem", kb(self.work_mem), Apply::Reload),
            entry(
                "maintenance_work_mem",
                kb(self.maintenance_work_mem),
                Apply::Reload,
            ),
        ]
    }

    /// The settings whose value differs from `applied` (what the running Postgres has).
    pub fn changes_from(&self, applied: &PostgresSettings) -> Vec<Setting> {
        let old = applied.settings();
        self.settings()
            .into_iter()
            .filter(|new| {
                !old.iter()
                    .any(|o| o.name == new.name && o.value == new.value)
            })
            .collect()
    }
}

/// PgBouncer's pool sizes for a size; both are reloadable (`RELOAD`, §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolerSizes {
    /// Server connections per (database, user) pair.
    pub default_pool_size: u32,
    /// Server connections per database, whatever the users.
    pub max_db_connections: u32,
}

/// Everything a size means for a compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub cu: Cu,
    pub cpu: CpuQuota,
    /// The cgroup memory limit (v1 `memory.limit_in_bytes`, v2 `memory.max`).
    pub memory_bytes: u64,
    pub postgres: PostgresSettings,
    pub pooler: PoolerSizes,
    /// The cap gateways get for their own pool of direct connections: PgBouncer's budget
    /// (90% of `max_connections` less the reserved slots), so that pool alone never runs
    /// Postgres out of slots. Direct and pooled connections together may (as on Neon): the
    /// client then gets Postgres' own "too many clients" (53300).
    pub gateway_pool_max_conns: u32,
}

impl Size {
    pub fn of(cu: Cu) -> Size {
        let memory_bytes = u64::from(cu.quarters()) * BYTES_PER_QUARTER;
        let max_connections = max_connections(cu);
        let pooler = pooler_sizes(max_connections);
        Size {
            cu,
            cpu: CpuQuota {
                quota_us: u64::from(cu.quarters()) * CPU_PERIOD_US / 4,
                period_us: CPU_PERIOD_US,
            },
            memory_bytes,
            postgres: postgres_settings(memory_bytes, max_connections),
            pooler,
            gateway_pool_max_conns: pooler.default_pool_size,
        }
    }
}

/// Neon's `max_connections` for a size (control-plane.md Part 2 §5.4): 0.25 CU 104, 0.5 CU
/// 209, 1 CU 419, 2 CU 839, 4 CU 1678, 8 CU 3357, from 9 CU 4000. Sizes between the rows
/// follow the formula the table comes from (see `NEON_BYTES_PER_CONNECTION`).
pub fn max_connections(cu: Cu) -> u32 {
    if cu >= MAX_CONNECTIONS_CAP_FROM {
        return MAX_CONNECTIONS_CAP;
    }
    let n = u64::from(cu.quarters()) * NEON_BYTES_PER_QUARTER / NEON_BYTES_PER_CONNECTION;
    // Below 9 CU the formula stays below 4000.
    u32::try_from(n).map_or(MAX_CONNECTIONS_CAP, |n| n.min(MAX_CONNECTIONS_CAP))
}

fn postgres_settings(memory: u64, max_connections: u32) -> PostgresSettings {
    let shared_buffers = memory / 8;
    let per_sort = (memory - shared_buffers) / (2 * u64::from(max_connections.max(1)));
    PostgresSettings {
        shared_buffers,
        effective_cache_size: memory / 4 * 3,
        work_mem: round_to_kib(per_sort.max(PG_DEFAULT_WORK_MEM)),
        maintenance_work_mem: (memory / 16)
            .clamp(PG_DEFAULT_MAINTENANCE_WORK_MEM, MAINTENANCE_WORK_MEM_CAP),
        max_connections,
        superuser_reserved_connections: SUPERUSER_RESERVED_CONNECTIONS,
    }
}

/// 90% of `max_connections`, minus the superuser's reserved slots and the wake service's own
/// connections. `default_pool_size` and `max_db_connections` are the same figure: a compute
/// usually serves one (database, user) pair through PgBouncer, and `max_db_connections` keeps
/// several users of one database within the budget.
fn pooler_sizes(max_connections: u32) -> PoolerSizes {
    let share = max_connections * POOLER_SHARE_TENTHS / 10;
    let budget = share
        .saturating_sub(SUPERUSER_RESERVED_CONNECTIONS + WAKE_SERVICE_CONNECTIONS)
        .max(1);
    PoolerSizes {
        default_pool_size: budget,
        max_db_connections: budget,
    }
}

fn round_to_kib(bytes: u64) -> u64 {
    bytes / 1024 * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn cu(value: f64) -> Cu {
        Cu::parse("cu", value, MAX_CEILING).expect("test sizes are valid")
    }

    #[test]
    fn max_connections_follow_neons_table() {
        // Every row of control-plane.md §5.4 and of Neon's connection-pooling page.
        let table = [
            (0.25, 104),
            (0.5, 209),
            (1.0, 419),
            (2.0, 839),
            (3.0, 1258),
            (4.0, 1678),
            (5.0, 2098),
            (6.0, 2517),
            (7.0, 2937),
            (8.0, 3357),
            (9.0, 4000),
            (16.0, 4000),
            (56.0, 4000),
        ];
        for (size, expected) in table {
            assert_eq!(max_connections(cu(size)), expected, "{size} CU");
        }
        // Between rows: monotone, never above the cap.
        let mut last = 0;
        for q in 1..=MAX_CEILING.quarters() {
            let n = max_connections(Cu(q));
            assert!(n >= last && n <= MAX_CONNECTIONS_CAP, "{q} quarters: {n}");
            last = n;
        }
    }

    struct Expected {
        cu: f64,
        cpu_max: &'static str,
        memory: u64,
        shared_buffers: u64,
        effective_cache_size: u64,
        work_mem: u64,
        maintenance_work_mem: u64,
        max_connections: u32,
        pool: u32,
    }

    fn check(e: Expected) {
        let size = cu(e.cu).size();
        let what = format!("{} CU", e.cu);
        assert_eq!(size.cpu.cpu_max(), e.cpu_max, "{what}");
        assert_eq!(size.cpu.period_us, 100_000, "{what}");
        assert_eq!(size.memory_bytes, e.memory, "{what}");
        let pg = size.postgres;
        assert_eq!(pg.shared_buffers, e.shared_buffers, "{what}");
        assert_eq!(pg.effective_cache_size, e.effective_cache_size, "{what}");
        assert_eq!(pg.work_mem, e.work_mem, "{what}");
        assert_eq!(pg.maintenance_work_mem, e.maintenance_work_mem, "{what}");
        assert_eq!(pg.max_connections, e.max_connections, "{what}");
        assert_eq!(pg.superuser_reserved_connections, 3, "{what}");
        assert_eq!(size.pooler.default_pool_size, e.pool, "{what}");
        assert_eq!(size.pooler.max_db_connections, e.pool, "{what}");
    }

    #[test]
    fn sizes() {
        let table = [
            Expected {
                cu: 0.25,
                cpu_max: "25000 100000",
                memory: GIB,
                shared_buffers: 128 * MIB,
                effective_cache_size: 768 * MIB,
                // 896 MiB / (2 × 104) = 4411.08 KiB.
                work_mem: 4411 * 1024,
                maintenance_work_mem: 64 * MIB,
                max_connections: 104,
                // floor(0.9 × 104) = 93, minus 3 + 2 reserved.
                pool: 88,
            },
            Expected {
                cu: 1.0,
                cpu_max: "100000 100000",
                memory: 4 * GIB,
                shared_buffers: 512 * MIB,
                effective_cache_size: 3 * GIB,
                work_mem: 4379 * 1024,
                maintenance_work_mem: 256 * MIB,
                max_connections: 419,
                pool: 372,
            },
            Expected {
                cu: 2.0,
                cpu_max: "200000 100000",
                memory: 8 * GIB,
                shared_buffers: GIB,
                effective_cache_size: 6 * GIB,
                work_mem: 4374 * 1024,
                maintenance_work_mem: 512 * MIB,
                max_connections: 839,
                pool: 750,
            },
            Expected {
                cu: 16.0,
                cpu_max: "1600000 100000",
                memory: 64 * GIB,
                shared_buffers: 8 * GIB,
                effective_cache_size: 48 * GIB,
                // 56 GiB / (2 × 4000) = 7340.032 KiB, rounded down to a whole KiB.
                work_mem: 7340 * 1024,
                maintenance_work_mem: GIB,
                max_connections: 4000,
                pool: 3595,
            },
        ];
        for e in table {
            check(e);
        }
    }

    #[test]
    fn settings_say_how_they_apply() {
        let settings = cu(0.25).size().postgres.settings();
        let find = |name: &str| {
            settings
                .iter()
                .find(|s| s.name == name)
                .map(|s| (s.value.as_str(), s.apply))
        };
        assert_eq!(find("shared_buffers"), Some(("131072kB", Apply::Restart)));
        assert_eq!(find("max_connections"), Some(("104", Apply::Restart)));
        assert_eq!(
            find("superuser_reserved_connections"),
            Some(("3", Apply::Restart))
        );
        assert_eq!(
            find("effective_cache_size"),
            Some(("786432kB", Apply::Reload))
        );
        assert_eq!(find("work_mem"), Some(("4411kB", Apply::Reload)));
        assert_eq!(
            find("maintenance_work_mem"),
            Some(("65536kB", Apply::Reload))
        );
    }

    #[test]
    fn changes_between_sizes() {
        let small = cu(0.25).size().postgres;
        let big = cu(1.0).size().postgres;
        assert!(big.changes_from(&big).is_empty());
        let changed: Vec<_> = big
            .changes_from(&small)
            .into_iter()
            .map(|s| (s.name, s.apply))
            .collect();
        // The reserved slots do not change.
        assert_eq!(
            changed,
            [
                ("shared_buffers", Apply::Restart),
                ("max_connections", Apply::Restart),
                ("effective_cache_size", Apply::Reload),
                ("work_mem", Apply::Reload),
                ("maintenance_work_mem", Apply::Reload),
            ]
        );
    }

    #[test]
    fn validation() {
        let ceiling = DEFAULT_CEILING;
        let ok = |v: f64| Cu::parse("max_cu", v, ceiling).map(Cu::quarters);
        let err = |v: f64| {
            Cu::parse("max_cu", v, ceiling)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(ok(0.25), Ok(1));
        assert_eq!(ok(0.75), Ok(3));
        assert_eq!(ok(16.0), Ok(64));
        let refused = [
            (0.0, "max_cu must be at least 0.25 CU, got 0"),
            (-1.0, "max_cu must be at least 0.25 CU, got -1"),
            (0.3, "max_cu must be a multiple of 0.25 CU, got 0.3"),
            (
                0.1 + 0.2,
                "max_cu must be a multiple of 0.25 CU, got 0.30000000000000004",
            ),
            (1.1, "max_cu must be a multiple of 0.25 CU, got 1.1"),
            (f64::NAN, "max_cu must be a finite number of compute units"),
            (
                f64::INFINITY,
                "max_cu must be a finite number of compute units",
            ),
            (16.25, "max_cu must be at most 16 CU, got 16.25"),
            (100.3, "max_cu must be at most 16 CU, got 100.3"),
        ];
        for (value, message) in refused {
            assert_eq!(err(value), message, "{value}");
        }
    }

    #[test]
    fn ranges() {
        let c = DEFAULT_CEILING;
        let range = CuRange::parse(0.25, 2.0, c).expect("valid");
        assert_eq!((range.min(), range.max()), (Cu(1), Cu(8)));
        assert!(!range.is_fixed());
        assert_eq!(range.clamp(Cu(20)), Cu(8));
        assert!(CuRange::parse(1.0, 1.0, c).expect("valid").is_fixed());
        let message = |min, max| {
            CuRange::parse(min, max, c)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            message(2.0, 1.0),
            "min_cu (2) must not be greater than max_cu (1)"
        );
        assert_eq!(
            message(0.3, 1.0),
            "min_cu must be a multiple of 0.25 CU, got 0.3"
        );
        assert_eq!(message(0.25, 17.0), "max_cu must be at most 16 CU, got 17");
        assert_eq!(
            Cu::parse_ceiling("cu_ceiling", 57.0).map_err(|e| e.to_string()),
            Err("cu_ceiling must be at most 56 CU, got 57".to_string())
        );
    }

    #[test]
    fn rounding_up_to_a_step() {
        let table = [
            (0.0, 1),
            (-3.0, 1),
            (f64::NAN, 1),
            (0.1, 1),
            (0.25, 1),
            (0.26, 2),
            (1.8 / 0.9, 8),
            (2.0000001, 9),
            (f64::INFINITY, u32::MAX),
        ];
        for (value, quarters) in table {
            assert_eq!(Cu::round_up(value).quarters(), quarters, "{value}");
        }
        assert_eq!(Cu(1).to_string(), "0.25");
        assert_eq!(Cu(6).to_string(), "1.5");
        assert_eq!(Cu(8).to_string(), "2");
        assert_eq!(Cu::from_quarters(0), None);
    }
}
