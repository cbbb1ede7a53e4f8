//! Usage delivery, the gateway's side of metering: what of the traffic counters
//! (`obs::usage`) the control plane has stored, and the batch of counts the activity reports
//! carry until it has. At-least-once delivery, applied exactly once: the control plane applies
//! a report id once, so a batch sent again is never counted twice.
//!
//! - Per endpoint, [`Metering`] keeps what the control plane acknowledged: a reading of the
//!   cumulative counters, advanced by each acknowledged batch.
//! - When no batch is pending and counters moved, the next report cuts one: the id
//!   `<gateway_id>-<seq>` (`seq` counts from 1 in this process) and, for each endpoint whose
//!   counters moved, current − acknowledged. A batch holds at most
//!   [`MAX_REPORTED_ENDPOINTS`] endpoints, taking turns from where the previous one stopped
//!   (the rest waits for the next batch), and each counter at most [`MAX_USAGE_COUNTER`]
//!   (the rest, too).
//! - Every report carries the pending batch, the same id and the same values, until a reply's
//!   `usage_applied` names it; then its counts are acknowledged, and the next report cuts the
//!   next batch from whatever was counted meanwhile.
//! - Counts go on accumulating in the live counters while a batch is pending: however long
//!   the control plane is away, this holds one reading per endpoint and one batch, and loses
//!   nothing.
//!
//! What a gateway loses when it dies without reporting (SIGKILL, a crash, its machine gone):
//! what it counted since its last acknowledged batch, normally at most one report interval,
//! and during a control-plane outage the outage's traffic. On SIGTERM the reporter delivers
//! what is left once the drain is over (`proxy::reporter`).

use std::collections::HashMap;
use std::sync::Arc;

use wake_api::proxy::{EndpointTraffic, UsageReport, MAX_REPORTED_ENDPOINTS, MAX_USAGE_COUNTER};

use crate::obs::usage::Counts;

/// Every endpoint's counters at one moment, sorted by endpoint id (`obs::usage::Usage::counts`).
pub type Readings = [(Arc<str>, Counts)];

/// The acknowledged readings and the pending batch (see the module docs).
pub struct Metering {
    gateway_id: String,
    /// The sequence number of the last batch cut.
    seq: u64,
    /// At most this many endpoints per batch.
    max_endpoints: usize,
    /// Per endpoint, the counts the control plane has stored.
    acknowledged: HashMap<Arc<str>, Counts>,
    /// The batch every report carries until a reply names it.
    pending: Option<UsageReport>,
    /// The last endpoint of the last batch: the next one starts after it.
    resume_after: Option<Arc<str>>,
}

impl Metering {
    /// Batches with ids `<gateway_id>-<seq>` of at most [`MAX_REPORTED_ENDPOINTS`] endpoints.
    pub fn new(gateway_id: &str) -> Metering {
        Metering::with_max_endpoints(gateway_id, MAX_REPORTED_ENDPOINTS)
    }

    fn with_max_endpoints(gateway_id: &str, max_endpoints: usize) -> Metering {
        Metering {
            gateway_id: gateway_id.to_owned(),
            seq: 0,
            max_endpoints: max_endpoints.max(1),
            acknowledged: HashMap::new(),
            pending: None,
            resume_after: None,
        }
    }

    /// The batch the next report carries: the pending one, or a new one cut from `now` when
    /// counters moved since what was acknowledged. `None`: nothing to deliver.
    pub fn batch(&mut self, now: &Readings) -> Option<&UsageReport> {
        if self.pending.is_none() {
            self.pending = self.cut(now);
        }
        self.pending.as_ref()
    }

    /// The batch sent and not acknowledged yet, if any.
    pub fn pending(&self) -> Option<&UsageReport> {
        self.pending.as_ref()
    }

    /// Acts on `usage_applied` of a reply to a report that carried the pending batch: when it
    /// names the batch, its counts are acknowledged and it is returned.
    pub fn acknowledge(&mut self, applied: Option<&str>) -> Option<UsageReport> {
        let named = self
            .pending
            .as_ref()
            .is_some_and(|batch| applied == Some(batch.report_id.as_str()));
        if !named {
            return None;
        }
        let batch = self.pending.take()?;
        for entry in &batch.endpoints {
            let stored = counts_of(entry);
            match self.acknowledged.get_mut(entry.endpoint_id.as_str()) {
                Some(acknowledged) => *acknowledged = acknowledged.plus(&stored),
                None => {
                    self.acknowledged
                        .insert(Arc::from(entry.endpoint_id.as_str()), stored);
                }
            }
        }
        Some(batch)
    }

    /// How many endpoints of `now` have counts the control plane has not acknowledged.
    pub fn unacknowledged(&self, now: &Readings) -> usize {
        now.iter()
            .filter(|(id, counts)| !self.unstored(id, counts).is_zero())
            .count()
    }

    /// What of `counts` (the counters of `id` now) the control plane has not stored.
    fn unstored(&self, id: &str, counts: &Counts) -> Counts {
        match self.acknowledged.get(id) {
            Some(acknowledged) => counts.since(acknowledged),
            None => *counts,
        }
    }

    /// A new batch of what `now` holds beyond the acknowledged counts, starting after the
    /// endpoint the previous batch ended with.
    fn cut(&mut self, now: &Readings) -> Option<UsageReport> {
        let start = match &self.resume_after {
            Some(after) => now.partition_point(|(id, _)| **id <= **after),
            None => 0,
        };
        let (before, after) = now.split_at(start);
        let mut endpoints = Vec::new();
        let mut last = None;
        for (id, counts) in after.iter().chain(before) {
            if endpoints.len() == self.max_endpoints {
                break;
            }
            let delta = self.unstored(id, counts).capped(MAX_USAGE_COUNTER);
            if delta.is_zero() {
                continue;
            }
            endpoints.push(traffic(id, &delta));
            last = Some(id);
        }
        self.resume_after = Some(last?.clone());
        self.seq += 1;
        Some(UsageReport {
            report_id: format!("{}-{}", self.gateway_id, self.seq),
            endpoints,
        })
    }
}

fn traffic(id: &str, counts: &Counts) -> EndpointTraffic {
    EndpointTraffic {
        endpoint_id: id.to_owned(),
        ingress_bytes: counts.ingress_bytes,
        egress_bytes: counts.egress_bytes,
        queries: counts.queries,
        sessions: counts.sessions,
        connections: counts.connections,
    }
}

fn counts_of(entry: &EndpointTraffic) -> Counts {
    Counts {
        ingress_bytes: entry.ingress_bytes,
        egress_bytes: entry.egress_bytes,
        queries: entry.queries,
        sessions: entry.sessions,
        connections: entry.connections,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::endpoint::EndpointId;
    use crate::obs::usage::{Direction, Usage};

    fn id(name: &str) -> EndpointId {
        EndpointId::parse(name).expect("endpoint id")
    }

    /// `(endpoint, queries)` of a batch.
    fn queries(batch: &UsageReport) -> Vec<(String, u64)> {
        batch
            .endpoints
            .iter()
            .map(|e| (e.endpoint_id.clone(), e.queries))
            .collect()
    }

    fn row(endpoint: &str, queries: u64) -> (String, u64) {
        (endpoint.to_owned(), queries)
    }

    #[test]
    fn a_batch_is_resent_unchanged_until_named_and_then_only_new_counts_follow() {
        let usage = Usage::default();
        let mut metering = Metering::new("gw");
        assert!(metering.batch(&usage.counts()).is_none(), "nothing counted");
        let a = usage.endpoint(&id("a"));
        a.add_queries(3);
        a.add(Direction::Ingress, 100);
        usage.endpoint(&id("b-pooler")).add_session();

        let first = metering.batch(&usage.counts()).expect("a batch").clone();
        assert_eq!(first.report_id, "gw-1");
        assert_eq!(queries(&first), [row("a", 3), row("b", 0)]);
        assert_eq!(first.endpoints[0].ingress_bytes, 100);
        assert_eq!(first.endpoints[1].sessions, 1);

        // More traffic, failed or unanswered deliveries: the same batch, whatever happened.
        a.add_queries(2);
        usage.endpoint(&id("c")).add_connection();
        assert_eq!(metering.acknowledge(None), None);
        assert_eq!(metering.acknowledge(Some("gw-0")), None, "another id");
        assert_eq!(metering.batch(&usage.counts()), Some(&first));
        assert_eq!(metering.unacknowledged(&usage.counts()), 3);

        // Named: acknowledged, and the next batch holds only what came after the cut.
        assert_eq!(metering.acknowledge(Some("gw-1")), Some(first));
        assert_eq!(metering.pending(), None);
        assert_eq!(metering.unacknowledged(&usage.counts()), 2, "a and c");
        let second = metering.batch(&usage.counts()).expect("a batch").clone();
        assert_eq!(second.report_id, "gw-2");
        // (Starting after the endpoint the previous batch ended with.)
        assert_eq!(queries(&second), [row("c", 0), row("a", 2)]);
        assert_eq!(second.endpoints[0].connections, 1);
        assert_eq!(second.endpoints[1].ingress_bytes, 0);
        assert!(metering.acknowledge(Some("gw-2")).is_some());
        assert_eq!(metering.unacknowledged(&usage.counts()), 0);
        assert!(metering.batch(&usage.counts()).is_none(), "nothing new");

        // Everything delivered adds up to the counters, nothing twice.
        usage.endpoint(&id("a")).add_queries(1);
        let third = metering.batch(&usage.counts()).expect("a batch").clone();
        assert_eq!(
            (third.report_id.as_str(), queries(&third)),
            ("gw-3", vec![row("a", 1)])
        );
    }

    #[test]
    fn batches_hold_at_most_the_cap_and_take_turns() {
        let usage = Usage::default();
        let mut metering = Metering::with_max_endpoints("gw", 2);
        for name in ["a", "b", "c", "d", "e"] {
            usage.endpoint(&id(name)).add_queries(1);
        }
        let deliver = |metering: &mut Metering| {
            let batch = metering.batch(&usage.counts()).expect("a batch").clone();
            let id = batch.report_id.clone();
            assert!(metering.acknowledge(Some(&id)).is_some());
            (id, queries(&batch))
        };
        assert_eq!(
            deliver(&mut metering),
            ("gw-1".into(), vec![row("a", 1), row("b", 1)])
        );
        // `a` moves again, but `c` and `d` have waited longer: their turn first.
        usage.endpoint(&id("a")).add_queries(5);
        assert_eq!(
            deliver(&mut metering),
            ("gw-2".into(), vec![row("c", 1), row("d", 1)])
        );
        assert_eq!(
            deliver(&mut metering),
            ("gw-3".into(), vec![row("e", 1), row("a", 5)]),
            "wrapping around"
        );
        assert!(metering.batch(&usage.counts()).is_none());
    }

    #[test]
    fn the_production_cap_is_the_wire_limit() {
        let usage = Usage::default();
        for n in 0..=MAX_REPORTED_ENDPOINTS {
            usage.endpoint(&id(&format!("e{n}"))).add_session();
        }
        let mut metering = Metering::new("gw");
        let now = usage.counts();
        let first = metering.batch(&now).expect("a batch").clone();
        assert_eq!(first.endpoints.len(), MAX_REPORTED_ENDPOINTS);
        assert!(metering.acknowledge(Some(&first.report_id)).is_some());
        let rest = metering.batch(&now).expect("the rest");
        assert_eq!(rest.endpoints.len(), 1);
        let reported: std::collections::HashSet<&str> = first
            .endpoints
            .iter()
            .chain(&rest.endpoints)
            .map(|e| e.endpoint_id.as_str())
            .collect();
        assert_eq!(reported.len(), MAX_REPORTED_ENDPOINTS + 1, "each once");
    }

    #[test]
    fn counts_over_the_wire_maximum_go_in_parts() {
        let usage = Usage::default();
        let a = usage.endpoint(&id("a"));
        a.add(Direction::Egress, MAX_USAGE_COUNTER + 7);
        a.add_queries(2);
        let mut metering = Metering::new("gw");
        let first = metering.batch(&usage.counts()).expect("a batch").clone();
        assert_eq!(first.endpoints[0].egress_bytes, MAX_USAGE_COUNTER);
        assert_eq!(first.endpoints[0].queries, 2);
        assert!(metering.acknowledge(Some("gw-1")).is_some());
        let second = metering.batch(&usage.counts()).expect("the rest");
        assert_eq!(second.endpoints[0].egress_bytes, 7);
        assert_eq!(second.endpoints[0].queries, 0);
    }
}
