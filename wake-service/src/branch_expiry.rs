//! Branch expiry, on the leader only: every [`INTERVAL`], the active endpoints that have a
//! branch past its expiry, or one an operation left unfinished (a crash), are tidied by
//! [`Computes::tidy_branches`], one endpoint at a time, under its lock (an endpoint busy with
//! another operation is tried at the next round). A suspended endpoint is never woken for it:
//! its expired branches are deleted within one round of its next wake. Expiry survives a
//! restart, since it reads the store.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::lifecycle::Computes;

/// How often the store is asked for branch work.
pub const INTERVAL: Duration = Duration::from_secs(1);

pub async fn run(computes: Arc<Computes>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let ids = match computes.store().endpoints_with_branch_work().await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "branch expiry: the state store did not answer");
                continue;
            }
        };
        for id in ids {
            if shutdown.is_cancelled() {
                return;
            }
            if let Err(e) = computes.tidy_branches(&id).await {
                tracing::warn!(endpoint = %id, error = %e, "branch expiry failed; trying again");
            }
        }
    }
}
