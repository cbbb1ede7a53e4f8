//! Every metric the gateway exports, in one typed struct with bounded labels. Endpoint ids are
//! never labels.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::labels::{Call, Invalidation, SecretOutcome};
use crate::base::error::ErrorKind;
use crate::base::limits::Limit;

pub struct Metrics {
    registry: Registry,
    /// Failed requests by error kind (see [`ErrorKind`]).
    pub errors: IntCounterVec,
    pub pool_discards: IntCounter,
    pub pool_idle: IntGauge,
    pub pool_active: IntGauge,
    pub backend_connect_seconds: Histogram,
    /// Accepted client connections by what their first bytes were: `http`, `postgres`,
    /// `tls`, or `rejected` (over the connection cap).
    pub client_connections: IntCounterVec,
    /// Sessions (WebSocket, TCP, TLS) by `transport` and `outcome`: ok, cancel_request,
    /// idle_timeout, shutdown, or the error kind that ended them.
    pub sessions: IntCounterVec,
    pub sessions_active: IntGaugeVec,
    /// Session bytes by `direction`: ingress (from clients) and egress (to clients).
    pub session_bytes: IntCounterVec,
    /// CancelRequests by `outcome`: forwarded, or no_match (no live session has that key).
    pub cancel_requests: IntCounterVec,
    pub tls_reloads: IntCounterVec,
    /// Control-plane requests by `call` (wake_compute, access_control) and `outcome`: ok,
    /// not_found, unreachable, retryable (an error worth retrying), error.
    pub control_plane_requests: IntCounterVec,
    pub control_plane_request_seconds: HistogramVec,
    /// Retries by `operation`: wake_compute (control plane), compute_connect (backend),
    /// pooled_query (a query whose reused pooled connection had closed before it ran).
    pub retries: IntCounterVec,
    /// Activity reports to the control plane by `outcome`: ok, error.
    pub activity_reports: IntCounterVec,
    /// Endpoints (`id` and `id-pooler` counted apart) whose cached route or idle connections
    /// were dropped because the control plane said they are not active.
    pub inactive_drops: IntCounter,
    /// Cached routes dropped because connecting to their address failed.
    pub route_cache_invalidations: IntCounter,
    /// SCRAM proofs of plain TCP/TLS clients checked by the gateway's own SCRAM server, by
    /// `outcome`: match, mismatch, mock (an unknown endpoint or role).
    pub scram_proofs: IntCounterVec,
    /// Role invalidations applied from the control plane's activity replies, by `reason`:
    /// role_change (one role's password changed or it was dropped), first_reply (this
    /// gateway's first reply: everything it cached before may be stale), truncated (the reply
    /// could not list every change: everything, idle connections included).
    pub role_invalidations: IntCounterVec,
    /// Clients refused or cut off by a limit, by `limit` ([`Limit::label`]).
    pub limit_hits: IntCounterVec,
    /// The label values counted on every request or connection, resolved once.
    pub hot: HotMetrics,
}

/// Handles for the label values that every request, connection or session counts:
/// `with_label_values` hashes its labels and takes a lock on every call, which these paths
/// should not pay. A handle is resolved on first use, so what `/metrics` exports does not
/// change (a series appears once it was counted, as before).
pub struct HotMetrics {
    /// `http_requests{kind, status="200"}` and `http_request_seconds{kind}`, by [`REQUEST_KINDS`].
    http_ok: [OnceLock<IntCounter>; 3],
    http_seconds: [OnceLock<Histogram>; 3],
    http_requests: IntCounterVec,
    http_request_seconds: HistogramVec,
    pub route_cache_lookups: CounterCache,
    pub role_secret_lookups: CounterCache,
    pub secret_verifications: CounterCache,
    pub pool_checkouts: CounterCache,
    pub client_connections: CounterCache,
}

/// The `kind` label values of [`Metrics::http_requests`].
pub const REQUEST_KINDS: [&str; 3] = ["single", "batch", "invalid"];

impl HotMetrics {
    /// Counts one `POST /sql` request of `kind` that ended with `status` after `seconds`.
    pub fn http_request(&self, kind: &str, status: u16, seconds: f64) {
        let Some(i) = REQUEST_KINDS.iter().position(|k| *k == kind) else {
            self.http_requests
                .with_label_values(&[kind, &status.to_string()])
                .inc();
            self.http_request_seconds
                .with_label_values(&[kind])
                .observe(seconds);
            return;
        };
        if status == 200 {
            self.http_ok[i]
                .get_or_init(|| self.http_requests.with_label_values(&[kind, "200"]))
                .inc();
        } else {
            self.http_requests
                .with_label_values(&[kind, &status.to_string()])
                .inc();
        }
        self.http_seconds[i]
            .get_or_init(|| self.http_request_seconds.with_label_values(&[kind]))
            .observe(seconds);
    }
}

/// The counters of a one-label vector for a fixed set of label values, each resolved on first
/// use. Other values still work, at the price of a lookup.
pub struct CounterCache {
    vec: IntCounterVec,
    cells: Vec<(&'static str, OnceLock<IntCounter>)>,
}

impl CounterCache {
    fn new(vec: &IntCounterVec, labels: &[&'static str]) -> Self {
        CounterCache {
            vec: vec.clone(),
            cells: labels.iter().map(|l| (*l, OnceLock::new())).collect(),
        }
    }

    /// The count for `label`, for tests.
    #[cfg(test)]
    pub fn get(&self, label: &str) -> u64 {
        self.vec.with_label_values(&[label]).get()
    }

    pub fn inc(&self, label: &str) {
        match self.cells.iter().find(|(known, _)| *known == label) {
            Some((known, cell)) => cell
                .get_or_init(|| self.vec.with_label_values(&[known]))
                .inc(),
            None => self.vec.with_label_values(&[label]).inc(),
        }
    }
}

/// `operation` labels of [`Metrics::retries`].
pub const RETRY_WAKE: &str = "wake_compute";
pub const RETRY_CONNECT: &str = "compute_connect";
pub const RETRY_POOLED_QUERY: &str = "pooled_query";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("gateway_http_requests_total", "SQL-over-HTTP requests"),
            &["kind", "status"],
        )
        .expect("valid metric");
        let http_request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "gateway_http_request_duration_seconds",
                "SQL-over-HTTP request latency",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["kind"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new("gateway_errors_total", "Failed requests by error kind"),
            &["kind"],
        )
        .expect("valid metric");
        let pool_checkouts = IntCounterVec::new(
            Opts::new(
                "gateway_pool_checkouts_total",
                "Backend connection checkouts by outcome (hit: reused, miss: new)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let pool_discards = IntCounter::new(
            "gateway_pool_discards_total",
            "Backend connections closed instead of pooled (errors, cancels, caps, idle timeout)",
        )
        .expect("valid metric");
        let pool_idle = IntGauge::new("gateway_pool_idle_connections", "Idle pooled connections")
            .expect("valid metric");
        let pool_active = IntGauge::new(
            "gateway_pool_active_connections",
            "Backend connections in use by requests",
        )
        .expect("valid metric");
        let backend_connect_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "gateway_backend_connect_duration_seconds",
                "Time to open and authenticate a backend connection",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");

        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let client_connections = counter(
            "gateway_client_connections_total",
            "Accepted client connections by protocol",
            &["protocol"],
        );
        let sessions = counter(
            "gateway_sessions_total",
            "Postgres sessions (WebSocket, TCP, TLS) by transport and outcome",
            &["transport", "outcome"],
        );
        let sessions_active = IntGaugeVec::new(
            Opts::new(
                "gateway_sessions_active",
                "Sessions relaying right now, by transport",
            ),
            &["transport"],
        )
        .expect("valid metric");
        let session_bytes = counter(
            "gateway_session_bytes_total",
            "Bytes relayed by sessions, by direction (ingress: from clients)",
            &["direction"],
        );
        let cancel_requests = counter(
            "gateway_cancel_requests_total",
            "Cancel requests by outcome",
            &["outcome"],
        );
        let tls_reloads = counter(
            "gateway_tls_reloads_total",
            "TLS certificate reloads by outcome",
            &["outcome"],
        );
        let control_plane_requests = counter(
            "gateway_control_plane_requests_total",
            "Control-plane requests by call and outcome",
            &["call", "outcome"],
        );
        let control_plane_request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "gateway_control_plane_request_duration_seconds",
                "Control-plane request latency by call",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["call"],
        )
        .expect("valid metric");
        let retries = counter(
            "gateway_retries_total",
            "Retries after a retryable error, by operation (wake_compute, compute_connect, pooled_query)",
            &["operation"],
        );
        let activity_reports = counter(
            "gateway_activity_reports_total",
            "Activity reports to the control plane by outcome",
            &["outcome"],
        );
        let inactive_drops = IntCounter::new(
            "gateway_inactive_endpoint_drops_total",
            "Endpoints whose cached route and idle connections were dropped because the control plane reported them inactive",
        )
        .expect("valid metric");
        let route_cache_lookups = counter(
            "gateway_route_cache_lookups_total",
            "Route-table lookups by outcome",
            &["outcome"],
        );
        let route_cache_invalidations = IntCounter::new(
            "gateway_route_cache_invalidations_total",
            "Cached routes dropped after a connect to their address failed",
        )
        .expect("valid metric");
        let role_secret_lookups = counter(
            "gateway_role_secret_lookups_total",
            "Role-secret lookups by outcome",
            &["outcome"],
        );
        let secret_verifications = counter(
            "gateway_secret_verifications_total",
            "Password checks against role secrets by outcome",
            &["outcome"],
        );
        let scram_proofs = counter(
            "gateway_scram_proofs_total",
            "SCRAM proofs of TCP and TLS clients checked by the gateway, by outcome",
            &["outcome"],
        );
        let role_invalidations = counter(
            "gateway_role_invalidations_total",
            "Cached role secrets, proofs and idle connections dropped on the control plane's word, by reason",
            &["reason"],
        );
        let limit_hits = counter(
            "gateway_limit_hits_total",
            "Clients refused or cut off by a limit, by limit",
            &["limit"],
        );
        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_request_seconds.clone()),
            Box::new(errors.clone()),
            Box::new(pool_checkouts.clone()),
            Box::new(pool_discards.clone()),
            Box::new(pool_idle.clone()),
            Box::new(pool_active.clone()),
            Box::new(backend_connect_seconds.clone()),
            Box::new(client_connections.clone()),
            Box::new(sessions.clone()),
            Box::new(sessions_active.clone()),
            Box::new(session_bytes.clone()),
            Box::new(cancel_requests.clone()),
            Box::new(tls_reloads.clone()),
            Box::new(control_plane_requests.clone()),
            Box::new(control_plane_request_seconds.clone()),
            Box::new(retries.clone()),
            Box::new(activity_reports.clone()),
            Box::new(inactive_drops.clone()),
            Box::new(route_cache_lookups.clone()),
            Box::new(route_cache_invalidations.clone()),
            Box::new(role_secret_lookups.clone()),
            Box::new(secret_verifications.clone()),
            Box::new(scram_proofs.clone()),
            Box::new(role_invalidations.clone()),
            Box::new(limit_hits.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        // Export every error kind from the start, so rates work before the first error.
        for kind in ErrorKind::ALL {
            errors.with_label_values(&[kind.label()]);
        }
        for direction in ["ingress", "egress"] {
            session_bytes.with_label_values(&[direction]);
        }
        for call in Call::ALL {
            control_plane_request_seconds.with_label_values(&[call.label()]);
        }
        for operation in [RETRY_WAKE, RETRY_CONNECT, RETRY_POOLED_QUERY] {
            retries.with_label_values(&[operation]);
        }
        for outcome in ["ok", "error"] {
            activity_reports.with_label_values(&[outcome]);
        }
        for outcome in ["static", "hit", "miss", "negative_hit", "stale_refresh"] {
            route_cache_lookups.with_label_values(&[outcome]);
        }
        for outcome in SecretOutcome::ALL {
            secret_verifications.with_label_values(&[outcome.label()]);
        }
        for outcome in ["match", "mismatch", "mock"] {
            scram_proofs.with_label_values(&[outcome]);
        }
        for reason in Invalidation::ALL {
            role_invalidations.with_label_values(&[reason.label()]);
        }
        for limit in Limit::ALL {
            limit_hits.with_label_values(&[limit.label()]);
        }
        let hot = HotMetrics {
            http_ok: Default::default(),
            http_seconds: Default::default(),
            http_requests: http_requests.clone(),
            http_request_seconds: http_request_seconds.clone(),
            route_cache_lookups: CounterCache::new(
                &route_cache_lookups,
                &["static", "hit", "miss", "negative_hit", "stale_refresh"],
            ),
            role_secret_lookups: CounterCache::new(
                &role_secret_lookups,
                &["hit", "miss", "stale_refresh", "none"],
            ),
            secret_verifications: CounterCache::new(
                &secret_verifications,
                &SecretOutcome::ALL
                    .iter()
                    .map(|o| o.label())
                    .collect::<Vec<_>>(),
            ),
            pool_checkouts: CounterCache::new(&pool_checkouts, &["hit", "miss"]),
            client_connections: CounterCache::new(
                &client_connections,
                &["http", "postgres", "tls", "rejected"],
            ),
        };
        Metrics {
            hot,
            registry,
            errors,
            pool_discards,
            pool_idle,
            pool_active,
            backend_connect_seconds,
            client_connections,
            sessions,
            sessions_active,
            session_bytes,
            cancel_requests,
            tls_reloads,
            control_plane_requests,
            control_plane_request_seconds,
            retries,
            activity_reports,
            inactive_drops,
            route_cache_invalidations,
            scram_proofs,
            role_invalidations,
            limit_hits,
        }
    }

    /// Counts one client refused or cut off by `limit`.
    pub fn limit_hit(&self, limit: Limit) {
        self.limit_hits.with_label_values(&[limit.label()]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
