//! Command-line flags (each also an environment variable), validated once into an immutable
//! [`Config`] before any port is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use wake_api::proxy::{valid_peer_address, REPORT_INTERVAL_MS};

use crate::auth::jwt::JwtConfig;
use crate::auth::HashingLimits;
use crate::base::endpoint::EndpointId;
use crate::base::limits::EndpointLimitsConfig;
use crate::base::retry::RetryConfig;
use crate::control_plane::client::{ControlPlaneConfig, Token};
use crate::control_plane::jwt_rules::JwtRulesConfig;
use crate::control_plane::routes::{Route, RouteCacheConfig};
use crate::frontend::config::SessionConfig;
use crate::frontend::config::{ClientLimits, HttpConfig};
use crate::pgwire::scram;
use crate::proxy::cancel::{CancelConfig, AUTO_PEER_ADDRESS};
use crate::proxy::pool::PoolConfig;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "gateway",
    version,
    about = "SQL over HTTP, WebSocket and Postgres TCP in front of plain Postgres, compatible with @neondatabase/serverless"
)]
pub struct Args {
    /// Public listener: POST /sql (HTTP/1.1, HTTP/2), the WebSocket tunnel and Postgres
    /// TCP, told apart by their first bytes; with --tls-cert also https, wss and Postgres TLS.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:4444")]
    pub listen: SocketAddr,

    /// Admin listener: /metrics, /healthz, /readyz.
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN", default_value = "127.0.0.1:4480")]
    pub admin_listen: SocketAddr,

    /// Static route `endpoint=host:port`; repeat the flag, or separate with commas in the
    /// environment variable.
    #[arg(long = "route", env = "GATEWAY_ROUTES", value_delimiter = ',')]
    pub routes: Vec<Route>,

    /// The control plane's Neon-compatible proxy API, e.g.
    /// `http://127.0.0.1:4400/proxy/api/v1`: endpoints without a static route are woken and
    /// looked up there. Without it, only static routes exist.
    #[arg(long, env = "GATEWAY_CONTROL_PLANE_URL")]
    pub control_plane_url: Option<String>,

    /// Bearer token for the control plane. Prefer the environment variable: command lines are
    /// visible to every user of the machine.
    #[arg(long, env = "GATEWAY_CONTROL_PLANE_TOKEN", hide_env_values = true)]
    pub control_plane_token: Option<Token>,

    /// Seconds one control-plane request may take (a wake may be held while a compute starts;
    /// a timed-out wake is retried).
    #[arg(
        long,
        env = "GATEWAY_CONTROL_PLANE_TIMEOUT_SECONDS",
        default_value_t = 5
    )]
    pub control_plane_timeout_seconds: u64,

    /// Milliseconds between activity reports to the control plane (open sessions and queries
    /// per endpoint, for scale to zero; their replies carry role changes, applied at once); an
    /// endpoint that becomes busy is also reported at once. 0 turns reporting off (a changed
    /// password then takes effect when cached secrets expire); otherwise 50 to 60000. Only with
    /// --control-plane-url.
    #[arg(long, env = "GATEWAY_ACTIVITY_INTERVAL_MS", default_value_t = 1000)]
    pub activity_interval_ms: u64,

    /// Where the other gateway replicas behind the same load balancer reach this one's admin
    /// listener (`host:port`, e.g. the pod's IP and the admin port; the admin listener must
    /// listen there too). Set on every replica: it is reported to the control plane, which
    /// tells each gateway where the others are, and a CancelRequest that reaches a replica
    /// other than the session's is forwarded there (`POST /internal/cancel`, signed with a key
    /// derived from the control-plane token, so the replicas must share it). `auto`: the
    /// address this host reaches the control plane from, with the admin listener's port (a
    /// Railway replica's private address, a pod's IP). Unset: a single replica. Needs
    /// --control-plane-url, --control-plane-token and activity reports.
    #[arg(long, env = "GATEWAY_PEER_ADDR")]
    pub peer_addr: Option<String>,

    /// CancelRequests per second from one client address (an IPv6 client's /64), with a burst
    /// of one second's worth; more are dropped unanswered (a forwarded one counts again on the
    /// replica it is forwarded to). 0: no limit.
    #[arg(long, env = "GATEWAY_MAX_CANCEL_RPS_PER_IP", default_value_t = 100)]
    pub max_cancel_rps_per_ip: u32,

    /// Seconds an endpoint's JWKS rules (and its JWT roles' logins) from the control plane are
    /// cached: a deleted rule stops working within this time.
    #[arg(long, env = "GATEWAY_JWT_RULES_TTL_SECONDS", default_value_t = 30)]
    pub jwt_rules_ttl_seconds: u64,

    /// Accept `http://` JWKS URLs whose host is a loopback address (127.0.0.0/8, ::1,
    /// localhost). For tests only: JWKS URLs must be https otherwise.
    #[arg(long, env = "GATEWAY_JWKS_ALLOW_HTTP_LOOPBACK")]
    pub jwks_allow_http_loopback: bool,

    /// Let JWKS fetches reach private, link-local and loopback addresses (an identity provider
    /// on your own network). Off, they reach public addresses only: a rule's URL is the
    /// tenant's to choose.
    #[arg(long, env = "GATEWAY_JWKS_ALLOW_PRIVATE_ADDRESSES")]
    pub jwks_allow_private_addresses: bool,

    /// Seconds a route from the control plane is kept after its last use.
    #[arg(long, env = "GATEWAY_ROUTE_CACHE_IDLE_SECONDS", default_value_t = 240)]
    pub route_cache_idle_seconds: u64,

    /// Seconds after which a used route is refreshed in the background (the cached address is
    /// served meanwhile, and kept if the refresh fails).
    #[arg(long, env = "GATEWAY_ROUTE_REFRESH_SECONDS", default_value_t = 30)]
    pub route_refresh_seconds: u64,

    /// Milliseconds "no such endpoint" (and "no such role") is remembered.
    #[arg(long, env = "GATEWAY_NEGATIVE_CACHE_TTL_MS", default_value_t = 3000)]
    pub negative_cache_ttl_ms: u64,

    /// Seconds after which a cached role secret is asked for again, in the background, while
    /// the cached one is served; a failed refresh keeps it, so warm roles keep logging in while
    /// the control plane is down (role changes still arrive at once through activity replies).
    #[arg(long, env = "GATEWAY_ROLE_SECRET_TTL_SECONDS", default_value_t = 240)]
    pub role_secret_ttl_seconds: u64,

    /// Tries of one wake before the endpoint is reported unavailable.
    #[arg(long, env = "GATEWAY_WAKE_MAX_ATTEMPTS", default_value_t = RetryConfig::WAKE.max_attempts)]
    pub wake_max_attempts: u32,

    /// Milliseconds before the first wake retry; later retries wait `factor` times longer each.
    #[arg(long, env = "GATEWAY_WAKE_RETRY_BASE_MS", default_value_t = 100)]
    pub wake_retry_base_ms: u64,

    /// The longest a wake is retried when the control plane says the endpoint's compute
    /// resumes in seconds (a Railway endpoint: the wake service names its budget, this caps it).
    #[arg(long, env = "GATEWAY_WAKE_BUDGET_MAX_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub wake_budget_max_seconds: u64,

    /// Growth of the wake retry delay per retry.
    #[arg(long, env = "GATEWAY_WAKE_RETRY_FACTOR", default_value_t = RetryConfig::WAKE.factor)]
    pub wake_retry_factor: f64,

    /// Endpoint for connection strings whose host is `localhost` or an IP address.
    #[arg(long, env = "GATEWAY_DEFAULT_ENDPOINT", default_value = "db")]
    pub default_endpoint: String,

    /// Largest accepted request body, in bytes (larger gets 413).
    #[arg(long, env = "GATEWAY_MAX_REQUEST_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_request_bytes: usize,

    /// Largest response body, in bytes (larger gets 507).
    #[arg(long, env = "GATEWAY_MAX_RESPONSE_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_response_bytes: usize,

    /// The most backend connections (active and idle) the `/sql` pool holds open to one
    /// endpoint, whatever its size: a control plane may set a lower cap per endpoint that
    /// follows its compute size (the wake service sends 0.9 × Postgres' max_connections − 5).
    #[arg(
        long,
        env = "GATEWAY_POOL_MAX_CONNS_PER_ENDPOINT",
        default_value_t = 1000
    )]
    pub pool_max_conns_per_endpoint: usize,

    /// Idle pooled connections kept per endpoint; those beyond it close after a second unused
    /// (0: none kept idle unless a request waits).
    #[arg(long, env = "GATEWAY_POOL_MAX_IDLE_PER_ENDPOINT", default_value_t = 20)]
    pub pool_max_idle_per_endpoint: usize,

    /// Idle pooled connections kept in total.
    #[arg(long, env = "GATEWAY_POOL_MAX_IDLE_TOTAL", default_value_t = 2000)]
    pub pool_max_idle_total: usize,

    /// Seconds an idle pooled connection is kept.
    #[arg(long, env = "GATEWAY_POOL_IDLE_TIMEOUT_SECONDS", default_value_t = 300)]
    pub pool_idle_timeout_seconds: u64,

    /// Seconds a request waits for a free connection slot before failing with 503.
    #[arg(
        long,
        env = "GATEWAY_POOL_ACQUIRE_TIMEOUT_SECONDS",
        default_value_t = 5
    )]
    pub pool_acquire_timeout_seconds: u64,

    /// Seconds to connect and authenticate to a backend.
    #[arg(long, env = "GATEWAY_CONNECT_TIMEOUT_SECONDS", default_value_t = 10)]
    pub connect_timeout_seconds: u64,

    /// Seconds a password Postgres accepted may be trusted to reuse pooled connections.
    #[arg(
        long,
        env = "GATEWAY_PASSWORD_CACHE_TTL_SECONDS",
        default_value_t = 300
    )]
    pub password_cache_ttl_seconds: u64,

    /// Most SCRAM iterations (PBKDF2 rounds) a role secret from the control plane, or a
    /// backend's SCRAM challenge, may ask the gateway to hash: above it, the login fails at
    /// once (a role secret above it cannot log in). At least 4096, Postgres's default.
    #[arg(
        long,
        env = "GATEWAY_MAX_SCRAM_ITERATIONS",
        default_value_t = HashingLimits::DEFAULT.max_scram_iterations
    )]
    pub max_scram_iterations: u32,

    /// Password checks that may wait for a hashing thread (one hashes per core); more are
    /// refused at once (HTTP 429, or FATAL 53300). Cached matches never wait.
    #[arg(
        long,
        env = "GATEWAY_MAX_PASSWORD_HASH_QUEUE",
        default_value_t = HashingLimits::DEFAULT.max_queue
    )]
    pub max_password_hash_queue: usize,

    /// TLS certificate chain (PEM) for https, wss and Postgres TLS; needs --tls-key. Reloaded
    /// on SIGHUP.
    #[arg(long, env = "GATEWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) matching --tls-cert.
    #[arg(long, env = "GATEWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Domain under which a Host header or TLS SNI name `<endpoint>.<domain>` picks the
    /// endpoint; repeat or separate with commas. Without it, any dotted name's first label does.
    #[arg(long = "domain", env = "GATEWAY_DOMAINS", value_delimiter = ',')]
    pub domains: Vec<String>,

    /// Seconds from a client's first byte to its session being ready (TLS, startup,
    /// authentication, backend connect); also the HTTP request-header read timeout.
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT_SECONDS", default_value_t = 15)]
    pub handshake_timeout_seconds: u64,

    /// Seconds a WebSocket or TCP session may pass no traffic before it is closed (0: never).
    #[arg(
        long,
        env = "GATEWAY_SESSION_IDLE_TIMEOUT_SECONDS",
        default_value_t = 3600
    )]
    pub session_idle_timeout_seconds: u64,

    /// Largest message a session client may send, and largest WebSocket message, in bytes.
    #[arg(
        long,
        env = "GATEWAY_MAX_SESSION_MESSAGE_BYTES",
        default_value_t = 64 * 1024 * 1024
    )]
    pub max_session_message_bytes: usize,

    /// Client connections open at once, all protocols together (a WebSocket session counts
    /// until it ends); more are refused on accept (HTTP 429, or FATAL 53300 for Postgres).
    #[arg(long, env = "GATEWAY_MAX_CLIENT_CONNECTIONS", default_value_t = 10_000)]
    pub max_client_connections: usize,

    /// Client connections open at once from one IP address; more are refused like those over
    /// --max-client-connections.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_IP", default_value_t = 1_000)]
    pub max_connections_per_ip: usize,

    /// Seconds an HTTP connection (HTTP/2, or HTTP/1.1 keep-alive) may have no request in
    /// flight before it is closed (GOAWAY for HTTP/2). An HTTP/1.1 connection must also send
    /// each request head within --handshake-timeout-seconds.
    #[arg(long, env = "GATEWAY_HTTP_IDLE_TIMEOUT_SECONDS", default_value_t = 60)]
    pub http_idle_timeout_seconds: u64,

    /// Requests in flight at once on one HTTP/2 connection.
    #[arg(
        long,
        env = "GATEWAY_HTTP2_MAX_CONCURRENT_STREAMS",
        default_value_t = 100
    )]
    pub http2_max_concurrent_streams: u32,

    /// Seconds a `/sql` request body may take to arrive, from the end of its headers (slower
    /// gets 408).
    #[arg(long, env = "GATEWAY_BODY_READ_TIMEOUT_SECONDS", default_value_t = 30)]
    pub body_read_timeout_seconds: u64,

    /// Most rows one `/sql` response may hold (more gets 507). Each row also costs a fixed
    /// overhead against --max-response-bytes, so rows with no or tiny columns cannot grow
    /// memory beyond it either.
    #[arg(long, env = "GATEWAY_MAX_RESPONSE_ROWS", default_value_t = 1_000_000)]
    pub max_response_rows: usize,

    /// Authenticated `/sql` requests and sessions in flight at once on one endpoint (with its
    /// -pooler); more get HTTP 429 or FATAL 53300.
    #[arg(
        long,
        env = "GATEWAY_MAX_ENDPOINT_CONNECTIONS",
        default_value_t = 1_000
    )]
    pub max_endpoint_connections: usize,

    /// New authenticated `/sql` requests and sessions per second on one endpoint (with its
    /// -pooler), with a burst of one second's worth; more get HTTP 429 or FATAL 53300. 0: no
    /// rate limit.
    #[arg(long, env = "GATEWAY_MAX_ENDPOINT_RPS", default_value_t = 5_000)]
    pub max_endpoint_rps: u32,

    /// Bytes that WebSocket clients still in their handshake may make the gateway hold, all
    /// together, beyond 64 KiB each (the driver may send its first query, of any size, with
    /// its startup and password); a client that needs more is refused (FATAL 53300).
    #[arg(
        long,
        env = "GATEWAY_MAX_HANDSHAKE_BYTES",
        default_value_t = 256 * 1024 * 1024
    )]
    pub max_handshake_bytes: usize,

    /// Refuse plaintext: `/sql` over http://, WebSocket upgrades over ws:// and Postgres
    /// startups without TLS get a clear error. Needs --tls-cert and --tls-key.
    #[arg(long, env = "GATEWAY_REQUIRE_TLS")]
    pub require_tls: bool,

    /// Seconds SIGTERM waits for in-flight requests before closing them.
    #[arg(long, env = "GATEWAY_SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 30)]
    pub shutdown_timeout_seconds: u64,

    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub routes: Vec<Route>,
    /// The control plane, when endpoints are not all static.
    pub control_plane: Option<ControlPlaneConfig>,
    pub route_cache: RouteCacheConfig,
    /// The cache of JWKS rules, and what JWKS URLs may be.
    pub jwt_rules: JwtRulesConfig,
    /// JWT validation and JWKS fetching: Neon's numbers, `--jwks-allow-http-loopback` and
    /// `--jwks-allow-private-addresses`.
    pub jwt: JwtConfig,
    /// How often activity is reported to the control plane; `None`: never.
    pub activity_interval: Option<Duration>,
    pub default_endpoint: EndpointId,
    pub pool: PoolConfig,
    pub sessions: SessionConfig,
    pub tls: Option<TlsFiles>,
    pub http: HttpConfig,
    pub clients: ClientLimits,
    pub endpoint_limits: EndpointLimitsConfig,
    /// The cancel rate limit, and where other gateway replicas forward cancel requests to.
    pub cancels: CancelConfig,
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid default endpoint id '{0}': use letters, digits and '-'")]
    DefaultEndpoint(String),
    #[error("endpoint '{0}' has more than one route")]
    DuplicateRoute(String),
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("the public and admin listeners must use different addresses")]
    SameListeners,
    #[error("invalid domain '{0}': use a DNS name such as pg.example.com")]
    Domain(String),
    #[error("invalid control-plane URL '{0}': {1}")]
    ControlPlaneUrl(String, &'static str),
    #[error("wake-retry-factor must be a number of at least 1")]
    RetryFactor,
    #[error(
        "activity-interval-ms must be 0 (off) or between {} and {}",
        REPORT_INTERVAL_MS.start(),
        REPORT_INTERVAL_MS.end()
    )]
    ActivityInterval,
    #[error("--require-tls needs a certificate: set --tls-cert and --tls-key")]
    RequireTlsWithoutCertificate,
    #[error("max-scram-iterations must be at least 4096 (Postgres's default)")]
    ScramIterations,
    #[error("invalid peer-addr '{0}': use host:port, the address other gateways reach this one's admin listener at")]
    PeerAddr(String),
    #[error("--peer-addr needs {0}")]
    PeerAddrNeeds(&'static str),
    #[error("the admin listener ({0}) takes loopback connections only: other replicas cannot reach it at --peer-addr {1}; listen on an address they reach (e.g. --admin-listen 0.0.0.0:4480)")]
    PeerAddrUnreachable(SocketAddr, String),
    #[error(transparent)]
    Tls(#[from] crate::frontend::tls::TlsError),
}

impl Args {
    /// Checks every flag and builds each layer's configuration. The checks run in a fixed
    /// order, so a command line with several mistakes always names the same one first.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let default_endpoint = EndpointId::parse(&self.default_endpoint)
            .ok_or_else(|| ConfigError::DefaultEndpoint(self.default_endpoint.clone()))?;
        let mut seen = std::collections::HashSet::new();
        for route in &self.routes {
            if !seen.insert(route.endpoint.clone()) {
                return Err(ConfigError::DuplicateRoute(route.endpoint.to_string()));
            }
        }
        self.check_nonzero()?;
        // Two listeners on port 0 get different ports.
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return Err(ConfigError::SameListeners);
        }
        let domains = self.domains()?;
        if !(self.wake_retry_factor.is_finite() && self.wake_retry_factor >= 1.0) {
            return Err(ConfigError::RetryFactor);
        }
        let activity_interval = activity_interval(self.activity_interval_ms)?;
        let pool = self.pool()?;
        let control_plane = self.control_plane()?;
        let cancels = self.cancels(control_plane.as_ref(), activity_interval)?;
        let route_cache = self.route_cache();
        let sessions = self.sessions(domains);
        let http = self.http();
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => {
                // Fail at startup (and in --check-config), not at the first handshake.
                crate::frontend::tls::Tls::load(&cert, &key)?;
                Some(TlsFiles { cert, key })
            }
            _ => None,
        };
        if self.require_tls && tls.is_none() {
            return Err(ConfigError::RequireTlsWithoutCertificate);
        }
        Ok(Config {
            listen: self.listen,
            admin_listen: self.admin_listen,
            routes: self.routes,
            control_plane,
            route_cache,
            jwt_rules: JwtRulesConfig {
                ttl: Duration::from_secs(self.jwt_rules_ttl_seconds),
                negative_ttl: Duration::from_millis(self.negative_cache_ttl_ms),
                allow_http_loopback: self.jwks_allow_http_loopback,
                ..JwtRulesConfig::default()
            },
            jwt: JwtConfig {
                allow_http_loopback: self.jwks_allow_http_loopback,
                allow_private_addresses: self.jwks_allow_private_addresses,
                ..JwtConfig::default()
            },
            activity_interval,
            default_endpoint,
            pool,
            sessions,
            tls,
            http,
            clients: ClientLimits {
                max_connections: self.max_client_connections,
                max_connections_per_ip: self.max_connections_per_ip,
                max_handshake_bytes: self.max_handshake_bytes,
                require_tls: self.require_tls,
            },
            endpoint_limits: EndpointLimitsConfig {
                max_connections: self.max_endpoint_connections,
                max_rps: (self.max_endpoint_rps > 0).then_some(self.max_endpoint_rps),
            },
            cancels,
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_seconds),
        })
    }

    /// The limits and timeouts that have no meaning at zero, in the order they are reported.
    fn check_nonzero(&self) -> Result<(), ConfigError> {
        for (value, name) in [
            (self.max_request_bytes, "max-request-bytes"),
            (self.max_response_bytes, "max-response-bytes"),
            (
                self.pool_max_conns_per_endpoint,
                "pool-max-conns-per-endpoint",
            ),
            (
                self.pool_idle_timeout_seconds as usize,
                "pool-idle-timeout-seconds",
            ),
            (
                self.connect_timeout_seconds as usize,
                "connect-timeout-seconds",
            ),
            (
                self.handshake_timeout_seconds as usize,
                "handshake-timeout-seconds",
            ),
            (self.max_session_message_bytes, "max-session-message-bytes"),
            (self.max_client_connections, "max-client-connections"),
            (self.max_connections_per_ip, "max-connections-per-ip"),
            (
                self.http_idle_timeout_seconds as usize,
                "http-idle-timeout-seconds",
            ),
            (
                self.http2_max_concurrent_streams as usize,
                "http2-max-concurrent-streams",
            ),
            (
                self.body_read_timeout_seconds as usize,
                "body-read-timeout-seconds",
            ),
            (self.max_response_rows, "max-response-rows"),
            (self.max_endpoint_connections, "max-endpoint-connections"),
            (
                self.control_plane_timeout_seconds as usize,
                "control-plane-timeout-seconds",
            ),
            (
                self.route_cache_idle_seconds as usize,
                "route-cache-idle-seconds",
            ),
            (self.wake_max_attempts as usize, "wake-max-attempts"),
            (self.max_password_hash_queue, "max-password-hash-queue"),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        Ok(())
    }

    /// `--domain`s normalised (trimmed, no outer dots, lower case), empty ones dropped.
    fn domains(&self) -> Result<Vec<String>, ConfigError> {
        let domains = self
            .domains
            .iter()
            .map(|d| d.trim().trim_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect::<Vec<_>>();
        if let Some(bad) = domains.iter().find(|d| {
            !d.contains('.')
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }) {
            return Err(ConfigError::Domain(bad.clone()));
        }
        Ok(domains)
    }

    /// The front end: sessions (Postgres TCP and WebSocket).
    fn sessions(&self, domains: Vec<String>) -> SessionConfig {
        SessionConfig {
            handshake_timeout: Duration::from_secs(self.handshake_timeout_seconds),
            idle_timeout: (self.session_idle_timeout_seconds > 0)
                .then(|| Duration::from_secs(self.session_idle_timeout_seconds)),
            max_message_bytes: self.max_session_message_bytes,
            domains,
        }
    }

    /// The front end: HTTP connections and `/sql` requests.
    fn http(&self) -> HttpConfig {
        HttpConfig {
            idle_timeout: Duration::from_secs(self.http_idle_timeout_seconds),
            max_concurrent_streams: self.http2_max_concurrent_streams,
            body_read_timeout: Duration::from_secs(self.body_read_timeout_seconds),
            max_request_bytes: self.max_request_bytes,
            max_response_bytes: self.max_response_bytes,
            max_response_rows: self.max_response_rows,
        }
    }

    /// The proxy's pool of backend connections, with auth's password-hashing limits.
    fn pool(&self) -> Result<PoolConfig, ConfigError> {
        Ok(PoolConfig {
            max_conns_per_endpoint: self.pool_max_conns_per_endpoint,
            max_idle_per_endpoint: self.pool_max_idle_per_endpoint,
            max_idle_total: self.pool_max_idle_total,
            idle_timeout: Duration::from_secs(self.pool_idle_timeout_seconds),
            acquire_timeout: Duration::from_secs(self.pool_acquire_timeout_seconds),
            connect_timeout: Duration::from_secs(self.connect_timeout_seconds),
            password_ttl: Duration::from_secs(self.password_cache_ttl_seconds),
            // A single row may not exceed the response limit; leave room for framing.
            max_message_bytes: self.max_response_bytes.saturating_add(64 * 1024),
            hashing: self.hashing()?,
        })
    }

    /// Auth: how much password hashing a role secret may ask for, and how much may wait.
    fn hashing(&self) -> Result<HashingLimits, ConfigError> {
        if self.max_scram_iterations < scram::MOCK_ITERATIONS {
            return Err(ConfigError::ScramIterations);
        }
        Ok(HashingLimits {
            max_scram_iterations: self.max_scram_iterations,
            max_queue: self.max_password_hash_queue,
        })
    }

    /// The control plane's proxy API, when one is configured.
    fn control_plane(&self) -> Result<Option<ControlPlaneConfig>, ConfigError> {
        let Some(url) = &self.control_plane_url else {
            return Ok(None);
        };
        Ok(Some(ControlPlaneConfig {
            url: control_plane_url(url)?,
            token: self.control_plane_token.clone(),
            request_timeout: Duration::from_secs(self.control_plane_timeout_seconds),
        }))
    }

    /// CancelRequests: the rate per client address, and `--peer-addr` (checked: `host:port`,
    /// with a control plane, its token and activity reports, which carry it to the others).
    fn cancels(
        &self,
        control_plane: Option<&ControlPlaneConfig>,
        activity_interval: Option<Duration>,
    ) -> Result<CancelConfig, ConfigError> {
        let peer_address = match self.peer_addr.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(address) => {
                // `auto` is resolved at start (`app::serve`), and checked then.
                let auto = address == AUTO_PEER_ADDRESS;
                if !auto && !valid_peer_address(address) {
                    return Err(ConfigError::PeerAddr(address.to_owned()));
                }
                if !auto && self.admin_listen.ip().is_loopback() && !loopback_host(address) {
                    let address = address.to_owned();
                    return Err(ConfigError::PeerAddrUnreachable(self.admin_listen, address));
                }
                match control_plane {
                    None => return Err(ConfigError::PeerAddrNeeds("--control-plane-url")),
                    Some(cp) if cp.token.is_none() => {
                        return Err(ConfigError::PeerAddrNeeds("--control-plane-token"))
                    }
                    Some(_) if activity_interval.is_none() => {
                        return Err(ConfigError::PeerAddrNeeds(
                            "activity reports (--activity-interval-ms above 0)",
                        ))
                    }
                    Some(_) => Some(address.to_owned()),
                }
            }
        };
        Ok(CancelConfig {
            max_rps_per_ip: (self.max_cancel_rps_per_ip > 0).then_some(self.max_cancel_rps_per_ip),
            peer_address,
        })
    }

    /// The control plane's route and role-secret caches, and how waking is retried.
    fn route_cache(&self) -> RouteCacheConfig {
        RouteCacheConfig {
            idle_ttl: Duration::from_secs(self.route_cache_idle_seconds),
            refresh_after: Duration::from_secs(self.route_refresh_seconds),
            negative_ttl: Duration::from_millis(self.negative_cache_ttl_ms),
            secret_ttl: Duration::from_secs(self.role_secret_ttl_seconds),
            wake_retry: RetryConfig {
                max_attempts: self.wake_max_attempts,
                base_delay: Duration::from_millis(self.wake_retry_base_ms),
                factor: self.wake_retry_factor,
            },
            wake_budget_max: Duration::from_secs(self.wake_budget_max_seconds),
            ..RouteCacheConfig::default()
        }
    }
}

/// `--activity-interval-ms`: 0 turns reporting off; otherwise an interval the wake service
/// accepts ([`REPORT_INTERVAL_MS`], part of the wire contract).
fn activity_interval(ms: u64) -> Result<Option<Duration>, ConfigError> {
    match ms {
        0 => Ok(None),
        ms if REPORT_INTERVAL_MS.contains(&ms) => Ok(Some(Duration::from_millis(ms))),
        _ => Err(ConfigError::ActivityInterval),
    }
}

/// Whether a `host:port` names this machine's loopback (`localhost`, 127.0.0.0/8, `[::1]`).
fn loopback_host(address: &str) -> bool {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The proxy API base URL, checked and without a trailing `/` (paths are appended to it).
fn control_plane_url(url: &str) -> Result<String, ConfigError> {
    let bad = |why| ConfigError::ControlPlaneUrl(url.to_owned(), why);
    let parsed = url::Url::parse(url.trim()).map_err(|_| bad("not a URL"))?;
    if parsed.scheme() != "http" {
        return Err(bad(
            "use http:// (the control plane is reached over a private network or loopback)",
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("no query or fragment, please"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad(
            "put the token in GATEWAY_CONTROL_PLANE_TOKEN, not in the URL",
        ));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

impl Config {
    /// A configuration for tests: loopback listeners on port 0 and the given routes.
    pub fn for_tests(routes: Vec<Route>) -> Config {
        Config::for_tests_with(&[], routes)
    }

    /// A configuration for tests whose endpoints come from the control plane at `url` (the
    /// proxy API base, e.g. `http://127.0.0.1:4400/proxy/api/v1`), with no static routes.
    /// Tune the caches through `config.route_cache` (e.g. `negative_ttl`) before serving.
    pub fn for_tests_with_control_plane(url: &str, token: Option<&str>) -> Config {
        let mut args = vec!["--control-plane-url", url];
        if let Some(token) = token {
            args.extend(["--control-plane-token", token]);
        }
        Config::for_tests_with(&args, Vec::new())
    }

    fn for_tests_with(extra: &[&str], routes: Vec<Route>) -> Config {
        let mut argv = vec![
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:1",
        ];
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
            .validate()
            .map(|mut config| {
                config.routes = routes;
                config
            })
            .expect("the test configuration is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["gateway"];
        argv.extend_from_slice(args);
        Args::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let config = parse(&[]).expect("defaults are valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:4444");
        assert_eq!(config.admin_listen.to_string(), "127.0.0.1:4480");
        assert_eq!(config.default_endpoint.as_str(), "db");
        assert_eq!(config.http.max_request_bytes, 10 * 1024 * 1024);
        assert_eq!(config.pool.max_conns_per_endpoint, 1000);
        assert!(config.routes.is_empty());
        assert!(config.control_plane.is_none());
        assert_eq!(config.route_cache.wake_retry, RetryConfig::WAKE);
        assert_eq!(config.route_cache.idle_ttl, Duration::from_secs(240));
        assert_eq!(config.route_cache.negative_ttl, Duration::from_secs(3));
        assert_eq!(config.activity_interval, Some(Duration::from_secs(1)));
    }

    #[test]
    fn activity_interval() {
        let interval =
            |ms: &str| parse(&["--activity-interval-ms", ms]).map(|c| c.activity_interval);
        assert_eq!(interval("0"), Ok(None));
        assert_eq!(interval("50"), Ok(Some(Duration::from_millis(50))));
        assert_eq!(interval("60000"), Ok(Some(Duration::from_secs(60))));
        for bad in ["1", "49", "60001"] {
            assert!(interval(bad)
                .expect_err(bad)
                .contains("activity-interval-ms"));
        }
        // The range is wake-api's (the wire contract); the text stays the same.
        assert_eq!(
            interval("49").expect_err("below the range"),
            "activity-interval-ms must be 0 (off) or between 50 and 60000"
        );
    }

    #[test]
    fn control_plane() {
        let config = parse(&[
            "--control-plane-url",
            "http://127.0.0.1:4400/proxy/api/v1/",
            "--control-plane-token",
            "s3cret",
            "--negative-cache-ttl-ms",
            "250",
            "--wake-max-attempts",
            "3",
        ])
        .expect("valid");
        let control_plane = config.control_plane.as_ref().expect("configured");
        assert_eq!(control_plane.url, "http://127.0.0.1:4400/proxy/api/v1");
        assert_eq!(
            control_plane.token.as_ref().map(Token::expose),
            Some("s3cret")
        );
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "--check-config prints the config"
        );
        assert_eq!(config.route_cache.negative_ttl, Duration::from_millis(250));
        assert_eq!(config.route_cache.wake_retry.max_attempts, 3);
        for bad in [
            "not a url",
            "https://cp.example.com/proxy/api/v1",
            "http://",
            "http://user:pw@cp/proxy/api/v1",
            "http://cp/proxy/api/v1?x=1",
        ] {
            assert!(
                parse(&["--control-plane-url", bad])
                    .expect_err(bad)
                    .contains("control-plane URL"),
                "{bad}"
            );
        }
        assert!(parse(&["--wake-retry-factor", "0.5"]).is_err());
        assert!(parse(&["--wake-max-attempts", "0"]).is_err());
        let config = Config::for_tests_with_control_plane("http://127.0.0.1:1/p", None);
        assert!(config.routes.is_empty());
        assert_eq!(
            config.control_plane.map(|c| c.url),
            Some("http://127.0.0.1:1/p".to_owned())
        );
    }

    #[test]
    fn routes_and_errors() {
        let config = parse(&["--route", "db=127.0.0.1:5432", "--route", "b=h:1"]).expect("valid");
        assert_eq!(config.routes.len(), 2);
        assert!(parse(&["--route", "db=h:1", "--route", "db=h:2"])
            .expect_err("duplicate")
            .contains("more than one route"));
        assert!(parse(&["--route", "nonsense"]).is_err());
        assert!(parse(&["--default-endpoint", "bad_id"]).is_err());
        assert!(parse(&["--max-request-bytes", "0"]).is_err());
        assert!(parse(&["--admin-listen", "127.0.0.1:4444"]).is_err());
        assert!(
            parse(&["--tls-cert", "/nonexistent.crt"]).is_err(),
            "needs a key"
        );
        assert!(parse(&[
            "--tls-cert",
            "/nonexistent.crt",
            "--tls-key",
            "/nonexistent.key"
        ])
        .expect_err("unreadable")
        .contains("/nonexistent.crt"));
        assert!(parse(&["--domain", "localhost"]).is_err());
        let config = parse(&[
            "--domain",
            "PG.example.com.",
            "--session-idle-timeout-seconds",
            "0",
        ])
        .expect("valid");
        assert_eq!(config.sessions.domains, vec!["pg.example.com".to_owned()]);
        assert_eq!(config.sessions.idle_timeout, None);
    }

    #[test]
    fn hashing_limits() {
        let config = parse(&[]).expect("defaults are valid");
        assert_eq!(config.pool.hashing, HashingLimits::DEFAULT);
        let config = parse(&[
            "--max-scram-iterations",
            "4096",
            "--max-password-hash-queue",
            "1",
        ])
        .expect("valid");
        assert_eq!(
            config.pool.hashing,
            HashingLimits {
                max_scram_iterations: 4096,
                max_queue: 1
            }
        );
        assert!(parse(&["--max-scram-iterations", "4095"])
            .expect_err("below Postgres's default")
            .contains("at least 4096"));
        assert!(parse(&["--max-password-hash-queue", "0"])
            .expect_err("no queue")
            .contains("greater than zero"));
    }

    #[test]
    fn limits() {
        let config = parse(&[]).expect("defaults are valid");
        assert_eq!(config.clients.max_connections_per_ip, 1_000);
        assert_eq!(config.http.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.http.max_concurrent_streams, 100);
        assert_eq!(config.endpoint_limits.max_rps, Some(5_000));
        assert!(!config.clients.require_tls);
        let config = parse(&["--max-endpoint-rps", "0"]).expect("valid");
        assert_eq!(config.endpoint_limits.max_rps, None);
        for zero in [
            "--max-connections-per-ip",
            "--http-idle-timeout-seconds",
            "--body-read-timeout-seconds",
            "--max-response-rows",
            "--max-endpoint-connections",
        ] {
            assert!(parse(&[zero, "0"])
                .expect_err(zero)
                .contains("greater than zero"));
        }
        assert!(parse(&["--require-tls"])
            .expect_err("no certificate")
            .contains("--tls-cert"));
    }

    #[test]
    fn jwt() {
        let config = parse(&[]).expect("defaults are valid");
        assert_eq!(config.jwt, JwtConfig::default());
        assert!(!config.jwt.allow_http_loopback);
        assert!(!config.jwt.allow_private_addresses);
        let config = parse(&["--jwks-allow-http-loopback"]).expect("valid");
        assert!(config.jwt.allow_http_loopback);
        let config = parse(&["--jwks-allow-private-addresses"]).expect("valid");
        assert!(config.jwt.allow_private_addresses && !config.jwt.allow_http_loopback);
    }

    #[test]
    fn cancels_and_peers() {
        let config = parse(&[]).expect("defaults are valid");
        assert_eq!(config.cancels.max_rps_per_ip, Some(100));
        assert_eq!(config.cancels.peer_address, None);
        let config = parse(&["--max-cancel-rps-per-ip", "0"]).expect("valid");
        assert_eq!(config.cancels.max_rps_per_ip, None);
        let cp = [
            "--control-plane-url",
            "http://127.0.0.1:4400/proxy/api/v1",
            "--control-plane-token",
            "t",
        ];
        let with = |address: &str, extra: &[&str]| {
            let mut args = cp.to_vec();
            args.extend(["--peer-addr", address]);
            args.extend_from_slice(extra);
            parse(&args).map(|c| c.cancels.peer_address)
        };
        for good in [
            "10.0.0.7:4480",
            "gw-1.gw.default.svc.cluster.local:4480",
            "[fd00::7]:4480",
        ] {
            let reachable = ["--admin-listen", "0.0.0.0:4480"];
            assert_eq!(with(good, &reachable), Ok(Some(good.to_owned())));
            // The default admin listener is loopback only: no other host reaches it there.
            assert!(with(good, &[])
                .expect_err(good)
                .contains("loopback connections only"));
        }
        for local in ["127.0.0.1:4480", "localhost:4480", "[::1]:4480", "auto"] {
            assert_eq!(with(local, &[]), Ok(Some(local.to_owned())), "one host");
        }
        assert_eq!(with("", &[]), Ok(None), "empty: a single replica");
        for bad in [
            "10.0.0.7",
            "10.0.0.7:0",
            "fd00::7:4480",
            "http://h:1",
            "h/x:1",
            ":1",
        ] {
            assert!(
                with(bad, &[]).expect_err(bad).contains("invalid peer-addr"),
                "{bad}"
            );
        }
        assert!(with("127.0.0.1:1", &["--activity-interval-ms", "0"])
            .expect_err("no reports")
            .contains("activity reports"));
        assert!(parse(&["--peer-addr", "127.0.0.1:1"])
            .expect_err("no control plane")
            .contains("--control-plane-url"));
        assert!(parse(&[
            "--control-plane-url",
            "http://127.0.0.1:4400/proxy/api/v1",
            "--peer-addr",
            "127.0.0.1:1"
        ])
        .expect_err("no token")
        .contains("--control-plane-token"));
    }
}
