//! SCRAM-SHA-256 role secrets (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, as
//! Postgres stores them in `pg_authid` and the control plane hands them out) and checking a
//! cleartext password against one, the way Postgres does at the end of a SCRAM exchange:
//!
//! ```text
//! SaltedPassword = Hi(SASLprep(password), salt, iterations)      (PBKDF2-HMAC-SHA-256)
//! ClientKey      = HMAC(SaltedPassword, "Client Key")
//! match          = SHA-256(ClientKey) == StoredKey               (constant time)
//! ```
//!
//! [`ScramSecret::verify`] costs `iterations` HMACs (4096 by default): call it on the blocking
//! pool, never on the reactor.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Secrets asking for more work than this are refused (protects the hashing threads).
const MAX_ITERATIONS: u32 = 1 << 20;

/// A parsed role secret. `Debug` shows only the iteration count.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScramSecret(iterations={}, <redacted>)", self.iterations)
    }
}

impl ScramSecret {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (standard base64).
    /// Anything else (MD5 hashes, plain text, the empty string) is `None`.
    pub fn parse(secret: &str) -> Option<ScramSecret> {
        let base64 = base64::engine::general_purpose::STANDARD;
        let rest = secret.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok()?;
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return None;
        }
        let salt = base64.decode(salt).ok().filter(|s| !s.is_empty())?;
        let key = |text: &str| -> Option<[u8; 32]> { base64.decode(text).ok()?.try_into().ok() };
        Some(ScramSecret {
            iterations,
            salt,
            stored_key: key(stored_key)?,
            server_key: key(server_key)?,
        })
    }

    /// Whether `password` is the one this secret was made from. CPU-heavy (see module docs).
    pub fn verify(&self, password: &[u8]) -> bool {
        let salted = hi(&saslprep(password), &self.salt, self.iterations);
        let mut mac = Hmac::<Sha256>::new_from_slice(&salted).expect("HMAC takes keys of any size");
        mac.update(b"Client Key");
        let client_key = mac.finalize().into_bytes();
        let stored_key = Sha256::digest(client_key);
        stored_key.as_slice().ct_eq(&self.stored_key).into()
    }

    /// What identifies this secret, for binding cached verifications to it: a changed password
    /// (new salt, new keys) never matches a verification made against the old secret.
    pub fn fingerprint(&self) -> impl Iterator<Item = &[u8]> {
        [&self.salt[..], &self.stored_key[..], &self.server_key[..]].into_iter()
    }

    pub fn iterations(&self) -> u32 {
        self.iterations
    }
}

/// What a SCRAM client derives from a password for one salt and iteration count (RFC 5802):
/// `ClientKey = HMAC(SaltedPassword, "Client Key")`, `ServerKey = HMAC(SaltedPassword, "Server
/// Key")`. Deriving costs `iterations` HMACs; the rest of an exchange is a few hashes.
/// Password-equivalent for that salt: never logged (`Debug` is redacted).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ClientKeys {
    pub client_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKeys(<redacted>)")
    }
}

impl ClientKeys {
    /// CPU-heavy (see module docs).
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> ClientKeys {
        let salted = hi(&saslprep(password), salt, iterations);
        let key = |label: &[u8]| -> [u8; 32] {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(&salted).expect("HMAC takes keys of any size");
            mac.update(label);
            mac.finalize().into_bytes().into()
        };
        ClientKeys {
            client_key: key(b"Client Key"),
            server_key: key(b"Server Key"),
        }
    }
}

/// SASLprep (RFC 4013) as Postgres applies it: a password that is not UTF-8, or that SASLprep
/// refuses (prohibited characters), is used as the raw bytes.
fn saslprep(password: &[u8]) -> Cow<'_, [u8]> {
    match std::str::from_utf8(password).map(stringprep::saslprep) {
        Ok(Ok(Cow::Borrowed(_))) | Ok(Err(_)) | Err(_) => Cow::Borrowed(password),
        Ok(Ok(Cow::Owned(prepared))) => Cow::Owned(prepared.into_bytes()),
    }
}

/// `Hi()` from RFC 5802: PBKDF2-HMAC-SHA-256 with one output block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let keyed = Hmac::<Sha256>::new_from_slice(password).expect("HMAC takes keys of any size");
    let mut mac = keyed.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut previous: [u8; 32] = mac.finalize().into_bytes().into();
    let mut result = previous;
    for _ in 1..iterations {
        let mut mac = keyed.clone();
        mac.update(&previous);
        previous = mac.finalize().into_bytes().into();
        for (r, p) in result.iter_mut().zip(previous) {
            *r ^= p;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::password::scram_sha_256;

    #[test]
    fn parse_secrets() {
        let good = scram_sha_256(b"pw");
        let check = |input: &str, ok: bool| {
            assert_eq!(ScramSecret::parse(input).is_some(), ok, "{input}");
        };
        check(&good, true);
        check("", false);
        check("md5d41d8cd98f00b204e9800998ecf8427e", false);
        check("plain password", false);
        check(&good.replacen("SCRAM-SHA-256", "SCRAM-SHA-1", 1), false);
        check(&good.replacen("$4096:", "$0:", 1), false);
        check(&good.replacen("$4096:", "$x:", 1), false);
        check(&good.replacen("$4096:", "$99999999:", 1), false);
        check(&good.replacen("$4096:", "$4096", 1), false);
        // Truncated keys, bad base64, a missing part.
        let (head, keys) = good.rsplit_once('$').expect("keys");
        let (stored, server) = keys.split_once(':').expect("two keys");
        check(&format!("{head}${}:{server}", &stored[..8]), false);
        check(&format!("{head}$!!!!:{server}"), false);
        check(&format!("{head}${stored}"), false);
        check(&format!("{head}${stored}:{server}:extra"), false);
        check("SCRAM-SHA-256$4096:$AAAA:AAAA", false);
        let parsed = ScramSecret::parse(&good).expect("valid");
        assert_eq!(parsed.iterations(), 4096);
        assert_eq!(
            format!("{parsed:?}"),
            "ScramSecret(iterations=4096, <redacted>)"
        );
    }

    #[test]
    fn verify_against_postgres_protocol_verifiers() {
        // (password the secret was made from, password tried, expected)
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"postgres", b"postgres", true),
            (b"postgres", b"Postgres", false),
            (b"postgres", b"postgres ", false),
            (b"postgres", b"", false),
            (b"", b"", true),
            ("pässwörd".as_bytes(), "pässwörd".as_bytes(), true),
            ("pässwörd".as_bytes(), b"passwort", false),
            // SASLprep maps non-ASCII spaces to a space and removes soft hyphens...
            ("a\u{00A0}b".as_bytes(), b"a b", true),
            ("ab\u{00AD}".as_bytes(), b"ab", true),
            // ...and normalises to NFKC, so the composed and decomposed forms are one password.
            (
                "\u{00E9}t\u{00E9}".as_bytes(),
                "e\u{0301}te\u{0301}".as_bytes(),
                true,
            ),
            ("\u{2163}".as_bytes(), b"IV", true),
            // Prohibited characters and invalid UTF-8 are used as they are.
            ("a\u{0007}b".as_bytes(), "a\u{0007}b".as_bytes(), true),
            (b"\xff\xfe", b"\xff\xfe", true),
            (b"\xff\xfe", b"\xff\xfd", false),
        ];
        for &(made_from, tried, expected) in cases {
            let secret = ScramSecret::parse(&scram_sha_256(made_from)).expect("valid secret");
            assert_eq!(
                secret.verify(tried),
                expected,
                "{:?} vs {:?}",
                String::from_utf8_lossy(made_from),
                String::from_utf8_lossy(tried)
            );
        }
    }

    #[test]
    fn iterations_matter() {
        let secret = ScramSecret::parse(&scram_sha_256(b"postgres")).expect("valid");
        assert!(secret.verify(b"postgres"));
        let fewer = ScramSecret {
            iterations: 4095,
            ..secret.clone()
        };
        assert!(!fewer.verify(b"postgres"));
    }

    #[test]
    fn rfc7677_exchange() {
        // RFC 7677 §3: user "user", password "pencil". The client proof and the server
        // signature of the RFC's exchange follow from Hi() and the keys.
        let base64 = base64::engine::general_purpose::STANDARD;
        let hmac = |key: &[u8], data: &[u8]| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("key");
            mac.update(data);
            mac.finalize().into_bytes()
        };
        let salt = base64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let salted = hi(b"pencil", &salt, 4096);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = Sha256::digest(client_key);
        let server_key = hmac(&salted, b"Server Key");
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let auth_message = format!(
            "n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r={nonce}"
        );
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        assert_eq!(
            base64.encode(proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(
            base64.encode(hmac(&server_key, auth_message.as_bytes())),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let secret = format!(
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==${}:{}",
            base64.encode(stored_key),
            base64.encode(server_key)
        );
        let parsed = ScramSecret::parse(&secret).expect("valid");
        assert!(parsed.verify(b"pencil"));
        assert!(!parsed.verify(b"pencil2"));
    }
}
