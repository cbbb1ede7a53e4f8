//! Autoscaling, the pure half: what a compute size means ([`sizing`]) and how the size should
//! follow the load ([`policy`]). Sampling signals, enforcing sizes (cgroups, Postgres and
//! PgBouncer settings), recording decisions and metering live elsewhere; nothing here does I/O
//! or reads the clock, so every rule is unit-tested under controlled time.
//!
//! Design choices, against Neon's (control-plane.md Part 2 §2 and §5):
//! * **Units.** 1 CU = 1 vCPU + 4 GiB, sizes in 0.25 CU steps, kept as a step count
//!   ([`sizing::Cu`]) so comparisons are exact; client input is validated once
//!   ([`sizing::Cu::parse`], [`sizing::CuRange::parse`]) with messages fit for a 4xx reply.
//! * **Settings.** `max_connections` is Neon's table exactly (104 at 0.25 CU … 4000 from
//!   9 CU); the memory settings are conventional fractions of the limit (shared_buffers 12.5%,
//!   effective_cache_size 75%, maintenance_work_mem 1/16, work_mem from what is left per
//!   connection), each marked reload or restart ([`sizing::Apply`]).
//! * **Pools.** PgBouncer gets Neon's 90% of `max_connections` minus the superuser's reserved
//!   slots and the wake service's own connections; both sizes are reloadable.
//! * **Policy.** Neon's goal (CPU / 0.9, memory / 0.75, rounded up to a step, clamped), up at
//!   once straight to the goal, down after a 60 s cooldown straight to the highest goal of
//!   that cooldown, with a 20% hysteresis band on the way down; a saturated CPU with clients
//!   waiting in PgBouncer doubles the size, because our CPU figure (unlike Neon's load
//!   average) cannot show demand beyond the quota. Missing data never scales down.
//!   [`policy`] gives the reasons for each.

pub mod policy;
pub mod sizing;
