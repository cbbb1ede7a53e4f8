//! Metric label values as types: each label of a metric with a fixed set of values is an
//! enum here, so call sites cannot misspell one and every value can be exported from the start.

use super::usage::Direction;
use crate::base::error::ErrorKind;
use crate::base::limits::Limit;

/// A metric label with a fixed set of values.
pub trait Label: Copy + PartialEq + 'static {
    /// Every value, in declaration order.
    const ALL: &'static [Self];
    /// The value as exported.
    fn label(self) -> &'static str;
    /// The position of the value in [`Label::ALL`].
    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|v| *v == self)
            .expect("ALL lists every value")
    }
}

/// Declares a label enum and its [`Label`] impl.
macro_rules! label {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl Label for $name {
            const ALL: &'static [Self] = &[$($name::$variant),+];

            fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

label! {
    /// `call` of the control-plane request metrics.
    Call {
        WakeCompute => "wake_compute",
        AccessControl => "access_control",
        Activity => "activity",
        Jwks => "jwks",
    }
}

label! {
    /// `outcome` of `gateway_secret_verifications_total`: how a password check against a
    /// role secret went.
    SecretOutcome {
        /// Proven by an earlier check of the same password against the same secret.
        Cached => "cached",
        Match => "match",
        Mismatch => "mismatch",
        /// Checked against a mock secret (unknown endpoint or role): always refused.
        Mock => "mock",
        /// A static route: nothing to check against, Postgres judges.
        NoSecret => "no_secret",
    }
}

label! {
    /// `reason` of `gateway_role_invalidations_total`.
    Invalidation {
        /// One role's password changed or it was dropped.
        RoleChange => "role_change",
        /// This gateway's first reply: everything it cached before may be stale.
        FirstReply => "first_reply",
        /// The reply could not list every change: everything, idle connections included.
        Truncated => "truncated",
        /// An endpoint was deleted: every role of it (its routes and idle connections go as
        /// for any endpoint that is not active).
        EndpointDeleted => "endpoint_deleted",
    }
}

label! {
    /// `kind` of the `POST /sql` request metrics.
    RequestKind {
        Single => "single",
        Batch => "batch",
        /// Not (yet) parsed as either: a request refused before its body was read or parsed.
        Invalid => "invalid",
    }
}

label! {
    /// `outcome` of `gateway_pool_checkouts_total`.
    Checkout {
        /// An idle connection was reused.
        Hit => "hit",
        /// A new connection was opened.
        Miss => "miss",
    }
}

label! {
    /// `protocol` of `gateway_client_connections_total`: what an accepted connection's first
    /// bytes were.
    Protocol {
        Http => "http",
        Postgres => "postgres",
        Tls => "tls",
        /// Refused on accept: over the connection cap.
        Rejected => "rejected",
    }
}

label! {
    /// `transport` of the session metrics.
    Transport {
        Tcp => "tcp",
        Tls => "tls",
        Ws => "ws",
        Wss => "wss",
    }
}

/// `outcome` of `gateway_sessions_total`: how a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionOutcome {
    Ok,
    /// The connection carried a CancelRequest, not a session.
    CancelRequest,
    IdleTimeout,
    Shutdown,
    /// Ended by an error of this kind.
    Error(ErrorKind),
}

impl Label for SessionOutcome {
    const ALL: &'static [Self] = &[
        SessionOutcome::Ok,
        SessionOutcome::CancelRequest,
        SessionOutcome::IdleTimeout,
        SessionOutcome::Shutdown,
        SessionOutcome::Error(ErrorKind::User),
        SessionOutcome::Error(ErrorKind::ClientDisconnect),
        SessionOutcome::Error(ErrorKind::RateLimit),
        SessionOutcome::Error(ErrorKind::ControlPlane),
        SessionOutcome::Error(ErrorKind::Compute),
        SessionOutcome::Error(ErrorKind::Postgres),
        SessionOutcome::Error(ErrorKind::Internal),
    ];

    fn label(self) -> &'static str {
        match self {
            SessionOutcome::Ok => "ok",
            SessionOutcome::CancelRequest => "cancel_request",
            SessionOutcome::IdleTimeout => "idle_timeout",
            SessionOutcome::Shutdown => "shutdown",
            SessionOutcome::Error(kind) => kind.label(),
        }
    }
}

label! {
    /// `outcome` of `gateway_cancel_requests_total`: CancelRequests from clients (TCP or
    /// WebSocket) that reached this gateway.
    CancelOutcome {
        /// A live session of this gateway has the key: its backend was sent the cancel.
        Forwarded => "forwarded",
        /// No live session has that key, here or (by its tag) on a peer gateway.
        NoMatch => "no_match",
        /// Not here; a peer gateway with the key's tag had the session and cancelled it.
        Peer => "peer",
        /// Not here, and the peer gateways with the key's tag have no such session either.
        PeerNoMatch => "peer_no_match",
        /// Not here, and no peer gateway with the key's tag answered in time (down, refused,
        /// unreachable, another control-plane token): the cancel is lost.
        PeerFailed => "peer_failed",
        /// Over the client's cancel rate (`--max-cancel-rps-per-ip`): not looked up.
        RateLimited => "rate_limited",
    }
}

label! {
    /// `outcome` of `gateway_peer_cancel_requests_total`: cancel requests other gateways
    /// forwarded to this one (`POST /internal/cancel`).
    PeerCancelOutcome {
        /// A live session of this gateway has the key: its backend was sent the cancel.
        Forwarded => "forwarded",
        /// No live session of this gateway has that key (never forwarded again).
        NoMatch => "no_match",
        /// Over the client's cancel rate: not looked up.
        RateLimited => "rate_limited",
        /// Without the peer key (the control-plane token the gateways share): not looked up.
        Unauthorized => "unauthorized",
        /// Not a forwarded cancel request, or this gateway takes none (no `--peer-addr`).
        Invalid => "invalid",
    }
}

label! {
    /// `outcome` of `gateway_usage_reports_total`: what became of an activity report that
    /// carried a usage batch.
    UsageOutcome {
        /// The reply named the batch: the control plane stored its counts.
        Acknowledged => "acknowledged",
        /// Delivered, but the reply did not name the batch (a control plane that does not
        /// meter): it goes again with the next report.
        Unacknowledged => "unacknowledged",
        /// The report failed: the batch goes again with the next one.
        Failed => "failed",
    }
}

label! {
    /// `outcome` of operations that either worked or not: TLS reloads, activity reports.
    Outcome {
        Ok => "ok",
        Error => "error",
    }
}

label! {
    /// `outcome` of the control-plane request metrics.
    CallOutcome {
        Ok => "ok",
        /// The endpoint (or its project) does not exist.
        NotFound => "not_found",
        /// No answer: a transport error.
        Unreachable => "unreachable",
        /// An error worth retrying.
        Retryable => "retryable",
        Error => "error",
    }
}

label! {
    /// `operation` of `gateway_retries_total`.
    RetryOperation {
        /// Asking the control plane to wake a compute.
        WakeCompute => "wake_compute",
        /// Connecting to a backend.
        ComputeConnect => "compute_connect",
        /// A query whose reused pooled connection had closed before it ran.
        PooledQuery => "pooled_query",
    }
}

label! {
    /// `outcome` of `gateway_route_cache_lookups_total`.
    RouteLookup {
        /// A route from the static route table.
        Static => "static",
        Hit => "hit",
        Miss => "miss",
        /// A cached "no such endpoint".
        NegativeHit => "negative_hit",
        /// A hit past its lifetime, refreshed in the background.
        StaleRefresh => "stale_refresh",
    }
}

label! {
    /// `outcome` of `gateway_role_secret_lookups_total`.
    SecretLookup {
        Hit => "hit",
        Miss => "miss",
        /// A hit past its lifetime, refreshed in the background.
        StaleRefresh => "stale_refresh",
        /// No secret to look up: a static route, or no control plane.
        NoSecret => "none",
    }
}

label! {
    /// `outcome` of `gateway_scram_proofs_total`.
    ScramProof {
        Match => "match",
        Mismatch => "mismatch",
        /// Checked against a mock secret (unknown endpoint or role).
        Mock => "mock",
    }
}

label! {
    /// `outcome` of `gateway_jwt_validations_total`: how a JWT check ended (for logs and
    /// metrics only; clients are told the same thing whatever failed).
    JwtOutcome {
        Ok => "ok",
        /// Not a well-formed JWS (size, segments, base64url, JSON, duplicate keys, header).
        Malformed => "malformed",
        /// `alg` not allowed by the rule or not matching the key.
        BadAlgorithm => "bad_algorithm",
        /// A claim of the wrong type or shape (`exp` missing, `sub` empty, NUL, ...).
        BadClaims => "bad_claims",
        BadSignature => "bad_signature",
        Expired => "expired",
        NotYetValid => "not_yet_valid",
        WrongAudience => "wrong_audience",
        WrongIssuer => "wrong_issuer",
        /// No key of an applicable rule has the token's `kid`.
        UnknownKey => "unknown_key",
        /// More than one applicable key has the token's `kid` and suits its `alg`.
        AmbiguousKey => "ambiguous_key",
        /// No rule of the endpoint names the role.
        RoleNotAllowed => "role_not_allowed",
        /// No key set could be fetched for the applicable rules.
        KeysUnavailable => "keys_unavailable",
    }
}

label! {
    /// `outcome` of `gateway_jwks_fetches_total`.
    JwksFetch {
        Ok => "ok",
        /// A transport error (connect, TLS, reset).
        Error => "error",
        /// Not attempted: the host has no address the gateway may reach (private, loopback,
        /// reserved).
        NotPermitted => "not_permitted",
        Timeout => "timeout",
        /// A status other than 200 (redirects are not followed).
        BadStatus => "bad_status",
        /// The body is larger than the cap.
        TooLarge => "too_large",
        /// The body is not a key set, or it has no usable key.
        Invalid => "invalid",
    }
}

label! {
    /// `result` of `gateway_jwks_cache_total`: whether a rule's keys were served from the
    /// cache or a fetch was awaited.
    JwksCache {
        Hit => "hit",
        Miss => "miss",
    }
}

impl Label for ErrorKind {
    const ALL: &'static [Self] = &ErrorKind::ALL;

    fn label(self) -> &'static str {
        ErrorKind::label(self)
    }
}

impl Label for Limit {
    const ALL: &'static [Self] = &Limit::ALL;

    fn label(self) -> &'static str {
        Limit::label(self)
    }
}

impl Label for Direction {
    const ALL: &'static [Self] = &[Direction::Ingress, Direction::Egress];

    fn label(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<L: Label + std::fmt::Debug>() {
        for (i, value) in L::ALL.iter().enumerate() {
            assert_eq!(value.index(), i, "{value:?}");
        }
        let mut labels: Vec<_> = L::ALL.iter().map(|v| v.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), L::ALL.len(), "distinct labels");
    }

    #[test]
    fn every_value_is_listed_once_at_its_index() {
        check::<Call>();
        check::<SecretOutcome>();
        check::<Invalidation>();
        check::<RequestKind>();
        check::<Checkout>();
        check::<Protocol>();
        check::<Transport>();
        check::<SessionOutcome>();
        check::<CancelOutcome>();
        check::<PeerCancelOutcome>();
        check::<Outcome>();
        check::<CallOutcome>();
        check::<RetryOperation>();
        check::<RouteLookup>();
        check::<SecretLookup>();
        check::<ScramProof>();
        check::<JwtOutcome>();
        check::<JwksFetch>();
        check::<JwksCache>();
        check::<ErrorKind>();
        check::<Limit>();
        check::<Direction>();
    }

    #[test]
    fn session_outcomes_include_every_error_kind() {
        for kind in ErrorKind::ALL {
            assert!(SessionOutcome::ALL.contains(&SessionOutcome::Error(kind)));
        }
    }
}
