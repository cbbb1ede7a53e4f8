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
//! - a cleartext password that matched the role's secret ([`PasswordCache::check`]: PBKDF2 on
//!   the blocking pool, at most one per core at a time, once per (endpoint, role, secret,
//!   password) within the TTL; concurrent checks of one password share the run). The match
//!   yields the [`scram::ScramKeys`] the gateway logs in to the backend with;
//! - on static routes, the password Postgres last accepted for an (endpoint, database, role)
//!   ([`PasswordCache::remember`], [`PasswordCache::is_verified`]): a request may reuse a
//!   pooled connection only with it. A failed login changes nothing here (an attacker's wrong
//!   password must not evict the owner's proof); a changed password replaces the proof at the
//!   next successful login, and the old one is trusted at most until the TTL.
//!
//! With a control plane, role changes reach the gateway through activity replies
//! ([`crate::activity`]): [`PasswordCache::forget_role`] then drops the role's proofs of both
//! kinds at once ([`PasswordCache::forget_all`] everything, when the gateway cannot know what
//! changed).

pub mod scram;

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::conn_info::{EndpointId, Password};
use crate::metrics::Metrics;
use crate::pool::PoolKey;
use scram::{ClientKeys, ScramKeys, ScramSecret};

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
}

/// How a check against a secret went, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretOutcome {
    /// Proven by an earlier check of the same password against the same secret.
    Cached,
    Match,
    Mismatch,
    /// Checked against a mock secret (unknown endpoint or role): always refused.
    Mock,
    /// A static route: nothing to check against, Postgres judges.
    NoSecret,
}

impl SecretOutcome {
    pub const ALL: [SecretOutcome; 5] = [
        SecretOutcome::Cached,
        SecretOutcome::Match,
        SecretOutcome::Mismatch,
        SecretOutcome::Mock,
        SecretOutcome::NoSecret,
    ];

    pub fn label(self) -> &'static str {
        match self {
            SecretOutcome::Cached => "cached",
            SecretOutcome::Match => "match",
            SecretOutcome::Mismatch => "mismatch",
            SecretOutcome::Mock => "mock",
            SecretOutcome::NoSecret => "no_secret",
        }
    }
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

pub struct PasswordCache {
    key: [u8; 32],
    /// Per (endpoint, database, role): the digest of the password Postgres last accepted.
    verified: moka::sync::Cache<PoolKey, Digest>,
    /// Passwords that matched their role's secret, with the ClientKey the match produced.
    matched: moka::future::Cache<MatchedKey, [u8; 32]>,
    /// SCRAM client keys derived for backend logins, by digest of (salt, iterations, password).
    client_keys: moka::sync::Cache<Digest, ClientKeys>,
    /// PBKDF2 runs at most this many at a time, so a flood of wrong passwords cannot take
    /// every blocking thread.
    hashing: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl PasswordCache {
    pub fn new(ttl: Duration, metrics: Arc<Metrics>) -> Self {
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
            client_keys: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            hashing: Arc::new(Semaphore::new(threads)),
            metrics,
        }
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

    fn accepted_digest(&self, key: &PoolKey, password: &Password) -> Digest {
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
    pub fn is_verified(&self, key: &PoolKey, password: &Password) -> bool {
        match self.verified.get(key) {
            Some(known) => bool::from(known.ct_eq(&self.accepted_digest(key, password))),
            None => false,
        }
    }

    /// Records that Postgres just accepted `password` for `key`.
    pub fn remember(&self, key: &PoolKey, password: &Password) {
        self.verified
            .insert(key.clone(), self.accepted_digest(key, password));
    }

    /// `role` on `endpoint` changed its password or was dropped: forgets every proof of it,
    /// on any database, for the endpoint and its `-pooler` (`endpoint` without `-pooler`).
    /// Proofs remembered after this call are new ones.
    pub fn forget_role(&self, endpoint: &EndpointId, role: &str) {
        let endpoint = endpoint.without_pooler();
        let (e, r) = (endpoint.clone(), role.to_owned());
        let verified = self.verified.invalidate_entries_if(move |key, _| {
            key.role == r && key.endpoint.without_pooler() == e
        });
        let r = role.to_owned();
        let matched = self
            .matched
            .invalidate_entries_if(move |key, _| key.role == r && key.endpoint == endpoint);
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
    /// `iterations` the server sent: derived (PBKDF2) once per (salt, iterations, password)
    /// within the TTL, so a warm role's next login costs a few hashes. The keys depend on
    /// nothing else, so sharing them across endpoints and roles grants nothing: another
    /// password gets other keys, and the server still checks the proof.
    pub fn client_keys(&self, password: &[u8], salt: &[u8], iterations: u32) -> ClientKeys {
        let digest = self.digest(CLIENT_KEYS, [salt, &iterations.to_be_bytes()[..]], password);
        if let Some(keys) = self.client_keys.get(&digest) {
            return keys;
        }
        let keys = ClientKeys::derive(password, salt, iterations);
        self.client_keys.insert(digest, keys);
        keys
    }

    /// Checks `password` against `verifier`, counting the outcome. PBKDF2 runs on the
    /// blocking pool, once per (endpoint, role, secret, password) within the TTL; concurrent
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
                let _ = self.check_secret(secret, endpoint, role, password).await;
                (SecretOutcome::Mock, PasswordCheck::Wrong)
            }
            Verifier::Secret(secret) => {
                match self.check_secret(secret, endpoint, role, password).await {
                    (outcome, Some(keys)) => (outcome, PasswordCheck::Verified(keys)),
                    (outcome, None) => (outcome, PasswordCheck::Wrong),
                }
            }
        };
        self.metrics.hot.secret_verifications.inc(outcome.label());
        check
    }

    async fn check_secret(
        &self,
        secret: &Arc<ScramSecret>,
        endpoint: &EndpointId,
        role: &str,
        password: &Password,
    ) -> (SecretOutcome, Option<ScramKeys>) {
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
                // A closed semaphore cannot happen (it is never closed); hash anyway.
                let _permit = self.hashing.acquire().await.ok();
                let secret = secret.clone();
                let password = password.clone();
                match tokio::task::spawn_blocking(move || secret.client_key(password.as_bytes()))
                    .await
                {
                    Ok(Some(client_key)) => Ok(client_key),
                    // Wrong passwords are not cached: a guesser sends a new one each time.
                    Ok(None) => Err(()),
                    Err(e) => {
                        tracing::error!(error = %e, "password hashing task failed");
                        Err(())
                    }
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
                (outcome, Some(ScramKeys::new(client_key, secret.clone())))
            }
            Err(_) => (SecretOutcome::Mismatch, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(endpoint: &str, role: &str) -> PoolKey {
        PoolKey {
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
        let cache = PasswordCache::new(Duration::from_secs(60), Arc::new(Metrics::new()));
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
        let cache = PasswordCache::new(Duration::from_millis(30), Arc::new(Metrics::new()));
        let password = Password::new(b"pw".to_vec());
        cache.remember(&key("db", "alice"), &password);
        std::thread::sleep(Duration::from_millis(60));
        assert!(!cache.is_verified(&key("db", "alice"), &password));
    }

    fn outcomes(metrics: &Metrics) -> Vec<(&'static str, u64)> {
        SecretOutcome::ALL
            .iter()
            .map(|o| {
                let n = metrics
                    .secret_verifications
                    .with_label_values(&[o.label()])
                    .get();
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
        }
    }

    #[tokio::test]
    async fn checks_against_secrets_are_cached_per_password_and_secret() {
        let metrics = Arc::new(Metrics::new());
        let cache = PasswordCache::new(Duration::from_secs(60), metrics.clone());
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
        let cache = PasswordCache::new(Duration::from_secs(60), metrics.clone());
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
        let cache = Arc::new(PasswordCache::new(Duration::from_secs(60), metrics.clone()));
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
}
