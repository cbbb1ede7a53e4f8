//! Several gateway replicas in front of one wake service (in-process, its embedded state store):
//! each activity reply lists the other live gateways that take forwarded cancel requests (never
//! the reporter, never one that stopped reporting for three of its intervals), a peer address
//! that changes is seen by the others at their next report, malformed peer addresses refuse the
//! whole report, and the reply says which cached endpoints were deleted. The gateways' side
//! (forwarding, two real gateway processes) is in gateway/tests/replicas.rs and
//! sdk-tests/test/replicas.test.js.
//!
//! No computes run here (no endpoint is created); ports 27500-27519 are reserved anyway.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use wake_api::proxy::{ActivityReply, GatewayPeer};

mod common;
use common::service::Wake;

const PORTS: &str = "27500-27519";

impl Wake {
    /// Gateway `id`'s report (every `interval_ms`, taking forwarded cancels at `peer`,
    /// `(address, tag)`, when given, caching routes to `cached`): its status and reply.
    async fn gateway(
        &self,
        id: Option<&str>,
        interval_ms: u64,
        peer: Option<(&str, u8)>,
        cached: &[&str],
    ) -> (u16, Value) {
        let mut body = json!({"interval_ms": interval_ms, "endpoints": [], "cached": cached});
        if let Some(id) = id {
            body["gateway_id"] = json!(id);
        }
        if let Some((address, tag)) = peer {
            body["peer"] = json!({"address": address, "cancel_tag": tag});
        }
        self.call(Method::POST, "/proxy/api/v1/activity", Some(body))
            .await
    }

    /// The peers listed in the reply to gateway `id`'s report, as `(id, address, tag)`.
    async fn peers_of(
        &self,
        id: &str,
        interval_ms: u64,
        peer: Option<(&str, u8)>,
    ) -> Vec<(String, String, u8)> {
        let (status, reply) = self.gateway(Some(id), interval_ms, peer, &[]).await;
        assert_eq!(status, 200, "{reply}");
        let reply: ActivityReply = serde_json::from_value(reply).expect("a reply");
        reply
            .peers
            .into_iter()
            .map(
                |GatewayPeer {
                     gateway_id,
                     address,
                     cancel_tag,
                 }| (gateway_id, address, cancel_tag),
            )
            .collect()
    }
}

fn peer(id: &str, address: &str, tag: u8) -> (String, String, u8) {
    (id.to_owned(), address.to_owned(), tag)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_list_the_other_live_gateways_and_the_deleted_endpoints() {
    common::logs();
    let wake = Wake::start("gateways", PORTS).await;
    let (a, b) = (("10.0.0.1:4480", 1), ("gw-b.internal:4480", 2));

    // Alone: nobody else to forward to.
    assert_eq!(wake.peers_of("g-a", 1000, Some(a)).await, []);
    // Each sees the other, never itself; one that takes no forwarded cancels is listed nowhere
    // but learns the others.
    assert_eq!(
        wake.peers_of("g-b", 1000, Some(b)).await,
        [peer("g-a", a.0, a.1)]
    );
    assert_eq!(
        wake.peers_of("g-a", 1000, Some(a)).await,
        [peer("g-b", b.0, b.1)]
    );
    assert_eq!(
        wake.peers_of("g-c", 1000, None).await,
        [peer("g-a", a.0, a.1), peer("g-b", b.0, b.1)]
    );
    assert_eq!(
        wake.peers_of("g-a", 1000, Some(a)).await,
        [peer("g-b", b.0, b.1)]
    );

    // A new address (a restarted pod) reaches the others with its next report; a gateway that
    // stops advertising one is no longer listed.
    let moved = ("10.0.0.9:4480", 200);
    wake.peers_of("g-a", 1000, Some(moved)).await;
    assert_eq!(
        wake.peers_of("g-b", 1000, Some(b)).await,
        [peer("g-a", moved.0, moved.1)]
    );
    wake.peers_of("g-a", 1000, None).await;
    assert_eq!(wake.peers_of("g-b", 1000, Some(b)).await, []);

    // A gateway that reports every 100 ms and then stops is dropped 300 ms later.
    wake.peers_of("g-fast", 100, Some(("10.0.0.5:1", 5))).await;
    assert_eq!(
        wake.peers_of("g-b", 1000, Some(b)).await,
        [peer("g-fast", "10.0.0.5:1", 5)]
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(wake.peers_of("g-b", 1000, Some(b)).await, []);

    // Malformed peers refuse the whole report: nothing of it is stored.
    for (id, address) in [
        (Some("g-bad"), "no-port"),
        (Some("g-bad"), "h/x:1"),
        (Some("g-bad"), "10.0.0.1:0"),
        (None, "10.0.0.1:1"),
    ] {
        let (status, body) = wake.gateway(id, 1000, Some((address, 3)), &[]).await;
        assert_eq!(status, 400, "{address}: {body}");
    }
    let (status, body) = wake
        .call(
            Method::POST,
            "/proxy/api/v1/activity",
            Some(
                json!({"interval_ms": 1000, "endpoints": [], "gateway_id": "g-bad",
                "peer": {"address": "10.0.0.1:1", "cancel_tag": 256}}),
            ),
        )
        .await;
    assert_eq!(status, 400, "a tag is one byte: {body}");
    assert_eq!(wake.peers_of("g-b", 1000, Some(b)).await, []);

    // Cached endpoints that do not exist are inactive and deleted.
    let (status, reply) = wake.gateway(Some("g-b"), 1000, Some(b), &["ghost"]).await;
    assert_eq!(status, 200, "{reply}");
    let reply: ActivityReply = serde_json::from_value(reply).expect("a reply");
    assert_eq!(
        (reply.inactive, reply.deleted),
        (vec!["ghost".to_owned()], vec!["ghost".to_owned()])
    );

    wake.halt().await;
}
