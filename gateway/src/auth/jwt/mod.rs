//! JWT logins (issue 15): a token proves who the client is to one of the endpoint's JWKS
//! rules, and the role it asks for is one that rule allows.
//!
//! [`JwtValidator::validate`] is the whole check, strict where Neon is loose (research 4.2):
//! - the token: at most [`JwtConfig::max_token_bytes`] (checked first), JWS compact form with
//!   three non-empty segments in strict base64url, header and payload JSON objects without
//!   duplicate keys, no NUL in any claim ([`token::parse`]);
//! - the header: `alg` one this gateway verifies, `kid` a string of at most 256 bytes, no
//!   `crit`, `b64`, `enc`, `zip` or nested-JWT `cty`; `jku`, `x5u`, `jwk` and `x5c` are never
//!   looked at (keys come only from the rules);
//! - the key: among the rules whose `role_names` hold the role and whose algorithms hold the
//!   token's `alg`, exactly one key with the token's `kid` that suits the `alg` (type, curve
//!   and the key's own `alg`); two are refused as ambiguous, never both tried. An unknown
//!   `kid` makes the URL rules' sets be fetched again, at most once per
//!   [`JwtConfig::min_refetch`] ([`jwks`]);
//! - the signature ([`keys::Jwk::verify`]), then the claims ([`token::check_claims`]): `exp`
//!   required (an integer), `nbf` and `iat` numbers not in the future, all with
//!   [`JwtConfig::leeway`]; `aud` and `iss` as the key's rule asks; `sub`, if any, a short
//!   non-empty string.
//!
//! Whatever failed, the client is told the same ([`JwtError`]'s text); the variant is for the
//! logs and `gateway_jwt_validations_total`.

mod addresses;
mod jwks;
pub mod keys;
pub mod token;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use sha2::Digest;
use url::{Host, Url};
use wake_api::proxy::{JwksSettings, DEFAULT_JWT_ALGORITHMS};

use self::jwks::{Jwks, Seen};
use self::keys::{Algorithm, Jwk, KeySet};
use crate::base::endpoint::EndpointId;
use crate::base::error::{ErrorKind, ReportableError};
use crate::obs::labels::JwtOutcome;
use crate::obs::metrics::{Counter, Metrics};

/// The limits and intervals of JWT validation and JWKS fetching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtConfig {
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// The longest token looked at.
    pub max_token_bytes: usize,
    pub fetch_connect_timeout: Duration,
    /// For a whole fetch, body included.
    pub fetch_timeout: Duration,
    /// The largest JWKS body accepted.
    pub max_body_bytes: usize,
    /// A set older than this is refreshed in the background while it is served.
    pub refresh_after: Duration,
    /// A set older than this is fetched again before it is used.
    pub max_age: Duration,
    /// No fetch of one (endpoint, rule) starts within this long of the previous one.
    pub min_refetch: Duration,
    /// `http://` JWKS URLs are accepted when their host is a loopback address, and fetches
    /// may reach loopback addresses (tests only).
    pub allow_http_loopback: bool,
    /// Fetches may reach private, link-local and loopback addresses (an identity provider on
    /// the operator's network); otherwise public addresses only ([`addresses`]).
    pub allow_private_addresses: bool,
}

impl JwtConfig {
    fn allowed_addresses(&self) -> addresses::Allowed {
        addresses::Allowed {
            loopback: self.allow_http_loopback,
            private: self.allow_private_addresses,
        }
    }
}

impl Default for JwtConfig {
    /// Neon's numbers (research 1.2).
    fn default() -> Self {
        JwtConfig {
            leeway: Duration::from_secs(30),
            max_token_bytes: 8 * 1024,
            fetch_connect_timeout: Duration::from_secs(2),
            fetch_timeout: Duration::from_secs(5),
            max_body_bytes: 64 * 1024,
            refresh_after: Duration::from_secs(300),
            max_age: Duration::from_secs(3600),
            min_refetch: Duration::from_secs(30),
            allow_http_loopback: false,
            allow_private_addresses: false,
        }
    }
}

/// Where a rule's keys come from.
#[derive(Clone, Debug)]
pub enum JwksSource {
    Url(Url),
    Inline(Arc<KeySet>),
}

/// One JWKS rule of an endpoint, checked ([`JwtRule::from_settings`]).
#[derive(Clone, Debug)]
pub struct JwtRule {
    pub id: String,
    pub source: JwksSource,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub role_names: Vec<String>,
}

/// Why a rule from the control plane cannot be used (the rule is left out and logged).
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("jwks_url is not a URL: {0}")]
    Url(#[from] url::ParseError),
    #[error(
        "jwks_url must be https (http only to a loopback host with --jwks-allow-http-loopback)"
    )]
    Scheme,
    #[error("jwks_url must not carry credentials or a fragment")]
    UrlParts,
    #[error("a rule needs exactly one of jwks_url and an inline jwks")]
    Source,
    #[error("the inline jwks is not a key set: {0}")]
    Inline(#[from] keys::KeySetError),
    #[error("the inline jwks has no usable key")]
    NoUsableKey,
    #[error("unsupported algorithm {0:?}")]
    Algorithm(String),
}

impl ReportableError for RuleError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::ControlPlane
    }
}

impl JwtRule {
    /// The rule of the control plane's `settings`.
    pub fn from_settings(
        settings: &JwksSettings,
        allow_http_loopback: bool,
    ) -> Result<JwtRule, RuleError> {
        let source = match (&settings.jwks, settings.jwks_url.is_empty()) {
            (Some(inline), true) => {
                let keys = KeySet::from_value(inline)?;
                if keys.keys.is_empty() {
                    return Err(RuleError::NoUsableKey);
                }
                JwksSource::Inline(Arc::new(keys))
            }
            (None, false) => JwksSource::Url(jwks_url(&settings.jwks_url, allow_http_loopback)?),
            _ => return Err(RuleError::Source),
        };
        let algorithms = if settings.algorithms.is_empty() {
            DEFAULT_JWT_ALGORITHMS
                .iter()
                .filter_map(|name| Algorithm::parse(name))
                .collect()
        } else {
            settings
                .algorithms
                .iter()
                .map(|name| {
                    Algorithm::parse(name).ok_or_else(|| RuleError::Algorithm(name.clone()))
                })
                .collect::<Result<_, _>>()?
        };
        Ok(JwtRule {
            id: settings.id.clone(),
            source,
            audience: settings.jwt_audience.clone(),
            issuer: settings.jwt_issuer.clone(),
            algorithms,
            role_names: settings.role_names.clone(),
        })
    }
}

/// A JWKS URL: https, or http to a loopback host when allowed; no userinfo or fragment
/// (refused, not stripped).
fn jwks_url(text: &str, allow_http_loopback: bool) -> Result<Url, RuleError> {
    let url = Url::parse(text)?;
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(RuleError::UrlParts);
    }
    let loopback = match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => return Err(RuleError::Scheme),
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_http_loopback && loopback => Ok(url),
        _ => Err(RuleError::Scheme),
    }
}

/// A token that passed every check.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedJwt {
    /// The payload object as parsed (and checked): what SQL is given.
    pub claims: Map<String, Value>,
    /// The token's `exp`, unix seconds.
    pub exp: u64,
    /// The rule whose key signed it.
    pub rule_id: String,
}

/// What the client is told, whatever failed.
const REFUSED: &str = "authentication failed: invalid JWT";

/// Why a token was refused. The text is the same for every case (the client learns nothing
/// about which check failed); [`JwtError::outcome`] and the `Debug` form are for logs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not a well-formed token (the reason is for logs).
    #[error("{REFUSED}")]
    Malformed(&'static str),
    #[error("{REFUSED}")]
    BadAlgorithm,
    #[error("{REFUSED}")]
    BadClaims(&'static str),
    #[error("{REFUSED}")]
    BadSignature,
    #[error("{REFUSED}")]
    Expired,
    #[error("{REFUSED}")]
    NotYetValid,
    #[error("{REFUSED}")]
    WrongAudience,
    #[error("{REFUSED}")]
    WrongIssuer,
    #[error("{REFUSED}")]
    UnknownKey,
    #[error("{REFUSED}")]
    AmbiguousKey,
    #[error("{REFUSED}")]
    RoleNotAllowed,
    /// No key set of the applicable rules could be fetched.
    #[error("{REFUSED}")]
    KeysUnavailable,
}

impl JwtError {
    pub fn outcome(&self) -> JwtOutcome {
        match self {
            JwtError::Malformed(_) => JwtOutcome::Malformed,
            JwtError::BadAlgorithm => JwtOutcome::BadAlgorithm,
            JwtError::BadClaims(_) => JwtOutcome::BadClaims,
            JwtError::BadSignature => JwtOutcome::BadSignature,
            JwtError::Expired => JwtOutcome::Expired,
            JwtError::NotYetValid => JwtOutcome::NotYetValid,
            JwtError::WrongAudience => JwtOutcome::WrongAudience,
            JwtError::WrongIssuer => JwtOutcome::WrongIssuer,
            JwtError::UnknownKey => JwtOutcome::UnknownKey,
            JwtError::AmbiguousKey => JwtOutcome::AmbiguousKey,
            JwtError::RoleNotAllowed => JwtOutcome::RoleNotAllowed,
            JwtError::KeysUnavailable => JwtOutcome::KeysUnavailable,
        }
    }
}

impl ReportableError for JwtError {
    fn kind(&self) -> ErrorKind {
        match self {
            // The JWKS provider is down: not the client's doing.
            JwtError::KeysUnavailable => ErrorKind::ControlPlane,
            _ => ErrorKind::User,
        }
    }
}

/// Checks tokens against an endpoint's rules; keeps the fetched key sets.
pub struct JwtValidator {
    config: JwtConfig,
    jwks: Jwks,
    validations: Counter<JwtOutcome>,
    /// Signatures that verified, by a digest of the key's material, the algorithm, the
    /// signed input and the signature: a client sending the same token with every request
    /// (the driver's `authToken`) costs one signature check, not one per request. Everything
    /// else (the key still in its rule's set, the claims, `exp`) is checked every time.
    signatures: moka::sync::Cache<[u8; 32], ()>,
}

/// The most verified signatures remembered, and for how long.
const SIGNATURES: u64 = 50_000;
const SIGNATURE_TTL: Duration = Duration::from_secs(3600);

/// The key sets of the applicable rules, by rule (`keys` is `None` when no fetch ever
/// succeeded).
type Sets<'r> = Vec<(&'r JwtRule, Seen)>;

/// What the applicable sets hold for a token's `kid` and `alg`.
enum Lookup<'r> {
    Found(&'r JwtRule, Jwk),
    /// Keys with the `kid` exist, but none suits the `alg`.
    Unsuited,
    Ambiguous,
    Unknown,
}

impl JwtValidator {
    pub fn new(config: JwtConfig, metrics: &Metrics) -> JwtValidator {
        JwtValidator {
            jwks: Jwks::new(config.clone(), metrics),
            config,
            validations: metrics.jwt_validations.clone(),
            signatures: moka::sync::Cache::builder()
                .max_capacity(SIGNATURES)
                .time_to_live(SIGNATURE_TTL)
                .build(),
        }
    }

    /// How far past `exp` (and before `nbf`) a token is still accepted.
    pub fn leeway(&self) -> std::time::Duration {
        self.config.leeway
    }

    /// Checks `token` for a login as `role` on `endpoint`, whose rules are `rules`.
    pub async fn validate(
        &self,
        endpoint: &EndpointId,
        rules: &[JwtRule],
        role: &str,
        token: &str,
    ) -> Result<VerifiedJwt, JwtError> {
        let verified = self.check(endpoint, rules, role, token).await;
        match &verified {
            Ok(jwt) => {
                self.validations.inc(JwtOutcome::Ok);
                tracing::debug!(%endpoint, role, rule = jwt.rule_id, "JWT accepted");
            }
            Err(error) => {
                self.validations.inc(error.outcome());
                tracing::info!(%endpoint, role, reason = ?error, "JWT refused");
            }
        }
        verified
    }

    async fn check(
        &self,
        endpoint: &EndpointId,
        rules: &[JwtRule],
        role: &str,
        token: &str,
    ) -> Result<VerifiedJwt, JwtError> {
        let parsed = token::parse(token, self.config.max_token_bytes)?;
        let for_role: Vec<&JwtRule> = rules
            .iter()
            .filter(|rule| rule.role_names.iter().any(|name| name == role))
            .collect();
        if for_role.is_empty() {
            return Err(JwtError::RoleNotAllowed);
        }
        let applicable: Vec<&JwtRule> = for_role
            .into_iter()
            .filter(|rule| rule.algorithms.contains(&parsed.alg))
            .collect();
        if applicable.is_empty() {
            return Err(JwtError::BadAlgorithm);
        }
        let (rule, key) = self.find_key(endpoint, &applicable, &parsed).await?;
        self.verify_signature(&key, &parsed)?;
        let expected = token::Expected {
            audience: rule.audience.as_deref(),
            issuer: rule.issuer.as_deref(),
            now: unix_now(),
            leeway: self.config.leeway.as_secs(),
        };
        let exp = token::check_claims(&parsed.claims, expected)?;
        Ok(VerifiedJwt {
            claims: parsed.claims,
            exp,
            rule_id: rule.id.clone(),
        })
    }

    /// Checks the token's signature with `key`, unless this very signature of this very input
    /// verified with the same key material before.
    fn verify_signature(&self, key: &Jwk, parsed: &token::Parsed<'_>) -> Result<(), JwtError> {
        let mut digest = sha2::Sha256::new();
        for part in [
            &key.fingerprint()[..],
            format!("{:?}", parsed.alg).as_bytes(),
            parsed.signing_input,
            &parsed.signature,
        ] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        let proof: [u8; 32] = digest.finalize().into();
        if self.signatures.contains_key(&proof) {
            return Ok(());
        }
        if !key.verify(parsed.alg, parsed.signing_input, &parsed.signature) {
            return Err(JwtError::BadSignature);
        }
        self.signatures.insert(proof, ());
        Ok(())
    }

    /// The one key of the applicable rules for the token's `kid` and `alg`; an unknown `kid`
    /// has the URL rules' sets fetched again first (rate-limited).
    async fn find_key<'r>(
        &self,
        endpoint: &EndpointId,
        rules: &[&'r JwtRule],
        token: &token::Parsed<'_>,
    ) -> Result<(&'r JwtRule, Jwk), JwtError> {
        let mut sets: Sets<'r> = Vec::with_capacity(rules.len());
        for rule in rules {
            let seen = match &rule.source {
                JwksSource::Inline(keys) => Seen::inline(keys.clone()),
                JwksSource::Url(url) => self.jwks.keys(endpoint, &rule.id, url).await,
            };
            sets.push((rule, seen));
        }
        if let Lookup::Unknown = lookup(&sets, &token.kid, token.alg) {
            for (rule, seen) in &mut sets {
                if let JwksSource::Url(url) = &rule.source {
                    *seen = self.jwks.refetch(endpoint, &rule.id, url, seen).await;
                }
            }
        }
        match lookup(&sets, &token.kid, token.alg) {
            Lookup::Found(rule, key) => Ok((rule, key)),
            Lookup::Unsuited => Err(JwtError::BadAlgorithm),
            Lookup::Ambiguous => {
                tracing::warn!(%endpoint, kid = token.kid, "two JWKS keys share a kid; refused");
                Err(JwtError::AmbiguousKey)
            }
            Lookup::Unknown if sets.iter().all(|(_, seen)| seen.keys.is_none()) => {
                Err(JwtError::KeysUnavailable)
            }
            Lookup::Unknown => Err(JwtError::UnknownKey),
        }
    }
}

fn lookup<'r>(sets: &Sets<'r>, kid: &str, alg: Algorithm) -> Lookup<'r> {
    let mut named = false;
    let mut found = None;
    for (rule, seen) in sets {
        for key in seen.keys.iter().flat_map(|keys| keys.with_kid(kid)) {
            named = true;
            if key.suits(alg) {
                if found.is_some() {
                    return Lookup::Ambiguous;
                }
                found = Some((*rule, key.clone()));
            }
        }
    }
    match found {
        Some((rule, key)) => Lookup::Found(rule, key),
        None if named => Lookup::Unsuited,
        None => Lookup::Unknown,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
