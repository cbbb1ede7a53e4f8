//! Each endpoint's JWT rules as the control plane gives them (`endpoints/{id}/jwks`), cached:
//! which key sets may sign tokens for which roles, the key that authenticates claims to SQL,
//! and the JWT roles' logins. One lookup per endpoint per [`JwtRulesConfig::ttl`]
//! (single-flight); an endpoint without rules, or unknown, is cached as having none for
//! [`JwtRulesConfig::negative_ttl`] only, so a rule just added works within seconds. A rule
//! deleted in the control plane stops working here within the TTL, and at once when the
//! control plane reports a change of the endpoint's roles ([`JwtRules::forget`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use wake_api::proxy::{Jwks, JwtLogin};

use crate::auth::jwt::JwtRule;
use crate::base::endpoint::EndpointId;
use crate::compute::ClaimsKey;
use crate::control_plane::client::{ControlPlaneClient, ControlPlaneError};
use crate::pgwire::scram::{ScramKeys, ScramSecret};

/// How long an endpoint's rules are trusted, and how many endpoints are remembered.
#[derive(Clone, Debug)]
pub struct JwtRulesConfig {
    pub ttl: Duration,
    /// How long "no rules" is remembered.
    pub negative_ttl: Duration,
    pub capacity: u64,
    /// JWKS URLs with `http://` and a loopback host are accepted (tests only).
    pub allow_http_loopback: bool,
}

impl Default for JwtRulesConfig {
    fn default() -> Self {
        JwtRulesConfig {
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(3),
            capacity: 10_000,
            allow_http_loopback: false,
        }
    }
}

/// What an endpoint's JWT logins need.
#[derive(Debug, Default)]
pub struct EndpointJwt {
    pub rules: Vec<JwtRule>,
    claims_key: Option<ClaimsKey>,
    roles: HashMap<String, ScramKeys>,
}

/// A JWT role's login on its endpoint.
pub struct JwtRoleLogin<'a> {
    pub keys: &'a ScramKeys,
    pub claims_key: &'a ClaimsKey,
}

impl EndpointJwt {
    fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// How the gateway logs in as `role` for a token, when some rule names the role.
    pub fn role(&self, role: &str) -> Option<JwtRoleLogin<'_>> {
        if !self
            .rules
            .iter()
            .any(|r| r.role_names.iter().any(|n| n == role))
        {
            return None;
        }
        Some(JwtRoleLogin {
            keys: self.roles.get(role)?,
            claims_key: self.claims_key.as_ref()?,
        })
    }

    fn from_wire(jwks: Jwks, endpoint: &EndpointId, allow_http_loopback: bool) -> EndpointJwt {
        let rules = jwks
            .jwks
            .iter()
            .filter_map(|settings| {
                JwtRule::from_settings(settings, allow_http_loopback)
                    .map_err(|e| tracing::warn!(%endpoint, rule = %settings.id, error = %e, "JWKS rule ignored"))
                    .ok()
            })
            .collect();
        let (claims_key, roles) = match jwks.jwt_login {
            Some(login) => logins(login, endpoint),
            None => (None, HashMap::new()),
        };
        EndpointJwt {
            rules,
            claims_key,
            roles,
        }
    }
}

/// The claims key and role logins of the wire answer; malformed ones are left out (logged).
fn logins(
    login: JwtLogin,
    endpoint: &EndpointId,
) -> (Option<ClaimsKey>, HashMap<String, ScramKeys>) {
    let claims_key = ClaimsKey::from_hex(login.claims_key.kid, &login.claims_key.key);
    if claims_key.is_none() {
        tracing::warn!(%endpoint, "the control plane's claims key is malformed; JWT logins refused");
    }
    let roles = login
        .roles
        .into_iter()
        .filter_map(|role| {
            let keys = role_keys(&role.secret, &role.client_key);
            if keys.is_none() {
                tracing::warn!(%endpoint, role = %role.name, "the control plane's JWT role login is malformed; ignored");
            }
            Some((role.name, keys?))
        })
        .collect();
    (claims_key, roles)
}

fn role_keys(secret: &str, client_key: &str) -> Option<ScramKeys> {
    let secret = Arc::new(ScramSecret::parse(secret)?);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(client_key)
        .ok()?;
    ScramKeys::from_client_key(bytes.try_into().ok()?, secret)
}

/// The cache of every endpoint's rules.
pub struct JwtRules {
    control_plane: Option<Arc<ControlPlaneClient>>,
    cache: moka::future::Cache<EndpointId, Arc<EndpointJwt>>,
    allow_http_loopback: bool,
}

impl JwtRules {
    pub fn new(control_plane: Option<Arc<ControlPlaneClient>>, config: &JwtRulesConfig) -> Self {
        JwtRules {
            control_plane,
            cache: moka::future::Cache::builder()
                .max_capacity(config.capacity)
                .expire_after(Lifetime {
                    ttl: config.ttl,
                    negative_ttl: config.negative_ttl,
                })
                .build(),
            allow_http_loopback: config.allow_http_loopback,
        }
    }

    /// Drops what is cached for `endpoint` (its roles changed: a rule may have come or gone).
    pub async fn forget(&self, endpoint: &EndpointId) {
        self.cache.invalidate(&endpoint.without_pooler()).await;
    }

    /// Drops everything cached.
    pub fn forget_all(&self) {
        self.cache.invalidate_all();
    }

    /// `endpoint`'s rules (`-pooler` names the same endpoint). Without a control plane, none.
    pub async fn of(
        &self,
        endpoint: &EndpointId,
    ) -> Result<Arc<EndpointJwt>, Arc<ControlPlaneError>> {
        let Some(control_plane) = &self.control_plane else {
            return Ok(Arc::default());
        };
        let endpoint = endpoint.without_pooler();
        let allow_http_loopback = self.allow_http_loopback;
        let fetch = async {
            match control_plane.jwks(&endpoint).await {
                Ok(jwks) => Ok(Arc::new(EndpointJwt::from_wire(
                    jwks,
                    &endpoint,
                    allow_http_loopback,
                ))),
                Err(e) if e.is_not_found() => Ok(Arc::default()),
                Err(e) => Err(e),
            }
        };
        self.cache
            .try_get_with(endpoint.clone(), Box::pin(fetch))
            .await
    }
}

/// Rules live for the TTL from their fetch; "no rules" for the negative TTL.
struct Lifetime {
    ttl: Duration,
    negative_ttl: Duration,
}

impl moka::Expiry<EndpointId, Arc<EndpointJwt>> for Lifetime {
    fn expire_after_create(
        &self,
        _: &EndpointId,
        value: &Arc<EndpointJwt>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(match value.is_empty() {
            true => self.negative_ttl,
            false => self.ttl,
        })
    }
}
