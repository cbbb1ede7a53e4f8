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
//! idle connections of other roles first; the flag's cap, or the control plane's for the
//! endpoint's compute size when lower, which can change while connections are open: see
//! [`idle`] and [`slots`]), idle connections per endpoint (a returned
//! connection is kept past that cap, and the connections beyond it close once unused for a
//! second: a load needing more connections than the cap keeps them instead of closing and
//! reopening them) and in total, and an idle timeout, both enforced by [`Pool::run_reaper`]
//! too.
//! When the control plane says an endpoint is not active (its compute was suspended), its idle
//! connections are closed ([`Pool::close_idle_of`]).
//!
//! A reused connection can still have been closed by its server just before the request was
//! sent (a compute being suspended). [`Conn::never_ran`] tells when a failed request provably
//!
//! The bookkeeping (idle lists, slots, waiters, eviction, caps, the reaper) is in [`idle`],
//! generic over the connection, with each endpoint's resizable slots in [`slots`]; this module
//! opens connections and [`conn`] hands them out.

mod conn;
mod idle;
mod slots;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::auth::{Account, HashingLimits, PasswordCache};
use crate::base::conn_info::ConnInfo;
use crate::base::endpoint::EndpointId;
use crate::base::error::{ErrorKind, ReportableError};
use crate::compute::{Backend, BackendError, ConnectParams, Login};
use crate::control_plane::routes::{ConnectError, PoolCap, Route, RouteError, RouteTable};
use crate::obs::labels::Checkout;
use crate::obs::metrics::Metrics;
use crate::pgwire::scram::ScramKeys;

pub use conn::Conn;
use idle::{Acquired, IdleSet, Limits, Pooled};
use slots::Slot;

#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Open (active + idle) backend connections per endpoint, whatever its size; a control
    /// plane may set a lower cap per endpoint that follows its compute size.
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

impl PoolConfig {
    fn limits(&self) -> Limits {
        Limits {
            max_conns_per_endpoint: self.max_conns_per_endpoint,
            max_idle_per_endpoint: self.max_idle_per_endpoint,
            max_idle_total: self.max_idle_total,
            idle_timeout: self.idle_timeout,
            acquire_timeout: self.acquire_timeout,
        }
    }
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

/// How [`Pool::checkout`] gets its connection, besides the route and the client's claims.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckoutOptions<'a> {
    /// Sent in the startup message of a new connection.
    pub application_name: Option<&'a str>,
    /// The keys of the client's password, proven by the caller against the role's secret: the
    /// password counts as verified, and a new connection logs in with them (SCRAM only).
    pub proven: Option<&'a ScramKeys>,
    pub reuse: Reuse,
}

/// Whether a checkout may take an idle connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reuse {
    /// An idle connection if the password is verified, else a new one.
    #[default]
    Idle,
    /// Always a new connection (a retry after a reused one turned out to be closed: its idle
    /// siblings likely are too).
    NewOnly,
}

impl Pooled for Backend {
    fn is_closed(&self) -> bool {
        Backend::is_closed(self)
    }

    fn terminate(self) -> impl std::future::Future<Output = ()> + Send {
        Backend::terminate(self)
    }
}

pub struct Pool {
    config: PoolConfig,
    passwords: PasswordCache,
    idle: IdleSet<Backend>,
    metrics: Arc<Metrics>,
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
            idle: IdleSet::new(
                config.limits(),
                metrics.pool_idle.clone(),
                metrics.pool_discards.clone(),
            ),
            config,
            metrics,
        })
    }

    /// A connection for `info` at `route`: a pooled one if the password is verified (by the
    /// caller against the role's secret: `options.proven`, or by Postgres earlier on a static
    /// route) and `options.reuse` allows it, else a new one authenticated by Postgres. With
    /// `proven`, a new connection logs in with those keys (SCRAM only); without, with the
    /// password. The route's cap (the control plane's, for the endpoint's compute size)
    /// applies to the endpoint's pool first; a `-pooler` route's does not (PgBouncer's pools
    /// are its own, and the cap is the direct endpoint's).
    pub async fn checkout(
        self: &Arc<Self>,
        routes: &RouteTable,
        route: Route,
        info: &ConnInfo,
        options: CheckoutOptions<'_>,
    ) -> Result<Conn, PoolError> {
        let key = Account::of(info);
        let verified = options.proven.is_some() || self.passwords.is_verified(&key, &info.password);
        let reuse_idle = verified && options.reuse == Reuse::Idle;
        let cap = route.pool_cap.filter(|_| !key.endpoint.is_pooler());
        let (acquired, resetting) = self
            .idle
            .acquire(&key, reuse_idle, cap)
            .await
            .map_err(|_| PoolError::TooManyConnections)?;
        let slot = match acquired {
            Acquired::Idle(idle) => {
                self.metrics.pool_checkouts.inc(Checkout::Hit);
                return Ok(Conn::new(
                    self.clone(),
                    key,
                    idle.conn,
                    idle.slot,
                    true,
                    resetting,
                ));
            }
            Acquired::Slot(slot) => slot,
        };
        self.metrics.pool_checkouts.inc(Checkout::Miss);
        let backend = self.connect(routes, route, info, &key, options).await?;
        Ok(Conn::new(
            self.clone(),
            key,
            backend,
            slot,
            false,
            resetting,
        ))
    }

    /// A new connection through the route table, which wakes the endpoint again when its
    /// cached address stopped answering. A password Postgres accepted is remembered for `key`.
    async fn connect(
        &self,
        routes: &RouteTable,
        route: Route,
        info: &ConnInfo,
        key: &Account,
        options: CheckoutOptions<'_>,
    ) -> Result<Backend, PoolError> {
        let started = Instant::now();
        let startup = options
            .application_name
            .map(|name| [("application_name", name)]);
        let params = ConnectParams {
            user: &info.user,
            database: &info.database,
            startup: startup.as_ref().map_or(&[][..], |s| &s[..]),
            login: match options.proven {
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
                if options.proven.is_none() {
                    self.passwords.remember(key, &info.password);
                }
                Ok(backend)
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

    /// Closes the idle connections of `role` on `endpoint`, any database (its password
    /// changed, or it was dropped). Returns how many.
    pub fn close_idle_of_role(&self, endpoint: &EndpointId, role: &str) -> usize {
        self.idle.close_idle_of_role(endpoint, role)
    }

    /// Closes the idle connections of every endpoint for which `which` holds. Returns how
    /// many.
    pub fn close_idle_where(&self, which: impl Fn(&EndpointId) -> bool) -> usize {
        self.idle.close_idle_where(which)
    }

    /// Closes every idle connection of `endpoint` (the control plane said its compute is not
    /// active: Postgres stopped, or PgBouncer paused). Returns how many.
    pub fn close_idle_of(&self, endpoint: &EndpointId) -> usize {
        self.idle.close_idle_of(endpoint)
    }

    /// Puts a freshly reset connection back (see [`IdleSet::put`]).
    fn put(&self, key: Account, backend: Backend, slot: Slot) {
        self.idle.put(key, backend, slot);
    }

    /// The control plane's cap on `endpoint` (without `-pooler`) for its compute size, from an
    /// activity reply (see [`IdleSet::set_cap`]): never interrupts a connection in use.
    pub fn set_pool_cap(&self, endpoint: &EndpointId, cap: PoolCap) {
        self.idle.set_cap(endpoint, cap);
    }

    /// What the control plane last said of `endpoint`'s cap, if it is remembered.
    #[cfg(test)]
    pub fn remembered_pool_cap(&self, endpoint: &EndpointId) -> Option<u32> {
        self.idle.remembered_cap(endpoint)
    }

    /// Forgets the control plane's cap on `endpoint` (it is not active); its next wake says
    /// it again.
    pub fn forget_pool_cap(&self, endpoint: &EndpointId) {
        self.idle.forget_cap(endpoint);
    }

    /// Enforces the idle timeout and closes the surplus beyond the per-endpoint idle cap until
    /// `shutdown`, then closes every idle connection.
    pub async fn run_reaper(self: Arc<Self>, shutdown: CancellationToken) {
        self.idle.run_reaper(shutdown).await;
    }
}
