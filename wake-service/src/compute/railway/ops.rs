//! The GraphQL documents the `railway` driver sends, and their answers, typed. Each one is
//! validated against Railway's published schema by the tests' double
//! (`tests/railway_double`), so a field or argument that drifts from it fails a test.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::client::{Client, RailwayError, Request, Retry};

pub const DEPLOYMENTS: &str = "query Deployments($input: DeploymentListInput!) {
  deployments(input: $input, first: 1) { edges { node { id status deploymentStopped } } }
}";
pub const REDEPLOY: &str = "mutation DeploymentRedeploy($id: String!) {
  deploymentRedeploy(id: $id, usePreviousImageTag: true) { id status }
}";
pub const STOP: &str = "mutation DeploymentStop($id: String!) { deploymentStop(id: $id) }";
pub const LIMITS: &str =
    "mutation ServiceInstanceLimitsUpdate($input: ServiceInstanceLimitsUpdateInput!) {
  serviceInstanceLimitsUpdate(input: $input)
}";
pub const VARIABLES: &str =
    "query Variables($project: String!, $environment: String!, $service: String!) {
  variables(projectId: $project, environmentId: $environment, serviceId: $service)
}";
pub const METRICS: &str =
    "query Metrics($service: String!, $environment: String!, $since: DateTime!) {
  metrics(serviceId: $service, environmentId: $environment, startDate: $since,
          measurements: [CPU_USAGE, MEMORY_USAGE_GB], sampleRateSeconds: 30) {
    measurement values { ts value }
  }
}";

/// A service in an environment: what every call names.
#[derive(Clone, Copy, Debug)]
pub struct ServiceRef<'a> {
    pub project: &'a str,
    pub environment: &'a str,
    pub service: &'a str,
}

/// A deployment as the driver sees it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub deployment_stopped: bool,
}

/// Where a deployment is, for the driver's purposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `SUCCESS` and not stopped: the container runs.
    Running,
    /// On its way to running (`QUEUED`, `WAITING`, `BUILDING`, `INITIALIZING`, `DEPLOYING`).
    Starting,
    /// Slept by App Sleeping: inbound traffic wakes it.
    Sleeping,
    /// Stopped or removed (by `deploymentStop`, or by a later deployment).
    Stopped,
    /// `CRASHED` or `FAILED` (or `SKIPPED`, `NEEDS_APPROVAL`): it will not run by itself.
    Failed,
}

impl Deployment {
    pub fn phase(&self) -> Phase {
        match self.status.as_str() {
            _ if self.deployment_stopped => Phase::Stopped,
            "SUCCESS" => Phase::Running,
            "QUEUED" | "WAITING" | "BUILDING" | "INITIALIZING" | "DEPLOYING" => Phase::Starting,
            "SLEEPING" => Phase::Sleeping,
            "REMOVED" | "REMOVING" => Phase::Stopped,
            _ => Phase::Failed,
        }
    }
}

#[derive(Deserialize)]
struct Deployments {
    deployments: Connection,
}

#[derive(Deserialize)]
struct Connection {
    edges: Vec<Edge>,
}

#[derive(Deserialize)]
struct Edge {
    node: Deployment,
}

/// The service's newest deployment (Railway lists newest first).
pub async fn latest_deployment(
    client: &Client,
    at: ServiceRef<'_>,
    deadline: Instant,
) -> Result<Option<Deployment>, RailwayError> {
    let variables = json!({"input": {
        "projectId": at.project, "environmentId": at.environment, "serviceId": at.service,
    }});
    let request = Request {
        name: "Deployments",
        query: DEPLOYMENTS,
        variables,
        retry: Retry::Always,
        deadline,
    };
    let answer: Deployments = client.call(&request).await?;
    Ok(answer.deployments.edges.into_iter().next().map(|e| e.node))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Redeployed {
    deployment_redeploy: Deployment,
}

/// A new deployment from `id`'s image (its previous tag: the Postgres version never moves
/// on its own). Never retried blindly: the caller looks at the deployments again.
pub async fn redeploy(
    client: &Client,
    id: &str,
    deadline: Instant,
) -> Result<Deployment, RailwayError> {
    let request = Request {
        name: "DeploymentRedeploy",
        query: REDEPLOY,
        variables: json!({"id": id}),
        retry: Retry::IfNotProcessed,
        deadline,
    };
    let answer: Redeployed = client.call(&request).await?;
    Ok(answer.deployment_redeploy)
}

/// Stops deployment `id` (repeating it changes nothing).
pub async fn stop(client: &Client, id: &str, deadline: Instant) -> Result<(), RailwayError> {
    let request = Request {
        name: "DeploymentStop",
        query: STOP,
        variables: json!({"id": id}),
        retry: Retry::Always,
        deadline,
    };
    let _: Value = client.call(&request).await?;
    Ok(())
}

/// Sets the service's CPU and memory limits.
pub async fn set_limits(
    client: &Client,
    at: ServiceRef<'_>,
    vcpus: f64,
    memory_gb: f64,
    deadline: Instant,
) -> Result<(), RailwayError> {
    let variables = json!({"input": {
        "serviceId": at.service, "environmentId": at.environment,
        "vCPUs": vcpus, "memoryGB": memory_gb,
    }});
    let request = Request {
        name: "ServiceInstanceLimitsUpdate",
        query: LIMITS,
        variables,
        retry: Retry::Always,
        deadline,
    };
    let _: Value = client.call(&request).await?;
    Ok(())
}

#[derive(Deserialize)]
struct Variables {
    variables: Map<String, Value>,
}

/// The service's variables, rendered (`DATABASE_URL`, `PGPASSWORD`, …). They hold secrets:
/// callers keep them in memory only and never log them.
pub async fn variables(
    client: &Client,
    at: ServiceRef<'_>,
    deadline: Instant,
) -> Result<Map<String, Value>, RailwayError> {
    let request = Request {
        name: "Variables",
        query: VARIABLES,
        variables: json!({
            "project": at.project, "environment": at.environment, "service": at.service,
        }),
        retry: Retry::Always,
        deadline,
    };
    let answer: Variables = client.call(&request).await?;
    Ok(answer.variables)
}

/// The newest sample of each measurement Railway has for the service since `since`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// vCPUs in use.
    pub cpu: Option<f64>,
    pub memory_gb: Option<f64>,
}

#[derive(Deserialize)]
struct Metrics {
    metrics: Vec<MetricsResult>,
}

#[derive(Deserialize)]
struct MetricsResult {
    measurement: String,
    values: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    ts: i64,
    value: f64,
}

pub async fn usage(
    client: &Client,
    at: ServiceRef<'_>,
    since: time::OffsetDateTime,
    deadline: Instant,
) -> Result<Usage, RailwayError> {
    let since = since
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| RailwayError::Decode {
            operation: "Metrics",
            reason: e.to_string(),
        })?;
    let request = Request {
        name: "Metrics",
        query: METRICS,
        variables: json!({"service": at.service, "environment": at.environment, "since": since}),
        retry: Retry::Always,
        deadline,
    };
    let answer: Metrics = client.call(&request).await?;
    let mut usage = Usage::default();
    for result in answer.metrics {
        let newest = result.values.iter().max_by_key(|s| s.ts).map(|s| s.value);
        match result.measurement.as_str() {
            "CPU_USAGE" => usage.cpu = newest,
            "MEMORY_USAGE_GB" => usage.memory_gb = newest,
            _ => {}
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases() {
        let d = |status: &str, stopped: bool| Deployment {
            id: "d".into(),
            status: status.into(),
            deployment_stopped: stopped,
        };
        assert_eq!(d("SUCCESS", false).phase(), Phase::Running);
        assert_eq!(d("SUCCESS", true).phase(), Phase::Stopped);
        assert_eq!(d("DEPLOYING", false).phase(), Phase::Starting);
        assert_eq!(d("SLEEPING", false).phase(), Phase::Sleeping);
        assert_eq!(d("REMOVED", false).phase(), Phase::Stopped);
        assert_eq!(d("CRASHED", false).phase(), Phase::Failed);
        assert_eq!(d("SOMETHING_NEW", false).phase(), Phase::Failed);
    }
}
