//! Proof that a request knows its role's password, so that it may reuse a pooled backend.
//!
//! Two authorities can vouch for a password:
//! - Postgres: when a new backend connection authenticates with a password, the gateway
//!   remembers a keyed hash (HMAC-SHA-256 under a per-process random key) of that password for
//!   the (endpoint, database, role) ([`PasswordCache::remember`], [`PasswordCache::is_verified`]);
//! - the role's SCRAM secret from the control plane ([`scram`]): [`PasswordCache::check`] runs
//!   PBKDF2 on the blocking pool and remembers a match under a keyed hash of (endpoint, role,
//!   secret, password), so the hashing runs once per password within the TTL, and concurrent
//!   checks of the same password share one computation.
//!
//! A later request may take a pooled connection only if its own password is proven by one of
//! them; otherwise it opens a new connection and Postgres judges it. Entries expire, so a
//! changed password stops being accepted from the cache after the TTL (and at once, for the
//! secret, when the control plane hands out the new one). Plain passwords are never stored.

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
use scram::{ClientKeys, ScramSecret};

type Digest = [u8; 32];

/// What a password check against the role's secret found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordCheck {
    /// The password matches the role's secret: pooled connections may be reused.
    Verified,
    /// The password does not match: refuse without asking Postgres.
    Wrong,
    /// No secret is known (static route, unknown role, control plane unavailable): Postgres
    /// judges the password on a new connection, as without a control plane.
    Unchecked,
}

/// How a check against a secret went, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretOutcome {
    /// Proven by an earlier check of the same password against the same secret.
    Cached,
    Match,
    Mismatch,
    /// No secret to check against.
    NoSecret,
}

impl SecretOutcome {
    pub const ALL: [SecretOutcome; 4] = [
        SecretOutcome::Cached,
        SecretOutcome::Match,
        SecretOutcome::Mismatch,
        SecretOutcome::NoSecret,
    ];

    pub fn label(self) -> &'static str {
        match self {
            SecretOutcome::Cached => "cached",
            SecretOutcome::Match => "match",
            SecretOutcome::Mismatch => "mismatch",
            SecretOutcome::NoSecret => "no_secret",
        }
    }
}

/// Domain separation between the two kinds of proof.
const ACCEPTED_BY_POSTGRES: u8 = 1;
const MATCHED_SECRET: u8 = 2;
const CLIENT_KEYS: u8 = 3;

pub struct PasswordCache {
    key: [u8; 32],
    /// Per (endpoint, database, role): the digest of the password Postgres last accepted.
    verified: moka::sync::Cache<PoolKey, Digest>,
    /// Digests of (endpoint, role, secret, password) that matched the secret.
    matched: moka::future::Cache<Digest, ()>,
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
                .build(),
            matched: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
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

    /// Postgres rejected a password for `key`: trust nothing cached for it.
    pub fn forget(&self, key: &PoolKey) {
        self.verified.invalidate(key);
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

    /// Checks `password` against the role's `secret` (when one is known), counting the
    /// outcome. PBKDF2 runs on the blocking pool, once per (endpoint, role, secret, password)
    /// within the TTL; concurrent checks of the same password wait for the same run.
    pub async fn check(
        &self,
        secret: Option<&Arc<ScramSecret>>,
        endpoint: &EndpointId,
        role: &str,
        password: &Password,
    ) -> PasswordCheck {
        let (outcome, check) = match secret {
            None => (SecretOutcome::NoSecret, PasswordCheck::Unchecked),
            Some(secret) => match self.check_secret(secret, endpoint, role, password).await {
                outcome @ (SecretOutcome::Cached | SecretOutcome::Match) => {
                    (outcome, PasswordCheck::Verified)
                }
                outcome => (outcome, PasswordCheck::Wrong),
            },
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
    ) -> SecretOutcome {
        let digest = self.digest(
            MATCHED_SECRET,
            [endpoint.as_str().as_bytes(), role.as_bytes()]
                .into_iter()
                .chain(secret.fingerprint()),
            password.as_bytes(),
        );
        let mut hashed = false;
        let result = self
            .matched
            .try_get_with(digest, async {
                hashed = true;
                // A closed semaphore cannot happen (it is never closed); hash anyway.
                let _permit = self.hashing.acquire().await.ok();
                let secret = secret.clone();
                let password = password.clone();
                match tokio::task::spawn_blocking(move || secret.verify(password.as_bytes())).await
                {
                    Ok(true) => Ok(()),
                    // Wrong passwords are not cached: a guesser sends a new one each time.
                    Ok(false) => Err(()),
                    Err(e) => {
                        tracing::error!(error = %e, "password hashing task failed");
                        Err(())
                    }
                }
            })
            .await;
        match (result, hashed) {
            (Ok(()), false) => SecretOutcome::Cached,
            (Ok(()), true) => SecretOutcome::Match,
            (Err(_), _) => SecretOutcome::Mismatch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(role: &str) -> PoolKey {
        PoolKey {
            endpoint: EndpointId::parse("db").expect("id"),
            database: "main".into(),
            role: role.into(),
        }
    }

    #[test]
    fn only_the_remembered_password_matches() {
        let cache = PasswordCache::new(Duration::from_secs(60), Arc::new(Metrics::new()));
        let right = Password::new(b"right".to_vec());
        let wrong = Password::new(b"wrong".to_vec());
        assert!(!cache.is_verified(&key("alice"), &right));
        cache.remember(&key("alice"), &right);
        assert!(cache.is_verified(&key("alice"), &right));
        assert!(!cache.is_verified(&key("alice"), &wrong));
        // The same password for another role proves nothing.
        assert!(!cache.is_verified(&key("bob"), &right));
        cache.forget(&key("alice"));
        assert!(!cache.is_verified(&key("alice"), &right));
    }

    #[test]
    fn entries_expire() {
        let cache = PasswordCache::new(Duration::from_millis(30), Arc::new(Metrics::new()));
        let password = Password::new(b"pw".to_vec());
        cache.remember(&key("alice"), &password);
        std::thread::sleep(Duration::from_millis(60));
        assert!(!cache.is_verified(&key("alice"), &password));
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

    fn secret(password: &str) -> Arc<ScramSecret> {
        Arc::new(
            ScramSecret::parse(&postgres_protocol::password::scram_sha_256(
                password.as_bytes(),
            ))
            .expect("valid secret"),
        )
    }

    #[tokio::test]
    async fn checks_against_secrets_are_cached_per_password_and_secret() {
        let metrics = Arc::new(Metrics::new());
        let cache = PasswordCache::new(Duration::from_secs(60), metrics.clone());
        let db = EndpointId::parse("db").expect("id");
        let right = Password::new(b"right".to_vec());
        let wrong = Password::new(b"wrong".to_vec());
        let secret = secret("right");
        let check = |s: Option<&Arc<ScramSecret>>, role: &'static str, p: &Password| {
            let (cache, db, p, s) = (&cache, &db, p.clone(), s.cloned());
            async move { cache.check(s.as_ref(), db, role, &p).await }
        };
        assert_eq!(check(None, "alice", &right).await, PasswordCheck::Unchecked);
        assert_eq!(
            check(Some(&secret), "alice", &right).await,
            PasswordCheck::Verified
        );
        assert_eq!(
            check(Some(&secret), "alice", &right).await,
            PasswordCheck::Verified
        );
        assert_eq!(
            check(Some(&secret), "alice", &wrong).await,
            PasswordCheck::Wrong
        );
        assert_eq!(
            check(Some(&secret), "alice", &wrong).await,
            PasswordCheck::Wrong
        );
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
        assert_eq!(
            check(Some(&rotated), "alice", &right).await,
            PasswordCheck::Wrong
        );
        // Another role with the same secret and password is checked on its own.
        assert_eq!(
            check(Some(&secret), "bob", &right).await,
            PasswordCheck::Verified
        );
        assert_eq!(
            outcomes(&metrics),
            [
                ("cached", 1),
                ("match", 2),
                ("mismatch", 3),
                ("no_secret", 1)
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_checks_of_one_password_hash_once() {
        let metrics = Arc::new(Metrics::new());
        let cache = Arc::new(PasswordCache::new(Duration::from_secs(60), metrics.clone()));
        let secret = secret("pw");
        let checks = (0..50).map(|_| {
            let (cache, secret) = (cache.clone(), secret.clone());
            tokio::spawn(async move {
                let db = EndpointId::parse("db").expect("id");
                cache
                    .check(Some(&secret), &db, "alice", &Password::new(b"pw".to_vec()))
                    .await
            })
        });
        for check in futures_util::future::join_all(checks).await {
            assert_eq!(check.expect("task"), PasswordCheck::Verified);
        }
        assert_eq!(outcomes(&metrics), [("cached", 49), ("match", 1)]);
    }
}
