//! Retrying with exponential backoff. Whether an error is worth another try is a property of
//! its type ([`Retryable`]); how often and how long to wait is a [`RetryConfig`]; every retry is
//! counted in the metric the caller passes.

use std::future::Future;
use std::time::Duration;

/// An error that knows whether repeating the operation may succeed.
pub trait Retryable {
    fn is_retryable(&self) -> bool;

    /// How long the other side asked us to wait before the next try, if it said.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// A server's requested delay is honoured up to this much per retry.
const MAX_REQUESTED_DELAY: Duration = Duration::from_secs(5);

/// `max_attempts` tries in all; before try `n + 1` (n counting from 0) the loop sleeps
/// `base_delay × factor^n`, or longer when the error asks for it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryConfig {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub factor: f64,
}

impl RetryConfig {
    /// Waking an endpoint: Neon's proxy defaults (8 tries, 100 ms × 1.6^n, ≈4.3 s of sleeps).
    pub const WAKE: RetryConfig = RetryConfig {
        max_attempts: 8,
        base_delay: Duration::from_millis(100),
        factor: 1.6,
    };

    /// Connecting to a compute after a wake: Neon's proxy defaults (5 tries, 200 ms × 2^n,
    /// 3 s of sleeps).
    pub const CONNECT: RetryConfig = RetryConfig {
        max_attempts: 5,
        base_delay: Duration::from_millis(200),
        factor: 2.0,
    };

    /// The sleep after failed try `retry` (0 for the first failure).
    pub fn delay(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry).unwrap_or(i32::MAX);
        self.base_delay
            .mul_f64(self.factor.powi(exponent).min(1e6))
            .min(Duration::from_secs(60))
    }

    /// Every sleep the loop may take, in order (for docs and tests).
    pub fn schedule(&self) -> Vec<Duration> {
        (0..self.max_attempts.saturating_sub(1))
            .map(|retry| self.delay(retry))
            .collect()
    }
}

/// Runs `operation` until it succeeds, fails with an error that is not retryable, or has been
/// tried `config.max_attempts` times. `operation` gets the number of the try (from 0).
pub async fn retry<T, E, F, Fut>(
    config: &RetryConfig,
    retries: &prometheus::IntCounter,
    mut operation: F,
) -> Result<T, E>
where
    E: Retryable + std::fmt::Display,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        match operation(attempt).await {
            Ok(value) => return Ok(value),
            Err(e) if e.is_retryable() && attempt + 1 < config.max_attempts => {
                let requested = e.retry_after().unwrap_or_default();
                let delay = config
                    .delay(attempt)
                    .max(requested.min(MAX_REQUESTED_DELAY));
                tracing::debug!(error = %e, attempt, ?delay, "retrying");
                retries.inc();
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn schedules() {
        let check = |config: RetryConfig, expected: Vec<Duration>| {
            let got: Vec<Duration> = config
                .schedule()
                .into_iter()
                // Round to whole milliseconds: 1.6^n is not exact in binary.
                .map(|d| Duration::from_millis((d.as_secs_f64() * 1000.0).round() as u64))
                .collect();
            assert_eq!(got, expected, "{config:?}");
        };
        check(
            RetryConfig::WAKE,
            ms(&[100, 160, 256, 410, 655, 1049, 1678]),
        );
        check(RetryConfig::CONNECT, ms(&[200, 400, 800, 1600]));
        check(
            RetryConfig {
                max_attempts: 1,
                ..RetryConfig::WAKE
            },
            vec![],
        );
        check(
            RetryConfig {
                max_attempts: 3,
                base_delay: Duration::from_millis(10),
                factor: 1.0,
            },
            ms(&[10, 10]),
        );
        // Huge exponents are capped instead of overflowing.
        assert_eq!(
            RetryConfig::CONNECT.delay(u32::MAX),
            Duration::from_secs(60)
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("test error (retryable: {0})")]
    struct TestError(bool, Option<Duration>);

    impl Retryable for TestError {
        fn is_retryable(&self) -> bool {
            self.0
        }
        fn retry_after(&self) -> Option<Duration> {
            self.1
        }
    }

    async fn run(
        config: RetryConfig,
        results: Vec<Result<u32, TestError>>,
    ) -> (Result<u32, TestError>, u32, u64, Duration) {
        let calls = AtomicU32::new(0);
        let counter = prometheus::IntCounter::new("r", "r").expect("metric");
        let results = std::sync::Mutex::new(results.into_iter());
        let started = tokio::time::Instant::now();
        let result = retry(&config, &counter, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            let next = results
                .lock()
                .expect("lock")
                .next()
                .expect("enough results");
            async move { next }
        })
        .await;
        (
            result,
            calls.load(Ordering::SeqCst),
            counter.get(),
            started.elapsed(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_retryable_errors_within_the_budget() {
        let config = RetryConfig {
            max_attempts: 3,
            base_delay: Duration::from_millis(100),
            factor: 2.0,
        };
        let retryable = || Err(TestError(true, None));
        // Success after two failures: slept 100 + 200 ms.
        let (result, calls, retries, slept) =
            run(config, vec![retryable(), retryable(), Ok(7)]).await;
        assert_eq!(result.expect("ok"), 7);
        assert_eq!((calls, retries), (3, 2));
        assert_eq!(slept, Duration::from_millis(300));
        // The budget runs out: the last error is returned.
        let (result, calls, retries, _) =
            run(config, vec![retryable(), retryable(), retryable()]).await;
        assert!(result.is_err());
        assert_eq!((calls, retries), (3, 2));
        // Not retryable: one try.
        let (result, calls, retries, _) = run(config, vec![Err(TestError(false, None))]).await;
        assert!(result.is_err());
        assert_eq!((calls, retries), (1, 0));
        // A requested delay longer than the backoff is honoured, up to a cap.
        let (_, _, _, slept) = run(
            config,
            vec![Err(TestError(true, Some(Duration::from_secs(1)))), Ok(1)],
        )
        .await;
        assert_eq!(slept, Duration::from_secs(1));
        let (_, _, _, slept) = run(
            config,
            vec![Err(TestError(true, Some(Duration::from_secs(3600)))), Ok(1)],
        )
        .await;
        assert_eq!(slept, MAX_REQUESTED_DELAY);
    }
}
