//! `loadgen`: the load generator of `make bench`. `loadgen run` measures the gateway next to
//! direct Postgres and PgBouncer (endpoint `db` of a wake service), and a well-behaved client
//! next to itself while a hostile one attacks the gateway (the flood test), and writes the
//! report; `loadgen report` merges the Node cold-start bench into it and writes it again.
//!
//! Run with: make bench   (scripts/bench.sh starts the stack and passes the addresses)

mod admin;
mod attacks;
mod autoscale;
mod branches;
mod client;
mod flood;
mod jwt;
mod measure;
mod report;
mod scenarios;
mod sys;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::{Args, Parser, Subcommand};

use crate::flood::{FloodPlan, FloodStack};
use crate::report::Report;
use crate::scenarios::{Plan, Stack};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "The gateway next to direct Postgres and PgBouncer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scenarios, print the table, write the JSON and Markdown reports.
    Run(Box<RunArgs>),
    /// Merge the cold-start JSON into the JSON report and write both reports again.
    Report(ReportArgs),
}

#[derive(Args)]
struct Outputs {
    /// The JSON report.
    #[arg(
        long,
        env = "BENCH_RESULTS_JSON",
        default_value = "bench/results/latest.json"
    )]
    json: PathBuf,
    /// The Markdown report.
    #[arg(long, env = "BENCH_MARKDOWN", default_value = "BENCHMARKS.md")]
    markdown: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    /// The gateway's public port (`host:port`).
    #[arg(long, env = "BENCH_GATEWAY")]
    gateway: SocketAddr,
    /// The gateway's admin port (`host:port`), for `/metrics`.
    #[arg(long, env = "BENCH_GATEWAY_ADMIN")]
    gateway_admin: String,
    /// The gateway's pid, for its memory and file limit (from /proc).
    #[arg(long, env = "BENCH_GATEWAY_PID")]
    gateway_pid: Option<u32>,
    /// The wake service (`http://host:port`), for endpoint `db`'s addresses.
    #[arg(long, env = "WAKE_URL")]
    wake_url: String,
    /// The wake service's admin token.
    #[arg(long, env = "WAKE_ADMIN_TOKEN", hide_env_values = true)]
    wake_token: String,
    /// Smaller counts and durations (about a minute of load).
    #[arg(long, env = "BENCH_QUICK")]
    quick: bool,
    /// How the processes were placed on cores (for the report).
    #[arg(long, env = "BENCH_PINNING", default_value = "not pinned")]
    pinning: String,
    /// Only these scenarios (1, 2, 3, 4a, 4b, 6, 8; 7a to 7j, or 7 or `flood` for all of the
    /// flood test), comma-separated.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Concurrency levels of scenarios 1 and 2, comma-separated.
    #[arg(long, value_delimiter = ',')]
    concurrency: Option<Vec<usize>>,
    /// Measured seconds per cell of scenarios 1 and 2.
    #[arg(long)]
    cell_seconds: Option<f64>,
    /// Set-ups per path in scenario 3.
    #[arg(long)]
    setup_count: Option<usize>,
    /// HTTP keep-alive clients in scenario 4a.
    #[arg(long)]
    http_clients: Option<usize>,
    /// Aggregate query rate of scenario 4a, per second.
    #[arg(long)]
    http_rate: Option<f64>,
    /// Seconds of scenario 4a's paced load.
    #[arg(long)]
    http_seconds: Option<f64>,
    /// Idle WebSocket sessions in scenario 4b (default: what the file limits allow, ≤ 9000).
    #[arg(long)]
    idle_sessions: Option<usize>,
    /// The flood test's attacker connects from this address (any of 127.0.0.0/8 is loopback).
    #[arg(long, env = "BENCH_ATTACKER_IP", default_value = "127.0.0.2")]
    attacker_ip: IpAddr,
    /// The flood test's attacker's own endpoint, which the gateway must have a static route
    /// for, to endpoint `db`'s Postgres: the authenticated attacks run there (without it, on
    /// `db`, sharing the victim's endpoint limits), and the iteration bomb (7a) needs it.
    #[arg(long, env = "BENCH_ATTACKER_ENDPOINT")]
    attacker_endpoint: Option<String>,
    /// The gateway's --max-client-connections, for 7j to open 1.5× as many sessions.
    #[arg(long)]
    gateway_max_client_connections: Option<usize>,
    /// Seconds of each flood attack.
    #[arg(long)]
    flood_attack_seconds: Option<f64>,
    /// PBKDF2 iterations the iteration bomb's verifier asks for (7a).
    #[arg(long)]
    flood_bomb_iterations: Option<u32>,
    /// Gateway RSS (MiB) at which a flood attack is stopped.
    #[arg(long)]
    flood_rss_limit_mib: Option<u64>,
    /// Keep the other scenarios' rows of an existing JSON report (replace only the rows of
    /// the scenarios run now).
    #[arg(long)]
    merge: bool,
    #[command(flatten)]
    outputs: Outputs,
}

#[derive(Args)]
struct ReportArgs {
    /// The cold-start bench's JSON (`BENCH_COLD_START_JSON` of cold-start.bench.js).
    #[arg(long)]
    cold_start: Option<PathBuf>,
    /// Scenario 9's JSON (`BENCH_AUTOSCALE_JSON` of scripts/bench.sh).
    #[arg(long)]
    autoscale: Option<PathBuf>,
    /// Scenario 10's JSON (`BENCH_BRANCHES_JSON` of branches.bench.js).
    #[arg(long)]
    branches: Option<PathBuf>,
    #[command(flatten)]
    outputs: Outputs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Report(args) => report(args),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let nofile = sys::raise_nofile()?;
    let mut plan = Plan::new(args.quick);
    plan.only = args.only.clone();
    if let Some(c) = args.concurrency {
        plan.concurrency = c;
    }
    if let Some(s) = args.cell_seconds {
        plan.cell_seconds = s;
    }
    if let Some(n) = args.setup_count {
        plan.setup_count = n;
    }
    if let Some(n) = args.http_clients {
        plan.http_clients = n;
    }
    if let Some(r) = args.http_rate {
        plan.http_rate = r;
    }
    if let Some(s) = args.http_seconds {
        plan.http_seconds = s;
    }
    if args.idle_sessions.is_some() {
        plan.idle_sessions = args.idle_sessions;
    }
    let mut flood_plan = FloodPlan::new(args.quick);
    if let Some(s) = args.flood_attack_seconds {
        flood_plan.attack_seconds = s;
    }
    if let Some(n) = args.flood_bomb_iterations {
        flood_plan.bomb_iterations = n;
    }
    if let Some(mib) = args.flood_rss_limit_mib {
        flood_plan.rss_limit_mib = mib;
    }
    // One worker per core this process may use (one when bench.sh pins it).
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    let machine = sys::Machine::detect(args.quick, args.pinning);
    let rows = runtime.block_on(async {
        let wake = args
            .wake_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let endpoint = admin::endpoint(&wake, &args.wake_token, "db")
            .await
            .context("reading endpoint db from the wake service")?;
        let stack = Stack {
            gateway: args.gateway,
            admin: args.gateway_admin,
            gateway_pid: args.gateway_pid,
            direct: host_port(&endpoint.addresses.direct)?,
            pooler: host_port(&endpoint.addresses.pooler)?,
            nofile,
            wake: wake.clone(),
            wake_token: args.wake_token.clone(),
        };
        let mut rows = scenarios::run(&stack, &plan).await?;
        let flood_stack = FloodStack {
            gateway: args.gateway,
            gateway_pid: args.gateway_pid,
            direct: stack.direct.clone(),
            nofile,
            wake,
            wake_token: args.wake_token.clone(),
            attacker: args.attacker_ip,
            attacker_endpoint: args.attacker_endpoint.clone(),
            max_client_connections: args.gateway_max_client_connections,
        };
        rows.extend(flood::run(&flood_stack, &flood_plan, &args.only).await);
        anyhow::Ok(rows)
    })?;
    let report = if args.merge && args.outputs.json.exists() {
        let mut report = Report::load(&args.outputs.json)?;
        report.replace_rows(rows);
        report
    } else {
        let mut settings = serde_json::to_value(&plan)?;
        settings["flood"] = serde_json::to_value(&flood_plan)?;
        Report::new(machine, settings, rows)
    };
    write(&report, &args.outputs)
}

fn report(args: ReportArgs) -> anyhow::Result<()> {
    let mut report = Report::load(&args.outputs.json)?;
    if let Some(path) = args.cold_start {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        report.merge_cold_start(serde_json::from_str(&text)?)?;
    }
    if let Some(path) = args.autoscale {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        report.merge_autoscale(serde_json::from_str(&text)?)?;
    }
    if let Some(path) = args.branches {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        report.merge_branches(serde_json::from_str(&text)?)?;
    }
    write(&report, &args.outputs)
}

fn write(report: &Report, outputs: &Outputs) -> anyhow::Result<()> {
    let markdown = report.markdown();
    println!("{markdown}");
    report.write_json(&outputs.json)?;
    std::fs::write(&outputs.markdown, &markdown)
        .with_context(|| format!("writing {}", outputs.markdown.display()))?;
    eprintln!(
        "[loadgen] wrote {} and {}",
        outputs.json.display(),
        outputs.markdown.display()
    );
    Ok(())
}

/// `host:port` → (host, port).
fn host_port(address: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("not host:port: {address}"))?;
    Ok((host.to_string(), port.parse().context("port")?))
}
