//! The activity report, which tells the control plane what is busy and what is cached, and
//! applies its reply to the caches and the pool.
//!
//! - [`run_reporter`] (only with a control plane) sends an `ActivityReport` every interval, and
//!   at once when an endpoint goes from idle to busy (at most one such extra report per
//!   [`URGENT_GAP`]), so the control plane hears of a new session before it could decide to
//!   suspend. A report lists the endpoints that are busy or had activity since the last report
//!   the control plane received, and the endpoints whose routes are cached.
//! - The reply names the reported or cached endpoints that are not active (suspended, starting,
//!   deleted): their cached routes and idle pooled connections are dropped, so the next client
//!   wakes the endpoint instead of meeting a stopped Postgres or a paused PgBouncer. What the
//!   control plane said of their pool caps is forgotten too (the next wake says it again).
//! - Pool caps. The reply gives, for each reported or cached endpoint that is active, the cap
//!   on backend connections that its compute's current size allows (`pool_limits`): each is
//!   applied to the endpoint's `/sql` pool at once ([`Pool::set_pool_cap`]: growing frees
//!   slots, shrinking takes free ones and the rest as connections in use come back), so a
//!   resize reaches the gateway within one report. Static routes are left alone.
//! - Role changes. Every report carries this process's `gateway_id` (a random UUID chosen at
//!   start) and `role_changes_applied`, the newest role change it has applied. The reply lists
//!   the changes since (a password changed, a role dropped) and the control plane's cursor;
//!   for each change the gateway drops the role's cached secret, its proofs of passwords (any
//!   database, the endpoint and its `-pooler`) and its idle pooled connections on both, then
//!   reports the cursor as applied at once (not at the next interval): the wake service's
//!   `PATCH`/`DELETE` of a role waits for that, so the change holds over HTTP, WebSocket,
//!   TCP and `-pooler` by the time the API call returns. On the first reply (this gateway had
//!   applied nothing yet) every cached role secret and proof is dropped, and when the reply
//!   says it could not list every change (`role_changes_truncated`, or a cursor behind the
//!   one applied: the control plane lost its history), every control-plane endpoint's idle
//!   connections too; then the cursor is adopted. A control plane whose
//!   replies carry no cursor sends no role changes; nothing is dropped then.
//! - Usage for metering (`proxy::metering`): every report carries the pending batch of traffic
//!   counts (`obs::usage`), the same id and values each time, until a reply's `usage_applied`
//!   names it; the next report then cuts the next batch from what was counted meanwhile. A
//!   reply's `usage_unknown` (endpoints deleted meanwhile, whose counts the control plane
//!   dropped) is only logged. A gateway killed without a last report (SIGKILL, a crash) loses
//!   what it counted since its last acknowledged batch: normally at most one interval, during a
//!   control-plane outage the outage's traffic. When stopped (SIGTERM, once the drain is over)
//!   the reporter sends up to [`FINAL_REPORTS`] more reports within [`FINAL_FLUSH`] to deliver
//!   what is left.
//! - Deleted endpoints. The reply says which of the inactive endpoints no longer exist
//!   (`deleted`); besides their routes and idle connections, their cached role secrets,
//!   password proofs and JWKS rules are dropped, so an endpoint made again under the same id
//!   starts clean. Endpoints with a cached role secret are reported with the cached routes
//!   for this.
//! - Replicas. With `--peer-addr` every report says where the other gateways forward the
//!   CancelRequests that reach them for this gateway's sessions (`peer`: the address and this
//!   gateway's cancel tag), and every reply lists the other live gateways that take them
//!   (`peers`), which replaces the list `proxy::cancel` forwards to.
//! - The reporter reports at least every interval while this gateway holds a cached route or
//!   role secret (so the wake service knows it is live and waits for it), a usage batch is
//!   pending, traffic counters moved or it takes forwarded cancel requests (so the others
//!   keep it in their lists, and it learns theirs); with nothing cached and nothing happening
//!   it stays silent. With reporting off (`--activity-interval-ms 0`) role changes reach the gateway
//!   only when cached secrets expire, and usage only reaches admin `/usage`.
//!
//! Invariant: reporting never affects queries. A failed or slow report is logged and counted;
//! the activity and the usage it carried are sent again with the next report.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wake_api::proxy::{ActivityReply, ActivityReport, RoleChange, MAX_REPORTED_ENDPOINTS};

use crate::base::endpoint::EndpointId;
use crate::control_plane::activity::Activity;
use crate::control_plane::client::{ControlPlaneClient, ControlPlaneError};
use crate::control_plane::jwt_rules::JwtRules;
use crate::control_plane::routes::{PoolCap, RouteTable};
use crate::obs::labels::{Invalidation, Label, Outcome, UsageOutcome};
use crate::obs::metrics::Metrics;
use crate::obs::usage::Usage;
use crate::proxy::cancel::Cancels;
use crate::proxy::metering::{Metering, Readings};
use crate::proxy::pool::Pool;

/// What the reporter reads and what a reply acts on.
#[derive(Clone)]
pub struct Held {
    pub activity: Arc<Activity>,
    pub routes: Arc<RouteTable>,
    pub jwt_rules: Arc<JwtRules>,
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    /// The traffic counters whose differences the reports carry for metering.
    pub usage: Arc<Usage>,
    /// What the reports say of this gateway to its peers, and where the replies' peers go.
    pub cancels: Arc<Cancels>,
}

/// An urgent report (an endpoint just became busy) waits at least this long after the
/// previous report, so a burst of new sessions causes one extra report, not one each.
pub const URGENT_GAP: Duration = Duration::from_millis(50);
/// A failing control plane is logged at WARN at most this often (DEBUG otherwise).
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Once stopped, the reporter sends at most this many more reports to deliver the usage left
/// (more than one only when it takes more than one batch)…
pub const FINAL_REPORTS: usize = 3;
/// …within this long in all.
pub const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// Reports activity to the control plane every `interval`, soon after an endpoint becomes
/// busy, and right after role changes were applied, until `stop`; then delivers the usage
/// left ([`FINAL_REPORTS`], [`FINAL_FLUSH`]). Runs only when a control plane is configured.
pub async fn run_reporter(
    state: Held,
    control_plane: Arc<ControlPlaneClient>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut reporter = Reporter::new(state, control_plane, interval);
    reporter.run(interval, &stop).await;
    reporter.flush_usage().await;
}

struct Reporter {
    state: Held,
    control_plane: Arc<ControlPlaneClient>,
    interval: Duration,
    last_warning: Option<Instant>,
    failing: bool,
    /// This process, to the control plane (random, chosen at start).
    gateway_id: String,
    /// The newest role change applied (the cursor of an earlier reply); `None` until the
    /// first reply that carried one.
    applied: Option<i64>,
    /// What the control plane has stored of the traffic counters, and the batch pending.
    metering: Metering,
    /// Whether a delivered report whose batch the reply did not name was logged at WARN (once
    /// per process: a control plane that does not meter never names one).
    warned_unacknowledged: bool,
}

impl Reporter {
    /// The reporting loop, until `stop`.
    async fn run(&mut self, interval: Duration, stop: &CancellationToken) {
        let activity = self.state.activity.clone();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_report: Option<Instant> = None;
        let mut again = false;
        loop {
            if again {
                // Role changes were applied: say so now, within the urgent gap.
                if let Some(at) = last_report.map(|last| last + URGENT_GAP) {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
            } else {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    () = activity.became_busy() => {
                        // Coalesce: one extra report per URGENT_GAP at most.
                        if let Some(at) = last_report.map(|last| last + URGENT_GAP) {
                            tokio::select! {
                                () = stop.cancelled() => return,
                                () = tokio::time::sleep_until(at) => {}
                            }
                        }
                    }
                    _ = tick.tick() => {}
                }
            }
            last_report = Some(Instant::now());
            tokio::select! {
                () = stop.cancelled() => return,
                sent_again = self.report() => again = sent_again,
            }
        }
    }

    /// Once stopped: reports until every count is acknowledged, at most [`FINAL_REPORTS`]
    /// times within [`FINAL_FLUSH`], and no further once a report leaves its batch pending
    /// (the control plane is down or does not meter). A report cut short when the reporter
    /// was stopped is sent again here with the same id, so it cannot count twice.
    async fn flush_usage(&mut self) {
        let flush = async {
            for _ in 0..FINAL_REPORTS {
                let now = self.state.usage.counts();
                if self.metering.pending().is_none() && self.metering.unacknowledged(&now) == 0 {
                    return;
                }
                self.report().await;
                if self.metering.pending().is_some() {
                    return;
                }
            }
        };
        if tokio::time::timeout(FINAL_FLUSH, flush).await.is_err() {
            tracing::warn!("the last usage report did not complete in time; what it carried may not have been stored");
        }
    }

    fn new(state: Held, control_plane: Arc<ControlPlaneClient>, interval: Duration) -> Reporter {
        let gateway_id = uuid::Uuid::new_v4().to_string();
        Reporter {
            state,
            control_plane,
            interval,
            last_warning: None,
            failing: false,
            metering: Metering::new(&gateway_id),
            gateway_id,
            applied: None,
            warned_unacknowledged: false,
        }
    }

    /// Sends one report and acts on the reply. Never fails: errors are logged and counted.
    /// Returns whether the next report should go at once (role changes were applied, and
    /// the control plane waits to hear it).
    async fn report(&mut self) -> bool {
        let activity = self.state.activity.clone();
        activity.clear_urgent();
        let snapshot = activity.snapshot(Instant::now());
        let now = self.state.usage.counts();
        let usage = self.metering.batch(&now).cloned();
        let cached = self.cached();
        if snapshot.endpoints.is_empty()
            && cached.is_empty()
            && !self.state.routes.holds_role_secrets()
            && usage.is_none()
            && !self.state.cancels.takes_forwarded()
        {
            // Nothing to say, and nothing cached that a role change could make stale; the
            // control plane has heard everything before.
            activity.acknowledge(snapshot.epoch);
            return false;
        }
        let carries_usage = usage.is_some();
        let report = ActivityReport {
            interval_ms: u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX),
            endpoints: snapshot.endpoints,
            cached,
            gateway_id: Some(self.gateway_id.clone()),
            role_changes_applied: self.applied,
            usage,
            peer: self.state.cancels.advert(),
        };
        match self.control_plane.report_activity(&report).await {
            Ok(reply) => {
                let arrived = std::time::Instant::now();
                activity.acknowledge(snapshot.epoch);
                if self.failing {
                    tracing::info!("activity reports reach the control plane again");
                    self.failing = false;
                }
                forget_inactive(&self.state, &reply).await;
                forget_deleted(&self.state, &reply).await;
                apply_pool_limits(&self.state, &reply, arrived);
                self.state.cancels.set_peers(&reply.peers, &self.gateway_id);
                let again = self.apply_role_changes(&reply).await;
                if carries_usage {
                    self.usage_replied(&reply);
                }
                self.count_unacknowledged(&now);
                // Counted once the reply was acted on (tests wait for it).
                self.state.metrics.activity_reports.inc(Outcome::Ok);
                again
            }
            Err(e) => {
                self.failed(&e, carries_usage);
                self.count_unacknowledged(&now);
                false
            }
        }
    }

    /// The endpoints whose routes or role secrets are cached (ids without `-pooler`, sorted),
    /// at most [`MAX_REPORTED_ENDPOINTS`].
    fn cached(&self) -> Vec<String> {
        let routes = &self.state.routes;
        let mut cached = routes.cached_endpoints(MAX_REPORTED_ENDPOINTS);
        cached.extend(routes.secret_endpoints(MAX_REPORTED_ENDPOINTS));
        cached.sort_unstable();
        cached.dedup();
        cached.truncate(MAX_REPORTED_ENDPOINTS);
        cached
    }

    /// Logs and counts a failed report.
    fn failed(&mut self, error: &ControlPlaneError, carried_usage: bool) {
        if carried_usage {
            self.state.metrics.usage_reports.inc(UsageOutcome::Failed);
        }
        self.state.metrics.activity_reports.inc(Outcome::Error);
        self.failing = true;
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= WARN_EVERY)
        {
            self.last_warning = Some(now);
            tracing::warn!(error = %error, "activity report failed; its activity and usage go with the next one");
        } else {
            tracing::debug!(error = %error, "activity report failed");
        }
    }

    /// Acts on the reply to a report that carried the pending usage batch: acknowledged when
    /// the reply names it, else it goes again with the next report.
    fn usage_replied(&mut self, reply: &ActivityReply) {
        let metrics = &self.state.metrics;
        let Some(batch) = self.metering.acknowledge(reply.usage_applied.as_deref()) else {
            metrics.usage_reports.inc(UsageOutcome::Unacknowledged);
            if self.warned_unacknowledged {
                tracing::debug!("the control plane did not acknowledge the usage batch; it goes again with the next report");
            } else {
                self.warned_unacknowledged = true;
                tracing::warn!("the control plane did not acknowledge the usage batch (does it meter?); it goes with every report until it does");
            }
            return;
        };
        metrics.usage_reports.inc(UsageOutcome::Acknowledged);
        tracing::debug!(
            report_id = batch.report_id,
            endpoints = batch.endpoints.len(),
            "usage acknowledged"
        );
        if !reply.usage_unknown.is_empty() {
            let shown = &reply.usage_unknown[..reply.usage_unknown.len().min(10)];
            tracing::debug!(
                report_id = batch.report_id,
                unknown = reply.usage_unknown.len(),
                first = ?shown,
                "the control plane dropped the counts of endpoints it does not know"
            );
        }
    }

    /// Sets the gauge of endpoints with counts not acknowledged yet.
    fn count_unacknowledged(&self, now: &Readings) {
        let endpoints = i64::try_from(self.metering.unacknowledged(now)).unwrap_or(i64::MAX);
        self.state
            .metrics
            .usage_unacknowledged_endpoints
            .set(endpoints);
    }

    /// Applies the reply's role changes (see the module docs) and adopts its cursor. Returns
    /// whether the cursor moved.
    async fn apply_role_changes(&mut self, reply: &ActivityReply) -> bool {
        let Some(cursor) = reply.role_changes_cursor else {
            // This control plane does not send role changes.
            return false;
        };
        let state = &self.state;
        // A cursor behind the one applied: the control plane lost its history (a restored
        // store); what changed since cannot be known, as when the reply is truncated.
        let lost = reply.role_changes_truncated || self.applied.is_some_and(|a| cursor < a);
        if self.applied.is_none() || lost {
            let reason = if lost {
                Invalidation::Truncated
            } else {
                Invalidation::FirstReply
            };
            forget_all_roles(state, lost).await;
            state.metrics.role_invalidations.inc(reason);
            tracing::info!(
                reason = reason.label(),
                cursor,
                "dropped every cached role secret and proof"
            );
        } else {
            for change in &reply.role_changes {
                forget_role(state, change).await;
            }
        }
        let moved = self.applied != Some(cursor);
        self.applied = Some(cursor);
        moved
    }
}

/// Drops what this gateway holds for one changed role: its cached secret, its proofs of
/// passwords (any database, the endpoint and its `-pooler`), its idle pooled connections, and
/// the endpoint's JWKS rules (a rule naming the role came or went).
async fn forget_role(state: &Held, change: &RoleChange) {
    let Some(endpoint) = EndpointId::parse(&change.endpoint_id) else {
        return;
    };
    let endpoint = endpoint.without_pooler();
    if state.routes.is_static(&endpoint) {
        // The control plane does not know static routes: not its roles to change.
        return;
    }
    state.routes.forget_role(&endpoint, &change.role).await;
    state.jwt_rules.forget(&endpoint).await;
    state.pool.passwords().forget_role(&endpoint, &change.role);
    let mut closed = state.pool.close_idle_of_role(&endpoint, &change.role);
    if let Some(pooler) = endpoint.pooler().filter(|p| !state.routes.is_static(p)) {
        closed += state.pool.close_idle_of_role(&pooler, &change.role);
    }
    state
        .metrics
        .role_invalidations
        .inc(Invalidation::RoleChange);
    tracing::info!(%endpoint, role = %change.role, change = change.id, idle_connections = closed, "role changed; dropped its cached secret, proofs and idle connections");
}

/// Drops every cached role secret and proof, and with `connections` every control-plane
/// endpoint's idle pooled connections (static routes are left alone).
async fn forget_all_roles(state: &Held, connections: bool) {
    state.routes.forget_all_roles().await;
    state.jwt_rules.forget_all();
    state.pool.passwords().forget_all();
    if connections {
        let closed = state
            .pool
            .close_idle_where(|endpoint| !state.routes.is_static(endpoint));
        tracing::info!(
            idle_connections = closed,
            "closed every control-plane endpoint's idle connections"
        );
    }
}

/// Drops the cached routes and idle pooled connections of every endpoint (and its `-pooler`)
/// the control plane says is not active, so the next client wakes it. Endpoints with static
/// routes are left alone: the control plane does not know them.
pub async fn forget_inactive(state: &Held, reply: &ActivityReply) {
    for id in &reply.inactive {
        let Some(id) = EndpointId::parse(id) else {
            continue;
        };
        if !state.routes.is_static(&id) {
            state.pool.forget_pool_cap(&id);
        }
        let pooler = EndpointId::parse(&format!("{id}{}", wake_api::POOLER_SUFFIX));
        for endpoint in std::iter::once(id).chain(pooler) {
            if state.routes.is_static(&endpoint) {
                continue;
            }
            let dropped = state.routes.forget(&endpoint).await;
            let closed = state.pool.close_idle_of(&endpoint);
            if dropped || closed > 0 {
                state.metrics.inactive_drops.inc();
                tracing::info!(%endpoint, idle_connections = closed, "endpoint is not active; dropped its cached route and idle connections");
            }
        }
    }
}

/// Drops what this gateway holds of the endpoints the control plane says were deleted: their
/// role secrets, password proofs and JWKS rules (their routes and idle pooled connections went
/// with `inactive`). Endpoints with static routes are left alone.
pub async fn forget_deleted(state: &Held, reply: &ActivityReply) {
    for id in &reply.deleted {
        let Some(endpoint) = EndpointId::parse(id).map(|e| e.without_pooler()) else {
            continue;
        };
        if state.routes.is_static(&endpoint) {
            continue;
        }
        let secrets = state.routes.forget_endpoint_roles(&endpoint).await;
        state.jwt_rules.forget(&endpoint).await;
        state.pool.passwords().forget_endpoint(&endpoint);
        state
            .metrics
            .role_invalidations
            .inc(Invalidation::EndpointDeleted);
        tracing::info!(%endpoint, secrets, "endpoint deleted; dropped its cached role secrets, proofs and JWKS rules");
    }
}

/// Applies the reply's pool caps (`pool_limits`, for endpoints without `-pooler`) to the
/// pool, as of `arrived`: a route cached before it does not undo them. Endpoints with static
/// routes are left alone.
pub fn apply_pool_limits(state: &Held, reply: &ActivityReply, arrived: std::time::Instant) {
    for limit in &reply.pool_limits {
        let Some(endpoint) = EndpointId::parse(&limit.endpoint_id) else {
            continue;
        };
        let endpoint = endpoint.without_pooler();
        if state.routes.is_static(&endpoint) {
            continue;
        }
        let cap = PoolCap {
            max_conns: limit.pool_max_conns,
            as_of: arrived,
        };
        state.pool.set_pool_cap(&endpoint, cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_testkit::FakeControlPlane;

    use futures_util::FutureExt;

    fn id(name: &str) -> EndpointId {
        EndpointId::parse(name).expect("endpoint id")
    }

    fn row(endpoint: &str, sessions: u32, in_flight: u32, idle_ms: u64) -> (String, u32, u32, u64) {
        (endpoint.to_owned(), sessions, in_flight, idle_ms)
    }

    /// A fake control plane answering every wake of `endpoints` with `10.0.0.1:5432`, and
    /// activity reports without role changes (no cursor) unless a test scripts them.
    async fn fake(endpoints: &[&str]) -> FakeControlPlane {
        let fake = FakeControlPlane::start().await;
        for endpoint in endpoints {
            fake.route(endpoint, "10.0.0.1:5432");
        }
        fake.without_role_changes();
        fake
    }

    /// Shared state whose route table has `fixed` static routes and `fake` as its control
    /// plane, and the client it uses (for the reporter).
    fn state_with(fake: &FakeControlPlane, fixed: &[&str]) -> (Held, Arc<ControlPlaneClient>) {
        let config = crate::app::config::Config::for_tests(vec![]);
        let state = crate::app::state(&config).expect("state");
        let client: Arc<ControlPlaneClient> =
            crate::control_plane::client::client_for(fake, state.metrics.clone());
        let routes = crate::control_plane::routes::RouteTable::new(
            fixed.iter().map(|r| r.parse().expect("route")),
            Some(client.clone()),
            crate::control_plane::routes::RouteCacheConfig::default(),
            state.metrics.clone(),
        );
        let held = Held {
            activity: state.activity.clone(),
            routes: Arc::new(routes),
            jwt_rules: state.jwt_rules.clone(),
            pool: state.pool.clone(),
            metrics: state.metrics.clone(),
            usage: state.usage.clone(),
            cancels: state.cancels.clone(),
        };
        (held, client)
    }

    /// The reports `fake` received, with when they arrived.
    /// The reporter running every `interval` until the returned token is cancelled.
    fn start(
        state: &Held,
        client: &Arc<ControlPlaneClient>,
        interval: Duration,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let stop = CancellationToken::new();
        let reporter = tokio::spawn(run_reporter(
            state.clone(),
            client.clone(),
            interval,
            stop.clone(),
        ));
        (stop, reporter)
    }

    fn received(fake: &FakeControlPlane) -> Vec<(Instant, ActivityReport)> {
        fake.reports()
            .into_iter()
            .map(|r| (r.at, r.report))
            .collect()
    }

    fn busy_counts(report: &ActivityReport) -> Vec<(String, u32, u32, u64)> {
        report
            .endpoints
            .iter()
            .map(|e| (e.endpoint_id.clone(), e.sessions, e.in_flight, e.idle_ms))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn new_activity_is_reported_at_once_bursts_coalesce_and_failures_are_resent() {
        let fake = fake(&[]).await;
        let (state, client) = state_with(&fake, &["db=127.0.0.1:1"]);
        let interval = Duration::from_secs(10);
        let started = Instant::now();
        let (stop, reporter) = start(&state, &client, interval);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(received(&fake).is_empty(), "nothing to report yet");

        // An endpoint becomes busy: reported at once, long before the interval.
        let session = state.activity.session(&id("db"));
        tokio::time::sleep(Duration::from_millis(1)).await;
        let reports = received(&fake);
        assert_eq!(reports.len(), 1);
        let (first_at, first) = &reports[0];
        assert_eq!(*first_at - started, Duration::from_millis(100));
        assert_eq!(first.interval_ms, 10_000);
        assert_eq!(busy_counts(first), [row("db", 1, 0, 0)]);
        assert!(first.cached.is_empty(), "static routes are not cached");

        // A burst of new activity right after: one more report, URGENT_GAP after the first.
        let burst = [
            state.activity.query(&id("a")),
            state.activity.session(&id("b-pooler")),
            state.activity.query(&id("c")),
        ];
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reports = received(&fake);
        assert_eq!(reports.len(), 2, "one report for the burst");
        assert_eq!(reports[1].0 - *first_at, URGENT_GAP);
        assert_eq!(
            busy_counts(&reports[1].1),
            [
                row("a", 0, 1, 0),
                row("b", 1, 0, 0),
                row("c", 0, 1, 0),
                row("db", 1, 0, 0)
            ]
        );

        // Everything ends; the control plane is down at the next tick, so that report is
        // sent again at the one after, with the endpoints idle for longer.
        drop(burst);
        drop(session);
        let ended = Instant::now();
        fake.fail_activity(true);
        tokio::time::sleep_until(started + interval + Duration::from_millis(1)).await;
        fake.fail_activity(false);
        tokio::time::sleep_until(started + interval * 2 + Duration::from_millis(1)).await;
        let reports = received(&fake);
        assert_eq!(reports.len(), 4, "two ticks, no urgent report for endings");
        let idle = |at: Instant| (at - ended).as_millis() as u64;
        for (at, report) in &reports[2..] {
            assert_eq!(
                busy_counts(report),
                ["a", "b", "c", "db"].map(|e| row(e, 0, 0, idle(*at)))
            );
        }
        assert_eq!(state.metrics.activity_reports.get(Outcome::Error), 1);
        // Delivered: the next tick has nothing to say and sends nothing.
        tokio::time::sleep_until(started + interval * 3 + Duration::from_millis(1)).await;
        assert_eq!(received(&fake).len(), 4);
        assert_eq!(state.metrics.activity_reports.get(Outcome::Ok), 3);
        stop.cancel();
        reporter.await.expect("reporter");
    }

    #[tokio::test]
    async fn cached_endpoints_are_reported_and_inactive_ones_forgotten() {
        let fake = fake(&["ep", "ep-pooler", "other"]).await;
        let (state, client) = state_with(&fake, &["fixed=127.0.0.1:1"]);
        for endpoint in ["ep", "ep-pooler", "other", "fixed"] {
            state.routes.resolve(&id(endpoint)).await.expect("route");
        }
        assert_eq!(fake.wakes(), 3);
        assert_eq!(
            state.routes.cached_endpoints(MAX_REPORTED_ENDPOINTS),
            ["ep", "other"],
            "without -pooler, once, and no static routes"
        );
        assert_eq!(state.routes.cached_endpoints(1).len(), 1);

        let reply = ActivityReply {
            inactive: vec!["ep".into(), "fixed".into(), "not an id".into()],
            ..ActivityReply::default()
        };
        forget_inactive(&state, &reply).await;
        assert_eq!(state.metrics.inactive_drops.get(), 2, "ep and ep-pooler");
        assert_eq!(
            state.routes.cached_endpoints(MAX_REPORTED_ENDPOINTS),
            ["other"]
        );
        // The next lookups of ep wake it again; other and the static route are untouched.
        for endpoint in ["ep", "ep-pooler", "other", "fixed"] {
            state.routes.resolve(&id(endpoint)).await.expect("route");
        }
        assert_eq!(fake.wakes(), 5);

        // Through the reporter: the reply of a report drops the routes it names.
        fake.set_inactive(&["other"]);
        let mut reporter = Reporter::new(state.clone(), client.clone(), Duration::from_secs(1));
        assert!(
            !reporter.report().await,
            "no role changes, nothing to say at once"
        );
        let reports = received(&fake);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].1.cached, ["ep", "other"]);
        assert_eq!(
            state.routes.cached_endpoints(MAX_REPORTED_ENDPOINTS),
            ["ep"]
        );
    }

    #[tokio::test]
    async fn pool_limits_reach_the_pool_and_an_inactive_endpoint_forgets_its_cap() {
        let fake = fake(&["ep", "other"]).await;
        fake.pool_max_conns("ep", Some(88));
        let (state, client) = state_with(&fake, &["fixed=127.0.0.1:1"]);
        for endpoint in ["ep", "other"] {
            state.routes.resolve(&id(endpoint)).await.expect("route");
        }
        let cap = |endpoint: &str| state.pool.remembered_pool_cap(&id(endpoint));
        let mut reporter = Reporter::new(state.clone(), client.clone(), Duration::from_secs(1));
        reporter.report().await;
        assert_eq!((cap("ep"), cap("other")), (Some(88), None));
        // The compute was resized: the next reply says so.
        fake.pool_max_conns("ep", Some(372));
        reporter.report().await;
        assert_eq!(cap("ep"), Some(372));
        // A static route is not the control plane's to cap.
        let limit = |id: &str| wake_api::proxy::PoolLimit {
            endpoint_id: id.into(),
            pool_max_conns: 1,
        };
        let reply = ActivityReply {
            pool_limits: vec![limit("fixed"), limit("not an id")],
            ..ActivityReply::default()
        };
        apply_pool_limits(&state, &reply, std::time::Instant::now());
        assert_eq!(cap("fixed"), None);
        // Suspended: its cap is forgotten with its route; the next wake says it again.
        fake.set_inactive(&["ep"]);
        reporter.report().await;
        assert_eq!(cap("ep"), None);
        assert_eq!(received(&fake).len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn only_idle_to_busy_is_urgent() {
        let activity = Activity::new();
        let busy = || activity.became_busy().now_or_never().is_some();
        assert!(!busy());
        let first = activity.session(&id("db"));
        let second = activity.query(&id("db-pooler"));
        assert!(busy(), "idle to busy");
        assert!(!busy(), "one signal for the burst");
        drop(second);
        drop(first);
        let again = activity.query(&id("db"));
        activity.clear_urgent();
        assert!(!busy(), "cleared before a report");
        drop(again);
    }

    fn role_reply(changes: &[(i64, &str, &str)], cursor: i64, truncated: bool) -> ActivityReply {
        ActivityReply {
            role_changes: changes
                .iter()
                .map(|&(id, endpoint, role)| RoleChange {
                    id,
                    endpoint_id: endpoint.into(),
                    role: role.into(),
                })
                .collect(),
            role_changes_cursor: Some(cursor),
            role_changes_truncated: truncated,
            ..ActivityReply::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn role_changes_drop_the_roles_secrets_and_are_acknowledged_at_once() {
        let fake = fake(&["ep"]).await;
        let secret = postgres_protocol::password::scram_sha_256(b"pw");
        for role in ["alice", "bob"] {
            fake.secret("ep", role, &secret);
        }
        fake.activity_replies([
            role_reply(&[], 3, false), // the first reply: drop everything
            role_reply(&[(4, "ep", "alice")], 4, false), // alice changed
            role_reply(&[], 4, false), // nothing new
            role_reply(&[], 9, true),  // too many changes to list
        ]);
        let (state, client) = state_with(&fake, &[]);
        let lookups = || fake.lookups();
        let known = |role: &'static str| {
            let state = state.clone();
            async move {
                matches!(
                    state.routes.role_secret(&id("ep-pooler"), role).await,
                    Ok(crate::control_plane::routes::RoleSecret::Known(_))
                )
            }
        };
        let pw = crate::base::endpoint::Password::new(b"pw".to_vec());
        let proof = |role: &str| crate::auth::Account {
            endpoint: id("ep-pooler"),
            database: "main".into(),
            role: role.into(),
        };
        let proven = |role: &str| state.pool.passwords().is_verified(&proof(role), &pw);
        state.routes.resolve(&id("ep")).await.expect("route");
        assert!(known("alice").await && known("bob").await);
        state.pool.passwords().remember(&proof("alice"), &pw);
        state.pool.passwords().remember(&proof("bob"), &pw);
        assert_eq!(lookups(), 2);

        let interval = Duration::from_secs(10);
        let started = Instant::now();
        let (stop, reporter) = start(&state, &client, interval);
        // The first report has applied nothing; its reply drops every secret and proof, and
        // the cursor is reported at once.
        tokio::time::sleep(Duration::from_millis(25)).await;
        assert!(!proven("alice") && !proven("bob"));
        assert!(known("alice").await && known("bob").await);
        assert_eq!(lookups(), 4);
        state.pool.passwords().remember(&proof("alice"), &pw);
        state.pool.passwords().remember(&proof("bob"), &pw);
        // The second reply names alice: her secret and proofs go, bob's stay.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!proven("alice") && proven("bob"));
        assert!(known("bob").await);
        assert_eq!(lookups(), 4, "bob's secret is still cached");
        assert!(known("alice").await);
        assert_eq!(lookups(), 5, "alice's was asked for again");
        // Nothing new: the next report waits for the interval. Then a truncated reply drops
        // everything again.
        tokio::time::sleep_until(started + interval + Duration::from_millis(100)).await;
        assert!(!proven("bob"));
        assert!(known("bob").await);
        assert_eq!(lookups(), 6);
        stop.cancel();
        reporter.await.expect("reporter");

        let reports = received(&fake);
        let ms = |at: Instant| (at - started).as_millis();
        let seen: Vec<(u128, Option<i64>)> = reports
            .iter()
            .map(|(at, r)| (ms(*at), r.role_changes_applied))
            .collect();
        assert_eq!(
            seen,
            [
                (0, None),
                (50, Some(3)),
                (100, Some(4)),
                (10_000, Some(4)),
                (10_050, Some(9)),
            ]
        );
        let ids: Vec<&str> = reports
            .iter()
            .map(|(_, r)| r.gateway_id.as_deref().expect("a gateway id"))
            .collect();
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
        assert!(uuid::Uuid::parse_str(ids[0]).is_ok());
        let invalidations = |reason| state.metrics.role_invalidations.get(reason);
        assert_eq!(
            (
                invalidations(Invalidation::FirstReply),
                invalidations(Invalidation::RoleChange),
                invalidations(Invalidation::Truncated)
            ),
            (1, 1, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cached_secret_keeps_reports_going_and_replies_without_a_cursor_change_nothing() {
        let fake = fake(&[]).await;
        fake.secret(
            "ep",
            "alice",
            &postgres_protocol::password::scram_sha_256(b"pw"),
        );
        let (state, client) = state_with(&fake, &[]);
        // A secret, and no route: the wake service must still hear from this gateway.
        state
            .routes
            .role_secret(&id("ep"), "alice")
            .await
            .expect("secret");
        assert!(state
            .routes
            .cached_endpoints(MAX_REPORTED_ENDPOINTS)
            .is_empty());
        let interval = Duration::from_secs(1);
        let (stop, reporter) = start(&state, &client, interval);
        tokio::time::sleep(interval * 3 + Duration::from_millis(10)).await;
        stop.cancel();
        reporter.await.expect("reporter");
        let reports = received(&fake);
        assert_eq!(reports.len(), 4, "one per interval");
        // This control plane sends no cursor: nothing dropped, nothing applied.
        assert!(reports
            .iter()
            .all(|(_, r)| r.role_changes_applied.is_none()));
        assert!(state.routes.holds_role_secrets());
        assert_eq!(fake.lookups(), 1);
    }

    #[tokio::test]
    async fn a_cursor_going_back_drops_everything() {
        let fake = fake(&[]).await;
        fake.secret(
            "ep",
            "alice",
            &postgres_protocol::password::scram_sha_256(b"pw"),
        );
        let (state, client) = state_with(&fake, &[]);
        let mut reporter = Reporter::new(state.clone(), client.clone(), Duration::from_secs(1));
        let cache = || async {
            state
                .routes
                .role_secret(&id("ep"), "alice")
                .await
                .expect("secret");
        };
        assert!(
            reporter
                .apply_role_changes(&role_reply(&[], 7, false))
                .await
        );
        cache().await;
        // The same cursor again: nothing to do, nothing to say at once.
        assert!(
            !reporter
                .apply_role_changes(&role_reply(&[], 7, false))
                .await
        );
        assert!(state.routes.holds_role_secrets());
        // Another endpoint's role: this one stays.
        let other = role_reply(&[(8, "other", "alice")], 8, false);
        assert!(reporter.apply_role_changes(&other).await);
        assert!(state.routes.holds_role_secrets());
        // The control plane's history restarted: everything goes.
        assert!(
            reporter
                .apply_role_changes(&role_reply(&[], 2, false))
                .await
        );
        assert!(!state.routes.holds_role_secrets());
        assert_eq!(reporter.applied, Some(2));
        assert_eq!(
            state
                .metrics
                .role_invalidations
                .get(Invalidation::Truncated),
            1
        );
    }

    /// The usage batch a report carried.
    fn batch(report: &ActivityReport) -> &wake_api::proxy::UsageReport {
        report.usage.as_ref().expect("a usage batch")
    }

    /// `(endpoint, ingress bytes, queries, sessions, connections)` of a batch.
    fn traffic(report: &ActivityReport) -> Vec<(String, u64, u64, u64, u64)> {
        batch(report)
            .endpoints
            .iter()
            .map(|e| {
                let id = e.endpoint_id.clone();
                (id, e.ingress_bytes, e.queries, e.sessions, e.connections)
            })
            .collect()
    }

    #[tokio::test]
    async fn usage_is_resent_unchanged_until_acknowledged_and_never_counted_twice() {
        let fake = fake(&[]).await;
        // A static route only: nothing cached, so only usage makes the reporter speak.
        let (state, client) = state_with(&fake, &["db=127.0.0.1:1"]);
        let mut reporter = Reporter::new(state.clone(), client.clone(), Duration::from_secs(1));
        reporter.report().await;
        assert!(received(&fake).is_empty(), "nothing to say");

        let db = state.usage.endpoint(&id("db"));
        db.add(crate::obs::usage::Direction::Ingress, 100);
        db.add_queries(2);
        let pooler = state.usage.endpoint(&id("db-pooler"));
        pooler.add_queries(3);
        pooler.add_session();
        pooler.add_connection();
        // Down: the batch is cut and fails; traffic goes on and is not added to it.
        fake.fail_activity(true);
        reporter.report().await;
        db.add_queries(10);
        reporter.report().await;
        // Back, but the reply is lost after the usage was stored; then a reply arrives.
        fake.fail_activity(false);
        fake.lose_activity_replies(true);
        reporter.report().await;
        fake.lose_activity_replies(false);
        reporter.report().await;
        // The next batch holds what came after the first cut, once.
        reporter.report().await;
        reporter.report().await;

        let reports = received(&fake);
        assert_eq!(reports.len(), 5, "the last report had nothing to say");
        let first = batch(&reports[0].1);
        assert!(first
            .report_id
            .starts_with(reports[0].1.gateway_id.as_deref().expect("an id")));
        assert!(first.report_id.ends_with("-1"), "{}", first.report_id);
        assert_eq!(traffic(&reports[0].1), [("db".into(), 100, 5, 1, 1)]);
        for (_, report) in &reports[1..4] {
            assert_eq!(batch(report), first, "resent unchanged");
        }
        let second = batch(&reports[4].1);
        assert_ne!(second.report_id, first.report_id);
        assert_eq!(traffic(&reports[4].1), [("db".into(), 0, 10, 0, 0)]);
        let stored: Vec<bool> = fake.reports().iter().map(|r| r.usage_stored).collect();
        assert_eq!(stored, [false, false, true, false, true]);

        // What the control plane stored is what the gateway counted.
        let counted = state.usage.snapshot();
        let total = &fake.usage()["db"];
        assert_eq!(
            (
                total.ingress_bytes,
                total.queries,
                total.sessions,
                total.connections
            ),
            (
                counted["db"].ingress_bytes,
                counted["db"].queries,
                counted["db"].sessions,
                counted["db"].connections
            )
        );
        assert_eq!(counted["db"].queries, 15);
        let outcome = |o| state.metrics.usage_reports.get(o);
        assert_eq!(
            (
                outcome(UsageOutcome::Failed),
                outcome(UsageOutcome::Acknowledged),
                outcome(UsageOutcome::Unacknowledged)
            ),
            (3, 2, 0)
        );
        assert_eq!(state.metrics.usage_unacknowledged_endpoints.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_batch_goes_with_every_interval_and_what_is_left_at_stop_is_delivered() {
        let fake = fake(&[]).await;
        let (state, client) = state_with(&fake, &["db=127.0.0.1:1"]);
        let interval = Duration::from_secs(1);
        let started = Instant::now();
        let (stop, reporter) = start(&state, &client, interval);
        tokio::time::sleep(Duration::from_millis(100)).await;
        state.usage.endpoint(&id("db")).add_queries(1);
        // A control plane that does not meter never names the batch: it goes every interval.
        fake.without_metering();
        tokio::time::sleep_until(started + interval * 3 + Duration::from_millis(10)).await;
        let reports = received(&fake);
        let at: Vec<u128> = reports
            .iter()
            .map(|(at, _)| (*at - started).as_millis())
            .collect();
        assert_eq!(at, [1_000, 2_000, 3_000]);
        assert!(reports
            .iter()
            .all(|(_, r)| batch(r) == batch(&reports[0].1)));
        assert_eq!(
            state
                .metrics
                .usage_reports
                .get(UsageOutcome::Unacknowledged),
            3
        );
        assert_eq!(state.metrics.usage_unacknowledged_endpoints.get(), 1);
        stop.cancel();
        reporter.await.expect("reporter");
        assert_eq!(
            received(&fake).len(),
            4,
            "one last report at stop, not more: it was not acknowledged"
        );

        // With a control plane that meters, what was counted since the last report is
        // delivered at stop, all of it.
        let fake = self::fake(&[]).await;
        let (state, client) = state_with(&fake, &["db=127.0.0.1:1"]);
        let (stop, reporter) = start(&state, &client, Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(100)).await;
        state.usage.endpoint(&id("db-pooler")).add_session();
        state.usage.endpoint(&id("db")).add_queries(7);
        stop.cancel();
        reporter.await.expect("reporter");
        let reports = received(&fake);
        assert_eq!(reports.len(), 1);
        assert_eq!(traffic(&reports[0].1), [("db".into(), 0, 7, 1, 0)]);
        assert_eq!(fake.usage()["db"].queries, 7);
        assert_eq!(
            state.metrics.usage_reports.get(UsageOutcome::Acknowledged),
            1
        );
    }

    /// Peers as the control plane lists them.
    fn peers(list: &[(&str, &str, u8)]) -> Vec<wake_api::proxy::GatewayPeer> {
        list.iter()
            .map(|&(id, address, tag)| wake_api::proxy::GatewayPeer {
                gateway_id: id.into(),
                address: address.into(),
                cancel_tag: tag,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_replica_advertises_itself_always_and_takes_its_peers_from_each_reply() {
        let fake = fake(&[]).await;
        let (mut state, client) = state_with(&fake, &[]);
        let config = crate::proxy::cancel::CancelConfig {
            max_rps_per_ip: None,
            peer_address: Some("10.0.0.1:4480".into()),
        };
        let cancels = Cancels::new(
            &config,
            Some("t"),
            state.metrics.clone(),
            Duration::from_secs(1),
        );
        state.cancels = Arc::new(cancels.expect("cancels"));
        let mut reporter = Reporter::new(state.clone(), client.clone(), Duration::from_secs(1));
        let me = reporter.gateway_id.clone();
        fake.activity_replies([
            ActivityReply {
                peers: peers(&[(&me, "10.0.0.1:4480", 1), ("b", "10.0.0.2:4480", 2)]),
                ..ActivityReply::default()
            },
            ActivityReply::default(),
        ]);
        // Nothing cached and nothing happening: it reports anyway, to stay in the others'
        // lists and learn theirs.
        reporter.report().await;
        assert_eq!(state.metrics.peers.get(), 1, "itself left out");
        reporter.report().await;
        assert_eq!(
            state.metrics.peers.get(),
            0,
            "a reply without peers empties the list"
        );
        let reports = received(&fake);
        assert_eq!(reports.len(), 2);
        let tag = state.cancels.advert().expect("advertised").cancel_tag;
        for (_, report) in &reports {
            let peer = report.peer.as_ref().expect("the peer address");
            assert_eq!(
                (peer.address.as_str(), peer.cancel_tag),
                ("10.0.0.1:4480", tag)
            );
            assert_eq!(report.gateway_id.as_deref(), Some(me.as_str()));
        }

        // A single gateway says nothing of itself, and nothing at all with nothing to say.
        let (state, client) = state_with(&fake, &[]);
        assert!(state.cancels.advert().is_none());
        Reporter::new(state, client, Duration::from_secs(1))
            .report()
            .await;
        assert_eq!(received(&fake).len(), 2);
    }

    #[tokio::test]
    async fn a_deleted_endpoint_loses_its_secrets_proofs_and_routes_a_suspended_one_only_its_route()
    {
        let fake = fake(&["gone", "asleep"]).await;
        let secret = postgres_protocol::password::scram_sha_256(b"pw");
        for endpoint in ["gone", "asleep", "unrouted"] {
            fake.secret(endpoint, "alice", &secret);
        }
        let (state, client) = state_with(&fake, &[]);
        let pw = crate::base::endpoint::Password::new(b"pw".to_vec());
        let proof = |endpoint: &str| crate::auth::Account {
            endpoint: id(endpoint),
            database: "main".into(),
            role: "alice".into(),
        };
        for endpoint in ["gone", "asleep", "unrouted"] {
            state
                .routes
                .role_secret(&id(endpoint), "alice")
                .await
                .expect("secret");
            state.pool.passwords().remember(&proof(endpoint), &pw);
        }
        for endpoint in ["gone", "asleep"] {
            state.routes.resolve(&id(endpoint)).await.expect("route");
        }
        assert_eq!(fake.lookups(), 3);
        fake.set_inactive(&["gone", "asleep"]);
        fake.activity_replies([ActivityReply {
            deleted: vec!["gone".into(), "not an id".into()],
            ..ActivityReply::default()
        }]);
        let mut reporter = Reporter::new(state.clone(), client.clone(), Duration::from_secs(1));
        reporter.report().await;
        // An endpoint known only by a cached secret is reported too (its deletion must reach
        // the secret).
        assert_eq!(received(&fake)[0].1.cached, ["asleep", "gone", "unrouted"]);
        let proven = |endpoint: &str| state.pool.passwords().is_verified(&proof(endpoint), &pw);
        assert!(!proven("gone") && proven("asleep") && proven("unrouted"));
        assert_eq!(
            state.routes.cached_endpoints(MAX_REPORTED_ENDPOINTS),
            Vec::<String>::new()
        );
        for endpoint in ["asleep", "unrouted", "gone"] {
            state
                .routes
                .role_secret(&id(endpoint), "alice")
                .await
                .expect("secret");
        }
        assert_eq!(
            fake.lookups(),
            4,
            "only the deleted endpoint's secret was asked again"
        );
        assert_eq!(
            state
                .metrics
                .role_invalidations
                .get(Invalidation::EndpointDeleted),
            1
        );
    }
}
