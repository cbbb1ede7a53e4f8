//! The one login path every front end takes (`/sql`, WebSocket and TCP sessions): check the
//! password against the role's secret before anything is resolved or woken, find the endpoint
//! (waking it if needed), connect to it or take a pooled connection, and forget a secret that
//! Postgres contradicts. An unknown endpoint or role reads exactly like a wrong password:
//! both end in [`LoginError::AuthFailed`].

use std::sync::Arc;

use tokio::time::Instant;

use crate::auth::jwt::{JwtError, JwtValidator};
use crate::auth::{PasswordCheck, Verifier};
use crate::base::conn_info::ConnInfo;
use crate::base::endpoint::{EndpointId, Password};
use crate::base::error::{ErrorKind, ReportableError};
use crate::base::limits::{EndpointLimits, EndpointSlot, Limit, Refused};
use crate::compute::{Backend, BackendError, ClaimsError, ClaimsKey, ConnectParams, DbError};
use crate::control_plane::activity::{Activity, ActivityGuard};
use crate::control_plane::client::{unavailable, ControlPlaneError};
use crate::control_plane::jwt_rules::{EndpointJwt, JwtRules};
use crate::control_plane::routes::{ConnectError, RoleSecret, Route, RouteError, RouteTable};
use crate::obs::metrics::Metrics;
use crate::obs::usage::Usage;
use crate::pgwire::scram::ScramKeys;
use crate::proxy::pool::{CheckoutOptions, Conn, Pool, PoolError, Reuse};

/// Why a login failed, in terms each front end turns into its own protocol's answer.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Wrong password, unknown role, or unknown endpoint: deliberately indistinguishable.
    #[error("password authentication failed for user '{user}'")]
    AuthFailed { user: String },
    /// The control plane could not give an address or a secret (down, refused, or the
    /// endpoint did not wake in time). Worth retrying; the cause is logged, not shown.
    #[error("{}", unavailable(.0))]
    Unavailable(#[source] Arc<ControlPlaneError>),
    /// A limit protecting the gateway or other tenants.
    #[error(transparent)]
    Limited(#[from] Refused),
    /// No pooled connection slot of the endpoint became free in time.
    #[error("Too many connections to this endpoint. Please try again later.")]
    TooManyConnections,
    /// Postgres refused the login after the password (no such database, too many
    /// connections): passed on as Postgres said it.
    #[error("{}", .0.message)]
    Postgres(Box<DbError>),
    /// The backend could not be reached or failed. The cause is logged, not shown.
    #[error("could not connect to the database")]
    Backend(#[source] BackendError),
    /// A token that is not valid for the endpoint, whatever the reason (logged, not shown).
    #[error(transparent)]
    Jwt(JwtError),
    /// A token for a role no JWKS rule of the endpoint names.
    #[error("role '{role}' may not log in with a JWT on this endpoint")]
    JwtRoleNotAllowed { role: String },
    /// The database did not accept the token's claims (its JWT setup is missing or broken).
    #[error("could not pass the token's claims to the database")]
    ClaimsRefused,
}

impl ReportableError for LoginError {
    fn kind(&self) -> ErrorKind {
        match self {
            LoginError::AuthFailed { .. } => ErrorKind::User,
            LoginError::Unavailable(_) => ErrorKind::ControlPlane,
            LoginError::Limited(_) | LoginError::TooManyConnections => ErrorKind::RateLimit,
            LoginError::Postgres(_) => ErrorKind::Postgres,
            LoginError::Backend(e) => e.kind(),
            LoginError::Jwt(e) => e.kind(),
            LoginError::JwtRoleNotAllowed { .. } => ErrorKind::User,
            LoginError::ClaimsRefused => ErrorKind::Compute,
        }
    }
}

impl LoginError {
    fn auth_failed(user: &str) -> Self {
        LoginError::AuthFailed {
            user: user.to_owned(),
        }
    }

    /// A route failure for `user`: an unknown endpoint reads exactly like a wrong password.
    pub fn from_route(error: RouteError, user: &str) -> Self {
        match error {
            RouteError::NotFound => LoginError::auth_failed(user),
            RouteError::Unavailable(e) => LoginError::Unavailable(e),
        }
    }

    /// Claims a backend did not take (see [`JwtChecked::begin`]).
    pub fn from_claims(error: ClaimsError, user: &str) -> Self {
        match error {
            ClaimsError::Backend(e) => LoginError::from_backend(e, user),
            ClaimsError::Refused => LoginError::ClaimsRefused,
        }
    }

    /// A failed backend login for `user`: Postgres refusing the password is a wrong password.
    pub fn from_backend(error: BackendError, user: &str) -> Self {
        match error {
            BackendError::Db(db) if db.is_auth_failure() => LoginError::auth_failed(user),
            BackendError::Db(db) => LoginError::Postgres(db),
            BackendError::Limited(refused) => LoginError::Limited(refused),
            other => LoginError::Backend(other),
        }
    }
}

/// What a password check proved.
pub enum Checked {
    /// The password matches the role's secret; the backend login uses these keys.
    Proven(ScramKeys),
    /// A static route: Postgres judges the password on a new connection.
    Unchecked,
}

/// A token the gateway verified, and how to log in for it.
pub struct JwtChecked {
    /// The endpoint without `-pooler`: claims are bound to one backend, so JWT logins always
    /// go to Postgres itself, never through PgBouncer.
    pub endpoint: EndpointId,
    pub role: String,
    /// The JWT role's login (the control plane's, not the client's).
    pub keys: ScramKeys,
    claims_key: ClaimsKey,
    claims: serde_json::Map<String, serde_json::Value>,
    /// When the token expires (unix seconds).
    pub exp: u64,
    /// When the claims handed to SQL expire (unix seconds).
    claims_until: u64,
}

impl JwtChecked {
    /// Hands the token's claims to SQL on `backend` for what runs next there. On an error the
    /// backend must be discarded ([`LoginError::from_claims`] tells the client).
    pub async fn begin(&self, backend: &mut Backend) -> Result<(), ClaimsError> {
        backend
            .begin_claims(
                &self.claims_key,
                &self.role,
                &self.claims,
                self.claims_until,
            )
            .await
    }

    /// How long until the token expires.
    pub fn remaining(&self) -> std::time::Duration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        std::time::Duration::from_secs(self.exp.saturating_sub(now))
    }
}

/// The parts of the gateway a login touches, borrowed from the front ends' shared state.
#[derive(Clone, Copy)]
pub struct Login<'a> {
    pub routes: &'a RouteTable,
    pub pool: &'a Arc<Pool>,
    pub endpoint_limits: &'a EndpointLimits,
    pub activity: &'a Arc<Activity>,
    pub metrics: &'a Metrics,
    /// Where new backend connections are counted, per endpoint (metering).
    pub usage: &'a Usage,
    pub jwt_rules: &'a JwtRules,
    pub jwt: &'a JwtValidator,
    /// Keys the mock secrets of endpoints and roles that do not exist.
    pub mock_auth_key: &'a [u8; 32],
}

/// What a session needs once its backend accepted the login.
pub struct Connected {
    pub backend: Backend,
    /// Counts the session as open on its endpoint until dropped.
    pub activity: ActivityGuard,
    /// Its place under the endpoint's limits.
    pub admitted: EndpointSlot,
}

impl<'a> Login<'a> {
    /// What `role`'s password on `endpoint` is checked against, before anything else happens
    /// for the client: Postgres on a static route; otherwise the control plane's secret, or a
    /// mock one for an endpoint or role it does not know (or when there is no control plane),
    /// or whose secret asks for more SCRAM iterations than `--max-scram-iterations` (that role
    /// cannot log in, and nobody learns it exists).
    /// Fails only when the control plane cannot be asked and nothing is cached: the client is
    /// then told the endpoint is unavailable, never let through unchecked.
    pub async fn verifier(
        &self,
        endpoint: &EndpointId,
        role: &str,
    ) -> Result<Verifier, LoginError> {
        match self.routes.role_secret(endpoint, role).await {
            Ok(RoleSecret::Static) => Ok(Verifier::Postgres),
            Ok(RoleSecret::Known(secret))
                if secret.iterations() > self.pool.passwords().max_scram_iterations() =>
            {
                tracing::warn!(%endpoint, iterations = secret.iterations(), "role secret asks for more SCRAM iterations than --max-scram-iterations; the role cannot log in");
                self.metrics.limit_hit(Limit::ScramIterations);
                Ok(Verifier::mock(self.mock_auth_key, endpoint, role))
            }
            Ok(RoleSecret::Known(secret)) => Ok(Verifier::Secret(secret)),
            Ok(RoleSecret::Unknown) | Err(RouteError::NotFound) => {
                Ok(Verifier::mock(self.mock_auth_key, endpoint, role))
            }
            Err(RouteError::Unavailable(e)) => Err(LoginError::Unavailable(e)),
        }
    }

    /// Checks a cleartext password before anything is resolved or woken: against the role's
    /// secret (or a mock one) with a control plane; on a static route not here.
    pub async fn check_password(
        &self,
        endpoint: &EndpointId,
        role: &str,
        password: &Password,
    ) -> Result<Checked, LoginError> {
        let verifier = self.verifier(endpoint, role).await?;
        match self
            .pool
            .passwords()
            .check(&verifier, endpoint, role, password)
            .await
        {
            PasswordCheck::Verified(keys) => Ok(Checked::Proven(keys)),
            PasswordCheck::Unchecked => Ok(Checked::Unchecked),
            PasswordCheck::Refused(refused) => Err(LoginError::Limited(refused)),
            PasswordCheck::Wrong => Err(LoginError::auth_failed(role)),
        }
    }

    /// The endpoint's JWT rules (none without a control plane).
    pub async fn jwt_rules(&self, endpoint: &EndpointId) -> Result<Arc<EndpointJwt>, LoginError> {
        self.jwt_rules
            .of(endpoint)
            .await
            .map_err(LoginError::Unavailable)
    }

    /// Checks `token` for `role` on `endpoint` before anything is woken: some rule of the
    /// endpoint must name the role, and the token must be valid for one such rule.
    pub async fn check_jwt(
        &self,
        endpoint: &EndpointId,
        role: &str,
        token: &str,
    ) -> Result<JwtChecked, LoginError> {
        let rules = self.jwt_rules(endpoint).await?;
        let endpoint = endpoint.without_pooler();
        let verified = match self
            .jwt
            .validate(&endpoint, &rules.rules, role, token)
            .await
        {
            Ok(verified) => verified,
            Err(JwtError::RoleNotAllowed) => {
                return Err(LoginError::JwtRoleNotAllowed {
                    role: role.to_owned(),
                })
            }
            Err(e) => return Err(LoginError::Jwt(e)),
        };
        let Some(login) = rules.role(role) else {
            tracing::warn!(%endpoint, role, "the control plane gave no login for a JWT role its rules name");
            return Err(LoginError::ClaimsRefused);
        };
        Ok(JwtChecked {
            endpoint,
            role: role.to_owned(),
            keys: login.keys.clone(),
            claims_key: login.claims_key.clone(),
            claims: verified.claims,
            exp: verified.exp,
            // What the validator accepted, SQL accepts: a token within the leeway past its
            // `exp` gets claims that expire with the leeway.
            claims_until: verified.exp.saturating_add(self.jwt.leeway().as_secs()),
        })
    }

    /// Where the endpoint is (woken if needed); an unknown one is a wrong password.
    pub async fn route(&self, endpoint: &EndpointId, user: &str) -> Result<Route, LoginError> {
        self.routes
            .resolve(endpoint)
            .await
            .map_err(|e| LoginError::from_route(e, user))
    }

    /// A pooled connection for a `/sql` request (an idle one only for a verified password and
    /// with [`Reuse::Idle`]), or a new one through the route table (counted on the endpoint).
    /// Postgres refusing keys the secret accepted means the secret is out of date: it is
    /// forgotten.
    pub async fn checkout(
        &self,
        info: &ConnInfo,
        route: Route,
        proven: Option<&ScramKeys>,
        reuse: Reuse,
    ) -> Result<Conn, LoginError> {
        let options = CheckoutOptions {
            application_name: None,
            proven,
            reuse,
        };
        let checkout = self.pool.checkout(self.routes, route, info, options).await;
        match checkout {
            Ok(conn) => {
                if !conn.reused() {
                    self.usage.endpoint(&info.endpoint).add_connection();
                }
                Ok(conn)
            }
            Err(PoolError::AuthFailed) => {
                if proven.is_some() {
                    self.routes
                        .forget_role_secret(&info.endpoint, &info.user)
                        .await;
                }
                Err(LoginError::auth_failed(&info.user))
            }
            Err(PoolError::TooManyConnections) => Err(LoginError::TooManyConnections),
            Err(PoolError::Backend(e)) => Err(LoginError::from_backend(e, &info.user)),
            Err(PoolError::Route(e)) => Err(LoginError::from_route(e, &info.user)),
        }
    }

    /// A session's backend: admits it under its endpoint's limits, resolves `endpoint` (waking
    /// it if needed), counts the session as open on it, and logs in with `params`. A password
    /// the gateway could not check (a static route) is admitted only once Postgres accepted
    /// it, so unauthenticated clients never spend an endpoint's allowance. The new connection
    /// is counted on the endpoint. A backend that refuses keys the role's secret accepted
    /// makes that secret out of date.
    pub async fn connect(
        &self,
        endpoint: &EndpointId,
        params: &ConnectParams<'_>,
        max_message_bytes: usize,
    ) -> Result<Connected, LoginError> {
        let proven = matches!(params.login, crate::compute::Login::Scram(_));
        let admitted = match proven {
            true => Some(self.endpoint_limits.admit(endpoint)?),
            false => None,
        };
        let route = self.route(endpoint, params.user).await?;
        let activity = self.activity.session(endpoint);
        let connect_timeout = self.pool.config().connect_timeout;
        let started = Instant::now();
        let connected = self
            .routes
            .connect(route, |address| async move {
                crate::compute::connect(&address, params, connect_timeout, max_message_bytes).await
            })
            .await;
        self.metrics
            .backend_connect_seconds
            .observe(started.elapsed().as_secs_f64());
        match connected {
            Ok(backend) => {
                self.usage.endpoint(endpoint).add_connection();
                let admitted = match admitted {
                    Some(admitted) => admitted,
                    None => self.endpoint_limits.admit(endpoint)?,
                };
                Ok(Connected {
                    backend,
                    activity,
                    admitted,
                })
            }
            Err(ConnectError::Connect(BackendError::Db(db))) if db.is_auth_failure() => {
                if proven {
                    self.routes.forget_role_secret(endpoint, params.user).await;
                }
                Err(LoginError::auth_failed(params.user))
            }
            Err(ConnectError::Connect(e)) => Err(LoginError::from_backend(e, params.user)),
            Err(ConnectError::Route(e)) => Err(LoginError::from_route(e, params.user)),
        }
    }

    /// Admits a session or request whose password Postgres just accepted.
    pub fn admit(&self, endpoint: &EndpointId) -> Result<EndpointSlot, LoginError> {
        Ok(self.endpoint_limits.admit(endpoint)?)
    }
}
