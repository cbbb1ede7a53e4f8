//! The autoscaler (leader only): every interval, each active endpoint that may change size is
//! sampled (CPU and memory of its compute, PgBouncer's clients) without waking or waiting for
//! anything, its [`Policy`] decides, and a decision to move goes to
//! [`Computes::autoscale`], which applies it live and records it with its reason.
//!
//! CPU is a rate: the compute's CPU time between two samples over the wall time between them,
//! in cores. The first sample of an endpoint (or after its compute restarted) has no rate, so
//! it never scales down; the policy holds the rest of the rules ([`crate::autoscale`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wake_api::admin::EndpointState;

use crate::autoscale::policy::{Action, Policy, Signals};
use crate::compute::ComputeLoad;
use crate::config::AutoscaleConfig;
use crate::lifecycle::{stored_cu, stored_range, Computes};
use crate::store::EndpointRow;

/// The longest a sample of one compute may take: a stuck compute must not hold the others.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the autoscaler keeps per endpoint between samples.
struct Tracked {
    policy: Policy,
    /// The previous sample's time and cumulative CPU seconds.
    last_cpu: Option<(Instant, f64)>,
}

/// Runs until `stop` fires.
pub async fn run(computes: Arc<Computes>, config: AutoscaleConfig, stop: CancellationToken) {
    let mut tracked: HashMap<String, Tracked> = HashMap::new();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match computes.store().endpoints().await {
            Ok(rows) => round(&computes, &config, &mut tracked, &rows).await,
            Err(e) => tracing::warn!(error = %e, "autoscaler could not list endpoints"),
        }
    }
}

/// One pass over every endpoint.
async fn round(
    computes: &Computes,
    config: &AutoscaleConfig,
    tracked: &mut HashMap<String, Tracked>,
    rows: &[EndpointRow],
) {
    let metrics = &computes.metrics().autoscale;
    let active: Vec<&EndpointRow> = rows
        .iter()
        .filter(|r| r.state == EndpointState::Active && r.operation.is_none())
        .collect();
    metrics
        .active_cu
        .set(active.iter().map(|r| r.current_cu).sum());
    let ids: HashSet<&str> = active.iter().map(|r| r.id.as_str()).collect();
    tracked.retain(|id, _| ids.contains(id.as_str()));
    for row in active {
        let range = stored_range(row);
        let current = stored_cu(row.current_cu);
        if range.is_fixed() && current == range.min() {
            tracked.remove(&row.id);
            continue;
        }
        let entry = tracked.entry(row.id.clone()).or_insert_with(|| Tracked {
            policy: Policy::new(config.cooldown),
            last_cpu: None,
        });
        let spec = Computes::spec(row);
        let load = match tokio::time::timeout(SAMPLE_TIMEOUT, computes.driver().load(&spec)).await {
            Ok(Ok(load)) => load,
            Ok(Err(e)) => {
                metrics.sample_errors.inc();
                tracing::debug!(endpoint = %row.id, error = %e, "autoscaler sample failed");
                ComputeLoad::default()
            }
            Err(_) => {
                metrics.sample_errors.inc();
                ComputeLoad::default()
            }
        };
        let now = Instant::now();
        let signals = signals(&mut entry.last_cpu, now, &load);
        let decision = entry.policy.decide(now, current, range, &signals);
        let (label, to) = match decision.action {
            Action::Stay => ("stay", None),
            Action::Up(to) => ("up", Some(to)),
            Action::Down(to) => ("down", Some(to)),
        };
        metrics.decisions.with_label_values(&[label]).inc();
        let Some(to) = to else { continue };
        match computes.autoscale(&row.id, to, decision.reason).await {
            Ok(Some(_)) => {}
            Ok(None) => tracing::debug!(endpoint = %row.id, "busy; resize left for the next round"),
            Err(e) => tracing::warn!(endpoint = %row.id, error = %e, "resize failed"),
        }
    }
}

/// The policy's signals from a load sample, with the CPU rate since the previous one.
fn signals(last_cpu: &mut Option<(Instant, f64)>, now: Instant, load: &ComputeLoad) -> Signals {
    let cpu_cores = match (load.cpu_seconds, *last_cpu) {
        (Some(total), Some((then, before))) if total >= before => {
            let wall = now.saturating_duration_since(then).as_secs_f64();
            (wall > 0.0).then(|| (total - before) / wall)
        }
        _ => None,
    };
    *last_cpu = load.cpu_seconds.map(|total| (now, total));
    let clients = load
        .pooler
        .map(|p| p.clients_active.saturating_add(p.clients_waiting));
    Signals {
        cpu_cores,
        memory_bytes: load.memory_bytes,
        client_connections: clients.map(|c| u32::try_from(c).unwrap_or(u32::MAX)),
        pooler_waiting_clients: load
            .pooler
            .map(|p| u32::try_from(p.clients_waiting).unwrap_or(u32::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::PoolerStats;

    #[test]
    fn cpu_is_a_rate_between_samples() {
        let start = Instant::now();
        let mut last = None;
        let load = |cpu: f64| ComputeLoad {
            cpu_seconds: Some(cpu),
            memory_bytes: Some(1 << 20),
            pooler: Some(PoolerStats {
                clients_waiting: 2,
                clients_active: 3,
                ..PoolerStats::default()
            }),
        };
        let first = signals(&mut last, start, &load(10.0));
        assert_eq!(first.cpu_cores, None, "no rate from one sample");
        assert_eq!(first.client_connections, Some(5));
        assert_eq!(first.pooler_waiting_clients, Some(2));
        let second = signals(&mut last, start + Duration::from_secs(2), &load(11.0));
        assert_eq!(second.cpu_cores, Some(0.5));
        // A restarted compute's counter goes back: no rate, never a negative one.
        let third = signals(&mut last, start + Duration::from_secs(4), &load(1.0));
        assert_eq!(third.cpu_cores, None);
        let missing = signals(
            &mut last,
            start + Duration::from_secs(6),
            &ComputeLoad::default(),
        );
        assert_eq!(missing, Signals::default());
    }
}
