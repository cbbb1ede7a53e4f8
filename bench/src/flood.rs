//! Scenario 7, the flood test: while a hostile client on 127.0.0.2 runs one attack
//! ([`crate::attacks`]), a well-behaved client on 127.0.0.1 runs `SELECT 1` over HTTP `/sql`
//! (keep-alive) and over a WebSocket session, each closed loop, and opens a new WebSocket
//! session (connect + query) ten times a second; its latency and errors are set next to its
//! own figures with no attacker, measured just before on the same gateway, as a ratio. The
//! gateway's RSS is sampled during the attack; passing the guard (2 GiB) stops the attack, so
//! the machine stays healthy.
//!
//! Goals per attack (issue 13): no victim errors (a refused connection or a query that takes
//! longer than the victim's timeout is one), victim p99 ≤ 3× quiet (over every attempt, a
//! failed one counted at the timeout: a hang is never a fast answer), and gateway RSS under
//! the guard. Attacks:
//!
//! - 7a iteration bomb: `/sql` logins with random passwords for a role whose Postgres verifier
//!   asks for 10⁷ PBKDF2 iterations, on a static route (the gateway, as SCRAM client, derives
//!   the keys with the count Postgres sends);
//! - 7b/7c zero-column and one-NULL-column row floods over `/sql`;
//! - 7d `PRI * HTTP/2.0\r\n` and stall; 7e idle HTTP/2 connections; 7f thousands of streams on
//!   one HTTP/2 connection; 7g `/sql` bodies trickled a byte per second;
//! - 7h 10 MiB JSON bodies with a wrong password; 7i a 60 MiB WebSocket message before the
//!   startup packet; 7j more WebSocket sessions than `--max-client-connections`.
//!
//! The attacker's authenticated attacks (7a, 7b, 7c, 7f, 7g) go to an endpoint of its own, a
//! static route to the same Postgres: a tenant's own limits (in flight per endpoint, say) are
//! not what the victim, another tenant, should feel (the Postgres is shared, though, so what
//! an attack costs there is). Each attack runs for a fixed time with
//! fixed counts and closes its sockets before the next starts; `scripts/bench.sh` gives each
//! its own fresh gateway (7j one with a cap of 200 connections), so one attack's leftovers
//! (memory kept by the allocator, hashing that outlives its client) never count against the
//! next.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use rand::distributions::{Alphanumeric, DistString};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::attacks::{self, Attack, Tally, Target};
use crate::client::{Dial, HttpTarget, Session, Statement, Timeouts, DATABASE};
use crate::measure::{Figures, Recorder};
use crate::report::{fmt_ms, fmt_ratio, Goal, Row};
use crate::sys;

/// The role of the iteration bomb, made through the wake service on endpoint `db`.
const BOMB_ROLE: &str = "flood_bomb";
/// Any valid base64 of the right lengths does (16-byte salt, 32-byte keys): nobody logs in.
const BOMB_SALT: &str = "c2FsdHNhbHRzYWx0c2FsdA==";
const BOMB_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
/// The row floods stream: `SELECT FROM generate_series(…)` would first materialize the whole
/// series in a tuplestore (gigabytes of temp files, half a minute before the first row), while
/// a set-returning function in a subquery's target list hands rows over as they are made.
const ZERO_COLUMN_FLOOD: &str = "SELECT FROM (SELECT generate_series(1,300000000)) s";
const NULL_COLUMN_FLOOD: &str = "SELECT NULL FROM (SELECT generate_series(1,300000000)) s";
/// After a failed query or connect, the victim waits this long before it tries again (so a
/// gateway that refuses at once yields errors at a bounded rate).
const VICTIM_PAUSE: Duration = Duration::from_millis(100);
/// How often the victim opens a new session. Paced, not back to back: each one forks a
/// Postgres backend, and a storm of them would blur the persistent clients' quiet p99.
const SETUP_EVERY: Duration = Duration::from_millis(100);
/// How often the gateway's RSS is read during an attack.
const RSS_EVERY: Duration = Duration::from_millis(50);
/// The p99 goal: attack p99 ≤ this × quiet p99.
const P99_RATIO_GOAL: f64 = 3.0;

/// Sizes and durations of the flood test.
#[derive(Clone, Debug, Serialize)]
pub struct FloodPlan {
    pub warmup_seconds: f64,
    /// The victim alone, before each attack.
    pub quiet_seconds: f64,
    /// Each attack, the victim measured meanwhile.
    pub attack_seconds: f64,
    /// A victim query or connect that takes longer is an error.
    pub victim_timeout_seconds: f64,
    /// Gateway RSS at which an attack is stopped (a failed goal).
    pub rss_limit_mib: u64,
    pub bomb_concurrency: usize,
    /// The bomb role's verifier asks for this many PBKDF2 iterations. Setting it costs as
    /// much in Postgres (ALTER ROLE checks the new verifier against the empty password): about
    /// 1 µs per iteration, so 10⁷ (2 500 × Postgres's default, 100 × the cap the gateway is
    /// getting) rather than 10⁸, which would take a minute and a half to set.
    pub bomb_iterations: u32,
    pub row_flood_concurrency: usize,
    /// 7d, 7e, 7g (within the file limits).
    pub stall_connections: usize,
    pub trickle_connections: usize,
    /// 7f: streams on one HTTP/2 connection.
    pub h2_streams: usize,
    pub json_concurrency: usize,
    pub json_bytes: usize,
    pub ws_message_concurrency: usize,
    pub ws_message_bytes: usize,
    /// 7j without a known cap; with one, 1.5× the cap.
    pub sessions: usize,
}

impl FloodPlan {
    pub fn new(quick: bool) -> FloodPlan {
        FloodPlan {
            warmup_seconds: 0.5,
            quiet_seconds: if quick { 2.0 } else { 5.0 },
            attack_seconds: if quick { 3.0 } else { 10.0 },
            victim_timeout_seconds: 2.0,
            rss_limit_mib: 2048,
            bomb_concurrency: if quick { 8 } else { 16 },
            bomb_iterations: 10_000_000,
            row_flood_concurrency: if quick { 2 } else { 4 },
            stall_connections: if quick { 1000 } else { 2000 },
            trickle_connections: if quick { 500 } else { 1000 },
            h2_streams: if quick { 2000 } else { 10_000 },
            json_concurrency: if quick { 8 } else { 16 },
            json_bytes: 10 * 1024 * 1024,
            ws_message_concurrency: if quick { 4 } else { 8 },
            ws_message_bytes: 60 * 1024 * 1024,
            sessions: 300,
        }
    }

    fn victim_timeouts(&self) -> Timeouts {
        let limit = Duration::from_secs_f64(self.victim_timeout_seconds);
        Timeouts {
            connect: limit,
            query: limit,
        }
    }
}

/// What the flood test runs against.
pub struct FloodStack {
    pub gateway: SocketAddr,
    /// For RSS; without it memory is not measured (and not guarded).
    pub gateway_pid: Option<u32>,
    /// Endpoint `db`'s Postgres, where the bomb role's verifier is set.
    pub direct: (String, u16),
    /// This process's file limit.
    pub nofile: u64,
    /// The wake service (`host:port`) and its admin token, to make the bomb role.
    pub wake: String,
    pub wake_token: String,
    /// The attacker's source address.
    pub attacker: IpAddr,
    /// The attacker's own endpoint: a static route to endpoint `db`'s Postgres. Its
    /// authenticated attacks run there (else on `db`, sharing the victim's endpoint limits),
    /// and the iteration bomb (7a) needs it.
    pub attacker_endpoint: Option<String>,
    /// The gateway's `--max-client-connections`, when 7j should exceed it.
    pub max_client_connections: Option<usize>,
}

/// Whether `--only` selects attack `id` (`7` and `flood` select them all).
pub fn selected(only: &[String], id: &str) -> bool {
    only.is_empty() || only.iter().any(|s| s == id || s == "7" || s == "flood")
}

/// One attack and its row texts.
struct Spec {
    id: &'static str,
    workload: String,
    attack: Attack,
}

fn log(message: impl AsRef<str>) {
    eprintln!("[loadgen] {}", message.as_ref());
}

/// Runs the selected attacks, the iteration bomb last (its hashing outlives it).
pub async fn run(stack: &FloodStack, plan: &FloodPlan, only: &[String]) -> Vec<Row> {
    let mut rows = Vec::new();
    for spec in specs(stack, plan) {
        if !selected(only, spec.id) {
            continue;
        }
        if spec.id == "7a" {
            if let Err(e) = bomb_role(stack, plan.bomb_iterations).await {
                log(format!("7a: the bomb role could not be set up: {e:#}"));
                rows.push(
                    Row::new("7a", spec.workload, "set-up", Figures::default(), None)
                        .goal(Goal::new(false, format!("set up the bomb role ({e:#})"))),
                );
                continue;
            }
        }
        log(format!("{} {}", spec.id, spec.workload));
        rows.extend(one(stack, plan, spec).await);
    }
    if selected(only, "7a") && stack.attacker_endpoint.is_none() {
        log("7a skipped: it needs --attacker-endpoint (bench.sh gives it one)");
    }
    rows
}

fn specs(stack: &FloodStack, plan: &FloodPlan) -> Vec<Spec> {
    let secs = plan.attack_seconds;
    let from = stack.attacker;
    // Where the authenticated attacks go.
    let on = match &stack.attacker_endpoint {
        Some(endpoint) => format!("its own endpoint `{endpoint}`"),
        None => "the victim's endpoint `db`".into(),
    };
    // Descriptors: one per connection here, one or two in the gateway (whose limit bench.sh
    // raises like this one's).
    let fits = |n: usize| {
        n.min(usize::try_from(stack.nofile.saturating_sub(1000) / 2).unwrap_or(usize::MAX))
    };
    let stall = fits(plan.stall_connections);
    let trickle = fits(plan.trickle_connections);
    let (sessions, cap_text) = match stack.max_client_connections {
        Some(cap) => (
            fits(cap + cap / 2),
            format!("--max-client-connections {cap}"),
        ),
        None => (fits(plan.sessions), "the gateway's connection cap".into()),
    };
    let mib = |bytes: usize| bytes / (1024 * 1024);
    let mut specs = vec![
        Spec {
            id: "7b",
            workload: format!(
                "zero-column row flood: {} × `/sql` `{ZERO_COLUMN_FLOOD}` from {from} to {on}, \
                 {secs} s",
                plan.row_flood_concurrency
            ),
            attack: Attack::RowFlood {
                sql: ZERO_COLUMN_FLOOD,
                concurrency: plan.row_flood_concurrency,
            },
        },
        Spec {
            id: "7c",
            workload: format!(
                "one-NULL-column row flood: {} × `/sql` `{NULL_COLUMN_FLOOD}` from {from} to \
                 {on}, {secs} s",
                plan.row_flood_concurrency
            ),
            attack: Attack::RowFlood {
                sql: NULL_COLUMN_FLOOD,
                concurrency: plan.row_flood_concurrency,
            },
        },
        Spec {
            id: "7d",
            workload: format!(
                "{stall} connections from {from} send `PRI * HTTP/2.0\\r\\n` and stall, {secs} s"
            ),
            attack: Attack::PriStall { connections: stall },
        },
        Spec {
            id: "7e",
            workload: format!(
                "{stall} idle HTTP/2 connections from {from} (preface, SETTINGS, PINGs answered), \
                 {secs} s"
            ),
            attack: Attack::IdleH2 { connections: stall },
        },
        Spec {
            id: "7f",
            workload: format!(
                "{} `POST /sql` streams at once on one HTTP/2 connection from {from} to {on}, \
                 bodies never sent, {secs} s",
                plan.h2_streams
            ),
            attack: Attack::H2Streams {
                connections: 1,
                streams: plan.h2_streams,
            },
        },
        Spec {
            id: "7g",
            workload: format!(
                "{trickle} `/sql` bodies of 1 MiB from {from} to {on}, trickled a byte per \
                 second, {secs} s"
            ),
            attack: Attack::Trickle {
                connections: trickle,
                content_length: 1024 * 1024,
            },
        },
        Spec {
            id: "7h",
            workload: format!(
                "{} × {} MiB JSON `/sql` bodies (`params` of zeros) with a wrong password for \
                 `db` from {from}, back to back, {secs} s",
                plan.json_concurrency,
                mib(plan.json_bytes)
            ),
            attack: Attack::HugeJson {
                concurrency: plan.json_concurrency,
                bytes: plan.json_bytes,
            },
        },
        Spec {
            id: "7i",
            workload: format!(
                "{} WebSocket upgrades from {from}, each sending a {} MiB message (all but its \
                 last byte) before any startup, {secs} s",
                plan.ws_message_concurrency,
                mib(plan.ws_message_bytes)
            ),
            attack: Attack::WsOversize {
                concurrency: plan.ws_message_concurrency,
                bytes: plan.ws_message_bytes,
            },
        },
        Spec {
            id: "7j",
            workload: format!(
                "{sessions} WebSocket sessions (via `db-pooler`) from {from} against \
                 {cap_text}, held {secs} s"
            ),
            attack: Attack::WsSessions { sessions },
        },
    ];
    if stack.attacker_endpoint.is_some() {
        specs.push(Spec {
            id: "7a",
            workload: format!(
                "iteration bomb: {} × `/sql` from {from} to {on} with random passwords for a role \
                 whose verifier asks for {} iterations, {secs} s",
                plan.bomb_concurrency, plan.bomb_iterations
            ),
            attack: Attack::IterationBomb {
                role: BOMB_ROLE.into(),
                concurrency: plan.bomb_concurrency,
            },
        });
    }
    specs
}

/// The bomb role on endpoint `db`: made (or given a new password) through the wake service,
/// whose roles API takes passwords only and would hand the gateway a 4096-iteration secret;
/// then, logged in straight to Postgres as the role itself (a role may change its own
/// password without CREATEROLE), its verifier replaced by one asking for `iterations`.
///
/// What this exercises: on the static route the gateway does not check the password against a
/// control-plane secret; it logs in to Postgres with the cleartext password as a SCRAM client,
/// so it runs PBKDF2 with the iteration count Postgres sends (from this verifier) for every
/// new password. Postgres itself only checks the proof (a few hashes).
async fn bomb_role(stack: &FloodStack, iterations: u32) -> anyhow::Result<()> {
    let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 32);
    admin::ensure_role(&stack.wake, &stack.wake_token, "db", BOMB_ROLE, &password)
        .await
        .context("making the role through the wake service")?;
    let (client, conn) = tokio_postgres::Config::new()
        .host(&stack.direct.0)
        .port(stack.direct.1)
        .user(BOMB_ROLE)
        .password(&password)
        .dbname(DATABASE)
        .connect_timeout(Duration::from_secs(10))
        .connect(NoTls)
        .await
        .context("logging in to Postgres as the bomb role")?;
    let conn = tokio::spawn(conn);
    let verifier = format!("SCRAM-SHA-256${iterations}:{BOMB_SALT}${BOMB_KEY}:{BOMB_KEY}");
    // Postgres hashes the empty password with the new verifier's count (~1 µs an iteration).
    let altered = tokio::time::timeout(
        Duration::from_secs(10) + Duration::from_nanos(u64::from(iterations) * 3000),
        client.batch_execute(&format!("ALTER ROLE {BOMB_ROLE} PASSWORD '{verifier}'")),
    )
    .await
    .map_err(|_| anyhow!("ALTER ROLE timed out"))?
    .context("setting the verifier");
    drop(client);
    let _ = conn.await;
    altered
}

/// Victim phases: queries that start in `QUIET` or `ATTACK` count there; `STOP` ends it.
const WARMUP: u8 = 0;
const QUIET: u8 = 1;
const ATTACK: u8 = 2;
const STOP: u8 = 3;

/// A victim client's recorders: quiet, then under attack.
#[derive(Default)]
struct Phases {
    quiet: Recorder,
    attack: Recorder,
}

impl Phases {
    fn of(&mut self, phase: u8) -> Option<&mut Recorder> {
        match phase {
            QUIET => Some(&mut self.quiet),
            ATTACK => Some(&mut self.attack),
            _ => None,
        }
    }
}

/// What the three victim clients measured.
struct VictimFigures {
    http: Phases,
    ws: Phases,
    setups: Phases,
}

/// The victim runs on its own thread and runtime, so the attacker's tasks (on the loadgen's
/// main runtime) never delay its polls; the OS shares the client core between the two.
fn spawn_victim(
    gateway: SocketAddr,
    phase: Arc<AtomicU8>,
    timeouts: Timeouts,
) -> anyhow::Result<oneshot::Receiver<VictimFigures>> {
    let http = Dial::Http(Arc::new(HttpTarget::new(gateway, "db.localtest.me")?));
    let ws = Dial::Ws {
        gateway,
        address: "db.localtest.me".into(),
        from: None,
    };
    let (tx, rx) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("victim".into())
        .spawn(move || {
            let figures = runtime.block_on(async {
                let select1 = Statement::new("SELECT 1", "SELECT 1", 1);
                let (http, ws, setups) = tokio::join!(
                    persistent(&http, &select1, &phase, timeouts),
                    persistent(&ws, &select1, &phase, timeouts),
                    setups(&ws, &select1, &phase, timeouts),
                );
                VictimFigures { http, ws, setups }
            });
            let _ = tx.send(figures);
        })?;
    Ok(rx)
}

/// `SELECT 1` back to back on one session; after a failure, a new session.
async fn persistent(
    dial: &Dial,
    statement: &Statement,
    phase: &AtomicU8,
    timeouts: Timeouts,
) -> Phases {
    let mut phases = Phases::default();
    let mut session: Option<Session> = None;
    loop {
        let now = phase.load(Ordering::Relaxed);
        if now == STOP {
            break;
        }
        let t0 = Instant::now();
        let open = match session.as_mut() {
            Some(open) => open,
            None => match dial.connect(timeouts).await {
                Ok(new) => session.insert(new),
                Err(e) => {
                    if let Some(recorder) = phases.of(now) {
                        let counted = t0.elapsed().max(timeouts.connect);
                        recorder.fail(counted, format!("reconnecting: {e:#}"));
                    }
                    tokio::time::sleep(VICTIM_PAUSE).await;
                    continue;
                }
            },
        };
        let t0 = Instant::now();
        match open.query(statement, timeouts.query).await {
            Ok(()) => {
                if let Some(recorder) = phases.of(now) {
                    recorder.record(t0.elapsed());
                }
            }
            Err(e) => {
                if let Some(recorder) = phases.of(now) {
                    recorder.fail(t0.elapsed().max(timeouts.query), e);
                }
                if let Some(broken) = session.take() {
                    broken.close(VICTIM_PAUSE).await;
                }
                tokio::time::sleep(VICTIM_PAUSE).await;
            }
        }
    }
    if let Some(open) = session {
        open.close(timeouts.connect).await;
    }
    phases
}

/// New session + `SELECT 1` + close, every [`SETUP_EVERY`] (or as soon as the previous one
/// ended, if it took longer); records connect + query.
async fn setups(
    dial: &Dial,
    statement: &Statement,
    phase: &AtomicU8,
    timeouts: Timeouts,
) -> Phases {
    let mut phases = Phases::default();
    let mut every = tokio::time::interval(SETUP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = phase.load(Ordering::Relaxed);
        if now == STOP {
            break;
        }
        let t0 = Instant::now();
        let outcome = match dial.connect(timeouts).await {
            Ok(mut session) => {
                let result = session.query(statement, timeouts.query).await;
                let latency = t0.elapsed();
                session.close(timeouts.connect).await;
                result.map(|()| latency)
            }
            Err(e) => Err(e),
        };
        match (outcome, phases.of(now)) {
            (Ok(latency), Some(recorder)) => recorder.record(latency),
            (Err(e), Some(recorder)) => recorder.fail(t0.elapsed().max(timeouts.connect), e),
            (_, None) => {}
        }
    }
    phases
}

/// Gateway memory during one attack, in KiB.
#[derive(Default)]
struct Memory {
    before: Option<u64>,
    /// The highest sample.
    peak: Option<u64>,
    /// When the guard stopped the attack (seconds into it).
    guard_tripped: Option<f64>,
}

/// One attack: the victim quiet, then under attack; rows for its three clients and for the
/// gateway's memory.
async fn one(stack: &FloodStack, plan: &FloodPlan, spec: Spec) -> Vec<Row> {
    let timeouts = plan.victim_timeouts();
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let victim = match spawn_victim(stack.gateway, phase.clone(), timeouts) {
        Ok(victim) => victim,
        Err(e) => {
            return vec![
                Row::new(spec.id, spec.workload, "victim", Figures::default(), None)
                    .goal(Goal::new(false, format!("start the victim ({e:#})"))),
            ]
        }
    };
    let rss = || stack.gateway_pid.and_then(|pid| sys::vm_rss_kib(pid).ok());
    tokio::time::sleep(Duration::from_secs_f64(plan.warmup_seconds)).await;
    phase.store(QUIET, Ordering::Relaxed);
    let quiet_started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(plan.quiet_seconds)).await;
    let quiet_time = quiet_started.elapsed();

    let mut memory = Memory {
        before: rss(),
        ..Memory::default()
    };
    memory.peak = memory.before;
    let target = Target {
        gateway: stack.gateway,
        from: stack.attacker,
        endpoint: stack
            .attacker_endpoint
            .clone()
            .unwrap_or_else(|| "db".into()),
    };
    let stop = CancellationToken::new();
    let tally = Arc::new(Tally::default());
    let cpu = || {
        let gateway = stack
            .gateway_pid
            .and_then(|pid| sys::cpu_time(&pid.to_string()).ok());
        (gateway, sys::cpu_time("self").ok())
    };
    let cpu_before = cpu();
    phase.store(ATTACK, Ordering::Relaxed);
    let started = Instant::now();
    let attack = tokio::spawn(attacks::run(
        spec.attack.clone(),
        target,
        stop.clone(),
        tally.clone(),
    ));
    let limit_kib = plan.rss_limit_mib * 1024;
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(plan.attack_seconds);
    let mut every = tokio::time::interval(RSS_EVERY);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = every.tick() => {
                let Some(kib) = rss() else { continue };
                memory.peak = memory.peak.max(Some(kib));
                if kib > limit_kib {
                    memory.guard_tripped = Some(started.elapsed().as_secs_f64());
                    log(format!(
                        "{}: gateway RSS {} MiB passed the {} MiB guard; stopping the attack",
                        spec.id, kib / 1024, plan.rss_limit_mib
                    ));
                    break;
                }
            }
        }
    }
    phase.store(STOP, Ordering::Relaxed);
    stop.cancel();
    let attack_time = started.elapsed();
    let cpu_after = cpu();
    let share = |before: Option<Duration>, after: Option<Duration>| match (before, after) {
        (Some(b), Some(a)) => format!(
            "{:.0}%",
            100.0 * a.saturating_sub(b).as_secs_f64() / attack_time.as_secs_f64()
        ),
        _ => "—".into(),
    };
    let cpu_note = format!(
        "CPU during the attack: gateway {} of a core, loadgen (attacker and victim) {}",
        share(cpu_before.0, cpu_after.0),
        share(cpu_before.1, cpu_after.1)
    );
    log(format!("{}: {cpu_note}", spec.id));
    // Its sockets close; the gateway's memory is still watched meanwhile.
    let mut attack = attack;
    loop {
        tokio::select! {
            _ = &mut attack => break,
            _ = every.tick() => memory.peak = memory.peak.max(rss()),
        }
    }
    let after = rss();
    let victim = tokio::time::timeout(
        Duration::from_secs_f64(4.0 * plan.victim_timeout_seconds + 10.0),
        victim,
    )
    .await;
    let victim = match victim {
        Ok(Ok(figures)) => figures,
        _ => {
            return vec![
                Row::new(spec.id, spec.workload, "victim", Figures::default(), None)
                    .goal(Goal::new(false, "the victim ended in time")),
            ]
        }
    };
    let tally = tally.summary();
    log(format!("{}: attacker: {tally}", spec.id));

    let mut rows = Vec::new();
    for (path, phases) in [
        ("victim HTTP /sql, keep-alive", &victim.http),
        ("victim WebSocket session", &victim.ws),
        ("victim new WebSocket session + SELECT 1", &victim.setups),
    ] {
        let quiet = phases.quiet.figures(Some(quiet_time));
        let during = phases.attack.figures(Some(attack_time));
        let ratio = match (during.p99_ms, quiet.p99_ms) {
            (Some(a), Some(q)) if q > 0.0 => Some(a / q),
            _ => None,
        };
        log(format!(
            "{} {path}: quiet p50 {} p99 {} ms ({} errors); attack p50 {} p99 {} ms ({} errors), \
             p99 {}",
            spec.id,
            fmt_ms(quiet.p50_ms),
            fmt_ms(quiet.p99_ms),
            quiet.errors,
            fmt_ms(during.p50_ms),
            fmt_ms(during.p99_ms),
            during.errors,
            fmt_ratio(ratio)
        ));
        let errors = during.errors;
        let row = Row::new(
            spec.id,
            spec.workload.clone(),
            path,
            during,
            Some(("same client, no attacker", quiet.clone())),
        )
        .goal(Goal::new(errors == 0, format!("0 errors ({errors})")))
        .goal(Goal::new(
            ratio.is_some_and(|r| r <= P99_RATIO_GOAL),
            format!("p99 ≤ 3× quiet ({})", fmt_ratio(ratio)),
        ))
        .note(
            phases
                .attack
                .first_error()
                .map(|e| format!("first error: {e}")),
        )
        .note((quiet.errors > 0).then(|| {
            format!(
                "{} errors with no attacker; first: {}",
                quiet.errors,
                phases.quiet.first_error().unwrap_or("?")
            )
        }));
        rows.push(row);
    }
    rows.push(
        memory_row(&spec, plan, &memory, after, attack_time, stack, tally).note(Some(cpu_note)),
    );
    rows
}

fn memory_row(
    spec: &Spec,
    plan: &FloodPlan,
    memory: &Memory,
    after: Option<u64>,
    attack_time: Duration,
    stack: &FloodStack,
    tally: String,
) -> Row {
    let mib = |kib: Option<u64>| kib.map_or("—".into(), |k| format!("{}", k / 1024));
    let row = Row::new(
        spec.id,
        spec.workload.clone(),
        "gateway RSS; the attacker's view",
        Figures::default(),
        None,
    );
    let limit_kib = plan.rss_limit_mib * 1024;
    let goal = match (memory.peak, memory.guard_tripped) {
        (None, _) => Goal::new(
            false,
            format!(
                "RSS < {} MiB (not measured: no gateway pid)",
                plan.rss_limit_mib
            ),
        ),
        (Some(peak), Some(at)) => Goal::new(
            false,
            format!(
                "RSS < {} MiB (peak {} MiB: passed it after {at:.1} s, attack stopped)",
                plan.rss_limit_mib,
                peak / 1024
            ),
        ),
        (Some(peak), None) => Goal::new(
            peak <= limit_kib,
            format!(
                "RSS < {} MiB ({} MiB before, peak {} MiB)",
                plan.rss_limit_mib,
                mib(memory.before),
                peak / 1024
            ),
        ),
    };
    let hwm = stack.gateway_pid.and_then(|pid| sys::vm_hwm_kib(pid).ok());
    row.goal(goal)
        .note(Some(format!(
            "gateway RSS {} MiB before the attack, {} MiB at its peak (sampled every {} ms; \
             VmHWM {} MiB), {} MiB after it closed; attack ran {:.1} s",
            mib(memory.before),
            mib(memory.peak),
            RSS_EVERY.as_millis(),
            mib(hwm),
            mib(after),
            attack_time.as_secs_f64()
        )))
        .note(Some(format!("attacker from {}: {tally}", stack.attacker)))
        .note((spec.id == "7a").then_some(
            "bench.sh kills this gateway afterwards: an unfixed one keeps hashing long after the \
             attacker has gone",
        ))
}

#[cfg(test)]
mod tests {
    use super::selected;

    #[test]
    fn only_selects_attacks() {
        let only = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(selected(&[], "7d"));
        assert!(selected(&only(&["flood"]), "7a"));
        assert!(selected(&only(&["7"]), "7j"));
        assert!(selected(&only(&["1", "7d"]), "7d"));
        assert!(!selected(&only(&["7d"]), "7e"));
        assert!(!selected(&only(&["1", "2"]), "7b"));
    }
}
