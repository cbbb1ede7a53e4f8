//! How load is applied and recorded: latency histograms (microseconds, `hdrhistogram`), the
//! figures a report row holds, a closed loop over open sessions for a fixed time, sequential
//! connection set-ups, and opening or closing many sessions with bounded parallelism.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::client::{Dial, Session, Statement, Timeouts};

/// p50, p99 (ms) and throughput of one measurement, with its sample and error counts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Figures {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Queries (or set-ups) per second.
    pub qps: Option<f64>,
    pub count: u64,
    pub errors: u64,
}

/// Latencies and errors of one measurement, mergeable across tasks. Samples are kept as a
/// plain list (cheap per task, even with 10 000 tasks) and go into one histogram when the
/// figures are computed.
#[derive(Default)]
pub struct Recorder {
    /// Microseconds.
    samples: Vec<u64>,
    /// Samples that are failed attempts ([`Recorder::fail`]), not answers.
    failed_samples: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.samples.push(micros.max(1));
    }

    /// A failed attempt that is also a sample at least `latency` slow: for clients whose every
    /// try counts (the flood test's victim), a failure weighs in the percentiles as a slow
    /// answer, never as a fast one, and not in the throughput.
    pub fn fail(&mut self, latency: Duration, error: impl std::fmt::Display) {
        self.record(latency);
        self.failed_samples += 1;
        self.error(error);
    }

    pub fn error(&mut self, error: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{error:#}"));
        }
    }

    pub fn merge(&mut self, other: Recorder) {
        self.samples.extend(other.samples);
        self.failed_samples += other.failed_samples;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub fn errors(&self) -> u64 {
        self.errors
    }

    pub fn first_error(&self) -> Option<&str> {
        self.first_error.as_deref()
    }

    /// The figures, with throughput (answers, not failed attempts) over `window` when given.
    pub fn figures(&self, window: Option<Duration>) -> Figures {
        // 1 µs to 10 min at 3 significant digits; longer samples count as 10 min.
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
            .expect("constant bounds are valid");
        for &micros in &self.samples {
            histogram.saturating_record(micros);
        }
        let ms = |q: f64| (histogram.value_at_quantile(q) as f64) / 1000.0;
        let count = histogram.len();
        Figures {
            p50_ms: (count > 0).then(|| ms(0.50)),
            p99_ms: (count > 0).then(|| ms(0.99)),
            qps: window
                .filter(|w| !w.is_zero())
                .map(|w| count.saturating_sub(self.failed_samples) as f64 / w.as_secs_f64()),
            count,
            errors: self.errors,
        }
    }
}

/// Warm-up and measured time of a closed-loop cell.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub warmup: Duration,
    pub measure: Duration,
}

/// Each session runs `statement` back to back for the window; latencies of the queries that
/// complete inside the measured part count, and throughput is their number over its length.
/// Returns the recorder and the sessions still healthy (a failed session stops and is
/// dropped). Bounded: after the window each session finishes at most one query, itself
/// bounded by `query_limit`.
pub async fn closed_loop(
    sessions: Vec<Session>,
    statement: Arc<Statement>,
    window: Window,
    query_limit: Duration,
) -> (Recorder, Vec<Session>) {
    let start = Instant::now();
    let from = start + window.warmup;
    let until = from + window.measure;
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|mut session| {
            let statement = statement.clone();
            tokio::spawn(async move {
                let mut recorder = Recorder::new();
                while Instant::now() < until {
                    let t0 = Instant::now();
                    match session.query(&statement, query_limit).await {
                        Ok(()) => {
                            let t1 = Instant::now();
                            if t1 >= from && t1 <= until {
                                recorder.record(t1 - t0);
                            }
                        }
                        Err(e) => {
                            recorder.error(e);
                            return (recorder, None);
                        }
                    }
                }
                (recorder, Some(session))
            })
        })
        .collect();
    let mut total = Recorder::new();
    let mut healthy = Vec::new();
    for task in tasks {
        match task.await {
            Ok((recorder, session)) => {
                total.merge(recorder);
                healthy.extend(session);
            }
            Err(e) => total.error(format!("client task failed: {e}")),
        }
    }
    (total, healthy)
}

/// `n` sequential set-ups (connect + `statement` once + close), after `warmup` unrecorded ones;
/// records connect + first query. Throughput is set-ups per second of the measured part.
pub async fn sequential_setups(
    dial: &Dial,
    statement: &Statement,
    warmup: usize,
    n: usize,
    timeouts: Timeouts,
) -> (Recorder, Duration) {
    let mut recorder = Recorder::new();
    let mut measured_from = Instant::now();
    for i in 0..warmup + n {
        if i == warmup {
            measured_from = Instant::now();
        }
        let t0 = Instant::now();
        let outcome = match dial.connect(timeouts).await {
            Ok(mut session) => {
                let result = session.query(statement, timeouts.query).await;
                let t1 = Instant::now();
                session.close(timeouts.connect).await;
                result.map(|()| t1 - t0)
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(latency) if i >= warmup => recorder.record(latency),
            Ok(_) => {}
            Err(e) => recorder.error(e),
        }
    }
    (recorder, measured_from.elapsed())
}

/// Opens `n` sessions, `parallel` at a time, each running `first` once if given; records
/// connect (+ first query). Returns the recorder and the sessions that succeeded.
pub async fn open_many(
    dial: &Dial,
    n: usize,
    parallel: usize,
    first: Option<&Statement>,
    timeouts: Timeouts,
) -> (Recorder, Vec<Session>) {
    let results: Vec<anyhow::Result<(Duration, Session)>> = stream::iter(0..n)
        .map(|_| async move {
            let t0 = Instant::now();
            let mut session = dial.connect(timeouts).await?;
            if let Some(statement) = first {
                if let Err(e) = session.query(statement, timeouts.query).await {
                    session.close(timeouts.connect).await;
                    return Err(e);
                }
            }
            Ok((t0.elapsed(), session))
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let mut recorder = Recorder::new();
    let mut sessions = Vec::with_capacity(n);
    for result in results {
        match result {
            Ok((latency, session)) => {
                recorder.record(latency);
                sessions.push(session);
            }
            Err(e) => recorder.error(e),
        }
    }
    (recorder, sessions)
}

/// Closes sessions, `parallel` at a time; each close is bounded by `limit`.
pub async fn close_many(sessions: Vec<Session>, parallel: usize, limit: Duration) {
    stream::iter(sessions)
        .for_each_concurrent(parallel.max(1), |session| session.close(limit))
        .await;
}
