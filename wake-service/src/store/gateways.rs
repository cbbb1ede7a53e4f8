//! Gateway replicas in the store: where each live gateway takes the cancel requests that reach
//! another replica (so that several wake-service replicas give every gateway the same list),
//! and which endpoints a gateway still caches that no longer exist.

use wake_api::proxy::{GatewayPeer, PeerAddress, MAX_PEERS};

use super::{Store, StoreError};

impl Store {
    /// Records where gateway `id` takes forwarded cancel requests (`None`: it takes none) and
    /// returns the other gateways that take them and reported within three of their intervals
    /// (a gateway that stopped reporting drops out of every list after that long), at most
    /// [`MAX_PEERS`]. `id`'s row is written by [`Store::gateway_report`] for the same report.
    pub async fn gateway_peers(
        &self,
        id: &str,
        peer: Option<&PeerAddress>,
    ) -> Result<Vec<GatewayPeer>, StoreError> {
        let client = self.pool.get().await?;
        let address = peer.map(|p| p.address.as_str());
        let tag = peer.map(|p| i16::from(p.cancel_tag));
        let limit = i64::try_from(MAX_PEERS).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "WITH me AS (
                    UPDATE gateways SET peer_address = $2::text, cancel_tag = $3::int2
                    WHERE id = $1
                      AND (peer_address, cancel_tag) IS DISTINCT FROM ($2::text, $3::int2))
                 SELECT id, peer_address, cancel_tag FROM gateways
                 WHERE id <> $1 AND peer_address IS NOT NULL AND cancel_tag IS NOT NULL
                   AND seen_at > now() - make_interval(secs => 3 * interval_ms / 1000.0)
                 ORDER BY id LIMIT $4",
                &[&id, &address, &tag, &limit],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let tag: i16 = row.try_get(2)?;
                Ok(GatewayPeer {
                    gateway_id: row.try_get(0)?,
                    address: row.try_get(1)?,
                    cancel_tag: u8::try_from(tag)
                        .map_err(|_| StoreError::Build(format!("cancel_tag {tag} out of range")))?,
                })
            })
            .collect()
    }

    /// Which of `ids` name no endpoint (deleted, or never created).
    pub async fn missing_endpoints(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT q.id FROM unnest($1::text[]) AS q(id)
                 WHERE NOT EXISTS (SELECT 1 FROM endpoints e WHERE e.id = q.id)",
                &[&ids],
            )
            .await?;
        rows.iter()
            .map(|row| row.try_get(0).map_err(StoreError::from))
            .collect()
    }
}
