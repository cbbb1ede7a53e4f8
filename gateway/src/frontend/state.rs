//! What every connection, request and session shares: the route table (static routes and the
//! control plane's cached answers), the pool, TLS, cancel keys, activity and usage counters,
//! metrics, and the bookkeeping for a graceful drain.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::jwt::JwtValidator;
use crate::base::endpoint::EndpointId;
use crate::base::limits::{ConnectionSlots, EndpointLimits};
use crate::control_plane::activity::Activity;
use crate::control_plane::jwt_rules::JwtRules;
use crate::control_plane::routes::RouteTable;
use crate::frontend::config::HttpConfig;
use crate::frontend::config::SessionConfig;
use crate::frontend::handshake::HandshakePool;
use crate::frontend::query::types::TypeCache;
use crate::frontend::tls::Tls;
use crate::obs::metrics::Metrics;
use crate::obs::usage::Usage;
use crate::proxy::cancel::Cancels;
use crate::proxy::login::Login;
use crate::proxy::pool::Pool;

pub struct AppState {
    /// Endpoint → address (static, or from the control plane, cached) and role secrets.
    pub routes: Arc<RouteTable>,
    pub default_endpoint: EndpointId,
    /// Each endpoint's JWKS rules and JWT role logins, from the control plane, cached.
    pub jwt_rules: Arc<JwtRules>,
    /// Verifies tokens (and caches the key sets they are checked against).
    pub jwt: JwtValidator,
    pub pool: Arc<Pool>,
    pub types: TypeCache,
    pub metrics: Arc<Metrics>,
    pub sessions: SessionConfig,
    /// The certificate for https, wss and Postgres TLS, when one is configured.
    pub tls: Option<Tls>,
    /// Cancel keys of this gateway's sessions, the cancel rate limit, and the peer gateways
    /// CancelRequests for other replicas' keys are forwarded to.
    pub cancels: Arc<Cancels>,
    /// Traffic per endpoint (bytes, queries, sessions, backend connections): what the
    /// reporter meters and admin `/usage` shows.
    pub usage: Arc<Usage>,
    /// Open sessions and queries in flight per endpoint, for the control plane's scale to zero.
    pub activity: Arc<Activity>,
    /// Client connections open at once, in all and per IP; more are refused on accept.
    pub connections: ConnectionSlots,
    /// Authenticated requests and sessions per endpoint: at once and per second.
    pub endpoint_limits: EndpointLimits,
    /// HTTP connection and `/sql` body limits.
    pub http: HttpConfig,
    /// What WebSocket clients in their handshake may make the gateway hold, together.
    pub handshake_pool: HandshakePool,
    /// Plaintext HTTP, `ws://` and Postgres without TLS are refused.
    pub require_tls: bool,
    /// Every client connection's task (HTTP connections, sessions), waited for on shutdown.
    pub tasks: TaskTracker,
    /// Cancelled when a drain runs out of time: sessions still open end with a FATAL.
    pub stop_sessions: CancellationToken,
    /// Keys the mock secrets of endpoints and roles that do not exist (random per process).
    pub mock_auth_key: [u8; 32],
    /// Set when shutdown begins: `/readyz` turns 503 so load balancers stop sending traffic.
    pub draining: AtomicBool,
}

impl AppState {
    /// The login path ([`crate::proxy::login`]) over this state's parts.
    pub fn login(&self) -> Login<'_> {
        Login {
            routes: &self.routes,
            pool: &self.pool,
            endpoint_limits: &self.endpoint_limits,
            activity: &self.activity,
            metrics: &self.metrics,
            usage: &self.usage,
            jwt_rules: &self.jwt_rules,
            jwt: &self.jwt,
            mock_auth_key: &self.mock_auth_key,
        }
    }
}
