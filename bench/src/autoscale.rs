//! Scenario 9, autoscaling: what `scripts/bench.sh` measured with `pgbench` on one endpoint
//! (its `BENCH_AUTOSCALE_JSON`), merged into the report as rows. The same select-only load at a
//! fixed 0.25 CU and at a fixed 1 CU shows the CPU quota is real (the throughput ratio); the
//! same load on an endpoint autoscaling from 0.25 CU shows how long an upscale takes from the
//! load's start (the wake service's defaults: a sample every 2 s).

use anyhow::Context;
use serde::Deserialize;

use crate::measure::Figures;
use crate::report::{fmt_ratio, Goal, Report, Row};

/// What the script writes.
#[derive(Deserialize)]
struct Autoscale {
    /// The load, e.g. "pgbench -S, 8 clients, 10 s".
    load: String,
    /// Transactions per second at a fixed 0.25 CU and 1 CU.
    tps_quarter: f64,
    tps_one: f64,
    /// Per round: milliseconds from the load's start until the API showed a larger size.
    upscale_ms: Vec<f64>,
    /// The size each round reached while the load ran.
    peak_cu: Vec<f64>,
    /// Failed pgbench runs (a failed transaction fails the run).
    failures: u64,
}

/// The `p`th percentile (nearest rank) of ascending `sorted`.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

impl Report {
    /// Adds scenario 9's rows (replacing earlier ones).
    pub fn merge_autoscale(&mut self, json: serde_json::Value) -> anyhow::Result<()> {
        let a: Autoscale =
            serde_json::from_value(json).context("parsing the autoscaling results")?;
        let tps = |qps: f64| Figures {
            qps: Some(qps),
            count: 1,
            errors: a.failures,
            ..Figures::default()
        };
        let quota = Row::new(
            "9",
            a.load.clone(),
            "one endpoint at a fixed 1 CU",
            tps(a.tps_one),
            Some(("the same endpoint at a fixed 0.25 CU", tps(a.tps_quarter))),
        );
        let ratio = quota.ratio_qps;
        let quota = quota.clone().goal(Goal::new(
            ratio.is_some_and(|r| r >= 2.0),
            format!(
                "the CPU quota is real: ≥ 2x the throughput at 4x the size ({})",
                fmt_ratio(ratio)
            ),
        ));
        let mut sorted = a.upscale_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let upscale = Figures {
            p50_ms: percentile(&sorted, 50.0),
            p99_ms: percentile(&sorted, 100.0),
            qps: None,
            count: sorted.len() as u64,
            errors: a.failures,
        };
        let peak = a.peak_cu.iter().copied().fold(0.0, f64::max);
        let p50 = upscale.p50_ms;
        let grows = Row::new(
            "9",
            format!(
                "{}, from 0.25 CU (min 0.25, max 2), {} rounds",
                a.load,
                sorted.len()
            ),
            "upscale: load start → larger size (p50, max)",
            upscale,
            None,
        )
        .goal(Goal::new(
            p50.is_some_and(|ms| ms <= 5000.0) && sorted.len() == a.peak_cu.len(),
            format!(
                "grows within 5 s (p50 {})",
                p50.map_or("—".into(), |ms| format!("{:.1} s", ms / 1000.0))
            ),
        ))
        .goal(Goal::new(
            a.failures == 0,
            format!(
                "no transaction fails during resizes ({} failed runs)",
                a.failures
            ),
        ))
        .note(Some(format!("peak size reached: {peak} CU")));
        self.replace_rows(vec![quota, grows]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_few_samples() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[3.0], 50.0), Some(3.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 100.0), Some(3.0));
    }
}
