//! Cancel keys. A client never sees a backend's own BackendKeyData: each session gets a key the
//! gateway made up, and a CancelRequest (on a new TCP connection or WebSocket) is forwarded only
//! when both halves of such a key match a live session. The secret is compared in constant
//! time, so a CancelRequest can reach no query but the one whose key it carries.
//!
//! Several replicas. Behind a load balancer the CancelRequest (a new connection) may reach
//! another gateway than the session's. A key names its gateway: bits 23 to 30 of its process
//! id are the gateway's cancel tag (random per process, [`CancelMap::tag`]), the 23 bits below
//! and the 32-bit secret are random. A gateway that does not hold a key forwards it, once, to
//! the peers with the key's tag ([`peers`]: the other live gateways, from the control plane's
//! activity replies), over `POST /internal/cancel` on their admin listeners; a peer looks the
//! key up among its own sessions exactly as here and never forwards it again. Nothing is
//! written per session anywhere: a session starts as fast as with one replica, and a cancel
//! costs one extra hop only when it lands on another replica.
//!
//! Every CancelRequest is first charged to its client's address ([`CancelLimits`], here and
//! again on the peer it is forwarded to), so the internal endpoint, which also takes only
//! requests signed with the key the gateways share, lets nobody guess keys faster than the
//! public CancelRequest does.

mod peers;

pub use peers::{PeerKey, Peers, PEER_CANCEL_PATH};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use subtle::ConstantTimeEq;
use wake_api::proxy::{GatewayPeer, PeerAddress, PeerCancel};

use crate::base::limits::{CancelLimits, Limit};
use crate::compute::CancelKey;
use crate::obs::labels::{CancelOutcome, PeerCancelOutcome};
use crate::obs::metrics::Metrics;

/// `--peer-addr auto`: the gateway's address as seen from the control plane's network, found
/// at start (`app::serve`).
pub const AUTO_PEER_ADDRESS: &str = "auto";

/// Where a key's tag sits in its process id (bits 23 to 30; the process id stays positive).
const TAG_SHIFT: u32 = 23;
/// The random bits of a process id below the tag.
const LOW_BITS: i32 = (1 << TAG_SHIFT) - 1;

/// The tag of the gateway that issued `process_id`; `None` for a process id no gateway issues
/// (zero or negative).
pub fn tag_of(process_id: i32) -> Option<u8> {
    if process_id <= 0 {
        return None;
    }
    u8::try_from(process_id >> TAG_SHIFT).ok()
}

pub struct CancelMap {
    tag: u8,
    sessions: Mutex<HashMap<i32, Entry>>,
}

struct Entry {
    secret_key: i32,
    target: CancelKey,
}

/// A live session's key; dropping it retires the key.
pub struct Registration {
    map: Arc<CancelMap>,
    pub process_id: i32,
    pub secret_key: i32,
}

impl CancelMap {
    /// A map whose keys carry `tag`.
    pub fn new(tag: u8) -> Self {
        CancelMap {
            tag,
            sessions: Mutex::default(),
        }
    }

    /// The tag in every process id this map issues.
    pub fn tag(&self) -> u8 {
        self.tag
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<i32, Entry>> {
        // The map holds plain data; a panic elsewhere cannot leave an entry half-written.
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Issues a fresh key for a session whose backend cancels through `target`.
    pub fn register(self: &Arc<Self>, target: CancelKey) -> Registration {
        let mut rng = rand::thread_rng();
        let secret_key: i32 = rng.gen();
        let tag = i32::from(self.tag) << TAG_SHIFT;
        let mut sessions = self.sessions();
        let process_id = loop {
            let candidate = tag | rng.gen_range(1..=LOW_BITS);
            if !sessions.contains_key(&candidate) {
                break candidate;
            }
        };
        sessions.insert(process_id, Entry { secret_key, target });
        Registration {
            map: self.clone(),
            process_id,
            secret_key,
        }
    }

    /// The backend to cancel for a client's key, if the key belongs to a live session.
    pub fn lookup(&self, process_id: i32, secret_key: i32) -> Option<CancelKey> {
        let sessions = self.sessions();
        let entry = sessions.get(&process_id)?;
        let matches: bool = entry
            .secret_key
            .to_be_bytes()
            .ct_eq(&secret_key.to_be_bytes())
            .into();
        matches.then_some(entry.target)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sessions().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.map.sessions().remove(&self.process_id);
    }
}

/// How CancelRequests are limited and where peers reach this gateway (from the command line).
#[derive(Clone, Debug, Default)]
pub struct CancelConfig {
    /// CancelRequests per second per client address; `None`: unlimited.
    pub max_rps_per_ip: Option<u32>,
    /// `host:port` at which the other gateways reach this one's admin listener ([`AUTO_PEER_ADDRESS`]
    /// until resolved at start); `None`: it takes no forwarded cancel requests (it still
    /// forwards to peers that do).
    pub peer_address: Option<String>,
}

/// What a forwarded cancel request got (see [`Cancels::peer_cancel`]). `T`: whether a live
/// session had the key (its backend was sent the cancel); on the way there, which backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerAnswer<T = bool> {
    /// Looked up.
    Cancelled(T),
    /// Not signed with the peer key.
    Unauthorized,
    /// Over the client's cancel rate.
    RateLimited,
    /// This gateway takes no forwarded cancel requests.
    NotTaken,
    /// Not a forwarded cancel request (the body is not a [`PeerCancel`]).
    Invalid,
}

/// Every cancel key of this gateway, the cancel rate limit, and the peers CancelRequests for
/// other gateways' keys are forwarded to.
pub struct Cancels {
    map: Arc<CancelMap>,
    limits: CancelLimits,
    peers: Peers,
    metrics: Arc<Metrics>,
    /// How long sending a cancel to a backend may take.
    backend_timeout: Duration,
}

/// A forwarded request, looked up: the backend to cancel, if a session had the key.
type PeerLookup = PeerAnswer<Option<CancelKey>>;

impl From<PeerLookup> for PeerAnswer {
    fn from(lookup: PeerLookup) -> PeerAnswer {
        match lookup {
            PeerAnswer::Cancelled(target) => PeerAnswer::Cancelled(target.is_some()),
            PeerAnswer::Unauthorized => PeerAnswer::Unauthorized,
            PeerAnswer::RateLimited => PeerAnswer::RateLimited,
            PeerAnswer::NotTaken => PeerAnswer::NotTaken,
            PeerAnswer::Invalid => PeerAnswer::Invalid,
        }
    }
}

impl Cancels {
    /// Keys with a random tag; `token` (the control-plane token) signs forwarded requests.
    pub fn new(
        config: &CancelConfig,
        token: Option<&str>,
        metrics: Arc<Metrics>,
        backend_timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let map = Arc::new(CancelMap::new(rand::thread_rng().gen()));
        let own = config.peer_address.clone().map(|address| PeerAddress {
            address,
            cancel_tag: map.tag(),
        });
        Ok(Cancels {
            limits: CancelLimits::new(config.max_rps_per_ip),
            peers: Peers::new(own, token.map(PeerKey::derive))?,
            map,
            metrics,
            backend_timeout,
        })
    }

    /// Issues a fresh key for a session whose backend cancels through `target`.
    pub fn register(&self, target: CancelKey) -> Registration {
        self.map.register(target)
    }

    /// What this gateway's activity reports say of it to the others (`None`: it takes no
    /// forwarded cancel requests).
    pub fn advert(&self) -> Option<PeerAddress> {
        self.peers.own().cloned()
    }

    /// Whether this gateway takes forwarded cancel requests.
    pub fn takes_forwarded(&self) -> bool {
        self.peers.own().is_some()
    }

    /// The other gateways, as the control plane's latest activity reply lists them
    /// (`own_id` is this gateway's id in its reports).
    pub fn set_peers(&self, peers: &[GatewayPeer], own_id: &str) {
        let known = self.peers.set(peers, own_id);
        self.metrics
            .peers
            .set(i64::try_from(known).unwrap_or(i64::MAX));
    }

    /// A client's CancelRequest (from `client`): sent to the session's backend when this
    /// gateway holds the key, else forwarded to the peers with its tag. Counted.
    pub async fn cancel(&self, process_id: i32, secret_key: i32, client: IpAddr) {
        let (outcome, target) = self.cancel_outcome(process_id, secret_key, client).await;
        // Counted before the backend hears of it: a client whose query ends sees the count.
        self.metrics.cancel_requests.inc(outcome);
        if let Some(target) = target {
            self.cancel_backend(target).await;
        }
        match outcome {
            CancelOutcome::NoMatch | CancelOutcome::PeerNoMatch => {
                tracing::debug!(outcome = ?outcome, "cancel request for an unknown key");
            }
            CancelOutcome::RateLimited => {
                tracing::debug!(%client, "cancel request over the client's rate");
            }
            _ => {}
        }
    }

    /// What becomes of a client's CancelRequest, and the backend to cancel when this gateway
    /// holds the key (forwarded to peers here otherwise).
    async fn cancel_outcome(
        &self,
        process_id: i32,
        secret_key: i32,
        client: IpAddr,
    ) -> (CancelOutcome, Option<CancelKey>) {
        if !self.limits.admit(client) {
            self.metrics.limit_hit(Limit::CancelRate);
            return (CancelOutcome::RateLimited, None);
        }
        if let Some(target) = self.map.lookup(process_id, secret_key) {
            return (CancelOutcome::Forwarded, Some(target));
        }
        let request = PeerCancel {
            process_id,
            secret_key,
            client_ip: client,
        };
        let outcome = match tag_of(process_id) {
            Some(tag) => self.peers.forward(tag, &request).await,
            None => CancelOutcome::NoMatch,
        };
        (outcome, None)
    }

    /// A cancel request another gateway forwarded (`body`, a [`PeerCancel`]), with the
    /// request's `Authorization` header: checked against the peer key before anything else,
    /// charged to the client's address, then looked up among this gateway's sessions only,
    /// never forwarded again. Counted.
    pub async fn peer_cancel(&self, authorization: Option<&str>, body: &[u8]) -> PeerAnswer {
        let (answer, outcome) = self.peer_outcome(authorization, body);
        self.metrics.peer_cancel_requests.inc(outcome);
        if let PeerAnswer::Cancelled(Some(target)) = answer {
            self.cancel_backend(target).await;
        }
        answer.into()
    }

    fn peer_outcome(
        &self,
        authorization: Option<&str>,
        body: &[u8],
    ) -> (PeerLookup, PeerCancelOutcome) {
        if !self.takes_forwarded() {
            return (PeerAnswer::NotTaken, PeerCancelOutcome::Invalid);
        }
        if !self.peers.authorized(authorization) {
            return (PeerAnswer::Unauthorized, PeerCancelOutcome::Unauthorized);
        }
        let Ok(request) = serde_json::from_slice::<PeerCancel>(body) else {
            return (PeerAnswer::Invalid, PeerCancelOutcome::Invalid);
        };
        if !self.limits.admit(request.client_ip) {
            self.metrics.limit_hit(Limit::CancelRate);
            return (PeerAnswer::RateLimited, PeerCancelOutcome::RateLimited);
        }
        match self.map.lookup(request.process_id, request.secret_key) {
            Some(target) => (
                PeerAnswer::Cancelled(Some(target)),
                PeerCancelOutcome::Forwarded,
            ),
            None => (PeerAnswer::Cancelled(None), PeerCancelOutcome::NoMatch),
        }
    }

    /// Sends the cancel to a session's backend, bounded like any backend connect: a backend
    /// that does not answer cannot hold the client's connection (or the peer's request).
    async fn cancel_backend(&self, target: CancelKey) {
        match tokio::time::timeout(self.backend_timeout, target.cancel()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "forwarding a cancel request failed"),
            Err(_) => tracing::warn!("forwarding a cancel request timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(pid: i32) -> CancelKey {
        CancelKey {
            addr: "127.0.0.1:5432".parse().expect("addr"),
            process_id: pid,
            secret_key: 42,
        }
    }

    #[test]
    fn keys_map_to_their_own_backend_only() {
        let map = Arc::new(CancelMap::new(7));
        let a = map.register(target(100));
        let b = map.register(target(200));
        assert_ne!(a.process_id, b.process_id);
        assert!(a.process_id > 0);
        let found = map.lookup(a.process_id, a.secret_key).expect("a's key");
        assert_eq!(found.process_id, 100);
        let found = map.lookup(b.process_id, b.secret_key).expect("b's key");
        assert_eq!(found.process_id, 200);
        // Another session's pid with the wrong secret, and a made-up pid, reach nothing.
        assert!(map
            .lookup(a.process_id, a.secret_key.wrapping_add(1))
            .is_none());
        assert!(map.lookup(a.process_id, b.secret_key).is_none() || a.secret_key == b.secret_key);
        let (pid, secret) = (a.process_id, a.secret_key);
        drop(a);
        assert!(
            map.lookup(pid, secret).is_none(),
            "retired with its session"
        );
        assert_eq!(map.len(), 1);
        drop(b);
        assert!(map.is_empty());
    }

    #[test]
    fn keys_carry_their_gateways_tag() {
        for tag in [0u8, 1, 0x7f, 0x80, 0xff] {
            let map = Arc::new(CancelMap::new(tag));
            let keys: Vec<Registration> = (0..200).map(|n| map.register(target(n))).collect();
            for key in &keys {
                assert!(key.process_id > 0, "{tag}: {}", key.process_id);
                assert_eq!(tag_of(key.process_id), Some(tag));
            }
            let distinct: std::collections::HashSet<i32> =
                keys.iter().map(|k| k.process_id).collect();
            assert_eq!(distinct.len(), keys.len());
        }
        assert_eq!(tag_of(0), None);
        assert_eq!(tag_of(-1), None);
        assert_eq!(tag_of(i32::MIN), None);
        assert_eq!(tag_of(i32::MAX), Some(0xff));
        assert_eq!(tag_of(1), Some(0));
        assert_eq!(tag_of(200 << TAG_SHIFT | 5), Some(200));
    }
}
