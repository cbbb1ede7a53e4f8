//! The pool's bookkeeping, apart from what a backend connection is: idle connections per
//! [`Account`] with the time each became idle, one slot per open connection of an endpoint
//! ([`super::slots`]), requests waiting for a slot or a returned connection, eviction of the
//! oldest idle connection, the surplus beyond the per-endpoint idle cap, the idle timeout and
//! the reaper enforcing both. Generic over the connection ([`Pooled`]), so it is tested here
//! without a server; [`super::Pool`] uses it with [`crate::compute::Backend`].
//!
//! Each endpoint's cap on open connections is the flag's (`max_conns_per_endpoint`), lowered
//! to what the control plane says for the endpoint's compute size ([`PoolCap`], from a wake
//! through the route, or from an activity reply), at least 1. The latest word per endpoint is
//! remembered (bounded: forgotten when the endpoint is not active, or once it has no pool and
//! no word came for [`CAP_MEMORY`]), so a pool made again later starts at it, and an older
//! word (a route cached before a resize) never undoes a newer one. A smaller cap closes idle
//! connections and owes the slots of active ones until they come back; it never interrupts a
//! connection in use.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::slots::{Slot, Slots};
use crate::auth::Account;
use crate::base::endpoint::EndpointId;
use crate::control_plane::routes::PoolCap;

/// How long a request waits for a connection being reset before opening a new one.
const RESET_WAIT: Duration = Duration::from_millis(5);

/// How long an idle connection beyond the per-endpoint cap may go unused before it is closed.
const SURPLUS_GRACE: Duration = Duration::from_secs(1);

/// How often the reaper closes the surplus (the idle timeout is enforced less often).
const SURPLUS_TICK: Duration = Duration::from_millis(250);

/// How long a control plane's cap is remembered for an endpoint without a pool after it was
/// last said or used (its route was long dropped from the cache by then, so the next wake says
/// it again).
const CAP_MEMORY: Duration = Duration::from_secs(15 * 60);

/// The most endpoints whose caps are remembered (the route cache's size): when full, the caps
/// of endpoints without a pool are forgotten first.
const MAX_REMEMBERED_CAPS: usize = 10_000;

/// What the idle set needs of a backend connection.
pub(super) trait Pooled: Send + 'static {
    /// Whether the server closed it (or said something unasked) while it sat idle.
    fn is_closed(&self) -> bool;
    /// Says goodbye to the server and closes it.
    fn terminate(self) -> impl Future<Output = ()> + Send;
}

/// The limits the idle set enforces (from [`super::PoolConfig`]).
#[derive(Clone, Debug)]
pub(super) struct Limits {
    /// Open (active + idle) connections per endpoint, whatever its size (a control plane's
    /// cap may lower it per endpoint).
    pub max_conns_per_endpoint: usize,
    pub max_idle_per_endpoint: usize,
    pub max_idle_total: usize,
    pub idle_timeout: Duration,
    /// How long a request waits for a connection slot before failing.
    pub acquire_timeout: Duration,
}

/// No connection slot became free within the acquire timeout.
#[derive(Debug)]
pub(super) struct NoSlot;

/// An idle connection to reuse, or a slot to open a new one. An idle connection is boxed: it is
/// far larger than a slot.
pub(super) enum Acquired<C> {
    Idle(Box<Idle<C>>),
    Slot(Slot),
}

pub(super) struct Idle<C> {
    pub conn: C,
    pub slot: Slot,
    pub since: Instant,
}

pub(super) struct IdleSet<C> {
    limits: Limits,
    state: Mutex<State<C>>,
    /// Set from the idle count whenever the lock is released.
    idle_gauge: IntGauge,
    /// Connections closed rather than reused.
    discards: IntCounter,
}

struct State<C> {
    endpoints: HashMap<EndpointId, EndpointPool<C>>,
    idle_total: usize,
    /// The control plane's latest cap per endpoint (also of endpoints without a pool now).
    caps: HashMap<EndpointId, Remembered>,
}

/// A control plane's cap on an endpoint, and when it was last said or used.
struct Remembered {
    cap: PoolCap,
    seen: Instant,
}

struct EndpointPool<C> {
    /// Idle connections per (database, role), most recently returned last.
    idle: HashMap<(String, String), Vec<Idle<C>>>,
    idle_count: usize,
    /// One per open connection, `max` of them (less any debt).
    slots: Arc<Slots>,
    /// The endpoint's cap now: the flag's, or the control plane's when lower.
    max: usize,
    /// Wakes requests waiting for a slot when a connection becomes idle.
    returned: Arc<Notify>,
    /// Connections being reset after a request, about to become idle (or be discarded).
    resetting: Arc<AtomicUsize>,
    /// Verified requests looking for a connection: with an idle cap of 0, a returned connection
    /// is kept only while there are any (one of them takes it at once).
    waiting: Arc<AtomicUsize>,
}

impl<C> EndpointPool<C> {
    fn new(max_conns: usize) -> Self {
        EndpointPool {
            idle: HashMap::new(),
            idle_count: 0,
            slots: Slots::new(max_conns),
            max: max_conns,
            returned: Arc::new(Notify::new()),
            resetting: Arc::new(AtomicUsize::new(0)),
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Nothing idle, no connection open: the pool can be forgotten.
    fn is_unused(&self) -> bool {
        self.idle.is_empty() && self.slots.debt() == 0 && self.slots.available() == self.max
    }
}

/// An endpoint's cap: the flag's, lowered to the control plane's `cap` (at least 1).
fn effective_cap(flag: usize, cap: Option<&PoolCap>) -> usize {
    match cap {
        Some(cap) => flag
            .min(usize::try_from(cap.max_conns).unwrap_or(usize::MAX))
            .max(1),
        None => flag,
    }
}

struct Locked<'a, C> {
    guard: MutexGuard<'a, State<C>>,
    idle_gauge: &'a IntGauge,
}

impl<C> std::ops::Deref for Locked<'_, C> {
    type Target = State<C>;
    fn deref(&self) -> &State<C> {
        &self.guard
    }
}

impl<C> std::ops::DerefMut for Locked<'_, C> {
    fn deref_mut(&mut self) -> &mut State<C> {
        &mut self.guard
    }
}

impl<C> Drop for Locked<'_, C> {
    fn drop(&mut self) {
        self.idle_gauge.set(self.guard.idle_total as i64);
    }
}

impl<C: Pooled> IdleSet<C> {
    pub fn new(limits: Limits, idle_gauge: IntGauge, discards: IntCounter) -> Self {
        IdleSet {
            limits,
            state: Mutex::new(State {
                endpoints: HashMap::new(),
                idle_total: 0,
                caps: HashMap::new(),
            }),
            idle_gauge,
            discards,
        }
    }

    /// Locks the state. The idle gauge is set from `idle_total` when the lock is released, so
    /// no code path has to remember to update it.
    fn state(&self) -> Locked<'_, C> {
        // A panic while holding the lock cannot leave the maps inconsistent in a way that
        // matters more than losing the pool, so recover the guard.
        Locked {
            guard: self
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            idle_gauge: &self.idle_gauge,
        }
    }

    /// An idle connection to reuse (only for a verified password), or a slot to open a new one;
    /// and the endpoint's count of connections being reset.
    ///
    /// With nothing idle but a connection of the endpoint being reset, a verified request first
    /// waits up to [`RESET_WAIT`] for it: the reset is one round trip, a new connection a
    /// fork and an authentication on the server. Without the wait, a steady load of N clients
    /// keeps opening connections (each request's own is still resetting when its next one
    /// arrives) and closing them again past the idle cap.
    ///
    /// `cap` is what the control plane said of the endpoint's size when it gave the route: it
    /// applies first (see [`IdleSet::set_cap`]), and a pool made now starts at it.
    pub async fn acquire(
        &self,
        key: &Account,
        verified: bool,
        cap: Option<PoolCap>,
    ) -> Result<(Acquired<C>, Arc<AtomicUsize>), NoSlot> {
        let flag = self.limits.max_conns_per_endpoint;
        let (slots, returned, resetting, waiting, closing) = {
            let mut state = self.state();
            let closing = match cap {
                Some(cap) => self.apply_cap(&mut state, &key.endpoint, cap),
                None => Vec::new(),
            };
            let State {
                endpoints, caps, ..
            } = &mut *state;
            let pool = endpoints.entry(key.endpoint.clone()).or_insert_with(|| {
                let known = caps.get(&key.endpoint).map(|r| r.cap).or(cap);
                EndpointPool::new(effective_cap(flag, known.as_ref()))
            });
            pool.slots.settle();
            (
                pool.slots.clone(),
                pool.returned.clone(),
                pool.resetting.clone(),
                pool.waiting.clone(),
                closing,
            )
        };
        self.close_idle(closing);
        let _waiting = verified.then(|| Counted::start(waiting));
        let acquired = self
            .acquire_in(key, verified, &slots, &returned, &resetting)
            .await?;
        Ok((acquired, resetting))
    }

    async fn acquire_in(
        &self,
        key: &Account,
        verified: bool,
        slots: &Arc<Slots>,
        returned: &Notify,
        resetting: &AtomicUsize,
    ) -> Result<Acquired<C>, NoSlot> {
        // Waiting for resets ends here, however many returns other requests win.
        let mut reset_deadline = None;
        let deadline = Instant::now() + self.limits.acquire_timeout;
        loop {
            // Registered before looking, so a connection returned meanwhile is not missed.
            let returned = returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if verified {
                if let Some(idle) = self.take_idle(key) {
                    return Ok(Acquired::Idle(Box::new(idle)));
                }
                if resetting.load(Ordering::Acquire) > 0 {
                    let deadline =
                        *reset_deadline.get_or_insert_with(|| Instant::now() + RESET_WAIT);
                    if tokio::time::timeout_at(deadline, &mut returned)
                        .await
                        .is_ok()
                    {
                        continue;
                    }
                }
            }
            if let Some(slot) = slots.try_acquire() {
                return Ok(Acquired::Slot(slot));
            }
            // Full: for a verified request, the oldest idle connection of this endpoint of
            // another database or role gives its slot. Never its own key's: one returned since
            // it looked is for it to take (the `returned` wake-up below), not to close and
            // reopen. An unverified request evicts nothing (a wrong password must not close
            // other people's connections): it waits for a free slot.
            if verified {
                if let Some(Idle { conn, slot, .. }) = self.evict_oldest(&key.endpoint, key) {
                    self.discards.inc();
                    spawn_detached(conn.terminate());
                    return Ok(Acquired::Slot(slot));
                }
            }
            tokio::select! {
                slot = slots.acquire() => {
                    return slot.map(Acquired::Slot).ok_or(NoSlot);
                }
                _ = &mut returned => continue,
                _ = tokio::time::sleep_until(deadline) => return Err(NoSlot),
            }
        }
    }

    /// The most recently returned idle connection of `key` the server has not closed; the
    /// closed ones above it are dropped.
    fn take_idle(&self, key: &Account) -> Option<Idle<C>> {
        let mut closed = Vec::new();
        let found = {
            let mut state = self.state();
            let State {
                endpoints,
                idle_total,
                ..
            } = &mut *state;
            let endpoint = endpoints.get_mut(&key.endpoint)?;
            let list = endpoint
                .idle
                .get_mut(&(key.database.clone(), key.role.clone()))?;
            let mut found = None;
            while let Some(idle) = list.pop() {
                endpoint.idle_count -= 1;
                *idle_total -= 1;
                if idle.conn.is_closed() {
                    closed.push(idle);
                } else {
                    found = Some(idle);
                    break;
                }
            }
            found
        };
        self.discards.inc_by(closed.len() as u64);
        found
    }

    /// The oldest idle connection of `endpoint`, other than those of `except`.
    fn evict_oldest(&self, endpoint: &EndpointId, except: &Account) -> Option<Idle<C>> {
        let mut state = self.state();
        let State {
            endpoints,
            idle_total,
            ..
        } = &mut *state;
        let idle = take_oldest(endpoints.get_mut(endpoint)?, Some(except))?;
        *idle_total -= 1;
        Some(idle)
    }

    /// Puts a freshly reset connection back, unless the idle caps are reached. Past the
    /// per-endpoint cap it is kept all the same (a load that needs more connections than the
    /// cap would otherwise close and reopen them all the time); idle connections beyond the
    /// cap go once unused for [`SURPLUS_GRACE`] (here and by [`IdleSet::run_reaper`]). A cap
    /// of 0 keeps nothing idle unless a request is waiting. While the endpoint's cap is owed
    /// slots (it shrank below the connections open), it is closed: its slot pays the debt.
    pub fn put(&self, key: Account, conn: C, slot: Slot) {
        let now = Instant::now();
        let idle = Idle {
            conn,
            slot,
            since: now,
        };
        let cap = self.limits.max_idle_per_endpoint;
        let closing = {
            let mut state = self.state();
            let State {
                endpoints,
                idle_total,
                ..
            } = &mut *state;
            match endpoints.get_mut(&key.endpoint) {
                Some(pool)
                    if *idle_total < self.limits.max_idle_total
                        && pool.slots.debt() == 0
                        && (cap > 0 || pool.waiting.load(Ordering::Acquire) > 0) =>
                {
                    pool.idle
                        .entry((key.database, key.role))
                        .or_default()
                        .push(idle);
                    pool.idle_count += 1;
                    *idle_total += 1;
                    pool.returned.notify_waiters();
                    trim_surplus(pool, idle_total, cap, now)
                }
                _ => vec![idle],
            }
        };
        self.close_idle(closing);
    }

    /// The control plane's word on `endpoint`'s cap (an activity reply): remembered unless a
    /// later one is, and applied to the endpoint's pool if it has one. Growing frees slots at
    /// once (waiting requests take them); shrinking takes free slots, closes idle connections
    /// and owes the slots of active ones until they come back.
    pub fn set_cap(&self, endpoint: &EndpointId, cap: PoolCap) {
        let closing = {
            let mut state = self.state();
            self.apply_cap(&mut state, endpoint, cap)
        };
        self.close_idle(closing);
    }

    /// Forgets what the control plane said of `endpoint`'s cap (it is not active: the next
    /// wake says it again); a pool it has goes back to the flag's cap.
    pub fn forget_cap(&self, endpoint: &EndpointId) {
        let closing = {
            let mut state = self.state();
            let State {
                endpoints,
                idle_total,
                caps,
            } = &mut *state;
            if caps.remove(endpoint).is_none() {
                return;
            }
            match endpoints.get_mut(endpoint) {
                Some(pool) => {
                    let flag = self.limits.max_conns_per_endpoint;
                    resize(endpoint, pool, idle_total, flag)
                }
                None => Vec::new(),
            }
        };
        self.close_idle(closing);
    }

    /// What the control plane last said of `endpoint`'s cap, if it is remembered.
    #[cfg(test)]
    pub fn remembered_cap(&self, endpoint: &EndpointId) -> Option<u32> {
        let state = self.state();
        state.caps.get(endpoint).map(|known| known.cap.max_conns)
    }

    /// Remembers `cap` for `endpoint` unless a later word is remembered, and resizes the
    /// endpoint's pool (if any) to it. Returns the idle connections to close.
    fn apply_cap(&self, state: &mut State<C>, endpoint: &EndpointId, cap: PoolCap) -> Vec<Idle<C>> {
        let now = Instant::now();
        let State {
            endpoints,
            idle_total,
            caps,
        } = state;
        match caps.get_mut(endpoint) {
            Some(known) if known.cap.as_of > cap.as_of => {
                // An older word (a route cached before a resize): the newer one stands.
                known.seen = now;
                return Vec::new();
            }
            Some(known) => *known = Remembered { cap, seen: now },
            None => remember(caps, endpoints, endpoint, Remembered { cap, seen: now }),
        }
        let max = effective_cap(self.limits.max_conns_per_endpoint, Some(&cap));
        match endpoints.get_mut(endpoint) {
            Some(pool) => resize(endpoint, pool, idle_total, max),
            None => Vec::new(),
        }
    }

    /// Closes the idle connections of `role` on `endpoint`, any database. Returns how many.
    pub fn close_idle_of_role(&self, endpoint: &EndpointId, role: &str) -> usize {
        let removed: Vec<Idle<C>> = {
            let mut state = self.state();
            let State {
                endpoints,
                idle_total,
                ..
            } = &mut *state;
            let Some(pool) = endpoints.get_mut(endpoint) else {
                return 0;
            };
            let keys: Vec<(String, String)> = pool
                .idle
                .keys()
                .filter(|(_, r)| r == role)
                .cloned()
                .collect();
            let removed: Vec<Idle<C>> = keys
                .iter()
                .filter_map(|k| pool.idle.remove(k))
                .flatten()
                .collect();
            pool.idle_count -= removed.len();
            *idle_total -= removed.len();
            removed
        };
        let count = removed.len();
        self.close_idle(removed);
        count
    }

    /// Closes the idle connections of every endpoint for which `which` holds. Returns how
    /// many.
    pub fn close_idle_where(&self, which: impl Fn(&EndpointId) -> bool) -> usize {
        let endpoints: Vec<EndpointId> = self
            .state()
            .endpoints
            .keys()
            .filter(|e| which(e))
            .cloned()
            .collect();
        endpoints.iter().map(|e| self.close_idle_of(e)).sum()
    }

    /// Closes every idle connection of `endpoint`. Returns how many.
    pub fn close_idle_of(&self, endpoint: &EndpointId) -> usize {
        let removed: Vec<Idle<C>> = {
            let mut state = self.state();
            let State {
                endpoints,
                idle_total,
                ..
            } = &mut *state;
            let Some(pool) = endpoints.get_mut(endpoint) else {
                return 0;
            };
            let removed: Vec<Idle<C>> = pool.idle.drain().flat_map(|(_, list)| list).collect();
            pool.idle_count -= removed.len();
            *idle_total -= removed.len();
            removed
        };
        let count = removed.len();
        self.close_idle(removed);
        count
    }

    /// Closes every endpoint's idle connections beyond the per-endpoint cap that went unused
    /// for [`SURPLUS_GRACE`]. Returns how many it closed.
    pub fn trim_surplus(&self, now: Instant) -> usize {
        let cap = self.limits.max_idle_per_endpoint;
        let closing: Vec<Idle<C>> = {
            let mut state = self.state();
            let State {
                endpoints,
                idle_total,
                ..
            } = &mut *state;
            endpoints
                .values_mut()
                .flat_map(|pool| trim_surplus(pool, idle_total, cap, now))
                .collect()
        };
        let count = closing.len();
        self.close_idle(closing);
        count
    }

    /// Removes idle connections older than the idle timeout or closed by the server, forgets
    /// endpoints with no connections at all, and the caps of endpoints without a pool not
    /// said or used for [`CAP_MEMORY`]. Returns how many connections it closed.
    pub fn evict_expired(&self, now: Instant) -> usize {
        let timeout = self.limits.idle_timeout;
        let expired: Vec<Idle<C>> = {
            let mut state = self.state();
            let State {
                endpoints,
                idle_total,
                caps,
            } = &mut *state;
            let mut expired = Vec::new();
            for pool in endpoints.values_mut() {
                for list in pool.idle.values_mut() {
                    let (keep, gone): (Vec<Idle<C>>, Vec<Idle<C>>) =
                        std::mem::take(list).into_iter().partition(|idle| {
                            now.saturating_duration_since(idle.since) < timeout
                                && !idle.conn.is_closed()
                        });
                    *list = keep;
                    pool.idle_count -= gone.len();
                    *idle_total -= gone.len();
                    expired.extend(gone);
                }
                pool.idle.retain(|_, list| !list.is_empty());
            }
            // Against each endpoint's own cap, which a control plane may have lowered.
            endpoints.retain(|_, pool| !pool.is_unused());
            caps.retain(|endpoint, known| {
                endpoints.contains_key(endpoint)
                    || now.saturating_duration_since(known.seen) < CAP_MEMORY
            });
            expired
        };
        let count = expired.len();
        self.close_idle(expired);
        count
    }

    /// Closes connections that left the idle lists (their slots free as they go).
    fn close_idle(&self, idle: Vec<Idle<C>>) {
        if idle.is_empty() {
            return;
        }
        self.discards.inc_by(idle.len() as u64);
        spawn_detached(async move {
            for Idle { conn, slot, .. } in idle {
                conn.terminate().await;
                drop(slot);
            }
        });
    }

    /// Enforces the idle timeout and closes the surplus beyond the per-endpoint idle cap until
    /// `shutdown`, then closes every idle connection.
    pub async fn run_reaper(&self, shutdown: CancellationToken) {
        let period =
            (self.limits.idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
        let mut tick = tokio::time::interval(period);
        let mut surplus_tick = tokio::time::interval(SURPLUS_TICK);
        surplus_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.evict_expired(Instant::now());
                }
                _ = surplus_tick.tick() => {
                    self.trim_surplus(Instant::now());
                }
                _ = shutdown.cancelled() => break,
            }
        }
        let all: Vec<Idle<C>> = {
            let mut state = self.state();
            state.idle_total = 0;
            state
                .endpoints
                .drain()
                .flat_map(|(_, pool)| pool.idle.into_values().flatten())
                .collect()
        };
        for Idle { conn, .. } in all {
            conn.terminate().await;
        }
    }
}

/// Remembers the cap of an endpoint not remembered yet. With [`MAX_REMEMBERED_CAPS`]
/// remembered, the caps of endpoints without a pool go first (their next wake says them
/// again); if every one has a pool, this one is not remembered (its pool still gets it).
fn remember<C>(
    caps: &mut HashMap<EndpointId, Remembered>,
    endpoints: &HashMap<EndpointId, EndpointPool<C>>,
    endpoint: &EndpointId,
    cap: Remembered,
) {
    if caps.len() >= MAX_REMEMBERED_CAPS {
        caps.retain(|id, _| endpoints.contains_key(id));
    }
    if caps.len() < MAX_REMEMBERED_CAPS {
        caps.insert(endpoint.clone(), cap);
    }
}

/// Sets `pool`'s cap to `max` ([`Slots::grow`], [`Slots::shrink`]). Idle connections are open
/// but unused, so a debt closes them first, oldest first; active ones pay it as they come back.
/// Returns the idle connections to close.
fn resize<C>(
    endpoint: &EndpointId,
    pool: &mut EndpointPool<C>,
    idle_total: &mut usize,
    max: usize,
) -> Vec<Idle<C>> {
    let from = pool.max;
    if max == from {
        return Vec::new();
    }
    if max > from {
        pool.slots.grow(max - from);
    } else {
        pool.slots.shrink(from - max);
    }
    pool.max = max;
    let mut closing = Vec::new();
    while closing.len() < pool.slots.debt() {
        let Some(idle) = take_oldest(pool, None) else {
            break;
        };
        *idle_total -= 1;
        closing.push(idle);
    }
    tracing::debug!(
        %endpoint,
        from,
        to = max,
        owed = pool.slots.debt(),
        idle_closed = closing.len(),
        "the endpoint's cap on backend connections changed"
    );
    closing
}

/// Takes `pool`'s idle connections beyond `cap` that went unused for [`SURPLUS_GRACE`], oldest
/// first (LIFO checkout leaves the unneeded ones at the bottom to age).
fn trim_surplus<C>(
    pool: &mut EndpointPool<C>,
    idle_total: &mut usize,
    cap: usize,
    now: Instant,
) -> Vec<Idle<C>> {
    let mut closing = Vec::new();
    while pool.idle_count > cap {
        let oldest = pool
            .idle
            .values()
            .filter_map(|list| list.first())
            .map(|idle| idle.since)
            .min();
        if oldest.is_none_or(|since| now.saturating_duration_since(since) < SURPLUS_GRACE) {
            break;
        }
        let Some(idle) = take_oldest(pool, None) else {
            break;
        };
        *idle_total -= 1;
        closing.push(idle);
    }
    closing
}

/// Takes the oldest idle connection of `pool`, other than those of `except` (the caller
/// adjusts the total idle count).
fn take_oldest<C>(pool: &mut EndpointPool<C>, except: Option<&Account>) -> Option<Idle<C>> {
    let (_, list) = pool
        .idle
        .iter_mut()
        .filter(|((database, role), list)| {
            !list.is_empty()
                && except.is_none_or(|key| key.database != *database || key.role != *role)
        })
        .min_by_key(|(_, list)| list[0].since)?;
    let idle = list.remove(0);
    pool.idle_count -= 1;
    Some(idle)
}

/// Counts one (a connection being reset, a request waiting) until dropped, also if its task
/// or future is.
pub(super) struct Counted(Arc<AtomicUsize>);

impl Counted {
    pub fn start(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Counted(count)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(super) fn spawn_detached(task: impl Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for a backend connection: an id, whether its server closed it, and a shared
    /// log of the ids terminated.
    struct Fake {
        id: u32,
        closed: bool,
        terminated: Arc<Mutex<Vec<u32>>>,
    }

    impl Pooled for Fake {
        fn is_closed(&self) -> bool {
            self.closed
        }

        async fn terminate(self) {
            self.terminated.lock().expect("log").push(self.id);
        }
    }

    struct Harness {
        set: Arc<IdleSet<Fake>>,
        terminated: Arc<Mutex<Vec<u32>>>,
        discards: IntCounter,
        idle_gauge: IntGauge,
    }

    fn limits() -> Limits {
        Limits {
            max_conns_per_endpoint: 4,
            max_idle_per_endpoint: 4,
            max_idle_total: 100,
            idle_timeout: Duration::from_secs(60),
            acquire_timeout: Duration::from_secs(1),
        }
    }

    fn endpoint(id: &str) -> EndpointId {
        EndpointId::parse(id).expect("a valid endpoint id")
    }

    fn account(endpoint_id: &str, database: &str, role: &str) -> Account {
        Account {
            endpoint: endpoint(endpoint_id),
            database: database.to_owned(),
            role: role.to_owned(),
        }
    }

    impl Harness {
        /// A set with `limits` (the test pauses time first).
        fn new(limits: Limits) -> Self {
            let idle_gauge = IntGauge::new("idle", "idle").expect("a metric");
            let discards = IntCounter::new("discards", "discards").expect("a metric");
            Harness {
                set: Arc::new(IdleSet::new(limits, idle_gauge.clone(), discards.clone())),
                terminated: Arc::default(),
                discards,
                idle_gauge,
            }
        }

        fn fake(&self, id: u32, closed: bool) -> Fake {
            Fake {
                id,
                closed,
                terminated: self.terminated.clone(),
            }
        }

        /// A slot for `key` without reusing anything.
        async fn slot(&self, key: &Account) -> Slot {
            match self.set.acquire(key, false, None).await {
                Ok((Acquired::Slot(slot), _)) => slot,
                _ => panic!("no free slot"),
            }
        }

        /// Opens connection `id` for `key` and returns it to the idle set.
        async fn put(&self, key: &Account, id: u32, closed: bool) {
            let slot = self.slot(key).await;
            self.set.put(key.clone(), self.fake(id, closed), slot);
        }

        /// The idle connections of `key`, oldest first.
        fn idle_of(&self, key: &Account) -> Vec<u32> {
            let state = self.set.state();
            let list = state
                .endpoints
                .get(&key.endpoint)
                .and_then(|pool| pool.idle.get(&(key.database.clone(), key.role.clone())));
            list.map_or_else(Vec::new, |list| list.iter().map(|i| i.conn.id).collect())
        }

        /// Every idle connection, sorted; checks the counts against the lists.
        fn all_idle(&self) -> Vec<u32> {
            let state = self.set.state();
            let mut ids = Vec::new();
            for pool in state.endpoints.values() {
                let listed: Vec<u32> = pool.idle.values().flatten().map(|i| i.conn.id).collect();
                assert_eq!(pool.idle_count, listed.len(), "endpoint idle count");
                ids.extend(listed);
            }
            assert_eq!(state.idle_total, ids.len(), "total idle count");
            ids.sort();
            ids
        }

        /// `(cap, open, idle, free)` of `endpoint`'s pool once the closing connections are
        /// gone: open counts active and idle connections (slots held).
        async fn shape(&self, endpoint: &EndpointId) -> (usize, usize, usize, usize) {
            self.terminated().await;
            let state = self.set.state();
            let pool = state.endpoints.get(endpoint).expect("a pool");
            let free = pool.slots.available();
            let open = pool.max + pool.slots.debt() - free;
            (pool.max, open, pool.idle_count, free)
        }

        /// The connections terminated so far, sorted, once the closing tasks ran.
        async fn terminated(&self) -> Vec<u32> {
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            let mut ids = self.terminated.lock().expect("log").clone();
            ids.sort();
            ids
        }
    }

    fn acquired_id(acquired: &Acquired<Fake>) -> Option<u32> {
        match acquired {
            Acquired::Idle(idle) => Some(idle.conn.id),
            Acquired::Slot(_) => None,
        }
    }

    struct Returned {
        id: u32,
        closed: bool,
    }

    struct TakeCase {
        name: &'static str,
        /// Returned in this order, a second apart.
        returned: Vec<Returned>,
        /// The idle connection a verified request gets (`None`: a slot).
        takes: Option<u32>,
        left_idle: Vec<u32>,
        /// Closed connections dropped on the way.
        discarded: u64,
    }

    #[tokio::test]
    async fn take_returns_the_newest_open_connection() {
        tokio::time::pause();
        let open = |id| Returned { id, closed: false };
        let closed = |id| Returned { id, closed: true };
        let cases = [
            TakeCase {
                name: "the most recently returned",
                returned: vec![open(1), open(2), open(3)],
                takes: Some(3),
                left_idle: vec![1, 2],
                discarded: 0,
            },
            TakeCase {
                name: "closed ones on top are dropped",
                returned: vec![open(1), closed(2), closed(3)],
                takes: Some(1),
                left_idle: vec![],
                discarded: 2,
            },
            TakeCase {
                name: "a closed one below the taken one stays",
                returned: vec![closed(1), open(2)],
                takes: Some(2),
                left_idle: vec![1],
                discarded: 0,
            },
            TakeCase {
                name: "all closed: a slot",
                returned: vec![closed(1), closed(2)],
                takes: None,
                left_idle: vec![],
                discarded: 2,
            },
            TakeCase {
                name: "nothing idle: a slot",
                returned: vec![],
                takes: None,
                left_idle: vec![],
                discarded: 0,
            },
        ];
        for case in cases {
            let h = Harness::new(limits());
            let key = account("ep", "db", "alice");
            for returned in &case.returned {
                h.put(&key, returned.id, returned.closed).await;
                tokio::time::advance(Duration::from_secs(1)).await;
            }
            let (acquired, _) = h.set.acquire(&key, true, None).await.expect("a free slot");
            assert_eq!(acquired_id(&acquired), case.takes, "{}", case.name);
            assert_eq!(h.idle_of(&key), case.left_idle, "{}", case.name);
            assert_eq!(h.discards.get(), case.discarded, "{}", case.name);
            assert_eq!(
                h.idle_gauge.get(),
                case.left_idle.len() as i64,
                "{}",
                case.name
            );
        }
    }

    #[tokio::test]
    async fn an_unverified_request_never_takes_an_idle_connection() {
        tokio::time::pause();
        let h = Harness::new(limits());
        let key = account("ep", "db", "alice");
        h.put(&key, 1, false).await;
        let (acquired, _) = h.set.acquire(&key, false, None).await.expect("a free slot");
        assert_eq!(acquired_id(&acquired), None);
        assert_eq!(h.idle_of(&key), vec![1]);
    }

    struct Held {
        key: Account,
        id: u32,
    }

    enum Outcome {
        /// A slot, freed by closing this idle connection.
        Evicted(u32),
        TimedOut,
    }

    struct EvictCase {
        name: &'static str,
        /// Idle, in the order returned, a second apart.
        idle: Vec<Held>,
        /// Slots of `ep` held by active connections.
        active: usize,
        request: Account,
        verified: bool,
        outcome: Outcome,
    }

    /// With `ep` full, a verified request evicts the oldest idle connection of another account
    /// of the same endpoint; nothing else is ever evicted.
    #[tokio::test]
    async fn a_full_endpoint_evicts_the_oldest_idle_of_another_account() {
        tokio::time::pause();
        let held = |key: &Account, id| Held {
            key: key.clone(),
            id,
        };
        let alice = account("ep", "db", "alice");
        let alice_other_db = account("ep", "db2", "alice");
        let bob = account("ep", "db", "bob");
        let carol = account("ep", "db", "carol");
        let elsewhere = account("other", "db", "bob");
        let cases = [
            EvictCase {
                name: "oldest of another role",
                idle: vec![held(&bob, 1), held(&carol, 2), held(&bob, 3)],
                active: 1,
                request: alice.clone(),
                verified: true,
                outcome: Outcome::Evicted(1),
            },
            EvictCase {
                name: "another database of the same role",
                idle: vec![held(&alice_other_db, 1)],
                active: 3,
                request: alice.clone(),
                verified: true,
                outcome: Outcome::Evicted(1),
            },
            EvictCase {
                name: "an unverified request evicts nothing",
                idle: vec![held(&bob, 1)],
                active: 3,
                request: alice.clone(),
                verified: false,
                outcome: Outcome::TimedOut,
            },
            EvictCase {
                name: "another endpoint's idle connections do not count",
                idle: vec![held(&elsewhere, 1)],
                active: 4,
                request: alice.clone(),
                verified: true,
                outcome: Outcome::TimedOut,
            },
        ];
        for case in cases {
            let h = Harness::new(limits());
            let mut active = Vec::new();
            for _ in 0..case.active {
                active.push(h.slot(&alice).await);
            }
            for idle in &case.idle {
                h.put(&idle.key, idle.id, false).await;
                tokio::time::advance(Duration::from_secs(1)).await;
            }
            let before = h.all_idle();
            let started = Instant::now();
            let got = h.set.acquire(&case.request, case.verified, None).await;
            match case.outcome {
                Outcome::Evicted(id) => {
                    assert!(
                        matches!(got, Ok((Acquired::Slot(_), _))),
                        "{}: a slot",
                        case.name
                    );
                    let left: Vec<u32> = before.into_iter().filter(|i| *i != id).collect();
                    assert_eq!(h.all_idle(), left, "{}", case.name);
                    assert_eq!(h.terminated().await, vec![id], "{}", case.name);
                    assert_eq!(h.discards.get(), 1, "{}", case.name);
                }
                Outcome::TimedOut => {
                    assert!(got.is_err(), "{}: no slot", case.name);
                    // (Timers have a granularity of a millisecond.)
                    let waited = started.elapsed();
                    let timeout = limits().acquire_timeout;
                    assert!(
                        waited >= timeout && waited <= timeout + Duration::from_millis(1),
                        "{}: waited {waited:?}",
                        case.name
                    );
                    assert_eq!(h.all_idle(), before, "{}", case.name);
                    assert_eq!(h.terminated().await, Vec::<u32>::new(), "{}", case.name);
                }
            }
        }
    }

    enum Release {
        /// Reset and returned to the idle set.
        Return,
        /// Discarded: only its slot comes back.
        Discard,
    }

    enum Gets {
        Idle(u32),
        /// A slot, after closing this idle connection for it (or none).
        Slot {
            evicted: Option<u32>,
        },
    }

    struct WaiterCase {
        name: &'static str,
        max_idle_per_endpoint: usize,
        waiter: Account,
        verified: bool,
        release: Release,
        gets: Gets,
    }

    /// One connection per endpoint, held by alice; a second request waits for it.
    #[tokio::test]
    async fn a_waiter_gets_the_slot_a_released_connection_frees() {
        tokio::time::pause();
        let alice = account("ep", "db", "alice");
        let bob = account("ep", "db", "bob");
        let cases = [
            WaiterCase {
                name: "the same account takes the returned connection",
                max_idle_per_endpoint: 4,
                waiter: alice.clone(),
                verified: true,
                release: Release::Return,
                gets: Gets::Idle(7),
            },
            WaiterCase {
                name: "with an idle cap of 0 it is kept for the waiter",
                max_idle_per_endpoint: 0,
                waiter: alice.clone(),
                verified: true,
                release: Release::Return,
                gets: Gets::Idle(7),
            },
            WaiterCase {
                name: "a verified request of another account evicts it",
                max_idle_per_endpoint: 4,
                waiter: bob.clone(),
                verified: true,
                release: Release::Return,
                gets: Gets::Slot { evicted: Some(7) },
            },
            WaiterCase {
                name: "an unverified request gets the slot of a discarded one",
                max_idle_per_endpoint: 4,
                waiter: alice.clone(),
                verified: false,
                release: Release::Discard,
                gets: Gets::Slot { evicted: None },
            },
        ];
        for case in cases {
            let h = Harness::new(Limits {
                max_conns_per_endpoint: 1,
                max_idle_per_endpoint: case.max_idle_per_endpoint,
                ..limits()
            });
            let slot = h.slot(&alice).await;
            let set = h.set.clone();
            let (waiter, verified) = (case.waiter.clone(), case.verified);
            let waiting = tokio::spawn(async move { set.acquire(&waiter, verified, None).await });
            tokio::task::yield_now().await;
            assert!(!waiting.is_finished(), "{}: waits", case.name);
            tokio::time::advance(Duration::from_millis(100)).await;
            match case.release {
                Release::Return => h.set.put(alice.clone(), h.fake(7, false), slot),
                Release::Discard => drop(slot),
            }
            let (acquired, _) = waiting
                .await
                .expect("no panic")
                .expect("a connection in time");
            match case.gets {
                Gets::Idle(id) => assert_eq!(acquired_id(&acquired), Some(id), "{}", case.name),
                Gets::Slot { evicted } => {
                    assert_eq!(acquired_id(&acquired), None, "{}", case.name);
                    let terminated: Vec<u32> = evicted.into_iter().collect();
                    assert_eq!(h.terminated().await, terminated, "{}", case.name);
                }
            }
            assert_eq!(h.all_idle(), Vec::<u32>::new(), "{}", case.name);
        }
    }

    #[tokio::test]
    async fn a_returned_connection_past_the_caps_is_closed() {
        tokio::time::pause();
        let key = account("ep", "db", "alice");
        // An idle cap of 0 and nobody waiting.
        let h = Harness::new(Limits {
            max_idle_per_endpoint: 0,
            ..limits()
        });
        h.put(&key, 1, false).await;
        assert_eq!(h.all_idle(), Vec::<u32>::new());
        assert_eq!(h.terminated().await, vec![1]);
        // The total cap.
        let h = Harness::new(Limits {
            max_idle_total: 1,
            ..limits()
        });
        h.put(&key, 1, false).await;
        h.put(&account("other", "db", "alice"), 2, false).await;
        assert_eq!(h.all_idle(), vec![1]);
        assert_eq!(h.terminated().await, vec![2]);
    }

    struct ReturnedAt {
        id: u32,
        closed: bool,
        /// Seconds from the start.
        at: u64,
    }

    struct ExpiryCase {
        name: &'static str,
        /// Returned, in this order.
        returned: Vec<ReturnedAt>,
        /// When the reaper looks (seconds from the start).
        at: u64,
        left_idle: Vec<u32>,
    }

    #[tokio::test]
    async fn evict_expired_drops_idle_past_the_timeout_and_closed_ones() {
        tokio::time::pause();
        let open = |id, at| ReturnedAt {
            id,
            closed: false,
            at,
        };
        let cases = [
            ExpiryCase {
                name: "past the timeout",
                returned: vec![open(1, 0), open(2, 30), open(3, 59)],
                at: 90,
                left_idle: vec![3],
            },
            ExpiryCase {
                name: "exactly the timeout",
                returned: vec![open(1, 0), open(2, 1)],
                at: 60,
                left_idle: vec![2],
            },
            ExpiryCase {
                name: "closed by the server, however young",
                returned: vec![
                    open(1, 0),
                    ReturnedAt {
                        id: 2,
                        closed: true,
                        at: 0,
                    },
                ],
                at: 1,
                left_idle: vec![1],
            },
        ];
        for case in cases {
            let h = Harness::new(limits());
            let start = Instant::now();
            let key = account("ep", "db", "alice");
            for returned in &case.returned {
                let at = start + Duration::from_secs(returned.at);
                tokio::time::advance(at - Instant::now()).await;
                h.put(&key, returned.id, returned.closed).await;
            }
            let closed = h.set.evict_expired(start + Duration::from_secs(case.at));
            let gone = case.returned.len() - case.left_idle.len();
            assert_eq!(closed, gone, "{}", case.name);
            assert_eq!(h.all_idle(), case.left_idle, "{}", case.name);
            assert_eq!(h.terminated().await.len(), gone, "{}", case.name);
        }
    }

    #[tokio::test]
    async fn evict_expired_forgets_endpoints_without_connections() {
        tokio::time::pause();
        let h = Harness::new(limits());
        let idle = account("idle", "db", "alice");
        let busy = account("busy", "db", "alice");
        h.put(&idle, 1, false).await;
        let _active = h.slot(&busy).await;
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(h.set.evict_expired(Instant::now()), 1);
        // Its slot comes back once the connection is closed: the next pass forgets it.
        assert_eq!(h.terminated().await, vec![1]);
        assert_eq!(h.set.evict_expired(Instant::now()), 0);
        let state = h.set.state();
        let endpoints: Vec<&EndpointId> = state.endpoints.keys().collect();
        assert_eq!(endpoints, vec![&busy.endpoint]);
    }

    #[tokio::test]
    async fn the_surplus_beyond_the_idle_cap_goes_once_unused_for_the_grace() {
        tokio::time::pause();
        let h = Harness::new(Limits {
            max_idle_per_endpoint: 1,
            ..limits()
        });
        let alice = account("ep", "db", "alice");
        let bob = account("ep", "db", "bob");
        let step = Duration::from_millis(10);
        h.put(&alice, 1, false).await;
        tokio::time::advance(step).await;
        h.put(&bob, 2, false).await;
        tokio::time::advance(step).await;
        h.put(&alice, 3, false).await;
        // Kept past the cap while they are fresh.
        assert_eq!(h.set.trim_surplus(Instant::now()), 0);
        assert_eq!(h.all_idle(), vec![1, 2, 3]);
        tokio::time::advance(SURPLUS_GRACE).await;
        // Oldest first (whatever its account), down to the cap.
        assert_eq!(h.set.trim_surplus(Instant::now()), 2);
        assert_eq!(h.all_idle(), vec![3]);
        assert_eq!(h.terminated().await, vec![1, 2]);
    }

    #[tokio::test]
    async fn the_reaper_enforces_the_timeout_and_closes_everything_at_shutdown() {
        tokio::time::pause();
        let h = Harness::new(Limits {
            max_idle_per_endpoint: 1,
            idle_timeout: Duration::from_secs(10),
            ..limits()
        });
        let shutdown = CancellationToken::new();
        let set = h.set.clone();
        let reaper = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { set.run_reaper(shutdown).await }
        });
        let alice = account("ep", "db", "alice");
        h.put(&alice, 1, false).await;
        h.put(&alice, 2, false).await;
        // The surplus (1, the older) goes after the grace, on the reaper's own tick.
        tokio::time::sleep(SURPLUS_GRACE + SURPLUS_TICK).await;
        assert_eq!(h.all_idle(), vec![2]);
        assert_eq!(h.terminated().await, vec![1]);
        // 2 outlives the timeout: the reaper ticks every 2.5 s (a quarter of it).
        tokio::time::sleep(Duration::from_secs(5)).await;
        // (On another endpoint, past no cap.)
        h.put(&account("other", "db", "alice"), 3, false).await;
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(h.all_idle(), vec![3]);
        assert_eq!(h.terminated().await, vec![1, 2]);
        shutdown.cancel();
        reaper.await.expect("no panic");
        assert_eq!(h.all_idle(), Vec::<u32>::new());
        assert_eq!(h.terminated().await, vec![1, 2, 3]);
    }

    struct CloseCase {
        name: &'static str,
        close: fn(&IdleSet<Fake>) -> usize,
        closed: Vec<u32>,
    }

    #[tokio::test]
    async fn closing_idle_connections_removes_exactly_the_chosen_ones() {
        tokio::time::pause();
        let cases = [
            CloseCase {
                name: "a role, every database of its endpoint",
                close: |set| set.close_idle_of_role(&endpoint("one"), "alice"),
                closed: vec![1, 2],
            },
            CloseCase {
                name: "a role with nothing idle",
                close: |set| set.close_idle_of_role(&endpoint("two"), "bob"),
                closed: vec![],
            },
            CloseCase {
                name: "an endpoint",
                close: |set| set.close_idle_of(&endpoint("one")),
                closed: vec![1, 2, 3],
            },
            CloseCase {
                name: "an unknown endpoint",
                close: |set| set.close_idle_of(&endpoint("three")),
                closed: vec![],
            },
            CloseCase {
                name: "the endpoints a predicate picks",
                close: |set| set.close_idle_where(|e| e.as_str() == "two"),
                closed: vec![4],
            },
            CloseCase {
                name: "a predicate for none",
                close: |set| set.close_idle_where(|_| false),
                closed: vec![],
            },
        ];
        for case in cases {
            let h = Harness::new(limits());
            h.put(&account("one", "db1", "alice"), 1, false).await;
            h.put(&account("one", "db2", "alice"), 2, false).await;
            h.put(&account("one", "db1", "bob"), 3, false).await;
            h.put(&account("two", "db1", "alice"), 4, false).await;
            assert_eq!((case.close)(&h.set), case.closed.len(), "{}", case.name);
            let left: Vec<u32> = (1..=4).filter(|i| !case.closed.contains(i)).collect();
            assert_eq!(h.all_idle(), left, "{}", case.name);
            assert_eq!(h.terminated().await, case.closed, "{}", case.name);
            assert_eq!(h.idle_gauge.get(), left.len() as i64, "{}", case.name);
            assert_eq!(h.discards.get(), case.closed.len() as u64, "{}", case.name);
        }
    }

    /// One step of a cap scenario on endpoint `ep`, whose flag allows 4 connections.
    enum Step {
        /// Opens connections (unverified requests: new slots, nothing reused).
        Open(usize),
        /// The newest active connections come back and are put in the idle list.
        Return(usize),
        /// The newest active connections are discarded: only their slots come back.
        Close(usize),
        /// An activity reply's cap, said `at` seconds into the test.
        Cap(u32, u64),
        /// A route's cap (said `at` seconds in), with the request that opens a connection.
        RouteCap(u32, u64),
        /// The endpoint is not active: its cap is forgotten.
        Forget,
        /// Nothing open, and the reaper forgets the pool.
        Reap,
        /// The pool's cap, connections open (active and idle), idle, and free slots.
        Expect(usize, usize, usize, usize),
    }

    struct CapCase {
        name: &'static str,
        steps: Vec<Step>,
    }

    #[tokio::test]
    async fn the_cap_follows_the_control_plane_without_interrupting_connections_in_use() {
        use Step::*;
        tokio::time::pause();
        let cases = [
            CapCase {
                name: "growing frees slots at once",
                steps: vec![
                    Cap(2, 1),
                    Open(2),
                    Expect(2, 2, 0, 0),
                    Cap(3, 2),
                    Expect(3, 2, 0, 1),
                    Open(1),
                    Expect(3, 3, 0, 0),
                ],
            },
            CapCase {
                name: "shrinking with connections in use: each returning one pays the debt",
                steps: vec![
                    Open(4),
                    Cap(2, 1),
                    Expect(2, 4, 0, 0),
                    Close(1),
                    Expect(2, 3, 0, 0),
                    // Returned while a debt is owed: closed, not kept idle.
                    Return(1),
                    Expect(2, 2, 0, 0),
                    Close(1),
                    Expect(2, 1, 0, 1),
                    // Never more than the new cap open again.
                    Open(1),
                    Expect(2, 2, 0, 0),
                ],
            },
            CapCase {
                name: "shrinking closes idle connections first, active ones stay",
                steps: vec![Open(4), Return(3), Cap(2, 1), Expect(2, 2, 1, 0)],
            },
            CapCase {
                name: "shrinking takes free slots at once",
                steps: vec![Open(1), Cap(2, 1), Expect(2, 1, 0, 1)],
            },
            CapCase {
                name: "shrink then grow before the debt is paid",
                steps: vec![
                    Open(4),
                    Cap(1, 1),
                    Expect(1, 4, 0, 0),
                    Cap(3, 2),
                    Expect(3, 4, 0, 0),
                    Close(1),
                    Expect(3, 3, 0, 0),
                    Close(1),
                    Expect(3, 2, 0, 1),
                ],
            },
            CapCase {
                name: "a cap above the flag is clamped to it",
                steps: vec![
                    Cap(10, 1),
                    Open(4),
                    Expect(4, 4, 0, 0),
                    Cap(1000, 2),
                    Expect(4, 4, 0, 0),
                ],
            },
            CapCase {
                name: "a cap of 0 still allows one",
                steps: vec![Cap(0, 1), Open(1), Expect(1, 1, 0, 0)],
            },
            CapCase {
                name: "a route's cap applies before its request takes a slot",
                steps: vec![Open(2), RouteCap(3, 1), Expect(3, 3, 0, 0)],
            },
            CapCase {
                name: "a route cached before a later word does not undo it",
                steps: vec![
                    RouteCap(2, 5),
                    Cap(3, 9),
                    RouteCap(2, 5),
                    Expect(3, 2, 0, 1),
                    Cap(1, 10),
                    Expect(1, 2, 0, 0),
                ],
            },
            CapCase {
                name: "a pool made again starts at the remembered cap",
                steps: vec![
                    Cap(2, 1),
                    Open(1),
                    Close(1),
                    Reap,
                    Open(2),
                    Expect(2, 2, 0, 0),
                ],
            },
            CapCase {
                name: "a cap said before the pool exists applies when it is made",
                steps: vec![Cap(3, 1), Open(1), Expect(3, 1, 0, 2)],
            },
            CapCase {
                name: "an inactive endpoint's cap is forgotten: back to the flag",
                steps: vec![
                    Cap(2, 1),
                    Open(2),
                    Forget,
                    Expect(4, 2, 0, 2),
                    Close(2),
                    Reap,
                    Open(4),
                    Expect(4, 4, 0, 0),
                ],
            },
        ];
        for case in cases {
            run_cap_case(case).await;
        }
    }

    async fn run_cap_case(case: CapCase) {
        let h = Harness::new(limits());
        let key = account("ep", "db", "alice");
        let start = std::time::Instant::now();
        let said = |max_conns, at| PoolCap {
            max_conns,
            as_of: start + Duration::from_secs(at),
        };
        let mut active: Vec<Slot> = Vec::new();
        let mut next_id = 0;
        for (i, step) in case.steps.into_iter().enumerate() {
            let at = format!("{}, step {i}", case.name);
            match step {
                Step::Open(n) => {
                    for _ in 0..n {
                        active.push(h.slot(&key).await);
                    }
                }
                Step::Return(n) => {
                    for _ in 0..n {
                        next_id += 1;
                        let slot = active.pop().expect("an active connection");
                        h.set.put(key.clone(), h.fake(next_id, false), slot);
                    }
                }
                Step::Close(n) => active.truncate(active.len() - n),
                Step::Cap(max, at) => h.set.set_cap(&key.endpoint, said(max, at)),
                Step::RouteCap(max, at) => {
                    let acquired = h.set.acquire(&key, false, Some(said(max, at))).await;
                    match acquired {
                        Ok((Acquired::Slot(slot), _)) => active.push(slot),
                        _ => panic!("{at}: no slot"),
                    }
                }
                Step::Forget => h.set.forget_cap(&key.endpoint),
                Step::Reap => {
                    tokio::time::advance(limits().idle_timeout).await;
                    h.set.evict_expired(Instant::now());
                    assert!(h.set.state().endpoints.is_empty(), "{at}: forgotten");
                }
                Step::Expect(cap, open, idle, free) => {
                    let shape = h.shape(&key.endpoint).await;
                    assert_eq!(shape, (cap, open, idle, free), "{at}");
                    assert_eq!(open - idle, active.len(), "{at}: active");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_waiting_request_gets_a_slot_as_soon_as_the_cap_grows() {
        tokio::time::pause();
        let h = Harness::new(limits());
        let key = account("ep", "db", "alice");
        let now = std::time::Instant::now();
        h.set.set_cap(
            &key.endpoint,
            PoolCap {
                max_conns: 1,
                as_of: now,
            },
        );
        let _first = h.slot(&key).await;
        let set = h.set.clone();
        let waiter = {
            let key = key.clone();
            tokio::spawn(async move { set.acquire(&key, false, None).await.is_ok() })
        };
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "waits for a slot");
        let started = Instant::now();
        let later = now + Duration::from_secs(1);
        h.set.set_cap(
            &key.endpoint,
            PoolCap {
                max_conns: 2,
                as_of: later,
            },
        );
        assert!(waiter.await.expect("no panic"), "a slot");
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn remembered_caps_are_bounded_by_the_pools_and_time() {
        tokio::time::pause();
        let h = Harness::new(limits());
        let now = std::time::Instant::now();
        let cap = PoolCap {
            max_conns: 2,
            as_of: now,
        };
        let busy = account("busy", "db", "alice");
        h.set.set_cap(&endpoint("gone"), cap);
        h.set.set_cap(&busy.endpoint, cap);
        let _active = h.slot(&busy).await;
        let remembered = |h: &Harness| {
            let mut ids: Vec<String> = h.set.state().caps.keys().map(|e| e.to_string()).collect();
            ids.sort();
            ids
        };
        tokio::time::advance(CAP_MEMORY - Duration::from_secs(1)).await;
        h.set.evict_expired(Instant::now());
        assert_eq!(remembered(&h), ["busy", "gone"]);
        tokio::time::advance(Duration::from_secs(1)).await;
        h.set.evict_expired(Instant::now());
        assert_eq!(remembered(&h), ["busy"], "a pool keeps its cap remembered");
        h.set.forget_cap(&busy.endpoint);
        assert!(remembered(&h).is_empty());
    }
}
