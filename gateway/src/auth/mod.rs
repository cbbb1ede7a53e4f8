//! Proof that a request knows its role's password, so that it may reuse a pooled backend.
//!
//! Postgres is the authority on passwords: when a new backend connection authenticates with a
//! password, the gateway remembers a keyed hash (HMAC-SHA-256 under a per-process random key) of
//! that password for the (endpoint, database, role). A later request may take a pooled
//! connection only if its own password hashes to the same value; otherwise it must open a new
//! connection and let Postgres judge it. Entries expire, so a password changed in Postgres stops
//! being accepted from the cache after the TTL. Plain passwords are never stored.

use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::conn_info::Password;
use crate::pool::PoolKey;

type Digest = [u8; 32];

pub struct PasswordCache {
    key: [u8; 32],
    verified: moka::sync::Cache<PoolKey, Digest>,
}

impl PasswordCache {
    pub fn new(ttl: Duration) -> Self {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        PasswordCache {
            key,
            verified: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        }
    }

    fn digest(&self, key: &PoolKey, password: &Password) -> Digest {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        // The pool key is mixed in so a digest is only ever valid for its own role.
        for part in [
            key.endpoint.as_str().as_bytes(),
            key.database.as_bytes(),
            key.role.as_bytes(),
        ] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// True if Postgres accepted exactly this password for `key` within the TTL.
    pub fn is_verified(&self, key: &PoolKey, password: &Password) -> bool {
        match self.verified.get(key) {
            Some(known) => bool::from(known.ct_eq(&self.digest(key, password))),
            None => false,
        }
    }

    /// Records that Postgres just accepted `password` for `key`.
    pub fn remember(&self, key: &PoolKey, password: &Password) {
        self.verified
            .insert(key.clone(), self.digest(key, password));
    }

    /// Postgres rejected a password for `key`: trust nothing cached for it.
    pub fn forget(&self, key: &PoolKey) {
        self.verified.invalidate(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn_info::EndpointId;

    fn key(role: &str) -> PoolKey {
        PoolKey {
            endpoint: EndpointId::parse("db").expect("id"),
            database: "main".into(),
            role: role.into(),
        }
    }

    #[test]
    fn only_the_remembered_password_matches() {
        let cache = PasswordCache::new(Duration::from_secs(60));
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
        let cache = PasswordCache::new(Duration::from_millis(30));
        let password = Password::new(b"pw".to_vec());
        cache.remember(&key("alice"), &password);
        std::thread::sleep(Duration::from_millis(60));
        assert!(!cache.is_verified(&key("alice"), &password));
    }
}
