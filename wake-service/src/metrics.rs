//! The wake service's Prometheus metrics, one typed struct. Labels are bounded: routes are
//! path templates, never endpoint ids.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use wake_api::admin::EndpointState;

use crate::store::EndpointRow;

pub struct Metrics {
    registry: Registry,
    /// API requests by route template and status code.
    pub http_requests: IntCounterVec,
    /// State changes by the state entered.
    pub transitions: IntCounterVec,
    /// Endpoints by state (set after reconcile and on every transition).
    pub endpoints: IntGaugeVec,
    /// Time to start a compute (create or resume) until it accepts connections.
    pub start_seconds: Histogram,
}

const STATES: [EndpointState; 5] = [
    EndpointState::Active,
    EndpointState::Suspending,
    EndpointState::Suspended,
    EndpointState::Resuming,
    EndpointState::Failed,
];

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "wake_http_requests_total",
                "API requests by route template and status",
            ),
            &["route", "status"],
        )?;
        let transitions = IntCounterVec::new(
            Opts::new(
                "wake_compute_transitions_total",
                "Compute state changes by the state entered",
            ),
            &["to"],
        )?;
        let endpoints = IntGaugeVec::new(
            Opts::new("wake_endpoints", "Endpoints by state"),
            &["state"],
        )?;
        let start_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "wake_compute_start_seconds",
                "Seconds to start a compute until it accepts connections",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(transitions.clone()))?;
        registry.register(Box::new(endpoints.clone()))?;
        registry.register(Box::new(start_seconds.clone()))?;
        Ok(Metrics {
            registry,
            http_requests,
            transitions,
            endpoints,
            start_seconds,
        })
    }

    pub fn record_transition(&self, to: EndpointState) {
        self.transitions.with_label_values(&[to.as_str()]).inc();
    }

    pub fn set_endpoint_states(&self, rows: &[EndpointRow]) {
        for state in STATES {
            let count = rows.iter().filter(|r| r.state == state).count();
            self.endpoints
                .with_label_values(&[state.as_str()])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "could not encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
