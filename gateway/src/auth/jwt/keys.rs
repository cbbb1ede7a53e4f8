//! JSON Web Keys (RFC 7517) into verification keys, and signature checks with `ring` (the
//! crypto rustls already uses here).
//!
//! A key set is parsed key by key: a key this gateway cannot or must not use is skipped and
//! the others kept (a provider's encryption key next to its signing keys is normal). Skipped:
//! keys without a `kid` (a token must name its key), `use` other than `sig`, `key_ops`
//! without `verify`, symmetric (`oct`) keys, keys carrying a private part (`d`), an `alg`
//! this gateway does not verify, RSA moduli outside 2048..=8192 bits or exponents outside
//! ring's range, EC points of the wrong length, curves other than P-256, P-384 and Ed25519.
//!
//! A key verifies only the algorithms of its type and curve, and only its own `alg` when it
//! names one ([`Jwk::suits`]), so no key is ever used with another family's algorithm.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::Value;
use sha2::Digest;

/// The most keys of a set looked at; the rest are ignored (a set is at most 64 KiB anyway).
const MAX_KEYS: usize = 100;
/// The longest `kid` kept (a token's longer `kid` is refused before any lookup).
pub const MAX_KID_BYTES: usize = 256;

/// A JWS algorithm this gateway verifies (JOSE names, RFC 7518 and RFC 8037).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    const ALL: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// The algorithm of a JOSE name, exactly (`none`, `HS256` and case variants are `None`).
    pub fn parse(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|alg| alg.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }
}

/// The public key material of a usable key.
#[derive(Clone, PartialEq, Eq)]
enum Material {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (`04 ‖ x ‖ y`).
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

/// A usable verification key.
#[derive(Clone, PartialEq, Eq)]
pub struct Jwk {
    pub kid: String,
    /// The key's own `alg`, when it names one.
    alg: Option<Algorithm>,
    material: Material,
}

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kty = match self.material {
            Material::Rsa { .. } => "RSA",
            Material::P256(_) => "P-256",
            Material::P384(_) => "P-384",
            Material::Ed25519(_) => "Ed25519",
        };
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kty", &kty)
            .finish()
    }
}

impl Jwk {
    /// Whether this key verifies `alg`: its type and curve are `alg`'s, and its own `alg`,
    /// if any, is `alg`.
    pub fn suits(&self, alg: Algorithm) -> bool {
        let family = matches!(
            (&self.material, alg),
            (
                Material::Rsa { .. },
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512,
            ) | (Material::P256(_), Algorithm::ES256)
                | (Material::P384(_), Algorithm::ES384)
                | (Material::Ed25519(_), Algorithm::EdDSA)
        );
        family && self.alg.is_none_or(|own| own == alg)
    }

    /// Whether `signature` is this key's signature of `message` under `alg` (false for an
    /// algorithm the key does not suit). ECDSA signatures are raw `r ‖ s` of the curve's size
    /// (ring's `FIXED` forms: r and s in range, the point on the curve); RSA signatures are
    /// exactly as long as the modulus.
    /// What identifies this key's material: equal for the same public key (and `alg`), so a
    /// signature checked with it once need not be checked again ([`super::JwtValidator`]).
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut digest = sha2::Sha256::new();
        let mut part = |bytes: &[u8]| {
            digest.update((bytes.len() as u64).to_be_bytes());
            digest.update(bytes);
        };
        match &self.material {
            Material::Rsa { n, e } => {
                part(b"RSA");
                part(n);
                part(e);
            }
            Material::P256(point) => {
                part(b"P-256");
                part(point);
            }
            Material::P384(point) => {
                part(b"P-384");
                part(point);
            }
            Material::Ed25519(x) => {
                part(b"Ed25519");
                part(x);
            }
        }
        part(format!("{:?}", self.alg).as_bytes());
        digest.finalize().into()
    }

    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        if !self.suits(alg) {
            return false;
        }
        let verified = match &self.material {
            Material::Rsa { n, e } => {
                let params = match alg {
                    Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    _ => &signature::RSA_PSS_2048_8192_SHA512,
                };
                RsaPublicKeyComponents { n, e }.verify(params, message, signature)
            }
            Material::P256(point) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
            }
            Material::P384(point) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                    .verify(message, signature)
            }
            Material::Ed25519(x) => {
                UnparsedPublicKey::new(&signature::ED25519, x).verify(message, signature)
            }
        };
        verified.is_ok()
    }
}

/// Why a JWK was skipped (logged at debug level, with the key's `kid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error("not a JSON object")]
    NotAnObject,
    #[error("no string kid, or one longer than 256 bytes")]
    Kid,
    #[error("use is not sig")]
    NotForSignatures,
    #[error("key_ops does not allow verify")]
    NoVerifyOp,
    #[error("carries a private key")]
    Private,
    #[error("an alg this gateway does not verify")]
    Algorithm,
    #[error("a key type or curve this gateway does not verify (oct keys never are)")]
    KeyType,
    #[error("a parameter is missing or not strict base64url")]
    Parameter,
    #[error("an RSA modulus outside 2048..=8192 bits or an unusable exponent")]
    RsaSize,
    #[error("an EC or OKP coordinate of the wrong length")]
    PointSize,
}

/// The usable keys of a set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    pub keys: Vec<Jwk>,
}

/// Why a body is not a key set at all.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not an object with a \"keys\" array")]
    Shape,
}

impl KeySet {
    /// The usable keys of a JWKS document (`{"keys": [...]}`); unusable keys are skipped.
    pub fn parse(body: &[u8]) -> Result<KeySet, KeySetError> {
        KeySet::from_value(&serde_json::from_slice(body)?)
    }

    /// As [`KeySet::parse`], from parsed JSON.
    pub fn from_value(document: &Value) -> Result<KeySet, KeySetError> {
        let keys = document
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(KeySetError::Shape)?;
        let mut usable = Vec::new();
        for key in keys.iter().take(MAX_KEYS) {
            match parse_jwk(key) {
                Ok(jwk) => usable.push(jwk),
                Err(reason) => {
                    let kid = key.get("kid").and_then(Value::as_str).unwrap_or("");
                    let kid: String = kid.chars().take(64).collect();
                    tracing::debug!(kid, %reason, "JWK skipped");
                }
            }
        }
        Ok(KeySet { keys: usable })
    }

    /// The keys named `kid`.
    pub fn with_kid<'a>(&'a self, kid: &'a str) -> impl Iterator<Item = &'a Jwk> + 'a {
        self.keys.iter().filter(move |key| key.kid == kid)
    }
}

fn string<'a>(key: &'a Value, name: &str) -> Option<&'a str> {
    key.get(name).and_then(Value::as_str)
}

/// A strict base64url parameter (no padding, URL alphabet, canonical trailing bits).
fn bytes(key: &Value, name: &str) -> Result<Vec<u8>, SkipReason> {
    let text = string(key, name).ok_or(SkipReason::Parameter)?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| SkipReason::Parameter)
}

fn parse_jwk(key: &Value) -> Result<Jwk, SkipReason> {
    if !key.is_object() {
        return Err(SkipReason::NotAnObject);
    }
    let kid = match key.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() && kid.len() <= MAX_KID_BYTES => kid.clone(),
        _ => return Err(SkipReason::Kid),
    };
    match key.get("use") {
        None => {}
        Some(Value::String(usage)) if usage == "sig" => {}
        Some(_) => return Err(SkipReason::NotForSignatures),
    }
    if let Some(ops) = key.get("key_ops") {
        let verify = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op == "verify"));
        if !verify {
            return Err(SkipReason::NoVerifyOp);
        }
    }
    // Private parts of RSA (d, p, q, ...) and EC/OKP (d) keys, and oct's secret.
    if ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|name| key.get(name).is_some())
    {
        return Err(SkipReason::Private);
    }
    let alg = match key.get("alg") {
        None => None,
        Some(Value::String(alg)) => Some(Algorithm::parse(alg).ok_or(SkipReason::Algorithm)?),
        Some(_) => return Err(SkipReason::Algorithm),
    };
    let material = match (string(key, "kty"), string(key, "crv")) {
        (Some("RSA"), _) => rsa(key)?,
        (Some("EC"), Some("P-256")) => Material::P256(point(key, 32)?),
        (Some("EC"), Some("P-384")) => Material::P384(point(key, 48)?),
        (Some("OKP"), Some("Ed25519")) => {
            let x = bytes(key, "x")?;
            if x.len() != 32 {
                return Err(SkipReason::PointSize);
            }
            Material::Ed25519(x)
        }
        _ => return Err(SkipReason::KeyType),
    };
    let jwk = Jwk { kid, alg, material };
    // A key whose own alg is of another family can verify nothing.
    if alg.is_some_and(|alg| !jwk.suits(alg)) {
        return Err(SkipReason::Algorithm);
    }
    Ok(jwk)
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

/// An RSA key within ring's verification bounds: a modulus of 2048..=8192 bits, an odd
/// exponent of at least 3 and below 2^33.
fn rsa(key: &Value) -> Result<Material, SkipReason> {
    let n = strip_leading_zeros(bytes(key, "n")?);
    let e = strip_leading_zeros(bytes(key, "e")?);
    let bits = n.first().map_or(0, |top| {
        (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize)
    });
    let exponent = (e.len() <= 5).then(|| e.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)));
    let exponent_ok = exponent.is_some_and(|e| e >= 3 && e % 2 == 1 && e < (1 << 33));
    if !(2048..=8192).contains(&bits) || !exponent_ok {
        return Err(SkipReason::RsaSize);
    }
    Ok(Material::Rsa { n, e })
}

/// An uncompressed EC point from `x` and `y` of `size` bytes each (checked on the curve by
/// ring when a signature is verified).
fn point(key: &Value, size: usize) -> Result<Vec<u8>, SkipReason> {
    let (x, y) = (bytes(key, "x")?, bytes(key, "y")?);
    if x.len() != size || y.len() != size {
        return Err(SkipReason::PointSize);
    }
    let mut point = Vec::with_capacity(1 + 2 * size);
    point.push(4);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Ok(point)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa_key(bits: usize) -> Value {
        let mut n = vec![0xff; bits / 8];
        n[0] = 0xc1;
        json!({"kty": "RSA", "kid": "r", "n": b64(&n), "e": "AQAB"})
    }

    fn check(key: Value, expected: Result<(), SkipReason>) {
        assert_eq!(parse_jwk(&key).map(|_| ()), expected, "{key}");
    }

    #[test]
    fn unusable_keys_are_skipped_for_a_reason() {
        let ec = json!({"kty": "EC", "crv": "P-256", "kid": "e", "x": b64(&[1; 32]), "y": b64(&[2; 32])});
        let with = |mut key: Value, name: &str, value: Value| {
            key[name] = value;
            key
        };
        check(rsa_key(2048), Ok(()));
        check(rsa_key(8192), Ok(()));
        check(ec.clone(), Ok(()));
        check(with(ec.clone(), "use", json!("sig")), Ok(()));
        check(with(ec.clone(), "key_ops", json!(["verify"])), Ok(()));
        check(with(ec.clone(), "alg", json!("ES256")), Ok(()));
        check(rsa_key(1024), Err(SkipReason::RsaSize));
        check(rsa_key(2040), Err(SkipReason::RsaSize));
        check(rsa_key(8200), Err(SkipReason::RsaSize));
        check(
            with(rsa_key(2048), "e", json!("AQ")),
            Err(SkipReason::RsaSize),
        );
        check(with(rsa_key(2048), "e", json!("Aw")), Ok(()));
        check(
            with(rsa_key(2048), "e", json!("BA")),
            Err(SkipReason::RsaSize),
        );
        check(json!([]), Err(SkipReason::NotAnObject));
        check(with(ec.clone(), "kid", json!(7)), Err(SkipReason::Kid));
        check(with(ec.clone(), "kid", json!("")), Err(SkipReason::Kid));
        check(
            with(ec.clone(), "kid", json!("k".repeat(257))),
            Err(SkipReason::Kid),
        );
        check(
            with(ec.clone(), "use", json!("enc")),
            Err(SkipReason::NotForSignatures),
        );
        check(
            with(ec.clone(), "key_ops", json!(["sign"])),
            Err(SkipReason::NoVerifyOp),
        );
        check(
            with(ec.clone(), "key_ops", json!("verify")),
            Err(SkipReason::NoVerifyOp),
        );
        check(
            with(ec.clone(), "d", json!(b64(&[3; 32]))),
            Err(SkipReason::Private),
        );
        check(
            with(ec.clone(), "alg", json!("RSA-OAEP")),
            Err(SkipReason::Algorithm),
        );
        check(
            with(ec.clone(), "alg", json!("RS256")),
            Err(SkipReason::Algorithm),
        );
        check(
            with(ec.clone(), "crv", json!("P-521")),
            Err(SkipReason::KeyType),
        );
        check(
            with(ec.clone(), "x", json!(b64(&[1; 31]))),
            Err(SkipReason::PointSize),
        );
        check(
            with(ec.clone(), "x", json!(format!("{}=", b64(&[1; 32])))),
            Err(SkipReason::Parameter),
        );
        check(
            json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"}),
            Err(SkipReason::Private),
        );
        check(json!({"kty": "oct", "kid": "h"}), Err(SkipReason::KeyType));
        check(
            json!({"kty": "OKP", "crv": "Ed25519", "kid": "o", "x": b64(&[9; 32])}),
            Ok(()),
        );
        check(
            json!({"kty": "OKP", "crv": "X25519", "kid": "o", "x": b64(&[9; 32])}),
            Err(SkipReason::KeyType),
        );
    }

    #[test]
    fn a_bad_key_next_to_good_ones_is_skipped() {
        let set = json!({"keys": [
            {"kty": "RSA", "kid": "enc", "use": "enc", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"},
            rsa_key(2048),
            "garbage",
        ]});
        let set = KeySet::from_value(&set).expect("a set");
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.with_kid("r").count(), 1);
        assert!(matches!(
            KeySet::parse(b"{\"keys\": {}}"),
            Err(KeySetError::Shape)
        ));
        assert!(matches!(
            KeySet::parse(b"<html>"),
            Err(KeySetError::Json(_))
        ));
    }

    #[test]
    fn a_key_suits_only_its_own_family_and_alg() {
        let rsa = parse_jwk(&rsa_key(2048)).expect("rsa");
        assert!(rsa.suits(Algorithm::RS256) && rsa.suits(Algorithm::PS512));
        assert!(!rsa.suits(Algorithm::ES256) && !rsa.suits(Algorithm::EdDSA));
        let mut pinned = rsa_key(2048);
        pinned["alg"] = json!("RS256");
        let pinned = parse_jwk(&pinned).expect("rsa");
        assert!(pinned.suits(Algorithm::RS256) && !pinned.suits(Algorithm::PS256));
        for name in [
            "none", "None", "NONE", "nOnE", "HS256", "rs256", "RS256 ", "ES512",
        ] {
            assert_eq!(Algorithm::parse(name), None, "{name}");
        }
        for alg in Algorithm::ALL {
            assert_eq!(Algorithm::parse(alg.name()), Some(alg));
        }
    }
}
