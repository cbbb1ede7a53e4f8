//! Command line: `serve` (the service) and the operator subcommands that wrap the API.
//! Every flag has an environment variable; `serve`'s flags are validated once into an
//! immutable [`ServeConfig`] before any port is bound.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::autoscale::sizing::Cu;
use crate::compute::local::LocalConfig;
use crate::compute::railway::client::RateBudget;
use crate::compute::railway::{self, Network, RailwayConfig};
use crate::lifecycle::{BranchSettings, PublicAddress};
use crate::scheduler::SchedulerConfig;
use crate::usage::sink::SinkConfig;
use crate::usage::MeteringConfig;
use wake_api::usage::Prices;

#[derive(Parser, Debug)]
#[command(
    name = "wake-service",
    version,
    about = "Control plane for the gateway: endpoints, roles, databases and their computes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the service (REST API, Neon-compatible proxy API, metrics).
    Serve(Box<ServeArgs>),
    /// Manage endpoints through a running service.
    #[command(subcommand)]
    Endpoints(crate::cli::EndpointsCommand),
    /// Manage roles through a running service.
    #[command(subcommand)]
    Roles(crate::cli::RolesCommand),
    /// Manage databases through a running service.
    #[command(subcommand)]
    Databases(crate::cli::DatabasesCommand),
    /// Manage branches (throwaway copies of a database) through a running service.
    #[command(subcommand)]
    Branches(crate::cli::BranchesCommand),
    /// Manage an endpoint's JWKS rules (JWT logins) through a running service.
    #[command(subcommand)]
    Jwks(crate::cli::JwksCommand),
    /// Read metered usage through a running service.
    #[command(subcommand)]
    Usage(crate::cli::UsageCommand),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// REST API, /metrics, /healthz and /readyz.
    #[arg(long, env = "WAKE_LISTEN", default_value = "127.0.0.1:4400")]
    pub listen: SocketAddr,

    /// State and compute data live here (computes/<id>/, and state/ for the embedded store).
    #[arg(long, env = "DATA_DIR", default_value = ".data")]
    pub data_dir: PathBuf,

    /// Postgres for the state store (e.g. postgres://user:pw@host/db), shared by replicas.
    /// Without it the service runs an embedded Postgres under DATA_DIR/state on a unix socket.
    #[arg(long, env = "WAKE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Admin bearer token for /v1 (and /proxy/api/v1).
    #[arg(long, env = "WAKE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the admin token.
    #[arg(long, env = "WAKE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Token that grants only /proxy/api/v1 (give this one to gateways).
    #[arg(long, env = "WAKE_PROXY_TOKEN", hide_env_values = true)]
    pub proxy_token: Option<String>,
    /// File holding the proxy token.
    #[arg(long, env = "WAKE_PROXY_TOKEN_FILE")]
    pub proxy_token_file: Option<PathBuf>,

    /// Key that seals the role passwords Neon's API reveals: 64 hex digits (e.g.
    /// `openssl rand -hex 32`). Replicas sharing a state store need the same key.
    #[arg(long, env = "WAKE_PASSWORD_KEY", hide_env_values = true)]
    pub password_key: Option<String>,
    /// File holding that key, created with a random one if missing
    /// [default: DATA_DIR/password.key, when --password-key is not set].
    #[arg(long, env = "WAKE_PASSWORD_KEY_FILE")]
    pub password_key_file: Option<PathBuf>,

    /// Compute driver.
    #[arg(long, env = "WAKE_DRIVER", default_value = "local", value_parser = ["local"])]
    pub driver: String,
    /// Host the local computes listen on and are advertised at.
    #[arg(long, env = "WAKE_COMPUTE_HOST", default_value = "127.0.0.1")]
    pub compute_host: String,
    /// Ports for local computes (Postgres and PgBouncer take one each), as FIRST-LAST.
    #[arg(long, env = "WAKE_COMPUTE_PORTS", default_value = "20000-20999")]
    pub compute_ports: String,
    /// Run every compute's Postgres and PgBouncer, and the embedded state store, as this ONE
    /// shared OS user. This gives NO isolation between endpoints: a shell obtained in one
    /// endpoint's Postgres reaches every other one. By default a wake service running as root
    /// gives each endpoint (and the state store) an OS user of its own, created and removed
    /// on demand; one that is not root runs everything as its own user.
    #[arg(long, env = "WAKE_COMPUTE_OS_USER")]
    pub compute_os_user: Option<String>,
    /// Directory with initdb, pg_ctl and postgres (Postgres 15).
    #[arg(
        long,
        env = "WAKE_PG_BIN",
        default_value = "/usr/lib/postgresql/15/bin"
    )]
    pub pg_bin: PathBuf,
    /// PgBouncer binary.
    #[arg(long, env = "WAKE_PGBOUNCER", default_value = "pgbouncer")]
    pub pgbouncer: PathBuf,
    /// Trade durability for speed in computes (fsync off): for tests only.
    #[arg(long, env = "WAKE_COMPUTE_FAST")]
    pub compute_fast: bool,

    /// Endpoint created on first start ("" for none), with the role, password and database below.
    #[arg(long, env = "WAKE_DEFAULT_ENDPOINT", default_value = "db")]
    pub default_endpoint: String,
    #[arg(long, env = "WAKE_DEFAULT_ROLE", default_value = "postgres")]
    pub default_role: String,
    #[arg(
        long,
        env = "WAKE_DEFAULT_PASSWORD",
        default_value = "postgres",
        hide_env_values = true
    )]
    pub default_password: String,
    #[arg(long, env = "WAKE_DEFAULT_DATABASE", default_value = "main")]
    pub default_database: String,

    /// Suspend timeout for endpoints that do not set one (seconds; -1 never).
    #[arg(
        long,
        env = "WAKE_DEFAULT_SUSPEND_TIMEOUT_SECONDS",
        default_value_t = 300,
        allow_hyphen_values = true
    )]
    pub default_suspend_timeout_seconds: i64,
    /// How long a wake may block before answering 503.
    #[arg(long, env = "WAKE_WAKE_TIMEOUT_SECONDS", default_value_t = 60)]
    pub wake_timeout_seconds: u64,
    /// How often the suspend scheduler looks for idle endpoints (milliseconds).
    #[arg(long, env = "WAKE_IDLE_CHECK_INTERVAL_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub idle_check_interval_ms: u64,
    /// How often suspended endpoints' PgBouncers are checked for waiting clients
    /// (milliseconds; a client connected straight to PgBouncer waits up to this long before
    /// its endpoint starts resuming).
    #[arg(long, env = "WAKE_POOLER_CHECK_INTERVAL_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub pooler_check_interval_ms: u64,
    /// Leave computes running when the service exits (by default SIGTERM suspends them; a
    /// kill -9 always leaves them running, and they are adopted on the next start).
    #[arg(long, env = "WAKE_LEAVE_COMPUTES_RUNNING")]
    pub leave_computes_running: bool,

    /// Start even when the state store lists no endpoint but DATA_DIR/computes holds some (a
    /// new or wrong store): they are moved aside to computes/.quarantine, never deleted.
    /// Without it such a start is refused. Computes the store does not know are always
    /// quarantined, never deleted.
    #[arg(long, env = "WAKE_QUARANTINE_UNKNOWN_COMPUTES")]
    pub quarantine_unknown_computes: bool,

    /// Branches: the most one endpoint may have (a create beyond it gets 409).
    #[arg(long, env = "WAKE_MAX_BRANCHES_PER_ENDPOINT", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_branches_per_endpoint: u32,
    /// The gateway's domain, for the connection strings the API answers with: endpoint `x`
    /// is `x.<domain>` (and `x-pooler.<domain>`).
    #[arg(long, env = "WAKE_PUBLIC_DOMAIN", default_value = "localtest.me")]
    pub public_domain: String,
    /// The gateway's public port, for the same connection strings.
    #[arg(long, env = "WAKE_PUBLIC_PORT", default_value_t = 4444)]
    pub public_port: u16,
    /// The `sslmode` those connection strings carry.
    #[arg(long, env = "WAKE_PUBLIC_SSLMODE", default_value = "disable",
          value_parser = ["disable", "prefer", "require", "verify-ca", "verify-full"])]
    pub public_sslmode: String,

    /// Metering: how often compute time becomes consumption events (seconds). After a kill -9,
    /// a compute found dead is metered until the last checkpoint.
    #[arg(long, env = "WAKE_USAGE_CHECKPOINT_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub usage_checkpoint_seconds: u64,
    /// Metering: how often active endpoints' storage is sampled (seconds; also once before
    /// each suspend).
    #[arg(long, env = "WAKE_STORAGE_SAMPLE_SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub storage_sample_seconds: u64,
    /// Push consumption events to this URL (`POST {"events": [...]}`, at most 1000 a batch,
    /// retried until a 2xx; the delivered cursor is durable).
    #[arg(long, env = "WAKE_USAGE_SINK_URL")]
    pub usage_sink_url: Option<reqwest::Url>,
    /// With any price set, usage answers carry `cost` (unset prices take the defaults:
    /// $0.106 per CU-hour, $0.35 per GB-month, $0.10 per GB of egress).
    #[arg(long, env = "WAKE_PRICE_CU_HOUR")]
    pub price_cu_hour: Option<f64>,
    #[arg(long, env = "WAKE_PRICE_GB_MONTH")]
    pub price_gb_month: Option<f64>,
    #[arg(long, env = "WAKE_PRICE_TRANSFER_GB")]
    pub price_transfer_gb: Option<f64>,

    /// Autoscaling: the largest size (CU) an endpoint's min_cu, max_cu or resize may ask
    /// for (0.25 steps, at most 56).
    #[arg(long, env = "WAKE_MAX_CU", default_value_t = 16.0)]
    pub max_cu: f64,
    /// Autoscaling: how often active endpoints' CPU, memory and pooler queue are sampled
    /// (milliseconds); every sample is a policy decision.
    #[arg(long, env = "WAKE_AUTOSCALE_INTERVAL_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub autoscale_interval_ms: u64,
    /// Autoscaling: how long the goal must stay below the size before it shrinks (seconds).
    #[arg(long, env = "WAKE_AUTOSCALE_COOLDOWN_SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub autoscale_cooldown_seconds: u64,

    /// Railway: an account or workspace API token. With it, endpoints can be bound to
    /// Railway Postgres services (`driver: "railway"`); never logged or shown.
    #[arg(long, env = "RAILWAY_API_TOKEN", hide_env_values = true)]
    pub railway_token: Option<String>,
    /// Railway: a file holding the API token.
    #[arg(long, env = "RAILWAY_API_TOKEN_FILE")]
    pub railway_token_file: Option<PathBuf>,
    /// Railway: the GraphQL API.
    #[arg(long, env = "WAKE_RAILWAY_API_URL", default_value = railway::DEFAULT_API_URL)]
    pub railway_api_url: reqwest::Url,
    /// Railway: which addresses gateways and the wake service use, `private` (DATABASE_URL,
    /// Railway's private network: run them in the same project) or `public` (the TCP proxy).
    #[arg(long, env = "WAKE_RAILWAY_NETWORK", default_value = "private",
          value_parser = ["private", "public"])]
    pub railway_network: String,
    /// Railway: the client-side request budget, per second and per hour (Railway's limits
    /// by plan: Hobby 10/s and 1,000/h, Pro 50/s and 10,000/h).
    #[arg(long, env = "WAKE_RAILWAY_REQUESTS_PER_SECOND", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub railway_requests_per_second: u32,
    #[arg(long, env = "WAKE_RAILWAY_REQUESTS_PER_HOUR", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub railway_requests_per_hour: u32,
    /// Railway: the longest a resume may take, from the redeploy to a Postgres login
    /// (seconds); wakes of Railway endpoints wait this long, not WAKE_WAKE_TIMEOUT_SECONDS.
    #[arg(long, env = "WAKE_RAILWAY_RESUME_TIMEOUT_SECONDS", default_value_t = 180,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub railway_resume_timeout_seconds: u64,
    /// Railway: the longest one API request may take (milliseconds); a query or a repeatable
    /// mutation that times out is sent again, a redeploy is looked for instead.
    #[arg(long, env = "WAKE_RAILWAY_REQUEST_TIMEOUT_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub railway_request_timeout_ms: u64,
    /// Railway: how often a deployment's status is polled while waiting (milliseconds).
    #[arg(long, env = "WAKE_RAILWAY_POLL_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub railway_poll_interval_ms: u64,
    /// Railway: the cap on each gateway's own pool of direct connections to a Railway
    /// Postgres (its image keeps max_connections = 100 whatever the size).
    #[arg(long, env = "WAKE_RAILWAY_POOL_MAX_CONNS", default_value_t = 80,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub railway_pool_max_conns: u32,

    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// The autoscaler's timing.
#[derive(Debug, Clone)]
pub struct AutoscaleConfig {
    pub interval: Duration,
    pub cooldown: Duration,
}

/// Tokens shorter than this are refused: 32 hex characters are 128 random bits.
pub const MIN_TOKEN_LEN: usize = 32;

/// A token or password: kept out of `Debug` output (and so out of logs and --check-config).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Validated `serve` configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: Option<Secret>,
    pub admin_token: Secret,
    pub proxy_token: Option<Secret>,
    pub password_key: PasswordKey,
    pub local: LocalConfig,
    pub compute_ports: RangeInclusive<u16>,
    pub default_endpoint: Option<DefaultEndpoint>,
    pub default_suspend_timeout_seconds: i64,
    pub wake_timeout: Duration,
    pub scheduler: SchedulerConfig,
    pub leave_computes_running: bool,
    pub quarantine_unknown_computes: bool,
    pub metering: MeteringConfig,
    /// The largest size the API accepts.
    pub max_cu: Cu,
    pub autoscale: AutoscaleConfig,
    /// The railway driver's settings, when a token is configured.
    pub railway: Option<RailwayConfig>,
    pub branches: BranchSettings,
}

/// Where the key that seals role passwords comes from.
#[derive(Debug, Clone)]
pub enum PasswordKey {
    Value(Secret),
    /// Created with a random key when missing.
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct DefaultEndpoint {
    pub id: String,
    pub role: String,
    pub password: Secret,
    pub database: String,
}

fn secret(
    value: Option<String>,
    file: Option<PathBuf>,
    name: &str,
) -> anyhow::Result<Option<String>> {
    match (value, file) {
        (Some(v), _) if !v.trim().is_empty() => Ok(Some(v.trim().to_owned())),
        (_, Some(path)) => {
            let v = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("cannot read {name} file {}: {e}", path.display()))?;
            let v = v.trim();
            anyhow::ensure!(!v.is_empty(), "{name} file {} is empty", path.display());
            Ok(Some(v.to_owned()))
        }
        _ => Ok(None),
    }
}

pub fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("port range '{s}' is not FIRST-LAST"))?;
    let first: u16 = a.trim().parse().map_err(|_| format!("bad port '{a}'"))?;
    let last: u16 = b.trim().parse().map_err(|_| format!("bad port '{b}'"))?;
    if first == 0 || last < first.saturating_add(1) {
        return Err(format!(
            "port range '{s}' must hold at least two ports, none of them 0"
        ));
    }
    Ok(first..=last)
}

impl ServeArgs {
    pub fn validate(self) -> anyhow::Result<ServeConfig> {
        let (max_cu, autoscale) = self.autoscale()?;
        let metering = self.metering()?;
        let railway = self.railway()?;
        let branches = self.branches()?;
        let admin_token = secret(self.admin_token, self.admin_token_file, "admin token")?
            .ok_or_else(|| anyhow::anyhow!("set WAKE_ADMIN_TOKEN or WAKE_ADMIN_TOKEN_FILE"))?;
        anyhow::ensure!(
            admin_token.len() >= MIN_TOKEN_LEN,
            "the admin token must be at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 16`)"
        );
        let proxy_token = secret(self.proxy_token, self.proxy_token_file, "proxy token")?;
        if let Some(token) = &proxy_token {
            anyhow::ensure!(
                token.len() >= MIN_TOKEN_LEN,
                "the proxy token must be at least {MIN_TOKEN_LEN} characters"
            );
            anyhow::ensure!(
                *token != admin_token,
                "the proxy token must differ from the admin token"
            );
        }
        let compute_ports = parse_port_range(&self.compute_ports).map_err(anyhow::Error::msg)?;
        let data_dir = std::path::absolute(&self.data_dir)?;
        let default_endpoint = if self.default_endpoint.is_empty() {
            None
        } else {
            anyhow::ensure!(
                wake_api::names::valid_endpoint_id(&self.default_endpoint),
                "invalid default endpoint id '{}'",
                self.default_endpoint
            );
            Some(DefaultEndpoint {
                id: self.default_endpoint,
                role: self.default_role,
                password: Secret(self.default_password),
                database: self.default_database,
            })
        };
        let password_key = match (self.password_key, self.password_key_file) {
            (Some(key), _) if !key.trim().is_empty() => PasswordKey::Value(Secret(key)),
            (_, Some(path)) => PasswordKey::File(std::path::absolute(path)?),
            _ => PasswordKey::File(data_dir.join("password.key")),
        };
        let mut local = LocalConfig::defaults(data_dir.join("computes"));
        local.pg_bin = self.pg_bin;
        local.pgbouncer = self.pgbouncer;
        if let Some(user) = self.compute_os_user.filter(|user| !user.trim().is_empty()) {
            local.os_user = Some(user);
        }
        local.host = self.compute_host;
        local.fast = self.compute_fast;
        Ok(ServeConfig {
            listen: self.listen,
            data_dir,
            database_url: self.database_url.map(Secret),
            admin_token: Secret(admin_token),
            proxy_token: proxy_token.map(Secret),
            password_key,
            local,
            compute_ports,
            default_endpoint,
            default_suspend_timeout_seconds: self.default_suspend_timeout_seconds,
            wake_timeout: Duration::from_secs(self.wake_timeout_seconds),
            scheduler: SchedulerConfig {
                check_interval: Duration::from_millis(self.idle_check_interval_ms),
                pooler_interval: Duration::from_millis(self.pooler_check_interval_ms),
            },
            leave_computes_running: self.leave_computes_running,
            quarantine_unknown_computes: self.quarantine_unknown_computes,
            metering,
            railway,
            max_cu,
            autoscale,
            branches,
        })
    }

    /// Branches' settings (the domain checked: a DNS name, no scheme or port).
    fn branches(&self) -> anyhow::Result<BranchSettings> {
        let domain = self
            .public_domain
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let valid = !domain.is_empty()
            && domain.len() <= 253
            && domain.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !valid {
            anyhow::bail!(
                "--public-domain '{}' is not a DNS name (like db.example.com: no scheme, port or path)",
                self.public_domain
            );
        }
        Ok(BranchSettings {
            max_per_endpoint: self.max_branches_per_endpoint,
            public: PublicAddress {
                domain,
                port: self.public_port,
                sslmode: self.public_sslmode.clone(),
            },
        })
    }

    /// Metering's settings (prices checked).
    fn metering(&self) -> anyhow::Result<MeteringConfig> {
        let prices = [
            self.price_cu_hour,
            self.price_gb_month,
            self.price_transfer_gb,
        ];
        anyhow::ensure!(
            prices.iter().flatten().all(|p| p.is_finite() && *p >= 0.0),
            "prices must be finite and not negative"
        );
        let defaults = Prices::default();
        Ok(MeteringConfig {
            checkpoint_interval: Duration::from_secs(self.usage_checkpoint_seconds),
            storage_interval: Duration::from_secs(self.storage_sample_seconds),
            prices: prices.iter().any(Option::is_some).then(|| Prices {
                cu_hour: self.price_cu_hour.unwrap_or(defaults.cu_hour),
                gb_month: self.price_gb_month.unwrap_or(defaults.gb_month),
                transfer_gb: self.price_transfer_gb.unwrap_or(defaults.transfer_gb),
            }),
            sink: self.usage_sink_url.clone().map(|url| SinkConfig {
                url,
                poll_interval: Duration::from_secs(1),
            }),
        })
    }

    /// The size ceiling and the autoscaler's timing.
    /// The railway driver's settings: None without a token.
    fn railway(&self) -> anyhow::Result<Option<RailwayConfig>> {
        let token = secret(
            self.railway_token.clone(),
            self.railway_token_file.clone(),
            "Railway API token",
        )?;
        let Some(token) = token else {
            return Ok(None);
        };
        Ok(Some(RailwayConfig {
            api_url: self.railway_api_url.clone(),
            token,
            budget: RateBudget {
                per_second: self.railway_requests_per_second,
                per_hour: self.railway_requests_per_hour,
            },
            request_timeout: Duration::from_millis(self.railway_request_timeout_ms),
            network: if self.railway_network == "public" {
                Network::Public
            } else {
                Network::Private
            },
            resume_timeout: Duration::from_secs(self.railway_resume_timeout_seconds),
            stop_timeout: Duration::from_secs(120),
            poll_interval: Duration::from_millis(self.railway_poll_interval_ms),
            pool_max_conns: self.railway_pool_max_conns,
        }))
    }

    fn autoscale(&self) -> anyhow::Result<(Cu, AutoscaleConfig)> {
        let max_cu = Cu::parse_ceiling("--max-cu", self.max_cu).map_err(anyhow::Error::msg)?;
        let timing = AutoscaleConfig {
            interval: Duration::from_millis(self.autoscale_interval_ms),
            cooldown: Duration::from_secs(self.autoscale_cooldown_seconds),
        };
        Ok((max_cu, timing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("20000-20999"), Ok(20000..=20999));
        assert!(parse_port_range("5-5").is_err());
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("10").is_err());
        assert!(parse_port_range("10-70000").is_err());
    }
}
