//! The autoscaling policy: from one sample of an endpoint's signals, its current size and its
//! range, the decision to stay, scale up or scale down, with the reason in words and numbers.
//!
//! Pure: the caller samples, passes the time in and applies the decision; the only state is
//! the "low spell" (since when the goal has stayed below the current size).
//!
//! * **Goal**, Neon's way (control-plane.md Part 2 §2.2): CPU use / [`CPU_TARGET`] and memory
//!   use / [`MEMORY_TARGET`], each rounded *up* to a 0.25 step, the larger wins, clamped to
//!   the range. Neon rounds the CPU goal to the nearest step because its load average counts
//!   runnable tasks and so sees demand beyond the quota; our CPU use cannot exceed the quota,
//!   so a saturated 0.25 CU reads 0.25 / 0.9 = 1.1 steps, which rounding to nearest would
//!   never lift. Rounding up does.
//! * **Pressure**: for the same reason, a saturated CPU (at least [`SATURATED_FRACTION`] of the
//!   quota) with clients waiting in PgBouncer means unseen demand: the goal is at least
//!   [`PRESSURE_FACTOR`] × the current size, so 0.25 → 2 CU takes three samples, not seven.
//! * **Up at once, straight to the goal**: under-provisioning costs latency and failed
//!   queries now, over-provisioning costs a few CU-seconds; the goal already holds the whole
//!   observed load, and every intermediate step would be a resize (cgroup write, RELOAD) of
//!   its own.
//! * **Down after [`COOLDOWN`], straight to the highest goal of the spell**: see [`COOLDOWN`];
//!   the highest goal seen over the whole spell held every sample of it, so it is as safe as
//!   one step and returns an idle endpoint to its minimum after one cooldown, not one per step.
//! * **Hysteresis**: the downscale goal uses targets scaled by [`DOWNSCALE_HEADROOM`], so the
//!   size chosen on the way down leaves the load 20% below the level that would scale it
//!   straight back up; a load hovering at a boundary does not oscillate.
//! * **Missing metrics**: a missing CPU or memory figure never counts towards a downscale (it
//!   ends the low spell); whatever is present can still scale up. Waiting clients also end
//!   a low spell: shrinking would shrink the pool they wait for.
//! * Client connections are reported, not used: Neon's goal ignores them too, the memory they
//!   take shows in the memory signal, and idle pooled connections would otherwise pin a size.

use std::time::{Duration, Instant};

use super::sizing::{Cu, CuRange, BYTES_PER_QUARTER};

/// Target CPU utilisation: Neon's `loadAverageFractionTarget` (§2.1).
pub const CPU_TARGET: f64 = 0.9;

/// Target memory use: Neon's `memoryUsageFractionTarget` (§2.1). The memory signal must be
/// non-reclaimable memory (cgroup anon + shmem, or RSS), not page cache, which fills any limit.
pub const MEMORY_TARGET: f64 = 0.75;

/// The downscale goal uses `CPU_TARGET × 0.8` (72%) and `MEMORY_TARGET × 0.8` (60%): a size is
/// left only for one the load fits in with room to spare (see the module docs).
pub const DOWNSCALE_HEADROOM: f64 = 0.8;

/// How long the goal must stay below the current size before a downscale: 60 s, twelve
/// 5-second samples. Neon needs no explicit cooldown because its signal, the 1-minute load
/// average, already decays over about a minute (§2.1: CPU zones 0 ⇒ load1); our CPU figure
/// is a few seconds' average, so the cooldown gives the same memory. Short enough that an
/// idle endpoint is back at its minimum about a minute after its load stops (it pays for
/// every CU-second), long enough to ride out the gaps of a request-driven load.
pub const COOLDOWN: Duration = Duration::from_secs(60);

/// CPU use at or above this fraction of the quota counts as saturated (for [`PRESSURE_FACTOR`]).
/// Below [`CPU_TARGET`] because a throttled cgroup's average over a window under-reads it.
pub const SATURATED_FRACTION: f64 = 0.8;

/// The goal when the CPU is saturated and clients wait in PgBouncer: at least this many times
/// the current size. The quota hides how much more is needed; doubling finds it in log₂ steps.
pub const PRESSURE_FACTOR: u32 = 2;

/// One sample of an endpoint's signals; any of them may be missing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Signals {
    /// CPU used by the compute (Postgres and its children), in cores, averaged over the last
    /// sample window. Negative or non-finite values count as missing.
    pub cpu_cores: Option<f64>,
    /// Non-reclaimable memory used by the compute, in bytes.
    pub memory_bytes: Option<u64>,
    /// Client connections (reported in the reason, not used in the goal).
    pub client_connections: Option<u32>,
    /// Clients waiting in PgBouncer for a server connection (`SHOW POOLS` `cl_waiting`).
    pub pooler_waiting_clients: Option<u32>,
}

/// What to do with the compute's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Stay,
    Up(Cu),
    Down(Cu),
}

/// An [`Action`] and why, with the signals and goals behind it (for the lifecycle event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub reason: String,
}

/// The policy for one endpoint. Feed it every sample, in time order.
#[derive(Clone, Debug)]
pub struct Policy {
    cooldown: Duration,
    low: Option<LowSpell>,
}

/// Since when, at which size, the downscale goal has stayed below the size, and the highest
/// downscale goal seen since.
#[derive(Clone, Copy, Debug)]
struct LowSpell {
    since: Instant,
    size: Cu,
    highest: Cu,
}

/// The goal from one sample, per signal (`None` where the signal is missing).
#[derive(Clone, Copy, Debug)]
struct Goal {
    cpu: Option<Cu>,
    memory: Option<Cu>,
    pressure: Option<Cu>,
}

impl Goal {
    fn of(signals: &Signals, current: Cu, cpu_target: f64, memory_target: f64) -> Goal {
        let cpu = signals.cpu_cores.map(|c| Cu::round_up(c / cpu_target));
        let memory = signals
            .memory_bytes
            .map(|m| Cu::round_up(m as f64 / memory_target / (4 * BYTES_PER_QUARTER) as f64));
        let saturated = signals
            .cpu_cores
            .is_some_and(|c| c >= SATURATED_FRACTION * current.as_f64());
        let waiting = signals.pooler_waiting_clients.unwrap_or(0) > 0;
        let pressure = (saturated && waiting).then(|| current.times(PRESSURE_FACTOR));
        Goal {
            cpu,
            memory,
            pressure,
        }
    }

    /// The largest present goal.
    fn wanted(&self) -> Option<Cu> {
        [self.cpu, self.memory, self.pressure]
            .into_iter()
            .flatten()
            .max()
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, goal) in [
            ("cpu", self.cpu),
            ("memory", self.memory),
            ("pressure", self.pressure),
        ] {
            if let Some(goal) = goal {
                parts.push(format!("{name} {goal}"));
            }
        }
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(", ")
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new(COOLDOWN)
    }
}

impl Policy {
    /// A policy that scales down after `cooldown` (tests and benchmarks shorten it).
    pub fn new(cooldown: Duration) -> Policy {
        Policy {
            cooldown,
            low: None,
        }
    }

    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }

    /// The decision for one sample taken at `now`, with the compute at `current` and the
    /// endpoint's range `range`.
    pub fn decide(
        &mut self,
        now: Instant,
        current: Cu,
        range: CuRange,
        signals: &Signals,
    ) -> Decision {
        let signals = sanitize(signals);
        let seen = describe_signals(&signals, current);
        if current < range.min() || current > range.max() {
            self.low = None;
            let to = range.clamp(current);
            let action = if to > current {
                Action::Up(to)
            } else {
                Action::Down(to)
            };
            let reason = format!(
                "{current} CU is outside min_cu..max_cu {}..{}: resizing to {to} CU ({seen})",
                range.min(),
                range.max()
            );
            return Decision { action, reason };
        }
        let up = Goal::of(&signals, current, CPU_TARGET, MEMORY_TARGET);
        if let Some(wanted) = up.wanted().filter(|&w| w > current) {
            self.low = None;
            let to = range.clamp(wanted);
            let goals = up.describe();
            return if to > current {
                decision(
                    Action::Up(to),
                    format!(
                        "goal {wanted} CU ({goals}) is above {current} CU: up to {to} CU at \
                         once ({seen})"
                    ),
                )
            } else {
                decision(
                    Action::Stay,
                    format!("goal {wanted} CU ({goals}) but {current} CU is max_cu ({seen})"),
                )
            };
        }
        self.consider_down(now, current, range, &signals, &seen)
    }

    /// The downscale half of [`Policy::decide`]: no goal is above the current size.
    fn consider_down(
        &mut self,
        now: Instant,
        current: Cu,
        range: CuRange,
        signals: &Signals,
        seen: &str,
    ) -> Decision {
        if signals.cpu_cores.is_none() || signals.memory_bytes.is_none() {
            self.low = None;
            return decision(
                Action::Stay,
                format!(
                    "staying at {current} CU: cpu or memory missing, never scaling down \
                     without both ({seen})"
                ),
            );
        }
        if let Some(waiting) = signals.pooler_waiting_clients.filter(|&w| w > 0) {
            self.low = None;
            return decision(
                Action::Stay,
                format!("staying at {current} CU: {waiting} clients waiting in PgBouncer ({seen})"),
            );
        }
        let down = Goal::of(
            signals,
            current,
            CPU_TARGET * DOWNSCALE_HEADROOM,
            MEMORY_TARGET * DOWNSCALE_HEADROOM,
        );
        let goal = range.clamp(down.wanted().unwrap_or(current));
        if goal >= current {
            self.low = None;
            return decision(
                Action::Stay,
                format!(
                    "staying at {current} CU: downscale goal {goal} CU ({}) with headroom \
                     ({seen})",
                    down.describe()
                ),
            );
        }
        self.low_spell(now, current, goal, &down.describe(), seen)
    }

    /// The downscale goal `goal` (from `goals`) is below `current`: start or extend the low
    /// spell, and scale down once it has lasted the cooldown.
    fn low_spell(
        &mut self,
        now: Instant,
        current: Cu,
        goal: Cu,
        goals: &str,
        seen: &str,
    ) -> Decision {
        let spell = match self.low {
            Some(spell) if spell.size == current => LowSpell {
                highest: spell.highest.max(goal),
                ..spell
            },
            _ => LowSpell {
                since: now,
                size: current,
                highest: goal,
            },
        };
        let elapsed = now.saturating_duration_since(spell.since);
        let (low_for, cooldown) = (elapsed.as_secs(), self.cooldown.as_secs());
        if elapsed >= self.cooldown {
            self.low = None;
            let to = spell.highest;
            return decision(
                Action::Down(to),
                format!(
                    "goal below {current} CU for {low_for}s (cooldown {cooldown}s): down to \
                     {to} CU, the highest goal since ({seen})"
                ),
            );
        }
        self.low = Some(spell);
        decision(
            Action::Stay,
            format!(
                "goal {goal} CU ({goals}) below {current} CU for {low_for}s of the \
                 {cooldown}s cooldown ({seen})"
            ),
        )
    }
}

fn decision(action: Action, reason: String) -> Decision {
    Decision { action, reason }
}

/// Drops figures that cannot be measurements (negative or non-finite CPU).
fn sanitize(signals: &Signals) -> Signals {
    Signals {
        cpu_cores: signals.cpu_cores.filter(|c| c.is_finite() && *c >= 0.0),
        ..*signals
    }
}

/// "cpu 0.24 of 0.25 cores, memory 0.31 GiB, 12 clients, 0 waiting", with "n/a" for gaps.
fn describe_signals(signals: &Signals, current: Cu) -> String {
    let na = || "n/a".to_string();
    let cpu = signals.cpu_cores.map_or_else(na, |c| format!("{c:.2}"));
    let memory = signals.memory_bytes.map_or_else(na, |m| {
        format!("{:.2} GiB", m as f64 / BYTES_PER_QUARTER as f64)
    });
    let clients = signals
        .client_connections
        .map_or_else(na, |c| c.to_string());
    let waiting = signals
        .pooler_waiting_clients
        .map_or_else(na, |w| w.to_string());
    format!("cpu {cpu} of {current} cores, memory {memory}, {clients} clients, {waiting} waiting")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn cu(value: f64) -> Cu {
        Cu::parse("cu", value, super::super::sizing::MAX_CEILING).expect("test sizes are valid")
    }

    fn range(min: f64, max: f64) -> CuRange {
        CuRange::new(cu(min), cu(max)).expect("test ranges are valid")
    }

    /// A full sample: CPU in cores, memory in GiB, waiting clients.
    fn load(cpu: f64, memory_gib: f64, waiting: u32) -> Signals {
        Signals {
            cpu_cores: Some(cpu),
            memory_bytes: Some((memory_gib * GIB as f64) as u64),
            client_connections: Some(10),
            pooler_waiting_clients: Some(waiting),
        }
    }

    /// What a step expects: the size after it, and whether the size changed at that step.
    #[derive(Debug, PartialEq)]
    enum Expect {
        Stay,
        Up(f64),
        Down(f64),
    }

    /// Runs samples every `every` seconds (each repeated `count` times) through a policy
    /// starting at `start` CU, applying each decision, and checks each step's action.
    fn check(start: f64, limits: CuRange, every: u64, steps: &[(u32, Signals, Expect)]) {
        let t0 = Instant::now();
        let mut policy = Policy::default();
        let mut current = cu(start);
        let mut t = 0;
        for (i, (count, signals, expected)) in steps.iter().enumerate() {
            for n in 0..*count {
                let d = policy.decide(t0 + Duration::from_secs(t), current, limits, signals);
                let last = n + 1 == *count;
                let want = if last { expected } else { &Expect::Stay };
                let got = match d.action {
                    Action::Stay => Expect::Stay,
                    Action::Up(to) => Expect::Up(to.as_f64()),
                    Action::Down(to) => Expect::Down(to.as_f64()),
                };
                assert_eq!(&got, want, "step {i}, sample {n} at {t}s: {}", d.reason);
                if let Action::Up(to) | Action::Down(to) = d.action {
                    current = to;
                }
                t += every;
            }
        }
    }

    #[test]
    fn a_load_step_scales_up_at_once_straight_to_the_goal() {
        check(
            0.25,
            range(0.25, 4.0),
            5,
            &[
                (3, load(0.02, 0.1, 0), Expect::Stay),
                // Neon's worked example: 1.8 cores / 0.9 = 2 CU, in one step.
                (1, load(1.8, 0.3, 0), Expect::Up(2.0)),
                (5, load(1.8, 0.3, 0), Expect::Stay),
                // Memory alone: 3.2 GiB / 0.75 = 4.27 GiB = 1.07 CU, rounded up to 1.25 (< 2).
                (1, load(1.8, 3.2, 0), Expect::Stay),
                (1, load(1.8, 7.0, 0), Expect::Up(2.5)),
            ],
        );
    }

    #[test]
    fn saturated_cpu_with_waiting_clients_doubles() {
        check(
            0.25,
            range(0.25, 4.0),
            5,
            &[
                // Saturated, nobody waiting: the formula's one step (0.25 / 0.9 → 0.5).
                (1, load(0.25, 0.2, 0), Expect::Up(0.5)),
                // Saturated with waiters: double each sample until the demand fits.
                (1, load(0.5, 0.2, 7), Expect::Up(1.0)),
                (1, load(0.98, 0.2, 7), Expect::Up(2.0)),
                (1, load(1.95, 0.2, 3), Expect::Up(4.0)),
                // Waiters with an idle CPU (slow I/O, locks) are no CPU pressure.
                (3, load(1.0, 0.2, 9), Expect::Stay),
            ],
        );
    }

    #[test]
    fn a_short_spike_during_the_cooldown_does_not_scale_down() {
        check(
            2.0,
            range(0.25, 2.0),
            5,
            &[
                // 50 s low: no downscale yet.
                (11, load(0.05, 0.2, 0), Expect::Stay),
                // The spike ends the low spell without scaling up (2 CU holds it).
                (1, load(1.7, 0.2, 0), Expect::Stay),
                // A whole new cooldown: 12 samples = 55 s, then the 13th at 60 s.
                (12, load(0.05, 0.2, 0), Expect::Stay),
                (1, load(0.05, 0.2, 0), Expect::Down(0.25)),
            ],
        );
    }

    #[test]
    fn sustained_low_load_scales_down_after_the_cooldown_to_the_highest_goal() {
        check(
            4.0,
            range(0.25, 4.0),
            5,
            &[
                // Load 1.0 core: downscale goal 1.0 / 0.72 = 1.39 → 1.5 CU.
                (6, load(1.0, 0.5, 0), Expect::Stay),
                // Lighter load later in the spell: the spell's highest goal still rules.
                (6, load(0.1, 0.5, 0), Expect::Stay),
                (1, load(0.1, 0.5, 0), Expect::Down(1.5)),
                // At 1.5 CU a new spell starts; one cooldown later, down to the minimum.
                (12, load(0.1, 0.5, 0), Expect::Stay),
                (1, load(0.1, 0.5, 0), Expect::Down(0.25)),
                (20, load(0.0, 0.1, 0), Expect::Stay),
            ],
        );
    }

    #[test]
    fn flapping_load_does_not_oscillate() {
        let mut steps = vec![(1, load(1.7, 0.3, 0), Expect::Up(2.0))];
        // High and low every other sample for five minutes: no downscale, no second upscale.
        for _ in 0..30 {
            steps.push((1, load(0.1, 0.3, 0), Expect::Stay));
            steps.push((1, load(1.7, 0.3, 0), Expect::Stay));
        }
        check(0.25, range(0.25, 4.0), 5, &steps);
    }

    #[test]
    fn a_load_at_a_boundary_stays_inside_the_hysteresis_band() {
        check(
            1.0,
            range(0.25, 4.0),
            5,
            &[
                // 0.6 cores: the upscale goal is 0.75 CU, but with headroom it is 1 CU.
                (40, load(0.6, 0.5, 0), Expect::Stay),
                // 0.5 cores: 0.5 / 0.72 = 0.69 → 0.75 CU after the cooldown ...
                (12, load(0.5, 0.5, 0), Expect::Stay),
                (1, load(0.5, 0.5, 0), Expect::Down(0.75)),
                // ... where 0.6 cores (upscale goal 0.6 / 0.9 = 0.67 → 0.75 CU) stays put.
                (40, load(0.6, 0.5, 0), Expect::Stay),
            ],
        );
    }

    #[test]
    fn missing_metrics_never_scale_down_but_scale_up_on_what_is_there() {
        let no_memory = Signals {
            memory_bytes: None,
            ..load(0.05, 0.0, 0)
        };
        let no_cpu = Signals {
            cpu_cores: None,
            ..load(0.0, 0.2, 0)
        };
        let nothing = Signals::default();
        let bad_cpu = Signals {
            cpu_cores: Some(f64::NAN),
            ..load(0.0, 0.2, 0)
        };
        let memory_only_high = Signals {
            cpu_cores: None,
            ..load(0.0, 2.5, 0)
        };
        let cpu_only_high = Signals {
            memory_bytes: None,
            pooler_waiting_clients: None,
            ..load(2.6, 0.0, 0)
        };
        check(
            2.0,
            range(0.25, 4.0),
            5,
            &[
                (30, no_memory, Expect::Stay),
                (30, no_cpu, Expect::Stay),
                (30, nothing, Expect::Stay),
                (30, bad_cpu, Expect::Stay),
                // Gaps end a low spell: 55 s low, a gap, 55 s low: still no downscale.
                (11, load(0.05, 0.2, 0), Expect::Stay),
                (1, nothing, Expect::Stay),
                (11, load(0.05, 0.2, 0), Expect::Stay),
                (1, no_memory, Expect::Stay),
                // 2.5 GiB / 0.75 / 4 GiB = 0.83 CU: below 2 CU, nothing to do.
                (1, memory_only_high, Expect::Stay),
                // 2.6 cores / 0.9 = 2.89 → 3 CU with memory unknown.
                (1, cpu_only_high, Expect::Up(3.0)),
            ],
        );
    }

    #[test]
    fn at_max_under_load_it_stays() {
        let mut policy = Policy::default();
        let t0 = Instant::now();
        for i in 0..50 {
            let d = policy.decide(
                t0 + Duration::from_secs(5 * i),
                cu(2.0),
                range(0.25, 2.0),
                &load(2.0, 7.5, 40),
            );
            assert_eq!(d.action, Action::Stay, "{}", d.reason);
            assert!(d.reason.contains("is max_cu"), "{}", d.reason);
        }
    }

    #[test]
    fn a_fixed_size_never_changes() {
        for signals in [
            load(0.0, 0.0, 0),
            load(3.9, 15.0, 100),
            load(0.7, 2.0, 0),
            Signals::default(),
        ] {
            check(1.0, range(1.0, 1.0), 5, &[(40, signals, Expect::Stay)]);
        }
    }

    #[test]
    fn a_size_outside_a_changed_range_is_brought_into_it() {
        check(
            0.25,
            range(1.0, 2.0),
            5,
            &[(1, load(0.0, 0.0, 0), Expect::Up(1.0))],
        );
        check(
            4.0,
            range(0.5, 2.0),
            5,
            &[(1, load(3.9, 0.0, 0), Expect::Down(2.0))],
        );
    }

    #[test]
    fn a_resize_by_someone_else_restarts_the_spell() {
        let mut policy = Policy::default();
        let t0 = Instant::now();
        let limits = range(0.25, 4.0);
        let low = load(0.05, 0.1, 0);
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(
            policy.decide(at(0), cu(2.0), limits, &low).action,
            Action::Stay
        );
        // A manual resize to 1 CU at 50 s: the 2 CU spell does not count for 1 CU.
        assert_eq!(
            policy.decide(at(50), cu(1.0), limits, &low).action,
            Action::Stay
        );
        assert_eq!(
            policy.decide(at(100), cu(1.0), limits, &low).action,
            Action::Stay
        );
        assert_eq!(
            policy.decide(at(110), cu(1.0), limits, &low).action,
            Action::Down(cu(0.25))
        );
    }

    #[test]
    fn reasons_carry_the_numbers() {
        let mut policy = Policy::default();
        let t0 = Instant::now();
        let up = policy.decide(t0, cu(0.25), range(0.25, 4.0), &load(1.8, 0.5, 3));
        assert_eq!(up.action, Action::Up(cu(2.0)));
        assert_eq!(
            up.reason,
            "goal 2 CU (cpu 2, memory 0.25, pressure 0.5) is above 0.25 CU: up to 2 CU at once \
             (cpu 1.80 of 0.25 cores, memory 0.50 GiB, 10 clients, 3 waiting)"
        );
        let low = Signals {
            client_connections: None,
            ..load(0.1, 0.5, 0)
        };
        let wait = policy.decide(t0 + Duration::from_secs(5), cu(2.0), range(0.25, 4.0), &low);
        assert_eq!(
            wait.reason,
            "goal 0.25 CU (cpu 0.25, memory 0.25) below 2 CU for 0s of the 60s cooldown \
             (cpu 0.10 of 2 cores, memory 0.50 GiB, n/a clients, 0 waiting)"
        );
    }
}
