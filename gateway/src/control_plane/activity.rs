//! Client activity per endpoint, which the control plane needs to suspend idle endpoints
//! (scale to zero) without suspending one that has clients.
//!
//! [`Activity`] counts, per endpoint id without `-pooler` (static routes included), the open
//! WebSocket/TCP sessions and the `POST /sql` requests in flight, and remembers when the last
//! one ended. Both are held by an [`ActivityGuard`] that decrements on drop, so every exit
//! (errors, panics unwinding, clients going away) is counted. The map is sharded: a session
//! or query takes one short, uncontended shard lock when it starts and one when it ends.
//! `crate::proxy::reporter` sends what it counts to the control plane.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::FutureExt;
use tokio::sync::Notify;
use tokio::time::Instant;
use wake_api::proxy::EndpointActivity;

use crate::base::endpoint::EndpointId;

/// Shards of the activity map: enough that two cores rarely meet on one lock.
const SHARDS: usize = 16;

/// Open sessions and queries in flight per endpoint.
pub struct Activity {
    shards: Box<[Mutex<HashMap<EndpointId, Entry>>]>,
    hasher: RandomState,
    /// Numbers the reports: every start and end records the number of the report that will
    /// carry it.
    epoch: AtomicU64,
    /// The number of the last report the control plane received.
    acked: AtomicU64,
    /// Signalled when an endpoint goes from idle to busy.
    urgent: Notify,
}

#[derive(Debug, Default)]
struct Entry {
    sessions: u32,
    in_flight: u32,
    /// When the last session or query ended.
    last_end: Option<Instant>,
    /// The epoch of the last start or end.
    seen: u64,
}

impl Entry {
    fn busy(&self) -> bool {
        self.sessions > 0 || self.in_flight > 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Session,
    Query,
}

/// Holds one session or query open on its endpoint; dropping it ends it.
#[must_use = "the activity ends when the guard is dropped"]
pub struct ActivityGuard {
    activity: Arc<Activity>,
    endpoint: EndpointId,
    kind: Kind,
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.activity.end(&self.endpoint, self.kind);
    }
}

/// What one report says about endpoints.
#[derive(Debug)]
pub struct Snapshot {
    /// Pass to [`Activity::acknowledge`] once the control plane has the report.
    pub epoch: u64,
    pub endpoints: Vec<EndpointActivity>,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            epoch: AtomicU64::new(1),
            acked: AtomicU64::new(0),
            urgent: Notify::new(),
        })
    }

    /// A WebSocket or TCP session on `endpoint` (`-pooler` or not), open until the guard drops.
    pub fn session(self: &Arc<Self>, endpoint: &EndpointId) -> ActivityGuard {
        self.begin(endpoint, Kind::Session)
    }

    /// A `POST /sql` request on `endpoint`, in flight until the guard drops.
    pub fn query(self: &Arc<Self>, endpoint: &EndpointId) -> ActivityGuard {
        self.begin(endpoint, Kind::Query)
    }

    fn shard(&self, endpoint: &EndpointId) -> MutexGuard<'_, HashMap<EndpointId, Entry>> {
        let index = (self.hasher.hash_one(endpoint) % SHARDS as u64) as usize;
        // Counters stay consistent even if a holder panicked: every update is one statement.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn begin(self: &Arc<Self>, endpoint: &EndpointId, kind: Kind) -> ActivityGuard {
        let endpoint = tracked(endpoint);
        let became_busy = {
            let mut shard = self.shard(&endpoint);
            let entry = shard.entry(endpoint.clone()).or_default();
            let was_busy = entry.busy();
            match kind {
                Kind::Session => entry.sessions = entry.sessions.saturating_add(1),
                Kind::Query => entry.in_flight = entry.in_flight.saturating_add(1),
            }
            // Under the shard lock, so a snapshot sees either this start or a later epoch.
            entry.seen = self.epoch.load(Ordering::Acquire);
            !was_busy
        };
        if became_busy {
            self.urgent.notify_one();
        }
        ActivityGuard {
            activity: self.clone(),
            endpoint,
            kind,
        }
    }

    fn end(&self, endpoint: &EndpointId, kind: Kind) {
        let mut shard = self.shard(endpoint);
        // The entry exists: it is only removed while nothing is open on it.
        if let Some(entry) = shard.get_mut(endpoint) {
            match kind {
                Kind::Session => entry.sessions = entry.sessions.saturating_sub(1),
                Kind::Query => entry.in_flight = entry.in_flight.saturating_sub(1),
            }
            entry.last_end = Some(Instant::now());
            entry.seen = self.epoch.load(Ordering::Acquire);
        }
    }

    /// The endpoints that are busy, or had activity the control plane has not been told
    /// about, as of `now`. Endpoints that are idle and already reported are forgotten.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        // Starts and ends from here on carry a later epoch, so none falls between reports.
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel);
        let acked = self.acked.load(Ordering::Acquire);
        let mut endpoints = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            shard.retain(|endpoint, entry| {
                let unreported = entry.seen > acked;
                if !entry.busy() && !unreported {
                    return false;
                }
                let idle_ms = match (entry.busy(), entry.last_end) {
                    (false, Some(end)) => {
                        u64::try_from(now.saturating_duration_since(end).as_millis())
                            .unwrap_or(u64::MAX)
                    }
                    _ => 0,
                };
                endpoints.push(EndpointActivity {
                    endpoint_id: endpoint.to_string(),
                    sessions: entry.sessions,
                    in_flight: entry.in_flight,
                    idle_ms,
                });
                true
            });
        }
        endpoints.sort_by(|a, b| a.endpoint_id.cmp(&b.endpoint_id));
        Snapshot { epoch, endpoints }
    }

    /// The control plane received the report made from the snapshot numbered `epoch`.
    pub fn acknowledge(&self, epoch: u64) {
        self.acked.fetch_max(epoch, Ordering::AcqRel);
    }

    /// Completes when an endpoint became busy since the last call (or [`Self::clear_urgent`]).
    pub async fn became_busy(&self) {
        self.urgent.notified().await;
    }

    /// Forgets a pending "became busy": the snapshot about to be taken includes it.
    pub fn clear_urgent(&self) {
        let _ = self.urgent.notified().now_or_never();
    }
}

/// Activity is tracked per endpoint, without `-pooler`: the pooler belongs to the endpoint.
fn tracked(endpoint: &EndpointId) -> EndpointId {
    endpoint.without_pooler()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(name: &str) -> EndpointId {
        EndpointId::parse(name).expect("endpoint id")
    }

    /// (endpoint, sessions, in_flight, idle_ms) per reported endpoint.
    fn rows(snapshot: &Snapshot) -> Vec<(String, u32, u32, u64)> {
        snapshot
            .endpoints
            .iter()
            .map(|e| (e.endpoint_id.clone(), e.sessions, e.in_flight, e.idle_ms))
            .collect()
    }

    fn row(endpoint: &str, sessions: u32, in_flight: u32, idle_ms: u64) -> (String, u32, u32, u64) {
        (endpoint.to_owned(), sessions, in_flight, idle_ms)
    }

    #[tokio::test(start_paused = true)]
    async fn guards_count_sessions_and_queries_per_endpoint_without_pooler() {
        let activity = Activity::new();
        let a = activity.session(&id("db"));
        let b = activity.session(&id("db-pooler"));
        let q = activity.query(&id("db"));
        let other = activity.query(&id("other"));
        let now = Instant::now();
        assert_eq!(
            rows(&activity.snapshot(now)),
            [row("db", 2, 1, 0), row("other", 0, 1, 0)]
        );
        drop((a, q, other));
        tokio::time::advance(Duration::from_millis(700)).await;
        let snapshot = activity.snapshot(Instant::now());
        assert_eq!(
            rows(&snapshot),
            [row("db", 1, 0, 0), row("other", 0, 0, 700)],
            "busy endpoints say 0; idle ones how long ago the last activity ended"
        );
        drop(b);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_ms_grows_until_the_control_plane_has_the_report() {
        let activity = Activity::new();
        drop(activity.query(&id("db")));
        tokio::time::advance(Duration::from_millis(100)).await;
        let first = activity.snapshot(Instant::now());
        assert_eq!(rows(&first), [row("db", 0, 0, 100)]);
        // Not acknowledged (the report failed): the next report carries it again, older.
        tokio::time::advance(Duration::from_millis(400)).await;
        let second = activity.snapshot(Instant::now());
        assert_eq!(rows(&second), [row("db", 0, 0, 500)]);
        activity.acknowledge(second.epoch);
        // Delivered and idle since: no longer reported, and forgotten.
        let third = activity.snapshot(Instant::now());
        assert!(third.endpoints.is_empty(), "{third:?}");
        assert!(activity
            .shards
            .iter()
            .all(|s| s.lock().expect("lock").is_empty()));
        // New activity after an acknowledged report is reported again.
        drop(activity.session(&id("db")));
        assert_eq!(
            rows(&activity.snapshot(Instant::now())),
            [row("db", 0, 0, 0)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_end_racing_a_report_is_not_lost() {
        let activity = Activity::new();
        let guard = activity.session(&id("db"));
        let snapshot = activity.snapshot(Instant::now());
        assert_eq!(rows(&snapshot), [row("db", 1, 0, 0)]);
        // The session ends after the snapshot was taken, before its report is acknowledged.
        drop(guard);
        activity.acknowledge(snapshot.epoch);
        tokio::time::advance(Duration::from_millis(30)).await;
        assert_eq!(
            rows(&activity.snapshot(Instant::now())),
            [row("db", 0, 0, 30)]
        );
    }

    #[test]
    fn guards_end_on_panic() {
        let activity = Activity::new();
        let inner = activity.clone();
        let panicked = std::thread::spawn(move || {
            let _guard = inner.query(&id("db"));
            panic!("the request handler failed");
        })
        .join();
        assert!(panicked.is_err());
        let snapshot = activity.snapshot(Instant::now());
        assert_eq!(snapshot.endpoints.len(), 1);
        assert_eq!(
            (
                snapshot.endpoints[0].sessions,
                snapshot.endpoints[0].in_flight
            ),
            (0, 0)
        );
    }
}
