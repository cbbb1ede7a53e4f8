//! The push sink (`--usage-sink-url`): the leader POSTs the consumption event log to an
//! external biller as `{"events": [...]}`, at most [`MAX_EVENTS_PER_BATCH`] per request,
//! oldest first. A 2xx moves the durable cursor (`usage_sink.delivered`) past the batch;
//! anything else is retried with backoff (1 s doubling to 60 s), the same events with the
//! same idempotency keys. Delivery is at least once: a crash between the sink's 2xx and the
//! cursor's update sends that batch again, and the sink dedupes by key.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wake_api::usage::{UsageEvent, MAX_EVENTS_PER_BATCH};

use crate::metrics::Metrics;
use crate::store::Store;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A sink that does not answer within this is a failed attempt.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub url: reqwest::Url,
    /// How often the log is looked at when everything was delivered.
    pub poll_interval: Duration,
}

#[derive(serde::Serialize)]
struct Batch<'a> {
    events: &'a [UsageEvent],
}

/// Delivers the event log to the sink until `stop`.
pub async fn run(store: Store, metrics: Arc<Metrics>, config: SinkConfig, stop: CancellationToken) {
    let client = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "usage sink: could not build an HTTP client; not pushing");
            return;
        }
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        let wait = match push_once(&store, &client, &config.url).await {
            Ok(0) => config.poll_interval,
            Ok(delivered) => {
                metrics.usage.sink_events.inc_by(delivered);
                backoff = FIRST_BACKOFF;
                Duration::ZERO
            }
            Err(e) => {
                metrics.usage.sink_failures.inc();
                tracing::warn!(error = %e, retry_in = ?backoff, "usage sink: delivery failed");
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// One batch after the durable cursor: delivered and the cursor moved, or an error (the
/// cursor stays). Returns how many events were delivered.
async fn push_once(
    store: &Store,
    client: &reqwest::Client,
    url: &reqwest::Url,
) -> anyhow::Result<u64> {
    let after = store.sink_delivered().await?;
    let rows = store
        .usage_events(after, MAX_EVENTS_PER_BATCH as i64)
        .await?;
    let Some((last, _)) = rows.last() else {
        return Ok(0);
    };
    let last = *last;
    let events: Vec<UsageEvent> = rows.into_iter().map(|(_, event)| event).collect();
    let response = client
        .post(url.clone())
        .json(&Batch { events: &events })
        .send()
        .await?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "the sink answered {status}");
    store.set_sink_delivered(last).await?;
    Ok(events.len() as u64)
}
