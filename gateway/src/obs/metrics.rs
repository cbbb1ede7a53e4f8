//! Every metric the gateway exports, in one typed struct with bounded labels. Endpoint ids are
//! never labels.

use std::marker::PhantomData;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::labels::{
    Call, CallOutcome, CancelOutcome, Checkout, Invalidation, JwksCache, JwksFetch, JwtOutcome,
    Label, Outcome, PeerCancelOutcome, Protocol, RequestKind, RetryOperation, RouteLookup,
    ScramProof, SecretLookup, SecretOutcome, SessionOutcome, Transport, UsageOutcome,
};
use super::usage::Direction;
use crate::base::error::ErrorKind;
use crate::base::limits::Limit;

/// Every metric, by the layer that feeds it. A labelled metric has a [`Label`] type per label,
/// and every value's series is resolved (and exported) from the start: rates work before the
/// first event, and counting takes no lookup.
pub struct Metrics {
    registry: Registry,
    /// Failed requests by error kind (see [`ErrorKind`]).
    pub errors: Counter<ErrorKind>,
    /// Clients refused or cut off by a limit, by `limit` ([`Limit::label`]).
    pub limit_hits: Counter<Limit>,

    /// `POST /sql` requests by `kind` and `status`, and their latency by `kind`.
    pub http_requests: HttpRequests,
    /// Accepted client connections by what their first bytes were ([`Protocol`]).
    pub client_connections: Counter<Protocol>,
    /// Sessions (WebSocket, TCP, TLS) by `transport` and `outcome` ([`SessionOutcome`]).
    pub sessions: Counter2<Transport, SessionOutcome>,
    pub sessions_active: ByLabel<Transport, IntGauge>,
    /// Session bytes by `direction`: ingress (from clients) and egress (to clients).
    pub session_bytes: Counter<Direction>,
    /// CancelRequests by `outcome` ([`CancelOutcome`]).
    pub cancel_requests: Counter<CancelOutcome>,
    /// Cancel requests forwarded by other gateways, by `outcome` ([`PeerCancelOutcome`]).
    pub peer_cancel_requests: Counter<PeerCancelOutcome>,
    /// Other gateways this one forwards cancel requests to (as of the last activity reply).
    pub peers: IntGauge,
    pub tls_reloads: Counter<Outcome>,
    /// SCRAM proofs of plain TCP/TLS clients checked by the gateway's own SCRAM server, by
    /// `outcome` ([`ScramProof`]).
    pub scram_proofs: Counter<ScramProof>,

    pub pool_checkouts: Counter<Checkout>,
    pub pool_discards: IntCounter,
    pub pool_idle: IntGauge,
    pub pool_active: IntGauge,
    pub backend_connect_seconds: Histogram,
    /// Retries by `operation` ([`RetryOperation`]).
    pub retries: Counter<RetryOperation>,
    /// Activity reports to the control plane by `outcome`.
    pub activity_reports: Counter<Outcome>,
    /// Endpoints (`id` and `id-pooler` counted apart) whose cached route or idle connections
    /// were dropped because the control plane said they are not active.
    pub inactive_drops: IntCounter,
    /// Role invalidations applied from the control plane's activity replies, by `reason`
    /// ([`Invalidation`]).
    pub role_invalidations: Counter<Invalidation>,
    /// Activity reports that carried a usage batch, by `outcome` ([`UsageOutcome`]).
    pub usage_reports: Counter<UsageOutcome>,
    /// Endpoints with counts the control plane has not acknowledged yet (as of the last
    /// report).
    pub usage_unacknowledged_endpoints: IntGauge,

    /// Control-plane requests by `call` and `outcome` ([`CallOutcome`]).
    pub control_plane_requests: Counter2<Call, CallOutcome>,
    pub control_plane_request_seconds: ByLabel<Call, Histogram>,
    pub route_cache_lookups: Counter<RouteLookup>,
    /// Cached routes dropped because connecting to their address failed.
    pub route_cache_invalidations: IntCounter,
    pub role_secret_lookups: Counter<SecretLookup>,
    pub secret_verifications: Counter<SecretOutcome>,
    /// JWT checks by `outcome` ([`JwtOutcome`]).
    pub jwt_validations: Counter<JwtOutcome>,
    /// JWKS fetches by `outcome` ([`JwksFetch`]).
    pub jwks_fetches: Counter<JwksFetch>,
    /// Key-set lookups of JWKS rules by `result` ([`JwksCache`]).
    pub jwks_cache: Counter<JwksCache>,
}

/// One metric of a vector per value of `L`, resolved once.
pub struct ByLabel<L, M> {
    metrics: Box<[M]>,
    label: PhantomData<L>,
}

impl<L: Label, M> ByLabel<L, M> {
    fn resolve(with_label: impl Fn(&[&str]) -> M) -> Self {
        ByLabel {
            metrics: L::ALL.iter().map(|l| with_label(&[l.label()])).collect(),
            label: PhantomData,
        }
    }

    /// The metric of `label`.
    pub fn with(&self, label: L) -> &M {
        &self.metrics[label.index()]
    }
}

/// The same series (a metric is a handle on shared values), for a component that keeps its
/// own metrics.
impl<L, M: Clone> Clone for ByLabel<L, M> {
    fn clone(&self) -> Self {
        ByLabel {
            metrics: self.metrics.clone(),
            label: PhantomData,
        }
    }
}

/// A counter vector with one label.
pub type Counter<L> = ByLabel<L, IntCounter>;

impl<L: Label> Counter<L> {
    pub fn inc(&self, label: L) {
        self.with(label).inc();
    }

    pub fn inc_by(&self, label: L, n: u64) {
        self.with(label).inc_by(n);
    }

    /// The count of `label`, for tests.
    #[cfg(test)]
    pub fn get(&self, label: L) -> u64 {
        self.with(label).get()
    }
}

impl<L: Label> ByLabel<L, Histogram> {
    pub fn observe(&self, label: L, value: f64) {
        self.with(label).observe(value);
    }
}

/// A counter vector with two labels: one counter per pair of values, resolved once.
pub struct Counter2<A, B> {
    counters: Box<[IntCounter]>,
    labels: PhantomData<(A, B)>,
}

impl<A: Label, B: Label> Counter2<A, B> {
    fn resolve(vec: &IntCounterVec) -> Self {
        let counters = A::ALL
            .iter()
            .flat_map(|a| {
                B::ALL
                    .iter()
                    .map(move |b| vec.with_label_values(&[a.label(), b.label()]))
            })
            .collect();
        Counter2 {
            counters,
            labels: PhantomData,
        }
    }

    fn with(&self, a: A, b: B) -> &IntCounter {
        &self.counters[a.index() * B::ALL.len() + b.index()]
    }

    pub fn inc(&self, a: A, b: B) {
        self.with(a, b).inc();
    }

    /// The count of `(a, b)`, for tests.
    #[cfg(test)]
    pub fn get(&self, a: A, b: B) -> u64 {
        self.with(a, b).get()
    }
}

/// `gateway_http_requests_total{kind, status}` and
/// `gateway_http_request_duration_seconds{kind}`. The status stays open (any HTTP status);
/// 200 is resolved once per kind.
pub struct HttpRequests {
    requests: IntCounterVec,
    ok: Counter<RequestKind>,
    seconds: ByLabel<RequestKind, Histogram>,
}

impl HttpRequests {
    /// Counts one `POST /sql` request of `kind` that ended with `status` after `seconds`.
    pub fn record(&self, kind: RequestKind, status: u16, seconds: f64) {
        if status == 200 {
            self.ok.inc(kind);
        } else {
            self.requests
                .with_label_values(&[kind.label(), &status.to_string()])
                .inc();
        }
        self.seconds.observe(kind, seconds);
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Creates metrics and registers them in one call.
struct Registrar {
    registry: Registry,
}

impl Registrar {
    fn register<C: Collector + Clone + 'static>(&self, collector: C) -> C {
        self.registry
            .register(Box::new(collector.clone()))
            .expect("metric names are unique");
        collector
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("valid metric"))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric"))
    }

    fn histogram(&self, name: &str, help: &str) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        self.register(Histogram::with_opts(opts).expect("valid metric"))
    }

    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    /// A counter per value of `L`, labelled `label`.
    fn counters<L: Label>(&self, name: &str, help: &str, label: &str) -> Counter<L> {
        let vec = self.counter_vec(name, help, &[label]);
        ByLabel::resolve(|values| vec.with_label_values(values))
    }

    /// A counter per pair of values of `A` and `B`, labelled `labels`.
    fn counters2<A: Label, B: Label>(
        &self,
        name: &str,
        help: &str,
        labels: [&str; 2],
    ) -> Counter2<A, B> {
        Counter2::resolve(&self.counter_vec(name, help, &labels))
    }

    fn gauges<L: Label>(&self, name: &str, help: &str, label: &str) -> ByLabel<L, IntGauge> {
        let vec = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric");
        let vec = self.register(vec);
        ByLabel::resolve(|values| vec.with_label_values(values))
    }

    fn histograms<L: Label>(&self, name: &str, help: &str, label: &str) -> ByLabel<L, Histogram> {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        let vec = self.register(HistogramVec::new(opts, &[label]).expect("valid metric"));
        ByLabel::resolve(|values| vec.with_label_values(values))
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registrar {
            registry: Registry::new(),
        };
        let http_requests = HttpRequests::new(&r);
        let client_connections = r.counters(
            "gateway_client_connections_total",
            "Accepted client connections by protocol",
            "protocol",
        );
        let (cancel_requests, peer_cancel_requests, peers) = cancels(&r);
        let (sessions, sessions_active, session_bytes) = sessions(&r);
        let (pool_checkouts, pool_discards, pool_idle, pool_active, backend_connect_seconds) =
            pool(&r);
        let (retries, activity_reports, inactive_drops, role_invalidations) = proxy(&r);
        let (usage_reports, usage_unacknowledged_endpoints) = usage(&r);
        let (control_plane_requests, control_plane_request_seconds) = control_plane(&r);
        let (route_cache_lookups, route_cache_invalidations, role_secret_lookups) = routes(&r);
        let (jwt_validations, jwks_fetches, jwks_cache) = jwt(&r);
        Metrics {
            errors: r.counters(
                "gateway_errors_total",
                "Failed requests by error kind",
                "kind",
            ),
            limit_hits: r.counters(
                "gateway_limit_hits_total",
                "Clients refused or cut off by a limit, by limit",
                "limit",
            ),
            tls_reloads: r.counters(
                "gateway_tls_reloads_total",
                "TLS certificate reloads by outcome",
                "outcome",
            ),
            scram_proofs: r.counters(
                "gateway_scram_proofs_total",
                "SCRAM proofs of TCP and TLS clients checked by the gateway, by outcome",
                "outcome",
            ),
            secret_verifications: r.counters(
                "gateway_secret_verifications_total",
                "Password checks against role secrets by outcome",
                "outcome",
            ),
            http_requests,
            client_connections,
            sessions,
            sessions_active,
            session_bytes,
            cancel_requests,
            peer_cancel_requests,
            peers,
            pool_checkouts,
            pool_discards,
            pool_idle,
            pool_active,
            backend_connect_seconds,
            retries,
            activity_reports,
            inactive_drops,
            role_invalidations,
            usage_reports,
            usage_unacknowledged_endpoints,
            control_plane_requests,
            control_plane_request_seconds,
            route_cache_lookups,
            route_cache_invalidations,
            role_secret_lookups,
            jwt_validations,
            jwks_fetches,
            jwks_cache,
            registry: r.registry,
        }
    }

    /// Counts one client refused or cut off by `limit`.
    pub fn limit_hit(&self, limit: Limit) {
        self.limit_hits.inc(limit);
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

impl HttpRequests {
    fn new(r: &Registrar) -> Self {
        let requests = r.counter_vec(
            "gateway_http_requests_total",
            "SQL-over-HTTP requests",
            &["kind", "status"],
        );
        HttpRequests {
            ok: ByLabel::resolve(|kind| requests.with_label_values(&[kind[0], "200"])),
            requests,
            seconds: r.histograms(
                "gateway_http_request_duration_seconds",
                "SQL-over-HTTP request latency",
                "kind",
            ),
        }
    }
}

/// The metrics of CancelRequests, here and forwarded between gateways.
fn cancels(r: &Registrar) -> (Counter<CancelOutcome>, Counter<PeerCancelOutcome>, IntGauge) {
    (
        r.counters(
            "gateway_cancel_requests_total",
            "Cancel requests from clients by outcome",
            "outcome",
        ),
        r.counters(
            "gateway_peer_cancel_requests_total",
            "Cancel requests forwarded by other gateways, by outcome",
            "outcome",
        ),
        r.gauge(
            "gateway_peers",
            "Other gateways this one forwards cancel requests to",
        ),
    )
}

/// The metrics of sessions.
fn sessions(
    r: &Registrar,
) -> (
    Counter2<Transport, SessionOutcome>,
    ByLabel<Transport, IntGauge>,
    Counter<Direction>,
) {
    (
        r.counters2(
            "gateway_sessions_total",
            "Postgres sessions (WebSocket, TCP, TLS) by transport and outcome",
            ["transport", "outcome"],
        ),
        r.gauges(
            "gateway_sessions_active",
            "Sessions relaying right now, by transport",
            "transport",
        ),
        r.counters(
            "gateway_session_bytes_total",
            "Bytes relayed by sessions, by direction (ingress: from clients)",
            "direction",
        ),
    )
}

/// The metrics of the connection pool.
fn pool(r: &Registrar) -> (Counter<Checkout>, IntCounter, IntGauge, IntGauge, Histogram) {
    (
        r.counters(
            "gateway_pool_checkouts_total",
            "Backend connection checkouts by outcome (hit: reused, miss: new)",
            "outcome",
        ),
        r.counter(
            "gateway_pool_discards_total",
            "Backend connections closed instead of pooled (errors, cancels, caps, idle timeout)",
        ),
        r.gauge("gateway_pool_idle_connections", "Idle pooled connections"),
        r.gauge(
            "gateway_pool_active_connections",
            "Backend connections in use by requests",
        ),
        r.histogram(
            "gateway_backend_connect_duration_seconds",
            "Time to open and authenticate a backend connection",
        ),
    )
}

/// The metrics of retries and of the activity reporter.
fn proxy(
    r: &Registrar,
) -> (
    Counter<RetryOperation>,
    Counter<Outcome>,
    IntCounter,
    Counter<Invalidation>,
) {
    (
        r.counters(
            "gateway_retries_total",
            "Retries after a retryable error, by operation (wake_compute, compute_connect, pooled_query)",
            "operation",
        ),
        r.counters(
            "gateway_activity_reports_total",
            "Activity reports to the control plane by outcome",
            "outcome",
        ),
        r.counter(
            "gateway_inactive_endpoint_drops_total",
            "Endpoints whose cached route and idle connections were dropped because the control plane reported them inactive",
        ),
        r.counters(
            "gateway_role_invalidations_total",
            "Cached role secrets, proofs and idle connections dropped on the control plane's word, by reason",
            "reason",
        ),
    )
}

/// The metrics of usage delivery (metering).
fn usage(r: &Registrar) -> (Counter<UsageOutcome>, IntGauge) {
    (
        r.counters(
            "gateway_usage_reports_total",
            "Activity reports that carried a usage batch, by outcome (acknowledged: the control plane stored it)",
            "outcome",
        ),
        r.gauge(
            "gateway_usage_unacknowledged_endpoints",
            "Endpoints with traffic counts the control plane has not acknowledged yet",
        ),
    )
}

/// The metrics of control-plane requests.
fn control_plane(r: &Registrar) -> (Counter2<Call, CallOutcome>, ByLabel<Call, Histogram>) {
    (
        r.counters2(
            "gateway_control_plane_requests_total",
            "Control-plane requests by call and outcome",
            ["call", "outcome"],
        ),
        r.histograms(
            "gateway_control_plane_request_duration_seconds",
            "Control-plane request latency by call",
            "call",
        ),
    )
}

/// The metrics of the route and role-secret caches.
fn routes(r: &Registrar) -> (Counter<RouteLookup>, IntCounter, Counter<SecretLookup>) {
    (
        r.counters(
            "gateway_route_cache_lookups_total",
            "Route-table lookups by outcome",
            "outcome",
        ),
        r.counter(
            "gateway_route_cache_invalidations_total",
            "Cached routes dropped after a connect to their address failed",
        ),
        r.counters(
            "gateway_role_secret_lookups_total",
            "Role-secret lookups by outcome",
            "outcome",
        ),
    )
}

/// The metrics of JWT validation and of the JWKS cache.
fn jwt(r: &Registrar) -> (Counter<JwtOutcome>, Counter<JwksFetch>, Counter<JwksCache>) {
    (
        r.counters(
            "gateway_jwt_validations_total",
            "JWT validations by outcome",
            "outcome",
        ),
        r.counters(
            "gateway_jwks_fetches_total",
            "JWKS fetches by outcome",
            "outcome",
        ),
        r.counters(
            "gateway_jwks_cache_total",
            "Key-set lookups of JWKS rules by result (hit: served from the cache, miss: a fetch was awaited)",
            "result",
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_every_label_value_from_the_start() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        for series in [
            "gateway_errors_total{kind=\"client_disconnect\"} 0",
            "gateway_sessions_total{outcome=\"idle_timeout\",transport=\"wss\"} 0",
            "gateway_pool_checkouts_total{outcome=\"miss\"} 0",
            "gateway_role_secret_lookups_total{outcome=\"none\"} 0",
            "gateway_http_requests_total{kind=\"batch\",status=\"200\"} 0",
            "gateway_jwt_validations_total{outcome=\"keys_unavailable\"} 0",
            "gateway_jwks_fetches_total{outcome=\"too_large\"} 0",
            "gateway_jwks_cache_total{result=\"miss\"} 0",
            "gateway_usage_reports_total{outcome=\"failed\"} 0",
            "gateway_usage_unacknowledged_endpoints 0",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
    }

    #[test]
    fn counts_by_label() {
        let metrics = Metrics::new();
        metrics.sessions.inc(Transport::Ws, SessionOutcome::Ok);
        metrics.http_requests.record(RequestKind::Single, 200, 0.1);
        metrics.http_requests.record(RequestKind::Single, 400, 0.1);
        let text = metrics.encode();
        for series in [
            "gateway_sessions_total{outcome=\"ok\",transport=\"ws\"} 1",
            "gateway_sessions_total{outcome=\"ok\",transport=\"tcp\"} 0",
            "gateway_http_requests_total{kind=\"single\",status=\"200\"} 1",
            "gateway_http_requests_total{kind=\"single\",status=\"400\"} 1",
            "gateway_http_request_duration_seconds_count{kind=\"single\"} 2",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
        assert_eq!(metrics.sessions.get(Transport::Ws, SessionOutcome::Ok), 1);
    }
}
