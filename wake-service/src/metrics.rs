//! The wake service's Prometheus metrics, one typed struct. Labels are bounded: routes are
//! path templates, never endpoint ids.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
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
    /// Computes running now (endpoints `active`).
    pub computes_active: IntGauge,
    /// Suspends done, by reason (`idle`, `api`, `forced`, `shutdown`).
    pub suspends: IntCounterVec,
    /// Suspends given up because activity appeared at the last moment.
    pub suspends_cancelled: IntCounter,
    /// Resumes of a stopped compute, by what asked (`proxy`, `api`, `pooler`, `reconcile`).
    pub resumes: IntCounterVec,
    /// From the resume decision until the compute accepts connections (the wake service's
    /// share of a cold query).
    pub resume_seconds: Histogram,
    /// Gateway activity reports received.
    pub activity_reports: IntCounter,
    /// Role operations through the API by kind (`create`, `password`, `drop`) and outcome
    /// (`ok`, `conflict`, `error`).
    pub role_operations: IntCounterVec,
    /// Password changes and drops that returned before every live gateway had applied them
    /// (it applies them with its next report).
    pub role_changes_unacknowledged: IntCounter,
    /// Compute directories the store did not know, moved aside at startup.
    pub computes_quarantined: IntCounter,
}

/// Reasons a compute is suspended (the `reason` label of `wake_suspends_total`).
pub const SUSPEND_IDLE: &str = "idle";
pub const SUSPEND_API: &str = "api";
pub const SUSPEND_FORCED: &str = "forced";
pub const SUSPEND_SHUTDOWN: &str = "shutdown";

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
        let computes_active = IntGauge::new(
            "wake_computes_active",
            "Computes running now (endpoints in state active)",
        )?;
        let suspends = IntCounterVec::new(
            Opts::new("wake_suspends_total", "Compute suspends by reason"),
            &["reason"],
        )?;
        let suspends_cancelled = IntCounter::new(
            "wake_suspends_cancelled_total",
            "Suspends given up because a client became active at the last moment",
        )?;
        let resumes = IntCounterVec::new(
            Opts::new(
                "wake_resumes_total",
                "Resumes of a stopped compute by trigger",
            ),
            &["trigger"],
        )?;
        let resume_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "wake_resume_seconds",
                "Seconds from a resume decision until the compute accepts connections",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1.0, 2.5, 5.0,
                10.0,
            ]),
        )?;
        let activity_reports = IntCounter::new(
            "wake_activity_reports_total",
            "Gateway activity reports received",
        )?;
        let role_operations = IntCounterVec::new(
            Opts::new(
                "wake_role_operations_total",
                "Role operations through the API by kind and outcome",
            ),
            &["kind", "outcome"],
        )?;
        let role_changes_unacknowledged = IntCounter::new(
            "wake_role_changes_unacknowledged_total",
            "Password changes and drops that returned before every live gateway applied them",
        )?;
        let computes_quarantined = IntCounter::new(
            "wake_computes_quarantined_total",
            "Compute directories the state store did not know, moved aside at startup",
        )?;
        registry.register(Box::new(role_operations.clone()))?;
        registry.register(Box::new(role_changes_unacknowledged.clone()))?;
        registry.register(Box::new(computes_quarantined.clone()))?;
        registry.register(Box::new(computes_active.clone()))?;
        registry.register(Box::new(suspends.clone()))?;
        registry.register(Box::new(suspends_cancelled.clone()))?;
        registry.register(Box::new(resumes.clone()))?;
        registry.register(Box::new(resume_seconds.clone()))?;
        registry.register(Box::new(activity_reports.clone()))?;
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
            computes_active,
            suspends,
            suspends_cancelled,
            resumes,
            resume_seconds,
            activity_reports,
            role_operations,
            role_changes_unacknowledged,
            computes_quarantined,
        })
    }

    pub fn record_transition(&self, to: EndpointState) {
        self.transitions.with_label_values(&[to.as_str()]).inc();
    }

    pub fn set_endpoint_states(&self, rows: &[EndpointRow]) {
        for state in STATES {
            let count = rows.iter().filter(|r| r.state == state).count();
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            self.endpoints
                .with_label_values(&[state.as_str()])
                .set(count);
            if state == EndpointState::Active {
                self.computes_active.set(count);
            }
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
