//! Proof that a client knows its role's password, before it reaches a backend or reuses a
//! pooled one.
//!
//! What a password is checked against ([`Verifier`]):
//! - a static route (`--route`): nothing here; Postgres judges the password on a new
//!   connection (and plain TCP clients answer Postgres's own challenge, relayed);
//! - with a control plane: the role's SCRAM secret ([`scram`]), or, for an endpoint or role
//!   the control plane does not know (or a secret that is not SCRAM), a mock secret derived
//!   from a per-process key ([`scram::ScramSecret::mock`]) that nothing matches. Unknown
//!   endpoints, unknown roles and wrong passwords thus get the same work and the same
//!   answer, and none of them reaches a backend. Roles created in SQL have no secret in the
//!   control plane, so they cannot log in through the gateway.
//!
//! Two kinds of proof are remembered, under keyed hashes (HMAC-SHA-256, per-process random
//! key), never the passwords:
//! - a cleartext password that matched the role's secret ([`PasswordCache::check`]: PBKDF2
//!   once per (endpoint, role, secret, password) within the TTL; concurrent checks of one
//!   password share the run). The match yields the [`scram::ScramKeys`] the gateway logs in to
//!   the backend with;
//! - on static routes, the password Postgres last accepted for an (endpoint, database, role)
//!   ([`PasswordCache::remember`], [`PasswordCache::is_verified`]): a request may reuse a
//!   pooled connection only with it. A failed login changes nothing here (an attacker's wrong
//!   password must not evict the owner's proof); a changed password replaces the proof at the
//!   next successful login, and the old one is trusted at most until the TTL.
//!
//! Hashing (PBKDF2: checking a password against a secret, deriving the SCRAM keys a static
//! route's login needs, [`PasswordCache::client_keys`]) is what a client can make the gateway
//! spend CPU on without knowing a password, so it follows three rules:
//! - the iteration count is capped ([`HashingLimits::max_scram_iterations`],
//!   `--max-scram-iterations`), for secrets from the control plane (one above the cap is
//!   answered like an unknown role: `crate::proxy::login::Login::verifier`) and for the
//!   server-first-messages of backends (a tenant can give a role any verifier in SQL); above it
//!   nothing is hashed and the login fails at once ([`Limit::ScramIterations`]);
//! - it runs on the blocking pool, never on the runtime's workers, at most one hash per core at
//!   a time (a hash holds its permit until it is done, even if its client left);
//! - at most [`HashingLimits::max_queue`] checks wait for a permit
//!   (`--max-password-hash-queue`); more are refused at once ([`Limit::PasswordHashQueue`],
//!   429 / `53300`). Only a run waits: a cached match or cached keys never queue, and
//!   concurrent checks of one password wait for the same run without a place of their own.
//!
//! With a control plane, role changes reach the gateway through activity replies
//! ([`crate::control_plane::activity`]): [`PasswordCache::forget_role`] then drops the role's proofs of both
//! kinds at once ([`PasswordCache::forget_all`] everything, when the gateway cannot know what
//! changed).

pub mod jwt;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::base::conn_info::ConnInfo;
use crate::base::endpoint::{EndpointId, Password};
use crate::base::limits::{Limit, Refused};
use crate::compute::{BackendError, ClientKeySource};
use crate::obs::labels::SecretOutcome;
use crate::obs::metrics::Metrics;
use crate::pgwire::scram::{ClientKeys, ScramKeys, ScramSecret};

type Digest = [u8; 32];

/// What a client's password (or SCRAM proof) is checked against.
#[derive(Clone, Debug)]
pub enum Verifier {
    /// A static route: Postgres judges the password.
    Postgres,
    /// The role's secret from the control plane.
    Secret(Arc<ScramSecret>),
    /// An endpoint or role the control plane does not know: a mock secret (same salt length
    /// and iterations as a real one), checked the same way, never accepted.
    Mock(Arc<ScramSecret>),
}

impl Verifier {
    /// The mock verifier for `role` on `endpoint` (`-pooler` shares the endpoint's), stable
    /// per process.
    pub fn mock(key: &[u8; 32], endpoint: &EndpointId, role: &str) -> Verifier {
        let endpoint = endpoint.without_pooler();
        Verifier::Mock(Arc::new(ScramSecret::mock(key, endpoint.as_str(), role)))
    }

    #[cfg(test)]
    /// The secret a client proves its password against (real or mock); `None` when Postgres
    /// judges.
    pub fn secret(&self) -> Option<&Arc<ScramSecret>> {
        match self {
            Verifier::Postgres => None,
            Verifier::Secret(secret) | Verifier::Mock(secret) => Some(secret),
        }
    }
}

/// What a password check found.
#[derive(Clone, Debug)]
pub enum PasswordCheck {
    /// The password matches the role's secret: pooled connections may be reused, and the
    /// backend login uses these keys.
    Verified(ScramKeys),
    /// The password does not match (or the role or endpoint is unknown): refuse without a
    /// backend.
    Wrong,
    /// A static route: Postgres judges the password on a new connection.
    Unchecked,
    /// Not checked: a limit refused the hashing (the queue is full, or the secret asks for
    /// more iterations than the cap). The same for a wrong password and an unknown role.
    Refused(Refused),
}

/// The limits on password hashing ([module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashingLimits {
    /// The most PBKDF2 iterations a role secret or a backend's server-first-message may ask
    /// for (`--max-scram-iterations`).
    pub max_scram_iterations: u32,
    /// How many checks may wait for a hashing thread (`--max-password-hash-queue`).
    pub max_queue: usize,
}

impl HashingLimits {
    /// 100 000 iterations: 24 times Postgres's default (4096), room for verifiers made with a
    /// raised `scram_iterations`, and about 25 ms of one core per hash; a billion would be
    /// minutes. 256 waiting checks: a burst of new logins with distinct passwords, at most a
    /// few seconds of hashing ahead of the last one.
    pub const DEFAULT: HashingLimits = HashingLimits {
        max_scram_iterations: 100_000,
        max_queue: 256,
    };
}

/// Why no keys came out of [`PasswordCache::client_keys`].
#[derive(Clone, Debug, thiserror::Error)]
pub enum HashError {
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The hashing task panicked or was cancelled (runtime shutdown); logged.
    #[error("password hashing failed")]
    Failed,
}

/// What the client is told when the hashing queue is full.
const QUEUE_FULL: &str = "too many connection attempts; please try again later";

/// A place in the hashing queue, given back when dropped (also when the waiting request is
/// cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a check against a secret proved nothing (the error of a shared run).
#[derive(Clone, Debug)]
enum Unproven {
    Mismatch,
    Refused(Refused),
}

/// A remembered match: the (endpoint, role) it is for, so a role change can drop it, and the
/// keyed hash of (endpoint, role, secret, password).
#[derive(Clone, PartialEq, Eq, Hash)]
struct MatchedKey {
    endpoint: EndpointId,
    role: String,
    digest: Digest,
}

/// Domain separation between the two kinds of proof.
const ACCEPTED_BY_POSTGRES: u8 = 1;
const MATCHED_SECRET: u8 = 2;
const CLIENT_KEYS: u8 = 3;

/// Who logs in where: the unit a password is verified for and backend connections are
/// pooled by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Account {
    pub endpoint: EndpointId,
    pub database: String,
    pub role: String,
}

impl Account {
    pub fn of(info: &ConnInfo) -> Self {
        Account {
            endpoint: info.endpoint.clone(),
            database: info.database.clone(),
            role: info.user.clone(),
        }
    }
}

pub struct PasswordCache {
    key: [u8; 32],
    /// Per (endpoint, database, role): the digest of the password Postgres last accepted.
    verified: moka::sync::Cache<Account, Digest>,
    /// Passwords that matched their role's secret, with the ClientKey the match produced.
    matched: moka::future::Cache<MatchedKey, [u8; 32]>,
    /// SCRAM client keys derived for backend logins, by digest of (salt, iterations, password).
    client_keys: moka::future::Cache<Digest, ClientKeys>,
    /// PBKDF2 runs at most this many at a time, so a flood of wrong passwords cannot take
    /// every blocking thread.
    hashing: Arc<Semaphore>,
    /// Checks waiting for a `hashing` permit now, at most `limits.max_queue`.
    waiting: AtomicUsize,
    limits: HashingLimits,
    metrics: Arc<Metrics>,
}

impl PasswordCache {
    pub fn new(ttl: Duration, limits: HashingLimits, metrics: Arc<Metrics>) -> Self {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        let threads = std::thread::available_parallelism().map_or(4, usize::from);
        PasswordCache {
            key,
            verified: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .support_invalidation_closures()
                .build(),
            matched: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .support_invalidation_closures()
                .build(),
            client_keys: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            hashing: Arc::new(Semaphore::new(threads)),
            waiting: AtomicUsize::new(0),
            limits,
            metrics,
        }
    }

    /// The most PBKDF2 iterations a secret or a backend may ask for.
    pub fn max_scram_iterations(&self) -> u32 {
        self.limits.max_scram_iterations
    }

    /// Refuses an iteration count above the cap, before anything is hashed.
    fn within_cap(&self, iterations: u32) -> Result<(), Refused> {
        let max = self.limits.max_scram_iterations;
        if iterations <= max {
            return Ok(());
        }
        Err(Refused::new(
            Limit::ScramIterations,
            format!(
                "the role's password asks for {iterations} SCRAM iterations, more than this \
                 gateway allows ({max}); set the password again with fewer (Postgres's default \
                 is 4096)"
            ),
        ))
    }

    /// Runs `work` (PBKDF2) on the blocking pool with a hashing permit. Waiting for a permit
    /// takes a place in the queue, refused at once when `max_queue` checks already wait. The
    /// permit goes with the work, so it is held until the hash is done even when the caller
    /// gave up: no more hashes than permits ever run.
    async fn hash<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = match self.hashing.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let _waiting = self.wait()?;
                self.hashing
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the hashing semaphore is never closed")
            }
        };
        let hashed = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await;
        hashed.map_err(|e| {
            tracing::error!(error = %e, "password hashing task failed");
            HashError::Failed
        })
    }

    /// A place in the hashing queue, if one is free.
    fn wait(&self) -> Result<Waiting<'_>, Refused> {
        let max = self.limits.max_queue;
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| Waiting(&self.waiting))
            .map_err(|_| Refused::new(Limit::PasswordHashQueue, QUEUE_FULL))
    }

    /// HMAC over length-prefixed `parts` (so no two part lists collide), then the password.
    fn digest<'a>(
        &self,
        domain: u8,
        parts: impl IntoIterator<Item = &'a [u8]>,
        password: &[u8],
    ) -> Digest {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(&[domain]);
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(password);
        mac.finalize().into_bytes().into()
    }

    fn accepted_digest(&self, key: &Account, password: &Password) -> Digest {
        // The pool key is mixed in so a digest is only ever valid for its own role.
        self.digest(
            ACCEPTED_BY_POSTGRES,
            [
                key.endpoint.as_str().as_bytes(),
                key.database.as_bytes(),
                key.role.as_bytes(),
            ],
            password.as_bytes(),
        )
    }

    /// True if Postgres accepted exactly this password for `key` within the TTL.
    pub fn is_verified(&self, key: &Account, password: &Password) -> bool {
        match self.verified.get(key) {
            Some(known) => bool::from(known.ct_eq(&self.accepted_digest(key, password))),
            None => false,
        }
    }

    /// Records that Postgres just accepted `password` for `key`.
    pub fn remember(&self, key: &Account, password: &Password) {
        self.verified
            .insert(key.clone(), self.accepted_digest(key, password));
    }

    /// `role` on `endpoint` changed its password or was dropped: forgets every proof of it,
    /// on any database, for the endpoint and its `-pooler` (`endpoint` without `-pooler`).
    /// Proofs remembered after this call are new ones.
    pub fn forget_role(&self, endpoint: &EndpointId, role: &str) {
        self.forget_where(endpoint, Some(role.to_owned()));
    }

    /// `endpoint` was deleted: forgets every proof of every role of it (and its `-pooler`), so
    /// an endpoint made again under the same id starts with none.
    pub fn forget_endpoint(&self, endpoint: &EndpointId) {
        self.forget_where(endpoint, None);
    }

    /// Forgets the proofs of `role` (every role when `None`) on `endpoint` and its `-pooler`.
    fn forget_where(&self, endpoint: &EndpointId, role: Option<String>) {
        let endpoint = endpoint.without_pooler();
        let (e, r) = (endpoint.clone(), role.clone());
        let verified = self.verified.invalidate_entries_if(move |key, _| {
            r.as_ref().is_none_or(|r| key.role == *r) && key.endpoint.without_pooler() == e
        });
        let matched = self.matched.invalidate_entries_if(move |key, _| {
            role.as_ref().is_none_or(|r| key.role == *r) && key.endpoint == endpoint
        });
        if let Err(e) = verified.map(|_| ()).and(matched.map(|_| ())) {
            // Cannot happen (both caches support closures); drop everything rather than keep
            // a proof that may be stale.
            tracing::error!(error = %e, "cannot invalidate one role's proofs; dropping all");
            self.forget_all();
        }
    }

    /// Forgets every proof (the gateway may have missed role changes).
    pub fn forget_all(&self) {
        self.verified.invalidate_all();
        self.matched.invalidate_all();
    }

    /// The SCRAM client keys for logging in to a backend with `password`, for the `salt` and
    /// `iterations` the server sent: derived (PBKDF2, by the hashing rules of the module docs:
    /// refused above the cap or with the queue full) once per (salt, iterations, password)
    /// within the TTL, so a warm role's next login costs a few hashes; concurrent logins with
    /// one password share the run. The keys depend on nothing else, so sharing them across
    /// endpoints and roles grants nothing: another password gets other keys, and the server
    /// still checks the proof.
    pub async fn client_keys(
        &self,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Result<ClientKeys, HashError> {
        self.within_cap(iterations)?;
        let digest = self.digest(CLIENT_KEYS, [salt, &iterations.to_be_bytes()[..]], password);
        let (password, salt) = (Password::new(password.to_vec()), salt.to_vec());
        self.client_keys
            .try_get_with(digest, async {
                self.hash(move || ClientKeys::derive(password.as_bytes(), &salt, iterations))
                    .await
            })
            .await
            .map_err(|e| (*e).clone())
    }

    /// Checks `password` against `verifier`, counting the outcome (a refused check is counted
    /// where the client is answered, as a limit hit). PBKDF2 runs by the hashing rules of the
    /// module docs, once per (endpoint, role, secret, password) within the TTL; concurrent
    /// checks of the same password wait for the same run. A mock secret takes the same path
    /// (and never matches), so it costs what a wrong password costs.
    pub async fn check(
        &self,
        verifier: &Verifier,
        endpoint: &EndpointId,
        role: &str,
        password: &Password,
    ) -> PasswordCheck {
        let (outcome, check) = match verifier {
            Verifier::Postgres => (SecretOutcome::NoSecret, PasswordCheck::Unchecked),
            Verifier::Mock(secret) => {
                // Whatever it finds, a mock is refused.
                match self.check_secret(secret, endpoint, role, password).await {
                    Err(refused) => return PasswordCheck::Refused(refused),
                    Ok(_) => (SecretOutcome::Mock, PasswordCheck::Wrong),
                }
            }
            Verifier::Secret(secret) => {
                match self.check_secret(secret, endpoint, role, password).await {
                    Err(refused) => return PasswordCheck::Refused(refused),
                    Ok((outcome, Some(keys))) => (outcome, PasswordCheck::Verified(keys)),
                    Ok((outcome, None)) => (outcome, PasswordCheck::Wrong),
                }
            }
        };
        self.metrics.secret_verifications.inc(outcome);
        check
    }

    async fn check_secret(
        &self,
        secret: &Arc<ScramSecret>,
        endpoint: &EndpointId,
        role: &str,
        password: &Password,
    ) -> Result<(SecretOutcome, Option<ScramKeys>), Refused> {
        // `AppState::verifier` gives no such secret (it answers like an unknown role); this
        // keeps the cap whoever calls.
        self.within_cap(secret.iterations())?;
        let key = MatchedKey {
            endpoint: endpoint.without_pooler(),
            role: role.to_owned(),
            digest: self.digest(
                MATCHED_SECRET,
                [endpoint.as_str().as_bytes(), role.as_bytes()]
                    .into_iter()
                    .chain(secret.fingerprint()),
                password.as_bytes(),
            ),
        };
        let mut hashed = false;
        let result = self
            .matched
            .try_get_with(key, async {
                hashed = true;
                let (secret, password) = (secret.clone(), password.clone());
                match self
                    .hash(move || secret.client_key(password.as_bytes()))
                    .await
                {
                    Ok(Some(client_key)) => Ok(client_key),
                    // Wrong passwords are not cached: a guesser sends a new one each time.
                    Ok(None) | Err(HashError::Failed) => Err(Unproven::Mismatch),
                    Err(HashError::Refused(refused)) => Err(Unproven::Refused(refused)),
                }
            })
            .await;
        match result {
            Ok(client_key) => {
                let outcome = if hashed {
                    SecretOutcome::Match
                } else {
                    SecretOutcome::Cached
                };
                Ok((outcome, Some(ScramKeys::new(client_key, secret.clone()))))
            }
            Err(unproven) => match &*unproven {
                Unproven::Mismatch => Ok((SecretOutcome::Mismatch, None)),
                Unproven::Refused(refused) => Err(refused.clone()),
            },
        }
    }
}

#[async_trait::async_trait]
impl ClientKeySource for PasswordCache {
    async fn client_keys(
        &self,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Result<ClientKeys, BackendError> {
        PasswordCache::client_keys(self, password, salt, iterations)
            .await
            .map_err(|e| match e {
                HashError::Refused(refused) => BackendError::Limited(refused),
                HashError::Failed => BackendError::Io(std::io::Error::other(e)),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::labels::Label;

    fn key(endpoint: &str, role: &str) -> Account {
        Account {
            endpoint: EndpointId::parse(endpoint).expect("id"),
            database: "main".into(),
            role: role.into(),
        }
    }

    fn id(name: &str) -> EndpointId {
        EndpointId::parse(name).expect("id")
    }

    #[test]
    fn only_the_remembered_password_matches() {
        let cache = PasswordCache::new(
            Duration::from_secs(60),
            HashingLimits::DEFAULT,
            Arc::new(Metrics::new()),
        );
        let right = Password::new(b"right".to_vec());
        let wrong = Password::new(b"wrong".to_vec());
        let alice = key("db", "alice");
        assert!(!cache.is_verified(&alice, &right));
        cache.remember(&alice, &right);
        assert!(cache.is_verified(&alice, &right));
        assert!(!cache.is_verified(&alice, &wrong));
        // The same password for another role proves nothing.
        assert!(!cache.is_verified(&key("db", "bob"), &right));
        // A role change drops the role's proofs on the endpoint and its pooler, and nobody
        // else's.
        let pooled = key("db-pooler", "alice");
        let bob = key("db", "bob");
        let elsewhere = key("other", "alice");
        for k in [&pooled, &bob, &elsewhere] {
            cache.remember(k, &right);
        }
        cache.forget_role(&id("db-pooler"), "alice");
        assert!(!cache.is_verified(&alice, &right));
        assert!(!cache.is_verified(&pooled, &right));
        assert!(cache.is_verified(&bob, &right));
        assert!(cache.is_verified(&elsewhere, &right));
        // Remembered again after the change: a new proof.
        cache.remember(&alice, &right);
        assert!(cache.is_verified(&alice, &right));
        cache.forget_all();
        assert!(!cache.is_verified(&alice, &right));
        assert!(!cache.is_verified(&bob, &right));
    }

    #[test]
    fn entries_expire() {
        let cache = PasswordCache::new(
            Duration::from_millis(30),
            HashingLimits::DEFAULT,
            Arc::new(Metrics::new()),
        );
        let password = Password::new(b"pw".to_vec());
        cache.remember(&key("db", "alice"), &password);
        std::thread::sleep(Duration::from_millis(60));
        assert!(!cache.is_verified(&key("db", "alice"), &password));
    }

    fn outcomes(metrics: &Metrics) -> Vec<(&'static str, u64)> {
        SecretOutcome::ALL
            .iter()
            .map(|o| {
                let n = metrics.secret_verifications.get(*o);
                (o.label(), n)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    fn secret(password: &str) -> Verifier {
        Verifier::Secret(Arc::new(
            ScramSecret::parse(&postgres_protocol::password::scram_sha_256(
                password.as_bytes(),
            ))
            .expect("valid secret"),
        ))
    }

    /// What a check found, for comparisons: "verified", "wrong" or "unchecked".
    async fn check(
        cache: &PasswordCache,
        verifier: &Verifier,
        role: &str,
        password: &str,
    ) -> &'static str {
        let db = id("db");
        let password = Password::new(password.as_bytes().to_vec());
        match cache.check(verifier, &db, role, &password).await {
            PasswordCheck::Verified(keys) => {
                let secret = verifier.secret().expect("a secret");
                assert!(
                    keys.for_server(secret.salt(), secret.iterations())
                        .is_some(),
                    "keys for the secret's salt"
                );
                "verified"
            }
            PasswordCheck::Wrong => "wrong",
            PasswordCheck::Unchecked => "unchecked",
            PasswordCheck::Refused(refused) => {
                assert_eq!(refused.limit, Limit::PasswordHashQueue, "{refused}");
                assert_eq!(refused.message, QUEUE_FULL);
                "refused"
            }
        }
    }

    #[tokio::test]
    async fn checks_against_secrets_are_cached_per_password_and_secret() {
        let metrics = Arc::new(Metrics::new());
        let cache = PasswordCache::new(
            Duration::from_secs(60),
            HashingLimits::DEFAULT,
            metrics.clone(),
        );
        let secret = secret("right");
        assert_eq!(
            check(&cache, &Verifier::Postgres, "alice", "right").await,
            "unchecked"
        );
        assert_eq!(check(&cache, &secret, "alice", "right").await, "verified");
        assert_eq!(check(&cache, &secret, "alice", "right").await, "verified");
        assert_eq!(check(&cache, &secret, "alice", "wrong").await, "wrong");
        assert_eq!(check(&cache, &secret, "alice", "wrong").await, "wrong");
        assert_eq!(
            outcomes(&metrics),
            [
                ("cached", 1),
                ("match", 1),
                ("mismatch", 2),
                ("no_secret", 1)
            ]
        );
        // A new secret (the password changed) needs a new check, and the old password fails.
        let rotated = self::secret("new");
        assert_eq!(check(&cache, &rotated, "alice", "right").await, "wrong");
        // Another role with the same secret and password is checked on its own.
        assert_eq!(check(&cache, &secret, "bob", "right").await, "verified");
        assert_eq!(
            outcomes(&metrics),
            [
                ("cached", 1),
                ("match", 2),
                ("mismatch", 3),
                ("no_secret", 1)
            ]
        );
        // A role change forgets the match: the same secret is hashed again (a check that was
        // running on the old secret when the change arrived cannot be served from the cache).
        cache.forget_role(&id("db"), "alice");
        assert_eq!(check(&cache, &secret, "alice", "right").await, "verified");
        assert_eq!(check(&cache, &secret, "bob", "right").await, "verified");
        assert_eq!(
            outcomes(&metrics),
            [
                ("cached", 2),
                ("match", 3),
                ("mismatch", 3),
                ("no_secret", 1)
            ]
        );
    }

    #[tokio::test]
    async fn a_mock_secret_costs_a_check_and_is_always_refused() {
        let metrics = Arc::new(Metrics::new());
        let cache = PasswordCache::new(
            Duration::from_secs(60),
            HashingLimits::DEFAULT,
            metrics.clone(),
        );
        let mock = Verifier::mock(&[1; 32], &id("ghost-pooler"), "alice");
        let Verifier::Mock(secret) = &mock else {
            panic!("not a mock: {mock:?}");
        };
        // The pooler shares the endpoint's mock, as it shares its secrets.
        let Verifier::Mock(same) = Verifier::mock(&[1; 32], &id("ghost"), "alice") else {
            panic!("not a mock");
        };
        assert_eq!(secret, &same);
        for password in ["", "alice", "postgres"] {
            assert_eq!(check(&cache, &mock, "alice", password).await, "wrong");
        }
        assert_eq!(outcomes(&metrics), [("mock", 3)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_checks_of_one_password_hash_once() {
        let metrics = Arc::new(Metrics::new());
        let cache = Arc::new(PasswordCache::new(
            Duration::from_secs(60),
            HashingLimits::DEFAULT,
            metrics.clone(),
        ));
        let secret = secret("pw");
        let checks = (0..50).map(|_| {
            let (cache, secret) = (cache.clone(), secret.clone());
            tokio::spawn(async move { check(&cache, &secret, "alice", "pw").await })
        });
        for check in futures_util::future::join_all(checks).await {
            assert_eq!(check.expect("task"), "verified");
        }
        assert_eq!(outcomes(&metrics), [("cached", 49), ("match", 1)]);
    }

    fn limited(max_scram_iterations: u32, max_queue: usize) -> PasswordCache {
        PasswordCache::new(
            Duration::from_secs(60),
            HashingLimits {
                max_scram_iterations,
                max_queue,
            },
            Arc::new(Metrics::new()),
        )
    }

    /// Above the cap nothing is hashed: the answer comes at once, whatever the count (a
    /// billion iterations would take minutes).
    #[tokio::test]
    async fn iteration_counts_above_the_cap_are_refused_before_hashing() {
        let cache = limited(5000, 8);
        let (salt, password) = (b"salt".as_slice(), b"pw".as_slice());
        let keys = cache.client_keys(password, salt, 5000).await.expect("keys");
        assert_eq!(keys, ClientKeys::derive(password, salt, 5000));
        for iterations in [5001, 1_000_000_000, u32::MAX] {
            let refused = tokio::time::timeout(
                Duration::from_secs(1),
                cache.client_keys(password, salt, iterations),
            )
            .await
            .expect("refused at once");
            match refused {
                Err(HashError::Refused(refused)) => {
                    assert_eq!(refused.limit, Limit::ScramIterations);
                    assert!(
                        refused
                            .message
                            .contains(&format!("{iterations} SCRAM iterations"))
                            && refused.message.contains("(5000)"),
                        "{refused}"
                    );
                }
                other => panic!("{iterations}: {other:?}"),
            }
        }
        // A secret above the cap (`AppState::verifier` never gives one: it answers like an
        // unknown role) is not hashed either.
        let Verifier::Secret(secret) = secret("pw") else {
            panic!("a secret");
        };
        let base64 = base64::engine::general_purpose::STANDARD;
        let heavy = format!(
            "SCRAM-SHA-256$1000000000:{}$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            base64::Engine::encode(&base64, secret.salt())
        );
        let heavy = Verifier::Secret(Arc::new(ScramSecret::parse(&heavy).expect("parses")));
        let password = Password::new(b"pw".to_vec());
        let check = tokio::time::timeout(
            Duration::from_secs(1),
            cache.check(&heavy, &id("db"), "alice", &password),
        )
        .await
        .expect("refused at once");
        assert!(
            matches!(&check, PasswordCheck::Refused(r) if r.limit == Limit::ScramIterations),
            "{check:?}"
        );
        assert_eq!(cache.max_scram_iterations(), 5000);
    }

    /// PBKDF2 runs on the blocking pool: while a hash runs, the one worker of a
    /// current-thread runtime is free (run inline, the hash would be done before the worker
    /// came back to this task).
    #[tokio::test(flavor = "current_thread")]
    async fn hashing_leaves_the_workers_free() {
        let cache = Arc::new(limited(1 << 17, 8));
        let hashing = tokio::spawn({
            let cache = cache.clone();
            async move { cache.client_keys(b"pw", b"salt", 1 << 17).await }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!hashing.is_finished(), "the hash ran on the worker");
        let keys = hashing.await.expect("task").expect("keys");
        assert_eq!(keys, ClientKeys::derive(b"pw", b"salt", 1 << 17));
    }

    /// Waits (yielding) until `n` checks wait for a hashing permit.
    async fn until_waiting(cache: &PasswordCache, n: usize) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while cache.waiting.load(Ordering::Acquire) != n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{n} checks never waited"));
    }

    /// With every hashing permit taken and `max_queue` checks waiting, a new one is refused at
    /// once; a cached match and checks sharing a waiting run are not; a cancelled check gives
    /// its place back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_hashing_queue_is_bounded() {
        let cache = Arc::new(limited(HashingLimits::DEFAULT.max_scram_iterations, 2));
        let alice = secret("right");
        assert_eq!(check(&cache, &alice, "alice", "right").await, "verified");
        let permits = cache.hashing.available_permits() as u32;
        let held = cache
            .hashing
            .clone()
            .acquire_many_owned(permits)
            .await
            .expect("permits");
        let spawn = |password: &'static str| {
            let (cache, alice) = (cache.clone(), alice.clone());
            tokio::spawn(async move { check(&cache, &alice, "alice", password).await })
        };
        let first = spawn("guess 1");
        until_waiting(&cache, 1).await;
        let second = spawn("guess 2");
        until_waiting(&cache, 2).await;
        // The same password as a waiting check: the same run, no place of its own.
        let shared: Vec<_> = (0..5).map(|_| spawn("guess 1")).collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(cache.waiting.load(Ordering::Acquire), 2);
        assert!(shared.iter().all(|check| !check.is_finished()));
        // The queue is full: refused at once, wrong passwords, unknown roles and backend
        // logins alike.
        assert_eq!(check(&cache, &alice, "alice", "guess 3").await, "refused");
        let mock = Verifier::mock(&[1; 32], &id("ghost"), "alice");
        assert_eq!(check(&cache, &mock, "alice", "guess 3").await, "refused");
        match cache.client_keys(b"guess 3", b"salt", 4096).await {
            Err(HashError::Refused(refused)) => assert_eq!(refused.limit, Limit::PasswordHashQueue),
            other => panic!("{other:?}"),
        }
        // A cached match never waits.
        assert_eq!(check(&cache, &alice, "alice", "right").await, "verified");
        // A cancelled check gives its place back.
        second.abort();
        assert!(second.await.expect_err("aborted").is_cancelled());
        until_waiting(&cache, 1).await;
        let third = spawn("guess 4");
        until_waiting(&cache, 2).await;
        drop(held);
        for check in [first, third].into_iter().chain(shared) {
            assert_eq!(check.await.expect("task"), "wrong");
        }
        assert_eq!(cache.waiting.load(Ordering::Acquire), 0);
        assert_eq!(cache.hashing.available_permits() as u32, permits);
    }
}
