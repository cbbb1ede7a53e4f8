//! The Neon-compatible proxy API (`/proxy/api/v1/...`): the same message shapes Neon's
//! control plane gives Neon's proxy, so either proxy can use either control plane.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

/// The intervals, in milliseconds, a gateway may report its activity at
/// ([`ActivityReport::interval_ms`]). The wake service answers a report outside this range
/// with 400; a gateway must not be configured outside it (0, reporting off, aside).
pub const REPORT_INTERVAL_MS: RangeInclusive<u64> = 50..=60_000;

/// The most endpoints one [`ActivityReport`] carries in each of its lists (`endpoints` and
/// `cached`): a gateway sends at most this many, and the wake service ignores any beyond.
pub const MAX_REPORTED_ENDPOINTS: usize = 10_000;

/// The longest [`PeerAddress::address`] (`host:port`).
pub const MAX_PEER_ADDRESS: usize = 255;

/// Whether `address` is a peer address a gateway may report: `host:port` with a DNS name, an
/// IPv4 address or a bracketed IPv6 one, a port other than 0, at most [`MAX_PEER_ADDRESS`]
/// characters. The gateway checks its `--peer-addr` with it, the wake service every report.
pub fn valid_peer_address(address: &str) -> bool {
    address.len() <= MAX_PEER_ADDRESS
        && address.rsplit_once(':').is_some_and(|(host, port)| {
            let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
                None => {
                    !host.is_empty()
                        && host
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                }
            };
            host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
        })
}

/// The most peers one [`ActivityReply`] lists (the live gateways that take forwarded cancel
/// requests); a gateway ignores any beyond.
pub const MAX_PEERS: usize = 1024;

/// `GET /proxy/api/v1/wake_compute?endpointish=<id>[-pooler]`: where to connect now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeCompute {
    /// `host:port`.
    pub address: String,
    /// When set, the compute requires TLS with this server name. Always `null` here.
    pub server_name: Option<String>,
    pub aux: MetricsAuxInfo,
    /// Not in Neon's API: the most backend connections a gateway should hold open to this
    /// endpoint's Postgres (its `/sql` pool, direct, not through `-pooler`). It follows the
    /// compute's size (autoscaling). Absent from other control planes: the gateway's own
    /// `--pool-max-conns-per-endpoint` then applies alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_max_conns: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsAuxInfo {
    pub endpoint_id: String,
    pub project_id: String,
    pub branch_id: String,
    pub compute_id: String,
    #[serde(default = "ColdStartInfo::unknown")]
    pub cold_start_info: ColdStartInfo,
}

/// Whether the wake found the compute running (`warm`) or had to start it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColdStartInfo {
    Warm,
    PoolHit,
    PoolMiss,
    #[serde(other)]
    Unknown,
}

impl ColdStartInfo {
    fn unknown() -> Self {
        ColdStartInfo::Unknown
    }
}

/// `POST /proxy/api/v1/activity`: a gateway's report of what its clients are doing, sent
/// every `interval_ms` and at once when an endpoint gets its first open session. Not part of
/// Neon's API (Neon's computes watch themselves); it lets the wake service count sessions that
/// are open but idle, and tells the gateway which of its cached routes went to sleep.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityReport {
    /// How often this gateway reports. An open session holds its endpoint awake for three
    /// intervals after the report, so one lost report never lets it suspend.
    pub interval_ms: u64,
    /// Endpoints with open sessions or queries in flight, or with activity since the last
    /// report. Ids without `-pooler`.
    pub endpoints: Vec<EndpointActivity>,
    /// Endpoints whose routes the gateway holds in its cache: the reply says which of them
    /// are no longer active.
    #[serde(default)]
    pub cached: Vec<String>,
    /// Identifies this gateway process (random, chosen at start), so that the wake service can
    /// tell when every gateway that reports has applied a role change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_id: Option<String>,
    /// The newest role change this gateway has applied (the `role_changes_cursor` of an
    /// earlier reply, once acted on); `None` until it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_changes_applied: Option<i64>,
    /// Traffic this gateway counted and has not had acknowledged yet (metering). Sent again,
    /// with the same id, until a reply's `usage_applied` names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageReport>,
    /// Where the other gateways (replicas behind one load balancer) forward the cancel
    /// requests that reach them for this gateway's sessions, and the tag its cancel keys
    /// carry. Absent: this gateway takes no forwarded cancel requests (a single replica).
    /// Needs `gateway_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerAddress>,
}

/// How the other gateways reach one gateway with forwarded cancel requests
/// ([`ActivityReport::peer`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddress {
    /// `host:port` of the gateway's admin listener as the other gateways reach it (a pod IP,
    /// a private DNS name), 1 to [`MAX_PEER_ADDRESS`] characters. They `POST` a
    /// [`PeerCancel`] to `http://<address>/internal/cancel`.
    pub address: String,
    /// Bits 23 to 30 of the process id of every cancel key (BackendKeyData) this gateway
    /// hands out: a gateway that receives a CancelRequest for a key it does not hold
    /// forwards it only to the peers with that key's tag. Random per process; two gateways
    /// may share one (both are then asked).
    pub cancel_tag: u8,
}

/// The longest [`UsageReport::report_id`].
pub const MAX_USAGE_REPORT_ID: usize = 128;
/// The largest value any counter of a [`UsageReport`] may carry (2^50, about a petabyte of
/// bytes): a report above it is refused as absurd, nothing of it stored.
pub const MAX_USAGE_COUNTER: u64 = 1 << 50;

/// Counts a gateway took since its previous acknowledged report, per endpoint. The wake
/// service applies a report id once: a resent report (its reply was lost, or the wake service
/// restarted in between) is acknowledged again and not counted twice.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// Unique per report (the gateway's id and a sequence number), 1 to
    /// [`MAX_USAGE_REPORT_ID`] characters.
    pub report_id: String,
    /// At most [`MAX_REPORTED_ENDPOINTS`] entries, one per endpoint.
    pub endpoints: Vec<EndpointTraffic>,
}

/// One endpoint's counts in a [`UsageReport`]; direct and `-pooler` traffic are one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointTraffic {
    /// Without `-pooler`.
    pub endpoint_id: String,
    /// Bytes from clients: HTTP request bodies, and what tunnelled sessions sent.
    pub ingress_bytes: u64,
    /// Bytes to clients: HTTP response bodies, and what tunnelled sessions received.
    pub egress_bytes: u64,
    /// HTTP queries (each statement of a batch), and the simple-query and Execute messages
    /// of tunnelled sessions.
    pub queries: u64,
    /// WebSocket and TCP sessions that reached their backend.
    pub sessions: u64,
    /// Connections the gateway opened to the endpoint's Postgres or PgBouncer.
    pub connections: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointActivity {
    pub endpoint_id: String,
    /// Open WebSocket and TCP sessions.
    pub sessions: u32,
    /// HTTP queries running now.
    pub in_flight: u32,
    /// Milliseconds since the last query, session or connection ended (0 while some are
    /// open). An age rather than a timestamp, so the clocks of gateway and wake service need
    /// not agree.
    pub idle_ms: u64,
}

/// The reply to an [`ActivityReport`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityReply {
    /// Of the reported and cached endpoints, those not `active` (suspending, suspended,
    /// resuming, failed, or deleted): the gateway drops their cached routes and idle pooled
    /// connections, so the next client wakes them instead of meeting a stopped compute.
    pub inactive: Vec<String>,
    /// Roles whose password changed or that were dropped after the report's
    /// `role_changes_applied`, oldest first. The gateway drops what it holds for each
    /// (cached secret, password proofs, idle pooled connections, on the endpoint and its
    /// `-pooler`) before it reports `role_changes_cursor` as applied. Empty when the report
    /// had no `role_changes_applied` (a gateway's first report): the gateway then drops every
    /// role secret and password proof it holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role_changes: Vec<RoleChange>,
    /// The id of the newest role change the wake service knows (0 for none): report it as
    /// `role_changes_applied` once the changes above are applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_changes_cursor: Option<i64>,
    /// More changes happened than a reply carries: the gateway drops every role secret and
    /// password proof it holds, and the idle pooled connections of every endpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub role_changes_truncated: bool,
    /// The report's [`UsageReport::report_id`], once its counts are stored (now or by an
    /// earlier delivery of the same report): the gateway may forget them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_applied: Option<String>,
    /// Endpoints of the usage report that do not exist (deleted meanwhile): their counts were
    /// not stored; everything else was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage_unknown: Vec<String>,
    /// For each reported or cached endpoint that is active, the pool cap of its current size
    /// (see [`WakeCompute::pool_max_conns`]): a resize reaches every gateway within one report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pool_limits: Vec<PoolLimit>,
    /// Of `inactive`, the endpoints that do not exist (deleted): besides their routes and idle
    /// connections, the gateway drops their cached role secrets, password proofs and JWKS
    /// rules, so an endpoint created again under the same id starts clean.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted: Vec<String>,
    /// The other live gateways that take forwarded cancel requests (those whose reports carry
    /// [`ActivityReport::peer`] and that reported within three of their intervals), at most
    /// [`MAX_PEERS`], never the reporting gateway itself. Empty for a report without
    /// `gateway_id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<GatewayPeer>,
}

/// Another gateway, in an [`ActivityReply`]: where it takes forwarded cancel requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayPeer {
    pub gateway_id: String,
    /// See [`PeerAddress::address`].
    pub address: String,
    /// See [`PeerAddress::cancel_tag`].
    pub cancel_tag: u8,
}

/// `POST http://<peer address>/internal/cancel` (gateway to gateway, not part of Neon's API): a
/// CancelRequest that reached one gateway for a key whose tag names another. Sent with
/// `Authorization: Bearer <key>`, the key derived from the control-plane token the gateways
/// share, and forwarded once: the receiving gateway looks the key up among its own sessions
/// only (the same check as for a CancelRequest of its own), never forwarding it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCancel {
    /// The CancelRequest's process id and secret key, as the client sent them.
    pub process_id: i32,
    pub secret_key: i32,
    /// The address of the client that sent the CancelRequest: the receiving gateway charges
    /// its cancel rate limit per client address too.
    pub client_ip: std::net::IpAddr,
}

/// The answer to a [`PeerCancel`] (status 200; 401 for a wrong key, 429 over the client's cancel
/// rate, 404 from a gateway that takes no forwarded cancel requests).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCancelReply {
    /// A live session of the receiving gateway holds the key; its query was sent a cancel.
    pub cancelled: bool,
}

/// One endpoint's gateway pool cap, in an [`ActivityReply`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolLimit {
    /// Without `-pooler`.
    pub endpoint_id: String,
    pub pool_max_conns: u32,
}

/// One role whose credentials changed (`PATCH` with a new password, or `DELETE`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleChange {
    pub id: i64,
    /// Without `-pooler`: the change applies to both.
    pub endpoint_id: String,
    pub role: String,
}

/// `GET /proxy/api/v1/get_endpoint_access_control?endpointish=<id>&role=<role>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessControl {
    /// The role's `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`; empty when the
    /// role does not exist (the proxy then runs a mock exchange that always fails).
    pub role_secret: String,
    pub project_id: Option<String>,
    pub allowed_ips: Option<Vec<String>>,
    #[serde(default)]
    pub allowed_vpc_endpoint_ids: Option<Vec<String>>,
    #[serde(default)]
    pub block_public_connections: Option<bool>,
    #[serde(default)]
    pub block_vpc_connections: Option<bool>,
}

/// `GET /proxy/api/v1/endpoints/{id}/jwks`: Neon's shape (`jwks`), plus what this product's
/// gateway needs to log in as the rules' roles and to authenticate claims to SQL
/// (`jwt_login`, absent when the endpoint has no rules; Neon's proxy ignores it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub jwks: Vec<JwksSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_login: Option<JwtLogin>,
}

/// One JWKS rule: tokens signed by a key of this set may log in as one of `role_names`.
/// The first five fields are Neon's; the rest are extensions, omitted when unset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwksSettings {
    pub id: String,
    /// Where the key set is fetched; empty when the set is given inline ([`Self::jwks`]).
    pub jwks_url: String,
    pub provider_name: String,
    #[serde(default)]
    pub jwt_audience: Option<String>,
    pub role_names: Vec<String>,
    /// The `iss` a token must carry, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_issuer: Option<String>,
    /// The signature algorithms accepted (JOSE names); empty means [`DEFAULT_JWT_ALGORITHMS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<String>,
    /// An inline key set (`{"keys": [...]}`), for tests and air-gapped setups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
}

/// The algorithms a rule accepts when it names none: all asymmetric, and a key's type must
/// match the token's algorithm, so no key can be used with another family's algorithm.
pub const DEFAULT_JWT_ALGORITHMS: [&str; 3] = ["RS256", "ES256", "EdDSA"];

/// Every algorithm a rule may name.
pub const SUPPORTED_JWT_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// What a gateway needs for an endpoint's JWT logins: the key that authenticates claims to SQL
/// and each JWT role's credentials (the roles have no password anyone else knows).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtLogin {
    pub claims_key: ClaimsKey,
    pub roles: Vec<JwtRoleLogin>,
}

impl std::fmt::Debug for JwtLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let roles: Vec<&str> = self.roles.iter().map(|r| r.name.as_str()).collect();
        f.debug_struct("JwtLogin")
            .field("claims_key", &self.claims_key.kid)
            .field("roles", &roles)
            .finish()
    }
}

/// The HMAC-SHA-256 key of an endpoint's claims envelopes, as installed in `gw_auth.keys`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimsKey {
    pub kid: i32,
    /// 32 bytes, lowercase hex.
    pub key: String,
}

/// A JWT role's login: its SCRAM-SHA-256 verifier and the matching ClientKey.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtRoleLogin {
    pub name: String,
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub secret: String,
    /// The SCRAM ClientKey (standard base64, 32 bytes).
    pub client_key: String,
}

/// Every proxy-API error: `{"error": "...", "status": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlaneError {
    pub error: String,
    #[serde(default)]
    pub status: Option<Status>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub code: String,
    pub message: String,
    pub details: Details,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Details {
    #[serde(default)]
    pub error_info: Option<ErrorInfo>,
    #[serde(default)]
    pub retry_info: Option<RetryInfo>,
    #[serde(default)]
    pub user_facing_message: Option<UserFacingMessage>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub reason: Reason,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryInfo {
    pub retry_delay_ms: u64,
    /// Not in Neon's API: how long, from its first try, a caller should keep retrying a wake
    /// of this endpoint (its compute driver's resume time: seconds on Railway, where Neon's
    /// are milliseconds). Absent: the caller's own retry count applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_budget_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserFacingMessage {
    pub message: String,
}

/// Why a proxy-API call failed (Neon's `error_info.reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    RoleProtected,
    ResourceNotFound,
    ProjectNotFound,
    EndpointNotFound,
    BranchNotFound,
    RateLimitExceeded,
    NonDefaultBranchComputeTimeExceeded,
    ActiveTimeQuotaExceeded,
    ComputeTimeQuotaExceeded,
    WrittenDataQuotaExceeded,
    DataTransferQuotaExceeded,
    LogicalSizeQuotaExceeded,
    ActiveEndpointsLimitExceeded,
    RunningOperations,
    ConcurrencyLimitReached,
    LockAlreadyTaken,
    EndpointIdle,
    ProjectUnderMaintenance,
    #[serde(other)]
    Unknown,
}

impl Reason {
    /// The thing asked for does not exist: cache the answer briefly, do not retry.
    pub fn is_not_found(self) -> bool {
        matches!(
            self,
            Reason::ResourceNotFound
                | Reason::ProjectNotFound
                | Reason::EndpointNotFound
                | Reason::BranchNotFound
        )
    }

    /// Neon's rule: these are transient and worth another try.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Reason::RunningOperations
                | Reason::ConcurrencyLimitReached
                | Reason::LockAlreadyTaken
                | Reason::EndpointIdle
                | Reason::ProjectUnderMaintenance
        )
    }
}

impl ControlPlaneError {
    pub fn new(code: &str, message: impl Into<String>, reason: Reason) -> Self {
        let message = message.into();
        ControlPlaneError {
            error: message.clone(),
            status: Some(Status {
                code: code.to_owned(),
                message: message.clone(),
                details: Details {
                    error_info: Some(ErrorInfo { reason }),
                    retry_info: None,
                    user_facing_message: Some(UserFacingMessage { message }),
                },
            }),
        }
    }

    pub fn with_retry_delay_ms(mut self, delay: u64) -> Self {
        if let Some(status) = &mut self.status {
            status.details.retry_info = Some(RetryInfo {
                retry_delay_ms: delay,
                wake_budget_ms: None,
            });
        }
        self
    }

    /// Sets [`RetryInfo::wake_budget_ms`] (after [`Self::with_retry_delay_ms`]).
    pub fn with_wake_budget_ms(mut self, budget: u64) -> Self {
        if let Some(info) = self
            .status
            .as_mut()
            .and_then(|s| s.details.retry_info.as_mut())
        {
            info.wake_budget_ms = Some(budget);
        }
        self
    }

    pub fn wake_budget_ms(&self) -> Option<u64> {
        self.status
            .as_ref()
            .and_then(|s| s.details.retry_info.as_ref())
            .and_then(|r| r.wake_budget_ms)
    }

    pub fn reason(&self) -> Reason {
        self.status
            .as_ref()
            .and_then(|s| s.details.error_info.as_ref())
            .map_or(Reason::Unknown, |i| i.reason)
    }

    /// Retry when the reason says so or the control plane suggested a delay.
    pub fn is_retryable(&self) -> bool {
        self.reason().is_retryable() || self.retry_delay_ms().is_some()
    }

    pub fn retry_delay_ms(&self) -> Option<u64> {
        self.status
            .as_ref()
            .and_then(|s| s.details.retry_info.as_ref())
            .map(|r| r.retry_delay_ms)
    }

    /// The message meant for the end user, if the control plane gave one.
    pub fn user_facing_message(&self) -> &str {
        self.status
            .as_ref()
            .and_then(|s| s.details.user_facing_message.as_ref())
            .map_or(self.error.as_str(), |m| m.message.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both services read these from here; a change is a change of the wire contract.
    #[test]
    fn activity_limits() {
        assert_eq!(REPORT_INTERVAL_MS, 50..=60_000);
        assert_eq!(MAX_REPORTED_ENDPOINTS, 10_000);
        assert_eq!((MAX_PEER_ADDRESS, MAX_PEERS), (255, 1024));
    }

    #[test]
    fn wake_compute_golden() {
        let json = r#"{"address":"127.0.0.1:5432","server_name":null,"aux":{"endpoint_id":"db","project_id":"db","branch_id":"main","compute_id":"db-1","cold_start_info":"warm"}}"#;
        let parsed: WakeCompute = serde_json::from_str(json).expect("parse");
        assert_eq!(parsed.address, "127.0.0.1:5432");
        assert_eq!(parsed.aux.cold_start_info, ColdStartInfo::Warm);
        assert_eq!(serde_json::to_string(&parsed).expect("serialize"), json);
        let later = json.replace("\"warm\"", "\"pool_hit_v2\"");
        let parsed: WakeCompute = serde_json::from_str(&later).expect("parse");
        assert_eq!(parsed.aux.cold_start_info, ColdStartInfo::Unknown);
    }

    #[test]
    fn activity_golden() {
        let json = r#"{"interval_ms":1000,"endpoints":[{"endpoint_id":"db","sessions":1,"in_flight":0,"idle_ms":0}],"cached":["db","other"]}"#;
        let parsed: ActivityReport = serde_json::from_str(json).expect("parse");
        assert_eq!(parsed.endpoints[0].sessions, 1);
        assert_eq!(serde_json::to_string(&parsed).expect("serialize"), json);
        let without_cached: ActivityReport =
            serde_json::from_str(r#"{"interval_ms":1,"endpoints":[]}"#).expect("parse");
        assert!(without_cached.cached.is_empty());
        let reply = r#"{"inactive":["other"]}"#;
        let parsed: ActivityReply = serde_json::from_str(reply).expect("parse");
        assert_eq!(parsed.inactive, ["other"]);
        assert!(parsed.role_changes.is_empty() && parsed.role_changes_cursor.is_none());
        assert_eq!(serde_json::to_string(&parsed).expect("serialize"), reply);

        let json = r#"{"interval_ms":1000,"endpoints":[],"cached":[],"gateway_id":"g-1","role_changes_applied":7}"#;
        let parsed: ActivityReport = serde_json::from_str(json).expect("parse");
        assert_eq!(parsed.gateway_id.as_deref(), Some("g-1"));
        assert_eq!(parsed.role_changes_applied, Some(7));
        assert_eq!(serde_json::to_string(&parsed).expect("serialize"), json);
        let reply = r#"{"inactive":[],"role_changes":[{"id":8,"endpoint_id":"db","role":"alice"}],"role_changes_cursor":8,"role_changes_truncated":true}"#;
        let parsed: ActivityReply = serde_json::from_str(reply).expect("parse");
        assert_eq!(parsed.role_changes[0].role, "alice");
        assert_eq!(parsed.role_changes_cursor, Some(8));
        assert!(parsed.role_changes_truncated);
        assert_eq!(serde_json::to_string(&parsed).expect("serialize"), reply);
    }

    #[test]
    fn peers_golden() {
        let json = r#"{"interval_ms":1000,"endpoints":[],"cached":[],"gateway_id":"g-1","peer":{"address":"10.0.0.7:4480","cancel_tag":200}}"#;
        let parsed: ActivityReport = serde_json::from_str(json).expect("parse");
        let peer = parsed.peer.as_ref().expect("peer");
        assert_eq!(
            (peer.address.as_str(), peer.cancel_tag),
            ("10.0.0.7:4480", 200)
        );
        assert_eq!(serde_json::to_string(&parsed).expect("serialize"), json);
        // A tag is one byte.
        let wide = json.replace("200", "256");
        assert!(serde_json::from_str::<ActivityReport>(&wide).is_err());

        let reply = r#"{"inactive":["gone","asleep"],"deleted":["gone"],"peers":[{"gateway_id":"g-2","address":"gw-2.internal:4480","cancel_tag":7}]}"#;
        let parsed: ActivityReply = serde_json::from_str(reply).expect("parse");
        assert_eq!(parsed.deleted, ["gone"]);
        assert_eq!(parsed.peers[0].gateway_id, "g-2");
        assert_eq!(parsed.peers[0].cancel_tag, 7);
        assert_eq!(serde_json::to_string(&parsed).expect("serialize"), reply);
        // An older wake service sends neither.
        let old: ActivityReply = serde_json::from_str(r#"{"inactive":[]}"#).expect("parse");
        assert!(old.peers.is_empty() && old.deleted.is_empty());

        let cancel = r#"{"process_id":1677721601,"secret_key":-5,"client_ip":"2001:db8::1"}"#;
        let parsed: PeerCancel = serde_json::from_str(cancel).expect("parse");
        assert_eq!(
            parsed.client_ip,
            "2001:db8::1".parse::<std::net::IpAddr>().expect("ip")
        );
        assert_eq!(serde_json::to_string(&parsed).expect("serialize"), cancel);
        let answer: PeerCancelReply = serde_json::from_str(r#"{"cancelled":true}"#).expect("parse");
        assert!(answer.cancelled);
    }

    #[test]
    fn access_control_golden() {
        let json = r#"{"role_secret":"SCRAM-SHA-256$4096:c2FsdA==$a:b","project_id":"db","allowed_ips":null}"#;
        let parsed: AccessControl = serde_json::from_str(json).expect("parse");
        assert!(parsed.role_secret.starts_with("SCRAM-SHA-256$"));
        assert_eq!(parsed.allowed_ips, None);
    }

    #[test]
    fn jwks_golden() {
        let neon = r#"{"jwks":[{"id":"r1","jwks_url":"https://example.com/.well-known/jwks.json","provider_name":"clerk","jwt_audience":null,"role_names":["authenticated","anonymous"]}]}"#;
        let parsed: Jwks = serde_json::from_str(neon).expect("parse");
        assert_eq!(parsed.jwks[0].role_names, ["authenticated", "anonymous"]);
        assert!(parsed.jwt_login.is_none() && parsed.jwks[0].algorithms.is_empty());
        assert_eq!(serde_json::to_string(&parsed).expect("serialize"), neon);
        let ours = r#"{"jwks":[{"id":"r2","jwks_url":"","provider_name":"test","jwt_audience":"app","role_names":["authenticated"],"jwt_issuer":"https://issuer","algorithms":["ES256"],"jwks":{"keys":[]}}],"jwt_login":{"claims_key":{"kid":1,"key":"00"},"roles":[{"name":"authenticated","secret":"SCRAM-SHA-256$4096:c2FsdA==$a:b","client_key":"AA=="}]}}"#;
        let parsed: Jwks = serde_json::from_str(ours).expect("parse");
        let login = parsed.jwt_login.as_ref().expect("jwt_login");
        assert_eq!(login.claims_key.kid, 1);
        assert!(!format!("{login:?}").contains("SCRAM"));
        assert_eq!(serde_json::to_string(&parsed).expect("serialize"), ours);
    }

    #[test]
    fn error_golden_and_retry_rules() {
        let json = r#"{"error":"endpoint is busy","status":{"code":"UNAVAILABLE","message":"endpoint is busy","details":{"error_info":{"reason":"RUNNING_OPERATIONS"},"retry_info":{"retry_delay_ms":100},"user_facing_message":{"message":"endpoint is busy"}}}}"#;
        let parsed: ControlPlaneError = serde_json::from_str(json).expect("parse");
        assert_eq!(parsed.reason(), Reason::RunningOperations);
        assert!(parsed.is_retryable());
        assert_eq!(parsed.retry_delay_ms(), Some(100));
        let built =
            ControlPlaneError::new("UNAVAILABLE", "endpoint is busy", Reason::RunningOperations)
                .with_retry_delay_ms(100);
        assert_eq!(serde_json::to_string(&built).expect("serialize"), json);

        let not_found =
            ControlPlaneError::new("NOT_FOUND", "no such endpoint", Reason::EndpointNotFound);
        assert!(!not_found.is_retryable());
        assert!(not_found.reason().is_not_found());
        let odd: ControlPlaneError =
            serde_json::from_str(r#"{"error":"x","status":{"code":"C","message":"x","details":{"error_info":{"reason":"NEW_THING"}}}}"#)
                .expect("parse");
        assert_eq!(odd.reason(), Reason::Unknown);
        assert!(!odd.is_retryable());
        let bare: ControlPlaneError = serde_json::from_str(r#"{"error":"x"}"#).expect("parse");
        assert_eq!(bare.user_facing_message(), "x");
    }
}
