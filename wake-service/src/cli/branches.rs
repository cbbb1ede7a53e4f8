//! `wake-service branches …`: throwaway copies of a database (`/v1/endpoints/{id}/branches`).

use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use super::{call, ClientArgs};

#[derive(Subcommand, Debug)]
pub enum BranchesCommand {
    /// Copy a database of the endpoint into a branch (a database of its own); prints the
    /// branch with its connection strings.
    Create {
        endpoint: String,
        /// The database to copy.
        #[arg(long)]
        from: String,
        /// The branch's database name (default br_<12 hex digits>).
        #[arg(long)]
        name: Option<String>,
        /// Delete it this many seconds after its creation (1 to 2592000).
        #[arg(long)]
        ttl_seconds: Option<i64>,
        /// A label, key=value (repeat for more).
        #[arg(long = "label", value_parser = key_value)]
        labels: Vec<(String, String)>,
        /// Copy the schema only (tables emptied, sequences restarted).
        #[arg(long)]
        schema_only: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the endpoint's branches (only those with the label, key=value, when given).
    List {
        endpoint: String,
        #[arg(long, value_parser = key_value)]
        label: Option<(String, String)>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete one branch by name, or every branch with a label (--label key=value).
    Delete {
        endpoint: String,
        #[arg(required_unless_present = "label", conflicts_with = "label")]
        name: Option<String>,
        #[arg(long, value_parser = key_value)]
        label: Option<(String, String)>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Copy the source again into the branch (its open sessions end).
    Reset {
        endpoint: String,
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("'{s}' is not key=value"))
}

/// `?label=key=value`, the value percent-encoded.
fn label_query(label: Option<&(String, String)>) -> String {
    label.map_or_else(String::new, |(k, v)| {
        let encoded: String = format!("{k}={v}")
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("?label={encoded}")
    })
}

pub async fn branches(command: BranchesCommand) -> anyhow::Result<()> {
    match command {
        BranchesCommand::Create {
            endpoint,
            from,
            name,
            ttl_seconds,
            labels,
            schema_only,
            client,
        } => {
            let mut body = json!({"from": from, "data": !schema_only});
            if let Some(name) = name {
                body["name"] = json!(name);
            }
            if let Some(ttl) = ttl_seconds {
                body["ttl_seconds"] = json!(ttl);
            }
            if !labels.is_empty() {
                body["labels"] =
                    Value::Object(labels.into_iter().map(|(k, v)| (k, json!(v))).collect());
            }
            let path = format!("/v1/endpoints/{endpoint}/branches");
            call(&client, Method::POST, &path, Some(body)).await
        }
        BranchesCommand::List {
            endpoint,
            label,
            client,
        } => {
            let path = format!(
                "/v1/endpoints/{endpoint}/branches{}",
                label_query(label.as_ref())
            );
            call(&client, Method::GET, &path, None).await
        }
        BranchesCommand::Delete {
            endpoint,
            name,
            label,
            client,
        } => {
            let path = match name {
                Some(name) => format!("/v1/endpoints/{endpoint}/branches/{name}"),
                None => format!(
                    "/v1/endpoints/{endpoint}/branches{}",
                    label_query(label.as_ref())
                ),
            };
            call(&client, Method::DELETE, &path, None).await
        }
        BranchesCommand::Reset {
            endpoint,
            name,
            client,
        } => {
            let path = format!("/v1/endpoints/{endpoint}/branches/{name}/reset");
            call(&client, Method::POST, &path, None).await
        }
    }
}
