//! Operator subcommands: thin wrappers over the REST API, so nobody needs curl.
//! Each prints the API's JSON answer; errors print the API's message and exit non-zero.

use std::io::Read;

use std::path::PathBuf;

mod branches;
mod usage;

pub use branches::{branches, BranchesCommand};

pub use usage::{usage, UsageCommand};

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

/// Where the operator subcommands find the service.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Base URL of the wake service.
    #[arg(
        long,
        env = "WAKE_URL",
        default_value = "http://127.0.0.1:4400",
        global = true
    )]
    pub url: String,
    /// Admin bearer token.
    #[arg(long, env = "WAKE_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// File holding the admin token (the dev stack writes .data/admin-token).
    #[arg(long, env = "WAKE_ADMIN_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
}

/// Endpoint settings that `create` and `update` take.
#[derive(clap::Args, Debug)]
pub struct SettingsArgs {
    /// Seconds idle before suspending; -1 never, 0 the service's default.
    #[arg(long, allow_hyphen_values = true)]
    suspend_timeout_seconds: Option<i64>,
    /// Smallest compute size, in compute units (multiples of 0.25).
    #[arg(long)]
    min_cu: Option<f64>,
    /// Largest compute size, in compute units.
    #[arg(long)]
    max_cu: Option<f64>,
}

/// `endpoints create --railway-service …`: bind the endpoint to an existing Railway Postgres
/// service (`driver: "railway"`; the wake service needs RAILWAY_API_TOKEN).
#[derive(clap::Args, Debug)]
pub struct RailwayArgs {
    /// The Railway Postgres service to bind to (with its project and environment).
    #[arg(long, requires_all = ["railway_project", "railway_environment"])]
    railway_service: Option<String>,
    #[arg(long)]
    railway_project: Option<String>,
    #[arg(long)]
    railway_environment: Option<String>,
    /// The PgBouncer service in front of it, if any.
    #[arg(long, requires = "railway_service")]
    railway_pooler_service: Option<String>,
}

impl RailwayArgs {
    /// The body's `driver` and `railway` fields, when a service is named.
    fn fields(self) -> Option<[(String, Value); 2]> {
        let service = self.railway_service?;
        let mut railway = json!({
            "project_id": self.railway_project,
            "environment_id": self.railway_environment,
            "service_id": service,
        });
        if let Some(pooler) = self.railway_pooler_service {
            railway["pooler_service_id"] = json!(pooler);
        }
        Some([
            ("driver".into(), json!("railway")),
            ("railway".into(), railway),
        ])
    }
}

#[derive(Subcommand, Debug)]
pub enum EndpointsCommand {
    /// List endpoints.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one endpoint.
    Get {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create an endpoint and start its compute.
    Create {
        id: String,
        #[command(flatten)]
        settings: SettingsArgs,
        #[command(flatten)]
        railway: RailwayArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change an endpoint's settings.
    Update {
        id: String,
        #[command(flatten)]
        settings: SettingsArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete an endpoint and its data.
    Delete {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Start the endpoint's compute if needed and wait until it is active.
    Wake {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop the endpoint's compute (refused while a client is busy, unless --force).
    Suspend {
        id: String,
        /// Suspend even with clients busy (their sessions are cut).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set a fixed-size endpoint's size (min_cu = max_cu = CU), applied to its running
    /// compute at once (for an autoscaling endpoint, `update --min-cu/--max-cu` instead).
    Resize {
        id: String,
        /// Compute units, in 0.25 steps.
        #[arg(long)]
        cu: f64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The compute's lifecycle events (starts, stops, resizes, …), oldest first.
    Events {
        id: String,
        /// How many of the newest events.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Where a role's password comes from.
#[derive(clap::Args, Debug)]
pub struct PasswordArgs {
    /// The password (visible in the process list; prefer --password-stdin).
    #[arg(long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from stdin (one line).
    #[arg(long)]
    password_stdin: bool,
}

impl PasswordArgs {
    fn read(self) -> anyhow::Result<String> {
        match (self.password, self.password_stdin) {
            (Some(p), _) => Ok(p),
            (None, true) => {
                let mut p = String::new();
                std::io::stdin().read_to_string(&mut p)?;
                Ok(p.trim_end_matches(['\n', '\r']).to_owned())
            }
            (None, false) => anyhow::bail!("give --password or --password-stdin"),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum RolesCommand {
    /// Create a login role.
    Create {
        endpoint: String,
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set a role's password. Returns once Postgres, PgBouncer and the gateways refuse the
    /// old one.
    Update {
        endpoint: String,
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Drop a role (refused while it owns a database). What it owns in each database goes to
    /// that database's owner.
    Delete {
        endpoint: String,
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum DatabasesCommand {
    /// Create a database owned by one of the endpoint's roles.
    Create {
        endpoint: String,
        name: String,
        #[arg(long)]
        owner: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum JwksCommand {
    /// Add a JWKS rule: tokens signed by a key of the set may log in as its roles. Returns
    /// once the endpoint's databases are prepared (its JWT roles, the `auth` schema).
    Add {
        endpoint: String,
        /// A name for the identity provider (1-64 characters).
        #[arg(long)]
        provider_name: String,
        /// Where the key set is fetched (https).
        #[arg(
            long,
            conflicts_with = "jwks_file",
            required_unless_present = "jwks_file"
        )]
        jwks_url: Option<String>,
        /// A file holding the key set (`{"keys": [...]}`), given inline.
        #[arg(long)]
        jwks_file: Option<PathBuf>,
        /// The `aud` tokens must carry.
        #[arg(long)]
        audience: Option<String>,
        /// The `iss` tokens must carry.
        #[arg(long)]
        issuer: Option<String>,
        /// An accepted signature algorithm (repeat; default RS256, ES256, EdDSA).
        #[arg(long = "algorithm")]
        algorithms: Vec<String>,
        /// A role tokens may log in as (repeat; default authenticated and anonymous).
        #[arg(long = "role")]
        roles: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the endpoint's JWKS rules.
    List {
        endpoint: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a JWKS rule.
    Delete {
        endpoint: String,
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

impl SettingsArgs {
    fn body(&self) -> serde_json::Map<String, Value> {
        let mut body = serde_json::Map::new();
        if let Some(v) = self.suspend_timeout_seconds {
            body.insert("suspend_timeout_seconds".into(), json!(v));
        }
        if let Some(v) = self.min_cu {
            body.insert("min_cu".into(), json!(v));
        }
        if let Some(v) = self.max_cu {
            body.insert("max_cu".into(), json!(v));
        }
        body
    }
}

pub async fn endpoints(command: EndpointsCommand) -> anyhow::Result<()> {
    let path = |id: &str, rest: &str| format!("/v1/endpoints/{id}{rest}");
    let (client, method, path, body) = match command {
        EndpointsCommand::List { client } => (client, Method::GET, "/v1/endpoints".into(), None),
        EndpointsCommand::Get { id, client } => (client, Method::GET, path(&id, ""), None),
        EndpointsCommand::Create {
            id,
            settings,
            railway,
            client,
        } => {
            let mut body = settings.body();
            body.insert("id".into(), json!(id));
            body.extend(railway.fields().into_iter().flatten());
            let body = Some(Value::Object(body));
            (client, Method::POST, "/v1/endpoints".into(), body)
        }
        EndpointsCommand::Update {
            id,
            settings,
            client,
        } => {
            let body = Some(Value::Object(settings.body()));
            (client, Method::PATCH, path(&id, ""), body)
        }
        EndpointsCommand::Delete { id, client } => (client, Method::DELETE, path(&id, ""), None),
        EndpointsCommand::Wake { id, client } => (client, Method::POST, path(&id, "/wake"), None),
        EndpointsCommand::Suspend { id, force, client } => {
            let path = path(&id, &format!("/suspend?force={force}"));
            (client, Method::POST, path, None)
        }
        EndpointsCommand::Resize { id, cu, client } => {
            let body = Some(json!({ "cu": cu }));
            (client, Method::POST, path(&id, "/resize"), body)
        }
        EndpointsCommand::Events { id, limit, client } => {
            let path = path(&id, &format!("/events?limit={limit}"));
            (client, Method::GET, path, None)
        }
    };
    call(&client, method, &path, body).await
}

pub async fn roles(command: RolesCommand) -> anyhow::Result<()> {
    match command {
        RolesCommand::Create {
            endpoint,
            name,
            password,
            client,
        } => {
            let password = password.read()?;
            call(
                &client,
                Method::POST,
                &format!("/v1/endpoints/{endpoint}/roles"),
                Some(json!({"name": name, "password": password})),
            )
            .await
        }
        RolesCommand::Update {
            endpoint,
            name,
            password,
            client,
        } => {
            let password = password.read()?;
            call(
                &client,
                Method::PATCH,
                &format!("/v1/endpoints/{endpoint}/roles/{name}"),
                Some(json!({"password": password})),
            )
            .await
        }
        RolesCommand::Delete {
            endpoint,
            name,
            client,
        } => {
            call(
                &client,
                Method::DELETE,
                &format!("/v1/endpoints/{endpoint}/roles/{name}"),
                None,
            )
            .await
        }
    }
}

pub async fn databases(command: DatabasesCommand) -> anyhow::Result<()> {
    match command {
        DatabasesCommand::Create {
            endpoint,
            name,
            owner,
            client,
        } => {
            call(
                &client,
                Method::POST,
                &format!("/v1/endpoints/{endpoint}/databases"),
                Some(json!({"name": name, "owner": owner})),
            )
            .await
        }
    }
}

pub async fn jwks(command: JwksCommand) -> anyhow::Result<()> {
    match command {
        JwksCommand::Add {
            endpoint,
            provider_name,
            jwks_url,
            jwks_file,
            audience,
            issuer,
            algorithms,
            roles,
            client,
        } => {
            let mut body = serde_json::Map::new();
            body.insert("provider_name".into(), json!(provider_name));
            if let Some(url) = jwks_url {
                body.insert("jwks_url".into(), json!(url));
            }
            if let Some(file) = jwks_file {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
                let set: Value = serde_json::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", file.display()))?;
                body.insert("jwks".into(), set);
            }
            for (field, value) in [("jwt_audience", audience), ("jwt_issuer", issuer)] {
                if let Some(value) = value {
                    body.insert(field.into(), json!(value));
                }
            }
            if !algorithms.is_empty() {
                body.insert("algorithms".into(), json!(algorithms));
            }
            if !roles.is_empty() {
                body.insert("role_names".into(), json!(roles));
            }
            let path = format!("/v1/endpoints/{endpoint}/jwks");
            call(&client, Method::POST, &path, Some(Value::Object(body))).await
        }
        JwksCommand::List { endpoint, client } => {
            let path = format!("/v1/endpoints/{endpoint}/jwks");
            call(&client, Method::GET, &path, None).await
        }
        JwksCommand::Delete {
            endpoint,
            id,
            client,
        } => {
            let path = format!("/v1/endpoints/{endpoint}/jwks/{id}");
            call(&client, Method::DELETE, &path, None).await
        }
    }
}

async fn call(
    client: &ClientArgs,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<()> {
    let (status, text) = send(client, method, path, body).await?;
    let pretty = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if status.is_success() {
        if !pretty.is_empty() {
            println!("{pretty}");
        }
        Ok(())
    } else {
        eprintln!("{pretty}");
        anyhow::bail!("the wake service answered {status}")
    }
}

/// A GET whose JSON answer the caller reads; an error status prints the API's message.
async fn get_json<T: serde::de::DeserializeOwned>(
    client: &ClientArgs,
    path: &str,
) -> anyhow::Result<T> {
    let (status, text) = send(client, Method::GET, path, None).await?;
    if !status.is_success() {
        eprintln!("{text}");
        anyhow::bail!("the wake service answered {status}");
    }
    serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!("the wake service's answer to {path} is not what was expected: {e}")
    })
}

async fn send(
    client: &ClientArgs,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(reqwest::StatusCode, String)> {
    let token = match (&client.token, &client.token_file) {
        (Some(t), _) => t.trim().to_owned(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", file.display()))?
            .trim()
            .to_owned(),
        (None, None) => anyhow::bail!("set WAKE_ADMIN_TOKEN or WAKE_ADMIN_TOKEN_FILE (or --token)"),
    };
    let url = format!("{}{}", client.url.trim_end_matches('/'), path);
    let mut request = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the wake service at {}: {e}", client.url))?;
    let status = response.status();
    Ok((status, response.text().await?))
}
