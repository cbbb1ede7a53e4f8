//! Every metric the gateway exports, in one typed struct with bounded labels. Endpoint ids are
//! never labels.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::error::ErrorKind;

pub struct Metrics {
    registry: Registry,
    /// `POST /sql` requests by `kind` (single, batch, invalid) and HTTP `status`.
    pub http_requests: IntCounterVec,
    pub http_request_seconds: HistogramVec,
    /// Failed requests by error kind (see [`ErrorKind`]).
    pub errors: IntCounterVec,
    /// Pool checkouts by `outcome`: hit (reused) or miss (new connection).
    pub pool_checkouts: IntCounterVec,
    pub pool_discards: IntCounter,
    pub pool_idle: IntGauge,
    pub pool_active: IntGauge,
    pub backend_connect_seconds: Histogram,
}

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

        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_request_seconds.clone()),
            Box::new(errors.clone()),
            Box::new(pool_checkouts.clone()),
            Box::new(pool_discards.clone()),
            Box::new(pool_idle.clone()),
            Box::new(pool_active.clone()),
            Box::new(backend_connect_seconds.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        // Export every error kind from the start, so rates work before the first error.
        for kind in ErrorKind::ALL {
            errors.with_label_values(&[kind.label()]);
        }
        Metrics {
            registry,
            http_requests,
            http_request_seconds,
            errors,
            pool_checkouts,
            pool_discards,
            pool_idle,
            pool_active,
            backend_connect_seconds,
        }
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
