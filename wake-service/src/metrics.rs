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
    /// 1 while this replica holds the leader lock (it reconciles and runs the scheduler, the
    /// autoscaler and metering's loop), else 0: with replicas on one store, exactly one says 1.
    pub leader: IntGauge,
    /// Metering.
    pub usage: UsageMetrics,
    /// Autoscaling.
    pub autoscale: AutoscaleMetrics,
    /// Branches.
    pub branches: BranchMetrics,
}

/// Branches' figures, totals over every endpoint.
pub struct BranchMetrics {
    /// Branch operations done, by kind (`create`, `reset`, `delete`, `expire`).
    pub operations: IntCounterVec,
    /// Seconds a copy took (`CREATE DATABASE … TEMPLATE`, the source's idle sessions ended
    /// first; a schema-only copy's tables emptied after).
    pub copy_seconds: Histogram,
}

impl BranchMetrics {
    fn new(registry: &Registry) -> Result<BranchMetrics, prometheus::Error> {
        let operations = IntCounterVec::new(
            Opts::new(
                "wake_branch_operations_total",
                "Branch operations done, by kind",
            ),
            &["kind"],
        )?;
        let copy_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "wake_branch_copy_seconds",
                "Seconds to copy a database into a branch (create or reset)",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        registry.register(Box::new(operations.clone()))?;
        registry.register(Box::new(copy_seconds.clone()))?;
        Ok(BranchMetrics {
            operations,
            copy_seconds,
        })
    }

    /// One branch operation of `kind` done.
    pub fn count(&self, kind: &str) {
        self.operations.with_label_values(&[kind]).inc();
    }
}

/// Autoscaling's figures, totals over every endpoint.
pub struct AutoscaleMetrics {
    /// The policy's decisions by action (`up`, `down`, `stay`).
    pub decisions: IntCounterVec,
    /// Sizes changed, by cause (`autoscaler`, `api`, `range`) and direction (`up`, `down`).
    pub resizes: IntCounterVec,
    /// Seconds a resize took (the driver applying it, then the store).
    pub resize_seconds: Histogram,
    /// Signal samples that failed (the compute did not answer in time, or an error).
    pub sample_errors: IntCounter,
    /// The compute units of every active compute, summed (set by each autoscaler round).
    pub active_cu: prometheus::Gauge,
}

impl AutoscaleMetrics {
    fn new(registry: &Registry) -> Result<AutoscaleMetrics, prometheus::Error> {
        let decisions = IntCounterVec::new(
            Opts::new(
                "wake_autoscale_decisions_total",
                "Autoscaling policy decisions by action",
            ),
            &["action"],
        )?;
        let resizes = IntCounterVec::new(
            Opts::new(
                "wake_autoscale_resizes_total",
                "Compute size changes by cause and direction",
            ),
            &["cause", "direction"],
        )?;
        let resize_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "wake_autoscale_resize_seconds",
                "Seconds to apply a size change",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
        )?;
        let sample_errors = IntCounter::new(
            "wake_autoscale_sample_errors_total",
            "Autoscaler signal samples that failed",
        )?;
        let active_cu = prometheus::Gauge::new(
            "wake_autoscale_active_compute_units",
            "Compute units of every active compute, summed",
        )?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(resizes.clone()))?;
        registry.register(Box::new(resize_seconds.clone()))?;
        registry.register(Box::new(sample_errors.clone()))?;
        registry.register(Box::new(active_cu.clone()))?;
        Ok(AutoscaleMetrics {
            decisions,
            resizes,
            resize_seconds,
            sample_errors,
            active_cu,
        })
    }

    /// A size change by `cause` from `from` to `to` that took `took`.
    pub fn observe_resize(
        &self,
        cause: &str,
        from: crate::autoscale::sizing::Cu,
        to: crate::autoscale::sizing::Cu,
        took: std::time::Duration,
    ) {
        let direction = if to > from { "up" } else { "down" };
        self.resizes.with_label_values(&[cause, direction]).inc();
        self.resize_seconds.observe(took.as_secs_f64());
    }
}

/// Metering's figures, totals over every endpoint (per endpoint is the usage API's job: an
/// endpoint label would grow without bound).
pub struct UsageMetrics {
    /// Gateway usage reports by outcome (`applied`, `duplicate`: an id applied before,
    /// `invalid`: refused, nothing stored).
    pub reports: IntCounterVec,
    /// Entries of applied reports for endpoints that do not exist (not stored).
    pub unknown_endpoints: IntCounter,
    /// Traffic stored from gateway reports.
    pub ingress_bytes: IntCounter,
    pub egress_bytes: IntCounter,
    pub queries: IntCounter,
    pub sessions: IntCounter,
    pub connections: IntCounter,
    /// Compute time exported as consumption events.
    pub active_seconds: IntCounter,
    pub compute_unit_seconds: IntCounter,
    /// Consumption events written.
    pub events: IntCounter,
    /// Checkpoints by outcome (`ok`, `error`).
    pub checkpoints: IntCounterVec,
    /// Storage samples by outcome (`ok`, `error`).
    pub storage_samples: IntCounterVec,
    /// The push sink: events delivered, and failed attempts.
    pub sink_events: IntCounter,
    pub sink_failures: IntCounter,
}

impl UsageMetrics {
    fn new(registry: &Registry) -> Result<UsageMetrics, prometheus::Error> {
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counters = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        Ok(UsageMetrics {
            reports: counters(
                "wake_usage_reports_total",
                "Gateway usage reports by outcome",
                "outcome",
            )?,
            unknown_endpoints: counter(
                "wake_usage_unknown_endpoints_total",
                "Usage report entries for endpoints that do not exist (not stored)",
            )?,
            ingress_bytes: counter("wake_usage_ingress_bytes_total", "Bytes from clients")?,
            egress_bytes: counter("wake_usage_egress_bytes_total", "Bytes to clients")?,
            queries: counter("wake_usage_queries_total", "Queries through gateways")?,
            sessions: counter("wake_usage_sessions_total", "Sessions through gateways")?,
            connections: counter(
                "wake_usage_connections_total",
                "Connections gateways opened to computes",
            )?,
            active_seconds: counter(
                "wake_usage_active_seconds_total",
                "Compute seconds exported as consumption events",
            )?,
            compute_unit_seconds: counter(
                "wake_usage_compute_unit_seconds_total",
                "Compute-unit seconds exported as consumption events",
            )?,
            events: counter("wake_usage_events_total", "Consumption events written")?,
            checkpoints: counters(
                "wake_usage_checkpoints_total",
                "Metering checkpoints by outcome",
                "outcome",
            )?,
            storage_samples: counters(
                "wake_usage_storage_samples_total",
                "Storage samples by outcome",
                "outcome",
            )?,
            sink_events: counter(
                "wake_usage_sink_events_total",
                "Consumption events the push sink delivered",
            )?,
            sink_failures: counter(
                "wake_usage_sink_failures_total",
                "Failed deliveries to the push sink (retried)",
            )?,
        })
    }
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
        let leader = IntGauge::new(
            "wake_leader",
            "1 while this replica holds the leader lock (reconcile, scheduler, autoscaler, metering), else 0",
        )?;
        registry.register(Box::new(leader.clone()))?;
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
        let usage = UsageMetrics::new(&registry)?;
        let autoscale = AutoscaleMetrics::new(&registry)?;
        let branches = BranchMetrics::new(&registry)?;
        Ok(Metrics {
            usage,
            autoscale,
            branches,
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
            leader,
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
