//! Backend connections for SQL over HTTP, kept warm per (endpoint, database, role).
//!
//! Architecture invariant: a request reuses a pooled connection only after its own password was
//! verified: matched against the role's SCRAM secret by the caller (control-plane routes: every
//! request that gets here), or, on a static route, accepted by Postgres before
//! ([`PasswordCache`]); otherwise it opens a new connection and Postgres judges the password.
//! New connections go through [`RouteTable::connect`], which wakes the endpoint again when its
//! cached address stopped answering; on control-plane routes they log in with the keys the
//! client proved ([`crate::compute::Login::Scram`]). The pool key carries no credentials, and it
//! carries the endpoint, so one endpoint's credentials are never tried against another
//! endpoint's backend.
//!
//! A request whose password is not proven cannot disturb anyone else: a failed login touches
//! no pooled connection and no cached proof (a wrong password must not empty its victim's
//! pool), and only a proven request may take a full endpoint's slot from another key's idle
//! connection; unproven ones wait for a free slot within the acquire timeout. Credentials
//! changes arrive as role changes ([`crate::control_plane::activity`]), which close the role's idle
//! connections ([`Pool::close_idle_of_role`]).
//!
//! Checkout is LIFO and skips connections the server has closed. With none idle but one of the
//! endpoint being reset, a verified request waits briefly for it rather than open a new one.
//! Returned connections are reset in the background (`ROLLBACK` if needed, `DISCARD ALL`)
//! before they become idle again. A connection is discarded, never returned, after any error
//! or when the request is dropped mid-query; a dropped in-flight query is cancelled first.
//! Limits: open connections per endpoint (waiting briefly for a slot; a proven request evicts
//! idle connections of other roles first), idle connections per endpoint (a returned
//! connection is kept past that cap, and the connections beyond it close once unused for a
//! second: a load needing more connections than the cap keeps them instead of closing and
//! reopening them) and in total, and an idle timeout, both enforced by [`Pool::run_reaper`]
//! too.
//! When the control plane says an endpoint is not active (its compute was suspended), its idle
//! connections are closed ([`Pool::close_idle_of`]).
//!
//! A reused connection can still have been closed by its server just before the request was
//! sent (a compute being suspended). [`Conn::never_ran`] tells when a failed request provably
//! never ran, so the caller may retry it once on a new connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::auth::{Account, HashingLimits, PasswordCache};
use crate::base::conn_info::{ConnInfo, EndpointId};
use crate::base::error::{ErrorKind, ReportableError};
use crate::compute::{Backend, BackendError, ConnectParams, Login, Progress};
use crate::control_plane::routes::{ConnectError, Route, RouteError, RouteTable};
use crate::obs::labels::Checkout;
use crate::obs::metrics::Metrics;
use crate::pgwire::scram::ScramKeys;

#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Open (active + idle) backend connections per endpoint.
    pub max_conns_per_endpoint: usize,
    pub max_idle_per_endpoint: usize,
    pub max_idle_total: usize,
    pub idle_timeout: Duration,
    /// How long a request waits for a connection slot before failing.
    pub acquire_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long a verified password may be trusted for reuse without asking Postgres again.
    pub password_ttl: Duration,
    /// No backend message may exceed this (bounds memory per connection).
    pub max_message_bytes: usize,
    /// The iteration cap and the queue of password hashing ([`PasswordCache`]).
    pub hashing: HashingLimits,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("authentication failed")]
    AuthFailed,
    #[error("no connection slot became free in time")]
    TooManyConnections,
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The cached address failed and waking the endpoint again did not work.
    #[error(transparent)]
    Route(RouteError),
}

impl ReportableError for PoolError {
    fn kind(&self) -> ErrorKind {
        match self {
            PoolError::AuthFailed => ErrorKind::User,
            PoolError::TooManyConnections => ErrorKind::RateLimit,
            PoolError::Backend(e) => e.kind(),
            PoolError::Route(e) => e.kind(),
        }
    }
}

pub struct Pool {
    config: PoolConfig,
    passwords: PasswordCache,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct State {
    endpoints: HashMap<EndpointId, EndpointPool>,
    idle_total: usize,
}

struct EndpointPool {
    /// Idle connections per (database, role), most recently returned last.
    idle: HashMap<(String, String), Vec<Idle>>,
    idle_count: usize,
    slots: Arc<Semaphore>,
    /// Wakes requests waiting for a slot when a connection becomes idle.
    returned: Arc<Notify>,
    /// Connections being reset after a request, about to become idle (or be discarded).
    resetting: Arc<AtomicUsize>,
    /// Verified requests looking for a connection: with an idle cap of 0, a returned connection
    /// is kept only while there are any (one of them takes it at once).
    waiting: Arc<AtomicUsize>,
}

struct Locked<'a> {
    guard: MutexGuard<'a, State>,
    idle_gauge: &'a prometheus::IntGauge,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.idle_gauge.set(self.guard.idle_total as i64);
    }
}

/// An idle connection is boxed: it is far larger than a slot.
enum Acquired {
    Idle(Box<Idle>),
    Slot(OwnedSemaphorePermit),
}

struct Idle {
    backend: Backend,
    slot: OwnedSemaphorePermit,
    since: Instant,
}

impl Pool {
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Proofs of passwords: checks against role secrets, and what Postgres accepted.
    pub fn passwords(&self) -> &PasswordCache {
        &self.passwords
    }

    pub fn new(config: PoolConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Pool {
            passwords: PasswordCache::new(config.password_ttl, config.hashing, metrics.clone()),
            config,
            state: Mutex::new(State::default()),
            metrics,
        })
    }

    /// Locks the pool state. The idle gauge is set from `idle_total` when the lock is
    /// released, so no code path has to remember to update it.
    fn state(&self) -> Locked<'_> {
        // A panic while holding the lock cannot leave the maps inconsistent in a way that
        // matters more than losing the pool, so recover the guard.
        Locked {
            guard: self
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            idle_gauge: &self.metrics.pool_idle,
        }
    }

    /// A connection for `info` at `route`: a pooled one if the password is verified (by the
    /// caller against the role's secret: `proven`, or by Postgres earlier on a static route),
    /// else a new one authenticated by Postgres. With `proven`, a new connection logs in with
    /// those keys (SCRAM only); without, with the password.
    ///
    /// With `reuse_idle` false the connection is always a new one (a retry after a reused one
    /// turned out to be closed: its idle siblings likely are too).
    pub async fn checkout(
        self: &Arc<Self>,
        routes: &RouteTable,
        route: Route,
        info: &ConnInfo,
        application_name: Option<&str>,
        proven: Option<&ScramKeys>,
        reuse_idle: bool,
    ) -> Result<Conn, PoolError> {
        let key = Account::of(info);
        let verified = proven.is_some() || self.passwords.is_verified(&key, &info.password);
        let (acquired, resetting) = self.acquire(&key, verified && reuse_idle).await?;
        let slot = match acquired {
            Acquired::Idle(idle) => {
                self.metrics.pool_checkouts.inc(Checkout::Hit);
                return Ok(Conn::new(
                    self.clone(),
                    key,
                    idle.backend,
                    idle.slot,
                    true,
                    resetting,
                ));
            }
            Acquired::Slot(slot) => slot,
        };
        self.metrics.pool_checkouts.inc(Checkout::Miss);
        let started = Instant::now();
        let startup = application_name.map(|name| [("application_name", name)]);
        let params = ConnectParams {
            user: &info.user,
            database: &info.database,
            startup: startup.as_ref().map_or(&[][..], |s| &s[..]),
            login: match proven {
                Some(keys) => Login::Scram(keys),
                None => Login::Password {
                    password: info.password.as_bytes(),
                    keys: &self.passwords,
                },
            },
        };
        let connected = routes
            .connect(route, |address| {
                let params = &params;
                async move {
                    crate::compute::connect(
                        &address,
                        params,
                        self.config.connect_timeout,
                        self.config.max_message_bytes,
                    )
                    .await
                }
            })
            .await;
        self.metrics
            .backend_connect_seconds
            .observe(started.elapsed().as_secs_f64());
        match connected {
            Ok(backend) => {
                if proven.is_none() {
                    self.passwords.remember(&key, &info.password);
                }
                Ok(Conn::new(
                    self.clone(),
                    key,
                    backend,
                    slot,
                    false,
                    resetting,
                ))
            }
            // Nothing pooled or remembered is touched: whoever sent this password need not be
            // whoever owns the key.
            Err(ConnectError::Connect(BackendError::Db(e))) if e.is_auth_failure() => {
                Err(PoolError::AuthFailed)
            }
            Err(ConnectError::Connect(e)) => Err(e.into()),
            Err(ConnectError::Route(e)) => Err(PoolError::Route(e)),
        }
    }

    fn take_idle(&self, key: &Account) -> Option<Idle> {
        let mut closed = Vec::new();
        let found = {
            let mut state = self.state();
            let State {
                endpoints,
                idle_total,
            } = &mut *state;
            let endpoint = endpoints.get_mut(&key.endpoint)?;
            let list = endpoint
                .idle
                .get_mut(&(key.database.clone(), key.role.clone()))?;
            let mut found = None;
            while let Some(idle) = list.pop() {
                endpoint.idle_count -= 1;
                *idle_total -= 1;
                if idle.backend.is_closed() {
                    closed.push(idle);
                } else {
                    found = Some(idle);
                    break;
                }
            }
            found
        };
        self.metrics.pool_discards.inc_by(closed.len() as u64);
        found
    }

    /// Closes the idle connections of `role` on `endpoint`, any database (its password
    /// changed, or it was dropped). Returns how many.
    pub fn close_idle_of_role(&self, endpoint: &EndpointId, role: &str) -> usize {
        let removed: Vec<Idle> = {
            let mut state = self.state();
            let State {
                endpoints,
                idle_total,
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
            let removed: Vec<Idle> = keys
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

    /// Closes every idle connection of `endpoint` (the control plane said its compute is not
    /// active: Postgres stopped, or PgBouncer paused). Returns how many.
    pub fn close_idle_of(&self, endpoint: &EndpointId) -> usize {
        let removed: Vec<Idle> = {
            let mut state = self.state();
            let State {
                endpoints,
                idle_total,
            } = &mut *state;
            let Some(pool) = endpoints.get_mut(endpoint) else {
                return 0;
            };
            let removed: Vec<Idle> = pool.idle.drain().flat_map(|(_, list)| list).collect();
            pool.idle_count -= removed.len();
            *idle_total -= removed.len();
            removed
        };
        let count = removed.len();
        self.close_idle(removed);
        count
    }

    /// An idle connection to reuse (only for a verified password), or a slot to open a new one;
    /// and the endpoint's count of connections being reset.
    ///
    /// With nothing idle but a connection of the endpoint being reset, a verified request first
    /// waits up to [`RESET_WAIT`] for it: the reset is one round trip, a new connection a
    /// fork and an authentication on the server. Without the wait, a steady load of N clients
    /// keeps opening connections (each request's own is still resetting when its next one
    /// arrives) and closing them again past the idle cap.
    async fn acquire(
        &self,
        key: &Account,
        verified: bool,
    ) -> Result<(Acquired, Arc<AtomicUsize>), PoolError> {
        let (slots, returned, resetting, waiting) = {
            let mut state = self.state();
            let max = self.config.max_conns_per_endpoint;
            let pool = state
                .endpoints
                .entry(key.endpoint.clone())
                .or_insert_with(|| EndpointPool {
                    idle: HashMap::new(),
                    idle_count: 0,
                    slots: Arc::new(Semaphore::new(max)),
                    returned: Arc::new(Notify::new()),
                    resetting: Arc::new(AtomicUsize::new(0)),
                    waiting: Arc::new(AtomicUsize::new(0)),
                });
            (
                pool.slots.clone(),
                pool.returned.clone(),
                pool.resetting.clone(),
                pool.waiting.clone(),
            )
        };
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
        slots: &Arc<Semaphore>,
        returned: &Notify,
        resetting: &AtomicUsize,
    ) -> Result<Acquired, PoolError> {
        // Waiting for resets ends here, however many returns other requests win.
        let mut reset_deadline = None;
        let deadline = tokio::time::Instant::now() + self.config.acquire_timeout;
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
                    let deadline = *reset_deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + RESET_WAIT);
                    if tokio::time::timeout_at(deadline, &mut returned)
                        .await
                        .is_ok()
                    {
                        continue;
                    }
                }
            }
            if let Ok(slot) = slots.clone().try_acquire_owned() {
                return Ok(Acquired::Slot(slot));
            }
            // Full: for a verified request, the oldest idle connection of this endpoint of
            // another database or role gives its slot. Never its own key's: one returned since
            // it looked is for it to take (the `returned` wake-up below), not to close and
            // reopen. An unverified request evicts nothing (a wrong password must not close
            // other people's connections): it waits for a free slot.
            if verified {
                if let Some(Idle { backend, slot, .. }) = self.evict_oldest(&key.endpoint, key) {
                    self.metrics.pool_discards.inc();
                    spawn_detached(backend.terminate());
                    return Ok(Acquired::Slot(slot));
                }
            }
            tokio::select! {
                slot = slots.clone().acquire_owned() => {
                    return slot.map(Acquired::Slot).map_err(|_| PoolError::TooManyConnections);
                }
                _ = &mut returned => continue,
                _ = tokio::time::sleep_until(deadline) => return Err(PoolError::TooManyConnections),
            }
        }
    }

    /// The oldest idle connection of `endpoint`, other than those of `except`.
    fn evict_oldest(&self, endpoint: &EndpointId, except: &Account) -> Option<Idle> {
        let mut state = self.state();
        let State {
            endpoints,
            idle_total,
        } = &mut *state;
        let idle = take_oldest(endpoints.get_mut(endpoint)?, Some(except))?;
        *idle_total -= 1;
        Some(idle)
    }

    /// Puts a freshly reset connection back, unless the idle caps are reached. Past the
    /// per-endpoint cap it is kept all the same (a load that needs more connections than the
    /// cap would otherwise close and reopen them all the time); idle connections beyond the
    /// cap go once unused for [`SURPLUS_GRACE`] (here and by [`Pool::run_reaper`]). A cap of 0
    /// keeps nothing idle unless a request is waiting.
    fn put(&self, key: Account, backend: Backend, slot: OwnedSemaphorePermit) {
        let now = Instant::now();
        let idle = Idle {
            backend,
            slot,
            since: now,
        };
        let cap = self.config.max_idle_per_endpoint;
        let closing = {
            let mut state = self.state();
            let State {
                endpoints,
                idle_total,
            } = &mut *state;
            match endpoints.get_mut(&key.endpoint) {
                Some(pool)
                    if *idle_total < self.config.max_idle_total
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

    /// Closes every endpoint's idle connections beyond the per-endpoint cap that went unused
    /// for [`SURPLUS_GRACE`]. Returns how many it closed.
    pub fn trim_surplus(&self, now: Instant) -> usize {
        let cap = self.config.max_idle_per_endpoint;
        let closing: Vec<Idle> = {
            let mut state = self.state();
            let State {
                endpoints,
                idle_total,
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

    /// Closes connections that left the idle lists (their slots free as they go).
    fn close_idle(&self, idle: Vec<Idle>) {
        if idle.is_empty() {
            return;
        }
        self.metrics.pool_discards.inc_by(idle.len() as u64);
        spawn_detached(async move {
            for Idle { backend, slot, .. } in idle {
                backend.terminate().await;
                drop(slot);
            }
        });
    }

    /// Removes idle connections older than the idle timeout or closed by the server, and
    /// forgets endpoints with no connections at all. Returns how many connections it closed.
    pub fn evict_expired(&self, now: Instant) -> usize {
        let timeout = self.config.idle_timeout;
        let expired: Vec<Idle> = {
            let mut state = self.state();
            let State {
                endpoints,
                idle_total,
            } = &mut *state;
            let mut expired = Vec::new();
            for pool in endpoints.values_mut() {
                for list in pool.idle.values_mut() {
                    let (keep, gone): (Vec<Idle>, Vec<Idle>) =
                        std::mem::take(list).into_iter().partition(|idle| {
                            now.saturating_duration_since(idle.since) < timeout
                                && !idle.backend.is_closed()
                        });
                    *list = keep;
                    pool.idle_count -= gone.len();
                    *idle_total -= gone.len();
                    expired.extend(gone);
                }
                pool.idle.retain(|_, list| !list.is_empty());
            }
            let max = self.config.max_conns_per_endpoint;
            endpoints
                .retain(|_, pool| !(pool.idle.is_empty() && pool.slots.available_permits() == max));
            expired
        };
        let count = expired.len();
        self.close_idle(expired);
        count
    }

    /// Enforces the idle timeout and closes the surplus beyond the per-endpoint idle cap until
    /// `shutdown`, then closes every idle connection.
    pub async fn run_reaper(self: Arc<Self>, shutdown: CancellationToken) {
        let period =
            (self.config.idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
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
        let all: Vec<Idle> = {
            let mut state = self.state();
            state.idle_total = 0;
            state
                .endpoints
                .drain()
                .flat_map(|(_, pool)| pool.idle.into_values().flatten())
                .collect()
        };
        for Idle { backend, .. } in all {
            backend.terminate().await;
        }
    }
}

fn spawn_detached(task: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(task);
    }
}

/// A checked-out backend connection. [`Conn::release`] returns it to the pool after a reset;
/// dropping it instead discards it, cancelling a query still in flight.
/// How long a request waits for a connection being reset before opening a new one.
const RESET_WAIT: Duration = Duration::from_millis(5);

/// How long an idle connection beyond the per-endpoint cap may go unused before it is closed.
const SURPLUS_GRACE: Duration = Duration::from_secs(1);

/// How often the reaper closes the surplus (the idle timeout is enforced less often).
const SURPLUS_TICK: Duration = Duration::from_millis(250);

pub struct Conn {
    pool: Arc<Pool>,
    /// The endpoint's count of connections being reset (see [`Pool::acquire`]).
    resetting: Arc<AtomicUsize>,
    key: Account,
    backend: Option<Backend>,
    slot: Option<OwnedSemaphorePermit>,
    /// Taken from the idle list (rather than opened for this request).
    reused: bool,
    /// Where the conversation stood at checkout.
    checked_out: Progress,
}

impl Conn {
    fn new(
        pool: Arc<Pool>,
        key: Account,
        backend: Backend,
        slot: OwnedSemaphorePermit,
        reused: bool,
        resetting: Arc<AtomicUsize>,
    ) -> Self {
        pool.metrics.pool_active.inc();
        Conn {
            pool,
            resetting,
            key,
            checked_out: backend.progress(),
            backend: Some(backend),
            slot: Some(slot),
            reused,
        }
    }

    /// Whether the request that just failed with `error` on this reused connection provably
    /// never ran, because the server had closed the connection before the request reached it
    /// (a compute suspended while the connection sat idle). Then, and only then, the request
    /// may be retried on a new connection. Provably means one of:
    ///
    /// - not one byte of the request was written (writing failed at once: the socket was
    ///   already reset);
    /// - the first thing the server said after the request was a FATAL "operator
    ///   intervention" (`57P01` admin shutdown, `57P02`, `57P05`, …) and nothing came before
    ///   it. Postgres handles a connection's messages in order and queues each reply in order
    ///   (ParseComplete for a Parse, CommandComplete before the ReadyForQuery that follows a
    ///   commit), and a FATAL is queued after whatever is pending, so a FATAL that arrives
    ///   first was raised before the server finished parsing the request's first message:
    ///   nothing of it executed. (Through PgBouncer the same holds: it relays in order.)
    ///
    /// Everything else may have run and is never retried: the connection closing without a
    /// word (a server killed after committing dies without flushing its replies), a FATAL
    /// after any other reply, any error on a connection opened for this request, and any
    /// error after the first round trip of a request.
    pub fn never_ran(&self, error: &BackendError) -> bool {
        let Some(backend) = self.backend.as_ref() else {
            return false;
        };
        if !self.reused {
            return false;
        }
        let now = backend.progress();
        let before = self.checked_out;
        match error {
            BackendError::Io(_) => now.bytes_written == before.bytes_written,
            BackendError::Db(db) => {
                db.is_server_going_away() && now.messages_read == before.messages_read + 1
            }
            _ => false,
        }
    }

    pub fn backend(&mut self) -> &mut Backend {
        self.backend
            .as_mut()
            .expect("the backend is only taken by release or drop")
    }

    /// Hands the connection back: reset in the background, then idle in the pool.
    pub fn release(mut self) {
        let (Some(mut backend), Some(slot)) = (self.backend.take(), self.slot.take()) else {
            return;
        };
        self.pool.metrics.pool_active.dec();
        let pool = self.pool.clone();
        let key = self.key.clone();
        let resetting = Counted::start(self.resetting.clone());
        spawn_detached(async move {
            match tokio::time::timeout(Duration::from_secs(10), backend.reset()).await {
                Ok(Ok(())) => {
                    pool.put(key, backend, slot);
                    drop(resetting);
                }
                _ => {
                    drop(resetting);
                    pool.metrics.pool_discards.inc();
                    discard(backend, slot).await;
                }
            }
        });
    }
}

/// Takes `pool`'s idle connections beyond `cap` that went unused for [`SURPLUS_GRACE`], oldest
/// first (LIFO checkout leaves the unneeded ones at the bottom to age).
fn trim_surplus(
    pool: &mut EndpointPool,
    idle_total: &mut usize,
    cap: usize,
    now: Instant,
) -> Vec<Idle> {
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
fn take_oldest(pool: &mut EndpointPool, except: Option<&Account>) -> Option<Idle> {
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
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn start(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Counted(count)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn discard(backend: Backend, slot: OwnedSemaphorePermit) {
    if backend.in_flight() {
        if let Err(e) = backend.cancel_key().cancel().await {
            tracing::debug!(error = %e, "could not send cancel request");
        }
    }
    backend.terminate().await;
    drop(slot);
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let (Some(backend), Some(slot)) = (self.backend.take(), self.slot.take()) {
            self.pool.metrics.pool_active.dec();
            self.pool.metrics.pool_discards.inc();
            spawn_detached(discard(backend, slot));
        }
    }
}
