//! Traffic per endpoint, the raw material of metering: the bytes every session relays and the
//! request and response bodies of successful `POST /sql` queries, the queries clients ran,
//! the sessions that reached their backend and the backend connections the gateway opened.
//!
//! One set of counters per endpoint id without `-pooler` (direct and PgBouncer traffic are the
//! same endpoint), kept in memory (not as Prometheus labels, whose cardinality must stay
//! bounded). Counters only grow, from zero when the process starts. They are what
//! `proxy::reporter` reports to the control plane for metering (differences against what the
//! control plane acknowledged), and the admin listener's `/usage` serves the same counters as
//! JSON: totals since this process started.
//!
//! Hot paths take [`Usage::endpoint`] once per session or request (one short mutex hold, no
//! allocation once the endpoint is known) and then count with relaxed atomic adds.

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

/// Every endpoint's counters, keyed by the endpoint id without `-pooler`.
#[derive(Default)]
pub struct Usage {
    endpoints: Mutex<HashMap<Arc<str>, Arc<Traffic>>>,
}

/// One endpoint's counters (direct and `-pooler` together).
#[derive(Default, Debug)]
pub struct Traffic {
    ingress: AtomicU64,
    egress: AtomicU64,
    queries: AtomicU64,
    sessions: AtomicU64,
    connections: AtomicU64,
}

/// One endpoint's counters at one moment, or what they counted between two moments.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Bytes from clients: `/sql` request bodies, and what sessions sent.
    pub ingress_bytes: u64,
    /// Bytes to clients: `/sql` response bodies, and what sessions received.
    pub egress_bytes: u64,
    /// `/sql` statements sent to the backend (each of a batch), and the simple Query and
    /// Execute messages sessions sent.
    pub queries: u64,
    /// WebSocket and TCP sessions that reached their backend.
    pub sessions: u64,
    /// Connections the gateway opened (and logged in) to the endpoint's Postgres or
    /// PgBouncer; a pooled connection reused is not a new one.
    pub connections: u64,
}

impl Counts {
    /// What was counted after `earlier` (an earlier reading of the same counters).
    pub fn since(&self, earlier: &Counts) -> Counts {
        self.zip(earlier, u64::saturating_sub)
    }

    /// Both together.
    pub fn plus(&self, other: &Counts) -> Counts {
        self.zip(other, u64::saturating_add)
    }

    /// Each counter at most `max`.
    pub fn capped(&self, max: u64) -> Counts {
        self.zip(self, |value, _| value.min(max))
    }

    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }

    fn zip(&self, other: &Counts, f: impl Fn(u64, u64) -> u64) -> Counts {
        Counts {
            ingress_bytes: f(self.ingress_bytes, other.ingress_bytes),
            egress_bytes: f(self.egress_bytes, other.egress_bytes),
            queries: f(self.queries, other.queries),
            sessions: f(self.sessions, other.sessions),
            connections: f(self.connections, other.connections),
        }
    }
}

impl Traffic {
    pub fn add(&self, direction: Direction, bytes: u64) {
        let counter = match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `n` queries.
    pub fn add_queries(&self, n: u64) {
        self.queries.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a session that reached its backend.
    pub fn add_session(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a new backend connection.
    pub fn add_connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    fn counts(&self) -> Counts {
        Counts {
            ingress_bytes: self.ingress.load(Ordering::Relaxed),
            egress_bytes: self.egress.load(Ordering::Relaxed),
            queries: self.queries.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
        }
    }
}

impl Usage {
    /// The counters of `endpoint` (of its base endpoint, for a `-pooler`), created on first
    /// use. Only endpoints that exist (a session or query reached their backend) are ever
    /// counted, so the map stays as small as the set of endpoints this gateway served.
    pub fn endpoint(&self, endpoint: &EndpointId) -> Arc<Traffic> {
        let (id, _) = wake_api::split_pooler(endpoint.as_str());
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(traffic) = endpoints.get(id) {
            return traffic.clone();
        }
        endpoints.entry(Arc::from(id)).or_default().clone()
    }

    /// Every endpoint's counters now, sorted by endpoint id. The lock is held only to copy
    /// the handles; the counters are read after.
    pub fn counts(&self) -> Vec<(Arc<str>, Counts)> {
        let handles: Vec<(Arc<str>, Arc<Traffic>)> = {
            let endpoints = self
                .endpoints
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            endpoints
                .iter()
                .map(|(id, traffic)| (id.clone(), traffic.clone()))
                .collect()
        };
        let mut counts: Vec<(Arc<str>, Counts)> = handles
            .into_iter()
            .map(|(id, traffic)| (id, traffic.counts()))
            .collect();
        counts.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        counts
    }

    /// Every endpoint's totals since start, by endpoint id (admin `/usage`).
    pub fn snapshot(&self) -> BTreeMap<String, Counts> {
        self.counts()
            .into_iter()
            .map(|(id, counts)| (id.to_string(), counts))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> EndpointId {
        EndpointId::parse(name).expect("id")
    }

    #[test]
    fn counts_per_endpoint_and_direction() {
        let usage = Usage::default();
        usage.endpoint(&id("a")).add(Direction::Ingress, 10);
        usage.endpoint(&id("a")).add(Direction::Egress, 3);
        usage.endpoint(&id("b")).add(Direction::Egress, 7);
        let snapshot = usage.snapshot();
        assert_eq!(
            snapshot["a"],
            Counts {
                ingress_bytes: 10,
                egress_bytes: 3,
                ..Counts::default()
            }
        );
        assert_eq!(
            snapshot["b"],
            Counts {
                egress_bytes: 7,
                ..Counts::default()
            }
        );
    }

    #[test]
    fn pooler_traffic_is_its_endpoints() {
        let usage = Usage::default();
        let direct = usage.endpoint(&id("db"));
        let pooled = usage.endpoint(&id("DB-Pooler"));
        direct.add_queries(2);
        direct.add_session();
        pooled.add_queries(3);
        pooled.add_connection();
        pooled.add_connection();
        pooled.add(Direction::Ingress, 5);
        usage.endpoint(&id("other")).add_session();
        let counts = usage.counts();
        let ids: Vec<&str> = counts.iter().map(|(id, _)| &**id).collect();
        assert_eq!(ids, ["db", "other"], "one entry per endpoint, sorted");
        assert_eq!(
            counts[0].1,
            Counts {
                ingress_bytes: 5,
                egress_bytes: 0,
                queries: 5,
                sessions: 1,
                connections: 2,
            }
        );
        let json = serde_json::to_value(usage.snapshot()).expect("json");
        assert_eq!(
            json["db"],
            serde_json::json!({
                "ingress_bytes": 5, "egress_bytes": 0, "queries": 5, "sessions": 1,
                "connections": 2
            })
        );
    }

    #[test]
    fn differences_sums_and_caps() {
        let earlier = Counts {
            ingress_bytes: 10,
            egress_bytes: 20,
            queries: 1,
            sessions: 0,
            connections: 2,
        };
        let now = Counts {
            ingress_bytes: 15,
            egress_bytes: 20,
            queries: 4,
            sessions: 1,
            connections: 2,
        };
        let delta = now.since(&earlier);
        assert_eq!(
            delta,
            Counts {
                ingress_bytes: 5,
                egress_bytes: 0,
                queries: 3,
                sessions: 1,
                connections: 0,
            }
        );
        assert_eq!(earlier.plus(&delta), now);
        assert!(now.since(&now).is_zero());
        assert_eq!(now.capped(3).ingress_bytes, 3);
        assert_eq!(now.capped(3).sessions, 1);
    }
}
