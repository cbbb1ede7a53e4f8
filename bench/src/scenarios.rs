//! The scenarios of `make bench`, each next to its baseline measured in the same run:
//!
//! 1. `SELECT 1` and a 100-row select over HTTP `/sql`, closed loop at each concurrency, vs
//!    persistent direct connections, with PgBouncer as the reference pooler;
//! 2. the same over the WebSocket tunnel and plain TCP through the gateway (persistent);
//! 3. connection set-up: new session + first query, sequential, vs a new direct connection;
//! 4. (a) 10 000 HTTP keep-alive clients, open loop at a paced rate; (b) thousands of idle
//!    WebSocket sessions held by PgBouncer through the gateway; gateway RSS per connection;
//! 5. cold start (the Node bench; merged by `loadgen report`);
//! 6. control-plane calls per 1 000 warm connections (the route table's hit path);
//! 8. `/sql` with a JWT next to the same with a password (`crate::jwt`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::admin;
use crate::client::{Dial, HttpTarget, Session, Statement, Timeouts};
use crate::measure::{self, Figures, Recorder, Window};
use crate::report::{fmt_ms, Goal, Row};
use crate::sys;

const ROWS_100: &str = "SELECT g, md5(g::text) FROM generate_series(1,100) g";
/// The memory goal: gateway RSS per idle connection.
const RSS_GOAL_KIB: f64 = 16.0;
/// Pause between the paths of scenarios 1 and 2 (longer than the gateway pool's 1 s grace
/// for idle connections beyond its cap, plus its 250 ms trim period).
const SETTLE: Duration = Duration::from_millis(1500);

/// Sizes and durations of one run (quick or full, then flags).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    pub concurrency: Vec<usize>,
    pub warmup_seconds: f64,
    pub cell_seconds: f64,
    pub setup_count: usize,
    pub http_clients: usize,
    pub http_rate: f64,
    pub http_seconds: f64,
    /// `None`: as many as the file limits allow (at most 9 000).
    pub idle_sessions: Option<usize>,
    pub idle_hold_seconds: f64,
    pub connect_timeout_seconds: f64,
    pub query_timeout_seconds: f64,
    /// Scenario numbers to run (`1`, `2`, `3`, `4a`, `4b`, `6`); empty: all.
    #[serde(skip)]
    pub only: Vec<String>,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        Plan {
            concurrency: vec![1, 16, 128],
            warmup_seconds: if quick { 0.2 } else { 1.0 },
            cell_seconds: if quick { 0.8 } else { 5.0 },
            setup_count: if quick { 150 } else { 1000 },
            http_clients: 10_000,
            http_rate: 2000.0,
            http_seconds: if quick { 8.0 } else { 30.0 },
            idle_sessions: if quick { Some(5000) } else { None },
            idle_hold_seconds: if quick { 1.0 } else { 10.0 },
            connect_timeout_seconds: 10.0,
            query_timeout_seconds: 10.0,
            only: Vec::new(),
        }
    }

    fn runs(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }

    pub(crate) fn window(&self) -> Window {
        Window {
            warmup: Duration::from_secs_f64(self.warmup_seconds),
            measure: Duration::from_secs_f64(self.cell_seconds),
        }
    }

    pub(crate) fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: Duration::from_secs_f64(self.connect_timeout_seconds),
            query: Duration::from_secs_f64(self.query_timeout_seconds),
        }
    }
}

/// What the scenarios run against.
pub struct Stack {
    pub gateway: SocketAddr,
    /// The gateway's admin listener (`host:port`), for `/metrics`.
    pub admin: String,
    /// For RSS and its file limit; without it memory is not measured.
    pub gateway_pid: Option<u32>,
    /// Endpoint `db`'s Postgres and PgBouncer.
    pub direct: (String, u16),
    pub pooler: (String, u16),
    /// This process's file limit (after raising it).
    pub nofile: u64,
    /// The wake service (`host:port`) and its admin token, for scenario 8's JWKS rule.
    pub wake: String,
    pub wake_token: String,
}

/// The ways to the database the scenarios compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Path {
    Direct,
    PgBouncer,
    Http,
    Ws,
    Tcp,
}

impl Path {
    const ALL: [Path; 5] = [
        Path::Direct,
        Path::PgBouncer,
        Path::Http,
        Path::Ws,
        Path::Tcp,
    ];

    fn label(self) -> &'static str {
        match self {
            Path::Direct => "direct Postgres",
            Path::PgBouncer => "PgBouncer (reference)",
            Path::Http => "gateway HTTP /sql",
            Path::Ws => "gateway WebSocket",
            Path::Tcp => "gateway TCP",
        }
    }
}

struct Dials {
    direct: Dial,
    pgbouncer: Dial,
    http: Dial,
    ws: Dial,
    tcp: Dial,
    ws_pooler: Dial,
}

impl Dials {
    fn new(stack: &Stack) -> anyhow::Result<Dials> {
        Ok(Dials {
            direct: Dial::Tcp {
                host: stack.direct.0.clone(),
                port: stack.direct.1,
            },
            pgbouncer: Dial::Tcp {
                host: stack.pooler.0.clone(),
                port: stack.pooler.1,
            },
            http: Dial::Http(Arc::new(HttpTarget::new(stack.gateway, "db.localtest.me")?)),
            ws: Dial::Ws {
                gateway: stack.gateway,
                address: "db.localtest.me".into(),
                from: None,
            },
            // An IP address names no endpoint: the gateway's default, `db`.
            tcp: Dial::Tcp {
                host: stack.gateway.ip().to_string(),
                port: stack.gateway.port(),
            },
            ws_pooler: Dial::Ws {
                gateway: stack.gateway,
                address: "db-pooler.localtest.me".into(),
                from: None,
            },
        })
    }

    fn get(&self, path: Path) -> &Dial {
        match path {
            Path::Direct => &self.direct,
            Path::PgBouncer => &self.pgbouncer,
            Path::Http => &self.http,
            Path::Ws => &self.ws,
            Path::Tcp => &self.tcp,
        }
    }
}

fn log(message: impl AsRef<str>) {
    eprintln!("[loadgen] {}", message.as_ref());
}

fn summary(f: &Figures) -> String {
    format!(
        "p50 {} ms, p99 {} ms, {} q/s, {} errors",
        fmt_ms(f.p50_ms),
        fmt_ms(f.p99_ms),
        f.qps.map_or("—".into(), |q| format!("{q:.0}")),
        f.errors
    )
}

/// A p50 difference in ms, to the microsecond (the histograms' resolution).
fn fmt_tax(ms: Option<f64>) -> String {
    ms.map_or("—".into(), |v| format!("{v:.3}"))
}

/// A gateway row with errors misses a goal, whatever else it shows.
fn no_errors(row: Row) -> Row {
    let errors = row.figures.errors;
    if errors > 0 {
        row.goal(Goal::new(false, format!("no errors ({errors})")))
    } else {
        row
    }
}

/// Runs the scenarios of the plan; rows in scenario order.
pub async fn run(stack: &Stack, plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let dials = Dials::new(stack)?;
    let mut rows = Vec::new();
    if plan.runs("1") || plan.runs("2") {
        rows.extend(statements(&dials, plan).await);
    }
    if plan.runs("3") || plan.runs("6") {
        rows.extend(setups(stack, &dials, plan).await);
    }
    if plan.runs("4b") {
        rows.extend(idle_sessions(stack, &dials, plan).await);
    }
    if plan.runs("4a") {
        rows.extend(many_http_clients(stack, &dials, plan).await);
    }
    if plan.runs("8") {
        match crate::jwt::run(stack, plan).await {
            Ok(jwt) => rows.extend(jwt),
            Err(e) => log(format!("scenario 8 (JWT) failed: {e:#}")),
        }
    }
    rows.sort_by_key(|row| crate::report::scenario_order(&row.scenario));
    Ok(rows)
}

/// Scenarios 1 and 2: every path, concurrency and statement; persistent sessions per cell.
async fn statements(dials: &Dials, plan: &Plan) -> Vec<Row> {
    let statements = [
        Arc::new(Statement::new("SELECT 1", "SELECT 1", 1)),
        Arc::new(Statement::new("100 rows", ROWS_100, 100)),
    ];
    let timeouts = plan.timeouts();
    let mut cells: HashMap<(Path, usize, usize), (Figures, Option<String>)> = HashMap::new();
    for &c in &plan.concurrency {
        for path in Path::ALL {
            let skip = match path {
                Path::Http => !plan.runs("1"),
                Path::Ws | Path::Tcp => !plan.runs("2"),
                Path::Direct | Path::PgBouncer => false,
            };
            if skip {
                continue;
            }
            let (opened, mut sessions) =
                measure::open_many(dials.get(path), c, 32, None, timeouts).await;
            for (i, statement) in statements.iter().enumerate() {
                let (recorder, healthy) = measure::closed_loop(
                    sessions,
                    statement.clone(),
                    plan.window(),
                    timeouts.query,
                )
                .await;
                sessions = healthy;
                let mut figures = recorder.figures(Some(plan.window().measure));
                figures.errors += opened.errors();
                let error = recorder
                    .first_error()
                    .or(opened.first_error())
                    .map(str::to_string);
                log(format!(
                    "{}, c={c}, {}: {}{}",
                    statement.label,
                    path.label(),
                    summary(&figures),
                    error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ));
                cells.insert((path, c, i), (figures, error));
            }
            measure::close_many(sessions, 64, timeouts.connect).await;
            // The next path starts from a settled backend: the gateway's pool closes the
            // connections beyond its idle cap a second after a load that needed them.
            tokio::time::sleep(SETTLE).await;
        }
    }

    let mut rows = Vec::new();
    for (i, statement) in statements.iter().enumerate() {
        for &c in &plan.concurrency {
            let Some((direct, _)) = cells.get(&(Path::Direct, c, i)).cloned() else {
                continue;
            };
            let pgbouncer = cells.get(&(Path::PgBouncer, c, i)).cloned();
            let workload = format!("{}, c={c}", statement.label);
            let tax = |f: &Figures| match (f.p50_ms, direct.p50_ms) {
                (Some(a), Some(b)) => Some(a - b),
                _ => None,
            };
            let pgbouncer_tax = pgbouncer.as_ref().and_then(|(f, _)| tax(f));
            if let Some((figures, error)) = &pgbouncer {
                rows.push(
                    Row::new(
                        "1",
                        workload.clone(),
                        Path::PgBouncer.label(),
                        figures.clone(),
                        Some(("direct", direct.clone())),
                    )
                    .note(error.clone()),
                );
            }
            for path in [Path::Http, Path::Ws, Path::Tcp] {
                let Some((figures, error)) = cells.get(&(path, c, i)).cloned() else {
                    continue;
                };
                let scenario = if path == Path::Http { "1" } else { "2" };
                let gateway_tax = tax(&figures);
                let mut row = Row::new(
                    scenario,
                    workload.clone(),
                    path.label(),
                    figures.clone(),
                    Some(("direct", direct.clone())),
                )
                .goal(Goal::new(
                    matches!((gateway_tax, pgbouncer_tax), (Some(g), Some(p)) if g <= p),
                    format!(
                        "p50 tax ≤ PgBouncer's ({} vs {} ms)",
                        fmt_tax(gateway_tax),
                        fmt_tax(pgbouncer_tax)
                    ),
                ));
                if path != Path::Http && c == 16 {
                    let share = row.ratio_qps;
                    row = row.goal(Goal::new(
                        share.is_some_and(|s| s >= 0.85),
                        format!(
                            "q/s ≥ 85% of direct ({})",
                            share.map_or("—".into(), |s| format!("{:.0}%", s * 100.0))
                        ),
                    ));
                }
                rows.push(no_errors(row).note(error));
            }
        }
    }
    rows
}

/// Scenario 3 (new session + first query, sequential) and, around the gateway's set-ups, 6
/// (control-plane calls the route table made for them).
async fn setups(stack: &Stack, dials: &Dials, plan: &Plan) -> Vec<Row> {
    const WARMUP: usize = 10;
    let timeouts = plan.timeouts();
    let n = plan.setup_count;
    let select1 = Statement::new("SELECT 1", "SELECT 1", 1);
    let workload = format!("new session + SELECT 1, sequential, {n}x");
    let run = |path: Path| {
        let dial = dials.get(path);
        let select1 = &select1;
        async move {
            let (recorder, elapsed) =
                measure::sequential_setups(dial, select1, WARMUP, n, timeouts).await;
            let figures = recorder.figures(Some(elapsed));
            log(format!(
                "set-up, {}: {}{}",
                path.label(),
                summary(&figures),
                recorder
                    .first_error()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
            (figures, recorder.first_error().map(str::to_string))
        }
    };
    let (direct, direct_error) = run(Path::Direct).await;
    let calls_before = admin::control_plane_calls(&stack.admin).await;
    let ws = run(Path::Ws).await;
    let tcp = run(Path::Tcp).await;
    let calls_after = admin::control_plane_calls(&stack.admin).await;

    let mut rows = Vec::new();
    if plan.runs("3") {
        rows.push(
            Row::new(
                "3",
                workload.clone(),
                "direct Postgres (baseline)",
                direct.clone(),
                None,
            )
            .note(direct_error),
        );
        for (path, (figures, error)) in [(Path::Ws, &ws), (Path::Tcp, &tcp)] {
            let p99 = figures.p99_ms;
            let row = Row::new(
                "3",
                workload.clone(),
                path.label(),
                figures.clone(),
                Some(("new direct connection", direct.clone())),
            )
            .goal(Goal::new(
                p99.is_some_and(|v| v < 5.0),
                format!("p99 < 5 ms ({})", fmt_ms(p99)),
            ));
            rows.push(no_errors(row).note(error.clone()));
        }
    }
    if plan.runs("6") {
        let connections = 2 * (WARMUP + n);
        let row = Row::new(
            "6",
            format!("{connections} new warm sessions (the WebSocket and TCP set-ups of 3)"),
            "gateway route table",
            Figures::default(),
            None,
        );
        let row = match (calls_before, calls_after) {
            (Ok(before), Ok(after)) => {
                let made: Vec<(String, f64)> = after
                    .by_labels
                    .iter()
                    .map(|(labels, n)| {
                        let was = before.by_labels.get(labels).unwrap_or(&0.0);
                        (labels.clone(), n - was)
                    })
                    .filter(|(_, n)| *n > 0.0)
                    .collect();
                let total: f64 = made.iter().map(|(_, n)| n).sum();
                // Background refreshes are not on any connection's path (and not per connection).
                let refreshes = (after.refreshes - before.refreshes).clamp(0.0, total);
                let on_path = total - refreshes;
                let per_1000 = on_path * 1000.0 / connections as f64;
                log(format!(
                    "control-plane calls: {total} for {connections} sessions, \
                     {refreshes} of them background refreshes {made:?}"
                ));
                row.goal(Goal::new(
                    on_path == 0.0,
                    format!(
                        "0 control-plane calls per 1,000 on the connection path \
                         ({per_1000:.1}; {on_path} in all, plus {refreshes} background refreshes)"
                    ),
                ))
                .note((!made.is_empty()).then(|| {
                    let list: Vec<String> = made
                        .iter()
                        .map(|(labels, n)| format!("{n} × {{{labels}}}"))
                        .collect();
                    format!("calls made: {}", list.join(", "))
                }))
            }
            (Err(e), _) | (_, Err(e)) => row.goal(Goal::new(
                false,
                format!("0 control-plane calls per 1,000 (not measured: {e:#})"),
            )),
        };
        rows.push(row);
    }
    rows
}

/// Gateway RSS before a scenario, to subtract from the RSS with its connections open.
fn rss(stack: &Stack) -> Option<u64> {
    stack.gateway_pid.and_then(|pid| sys::vm_rss_kib(pid).ok())
}

/// The memory goal, from RSS before and with `n` connections open.
fn rss_goal(before: Option<u64>, with: Option<u64>, n: usize) -> (Goal, Option<String>) {
    match (before, with) {
        (Some(before), Some(with)) if n > 0 => {
            let per = (with as f64 - before as f64) / n as f64;
            (
                Goal::new(
                    per <= RSS_GOAL_KIB,
                    format!("≤ 16 KiB gateway RSS per connection ({per:.1} KiB)"),
                ),
                Some(format!(
                    "gateway VmRSS {before} KiB before, {with} KiB with {n} connections open"
                )),
            )
        }
        _ => (
            Goal::new(
                false,
                "≤ 16 KiB gateway RSS per connection (not measured: no gateway pid)",
            ),
            None,
        ),
    }
}

/// Scenario 4b: as many idle WebSocket sessions as the file limits allow, through the gateway
/// to endpoint `db`'s PgBouncer, each running one query after connecting and one at the end.
async fn idle_sessions(stack: &Stack, dials: &Dials, plan: &Plan) -> Vec<Row> {
    let timeouts = plan.timeouts();
    let gateway_nofile = stack
        .gateway_pid
        .and_then(|pid| sys::nofile_of(pid).ok())
        .unwrap_or(stack.nofile);
    // Each session is two descriptors in the gateway (client and PgBouncer) and one here.
    let fits = usize::try_from(
        (gateway_nofile.saturating_sub(1000) / 2).min(stack.nofile.saturating_sub(1000)),
    )
    .unwrap_or(usize::MAX);
    let n = plan.idle_sessions.unwrap_or(9000).min(fits);
    log(format!(
        "{n} idle WebSocket sessions via PgBouncer (file limits: gateway {gateway_nofile}, loadgen {})",
        stack.nofile
    ));
    let select1 = Statement::new("SELECT 1", "SELECT 1", 1);
    let before = rss(stack);
    let started = Instant::now();
    let (opened, sessions) =
        measure::open_many(&dials.ws_pooler, n, 64, Some(&select1), timeouts).await;
    let open_time = started.elapsed();
    let held = sessions.len();
    log(format!(
        "opened {held} in {:.1} s: {}",
        open_time.as_secs_f64(),
        summary(&opened.figures(Some(open_time)))
    ));
    tokio::time::sleep(Duration::from_secs_f64(plan.idle_hold_seconds)).await;
    let with = rss(stack);
    let (last, sessions) = query_each(sessions, &select1, 256, timeouts.query).await;
    measure::close_many(sessions, 256, timeouts.connect).await;
    let after_close = rss(stack);

    let workload = format!(
        "{n} idle WebSocket sessions via `db-pooler`, held {:.0} s",
        plan.idle_hold_seconds
    );
    let mut open_figures = opened.figures(Some(open_time));
    let last_figures = last.figures(None);
    let errors = opened.errors() + last.errors();
    open_figures.errors = errors;
    let (memory, rss_note) = rss_goal(before, with, held);
    let open_row = Row::new(
        "4b",
        workload.clone(),
        "gateway WebSocket → PgBouncer: connect + first query",
        open_figures,
        None,
    )
    .goal(Goal::new(
        held >= 5000 && errors == 0,
        format!("≥ 5,000 sessions, 0 errors ({held} held, {errors} errors)"),
    ))
    .goal(memory)
    .note(rss_note)
    .note(after_close.map(|kib| format!("gateway VmRSS {kib} KiB after closing them")))
    .note(opened.first_error().map(|e| format!("first error: {e}")));
    let last_row = Row::new(
        "4b",
        workload,
        "gateway WebSocket → PgBouncer: last query on each",
        last_figures,
        None,
    )
    .note(last.first_error().map(|e| format!("first error: {e}")));
    vec![open_row, no_errors(last_row)]
}

/// Runs `statement` once on every session, `parallel` at a time.
async fn query_each(
    sessions: Vec<Session>,
    statement: &Statement,
    parallel: usize,
    limit: Duration,
) -> (Recorder, Vec<Session>) {
    let results: Vec<_> = stream::iter(sessions)
        .map(|mut session| async move {
            let t0 = Instant::now();
            let result = session.query(statement, limit).await;
            (session, result.map(|()| t0.elapsed()))
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let mut recorder = Recorder::new();
    let mut sessions = Vec::with_capacity(results.len());
    for (session, result) in results {
        match result {
            Ok(latency) => recorder.record(latency),
            Err(e) => recorder.error(e),
        }
        sessions.push(session);
    }
    (recorder, sessions)
}

/// Scenario 4a: many HTTP keep-alive clients, each sending `SELECT 1` about every
/// clients/rate seconds (jittered), for a fixed time. Open loop: a client sends when its query
/// is due, whatever the previous answers took (each has at most one in flight, and a period
/// of seconds). How late the loadgen sent is reported next to the latencies.
async fn many_http_clients(stack: &Stack, dials: &Dials, plan: &Plan) -> Vec<Row> {
    let timeouts = plan.timeouts();
    let n = plan.http_clients;
    let select1 = Arc::new(Statement::new("SELECT 1", "SELECT 1", 1));
    let before = rss(stack);
    let started = Instant::now();
    // Batches of 500 connects in flight: well inside the accept backlog (somaxconn 4096).
    let (opened, sessions) = measure::open_many(&dials.http, n, 500, None, timeouts).await;
    log(format!(
        "opened {} HTTP connections in {:.1} s ({} errors)",
        sessions.len(),
        started.elapsed().as_secs_f64(),
        opened.errors()
    ));
    let held = sessions.len();
    let period = Duration::from_secs_f64(n as f64 / plan.http_rate.max(1.0));
    let duration = Duration::from_secs_f64(plan.http_seconds);
    let start = Instant::now();
    let until = start + duration;
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, mut session)| {
            let statement = select1.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(i as u64);
                let mut recorder = Recorder::new();
                let mut lag = Recorder::new();
                let mut due = start + period.mul_f64(rng.gen::<f64>());
                while due < until {
                    tokio::time::sleep_until(due.into()).await;
                    let sent = Instant::now();
                    lag.record(sent - due);
                    match session.query(&statement, timeouts.query).await {
                        Ok(()) => recorder.record(sent.elapsed()),
                        Err(e) => {
                            recorder.error(e);
                            return (recorder, lag, None);
                        }
                    }
                    due += period.mul_f64(rng.gen_range(0.8..1.2));
                }
                (recorder, lag, Some(session))
            })
        })
        .collect();
    let mut total = Recorder::new();
    let mut lag = Recorder::new();
    let mut sessions = Vec::with_capacity(held);
    for task in tasks {
        match task.await {
            Ok((recorder, send_lag, session)) => {
                total.merge(recorder);
                lag.merge(send_lag);
                sessions.extend(session);
            }
            Err(e) => total.error(format!("client task failed: {e}")),
        }
    }
    let with = rss(stack);
    measure::close_many(sessions, 1000, timeouts.connect).await;
    let after_close = rss(stack);
    let mut figures = total.figures(Some(start.elapsed()));
    figures.errors += opened.errors();
    let lag = lag.figures(None);
    log(format!(
        "{n} HTTP clients: {}; the loadgen sent p50 {} ms, p99 {} ms after the due time",
        summary(&figures),
        fmt_ms(lag.p50_ms),
        fmt_ms(lag.p99_ms)
    ));
    let errors = figures.errors;
    let p99 = figures.p99_ms;
    let (memory, rss_note) = rss_goal(before, with, held);
    let row = Row::new(
        "4a",
        format!(
            "{n} HTTP keep-alive clients, SELECT 1 open loop at {:.0} q/s, {:.0} s",
            plan.http_rate, plan.http_seconds
        ),
        "gateway HTTP /sql",
        figures,
        None,
    )
    .goal(Goal::new(
        errors == 0 && p99.is_some_and(|v| v < 50.0),
        format!("0 errors and p99 < 50 ms ({errors}, {})", fmt_ms(p99)),
    ))
    .goal(memory)
    .note(Some(format!(
        "latency counts from the send; the loadgen sent queries p50 {} ms, p99 {} ms after \
         they were due (its timer ticks are 1 ms)",
        fmt_ms(lag.p50_ms),
        fmt_ms(lag.p99_ms)
    )))
    .note(rss_note)
    .note(after_close.map(|kib| format!("gateway VmRSS {kib} KiB after closing them")))
    .note(
        total
            .first_error()
            .or(opened.first_error())
            .map(|e| format!("first error: {e}")),
    );
    vec![row]
}
