//! Scenario 10, branches: what sdk-tests/bench/branches.bench.js measured (its
//! `BENCH_BRANCHES_JSON`), merged into the report as rows. A branch made through the wake
//! service and queried with the real driver, next to `CREATE DATABASE … TEMPLATE` by hand on
//! a bare Postgres with the same data (the floor), for a small and a large database; and the
//! small branch next to a fresh Postgres (initdb, start, first query).

use anyhow::Context;
use serde::Deserialize;

use crate::autoscale::percentile;
use crate::measure::Figures;
use crate::report::{fmt_ms, fmt_ratio, Goal, Report, Row};

/// What the bench writes.
#[derive(Deserialize)]
struct Branches {
    /// The endpoint's fixed size (its CPU quota applies to the copy).
    cu: f64,
    small: Case,
    big: Case,
    /// initdb + start + first query, per round (ms).
    fresh_ms: Vec<f64>,
    /// DELETE …/branches/{name} of a small branch the driver had used, per round.
    #[serde(default)]
    delete_ms: Vec<f64>,
    /// DROP DATABASE by hand of the floor's copy (no session on it), per round.
    #[serde(default)]
    drop_ms: Vec<f64>,
}

#[derive(Deserialize)]
struct Case {
    /// What the database holds, e.g. "1,000 tables, 104 MB".
    label: String,
    /// POST …/branches until the first `neon()` query on the branch answered, per round.
    usable_ms: Vec<f64>,
    /// `CREATE DATABASE … TEMPLATE` + connect + the same query, by hand, per round, on a bare
    /// Postgres whose `base/` is a top directory (`chattr +T`), as the computes'.
    floor_ms: Vec<f64>,
    /// The same on a stock cluster (`base/` as initdb leaves it).
    #[serde(default)]
    stock_ms: Vec<f64>,
}

fn figures(samples: &[f64]) -> Figures {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    Figures {
        p50_ms: percentile(&sorted, 50.0),
        p99_ms: percentile(&sorted, 99.0),
        qps: None,
        count: sorted.len() as u64,
        errors: 0,
    }
}

const PATH: &str = "POST …/branches → first `neon()` query";
const FLOOR: &str = "`CREATE DATABASE … TEMPLATE` by hand + connect + query (bare Postgres)";
const TOPDIR: &str = "by hand, `base/` a top directory (`chattr +T`, as the computes)";
const STOCK: &str = "by hand on a stock cluster";

impl Report {
    /// Adds scenario 10's rows (replacing earlier ones).
    pub fn merge_branches(&mut self, json: serde_json::Value) -> anyhow::Result<()> {
        let b: Branches = serde_json::from_value(json).context("parsing the branches results")?;
        let small = figures(&b.small.usable_ms);
        let small_p50 = small.p50_ms;
        let workload = |case: &Case| {
            format!(
                "a branch of {}, {} rounds",
                case.label,
                case.usable_ms.len()
            )
        };
        let floor_goal = |row: &Row| {
            Goal::new(
                row.ratio_p50.is_some_and(|r| r < 2.0),
                format!("p50 < 2x the floor ({})", fmt_ratio(row.ratio_p50)),
            )
        };
        let small_row = Row::new(
            "10",
            workload(&b.small),
            PATH,
            small.clone(),
            Some((FLOOR, figures(&b.small.floor_ms))),
        );
        let small_row = small_row
            .clone()
            .goal(floor_goal(&small_row))
            .goal(Goal::new(
                small_p50.is_some_and(|ms| ms < 50.0),
                format!("usable in under 50 ms at p50 ({} ms)", fmt_ms(small_p50)),
            ));
        let big_row = Row::new(
            "10",
            workload(&b.big),
            PATH,
            figures(&b.big.usable_ms),
            Some((FLOOR, figures(&b.big.floor_ms))),
        );
        let big_row = big_row.clone().goal(floor_goal(&big_row));
        let fresh_row = Row::new(
            "10",
            format!(
                "a database of its own for a test, {} fresh starts",
                b.fresh_ms.len()
            ),
            "a branch of the small database (as above)",
            small,
            Some((
                "a fresh Postgres: initdb + start + first query",
                figures(&b.fresh_ms),
            )),
        );
        let fresh_row = fresh_row.clone().goal(Goal::new(
            fresh_row.ratio_p50.is_some_and(|r| r < 0.1),
            format!(
                "at least 10x faster than a fresh Postgres ({})",
                fmt_ratio(fresh_row.ratio_p50)
            ),
        ));
        let note = format!(
            "the endpoint at a fixed {} CU: the copy runs inside its CPU quota; the floor's Postgres has none",
            b.cu
        );
        let small_row = small_row.note(Some(note.clone()));
        let big_row = big_row.note(Some(note));
        let mut rows = vec![small_row, big_row, fresh_row];
        if !b.delete_ms.is_empty() {
            let row = Row::new(
                "10",
                format!(
                    "deleting a branch of {} the driver used, {} rounds",
                    b.small.label,
                    b.delete_ms.len()
                ),
                "DELETE …/branches/{name} (its pooled session ended)",
                figures(&b.delete_ms),
                Some((
                    "`DROP DATABASE` by hand (bare Postgres, no session)",
                    figures(&b.drop_ms),
                )),
            );
            let goal = Goal::new(
                row.ratio_p50.is_some_and(|r| r < 2.0),
                format!("p50 < 2x the floor ({})", fmt_ratio(row.ratio_p50)),
            );
            rows.push(row.goal(goal));
        }
        // What the computes' top-directory flag is worth: copies made and dropped by hand on
        // two bare clusters, with it and without.
        for case in [&b.small, &b.big] {
            if case.stock_ms.is_empty() {
                continue;
            }
            let row = Row::new(
                "10",
                format!(
                    "a copy of {}, made and dropped {} times",
                    case.label,
                    case.floor_ms.len()
                ),
                TOPDIR,
                figures(&case.floor_ms),
                Some((STOCK, figures(&case.stock_ms))),
            );
            rows.push(row.note(Some(
                "on ext4 without a journal, the inodes each dropped copy frees slow the later copies' file creation; spreading databases over block groups avoids it (elsewhere the two are alike)",
            )));
        }
        self.replace_rows(rows);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_of_samples() {
        let f = figures(&[30.0, 10.0, 20.0]);
        assert_eq!(f.p50_ms, Some(20.0));
        assert_eq!(f.p99_ms, Some(30.0));
        assert_eq!(f.count, 3);
    }
}
