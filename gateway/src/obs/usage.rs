//! Traffic per endpoint and direction, the raw material of metering: every byte a session
//! relays, and the request and response bodies of successful `POST /sql` queries. Kept in memory (not as
//! Prometheus labels, whose cardinality must stay bounded) and served as JSON on the admin
//! listener's `/usage`. Counters only grow; a consumer takes differences between reads.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::base::endpoint::EndpointId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From clients towards Postgres.
    Ingress,
    /// From Postgres to clients.
    Egress,
}

#[derive(Default)]
pub struct Usage {
    endpoints: Mutex<HashMap<EndpointId, Arc<Traffic>>>,
}

/// Bytes an endpoint's clients sent (ingress) and received (egress).
#[derive(Default, Debug)]
pub struct Traffic {
    ingress: AtomicU64,
    egress: AtomicU64,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct TrafficSnapshot {
    pub ingress_bytes: u64,
    pub egress_bytes: u64,
}

impl Traffic {
    pub fn add(&self, direction: Direction, bytes: u64) {
        let counter = match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }

    fn snapshot(&self) -> TrafficSnapshot {
        TrafficSnapshot {
            ingress_bytes: self.ingress.load(Ordering::Relaxed),
            egress_bytes: self.egress.load(Ordering::Relaxed),
        }
    }
}

impl Usage {
    /// The counters of `endpoint`, created on first use. Only endpoints that exist (a session
    /// or query reached their backend) are ever counted, so the map stays small.
    pub fn endpoint(&self, endpoint: &EndpointId) -> Arc<Traffic> {
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        endpoints.entry(endpoint.clone()).or_default().clone()
    }

    /// Every endpoint's totals so far, sorted by endpoint.
    pub fn snapshot(&self) -> BTreeMap<String, TrafficSnapshot> {
        let endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        endpoints
            .iter()
            .map(|(id, traffic)| (id.to_string(), traffic.snapshot()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_endpoint_and_direction() {
        let usage = Usage::default();
        let a = EndpointId::parse("a").expect("id");
        let b = EndpointId::parse("b").expect("id");
        usage.endpoint(&a).add(Direction::Ingress, 10);
        usage.endpoint(&a).add(Direction::Egress, 3);
        usage.endpoint(&b).add(Direction::Egress, 7);
        let snapshot = usage.snapshot();
        assert_eq!(
            snapshot["a"],
            TrafficSnapshot {
                ingress_bytes: 10,
                egress_bytes: 3
            }
        );
        assert_eq!(
            snapshot["b"],
            TrafficSnapshot {
                ingress_bytes: 0,
                egress_bytes: 7
            }
        );
    }
}
