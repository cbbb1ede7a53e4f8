//! The report: rows (a path through the gateway, or a reference, next to its baseline, with
//! ratios and goals), the machine it ran on, and the cold-start results merged in from the
//! Node bench. Written as JSON (`bench/results/latest.json`) and as a Markdown table
//! (`BENCHMARKS.md`), which is also printed.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::measure::Figures;
use crate::sys::Machine;

/// A goal next to a row, and whether this run met it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Goal {
    /// What is asked and what was measured, e.g. "p99 < 5 ms (3.1)".
    pub text: String,
    pub met: bool,
}

impl Goal {
    pub fn new(met: bool, text: impl Into<String>) -> Goal {
        Goal {
            text: text.into(),
            met,
        }
    }
}

/// One line of the table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// The scenario number of the issue (`1`, `2`, `3`, `4a`, `4b`, `5`, `6`; `7a` to `7j`, the
    /// flood test's attacks).
    pub scenario: String,
    /// What was run, e.g. "SELECT 1, c=16".
    pub workload: String,
    /// How: "gateway HTTP /sql", "gateway WebSocket", "PgBouncer (reference)", ...
    pub path: String,
    pub figures: Figures,
    pub baseline_name: Option<String>,
    pub baseline: Option<Figures>,
    /// p50 / baseline p50.
    pub ratio_p50: Option<f64>,
    /// p99 / baseline p99 (absent from reports written before it existed).
    #[serde(default)]
    pub ratio_p99: Option<f64>,
    /// q/s / baseline q/s.
    pub ratio_qps: Option<f64>,
    pub goals: Vec<Goal>,
    /// The first error seen, and other facts worth a footnote.
    pub notes: Vec<String>,
}

impl Row {
    pub fn new(
        scenario: &str,
        workload: impl Into<String>,
        path: impl Into<String>,
        figures: Figures,
        baseline: Option<(&str, Figures)>,
    ) -> Row {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let (baseline_name, baseline) = match baseline {
            Some((name, figures)) => (Some(name.to_string()), Some(figures)),
            None => (None, None),
        };
        let (ratio_p50, ratio_p99, ratio_qps) = match &baseline {
            Some(b) => (
                ratio(figures.p50_ms, b.p50_ms),
                ratio(figures.p99_ms, b.p99_ms),
                ratio(figures.qps, b.qps),
            ),
            None => (None, None, None),
        };
        Row {
            scenario: scenario.into(),
            workload: workload.into(),
            path: path.into(),
            figures,
            baseline_name,
            baseline,
            ratio_p50,
            ratio_p99,
            ratio_qps,
            goals: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn goal(mut self, goal: Goal) -> Row {
        self.goals.push(goal);
        self
    }

    pub fn note(mut self, note: Option<impl Into<String>>) -> Row {
        self.notes.extend(note.map(Into::into));
        self
    }
}

/// How scenarios sort: by their number, then their letter ("4a" < "4b" < "10").
pub(crate) fn scenario_order(scenario: &str) -> (u32, String) {
    let digits = scenario.chars().take_while(char::is_ascii_digit).count();
    let number = scenario[..digits].parse().unwrap_or(u32::MAX);
    (number, scenario[digits..].to_owned())
}

/// Everything one `make bench` run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    /// Durations, counts and limits the scenarios ran with.
    pub settings: serde_json::Value,
    pub rows: Vec<Row>,
    /// The Node cold-start bench's own JSON, when it ran.
    pub cold_start: Option<serde_json::Value>,
    pub goals_met: usize,
    pub goals_total: usize,
}

impl Report {
    pub fn new(machine: Machine, settings: serde_json::Value, rows: Vec<Row>) -> Report {
        let mut report = Report {
            machine,
            settings,
            rows,
            cold_start: None,
            goals_met: 0,
            goals_total: 0,
        };
        report.count_goals();
        report
    }

    fn count_goals(&mut self) {
        let goals = self.rows.iter().flat_map(|row| &row.goals);
        self.goals_total = goals.clone().count();
        self.goals_met = goals.filter(|goal| goal.met).count();
    }

    pub fn load(path: &Path) -> anyhow::Result<Report> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Replaces the rows of the scenarios `rows` belong to (a later run of some scenarios,
    /// e.g. on a fresh gateway), keeping the scenario order.
    pub fn replace_rows(&mut self, rows: Vec<Row>) {
        let ran: Vec<String> = rows.iter().map(|row| row.scenario.clone()).collect();
        self.rows.retain(|row| !ran.contains(&row.scenario));
        self.rows.extend(rows);
        self.rows.sort_by_key(|row| scenario_order(&row.scenario));
        self.count_goals();
    }

    /// Adds the cold-start rows from the Node bench's JSON (replacing earlier ones).
    pub fn merge_cold_start(&mut self, json: serde_json::Value) -> anyhow::Result<()> {
        let cold: ColdStart =
            serde_json::from_value(json.clone()).context("parsing the cold-start results")?;
        self.rows.retain(|row| row.scenario != "5");
        let floor = cold.floor.figures(cold.rounds);
        let workload = format!(
            "first query on a suspended endpoint, {} rounds",
            cold.rounds
        );
        let floor_name = "bare `postgres -D` + connect + query";
        let http = cold.http.figures(cold.rounds);
        let ratio_goal = |row: &Row| {
            let ratio = row.ratio_p50;
            Goal::new(
                ratio.is_some_and(|r| r < 1.5),
                format!("p50 < 1.5x the floor ({})", fmt_ratio(ratio)),
            )
        };
        let http_row = Row::new(
            "5",
            workload.clone(),
            "driver HTTP (`neon()`)",
            http.clone(),
            Some((floor_name, floor.clone())),
        );
        let http_row = http_row
            .clone()
            .goal(ratio_goal(&http_row))
            .goal(Goal::new(
                http.p50_ms.is_some_and(|v| v <= 250.0) && http.p99_ms.is_some_and(|v| v <= 500.0),
                format!(
                    "p50 ≤ 250 ms and p99 ≤ 500 ms ({} / {})",
                    fmt_ms(http.p50_ms),
                    fmt_ms(http.p99_ms)
                ),
            ))
            .note(
                cold.resume_ms_mean
                    .map(|ms| format!("the wake service's resume took {ms:.1} ms on average")),
            );
        let ws_row = Row::new(
            "5",
            workload,
            "driver WebSocket (`Client`), connect + query",
            cold.ws.figures(cold.rounds),
            Some((floor_name, floor)),
        );
        let ws_row = ws_row.clone().goal(ratio_goal(&ws_row));
        let at = self
            .rows
            .iter()
            .position(|row| scenario_order(&row.scenario) > scenario_order("5"))
            .unwrap_or(self.rows.len());
        self.rows.splice(at..at, [http_row, ws_row]);
        self.cold_start = Some(json);
        self.count_goals();
        Ok(())
    }

    /// The Markdown document: machine, table, goals, notes.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "# Benchmarks\n");
        let _ = writeln!(
            out,
            "Written by `make bench` (`scripts/bench.sh`, the `loadgen` crate in `bench/`); the raw \
             figures are in `bench/results/latest.json`. Every figure is measured in the same run \
             as its baseline, on loopback."
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "- Machine: {}, {} cores, Linux {}",
            m.cpu_model, m.cores, m.kernel
        );
        let _ = writeln!(
            out,
            "- Run: {} UTC, commit `{}`, {} mode",
            m.date_utc, m.git_commit, m.mode
        );
        let _ = writeln!(out, "- Placement: {}", m.pinning);
        let setting = |key: &str| {
            self.settings
                .get(key)
                .map_or("?".to_string(), |v| v.to_string())
        };
        let flood = |key: &str| {
            self.settings
                .get("flood")
                .and_then(|flood| flood.get(key))
                .map_or("?".to_string(), |v| v.to_string())
        };
        let _ = writeln!(
            out,
            "- Sizes: scenarios 1-2 closed loop, {} s warm-up then {} s measured per cell; 3: {} \
             set-ups per path; 4a: {} s; 4b: held {} s; 7: each attack on a fresh gateway, the \
             victim {} s alone then {} s under attack (a query or connect that fails or takes \
             over {} s is an error, and counts as that long in its percentiles), attack stopped \
             at {} MiB gateway RSS",
            setting("warmup_seconds"),
            setting("cell_seconds"),
            setting("setup_count"),
            setting("http_seconds"),
            setting("idle_hold_seconds"),
            flood("quiet_seconds"),
            flood("attack_seconds"),
            flood("victim_timeout_seconds"),
            flood("rss_limit_mib"),
        );
        let _ = writeln!(
            out,
            "- Latencies in ms, throughput in queries (or set-ups) per second; `×` = gateway / \
             baseline (7: the victim under attack / the same victim alone); tax = p50 − direct \
             p50.\n"
        );
        let _ = writeln!(
            out,
            "| # | Workload | Path | p50 | p99 | q/s | err | Baseline | p50 | p99 | q/s | p50 × | p99 × | q/s × | Goal (measured) | Met |"
        );
        let _ = writeln!(
            out,
            "|---|---|---|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|---|---|"
        );
        for row in &self.rows {
            let f = &row.figures;
            let b = row.baseline.as_ref();
            let goals = if row.goals.is_empty() {
                "—".to_string()
            } else {
                row.goals
                    .iter()
                    .map(|g| g.text.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let met = if row.goals.is_empty() {
                "—"
            } else if row.goals.iter().all(|g| g.met) {
                "yes"
            } else {
                "**no**"
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.scenario,
                row.workload,
                row.path,
                fmt_ms(f.p50_ms),
                fmt_ms(f.p99_ms),
                fmt_qps(f.qps),
                f.errors,
                row.baseline_name.as_deref().unwrap_or("—"),
                fmt_ms(b.and_then(|b| b.p50_ms)),
                fmt_ms(b.and_then(|b| b.p99_ms)),
                fmt_qps(b.and_then(|b| b.qps)),
                fmt_ratio(row.ratio_p50),
                fmt_ratio(row.ratio_p99),
                fmt_ratio(row.ratio_qps),
                goals,
                met,
            );
        }
        let _ = writeln!(
            out,
            "\nGoals met: {} of {}.",
            self.goals_met, self.goals_total
        );
        let missed: Vec<String> = self
            .rows
            .iter()
            .flat_map(|row| {
                row.goals.iter().filter(|g| !g.met).map(move |g| {
                    format!(
                        "- {} {} via {}: {}",
                        row.scenario, row.workload, row.path, g.text
                    )
                })
            })
            .collect();
        if !missed.is_empty() {
            let _ = writeln!(out, "\nMissed:\n{}", missed.join("\n"));
        }
        let notes: Vec<String> = self
            .rows
            .iter()
            .flat_map(|row| {
                row.notes.iter().map(move |n| {
                    format!(
                        "- {} {} via {}: {}",
                        row.scenario, row.workload, row.path, n
                    )
                })
            })
            .collect();
        if !notes.is_empty() {
            let _ = writeln!(out, "\nNotes:\n{}", notes.join("\n"));
        }
        out
    }
}

/// What `sdk-tests/bench/cold-start.bench.js` writes to `BENCH_COLD_START_JSON`.
#[derive(Deserialize)]
struct ColdStart {
    rounds: u64,
    floor: ColdStats,
    http: ColdStats,
    ws: ColdStats,
    resume_ms_mean: Option<f64>,
}

#[derive(Deserialize)]
struct ColdStats {
    p50: f64,
    p99: f64,
}

impl ColdStats {
    fn figures(&self, rounds: u64) -> Figures {
        Figures {
            p50_ms: Some(self.p50),
            p99_ms: Some(self.p99),
            qps: None,
            count: rounds,
            errors: 0,
        }
    }
}

pub fn fmt_ms(ms: Option<f64>) -> String {
    match ms {
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.1}"),
        None => "—".into(),
    }
}

fn fmt_qps(qps: Option<f64>) -> String {
    qps.map_or("—".into(), |v| format!("{v:.0}"))
}

pub fn fmt_ratio(ratio: Option<f64>) -> String {
    ratio.map_or("—".into(), |r| format!("{r:.2}x"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_sort_by_number_then_letter() {
        let mut s = vec!["10", "4b", "7a", "4a", "9", "1"];
        s.sort_by_key(|x| scenario_order(x));
        assert_eq!(s, ["1", "4a", "4b", "7a", "9", "10"]);
    }
}
