//! The loadgen's view of the control side: the wake service's endpoint API (where the direct
//! and PgBouncer addresses are) and the gateway's admin `/metrics` (control-plane calls).
//! One-shot HTTP/1.1 calls, each bounded by a timeout. The flood test (scenario 7) also makes
//! one role through the API.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::timeout;
use wake_api::admin::{CreateRole, Endpoint, PatchRole};

/// Bounds one call; a role change waits until every gateway applied it (at most 10 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// GET `http://<authority><path>`; the body of a 2xx answer.
async fn get(authority: &str, path: &str, bearer: Option<&str>) -> anyhow::Result<Bytes> {
    call(Method::GET, authority, path, bearer, None).await
}

/// `method` on `http://<authority><path>`, with a JSON body if given; the body of a 2xx answer.
async fn call(
    method: Method,
    authority: &str,
    path: &str,
    bearer: Option<&str>,
    json: Option<String>,
) -> anyhow::Result<Bytes> {
    let what = format!("{method} http://{authority}{path}");
    timeout(CALL_TIMEOUT, async {
        let tcp = TcpStream::connect(authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        let conn = tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, authority);
        if let Some(token) = bearer {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match json {
            Some(json) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(json))
            }
            None => Full::new(Bytes::new()),
        };
        let response = sender.send_request(request.body(body)?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        conn.abort();
        if !status.is_success() {
            bail!(
                "{what}: HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        Ok(body)
    })
    .await
    .map_err(|_| anyhow!("{what} timed out"))?
}

/// `GET /v1/endpoints/<id>` on the wake service (`authority` is `host:port`).
pub async fn endpoint(authority: &str, token: &str, id: &str) -> anyhow::Result<Endpoint> {
    let body = get(authority, &format!("/v1/endpoints/{id}"), Some(token)).await?;
    serde_json::from_slice(&body).context("parsing the endpoint")
}

/// Role `name` on endpoint `id` with `password`: created through the wake service's API, or
/// given the new password if it exists (a run before this one made it).
pub async fn ensure_role(
    authority: &str,
    token: &str,
    id: &str,
    name: &str,
    password: &str,
) -> anyhow::Result<()> {
    let exists = endpoint(authority, token, id)
        .await?
        .roles
        .iter()
        .any(|role| role == name);
    if exists {
        let body = serde_json::to_string(&PatchRole {
            password: password.into(),
        })?;
        let path = format!("/v1/endpoints/{id}/roles/{name}");
        call(Method::PATCH, authority, &path, Some(token), Some(body)).await?;
    } else {
        let body = serde_json::to_string(&CreateRole {
            name: name.into(),
            password: password.into(),
        })?;
        let path = format!("/v1/endpoints/{id}/roles");
        call(Method::POST, authority, &path, Some(token), Some(body)).await?;
    }
    Ok(())
}

/// Makes `rule` the endpoint's only JWKS rule from `provider`: rules an earlier run made
/// (same provider name) are deleted first.
pub async fn replace_jwks_rule(
    authority: &str,
    token: &str,
    id: &str,
    provider: &str,
    rule: &serde_json::Value,
) -> anyhow::Result<()> {
    let path = format!("/v1/endpoints/{id}/jwks");
    let body = get(authority, &path, Some(token)).await?;
    let listed: wake_api::proxy::Jwks =
        serde_json::from_slice(&body).context("parsing the rules")?;
    for old in listed.jwks.iter().filter(|r| r.provider_name == provider) {
        let path = format!("/v1/endpoints/{id}/jwks/{}", old.id);
        call(Method::DELETE, authority, &path, Some(token), None).await?;
    }
    call(
        Method::POST,
        authority,
        &path,
        Some(token),
        Some(rule.to_string()),
    )
    .await?;
    Ok(())
}

/// The control-plane calls the gateway made, from its admin `/metrics`.
#[derive(Debug, Default)]
pub struct ControlPlaneCalls {
    /// `gateway_control_plane_requests_total` by its labels (`call="…",outcome="…"`), every
    /// call except `activity` (the periodic activity reports): the calls the route table made.
    pub by_labels: BTreeMap<String, f64>,
    /// Background refreshes the route table started
    /// (`gateway_route_cache_lookups_total{outcome="stale_refresh"}`): each is one call made off
    /// the connection path, once per used route every `--route-refresh-seconds`, whatever the
    /// number of connections.
    pub refreshes: f64,
}

pub async fn control_plane_calls(admin: &str) -> anyhow::Result<ControlPlaneCalls> {
    let body = get(admin, "/metrics", None).await?;
    let text = String::from_utf8_lossy(&body);
    Ok(ControlPlaneCalls {
        by_labels: route_table_calls(&text),
        refreshes: background_refreshes(&text),
    })
}

fn background_refreshes(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("gateway_route_cache_lookups_total{"))
        .filter(|rest| rest.contains("\"stale_refresh\""))
        .filter_map(|rest| rest.rsplit_once("} ")?.1.trim().parse::<f64>().ok())
        .sum()
}

fn route_table_calls(metrics: &str) -> BTreeMap<String, f64> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("gateway_control_plane_requests_total{"))
        .filter(|rest| !rest.contains("call=\"activity\""))
        .filter_map(|rest| rest.rsplit_once("} "))
        .filter_map(|(labels, value)| Some((labels.to_string(), value.trim().parse().ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{background_refreshes, route_table_calls};

    #[test]
    fn route_table_calls_leave_out_activity_reports() {
        let text = "\
# HELP gateway_control_plane_requests_total Control-plane requests by call and outcome
# TYPE gateway_control_plane_requests_total counter
gateway_control_plane_requests_total{call=\"activity\",outcome=\"ok\"} 40
gateway_control_plane_requests_total{call=\"wake_compute\",outcome=\"ok\"} 2
gateway_control_plane_requests_total{call=\"access_control\",outcome=\"not_found\"} 1
gateway_control_plane_request_duration_seconds_count{call=\"wake_compute\"} 2
";
        let calls = route_table_calls(text);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls["call=\"wake_compute\",outcome=\"ok\""], 2.0);
        assert_eq!(calls["call=\"access_control\",outcome=\"not_found\""], 1.0);
        assert!(route_table_calls("").is_empty());
    }

    #[test]
    fn background_refreshes_are_the_stale_hits() {
        let text = "\
gateway_route_cache_lookups_total{outcome=\"hit\"} 2000
gateway_route_cache_lookups_total{outcome=\"stale_refresh\"} 3
gateway_route_cache_lookups_total{outcome=\"miss\"} 1
";
        assert_eq!(background_refreshes(text), 3.0);
        assert_eq!(background_refreshes(""), 0.0);
    }
}
