//! Role passwords that can be revealed again: Neon's API hands a role's password back
//! (`connection_uri`, `reveal_password`), and the test tooling built on it depends on that.
//!
//! The store keeps a role's SCRAM verifier, which is what logins need, and next to it the
//! password sealed with ChaCha20-Poly1305 (ring's AEAD, already in the build for TLS) under a
//! 32-byte key that never enters the store: a copy of the store alone reveals no password.
//! The endpoint and the role are the seal's associated data, so a sealed value copied onto
//! another role's row does not open.
//!
//! The key is given (`--password-key`, 64 hex digits) or lives in a file
//! (`--password-key-file`, by default `DATA_DIR/password.key`, created with mode 0600 on first
//! start). Replicas sharing an external store must have the same key: the store records the
//! key's fingerprint on first use and a replica with another key refuses to start
//! ([`PasswordVault::fingerprint`]).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::Rng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use sha2::{Digest, Sha256};

/// What a sealed value starts with: the format's version, so the scheme can change later.
const PREFIX: &str = "v1:";

const KEY_LEN: usize = 32;

/// Seals and opens role passwords (see the module's documentation).
pub struct PasswordVault {
    key: LessSafeKey,
    fingerprint: String,
}

impl std::fmt::Debug for PasswordVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordVault")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// A sealed password that does not open: sealed under another key, or altered.
    #[error("the role's stored password does not open with this service's password key (sealed under another key, or altered)")]
    Unsealable,
    /// ring refused the key or the seal (neither happens for a 32-byte key and a password).
    #[error("the password key cannot seal")]
    Crypto,
}

impl PasswordVault {
    pub fn new(key: [u8; KEY_LEN]) -> Result<PasswordVault, VaultError> {
        let fingerprint = URL_SAFE_NO_PAD
            .encode(&Sha256::digest([&b"password-key:"[..], &key[..]].concat())[..12]);
        let key = UnboundKey::new(&CHACHA20_POLY1305, &key).map_err(|_| VaultError::Crypto)?;
        Ok(PasswordVault {
            key: LessSafeKey::new(key),
            fingerprint,
        })
    }

    /// A key given as 64 hex digits.
    pub fn from_hex(text: &str) -> anyhow::Result<PasswordVault> {
        let key = parse_key(text.trim())
            .ok_or_else(|| anyhow::anyhow!("a password key is 64 hex digits"))?;
        Ok(PasswordVault::new(key)?)
    }

    /// Reads the key file (64 hex digits), or creates it with a random key (mode 0600) when
    /// it does not exist.
    pub fn load_or_create(path: &Path) -> anyhow::Result<PasswordVault> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let key = parse_key(text.trim()).with_context(|| {
                    format!(
                        "the password key file {} must hold 64 hex digits",
                        path.display()
                    )
                })?;
                Ok(PasswordVault::new(key)?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match create_key_file(path)? {
                    Some(key) => {
                        tracing::info!(path = %path.display(), "created a password key");
                        Ok(PasswordVault::new(key)?)
                    }
                    // Another process sharing DATA_DIR made it first: theirs is the key.
                    None => PasswordVault::load_or_create(path),
                }
            }
            Err(e) => Err(anyhow::anyhow!(
                "cannot read the password key file {}: {e}",
                path.display()
            )),
        }
    }

    /// Names the key without revealing it (12 bytes of a SHA-256 over it), for the store to
    /// tell replicas with different keys apart.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Seals `password` of role `role` on endpoint `endpoint`.
    pub fn seal(&self, endpoint: &str, role: &str, password: &str) -> Result<String, VaultError> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::rngs::OsRng.gen();
        let mut sealed = password.as_bytes().to_vec();
        let aad = associated(endpoint, role);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad.as_slice()),
                &mut sealed,
            )
            .map_err(|_| VaultError::Crypto)?;
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}", STANDARD.encode(out)))
    }

    /// Opens what [`Self::seal`] gave for the same endpoint and role.
    pub fn open(&self, endpoint: &str, role: &str, sealed: &str) -> Result<String, VaultError> {
        let bytes = sealed
            .strip_prefix(PREFIX)
            .and_then(|b64| STANDARD.decode(b64).ok())
            .ok_or(VaultError::Unsealable)?;
        if bytes.len() < NONCE_LEN {
            return Err(VaultError::Unsealable);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| VaultError::Unsealable)?;
        let mut buffer = ciphertext.to_vec();
        let aad = associated(endpoint, role);
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_slice()), &mut buffer)
            .map_err(|_| VaultError::Unsealable)?;
        String::from_utf8(plain.to_vec()).map_err(|_| VaultError::Unsealable)
    }
}

/// Writes a random key to `path` unless a file is there: the key is written to a file of
/// its own (a random name) first and then linked into place, so another process never reads
/// half a key, and of two racing first starts one key wins. `None` when the other won.
fn create_key_file(path: &Path) -> anyhow::Result<Option<[u8; KEY_LEN]>> {
    let key: [u8; KEY_LEN] = rand::rngs::OsRng.gen();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let staging = path.with_extension(format!("key.{:016x}.new", rand::random::<u64>()));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staging)?;
        file.write_all(format!("{}\n", hex(&key)).as_bytes())?;
        file.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&staging, path));
    let _ = std::fs::remove_file(&staging);
    match linked {
        Ok(()) => Ok(Some(key)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(anyhow::anyhow!(
            "creating the password key file {}: {e}",
            path.display()
        )),
    }
}

/// A new password as Neon's API makes them (`npg_` and random letters and digits): 24 of
/// them, about 143 bits.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::OsRng;
    let tail: String = (0..24)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("npg_{tail}")
}

fn associated(endpoint: &str, role: &str) -> Vec<u8> {
    // Both are checked names (no NUL), so the separator makes the pair unambiguous.
    [
        b"role-password\0",
        endpoint.as_bytes(),
        b"\0",
        role.as_bytes(),
    ]
    .concat()
}

fn parse_key(text: &str) -> Option<[u8; KEY_LEN]> {
    if text.len() != KEY_LEN * 2 || !text.is_ascii() {
        return None;
    }
    let mut key = [0u8; KEY_LEN];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_for_the_same_role_and_key() {
        let vault = PasswordVault::new([7; 32]).expect("key");
        let sealed = vault.seal("ep1", "alice", "s3cret").expect("sealed");
        assert!(!sealed.contains("s3cret"));
        assert_eq!(
            vault.open("ep1", "alice", &sealed).expect("opens"),
            "s3cret"
        );
        assert_ne!(
            sealed,
            vault.seal("ep1", "alice", "s3cret").expect("sealed"),
            "a fresh nonce each time"
        );
        assert!(vault.open("ep1", "bob", &sealed).is_err());
        assert!(vault.open("ep2", "alice", &sealed).is_err());
        let other = PasswordVault::new([8; 32]).expect("key");
        assert!(other.open("ep1", "alice", &sealed).is_err());
        assert_ne!(vault.fingerprint(), other.fingerprint());
        for broken in ["", "v1:", "v1:!!!", "v2:AAAA", &sealed[..sealed.len() - 2]] {
            assert!(vault.open("ep1", "alice", broken).is_err(), "{broken}");
        }
    }

    #[test]
    fn key_file_is_created_once_and_read_back() {
        let dir = std::env::temp_dir().join(format!("vault-test-{}", std::process::id()));
        let path = dir.join("password.key");
        let _ = std::fs::remove_dir_all(&dir);
        let first = PasswordVault::load_or_create(&path).expect("created");
        let mode = std::fs::metadata(&path).expect("exists").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let again = PasswordVault::load_or_create(&path).expect("read");
        assert_eq!(first.fingerprint(), again.fingerprint());
        let text = std::fs::read_to_string(&path).expect("read");
        let given = PasswordVault::from_hex(&text).expect("the file's key, given");
        assert_eq!(first.fingerprint(), given.fingerprint());
        assert!(PasswordVault::from_hex("abcd").is_err());
        std::fs::write(&path, "not hex").expect("write");
        assert!(PasswordVault::load_or_create(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn racing_first_starts_agree_on_one_key() {
        let dir = std::env::temp_dir().join(format!("vault-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("password.key");
        let fingerprints: Vec<String> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    PasswordVault::load_or_create(&path)
                        .expect("a key")
                        .fingerprint()
                        .to_owned()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        assert!(
            fingerprints.iter().all(|f| f == &fingerprints[0]),
            "{fingerprints:?}"
        );
        let left: Vec<_> = std::fs::read_dir(&dir).expect("dir").collect();
        assert_eq!(left.len(), 1, "no staging file left");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn generated_passwords() {
        let a = generate_password();
        assert!(a.starts_with("npg_") && a.len() == 28, "{a}");
        assert!(a[4..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, generate_password());
    }
}
