//! SCRAM-SHA-256, both sides of it, against role secrets
//! (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, as Postgres stores them in
//! `pg_authid` and the control plane hands them out):
//!
//! - [`ScramSecret`]: parsing, checking a cleartext password the way Postgres does at the end
//!   of an exchange, and [`ScramSecret::mock`], the secret an unknown endpoint or role gets so
//!   that it costs and looks the same as a real one while nothing matches it:
//!
//!   ```text
//!   SaltedPassword = Hi(SASLprep(password), salt, iterations)      (PBKDF2-HMAC-SHA-256)
//!   ClientKey      = HMAC(SaltedPassword, "Client Key")
//!   match          = SHA-256(ClientKey) == StoredKey               (constant time)
//!   ```
//!
//! - [`ScramServer`]: the server side of an exchange with a client (RFC 5802 / 7677, no
//!   channel binding: the gateway offers `SCRAM-SHA-256` only). The client proves its password
//!   without sending it: `ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage)` and
//!   `SHA-256(ClientKey) == StoredKey`. The recovered ClientKey and the secret's ServerKey are
//!   what the gateway then logs in to the backend with ([`ScramKeys`]); the backend holds the
//!   very same verifier, so it accepts them.
//! - The client side, with which `backend::connect` logs in to backends: [`ServerFirst`]
//!   reads a server-first-message (the salt and iteration count the keys are needed for), and
//!   [`ServerFirst::client_final`] answers it with [`ClientKeys`], derived from a cleartext
//!   password (static routes) or taken from [`ScramKeys`] (only for the secret's own salt and
//!   iteration count), and gives the server signature to verify.
//!
//! [`ScramSecret::verify`] and [`ClientKeys::derive`] cost `iterations` HMACs (4096 by
//! default, and whatever a secret or a server asks for): call them only through
//! [`super::PasswordCache`], which caps the iteration count and runs them on the blocking pool,
//! never on the runtime's workers. The server exchange costs a few hashes (the client does the
//! PBKDF2).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What mock secrets ask for: Postgres's default (`scram_iterations`), like real secrets.
pub const MOCK_ITERATIONS: u32 = 4096;
/// Salt length of mock secrets: Postgres's (`SCRAM_DEFAULT_SALT_LEN`).
const MOCK_SALT_LEN: usize = 16;
/// Client messages of an exchange longer than this are refused (a client-first-message is a
/// GS2 header, a user name of at most 63 bytes and a nonce).
pub const MAX_CLIENT_MESSAGE: usize = 2048;

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
    /// Anything else (MD5 hashes, plain text, the empty string) is `None`. Any positive
    /// iteration count parses: the cap (`--max-scram-iterations`) is the gateway's, applied
    /// where the secret is used.
    pub fn parse(secret: &str) -> Option<ScramSecret> {
        let base64 = base64::engine::general_purpose::STANDARD;
        let rest = secret.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok()?;
        if iterations == 0 {
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

    /// A secret for an endpoint or role that does not exist: the salt is stable per
    /// (endpoint, role) and the iteration count that of real secrets, so repeated attempts see
    /// what a real role shows, and checking a password against it costs the same; the keys
    /// come from `key` (random per process), so no password matches it.
    pub fn mock(key: &[u8; 32], endpoint: &str, role: &str) -> ScramSecret {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
            for part in [label, endpoint.as_bytes(), role.as_bytes()] {
                mac.update(&(part.len() as u64).to_be_bytes());
                mac.update(part);
            }
            mac.finalize().into_bytes().into()
        };
        ScramSecret {
            iterations: MOCK_ITERATIONS,
            salt: derive(b"salt")[..MOCK_SALT_LEN].to_vec(),
            stored_key: derive(b"stored key"),
            server_key: derive(b"server key"),
        }
    }

    #[cfg(any(test, feature = "fuzzing"))]
    /// Whether `password` is the one this secret was made from. CPU-heavy (see module docs).
    pub fn verify(&self, password: &[u8]) -> bool {
        self.client_key(password).is_some()
    }

    /// The ClientKey of `password` when it is the one this secret was made from (what a
    /// backend login with [`ScramKeys`] needs). CPU-heavy (see module docs).
    pub fn client_key(&self, password: &[u8]) -> Option<[u8; 32]> {
        let salted = hi(&saslprep(password), &self.salt, self.iterations);
        let client_key = hmac(&salted, b"Client Key");
        self.proves(&client_key).then_some(client_key)
    }

    /// `SHA-256(client_key) == StoredKey`, in constant time.
    fn proves(&self, client_key: &[u8; 32]) -> bool {
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

    #[cfg(any(test, feature = "fuzzing"))]
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }
}

/// What the gateway logs in to a backend with after a client proved its password against the
/// role's secret: the client's ClientKey (recovered from its SCRAM proof, or derived from its
/// cleartext password) and the secret. Only a server-first-message with the secret's own salt
/// and iteration count gets keys ([`ScramKeys::for_server`]). Password-equivalent for the
/// secret's salt: never logged (`Debug` is redacted).
#[derive(Clone)]
pub struct ScramKeys {
    client_key: [u8; 32],
    secret: Arc<ScramSecret>,
}

impl fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScramKeys(<redacted>)")
    }
}

impl ScramKeys {
    /// `client_key` must be one the secret accepted ([`ScramSecret::client_key`]).
    pub(crate) fn new(client_key: [u8; 32], secret: Arc<ScramSecret>) -> ScramKeys {
        ScramKeys { client_key, secret }
    }

    /// Keys for a login the control plane gave whole (a JWT role's): `None` unless
    /// `client_key` is the one `secret` was made with.
    pub fn from_client_key(client_key: [u8; 32], secret: Arc<ScramSecret>) -> Option<ScramKeys> {
        secret
            .proves(&client_key)
            .then_some(ScramKeys { client_key, secret })
    }

    /// The keys to answer a server-first-message with `salt` and `iterations`, when they are
    /// the secret's: a server that uses others does not hold this role's verifier.
    pub fn for_server(&self, salt: &[u8], iterations: u32) -> Option<ClientKeys> {
        (salt == self.secret.salt.as_slice() && iterations == self.secret.iterations).then_some(
            ClientKeys {
                client_key: self.client_key,
                server_key: self.secret.server_key,
            },
        )
    }

    /// The secret the keys were proven against.
    #[cfg(feature = "fuzzing")]
    pub fn secret(&self) -> &Arc<ScramSecret> {
        &self.secret
    }
}

/// Why a client's SCRAM message was refused (a protocol violation, not a wrong password).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message ({0})")]
    Malformed(&'static str),
    #[error("SCRAM message is too long")]
    TooLong,
    #[error("the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data")]
    ChannelBinding,
    #[error("unsupported SCRAM feature ({0})")]
    Unsupported(&'static str),
    #[error("unexpected SCRAM channel-binding attribute in client-final-message")]
    BindingMismatch,
    #[error("SCRAM nonce mismatch")]
    Nonce,
}

/// The server side of one SCRAM-SHA-256 exchange against `secret`: [`ScramServer::start`]
/// reads the client-first-message and makes the server-first-message;
/// [`ScramServer::finish`] checks the client-final-message's proof.
pub struct ScramServer {
    secret: Arc<ScramSecret>,
    /// What the client-final-message's `c=` must be: base64 of the GS2 header.
    binding: String,
    /// The client's nonce followed by the server's.
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

/// A client proved its password.
#[derive(Debug)]
pub struct Proven {
    /// For the backend login.
    pub keys: ScramKeys,
    /// The server-final-message (`v=<ServerSignature>`), for AuthenticationSASLFinal.
    pub server_final: String,
}

impl ScramServer {
    /// Parses `client_first` (`n,,n=<user>,r=<nonce>[,extensions]`; the user name is ignored,
    /// as by Postgres, which takes it from the startup packet) and makes the
    /// server-first-message `r=<client nonce><server_nonce>,s=<salt>,i=<iterations>`.
    /// `server_nonce` must be fresh and random for every exchange, and printable.
    pub fn start(
        secret: Arc<ScramSecret>,
        client_first: &[u8],
        server_nonce: &str,
    ) -> Result<ScramServer, ScramError> {
        let base64 = base64::engine::general_purpose::STANDARD;
        let text = client_message(client_first)?;
        // gs2-header = gs2-cbind-flag "," [authzid] ","
        let (flag, rest) = text
            .split_once(',')
            .ok_or(ScramError::Malformed("GS2 header"))?;
        match flag {
            "n" | "y" => {}
            _ if flag.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("GS2 header")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("GS2 header"))?;
        if authzid.starts_with("a=") {
            return Err(ScramError::Unsupported("authorization identity"));
        }
        if !authzid.is_empty() {
            return Err(ScramError::Malformed("GS2 header"));
        }
        let mut attributes = bare.split(',');
        let user = attributes.next().unwrap_or_default();
        if user.starts_with("m=") {
            return Err(ScramError::Unsupported("mandatory extension"));
        }
        if !user.starts_with("n=") {
            return Err(ScramError::Malformed("user name"));
        }
        let client_nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .filter(|nonce| is_nonce(nonce))
            .ok_or(ScramError::Malformed("nonce"))?;
        if !attributes.all(is_attribute) {
            return Err(ScramError::Malformed("extension"));
        }
        let gs2_header = &text[..text.len() - bare.len()];
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            base64.encode(&secret.salt),
            secret.iterations
        );
        Ok(ScramServer {
            binding: base64.encode(gs2_header),
            nonce,
            client_first_bare: bare.to_owned(),
            server_first,
            secret,
        })
    }

    /// The server-first-message, for AuthenticationSASLContinue.
    pub fn server_first(&self) -> &str {
        &self.server_first
    }

    /// Checks `client_final` (`c=<binding>,r=<nonce>[,extensions],p=<proof>`): `Ok(Some)`
    /// when the proof holds, `Ok(None)` when it does not (a wrong password: the same work
    /// either way), `Err` when the message is malformed.
    pub fn finish(self, client_final: &[u8]) -> Result<Option<Proven>, ScramError> {
        let base64 = base64::engine::general_purpose::STANDARD;
        let text = client_message(client_final)?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("proof"))?;
        let mut attributes = without_proof.split(',');
        let binding = attributes
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("channel binding"))?;
        if binding != self.binding {
            return Err(ScramError::BindingMismatch);
        }
        let nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("nonce"))?;
        if nonce != self.nonce {
            return Err(ScramError::Nonce);
        }
        if !attributes.all(is_attribute) {
            return Err(ScramError::Malformed("extension"));
        }
        let proof: [u8; 32] = base64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("proof"))?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(signature) {
            *k ^= s;
        }
        if !self.secret.proves(&client_key) {
            return Ok(None);
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        Ok(Some(Proven {
            server_final: format!("v={}", base64.encode(server_signature)),
            keys: ScramKeys::new(client_key, self.secret),
        }))
    }
}

/// A backend's server-first-message in the client side of an exchange (RFC 5802, no channel
/// binding), after the client-first-message `n,,<client_first_bare>` with `nonce`: the salt
/// and iteration count the server asks for, to get [`ClientKeys`] for (a cleartext password's
/// keys cost `iterations` HMACs: see [`super::PasswordCache::client_keys`]), then
/// [`ServerFirst::client_final`].
pub struct ServerFirst<'a> {
    message: &'a str,
    /// The client's nonce followed by the server's.
    nonce: &'a str,
    salt: Vec<u8>,
    iterations: u32,
}

impl<'a> ServerFirst<'a> {
    /// Parses `message` (`r=<nonce>,s=<salt>,i=<iterations>[,extensions]`), whose nonce must
    /// extend the client's `nonce`.
    pub fn parse(nonce: &str, message: &'a [u8]) -> Result<ServerFirst<'a>, &'static str> {
        let base64 = base64::engine::general_purpose::STANDARD;
        let message = std::str::from_utf8(message).map_err(|_| "not UTF-8")?;
        let (server_nonce, salt, iterations) = parse_server_first(message).ok_or("malformed")?;
        if !server_nonce.starts_with(nonce) || server_nonce.len() == nonce.len() {
            return Err("nonce mismatch");
        }
        let salt = base64.decode(salt).map_err(|_| "invalid salt")?;
        Ok(ServerFirst {
            message,
            nonce: server_nonce,
            salt,
            iterations,
        })
    }

    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// The client-final-message proving `keys` (derived for [`Self::salt`] and
    /// [`Self::iterations`]), and the server signature to expect in the server-final-message.
    pub fn client_final(&self, client_first_bare: &str, keys: &ClientKeys) -> (String, [u8; 32]) {
        let base64 = base64::engine::general_purpose::STANDARD;
        // c=biws: base64 of the GS2 header "n,," (no channel binding).
        let without_proof = format!("c=biws,r={}", self.nonce);
        let auth_message = format!("{client_first_bare},{},{without_proof}", self.message);
        let stored_key: [u8; 32] = Sha256::digest(keys.client_key).into();
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = keys.client_key;
        for (p, s) in proof.iter_mut().zip(signature) {
            *p ^= s;
        }
        let client_final = format!("{without_proof},p={}", base64.encode(proof));
        (
            client_final,
            hmac(&keys.server_key, auth_message.as_bytes()),
        )
    }
}

/// `r=<nonce>,s=<salt>,i=<iterations>[,extensions]` → (nonce, base64 salt, iterations).
fn parse_server_first(message: &str) -> Option<(&str, &str, u32)> {
    let mut parts = message.split(',');
    let nonce = parts.next()?.strip_prefix("r=")?;
    let salt = parts.next()?.strip_prefix("s=")?;
    let iterations: u32 = parts.next()?.strip_prefix("i=")?.parse().ok()?;
    (iterations > 0 && nonce.bytes().all(|b| b.is_ascii_graphic() && b != b','))
        .then_some((nonce, salt, iterations))
}

/// A client message as text, within [`MAX_CLIENT_MESSAGE`].
fn client_message(message: &[u8]) -> Result<&str, ScramError> {
    if message.len() > MAX_CLIENT_MESSAGE {
        return Err(ScramError::TooLong);
    }
    std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))
}

/// `printable = %x21-2B / %x2D-7E` (no comma), at least one.
fn is_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// `attr-val = ALPHA "=" value`.
fn is_attribute(attribute: &str) -> bool {
    let bytes = attribute.as_bytes();
    bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b'='
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(data);
    mac.finalize().into_bytes().into()
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
        ClientKeys {
            client_key: hmac(&salted, b"Client Key"),
            server_key: hmac(&salted, b"Server Key"),
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

    /// The client side in one step: [`ServerFirst::parse`], `keys` for its salt and
    /// iterations, [`ServerFirst::client_final`].
    fn client_side(
        client_first_bare: &str,
        nonce: &str,
        server_first: &[u8],
        keys: impl FnOnce(&[u8], u32) -> Result<ClientKeys, &'static str>,
    ) -> Result<(String, [u8; 32]), &'static str> {
        let server_first = ServerFirst::parse(nonce, server_first)?;
        let keys = keys(server_first.salt(), server_first.iterations())?;
        Ok(server_first.client_final(client_first_bare, &keys))
    }

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
        // Any positive count parses: capping it is the gateway's (`PasswordCache`).
        check(&good.replacen("$4096:", "$99999999:", 1), true);
        check(&good.replacen("$4096:", "$4294967296:", 1), false);
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

    const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";

    /// RFC 7677's secret: password "pencil".
    fn pencil() -> Arc<ScramSecret> {
        let salt = base64::engine::general_purpose::STANDARD
            .decode(SALT)
            .expect("salt");
        let keys = ClientKeys::derive(b"pencil", &salt, 4096);
        Arc::new(ScramSecret {
            iterations: 4096,
            salt,
            stored_key: Sha256::digest(keys.client_key).into(),
            server_key: keys.server_key,
        })
    }

    #[test]
    fn rfc7677_server_side() {
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let start = || {
            ScramServer::start(
                pencil(),
                b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
                "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            )
            .expect("valid client-first")
        };
        let server = start();
        assert_eq!(server.server_first(), format!("r={nonce},s={SALT},i=4096"));
        let client_final =
            format!("c=biws,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        let proven = server
            .finish(client_final.as_bytes())
            .expect("well formed")
            .expect("the proof holds");
        assert_eq!(
            proven.server_final,
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        // The recovered keys are the password's, for the secret's salt and iterations only.
        let salt = base64::engine::general_purpose::STANDARD
            .decode(SALT)
            .expect("salt");
        assert_eq!(
            proven.keys.for_server(&salt, 4096),
            Some(ClientKeys::derive(b"pencil", &salt, 4096))
        );
        assert_eq!(proven.keys.for_server(&salt, 4095), None);
        assert_eq!(proven.keys.for_server(b"other salt", 4096), None);
        assert_eq!(format!("{:?}", proven.keys), "ScramKeys(<redacted>)");

        // One bit of the proof changed: a wrong password, not a malformed message.
        let wrong = client_final.replace("p=dHz", "p=dHy");
        assert!(start()
            .finish(wrong.as_bytes())
            .expect("well formed")
            .is_none());
    }

    /// Runs a whole exchange with `client_first` and then `client_final` (in which `{nonce}`
    /// stands for the combined nonce): `Ok(true)` for a proven password, `Ok(false)` for a
    /// wrong one.
    fn exchange(client_first: &[u8], client_final: &str) -> Result<bool, ScramError> {
        let server = ScramServer::start(pencil(), client_first, "SERVER")?;
        let nonce = server.nonce.clone();
        let client_final = client_final.replace("{nonce}", &nonce);
        Ok(server.finish(client_final.as_bytes())?.is_some())
    }

    #[test]
    fn malformed_client_messages() {
        let zeros = base64::engine::general_purpose::STANDARD.encode([0u8; 32]);
        let wrong = format!("c=biws,r={{nonce}},p={zeros}");
        let long = format!("n,,n=,r={}", "a".repeat(MAX_CLIENT_MESSAGE));
        let long_final = format!("c=biws,r={{nonce}},x={},p={zeros}", "a".repeat(3000));
        let check = |first: &[u8], last: &str, expected: Result<bool, ScramError>| {
            assert_eq!(
                exchange(first, last),
                expected,
                "{} / {last}",
                String::from_utf8_lossy(first)
            );
        };
        use ScramError::*;
        // Well formed, wrong proof; `y` (client could bind, server did not offer) is fine.
        check(b"n,,n=,r=abc", &wrong, Ok(false));
        check(b"n,,n=user,r=abc,x=ext", &wrong, Ok(false));
        check(b"y,,n=,r=abc", &wrong.replace("biws", "eSws"), Ok(false));
        check(
            b"n,,n=,r=abc",
            &format!("c=biws,r={{nonce}},x=ext,p={zeros}"),
            Ok(false),
        );
        // GS2 header.
        check(b"x,,n=,r=abc", &wrong, Err(Malformed("GS2 header")));
        check(b"n", &wrong, Err(Malformed("GS2 header")));
        check(b"n,n=,r=abc", &wrong, Err(Malformed("GS2 header")));
        check(
            b"p=tls-server-end-point,,n=,r=abc",
            &wrong,
            Err(ChannelBinding),
        );
        check(
            b"n,a=admin,n=,r=abc",
            &wrong,
            Err(Unsupported("authorization identity")),
        );
        // client-first-bare.
        check(
            b"n,,m=ext,n=,r=abc",
            &wrong,
            Err(Unsupported("mandatory extension")),
        );
        check(b"n,,r=abc", &wrong, Err(Malformed("user name")));
        check(b"n,,n=", &wrong, Err(Malformed("nonce")));
        check(b"n,,n=,r=", &wrong, Err(Malformed("nonce")));
        check(b"n,,n=,x=abc", &wrong, Err(Malformed("nonce")));
        check(b"n,,n=,r=a\x01b", &wrong, Err(Malformed("nonce")));
        check(b"n,,n=,r=abc,oops", &wrong, Err(Malformed("extension")));
        check(b"n,,n=,r=\xff", &wrong, Err(Malformed("not UTF-8")));
        check(long.as_bytes(), &wrong, Err(TooLong));
        // client-final-message.
        let first = b"n,,n=,r=abc";
        check(first, &wrong.replace("biws", "eSws"), Err(BindingMismatch));
        check(b"y,,n=,r=abc", &wrong, Err(BindingMismatch));
        check(
            first,
            &wrong.replace("c=biws", "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws"),
            Err(BindingMismatch),
        );
        check(first, &wrong.replace("{nonce}", "abc"), Err(Nonce));
        check(first, &wrong.replace("{nonce}", "{nonce}x"), Err(Nonce));
        check(first, &format!("c=biws,p={zeros}"), Err(Malformed("nonce")));
        check(
            first,
            &format!("r={{nonce}},c=biws,p={zeros}"),
            Err(Malformed("channel binding")),
        );
        check(first, "c=biws,r={nonce}", Err(Malformed("proof")));
        check(first, "c=biws,r={nonce},p=!!!!", Err(Malformed("proof")));
        check(first, "c=biws,r={nonce},p=AAAA", Err(Malformed("proof")));
        check(
            first,
            &format!("c=biws,r={{nonce}},oops,p={zeros}"),
            Err(Malformed("extension")),
        );
        check(first, &long_final, Err(TooLong));
        let server = ScramServer::start(pencil(), first, "SERVER").expect("valid");
        assert_eq!(
            server.finish(b"c=biws,r=\xff,p=").err(),
            Some(Malformed("not UTF-8"))
        );
    }

    #[test]
    fn a_real_client_proves_its_password_and_checks_the_server() {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let secret = Arc::new(ScramSecret::parse(&scram_sha_256(b"s3cret")).expect("valid"));
        for (password, proven) in [(&b"s3cret"[..], true), (b"wrong", false)] {
            let mut client = ScramSha256::new(password, ChannelBinding::unsupported());
            let server = ScramServer::start(secret.clone(), client.message(), "c2VydmVyLW5vbmNl")
                .expect("client-first");
            client
                .update(server.server_first().as_bytes())
                .expect("server-first");
            let result = server.finish(client.message()).expect("client-final");
            assert_eq!(result.is_some(), proven);
            if let Some(result) = result {
                client
                    .finish(result.server_final.as_bytes())
                    .expect("the client accepts the server's signature");
                let keys = result
                    .keys
                    .for_server(secret.salt(), secret.iterations())
                    .expect("the secret's own salt");
                assert_eq!(
                    keys,
                    ClientKeys::derive(password, secret.salt(), secret.iterations())
                );
            }
        }
    }

    #[test]
    fn mock_secrets_are_stable_look_real_and_match_nothing() {
        let key = [7u8; 32];
        let mock = ScramSecret::mock(&key, "ghost", "alice");
        assert_eq!(mock, ScramSecret::mock(&key, "ghost", "alice"));
        assert_ne!(mock.salt, ScramSecret::mock(&key, "ghost", "bob").salt);
        assert_ne!(
            mock.salt,
            ScramSecret::mock(&[8u8; 32], "ghost", "alice").salt
        );
        let real = ScramSecret::parse(&scram_sha_256(b"pw")).expect("valid");
        assert_eq!(
            (mock.iterations, mock.salt.len()),
            (real.iterations, real.salt.len())
        );
        for password in [&b""[..], b"pw", b"alice", b"ghost"] {
            assert!(!mock.verify(password));
        }
        let mock = Arc::new(mock);
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
        let server = ScramServer::start(mock, client.message(), "bm9uY2U=").expect("first");
        assert!(server.server_first().ends_with(",i=4096"));
        client
            .update(server.server_first().as_bytes())
            .expect("a mock server-first is a valid one");
        assert!(server.finish(client.message()).expect("final").is_none());
    }

    /// The SCRAM-SHA-256 exchange of RFC 7677, section 3.
    #[test]
    fn rfc_7677_client_side() {
        let nonce = "rOprNGfwEbeRWgbNEkqO";
        let server_first =
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (client_final, server_signature) = client_side(
            "n=user,r=rOprNGfwEbeRWgbNEkqO",
            nonce,
            server_first.as_bytes(),
            |salt, iterations| Ok(ClientKeys::derive(b"pencil", salt, iterations)),
        )
        .expect("valid");
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        use base64::Engine;
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let derive = |_: &[u8], _: u32| Ok(ClientKeys::derive(b"pencil", b"salt", 1));
        for bad in [
            "r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
            "r=rOprNGfwEbeRWgbNEkqOx,s=!!,i=4096",
            "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        ] {
            assert!(
                client_side("n=,r=x", nonce, bad.as_bytes(), derive).is_err(),
                "{bad}"
            );
        }
    }

    /// With keys proven against a secret, only that secret's salt and iterations are
    /// answered: a server with others does not hold the role's verifier.
    #[test]
    fn proven_keys_answer_only_the_secrets_parameters() {
        let secret = Arc::new(
            ScramSecret::parse(&postgres_protocol::password::scram_sha_256(b"pw")).expect("secret"),
        );
        // Keys as the gateway's SCRAM server recovers them from a client's proof.
        let mut client = postgres_protocol::authentication::sasl::ScramSha256::new(
            b"pw",
            postgres_protocol::authentication::sasl::ChannelBinding::unsupported(),
        );
        let server =
            ScramServer::start(secret.clone(), client.message(), "bm9uY2U=").expect("client-first");
        client
            .update(server.server_first().as_bytes())
            .expect("server-first");
        let keys = server
            .finish(client.message())
            .expect("client-final")
            .expect("proven")
            .keys;
        let login = |salt: &[u8], iterations: u32| {
            keys.for_server(salt, iterations)
                .ok_or("salt or iteration count differ from the role's secret")
        };
        use base64::Engine;
        let salt = base64::engine::general_purpose::STANDARD.encode(secret.salt());
        // The real backend: the secret's parameters, and its signature is what we expect.
        let own = format!("r=gatewaynonceSERVER,s={salt},i={}", secret.iterations());
        let (client_final, expected) =
            client_side("n=,r=gatewaynonce", "gatewaynonce", own.as_bytes(), login)
                .expect("answered");
        assert!(client_final.starts_with("c=biws,r=gatewaynonceSERVER,p="));
        // A real Postgres holding the verifier would accept this proof: check it as one does.
        let verify =
            ScramServer::start(secret.clone(), b"n,,n=,r=gatewaynonce", "SERVER").expect("first");
        let proven = verify
            .finish(client_final.as_bytes())
            .expect("final")
            .expect("a server with the verifier accepts the proof");
        assert_eq!(
            proven.server_final,
            format!(
                "v={}",
                base64::engine::general_purpose::STANDARD.encode(expected)
            )
        );
        for other in [
            format!("r=gatewaynonceSERVER,s={salt},i=4095"),
            "r=gatewaynonceSERVER,s=c2FsdHNhbHRzYWx0c2FsdA==,i=4096".to_owned(),
        ] {
            assert_eq!(
                client_side("n=,r=gatewaynonce", "gatewaynonce", other.as_bytes(), login),
                Err("salt or iteration count differ from the role's secret"),
                "{other}"
            );
        }
    }
}
