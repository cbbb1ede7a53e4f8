//! The other gateways (replicas behind the same load balancer) that take forwarded cancel
//! requests: the list the control plane's latest activity reply gave, the key that signs what
//! gateways send each other, and the forwarding itself (`POST /internal/cancel`, bounded by
//! [`FORWARD_TIMEOUT`], concurrently to every peer with the key's tag; normally one).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::future::join_all;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use wake_api::proxy::{GatewayPeer, PeerAddress, PeerCancel, PeerCancelReply, MAX_PEERS};

use crate::obs::labels::CancelOutcome;

/// The path of the internal endpoint on a gateway's admin listener.
pub const PEER_CANCEL_PATH: &str = "/internal/cancel";
/// How long one forwarded cancel request may take, from connecting to the peer's answer.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// How long connecting to a peer may take (a dead peer's address often just drops packets).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Failed forwards are logged at WARN at most this often (DEBUG otherwise).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What gateways sign their requests to each other with: HMAC-SHA-256 of a fixed label under
/// the control-plane token they share, so no other secret has to be handed out, and the token
/// itself never travels between gateways.
#[derive(Clone)]
pub struct PeerKey(String);

impl PeerKey {
    pub fn derive(token: &str) -> PeerKey {
        let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes())
            .expect("HMAC-SHA-256 takes a key of any length");
        mac.update(b"gateway peer cancel v1");
        let digest = mac.finalize().into_bytes();
        PeerKey(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Whether an `Authorization` header carries this key (compared in constant time).
    fn matches(&self, authorization: Option<&str>) -> bool {
        let Some(given) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
            return false;
        };
        given.as_bytes().ct_eq(self.0.as_bytes()).into()
    }
}

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerKey(<redacted>)")
    }
}

/// One other gateway.
#[derive(Debug, PartialEq, Eq)]
struct Peer {
    gateway_id: String,
    tag: u8,
    /// `http://<address>/internal/cancel`.
    url: String,
}

impl Peer {
    /// A peer from the control plane's list, if its address is a plain `host:port`.
    fn parse(peer: &GatewayPeer) -> Option<Peer> {
        let address = peer.address.as_str();
        if address.is_empty()
            || address
                .bytes()
                .any(|b| matches!(b, b'/' | b'@' | b'?' | b'#' | b'\\') || b <= b' ')
        {
            return None;
        }
        // An explicit port (the URL would hide a default one).
        let (_, port) = address.rsplit_once(':')?;
        port.parse::<u16>().ok().filter(|&p| p != 0)?;
        let url = url::Url::parse(&format!("http://{address}{PEER_CANCEL_PATH}")).ok()?;
        let plain = url.host().is_some()
            && url.path() == PEER_CANCEL_PATH
            && url.username().is_empty()
            && url.query().is_none();
        plain.then(|| Peer {
            gateway_id: peer.gateway_id.clone(),
            tag: peer.cancel_tag,
            url: url.to_string(),
        })
    }
}

pub struct Peers {
    /// Where this gateway takes forwarded requests, and its tag (`None`: it takes none).
    own: Option<PeerAddress>,
    /// `None` without a control-plane token: nothing is forwarded, or taken.
    key: Option<PeerKey>,
    list: ArcSwap<Vec<Peer>>,
    client: reqwest::Client,
    last_warning: Mutex<Option<Instant>>,
}

impl Peers {
    pub fn new(own: Option<PeerAddress>, key: Option<PeerKey>) -> Result<Peers, reqwest::Error> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(FORWARD_TIMEOUT)
            .build()?;
        Ok(Peers {
            own,
            key,
            list: ArcSwap::default(),
            client,
            last_warning: Mutex::new(None),
        })
    }

    pub fn own(&self) -> Option<&PeerAddress> {
        self.own.as_ref()
    }

    /// Whether a forwarded request's `Authorization` header carries the peer key.
    pub fn authorized(&self, authorization: Option<&str>) -> bool {
        self.key.as_ref().is_some_and(|k| k.matches(authorization))
    }

    /// Replaces the list with the control plane's (this gateway, `own_id`, and addresses that
    /// are not a plain `host:port` left out; at most [`MAX_PEERS`]); returns how many are kept.
    /// Without a key nothing could be signed: the list stays empty.
    pub fn set(&self, peers: &[GatewayPeer], own_id: &str) -> usize {
        if self.key.is_none() {
            return 0;
        }
        let list: Vec<Peer> = peers
            .iter()
            .filter(|p| p.gateway_id != own_id)
            .take(MAX_PEERS)
            .filter_map(Peer::parse)
            .collect();
        let kept = list.len();
        if **self.list.load() != list {
            let shown: Vec<(&str, &str, u8)> = list
                .iter()
                .take(10)
                .map(|p| (p.gateway_id.as_str(), p.url.as_str(), p.tag))
                .collect();
            tracing::info!(peers = kept, first = ?shown, "the peer gateways changed");
        }
        self.list.store(Arc::new(list));
        kept
    }

    /// Forwards `request` to every peer with `tag`, at once, and says what came of it:
    /// `NoMatch` with no such peer, `Peer` when one had the session, `PeerNoMatch` when those
    /// that answered did not, `PeerFailed` when none answered.
    pub async fn forward(&self, tag: u8, request: &PeerCancel) -> CancelOutcome {
        let list = self.list.load_full();
        let targets: Vec<&Peer> = list.iter().filter(|p| p.tag == tag).collect();
        if targets.is_empty() {
            return CancelOutcome::NoMatch;
        }
        let answers = join_all(targets.iter().map(|peer| self.ask(peer, request))).await;
        if answers.contains(&Some(true)) {
            CancelOutcome::Peer
        } else if answers.contains(&Some(false)) {
            CancelOutcome::PeerNoMatch
        } else {
            CancelOutcome::PeerFailed
        }
    }

    /// One peer's answer: whether it had the session; `None` when it did not answer in time
    /// or refused the request.
    async fn ask(&self, peer: &Peer, request: &PeerCancel) -> Option<bool> {
        let key = self.key.as_ref()?;
        let answer = async {
            let response = self
                .client
                .post(&peer.url)
                .bearer_auth(&key.0)
                .json(request)
                .send()
                .await
                .map_err(|e| e.without_url().to_string())?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("status {status}"));
            }
            let reply: PeerCancelReply = response
                .json()
                .await
                .map_err(|e| e.without_url().to_string())?;
            Ok(reply.cancelled)
        };
        match answer.await {
            Ok(cancelled) => Some(cancelled),
            Err(error) => {
                self.warn(peer, &error);
                None
            }
        }
    }

    fn warn(&self, peer: &Peer, error: &str) {
        let now = Instant::now();
        let mut last = self
            .last_warning
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            *last = Some(now);
            tracing::warn!(peer = %peer.gateway_id, url = %peer.url, %error, "forwarding a cancel request to a peer gateway failed");
        } else {
            tracing::debug!(peer = %peer.gateway_id, %error, "forwarding a cancel request to a peer gateway failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, address: &str, tag: u8) -> GatewayPeer {
        GatewayPeer {
            gateway_id: id.into(),
            address: address.into(),
            cancel_tag: tag,
        }
    }

    #[test]
    fn the_key_is_derived_from_the_token_and_checked_whole() {
        let key = PeerKey::derive("t0ken");
        assert_eq!(key.0.len(), 64);
        assert_eq!(
            key.0,
            PeerKey::derive("t0ken").0,
            "the same on every gateway"
        );
        assert_ne!(key.0, PeerKey::derive("t0ken2").0);
        assert!(!key.0.contains("t0ken"));
        let bearer = format!("Bearer {}", key.0);
        assert!(key.matches(Some(&bearer)));
        for wrong in [
            None,
            Some(key.0.as_str()),
            Some("Bearer "),
            Some("Bearer t0ken"),
            Some(&bearer[..bearer.len() - 1]),
        ] {
            assert!(!key.matches(wrong), "{wrong:?}");
        }
        assert_eq!(format!("{key:?}"), "PeerKey(<redacted>)");
    }

    #[test]
    fn the_list_keeps_plain_addresses_of_others_only() {
        let peers = Peers::new(None, Some(PeerKey::derive("t"))).expect("client");
        let kept = peers.set(
            &[
                peer("me", "10.0.0.1:4480", 1),
                peer("b", "10.0.0.2:4480", 2),
                peer("port-80", "10.0.0.3:80", 3),
                peer("c", "gw-c.internal:4480", 2),
                peer("d", "[fd00::4]:4480", 4),
                peer("no-port", "10.0.0.5", 5),
                peer("path", "10.0.0.6:1/x", 6),
                peer("user", "u@10.0.0.7:1", 7),
                peer("query", "10.0.0.8:1?x", 8),
                peer("space", "10.0.0.9 :1", 9),
            ],
            "me",
        );
        assert_eq!(kept, 4);
        let list = peers.list.load();
        let urls: Vec<&str> = list.iter().map(|p| p.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://10.0.0.2:4480/internal/cancel",
                "http://10.0.0.3/internal/cancel",
                "http://gw-c.internal:4480/internal/cancel",
                "http://[fd00::4]:4480/internal/cancel"
            ]
        );
        // Without a key nothing could be signed: no peers.
        let unsigned = Peers::new(None, None).expect("client");
        assert_eq!(unsigned.set(&[peer("b", "10.0.0.2:4480", 2)], "me"), 0);
        assert!(!unsigned.authorized(Some("Bearer x")));
    }

    #[tokio::test]
    async fn a_tag_without_peers_is_no_match_and_dead_peers_fail_fast() {
        let peers = Peers::new(None, Some(PeerKey::derive("t"))).expect("client");
        // A port nobody listens on: refused at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = closed.local_addr().expect("addr").to_string();
        drop(closed);
        peers.set(&[peer("b", &address, 9)], "me");
        let request = PeerCancel {
            process_id: 9 << 23 | 1,
            secret_key: 1,
            client_ip: [127, 0, 0, 1].into(),
        };
        assert_eq!(peers.forward(8, &request).await, CancelOutcome::NoMatch);
        let started = Instant::now();
        assert_eq!(peers.forward(9, &request).await, CancelOutcome::PeerFailed);
        assert!(started.elapsed() <= FORWARD_TIMEOUT);
    }
}
